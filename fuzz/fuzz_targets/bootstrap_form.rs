//! The bootstrap edge's `POST /auth/bootstrap` form parser (SPEC §4) on arbitrary bodies.
//!
//! Property beyond "never panics": an accepted body names a device whose `pk/dn` text parses
//! back to the same device.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_edge::fuzzing::parse_bootstrap_form;
use meridian_registry::ids::{DeviceName, ProductKey};

fuzz_target!(|data: &[u8]| {
    let Ok(device) = parse_bootstrap_form(data) else { return };
    let product: ProductKey = device.product_key.as_str().parse().expect("product key round-trips");
    let name: DeviceName = device.device_name.as_str().parse().expect("device name round-trips");
    assert_eq!(product, device.product_key);
    assert_eq!(name, device.device_name);
});
