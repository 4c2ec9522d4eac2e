//! The internal API: the registry store served to brokers and edges running as separate
//! processes, so they can follow the control plane's registry (PROTOCOL §9 "Internal feeds carry
//! secrets").
//!
//! The feed carries sealed DeviceSecrets, so this listener is separate from every public port,
//! every request must present `Authorization: Bearer <node token>`, and TLS is available
//! ([`InternalConfig::tls`]). Values are never logged.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /internal/v1/snapshot?prefix=p` | `{"revision":N,"entries":[{"key","revision","value":base64}]}` |
//! | `GET /internal/v1/watch?after=N` | NDJSON stream of changes, heartbeats, a final error line |
//! | `GET /internal/v1/revision` | `{"revision":N}` |
//! | `GET /internal/v1/get?key=k` | `{"entry":{…}\|null}` |
//! | `POST /internal/v1/batch` | `{"ops":[{"key","value":base64\|null,"expect"}]}` → `{"revision":N}` |
//! | `POST /internal/v1/device-subscriptions` | `{"devices":[{"device":{…},"filters":{"filter":qos}}]}` → `{"revision":N,"skipped":k}` |
//!
//! `device-subscriptions` is the brokers' one write of device data: each device's whole kept
//! set of subscriptions (PROTOCOL §2), checked by [`meridian_registry::subscriptions::write`] (at
//! most 100 filters of at most 128 bytes, QoS 0 or 1, existing devices only, at most
//! [`subscriptions::MAX_DEVICES_PER_WRITE`] devices); a record that breaks a bound makes the whole request a 400.
//!
//! Errors are `{"code":…,"message":…}` ([`wire::WireError`]) with 400 (bad parameters), 401
//! (token), 403 (a write outside [`InternalConfig::writable_prefixes`]), 404, 405, 409
//! (precondition), 413 or 500. A watch always answers 200 and streams; a feed compacted past
//! `after` (or failing) ends the stream with one final line
//! `{"error":"compacted","message":…,"requested":N,"compacted":M}` (or `"error":"backend"`).
//! Heartbeat lines `{"heartbeat":N}` open the stream and follow every [`HEARTBEAT`].
//!
//! What it does not do: per-node identities or read restrictions (one node token reads the
//! whole registry — nodes are trusted infrastructure; the token only keeps everyone else out),
//! or compaction (that is the control plane's own business).

pub mod wire;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use meridian_registry::keys;
use meridian_registry::store::{Change, Op, Revision, Store, StoreError, Watch, validate_key};
use meridian_registry::subscriptions::{self, SubscriptionError};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use self::wire::{
    WatchLine, WireBatch, WireDeviceSubscriptions, WireError, WireGet, WireRevision, WireSnapshot,
    WireSubscriptionsWritten, code,
};

/// How often an idle watch stream sends a heartbeat line. Clients treat a stream silent for
/// several intervals as dead and reconnect.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Keys nodes may write: brokers record their instance's usage (through `batch`) and their
/// devices' kept subscriptions (only through `device-subscriptions`, whose checked write path
/// is the one way to them: `batch` refuses their keys whatever the prefixes say).
pub const NODE_WRITABLE_PREFIXES: [&str; 2] = [keys::USAGE, keys::SUBSCRIPTIONS];

/// Largest batch body accepted. A broker's usage record is a few hundred bytes.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Largest `device-subscriptions` body accepted: [`subscriptions::MAX_DEVICES_PER_WRITE`] devices of 100
/// filters of 128 bytes, with their JSON around them.
pub const MAX_SUBSCRIPTIONS_BYTES: usize = 8 * 1024 * 1024;

/// How long a client may take to send request headers (and to finish a TLS handshake).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a batch body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A watch stream packs changes that are already available into one chunk up to this size, so
/// a catching-up client gets few large writes rather than one per change.
const WATCH_CHUNK_BYTES: usize = 64 * 1024;

/// Pause after an accept error (out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Settings of the internal listener.
#[derive(Clone)]
pub struct InternalConfig {
    /// The shared secret every node presents. An empty token refuses every request.
    pub node_token: String,
    /// Interval of watch heartbeats.
    pub heartbeat: Duration,
    /// Key prefixes nodes may write; any other key makes the whole request (`POST batch`, or
    /// `POST device-subscriptions` for a device's `subscriptions/` key) a 403.
    pub writable_prefixes: Vec<String>,
    /// Serve HTTPS with this acceptor instead of plain HTTP.
    pub tls: Option<TlsAcceptor>,
}

