//! Admission and back-off rules in virtual time (back-off) or with bursts that cannot refill
//! during the test (rate: one token per hour).

use super::*;

fn limits() -> LimitsConfig {
    LimitsConfig {
        max_connections: 3,
        connection_rate: 1,
        connection_burst: 2,
        auth_failures_per_address: 3,
        auth_failures_per_username: 2,
        auth_backoff: Duration::from_secs(60),
        auth_backoff_entries: 4,
        ..LimitsConfig::default()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

#[test]
fn connection_rate_is_per_address() {
    let admission = Admission::new(&limits());
    let _a = admission.admit(ip("10.0.0.1")).expect("burst 1");
    let _b = admission.admit(ip("10.0.0.1")).expect("burst 2");
    assert_eq!(admission.admit(ip("10.0.0.1")).err(), Some(Refusal::ConnectionRate));
    let _c = admission.admit(ip("10.0.0.2")).expect("another address");
    // IPv6 hosts share their /64; IPv4-mapped IPv6 is the IPv4 address.
    assert_eq!(admission.admit(ip("::ffff:10.0.0.1")).err(), Some(Refusal::ConnectionRate));
}

#[test]
fn max_connections_counts_open_slots() {
    let config = LimitsConfig { connection_rate: 0, ..limits() };
    let admission = Admission::new(&config);
    let slots: Vec<Slot> =
        (1..=3).map(|n| admission.admit(ip(&format!("10.0.0.{n}"))).unwrap()).collect();
    assert_eq!(admission.open(), 3);
    assert_eq!(admission.admit(ip("10.0.0.9")).err(), Some(Refusal::MaxConnections));
    assert_eq!(admission.open(), 3, "a refusal holds no slot");
    drop(slots);
    assert_eq!(admission.open(), 0);
    assert!(admission.admit(ip("10.0.0.9")).is_ok());
}

#[test]
fn address_backoff_after_failures() {
    let backoff = AuthBackoff::new(&limits());
    let now = Instant::now();
    let peer = ip("192.0.2.1");
    for n in 0..3u64 {
        let at = now + Duration::from_secs(n);
        assert_eq!(backoff.check(peer, Some(&format!("user{n}")), at), Ok(()));
        backoff.failed(peer, Some(&format!("user{n}")), at);
    }
    let later = now + Duration::from_secs(10);
    assert_eq!(backoff.check(peer, Some("fresh"), later), Err(BackedOff::Address));
    assert_eq!(backoff.check(peer, None, later), Err(BackedOff::Address));
    assert_eq!(backoff.check(ip("192.0.2.2"), Some("fresh"), later), Ok(()), "other addresses");
    // The back-off ends 60 s after the failure that triggered it.
    assert_eq!(backoff.check(peer, Some("fresh"), now + Duration::from_secs(62)), Ok(()));
}

#[test]
fn username_backoff_across_addresses() {
    let backoff = AuthBackoff::new(&limits());
    let now = Instant::now();
    backoff.failed(ip("192.0.2.1"), Some("dev1&pk"), now);
    backoff.failed(ip("192.0.2.2"), Some("dev1&pk"), now);
    assert_eq!(backoff.check(ip("192.0.2.3"), Some("dev1&pk"), now), Err(BackedOff::Username));
    assert_eq!(backoff.check(ip("192.0.2.3"), Some("dev2&pk"), now), Ok(()));
}

#[test]
fn failures_spread_over_time_never_back_off() {
    let backoff = AuthBackoff::new(&limits());
    let now = Instant::now();
    let peer = ip("192.0.2.1");
    // Two failures per 61 s window stay under the limit of 3.
    for window in 0..5u64 {
        let at = now + Duration::from_secs(61 * window);
        backoff.failed(peer, None, at);
        backoff.failed(peer, None, at + Duration::from_secs(1));
        assert_eq!(backoff.check(peer, None, at + Duration::from_secs(2)), Ok(()));
    }
}

#[test]
fn success_forgets_the_username_not_the_address() {
    let backoff = AuthBackoff::new(&limits());
    let now = Instant::now();
    let peer = ip("192.0.2.1");
    backoff.failed(peer, Some("dev1&pk"), now);
    backoff.failed(peer, Some("dev2&pk"), now);
    backoff.succeeded(Some("dev1&pk"));
    backoff.failed(peer, Some("dev1&pk"), now);
    assert_eq!(backoff.check(ip("192.0.2.9"), Some("dev1&pk"), now), Ok(()), "count restarted");
    assert_eq!(backoff.check(peer, None, now), Err(BackedOff::Address), "3 failures from it");
}

#[test]
fn tables_are_bounded() {
    let backoff = AuthBackoff::new(&limits());
    let now = Instant::now();
    for n in 0..100 {
        backoff.failed(ip(&format!("198.51.100.{n}")), Some(&format!("user{n}")), now);
    }
    assert!(lock(&backoff.addresses).len() <= 4);
    assert!(lock(&backoff.usernames).len() <= 4);
    // Once the entries expire they are swept to make room.
    let later = now + Duration::from_secs(61);
    backoff.failed(ip("203.0.113.1"), Some("late"), later);
    assert!(lock(&backoff.usernames).contains_key("late"));
    backoff.forget_idle(later + Duration::from_secs(61));
    assert!(lock(&backoff.usernames).is_empty());
}

#[test]
fn zero_disables() {
    let config =
        LimitsConfig { auth_failures_per_address: 0, auth_failures_per_username: 0, ..limits() };
    let backoff = AuthBackoff::new(&config);
    let now = Instant::now();
    for _ in 0..10 {
        backoff.failed(ip("192.0.2.1"), Some("u"), now);
    }
    assert_eq!(backoff.check(ip("192.0.2.1"), Some("u"), now), Ok(()));
}
