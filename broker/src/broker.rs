//! One broker instance: the shared state every connection task uses, and the force-offline
//! API. The accept loops are in `listener`, the connection tasks in `connection`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_registry::ids::{AccountId, DeviceKey};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::acl::{self, Origin};
use crate::admission::{Admission, AuthBackoff};
use crate::auth::Authenticator;
use crate::budget::QueueBudget;
use crate::config::LimitsConfig;
use crate::kept::Keeper;
use crate::link::Link;
use crate::metrics as m;
use crate::router::{Kick, Router};
use crate::session::{Limits, Message};
use crate::usage::Usage;
use crate::view::{Changed, RegistryView};

/// What a force-offline did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForcedOffline {
    /// The device had an online connection here.
    pub was_online: bool,
    /// The device answered the notify on `…/notify_reply` before it was disconnected.
    pub replied: bool,
}

pub struct Broker {
    router: Router,
    auth: Authenticator,
    limits: LimitsConfig,
    connections: AtomicU64,
    /// Force-offline calls waiting for a device's `notify_reply`.
    reply_waiters: Mutex<HashMap<DeviceKey, Vec<oneshot::Sender<()>>>>,
    /// Source of notify message ids: decimal, unique per broker run (and so per device per day).
    notify_ids: AtomicU64,
    usage: Usage,
    /// Global connection cap and per-address connection rate, checked at accept.
    admission: Admission,
    /// Failed-login back-off per address and per username, checked at CONNECT.
    auth_backoff: AuthBackoff,
    /// Devices' subscriptions, recorded as they change and restored when they connect.
    kept: Arc<Keeper>,
}

/// How often idle rate buckets, expired back-off entries and expired persistent sessions are
/// dropped, and the queue gauges refreshed.
pub(crate) const HOUSEKEEPING: Duration = Duration::from_secs(10);

