//! The internal registry API end to end, on real sockets: the server's authentication and
//! endpoints, `RemoteStore` (including a watch that outlives a server restart), `Replica`
//! (initial sync, live changes, resume after a restart without re-downloading, reload after
//! compaction), TLS, and a broker running on a replica accepting a device created at the
//! control plane.
// Test helpers outside `#[test]` functions panic on failure too.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meridian_control::internal::{self, InternalConfig};
use meridian_control::remote::{DEFAULT_PREFIXES, META_KEY, RemoteOptions, RemoteStore, Replica};
use meridian_registry::store::{
    Change, Entry, Expect, Op, RedbStore, Revision, Snapshot, Store, StoreError, Watch,
};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TOKEN: &str = "node-token-for-tests-0123456789";

/// A guard against hangs, not a performance assertion.
const HANG: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen in time"))
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// The control plane's store, counting what the server asks of it: snapshots (scans) and the
/// revision each watch starts after.
struct Counting {
    inner: RedbStore,
    scans: AtomicUsize,
    watches: Mutex<Vec<Revision>>,
}

impl Counting {
    fn scans(&self) -> usize {
        self.scans.load(Ordering::SeqCst)
    }

    fn watches(&self) -> Vec<Revision> {
        self.watches.lock().unwrap().clone()
    }
}

#[async_trait]
impl Store for Counting {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, StoreError> {
        self.inner.get_many(keys).await
    }
    async fn scan_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        self.scans.fetch_add(1, Ordering::SeqCst);
        self.inner.scan_prefix(prefix).await
    }
    async fn batch(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        self.inner.batch(ops).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }
    fn watch_from(&self, after: Revision) -> Watch {
        self.watches.lock().unwrap().push(after);
        self.inner.watch_from(after)
    }
    async fn compact(&self, through: Revision) -> Result<(), StoreError> {
        self.inner.compact(through).await
    }
}

struct Source {
    store: Arc<Counting>,
    _dir: tempfile::TempDir,
}

impl Source {
    fn new() -> Source {
        let dir = tempfile::tempdir().unwrap();
        let inner = RedbStore::open(dir.path().join("control.redb")).unwrap();
        let store = Arc::new(Counting {
            inner,
            scans: AtomicUsize::new(0),
            watches: Mutex::new(Vec::new()),
        });
        Source { store, _dir: dir }
    }

    fn dyn_store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    async fn put(&self, key: &str, value: &[u8]) -> Revision {
        self.store.put(key, Bytes::copy_from_slice(value)).await.unwrap()
    }
}

/// An internal API server on a real socket.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(store: Arc<dyn Store>) -> Server {
        Server::start_with(store, test_config(), "127.0.0.1:0".parse().unwrap()).await
    }

    /// Binds `addr` with SO_REUSEADDR, so a restarted server can take its predecessor's port.
    async fn start_with(store: Arc<dyn Store>, config: InternalConfig, addr: SocketAddr) -> Server {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let listener: TcpListener = socket.listen(64).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(internal::serve_with(listener, store, config, async move {
            let _ = stopped.await;
        }));
        Server { addr, stop: Some(stop), task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits until it has drained (watch streams included).
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within("server shutdown", &mut self.task).await.unwrap();
    }
}

fn test_config() -> InternalConfig {
    InternalConfig { heartbeat: Duration::from_millis(200), ..InternalConfig::new(TOKEN) }
}

fn fast_options() -> RemoteOptions {
    RemoteOptions {
        watch_idle_timeout: Duration::from_secs(2),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..RemoteOptions::default()
    }
}

fn remote(url: &str) -> RemoteStore {
    RemoteStore::build(url, TOKEN, None, fast_options()).unwrap()
}

/// A plain HTTP client for requests the `RemoteStore` would never send.
fn http() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Response<Incoming> {
    let mut request = Request::builder().method(method).uri(format!("http://{addr}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    within("HTTP answer", http().request(request)).await.unwrap()
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let response = send(addr, method, path, token, body).await;
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!("{method} {path}: not JSON: {}", String::from_utf8_lossy(&bytes))
    });
    (status, json)
}

/// Reads NDJSON lines off a streaming response.
struct Lines {
    body: Incoming,
    buffer: Vec<u8>,
}

impl Lines {
    fn new(response: Response<Incoming>) -> Lines {
        Lines { body: response.into_body(), buffer: Vec::new() }
    }