impl InternalConfig {
    /// Plain HTTP, the default heartbeat and [`NODE_WRITABLE_PREFIXES`].
    pub fn new(node_token: impl Into<String>) -> InternalConfig {
        InternalConfig {
            node_token: node_token.into(),
            heartbeat: HEARTBEAT,
            writable_prefixes: NODE_WRITABLE_PREFIXES.iter().map(|p| (*p).to_owned()).collect(),
            tls: None,
        }
    }
}

/// Serves the internal API over plain HTTP on `listener` until `shutdown` resolves; see
/// [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    node_token: String,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, store, InternalConfig::new(node_token), shutdown).await;
}

/// Serves the internal API on `listener` until `shutdown` resolves, then stops accepting, ends
/// every watch stream cleanly (clients reconnect and resume elsewhere or later), lets other
/// requests finish, and returns.
pub async fn serve_with(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: InternalConfig,
    shutdown: impl Future<Output = ()>,
) {
    if config.node_token.is_empty() {
        tracing::error!("internal API has an empty node token; every request will be refused");
    }
    let (stop, stopped) = watch::channel(false);
    let state = Arc::new(State {
        store,
        token_digest: Sha256::digest(config.node_token.as_bytes()).into(),
        token_set: !config.node_token.is_empty(),
        heartbeat: config.heartbeat,
        writable_prefixes: config.writable_prefixes,
        stopped,
    });
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "internal API accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let (http, watcher) = (http.clone(), graceful.watcher());
        match config.tls.clone() {
            None => {
                tokio::spawn(connection(stream, state, http, watcher, peer));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => connection(stream, state, http, watcher, peer).await,
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }

    drop(listener);
    // Watch streams never end on their own; ending them lets their connections finish.
    let _ = stop.send(true);
    tracing::info!(connections = graceful.count(), "internal API draining connections");
    graceful.shutdown().await;
}

/// What every request handler shares.
struct State {
    store: Arc<dyn Store>,
    /// SHA-256 of the node token: comparing fixed-length digests in constant time leaks
    /// neither the token's bytes nor its length.
    token_digest: [u8; 32],
    /// False for an empty configured token, which must match nothing (not `Bearer `).
    token_set: bool,
    heartbeat: Duration,
    writable_prefixes: Vec<String>,
    /// Becomes `true` at shutdown; watch streams end when it does.
    stopped: watch::Receiver<bool>,
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

async fn connection<S>(
    stream: S,
    state: Arc<State>,
    http: http1::Builder,
    watcher: Watcher,
    peer: std::net::SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(handle(&state, request).await) }
    });
    if let Err(error) = watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await {
        tracing::debug!(%peer, %error, "internal API connection ended with an error");
    }
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Body> {
    if !state.authorized(&request) {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            WireError::new(code::UNAUTHORIZED, "a valid node token is required"),
        );
        response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    let path = request.uri().path();
    let posted = [wire::BATCH, wire::DEVICE_SUBSCRIPTIONS];
    let expected = if posted.contains(&path) { Method::POST } else { Method::GET };
    let known = [
        wire::SNAPSHOT,
        wire::WATCH,
        wire::REVISION,
        wire::GET,
        wire::BATCH,
        wire::DEVICE_SUBSCRIPTIONS,
    ];
    if !known.contains(&path) {
        return error(StatusCode::NOT_FOUND, WireError::new(code::NOT_FOUND, "no such endpoint"));
    }
    if request.method() != expected {
        let message = format!("{path} takes {expected}");
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            WireError::new(code::METHOD_NOT_ALLOWED, message),
        );
    }
    let result = match path {
        wire::SNAPSHOT => snapshot(state, &request).await,
        wire::WATCH => watch_changes(state, &request).await,
        wire::REVISION => revision(state).await,
        wire::GET => get(state, &request).await,
        wire::DEVICE_SUBSCRIPTIONS => device_subscriptions(state, request).await,
        _ => batch(state, request).await,
    };
    result.unwrap_or_else(|(status, body)| error(status, *body))
}

impl State {
    fn authorized(&self, request: &Request<Incoming>) -> bool {
        let Some(presented) = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer)
        else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.token_set && bool::from(digest.ct_eq(&self.token_digest))
    }

    fn writable(&self, key: &str) -> bool {
        self.writable_prefixes.iter().any(|prefix| key.starts_with(prefix.as_str()))
    }
}

/// The credential of an `Authorization: Bearer …` header (the scheme is case-insensitive).
fn bearer(header: &str) -> Option<&str> {
    let (scheme, credential) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credential.trim())
}

/// A refused request: the status and the error body (boxed: it is large, and rare).
type Rejection = (StatusCode, Box<WireError>);

type Handled = Result<Response<Body>, Rejection>;

#[derive(Deserialize)]
struct PrefixQuery {
    prefix: String,
}

#[derive(Deserialize)]
struct AfterQuery {
    after: Revision,
}

