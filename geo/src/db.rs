//! The MaxMind DB reader(s) behind an atomically swappable pointer.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;
use std::{fmt, io};

use arc_swap::ArcSwap;
use maxminddb::{Reader, WithinOptions};
use serde::{Deserialize, Serialize};

use crate::addr::canonicalize;
use crate::error::GeoError;
use crate::location::{Location, RawRecord};

/// How many records the layout probe decodes before declaring a file to have no coordinates.
/// Real city databases have coordinates on nearly every record, so a handful is plenty; the
/// bound keeps opening a large file cheap.
const LAYOUT_PROBE_RECORDS: usize = 64;

/// Which file(s) hold the database.
///
/// In TOML: `files = { combined = "/var/lib/meridian/city.mmdb" }` or
/// `files = { split = { v4 = "…-ipv4.mmdb", v6 = "…-ipv6.mmdb" } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DbFiles {
    /// One file answers both address families, as MaxMind ships GeoIP2/GeoLite2 City (an IPv6
    /// tree with the IPv4 space inside it). An IPv4-only file is accepted too; it then places no
    /// IPv6 address.
    Combined(PathBuf),
    /// Separate files, as `@ip-location-db` ships them: IPv4 addresses (including IPv4-mapped
    /// IPv6) are looked up in `v4`, every other address in `v6`, which must be an IPv6 database.
    Split {
        /// Answers IPv4 addresses.
        v4: PathBuf,
        /// Answers IPv6 addresses.
        v6: PathBuf,
    },
}

impl DbFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        let (first, second) = match self {
            Self::Combined(path) => (path.as_path(), None),
            Self::Split { v4, v6 } => (v4.as_path(), Some(v6.as_path())),
        };
        std::iter::once(first).chain(second)
    }
}

/// A GeoIP database that can be replaced while lookups are running.
///
/// Cloning is cheap and every clone sees the same database. Lookups never block: they take a
/// lock-free snapshot of the current reader(s), so a reload running on another thread only
/// changes which snapshot the *next* lookup gets.
///
/// Files are read fully into memory rather than memory-mapped: operators replace database
/// files in place, and a mapped file that is truncated under a reader crashes the process.
#[derive(Clone)]
pub struct GeoDb {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    files: DbFiles,
    /// Swapped whole on reload, so a lookup sees either the old pair of files or the new pair,
    /// never one of each.
    current: ArcSwap<Snapshot>,
    /// Serialises reloads (explicit calls and the watcher) so that an older read can never be
    /// swapped in over a newer one and generations stay in order. A `std` mutex because it is
    /// only held on blocking threads and never across an `.await`.
    reload_lock: Mutex<()>,
}

/// Everything read from disk by one (re)load.
struct Snapshot {
    readers: Readers,
    /// The files' identity when they were read, for the watcher's change check.
    fingerprint: Fingerprint,
    /// 1 for the initial open, +1 per successful reload.
    generation: u64,
}

enum Readers {
    Combined(Reader<Vec<u8>>),
    Split { v4: Reader<Vec<u8>>, v6: Reader<Vec<u8>> },
}

/// The identity (size, mtime, inode) of each configured file, in [`DbFiles`] order; `None` for
/// a file that could not be stat-ed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint(Vec<Option<FileStamp>>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    /// Catches an atomic rename that keeps size and (coarse) mtime.
    inode: u64,
}

/// What [`GeoDb::reload_if_changed`] did.
#[derive(Debug)]
pub(crate) enum ReloadCheck {
    /// The files look as they did at the last load (or at the last failed attempt).
    Unchanged,
    /// The files changed and the new database is in service.
    Reloaded { generation: u64 },
    /// The files changed but could not be loaded; the old database stays in service.
    Failed {
        /// The fingerprint that failed, so the same broken files are not retried every poll.
        fingerprint: Fingerprint,
        error: GeoError,
    },
}

