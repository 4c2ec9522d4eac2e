//! The bootstrap edge's `POST /auth/bootstrap` form parser (PROTOCOL §4) on arbitrary bodies.
//!
//! Properties beyond "never panics": an accepted body names a device whose `pk/dn` text parses
//! back to the same device, and the edge's one-pass field splitter decodes every UTF-8 body
//! exactly as `form_urlencoded::parse` does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_edge::fuzzing::{form_fields, parse_bootstrap_form};
use meridian_registry::ids::{DeviceName, ProductKey};

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = std::str::from_utf8(data) {
        let crates: Vec<(String, String)> = form_urlencoded::parse(data)
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        assert_eq!(form_fields(body), crates, "fields of {body:?}");
    }
    let Ok(device) = parse_bootstrap_form(data) else { return };
    let product: ProductKey = device.product_key.as_str().parse().expect("product key round-trips");
    let name: DeviceName = device.device_name.as_str().parse().expect("device name round-trips");
    assert_eq!(product, device.product_key);
    assert_eq!(name, device.device_name);
});
