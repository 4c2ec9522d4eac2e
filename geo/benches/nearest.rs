//! Lookup + nearest pick over the test database, the per-request cost of a nearest-access
//! bootstrap. Run with `cargo bench -p meridian-geo`.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use meridian_geo::testdb::{self, Layout};
use meridian_geo::{DbFiles, GeoDb, Location, Locator, LocatorOptions, Region, nearest};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let regions = regions(30);
    let three = testdb::regions();
    for (name, layout) in [("dbip", Layout::DbIpLite), ("geolite2", Layout::GeoLite2City)] {
        let path = dir.path().join(format!("{name}.mmdb"));
        testdb::write_city_db(&path, layout).expect("write test db");
        let db = GeoDb::open(DbFiles::Combined(path)).expect("open test db");
        let locator = Locator::new(
            Some(db.clone()),
            "us-east-1",
            LocatorOptions { geolocate_loopback: true },
        );
        let found: IpAddr = "81.2.69.160".parse().expect("ip");
        let unknown: IpAddr = "5.5.5.5".parse().expect("ip");

        c.bench_function(&format!("{name}/lookup"), |b| b.iter(|| db.lookup(black_box(found))));
        c.bench_function(&format!("{name}/pick_found_3_regions"), |b| {
            b.iter(|| locator.pick(black_box(testdb::ASIA_LOOPBACK), &three))
        });
        c.bench_function(&format!("{name}/pick_found_30_regions"), |b| {
            b.iter(|| locator.pick(black_box(found), &regions))
        });
        c.bench_function(&format!("{name}/pick_unknown"), |b| {
            b.iter(|| locator.pick(black_box(unknown), &regions))
        });
    }
    let here = Location::new(51.51, -0.13);
    c.bench_function("nearest_30_regions", |b| b.iter(|| nearest(black_box(&here), &regions)));
    c.bench_function("private_fallback", |b| {
        let locator = Locator::new(None, "us-east-1", LocatorOptions::default());
        let private: IpAddr = "10.1.2.3".parse().expect("ip");
        b.iter(|| locator.pick(black_box(private), &regions))
    });
}

/// `n` regions spread over the globe, plus the three test regions.
fn regions(n: u32) -> Vec<Region> {
    let mut regions = testdb::regions();
    for i in 0..n.saturating_sub(3) {
        let lat = -60.0 + f64::from(i * 37 % 120);
        let lon = -180.0 + f64::from(i * 71 % 360);
        regions.push(Region::new(format!("region-{i}"), lat, lon));
    }
    regions
}

criterion_group!(benches, bench);
criterion_main!(benches);
