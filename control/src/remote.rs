//! The control plane's registry seen from another process: [`RemoteStore`] speaks the internal
//! API ([`crate::internal`]) and implements [`Store`], and [`Replica`] keeps a local redb copy of
//! the prefixes a broker or edge needs, so it starts from disk and resumes the feed where it
//! stopped.
//!
//! A broker (or edge) process wires them like this:
//! 1. `RemoteStore::new("http://control:7001", node_token)` (or [`RemoteStore::with_tls`]);
//! 2. `Replica::open(path, Arc::new(remote), DEFAULT_PREFIXES)`, and spawn [`SyncTask::run`];
//! 3. optionally wait for `replica.caught_up(remote.revision())` — with the control plane
//!    unreachable, skip it and serve what the file already holds;
//! 4. start the daemon on `Arc::new(replica)`: it reads from the file and follows the file's
//!    feed; its usage writes go to the control plane.
//!
//! A broker's kept device subscriptions (PROTOCOL §2) go through [`RemoteStore`]'s
//! [`SubscriptionWriter`], the internal API's `device-subscriptions` endpoint: pass it to
//! `meridian_broker::daemon::start_with`.
//!
//! What it does not do: write anything but the keys the server lets nodes write (usage, and
//! device subscriptions through their own endpoint), or compact the control plane's feed.

mod replica;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use meridian_registry::model::DeviceSubscriptions;
use meridian_registry::store::{Entry, Op, Revision, Snapshot, Store, StoreError, Watch};
use meridian_registry::subscriptions::{SubscriptionError, SubscriptionWriter, Written};
use serde::de::DeserializeOwned;

use crate::internal::wire::{
    self, WireBatch, WireDeviceSubscriptions, WireError, WireGet, WireRevision, WireSnapshot,
    WireSubscriptionsWritten, code,
};

pub use self::replica::{DEFAULT_PREFIXES, META_KEY, Replica, SyncStopped, SyncTask};

/// Why a request to the internal API failed. At the [`Store`] boundary, errors the server
/// reports as store errors (conflict, invalid or duplicate key, compacted) become those
/// [`StoreError`] variants again; the rest become [`StoreError::Backend`] with this message.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The base URL is not an absolute `http://` (or, with TLS, `https://`) URL.
    #[error("internal API URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    /// The node token holds characters an HTTP header cannot carry.
    #[error("the node token is not a valid header value")]
    InvalidToken,
    /// The server refused the node token (401).
    #[error("the internal API refused the node token")]
    Unauthorized,
    /// The server refused a write outside the prefixes nodes may write (403).
    #[error("the internal API refused the write: {message}")]
    Forbidden { message: String },
    /// A store operation the internal API does not offer.
    #[error("{operation} is not supported by a remote store")]
    Unsupported { operation: &'static str },
    /// The server answered with an error (its `code` and `message`).
    #[error("internal API answered {status}: {code}: {message}")]
    Status { status: u16, code: String, message: String, error: Box<WireError> },
    /// No answer: connection refused or reset, DNS, TLS handshake.
    #[error("internal API unreachable: {0}")]
    Transport(String),
    /// No complete answer within the request timeout.
    #[error("internal API request timed out after {0:?}")]
    Timeout(Duration),
    /// The answer is not what the API defines (not JSON of the expected shape).
    #[error("internal API answer malformed: {0}")]
    Protocol(String),
}

impl From<RemoteError> for StoreError {
    fn from(error: RemoteError) -> StoreError {
        if let RemoteError::Status { error: wire, .. } = &error
            && let Some(store) = wire.to_store()
        {
            return store;
        }
        StoreError::Backend(error.to_string())
    }
}

/// How long an idle pooled connection is reused: less than the server's header-read timeout
/// (which closes idle keep-alive connections), so a request never races that close.
const POOL_IDLE: Duration = Duration::from_secs(5);

