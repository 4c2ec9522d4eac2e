//! Client address canonicalisation and classification: which addresses are worth a lookup.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What kind of address a client connected from, after [`canonicalize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrClass {
    /// Not in any special-purpose range this crate knows: worth a database lookup.
    Public,
    /// `127.0.0.0/8` or `::1`. Looked up only when
    /// [`LocatorOptions::geolocate_loopback`](crate::LocatorOptions::geolocate_loopback) is set.
    Loopback,
    /// Never publicly routable, so no database can place it: private (RFC 1918), shared/CGNAT
    /// (`100.64.0.0/10`), link-local, unspecified and "this network" (`0.0.0.0/8`),
    /// documentation, benchmarking, multicast, broadcast and reserved IPv4 space; unique-local
    /// (`fc00::/7`), link- and site-local, documentation (`2001:db8::/32`, `3fff::/20`),
    /// discard-only (`100::/64`), multicast and unspecified IPv6.
    NonPublic,
}

/// Rewrites an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket reports for
/// an IPv4 peer) to the plain IPv4 address; every other address is returned unchanged.
#[must_use]
pub fn canonicalize(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Classifies `ip` after [`canonicalize`]-ing it.
#[must_use]
pub fn classify(ip: IpAddr) -> AddrClass {
    match canonicalize(ip) {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    if ip.is_loopback() {
        return AddrClass::Loopback;
    }
    let [a, b, c, _] = ip.octets();
    let non_public = ip.is_private()
        || ip.is_link_local()
        || ip.is_documentation()
        || ip.is_broadcast()
        || ip.is_multicast()
        // 0.0.0.0/8: "this network", including the unspecified address.
        || a == 0
        // 100.64.0.0/10: shared address space (carrier-grade NAT), RFC 6598.
        || (a == 100 && (b & 0xc0) == 64)
        // 192.0.0.0/24: IETF protocol assignments, RFC 6890.
        || (a == 192 && b == 0 && c == 0)
        // 198.18.0.0/15: benchmarking, RFC 2544.
        || (a == 198 && (b & 0xfe) == 18)
        // 240.0.0.0/4: reserved for future use.
        || a >= 240;
    if non_public { AddrClass::NonPublic } else { AddrClass::Public }
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    if ip.is_loopback() {
        return AddrClass::Loopback;
    }
    let segments = ip.segments();
    let non_public = ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        // fec0::/10: deprecated site-local, still seen on old networks.
        || (segments[0] & 0xffc0) == 0xfec0
        // 2001:db8::/32 (RFC 3849) and 3fff::/20 (RFC 9637): documentation.
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)
        || (segments[0] == 0x3fff && (segments[1] & 0xf000) == 0)
        // 100::/64: discard-only, RFC 6666.
        || (segments[0] == 0x0100 && segments[1..4] == [0, 0, 0]);
    if non_public { AddrClass::NonPublic } else { AddrClass::Public }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address parses")
    }

    #[test]
    fn mapped_ipv6_becomes_ipv4() {
        assert_eq!(canonicalize(ip("::ffff:8.8.8.8")), ip("8.8.8.8"));
        assert_eq!(canonicalize(ip("::ffff:127.1.0.1")), ip("127.1.0.1"));
        assert_eq!(canonicalize(ip("2001:4860::1")), ip("2001:4860::1"));
        assert_eq!(canonicalize(ip("8.8.8.8")), ip("8.8.8.8"));
    }

    #[test]
    fn loopback_in_every_spelling() {
        for s in ["127.0.0.1", "127.1.0.1", "127.255.255.254", "::1", "::ffff:127.2.3.4"] {
            assert_eq!(classify(ip(s)), AddrClass::Loopback, "{s}");
        }
    }

    #[test]
    fn non_public_ranges() {
        for s in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.1.1",
            "0.0.0.0",
            "0.1.2.3",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "198.18.0.1",
            "198.19.255.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "3fff:0fff::1",
            "100::1",
            "::ffff:10.0.0.1",
            "::ffff:192.168.0.1",
        ] {
            assert_eq!(classify(ip(s)), AddrClass::NonPublic, "{s}");
        }
    }

    #[test]
    fn public_ranges() {
        for s in [
            "8.8.8.8",
            "1.0.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "198.20.0.1",
            "192.0.1.1",
            "2001:4860::8888",
            "2a00:1450::1",
            "3ffe::1",
            "100:0:0:1::1",
            "::ffff:8.8.4.4",
        ] {
            assert_eq!(classify(ip(s)), AddrClass::Public, "{s}");
        }
    }
}