impl Broker {
    pub fn new(auth: Authenticator, limits: LimitsConfig) -> Arc<Broker> {
        let session_limits = Limits {
            inflight: limits.inflight,
            queued: limits.queued,
            max_filters_per_subscribe: limits.max_filters_per_subscribe,
            max_topic_levels: limits.max_topic_levels,
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |elapsed| elapsed.as_millis() as u64);
        Arc::new(Broker {
            router: Router::new(session_limits, limits.slow_consumer_drops)
                .with_queue_budget(
                    QueueBudget::new(limits.max_queued_messages, limits.max_queued_bytes)
                        .with_state_cap(limits.max_session_state_bytes)
                        .with_memory_cap(limits.max_rss),
                )
                .with_retained_caps(limits.max_retained_messages, limits.max_retained_bytes),
            admission: Admission::new(&limits),
            auth_backoff: AuthBackoff::new(&limits),
            auth,
            limits,
            connections: AtomicU64::new(0),
            reply_waiters: Mutex::new(HashMap::new()),
            notify_ids: AtomicU64::new(seed),
            usage: Usage::default(),
            kept: Arc::new(Keeper::default()),
        })
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    pub fn view(&self) -> &RegistryView {
        self.auth.view()
    }

    pub fn limits(&self) -> &LimitsConfig {
        &self.limits
    }

    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    pub fn auth_backoff(&self) -> &AuthBackoff {
        &self.auth_backoff
    }

    pub fn kept(&self) -> &Arc<Keeper> {
        &self.kept
    }

    /// The session id a device's connections share, so its newest connection always wins
    /// whatever clientId parameters it sends.
    pub fn device_session_id(device: &DeviceKey) -> String {
        crate::acl::device_session_id(device.product_key.as_str(), device.device_name.as_str())
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.connections.fetch_add(1, Ordering::Relaxed)
    }

    /// A client id for a clean-session client that sent an empty one (MQTT 3.1.1 §3.1.3.1).
    pub(crate) fn assign_client_id(&self) -> String {
        format!("auto-{}", self.next_connection_id())
    }

    /// Routes a message from inside the broker (wills, notifies).
    pub fn publish(&self, message: Message) {
        self.publish_from(message, &mut Vec::new());
    }

    /// Routes a client's message; subscribers it filled up are added to `blocked` (see
    /// [`Router::publish_from`]).
    pub(crate) fn publish_from(&self, message: Message, blocked: &mut Vec<Arc<Link>>) {
        m::message_in(message.qos);
        let routed = self.router.publish_from(message, blocked);
        m::routed(routed.delivered, routed.dropped);
    }

    /// Tells an online device to re-bootstrap (PROTOCOL §5), waits up to `reply_wait` for its
    /// `notify_reply`, then disconnects it.
    pub async fn force_offline(&self, device: &DeviceKey, reply_wait: Duration) -> ForcedOffline {
        let session_id = Broker::device_session_id(device);
        if !self.router.is_online(&session_id) {
            return ForcedOffline { was_online: false, replied: false };
        }
        let (replied_tx, replied_rx) = oneshot::channel();
        lock(&self.reply_waiters).entry(device.clone()).or_default().push(replied_tx);

        let id = self.notify_ids.fetch_add(1, Ordering::Relaxed);
        let payload = format!(
            r#"{{"id":"{id}","version":"1.0","method":"thing.bootstrap.notify","params":{{"cmd":0}}}}"#
        );
        let topic =
            format!("/sys/{}/{}/thing/bootstrap/notify", device.product_key, device.device_name);
        self.publish(Message {
            topic: topic.into(),
            payload: payload.into(),
            qos: 1,
            retain: false,
            origin: Origin::Broker,
            properties: None,
            sender: 0,
        });
        m::notify_sent();

        let replied = tokio::time::timeout(reply_wait, replied_rx).await.is_ok_and(|r| r.is_ok());
        lock(&self.reply_waiters).remove(device);
        self.router.kick(&session_id, Kick::NotAllowed);
        ForcedOffline { was_online: true, replied }
    }

    /// Notices a device's `notify_reply` for a waiting force-offline.
    pub(crate) fn observe_device_publish(&self, device: &DeviceKey, topic: &str) {
        if !topic.ends_with("/thing/bootstrap/notify_reply") {
            return;
        }
        if let Some(waiters) = lock(&self.reply_waiters).remove(device) {
            for waiter in waiters {
                let _ = waiter.send(());
            }
        }
    }

    /// Acts on what the registry view reports (see [`Changed`]): tells each online device whose
    /// placement or status changed to re-bootstrap (PROTOCOL §5: an online distributed device is
    /// notified, then forced offline), even when its new placement still includes this
    /// instance, since a nearest-access device must pick again; and drops what a former owner's
    /// application clients retained on a device or product that changed hands (PROTOCOL §6: the
    /// source loses all access), and what the owner's retained on a deleted device. Changes
    /// queued together are handled together: one paged scan of the retained store per former
    /// owner, on a blocking thread. Runs until the sender side closes.
    pub async fn enforce_placement(
        self: Arc<Self>,
        mut changed: mpsc::UnboundedReceiver<Changed>,
        reply_wait: Duration,
    ) {
        let mut tasks = JoinSet::new();
        // Notifies are paced: each gets the next free slot `1 / notify_rate` after the last.
        let spacing = Duration::from_secs(1) / self.limits.notify_rate.max(1);
        let mut next_slot = tokio::time::Instant::now();
        loop {
            tokio::select! {
                Some(first) = changed.recv() => {
                    // Everything already queued is taken at once, so the N owner changes of
                    // one instance transfer cost one scan of the retained store per former
                    // owner, not N.
                    let mut batch = vec![first];
                    while let Ok(more) = changed.try_recv() {
                        batch.push(more);
                    }
                    let mut forgets = Forgets::default();
                    for change in batch {
                        let device = match change {
                            Changed::Placement(device) => device,
                            Changed::DeviceOwner { device, former: owner }
                            | Changed::DeviceDeleted { device, owner } => {
                                forgets.device(owner, &device);
                                continue;
                            }
                            Changed::ProductOwner { product, former } => {
                                forgets.product(former, product.as_str());
                                continue;
                            }
                        };
                        if !self.router.is_online(&Broker::device_session_id(&device)) {
                            continue;
                        }
                        let slot = next_slot.max(tokio::time::Instant::now());
                        next_slot = slot + spacing;
                        let broker = self.clone();
                        tasks.spawn(async move {
                            tokio::time::sleep_until(slot).await;
                            let outcome = broker.force_offline(&device, reply_wait).await;
                            tracing::info!(%device, replied = outcome.replied, "device placement changed: forced offline");
                        });
                    }
                    if !forgets.by_owner.is_empty() {
                        // A scan of a large store is CPU work: off the runtime's workers.
                        let broker = self.clone();
                        tasks.spawn_blocking(move || broker.forget_retained_of(forgets));
                    }
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                else => break,
            }
        }
    }

    /// Deletes the retained messages each account's application clients left on the topics
    /// of the devices and products `forgets` lists for it: one paged scan per account that
    /// left any (see [`Router::forget_retained`]). Those set by standard clients (the
    /// operator's integrations) stay.
    fn forget_retained_of(&self, forgets: Forgets) {
        for (account, scope) in forgets.by_owner {
            let forgotten = self.router.forget_retained(Some(&account), |topic| scope.holds(topic));
            if forgotten.messages > 0 {
                tracing::info!(%account, forgotten = forgotten.messages, "owner changed or device deleted: retained messages of the former owner dropped");
            }
        }
    }
}

/// The devices and products whose topics lose what each account's application clients
/// retained there, gathered from a batch of [`Changed`].
#[derive(Default)]
struct Forgets {
    by_owner: HashMap<AccountId, Scope>,
}

#[derive(Default)]
struct Scope {
    /// Device names by product key.
    devices: HashMap<String, HashSet<String>>,
    products: HashSet<String>,
}

impl Forgets {
    fn device(&mut self, owner: AccountId, device: &DeviceKey) {
        let scope = self.by_owner.entry(owner).or_default();
        let names = scope.devices.entry(device.product_key.as_str().to_owned()).or_default();
        names.insert(device.device_name.as_str().to_owned());
    }

    fn product(&mut self, owner: AccountId, product: &str) {
        self.by_owner.entry(owner).or_default().products.insert(product.to_owned());
    }
}

impl Scope {
    /// Whether `topic` is one of the listed devices' topics or products' broadcast topics.
    fn holds(&self, topic: &str) -> bool {
        acl::named_device(topic).is_some_and(|(product, device)| {
            self.devices.get(product).is_some_and(|names| names.contains(device))
        }) || acl::broadcast_product(topic).is_some_and(|product| self.products.contains(product))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning only follows a panic elsewhere; the map is still valid.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
