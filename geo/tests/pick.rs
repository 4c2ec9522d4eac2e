//! `Locator::pick` end to end over the test database: loopback continents, fallbacks, bias.

use std::net::IpAddr;

use meridian_geo::testdb::{self, Layout};
use meridian_geo::{
    DbFiles, FallbackReason, GeoDb, Locator, LocatorOptions, LookupOutcome, Pick, Region,
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address parses")
}

/// A locator over a fresh test database; the tempdir must outlive it only until `open` has
/// read the file, which it has by the time this returns.
fn locator(layout: Layout, geolocate_loopback: bool, default_region: &str) -> Locator {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("city.mmdb");
    testdb::write_city_db(&path, layout).expect("write test db");
    let db = GeoDb::open(DbFiles::Combined(path)).expect("open test db");
    Locator::new(Some(db), default_region, LocatorOptions { geolocate_loopback })
}

fn pick(locator: &Locator, addr: IpAddr) -> Pick {
    locator.pick(addr, &testdb::regions()).expect("regions are not empty")
}

fn found(region: &str) -> (String, LookupOutcome) {
    (region.to_owned(), LookupOutcome::Found)
}

fn fallback(region: &str, reason: FallbackReason) -> (String, LookupOutcome) {
    (region.to_owned(), LookupOutcome::Fallback(reason))
}

fn summary(pick: Pick) -> (String, LookupOutcome) {
    (pick.region_id, pick.outcome)
}

#[test]
fn loopback_falls_back_by_default() {
    for layout in [Layout::DbIpLite, Layout::GeoLite2City] {
        let locator = locator(layout, false, "us-east-1");
        for addr in [testdb::EU_LOOPBACK, testdb::ASIA_LOOPBACK, ip("::1"), ip("::ffff:127.1.0.1")]
        {
            assert_eq!(
                summary(pick(&locator, addr)),
                fallback("us-east-1", FallbackReason::Loopback),
                "{addr}"
            );
        }
    }
}

#[test]
fn geolocate_loopback_places_each_subrange_on_its_continent() {
    for layout in [Layout::DbIpLite, Layout::GeoLite2City] {
        let locator = locator(layout, true, "us-east-1");
        assert_eq!(summary(pick(&locator, testdb::EU_LOOPBACK)), found("eu-central-1"));
        assert_eq!(summary(pick(&locator, testdb::ASIA_LOOPBACK)), found("cn-shanghai"));
        assert_eq!(summary(pick(&locator, testdb::NA_LOOPBACK)), found("us-east-1"));
        assert_eq!(summary(pick(&locator, ip("::ffff:127.2.200.7"))), found("cn-shanghai"));

        let eu = pick(&locator, testdb::EU_LOOPBACK);
        assert_eq!(eu.location.and_then(|l| l.country).as_deref(), Some("DE"));

        // Loopback outside the mapped sub-ranges is asked about and not known.
        assert_eq!(
            summary(pick(&locator, ip("127.0.0.1"))),
            fallback("us-east-1", FallbackReason::Unknown)
        );
    }
}

#[test]
fn private_addresses_fall_back_even_with_geolocate_loopback() {
    let locator = locator(Layout::DbIpLite, true, "eu-central-1");
    for addr in ["10.0.0.1", "192.168.1.20", "100.64.3.4", "169.254.0.1", "fd00::1", "fe80::1"] {
        let p = pick(&locator, ip(addr));
        assert_eq!(summary(p.clone()), fallback("eu-central-1", FallbackReason::Private), "{addr}");
        assert_eq!(p.location, None);
    }
}

#[test]
fn public_addresses_pick_the_nearest_region() {
    let locator = locator(Layout::GeoLite2City, false, "eu-central-1");
    for (addr, region) in [
        ("8.8.8.8", "us-east-1"), // Mountain View
        ("::ffff:8.8.8.8", "us-east-1"),
        ("1.0.0.1", "cn-shanghai"),      // Sydney
        ("81.2.69.160", "eu-central-1"), // London
        ("2001:4860:4860::8888", "us-east-1"),
        ("240e:1::1", "cn-shanghai"),
        ("2a01:4f8::1", "eu-central-1"),
    ] {
        assert_eq!(pick(&locator, ip(addr)).region_id, region, "{addr}");
    }
}

#[test]
fn unknown_addresses_fall_back() {
    let locator = locator(Layout::DbIpLite, false, "cn-shanghai");
    for addr in ["5.5.5.5", "9.9.9.9", "2c0f:f248::1"] {
        assert_eq!(
            summary(pick(&locator, ip(addr))),
            fallback("cn-shanghai", FallbackReason::Unknown),
            "{addr}"
        );
    }
}

#[test]
fn default_region_outside_candidates_uses_the_first_candidate() {
    let locator = locator(Layout::DbIpLite, false, "ap-southeast-2");
    let candidates =
        [Region::new("cn-shanghai", 31.23, 121.47), Region::new("eu-central-1", 50.11, 8.68)];
    let p = locator.pick(ip("10.1.1.1"), &candidates).expect("candidates");
    assert_eq!(summary(p), fallback("cn-shanghai", FallbackReason::Private));
    // Found picks are unaffected by the default.
    let p = locator.pick(ip("81.2.69.1"), &candidates).expect("candidates");
    assert_eq!(summary(p), found("eu-central-1"));
}

#[test]
fn bias_moves_the_pick() {
    let locator = locator(Layout::GeoLite2City, false, "us-east-1");
    let mut candidates = testdb::regions();
    // London is ~640 km from Frankfurt and ~5,900 km from Virginia.
    assert_eq!(
        locator.pick(ip("81.2.69.1"), &candidates).map(|p| p.region_id).as_deref(),
        Some("eu-central-1")
    );
    candidates[2].bias_km = 6_000.0;
    assert_eq!(
        locator.pick(ip("81.2.69.1"), &candidates).map(|p| p.region_id).as_deref(),
        Some("us-east-1")
    );
    candidates[2].bias_km = 0.0;
    candidates[0].bias_km = -6_000.0;
    assert_eq!(
        locator.pick(ip("81.2.69.1"), &candidates).map(|p| p.region_id).as_deref(),
        Some("us-east-1")
    );
}

#[test]
fn subset_of_candidates() {
    let locator = locator(Layout::DbIpLite, true, "us-east-1");
    let only_asia_and_us = &testdb::regions()[1..];
    // Frankfurt is nearer Virginia (~6,500 km) than Shanghai (~8,820 km).
    let p = locator.pick(testdb::EU_LOOPBACK, only_asia_and_us).expect("candidates");
    assert_eq!(summary(p), found("us-east-1"));
}
