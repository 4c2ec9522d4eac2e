use std::sync::Arc;

use crate::clock::{ManualClock, Timestamp};
use crate::ids::{AccountId, DeviceKey, ProductKey};
use crate::model::*;
use crate::secret::{DeviceSecret, SecretKey};
use crate::store::{RedbStore, Store};

use super::*;

const T0: Timestamp = Timestamp(1_800_000_000_000);

struct Fixture {
    _dir: tempfile::TempDir,
    registry: Registry,
    store: RedbStore,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("registry.redb")).unwrap();
    let key = SecretKey::from_hex(&SecretKey::generate_hex().unwrap()).unwrap();
    let registry = Registry::new(Arc::new(store.clone()), key, Arc::new(ManualClock::new(T0)));
    registry.create_account(account("acme")).await.unwrap();
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
    registry.create_instance(instance("iot-sh-1", "acme")).await.unwrap();
    registry.create_product(product("a13FN5TplKq", "acme", "iot-sh-1")).await.unwrap();
    Fixture { _dir: dir, registry, store }
}

fn account(id: &str) -> Account {
    Account {
        id: id.parse().unwrap(),
        name: id.to_uppercase(),
        kind: AccountKind::Individual,
        verified_entity: None,
        organisation: None,
        organisation_admin: false,
        created_at: T0,
    }
}

fn instance(id: &str, owner: &str) -> Instance {
    Instance {
        id: id.parse().unwrap(),
        region: "cn-shanghai".parse().unwrap(),
        owner: owner.parse().unwrap(),
        edition: Edition::Public,
        endpoint: MqttEndpoint {
            host: "sh.example.net".into(),
            tcp_port: 1883,
            tls_port: Some(8883),
        },
        created_at: T0,
        expires_at: Timestamp(T0.0 + 86_400_000 * 365),
    }
}

fn product(key: &str, owner: &str, home: &str) -> Product {
    Product {
        key: key.parse().unwrap(),
        name: "Lamp".into(),
        owner: owner.parse().unwrap(),
        home_instance: home.parse().unwrap(),
        published: false,
        topic_categories: vec![],
        tsl: serde_json::json!({"properties": []}),
        parsing_script: None,
        created_at: T0,
    }
}

fn pk() -> ProductKey {
    "a13FN5TplKq".parse().unwrap()
}

fn new_device(name: &str) -> NewDevice {
    NewDevice { name: name.parse().unwrap(), secret: None }
}

