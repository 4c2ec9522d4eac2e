//! The accept loop: connections in, HTTP/1.1 with keep-alive, graceful shutdown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinHandle;

use crate::edge::Edge;
use crate::metrics::Outcome;
use crate::proxy_protocol;
use crate::rate_limit::FORGET_INTERVAL;
use crate::service::{self, Connection};
use crate::socket::{self, Socket};

/// Largest request head accepted; the SDK's is about 200 bytes.
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Pause after an accept error such as running out of file descriptors, so the loop does not
/// spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Serves the bootstrap edge on `listener` until `shutdown` resolves, then stops accepting,
/// lets in-flight requests finish, closes idle keep-alive connections and returns.
pub async fn run(listener: TcpListener, edge: Edge, shutdown: impl Future<Output = ()>) {
    let triggers = Arc::new(Triggers::default());
    let slots = Arc::new(Semaphore::new(edge.inner.max_connections));
    let _housekeeping = spawn_housekeeping(&edge);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(edge.inner.header_read_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .keep_alive(true)
        // The vendor C SDK matches header names case-sensitively: it finds only
        // `Content-Length: ` and fails with -0x0412 on hyper's lower-case default (PROTOCOL §4).
        .title_case_headers(true)
        // Answers are a few hundred bytes: copying the body behind the head and writing once
        // costs less than queueing both for a vectored write.
        .writev(false);
    tokio::pin!(shutdown);

    loop {
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            // The semaphore is never closed, so acquiring only waits for a free slot.
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("connection slots are never closed"),
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        // Responses are one small write; Nagle would only delay them.
        let _ = stream.set_nodelay(true);
        // Armed here rather than in the task, so a task that has not started yet still gets
        // the shutdown signal.
        let (armed, stop) = Triggers::arm(&triggers);
        tokio::spawn(serve(stream, peer, edge.clone(), http.clone(), stop, armed, slot));
    }

    drop(listener);
    let open = triggers.fire_all();
    tracing::info!(connections = open, "bootstrap edge draining connections");
    // Every connection task holds a slot until it ends: holding them all means all ended.
    let all = u32::try_from(edge.inner.max_connections).unwrap_or(u32::MAX);
    let _drained = slots.acquire_many(all).await;
}

/// Shutdown triggers of the open connections, one oneshot each.
///
/// Not hyper-util's `GracefulShutdown`: its watcher polls a shared `watch` channel on every
/// poll of every connection, and a waiting tokio `Notified` takes the channel's one mutex on
/// each poll, which the load test showed as a per-request cost growing with concurrency. A
/// oneshot receiver is polled without touching anything shared; the mutex here is taken once
/// when a connection opens and once when it closes.
#[derive(Default)]
struct Triggers {
    open: Mutex<(u64, HashMap<u64, oneshot::Sender<()>>)>,
}

/// Removes its connection's trigger when the connection task ends, however it ends.
struct Armed {
    triggers: Arc<Triggers>,
    id: u64,
}

impl Triggers {
    fn arm(triggers: &Arc<Triggers>) -> (Armed, oneshot::Receiver<()>) {
        let (trigger, stop) = oneshot::channel();
        let mut open = triggers.lock();
        let id = open.0;
        open.0 += 1;
        open.1.insert(id, trigger);
        (Armed { triggers: Arc::clone(triggers), id }, stop)
    }

    /// Signals every open connection to finish; returns how many there were.
    fn fire_all(&self) -> usize {
        let triggers: Vec<_> = self.lock().1.drain().map(|(_, trigger)| trigger).collect();
        let open = triggers.len();
        for trigger in triggers {
            // A connection that ended meanwhile has dropped its receiver: nothing to stop.
            let _ = trigger.send(());
        }
        open
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<u64, oneshot::Sender<()>>)> {
        // Only map inserts and removes happen under the lock; a panic cannot leave it torn.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.triggers.lock().1.remove(&self.id);
    }
}

async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    edge: Edge,
    http: http1::Builder,
    mut stop: oneshot::Receiver<()>,
    _armed: Armed,
    _slot: OwnedSemaphorePermit,
) {
    let mut client = peer.ip();
    if edge.inner.proxy_protocol {
        let read = tokio::time::timeout(
            edge.inner.header_read_timeout,
            proxy_protocol::read_header(&mut stream),
        );
        let header = tokio::select! {
            biased;
            _ = &mut stop => return,
            header = read => header,
        };
        match header {
            // Only a trusted proxy may say whose connection this is.
            Ok(Ok(Some(source))) if edge.inner.trusted.contains(peer.ip()) => client = source.ip(),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "closing connection: bad PROXY header");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "closing connection: no PROXY header in time");
                return;
            }
        }
    }
    let edge_state = Arc::clone(&edge.inner);
    let connection = Arc::new(Connection { edge, peer: client });
    let service = service_fn(move |request| {
        let connection = Arc::clone(&connection);
        async move { Ok::<_, Infallible>(service::handle(&connection, request).await) }
    });
    // hyper gets the socket on loan, so that after an unparseable request the socket is still
    // here to linger on.
    let connection = http.serve_connection(TokioIo::new(Socket::new(&mut stream)), service);
    tokio::pin!(connection);
    let served = tokio::select! {
        biased;
        served = connection.as_mut() => served,
        // Finishes the request in flight, if any, then closes; an idle connection closes now.
        _ = &mut stop => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    let Err(error) = served else { return };
    // Timeouts and clients that hang up mid-request: routine for a public endpoint.
    tracing::debug!(%peer, %error, "connection ended with an error");
    if error.is_parse() {
        // hyper answered (the socket put the edge's JSON in place of its answer) and gave up.
        let outcome =
            if error.is_parse_too_large() { Outcome::TooLarge } else { Outcome::BadRequest };
        edge_state.metrics.count(outcome);
        tokio::select! {
            biased;
            _ = &mut stop => {}
            () = socket::linger(&mut stream) => {}
        }
    }
}

/// Background chores of a running edge; stopped when the guard is dropped.
struct Housekeeping(Option<JoinHandle<()>>);

impl Drop for Housekeeping {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

fn spawn_housekeeping(edge: &Edge) -> Housekeeping {
    if edge.inner.limiter.is_none() {
        return Housekeeping(None);
    }
    let edge = edge.clone();
    Housekeeping(Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(FORGET_INTERVAL);
        loop {
            ticker.tick().await;
            if let Some(limiter) = &edge.inner.limiter {
                limiter.forget_idle();
            }
        }
    })))
}
