//! Hot reload: explicit `reload()`, failed reloads, and the polling watcher.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use meridian_geo::testdb::{self, Entry, IpVersion, Layout};
use meridian_geo::{DbFiles, GeoDb, GeoError};

/// Watcher poll interval in these tests.
const POLL: Duration = Duration::from_millis(5);
/// Upper bound on polls while waiting for the watcher; generous for a loaded CI machine.
const MAX_POLLS: u32 = 2_000;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address parses")
}

/// The default entries with `127.1.0.0/16` moved from Frankfurt to Shanghai.
fn frankfurt_moved_to_shanghai() -> Vec<Entry> {
    let mut entries = testdb::entries();
    entries.push(Entry::new("127.1.0.0/16", 31.23, 121.47, "CN", "AS", "Shanghai"));
    entries
}

fn country(db: &GeoDb, addr: IpAddr) -> Option<String> {
    db.lookup(addr).expect("lookup").and_then(|l| l.country)
}

fn write_moved(path: &Path) {
    testdb::write_db(path, Layout::DbIpLite, IpVersion::V6, &frankfurt_moved_to_shanghai())
        .expect("write replacement");
}

/// Polls `done` every [`POLL`] until it holds or [`MAX_POLLS`] polls have passed.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..MAX_POLLS {
        if done() {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
    done()
}

#[test]
fn reload_swaps_the_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("city.mmdb");
    testdb::write_city_db(&path, Layout::DbIpLite).expect("write");
    let db = GeoDb::open(DbFiles::Combined(path.clone())).expect("open");
    let clone = db.clone();
    assert_eq!(db.generation(), 1);
    assert_eq!(country(&db, testdb::EU_LOOPBACK).as_deref(), Some("DE"));

    write_moved(&path);
    // The database is in memory: nothing changes until a reload.
    assert_eq!(country(&db, testdb::EU_LOOPBACK).as_deref(), Some("DE"));

    db.reload().expect("reload");
    assert_eq!(db.generation(), 2);
    assert_eq!(country(&db, testdb::EU_LOOPBACK).as_deref(), Some("CN"));
    // Every clone shares the swap.
    assert_eq!(country(&clone, testdb::EU_LOOPBACK).as_deref(), Some("CN"));
    assert_eq!(clone.generation(), 2);
}

#[test]
fn reload_can_change_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("city.mmdb");
    testdb::write_city_db(&path, Layout::DbIpLite).expect("write");
    let db = GeoDb::open(DbFiles::Combined(path.clone())).expect("open");
    testdb::write_city_db(&path, Layout::GeoLite2City).expect("write");
    db.reload().expect("reload");
    let found = db.lookup(testdb::EU_LOOPBACK).expect("lookup").expect("found");
    assert_eq!((found.lat, found.lon), (50.11, 8.68));
}

#[test]
fn failed_reload_keeps_the_old_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("city.mmdb");
    testdb::write_city_db(&path, Layout::GeoLite2City).expect("write");
    let db = GeoDb::open(DbFiles::Combined(path.clone())).expect("open");

    std::fs::write(&path, b"truncated").expect("write garbage");
    let err = db.reload().expect_err("garbage does not load");
    assert!(matches!(err, GeoError::Format { .. }), "{err:?}");
    assert_eq!(db.generation(), 1);
    assert_eq!(country(&db, testdb::ASIA_LOOPBACK).as_deref(), Some("CN"));

    std::fs::remove_file(&path).expect("remove");
    let err = db.reload().expect_err("missing file does not load");
    assert!(matches!(err, GeoError::Read { .. }), "{err:?}");
    assert_eq!(country(&db, testdb::ASIA_LOOPBACK).as_deref(), Some("CN"));

    // A good file later reloads normally.
    write_moved(&path);
    db.reload().expect("reload");
    assert_eq!(db.generation(), 2);
    assert_eq!(country(&db, testdb::EU_LOOPBACK).as_deref(), Some("CN"));
}

#[test]
fn failed_pair_reload_keeps_both_old_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (v4, v6) = (dir.path().join("v4.mmdb"), dir.path().join("v6.mmdb"));
    testdb::write_city_db_pair(&v4, &v6, Layout::DbIpLite).expect("write");
    let db = GeoDb::open(DbFiles::Split { v4: v4.clone(), v6: v6.clone() }).expect("open");

    // A good new IPv4 file with a broken IPv6 file must not be half-applied.
    let moved: Vec<Entry> =
        frankfurt_moved_to_shanghai().into_iter().filter(|e| !e.network.contains(':')).collect();
    testdb::write_db(&v4, Layout::DbIpLite, IpVersion::V4, &moved).expect("write v4");
    testdb::write_db(&v6, Layout::DbIpLite, IpVersion::V4, &moved).expect("write v4 tree as v6");
    let err = db.reload().expect_err("IPv4 tree in the IPv6 slot");
    assert!(matches!(err, GeoError::WrongIpVersion { .. }), "{err:?}");
    assert_eq!(country(&db, testdb::EU_LOOPBACK).as_deref(), Some("DE"));
    assert_eq!(country(&db, ip("2a01:4f8::1")).as_deref(), Some("DE"));
}

#[tokio::test]
async fn watcher_picks_up_a_replaced_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("city.mmdb");
    testdb::write_city_db(&path, Layout::DbIpLite).expect("write");
    let db = GeoDb::open(DbFiles::Combined(path.clone())).expect("open");
    let _watcher = db.spawn_reload_on_change(POLL).expect("spawn watcher");

    write_moved(&path);
    let swapped = eventually(|| country(&db, testdb::EU_LOOPBACK).as_deref() == Some("CN")).await;
    assert!(swapped, "watcher never reloaded (generation {})", db.generation());

    // A broken replacement is skipped; the next good one is still picked up.
    std::fs::write(dir.path().join("garbage"), b"not a database").expect("write");
    std::fs::rename(dir.path().join("garbage"), &path).expect("rename");
    testdb::write_city_db(&path, Layout::GeoLite2City).expect("write");
    let restored = eventually(|| country(&db, testdb::EU_LOOPBACK).as_deref() == Some("DE")).await;
    assert!(restored, "watcher never recovered (generation {})", db.generation());
}

#[tokio::test]
async fn watcher_stops_when_the_database_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("city.mmdb");
    testdb::write_city_db(&path, Layout::DbIpLite).expect("write");
    let db = GeoDb::open(DbFiles::Combined(path)).expect("open");
    let watcher = db.spawn_reload_on_change(POLL).expect("spawn watcher");
    drop(db);
    assert!(eventually(|| watcher.is_finished()).await);
}

#[test]
fn watcher_needs_a_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("city.mmdb");
    testdb::write_city_db(&path, Layout::DbIpLite).expect("write");
    let db = GeoDb::open(DbFiles::Combined(path)).expect("open");
    let err = db.spawn_reload_on_change(POLL).expect_err("no runtime");
    assert!(matches!(err, GeoError::NoRuntime), "{err:?}");
}
