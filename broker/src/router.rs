//! Shared broker state: the subscription index, retained messages, and the table of sessions
//! (online connections and parked persistent sessions).
//!
//! Connection tasks call into the router directly; there is no router task. Publishing takes
//! the index's read lock and the session table's lock once per message, so fan-out to many
//! subscribers costs one lock acquisition each, not one per subscriber.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use meridian_registry::ids::AccountId;

use crate::acl::{DOWNLINK_QOS, Origin, downlink_session};
use crate::budget::{Load, QueueBudget, parked_cost, subscription_cost};
pub use crate::link::Kick;
use crate::link::{Link, Refused};
use crate::retained::{Retained, RetainedCursor};
use crate::session::{Delivery, Limits, Message, Parked};
use crate::trie::SubscriptionIndex;

enum Slot {
    Online {
        link: Arc<Link>,
        clean: bool,
        consecutive_drops: u32,
    },
    /// Boxed: a table of mostly online sessions should not reserve a parked session's size
    /// for every entry.
    Offline(Box<Parked>),
}

/// Counts the router keeps for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Routed {
    /// Deliveries queued to a subscriber (online or parked).
    pub delivered: usize,
    /// Deliveries dropped because a subscriber's queue (or the broker's budget) was full.
    pub dropped: usize,
}

pub struct Router {
    index: RwLock<SubscriptionIndex>,
    retained: RwLock<Retained>,
    sessions: Mutex<HashMap<Arc<str>, Slot>>,
    limits: Limits,
    /// Consecutive full-inbox drops after which a slow consumer is disconnected.
    slow_consumer_drops: u32,
    /// The broker-wide cap on queued deliveries: the router reserves for what it puts in a
    /// connection's inbox or a parked session and releases parked state it drops. Shared with
    /// every session, which reserves its subscriptions' share of session state.
    budget: Arc<QueueBudget>,
    /// Runs the instant `disconnect` or `expire` releases the session table's lock, when a
    /// reconnecting client could first act (tests of that interleaving).
    #[cfg(test)]
    released: Mutex<Option<ReleaseHook>>,
}

/// Retained topics one page of [`Router::forget_retained`] reads under one lock hold.
pub const FORGET_PAGE: usize = 4096;

/// What one [`Router::forget_retained`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// Messages deleted.
    pub messages: usize,
    /// Pages of the store read (none when nothing was to be forgotten).
    pub pages: usize,
}

#[cfg(test)]
type ReleaseHook = Box<dyn FnOnce(&Router) + Send>;

/// Payload bytes one page of retained messages holds (at least one message): what one
/// connection encodes and writes before it reads the store again.
pub const RETAINED_PAGE_BYTES: usize = 64 * 1024;

/// How long a new connection waits for the one it takes over to finish before replacing it
/// anyway.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

impl Router {
    pub fn new(limits: Limits, slow_consumer_drops: u32) -> Router {
        Router {
            index: RwLock::new(SubscriptionIndex::default()),
            retained: RwLock::new(Retained::new(usize::MAX, usize::MAX)),
            sessions: Mutex::new(HashMap::new()),
            limits,
            slow_consumer_drops,
            budget: Arc::new(QueueBudget::unlimited()),
            #[cfg(test)]
            released: Mutex::new(None),
        }
    }

    /// Sets what runs once the next `disconnect` or `expire` releases the table's lock.
    #[cfg(test)]
    fn on_release(&self, hook: impl FnOnce(&Router) + Send + 'static) {
        *lock(&self.released) = Some(Box::new(hook));
    }

    #[cfg(test)]
    fn run_release_hook(&self) {
        let hook = lock(&self.released).take();
        if let Some(hook) = hook {
            hook(self);
        }
    }

    /// Caps what all sessions together may queue (see [`crate::budget`]).
    pub fn with_queue_budget(mut self, budget: QueueBudget) -> Router {
        self.budget = Arc::new(budget);
        self
    }