    /// The next line, or `None` when the stream ended.
    async fn next(&mut self) -> Option<serde_json::Value> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(serde_json::from_slice(&line[..end]).unwrap());
            }
            match within("watch line", self.body.frame()).await {
                None => return None,
                Some(frame) => {
                    if let Ok(data) = frame.unwrap().into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The next change line, skipping heartbeats.
    async fn change(&mut self) -> serde_json::Value {
        loop {
            let line = self.next().await.expect("stream open");
            if line.get("heartbeat").is_none() {
                return line;
            }
        }
    }
}

async fn next_change(watch: &mut Watch) -> Change {
    within("next change", watch.next()).await.expect("watch open").expect("change")
}

// ---------------------------------------------------------------------------------------------
// Server

#[tokio::test]
async fn every_request_needs_the_node_token() {
    let source = Source::new();
    let server = Server::start(source.dyn_store()).await;
    for path in [
        "/internal/v1/revision",
        "/internal/v1/snapshot?prefix=devices/",
        "/internal/v1/watch?after=0",
        "/nowhere",
    ] {
        let (status, body) = call(server.addr, "GET", path, None, "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} without a token");
        assert_eq!(body["code"], "unauthorized");
        let (status, _) = call(server.addr, "GET", path, Some("wrong-token"), "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} with a wrong token");
    }
    let response = send(server.addr, "GET", "/internal/v1/revision", None, "").await;
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let (status, _) = call(server.addr, "POST", "/internal/v1/batch", Some("Bearer"), "{}").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, body) = call(server.addr, "GET", "/internal/v1/revision", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({"revision": 0}));

    let wrong = RemoteStore::build(&server.url(), "wrong-token", None, fast_options()).unwrap();
    let error = wrong.revision().await.unwrap_err();
    assert!(error.to_string().contains("refused the node token"), "{error}");
    let mut watch = wrong.watch_from(0);
    let error = within("watch refused", watch.next()).await.unwrap().unwrap_err();
    assert!(error.to_string().contains("refused the node token"), "{error}");
    assert!(within("watch ended", watch.next()).await.is_none());
    server.stop().await;
}