/// Tunables of a [`RemoteStore`]; the defaults suit a node on the control plane's network.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// Bound on the wait for an answer's head, and for each piece of its body (not on a
    /// whole answer: a large snapshot may take longer, as long as it keeps arriving).
    pub request_timeout: Duration,
    /// Bound on the TCP connect.
    pub connect_timeout: Duration,
    /// A watch stream silent this long is dead: reconnect. Several server heartbeats.
    pub watch_idle_timeout: Duration,
    /// First reconnect delay of a watch; it doubles per failed attempt up to the maximum.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl Default for RemoteOptions {
    fn default() -> RemoteOptions {
        RemoteOptions {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            watch_idle_timeout: crate::internal::HEARTBEAT * 3 + Duration::from_secs(5),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

/// A [`Store`] on the control plane's internal API. Cheap to clone; clones share the
/// connection pool.
///
/// `watch_from` survives connection loss: it reconnects with backoff from the last change it
/// delivered, so a watcher sees neither a gap nor a duplicate; only compaction (the server no
/// longer has the changes) and authorisation failures end it with an error. `compact` is
/// unsupported (a node never compacts the control plane's feed). `get_many` is the trait's
/// default, one request per key: the internal API has no multi-get.
#[derive(Clone)]
pub struct RemoteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Scheme and authority, without a trailing slash.
    base: String,
    /// `Bearer <token>`, marked sensitive so hyper never logs it.
    authorization: HeaderValue,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    options: RemoteOptions,
}

impl RemoteStore {
    /// A store on the internal API at `base_url` (`http://host:port`) with the default options.
    pub fn new(base_url: &str, node_token: &str) -> Result<RemoteStore, RemoteError> {
        RemoteStore::build(base_url, node_token, None, RemoteOptions::default())
    }

    /// A store on the internal API over TLS (`https://host:port`), trusting what `tls` trusts
    /// (usually the private CA of the internal listener's certificate).
    pub fn with_tls(
        base_url: &str,
        node_token: &str,
        tls: rustls::ClientConfig,
    ) -> Result<RemoteStore, RemoteError> {
        RemoteStore::build(base_url, node_token, Some(tls), RemoteOptions::default())
    }

    /// Full control: `tls` is required for `https://` and refused for `http://`.
    pub fn build(
        base_url: &str,
        node_token: &str,
        tls: Option<rustls::ClientConfig>,
        options: RemoteOptions,
    ) -> Result<RemoteStore, RemoteError> {
        let invalid = |reason| RemoteError::InvalidUrl { url: base_url.to_owned(), reason };
        let uri: Uri = base_url.parse().map_err(|_| invalid("not a URL"))?;
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty()) {
            return Err(invalid("must not have a path"));
        }
        let scheme = match (uri.scheme_str(), &tls) {
            (Some("http"), None) => "http",
            (Some("https"), Some(_)) => "https",
            (Some("https"), None) => return Err(invalid("https needs a TLS configuration")),
            (Some("http"), Some(_)) => return Err(invalid("a TLS configuration needs https")),
            _ => return Err(invalid("the scheme must be http or https")),
        };
        let mut authorization = HeaderValue::try_from(format!("Bearer {node_token}"))
            .map_err(|_| RemoteError::InvalidToken)?;
        authorization.set_sensitive(true);

        let mut http = HttpConnector::new();
        // The TLS layer wraps this connector, so it must accept https URIs too.
        http.enforce_http(false);
        http.set_connect_timeout(Some(options.connect_timeout));
        http.set_nodelay(true);
        // Lets the kernel notice a dead peer under an idle pooled connection.
        http.set_keepalive(Some(Duration::from_secs(30)));
        let tls = match tls {
            Some(tls) => tls,
            // Never used: `http` URLs only. rustls still wants a configuration to build.
            None => no_tls()?,
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        let base = format!("{scheme}://{authority}");
        Ok(RemoteStore { inner: Arc::new(Inner { base, authorization, client, options }) })
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// Sends one request and reads the whole answer, within the request timeout.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: Option<(&str, &str)>,
        body: Option<Bytes>,
    ) -> Result<T, RemoteError> {
        let request = self.request(method, path, query, body)?;
        let timeout = self.inner.options.request_timeout;
        let response = tokio::time::timeout(timeout, self.inner.client.request(request))
            .await
            .map_err(|_| RemoteError::Timeout(timeout))?
            .map_err(transport)?;
        let status = response.status();
        let body = read_body(response.into_body(), timeout).await?;
        if !status.is_success() {
            return Err(status_error(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| RemoteError::Protocol(e.to_string()))
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        query: Option<(&str, &str)>,
        body: Option<Bytes>,
    ) -> Result<Request<Full<Bytes>>, RemoteError> {
        let mut uri = format!("{}{path}", self.inner.base);
        if let Some(pair) = query {
            uri.push('?');
            uri.push_str(
                &serde_urlencoded::to_string([pair])
                    .map_err(|e| RemoteError::Protocol(e.to_string()))?,
            );
        }
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(AUTHORIZATION, self.inner.authorization.clone())
            .header(ACCEPT, "application/json");
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| RemoteError::Protocol(format!("building the request: {e}")))
    }
}

#[async_trait]
impl Store for RemoteStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let answer: WireGet = self.call(Method::GET, wire::GET, Some(("key", key)), None).await?;
        Ok(answer.entry.map(Entry::from))
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let answer: WireSnapshot =
            self.call(Method::GET, wire::SNAPSHOT, Some(("prefix", prefix)), None).await?;
        Ok(answer.into())
    }

    async fn batch(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        let batch = WireBatch { ops: ops.into_iter().map(Into::into).collect() };
        let body = serde_json::to_vec(&batch).map_err(|e| StoreError::Backend(e.to_string()))?;
        let answer: WireRevision =
            self.call(Method::POST, wire::BATCH, None, Some(Bytes::from(body))).await?;
        Ok(answer.revision)
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let answer: WireRevision = self.call(Method::GET, wire::REVISION, None, None).await?;
        Ok(answer.revision)
    }

    fn watch_from(&self, after: Revision) -> Watch {
        watch::watch(self.clone(), after)
    }

    async fn compact(&self, _through: Revision) -> Result<(), StoreError> {
        Err(RemoteError::Unsupported { operation: "compact" }.into())
    }
}

