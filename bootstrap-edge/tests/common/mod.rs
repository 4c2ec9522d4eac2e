//! A running edge on `127.0.0.1:0` over a real registry store, and a small HTTP client that can
//! connect from any loopback source address and reads every reply as the vendor C SDK does.
#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use meridian_edge::sdk::{self, SdkReply};
use meridian_edge::{Edge, EdgeConfig, RoutingTable, follow};
use meridian_geo::testdb::{self, Layout};
use meridian_geo::{DbFiles, GeoDb, Locator, LocatorOptions};
use meridian_registry::clock::{ManualClock, Timestamp};
use meridian_registry::ids::{DeviceKey, ProductKey};
use meridian_registry::model::{
    Account, AccountKind, Edition, Instance, MqttEndpoint, Placement, PlacementCandidate, Product,
    Region,
};
use meridian_registry::secret::SecretKey;
use meridian_registry::store::RedbStore;
use meridian_registry::{NewDevice, Registry};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PK: &str = "a13FN5TplKq";
const T0: Timestamp = Timestamp(1_800_000_000_000);

/// The three regions of the test GeoIP database and one public instance in each.
pub const INSTANCES: [(&str, &str, &str); 3] = [
    ("iot-fra-1", "eu-central-1", "fra.mqtt.example"),
    ("iot-sh-1", "cn-shanghai", "sh.mqtt.example"),
    ("iot-va-1", "us-east-1", "va.mqtt.example"),
];

/// Registry, routing table and edge, all live.
pub struct Stack {
    pub registry: Registry,
    pub table: Arc<RoutingTable>,
    pub addr: SocketAddr,
    pub geo: Option<GeoDb>,
    pub prometheus: PrometheusHandle,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    follower: JoinHandle<()>,
    dir: tempfile::TempDir,
}

/// How to start a [`Stack`].
pub struct Setup {
    pub config: EdgeConfig,
    /// Write the test GeoIP database (loopback sub-ranges in three places) and use it.
    pub geoip: bool,
    /// Hand the Prometheus handle to the edge (`GET /metrics`).
    pub metrics: bool,
}

impl Default for Setup {
    fn default() -> Self {
        let mut config = EdgeConfig::default();
        config.geoip.default_region = "us-east-1".to_owned();
        config.geoip.geolocate_loopback = true;
        Setup { config, geoip: true, metrics: true }
    }
}

impl Stack {
    pub async fn start() -> Stack {
        Self::with(Setup::default()).await
    }

    pub async fn with(setup: Setup) -> Stack {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path().join("registry.redb")).expect("store");
        let key = SecretKey::from_hex(&SecretKey::generate_hex().expect("key")).expect("key");
        let registry = Registry::new(Arc::new(store), key, Arc::new(ManualClock::new(T0)));
        seed(&registry).await;

        let geo = setup.geoip.then(|| {
            let path = dir.path().join("city.mmdb");
            testdb::write_city_db(&path, Layout::DbIpLite).expect("test GeoIP database");
            GeoDb::open(DbFiles::Combined(path)).expect("open test GeoIP database")
        });
        let locator = Locator::new(
            geo.clone(),
            setup.config.geoip.default_region.clone(),
            LocatorOptions { geolocate_loopback: setup.config.geoip.geolocate_loopback },
        );

        // A recorder of our own (not the global one), so parallel tests do not share counters.
        let recorder = PrometheusBuilder::new().build_recorder();
        let prometheus = recorder.handle();
        let (table, writer) = metrics::with_local_recorder(&recorder, RoutingTable::new);
        let handle = setup.metrics.then(|| prometheus.clone());
        let edge = metrics::with_local_recorder(&recorder, || {
            Edge::new(&setup.config, Arc::clone(&table), locator, handle)
        })
        .expect("valid edge config");

        let store = Arc::clone(registry.store());
        let follower = tokio::spawn(async move {
            follow(store, writer).await.expect("feed followed");
        });

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tokio::spawn(meridian_edge::run(listener, edge, async {
            let _ = stop.await;
        }));
        let stack = Stack {
            registry,
            table,
            addr,
            geo,
            prometheus,
            shutdown: Some(shutdown),
            server: Some(server),
            follower,
            dir,
        };
        stack.sync().await;
        stack
    }

    /// Waits until the routing table reflects every write made so far.
    pub async fn sync(&self) {
        let revision = self.registry.store().revision().await.expect("revision");
        self.table.caught_up(revision).await;
    }

    /// Creates devices of [`PK`] with the given placements and waits until the edge has them.
    pub async fn devices(&self, devices: &[(&str, Placement)]) {
        let new = devices
            .iter()
            .map(|(name, _)| NewDevice { name: name.parse().expect("device name"), secret: None })
            .collect();
        self.registry.create_devices(&product_key(), new).await.expect("devices created");
        for (name, placement) in devices {
            if *placement != Placement::Home {
                self.place(name, placement.clone()).await;
            }
        }
        self.sync().await;
    }

    /// Changes a device's placement and waits until the edge has it.
    pub async fn place(&self, name: &str, placement: Placement) {
        self.registry
            .update_device(&device_key(name), |device| {
                device.placement = placement;
                Ok(())
            })
            .await
            .expect("placement changed");
        self.sync().await;
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Stops the edge and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("edge stopped cleanly");
        }
        self.follower.abort();
    }
}