#[tokio::test]
async fn an_empty_token_refuses_everything() {
    let source = Source::new();
    let config = InternalConfig { node_token: String::new(), ..test_config() };
    let server =
        Server::start_with(source.dyn_store(), config, "127.0.0.1:0".parse().unwrap()).await;
    let (status, _) = call(server.addr, "GET", "/internal/v1/revision", Some(""), "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test]
async fn snapshot_and_get() {
    let source = Source::new();
    source.put("devices/pk/a", b"\x00sealed-a\xff").await;
    source.put("devices/pk/b", b"sealed-b").await;
    source.put("products/pk", b"product").await;
    let server = Server::start(source.dyn_store()).await;

    let (status, body) =
        call(server.addr, "GET", "/internal/v1/snapshot?prefix=devices/", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        serde_json::json!({"revision": 3, "entries": [
            {"key": "devices/pk/a", "revision": 1, "value": "AHNlYWxlZC1h/w=="},
            {"key": "devices/pk/b", "revision": 2, "value": "c2VhbGVkLWI="},
        ]})
    );
    let (status, body) =
        call(server.addr, "GET", "/internal/v1/get?key=products/pk", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        serde_json::json!({"entry": {"key": "products/pk", "revision": 3, "value": "cHJvZHVjdA=="}})
    );
    let (_, body) =
        call(server.addr, "GET", "/internal/v1/get?key=products/none", Some(TOKEN), "").await;
    assert_eq!(body, serde_json::json!({"entry": null}));

    // Bad parameters, methods and paths: JSON errors.
    for (method, path, status) in [
        ("GET", "/internal/v1/snapshot", StatusCode::BAD_REQUEST),
        ("GET", "/internal/v1/watch?after=minus-one", StatusCode::BAD_REQUEST),
        ("GET", "/internal/v1/get?key=a//b", StatusCode::BAD_REQUEST),
        ("POST", "/internal/v1/snapshot?prefix=x", StatusCode::METHOD_NOT_ALLOWED),
        ("GET", "/internal/v1/batch", StatusCode::METHOD_NOT_ALLOWED),
        ("GET", "/internal/v2/snapshot", StatusCode::NOT_FOUND),
    ] {
        let (got, body) = call(server.addr, method, path, Some(TOKEN), "").await;
        assert_eq!(got, status, "{method} {path}");
        assert!(body["code"].is_string() && body["message"].is_string(), "{body}");
    }

    // The same through the client, byte for byte.
    let remote = remote(&server.url());
    assert_eq!(
        remote.scan_prefix("devices/").await.unwrap(),
        source.store.scan_prefix("devices/").await.unwrap()
    );
    assert_eq!(
        remote.get("devices/pk/a").await.unwrap(),
        source.store.get("devices/pk/a").await.unwrap()
    );
    assert_eq!(remote.get("devices/pk/zz").await.unwrap(), None);
    // Escaped DeviceNames (`=XX`) survive the query string.
    source.put("devices/pk/a=2Eb", b"escaped").await;
    assert_eq!(remote.get("devices/pk/a=2Eb").await.unwrap().unwrap().value, &b"escaped"[..]);
    assert_eq!(remote.scan_prefix("devices/pk/a=").await.unwrap().entries.len(), 1);
    assert_eq!(remote.revision().await.unwrap(), 4);
    assert!(matches!(remote.get("bad//key").await, Err(StoreError::InvalidKey(_))));
    server.stop().await;
}

#[tokio::test]
async fn watch_streams_changes_in_order_and_resumes() {
    let source = Source::new();
    for n in 1..=3 {
        source.put(&format!("devices/pk/d{n}"), format!("v{n}").as_bytes()).await;
    }
    let server = Server::start(source.dyn_store()).await;

    let response = send(server.addr, "GET", "/internal/v1/watch?after=0", Some(TOKEN), "").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut lines = Lines::new(response);
    let first = lines.next().await.unwrap();
    assert!(first["heartbeat"].is_u64(), "the stream opens with a heartbeat: {first}");
    for n in 1..=3u64 {
        let line = lines.change().await;
        assert_eq!(line["revision"], n);
        assert_eq!(line["key"], format!("devices/pk/d{n}"));
    }
    // Live changes, a delete, then heartbeats while idle.
    source.put("devices/pk/d4", b"v4").await;
    source.store.delete("devices/pk/d1").await.unwrap();
    assert_eq!(
        lines.change().await,
        serde_json::json!({"revision": 4, "key": "devices/pk/d4", "value": "djQ="})
    );
    assert_eq!(
        lines.change().await,
        serde_json::json!({"revision": 5, "key": "devices/pk/d1", "value": null})
    );
    let heartbeat = lines.next().await.unwrap();
    assert_eq!(heartbeat, serde_json::json!({"heartbeat": 5}));

    // Resuming from a revision starts right after it.
    let response = send(server.addr, "GET", "/internal/v1/watch?after=3", Some(TOKEN), "").await;
    let mut lines = Lines::new(response);
    assert_eq!(lines.change().await["revision"], 4);
    assert_eq!(lines.change().await["revision"], 5);

    // The client stream does the same.
    let remote = remote(&server.url());
    let mut watch = remote.watch_from(2);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_change(&mut watch).await);
    }
    assert_eq!(got.iter().map(|c| c.revision).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(got[1].value.as_deref(), Some(&b"v4"[..]));
    assert_eq!(got[2].value, None);
    drop(watch);
    server.stop().await;
}

#[tokio::test]
async fn a_compacted_feed_is_reported() {
    let source = Source::new();
    for n in 1..=5 {
        source.put(&format!("devices/pk/d{n}"), b"v").await;
    }
    source.store.compact(3).await.unwrap();
    let server = Server::start(source.dyn_store()).await;

    let response = send(server.addr, "GET", "/internal/v1/watch?after=1", Some(TOKEN), "").await;
    let mut lines = Lines::new(response);
    let last = lines.change().await;
    assert_eq!(last["error"], "compacted");
    assert_eq!(last["compacted"], 3);
    assert!(lines.next().await.is_none(), "the error line is the last");

    let remote = remote(&server.url());
    let mut watch = remote.watch_from(1);
    let error = within("compaction", watch.next()).await.unwrap().unwrap_err();
    assert!(matches!(error, StoreError::Compacted { requested: 1, compacted: 3 }), "{error}");
    assert!(within("end", watch.next()).await.is_none());
    // From the horizon on, the feed is there.
    let mut watch = remote.watch_from(3);
    assert_eq!(next_change(&mut watch).await.revision, 4);
    drop(watch);
    server.stop().await;
}

#[tokio::test]
async fn nodes_write_only_usage() {
    let source = Source::new();
    source.put("devices/pk/a", b"device").await;
    let server = Server::start(source.dyn_store()).await;
    let remote = remote(&server.url());

    let revision = remote.put("usage/iot-sh-1", Bytes::from_static(b"usage")).await.unwrap();
    assert_eq!(revision, 2);
    assert_eq!(source.store.get("usage/iot-sh-1").await.unwrap().unwrap().value, &b"usage"[..]);

    let error = remote.put("devices/pk/x", Bytes::from_static(b"forged")).await.unwrap_err();
    assert!(error.to_string().contains("nodes may not write"), "{error}");
    // One forbidden key refuses the whole batch.
    let error = remote
        .batch(vec![
            Op::put("usage/iot-sh-2", Bytes::from_static(b"u")),
            Op::delete("devices/pk/a"),
        ])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("refused the write"), "{error}");
    assert_eq!(source.store.get("usage/iot-sh-2").await.unwrap(), None);
    assert!(source.store.get("devices/pk/a").await.unwrap().is_some());
    let (status, body) = call(
        server.addr,
        "POST",
        "/internal/v1/batch",
        Some(TOKEN),
        r#"{"ops":[{"key":"accounts/x","value":null}]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "forbidden");

    // Preconditions travel and come back typed.
    let error = remote
        .compare_and_swap("usage/iot-sh-1", Expect::Absent, Some(Bytes::from_static(b"again")))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::Conflict { key, expected: Expect::Absent, found: Some(2) } if key == "usage/iot-sh-1"),
        "{error}"
    );
    let error = remote.compare_and_swap("usage/none", Expect::Revision(9), None).await.unwrap_err();
    assert!(matches!(error, StoreError::Conflict { found: None, .. }), "{error}");
    remote
        .compare_and_swap("usage/iot-sh-1", Expect::Revision(2), Some(Bytes::from_static(b"v2")))
        .await
        .unwrap();
    let error = remote
        .batch(vec![Op::put("usage/a", Bytes::new()), Op::put("usage/a", Bytes::new())])
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::DuplicateKey(_)), "{error}");

    // Malformed bodies are 400s that do not echo the body.
    let (status, body) = call(
        server.addr,
        "POST",
        "/internal/v1/batch",
        Some(TOKEN),
        r#"{"ops":[{"key":"usage/a","value":"%%%"}]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!body["message"].as_str().unwrap().contains("%%%"));

    let huge = format!(r#"{{"ops":[{{"key":"usage/a","value":"{}"}}]}}"#, "A".repeat(2 << 20));
    let (status, body) = call(server.addr, "POST", "/internal/v1/batch", Some(TOKEN), &huge).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );

    let error = remote.compact(1).await.unwrap_err();
    assert!(error.to_string().contains("not supported"), "{error}");
    server.stop().await;
}