#[async_trait]
impl SubscriptionWriter for RemoteStore {
    async fn write_subscriptions(
        &self,
        records: Vec<DeviceSubscriptions>,
    ) -> Result<Written, SubscriptionError> {
        let body = serde_json::to_vec(&WireDeviceSubscriptions { devices: records })
            .map_err(|e| SubscriptionError::Unavailable(e.to_string()))?;
        let answer: WireSubscriptionsWritten = self
            .call(Method::POST, wire::DEVICE_SUBSCRIPTIONS, None, Some(Bytes::from(body)))
            .await
            .map_err(|error| match error {
                // The records as sent are refused (malformed, out of bounds, too large): the
                // same request fails again, so the broker splits it or drops what is refused.
                RemoteError::Status { status: 400 | 413, .. } => {
                    SubscriptionError::Refused(error.to_string())
                }
                error => SubscriptionError::Unavailable(error.to_string()),
            })?;
        Ok(Written { revision: answer.revision, skipped: answer.skipped })
    }
}

/// Reads a whole answer. The timeout bounds the wait for each piece, not the total: a snapshot
/// of a large registry may take longer than any fixed bound to arrive, and that is fine as
/// long as it keeps arriving.
async fn read_body(mut body: Incoming, idle: Duration) -> Result<Bytes, RemoteError> {
    let mut bytes = BytesMut::new();
    loop {
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| RemoteError::Timeout(idle))?;
        match frame {
            None => return Ok(bytes.freeze()),
            Some(frame) => {
                if let Ok(data) = frame.map_err(transport)?.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
        }
    }
}

/// The error an unsuccessful answer describes.
fn status_error(status: StatusCode, body: &[u8]) -> RemoteError {
    let wire: WireError = serde_json::from_slice(body).unwrap_or_else(|_| {
        WireError::new("unknown", format!("non-JSON answer of {} bytes", body.len()))
    });
    match (status, wire.code.as_str()) {
        (StatusCode::UNAUTHORIZED, _) => RemoteError::Unauthorized,
        (StatusCode::FORBIDDEN, _) | (_, code::FORBIDDEN) => {
            RemoteError::Forbidden { message: wire.message }
        }
        _ => RemoteError::Status {
            status: status.as_u16(),
            code: wire.code.clone(),
            message: wire.message.clone(),
            error: Box::new(wire),
        },
    }
}

fn transport(error: impl std::error::Error) -> RemoteError {
    // hyper's top-level message is terse ("client error (Connect)"); the cause says why.
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    RemoteError::Transport(message)
}

/// A TLS configuration that trusts nothing, for connectors that only ever see `http` URLs.
fn no_tls() -> Result<rustls::ClientConfig, RemoteError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RemoteError::Transport(format!("TLS provider: {e}")))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    Ok(config)
}
