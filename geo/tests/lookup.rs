//! `GeoDb` over databases in both layouts, combined and split, and the errors opening bad files.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use meridian_geo::testdb::{self, Entry, IpVersion, Layout};
use meridian_geo::{DbFiles, GeoDb, GeoError, Location};

const LAYOUTS: [Layout; 2] = [Layout::DbIpLite, Layout::GeoLite2City];

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address parses")
}

fn combined(dir: &Path, layout: Layout) -> GeoDb {
    let path = dir.join("city.mmdb");
    testdb::write_city_db(&path, layout).expect("write test db");
    GeoDb::open(DbFiles::Combined(path)).expect("open test db")
}

fn split(dir: &Path, layout: Layout) -> GeoDb {
    let (v4, v6) = (dir.join("city-ipv4.mmdb"), dir.join("city-ipv6.mmdb"));
    testdb::write_city_db_pair(&v4, &v6, layout).expect("write test db pair");
    GeoDb::open(DbFiles::Split { v4, v6 }).expect("open test db pair")
}

/// DB-IP lite stores `f32`, so allow its rounding; GeoLite2 doubles round-trip exactly.
fn assert_near(found: &Location, lat: f64, lon: f64, country: &str) {
    assert!((found.lat - lat).abs() < 1e-4, "lat {} vs {lat}", found.lat);
    assert!((found.lon - lon).abs() < 1e-4, "lon {} vs {lon}", found.lon);
    assert_eq!(found.country.as_deref(), Some(country));
}

/// A host inside the entry's network: the network address with the last bit set.
fn host_in(entry: &Entry) -> IpAddr {
    let base = entry.network.split('/').next().expect("cidr has an address");
    match ip(base) {
        IpAddr::V4(v4) => Ipv4Addr::from(u32::from(v4) | 1).into(),
        IpAddr::V6(v6) => Ipv6Addr::from(u128::from(v6) | 1).into(),
    }
}

fn assert_places_every_entry(db: &GeoDb) {
    for entry in testdb::entries() {
        let found = db.lookup(host_in(&entry)).expect("lookup");
        match entry.coordinates {
            Some((lat, lon)) => {
                let found = found.unwrap_or_else(|| panic!("{} not found", entry.network));
                assert_near(&found, lat, lon, &entry.country);
            }
            None => assert_eq!(found, None, "{} has no coordinates", entry.network),
        }
    }
}

#[test]
fn combined_file_in_both_layouts() {
    for layout in LAYOUTS {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_places_every_entry(&combined(dir.path(), layout));
    }
}

#[test]
fn geolite2_doubles_are_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = combined(dir.path(), Layout::GeoLite2City);
    let found = db.lookup(ip("127.1.2.3")).expect("lookup").expect("found");
    assert_eq!((found.lat, found.lon), (50.11, 8.68));
}

#[test]
fn dbip_floats_are_widened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = combined(dir.path(), Layout::DbIpLite);
    let found = db.lookup(ip("127.1.2.3")).expect("lookup").expect("found");
    assert_eq!(found.lat, f64::from(50.11_f32));
    assert_eq!(found.lon, f64::from(8.68_f32));
}

#[test]
fn split_pair_routes_each_family_to_its_file() {
    for layout in LAYOUTS {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = split(dir.path(), layout);
        assert_places_every_entry(&db);
        // The IPv6 file holds no IPv4 data, so a hit proves the mapped address went to the
        // IPv4 file.
        let mapped = db.lookup(ip("::ffff:8.8.8.8")).expect("lookup").expect("found");
        assert_near(&mapped, 37.386, -122.0838, "US");
    }
}

#[test]
fn mapped_ipv6_equals_plain_ipv4() {
    for layout in LAYOUTS {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = combined(dir.path(), layout);
        for (mapped, plain) in [
            ("::ffff:1.0.0.1", "1.0.0.1"),
            ("::ffff:127.2.0.1", "127.2.0.1"),
            ("::ffff:81.2.69.160", "81.2.69.160"),
        ] {
            let a = db.lookup(ip(mapped)).expect("lookup mapped");
            let b = db.lookup(ip(plain)).expect("lookup plain");
            assert!(a.is_some(), "{mapped}");
            assert_eq!(a, b, "{mapped}");
        }
    }
}

#[test]
fn unknown_and_country_only_addresses_are_none() {
    for layout in LAYOUTS {
        let dir = tempfile::tempdir().expect("tempdir");
        for db in [combined(dir.path(), layout), split(dir.path(), layout)] {
            for addr in ["5.5.5.5", "9.9.9.9", "127.0.0.1", "127.4.0.1", "2c0f:f248::1"] {
                assert_eq!(db.lookup(ip(addr)).expect("lookup"), None, "{addr}");
            }
        }
    }
}

#[test]
fn ipv4_only_combined_file_places_no_ipv6() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v4.mmdb");
    let v4_entries: Vec<Entry> =
        testdb::entries().into_iter().filter(|e| !e.network.contains(':')).collect();
    testdb::write_db(&path, Layout::DbIpLite, IpVersion::V4, &v4_entries).expect("write");
    let db = GeoDb::open(DbFiles::Combined(path)).expect("open");
    assert!(db.lookup(ip("8.8.8.8")).expect("lookup").is_some());
    assert_eq!(db.lookup(ip("2001:4860::1")).expect("lookup"), None);
}

#[test]
fn missing_file_is_a_read_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = GeoDb::open(DbFiles::Combined(dir.path().join("absent.mmdb"))).expect_err("missing");
    assert!(matches!(err, GeoError::Read { .. }), "{err:?}");
}

#[test]
fn garbage_file_is_a_format_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("garbage.mmdb");
    std::fs::write(&path, b"this is not a maxmind database").expect("write");
    let err = GeoDb::open(DbFiles::Combined(path.clone())).expect_err("garbage");
    assert!(matches!(&err, GeoError::Format { path: p, .. } if *p == path), "{err:?}");
}

#[test]
fn ipv4_file_in_the_ipv6_slot_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (v4, v6) = (dir.path().join("a.mmdb"), dir.path().join("b.mmdb"));
    testdb::write_city_db_pair(&v4, &v6, Layout::DbIpLite).expect("write");
    let err = GeoDb::open(DbFiles::Split { v4: v6.clone(), v6: v4 }).expect_err("swapped files");
    assert!(matches!(err, GeoError::WrongIpVersion { found: 4, .. }), "{err:?}");
}

#[test]
fn database_without_coordinates_is_a_bad_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("country.mmdb");
    let country_only: Vec<Entry> =
        testdb::entries().into_iter().map(|e| Entry { coordinates: None, ..e }).collect();
    testdb::write_db(&path, Layout::GeoLite2City, IpVersion::V6, &country_only).expect("write");
    let err = GeoDb::open(DbFiles::Combined(path.clone())).expect_err("no coordinates");
    assert!(matches!(err, GeoError::BadLayout { .. }), "{err:?}");

    testdb::write_db(&path, Layout::DbIpLite, IpVersion::V6, &[]).expect("write empty");
    let err = GeoDb::open(DbFiles::Combined(path)).expect_err("empty");
    assert!(matches!(err, GeoError::BadLayout { .. }), "{err:?}");
}