    /// Caps the retained store (see [`crate::retained`]).
    pub fn with_retained_caps(mut self, max_messages: usize, max_bytes: usize) -> Router {
        self.retained = RwLock::new(Retained::new(max_messages, max_bytes));
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn budget(&self) -> &Arc<QueueBudget> {
        &self.budget
    }

    /// Registers a new connection for `session_id`, taking over any online one (which is kicked
    /// and awaited). Returns the parked state to resume, if the client asked to keep it.
    pub async fn connect(
        &self,
        session_id: &Arc<str>,
        clean: bool,
        link: Arc<Link>,
    ) -> Option<Parked> {
        self.connect_with(session_id, clean, !clean, link).await
    }

    /// [`Router::connect`] with MQTT 5.0's two halves of clean session apart (MQTT 5.0
    /// §3.1.2.4, §3.1.2.11.2): `clean_start` discards a parked session, `persistent` parks this
    /// one when its connection ends.
    pub async fn connect_with(
        &self,
        session_id: &Arc<str>,
        clean_start: bool,
        persistent: bool,
        link: Arc<Link>,
    ) -> Option<Parked> {
        let clean = !persistent;
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        loop {
            let old = {
                let mut sessions = lock(&self.sessions);
                match sessions.get(session_id) {
                    // A connection whose task already ended (e.g. it panicked before
                    // `disconnect`) is replaced at once: waiting on it would spin until the
                    // deadline.
                    Some(Slot::Online { link: old, .. })
                        if tokio::time::Instant::now() < deadline && !old.is_finished() =>
                    {
                        old.kick(Kick::TakenOver);
                        old.clone()
                    }
                    _ => {
                        let previous = sessions.insert(
                            session_id.clone(),
                            Slot::Online { link, clean, consecutive_drops: 0 },
                        );
                        drop(sessions);
                        let parked = match previous {
                            Some(Slot::Offline(parked)) => {
                                self.budget.release_state(parked_cost(session_id));
                                Some(*parked)
                            }
                            // Replaced without its state: the wait ran out, or its task ended
                            // without `disconnect`. Its filters are known only to that task,
                            // and its later `disconnect` is stale, so whatever the index holds
                            // for this session id is the old connection's: removed now, before
                            // the new one subscribes, or the new session would receive what
                            // it never subscribed to. The old task can add no more: a stale
                            // connection's `subscribe` is ignored.
                            Some(Slot::Online { .. }) => {
                                let (bytes, removed) =
                                    write(&self.index).remove_session(session_id);
                                self.budget.release_state(
                                    bytes + removed * crate::budget::SUBSCRIPTION_COST,
                                );
                                None
                            }
                            None => None,
                        };
                        return match (clean_start, parked) {
                            (false, parked) => parked,
                            (true, Some(old)) => {
                                self.discard(session_id, old);
                                None
                            }
                            (true, None) => None,
                        };
                    }
                }
            };
            // Resolves when the old task has parked its state and finished, or at the deadline.
            let _ = tokio::time::timeout_at(deadline, old.finished()).await;
        }
    }

    /// Called by a connection task as it ends. A persistent session is parked (keeping its
    /// subscriptions, and the QoS 1/2 deliveries still waiting in the connection's inbox); a
    /// clean one is forgotten with all its `filters`. A connection that was already replaced
    /// changes nothing (its task closes its own link).
    ///
    /// The link is closed here, under the session table's lock that every publish holds while
    /// it pushes: a delivery either reached the inbox before (and moves into the parked
    /// session) or finds the session parked. Nothing promised at QoS 1/2 falls between the two
    /// (MQTT-3.1.2-5).
    pub fn disconnect(
        &self,
        session_id: &Arc<str>,
        connection: u64,
        mut parked: Parked,
        filters: &[String],
    ) {
        let mut sessions = lock(&self.sessions);
        let Some(Slot::Online { link, clean, .. }) = sessions.get(session_id) else {
            self.budget.release(parked.load());
            return;
        };
        if link.connection() != connection {
            self.budget.release(parked.load());
            return;
        }
        let waiting = link.close();
        // A session parked for no time, or beyond the session-state budget, is forgotten like
        // a clean one.
        let kept = !*clean && parked.expires.is_none_or(|expires| expires > Instant::now());
        let fits = kept
            && match self.budget.reserve_state(parked_cost(session_id)) {
                Ok(()) => true,
                Err(shed) => {
                    crate::metrics::limited(shed.label());
                    false
                }
            };
        if !fits {
            self.budget.release(parked.load());
            for delivery in &waiting {
                self.budget.release(Load::of(delivery));
            }
            // The index entries go under the table's lock, like `subscribe_paced` adds them:
            // once the slot is empty a reconnecting client may insert itself and restore the
            // same (kept) filters, and a removal after the lock would delete its entries and
            // release their budget a second time.
            sessions.remove(session_id);
            self.remove_subscriptions(session_id, filters);
            drop(sessions);
            #[cfg(test)]
            self.run_release_hook();
            return;
        }
        for delivery in waiting {
            // Each inbox entry is already reserved; the parked session now holds it.
            if delivery.qos == 0 {
                self.budget.release(Load::of(&delivery));
            } else {
                parked.requeue(delivery);
            }
        }
        sessions.insert(session_id.clone(), Slot::Offline(Box::new(parked)));
    }

    /// Forgets the parked sessions whose expiry has passed at `now`, with their subscriptions
    /// and queued messages. Returns how many. The broker calls it every few seconds; a client
    /// returning in between finds its session expired at CONNECT ([`Parked::expired`]).
    pub fn expire(&self, now: Instant) -> usize {
        let mut expired = Vec::new();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|session_id, slot| match slot {
            Slot::Offline(parked) if parked.expired(now) => {
                expired.push((session_id.clone(), std::mem::take(&mut **parked)));
                false
            }
            _ => true,
        });
        let count = expired.len();
        // Under the table's lock, as in `disconnect`: a client reconnecting into the emptied
        // slot must not lose the filters it restores to this removal.
        for (session_id, parked) in expired {
            self.budget.release_state(parked_cost(&session_id));
            self.discard(&session_id, parked);
        }
        drop(sessions);
        #[cfg(test)]
        self.run_release_hook();
        count
    }

