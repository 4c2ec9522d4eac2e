//! The broker-wide cap on queued messages and bytes, and what is shed when it is reached.
//!
//! Every session's queues are bounded on their own (`mailbox`, `inflight`, `queued`), but a
//! million sessions times a bounded queue is still unbounded memory. The budget counts what
//! waits for delivery anywhere: in a connection's mailbox, behind its inflight window, in its
//! inflight window, and in offline persistent sessions. The router reserves when it hands a
//! delivery to a mailbox or a parked session; a connection task keeps its session's share in
//! step with [`QueueBudget::adjust`]; whoever drops queued state releases it.
//!
//! Shedding policy, from the first mark reached:
//! 1. Below three quarters of either cap, everything is accepted.
//! 2. Above it, QoS 0 deliveries are dropped (they promise nothing), and QoS 1/2 deliveries are
//!    refused for queues that are not draining: offline sessions, and connections whose
//!    mailbox is at least half full. Clients that keep up keep receiving everything.
//! 3. At the cap, every delivery is dropped.
//!
//! The process's resident-memory cap ([`crate::memory`]) applies the same two steps on its own
//! marks, so whichever bound is nearer decides.
//!
//! Each drop counts `meridian_broker_limited_total{limit=…}` with [`Shed::label`]. Reservations
//! are two relaxed atomics, so concurrent publishers may overshoot a cap by at most one message
//! each.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::memory::{MemoryGuard, Pressure};

/// Why a delivery was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// Above the soft mark: QoS 0 is dropped first.
    Qos0,
    /// Above the soft mark: the target queue is not draining.
    Backlogged,
    /// At the cap.
    Full,
    /// The resident set is past the memory cap's shedding mark.
    MemoryShed,
    /// The resident set is at the memory cap.
    MemoryFull,
    /// Subscriptions and parked sessions hold `max_session_state_bytes`.
    StateFull,
}

impl Shed {
    pub fn label(self) -> &'static str {
        match self {
            Shed::Qos0 => "queue_shed_qos0",
            Shed::Backlogged => "queue_backlogged",
            Shed::Full => "queue_full",
            Shed::MemoryShed => "memory_shed",
            Shed::MemoryFull => "memory_full",
            Shed::StateFull => "session_state_full",
        }
    }
}

/// What some queue holds: messages and their payload bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub messages: usize,
    pub bytes: usize,
}

#[derive(Debug)]
pub struct QueueBudget {
    max_messages: usize,
    max_bytes: usize,
    messages: AtomicUsize,
    bytes: AtomicUsize,
    /// Session state, bytes: subscriptions (each filter plus [`SUBSCRIPTION_COST`]) and
    /// parked persistent sessions ([`PARKED_COST`] plus their id). Not a queue, so not under
    /// the queue caps, but capped on its own and counted in the memory cap's estimate.
    state: AtomicUsize,
    max_state: usize,
    memory: MemoryGuard,
}

/// What one subscription costs besides its filter's bytes: the session's map entry and the
/// index's (the trie's node and its subscriber entry), roughly.
pub const SUBSCRIPTION_COST: usize = 160;
/// What one parked persistent session costs besides its id: its slot in the session table and
/// its boxed state, roughly.
pub const PARKED_COST: usize = 512;

/// A subscription's share of the state budget.
pub fn subscription_cost(filter: &str) -> usize {
    filter.len() + SUBSCRIPTION_COST
}

/// A parked session's share of the state budget (its subscriptions are counted apart).
pub fn parked_cost(session_id: &str) -> usize {
    session_id.len() + PARKED_COST
}

impl QueueBudget {
    pub fn new(max_messages: usize, max_bytes: usize) -> QueueBudget {
        QueueBudget {
            max_messages,
            max_bytes,
            messages: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            state: AtomicUsize::new(0),
            max_state: usize::MAX,
            memory: MemoryGuard::off(),
        }
    }

    /// Caps session state: subscriptions and parked sessions (see [`QueueBudget::reserve_state`]).
    pub fn with_state_cap(mut self, max_state: usize) -> QueueBudget {
        self.max_state = max_state;
        self
    }

