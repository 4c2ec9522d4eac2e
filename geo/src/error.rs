//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Why opening, reloading or querying a [`GeoDb`](crate::GeoDb) failed.
///
/// A failed [`reload`](crate::GeoDb::reload) leaves the previous database in service, so every
/// variant here is recoverable for a running daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GeoError {
    /// A database file could not be read from disk (missing, unreadable, a directory, …).
    #[error("cannot read GeoIP database {path}")]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// A file was read but is not a valid MaxMind DB (bad metadata, truncated search tree, …).
    #[error("{path} is not a valid MaxMind DB file")]
    Format {
        /// The offending file.
        path: PathBuf,
        /// What the reader found wrong.
        #[source]
        source: maxminddb::MaxMindDbError,
    },

    /// The IPv6 file of an IPv4 + IPv6 pair is an IPv4-only database, so it cannot answer the
    /// addresses it is there for.
    #[error("{path} must be an IPv6 database but has ip_version {found}")]
    WrongIpVersion {
        /// The offending file.
        path: PathBuf,
        /// The `ip_version` its metadata declares.
        found: u16,
    },

    /// The file is a valid MaxMind DB, but its records carry coordinates in neither supported
    /// layout (GeoIP2 City `location.latitude`/`longitude`, DB-IP lite `latitude`/`longitude`) —
    /// for example an ASN or Country database was configured by mistake.
    #[error("{path} has no usable city records: {reason}")]
    BadLayout {
        /// The offending file.
        path: PathBuf,
        /// What the layout probe found.
        reason: String,
    },

    /// A lookup hit a record that could not be decoded (a corrupt or unexpected record).
    #[error("GeoIP lookup failed")]
    Lookup(#[source] maxminddb::MaxMindDbError),

    /// [`GeoDb::spawn_reload_on_change`](crate::GeoDb::spawn_reload_on_change) was called outside
    /// a tokio runtime, so there is nowhere to run the watcher.
    #[error("the reload watcher must be spawned from within a tokio runtime")]
    NoRuntime,
}
