//! Devices against the broker: the real SDKs' CONNECT shapes, CONNACK codes, the device ACL,
//! application clients, and the bootstrap notify / force offline.

use std::time::Duration;

use meridian_registry::model::Placement;
use meridian_registry::signature::{SdkShape, sign_connect};
use meridian_tests::cuttable::CuttableFeed;
use meridian_tests::raw::{self, ConnectReturnCode as Code};
use meridian_tests::{APPLICATION, Client, FRANKFURT, PRODUCT, SHANGHAI, TestRegistry};
use rumqttc::{MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const C_SDK_DEVICE: &str = "bootstrap_posix_demo";
const C_SDK_SECRET: &str = "pZeRIoLApMRp2i1LAD4D5FREp3yPVBwy";
const C_SDK_CLIENT_ID: &str = "a13FN5TplKq.bootstrap_posix_demo|timestamp=2524608000000,_ss=1,_v=sdk-c-4.1.0,securemode=3,signmethod=hmacsha256,ext=3,_conn=tls_0|";
const C_SDK_USERNAME: &str = "bootstrap_posix_demo&a13FN5TplKq";
const C_SDK_PASSWORD: &str = "0B8307DDC1BE4049045F3FAC6F9ED3DA0F11C58451F243004E711000144031D1";

fn device_options(
    addr: std::net::SocketAddr,
    shape: SdkShape,
    dn: &str,
    secret: &str,
) -> MqttOptions {
    let signed = sign_connect(shape, PRODUCT, dn, secret, None);
    let mut options = MqttOptions::new(signed.client_id, addr.ip().to_string(), addr.port());
    options.set_credentials(signed.username, signed.password);
    options.set_keep_alive(Duration::from_secs(60));
    options
}

/// The C SDK 4.1.0 CONNECT, byte for byte as captured (PROTOCOL §2), then its immediate PINGREQ.
#[tokio::test]
async fn c_sdk_capture_connects() {
    let registry = TestRegistry::new().await;
    registry.device(C_SDK_DEVICE, C_SDK_SECRET).await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;

    let login = Some((C_SDK_USERNAME, C_SDK_PASSWORD));
    let (mut stream, connack) =
        raw::open(broker.addr, &raw::connect_packet(C_SDK_CLIENT_ID, login, 60)).await;
    assert_eq!(connack, raw::ACCEPTED);
    stream.write_all(&[0xC0, 0x00]).await.unwrap();
    let mut pingresp = [0u8; 2];
    stream.read_exact(&mut pingresp).await.unwrap();
    assert_eq!(pingresp, [0xD0, 0x00]);
}

#[tokio::test]
async fn python_and_node_shapes_connect() {
    let registry = TestRegistry::new().await;
    registry.device("py-device", "python-secret-123").await;
    registry.device("node-device", "node-secret-456").await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    Client::connect(device_options(
        broker.addr,
        SdkShape::Python,
        "py-device",
        "python-secret-123",
    ))
    .await
    .expect("python shape accepted");
    Client::connect(device_options(broker.addr, SdkShape::Node, "node-device", "node-secret-456"))
        .await
        .expect("node shape accepted");
}

#[tokio::test]
async fn refusals_have_spec_codes() {
    let registry = TestRegistry::new().await;
    let device = registry.device(C_SDK_DEVICE, C_SDK_SECRET).await;
    registry.device("disabled-1", "secret-disabled").await;
    let disabled = meridian_registry::ids::DeviceKey {
        product_key: PRODUCT.parse().unwrap(),
        device_name: "disabled-1".parse().unwrap(),
    };
    registry.registry.set_device_enabled(&disabled, false).await.unwrap();
    let shanghai = registry.broker(SHANGHAI, |_| {}).await;
    let frankfurt = registry.broker(FRANKFURT, |_| {}).await;

    let code = |addr, client_id: String, username: String, password: String, keep_alive| async move {
        let connect = raw::connect_packet(&client_id, Some((&username, &password)), keep_alive);
        raw::open(addr, &connect).await.1.code
    };
    let c_sdk = |password: &str| {
        (C_SDK_CLIENT_ID.to_owned(), C_SDK_USERNAME.to_owned(), password.to_owned())
    };

    let (id, user, _) = c_sdk("");
    let wrong = C_SDK_PASSWORD.replace('0', "1");
    assert_eq!(
        code(shanghai.addr, id.clone(), user.clone(), wrong, 60).await,
        Code::BadUserNamePassword,
        "wrong signature"
    );
    let lower = C_SDK_PASSWORD.to_lowercase();
    assert_eq!(
        code(shanghai.addr, id.clone(), user.clone(), lower, 60).await,
        Code::Success,
        "case-insensitive"
    );
    assert_eq!(
        code(frankfurt.addr, id.clone(), user.clone(), C_SDK_PASSWORD.into(), 60).await,
        Code::NotAuthorized,
        "placed elsewhere"
    );
    assert_eq!(
        code(shanghai.addr, id.clone(), user.clone(), C_SDK_PASSWORD.into(), 10).await,
        Code::ServiceUnavailable,
        "keepalive 10"
    );
    let signed = sign_connect(SdkShape::CSdk, PRODUCT, "disabled-1", "secret-disabled", None);
    assert_eq!(
        code(shanghai.addr, signed.client_id, signed.username, signed.password, 60).await,
        Code::NotAuthorized,
        "disabled"
    );
    let unknown = sign_connect(SdkShape::CSdk, PRODUCT, "nobody-here", "whatever", None);
    assert_eq!(
        code(shanghai.addr, unknown.client_id, unknown.username, unknown.password, 60).await,
        Code::BadUserNamePassword,
        "unknown device"
    );

    // Distribute the device to Frankfurt: now Frankfurt accepts and Shanghai refuses.
    registry
        .registry
        .update_device(&device, |d| {
            d.placement = Placement::Specified { instance: FRANKFURT.parse().unwrap() };
            Ok(())
        })
        .await
        .unwrap();
    registry.sync(&shanghai).await;
    registry.sync(&frankfurt).await;
    let moved = code(frankfurt.addr, id.clone(), user.clone(), C_SDK_PASSWORD.into(), 60).await;
    assert_eq!(moved, Code::Success);
    let left = code(shanghai.addr, id, user, C_SDK_PASSWORD.into(), 60).await;
    assert_eq!(left, Code::NotAuthorized);
}

#[tokio::test]
async fn device_acl_and_application_clients() {
    let registry = TestRegistry::new().await;
    registry.device("lamp-1", "lamp-secret-1").await;
    registry.device("lamp-2", "lamp-secret-2").await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;

    let mut app_options = MqttOptions::new("backend", "127.0.0.1", broker.addr.port());
    app_options.set_credentials(APPLICATION.0, APPLICATION.1);
    let (mut app, _) = Client::connect(app_options).await.unwrap();
    app.client.subscribe(format!("/{PRODUCT}/+/user/#"), QoS::AtLeastOnce).await.unwrap();
    app.client.subscribe("/b13FN5TplKq/+/user/#", QoS::AtLeastOnce).await.unwrap();
    let codes = |p: &Packet| match p {
        Packet::SubAck(ack) => Some(ack.return_codes.clone()),
        _ => None,
    };
    let first = app.expect(|p| matches!(p, Packet::SubAck(_))).await;
    assert_eq!(codes(&first).unwrap(), vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    let second = app.expect(|p| matches!(p, Packet::SubAck(_))).await;
    assert_eq!(
        codes(&second).unwrap(),
        vec![SubscribeReasonCode::Failure],
        "another account's product"
    );

    let (mut lamp, _) =
        Client::connect(device_options(broker.addr, SdkShape::Python, "lamp-1", "lamp-secret-1"))
            .await
            .unwrap();
    lamp.client.subscribe(format!("/{PRODUCT}/lamp-1/user/get"), QoS::ExactlyOnce).await.unwrap();
    let own = lamp.expect(|p| matches!(p, Packet::SubAck(_))).await;
    assert_eq!(
        codes(&own).unwrap(),
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
        "QoS capped at 1"
    );
    lamp.client.subscribe(format!("/{PRODUCT}/lamp-2/user/get"), QoS::AtLeastOnce).await.unwrap();
    let other = lamp.expect(|p| matches!(p, Packet::SubAck(_))).await;
    assert_eq!(
        codes(&other).unwrap(),
        vec![SubscribeReasonCode::Failure],
        "another device's topic"
    );

    // A forbidden publish is dropped; the allowed one after it reaches the application.
    lamp.client
        .publish(format!("/{PRODUCT}/lamp-2/user/update"), QoS::AtLeastOnce, false, "spoof")
        .await
        .unwrap();
    lamp.client
        .publish(format!("/{PRODUCT}/lamp-1/user/update"), QoS::AtLeastOnce, false, "real")
        .await
        .unwrap();
    let got = app.publish().await;
    assert_eq!(
        (got.topic, got.payload.as_ref()),
        (format!("/{PRODUCT}/lamp-1/user/update"), &b"real"[..])
    );

    // Downlink from the application to the device.
    app.client
        .publish(format!("/{PRODUCT}/lamp-1/user/get"), QoS::AtLeastOnce, false, "cmd")
        .await
        .unwrap();
    let got = lamp.publish().await;
    assert_eq!(got.payload.as_ref(), b"cmd");
}

/// PROTOCOL §5: the notify reaches a device that never subscribed, its reply is seen, and it is
/// then forced offline.
#[tokio::test]
async fn bootstrap_notify_and_force_offline() {
    let registry = TestRegistry::new().await;
    let device = registry.device("mover-1", "mover-secret-1").await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut mover, _) =
        Client::connect(device_options(broker.addr, SdkShape::CSdk, "mover-1", "mover-secret-1"))
            .await
            .unwrap();

    let handle = broker.daemon.broker.clone();
    let key = device.clone();
    let forced =
        tokio::spawn(async move { handle.force_offline(&key, Duration::from_secs(30)).await });

    let notify = mover.publish().await;
    assert_eq!(notify.topic, format!("/sys/{PRODUCT}/mover-1/thing/bootstrap/notify"));
    let body: serde_json::Value = serde_json::from_slice(&notify.payload).unwrap();
    assert_eq!(body["version"], "1.0");
    assert_eq!(body["method"], "thing.bootstrap.notify");
    assert_eq!(body["params"], serde_json::json!({"cmd": 0}));
    let id = body["id"].as_str().expect("id is a string");
    assert!(!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()));
    let text = String::from_utf8(notify.payload.to_vec()).unwrap();
    assert!(!text.contains(": ") && !text.contains(", "), "compact JSON: {text}");

    let reply = format!(r#"{{"id":"{id}","code":200,"data":{{}}}}"#);
    mover
        .client
        .publish(
            format!("/sys/{PRODUCT}/mover-1/thing/bootstrap/notify_reply"),
            QoS::AtMostOnce,
            false,
            reply,
        )
        .await
        .unwrap();
    let outcome = forced.await.unwrap();
    assert!(outcome.was_online && outcome.replied);
    mover.closed().await;

    let absent = broker.daemon.broker.force_offline(&device, Duration::from_millis(10)).await;
    assert!(!absent.was_online);
}

/// A placement change in the registry reaches the broker through the change feed: the online
/// device is notified and disconnected, and may reconnect only where it is now placed.
#[tokio::test]
async fn placement_change_forces_device_offline() {
    let registry = TestRegistry::new().await;
    let device = registry.device("mover-2", "mover-secret-2").await;
    let shanghai = registry
        .broker(SHANGHAI, |config| config.notify_reply_wait = Duration::from_millis(100))
        .await;
    let frankfurt = registry.broker(FRANKFURT, |_| {}).await;
    let (mut mover, _) =
        Client::connect(device_options(shanghai.addr, SdkShape::Node, "mover-2", "mover-secret-2"))
            .await
            .unwrap();

    registry
        .registry
        .update_device(&device, |d| {
            d.placement = Placement::Specified { instance: FRANKFURT.parse().unwrap() };
            Ok(())
        })
        .await
        .unwrap();
    let notify = mover.publish().await;
    assert!(notify.topic.ends_with("/thing/bootstrap/notify"));
    mover.closed().await;

    let refused =
        Client::connect(device_options(shanghai.addr, SdkShape::Node, "mover-2", "mover-secret-2"))
            .await;
    let error = refused.err().expect("refused at the source");
    assert!(error.contains("NotAuthorized"), "{error}");
    registry.sync(&frankfurt).await;
    Client::connect(device_options(frankfurt.addr, SdkShape::Node, "mover-2", "mover-secret-2"))
        .await
        .expect("accepted at the destination");
}

#[tokio::test]
async fn same_device_twice_newest_wins() {
    let registry = TestRegistry::new().await;
    registry.device("twin-dev", "twin-secret").await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    // Different clientIds (SDK shapes), same device: still one session.
    let (mut first, _) =
        Client::connect(device_options(broker.addr, SdkShape::Python, "twin-dev", "twin-secret"))
            .await
            .unwrap();
    let (_second, _) =
        Client::connect(device_options(broker.addr, SdkShape::CSdk, "twin-dev", "twin-secret"))
            .await
            .unwrap();
    first.closed().await;
}

/// The instance a device is connected to accounts for it: connections, connected time and
/// messages reach the registry's usage record.
#[tokio::test]
async fn usage_is_accounted_per_instance() {
    let registry = TestRegistry::new().await;
    registry.device("counted-1", "counted-secret").await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut device, _) = Client::connect(device_options(
        broker.addr,
        SdkShape::Python,
        "counted-1",
        "counted-secret",
    ))
    .await
    .unwrap();
    for n in 0..3 {
        let topic = format!("/{PRODUCT}/counted-1/user/update");
        device.client.publish(topic, QoS::AtLeastOnce, false, format!("{n}")).await.unwrap();
        device.expect(|p| matches!(p, Packet::PubAck(_))).await;
    }
    broker.daemon.shutdown().await;

    let key = meridian_registry::keys::usage(&SHANGHAI.parse().unwrap());
    let entry = registry.store.get(&key).await.unwrap().expect("usage recorded at shutdown");
    let usage: meridian_registry::model::InstanceUsage =
        meridian_registry::decode(&entry.key, &entry.value).unwrap();
    assert_eq!(usage.connects_total, 1);
    assert_eq!(usage.messages_in, 3);
    assert_eq!(usage.connections, 0, "all closed by the shutdown");
    assert!(
        registry
            .store
            .get(&meridian_registry::keys::usage(&FRANKFURT.parse().unwrap()))
            .await
            .unwrap()
            .is_none()
    );
}

