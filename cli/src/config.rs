//! The all-in-one daemon's configuration: parsed once at start-up into typed structs, from a
//! TOML file with `MERIDIAN_*` environment overrides for the values operators inject.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use meridian_broker::config::{ApplicationConfig, LimitsConfig};
use meridian_registry::ids::{AccountId, InstanceId, RegionId};
use serde::Deserialize;

/// The documented default, printed by `meridian generate-config`. A test parses it, so it can
/// never drift from [`Config`].
pub const DEFAULT_CONFIG: &str = include_str!("../../deploy/meridian.toml");

/// Environment variable holding the DeviceSecret sealing key (64 hex digits); it wins over
/// `secrets.key_file`.
pub const SECRET_KEY_ENV: &str = "MERIDIAN_SECRET_KEY";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub store: StoreConfig,
    pub secrets: SecretsConfig,
    #[serde(default)]
    pub regions: Vec<RegionConfig>,
    #[serde(default)]
    pub instances: Vec<InstanceConfig>,
    #[serde(default)]
    pub demo: Option<DemoConfig>,
    #[serde(default)]
    pub broker: BrokerDefaults,
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// Settings every broker of `meridian up` shares.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerDefaults {
    /// Standard MQTT users: username → password.
    #[serde(default)]
    pub users: std::collections::HashMap<String, String>,
    /// Application clients (server-side subscription): username → credential.
    #[serde(default)]
    pub applications: std::collections::HashMap<String, ApplicationConfig>,
    #[serde(default)]
    pub allow_anonymous: bool,
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// The Prometheus endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` serving `/metrics`; empty disables it.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig { listen: default_metrics_listen() }
    }
}

fn default_metrics_listen() -> String {
    "127.0.0.1:9100".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The redb file; relative paths are relative to the config file.
    pub path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// File holding the sealing key; created with a fresh key (mode 0600) on first start.
    pub key_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    pub id: RegionId,
    pub display_name: String,
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default)]
    pub bias_km: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    pub id: InstanceId,
    pub region: RegionId,
    /// The owning account; it must exist (the demo account is created first).
    pub owner: AccountId,
    /// Host and port devices are told to connect to (what the bootstrap edge answers).
    pub mqtt_host: String,
    pub mqtt_port: u16,
    /// Where this instance's broker listens; defaults to `mqtt_host:mqtt_port`.
    #[serde(default)]
    pub listen: Option<String>,
}

impl InstanceConfig {
    pub fn listen(&self) -> String {
        self.listen.clone().unwrap_or_else(|| format!("{}:{}", self.mqtt_host, self.mqtt_port))
    }
}

/// A demo tenant created on first start so a fresh `meridian up` has something to show.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    pub account: AccountId,
    pub account_name: String,
}

impl Config {
    /// Reads and checks the file, resolving relative paths against its directory.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Config::parse(&text, base).with_context(|| format!("in config {}", path.display()))
    }

    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Config> {
        let mut config: Config = toml::from_str(text)?;
        config.store.path = base.join(&config.store.path);
        config.secrets.key_file = base.join(&config.secrets.key_file);
        config.check()?;
        Ok(config)
    }

    /// Cross-field rules serde cannot express.
    fn check(&self) -> anyhow::Result<()> {
        for instance in &self.instances {
            if !self.regions.iter().any(|r| r.id == instance.region) {
                bail!("instance {} names unknown region {}", instance.id, instance.region);
            }
        }
        let mut ids: Vec<_> = self.instances.iter().map(|i| &i.id).collect();
        ids.sort();
        if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
            bail!("instance {} is configured twice", pair[0]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_parses() {
        let config = Config::parse(DEFAULT_CONFIG, Path::new("/etc/meridian")).unwrap();
        assert!(config.regions.len() >= 3);
        assert!(config.instances.len() >= 3);
        assert!(config.store.path.starts_with("/etc/meridian"));
    }

    #[test]
    fn rejects_unknown_fields_and_regions() {
        let unknown = "[store]\npath='x'\ntypo=1\n[secrets]\nkey_file='k'\n";
        let error = Config::parse(unknown, Path::new(".")).unwrap_err();
        assert!(format!("{error:#}").contains("typo"), "{error:#}");

        let orphan = "[store]\npath='x'\n[secrets]\nkey_file='k'\n[[instances]]\nid='i-1'\n\
                      region='mars-1'\nowner='demo'\nmqtt_host='h'\nmqtt_port=1\n";
        let error = Config::parse(orphan, Path::new(".")).unwrap_err();
        assert!(format!("{error:#}").contains("unknown region mars-1"), "{error:#}");
    }
}
