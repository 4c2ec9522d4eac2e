//! Brokers' kept device subscriptions: the body of `POST /internal/v1/device-subscriptions`
//! (arbitrary JSON into its records, each through the registry's bounds check) and a stored
//! record read back by a broker's view. Property: a record that passes the check is stored and
//! read back unchanged, and what `keepable` admits never makes the check fail.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_registry::keys;
use meridian_registry::model::DeviceSubscriptions;
use meridian_registry::subscriptions::{check, keepable, parse};

#[derive(serde::Deserialize)]
struct Body {
    devices: Vec<DeviceSubscriptions>,
}

fuzz_target!(|data: &[u8]| {
    let records = match serde_json::from_slice::<Body>(data) {
        Ok(body) => body.devices,
        Err(_) => match serde_json::from_slice::<DeviceSubscriptions>(data) {
            Ok(record) => vec![record],
            Err(_) => Vec::new(),
        },
    };
    for mut record in records {
        let key = keys::subscriptions(&record.device);
        if check(&record).is_ok() {
            let stored = serde_json::to_vec(&record).expect("a record serialises");
            assert_eq!(parse(&key, &stored), Some(record.clone()), "round trip");
        }
        record.filters.retain(|filter, qos| keepable(filter) && *qos <= 1);
        while record.filters.len() > meridian_registry::subscriptions::MAX_KEPT_FILTERS {
            record.filters.pop_last();
        }
        assert!(check(&record).is_ok(), "keepable filters pass the check");
    }
    // Whatever bytes a store holds at a record's key, reading them never panics.
    let _ = parse("subscriptions/a13FN5TplKq/lamp-1", data);
});