/// Brokers' kept device subscriptions (PROTOCOL §2) have their own endpoint, behind the node token,
/// through the registry's checked write path; the generic batch still refuses their keys.
#[tokio::test]
async fn device_subscriptions_have_their_own_checked_endpoint() {
    use meridian_registry::model::DeviceSubscriptions;
    use meridian_registry::subscriptions::{SubscriptionError, SubscriptionWriter};

    let source = Source::new();
    source.put("devices/a13FN5TplKq/lamp-1", b"device").await;
    let server = Server::start(source.dyn_store()).await;
    let remote = remote(&server.url());
    let record = |name: &str, filters: usize| DeviceSubscriptions {
        device: meridian_registry::ids::DeviceKey {
            product_key: "a13FN5TplKq".parse().unwrap(),
            device_name: name.parse().unwrap(),
        },
        filters: (0..filters).map(|n| (format!("/a13FN5TplKq/{name}/user/{n}"), 1)).collect(),
    };

    let (status, _) =
        call(server.addr, "POST", "/internal/v1/device-subscriptions", None, "{}").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) =
        call(server.addr, "GET", "/internal/v1/device-subscriptions", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    let written = remote.write_subscriptions(vec![record("lamp-1", 1), record("ghost", 1)]).await;
    assert_eq!(written.unwrap().skipped, 1, "no record for a device that does not exist");
    let kept = source.store.get("subscriptions/a13FN5TplKq/lamp-1").await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&kept.value).contains("/a13FN5TplKq/lamp-1/user/0"));
    assert_eq!(source.store.get("subscriptions/a13FN5TplKq/ghost").await.unwrap(), None);

    // Over the device limit: refused whole, the record before it untouched.
    let error = remote.write_subscriptions(vec![record("lamp-1", 101)]).await.unwrap_err();
    // A refusal, not an outage: the broker splits the write or drops the record, never
    // retries it as it is.
    assert!(matches!(&error, SubscriptionError::Refused(m) if m.contains("100")), "{error}");
    let after = source.store.get("subscriptions/a13FN5TplKq/lamp-1").await.unwrap().unwrap();
    assert_eq!(after.revision, kept.revision);
    let (status, body) = call(
        server.addr,
        "POST",
        "/internal/v1/device-subscriptions",
        Some(TOKEN),
        r#"{"devices":[{"device":{"product_key":"x","device_name":"y"},"filters":{}}]}"#,
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));

    // The generic batch is still usage only.
    let error = remote
        .put("subscriptions/a13FN5TplKq/lamp-1", Bytes::from_static(b"{}"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("nodes may not write"), "{error}");
    server.stop().await;
}

