//! Device transfer end to end (PROTOCOL §6): a real broker follows the registry while the control
//! plane transfers a connected device from `acme` to `bravo`. The device stays connected
//! through it; its messages then reach bravo's application client and no longer acme's,
//! though acme's wildcard subscription is still in place; and only bravo may send it downlink.

// Test helpers outside `#[test]` functions panic on failure by design.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use meridian_broker::Broker;
use meridian_broker::config::ApplicationConfig;
use meridian_control::{ControlPlane, DeviceTransferRequest, NewAccount};
use meridian_registry::ids::DeviceKey;
use meridian_registry::model::AccountKind;
use meridian_registry::signature::{SdkShape, sign_connect};
use meridian_tests::{ACCOUNT, APPLICATION, Client, PRODUCT, SHANGHAI, TestBroker, TestRegistry};
use rumqttc::{Event, MqttOptions, Packet, QoS, SubscribeReasonCode};

/// The destination account and its application client.
const BRAVO: &str = "bravo";
const BRAVO_APP: (&str, &str) = ("bravo-app", "bravo-app-password");

fn device_options(addr: std::net::SocketAddr, dn: &str, secret: &str) -> MqttOptions {
    let signed = sign_connect(SdkShape::CSdk, PRODUCT, dn, secret, None);
    let mut options = MqttOptions::new(signed.client_id, addr.ip().to_string(), addr.port());
    options.set_credentials(signed.username, signed.password);
    options.set_keep_alive(Duration::from_secs(60));
    options
}

fn app_options(
    addr: std::net::SocketAddr,
    id: &str,
    (user, password): (&str, &str),
) -> MqttOptions {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_credentials(user, password);
    options.set_keep_alive(Duration::from_secs(60));
    options
}

/// Subscribes and returns the SUBACK's code.
async fn subscribe(client: &mut Client, filter: &str) -> SubscribeReasonCode {
    client.client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    match client.expect(|p| matches!(p, Packet::SubAck(_))).await {
        Packet::SubAck(ack) => ack.return_codes[0],
        _ => unreachable!(),
    }
}

/// Publishes at QoS 1 and waits for the PUBACK: the connection is alive and the broker took it.
async fn publish(client: &mut Client, topic: &str, payload: &str) {
    client
        .client
        .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
        .await
        .unwrap();
    client.expect(|p| matches!(p, Packet::PubAck(_))).await;
}

/// The test registry (acme, its published product) with devices `lamp-0001` and `lamp-0002`,
/// account `bravo`, and a control plane over it.
async fn world() -> (TestRegistry, ControlPlane) {
    let registry = TestRegistry::new().await;
    registry.device("lamp-0001", "lamp-secret-0001").await;
    registry.device("lamp-0002", "lamp-secret-0002").await;
    let plane = ControlPlane::new(registry.registry.clone(), "operator-token");
    let bravo = NewAccount {
        id: BRAVO.parse().unwrap(),
        name: "Bravo".into(),
        kind: AccountKind::Individual,
        verified_entity: None,
    };
    plane.create_account(bravo).await.unwrap();
    (registry, plane)
}

/// acme transfers `lamp-0001` to bravo, which accepts.
/// The Shanghai broker, with an application credential for bravo as well as acme's.
async fn broker_with_bravo(registry: &TestRegistry) -> TestBroker {
    registry
        .broker(SHANGHAI, |config| {
            config.applications.insert(
                BRAVO_APP.0.to_owned(),
                ApplicationConfig { password: BRAVO_APP.1.into(), account: BRAVO.parse().unwrap() },
            );
        })
        .await
}

async fn transfer_lamp(plane: &ControlPlane) {
    let acme = ACCOUNT.parse().unwrap();
    plane.allow_transfers(&acme).await.unwrap();
    let request = DeviceTransferRequest {
        product: PRODUCT.parse().unwrap(),
        destination: BRAVO.into(),
        devices: vec!["lamp-0001".into()],
        csv: None,
        with_tags: false,
    };
    let order = plane.create_device_transfer(&acme, request).await.unwrap();
    plane.accept_device_transfer(&BRAVO.parse().unwrap(), &order.id).await.unwrap();
}

/// The next message's (topic, payload).
async fn next(client: &mut Client) -> (String, String) {
    let message = client.publish().await;
    (message.topic, String::from_utf8(message.payload.to_vec()).unwrap())
}

