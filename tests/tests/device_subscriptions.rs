//! PROTOCOL §2 "Device subscriptions are kept by the platform": the real C SDK connects with clean
//! session and never subscribes again after a reconnect or a re-bootstrap, so a device's own
//! subscriptions are restored on every connect, wherever it is placed, through real MQTT
//! clients against brokers inside the store's process (`meridian up`'s shape; the
//! `meridian broker` process is in `cli/tests/daemons.rs`).

// Test helpers outside `#[test]` functions panic on failure by design.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use meridian_control::ControlPlane;
use meridian_control::distribution::{PolicyRequest, TaskRequest};
use meridian_registry::ids::DeviceKey;
use meridian_registry::signature::{SdkShape, sign_connect};
use meridian_registry::{keys, subscriptions};
use meridian_tests::{
    ACCOUNT, APPLICATION, Client, FRANKFURT, HANG, PRODUCT, SHANGHAI, TestRegistry,
};
use rumqttc::{MqttOptions, Packet, QoS};

const LAMP: &str = "lamp-kept";
const SECRET: &str = "lamp-kept-secret";

fn device_options(addr: SocketAddr, clean_session: bool) -> MqttOptions {
    let signed = sign_connect(SdkShape::CSdk, PRODUCT, LAMP, SECRET, None);
    let mut options = MqttOptions::new(signed.client_id, addr.ip().to_string(), addr.port());
    options.set_credentials(signed.username, signed.password);
    options.set_keep_alive(Duration::from_secs(60));
    options.set_clean_session(clean_session);
    options
}

async fn application(addr: SocketAddr) -> Client {
    let mut options = MqttOptions::new("backend", addr.ip().to_string(), addr.port());
    options.set_credentials(APPLICATION.0, APPLICATION.1);
    Client::connect(options).await.unwrap().0
}

fn topic(leaf: &str) -> String {
    format!("/{PRODUCT}/{LAMP}/user/{leaf}")
}

/// Subscribes and waits for the SUBACK.
async fn subscribe(device: &mut Client, filter: &str) {
    device.client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    device.expect(|p| matches!(p, Packet::SubAck(_))).await;
}

/// Disconnects cleanly and waits until the broker has let the session go.
async fn disconnect(device: &mut Client) {
    device.client.disconnect().await.unwrap();
    device.closed().await;
}

