//! The broker process's resident-memory cap (`max_rss`): the backstop behind the per-session
//! and broker-wide queue bounds.
//!
//! The queue budget ([`crate::budget`]) bounds what waits for delivery, but resident memory
//! also holds connections, retained messages, partial packets and the allocator's own slack.
//! [`MemoryGuard`] samples the process's resident set (`VmRSS`) every [`SAMPLE_EVERY`] and,
//! between samples, adds the queue bytes reserved since the last one, so a burst is seen at
//! once rather than at the next sample. From the estimate:
//! - at [`SHED_AT`] % of the cap, queues that are not draining get nothing new and QoS 0 is
//!   dropped, as above the budget's soft mark (`memory_shed`);
//! - at [`REFUSE_AT`] % of the cap, new connections are closed at accept and no delivery is
//!   queued at all (`memory_full`).
//!
//! Clients that keep up keep receiving until the last mark: what they are sent leaves memory as
//! fast as it arrives. Memory the allocator keeps after a burst still counts as resident, so
//! the guard may stay engaged after queues drain; it lets go as soon as the resident set falls
//! below the mark.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How often the resident set is read (`/proc/self/status`, a few microseconds).
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// Percent of the cap at which non-draining queues and QoS 0 are shed.
pub const SHED_AT: usize = 85;
/// Percent of the cap at which nothing new is queued or admitted.
pub const REFUSE_AT: usize = 95;

/// How close the process is to its cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    None,
    /// Past [`SHED_AT`].
    Shed,
    /// Past [`REFUSE_AT`].
    Full,
}

#[derive(Debug)]
pub struct MemoryGuard {
    /// Bytes; 0 means no cap.
    max_rss: usize,
    /// The resident set at the last sample.
    sampled_rss: AtomicUsize,
    /// Queue bytes reserved at the last sample.
    sampled_queued: AtomicUsize,
}

impl MemoryGuard {
    pub fn new(max_rss: usize) -> MemoryGuard {
        MemoryGuard {
            max_rss,
            sampled_rss: AtomicUsize::new(0),
            sampled_queued: AtomicUsize::new(0),
        }
    }

    /// No cap.
    pub fn off() -> MemoryGuard {
        MemoryGuard::new(0)
    }

    pub fn enabled(&self) -> bool {
        self.max_rss > 0
    }

    /// Records a reading of the resident set, taken while `queued` bytes were reserved.
    pub fn sample(&self, rss: usize, queued: usize) {
        self.sampled_rss.store(rss, Ordering::Relaxed);
        self.sampled_queued.store(queued, Ordering::Relaxed);
    }

    /// The pressure with `queued` bytes reserved now.
    pub fn pressure(&self, queued: usize) -> Pressure {
        if self.max_rss == 0 {
            return Pressure::None;
        }
        let grown = queued.saturating_sub(self.sampled_queued.load(Ordering::Relaxed));
        let estimate = self.sampled_rss.load(Ordering::Relaxed).saturating_add(grown);
        if estimate >= self.max_rss / 100 * REFUSE_AT {
            Pressure::Full
        } else if estimate >= self.max_rss / 100 * SHED_AT {
            Pressure::Shed
        } else {
            Pressure::None
        }
    }
}

/// This process's resident set in bytes (Linux `/proc/self/status`), or `None` elsewhere.
pub fn resident_bytes() -> Option<usize> {
    parse_vm_rss(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// Process `pid`'s resident set in bytes (Linux `/proc/PID/status`), or `None` when it cannot
/// be read.
pub fn resident_bytes_of(pid: u32) -> Option<usize> {
    parse_vm_rss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The `VmRSS` line of a `/proc/PID/status` text, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<usize> {
    let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kib: usize = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_follows_the_sample_plus_what_was_queued_since() {
        let guard = MemoryGuard::new(100 * 1024);
        assert_eq!(guard.pressure(0), Pressure::None);
        guard.sample(80 * 1024, 10_000);
        assert_eq!(guard.pressure(10_000), Pressure::None);
        // 6 KiB queued since the sample: 86 % estimated.
        assert_eq!(guard.pressure(10_000 + 6 * 1024), Pressure::Shed);
        assert_eq!(guard.pressure(10_000 + 16 * 1024), Pressure::Full);
        // Queues drained below the sampled level add nothing (and take nothing off: the
        // allocator may keep the memory).
        assert_eq!(guard.pressure(0), Pressure::None);
        guard.sample(96 * 1024, 0);
        assert_eq!(guard.pressure(0), Pressure::Full);
    }

    #[test]
    fn no_cap_means_no_pressure() {
        let guard = MemoryGuard::off();
        guard.sample(usize::MAX / 2, 0);
        assert_eq!(guard.pressure(usize::MAX), Pressure::None);
        assert!(!guard.enabled());
    }

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tmeridian\nVmPeak:\t  200 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("VmRSS: lots"), None);
        assert_eq!(parse_vm_rss(""), None);
        if cfg!(target_os = "linux") {
            assert!(resident_bytes().is_some_and(|rss| rss > 0));
        }
    }
}