/// The endpoint honours `writable_prefixes` like `batch`: a node configured without
/// `subscriptions/` gets a 403 JSON error and nothing is written.
#[tokio::test]
async fn device_subscriptions_need_the_subscriptions_prefix() {
    use meridian_registry::subscriptions::{SubscriptionError, SubscriptionWriter};

    let source = Source::new();
    source.put("devices/a13FN5TplKq/lamp-1", b"device").await;
    let config = InternalConfig { writable_prefixes: vec!["usage/".to_owned()], ..test_config() };
    let server =
        Server::start_with(source.dyn_store(), config, "127.0.0.1:0".parse().unwrap()).await;
    let record = meridian_registry::model::DeviceSubscriptions {
        device: meridian_registry::ids::DeviceKey {
            product_key: "a13FN5TplKq".parse().unwrap(),
            device_name: "lamp-1".parse().unwrap(),
        },
        filters: [("/a13FN5TplKq/lamp-1/user/get".to_owned(), 1)].into_iter().collect(),
    };
    let body = serde_json::json!({ "devices": [&record] }).to_string();
    let (status, answer) =
        call(server.addr, "POST", "/internal/v1/device-subscriptions", Some(TOKEN), &body).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{answer}"
    );
    assert_eq!(answer["key"], "subscriptions/a13FN5TplKq/lamp-1");
    assert_eq!(source.store.get("subscriptions/a13FN5TplKq/lamp-1").await.unwrap(), None);
    // Through the broker's writer: an outage to retry (the node's configuration), not a
    // refusal of the records.
    let error = remote(&server.url()).write_subscriptions(vec![record]).await.unwrap_err();
    assert!(matches!(error, SubscriptionError::Unavailable(_)), "{error}");
    server.stop().await;
}

/// The client's watch outlives the server: it reconnects from the last change it delivered,
/// and changes written while the server was down arrive once, in order.
#[tokio::test]
async fn remote_watch_survives_a_server_restart() {
    let source = Source::new();
    let server = Server::start(source.dyn_store()).await;
    let addr = server.addr;
    let remote = remote(&server.url());
    let mut watch = remote.watch_from(0);
    for n in 1..=3 {
        source.put(&format!("devices/pk/d{n}"), b"v").await;
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_change(&mut watch).await.revision);
    }

    server.stop().await;
    for n in 4..=6 {
        source.put(&format!("devices/pk/d{n}"), b"v").await;
    }
    // Let the client notice and fail a few reconnects against the closed port.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = Server::start_with(source.dyn_store(), test_config(), addr).await;
    for _ in 0..3 {
        seen.push(next_change(&mut watch).await.revision);
    }
    source.put("devices/pk/d7", b"v").await;
    seen.push(next_change(&mut watch).await.revision);
    assert_eq!(seen, [1, 2, 3, 4, 5, 6, 7], "no gap, no duplicate");
    assert_eq!(
        source.store.watches(),
        [0, 3],
        "the reconnect resumed after the last delivered change"
    );
    drop(watch);
    server.stop().await;
}

/// A server that stops answering (rather than closing) is detected by the missing heartbeats.
#[tokio::test]
async fn a_silent_stream_is_abandoned() {
    let source = Source::new();
    let server = Server::start(source.dyn_store()).await;
    // A proxy that forwards the first connection, then swallows it.
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let upstream = server.addr;
    let (freeze, frozen) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = proxy.accept().await else { return };
            let mut frozen = frozen.clone();
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    () = async { let _ = frozen.wait_for(|f| *f).await; } => {
                        // Hold both ends open, silently, for longer than the idle timeout.
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                }
            });
        }
    });
    let options =
        RemoteOptions { watch_idle_timeout: Duration::from_millis(700), ..fast_options() };
    let remote = RemoteStore::build(&format!("http://{proxy_addr}"), TOKEN, None, options).unwrap();
    let mut watch = remote.watch_from(0);
    source.put("devices/pk/a", b"v").await;
    assert_eq!(next_change(&mut watch).await.revision, 1);
    freeze.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    source.put("devices/pk/b", b"v").await;
    let _ = freeze.send(false);
    // New connections (after the idle timeout) are proxied again.
    let change = next_change(&mut watch).await;
    assert_eq!((change.revision, change.key.as_str()), (2, "devices/pk/b"));
    let watches = source.store.watches();
    assert_eq!(watches.last(), Some(&1), "resumed after the last delivered change: {watches:?}");
    drop(watch);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Replica

async fn mirrored(store: &dyn Store) -> Vec<(String, Bytes)> {
    let mut all = Vec::new();
    for prefix in DEFAULT_PREFIXES {
        let snapshot = store.scan_prefix(prefix).await.unwrap();
        all.extend(snapshot.entries.into_iter().map(|e| (e.key, e.value)));
    }
    all.sort();
    all
}

