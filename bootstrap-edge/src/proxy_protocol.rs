//! PROXY protocol v2: the binary header a TCP or TLS-terminating load balancer puts in front of
//! a connection to say whose it is. Parsing is the `ppp` crate's; this module only reads exactly
//! the header's bytes off the socket, so everything after it is left for HTTP.

use std::io;
use std::net::SocketAddr;

use ppp::v2::{Addresses, Command, Header, PROTOCOL_PREFIX, ParseError};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Signature (12) + version/command (1) + family/protocol (1) + length (2).
const FIXED_PART: usize = 16;
/// Largest address-and-TLV part accepted. Real headers are under 300 bytes even with TLS TLVs;
/// the cap keeps a hostile peer from making the edge buffer 64 KiB per connection.
const MAX_VARIABLE_PART: usize = 1024;

/// Why a connection's PROXY header was refused; the connection is then closed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection did not start with the v2 signature (no header, or a v1 text header).
    #[error("connection does not start with a PROXY protocol v2 header")]
    Missing,
    /// The header announces more address and TLV bytes than accepted.
    #[error("PROXY header of {0} bytes exceeds the limit")]
    TooLong(usize),
    /// `ppp` refused the header.
    #[error("malformed PROXY header: {0}")]
    Malformed(#[from] ParseError),
    /// The socket failed or closed before the header was complete.
    #[error("reading PROXY header")]
    Io(#[from] io::Error),
}

/// Reads one PROXY v2 header from the start of `stream`. Returns the client address it names,
/// or `None` for a `LOCAL` header (a health check from the proxy itself) or a non-IP family.
///
/// # Errors
///
/// [`ProxyHeaderError`] when the connection does not start with a valid v2 header.
pub async fn read_header<S>(stream: &mut S) -> Result<Option<SocketAddr>, ProxyHeaderError>
where
    S: AsyncRead + Unpin,
{
    let mut buffer = [0u8; FIXED_PART + MAX_VARIABLE_PART];
    stream.read_exact(&mut buffer[..FIXED_PART]).await?;
    if buffer[..PROTOCOL_PREFIX.len()] != *PROTOCOL_PREFIX {
        return Err(ProxyHeaderError::Missing);
    }
    let variable = usize::from(u16::from_be_bytes([buffer[14], buffer[15]]));
    if variable > MAX_VARIABLE_PART {
        return Err(ProxyHeaderError::TooLong(FIXED_PART + variable));
    }
    let total = FIXED_PART + variable;
    stream.read_exact(&mut buffer[FIXED_PART..total]).await?;
    let header = Header::try_from(&buffer[..total])?;
    if header.command == Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        Addresses::IPv4(ip) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
        Addresses::IPv6(ip) => Some(SocketAddr::from((ip.source_address, ip.source_port))),
        Addresses::Unspecified | Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use ppp::v2::{Builder, Protocol, Version};

    use super::*;

    fn header(command: Command, source: &str, destination: &str) -> Vec<u8> {
        let source: SocketAddr = source.parse().expect("addr");
        let destination: SocketAddr = destination.parse().expect("addr");
        Builder::with_addresses(Version::Two | command, Protocol::Stream, (source, destination))
            .build()
            .expect("header builds")
    }

    #[tokio::test]
    async fn reads_exactly_the_header() {
        let mut bytes = header(Command::Proxy, "81.2.69.160:5000", "10.0.0.1:443");
        bytes.extend_from_slice(b"POST /auth/bootstrap HTTP/1.1\r\n");
        let mut stream = &bytes[..];
        let source = read_header(&mut stream).await.expect("valid header");
        assert_eq!(source, Some("81.2.69.160:5000".parse().expect("addr")));
        assert_eq!(stream, b"POST /auth/bootstrap HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn ipv6_and_local() {
        let bytes = header(Command::Proxy, "[2a01:4f8::1]:1", "[::1]:443");
        let source = read_header(&mut &bytes[..]).await.expect("valid header");
        assert_eq!(source, Some("[2a01:4f8::1]:1".parse().expect("addr")));
        let bytes = header(Command::Local, "127.0.0.1:1", "127.0.0.1:2");
        assert_eq!(read_header(&mut &bytes[..]).await.expect("valid header"), None);
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_v2_header() {
        let plain = b"POST /auth/bootstrap HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(read_header(&mut &plain[..]).await, Err(ProxyHeaderError::Missing)));
        let v1 = b"PROXY TCP4 81.2.69.160 10.0.0.1 5000 443\r\n";
        assert!(matches!(read_header(&mut &v1[..]).await, Err(ProxyHeaderError::Missing)));
        let mut long = header(Command::Proxy, "81.2.69.160:5000", "10.0.0.1:443");
        long[14..16].copy_from_slice(&4000u16.to_be_bytes());
        assert!(matches!(read_header(&mut &long[..]).await, Err(ProxyHeaderError::TooLong(_))));
        let truncated = &header(Command::Proxy, "81.2.69.160:5000", "10.0.0.1:443")[..20];
        assert!(matches!(read_header(&mut &truncated[..]).await, Err(ProxyHeaderError::Io(_))));
    }
}
