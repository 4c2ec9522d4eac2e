//! Assembles a running broker from its configuration and a registry store: the view follower,
//! the placement enforcer and the listeners. `meridian up`, `meridian broker` and the
//! end-to-end tests all start brokers through [`start`].

use std::sync::Arc;
use std::time::Duration;

use meridian_registry::secret::SecretKey;
use meridian_registry::store::{Store, StoreError};
use meridian_registry::subscriptions::{StoreWriter, SubscriptionWriter};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use meridian_registry::clock::{Clock, SystemClock};
use meridian_registry::ids::InstanceId;
use meridian_registry::model::InstanceUsage;

use crate::auth::{ApplicationCredential, Authenticator, Profiles, Secret};
use crate::broker::Broker;
use crate::config::BrokerConfig;
use crate::tls::{self, TlsAcceptor, TlsError};
use crate::view::{self, RegistryView};
use crate::websocket;

/// Listeners bound before the broker starts (tests bind port 0 and read the addresses back).
pub struct Listeners {
    /// Plain MQTT.
    pub tcp: TcpListener,
    /// MQTT over TLS, with the acceptor holding the certificate, key and client-certificate
    /// policy, all loaded at bind time so a bad file stops start-up rather than every handshake.
    pub tls: Option<(TcpListener, TlsAcceptor)>,
    /// MQTT over WebSocket (`mqtt` subprotocol).
    pub websocket: Option<TcpListener>,
}

impl Listeners {
    /// Binds every listener `config` names and loads the TLS files.
    pub async fn bind(config: &BrokerConfig) -> Result<Listeners, ListenError> {
        // Files first: a bad certificate should not leave ports bound behind an error.
        let acceptor = config.tls.as_ref().map(tls::acceptor).transpose()?;
        let tcp = bind(&config.listen).await?;
        let tls = match (&config.tls, acceptor) {
            (Some(settings), Some(acceptor)) => Some((bind(&settings.listen).await?, acceptor)),
            _ => None,
        };
        let websocket = match &config.websocket_listen {
            Some(address) => Some(bind(address).await?),
            None => None,
        };
        Ok(Listeners { tcp, tls, websocket })
    }

    /// Plain MQTT only.
    pub fn tcp_only(tcp: TcpListener) -> Listeners {
        Listeners { tcp, tls: None, websocket: None }
    }
}

async fn bind(address: &str) -> Result<TcpListener, ListenError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ListenError::Bind { address: address.to_owned(), source })
}

/// Why the listeners could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A listen address could not be bound (in use, not local, not an address).
    #[error("binding {address}: {source}")]
    Bind { address: String, source: std::io::Error },
    /// The TLS certificate, key or client CA could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The registry could not be read for the initial view.
    #[error("reading the registry: {0}")]
    Store(#[from] StoreError),
}

/// A running broker. Dropping it does not stop it; call [`Daemon::shutdown`].
pub struct Daemon {
    pub broker: Arc<Broker>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    usage: Arc<UsageFlusher>,
    /// Where the devices' kept subscriptions go; the last of them are written at shutdown.
    writer: Arc<dyn SubscriptionWriter>,
}

/// How long the view follower waits before resubscribing after a feed error.
const FEED_RETRY: Duration = Duration::from_millis(500);

/// Starts a broker: loads the registry view (returning once it reflects everything committed
/// so far), then serves the listeners until [`Daemon::shutdown`]. Devices' kept subscriptions
/// are written straight into `store` (a broker in the store's process).
pub async fn start(
    config: BrokerConfig,
    store: Arc<dyn Store>,
    sealer: SecretKey,
    listeners: Listeners,
) -> Result<Daemon, StartError> {
    let writer = Arc::new(StoreWriter(store.clone()));
    start_with(config, store, sealer, listeners, writer).await
}