#[tokio::test]
async fn replica_syncs_follows_and_resumes_without_a_snapshot() {
    let source = Source::new();
    source.put("regions/cn-shanghai", b"region").await;
    source.put("instances/iot-sh-1", b"instance").await;
    source.put("products/pk", b"product").await;
    source.put("devices/pk/a", b"\x01sealed-a").await;
    source.put("accounts/acme", b"not mirrored").await;
    let server = Server::start(source.dyn_store()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.redb");
    let remote: Arc<dyn Store> = Arc::new(remote(&server.url()));

    // First start: a full snapshot of the mirrored prefixes.
    let (replica, task) = Replica::open(&path, remote.clone(), DEFAULT_PREFIXES).await.unwrap();
    let task = tokio::spawn(task.run());
    within("initial sync", replica.caught_up(source.store.revision().await.unwrap()))
        .await
        .unwrap();
    assert_eq!(mirrored(&replica).await, mirrored(&source.store.inner).await);
    assert_eq!(source.store.scans(), DEFAULT_PREFIXES.len(), "one snapshot per prefix");
    assert_eq!(
        replica.get("accounts/acme").await.unwrap().unwrap().value,
        &b"not mirrored"[..],
        "other keys read through"
    );
    let keys = ["accounts/acme", "devices/pk/a", "devices/pk/zz", "products/pk"].map(String::from);
    let mut one_by_one = Vec::new();
    for key in &keys {
        one_by_one.push(replica.get(key).await.unwrap());
    }
    assert_eq!(replica.get_many(&keys).await.unwrap(), one_by_one, "a multi-get reads both sides");

    // Live changes, observed through the replica's own feed.
    let local_revision = replica.revision().await.unwrap();
    let mut local_feed = replica.watch_from(local_revision);
    source.put("devices/pk/b", b"sealed-b").await;
    let change = loop {
        let change = next_change(&mut local_feed).await;
        if change.key != META_KEY {
            break change;
        }
    };
    assert_eq!(
        (change.key.as_str(), change.value.as_deref()),
        ("devices/pk/b", Some(&b"sealed-b"[..]))
    );
    assert!(change.revision > local_revision, "local revisions");
    source.put("usage/iot-sh-1", b"usage").await; // not mirrored: skipped, but counted as synced
    source.put("devices/pk/c", b"sealed-c").await;
    let before_drop = source.store.revision().await.unwrap();
    within("live sync", replica.caught_up(before_drop)).await.unwrap();
    assert_eq!(replica.synced_revision(), before_drop);
    assert_eq!(mirrored(&replica).await, mirrored(&source.store.inner).await);
    assert_eq!(replica.get("devices/pk/c").await.unwrap().unwrap().value, &b"sealed-c"[..]);

    // The sync task ends once every handle is gone, releasing the file.
    drop((replica, local_feed));
    within("sync task exit", task).await.unwrap();

    // Changes while the node is down, then a restart.
    source.put("devices/pk/d", b"sealed-d").await;
    source.store.delete("devices/pk/a").await.unwrap();
    let (replica, task) = Replica::open(&path, remote.clone(), DEFAULT_PREFIXES).await.unwrap();
    assert_eq!(replica.synced_revision(), before_drop, "the file remembers the applied revision");
    assert_eq!(
        replica.get("devices/pk/c").await.unwrap().unwrap().value,
        &b"sealed-c"[..],
        "readable before syncing"
    );
    let local_before = replica.revision().await.unwrap();
    let mut local_feed = replica.watch_from(local_before);
    let task = tokio::spawn(task.run());
    within("resume", replica.caught_up(source.store.revision().await.unwrap())).await.unwrap();
    assert_eq!(source.store.scans(), DEFAULT_PREFIXES.len(), "no new snapshot after the restart");
    assert_eq!(
        source.store.watches().last(),
        Some(&before_drop),
        "resumed right after the applied revision"
    );
    assert_eq!(mirrored(&replica).await, mirrored(&source.store.inner).await);

    // Exactly the two changes made while down reach local watchers, once each, in order.
    let mut changes = Vec::new();
    while changes.len() < 2 {
        let change = next_change(&mut local_feed).await;
        if change.key != META_KEY {
            changes.push((change.key, change.value));
        }
    }
    assert_eq!(
        changes,
        [
            ("devices/pk/d".to_owned(), Some(Bytes::from_static(b"sealed-d"))),
            ("devices/pk/a".to_owned(), None),
        ]
    );

    // Writes go to the control plane.
    replica.put("usage/iot-sh-1", Bytes::from_static(b"usage-2")).await.unwrap();
    assert_eq!(source.store.get("usage/iot-sh-1").await.unwrap().unwrap().value, &b"usage-2"[..]);
    assert!(replica.put("devices/pk/z", Bytes::from_static(b"forged")).await.is_err());

    drop((replica, local_feed));
    within("sync task exit", task).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn replica_reloads_when_the_feed_was_compacted() {
    let source = Source::new();
    source.put("devices/pk/a", b"a").await;
    source.put("devices/pk/b", b"b").await;
    let server = Server::start(source.dyn_store()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.redb");
    let remote: Arc<dyn Store> = Arc::new(remote(&server.url()));

    let (replica, task) = Replica::open(&path, remote.clone(), DEFAULT_PREFIXES).await.unwrap();
    let task = tokio::spawn(task.run());
    within("initial sync", replica.caught_up(2)).await.unwrap();
    drop(replica);
    within("sync task exit", task).await.unwrap();

    // While the node is down the control plane moves on and compacts its feed.
    source.store.delete("devices/pk/a").await.unwrap();
    source.put("devices/pk/b", b"b2").await;
    source.put("devices/pk/c", b"c").await;
    let now = source.store.revision().await.unwrap();
    source.store.compact(now).await.unwrap();
    let scans = source.store.scans();

    let (replica, task) = Replica::open(&path, remote.clone(), DEFAULT_PREFIXES).await.unwrap();
    let mut local_feed = replica.watch_from(replica.revision().await.unwrap());
    let task = tokio::spawn(task.run());
    within("reload", replica.caught_up(now)).await.unwrap();
    assert_eq!(source.store.scans(), scans + DEFAULT_PREFIXES.len(), "a fresh snapshot");
    assert_eq!(
        mirrored(&replica).await,
        mirrored(&source.store.inner).await,
        "deleted keys are gone too"
    );
    // Local watchers see the difference, not the whole registry again.
    let mut changes = Vec::new();
    while changes.len() < 3 {
        let change = next_change(&mut local_feed).await;
        if change.key != META_KEY {
            changes.push(change.key);
        }
    }
    changes.sort();
    assert_eq!(changes, ["devices/pk/a", "devices/pk/b", "devices/pk/c"]);
    drop((replica, local_feed));
    within("sync task exit", task).await.unwrap();
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// TLS

#[tokio::test]
async fn the_internal_listener_speaks_tls() {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let source = Source::new();
    source.put("devices/pk/a", b"sealed").await;
    let config = InternalConfig {
        tls: Some(tokio_rustls::TlsAcceptor::from(Arc::new(server_tls))),
        ..test_config()
    };
    let server =
        Server::start_with(source.dyn_store(), config, "127.0.0.1:0".parse().unwrap()).await;
    let url = format!("https://{}", server.addr);
    let remote = RemoteStore::build(&url, TOKEN, Some(client_tls), fast_options()).unwrap();
    assert_eq!(remote.get("devices/pk/a").await.unwrap().unwrap().value, &b"sealed"[..]);
    let mut watch = remote.watch_from(0);
    assert_eq!(next_change(&mut watch).await.key, "devices/pk/a");
    drop(watch);

    // Plain HTTP gets nothing from a TLS listener, and the client refuses mismatched set-ups.
    let plain = remote_plain_against_tls(server.addr).await;
    assert!(plain.is_err(), "plain HTTP must fail against TLS");
    assert!(RemoteStore::new(&url, TOKEN).is_err(), "https needs a TLS configuration");
    server.stop().await;
}

async fn remote_plain_against_tls(addr: SocketAddr) -> Result<Revision, StoreError> {
    let options = RemoteOptions { request_timeout: Duration::from_secs(5), ..fast_options() };
    RemoteStore::build(&format!("http://{addr}"), TOKEN, None, options).unwrap().revision().await
}

// ---------------------------------------------------------------------------------------------
// A broker on a replica

mod broker {
    use std::collections::HashMap;

    use bytes::BytesMut;
    use meridian_broker::config::{BrokerConfig, LimitsConfig};
    use meridian_broker::daemon::{self, Listeners};
    use meridian_registry::clock::{Clock, SystemClock};
    use meridian_registry::ids::ProductKey;
    use meridian_registry::model::{
        Account, AccountKind, Edition, Instance, MqttEndpoint, Product, Region,
    };
    use meridian_registry::secret::{DeviceSecret, SecretKey};
    use meridian_registry::signature::{SdkShape, sign_connect};
    use meridian_registry::{NewDevice, Registry};
    use mqttbytes::v4::{Connect, ConnectReturnCode, Packet};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    const PRODUCT: &str = "a13FN5TplKq";
    const INSTANCE: &str = "iot-sh-1";

    async fn control_plane(store: Arc<dyn Store>, sealer: SecretKey) -> Registry {
        let registry = Registry::new(store, sealer, Arc::new(SystemClock));
        let now = SystemClock.now();
        registry
            .create_account(Account {
                id: "acme".parse().unwrap(),
                name: "Acme".into(),
                kind: AccountKind::Enterprise,
                verified_entity: Some("Acme Ltd".into()),
                organisation: None,
                organisation_admin: false,
                created_at: now,
            })
            .await
            .unwrap();
        registry
            .put_region(Region {
                id: "cn-shanghai".parse().unwrap(),
                display_name: "Shanghai".into(),
                latitude: 31.23,
                longitude: 121.47,
                bias_km: 0.0,
                public_endpoint: None,
            })
            .await
            .unwrap();
        registry
            .create_instance(Instance {
                id: INSTANCE.parse().unwrap(),
                region: "cn-shanghai".parse().unwrap(),
                owner: "acme".parse().unwrap(),
                edition: Edition::Public,
                endpoint: MqttEndpoint { host: "127.0.0.1".into(), tcp_port: 1883, tls_port: None },
                created_at: now,
                expires_at: now.after(Duration::from_secs(86_400 * 365)),
            })
            .await
            .unwrap();
        registry
            .create_product(Product {
                key: PRODUCT.parse().unwrap(),
                name: "Lamp".into(),
                owner: "acme".parse().unwrap(),
                home_instance: INSTANCE.parse().unwrap(),
                published: true,
                topic_categories: Vec::new(),
                tsl: serde_json::Value::Null,
                parsing_script: None,
                created_at: now,
            })
            .await
            .unwrap();
        registry
    }

    fn broker_config() -> BrokerConfig {
        BrokerConfig {
            instance: INSTANCE.parse().unwrap(),
            listen: "127.0.0.1:0".into(),
            tls: None,
            websocket_listen: None,
            limits: LimitsConfig::default(),
            users: HashMap::new(),
            applications: HashMap::new(),
            allow_anonymous: false,
            notify_reply_wait: Duration::from_secs(5),
        }
    }

    /// Logs `device` in with its C SDK signature under `secret`; returns the CONNACK's code.
    ///
    /// Raw MQTT rather than `meridian_tests::raw`: that crate depends on this one, so this
    /// crate's tests cannot depend on it. The packets are still mqttbytes', through the
    /// broker's codec.
    async fn connack(addr: SocketAddr, device: &str, secret: &str) -> ConnectReturnCode {
        let signed = sign_connect(SdkShape::CSdk, PRODUCT, device, secret, None);
        let mut connect = Connect::new(signed.client_id);
        connect.keep_alive = 60;
        connect.set_login(signed.username, signed.password);
        let mut bytes = BytesMut::new();
        meridian_broker::codec::encode(&Packet::Connect(connect), &mut bytes).unwrap();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        // A CONNACK is four bytes (MQTT 3.1.1 §3.2).
        let mut connack = BytesMut::zeroed(4);
        within("CONNACK", stream.read_exact(&mut connack)).await.unwrap();
        match mqttbytes::v4::read(&mut connack, 4).unwrap() {
            Packet::ConnAck(ack) => ack.code,
            other => panic!("expected a CONNACK, got {other:?}"),
        }
    }

    /// A broker process's set-up: control plane → internal API → replica → broker. A device
    /// created at the control plane after the broker started can connect.
    #[tokio::test]
    async fn a_broker_on_a_replica_accepts_a_device_created_at_the_control_plane() {
        let source = Source::new();
        let sealer = SecretKey::from_hex(&SecretKey::generate_hex().unwrap()).unwrap();
        let registry = control_plane(source.dyn_store(), sealer.clone()).await;
        let server = Server::start(source.dyn_store()).await;

        let dir = tempfile::tempdir().unwrap();
        let remote: Arc<dyn Store> = Arc::new(remote(&server.url()));
        let (replica, task) =
            Replica::open(dir.path().join("replica.redb"), remote, DEFAULT_PREFIXES).await.unwrap();
        let task = tokio::spawn(task.run());
        within("initial sync", replica.caught_up(source.store.revision().await.unwrap()))
            .await
            .unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let daemon = daemon::start(
            broker_config(),
            Arc::new(replica.clone()),
            sealer,
            Listeners::tcp_only(listener),
        )
        .await
        .unwrap();
        assert_eq!(
            connack(addr, "lamp-1", "lamp-secret-0001").await,
            ConnectReturnCode::BadUserNamePassword,
            "unknown device"
        );

        let product: ProductKey = PRODUCT.parse().unwrap();
        let new = NewDevice {
            name: "lamp-1".parse().unwrap(),
            secret: Some(DeviceSecret::new("lamp-secret-0001").unwrap()),
        };
        registry.create_devices(&product, vec![new]).await.unwrap();
        within("replica sync", replica.caught_up(source.store.revision().await.unwrap()))
            .await
            .unwrap();
        let local = replica.revision().await.unwrap();
        within("broker view", daemon.broker.view().caught_up(local)).await;

        assert_eq!(
            connack(addr, "lamp-1", "lamp-secret-0001").await,
            ConnectReturnCode::Success,
            "accepted"
        );
        assert_eq!(
            connack(addr, "lamp-1", "wrong-secret-000").await,
            ConnectReturnCode::BadUserNamePassword,
            "bad signature"
        );

        // The broker's usage record goes through the replica to the control plane.
        within("broker shutdown", daemon.shutdown()).await;
        assert!(source.store.get(&format!("usage/{INSTANCE}")).await.unwrap().is_some());
        drop(replica);
        within("sync task exit", task).await.unwrap();
        server.stop().await;
    }
}