impl GeoDb {
    /// Opens the database file(s).
    ///
    /// Each file must be a MaxMind DB whose records carry coordinates in a supported layout;
    /// this is checked here by decoding a few records, so a misconfigured file (an ASN database,
    /// say) fails at start-up rather than at the first lookup.
    ///
    /// # Errors
    ///
    /// [`GeoError::Read`], [`GeoError::Format`], [`GeoError::WrongIpVersion`] or
    /// [`GeoError::BadLayout`] for the first file that fails.
    pub fn open(files: DbFiles) -> Result<Self, GeoError> {
        let (readers, fingerprint) = load(&files)?;
        let snapshot = Snapshot { readers, fingerprint, generation: 1 };
        Ok(Self {
            shared: Arc::new(Shared {
                files,
                current: ArcSwap::from_pointee(snapshot),
                reload_lock: Mutex::new(()),
            }),
        })
    }

    /// Looks `ip` up after [`canonicalize`](crate::canonicalize)-ing it.
    ///
    /// Returns `Ok(None)` when the database has no record for the address, or a record without
    /// coordinates, or when `ip` is IPv6 and the only file is IPv4-only. No address is filtered
    /// out here: deciding that private or loopback addresses are not worth a lookup is
    /// [`Locator`](crate::Locator)'s job.
    ///
    /// # Errors
    ///
    /// [`GeoError::Lookup`] when the record found cannot be decoded.
    pub fn lookup(&self, ip: IpAddr) -> Result<Option<Location>, GeoError> {
        let ip = canonicalize(ip);
        let snapshot = self.shared.current.load();
        let Some(reader) = snapshot.readers.for_addr(ip) else {
            return Ok(None);
        };
        let result = reader.lookup(ip).map_err(GeoError::Lookup)?;
        let record: Option<RawRecord> = result.decode().map_err(GeoError::Lookup)?;
        Ok(record.and_then(RawRecord::into_location))
    }

    /// Re-reads the configured file(s) and, if they load, swaps them in atomically.
    ///
    /// Lookups keep running against the old database while the new one is read and checked.
    ///
    /// # Errors
    ///
    /// The same errors as [`open`](Self::open). On error the old database stays in service.
    pub fn reload(&self) -> Result<(), GeoError> {
        let _serialised = self
            .shared
            .reload_lock
            .lock()
            // The mutex guards no data, so a panic in another reload leaves nothing broken.
            .unwrap_or_else(PoisonError::into_inner);
        let (readers, fingerprint) = load(&self.shared.files)?;
        let generation = self.shared.current.load().generation + 1;
        self.shared.current.store(Arc::new(Snapshot { readers, fingerprint, generation }));
        tracing::info!(files = ?self.shared.files, generation, "GeoIP database reloaded");
        Ok(())
    }

    /// Counts successful loads: 1 after [`open`](Self::open), then +1 per reload. Handy for
    /// metrics and for tests that wait for the watcher.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.shared.current.load().generation
    }

    /// The file(s) this database reads.
    #[must_use]
    pub fn files(&self) -> &DbFiles {
        &self.shared.files
    }

    /// Reloads when the files' identity differs from both the database in service and
    /// `last_failed`. Blocking: the watcher runs it on tokio's blocking pool.
    pub(crate) fn reload_if_changed(&self, last_failed: Option<&Fingerprint>) -> ReloadCheck {
        let on_disk = fingerprint(&self.shared.files);
        let unchanged = on_disk == self.shared.current.load().fingerprint;
        if unchanged || last_failed == Some(&on_disk) {
            return ReloadCheck::Unchanged;
        }
        match self.reload() {
            Ok(()) => ReloadCheck::Reloaded { generation: self.generation() },
            Err(error) => ReloadCheck::Failed { fingerprint: on_disk, error },
        }
    }
}

impl fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoDb")
            .field("files", &self.shared.files)
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl Readers {
    /// The reader that answers `ip` (already canonical), if any.
    fn for_addr(&self, ip: IpAddr) -> Option<&Reader<Vec<u8>>> {
        match (self, ip) {
            (Self::Combined(reader), IpAddr::V6(_)) if reader.metadata().ip_version == 4 => None,
            (Self::Combined(reader), _) => Some(reader),
            (Self::Split { v4, .. }, IpAddr::V4(_)) => Some(v4),
            (Self::Split { v6, .. }, IpAddr::V6(_)) => Some(v6),
        }
    }
}