#[tokio::test]
async fn a_connected_device_stays_connected_and_follows_its_new_owner() {
    let (registry, plane) = world().await;
    let broker = broker_with_bravo(&registry).await;

    let (mut lamp, _) =
        Client::connect(device_options(broker.addr, "lamp-0001", "lamp-secret-0001"))
            .await
            .unwrap();
    let (mut other_lamp, _) =
        Client::connect(device_options(broker.addr, "lamp-0002", "lamp-secret-0002"))
            .await
            .unwrap();
    let (mut acme_app, _) =
        Client::connect(app_options(broker.addr, "acme-backend", APPLICATION)).await.unwrap();
    let (mut bravo_app, _) =
        Client::connect(app_options(broker.addr, "bravo-backend", BRAVO_APP)).await.unwrap();

    let uplink = format!("/{PRODUCT}/lamp-0001/user/data");
    let other_uplink = format!("/{PRODUCT}/lamp-0002/user/data");
    let downlink = format!("/sys/{PRODUCT}/lamp-0001/thing/service/property/set");
    let ok = SubscribeReasonCode::Success(QoS::AtLeastOnce);

    // Before: acme's application client has the whole product; bravo's has nothing.
    assert_eq!(subscribe(&mut acme_app, &format!("/{PRODUCT}/+/user/#")).await, ok);
    assert_eq!(
        subscribe(&mut bravo_app, &format!("/{PRODUCT}/lamp-0001/user/#")).await,
        SubscribeReasonCode::Failure
    );
    publish(&mut lamp, &uplink, "before").await;
    assert_eq!(next(&mut acme_app).await, (uplink.clone(), "before".into()));

    // The transfer, through the control plane: acme offers, bravo accepts.
    transfer_lamp(&plane).await;
    registry.sync(&broker).await;

    // After: bravo's application client reaches the device by name and gets its messages...
    assert_eq!(subscribe(&mut bravo_app, &format!("/{PRODUCT}/lamp-0001/user/#")).await, ok);
    assert_eq!(
        subscribe(&mut bravo_app, &format!("/{PRODUCT}/+/user/#")).await,
        SubscribeReasonCode::Failure,
        "the product itself stays acme's"
    );
    // ...over the device's unchanged connection (the PUBACK proves it is still the same one).
    publish(&mut lamp, &uplink, "after").await;
    assert_eq!(next(&mut bravo_app).await, (uplink.clone(), "after".into()));
    // acme's wildcard subscription still stands, but the transferred device's message was not
    // delivered to it: the next message it gets is from the device acme kept.
    publish(&mut other_lamp, &other_uplink, "still acme's").await;
    assert_eq!(next(&mut acme_app).await, (other_uplink.clone(), "still acme's".into()));
    assert_eq!(
        subscribe(&mut acme_app, &format!("/{PRODUCT}/lamp-0001/user/#")).await,
        SubscribeReasonCode::Failure
    );

    // Downlink: acme's is dropped, bravo's arrives; the device never subscribed (PROTOCOL §3).
    acme_app
        .client
        .publish(&downlink, QoS::AtMostOnce, false, b"from acme".to_vec())
        .await
        .unwrap();
    publish(&mut bravo_app, &downlink, "from bravo").await;
    assert_eq!(next(&mut lamp).await, (downlink.clone(), "from bravo".into()));

    // Through all of it, the device was never told to re-bootstrap nor disconnected.
    while let Ok(event) = lamp.events.try_recv() {
        match event {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                panic!("unexpected message to the device: {}", publish.topic)
            }
            Ok(Event::Incoming(Packet::Disconnect)) | Err(_) => panic!("device disconnected"),
            Ok(_) => {}
        }
    }
    let key = DeviceKey {
        product_key: PRODUCT.parse().unwrap(),
        device_name: "lamp-0001".parse().unwrap(),
    };
    assert!(broker.daemon.broker.router().is_online(&Broker::device_session_id(&key)));
}

