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
use meridian_registry::subscriptions::{StoreWriter, SubscriptionWriter};
use serde::Deserialize;

use crate::config::{MetricsConfig, load_secret_key, read_secret};

/// The documented default of a regional broker's configuration.
pub const DEFAULT_BROKER_CONFIG: &str = include_str!("../../deploy/broker.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerDaemonConfig {
    /// Follow the embedded store through the control plane's internal API (with a local
    /// replica file)…
    #[serde(default)]
    pub control_plane: Option<ControlPlaneLink>,
    #[serde(default)]
    pub replica: Option<ReplicaConfig>,
    /// …or read the shared NATS bucket directly (`backend = "nats"`).
    #[serde(default)]
    pub store: Option<crate::config::StoreConfig>,
    pub secrets: crate::config::SecretsConfig,
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
        if let Some(replica) = &mut config.replica {
            replica.path = base.join(&replica.path);
        }
        if let Some(link) = &mut config.control_plane {
            link.node_token_file = base.join(&link.node_token_file);
        }
        if let Some(store) = &mut config.store {
            store.resolve_paths(base);
        }
        match (&config.store, &config.control_plane, &config.replica) {
            (Some(store), None, None) if store.backend == crate::config::StoreBackend::Nats => {}
            (None, Some(_), Some(_)) => {}
            _ => anyhow::bail!(
                "in config {}: give either [store] with backend = \"nats\", or [control_plane] \
                 and [replica] (the embedded store through the control plane)",
                path.display()
            ),
        }
        Ok(config)
    }
}

/// Runs the broker until `shutdown` resolves.
pub async fn run(
    config: BrokerDaemonConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let sealer = load_secret_key(&config.secrets.key_file, false)?;
    crate::up::install_metrics(&config.metrics)?;
    let (store, writer, sync): (Arc<dyn Store>, Arc<dyn SubscriptionWriter>, _) =
        match (&config.store, &config.control_plane, &config.replica) {
            (Some(store), _, _) => {
                let store = store.open(false).await?;
                tracing::info!(revision = store.revision().await?, "following the NATS registry");
                // Devices' kept subscriptions go straight into the bucket (restrict the
                // broker's NATS user to publishing under `$KV.{bucket}.subscriptions.>`).
                (store.clone(), Arc::new(StoreWriter(store)), None)
            }
            (None, Some(link), Some(replica)) => {
                let (replica, client, sync) = follow_control_plane(link, replica).await?;
                (Arc::new(replica), Arc::new(client), Some(sync))
            }
            _ => anyhow::bail!("no registry to follow (see `meridian generate-config --broker`)"),
        };

    let listeners = Listeners::bind(&config.broker).await.with_context(|| {
        format!("setting up the listeners of broker {}", config.broker.instance)
    })?;
    let addr = listeners.tcp.local_addr()?;
    let instance = config.broker.instance.clone();
    let daemon = daemon::start_with(config.broker, store, sealer, listeners, writer)
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
    if let Some(sync) = sync {
        sync.abort();
    }
    Ok(())
}

/// Mirrors the embedded store from the control plane's internal API into the local replica,
/// and waits until it has caught up.
async fn follow_control_plane(
    link: &ControlPlaneLink,
    replica: &ReplicaConfig,
) -> anyhow::Result<(Replica, RemoteStore, tokio::task::JoinHandle<()>)> {
    let token = read_secret(crate::config::NODE_TOKEN_ENV, &link.node_token_file)
        .context("reading the node token")?;
    let client = RemoteStore::new(&link.url, &token)
        .with_context(|| format!("control plane at {}", link.url))?;
    let remote: Arc<dyn Store> = Arc::new(client.clone());
    if let Some(dir) = replica.path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let (local, sync) = Replica::open(&replica.path, remote.clone(), DEFAULT_PREFIXES)
        .await
        .with_context(|| format!("opening replica {}", replica.path.display()))?;
    let sync = tokio::spawn(sync.run());
    let current = remote.revision().await.context("reading the control plane's revision")?;
    tracing::info!(url = %link.url, revision = current, "syncing the registry");
    local.caught_up(current).await.context("registry sync stopped")?;
    Ok((local, client, sync))
}
