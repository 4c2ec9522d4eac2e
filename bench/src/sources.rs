//! Client source addresses. Every connection from one source address to one broker port needs
//! its own ephemeral port (28,000 here), and a closed one sits in TIME_WAIT for a minute, so the
//! load generator spreads its connections over many `127.x.y.z` addresses: a *block* is the
//! second octet, and each scenario and broker gets its own block.

use std::net::{IpAddr, Ipv4Addr};

/// Connections per source address: far below the ephemeral port range.
const PER_ADDRESS: usize = 400;

/// The source address of connection `i` in `block`.
pub fn source(block: u8, i: usize) -> IpAddr {
    let address = i / PER_ADDRESS;
    let third = (address / 250) as u8;
    let fourth = (address % 250) as u8 + 1;
    IpAddr::V4(Ipv4Addr::new(127, block, third, fourth))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_over_addresses() {
        assert_eq!(source(10, 0), IpAddr::V4(Ipv4Addr::new(127, 10, 0, 1)));
        assert_eq!(source(10, 399), IpAddr::V4(Ipv4Addr::new(127, 10, 0, 1)));
        assert_eq!(source(10, 400), IpAddr::V4(Ipv4Addr::new(127, 10, 0, 2)));
        assert_eq!(source(10, 400 * 250), IpAddr::V4(Ipv4Addr::new(127, 10, 1, 1)));
    }
}
