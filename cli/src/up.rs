//! `meridian up`: everything in one process on the embedded store.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use meridian_registry::clock::SystemClock;
use meridian_registry::model::{Account, AccountKind, Edition, Instance, MqttEndpoint, Region};
use meridian_registry::{Registry, RegistryError};

use meridian_broker::config::BrokerConfig;
use meridian_broker::daemon::{self, Listeners};

use meridian_control::ControlPlane;

use crate::config::{
    Config, InstanceConfig, MetricsConfig, NODE_TOKEN_ENV, OPERATOR_TOKEN_ENV, StoreBackend,
    load_secret_key, read_or_create_token, write_private,
};

/// How long seeded instances run before they expire; operators extend them through the API.
const SEEDED_INSTANCE_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(10 * 365 * 24 * 3600);

/// Which parts of the system this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Role {
    /// The admin API and the task executor (and, on the embedded store, the internal watch API
    /// separate brokers follow).
    pub control: bool,
    /// The bootstrap edge.
    pub edge: bool,
    /// One broker per configured instance.
    pub brokers: bool,
}

impl Role {
    /// `meridian up`: everything.
    pub const ALL: Role = Role { control: true, edge: true, brokers: true };
    /// `meridian edge`: control plane and edge; brokers run as their own processes.
    pub const CONTROL_AND_EDGE: Role = Role { control: true, edge: true, brokers: false };
    /// `meridian control`: one control-plane replica (run as many as wanted on NATS).
    pub const CONTROL: Role = Role { control: true, edge: false, brokers: false };
    /// `meridian bootstrap-edge`: a stateless edge following the shared store.
    pub const EDGE: Role = Role { control: false, edge: true, brokers: false };
}

