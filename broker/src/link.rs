//! The router's line to one online connection: an inbox of deliveries, the kick that ends the
//! connection, and the signal that its task has finished.
//!
//! One small shared object per connection instead of three channels: an idle connection holds
//! an empty `VecDeque` (no allocation) and two `Notify`s, about 150 bytes in all. The inbox is
//! bounded per QoS, because the two promise different things:
//! - QoS 0 deliveries wait up to `mailbox`; beyond it they are dropped (a client that does not
//!   read is a slow consumer, and QoS 0 promises nothing).
//! - QoS 1/2 deliveries wait up to `queued`, the same bound a session's queue has behind its
//!   inflight window, so a burst of QoS 1 traffic is queued the way MQTT promises rather than
//!   dropped at the size of a scheduling buffer.
//!
//! The router pushes and wakes; the connection task drains everything on each wake-up, so one
//! wake-up writes many messages.
//!
//! A QoS 1/2 delivery to a full inbox is not dropped: the router queues it beyond the bound
//! ([`Link::push_over`]) and hands the link to the publisher's connection, which stops reading
//! its socket until the subscriber has room again ([`Link::room`]): flow control from a
//! subscriber that cannot keep up back to the publishers feeding it, as MQTT's QoS 1 promise
//! needs. The overshoot is bounded by what one read of each publisher holds.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::session::Delivery;

/// Why the broker is closing a connection from outside its task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kick {
    /// A newer connection of the same client (or device) took the session over.
    TakenOver,
    /// The device may no longer connect here (distributed, disabled or deleted).
    NotAllowed,
    /// The client did not read its messages fast enough.
    SlowConsumer,
    /// The broker is shutting down.
    Shutdown,
}

/// Why [`Link::push`] handed a delivery back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The inbox holds as many deliveries of this QoS class as it may.
    Full,
    /// The connection no longer reads its inbox (it is ending).
    Closed,
}

/// Shared between the router (pushing, kicking, awaiting the end) and one connection task.
#[derive(Debug)]
pub struct Link {
    connection: u64,
    /// Bound on QoS 0 deliveries waiting.
    mailbox: usize,
    /// Bound on QoS 1/2 deliveries waiting.
    queued: usize,
    state: Mutex<State>,
    /// Wakes the connection task: a delivery or a kick is waiting.
    wake: Notify,
    /// Wakes takeovers waiting for this connection to finish, and publishers waiting for room.
    done: Notify,
}

#[derive(Debug, Default)]
struct State {
    inbox: VecDeque<Delivery>,
    /// QoS 0 deliveries in `inbox`; the rest are QoS 1/2.
    qos0: usize,
    kick: Option<Kick>,
    closed: bool,
    finished: bool,
}

impl Link {
    pub fn new(connection: u64, mailbox: usize, queued: usize) -> Link {
        Link {
            connection,
            mailbox,
            queued,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            done: Notify::new(),
        }
    }

    /// The broker-wide number of the connection this link reaches.
    pub fn connection(&self) -> u64 {
        self.connection
    }

    /// Queues a delivery for the connection, or hands it back with why not.
    pub fn push(&self, delivery: Delivery) -> Result<(), (Refused, Delivery)> {
        self.enqueue(delivery, false)
    }

    /// Queues a QoS 1/2 delivery even when the inbox is full; only a closed connection refuses.
    /// The caller holds the publisher back until [`Link::room`].
    pub fn push_over(&self, delivery: Delivery) -> Result<(), (Refused, Delivery)> {
        self.enqueue(delivery, true)
    }

    fn enqueue(&self, delivery: Delivery, beyond_bound: bool) -> Result<(), (Refused, Delivery)> {
        let mut state = lock(&self.state);
        if state.closed {
            return Err((Refused::Closed, delivery));
        }
        let qos0 = delivery.qos == 0;
        let full = if qos0 {
            state.qos0 >= self.mailbox
        } else {
            state.inbox.len() - state.qos0 >= self.queued
        };
        if full && !beyond_bound {
            return Err((Refused::Full, delivery));
        }
        state.qos0 += usize::from(qos0);
        state.inbox.push_back(delivery);
        drop(state);
        self.wake.notify_one();
        Ok(())
    }

    /// Whether a QoS 1/2 delivery would fit (or the connection is gone, so nobody should wait).
    pub fn has_room(&self) -> bool {
        let state = lock(&self.state);
        state.closed || state.inbox.len() - state.qos0 < self.queued
    }

