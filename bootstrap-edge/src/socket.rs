//! The connection's socket as hyper sees it: bytes pass straight through, except hyper's own
//! answer to a request it cannot parse, which becomes the edge's JSON rejection.
//!
//! On a garbage request line, an oversized head or an overlong URI hyper writes a bodiless
//! `400`, `431` or `414` itself, before the service ever sees a request, and then closes; PROTOCOL
//! §4 wants a JSON body with a numeric `code` and a `message` for every error. hyper has no hook
//! for that answer, and checking every head before hyper would parse it twice on the hot path.
//! So the write side recognises hyper's answer instead, at a cost of one 4-byte comparison per
//! write: every answer of the service carries a non-empty body, so only hyper's own heads (and
//! `100 Continue`) end a write with the blank line that closes a head. Such a head with an error
//! status and no `Content-Type` (every service answer has one) is replaced by the
//! [`Rejection`]'s wire form, written in full before hyper is told its bytes went out.
//!
//! hyper writes the whole of its buffered output on each write (`writev(false)`), and nothing
//! after an error answer, so that answer is always the tail of one write: anything before it in
//! the same write (a previous response still being flushed) goes out unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::reply::Rejection;

#[cfg(test)]
mod tests;

/// How long a connection that sent an unparseable request is drained before it is closed,
/// and how much of it is read: closing with the client's bytes unread would make the kernel
/// send a reset, which can destroy the answer before the client reads it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024;

/// A borrowed [`TcpStream`] for hyper, with the error-answer substitution described above.
pub(crate) struct Socket<'a> {
    stream: &'a mut TcpStream,
    /// The bytes written in place of hyper's answer, and how many of them are written so far.
    substitute: Option<(Vec<u8>, usize)>,
}

impl<'a> Socket<'a> {
    pub(crate) fn new(stream: &'a mut TcpStream) -> Self {
        Socket { stream, substitute: None }
    }

    /// Writes the rest of the substitute, if any.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((bytes, written)) = &mut self.substitute else { return Poll::Ready(Ok(())) };
        while *written < bytes.len() {
            let n = ready!(Pin::new(&mut *self.stream).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Socket<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.substitute.is_none() {
            let Some((start, rejection)) = hyper_error_answer(buf) else {
                return Pin::new(&mut *this.stream).poll_write(cx, buf);
            };
            let mut bytes = buf[..start].to_vec();
            bytes.extend_from_slice(&rejection.into_wire());
            this.substitute = Some((bytes, 0));
        }
        // hyper calls again with the same bytes while this is pending, and writes nothing
        // after its error answer: once the substitute is out, all it wrote counts as written.
        ready!(this.drain(cx))?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut *this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut *this.stream).poll_shutdown(cx)
    }
}

/// Where hyper's own error answer starts in `buf` and the rejection that replaces it, if `buf`
/// ends with one.
fn hyper_error_answer(buf: &[u8]) -> Option<(usize, Rejection)> {
    // The hot path: a service answer ends with its body, never with a blank line.
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let start = buf.windows(7).rposition(|window| window == b"HTTP/1.")?;
    let head = &buf[start..];
    let rejection = match head.get(9..13)? {
        b"400 " => Rejection::MalformedRequest,
        b"431 " => Rejection::HeadTooLarge,
        b"414 " => Rejection::UriTooLong,
        _ => return None,
    };
    let has_type = head.windows(14).any(|window| window.eq_ignore_ascii_case(b"content-type: "));
    (!has_type).then_some((start, rejection))
}

/// After hyper gave up on an unparseable request and the JSON answer is out: sends FIN, then
/// reads and drops what the client still sends, for at most [`LINGER`] and [`LINGER_BYTES`],
/// so that closing does not reset the connection under the answer (the lingering close of
/// RFC 9112 §9.6).
pub(crate) async fn linger(stream: &mut TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buffer = [0u8; 4096];
        let mut read = 0;
        while read < LINGER_BYTES {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
