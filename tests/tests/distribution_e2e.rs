//! Distribution end to end (issue 5): two regions with a broker each, one bootstrap edge, the
//! admin API and the task executor, all real servers on loopback sockets; a thousand simulated
//! SDK devices bootstrap through the edge and connect with PROTOCOL §2 signatures. A task moves
//! half of them; each is notified without having subscribed, replies, is disconnected,
//! bootstraps again and lands at the destination while the other half stay untouched.

// Test helpers outside `#[test]` functions panic on failure by design.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use meridian_control::ControlPlane;
use meridian_edge::{Edge, EdgeConfig, RoutingTable};
use meridian_geo::testdb::{self, Layout};
use meridian_geo::{DbFiles, GeoDb, Locator, LocatorOptions};
use meridian_registry::ids::InstanceId;
use meridian_registry::model::Instance;
use meridian_registry::{decode, encode, keys};
use meridian_tests::device::{DeviceEvent, SimDevice, http_exchange};
use meridian_tests::{ACCOUNT, FRANKFURT, HANG, PRODUCT, SHANGHAI, TestBroker, TestRegistry};
use tokio::sync::mpsc;

const DEVICES: usize = 1_000;
const MOVED: usize = 500;
const OPERATOR: &str = "operator-token";

struct World {
    registry: TestRegistry,
    shanghai: TestBroker,
    frankfurt: TestBroker,
    edge: SocketAddr,
    admin: SocketAddr,
    api_key: String,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn world() -> World {
    let registry = TestRegistry::new().await;
    let shanghai = registry.broker(SHANGHAI, |c| c.limits.notify_rate = 5_000).await;
    let frankfurt = registry.broker(FRANKFURT, |c| c.limits.notify_rate = 5_000).await;
    // The edge must answer with the brokers' real (ephemeral) addresses.
    set_endpoint(&registry, SHANGHAI, shanghai.addr).await;
    set_endpoint(&registry, FRANKFURT, frankfurt.addr).await;

    let plane = ControlPlane::new(registry.registry.clone(), OPERATOR);
    let api_key = plane.create_api_key(&ACCOUNT.parse().unwrap()).await.unwrap();
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(plane.clone().run_executor(std::future::pending())));
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = admin_listener.local_addr().unwrap();
    tasks.push(tokio::spawn(meridian_control::api::serve(
        admin_listener,
        plane,
        std::future::pending(),
    )));

    // The edge, with a test GeoIP database that places 127.1/16 in Frankfurt and 127.2/16 in
    // Shanghai, and loopback lookups switched on so devices can play both places.
    let geo_path = registry_dir().join(format!("city-{}.mmdb", std::process::id()));
    testdb::write_city_db(&geo_path, Layout::DbIpLite).unwrap();
    let geo = GeoDb::open(DbFiles::Combined(geo_path)).unwrap();
    let mut config = EdgeConfig::default();
    config.rate_limit.enabled = false;
    config.geoip.geolocate_loopback = true;
    config.geoip.default_region = "cn-shanghai".into();
    let locator = Locator::new(
        Some(geo),
        config.geoip.default_region.clone(),
        LocatorOptions { geolocate_loopback: true },
    );
    let (table, writer) = RoutingTable::new();
    let store = registry.store.clone();
    tasks.push(tokio::spawn(async move {
        meridian_edge::follow(store, writer).await.expect("edge follows the feed");
    }));
    table.caught_up(registry.store.revision().await.unwrap()).await;
    let edge = Edge::new(&config, table, locator, None).unwrap();
    let edge_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let edge_addr = edge_listener.local_addr().unwrap();
    tasks.push(tokio::spawn(meridian_edge::run(edge_listener, edge, std::future::pending())));

    World { registry, shanghai, frankfurt, edge: edge_addr, admin, api_key, _tasks: tasks }
}

fn registry_dir() -> std::path::PathBuf {
    std::env::temp_dir()
}

async fn set_endpoint(registry: &TestRegistry, instance: &str, addr: SocketAddr) {
    let id: InstanceId = instance.parse().unwrap();
    let key = keys::instance(&id);
    let entry = registry.store.get(&key).await.unwrap().unwrap();
    let mut record: Instance = decode(&entry.key, &entry.value).unwrap();
    record.endpoint.host = addr.ip().to_string();
    record.endpoint.tcp_port = addr.port();
    registry.store.put(&key, encode(&record).unwrap()).await.unwrap();
}

/// An admin API call; returns (status, body).
async fn api(
    world: &World,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, String) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let content_type =
        if body.is_empty() { String::new() } else { "Content-Type: application/json\r\n".into() };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {}\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        world.api_key,
        body.len()
    );
    let response = http_exchange(IpAddr::V4(Ipv4Addr::LOCALHOST), world.admin, request.as_bytes())
        .await
        .unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Waits until the task settles; returns its JSON.
