//! `meridian broker --config region.toml`: one regional broker as its own process. It mirrors
//! the registry from the control plane's internal watch API into a local replica file, so a
//! restart resumes from the last revision it applied instead of downloading everything again.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use meridian_broker::config::BrokerConfig;
use meridian_broker::daemon::{self, Listeners};
use meridian_control::remote::{DEFAULT_PREFIXES, RemoteStore, Replica};
use meridian_registry::store::Store;
use serde::Deserialize;

use crate::config::{MetricsConfig, load_secret_key, read_secret};

/// The documented default of a regional broker's configuration.
pub const DEFAULT_BROKER_CONFIG: &str = include_str!("../../deploy/broker.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerDaemonConfig {
    pub control_plane: ControlPlaneLink,
    pub secrets: crate::config::SecretsConfig,
    pub replica: ReplicaConfig,
    pub broker: BrokerConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// Where the control plane's internal API is, and the node token it requires.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneLink {
    /// e.g. `http://10.0.0.5:8082`.
    pub url: String,
    /// File holding the node token; `MERIDIAN_NODE_TOKEN` wins over it.
    pub node_token_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    /// The local replica file (redb).
    pub path: PathBuf,
}

impl BrokerDaemonConfig {
    pub fn load(path: &Path) -> anyhow::Result<BrokerDaemonConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let mut config: BrokerDaemonConfig =
            toml::from_str(&text).with_context(|| format!("in config {}", path.display()))?;
        config.secrets.key_file = base.join(&config.secrets.key_file);
        config.replica.path = base.join(&config.replica.path);
        config.control_plane.node_token_file = base.join(&config.control_plane.node_token_file);
        Ok(config)
    }
}

/// Runs the broker until `shutdown` resolves.
pub async fn run(
    config: BrokerDaemonConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let token = read_secret(crate::config::NODE_TOKEN_ENV, &config.control_plane.node_token_file)
        .context("reading the node token")?;
    let sealer = load_secret_key(&config.secrets.key_file, false)?;
    crate::up::install_metrics(&config.metrics)?;

    let client = RemoteStore::new(&config.control_plane.url, &token)
        .with_context(|| format!("control plane at {}", config.control_plane.url))?;
    let remote: Arc<dyn Store> = Arc::new(client.clone());
    if let Some(dir) = config.replica.path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let (replica, sync) = Replica::open(&config.replica.path, remote.clone(), DEFAULT_PREFIXES)
        .await
        .with_context(|| format!("opening replica {}", config.replica.path.display()))?;
    let sync = tokio::spawn(sync.run());
    let current = remote.revision().await.context("reading the control plane's revision")?;
    tracing::info!(url = %config.control_plane.url, revision = current, "syncing the registry");
    replica.caught_up(current).await.context("registry sync stopped")?;

    let listeners = Listeners::bind(&config.broker).await.with_context(|| {
        format!("setting up the listeners of broker {}", config.broker.instance)
    })?;
    let addr = listeners.tcp.local_addr()?;
    let instance = config.broker.instance.clone();
    // Devices' kept subscriptions go to the control plane through their own endpoint.
    let daemon =
        daemon::start_with(config.broker, Arc::new(replica), sealer, listeners, Arc::new(client))
            .await
            .context("starting the broker")?;
    tracing::info!(%instance, %addr, "broker listening");
    // Register the signal handlers (first poll) before announcing readiness.
    let mut shutdown = std::pin::pin!(shutdown);
    let stop_now = futures::poll!(shutdown.as_mut()).is_ready();
    tracing::info!("meridian broker: ready");
    if !stop_now {
        shutdown.await;
    }
    tracing::info!("meridian broker: shutting down");
    daemon.shutdown().await;
    sync.abort();
    Ok(())
}