    /// Resolves once [`Link::has_room`].
    pub async fn room(&self) {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.has_room() {
                return;
            }
            notified.await;
        }
    }

    /// Whether the connection is falling behind: half of either bound is waiting.
    pub fn backlogged(&self) -> bool {
        let state = lock(&self.state);
        state.qos0 >= self.mailbox.div_ceil(2)
            || state.inbox.len() - state.qos0 >= self.queued.div_ceil(2)
    }

    /// Tells the connection to end. The first kick is the reason it ends with; later ones are
    /// ignored. Returns false when the connection has already stopped reading.
    pub fn kick(&self, reason: Kick) -> bool {
        let mut state = lock(&self.state);
        if state.closed {
            return false;
        }
        state.kick.get_or_insert(reason);
        drop(state);
        self.wake.notify_one();
        true
    }

    /// Whether the connection task has finished (parked or forgotten its session).
    pub fn is_finished(&self) -> bool {
        lock(&self.state).finished
    }

    /// Resolves once the connection task has finished.
    pub async fn finished(&self) {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            // Registered before the check, so a `finish` between the two is not missed.
            notified.as_mut().enable();
            if self.is_finished() {
                return;
            }
            notified.await;
        }
    }

    // The connection task's side.

    /// Resolves when something may be waiting; spurious wake-ups are possible, so follow it
    /// with [`Link::take`].
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// The kick, if there has been one (deliveries stay queued).
    pub fn kicked(&self) -> Option<Kick> {
        lock(&self.state).kick
    }

    /// What is waiting, in order, up to `room` QoS 1/2 deliveries (appended to `into`; the
    /// rest stays until the session has room, so nothing is taken only to be dropped), and the
    /// kick, if any. Returns whether deliveries were left behind.
    pub fn take(&self, into: &mut VecDeque<Delivery>, room: usize) -> (Option<Kick>, bool) {
        let mut state = lock(&self.state);
        let was_full = state.inbox.len() - state.qos0 >= self.queued;
        let mut acked = 0;
        let end = state
            .inbox
            .iter()
            .position(|delivery| {
                acked += usize::from(delivery.qos > 0);
                acked > room
            })
            .unwrap_or(state.inbox.len());
        let taken_qos0 = state.inbox.range(..end).filter(|delivery| delivery.qos == 0).count();
        state.qos0 -= taken_qos0;
        if end == state.inbox.len() && into.is_empty() {
            std::mem::swap(into, &mut state.inbox);
        } else {
            into.extend(state.inbox.drain(..end));
        }
        let (kick, left) = (state.kick, !state.inbox.is_empty());
        let has_room = state.inbox.len() - state.qos0 < self.queued;
        drop(state);
        if was_full && has_room {
            self.done.notify_waiters();
        }
        (kick, left)
    }

    /// Stops accepting deliveries and kicks; returns what was still waiting, for the router to
    /// park with a persistent session (see [`crate::router::Router::disconnect`]) or to give
    /// its share of the queue budget back.
    pub fn close(&self) -> VecDeque<Delivery> {
        let mut state = lock(&self.state);
        state.closed = true;
        state.qos0 = 0;
        let left = std::mem::take(&mut state.inbox);
        drop(state);
        // Publishers held back for this connection go on.
        self.done.notify_waiters();
        left
    }

    /// Marks the connection task finished and wakes whoever waits for it.
    pub fn finish(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        state.finished = true;
        drop(state);
        self.done.notify_waiters();
    }
}

/// Finishes the link when dropped, so a takeover is not left waiting even if the connection
/// task unwinds before its orderly end.
#[derive(Debug)]
pub struct FinishOnDrop<'a>(pub &'a Link);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