#[tokio::test]
async fn creates_devices_with_sealed_secrets() {
    let f = fixture().await;
    let secret = DeviceSecret::new("pZeRIoLApMRp2i1LAD4D5FREp3yPVBwy").unwrap();
    let created = f
        .registry
        .create_devices(
            &pk(),
            vec![
                NewDevice {
                    name: "bootstrap_posix_demo".parse().unwrap(),
                    secret: Some(secret.clone()),
                },
                new_device("lamp-2"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(created.len(), 2);
    assert_eq!(created[0].device.status, DeviceStatus::Inactive);
    assert_eq!(created[0].device.placement, Placement::Home);
    assert_eq!(created[0].device.owner, "acme".parse::<AccountId>().unwrap());
    assert_eq!(created[1].secret.expose().len(), 32);

    let stored = f.registry.device(&created[0].device.key).await.unwrap();
    assert_eq!(f.registry.device_secret(&stored).unwrap(), secret);

    // The secret is nowhere in the store in plain text.
    let snapshot = f.store.scan_prefix("").await.unwrap();
    for entry in snapshot.entries {
        let text = String::from_utf8_lossy(&entry.value);
        assert!(!text.contains(secret.expose()), "plain secret at {}", entry.key);
        assert!(!text.contains(created[1].secret.expose()), "plain secret at {}", entry.key);
    }
}

#[tokio::test]
async fn device_name_is_unique_per_product_and_batches_are_all_or_none() {
    let f = fixture().await;
    f.registry.create_devices(&pk(), vec![new_device("taken")]).await.unwrap();

    let clash =
        f.registry.create_devices(&pk(), vec![new_device("fresh"), new_device("taken")]).await;
    assert!(
        matches!(clash, Err(RegistryError::AlreadyExists { kind: "device", ref id }) if id.ends_with("/taken")),
        "{clash:?}"
    );
    let fresh = DeviceKey { product_key: pk(), device_name: "fresh".parse().unwrap() };
    assert!(matches!(f.registry.device(&fresh).await, Err(RegistryError::NotFound { .. })));

    let repeated =
        f.registry.create_devices(&pk(), vec![new_device("twin"), new_device("twin")]).await;
    assert!(matches!(repeated, Err(RegistryError::AlreadyExists { .. })), "{repeated:?}");

    // The same name in another product is fine.
    f.registry.create_product(product("b13FN5TplKq", "acme", "iot-sh-1")).await.unwrap();
    let other: ProductKey = "b13FN5TplKq".parse().unwrap();
    f.registry.create_devices(&other, vec![new_device("taken")]).await.unwrap();
    assert_eq!(f.registry.devices(&pk()).await.unwrap().len(), 1);
    assert_eq!(f.registry.devices(&other).await.unwrap().len(), 1);
}

#[tokio::test]
async fn rejects_bad_requests_with_named_errors() {
    let f = fixture().await;
    let none = f.registry.create_devices(&pk(), vec![]).await;
    assert!(matches!(none, Err(RegistryError::Rule(_))));

    let missing: ProductKey = "zzzzzzzzzzz".parse().unwrap();
    let orphan = f.registry.create_devices(&missing, vec![new_device("dev1")]).await;
    assert!(matches!(orphan, Err(RegistryError::NotFound { kind: "product", .. })));

    let dup = f.registry.create_account(account("acme")).await;
    assert!(matches!(dup, Err(RegistryError::AlreadyExists { kind: "account", .. })));

    let mut nowhere = instance("iot-x", "acme");
    nowhere.region = "mars-1".parse().unwrap();
    let no_region = f.registry.create_instance(nowhere).await;
    assert!(matches!(no_region, Err(RegistryError::NotFound { kind: "region", .. })));

    // A product may only live in an instance its owner owns.
    f.registry.create_account(account("other")).await.unwrap();
    let foreign = f.registry.create_product(product("c13FN5TplKq", "other", "iot-sh-1")).await;
    assert!(matches!(foreign, Err(RegistryError::NotFound { kind: "instance", .. })));

    let bad_region = Region {
        id: "eu-north-9".parse().unwrap(),
        display_name: "Nowhere".into(),
        latitude: 123.0,
        longitude: 0.0,
        bias_km: 0.0,
        public_endpoint: None,
    };
    assert!(matches!(f.registry.put_region(bad_region).await, Err(RegistryError::Rule(_))));

    // Endpoints devices are sent to must survive the SDK's key search.
    for host in ["", "a\"b", "two words", "-x", &"a".repeat(254)] {
        let mut quoted = instance("iot-q", "acme");
        quoted.endpoint.host = host.to_owned();
        let refused = f.registry.create_instance(quoted).await;
        assert!(matches!(refused, Err(RegistryError::Rule(_))), "{host:?}");
    }
    let mut portless = instance("iot-q", "acme");
    portless.endpoint.tcp_port = 0;
    assert!(matches!(f.registry.create_instance(portless).await, Err(RegistryError::Rule(_))));
    let mut region = f.registry.region(&"cn-shanghai".parse().unwrap()).await.unwrap();
    region.public_endpoint =
        Some(MqttEndpoint { host: "bad host".into(), tcp_port: 1883, tls_port: None });
    assert!(matches!(f.registry.put_region(region).await, Err(RegistryError::Rule(_))));
}

#[tokio::test]
async fn updates_are_compare_and_swap() {
    let f = fixture().await;
    let updated = f
        .registry
        .update_product(&pk(), |p| {
            p.published = true;
            p.owner = "someone-else".parse().unwrap();
        })
        .await
        .unwrap();
    assert!(updated.published);
    assert_eq!(updated.owner.as_str(), "acme", "owner cannot change by edit");

    let created = f.registry.create_devices(&pk(), vec![new_device("dev1")]).await.unwrap();
    let key = created[0].device.key.clone();
    let disabled = f.registry.set_device_enabled(&key, false).await.unwrap();
    assert_eq!(disabled.status, DeviceStatus::Disabled);
    let enabled = f.registry.set_device_enabled(&key, true).await.unwrap();
    assert_eq!(enabled.status, DeviceStatus::Offline);

    // An edit racing with another writer is refused rather than lost.
    let result = f
        .registry
        .update_device(&key, |device| {
            let registry = f.registry.clone();
            let key = device.key.clone();
            let handle = tokio::runtime::Handle::current();
            std::thread::spawn(move || {
                handle.block_on(registry.set_device_enabled(&key, false)).unwrap();
            })
            .join()
            .unwrap();
            device.tags.insert("floor".into(), "3".into());
            Ok(())
        })
        .await;
    assert!(matches!(result, Err(RegistryError::Concurrent { kind: "device", .. })), "{result:?}");
    let device = f.registry.device(&key).await.unwrap();
    assert_eq!(device.status, DeviceStatus::Disabled);
    assert!(device.tags.is_empty());

    f.registry.delete_device(&key).await.unwrap();
    assert!(matches!(f.registry.delete_device(&key).await, Err(RegistryError::NotFound { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_data_belongs_to_device_and_instance() {
    let f = fixture().await;
    let created = f.registry.create_devices(&pk(), vec![new_device("dev1")]).await.unwrap();
    let key = created[0].device.key.clone();
    let here = "iot-sh-1".parse().unwrap();
    let there = "iot-fra-1".parse().unwrap();

    let data = RuntimeData { messages_in: 42, ..Default::default() };
    f.registry.put_runtime(&here, &key, &data).await.unwrap();
    assert_eq!(f.registry.runtime(&here, &key).await.unwrap().messages_in, 42);
    assert_eq!(f.registry.runtime(&there, &key).await.unwrap(), RuntimeData::default());
}

#[test]
fn placement_allows_only_its_instances() {
    let home: InstanceId = "iot-sh-1".parse().unwrap();
    let fra: InstanceId = "iot-fra-1".parse().unwrap();
    assert!(Placement::Home.allows(&home, &home));
    assert!(!Placement::Home.allows(&fra, &home));
    let specified = Placement::Specified { instance: fra.clone() };
    assert!(specified.allows(&fra, &home) && !specified.allows(&home, &home));
    let nearest = Placement::Nearest {
        candidates: vec![PlacementCandidate {
            region: "eu-central-1".parse().unwrap(),
            instance: fra.clone(),
        }],
    };
    assert!(nearest.allows(&fra, &home) && !nearest.allows(&home, &home));
}