/// Reads and checks every configured file. The fingerprint is taken *before* the files are
/// read: if a file is replaced mid-read, the next watcher poll sees a newer identity and loads
/// again, instead of the change going unnoticed.
fn load(files: &DbFiles) -> Result<(Readers, Fingerprint), GeoError> {
    let fingerprint = fingerprint(files);
    let readers = match files {
        DbFiles::Combined(path) => Readers::Combined(open_reader(path)?),
        DbFiles::Split { v4, v6 } => {
            let v4 = open_reader(v4)?;
            let v6_reader = open_reader(v6)?;
            let found = v6_reader.metadata().ip_version;
            if found != 6 {
                return Err(GeoError::WrongIpVersion { path: v6.clone(), found });
            }
            Readers::Split { v4, v6: v6_reader }
        }
    };
    Ok((readers, fingerprint))
}

fn open_reader(path: &Path) -> Result<Reader<Vec<u8>>, GeoError> {
    let bytes =
        fs::read(path).map_err(|source| GeoError::Read { path: path.to_owned(), source })?;
    let reader = Reader::from_source(bytes)
        .map_err(|source| GeoError::Format { path: path.to_owned(), source })?;
    probe_layout(path, &reader)?;
    Ok(reader)
}

/// Succeeds once a record with coordinates decodes; fails on a record that does not decode,
/// on an empty database, or after [`LAYOUT_PROBE_RECORDS`] records without coordinates.
fn probe_layout(path: &Path, reader: &Reader<Vec<u8>>) -> Result<(), GeoError> {
    let bad_layout = |reason: String| GeoError::BadLayout { path: path.to_owned(), reason };
    let networks = reader
        .networks(WithinOptions::default())
        .map_err(|e| bad_layout(format!("cannot walk the search tree: {e}")))?;
    let mut probed = 0;
    for item in networks.take(LAYOUT_PROBE_RECORDS) {
        let record = item
            .and_then(|found| found.decode::<RawRecord>())
            .map_err(|e| bad_layout(format!("record does not decode: {e}")))?;
        if record.and_then(RawRecord::into_location).is_some() {
            return Ok(());
        }
        probed += 1;
    }
    Err(bad_layout(if probed == 0 {
        "the database holds no records".to_owned()
    } else {
        format!("none of the first {probed} records has latitude and longitude")
    }))
}

fn fingerprint(files: &DbFiles) -> Fingerprint {
    Fingerprint(files.paths().map(|path| stamp(path).ok()).collect())
}

fn stamp(path: &Path) -> io::Result<FileStamp> {
    let meta = fs::metadata(path)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(FileStamp { len: meta.len(), modified: meta.modified().ok(), inode })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb::{self, Layout};

    fn open_test_db(dir: &Path) -> (GeoDb, PathBuf) {
        let path = dir.join("city.mmdb");
        testdb::write_city_db(&path, Layout::DbIpLite).expect("write");
        let db = GeoDb::open(DbFiles::Combined(path.clone())).expect("open");
        (db, path)
    }

    #[test]
    fn unchanged_files_are_not_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, _) = open_test_db(dir.path());
        assert!(matches!(db.reload_if_changed(None), ReloadCheck::Unchanged));
        assert_eq!(db.generation(), 1);
    }

    #[test]
    fn broken_files_are_tried_once_until_they_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, path) = open_test_db(dir.path());

        fs::remove_file(&path).expect("remove");
        let ReloadCheck::Failed { fingerprint, error } = db.reload_if_changed(None) else {
            panic!("a missing file must fail to load");
        };
        assert!(matches!(error, GeoError::Read { .. }), "{error:?}");
        assert!(matches!(db.reload_if_changed(Some(&fingerprint)), ReloadCheck::Unchanged));
        assert!(db.lookup(testdb::EU_LOOPBACK).expect("lookup").is_some());

        testdb::write_city_db(&path, Layout::GeoLite2City).expect("write");
        assert!(matches!(
            db.reload_if_changed(Some(&fingerprint)),
            ReloadCheck::Reloaded { generation: 2 }
        ));
    }
}
