//! The vendor C SDK's reading of a bootstrap reply, modelled on what SDK 4.1.0 accepts (PROTOCOL
//! §4), so that tests can hold every answer of the edge to what real devices parse.
//!
//! The SDK is far stricter than an HTTP library: the status line must start with exactly
//! `HTTP/1.1 `, header names are matched case-sensitively (it finds only `Content-Length: `,
//! capital C and L, one space), a header line of 128 bytes or more with its CRLF is an error,
//! the body is read by `Content-Length` only (no chunked decoding, no close-delimited body),
//! only status 200 is a success, and `"host"`, `"port"` and `"ip"` are found by key search in
//! the body with the value right after the colon. A reply that passes [`parse`] and
//! [`SdkReply::endpoint`] is one a device on that SDK bootstraps from; hyper's client, like any
//! real HTTP library, would accept far more (lower-case header names among them), which is how
//! a reply that stopped every device once passed the tests.
//!
//! Not part of the edge's API: it serves the edge's own tests, the end-to-end tests' simulated
//! devices and the fuzz targets.

use std::net::Ipv4Addr;

#[cfg(test)]
mod tests;

/// Longest header line the SDK reads, its CRLF included (PROTOCOL §4: 127 bytes plus CRLF fails).
pub const MAX_LINE: usize = 127;
/// The only status-line prefix the SDK accepts.
pub const STATUS_PREFIX: &str = "HTTP/1.1 ";
/// The only spelling of the length header the SDK finds.
pub const CONTENT_LENGTH: &str = "Content-Length: ";

/// Why the SDK would give up on a reply. The SDK's own error codes are named where PROTOCOL §4
/// records them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdkError {
    /// The status line does not start with `HTTP/1.1 ` and a three-digit status.
    #[error("status line {0:?} does not start with `HTTP/1.1 ` and a status")]
    StatusLine(String),
    /// A line of the head, CRLF included, is 128 bytes or longer (the SDK's -0x0409).
    #[error("head line of {0} bytes with its CRLF (the SDK reads at most 127): {1:?}")]
    LineTooLong(usize, String),
    /// A head line is not terminated by CRLF, or is not text.
    #[error("malformed head line {0:?}")]
    MalformedLine(String),
    /// No `Content-Length: ` header, byte for byte (the SDK's -0x0412; a lower-case
    /// `content-length`, a chunked or a close-delimited body all end here).
    #[error("no `Content-Length: ` header (SDK error -0x0412); head lines: {0:?}")]
    NoContentLength(Vec<String>),
    /// `Content-Length: ` is not a decimal number.
    #[error("Content-Length value {0:?} is not a number")]
    BadContentLength(String),
    /// The status is not 200: the SDK treats every other status as failure, whatever the body.
    #[error("status {0} (the SDK accepts only 200)")]
    Status(u16),
    /// `key` is absent from the body.
    #[error("no \"{0}\" key in the body")]
    MissingKey(&'static str),
    /// The value after `"key":` is not what the SDK can read (whitespace after the colon, an
    /// unterminated string, not a number or a numeric string for `port`, not IPv4 for `ip`).
    #[error("value of \"{0}\" unreadable by the SDK's key search")]
    BadValue(&'static str),
}

/// A reply as the SDK frames it: status, the head lines in their exact bytes, the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdkReply {
    pub status: u16,
    /// The status line, without CRLF.
    pub status_line: String,
    /// Every header line as sent (name case kept), without CRLF.
    pub header_lines: Vec<String>,
    pub body: Vec<u8>,
}

/// What the SDK takes from a success body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdkEndpoint {
    pub host: String,
    pub port: u16,
    /// The optional IPv4 backup address.
    pub ip: Option<Ipv4Addr>,
}

