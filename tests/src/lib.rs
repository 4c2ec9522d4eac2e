//! Shared set-up for Meridian's end-to-end tests (the tests themselves live in `tests/tests/`):
//! a real registry on a temporary redb file, real daemons on `127.0.0.1:0`, and real MQTT
//! clients, or raw MQTT bytes ([`raw`]) where a test needs what no client library sends; real
//! `nats-server` processes ([`nats`]) for the JetStream store.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod cuttable;
pub mod device;
pub mod nats;
pub mod proxy;
pub mod raw;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meridian_broker::config::{BrokerConfig, LimitsConfig};
use meridian_broker::daemon::{self, Daemon, Listeners};
use meridian_registry::clock::SystemClock;
use meridian_registry::ids::{DeviceKey, InstanceId, ProductKey};
use meridian_registry::model::{
    Account, AccountKind, Edition, Instance, MqttEndpoint, Product, Region,
};
use meridian_registry::secret::{DeviceSecret, SecretKey};
use meridian_registry::store::{RedbStore, Store};
use meridian_registry::{NewDevice, Registry};
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet};
use tokio::sync::mpsc;

/// The product every test device belongs to (the C SDK capture's).
pub const PRODUCT: &str = "a13FN5TplKq";
/// The account owning the test instances and product.
pub const ACCOUNT: &str = "acme";
/// Instances of the test registry: Shanghai (the product's home) and Frankfurt.
pub const SHANGHAI: &str = "iot-sh-1";
pub const FRANKFURT: &str = "iot-fra-1";
/// A standard user every test broker knows.
pub const USER: (&str, &str) = ("alice", "alice-password");
/// An application client of [`ACCOUNT`].
pub const APPLICATION: (&str, &str) = ("acme-app", "acme-app-password");

/// How long a test waits for something that should happen promptly before calling it a hang.
/// A guard against tests that never end, not a performance assertion.
pub const HANG: Duration = Duration::from_secs(30);

/// A registry on a temporary store, with an account, two regions, two instances and a product.
pub struct TestRegistry {
    pub registry: Registry,
    pub store: Arc<dyn Store>,
    pub sealer: SecretKey,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    pub async fn new() -> TestRegistry {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(dir.path().join("registry.redb")).expect("open store"));
        let sealer = SecretKey::from_hex(&SecretKey::generate_hex().expect("key")).expect("key");
        let registry = Registry::new(store.clone(), sealer.clone(), Arc::new(SystemClock));
        let now = meridian_registry::clock::Clock::now(&SystemClock);
        registry
            .create_account(Account {
                id: ACCOUNT.parse().expect("id"),
                name: "Acme".into(),
                kind: AccountKind::Enterprise,
                verified_entity: Some("Acme Ltd".into()),
                organisation: None,
                organisation_admin: false,
                created_at: now,
            })
            .await
            .expect("account");
        for (id, lat, lon, instance) in
            [("cn-shanghai", 31.23, 121.47, SHANGHAI), ("eu-central-1", 50.11, 8.68, FRANKFURT)]
        {
            registry
                .put_region(Region {
                    id: id.parse().expect("id"),
                    display_name: id.into(),
                    latitude: lat,
                    longitude: lon,
                    bias_km: 0.0,
                    public_endpoint: None,
                })
                .await
                .expect("region");
            registry
                .create_instance(Instance {
                    id: instance.parse().expect("id"),
                    region: id.parse().expect("id"),
                    owner: ACCOUNT.parse().expect("id"),
                    edition: Edition::Public,
                    endpoint: MqttEndpoint {
                        host: "127.0.0.1".into(),
                        tcp_port: 1883,
                        tls_port: None,
                    },
                    created_at: now,
                    expires_at: now.after(Duration::from_secs(86_400 * 365)),
                })
                .await
                .expect("instance");
        }
        registry
            .create_product(Product {
                key: PRODUCT.parse().expect("pk"),
                name: "Lamp".into(),
                owner: ACCOUNT.parse().expect("id"),
                home_instance: SHANGHAI.parse().expect("id"),
                published: true,
                topic_categories: Vec::new(),
                tsl: serde_json::Value::Null,
                parsing_script: None,
                created_at: now,
            })
            .await
            .expect("product");
        TestRegistry { registry, store, sealer, _dir: dir }
    }

    /// Creates a device of [`PRODUCT`] with the given secret.
    pub async fn device(&self, name: &str, secret: &str) -> DeviceKey {
        let product: ProductKey = PRODUCT.parse().expect("pk");
        let created = self
            .registry
            .create_devices(
                &product,
                vec![NewDevice {
                    name: name.parse().expect("device name"),
                    secret: Some(DeviceSecret::new(secret).expect("secret")),
                }],
            )
            .await
            .expect("create device");
        created[0].device.key.clone()
    }

    /// Starts a broker for `instance` on 127.0.0.1:0.
    pub async fn broker(
        &self,
        instance: &str,
        tweak: impl FnOnce(&mut BrokerConfig),
    ) -> TestBroker {
        let mut config = broker_config(instance.parse().expect("instance"));
        tweak(&mut config);
        // Every configured listener, each on the port 0 its config names.
        let listeners = Listeners::bind(&config).await.expect("bind");
        let addr = listeners.tcp.local_addr().expect("addr");
        let tls_addr = listeners.tls.as_ref().map(|(tls, _)| tls.local_addr().expect("addr"));
        let websocket_addr = listeners.websocket.as_ref().map(|ws| ws.local_addr().expect("addr"));
        let daemon = daemon::start(config, self.store.clone(), self.sealer.clone(), listeners)
            .await
            .expect("start broker");
        TestBroker { daemon, addr, tls_addr, websocket_addr }
    }

    /// Waits until a broker's view reflects everything committed so far.
    pub async fn sync(&self, broker: &TestBroker) {
        let revision = self.store.revision().await.expect("revision");
        tokio::time::timeout(HANG, broker.daemon.broker.view().caught_up(revision))
            .await
            .expect("broker view caught up");
    }
}

