//! The admin API under test: a control plane on a temporary redb store with a manual clock,
//! served on `127.0.0.1:0`, and a small HTTP/1.1 client over hyper's client connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use meridian_control::ControlPlane;
use meridian_registry::Registry;
use meridian_registry::clock::{ManualClock, Timestamp};
use meridian_registry::model::Region;
use meridian_registry::secret::SecretKey;
use meridian_registry::store::{RedbStore, Store};

pub const OPERATOR_TOKEN: &str = "operator-token-for-tests";
/// Regions every test registry has: (id, latitude, longitude).
pub const REGIONS: [(&str, f64, f64); 2] =
    [("cn-shanghai", 31.23, 121.47), ("eu-central-1", 50.11, 8.68)];

/// How long a test waits for something that should happen promptly before calling it a hang.
/// A guard against tests that never end, not a performance assertion.
pub const HANG: Duration = Duration::from_secs(30);

pub struct TestApi {
    pub addr: SocketAddr,
    pub plane: ControlPlane,
    pub clock: ManualClock,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    /// Kept for [`TestApi::restart`], which reopens the same store.
    #[allow(dead_code, reason = "read by restart, which not every test file uses")]
    sealer: SecretKey,
    _dir: tempfile::TempDir,
}

/// An account created through the API, with its key.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub key: String,
}

/// A request body.
pub enum Body<'a> {
    None,
    Json(Value),
    Typed(&'a str, Vec<u8>),
}

impl TestApi {
    pub async fn start() -> TestApi {
        TestApi::start_with_store(|store| store).await
    }

    /// [`TestApi::start`] on the store `wrap` makes of the temporary redb store: a test's
    /// interposer that records, fails or "crashes" writes.
    pub async fn start_with_store(wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>) -> TestApi {
        let dir = tempfile::tempdir().expect("tempdir");
        let sealer = SecretKey::from_hex(&SecretKey::generate_hex().expect("key")).expect("key");
        let clock = ManualClock::new(Timestamp(1_700_000_000_000));
        TestApi::open(dir, sealer, clock, wrap).await
    }