#[derive(Deserialize)]
struct KeyQuery {
    key: String,
}

async fn snapshot(state: &State, request: &Request<Incoming>) -> Handled {
    let query: PrefixQuery = query(request)?;
    let snapshot = state.store.scan_prefix(&query.prefix).await.map_err(store_error)?;
    Ok(json(StatusCode::OK, &WireSnapshot::from(snapshot)))
}

async fn revision(state: &State) -> Handled {
    let revision = state.store.revision().await.map_err(store_error)?;
    Ok(json(StatusCode::OK, &WireRevision { revision }))
}

async fn get(state: &State, request: &Request<Incoming>) -> Handled {
    let query: KeyQuery = query(request)?;
    validate_key(&query.key).map_err(store_error)?;
    let entry = state.store.get(&query.key).await.map_err(store_error)?;
    Ok(json(StatusCode::OK, &WireGet { entry: entry.map(Into::into) }))
}

/// Reads a request body of at most `limit` bytes within [`BODY_READ_TIMEOUT`].
async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, Rejection> {
    let body = Limited::new(request.into_body(), limit);
    match tokio::time::timeout(BODY_READ_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            let message = format!("this request body is at most {limit} bytes");
            let body = WireError::new(code::PAYLOAD_TOO_LARGE, message);
            Err((StatusCode::PAYLOAD_TOO_LARGE, Box::new(body)))
        }
        Ok(Err(_)) | Err(_) => Err(bad_request("the request body could not be read")),
    }
}

/// Writes brokers' kept device subscriptions through the one checked write path.
async fn device_subscriptions(state: &State, request: Request<Incoming>) -> Handled {
    let body = read_body(request, MAX_SUBSCRIPTIONS_BYTES).await?;
    // Filters are client input: say where the body is malformed, not what it holds.
    let wire: WireDeviceSubscriptions = serde_json::from_slice(&body).map_err(|e| {
        bad_request(format!("malformed subscriptions at line {} column {}", e.line(), e.column()))
    })?;
    // The same prefixes bound this endpoint as `batch`: a node not allowed `subscriptions/`
    // writes no device's record here either.
    if let Some(key) = wire
        .devices
        .iter()
        .map(|record| keys::subscriptions(&record.device))
        .find(|key| !state.writable(key))
    {
        let message = format!("nodes may not write {key:?}");
        let body = WireError { key: Some(key), ..WireError::new(code::FORBIDDEN, message) };
        return Err((StatusCode::FORBIDDEN, Box::new(body)));
    }
    match subscriptions::write(state.store.as_ref(), wire.devices).await {
        Ok(written) => Ok(json(
            StatusCode::OK,
            &WireSubscriptionsWritten { revision: written.revision, skipped: written.skipped },
        )),
        Err(SubscriptionError::Store(error)) => Err(store_error(error)),
        Err(error @ SubscriptionError::TooManyDevices(_)) => {
            let body = WireError::new(code::PAYLOAD_TOO_LARGE, error.to_string());
            Err((StatusCode::PAYLOAD_TOO_LARGE, Box::new(body)))
        }
        Err(error) => Err(bad_request(error.to_string())),
    }
}

async fn batch(state: &State, request: Request<Incoming>) -> Handled {
    let body = read_body(request, MAX_BATCH_BYTES).await?;
    // The body holds sealed values: report where it is malformed, never what it says.
    let batch: WireBatch = serde_json::from_slice(&body).map_err(|e| {
        bad_request(format!("malformed batch at line {} column {}", e.line(), e.column()))
    })?;
    // Kept subscriptions are written only through their checked endpoint.
    if let Some(op) = batch
        .ops
        .iter()
        .find(|op| !state.writable(&op.key) || op.key.starts_with(keys::SUBSCRIPTIONS))
    {
        let message = format!("nodes may not write {:?}", op.key);
        let body =
            WireError { key: Some(op.key.clone()), ..WireError::new(code::FORBIDDEN, message) };
        return Err((StatusCode::FORBIDDEN, Box::new(body)));
    }
    let ops: Vec<Op> = batch.ops.into_iter().map(Op::from).collect();
    let revision = state.store.batch(ops).await.map_err(store_error)?;
    Ok(json(StatusCode::OK, &WireRevision { revision }))
}

async fn watch_changes(state: &State, request: &Request<Incoming>) -> Handled {
    let query: AfterQuery = query(request)?;
    let mut heartbeat = tokio::time::interval(state.heartbeat);
    // A stream busy with changes skips the heartbeats it missed rather than bursting them.
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = WatchBody {
        feed: state.store.watch_from(query.after),
        store: Arc::clone(&state.store),
        heartbeat,
        stopped: state.stopped.clone(),
        done: false,
        opened: false,
    };
    let body = StreamBody::new(futures::stream::unfold(stream, WatchBody::next));
    let mut response = Response::new(body.boxed_unsync());
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(wire::NDJSON));
    Ok(response)
}