#[tokio::test]
async fn a_persistent_application_session_gets_nothing_queued_for_a_lost_device() {
    let (registry, plane) = world().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut lamp, _) =
        Client::connect(device_options(broker.addr, "lamp-0001", "lamp-secret-0001"))
            .await
            .unwrap();
    let (mut other_lamp, _) =
        Client::connect(device_options(broker.addr, "lamp-0002", "lamp-secret-0002"))
            .await
            .unwrap();

    // acme's backend keeps a persistent session and goes away.
    let mut options = app_options(broker.addr, "acme-backend", APPLICATION);
    options.set_clean_session(false);
    let (mut acme_app, _) = Client::connect(options.clone()).await.unwrap();
    let ok = SubscribeReasonCode::Success(QoS::AtLeastOnce);
    assert_eq!(subscribe(&mut acme_app, &format!("/{PRODUCT}/+/user/#")).await, ok);
    acme_app.client.disconnect().await.unwrap();
    let parked = async {
        while broker.daemon.broker.router().is_online(&format!("app:{ACCOUNT}:acme-backend")) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(meridian_tests::HANG, parked).await.unwrap();

    // Meanwhile lamp-0001 goes to bravo, and both lamps report.
    transfer_lamp(&plane).await;
    registry.sync(&broker).await;
    publish(&mut lamp, &format!("/{PRODUCT}/lamp-0001/user/data"), "no longer acme's").await;
    let other_uplink = format!("/{PRODUCT}/lamp-0002/user/data");
    publish(&mut other_lamp, &other_uplink, "still acme's").await;

    // Back, acme's backend gets what its account may still receive, and only that.
    let (mut acme_app, session_present) = Client::connect(options).await.unwrap();
    assert!(session_present);
    assert_eq!(next(&mut acme_app).await, (other_uplink, "still acme's".into()));
}

/// PROTOCOL §6: the source loses all access. After the transfer, acme's application client no
/// longer reaches the device through `/broadcast/{pk}/...` (its other devices still get it),
/// and what acme retained on the device's topics before is gone: neither delivered to the
/// device when it (re)subscribes or reconnects, nor kept in the broker.
#[tokio::test]
async fn the_former_owner_reaches_a_transferred_device_neither_by_broadcast_nor_retained() {
    let (registry, plane) = world().await;
    let broker = broker_with_bravo(&registry).await;
    let lamp_options = device_options(broker.addr, "lamp-0001", "lamp-secret-0001");
    let (mut lamp, _) = Client::connect(lamp_options.clone()).await.unwrap();
    let (mut other_lamp, _) =
        Client::connect(device_options(broker.addr, "lamp-0002", "lamp-secret-0002"))
            .await
            .unwrap();
    let (mut acme_app, _) =
        Client::connect(app_options(broker.addr, "acme-backend", APPLICATION)).await.unwrap();
    let (mut bravo_app, _) =
        Client::connect(app_options(broker.addr, "bravo-backend", BRAVO_APP)).await.unwrap();
    let ok = SubscribeReasonCode::Success(QoS::AtLeastOnce);
    let broadcast = format!("/broadcast/{PRODUCT}/#");
    assert_eq!(subscribe(&mut lamp, &broadcast).await, ok);
    assert_eq!(subscribe(&mut other_lamp, &broadcast).await, ok);

    // Before: acme retains a downlink for each lamp and a product-wide broadcast.
    let set = |dn: &str| format!("/sys/{PRODUCT}/{dn}/thing/service/property/set");
    let config = format!("/broadcast/{PRODUCT}/config");
    for (topic, payload) in [
        (set("lamp-0001"), "acme's order"),
        (set("lamp-0002"), "acme's order"),
        (config.clone(), "acme's config"),
    ] {
        acme_app.client.publish(&topic, QoS::AtLeastOnce, true, payload).await.unwrap();
        acme_app.expect(|p| matches!(p, Packet::PubAck(_))).await;
    }
    assert_eq!(next(&mut lamp).await, (set("lamp-0001"), "acme's order".into()));
    assert_eq!(next(&mut lamp).await, (config.clone(), "acme's config".into()));
    assert_eq!(next(&mut other_lamp).await, (set("lamp-0002"), "acme's order".into()));
    assert_eq!(next(&mut other_lamp).await, (config.clone(), "acme's config".into()));
    assert_eq!(broker.daemon.broker.router().retained_count(), 3);

    transfer_lamp(&plane).await;
    registry.sync(&broker).await;

    // acme's broadcast reaches the lamp it kept, not the one it gave away: the transferred
    // lamp's next message is bravo's.
    let all = format!("/broadcast/{PRODUCT}/all");
    publish(&mut acme_app, &all, "acme to all").await;
    assert_eq!(next(&mut other_lamp).await, (all.clone(), "acme to all".into()));
    publish(&mut bravo_app, &set("lamp-0001"), "bravo's order").await;
    assert_eq!(next(&mut lamp).await, (set("lamp-0001"), "bravo's order".into()));

    // acme's retained downlink on the transferred lamp is dropped from the store (its other
    // lamp's and the product's broadcast stay, for the devices acme still owns).
    let forgotten = async {
        while broker.daemon.broker.router().retained_count() > 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(meridian_tests::HANG, forgotten).await.unwrap();
    assert_eq!(broker.daemon.broker.router().retained_count(), 2);

    // Reconnected and resubscribed, the lamp gets none of acme's retained messages: the first
    // thing it receives is bravo's.
    drop(lamp);
    let (mut lamp, _) = Client::connect(lamp_options).await.unwrap();
    assert_eq!(subscribe(&mut lamp, &broadcast).await, ok);
    publish(&mut bravo_app, &set("lamp-0001"), "bravo again").await;
    assert_eq!(next(&mut lamp).await, (set("lamp-0001"), "bravo again".into()));
}

/// The new owner's retained downlink on a transferred device stays its own, also once it
/// deletes the device and the former owner's rights over the product name it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_owners_retained_messages_never_reach_the_former_owner() {
    let (registry, plane) = world().await;
    let broker = broker_with_bravo(&registry).await;
    transfer_lamp(&plane).await;
    registry.sync(&broker).await;

    // bravo, the new owner, retains a downlink for its lamp; acme's other lamp gets one too.
    let (mut bravo_app, _) =
        Client::connect(app_options(broker.addr, "bravo-backend", BRAVO_APP)).await.unwrap();
    let (mut acme_app, _) =
        Client::connect(app_options(broker.addr, "acme-backend", APPLICATION)).await.unwrap();
    let user_get = |dn: &str| format!("/{PRODUCT}/{dn}/user/get");
    bravo_app
        .client
        .publish(user_get("lamp-0001"), QoS::AtLeastOnce, true, "bravo's secret")
        .await
        .unwrap();
    bravo_app.expect(|p| matches!(p, Packet::PubAck(_))).await;
    acme_app
        .client
        .publish(user_get("lamp-0002"), QoS::AtLeastOnce, true, "acme's own")
        .await
        .unwrap();
    acme_app.expect(|p| matches!(p, Packet::PubAck(_))).await;

    // bravo deletes the lamp; acme, who owns the product, subscribes to every lamp's topics.
    let view = plane.product_views(&BRAVO.parse().unwrap()).await.unwrap().remove(0);
    plane
        .delete_view_device(&BRAVO.parse().unwrap(), &view.id, &"lamp-0001".parse().unwrap())
        .await
        .unwrap();
    registry.sync(&broker).await;
    let ok = SubscribeReasonCode::Success(QoS::AtLeastOnce);
    assert_eq!(subscribe(&mut acme_app, &format!("/{PRODUCT}/+/user/#")).await, ok);

    // acme gets its own retained message and nothing of bravo's, then a live marker.
    assert_eq!(next(&mut acme_app).await, (user_get("lamp-0002"), "acme's own".into()));
    publish(&mut acme_app, &user_get("lamp-0002"), "marker").await;
    assert_eq!(next(&mut acme_app).await, (user_get("lamp-0002"), "marker".into()));
}