async fn seed(registry: &Registry) {
    let account = Account {
        id: "acme".parse().expect("id"),
        name: "ACME".into(),
        kind: AccountKind::Individual,
        verified_entity: None,
        organisation: None,
        organisation_admin: false,
        created_at: T0,
    };
    registry.create_account(account).await.expect("account");
    for region in testdb::regions() {
        registry
            .put_region(Region {
                id: region.id.parse().expect("region id"),
                display_name: region.id.clone(),
                latitude: region.lat,
                longitude: region.lon,
                bias_km: 0.0,
                // The operator's answer for the region: its instance's endpoint here.
                public_endpoint: INSTANCES.iter().find(|(_, id, _)| *id == region.id).map(
                    |(_, _, host)| MqttEndpoint {
                        host: (*host).into(),
                        tcp_port: 1883,
                        tls_port: Some(8883),
                    },
                ),
            })
            .await
            .expect("region");
    }
    for (id, region, host) in INSTANCES {
        registry
            .create_instance(Instance {
                id: id.parse().expect("instance id"),
                region: region.parse().expect("region id"),
                owner: "acme".parse().expect("id"),
                edition: Edition::Public,
                endpoint: MqttEndpoint { host: host.into(), tcp_port: 1883, tls_port: Some(8883) },
                created_at: T0,
                expires_at: T0.after(std::time::Duration::from_secs(86_400)),
            })
            .await
            .expect("instance");
    }
    registry
        .create_product(Product {
            key: product_key(),
            name: "Lamp".into(),
            owner: "acme".parse().expect("id"),
            home_instance: "iot-sh-1".parse().expect("id"),
            published: false,
            topic_categories: vec![],
            tsl: Value::Null,
            parsing_script: None,
            created_at: T0,
        })
        .await
        .expect("product");
}

pub fn product_key() -> ProductKey {
    PK.parse().expect("product key")
}

pub fn device_key(name: &str) -> DeviceKey {
    DeviceKey { product_key: product_key(), device_name: name.parse().expect("device name") }
}

/// Nearest access over all three test regions.
pub fn nearest_everywhere() -> Placement {
    Placement::Nearest {
        candidates: INSTANCES
            .iter()
            .map(|(instance, region, _)| PlacementCandidate {
                region: region.parse().expect("region id"),
                instance: instance.parse().expect("instance id"),
            })
            .collect(),
    }
}

pub fn specified(instance: &str) -> Placement {
    Placement::Specified { instance: instance.parse().expect("instance id") }
}

/// The form the C SDK posts for `device`.
pub fn sdk_form(device: &str) -> String {
    format!(
        "productKey={PK}&deviceName={device}&clientId={PK}.{device}&timestamp=2524608000000\
         &resources=mqtt"
    )
}

/// One HTTP exchange's result, framed the way the vendor C SDK frames it
/// ([`meridian_edge::sdk`]): status line `HTTP/1.1 `, header lines under 128 bytes, a
/// case-sensitive `Content-Length: `. A reply the SDK could not read fails the test right here,
/// whatever the test checks next, so every reply of every edge test is held to the SDK.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    /// The header lines, for lookups by name; [`Reply::sdk`] keeps their exact bytes.
    pub headers: HeaderMap,
    pub body: Bytes,
    pub sdk: SdkReply,
}