    /// Reserves `bytes` of session state (a new subscription, a session being parked), or says
    /// why not: the state cap is reached, or the process is at its memory cap.
    pub fn reserve_state(&self, bytes: usize) -> Result<(), Shed> {
        let state = self.state();
        if state.saturating_add(bytes) > self.max_state {
            return Err(Shed::StateFull);
        }
        if self.memory.pressure(self.tracked().saturating_add(bytes)) == Pressure::Full {
            return Err(Shed::MemoryFull);
        }
        self.state.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Gives back session state that is no longer held.
    pub fn release_state(&self, bytes: usize) {
        let _ = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| Some(s.saturating_sub(bytes)));
    }

    /// Session state held, bytes.
    pub fn state(&self) -> usize {
        self.state.load(Ordering::Relaxed)
    }

    /// Bytes the memory cap's estimate follows between samples: queued payloads and session
    /// state.
    pub fn tracked(&self) -> usize {
        self.used().bytes.saturating_add(self.state())
    }

    /// Also sheds by the process's resident memory (see [`crate::memory`]).
    pub fn with_memory_cap(mut self, max_rss: usize) -> QueueBudget {
        self.memory = MemoryGuard::new(max_rss);
        self
    }

    pub fn memory(&self) -> &MemoryGuard {
        &self.memory
    }

    /// How close the process is to its memory cap right now.
    pub fn memory_pressure(&self) -> Pressure {
        self.memory.pressure(self.tracked())
    }

    /// No cap (tests of other rules).
    pub fn unlimited() -> QueueBudget {
        QueueBudget::new(usize::MAX, usize::MAX)
    }

    /// Reserves room for one delivery of `bytes` at `qos` into a queue that is `backlogged`
    /// (not draining), or says why not.
    pub fn reserve(&self, bytes: usize, qos: u8, backlogged: bool) -> Result<(), Shed> {
        let used = self.used();
        if used.messages >= self.max_messages || used.bytes.saturating_add(bytes) > self.max_bytes {
            return Err(Shed::Full);
        }
        let soft = used.messages >= soft_mark(self.max_messages)
            || used.bytes >= soft_mark(self.max_bytes);
        if soft && qos == 0 {
            return Err(Shed::Qos0);
        }
        if soft && backlogged {
            return Err(Shed::Backlogged);
        }
        match self.memory.pressure(self.tracked().saturating_add(bytes)) {
            Pressure::Full => return Err(Shed::MemoryFull),
            Pressure::Shed if qos == 0 || backlogged => return Err(Shed::MemoryShed),
            _ => {}
        }
        self.add(Load { messages: 1, bytes });
        Ok(())
    }

