//! Configuration files: arbitrary TOML into the broker's `BrokerConfig` and the edge's
//! `EdgeConfig` (the daemons' library config structs; the CLI's top-level `Config` lives in a
//! binary crate and nests these).
//!
//! Property beyond "never panics": an edge config that parses and passes `check` serialises
//! to TOML that parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_broker::config::BrokerConfig;
use meridian_edge::EdgeConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = toml::from_str::<BrokerConfig>(text);
    let Ok(edge) = toml::from_str::<EdgeConfig>(text) else { return };
    if edge.check().is_err() {
        return;
    }
    let written = toml::to_string(&edge).expect("a valid config serialises");
    let read: EdgeConfig = toml::from_str(&written).expect("serialised config parses");
    assert_eq!(read, edge);
});
