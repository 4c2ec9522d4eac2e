//! Which address a request comes from: the socket peer, unless that peer is a trusted proxy
//! that says who it is forwarding for (PROTOCOL §4).
//!
//! The answer decides a device's region and its rate-limit bucket, so only configured proxies
//! are believed: a client that sends its own `X-Forwarded-For` straight to the edge is located
//! by its socket address like everyone else.

use std::net::{IpAddr, SocketAddr};

use http::HeaderValue;
use ipnet::IpNet;

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    #[must_use]
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self { nets }
    }

    /// Whether `ip` (IPv4-mapped IPv6 included) is a trusted proxy.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client's address given the transport-level peer (the socket peer, or the source a
    /// trusted PROXY header named) and the request's `X-Forwarded-For` values in header order.
    ///
    /// `X-Forwarded-For` is read right to left, because each proxy appends the address it
    /// received from: the first entry not belonging to a trusted proxy is the client. Entries
    /// further left were written by that client and are ignored. If an entry does not parse,
    /// the walk stops at the last trusted hop: whoever wrote the garbage is not believed.
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a HeaderValue>,
    ) -> IpAddr {
        let mut client = peer.to_canonical();
        if self.nets.is_empty() || !self.contains(client) {
            return client;
        }
        for value in forwarded_for.rev() {
            let Ok(value) = value.to_str() else {
                return client;
            };
            for entry in value.rsplit(',') {
                let entry = entry.trim();
                if entry.is_empty() {
                    continue;
                }
                let Some(hop) = parse_hop(entry) else {
                    return client;
                };
                client = hop;
                if !self.contains(hop) {
                    return hop;
                }
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: a bare address, or (as some proxies write) one with a port,
/// IPv6 in brackets.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|addr| addr.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().expect("test net")).collect())
    }

    fn client(trusted: &TrustedProxies, peer: &str, headers: &[&str]) -> IpAddr {
        let values: Vec<HeaderValue> =
            headers.iter().map(|h| HeaderValue::from_str(h).expect("header")).collect();
        trusted.client_ip(ip(peer), values.iter())
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(client(&trusted, "203.0.113.9", &["8.8.8.8"]), ip("203.0.113.9"));
        assert_eq!(client(&proxies(&[]), "10.0.0.1", &["8.8.8.8"]), ip("10.0.0.1"));
    }

    #[test]
    fn trusted_hops_are_skipped_right_to_left() {
        let trusted = proxies(&["10.0.0.0/8", "127.0.0.1/32"]);
        // client, then two of our proxies appended what they saw.
        let got = client(&trusted, "127.0.0.1", &["1.1.1.1, 81.2.69.160, 10.0.0.7"]);
        assert_eq!(got, ip("81.2.69.160"), "the spoofed 1.1.1.1 left of the client is ignored");
        // The same chain split over several header lines.
        let got = client(&trusted, "127.0.0.1", &["1.1.1.1", "81.2.69.160", "10.0.0.7"]);
        assert_eq!(got, ip("81.2.69.160"));
    }

    #[test]
    fn all_trusted_means_the_leftmost() {
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(client(&trusted, "10.0.0.1", &["10.0.0.3, 10.0.0.2"]), ip("10.0.0.3"));
        assert_eq!(client(&trusted, "10.0.0.1", &[]), ip("10.0.0.1"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_trusted_hop() {
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(client(&trusted, "10.0.0.1", &["8.8.8.8, unknown, 10.0.0.2"]), ip("10.0.0.2"));
    }

    #[test]
    fn ports_brackets_and_mapped_addresses() {
        let trusted = proxies(&["10.0.0.0/8", "::1/128"]);
        assert_eq!(client(&trusted, "10.0.0.1", &["8.8.8.8:4711"]), ip("8.8.8.8"));
        assert_eq!(client(&trusted, "10.0.0.1", &["[2001:4860::1]:443"]), ip("2001:4860::1"));
        assert_eq!(client(&trusted, "::ffff:10.0.0.1", &["::ffff:8.8.4.4"]), ip("8.8.4.4"));
        assert_eq!(client(&trusted, "::1", &[" 81.2.69.160 ,"]), ip("81.2.69.160"));
    }
}
