//! The all-in-one daemon's configuration: parsed once at start-up into typed structs, from a
//! TOML file with `MERIDIAN_*` environment overrides for the values operators inject.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use anyhow::{Context, bail};
use meridian_broker::config::{ApplicationConfig, LimitsConfig};
use meridian_registry::ids::{AccountId, InstanceId, RegionId};
use meridian_registry::model::MqttEndpoint;
use meridian_registry::secret::SecretKey;
use meridian_registry::store::{JetStreamStore, RedbStore, Store};
use serde::Deserialize;

/// The documented default, printed by `meridian generate-config`. A test parses it, so it can
/// never drift from [`Config`].
pub const DEFAULT_CONFIG: &str = include_str!("../../deploy/meridian.toml");

/// Environment variable holding the DeviceSecret sealing key (64 hex digits); it wins over
/// `secrets.key_file`.
pub const SECRET_KEY_ENV: &str = "MERIDIAN_SECRET_KEY";
/// Environment variables holding the operator token (account creation) and the node token
/// (the internal watch API); each wins over its file.
pub const OPERATOR_TOKEN_ENV: &str = "MERIDIAN_OPERATOR_TOKEN";
pub const NODE_TOKEN_ENV: &str = "MERIDIAN_NODE_TOKEN";

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
    /// The bootstrap edge; every field has a documented default.
    #[serde(default)]
    pub edge: meridian_edge::EdgeConfig,
    #[serde(default)]
    pub control: ControlConfig,
}

/// The control plane's listeners and credentials.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// The admin API (`meridian ctl` talks to it).
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// The internal watch API for separate broker processes; never expose it publicly.
    #[serde(default = "default_internal_listen")]
    pub internal_listen: String,
    /// Created with a random token on first start; `MERIDIAN_OPERATOR_TOKEN` wins over it.
    #[serde(default = "default_operator_token_file")]
    pub operator_token_file: PathBuf,
    /// Created with a random token on first start; `MERIDIAN_NODE_TOKEN` wins over it.
    #[serde(default = "default_node_token_file")]
    pub node_token_file: PathBuf,
    /// Where the demo account's API key is written on first start (mode 0600).
    #[serde(default = "default_demo_key_file")]
    pub demo_api_key_file: PathBuf,
    /// Limits on each account's distribution tasks (`[control.tasks]`).
    #[serde(default)]
    pub tasks: meridian_control::distribution::TaskLimits,
}

impl Default for ControlConfig {
    fn default() -> ControlConfig {
        ControlConfig {
            admin_listen: default_admin_listen(),
            internal_listen: default_internal_listen(),
            operator_token_file: default_operator_token_file(),
            node_token_file: default_node_token_file(),
            demo_api_key_file: default_demo_key_file(),
            tasks: Default::default(),
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:8081".into()
}

fn default_internal_listen() -> String {
    "127.0.0.1:8082".into()
}

fn default_operator_token_file() -> PathBuf {
    "../data/operator.token".into()
}

fn default_node_token_file() -> PathBuf {
    "../data/node.token".into()
}

fn default_demo_key_file() -> PathBuf {
    "../data/demo-api-key".into()
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

/// `[store]`: the embedded redb file (the default), or a NATS JetStream bucket shared by every
/// daemon (docs/SCALE-OUT.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default)]
    pub backend: StoreBackend,
    /// The redb file (`backend = "redb"`); relative paths are relative to the config file.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// `[store.nats]` (`backend = "nats"`).
    #[serde(default)]
    pub nats: Option<meridian_registry::store::NatsConfig>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Redb,
    Nats,
}

/// `url` without the `user:password@` part, for logs and errors.
fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://{host}"),
            None => url.to_owned(),
        },
        None => url.rsplit_once('@').map_or_else(|| url.to_owned(), |(_, host)| host.to_owned()),
    }
}

fn default_store_path() -> PathBuf {
    "../data/meridian.redb".into()
}

impl StoreConfig {
    /// Opens the store. `provision` creates the NATS bucket when missing (the control plane's
    /// job); readers only connect.
    pub async fn open(&self, provision: bool) -> anyhow::Result<Arc<dyn Store>> {
        match self.backend {
            StoreBackend::Redb => {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                let store = RedbStore::open(&self.path)
                    .with_context(|| format!("opening store {}", self.path.display()))?;
                Ok(Arc::new(store))
            }
            StoreBackend::Nats => {
                let nats = self.nats.clone().context("backend = \"nats\" needs [store.nats]")?;
                // Never the credentials a URL may carry (`nats://user:pass@host`).
                let servers: Vec<String> =
                    nats.servers.iter().map(|url| without_userinfo(url)).collect();
                let servers = servers.join(",");
                let store = JetStreamStore::connect(nats)
                    .await
                    .with_context(|| format!("connecting to NATS at {servers}"))?;
                if provision {
                    store.provision().await.context("creating the registry bucket")?;
                }
                Ok(Arc::new(store))
            }
        }
    }