    /// Stops the server, closes the store, and starts a new control plane on the same store
    /// file with the same key and clock: what a restart of the process keeps.
    #[allow(dead_code, reason = "not every test file restarts")]
    pub async fn restart(mut self) -> TestApi {
        self.stop().await;
        let (clock, sealer) = (self.clock.clone(), self.sealer.clone());
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().expect("tempdir"));
        // Drops the plane, the last handle on the store, which closes the redb file.
        drop(self);
        TestApi::open(dir, sealer, clock, |store| store).await
    }

    async fn open(
        dir: tempfile::TempDir,
        sealer: SecretKey,
        clock: ManualClock,
        wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
    ) -> TestApi {
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(dir.path().join("registry.redb")).expect("open store"));
        let store = wrap(store);
        let registry = Registry::new(store, sealer.clone(), Arc::new(clock.clone()));
        for (id, latitude, longitude) in REGIONS {
            registry
                .put_region(Region {
                    id: id.parse().expect("region id"),
                    display_name: id.into(),
                    latitude,
                    longitude,
                    bias_km: 0.0,
                    public_endpoint: None,
                })
                .await
                .expect("region");
        }
        let plane = ControlPlane::new(registry, OPERATOR_TOKEN);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(meridian_control::api::serve(listener, plane.clone(), async {
            let _ = stopped.await;
        }));
        TestApi {
            addr,
            plane,
            clock,
            shutdown: Some(shutdown),
            server: Some(server),
            sealer,
            _dir: dir,
        }
    }

    /// Asks the server to shut down and waits until `serve` returns.
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(HANG, server).await.expect("serve returns").expect("no panic");
        }
    }

    /// One request on a fresh connection.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Body<'_>,
    ) -> Reply {
        let mut connection = Connection::open(self.addr).await;
        connection.request(method, path, bearer, body).await
    }

    pub async fn get(&self, path: &str, key: &str) -> Reply {
        self.request(Method::GET, path, Some(key), Body::None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> Reply {
        self.request(Method::POST, path, Some(key), Body::Json(body)).await
    }

    pub async fn post_empty(&self, path: &str, key: &str) -> Reply {
        self.request(Method::POST, path, Some(key), Body::None).await
    }

    pub async fn post_csv(&self, path: &str, key: &str, csv: &str) -> Reply {
        self.request(Method::POST, path, Some(key), Body::Typed("text/csv", csv.into())).await
    }

    pub async fn delete(&self, path: &str, key: &str) -> Reply {
        self.request(Method::DELETE, path, Some(key), Body::None).await
    }

    /// Creates an account through the operator endpoint.
    pub async fn account(&self, id: &str) -> Tenant {
        let body = json!({ "id": id, "name": format!("{id} Ltd"), "kind": "individual" });
        let reply = self
            .request(Method::POST, "/v1/accounts", Some(OPERATOR_TOKEN), Body::Json(body))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        let key = reply.json()["api_key"].as_str().expect("api_key").to_owned();
        Tenant { key }
    }

    /// The operator provisions an instance for `owner`: `body` is the instance without its
    /// owner.
    pub async fn provision(&self, owner: &str, mut body: Value) -> Reply {
        body["owner"] = json!(owner);
        self.request(Method::POST, "/v1/operator/instances", Some(OPERATOR_TOKEN), Body::Json(body))
            .await
    }

    /// An account with one public instance per region (`{id}-sh`, `{id}-fra`, provisioned by
    /// the operator) and a product homed in Shanghai.
    pub async fn tenant_with_product(&self, id: &str, product: &str) -> Tenant {
        let tenant = self.account(id).await;
        for (suffix, region) in [("sh", "cn-shanghai"), ("fra", "eu-central-1")] {
            let reply = self
                .provision(
                    id,
                    json!({
                        "id": format!("{id}-{suffix}"),
                        "region": region,
                        "endpoint": { "host": format!("{suffix}.example"), "tcp_port": 1883 },
                    }),
                )
                .await;
            assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
            // So Shanghai is the account's oldest, hence default, public instance.
            self.clock.advance(Duration::from_secs(1));
        }
        let reply = self
            .post(
                "/v1/products",
                &tenant.key,
                json!({ "key": product, "name": "Lamp", "home_instance": format!("{id}-sh") }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        tenant
    }

    /// Creates devices with generated secrets.
    pub async fn devices(&self, tenant: &Tenant, product: &str, names: &[&str]) {
        let devices: Vec<Value> = names.iter().map(|name| json!({ "deviceName": name })).collect();
        let reply = self
            .post(
                &format!("/v1/products/{product}/devices"),
                &tenant.key,
                json!({ "devices": devices }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    }

    /// Submits a task and returns its id, asserting `201`.
    pub async fn task(&self, tenant: &Tenant, body: Value) -> String {
        let reply = self.post("/v1/distribution-tasks", &tenant.key, body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()["id"].as_str().expect("task id").to_owned()
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// One HTTP/1.1 connection, reusable for several requests (keep-alive).
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> Connection {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Connection { sender }
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Body<'_>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path).header(header::HOST, "admin");
        if let Some(bearer) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {bearer}"));
        }
        let body = match body {
            Body::None => Bytes::new(),
            Body::Json(value) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(value.to_string())
            }
            Body::Typed(content_type, bytes) => {
                if !content_type.is_empty() {
                    request = request.header(header::CONTENT_TYPE, content_type);
                }
                Bytes::from(bytes)
            }
        };
        self.send(request.body(Full::new(body)).expect("request")).await
    }

    /// Sends a request built by the caller.
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Reply {
        let exchange = async {
            self.sender.ready().await.expect("connection ready");
            let response = self.sender.send_request(request).await.expect("response");
            let (parts, body) = response.into_parts();
            let body = body.collect().await.expect("response body").to_bytes();
            Reply { status: parts.status, headers: parts.headers, body }
        };
        tokio::time::timeout(HANG, exchange).await.expect("reply in time")
    }
}

/// Sends `head` and then `body_len` bytes of spaces as 64 KiB chunks on a raw socket, and
/// returns everything the server answers until it closes. The writer runs on its own: the
/// server may answer, and stop reading, before the body is all sent.
pub async fn raw_exchange(addr: SocketAddr, head: String, body_len: usize) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 64 * 1024];
        let mut left = body_len;
        while left > 0 {
            let len = left.min(chunk.len());
            write.write_all(format!("{len:x}\r\n").as_bytes()).await?;
            write.write_all(&chunk[..len]).await?;
            write.write_all(b"\r\n").await?;
            left -= len;
        }
        write.write_all(b"0\r\n\r\n").await
    });
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let reading = async {
        // A reset after the answer (the server closed with body bytes unread) ends it too.
        while let Ok(read @ 1..) = read.read(&mut buffer).await {
            answer.extend_from_slice(&buffer[..read]);
        }
    };
    tokio::time::timeout(HANG, reading).await.expect("server answers and closes");
    writer.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }

    pub fn json(&self) -> Value {
        assert_eq!(
            self.headers.get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/json")),
            "{} {}",
            self.status,
            self.text()
        );
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// Asserts the status and that the body is the API's JSON error with that code; returns
    /// the message.
    #[track_caller]
    pub fn error(&self, status: StatusCode) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        let body = self.json();
        assert_eq!(body["code"], status.as_u16(), "{body}");
        body["message"].as_str().expect("message").to_owned()
    }
}
