//! The WebSocket listener's server side, for browser clients: the HTTP upgrade negotiating the
//! `mqtt` subprotocol, and [`WebSocketConnection`], which presents the binary messages as the
//! plain byte stream the connection driver reads over TCP.
//!
//! MQTT over WebSocket (MQTT 3.1.1 §6) carries MQTT bytes in binary messages; one message may
//! hold several packets or part of one, so message boundaries mean nothing here.
//!
//! What it does not do: serve any HTTP beyond the upgrade, check `Origin` (clients still
//! authenticate in CONNECT), or terminate TLS (`wss://` belongs to a proxy in front).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The subprotocol registered for MQTT (MQTT 3.1.1 §6).
pub const SUBPROTOCOL: &str = "mqtt";

/// tungstenite's read buffer is allocated up front for the connection's lifetime, and its
/// default (128 KiB) would dwarf the rest of a connection's state; MQTT packets are mostly
/// small.
const READ_BUFFER: usize = 4 * 1024;

/// The largest MQTT fixed header: one type byte and a four-byte remaining length.
const MAX_FIXED_HEADER: usize = 5;

/// Runs the WebSocket upgrade on an accepted socket. The caller bounds it in time.
///
/// `max_packet` caps a single WebSocket message to one largest MQTT packet, so a client cannot
/// make the broker buffer more than the TCP listener would.
pub async fn accept<S>(stream: S, max_packet: usize) -> io::Result<WebSocketConnection<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limit = max_packet.saturating_add(MAX_FIXED_HEADER);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Write each message through at once: MQTT is interactive, and the driver batches its
        // own writes already.
        .write_buffer_size(0)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let inner = tokio_tungstenite::accept_hdr_async_with_config(stream, negotiate, Some(config))
        .await
        .map_err(io_error)?;
    Ok(WebSocketConnection { inner, pending: Bytes::new(), unflushed: false, closed: false })
}

/// Picks `mqtt` from the offered subprotocols. A client offering none is accepted (older MQTT
/// JavaScript clients omit the header); one offering only others is refused, since answering
/// it without a protocol it asked for would make a conforming client drop the connection.
// The signature is tungstenite's handshake callback.
#[expect(clippy::result_large_err)]
fn negotiate(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let mut offered = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        // A value that is not ASCII offers something, and certainly not `mqtt`.
        .flat_map(|value| value.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .filter(|protocol| !protocol.is_empty())
        .peekable();
    if offered.peek().is_none() {
        return Ok(response);
    }
    if offered.any(|protocol| protocol.eq_ignore_ascii_case(SUBPROTOCOL)) {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
        return Ok(response);
    }
    let mut refusal = ErrorResponse::new(Some("the mqtt subprotocol is required\n".into()));
    *refusal.status_mut() = StatusCode::BAD_REQUEST;
    Err(refusal)
}

/// A WebSocket connection read and written as a byte stream of MQTT packets.
///
/// Reads hand out binary messages' bytes in order; pings are answered by tungstenite while
/// reading, pongs are ignored, and a Close (or the socket ending) reads as end of stream. A text
/// message is a protocol error (MQTT 3.1.1 §6 requires binary) and fails the read. Each write
/// becomes one binary message.
pub struct WebSocketConnection<S> {
    inner: WebSocketStream<S>,
    /// The unread rest of the last binary message. Reset to an empty `Bytes` once consumed,
    /// because an emptied slice would still keep the whole message's allocation alive.
    pending: Bytes,
    /// A written message may still sit in tungstenite because the socket would block. The
    /// driver waits on reads after writing, so `poll_read` finishes such a flush; otherwise the
    /// message would wait for the next write.
    unflushed: bool,
    /// The peer closed: every further read is end of stream.
    closed: bool,
}

impl<S> WebSocketConnection<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_pending_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.unflushed {
            ready!(Pin::new(&mut self.inner).poll_flush(cx)).map_err(io_error)?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S> AsyncRead for WebSocketConnection<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A blocked flush must not hold up reading; its waker is registered either way.
        if let Poll::Ready(Err(error)) = this.poll_pending_flush(cx) {
            return Poll::Ready(Err(error));
        }
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                if this.pending.is_empty() {
                    this.pending = Bytes::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket must use binary messages",
                    )));
                }
                // tungstenite has already queued the pong for a ping; neither carries MQTT.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_)))
                | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed))
                | None => this.closed = true,
                Some(Err(error)) => return Poll::Ready(Err(io_error(error))),
            }
        }
    }
}

impl<S> AsyncWrite for WebSocketConnection<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending_flush(cx))?;
        ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(io_error)?;
        Pin::new(&mut this.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io_error)?;
        // The message is accepted either way; a blocked flush is finished later.
        this.unflushed = true;
        if let Poll::Ready(result) = this.poll_pending_flush(cx) {
            result?;
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.unflushed = true;
        this.poll_pending_flush(cx)
    }

    /// Sends a Close frame; the peer's reply is not awaited.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx).map_err(io_error)
    }
}

fn io_error(error: WsError) -> io::Error {
    match error {
        WsError::Io(error) => error,
        other => io::Error::other(other),
    }
}