/// A tag edit leaves an online device alone; a new placement that still includes this instance
/// (nearest access) still tells it to re-bootstrap, so it picks its nearest region again.
#[tokio::test]
async fn only_placement_changes_notify_online_devices() {
    let registry = TestRegistry::new().await;
    let device = registry.device("steady-1", "steady-secret").await;
    let broker = registry
        .broker(SHANGHAI, |config| config.notify_reply_wait = Duration::from_millis(50))
        .await;
    let (mut steady, _) =
        Client::connect(device_options(broker.addr, SdkShape::CSdk, "steady-1", "steady-secret"))
            .await
            .unwrap();
    let session = meridian_broker::Broker::device_session_id(&device);

    registry
        .registry
        .update_device(&device, |d| {
            d.tags.insert("floor".into(), "3".into());
            Ok(())
        })
        .await
        .unwrap();
    registry.sync(&broker).await;
    assert!(broker.daemon.broker.router().is_online(&session), "a tag edit kicked the device");

    registry
        .registry
        .update_device(&device, |d| {
            d.placement = Placement::Nearest {
                candidates: vec![
                    meridian_registry::model::PlacementCandidate {
                        region: "cn-shanghai".parse().unwrap(),
                        instance: SHANGHAI.parse().unwrap(),
                    },
                    meridian_registry::model::PlacementCandidate {
                        region: "eu-central-1".parse().unwrap(),
                        instance: FRANKFURT.parse().unwrap(),
                    },
                ],
            };
            Ok(())
        })
        .await
        .unwrap();
    assert!(steady.publish().await.topic.ends_with("/thing/bootstrap/notify"));
    steady.closed().await;
    // Still a candidate here, so it may come straight back.
    Client::connect(device_options(broker.addr, SdkShape::CSdk, "steady-1", "steady-secret"))
        .await
        .unwrap();
}

