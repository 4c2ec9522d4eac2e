//! `meridian up`: everything in one process on the embedded store.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use meridian_registry::clock::SystemClock;
use meridian_registry::model::{Account, AccountKind, Edition, Instance, MqttEndpoint, Region};
use meridian_registry::secret::SecretKey;
use meridian_registry::store::RedbStore;
use meridian_registry::{Registry, RegistryError};

use meridian_broker::config::BrokerConfig;
use meridian_broker::daemon::{self, Listeners};

use crate::config::{Config, InstanceConfig, SECRET_KEY_ENV};

/// How long seeded instances run before they expire; operators extend them through the API.
const SEEDED_INSTANCE_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(10 * 365 * 24 * 3600);

/// Opens the store, makes sure the configured regions, instances and demo tenant exist, and
/// serves until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if let Some(dir) = config.store.path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let store = RedbStore::open(&config.store.path)
        .with_context(|| format!("opening store {}", config.store.path.display()))?;
    let sealer = load_secret_key(&config.secrets.key_file)?;
    let registry = Registry::new(Arc::new(store), sealer.clone(), Arc::new(SystemClock));
    seed(&registry, &config).await.context("seeding the registry from the configuration")?;
    install_metrics(&config)?;

    let mut brokers = Vec::with_capacity(config.instances.len());
    for instance in &config.instances {
        let broker_config = broker_config(&config, instance);
        let listeners = Listeners::bind(&broker_config).await.with_context(|| {
            format!("binding broker of {} on {}", instance.id, broker_config.listen)
        })?;
        let addr = listeners.tcp.local_addr()?;
        let daemon =
            daemon::start(broker_config, registry.store().clone(), sealer.clone(), listeners)
                .await
                .with_context(|| format!("starting broker of {}", instance.id))?;
        tracing::info!(instance = %instance.id, %addr, "broker listening");
        brokers.push(daemon);
    }

    let revision = registry.store().revision().await?;
    tracing::info!(
        store = %config.store.path.display(),
        regions = config.regions.len(),
        brokers = brokers.len(),
        revision,
        "meridian up: ready"
    );
    shutdown.await;
    tracing::info!("meridian up: shutting down");
    for broker in brokers {
        broker.shutdown().await;
    }
    Ok(())
}

/// One instance's broker settings from the shared `[broker]` section.
fn broker_config(config: &Config, instance: &InstanceConfig) -> BrokerConfig {
    BrokerConfig {
        instance: instance.id.clone(),
        listen: instance.listen(),
        tls: None,
        websocket_listen: None,
        limits: config.broker.limits,
        users: config.broker.users.clone(),
        applications: config.broker.applications.clone(),
        allow_anonymous: config.broker.allow_anonymous,
        notify_reply_wait: std::time::Duration::from_secs(2),
    }
}

/// Installs the process-wide Prometheus recorder, serving `/metrics` on its own listener.
fn install_metrics(config: &Config) -> anyhow::Result<()> {
    if config.metrics.listen.is_empty() {
        return Ok(());
    }
    let addr: std::net::SocketAddr =
        config.metrics.listen.parse().with_context(|| {
            format!("metrics.listen {:?} is not host:port", config.metrics.listen)
        })?;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("serving metrics on {addr}"))?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// The sealing key from the environment, else from its file, else a new key written to the file
/// (readable by the owner only).
fn load_secret_key(path: &Path) -> anyhow::Result<SecretKey> {
    if let Ok(hex) = std::env::var(SECRET_KEY_ENV) {
        return SecretKey::from_hex(&hex).with_context(|| format!("in {SECRET_KEY_ENV}"));
    }
    match std::fs::read_to_string(path) {
        Ok(hex) => SecretKey::from_hex(&hex).with_context(|| format!("in {}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let hex = SecretKey::generate_hex()?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(path)
                .with_context(|| format!("creating secret key file {}", path.display()))?;
            writeln!(file, "{hex}")?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), "generated a new DeviceSecret sealing key");
            Ok(SecretKey::from_hex(&hex)?)
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// Idempotent: regions follow the file; accounts and instances are created once and then left
/// to the control plane.
async fn seed(registry: &Registry, config: &Config) -> anyhow::Result<()> {
    let now = registry.clock().now();
    for region in &config.regions {
        registry
            .put_region(Region {
                id: region.id.clone(),
                display_name: region.display_name.clone(),
                latitude: region.latitude,
                longitude: region.longitude,
                bias_km: region.bias_km,
            })
            .await?;
    }
    if let Some(demo) = &config.demo {
        let account = Account {
            id: demo.account.clone(),
            name: demo.account_name.clone(),
            kind: AccountKind::Individual,
            verified_entity: None,
            organisation: None,
            organisation_admin: false,
            created_at: now,
        };
        ignore_existing(registry.create_account(account).await)?;
    }
    for instance in &config.instances {
        let record = Instance {
            id: instance.id.clone(),
            region: instance.region.clone(),
            owner: instance.owner.clone(),
            edition: Edition::Public,
            endpoint: MqttEndpoint {
                host: instance.mqtt_host.clone(),
                tcp_port: instance.mqtt_port,
                tls_port: None,
            },
            created_at: now,
            expires_at: now.after(SEEDED_INSTANCE_LIFETIME),
        };
        ignore_existing(registry.create_instance(record).await)?;
    }
    Ok(())
}

fn ignore_existing<T>(result: Result<T, RegistryError>) -> Result<(), RegistryError> {
    match result {
        Ok(_) | Err(RegistryError::AlreadyExists { .. }) => Ok(()),
        Err(other) => Err(other),
    }
}
