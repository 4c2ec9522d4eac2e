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

/// The MQTT 5.0 settings (PROTOCOL §11) and their defaults.
#[test]
fn mqtt5_settings() {
    let defaults: LimitsConfig = toml::from_str("").unwrap();
    assert_eq!(
        (defaults.topic_alias_maximum, defaults.receive_maximum, defaults.server_keep_alive),
        (64, 1024, None)
    );
    let text = "topic_alias_maximum = 0\nreceive_maximum = 10\nserver_keep_alive = 90\n";
    let limits: LimitsConfig = toml::from_str(text).unwrap();
    assert_eq!((limits.topic_alias_maximum, limits.receive_maximum), (0, 10));
    assert_eq!(limits.server_keep_alive, Some(90));
    assert!(toml::from_str::<LimitsConfig>("receive_maximum = 70000\n").is_err());
}