/// Sessions are keyed inside each kind of client's own namespace: a standard client whose
/// clientId spells a device's session id neither takes over the device's session nor gets its
/// downlink.
#[tokio::test]
async fn a_client_id_cannot_take_over_a_device_session() {
    let registry = TestRegistry::new().await;
    let key = registry.device("owned-dev", "owned-secret").await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut device, _) =
        Client::connect(device_options(broker.addr, SdkShape::CSdk, "owned-dev", "owned-secret"))
            .await
            .unwrap();
    let impostor_id = meridian_broker::Broker::device_session_id(&key);
    let (impostor, session_present) =
        Client::connect(meridian_tests::user_options(broker.addr, &impostor_id)).await.unwrap();
    assert!(!session_present, "the device's session was not handed over");

    // The device is still online: what the standard client publishes on its downlink arrives.
    let downlink = format!("/sys/{PRODUCT}/owned-dev/thing/service/ping");
    impostor.client.publish(&downlink, QoS::AtLeastOnce, false, "still yours").await.unwrap();
    let publish = device.publish().await;
    assert_eq!(publish.topic, downlink);
    assert_eq!(&publish.payload[..], b"still yours");
    assert!(broker.daemon.broker.router().is_online(&impostor_id));
}

/// The implicit `/sys/{pk}/{dn}/#` route carries downlink only (PROTOCOL §3): a device never gets
/// its own uplink echoed, nor another client's message on one of its uplink topics, while
/// every downlink arrives without a SUBSCRIBE. What a device subscribes to explicitly it gets.
#[tokio::test]
async fn a_device_gets_its_downlink_but_never_an_echo_of_its_uplink() {
    let registry = TestRegistry::new().await;
    registry.device("echo-1", "echo-secret-1").await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut device, _) =
        Client::connect(device_options(broker.addr, SdkShape::CSdk, "echo-1", "echo-secret-1"))
            .await
            .unwrap();
    let (mut platform, _) =
        Client::connect(meridian_tests::user_options(broker.addr, "platform")).await.unwrap();
    let sys = format!("/sys/{PRODUCT}/echo-1");
    let uplink = [
        "thing/event/property/post",
        "thing/event/alarm/post",
        "thing/service/property/set_reply",
        "thing/bootstrap/notify_reply",
        "rrpc/response/1001",
    ];
    let downlink = [
        "thing/service/property/set",
        "thing/service/reboot",
        "thing/event/property/post_reply",
        "thing/bootstrap/notify",
        "rrpc/request/1001",
    ];
    // The device's own uplink, acknowledged (so routed) before anything else is sent; and the
    // same topics from another client.
    for topic in uplink {
        let topic = format!("{sys}/{topic}");
        device.client.publish(&topic, QoS::AtLeastOnce, false, "{}").await.unwrap();
        let acked = device.expect(|p| matches!(p, Packet::PubAck(_) | Packet::Publish(_))).await;
        assert!(matches!(acked, Packet::PubAck(_)), "echoed: {acked:?}");
        platform.client.publish(&topic, QoS::AtLeastOnce, false, "spoof").await.unwrap();
        platform.expect(|p| matches!(p, Packet::PubAck(_))).await;
    }
    for topic in downlink {
        let topic = format!("{sys}/{topic}");
        platform.client.publish(&topic, QoS::AtLeastOnce, false, "down").await.unwrap();
    }
    let mut received = Vec::new();
    for _ in downlink {
        received.push(device.publish().await.topic);
    }
    let expected: Vec<String> = downlink.iter().map(|topic| format!("{sys}/{topic}")).collect();
    assert_eq!(received, expected, "the downlink, and nothing echoed before it");

    // Subscribed explicitly, the device gets what it asked for, its own post included.
    let post = format!("{sys}/thing/event/property/post");
    device.client.subscribe(&post, QoS::AtLeastOnce).await.unwrap();
    device.expect(|p| matches!(p, Packet::SubAck(_))).await;
    device.client.publish(&post, QoS::AtLeastOnce, false, "mine").await.unwrap();
    let echoed = device.publish().await;
    assert_eq!((echoed.topic.as_str(), echoed.payload.as_ref()), (post.as_str(), &b"mine"[..]));
}

