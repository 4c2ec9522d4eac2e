//! Per-client-address rate limiting (PROTOCOL §9): the bootstrap endpoint is unauthenticated, so
//! this is what slows down anyone enumerating devices. The GCRA token bucket is `governor`'s.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use foldhash::quality::RandomState;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::config::RateLimitConfig;

/// How often buckets of addresses that have gone quiet are dropped, bounding memory to the
/// addresses seen in roughly the last interval.
pub(crate) const FORGET_INTERVAL: Duration = Duration::from_secs(60);

/// One token bucket per client address.
pub(crate) struct ClientLimiter {
    /// Hashed with foldhash rather than the default SipHash, which was half the cost of a
    /// check. Its per-process random seed still keeps the bucket map's layout unknown to
    /// clients, who in any case choose their addresses only within what they own.
    limiter: RateLimiter<IpAddr, DashMapStateStore<IpAddr, RandomState>, DefaultClock>,
}

impl ClientLimiter {
    /// `None` when rate limiting is disabled or the numbers are zero (which
    /// [`EdgeConfig::check`](crate::EdgeConfig::check) refuses).
    pub(crate) fn new(config: &RateLimitConfig) -> Option<Self> {
        if !config.enabled {
            return None;
        }
        let quota = Quota::per_second(NonZeroU32::new(config.per_second)?)
            .allow_burst(NonZeroU32::new(config.burst)?);
        Some(Self { limiter: RateLimiter::dashmap_with_hasher(quota, RandomState::default()) })
    }

    /// `Err` with the time until the next request from `client` would be allowed.
    pub(crate) fn check(&self, client: IpAddr) -> Result<(), Duration> {
        self.limiter
            .check_key(&bucket(client))
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Drops the buckets of addresses that are back to a full burst.
    pub(crate) fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The bucket key: the address itself for IPv4, its /64 for IPv6, since a single host is
/// usually handed a whole /64 and could otherwise rotate through it.
fn bucket(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32) -> ClientLimiter {
        ClientLimiter::new(&RateLimitConfig { enabled: true, per_second, burst }).expect("enabled")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn burst_then_refusal_per_address() {
        let limiter = limiter(1, 3);
        for _ in 0..3 {
            assert!(limiter.check(ip("8.8.8.8")).is_ok());
        }
        let wait = limiter.check(ip("8.8.8.8")).expect_err("burst used up");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limiter.check(ip("8.8.4.4")).is_ok(), "other addresses are unaffected");
    }

    #[test]
    fn ipv6_hosts_share_their_64() {
        let limiter = limiter(1, 1);
        assert!(limiter.check(ip("2001:db8:1:2::1")).is_ok());
        assert!(limiter.check(ip("2001:db8:1:2:ffff::9")).is_err());
        assert!(limiter.check(ip("2001:db8:1:3::1")).is_ok());
        assert!(limiter.check(ip("::ffff:9.9.9.9")).is_ok());
        assert!(limiter.check(ip("9.9.9.9")).is_err(), "mapped and plain IPv4 are one client");
    }

    #[test]
    fn disabled_is_none() {
        let config = RateLimitConfig { enabled: false, ..RateLimitConfig::default() };
        assert!(ClientLimiter::new(&config).is_none());
    }
}