    /// Where the store is, for logs.
    pub fn describe(&self) -> String {
        match (&self.backend, &self.nats) {
            (StoreBackend::Nats, Some(nats)) => format!("nats bucket {}", nats.bucket),
            _ => self.path.display().to_string(),
        }
    }

    pub fn resolve_paths(&mut self, base: &Path) {
        self.path = base.join(&self.path);
        if let Some(nats) = &mut self.nats {
            for path in [&mut nats.credentials_file, &mut nats.nkey_seed_file].into_iter().flatten()
            {
                *path = base.join(&*path);
            }
            if let Some(tls) = &mut nats.tls {
                for path in
                    [&mut tls.ca_file, &mut tls.cert_file, &mut tls.key_file].into_iter().flatten()
                {
                    *path = base.join(&*path);
                }
            }
        }
    }
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
    /// The configured instance (in this region) whose endpoint is the region's public
    /// endpoint: what `GET /auth/bootstrap/regionId/{n}` answers. Without it the region-pinned
    /// route answers "unknown region" for this region; it never falls back to an instance an
    /// account created.
    #[serde(default)]
    pub public_instance: Option<InstanceId>,
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
        config.store.resolve_paths(base);
        config.secrets.key_file = base.join(&config.secrets.key_file);
        config.control.operator_token_file = base.join(&config.control.operator_token_file);
        config.control.node_token_file = base.join(&config.control.node_token_file);
        config.control.demo_api_key_file = base.join(&config.control.demo_api_key_file);
        config.edge.geoip.resolve_paths(base);
        config.check()?;
        Ok(config)
    }

    /// The public endpoint of `region`, from its `public_instance`.
    pub fn public_endpoint(&self, region: &RegionConfig) -> Option<MqttEndpoint> {
        let id = region.public_instance.as_ref()?;
        let instance = self.instances.iter().find(|instance| &instance.id == id)?;
        Some(MqttEndpoint {
            host: instance.mqtt_host.clone(),
            tcp_port: instance.mqtt_port,
            tls_port: None,
        })
    }

    /// Cross-field rules serde cannot express.
    fn check(&self) -> anyhow::Result<()> {
        for region in &self.regions {
            let Some(id) = &region.public_instance else { continue };
            match self.instances.iter().find(|instance| &instance.id == id) {
                None => bail!("region {} names unknown public_instance {id}", region.id),
                Some(instance) if instance.region != region.id => bail!(
                    "region {}'s public_instance {id} is in region {}",
                    region.id,
                    instance.region
                ),
                Some(_) => {}
            }
        }
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
        self.edge.check().context("in [edge]")?;
        if self.store.backend == StoreBackend::Nats && self.store.nats.is_none() {
            bail!("[store] backend = \"nats\" needs a [store.nats] section");
        }
        if self.control.tasks.max_active_per_account == 0 {
            bail!("control.tasks.max_active_per_account must be at least 1");
        }
        Ok(())
    }
}

