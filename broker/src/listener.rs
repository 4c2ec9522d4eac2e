//! The accept loops: one per listener (plain TCP, TLS, WebSocket), each handing accepted and
//! upgraded streams to a connection task (`connection::serve`). Kept apart from `broker` so
//! the broker's shared state does not depend on the connection driver that uses it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::broker::{Broker, HOUSEKEEPING};
use crate::memory::Pressure;
use crate::router::Kick;
use crate::{connection, metrics as m};

impl Broker {
    /// Accepts plain TCP connections until `shutdown` resolves, then kicks every client and
    /// waits for their tasks to finish.
    pub async fn serve_tcp(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        self.serve(listener, |stream| async move { Ok(stream) }, shutdown).await;
    }

    /// Accepts connections, upgrading each with `wrap` (TLS handshake, WebSocket upgrade)
    /// inside its own task so a slow handshake never blocks the accept loop.
    pub async fn serve<W, F, S>(
        self: Arc<Self>,
        listener: TcpListener,
        wrap: W,
        shutdown: impl Future<Output = ()>,
    ) where
        W: Fn(tokio::net::TcpStream) -> F + Send + Sync + 'static,
        F: Future<Output = std::io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let wrap = Arc::new(wrap);
        let mut tasks = JoinSet::new();
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            // Out of file descriptors and the like: back off rather than spin.
                            tracing::warn!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // Before any handshake: a flood costs an accept and a close, nothing more.
                    if self.router().budget().memory_pressure() == Pressure::Full {
                        m::limited("memory_full");
                        tracing::debug!(%peer, "connection refused at accept: memory cap");
                        continue;
                    }
                    let slot = match self.admission().admit(peer.ip()) {
                        Ok(slot) => slot,
                        Err(refusal) => {
                            m::limited(refusal.label());
                            tracing::debug!(%peer, ?refusal, "connection refused at accept");
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let broker = self.clone();
                    let wrap = wrap.clone();
                    let handshake = self.limits().connect_timeout;
                    tasks.spawn(async move {
                        let _slot = slot;
                        // Awaited in its own statement: a temporary in the `match` would keep
                        // the handshake's timer and state in the future for the connection's
                        // whole life.
                        let wrapped = tokio::time::timeout(handshake, wrap(stream)).await;
                        match wrapped {
                            Ok(Ok(stream)) => connection::serve(broker, stream, peer).await,
                            Ok(Err(error)) => tracing::debug!(%peer, %error, "handshake failed"),
                            Err(_) => tracing::debug!(%peer, "handshake timed out"),
                        }
                    });
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = housekeeping.tick() => {
                    self.admission().forget_idle();
                    self.auth_backoff().forget_idle(std::time::Instant::now());
                    let expired = self.router().expire(std::time::Instant::now());
                    if expired > 0 {
                        m::expired_sessions(expired);
                    }
                    let queued = self.router().budget().used();
                    m::queued(queued.messages, queued.bytes);
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        self.router().kick_all(Kick::Shutdown);
        while tasks.join_next().await.is_some() {}
    }
}