impl Reply {
    fn from_sdk(sdk: SdkReply) -> Reply {
        let mut headers = HeaderMap::new();
        for line in &sdk.header_lines {
            let (name, value) = line.split_once(": ").expect("header line is `Name: value`");
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        assert!(
            headers.get("transfer-encoding").is_none(),
            "the SDK cannot read chunked bodies: {sdk:?}"
        );
        let status = StatusCode::from_u16(sdk.status).expect("status");
        Reply { status, headers, body: Bytes::from(sdk.body.clone()), sdk }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// The MQTT host of a success reply, as the SDK's key search finds it (and as a JSON
    /// parser reads it: the two must agree).
    pub fn host(&self) -> String {
        let endpoint = self.sdk.endpoint().unwrap_or_else(|error| {
            panic!("the SDK gets no endpoint ({error}): {:?}", String::from_utf8_lossy(&self.body))
        });
        let mqtt = &self.json()["data"]["resources"]["mqtt"];
        assert_eq!(mqtt["host"], endpoint.host.as_str());
        assert_eq!(mqtt["port"], endpoint.port);
        endpoint.host
    }

    /// `code` and `message` of an error reply, checking the JSON shape on the way.
    pub fn error(&self) -> (u64, String) {
        let body = self.json();
        let code = body["code"].as_u64().expect("numeric code");
        assert_eq!(code, u64::from(self.status.as_u16()), "code mirrors the status");
        let message = body["message"].as_str().expect("message").to_owned();
        assert!(!message.is_empty());
        (code, message)
    }
}

/// A keep-alive HTTP/1.1 connection from a chosen loopback source address that writes requests
/// itself and reads every reply through the SDK's parser.
pub struct Client {
    stream: TcpStream,
    addr: SocketAddr,
    /// Bytes read past the last reply (none unless the edge pipelines).
    unread: Vec<u8>,
}

impl Client {
    /// Connects from `127.0.0.1`.
    pub async fn connect(addr: SocketAddr) -> Client {
        Self::connect_from(addr, IpAddr::from([127, 0, 0, 1])).await
    }

    /// Connects from `source` (any `127.x.y.z` works on Linux: all of 127/8 is loopback).
    pub async fn connect_from(addr: SocketAddr, source: IpAddr) -> Client {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(source, 0)).expect("bind source address");
        let stream = socket.connect(addr).await.expect("connect");
        Self::over(stream, addr)
    }

    /// Speaks HTTP over an already-connected stream (e.g. after writing a PROXY header).
    pub fn over(stream: TcpStream, addr: SocketAddr) -> Client {
        Client { stream, addr, unread: Vec::new() }
    }

    /// Sends `request` as HTTP/1.1 (with `Content-Length` when it has a body or is a POST).
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Reply {
        let (head, body) = request.into_parts();
        let body = body.collect().await.expect("in-memory body").to_bytes();
        let target = head.uri.path_and_query().map_or("/", |target| target.as_str());
        let mut bytes = format!("{} {target} HTTP/1.1\r\n", head.method).into_bytes();
        for (name, value) in &head.headers {
            bytes.extend_from_slice(name.as_str().as_bytes());
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        if !body.is_empty() || head.method == http::Method::POST {
            bytes.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(&body);
        self.raw(&bytes).await
    }

    /// Writes `bytes` as they are and reads the reply.
    pub async fn raw(&mut self, bytes: &[u8]) -> Reply {
        self.stream.write_all(bytes).await.expect("write request");
        self.reply().await
    }

    /// Writes each part separately (the SDK sends head and body in two writes), then reads
    /// the reply.
    pub async fn raw_parts(&mut self, parts: &[&[u8]]) -> Reply {
        for part in parts {
            self.stream.write_all(part).await.expect("write request");
            self.stream.flush().await.expect("flush");
        }
        self.reply().await
    }

    /// Reads the next reply.
    pub async fn reply(&mut self) -> Reply {
        let mut buffer = [0u8; 4096];
        loop {
            match sdk::parse(&self.unread) {
                Ok(Some((reply, used))) => {
                    self.unread.drain(..used);
                    return Reply::from_sdk(reply);
                }
                Ok(None) => {}
                Err(error) => panic!(
                    "the vendor C SDK cannot read this reply ({error}): {:?}",
                    String::from_utf8_lossy(&self.unread)
                ),
            }
            let read = self.stream.read(&mut buffer).await.expect("read reply");
            assert!(
                read > 0,
                "connection closed before a complete reply: {:?}",
                String::from_utf8_lossy(&self.unread)
            );
            self.unread.extend_from_slice(&buffer[..read]);
        }
    }

    /// `POST /auth/bootstrap` with a form body and extra headers.
    pub async fn bootstrap(&mut self, form: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request =
            Request::post("/auth/bootstrap").header("host", self.addr.ip().to_string());
        if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
            request = request.header("content-type", "application/x-www-form-urlencoded");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(form.to_owned()))).expect("request");
        self.send(request).await
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        let request = Request::get(path)
            .header("host", self.addr.ip().to_string())
            .body(Full::new(Bytes::new()))
            .expect("request");
        self.send(request).await
    }

    /// Reads until the edge closes the connection; what came after the last reply.
    pub async fn rest(mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.unread);
        let mut buffer = [0u8; 4096];
        // A reset after the edge closes counts as closed.
        while let Ok(read @ 1..) = self.stream.read(&mut buffer).await {
            rest.extend_from_slice(&buffer[..read]);
        }
        rest
    }
}

/// One raw request on a fresh connection, its reply read as the SDK reads it.
pub async fn raw_reply(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut client = Client::connect(addr).await;
    client.raw(request).await
}

/// One bootstrap on a fresh connection from `source`.
pub async fn bootstrap_from(addr: SocketAddr, source: IpAddr, device: &str) -> Reply {
    Client::connect_from(addr, source).await.bootstrap(&sdk_form(device), &[]).await
}