/// Waits until the registry holds exactly `filters` for the device: the write is committed.
async fn committed(registry: &TestRegistry, device: &DeviceKey, filters: &[String]) {
    let key = keys::subscriptions(device);
    tokio::time::timeout(HANG, async {
        loop {
            let entry = registry.store.get(&key).await.unwrap();
            let kept = entry.and_then(|entry| subscriptions::parse(&entry.key, &entry.value));
            let held: Vec<String> =
                kept.map(|k| k.filters.into_keys().collect()).unwrap_or_default();
            if held == filters {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("subscriptions committed");
}

#[tokio::test]
async fn a_clean_session_device_gets_its_subscriptions_back_after_a_reconnect() {
    let registry = TestRegistry::new().await;
    let device = registry.device(LAMP, SECRET).await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let app = application(broker.addr).await;

    let (mut lamp, _) = Client::connect(device_options(broker.addr, true)).await.unwrap();
    subscribe(&mut lamp, &topic("get")).await;
    disconnect(&mut lamp).await;

    // Back with clean session and no SUBSCRIBE, as the C SDK does.
    let (mut lamp, session_present) =
        Client::connect(device_options(broker.addr, true)).await.unwrap();
    assert!(!session_present);
    app.client.publish(topic("get"), QoS::AtLeastOnce, false, "cmd-1").await.unwrap();
    let got = lamp.publish().await;
    assert_eq!((got.topic.as_str(), got.payload.as_ref()), (topic("get").as_str(), &b"cmd-1"[..]));

    // The record reached the registry, and a broker started afterwards restores it too.
    committed(&registry, &device, &[topic("get")]).await;
    disconnect(&mut lamp).await;
    broker.daemon.shutdown().await;
    let restarted = registry.broker(SHANGHAI, |_| {}).await;
    let app = application(restarted.addr).await;
    let (mut lamp, _) = Client::connect(device_options(restarted.addr, true)).await.unwrap();
    app.client.publish(topic("get"), QoS::AtLeastOnce, false, "cmd-2").await.unwrap();
    assert_eq!(lamp.publish().await.payload.as_ref(), b"cmd-2");
}

#[tokio::test]
async fn unsubscribe_is_honoured_across_reconnects() {
    let registry = TestRegistry::new().await;
    let device = registry.device(LAMP, SECRET).await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let app = application(broker.addr).await;

    let (mut lamp, _) = Client::connect(device_options(broker.addr, true)).await.unwrap();
    subscribe(&mut lamp, &topic("get")).await;
    subscribe(&mut lamp, &topic("extra")).await;
    disconnect(&mut lamp).await;

    let (mut lamp, _) = Client::connect(device_options(broker.addr, true)).await.unwrap();
    lamp.client.unsubscribe(topic("extra")).await.unwrap();
    lamp.expect(|p| matches!(p, Packet::UnsubAck(_))).await;
    disconnect(&mut lamp).await;
    committed(&registry, &device, &[topic("get")]).await;

    let (mut lamp, _) = Client::connect(device_options(broker.addr, true)).await.unwrap();
    app.client.publish(topic("extra"), QoS::AtLeastOnce, false, "not-for-you").await.unwrap();
    app.client.publish(topic("get"), QoS::AtLeastOnce, false, "for-you").await.unwrap();
    // Both publishes were routed in order: the first delivery is the second publish.
    let got = lamp.publish().await;
    assert_eq!(
        (got.topic.as_str(), got.payload.as_ref()),
        (topic("get").as_str(), &b"for-you"[..])
    );

    // Unsubscribing from everything deletes the record.
    lamp.client.unsubscribe(topic("get")).await.unwrap();
    lamp.expect(|p| matches!(p, Packet::UnsubAck(_))).await;
    committed(&registry, &device, &[]).await;
}

/// Only what the ACL granted is kept, at the granted QoS: a device's SUBSCRIBE to another
/// device's topic is refused and never restored.
#[tokio::test]
async fn only_granted_filters_are_kept() {
    let registry = TestRegistry::new().await;
    let device = registry.device(LAMP, SECRET).await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut lamp, _) = Client::connect(device_options(broker.addr, true)).await.unwrap();
    lamp.client.subscribe(topic("get"), QoS::ExactlyOnce).await.unwrap();
    lamp.expect(|p| matches!(p, Packet::SubAck(_))).await;
    lamp.client.subscribe(format!("/{PRODUCT}/other/user/get"), QoS::AtLeastOnce).await.unwrap();
    lamp.expect(|p| matches!(p, Packet::SubAck(_))).await;
    committed(&registry, &device, &[topic("get")]).await;
    let entry = registry.store.get(&keys::subscriptions(&device)).await.unwrap().unwrap();
    let kept = subscriptions::parse(&entry.key, &entry.value).unwrap();
    assert_eq!(kept.filters.get(&topic("get")), Some(&1), "QoS 2 asked, 1 granted and kept");
}

/// Distributed through the control plane, the device re-bootstraps and connects at the other
/// instance, without a persistent session there, and its subscription is waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_follow_a_device_distributed_through_the_control_plane() {
    let registry = TestRegistry::new().await;
    let device = registry.device(LAMP, SECRET).await;
    let shanghai = registry.broker(SHANGHAI, |c| c.notify_reply_wait = Duration::ZERO).await;
    let frankfurt = registry.broker(FRANKFURT, |_| {}).await;

    let (mut lamp, _) = Client::connect(device_options(shanghai.addr, true)).await.unwrap();
    subscribe(&mut lamp, &topic("get")).await;
    committed(&registry, &device, &[topic("get")]).await;

    let plane = ControlPlane::new(registry.registry.clone(), "operator-token");
    let request = TaskRequest {
        product: PRODUCT.parse().unwrap(),
        devices: vec![LAMP.into()],
        csv: None,
        policy: PolicyRequest::Specified { instance: Some(FRANKFURT.parse().unwrap()) },
        cross_account: None,
    };
    let task = plane.submit_task(&ACCOUNT.parse().unwrap(), request).await.unwrap();
    plane.drive(&task.id).await.unwrap();

    // Told to re-bootstrap at Shanghai (it never subscribed to that), then forced off.
    let notify = lamp.publish().await;
    assert_eq!(notify.topic, format!("/sys/{PRODUCT}/{LAMP}/thing/bootstrap/notify"));
    lamp.closed().await;

    // At Frankfurt, whatever the clean-session flag: no session there to resume.
    registry.sync(&frankfurt).await;
    let app = application(frankfurt.addr).await;
    let (mut lamp, session_present) =
        Client::connect(device_options(frankfurt.addr, false)).await.unwrap();
    assert!(!session_present);
    app.client.publish(topic("get"), QoS::AtLeastOnce, false, "hello-fra").await.unwrap();
    let got = lamp.publish().await;
    assert_eq!(
        (got.topic.as_str(), got.payload.as_ref()),
        (topic("get").as_str(), &b"hello-fra"[..])
    );
}