/// The sealing key from the environment, else from its file; with `create`, a missing file gets
/// a fresh key (readable by the owner only).
pub fn load_secret_key(path: &Path, create: bool) -> anyhow::Result<SecretKey> {
    if let Ok(hex) = std::env::var(SECRET_KEY_ENV) {
        return SecretKey::from_hex(&hex).with_context(|| format!("in {SECRET_KEY_ENV}"));
    }
    let hex = if create {
        read_or_create(path, || Ok(SecretKey::generate_hex()?))?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    SecretKey::from_hex(&hex).with_context(|| format!("in {}", path.display()))
}

/// A token from `env`, else from `path`.
pub fn read_secret(env: &str, path: &Path) -> anyhow::Result<String> {
    if let Ok(token) = std::env::var(env) {
        return Ok(token.trim().to_owned());
    }
    let token =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(token.trim().to_owned())
}

/// A token from `env`, else from `path`, creating the file with a random token if missing.
pub fn read_or_create_token(env: &str, path: &Path) -> anyhow::Result<String> {
    if let Ok(token) = std::env::var(env) {
        return Ok(token.trim().to_owned());
    }
    read_or_create(path, || Ok(SecretKey::generate_hex()?))
}

/// The trimmed contents of `path`; when it does not exist, writes `make()` there first with
/// mode 0600 and fsync, so a crash never leaves a half-written secret.
pub fn read_or_create(
    path: &Path,
    make: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().to_owned()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let value = make()?;
            write_private(path, &value)?;
            tracing::info!(path = %path.display(), "generated a new secret");
            Ok(value)
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `value` to a new file readable by the owner only.
pub fn write_private(path: &Path, value: &str) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{value}")?;
    file.sync_all()?;
    Ok(())
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
        // Every default region answers the region-pinned bootstrap with its own instance.
        for region in &config.regions {
            let endpoint = config.public_endpoint(region).expect("a public endpoint");
            assert_eq!(endpoint.host, "127.0.0.1", "{}", region.id);
        }
        // The file documents the built-in defaults, not other values.
        assert_eq!(config.control.tasks, meridian_control::distribution::TaskLimits::default());
    }

    /// The commented-out NATS section of the default file is a valid configuration as it stands
    /// once uncommented, and its paths resolve against the file's directory.
    #[test]
    fn documented_nats_store_parses() {
        let uncommented = DEFAULT_CONFIG
            .replace("backend = \"redb\"\n", "")
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest.starts_with("backend")
                        || rest.starts_with("[store.nats")
                        || rest.starts_with("servers")
                        || rest.starts_with("bucket")
                        || rest.starts_with("replicas")
                        || rest.starts_with("domain")
                        || rest.starts_with("request_timeout")
                        || rest.starts_with("credentials_file")
                        || rest.starts_with("ca_file")
                        || rest.starts_with("stream") =>
                {
                    rest.split("  #").next().unwrap_or(rest).to_owned()
                }
                _ => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let config = Config::parse(&uncommented, Path::new("/etc/meridian")).unwrap();
        assert_eq!(config.store.backend, StoreBackend::Nats);
        let nats = config.store.nats.expect("[store.nats]");
        assert_eq!(nats.bucket, "meridian");
        assert_eq!(nats.replicas, 3);
        assert_eq!(nats.domain.as_deref(), Some("hub"));
        assert_eq!(nats.credentials_file, Some(PathBuf::from("/etc/meridian/nats.creds")));
        assert_eq!(
            nats.tls.and_then(|tls| tls.ca_file),
            Some(PathBuf::from("/etc/meridian/nats-ca.pem"))
        );
        assert_eq!(nats.read.map(|read| read.stream).as_deref(), Some("KV_meridian_cn-shanghai"));
    }

    #[test]
    fn nats_urls_are_logged_without_credentials() {
        assert_eq!(
            without_userinfo("nats://meridian:s3cret@10.0.0.1:4222"),
            "nats://10.0.0.1:4222"
        );
        assert_eq!(without_userinfo("tls://10.0.0.1:4222"), "tls://10.0.0.1:4222");
        assert_eq!(without_userinfo("token@10.0.0.1:4222"), "10.0.0.1:4222");
    }

    #[test]
    fn nats_backend_needs_its_section() {
        let text = "[store]\nbackend = 'nats'\n[secrets]\nkey_file='k'\n";
        let error = Config::parse(text, Path::new(".")).unwrap_err();
        assert!(format!("{error:#}").contains("[store.nats]"), "{error:#}");
    }

    #[test]
    fn public_instances_must_be_configured_in_their_region() {
        let base = "[store]\npath='x'\n[secrets]\nkey_file='k'\n\
                    [[instances]]\nid='i-1'\nregion='r-1'\nowner='demo'\nmqtt_host='h'\nmqtt_port=1\n";
        let region = |extra: &str| {
            format!(
                "{base}[[regions]]\nid='r-1'\ndisplay_name='R'\nlatitude=0.0\nlongitude=0.0\n{extra}\n\
                     [[regions]]\nid='r-2'\ndisplay_name='R2'\nlatitude=0.0\nlongitude=0.0\n"
            )
        };
        let config = Config::parse(&region("public_instance='i-1'"), Path::new(".")).unwrap();
        let endpoint = config.public_endpoint(&config.regions[0]).unwrap();
        assert_eq!((endpoint.host.as_str(), endpoint.tcp_port), ("h", 1));
        assert_eq!(config.public_endpoint(&config.regions[1]), None);

        let error = Config::parse(&region("public_instance='i-9'"), Path::new(".")).unwrap_err();
        assert!(format!("{error:#}").contains("unknown public_instance i-9"), "{error:#}");
        let elsewhere =
            region("").replace("display_name='R2'", "display_name='R2'\npublic_instance='i-1'");
        let error = Config::parse(&elsewhere, Path::new(".")).unwrap_err();
        assert!(format!("{error:#}").contains("is in region r-1"), "{error:#}");
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