// Every critical section is a few field updates that cannot panic halfway, so a poisoned lock
// still guards consistent state.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use futures::FutureExt;

    use super::*;
    use crate::session::Message;

    fn delivery(qos: u8, payload: &'static str) -> Delivery {
        let message = Message {
            topic: "t".into(),
            payload: Bytes::from_static(payload.as_bytes()),
            qos,
            retain: false,
            origin: Default::default(),
            properties: None,
            sender: 0,
        };
        Delivery { message: Arc::new(message), qos, retain: false }
    }

    fn payloads(deliveries: &VecDeque<Delivery>) -> Vec<&[u8]> {
        deliveries.iter().map(|d| &d.message.payload[..]).collect()
    }

    #[test]
    fn qos0_and_qos1_have_separate_bounds() {
        let link = Link::new(1, 2, 3);
        for payload in ["a", "b"] {
            link.push(delivery(0, payload)).unwrap();
        }
        assert_eq!(link.push(delivery(0, "c")).unwrap_err().0, Refused::Full);
        // A full QoS 0 mailbox does not refuse QoS 1.
        for payload in ["1", "2", "3"] {
            link.push(delivery(1, payload)).unwrap();
        }
        assert_eq!(link.push(delivery(2, "4")).unwrap_err().0, Refused::Full);

        let mut taken = VecDeque::new();
        assert_eq!(link.take(&mut taken, usize::MAX), (None, false));
        assert_eq!(payloads(&taken), [b"a", b"b", b"1", b"2", b"3"]);
        // Taking frees both bounds.
        link.push(delivery(0, "c")).unwrap();
        link.push(delivery(1, "4")).unwrap();
        assert_eq!(link.take(&mut taken, usize::MAX), (None, false));
        assert_eq!(taken.len(), 7, "appended in order");
    }

    #[test]
    fn take_stops_at_the_sessions_room_for_qos1() {
        let link = Link::new(1, 8, 8);
        for (qos, payload) in [(1, "1"), (0, "a"), (1, "2"), (1, "3"), (0, "b")] {
            link.push(delivery(qos, payload)).unwrap();
        }
        let mut taken = VecDeque::new();
        // Room for two: the third QoS 1 and the QoS 0 behind it wait, in order.
        assert_eq!(link.take(&mut taken, 2), (None, true));
        assert_eq!(payloads(&taken), [b"1", b"a", b"2"]);
        assert!(!link.backlogged());
        let mut rest = VecDeque::new();
        assert_eq!(link.take(&mut rest, 0), (None, true), "no room: nothing taken");
        assert!(rest.is_empty());
        assert_eq!(link.take(&mut rest, 1), (None, false));
        assert_eq!(payloads(&rest), [b"3", b"b"]);
        // The QoS 0 count followed what was taken: the mailbox holds 8 again.
        for n in 0..8 {
            link.push(delivery(0, if n % 2 == 0 { "x" } else { "y" })).unwrap();
        }
        assert_eq!(link.push(delivery(0, "z")).unwrap_err().0, Refused::Full);
    }

    #[test]
    fn backlogged_at_half_of_either_bound() {
        let link = Link::new(1, 4, 4);
        link.push(delivery(0, "a")).unwrap();
        link.push(delivery(1, "b")).unwrap();
        assert!(!link.backlogged());
        link.push(delivery(0, "c")).unwrap();
        assert!(link.backlogged());
        link.take(&mut VecDeque::new(), usize::MAX);
        link.push(delivery(1, "d")).unwrap();
        link.push(delivery(1, "e")).unwrap();
        assert!(link.backlogged());
    }

    #[test]
    fn the_first_kick_is_kept_and_a_closed_link_refuses_everything() {
        let link = Link::new(1, 4, 4);
        link.push(delivery(1, "a")).unwrap();
        assert!(link.kick(Kick::TakenOver));
        assert!(link.kick(Kick::Shutdown));
        assert_eq!(link.kicked(), Some(Kick::TakenOver));

        let left = link.close();
        assert_eq!(payloads(&left), [b"a"]);
        assert_eq!(link.push(delivery(1, "b")).unwrap_err().0, Refused::Closed);
        assert!(!link.kick(Kick::Shutdown));
        assert!(!link.is_finished(), "closed is not finished");
    }

    #[tokio::test]
    async fn a_push_before_the_wait_is_not_lost() {
        let link = Link::new(1, 4, 4);
        link.push(delivery(0, "a")).unwrap();
        // The permit stored by the push completes the wait at once.
        assert!(link.woken().now_or_never().is_some());
        let mut taken = VecDeque::new();
        link.take(&mut taken, usize::MAX);
        assert_eq!(taken.len(), 1);
        assert!(link.woken().now_or_never().is_none(), "nothing more to wake for");
    }

    #[tokio::test]
    async fn a_full_inbox_takes_qos1_over_its_bound_and_wakes_waiters_when_drained() {
        let link = Arc::new(Link::new(1, 4, 2));
        link.push(delivery(1, "a")).unwrap();
        link.push(delivery(1, "b")).unwrap();
        assert!(!link.has_room());
        link.push_over(delivery(1, "c")).unwrap();
        let waiter = tokio::spawn({
            let link = link.clone();
            async move { link.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let mut taken = VecDeque::new();
        link.take(&mut taken, usize::MAX);
        assert_eq!(payloads(&taken), [b"a", b"b", b"c"]);
        waiter.await.unwrap();
        assert!(link.has_room());

        // A connection that ends releases whoever waits for it.
        for payload in ["d", "e"] {
            link.push(delivery(1, payload)).unwrap();
        }
        let waiter = tokio::spawn({
            let link = link.clone();
            async move { link.room().await }
        });
        tokio::task::yield_now().await;
        link.close();
        waiter.await.unwrap();
        assert_eq!(link.push_over(delivery(1, "f")).unwrap_err().0, Refused::Closed);
    }

    #[tokio::test]
    async fn finished_wakes_every_waiter_and_resolves_after_the_fact() {
        let link = Arc::new(Link::new(1, 4, 4));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let link = link.clone();
                tokio::spawn(async move { link.finished().await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(waiters.iter().all(|w| !w.is_finished()));
        drop(FinishOnDrop(&link));
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert!(link.finished().now_or_never().is_some());
    }
}