/// [`start`], with devices' kept subscriptions written through `writer`: a broker following a
/// replica of the registry writes them through the control plane's internal API.
pub async fn start_with(
    config: BrokerConfig,
    store: Arc<dyn Store>,
    sealer: SecretKey,
    listeners: Listeners,
    writer: Arc<dyn SubscriptionWriter>,
) -> Result<Daemon, StartError> {
    let view = Arc::new(RegistryView::default());
    let (changed_tx, changed_rx) = mpsc::unbounded_channel();
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();

    let current = store.revision().await?;
    tasks.spawn(follow_forever(store.clone(), sealer, view.clone(), changed_tx, stopped.clone()));
    view.caught_up(current).await;

    let users =
        config.users.iter().map(|(name, password)| (name.clone(), Secret::new(password))).collect();
    let applications = config
        .applications
        .iter()
        .map(|(name, app)| {
            let credential = ApplicationCredential {
                password: Secret::new(&app.password),
                account: app.account.clone(),
            };
            (name.clone(), credential)
        })
        .collect();
    let auth = Authenticator::new(
        config.instance.clone(),
        view.clone(),
        users,
        applications,
        config.allow_anonymous,
        Profiles::from_limits(&config.limits),
    );
    let broker = Broker::new(auth, config.limits);

    tasks.spawn(broker.clone().enforce_placement(changed_rx, config.notify_reply_wait));
    tasks.spawn(broker.kept().clone().run(writer.clone(), view, stopped.clone()));
    let usage = Arc::new(UsageFlusher::load(store, broker.clone(), config.instance.clone()).await);
    tasks.spawn(usage.clone().run(stopped.clone()));
    if broker.router().budget().memory().enabled() {
        tasks.spawn(sample_memory(broker.clone(), stopped.clone()));
    }
    tasks.spawn(broker.clone().serve_tcp(listeners.tcp, until(stopped.clone())));
    if let Some((listener, acceptor)) = listeners.tls {
        let handshake = move |stream| tls::handshake(acceptor.clone(), stream);
        tasks.spawn(broker.clone().serve(listener, handshake, until(stopped.clone())));
    }
    if let Some(listener) = listeners.websocket {
        let max_packet = config.limits.max_packet;
        let upgrade = move |stream| websocket::accept(stream, max_packet);
        tasks.spawn(broker.clone().serve(listener, upgrade, until(stopped.clone())));
    }
    tracing::info!(instance = %config.instance, "broker started");
    Ok(Daemon { broker, stop, tasks, usage, writer })
}

impl Daemon {
    /// Stops accepting, disconnects every client (parking persistent sessions), and waits.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        // The placement enforcer ends when the follower (its sender) stops.
        while self.tasks.join_next().await.is_some() {}
        self.usage.flush().await;
        // Every connection has ended: nothing records any more.
        self.broker.kept().flush(self.writer.as_ref(), self.broker.view()).await;
    }
}

async fn follow_forever(
    store: Arc<dyn Store>,
    sealer: SecretKey,
    view: Arc<RegistryView>,
    changed: mpsc::UnboundedSender<view::Changed>,
    stopped: watch::Receiver<bool>,
) {
    loop {
        let follow = view::follow(store.clone(), sealer.clone(), view.clone(), changed.clone());
        tokio::select! {
            result = follow => {
                if let Err(error) = result {
                    tracing::warn!(%error, "registry feed failed; resubscribing");
                }
            }
            () = until(stopped.clone()) => return,
        }
        tokio::select! {
            () = tokio::time::sleep(FEED_RETRY) => {}
            () = until(stopped.clone()) => return,
        }
    }
}

/// Writes the instance's usage to the registry: the baseline stored when the broker started
/// plus the broker's counters since.
struct UsageFlusher {
    store: Arc<dyn Store>,
    broker: Arc<Broker>,
    key: String,
    baseline: InstanceUsage,
}

impl UsageFlusher {
    async fn load(
        store: Arc<dyn Store>,
        broker: Arc<Broker>,
        instance: InstanceId,
    ) -> UsageFlusher {
        let key = meridian_registry::keys::usage(&instance);
        let baseline = match store.get(&key).await {
            Ok(Some(entry)) => meridian_registry::decode(&entry.key, &entry.value)
                .unwrap_or_else(|_| InstanceUsage::empty(instance.clone())),
            _ => InstanceUsage::empty(instance),
        };
        UsageFlusher { store, broker, key, baseline }
    }

    async fn flush(&self) {
        let usage = self.broker.usage();
        let report = usage.report(&self.baseline, std::time::Instant::now(), SystemClock.now());
        let written = match meridian_registry::encode(&report) {
            Ok(value) => {
                self.store.put(&self.key, value).await.map(drop).map_err(|e| e.to_string())
            }
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = written {
            tracing::warn!(%error, "usage not recorded");
        }
    }

    /// Flushes every `usage_flush` until stopped; the final flush is the daemon's, after every
    /// connection has closed.
    async fn run(self: Arc<Self>, stopped: watch::Receiver<bool>) {
        let every = self.broker.limits().usage_flush;
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => self.flush().await,
                () = until(stopped.clone()) => return,
            }
        }
    }
}

/// Reads the process's resident set for the memory cap until stopped.
async fn sample_memory(broker: Arc<Broker>, stopped: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(crate::memory::SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let budget = broker.router().budget();
    loop {
        tokio::select! {
            _ = every.tick() => {
                if let Some(rss) = crate::memory::resident_bytes() {
                    budget.memory().sample(rss, budget.tracked());
                    crate::metrics::resident(rss);
                }
            }
            () = until(stopped.clone()) => return,
        }
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn until(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}