    /// Drops a parked session that will not be resumed (taken by a clean CONNECT, expired):
    /// gives back what it held and removes its subscriptions.
    pub fn discard(&self, session_id: &Arc<str>, parked: Parked) {
        self.budget.release(parked.load());
        self.remove_subscriptions(session_id, parked.subscriptions.keys());
    }

    /// Parked sessions, for tests and metrics.
    pub fn parked_count(&self) -> usize {
        lock(&self.sessions).values().filter(|slot| matches!(slot, Slot::Offline(_))).count()
    }

    /// Adds subscriptions of connection `connection` and returns, for each, a cursor over the
    /// retained messages it matches: they are sent a page at a time
    /// ([`Router::retained_page`]) as the connection drains, never all at once. A connection
    /// that no longer holds the session (replaced by a takeover) changes nothing and gets
    /// nothing.
    pub fn subscribe_paced(
        &self,
        session_id: &Arc<str>,
        connection: u64,
        filters: &[(String, u8)],
    ) -> Vec<RetainedCursor> {
        {
            // The table's lock is held across the insert, so a takeover cannot clear the
            // session's entries between the check and the insert.
            let sessions = lock(&self.sessions);
            if !holds(&sessions, session_id, connection) {
                return Vec::new();
            }
            let mut index = write(&self.index);
            for (filter, qos) in filters {
                index.insert(filter, session_id.clone(), *qos);
            }
        }
        // Taken after the index holds the subscriptions: whatever is retained later reaches
        // them as a live publish, and the cursor skips it.
        self.retained_cursors(filters)
    }

    /// Cursors over the retained messages `filters` match now (a device's implicit downlink,
    /// which is subscribed without the index).
    pub fn retained_cursors(&self, filters: &[(String, u8)]) -> Vec<RetainedCursor> {
        let retained = read(&self.retained);
        filters.iter().map(|(filter, qos)| retained.cursor(filter.clone(), *qos)).collect()
    }

    /// The next page of `cursor`'s retained messages (at most `max_messages`, and about
    /// [`RETAINED_PAGE_BYTES`] of payload), as deliveries at the lower of each message's and
    /// the subscription's QoS; and whether the cursor is done.
    pub fn retained_page(
        &self,
        cursor: &mut RetainedCursor,
        max_messages: usize,
    ) -> (Vec<Delivery>, bool) {
        let (messages, done) = read(&self.retained).page(cursor, max_messages, RETAINED_PAGE_BYTES);
        let qos = cursor.qos;
        let deliveries = messages
            .into_iter()
            .map(|message| Delivery { qos: message.qos.min(qos), message, retain: true })
            .collect();
        (deliveries, done)
    }

    /// Adds subscriptions and returns every retained message they match, all pages at once
    /// (tests of what is matched, not of how it is paced).
    #[cfg(test)]
    pub fn subscribe(
        &self,
        session_id: &Arc<str>,
        connection: u64,
        filters: &[(String, u8)],
    ) -> Vec<Delivery> {
        let cursors = self.subscribe_paced(session_id, connection, filters);
        self.every_retained_page(cursors)
    }