/// Frames one reply at the start of `bytes` as the SDK does. `Ok(None)` means the reply is not
/// complete yet (read more); `Ok(Some((reply, used)))` gives the reply and how many bytes it
/// took, so the next reply on a keep-alive connection starts at `used`.
pub fn parse(bytes: &[u8]) -> Result<Option<(SdkReply, usize)>, SdkError> {
    let mut lines = Vec::new();
    let mut at = 0;
    loop {
        let rest = &bytes[at..];
        let Some(end) = rest.windows(2).position(|pair| pair == b"\r\n") else {
            // The SDK reads a line into a 128-byte buffer: a longer one fails before its end.
            if rest.len() >= MAX_LINE {
                return Err(SdkError::LineTooLong(rest.len(), lossy(&rest[..MAX_LINE])));
            }
            return Ok(None);
        };
        let line = &rest[..end];
        if end + 2 > MAX_LINE {
            return Err(SdkError::LineTooLong(end + 2, lossy(line)));
        }
        at += end + 2;
        if line.is_empty() {
            break;
        }
        let line = std::str::from_utf8(line).map_err(|_| SdkError::MalformedLine(lossy(line)))?;
        lines.push(line.to_owned());
    }
    let Some((status_line, header_lines)) = lines.split_first() else {
        return Err(SdkError::StatusLine(String::new()));
    };
    let status = status_of(status_line)?;
    let length = header_lines
        .iter()
        .find_map(|line| line.strip_prefix(CONTENT_LENGTH))
        .ok_or_else(|| SdkError::NoContentLength(lines.clone()))?;
    let length: usize = length
        .parse()
        .ok()
        .filter(|_| length.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| SdkError::BadContentLength(length.to_owned()))?;
    let Some(body) = bytes.get(at..at + length) else { return Ok(None) };
    let reply = SdkReply {
        status,
        status_line: status_line.clone(),
        header_lines: header_lines.to_vec(),
        body: body.to_vec(),
    };
    Ok(Some((reply, at + length)))
}

impl SdkReply {
    /// The endpoint a device on the SDK would connect to, or why it would not.
    pub fn endpoint(&self) -> Result<SdkEndpoint, SdkError> {
        if self.status != 200 {
            return Err(SdkError::Status(self.status));
        }
        let host = value(&self.body, "host")?.ok_or(SdkError::MissingKey("host"))?;
        let host = string(host).ok_or(SdkError::BadValue("host"))?;
        let port = value(&self.body, "port")?.ok_or(SdkError::MissingKey("port"))?;
        let port = string(port).unwrap_or(port);
        let port = std::str::from_utf8(port)
            .ok()
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse().ok())
            .ok_or(SdkError::BadValue("port"))?;
        let ip = match value(&self.body, "ip")? {
            None => None,
            Some(ip) => Some(
                string(ip)
                    .and_then(|ip| std::str::from_utf8(ip).ok())
                    .and_then(|ip| ip.parse().ok())
                    .ok_or(SdkError::BadValue("ip"))?,
            ),
        };
        let host = String::from_utf8(host.to_vec()).map_err(|_| SdkError::BadValue("host"))?;
        Ok(SdkEndpoint { host, port, ip })
    }

    /// The value of the header line whose name is exactly `name` (case-sensitive, as the SDK
    /// matches), e.g. `header("Content-Type")`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_lines
            .iter()
            .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(": ")))
    }
}

fn status_of(line: &str) -> Result<u16, SdkError> {
    let bad = || SdkError::StatusLine(line.to_owned());
    let rest = line.strip_prefix(STATUS_PREFIX).ok_or_else(bad)?;
    let digits = rest.get(..3).filter(|d| d.bytes().all(|b| b.is_ascii_digit())).ok_or_else(bad)?;
    if rest.len() > 3 && !rest[3..].starts_with(' ') {
        return Err(bad());
    }
    digits.parse().map_err(|_| bad())
}

/// The raw value right after the first `"key":` in `body`, up to the next `,` or `}` (or the
/// closing quote of a string), as the SDK's key search reads it. `Ok(None)`: no such key.
fn value<'a>(body: &'a [u8], key: &'static str) -> Result<Option<&'a [u8]>, SdkError> {
    let needle = format!("\"{key}\"");
    let Some(found) = body.windows(needle.len()).position(|w| w == needle.as_bytes()) else {
        return Ok(None);
    };
    let rest = &body[found + needle.len()..];
    // The SDK steps over exactly one colon: whitespace on either side breaks the value.
    let rest = rest.strip_prefix(b":").ok_or(SdkError::BadValue(key))?;
    if rest.first() == Some(&b'"') {
        let end = rest[1..].iter().position(|&b| b == b'"').ok_or(SdkError::BadValue(key))?;
        return Ok(Some(&rest[..end + 2]));
    }
    let end = rest.iter().position(|&b| b == b',' || b == b'}').unwrap_or(rest.len());
    Ok(Some(&rest[..end]))
}

/// The contents of a quoted value, or `None` if it is not one.
fn string(value: &[u8]) -> Option<&[u8]> {
    value.strip_prefix(b"\"")?.strip_suffix(b"\"")
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