/// Opens the store, makes sure the configured regions, instances and demo tenant exist (when
/// this process runs the control plane), and serves until `shutdown` resolves.
pub async fn run(
    config: Config,
    role: Role,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let shared = config.store.backend == StoreBackend::Nats;
    if !role.control && !shared {
        anyhow::bail!(
            "a daemon without the control plane needs a shared store: set [store] backend = \"nats\" \
             (or run `meridian up`, or `meridian edge` for control plane and edge together)"
        );
    }
    let store = config.store.open(role.control).await?;
    let sealer = if role.control || role.brokers {
        load_secret_key(&config.secrets.key_file, role.control)?
    } else {
        // The edge alone never opens a DeviceSecret: it needs no copy of the sealing key.
        meridian_registry::secret::SecretKey::from_hex(
            &meridian_registry::secret::SecretKey::generate_hex()?,
        )?
    };
    let registry = Registry::new(store, sealer.clone(), Arc::new(SystemClock));
    if role.control {
        seed(&registry, &config).await.context("seeding the registry from the configuration")?;
    }
    install_metrics(&config.metrics)?;
    let control = if role.control {
        Some(start_control(&config, &registry).await.context("starting the control plane")?)
    } else {
        None
    };

    let mut brokers = Vec::with_capacity(config.instances.len());
    let instances = if role.brokers { config.instances.as_slice() } else { &[] };
    for instance in instances {
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

    let edge = if role.edge {
        Some(start_edge(&config, &registry).await.context("starting the bootstrap edge")?)
    } else {
        None
    };

    // Poll the shutdown future once so its signal handlers are registered before "ready" is
    // announced: a SIGTERM right after that line must stop us, not kill us.
    let mut shutdown = std::pin::pin!(shutdown);
    let stop_now = futures::poll!(shutdown.as_mut()).is_ready();
    let revision = registry.store().revision().await?;
    tracing::info!(
        store = %config.store.describe(),
        regions = config.regions.len(),
        control = role.control,
        edge = role.edge,
        brokers = brokers.len(),
        revision,
        "meridian up: ready"
    );
    if !stop_now {
        shutdown.await;
    }
    tracing::info!("meridian up: shutting down");
    if let Some(edge) = edge {
        edge.stop().await;
    }
    if let Some(control) = control {
        control.stop().await;
    }
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

/// The bootstrap edge of `meridian up`, its routing table following the registry's feed.
struct EdgeDaemon {
    shutdown: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    follower: tokio::task::JoinHandle<()>,
    /// Reloads the GeoIP files when they are replaced; stops when dropped.
    _geoip_watcher: Option<meridian_geo::ReloadWatcher>,
}

impl EdgeDaemon {
    /// Stops accepting, lets in-flight bootstraps finish, then stops following the feed.
    async fn stop(self) {
        let _ = self.shutdown.send(());
        if let Err(error) = self.server.await {
            tracing::error!(%error, "bootstrap edge task failed");
        }
        self.follower.abort();
    }
}

/// Loads the routing table, opens GeoIP and starts serving. Its metrics go to the process-wide
/// recorder, exposed on the metrics listener rather than the public bootstrap port.
async fn start_edge(config: &Config, registry: &Registry) -> anyhow::Result<EdgeDaemon> {
    let settings = &config.edge;
    let mut geoip = settings.geoip.clone();
    let missing = geoip.missing_files();
    if !missing.is_empty() {
        tracing::warn!(
            ?missing,
            "GeoIP database not found (run deploy/fetch-geoip.sh); nearest access uses the \
             default region"
        );
        geoip.files = None;
    }
    let locator = meridian_edge::open_locator(&geoip).context("opening the GeoIP database")?;
    let geoip_watcher =
        locator.db().map(|db| db.spawn_reload_on_change(geoip.reload_poll)).transpose()?;

    let (table, writer) = meridian_edge::RoutingTable::new();
    let store = registry.store().clone();
    let follower = tokio::spawn(async move {
        if let Err(error) = meridian_edge::follow(store, writer).await {
            tracing::error!(%error, "bootstrap edge stopped following the registry feed");
        }
    });
    table.caught_up(registry.store().revision().await?).await;

    let edge = meridian_edge::Edge::new(settings, Arc::clone(&table), locator, None)?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding the bootstrap edge on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(meridian_edge::run(listener, edge, async move {
        let _ = stop.await;
    }));
    tracing::info!(%addr, devices = table.device_count(), "bootstrap edge listening");
    Ok(EdgeDaemon { shutdown, server, follower, _geoip_watcher: geoip_watcher })
}

/// The control plane of this process: admin API, internal watch API, task executor.
struct ControlDaemon {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl ControlDaemon {
    /// Stops accepting, lets in-flight requests and the current task step finish.
    async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts the admin API, the internal watch API and the executor (which resumes any task a
/// previous run left unsettled). On first start the demo account gets an API key, written to
/// its file.
async fn start_control(config: &Config, registry: &Registry) -> anyhow::Result<ControlDaemon> {
    let settings = &config.control;
    let operator = read_or_create_token(OPERATOR_TOKEN_ENV, &settings.operator_token_file)?;
    let node = read_or_create_token(NODE_TOKEN_ENV, &settings.node_token_file)?;
    let plane = ControlPlane::new(registry.clone(), &operator).with_task_limits(settings.tasks);
    if let Some(demo) = &config.demo
        && !settings.demo_api_key_file.exists()
    {
        let key = plane.create_api_key(&demo.account).await?;
        write_private(&settings.demo_api_key_file, &key)?;
        tracing::info!(path = %settings.demo_api_key_file.display(), "demo account API key written");
    }

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let admin = tokio::net::TcpListener::bind(&settings.admin_listen)
        .await
        .with_context(|| format!("binding the admin API on {}", settings.admin_listen))?;
    tracing::info!(addr = %admin.local_addr()?, "admin API listening");
    let internal = if config.store.backend == StoreBackend::Redb {
        let internal = tokio::net::TcpListener::bind(&settings.internal_listen)
            .await
            .with_context(|| format!("binding the internal API on {}", settings.internal_listen))?;
        tracing::info!(addr = %internal.local_addr()?, "internal watch API listening");
        Some(internal)
    } else {
        None
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(meridian_control::api::serve(admin, plane.clone(), until()));
    // Separate brokers follow the embedded store through the internal API; on NATS every
    // daemon reads the bucket itself, and there is nothing to serve.
    if let Some(internal) = internal {
        tasks.spawn(meridian_control::internal::serve(
            internal,
            registry.store().clone(),
            node,
            until(),
        ));
    }
    tasks.spawn(plane.run_executor(until()));
    Ok(ControlDaemon { stop, tasks })
}

/// Installs the process-wide Prometheus recorder, serving `/metrics` on its own listener.
pub fn install_metrics(config: &MetricsConfig) -> anyhow::Result<()> {
    if config.listen.is_empty() {
        return Ok(());
    }
    let addr: std::net::SocketAddr = config
        .listen
        .parse()
        .with_context(|| format!("metrics.listen {:?} is not host:port", config.listen))?;
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
                public_endpoint: config.public_endpoint(region),
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