async fn settled(world: &World, id: &str) -> serde_json::Value {
    loop {
        let (status, body) = api(world, "GET", &format!("/v1/distribution-tasks/{id}"), None).await;
        assert_eq!(status, 200, "{body}");
        let task: serde_json::Value = serde_json::from_str(&body).unwrap();
        if task["state"] == "Distributed" || task["state"] == "Failed" {
            return task;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn device_name(n: usize) -> String {
    format!("fleet-{n:04}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_moves_between_regions() {
    let world = world().await;
    let names: Vec<_> =
        (0..DEVICES).map(|n| (device_name(n), format!("secret-{n:04}-xyz"))).collect();
    let product: meridian_registry::ids::ProductKey = PRODUCT.parse().unwrap();
    let new = names
        .iter()
        .map(|(name, secret)| meridian_registry::NewDevice {
            name: name.parse().unwrap(),
            secret: Some(meridian_registry::secret::DeviceSecret::new(secret.clone()).unwrap()),
        })
        .collect();
    world.registry.registry.create_devices(&product, new).await.unwrap();
    world.registry.sync(&world.shanghai).await;

    // 1. Every device bootstraps through the edge and connects at its home, Shanghai.
    let (events_tx, mut events) = mpsc::unbounded_channel();
    for (n, (name, secret)) in names.iter().enumerate() {
        // Devices 900.. play Europe (127.1/16), the rest Asia (127.2/16).
        let octet = if n >= 900 { 1 } else { 2 };
        let source = IpAddr::V4(Ipv4Addr::new(127, octet, (n / 250) as u8, (n % 250) as u8 + 1));
        let device = SimDevice {
            product_key: PRODUCT.into(),
            device_name: name.clone(),
            secret: secret.clone(),
            source,
            edge: world.edge,
        };
        tokio::spawn(device.run(events_tx.clone()));
    }
    let mut at: HashMap<String, SocketAddr> = HashMap::new();
    while at.len() < DEVICES {
        match next(&mut events).await {
            DeviceEvent::Connected { device, broker } => {
                at.insert(device, broker);
            }
            DeviceEvent::Refused { device, reason } => panic!("{device} refused: {reason}"),
            DeviceEvent::Notified { device } => panic!("{device} notified before any task"),
        }
    }
    assert!(at.values().all(|broker| *broker == world.shanghai.addr));

    // 2. One task moves the first 500 to Frankfurt.
    let moved: Vec<String> = (0..MOVED).map(device_name).collect();
    let request = serde_json::json!({
        "product": PRODUCT,
        "devices": moved,
        "policy": {"kind": "specified", "instance": FRANKFURT},
    });
    let (status, body) = api(&world, "POST", "/v1/distribution-tasks", Some(&request)).await;
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let moved_set: HashSet<String> = moved.iter().cloned().collect();
    let mut notified = HashSet::new();
    let mut arrived = HashSet::new();
    while notified.len() < MOVED || arrived.len() < MOVED {
        match next(&mut events).await {
            DeviceEvent::Notified { device } => {
                assert!(moved_set.contains(&device), "{device} was not part of the task");
                notified.insert(device);
            }
            DeviceEvent::Connected { device, broker } => {
                assert!(moved_set.contains(&device), "{device} reconnected although it stayed");
                assert_eq!(
                    broker, world.frankfurt.addr,
                    "{device} bootstrapped to the wrong place"
                );
                arrived.insert(device);
            }
            DeviceEvent::Refused { .. } => {} // a reconnect racing the feed is retried
        }
    }
    // The other 500 were never disturbed: still online at Shanghai.
    for n in MOVED..DEVICES {
        let key = meridian_registry::ids::DeviceKey {
            product_key: product.clone(),
            device_name: device_name(n).parse().unwrap(),
        };
        assert!(
            world
                .shanghai
                .daemon
                .broker
                .router()
                .is_online(&meridian_broker::Broker::device_session_id(&key))
        );
    }

    // 3. The record CSV lists 500 successes.
    let task = settled(&world, &id).await;
    assert_eq!(task["state"], "Distributed");
    let (status, csv) =
        api(&world, "GET", &format!("/v1/distribution-tasks/{id}/records.csv"), None).await;
    assert_eq!(status, 200);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "productKey,deviceName,result,reason");
    assert_eq!(rows.len(), MOVED + 1);
    assert!(rows[1..].iter().all(|row| row.ends_with(",succeeded,")), "{}", rows[1]);

    // A device that does not exist is recorded as failed.
    let request = serde_json::json!({
        "product": PRODUCT,
        "devices": ["fleet-0000", "no-such-device"],
        "policy": {"kind": "specified", "instance": SHANGHAI},
    });
    let (status, body) = api(&world, "POST", "/v1/distribution-tasks", Some(&request)).await;
    assert_eq!(status, 201, "{body}");
    let back = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    settled(&world, &back).await;
    let (_, csv) =
        api(&world, "GET", &format!("/v1/distribution-tasks/{back}/records.csv"), None).await;
    assert!(csv.contains("fleet-0000,succeeded"), "{csv}");
    assert!(csv.contains("no-such-device,failed,device does not exist"), "{csv}");
    // fleet-0000 comes back to Shanghai.
    loop {
        if let DeviceEvent::Connected { device, broker } = next(&mut events).await
            && device == "fleet-0000"
        {
            assert_eq!(broker, world.shanghai.addr);
            break;
        }
    }

    // 4. Nearest access over both regions: devices playing Europe land in Frankfurt, those
    // playing Asia in Shanghai.
    let nearest: Vec<String> = (880..920).map(device_name).collect();
    let request = serde_json::json!({
        "product": PRODUCT,
        "devices": nearest,
        "policy": {"kind": "nearest", "instances": [SHANGHAI, FRANKFURT]},
    });
    let (status, body) = api(&world, "POST", "/v1/distribution-tasks", Some(&request)).await;
    assert_eq!(status, 201, "{body}");
    let mut landed: HashMap<String, SocketAddr> = HashMap::new();
    while landed.len() < nearest.len() {
        if let DeviceEvent::Connected { device, broker } = next(&mut events).await
            && nearest.contains(&device)
        {
            landed.insert(device, broker);
        }
    }
    for (device, broker) in &landed {
        let n: usize = device.trim_start_matches("fleet-").parse().unwrap();
        let expected = if n >= 900 { world.frankfurt.addr } else { world.shanghai.addr };
        assert_eq!(
            *broker,
            expected,
            "{device} (playing {}) went to the wrong region",
            if n >= 900 { "Europe" } else { "Asia" }
        );
    }
}

async fn next(events: &mut mpsc::UnboundedReceiver<DeviceEvent>) -> DeviceEvent {
    tokio::time::timeout(HANG, events.recv())
        .await
        .expect("device event in time")
        .expect("devices running")
}

#[tokio::test]
async fn cross_account_needs_the_destinations_code() {
    let world = world().await;
    let plane = ControlPlane::new(world.registry.registry.clone(), OPERATOR);
    let product: meridian_registry::ids::ProductKey = PRODUCT.parse().unwrap();
    world
        .registry
        .registry
        .create_devices(
            &product,
            vec![meridian_registry::NewDevice { name: "gift-1".parse().unwrap(), secret: None }],
        )
        .await
        .unwrap();
    let (globex, globex_key) = plane
        .create_account(meridian_control::NewAccount {
            id: "globex".parse().unwrap(),
            name: "Globex".into(),
            kind: meridian_registry::model::AccountKind::Individual,
            verified_entity: None,
        })
        .await
        .unwrap();
    let instance = plane
        .create_instance(
            &globex.id,
            meridian_control::NewInstance {
                id: "globex-fra".parse().unwrap(),
                region: "eu-central-1".parse().unwrap(),
                edition: meridian_registry::model::Edition::Public,
                endpoint: meridian_registry::model::MqttEndpoint {
                    host: "127.0.0.1".into(),
                    tcp_port: 1883,
                    tls_port: None,
                },
                lifetime_days: 30,
            },
        )
        .await
        .unwrap();

    let request = |code: &str| {
        serde_json::json!({
            "product": PRODUCT,
            "devices": ["gift-1"],
            "policy": {"kind": "specified", "instance": null},
            "cross_account": {"account": "Globex", "code": code},
        })
    };
    let (status, body) =
        api(&world, "POST", "/v1/distribution-tasks", Some(&request("000000"))).await;
    assert_eq!(status, 422, "{body}");

    // Globex asks for a code and hands it over; the task now goes to its default instance.
    let globex_world = World { api_key: globex_key, ..world };
    let (status, body) = api(&globex_world, "POST", "/v1/verification-codes", None).await;
    assert_eq!(status, 201, "{body}");
    let code = serde_json::from_str::<serde_json::Value>(&body).unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let world = World {
        api_key: plane.create_api_key(&ACCOUNT.parse().unwrap()).await.unwrap(),
        ..globex_world
    };
    let (status, body) = api(&world, "POST", "/v1/distribution-tasks", Some(&request(&code))).await;
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(settled(&world, &id).await["state"], "Distributed");
    let device = world
        .registry
        .registry
        .device(&meridian_registry::ids::DeviceKey {
            product_key: product,
            device_name: "gift-1".parse().unwrap(),
        })
        .await
        .unwrap();
    assert_eq!(
        device.placement,
        meridian_registry::model::Placement::Specified { instance: instance.id }
    );
    // Single use.
    let (status, _) = api(&world, "POST", "/v1/distribution-tasks", Some(&request(&code))).await;
    assert_eq!(status, 422);
}
