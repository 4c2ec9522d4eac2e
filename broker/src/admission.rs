//! Who may open a connection and who may try to log in: the broker's defences against floods
//! and guessing, applied before any protocol work is spent on a client.
//!
//! - [`Admission`] runs at `accept`, before a TLS or WebSocket handshake: a global cap on open
//!   connections and a per-source-address connection rate (GCRA token bucket, `governor`'s).
//! - [`AuthBackoff`] runs at CONNECT: after too many failed logins from one address, or for one
//!   username (a device's `{dn}&{pk}`), further CONNECTs from that address or for that username
//!   are refused with CONNACK 5 "not authorized" for a back-off period, without checking the
//!   password. The answer is the same whichever side is backed off and whatever was wrong, so
//!   it tells a guesser nothing.
//!
//! Time is a parameter (`now`) of every decision in `AuthBackoff`, so its rules are tested
//! without sleeping; the rate limiter uses `governor`'s clock.
//!
//! What this does not do: remember anything across restarts, or share state between brokers.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::LimitsConfig;

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` connections are already open.
    MaxConnections,
    /// The source address opened connections faster than `connection_rate` allows.
    ConnectionRate,
}

impl Refusal {
    /// The `limit` label of `meridian_broker_limited_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::ConnectionRate => "connection_rate",
        }
    }
}

/// Admission control at accept.
pub struct Admission {
    max_connections: usize,
    /// Open connections, counted from accept to the end of the connection task. An atomic
    /// rather than a semaphore: a refused socket is closed at once, never queued.
    open: Arc<AtomicUsize>,
    /// `None` when the per-address rate is disabled (`connection_rate = 0`).
    rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

/// Holds one of [`Admission`]'s connection slots until dropped.
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    pub fn new(limits: &LimitsConfig) -> Admission {
        let rate = NonZeroU32::new(limits.connection_rate).map(|per_second| {
            let burst = NonZeroU32::new(limits.connection_burst).unwrap_or(per_second);
            RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
        });
        Admission { max_connections: limits.max_connections, open: Arc::default(), rate }
    }

    /// A slot for a connection from `peer`, or why there is none.
    pub fn admit(&self, peer: IpAddr) -> Result<Slot, Refusal> {
        if let Some(rate) = &self.rate
            && rate.check_key(&bucket(peer)).is_err()
        {
            return Err(Refusal::ConnectionRate);
        }
        let previous = self.open.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(self.open.clone());
        if previous >= self.max_connections {
            return Err(Refusal::MaxConnections);
        }
        Ok(slot)
    }

    /// Open connections right now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Drops the rate buckets of addresses that are back to a full burst, bounding memory to
    /// the addresses seen recently.
    pub fn forget_idle(&self) {
        if let Some(rate) = &self.rate {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
    }
}

/// The rate bucket of an address: itself for IPv4, its /64 for IPv6 (one host usually holds a
/// whole /64 and could otherwise rotate through it), IPv4-mapped IPv6 as IPv4.
pub fn bucket(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

/// Which side of a login is backed off. Only metrics see it; the client gets CONNACK 5 either
/// way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackedOff {
    /// Too many failures from this source address (its /64 for IPv6).
    Address,
    /// Too many failures for this username (a device's `{dn}&{pk}`, or a standard user).
    Username,
}

impl BackedOff {
    /// The `limit` label of `meridian_broker_limited_total`.
    pub fn label(self) -> &'static str {
        match self {
            BackedOff::Address => "auth_backoff_address",
            BackedOff::Username => "auth_backoff_username",
        }
    }
}

/// Failed-login counting with back-off, per source address and per username.
pub struct AuthBackoff {
    per_address: u32,
    per_username: u32,
    backoff: Duration,
    /// Bounds each table: a flood of distinct usernames or addresses must not grow memory
    /// without limit. When a table is full, expired entries are swept; if it is still full, new
    /// keys go untracked (the other table still applies).
    max_entries: usize,
    // A std mutex: every operation is a short map update with no `.await` inside.
    addresses: Mutex<HashMap<IpAddr, Failures>>,
    usernames: Mutex<HashMap<String, Failures>>,
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    /// Failures since `since`; reset once a back-off period passes without reaching the limit.
    count: u32,
    since: Instant,
    /// While set and in the future, logins are refused without checking the password.
    until: Option<Instant>,
}

impl AuthBackoff {
    pub fn new(limits: &LimitsConfig) -> AuthBackoff {
        AuthBackoff {
            per_address: limits.auth_failures_per_address,
            per_username: limits.auth_failures_per_username,
            backoff: limits.auth_backoff,
            max_entries: limits.auth_backoff_entries,
            addresses: Mutex::new(HashMap::new()),
            usernames: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a login from `peer` as `username` may be checked now.
    pub fn check(
        &self,
        peer: IpAddr,
        username: Option<&str>,
        now: Instant,
    ) -> Result<(), BackedOff> {
        if self.per_address > 0 && blocked(&lock(&self.addresses), &bucket(peer), now) {
            return Err(BackedOff::Address);
        }
        if let Some(username) = username
            && self.per_username > 0
            && blocked(&lock(&self.usernames), username, now)
        {
            return Err(BackedOff::Username);
        }
        Ok(())
    }

    /// Records a failed login (wrong password or signature, unknown user or device).
    pub fn failed(&self, peer: IpAddr, username: Option<&str>, now: Instant) {
        if self.per_address > 0 {
            let mut addresses = lock(&self.addresses);
            self.count(&mut addresses, bucket(peer), self.per_address, now);
        }
        if let Some(username) = username
            && self.per_username > 0
        {
            let mut usernames = lock(&self.usernames);
            self.count(&mut usernames, username.to_owned(), self.per_username, now);
        }
    }

    /// Records a successful login: the username's failures are forgotten. The address's are
    /// not, or one valid credential would reset an attacker's count for every other guess.
    pub fn succeeded(&self, username: Option<&str>) {
        if let Some(username) = username {
            lock(&self.usernames).remove(username);
        }
    }

    fn count<K: std::hash::Hash + Eq>(
        &self,
        table: &mut HashMap<K, Failures>,
        key: K,
        limit: u32,
        now: Instant,
    ) {
        if table.len() >= self.max_entries && !table.contains_key(&key) {
            let backoff = self.backoff;
            table.retain(|_, failures| !expired(failures, backoff, now));
            if table.len() >= self.max_entries {
                return;
            }
        }
        let failures = table.entry(key).or_insert(Failures { count: 0, since: now, until: None });
        if expired(failures, self.backoff, now) {
            *failures = Failures { count: 0, since: now, until: None };
        }
        failures.count = failures.count.saturating_add(1);
        if failures.count >= limit {
            failures.until = Some(now + self.backoff);
        }
    }

    /// Drops entries whose window and back-off are over.
    pub fn forget_idle(&self, now: Instant) {
        let backoff = self.backoff;
        lock(&self.addresses).retain(|_, failures| !expired(failures, backoff, now));
        lock(&self.usernames).retain(|_, failures| !expired(failures, backoff, now));
    }
}

fn blocked<K, Q>(table: &HashMap<K, Failures>, key: &Q, now: Instant) -> bool
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    table.get(key).and_then(|failures| failures.until).is_some_and(|until| now < until)
}

/// An entry is over once its back-off has ended, or, never backed off, once a whole back-off
/// period has passed since its first failure.
fn expired(failures: &Failures, backoff: Duration, now: Instant) -> bool {
    match failures.until {
        Some(until) => now >= until,
        None => now >= failures.since + backoff,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning only follows a panic elsewhere; the maps stay valid (single inserts/removes).
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
