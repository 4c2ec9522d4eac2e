//! Parsing the broker configuration.

use super::*;

/// A per-kind table gives only what it changes; the rest keeps that kind's default.
#[test]
fn per_kind_tables_fill_in_their_own_defaults() {
    let text = "[device]\nsession_expiry = \"1h\"\n[application]\nmax_topic_len = 64\n";
    let limits: LimitsConfig = toml::from_str(text).unwrap();
    assert_eq!(
        limits.device,
        ClientLimits { session_expiry: Duration::from_secs(3600), ..ClientLimits::DEVICE }
    );
    assert_eq!(limits.application, ClientLimits { max_topic_len: 64, ..ClientLimits::APPLICATION });
    assert_eq!(limits.standard, ClientLimits::STANDARD);
    assert!(toml::from_str::<LimitsConfig>("[device]\nsession_expiry = \"soon\"\n").is_err());
    assert!(toml::from_str::<LimitsConfig>("[standard]\ntypo = 1\n").is_err());
}