/// A broker whose feed broke, and that follows again from a fresh snapshot, drops what was
/// deleted meanwhile: the deleted device's credentials are refused (CONNACK 4), like a delete
/// seen on the live feed.
#[tokio::test]
async fn a_device_deleted_while_the_feed_was_broken_is_refused_after_following_again() {
    let registry = TestRegistry::new().await;
    let gone = registry.device("gone-1", "gone-secret-1").await;
    registry.device("kept-1", "kept-secret-1").await;
    let feed = CuttableFeed::new(registry.store.clone());
    let config = meridian_tests::broker_config(SHANGHAI.parse().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let daemon = meridian_broker::daemon::start(
        config,
        feed.clone(),
        registry.sealer.clone(),
        meridian_broker::daemon::Listeners::tcp_only(listener),
    )
    .await
    .unwrap();
    let code = |dn: &str, secret: &str| {
        let signed = sign_connect(SdkShape::CSdk, PRODUCT, dn, secret, None);
        let login = Some((signed.username.as_str(), signed.password.as_str()));
        let connect = raw::connect_packet(&signed.client_id, login, 60);
        async move { raw::open(addr, &connect).await.1.code }
    };
    assert_eq!(code("gone-1", "gone-secret-1").await, Code::Success);

    // The feed breaks; once the broker is retrying, the device is deleted.
    feed.cut();
    feed.retrying().await;
    registry.registry.delete_device(&gone).await.unwrap();
    feed.heal();

    // Following again reaches the delete's revision from a snapshot that no longer has it.
    let revision = registry.store.revision().await.unwrap();
    tokio::time::timeout(meridian_tests::HANG, daemon.broker.view().caught_up(revision))
        .await
        .unwrap();
    assert_eq!(code("gone-1", "gone-secret-1").await, Code::BadUserNamePassword);
    assert_eq!(code("kept-1", "kept-secret-1").await, Code::Success, "the others stay");
    daemon.shutdown().await;
}

/// A CONNECT (keepalive 60 s) logging in as `login`, with a will of `qos` and `retain`.
fn connect_with_will(
    client_id: &str,
    login: (&str, &str),
    topic: &str,
    qos: raw::QoS,
    retain: bool,
) -> Vec<u8> {
    let mut connect = raw::connect(client_id, Some(login), 60);
    connect.last_will = Some(mqttbytes::v4::LastWill::new(topic, "will", qos, retain));
    raw::encode(&raw::Packet::Connect(connect))
}

/// A will is checked at CONNECT as a PUBLISH on its topic would be, for every kind of client.
/// An application client may not leave a (retained) will on another tenant's device downlink,
/// nor a device on another device's topics: CONNACK 5. A will topic that is no valid topic
/// name closes the connection without CONNACK (MQTT-3.1.4-1). A permitted will still works.
#[tokio::test]
async fn wills_are_checked_like_publishes_at_connect() {
    let registry = TestRegistry::new().await;
    registry.device("lamp-1", "lamp-secret-1").await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut watcher, _) =
        Client::connect(meridian_tests::user_options(broker.addr, "watcher")).await.unwrap();
    watcher.client.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    watcher.expect(|p| matches!(p, Packet::SubAck(_))).await;

    // Another account's device downlink (the product is not the application's account's).
    let foreign = "/sys/b13FN5TplKq/victim/thing/service/property/set";
    let refused = [
        connect_with_will("inject", APPLICATION, foreign, raw::QoS::AtLeastOnce, true),
        connect_with_will(
            "forge",
            APPLICATION,
            "/b13FN5TplKq/victim/user/update",
            raw::QoS::AtMostOnce,
            false,
        ),
        {
            let signed = sign_connect(SdkShape::Python, PRODUCT, "lamp-1", "lamp-secret-1", None);
            let other = format!("/sys/{PRODUCT}/lamp-2/thing/event/property/post");
            let login = (signed.username.as_str(), signed.password.as_str());
            connect_with_will(&signed.client_id, login, &other, raw::QoS::AtMostOnce, false)
        },
    ];
    for (n, connect) in refused.iter().enumerate() {
        let (mut stream, ack) = raw::open(broker.addr, connect).await;
        assert_eq!(ack.code, Code::NotAuthorized, "will {n}");
        let mut rest = Vec::new();
        tokio::time::timeout(meridian_tests::HANG, stream.read_to_end(&mut rest))
            .await
            .expect("closed")
            .unwrap();
    }

    // Not topic names: closed, no CONNACK.
    for topic in ["", "/sys/+/victim/thing/service/property/set", "a/#"] {
        let connect =
            connect_with_will("bad", meridian_tests::USER, topic, raw::QoS::AtMostOnce, false);
        let mut stream = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
        assert!(raw::handshake(&mut stream, &connect).await.is_err(), "{topic:?}: no CONNACK");
    }

    // The application's own device: its will is accepted and published on an abrupt close,
    // and nothing the refused clients asked for was ever published or retained.
    let own = format!("/{PRODUCT}/lamp-1/user/get");
    let (stream, ack) = raw::open(
        broker.addr,
        &connect_with_will("backend", APPLICATION, &own, raw::QoS::AtLeastOnce, false),
    )
    .await;
    assert_eq!(ack.code, Code::Success);
    drop(stream);
    let will = watcher.publish().await;
    assert_eq!((will.topic.as_str(), will.payload.as_ref()), (own.as_str(), &b"will"[..]));

    let (mut late, _) =
        Client::connect(meridian_tests::user_options(broker.addr, "late")).await.unwrap();
    late.client.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    late.expect(|p| matches!(p, Packet::SubAck(_))).await;
    late.client.publish("marker", QoS::AtLeastOnce, false, "end").await.unwrap();
    assert_eq!(late.publish().await.topic, "marker", "no retained will was left behind");
}