/// One watch response body: changes as they commit, a heartbeat every interval (the first
/// right away), and a final error line if the feed fails.
struct WatchBody {
    feed: Watch,
    store: Arc<dyn Store>,
    heartbeat: tokio::time::Interval,
    stopped: watch::Receiver<bool>,
    /// Set after the final line; the next poll ends the body.
    done: bool,
    /// Set once the opening heartbeat is sent.
    opened: bool,
}

impl WatchBody {
    async fn next(mut self) -> Option<(Result<Frame<Bytes>, Infallible>, WatchBody)> {
        if self.done {
            return None;
        }
        let mut chunk = BytesMut::new();
        let event = if self.opened {
            self.next_event().await?
        } else {
            // The first line says the stream is live, before any backlog.
            self.opened = true;
            self.heartbeat.reset();
            Event::Heartbeat
        };
        match event {
            Event::Feed(item) => {
                self.push(&mut chunk, item);
                // Take what else is ready without waiting (dropping a pending `next()` loses
                // nothing: the stream keeps its own state).
                while !self.done && chunk.len() < WATCH_CHUNK_BYTES {
                    match self.feed.next().now_or_never() {
                        Some(item) => self.push(&mut chunk, item),
                        None => break,
                    }
                }
            }
            Event::Heartbeat => match self.store.revision().await {
                Ok(revision) => line(&mut chunk, &WatchLine::Heartbeat { heartbeat: revision }),
                Err(error) => self.fail(&mut chunk, &error),
            },
        }
        if chunk.is_empty() {
            return None;
        }
        Some((Ok(Frame::data(chunk.freeze())), self))
    }

    /// Waits for the next thing to send: a heartbeat when due, else the next change. `None`
    /// when the server is shutting down.
    async fn next_event(&mut self) -> Option<Event> {
        let event = tokio::select! {
            biased;
            // A closed channel means the server is gone: end too.
            _ = self.stopped.wait_for(|stopped| *stopped) => return None,
            // Before the feed, so a busy feed still sends one heartbeat per interval.
            _ = self.heartbeat.tick() => Event::Heartbeat,
            item = self.feed.next() => Event::Feed(item),
        };
        Some(event)
    }

    fn push(&mut self, chunk: &mut BytesMut, item: Option<Result<Change, StoreError>>) {
        match item {
            Some(Ok(change)) => line(chunk, &WatchLine::from(change)),
            Some(Err(error)) => self.fail(chunk, &error),
            // The store was dropped; the client reconnects.
            None => self.done = true,
        }
    }

    fn fail(&mut self, chunk: &mut BytesMut, error: &StoreError) {
        let wire = WireError::from_store(error);
        if wire.code == code::BACKEND {
            tracing::warn!(%error, "internal watch failed");
        }
        line(
            chunk,
            &WatchLine::Error {
                error: wire.code,
                message: Some(wire.message),
                requested: wire.requested,
                compacted: wire.compacted,
            },
        );
        self.done = true;
    }
}

/// What woke a watch body.
enum Event {
    Feed(Option<Result<Change, StoreError>>),
    Heartbeat,
}

fn line(chunk: &mut BytesMut, line: &WatchLine) {
    let mut writer = chunk.writer();
    // Serialising these plain structs into memory cannot fail.
    let _ = serde_json::to_writer(&mut writer, line);
    writer.into_inner().put_u8(b'\n');
}

fn query<T: DeserializeOwned>(request: &Request<Incoming>) -> Result<T, Rejection> {
    serde_urlencoded::from_str(request.uri().query().unwrap_or(""))
        .map_err(|e| bad_request(format!("bad query: {e}")))
}

fn bad_request(message: impl Into<String>) -> Rejection {
    (StatusCode::BAD_REQUEST, Box::new(WireError::new(code::BAD_REQUEST, message)))
}

fn store_error(error: StoreError) -> Rejection {
    let status = match &error {
        StoreError::Conflict { .. } => StatusCode::CONFLICT,
        StoreError::InvalidKey(_) | StoreError::DuplicateKey(_) => StatusCode::BAD_REQUEST,
        StoreError::Compacted { .. } => StatusCode::GONE,
        StoreError::BatchTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        StoreError::Backend(_) => {
            tracing::warn!(%error, "internal API store failure");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    (status, Box::new(WireError::from_store(&error)))
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    // Serialising these plain structs cannot fail; an empty body would be caught by clients.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, body: WireError) -> Response<Body> {
    json(status, &body)
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_scheme() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