    /// Gives back what a queue no longer holds.
    pub fn release(&self, load: Load) {
        // Saturating: a release never exceeds what was reserved, but an underflow must not wrap
        // into "full" if that ever broke.
        let _ = self.messages.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
            Some(m.saturating_sub(load.messages))
        });
        let _ = self.bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            Some(b.saturating_sub(load.bytes))
        });
    }

    /// Moves a queue's accounted load from `before` to `now` without any policy: the messages
    /// are already held (a connection moving deliveries from its mailbox into its session).
    pub fn adjust(&self, before: Load, now: Load) {
        self.add(Load {
            messages: now.messages.saturating_sub(before.messages),
            bytes: now.bytes.saturating_sub(before.bytes),
        });
        self.release(Load {
            messages: before.messages.saturating_sub(now.messages),
            bytes: before.bytes.saturating_sub(now.bytes),
        });
    }

    pub fn used(&self) -> Load {
        Load {
            messages: self.messages.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    fn add(&self, load: Load) {
        self.messages.fetch_add(load.messages, Ordering::Relaxed);
        self.bytes.fetch_add(load.bytes, Ordering::Relaxed);
    }
}

fn soft_mark(cap: usize) -> usize {
    cap / 4 * 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_qos0_then_backlogged_then_everything() {
        let budget = QueueBudget::new(8, 1_000);
        for _ in 0..6 {
            budget.reserve(10, 0, true).expect("below the soft mark everything goes");
        }
        assert_eq!(budget.reserve(10, 0, false), Err(Shed::Qos0));
        assert_eq!(budget.reserve(10, 1, true), Err(Shed::Backlogged));
        budget.reserve(10, 1, false).expect("a draining queue still gets QoS 1");
        budget.reserve(10, 2, false).expect("and QoS 2");
        assert_eq!(budget.reserve(10, 1, false), Err(Shed::Full));
        assert_eq!(budget.used(), Load { messages: 8, bytes: 80 });
        budget.release(Load { messages: 3, bytes: 30 });
        budget.reserve(10, 0, true).expect("below the soft mark again");
    }

    #[test]
    fn bytes_cap_too() {
        let budget = QueueBudget::new(1_000, 100);
        budget.reserve(70, 1, true).unwrap();
        assert_eq!(budget.reserve(40, 1, false), Err(Shed::Full), "would exceed the byte cap");
        budget.reserve(5, 0, false).expect("70 bytes is below the soft mark of 75");
        assert_eq!(budget.reserve(1, 0, false), Err(Shed::Qos0));
    }

    #[test]
    fn memory_cap_sheds_on_its_own_marks() {
        let budget = QueueBudget::new(1_000, 1 << 30).with_memory_cap(100 * 1024);
        budget.memory().sample(80 * 1024, 0);
        budget.reserve(1024, 0, true).expect("81 % of the cap: below the shedding mark");
        // The sample plus what was reserved since: 86 %.
        budget.reserve(4 * 1024, 1, false).unwrap();
        assert_eq!(budget.reserve(10, 0, false), Err(Shed::MemoryShed));
        assert_eq!(budget.reserve(10, 1, true), Err(Shed::MemoryShed));
        budget.reserve(10, 1, false).expect("a draining queue still gets QoS 1");
        assert_eq!(budget.reserve(10 * 1024, 1, false), Err(Shed::MemoryFull));
        assert_eq!(budget.memory_pressure(), Pressure::Shed);
        // Released, and a fresh sample shows the memory back: everything goes again.
        budget.release(budget.used());
        budget.memory().sample(50 * 1024, 0);
        budget.reserve(10, 0, true).unwrap();
        assert_eq!(budget.memory_pressure(), Pressure::None);
    }

    #[test]
    fn session_state_has_its_own_cap_and_counts_for_memory() {
        let budget =
            QueueBudget::new(1_000, 1 << 30).with_state_cap(1_000).with_memory_cap(100 * 1024);
        budget.reserve_state(600).unwrap();
        assert_eq!(budget.reserve_state(401), Err(Shed::StateFull));
        budget.reserve_state(400).unwrap();
        assert_eq!(budget.state(), 1_000);
        // Queued messages are not session state, and session state is no queue.
        budget.reserve(10, 1, false).unwrap();
        assert_eq!(budget.used(), Load { messages: 1, bytes: 10 });
        budget.release_state(900);
        assert_eq!(budget.state(), 100);
        // The memory estimate follows session state grown since the sample.
        budget.memory().sample(90 * 1024, budget.tracked());
        assert_eq!(budget.memory_pressure(), Pressure::Shed);
        let budget = QueueBudget::new(1_000, 1 << 30).with_memory_cap(100 * 1024);
        budget.memory().sample(90 * 1024, 0);
        assert_eq!(budget.reserve_state(6 * 1024), Err(Shed::MemoryFull));
        budget.reserve_state(1024).unwrap();
        assert_eq!(budget.reserve(1024, 0, false), Err(Shed::MemoryShed), "92 % with the state");
        budget.release_state(usize::MAX);
        assert_eq!(budget.state(), 0, "never wraps");
    }

    #[test]
    fn adjust_moves_without_policy() {
        let budget = QueueBudget::new(2, 100);
        budget.adjust(Load::default(), Load { messages: 5, bytes: 500 });
        assert_eq!(budget.used(), Load { messages: 5, bytes: 500 });
        budget.adjust(Load { messages: 5, bytes: 500 }, Load { messages: 1, bytes: 10 });
        assert_eq!(budget.used(), Load { messages: 1, bytes: 10 });
        budget.release(Load { messages: 9, bytes: 900 });
        assert_eq!(budget.used(), Load::default(), "never wraps");
    }
}