/// The configuration test brokers start from.
pub fn broker_config(instance: InstanceId) -> BrokerConfig {
    let applications = HashMap::from([(
        APPLICATION.0.to_owned(),
        meridian_broker::config::ApplicationConfig {
            password: APPLICATION.1.into(),
            account: ACCOUNT.parse().expect("id"),
        },
    )]);
    BrokerConfig {
        instance,
        listen: "127.0.0.1:0".into(),
        tls: None,
        websocket_listen: None,
        limits: LimitsConfig::default(),
        users: HashMap::from([(USER.0.to_owned(), USER.1.to_owned())]),
        applications,
        allow_anonymous: false,
        notify_reply_wait: Duration::from_secs(5),
    }
}

pub struct TestBroker {
    pub daemon: Daemon,
    /// The plain MQTT listener.
    pub addr: SocketAddr,
    /// The TLS listener, when the test configured `tls` (listen on `127.0.0.1:0`).
    pub tls_addr: Option<SocketAddr>,
    /// The WebSocket listener, when the test configured `websocket_listen`.
    pub websocket_addr: Option<SocketAddr>,
}

/// A rumqttc client whose event loop runs in a task, forwarding every event.
pub struct Client {
    pub client: AsyncClient,
    pub events: mpsc::UnboundedReceiver<Result<Event, String>>,
}

impl Client {
    /// Connects and waits for the CONNACK; returns the refusal as an error string otherwise.
    pub async fn connect(options: MqttOptions) -> Result<(Client, bool), String> {
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, mut events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let stop = event.is_err();
                if tx.send(event.map_err(|e| describe(&e))).is_err() || stop {
                    return;
                }
            }
        });
        loop {
            match tokio::time::timeout(HANG, events.recv()).await.expect("CONNACK in time") {
                Some(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                    return Ok((Client { client, events }, ack.session_present));
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
                None => return Err("event loop ended".into()),
            }
        }
    }

    /// The next incoming PUBLISH.
    pub async fn publish(&mut self) -> rumqttc::Publish {
        loop {
            match tokio::time::timeout(HANG, self.events.recv()).await.expect("PUBLISH in time") {
                Some(Ok(Event::Incoming(Packet::Publish(publish)))) => return publish,
                Some(Ok(_)) => {}
                other => panic!("connection ended while waiting for a PUBLISH: {other:?}"),
            }
        }
    }

    /// Waits for an incoming packet matching `want`.
    pub async fn expect(&mut self, want: impl Fn(&Packet) -> bool) -> Packet {
        loop {
            match tokio::time::timeout(HANG, self.events.recv()).await.expect("packet in time") {
                Some(Ok(Event::Incoming(packet))) if want(&packet) => return packet,
                Some(Ok(_)) => {}
                other => panic!("connection ended while waiting: {other:?}"),
            }
        }
    }

    /// Waits until the connection fails (closed by the broker).
    pub async fn closed(&mut self) -> String {
        loop {
            match tokio::time::timeout(HANG, self.events.recv()).await.expect("close in time") {
                Some(Err(error)) => return error,
                None => return "event loop ended".into(),
                Some(Ok(_)) => {}
            }
        }
    }
}

fn describe(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ConnectionRefused(code) => format!("refused: {code:?}"),
        other => other.to_string(),
    }
}

/// Options for a standard client of [`USER`].
pub fn user_options(addr: SocketAddr, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_credentials(USER.0, USER.1);
    options.set_keep_alive(Duration::from_secs(30));
    options
}