    /// The retained messages `filters` match, all at once (tests).
    #[cfg(test)]
    pub fn retained(&self, filters: &[(String, u8)]) -> Vec<Delivery> {
        self.every_retained_page(self.retained_cursors(filters))
    }

    /// Reads every page of each cursor (tests).
    #[cfg(test)]
    fn every_retained_page(&self, cursors: Vec<RetainedCursor>) -> Vec<Delivery> {
        let mut deliveries = Vec::new();
        for mut cursor in cursors {
            loop {
                let (page, done) = self.retained_page(&mut cursor, usize::MAX);
                deliveries.extend(page);
                if done {
                    break;
                }
            }
        }
        deliveries
    }

    /// Removes subscriptions of connection `connection`; like [`Router::subscribe`], a
    /// replaced connection changes nothing (the filters now belong to its successor).
    pub fn unsubscribe<'a>(
        &self,
        session_id: &Arc<str>,
        connection: u64,
        filters: impl IntoIterator<Item = &'a String>,
    ) {
        let sessions = lock(&self.sessions);
        if !holds(&sessions, session_id, connection) {
            return;
        }
        let mut index = write(&self.index);
        for filter in filters {
            index.remove(filter, session_id);
            // Reserved by the session that subscribed (see `Session::with_budget`).
            self.budget.release_state(subscription_cost(filter));
        }
    }

    fn remove_subscriptions<'a>(
        &self,
        session_id: &Arc<str>,
        filters: impl IntoIterator<Item = &'a String>,
    ) {
        let mut index = write(&self.index);
        for filter in filters {
            index.remove(filter, session_id);
            // Reserved by the session that subscribed (see `Session::with_budget`).
            self.budget.release_state(subscription_cost(filter));
        }
    }

    /// Routes a message from inside the broker (wills, notifies), which nobody holds back.
    pub fn publish(&self, message: Message) -> Routed {
        self.publish_from(message, &mut Vec::new())
    }

    /// Routes a message to every matching subscriber and updates the retained store. An online
    /// subscriber whose QoS 1/2 queue is full still gets the message, beyond its bound, and its
    /// link is added to `blocked`: the publisher should read nothing more until each has room
    /// (see [`crate::link`]).
    pub fn publish_from(&self, message: Message, blocked: &mut Vec<Arc<Link>>) -> Routed {
        let message = Arc::new(message);
        // A message the retained store has no room for is still delivered, just not kept.
        if message.retain && write(&self.retained).update(&message).is_err() {
            crate::metrics::limited("retained_full");
        }
        let mut subscribers = read(&self.index).matches(&message.topic);
        // No-local for the implicit route: a device's own message never comes back through
        // it (an explicit subscription still delivers it).
        if let Some(device) = downlink_session(&message.topic)
            && !matches!(&message.origin, Origin::Device(from) if **from == *device)
        {
            // Also subscribed explicitly: delivered once, at the higher grant.
            match subscribers.iter_mut().find(|(session, _)| **session == *device) {
                Some((_, granted)) => *granted = (*granted).max(DOWNLINK_QOS),
                None => subscribers.push((device.into(), DOWNLINK_QOS)),
            }
        }
        if subscribers.is_empty() {
            return Routed::default();
        }
        let mut routed = Routed::default();
        let mut sessions = lock(&self.sessions);
        for (session_id, granted) in subscribers {
            let delivery =
                Delivery { message: message.clone(), qos: message.qos.min(granted), retain: false };
            let load = Load { messages: 1, bytes: message.payload.len() };
            match sessions.get_mut(&session_id) {
                Some(Slot::Online { link, consecutive_drops, .. }) => {
                    if let Err(shed) =
                        self.budget.reserve(load.bytes, delivery.qos, link.backlogged())
                    {
                        crate::metrics::limited(shed.label());
                        routed.dropped += 1;
                        continue;
                    }
                    let qos = delivery.qos;
                    let pushed = match link.push(delivery) {
                        Err((Refused::Full, delivery)) if qos > 0 => {
                            if !blocked.iter().any(|held| Arc::ptr_eq(held, link)) {
                                blocked.push(link.clone());
                            }
                            link.push_over(delivery)
                        }
                        other => other,
                    };
                    match pushed {
                        Ok(()) => {
                            *consecutive_drops = 0;
                            routed.delivered += 1;
                        }
                        Err((Refused::Full, _)) => {
                            self.budget.release(load);
                            routed.dropped += 1;
                            *consecutive_drops += 1;
                            if *consecutive_drops == self.slow_consumer_drops {
                                link.kick(Kick::SlowConsumer);
                            }
                        }
                        // Its task ended without `disconnect` (it unwound): nothing will
                        // read this inbox. An orderly end parks under this same lock, so a
                        // persistent session never refuses here.
                        Err((Refused::Closed, _)) => {
                            self.budget.release(load);
                            routed.dropped += 1;
                        }
                    }
                }
                Some(Slot::Offline(parked)) => {
                    // QoS 0 is never kept for an offline client; `enqueue` counts that drop.
                    // An offline session drains nothing, so it is always backlogged.
                    if delivery.qos > 0
                        && let Err(shed) = self.budget.reserve(load.bytes, delivery.qos, true)
                    {
                        crate::metrics::limited(shed.label());
                        parked.dropped += 1;
                        routed.dropped += 1;
                        continue;
                    }
                    let qos = delivery.qos;
                    if parked.enqueue(delivery, &self.limits) {
                        routed.delivered += 1;
                    } else {
                        if qos > 0 {
                            self.budget.release(load);
                        }
                        routed.dropped += 1;
                    }
                }
                None => {}
            }
        }
        routed
    }

    /// Kicks the online connection of `session_id`, if any. Returns whether one was online.
    pub fn kick(&self, session_id: &str, reason: Kick) -> bool {
        let sessions = lock(&self.sessions);
        match sessions.get(session_id) {
            Some(Slot::Online { link, .. }) => link.kick(reason),
            _ => false,
        }
    }

    /// Kicks every online connection (shutdown).
    pub fn kick_all(&self, reason: Kick) {
        for slot in lock(&self.sessions).values() {
            if let Slot::Online { link, .. } = slot {
                link.kick(reason);
            }
        }
    }

    /// Whether `session_id` has an online connection.
    pub fn is_online(&self, session_id: &str) -> bool {
        matches!(lock(&self.sessions).get(session_id), Some(Slot::Online { .. }))
    }

    /// Ids of sessions with an online connection.
    pub fn online(&self) -> Vec<Arc<str>> {
        lock(&self.sessions)
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Online { .. }))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Subscriptions in the index (online and parked; a device's implicit downlink is not one).
    pub fn subscription_count(&self) -> usize {
        read(&self.index).len()
    }

    /// Deletes the retained messages application clients left on the topics `on` picks: those
    /// of `account`, or of any account when `None`. Costs one look-up and no scan when they
    /// left none; otherwise reads the store [`FORGET_PAGE`] topics per read-lock hold and
    /// deletes each page's picks under a short write lock, so publishers and retained pages
    /// wait at most one page. Stops once no such message is left.
    pub fn forget_retained(
        &self,
        account: Option<&AccountId>,
        mut on: impl FnMut(&str) -> bool,
    ) -> Forgotten {
        let left = |retained: &Retained| match account {
            Some(account) => retained.sent_by(account),
            None => retained.sent_by_applications(),
        };
        let mut pick = |message: &Message| {
            let from = match (&message.origin, account) {
                (Origin::Application(from), Some(account)) => from == account,
                (Origin::Application(_), None) => true,
                _ => false,
            };
            from && on(&message.topic)
        };
        let mut forgotten = Forgotten::default();
        let mut after: Option<Arc<str>> = None;
        loop {
            let (picked, next) = {
                let retained = read(&self.retained);
                if left(&retained) == 0 {
                    return forgotten;
                }
                retained.picked(after.as_deref(), FORGET_PAGE, &mut pick)
            };
            forgotten.pages += 1;
            if !picked.is_empty() {
                forgotten.messages += write(&self.retained).forget(&picked, &mut pick);
            }
            match next {
                Some(next) => after = Some(next),
                None => return forgotten,
            }
        }
    }

    pub fn retained_count(&self) -> usize {
        read(&self.retained).len()
    }

    /// Topic and payload bytes of the retained messages.
    pub fn retained_bytes(&self) -> usize {
        read(&self.retained).bytes()
    }
}

/// Whether `connection` is the online connection of `session_id`.
fn holds(sessions: &HashMap<Arc<str>, Slot>, session_id: &str, connection: u64) -> bool {
    matches!(sessions.get(session_id), Some(Slot::Online { link, .. }) if link.connection() == connection)
}

// A poisoned lock means a thread panicked while holding it; the maps stay structurally valid
// (every mutation is a single insert/remove), so keep serving rather than cascade the panic.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
