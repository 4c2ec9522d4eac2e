use std::sync::Arc;

use crate::clock::{ManualClock, Timestamp};
use crate::model::*;
use crate::secret::SecretKey;
use crate::store::RedbStore;
use crate::{NewDevice, Registry};

use super::*;

const T0: Timestamp = Timestamp(1_800_000_000_000);
const PK: &str = "a13FN5TplKq";

async fn registry() -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("registry.redb")).unwrap();
    let key = SecretKey::from_hex(&SecretKey::generate_hex().unwrap()).unwrap();
    let registry = Registry::new(Arc::new(store), key, Arc::new(ManualClock::new(T0)));
    let acme: crate::ids::AccountId = "acme".parse().unwrap();
    registry
        .create_account(Account {
            id: acme.clone(),
            name: "Acme".into(),
            kind: AccountKind::Individual,
            verified_entity: None,
            organisation: None,
            organisation_admin: false,
            created_at: T0,
        })
        .await
        .unwrap();
    registry
        .put_region(Region {
            id: "cn-shanghai".parse().unwrap(),
            display_name: "Shanghai".into(),
            latitude: 31.0,
            longitude: 121.0,
            bias_km: 0.0,
            public_endpoint: None,
        })
        .await
        .unwrap();
    registry
        .create_instance(Instance {
            id: "iot-sh-1".parse().unwrap(),
            region: "cn-shanghai".parse().unwrap(),
            owner: acme.clone(),
            edition: Edition::Public,
            endpoint: MqttEndpoint { host: "h".into(), tcp_port: 1883, tls_port: None },
            created_at: T0,
            expires_at: Timestamp(T0.0 + 1),
        })
        .await
        .unwrap();
    registry
        .create_product(Product {
            key: PK.parse().unwrap(),
            name: "Lamp".into(),
            owner: acme,
            home_instance: "iot-sh-1".parse().unwrap(),
            published: false,
            topic_categories: Vec::new(),
            tsl: serde_json::Value::Null,
            parsing_script: None,
            created_at: T0,
        })
        .await
        .unwrap();
    (dir, registry)
}

fn device(name: &str) -> DeviceKey {
    DeviceKey { product_key: PK.parse().unwrap(), device_name: name.parse().unwrap() }
}

fn record(name: &str, filters: &[(&str, u8)]) -> DeviceSubscriptions {
    DeviceSubscriptions {
        device: device(name),
        filters: filters.iter().map(|(f, q)| ((*f).to_owned(), *q)).collect(),
    }
}

async fn create(registry: &Registry, name: &str) {
    let new = NewDevice { name: name.parse().unwrap(), secret: None };
    registry.create_devices(&PK.parse().unwrap(), vec![new]).await.unwrap();
}

async fn kept(registry: &Registry, name: &str) -> Option<DeviceSubscriptions> {
    let key = keys::subscriptions(&device(name));
    let entry = registry.store().get(&key).await.unwrap()?;
    Some(parse(&entry.key, &entry.value).expect("a valid record"))
}

#[tokio::test]
async fn records_of_existing_devices_are_kept_and_replaced_whole() {
    let (_dir, registry) = registry().await;
    create(&registry, "lamp-1").await;
    let store = registry.store().as_ref();
    let first = record("lamp-1", &[("/a13FN5TplKq/lamp-1/user/get", 1)]);
    let written = write(store, vec![first.clone()]).await.unwrap();
    assert_eq!(written.skipped, 0);
    assert_eq!(kept(&registry, "lamp-1").await, Some(first));

    // The last record of a device in one write wins; an empty set deletes the record.
    let second = record("lamp-1", &[("/a13FN5TplKq/lamp-1/user/x", 0)]);
    write(store, vec![record("lamp-1", &[]), second.clone()]).await.unwrap();
    assert_eq!(kept(&registry, "lamp-1").await, Some(second));
    write(store, vec![record("lamp-1", &[])]).await.unwrap();
    assert_eq!(kept(&registry, "lamp-1").await, None);
}

#[tokio::test]
async fn unknown_devices_get_no_record() {
    let (_dir, registry) = registry().await;
    let store = registry.store().as_ref();
    let written =
        write(store, vec![record("ghost", &[("/a13FN5TplKq/ghost/user/get", 1)])]).await.unwrap();
    assert_eq!(written.skipped, 1);
    assert_eq!(kept(&registry, "ghost").await, None);
}

#[tokio::test]
async fn deleting_a_device_deletes_its_record_and_a_namesake_starts_clean() {
    let (_dir, registry) = registry().await;
    create(&registry, "lamp-1").await;
    let store = registry.store().clone();
    write(store.as_ref(), vec![record("lamp-1", &[("/a13FN5TplKq/lamp-1/user/get", 1)])])
        .await
        .unwrap();
    registry.delete_device(&device("lamp-1")).await.unwrap();
    assert_eq!(kept(&registry, "lamp-1").await, None);

    // A stale record (a late write racing the delete) does not outlive a new namesake.
    let stale = record("lamp-1", &[("/a13FN5TplKq/lamp-1/user/get", 1)]);
    store.put(&keys::subscriptions(&device("lamp-1")), encode(&stale).unwrap()).await.unwrap();
    create(&registry, "lamp-1").await;
    assert_eq!(kept(&registry, "lamp-1").await, None);
}

#[tokio::test]
async fn bounds_are_checked_before_anything_is_written() {
    let (_dir, registry) = registry().await;
    create(&registry, "lamp-1").await;
    let store = registry.store().as_ref();
    let long = "x".repeat(MAX_FILTER_BYTES + 1);
    let many: Vec<String> = (0..=MAX_KEPT_FILTERS).map(|n| format!("/a/b/user/{n}")).collect();
    let many: Vec<(&str, u8)> = many.iter().map(|f| (f.as_str(), 0)).collect();
    for bad in [
        record("lamp-1", &[("/a13FN5TplKq/lamp-1/user/get", 2)]),
        record("lamp-1", &[("", 0)]),
        record("lamp-1", &[(long.as_str(), 0)]),
        record("lamp-1", &many),
        record("lamp-1", &[("/a13FN5TplKq/lamp-1/user/\u{1}", 0)]),
        record("lamp-1", &[("/a13FN5TplKq/lamp-1/user/\u{1f}", 0)]),
        record("lamp-1", &[("/a13FN5TplKq/lamp-1/user/\u{7f}", 0)]),
        record("lamp-1", &[("/a13FN5TplKq/lamp-1/user/\n", 0)]),
    ] {
        let good = record("lamp-1", &[("/a13FN5TplKq/lamp-1/user/get", 1)]);
        let error = write(store, vec![good, bad]).await.unwrap_err();
        assert!(matches!(error, SubscriptionError::Invalid { .. }), "{error}");
        assert_eq!(kept(&registry, "lamp-1").await, None);
    }
    let too_many: Vec<_> = (0..=MAX_DEVICES_PER_WRITE).map(|_| record("lamp-1", &[])).collect();
    assert!(matches!(write(store, too_many).await, Err(SubscriptionError::TooManyDevices(_))));
}

#[test]
fn a_record_is_only_read_back_at_its_own_key() {
    let lamp = record("lamp-1", &[("/a13FN5TplKq/lamp-1/user/get", 1)]);
    let value = encode(&lamp).unwrap();
    assert_eq!(parse(&keys::subscriptions(&device("lamp-1")), &value), Some(lamp));
    assert_eq!(parse(&keys::subscriptions(&device("lamp-2")), &value), None);
    assert_eq!(parse(&keys::subscriptions(&device("lamp-1")), b"{"), None);
}
