//! Assembles a running broker from its configuration and a registry store: the view follower,
//! the placement enforcer and the listeners. `meridian up`, `meridian broker` and the
//! end-to-end tests all start brokers through [`start`].

use std::sync::Arc;
use std::time::Duration;

use meridian_registry::secret::SecretKey;
use meridian_registry::store::{Store, StoreError};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::acl::Profile;
use crate::auth::{ApplicationCredential, Authenticator, Secret};
use crate::broker::Broker;
use crate::config::BrokerConfig;
use crate::view::{self, RegistryView};

/// Listeners bound before the broker starts (tests bind port 0 and read the address back).
pub struct Listeners {
    pub tcp: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &BrokerConfig) -> std::io::Result<Listeners> {
        Ok(Listeners { tcp: TcpListener::bind(&config.listen).await? })
    }
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
}

/// How long the view follower waits before resubscribing after a feed error.
const FEED_RETRY: Duration = Duration::from_millis(500);

/// Starts a broker: loads the registry view (returning once it reflects everything committed
/// so far), then serves the listeners until [`Daemon::shutdown`].
pub async fn start(
    config: BrokerConfig,
    store: Arc<dyn Store>,
    sealer: SecretKey,
    listeners: Listeners,
) -> Result<Daemon, StartError> {
    let view = Arc::new(RegistryView::default());
    let (changed_tx, changed_rx) = mpsc::unbounded_channel();
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();

    let current = store.revision().await?;
    tasks.spawn(follow_forever(store, sealer, view.clone(), changed_tx, stopped.clone()));
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
    let profile = Profile::standard(config.limits.max_packet, config.limits.max_subscriptions);
    let auth = Authenticator::new(
        config.instance.clone(),
        view,
        users,
        applications,
        config.allow_anonymous,
        profile,
    );
    let broker = Broker::new(auth, config.limits);

    tasks.spawn(broker.clone().enforce_placement(changed_rx, config.notify_reply_wait));
    tasks.spawn(broker.clone().serve_tcp(listeners.tcp, until(stopped.clone())));
    tracing::info!(instance = %config.instance, "broker started");
    Ok(Daemon { broker, stop, tasks })
}

impl Daemon {
    /// Stops accepting, disconnects every client (parking persistent sessions), and waits.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        // The placement enforcer ends when the follower (its sender) stops.
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn follow_forever(
    store: Arc<dyn Store>,
    sealer: SecretKey,
    view: Arc<RegistryView>,
    changed: mpsc::UnboundedSender<meridian_registry::ids::DeviceKey>,
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

/// Resolves once the stop flag is set (or its sender is gone).
async fn until(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}
