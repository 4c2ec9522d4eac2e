//! Usage accounting for one instance (connections, connected seconds, messages in and out).
//! Counters live in memory and are flushed to the registry's `usage/{instance}` record
//! periodically, so a connect storm costs no store write per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dashmap::DashMap;
use meridian_registry::clock::Timestamp;
use meridian_registry::model::InstanceUsage;

/// Counters since this broker started; [`Usage::report`] adds them to the stored baseline.
#[derive(Default)]
pub struct Usage {
    connects: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    /// Connected time of connections that have closed, in milliseconds.
    closed_ms: AtomicU64,
    /// Open connections and when they opened.
    open: DashMap<u64, Instant>,
}

impl Usage {
    pub fn opened(&self, connection: u64, now: Instant) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.open.insert(connection, now);
    }

    pub fn closed(&self, connection: u64, now: Instant) {
        if let Some((_, since)) = self.open.remove(&connection) {
            let ms = u64::try_from(now.duration_since(since).as_millis()).unwrap_or(u64::MAX);
            self.closed_ms.fetch_add(ms, Ordering::Relaxed);
        }
    }

    pub fn message_in(&self) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
    }

    pub fn message_out(&self) {
        self.messages_out.fetch_add(1, Ordering::Relaxed);
    }

    /// `baseline` (what was stored when this broker started) plus everything since.
    pub fn report(&self, baseline: &InstanceUsage, now: Instant, at: Timestamp) -> InstanceUsage {
        let open_ms: u64 = self
            .open
            .iter()
            .map(|entry| u64::try_from(now.duration_since(*entry.value()).as_millis()).unwrap_or(0))
            .sum();
        let connected_ms = self.closed_ms.load(Ordering::Relaxed) + open_ms;
        InstanceUsage {
            instance: baseline.instance.clone(),
            connections: self.open.len() as u64,
            connects_total: baseline.connects_total + self.connects.load(Ordering::Relaxed),
            connected_seconds: baseline.connected_seconds + connected_ms / 1000,
            messages_in: baseline.messages_in + self.messages_in.load(Ordering::Relaxed),
            messages_out: baseline.messages_out + self.messages_out.load(Ordering::Relaxed),
            updated_at: at,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn adds_to_the_baseline() {
        let usage = Usage::default();
        let t0 = Instant::now();
        usage.opened(1, t0);
        usage.opened(2, t0);
        usage.closed(1, t0 + Duration::from_secs(10));
        usage.closed(7, t0 + Duration::from_secs(10)); // unknown: ignored
        usage.message_in();
        usage.message_out();
        usage.message_out();
        let baseline = InstanceUsage {
            instance: "iot-sh-1".parse().unwrap(),
            connects_total: 5,
            connected_seconds: 100,
            messages_in: 1,
            ..InstanceUsage::empty("iot-sh-1".parse().unwrap())
        };
        let report = usage.report(&baseline, t0 + Duration::from_secs(30), Timestamp(9));
        assert_eq!(report.connections, 1);
        assert_eq!(report.connects_total, 7);
        assert_eq!(report.connected_seconds, 100 + 10 + 30);
        assert_eq!((report.messages_in, report.messages_out), (2, 2));
        assert_eq!(report.updated_at, Timestamp(9));
    }
}