/// What an application client retained on a device's topics goes with the device: deleted
/// through the control plane, the device's retained downlink is dropped from the broker (the
/// other device's stays), and a new device of the same name connects to none of it.
#[tokio::test]
async fn what_an_application_retained_on_a_deleted_device_is_gone() {
    let (registry, plane) = world().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut acme_app, _) =
        Client::connect(app_options(broker.addr, "acme-backend", APPLICATION)).await.unwrap();
    let set = |dn: &str| format!("/sys/{PRODUCT}/{dn}/thing/service/property/set");
    for dn in ["lamp-0001", "lamp-0002"] {
        acme_app.client.publish(set(dn), QoS::AtLeastOnce, true, "acme's order").await.unwrap();
        acme_app.expect(|p| matches!(p, Packet::PubAck(_))).await;
    }
    assert_eq!(broker.daemon.broker.router().retained_count(), 2);

    let key = DeviceKey {
        product_key: PRODUCT.parse().unwrap(),
        device_name: "lamp-0001".parse().unwrap(),
    };
    plane.delete_device(&ACCOUNT.parse().unwrap(), &key).await.unwrap();
    registry.sync(&broker).await;
    let forgotten = async {
        while broker.daemon.broker.router().retained_count() > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(meridian_tests::HANG, forgotten).await.unwrap();
    assert_eq!(broker.daemon.broker.router().retained_count(), 1);

    // A namesake device connects to none of it: the first message it gets is a fresh one.
    registry.device("lamp-0001", "lamp-secret-0001").await;
    registry.sync(&broker).await;
    let (mut lamp, _) =
        Client::connect(device_options(broker.addr, "lamp-0001", "lamp-secret-0001"))
            .await
            .unwrap();
    publish(&mut acme_app, &set("lamp-0001"), "fresh").await;
    assert_eq!(next(&mut lamp).await, (set("lamp-0001"), "fresh".into()));
}
