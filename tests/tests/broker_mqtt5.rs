//! The broker as an MQTT 5.0 broker (PROTOCOL §11), driven by real 5.0 clients: rumqttc's v5
//! client, `mosquitto_pub`/`mosquitto_sub -V mqttv5` and paho-mqtt (Python) with MQTTv5.
//! Before MQTT 5.0 support every one of these got CONNACK 1 to its CONNECT.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use meridian_registry::signature::{SdkShape, sign_connect};
use meridian_tests::{Client, HANG, PRODUCT, SHANGHAI, TestRegistry, USER, user_options};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectReturnCode, Filter, Packet, PubAckReason, PublishProperties,
    SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// A rumqttc v5 client whose event loop runs in a task, forwarding every event.
struct V5 {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, String>>,
}

impl V5 {
    /// Connects and returns the CONNACK, or the refusal as an error string.
    async fn connect(options: MqttOptions) -> Result<(V5, ConnAck), String> {
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, mut events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let stop = event.is_err();
                let event = event.map_err(|error| match error {
                    ConnectionError::ConnectionRefused(code) => format!("refused: {code:?}"),
                    other => other.to_string(),
                });
                if tx.send(event).is_err() || stop {
                    return;
                }
            }
        });
        loop {
            match tokio::time::timeout(HANG, events.recv()).await.expect("CONNACK in time") {
                Some(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                    return Ok((V5 { client, events }, ack));
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
                None => return Err("event loop ended".into()),
            }
        }
    }

    /// Waits for an incoming packet matching `want`.
    async fn expect(&mut self, want: impl Fn(&Packet) -> bool) -> Packet {
        loop {
            match tokio::time::timeout(HANG, self.events.recv()).await.expect("packet in time") {
                Some(Ok(Event::Incoming(packet))) if want(&packet) => return packet,
                Some(Ok(_)) => {}
                other => panic!("connection ended while waiting: {other:?}"),
            }
        }
    }

    /// Waits for the broker's DISCONNECT and returns how the client reported it (rumqttc ends
    /// its event loop with the reason code).
    async fn disconnected(&mut self) -> String {
        loop {
            match tokio::time::timeout(HANG, self.events.recv()).await.expect("close in time") {
                Some(Ok(Event::Incoming(Packet::Disconnect(d)))) => {
                    return format!("{:?}", d.reason_code);
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return error,
                None => return "event loop ended".into(),
            }
        }
    }

    async fn publish(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        match self.expect(|p| matches!(p, Packet::Publish(_))).await {
            Packet::Publish(publish) => publish,
            _ => unreachable!(),
        }
    }

    async fn suback(&mut self) -> Vec<SubscribeReasonCode> {
        match self.expect(|p| matches!(p, Packet::SubAck(_))).await {
            Packet::SubAck(ack) => ack.return_codes,
            _ => unreachable!(),
        }
    }
}

fn v5_options(addr: SocketAddr, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_credentials(USER.0, USER.1);
    options.set_keep_alive(Duration::from_secs(30));
    options
}

fn device_v5_options(addr: SocketAddr, dn: &str, secret: &str) -> MqttOptions {
    let signed = sign_connect(SdkShape::Python, PRODUCT, dn, secret, None);
    let mut options = MqttOptions::new(signed.client_id, addr.ip().to_string(), addr.port());
    options.set_credentials(signed.username, signed.password);
    options.set_keep_alive(Duration::from_secs(60));
    options
}

/// CONNACK over 5.0 says what the broker supports, truthfully.
#[tokio::test]
async fn v5_connack_tells_what_the_broker_supports() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (_client, connack) = V5::connect(v5_options(broker.addr, "v5")).await.unwrap();
    assert_eq!(connack.code, ConnectReturnCode::Success);
    let p = connack.properties.expect("CONNACK properties");
    assert_eq!(p.retain_available, Some(1));
    assert_eq!(p.wildcard_subscription_available, Some(1));
    assert_eq!(p.subscription_identifiers_available, Some(1));
    assert_eq!(p.shared_subscription_available, Some(1));
    assert_eq!(p.topic_alias_max, Some(64));
    assert_eq!(p.receive_max, Some(1024));
    assert_eq!(p.max_packet_size, Some(1024 * 1024));
    assert_eq!(p.max_qos, None, "QoS 2 is available to standard clients");
    assert_eq!(p.assigned_client_identifier, None);
}

/// An empty client id is assigned one, named in CONNACK (MQTT-3.2.2-16), even with clean
/// start 0; an authentication method is refused with 0x8C; a wrong password is 0x86.
#[tokio::test]
async fn v5_assigned_identifier_and_refusals() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let mut options = v5_options(broker.addr, "");
    options.set_clean_start(false);
    let (_client, connack) = V5::connect(options).await.unwrap();
    let assigned = connack.properties.unwrap().assigned_client_identifier;
    assert!(assigned.is_some_and(|id| !id.is_empty()));

    let mut options = v5_options(broker.addr, "auth");
    options.set_authentication_method(Some("SCRAM-SHA-1".into()));
    let refused = V5::connect(options).await.err().unwrap();
    assert!(refused.contains("BadAuthenticationMethod"), "{refused}");

    let mut options = v5_options(broker.addr, "wrong");
    options.set_credentials(USER.0, "nope");
    let refused = V5::connect(options).await.err().unwrap();
    assert!(refused.contains("BadUserNamePassword"), "{refused}");
}

/// User properties (in order), payload format, content type, response topic and correlation
/// data travel with the message; the expiry interval is forwarded.
#[tokio::test]
async fn v5_properties_are_forwarded() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut sub, _) = V5::connect(v5_options(broker.addr, "sub")).await.unwrap();
    sub.client.subscribe("req/#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(sub.suback().await, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    let (publisher, _) = V5::connect(v5_options(broker.addr, "pub")).await.unwrap();
    let properties = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        content_type: Some("application/json".into()),
        response_topic: Some("resp/1".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![
            ("z".into(), "1".into()),
            ("a".into(), "2".into()),
            ("z".into(), "3".into()),
        ],
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("req/x", QoS::AtLeastOnce, false, "{}", properties.clone())
        .await
        .unwrap();
    let got = sub.publish().await;
    assert_eq!(got.topic.as_ref(), b"req/x");
    let p = got.properties.expect("properties forwarded");
    assert_eq!(p.user_properties, properties.user_properties);
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.response_topic.as_deref(), Some("resp/1"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"\x00\x01corr"[..]));
    let expiry = p.message_expiry_interval.expect("expiry forwarded");
    assert!(expiry <= 3600 && expiry > 3000, "{expiry}");
}

/// A 3.1.1 and a 5.0 client exchange messages both ways; the 3.1.1 side gets the message
/// without the properties (it has no form for them).
#[tokio::test]
async fn v3_and_v5_clients_exchange_both_ways() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut v3, _) = Client::connect(user_options(broker.addr, "v3")).await.unwrap();
    v3.client.subscribe("to/v3", rumqttc::QoS::AtLeastOnce).await.unwrap();
    v3.expect(|p| matches!(p, rumqttc::Packet::SubAck(_))).await;
    let (mut v5, _) = V5::connect(v5_options(broker.addr, "v5")).await.unwrap();
    v5.client.subscribe("to/v5", QoS::AtLeastOnce).await.unwrap();
    v5.suback().await;

    let properties = PublishProperties {
        user_properties: vec![("k".into(), "v".into())],
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    v5.client
        .publish_with_properties("to/v3", QoS::AtLeastOnce, false, "from v5", properties)
        .await
        .unwrap();
    let got = v3.publish().await;
    assert_eq!((got.topic.as_str(), got.payload.as_ref()), ("to/v3", &b"from v5"[..]));

    v3.client.publish("to/v5", rumqttc::QoS::AtLeastOnce, false, "from v3").await.unwrap();
    let got = v5.publish().await;
    assert_eq!((got.topic.as_ref(), got.payload.as_ref()), (&b"to/v5"[..], &b"from v3"[..]));
    assert!(got.properties.is_none_or(|p| p.user_properties.is_empty()));
}

/// A session expiry interval keeps the session for a 5.0 client (session present on return,
/// the QoS 1 message queued meanwhile delivered); 0 (the default) keeps none.
#[tokio::test]
async fn v5_session_expiry_decides_persistence() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let mut options = v5_options(broker.addr, "keeper");
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(300));
    let (mut keeper, connack) = V5::connect(options.clone()).await.unwrap();
    assert!(!connack.session_present);
    keeper.client.subscribe("kept/#", QoS::AtLeastOnce).await.unwrap();
    keeper.suback().await;
    keeper.client.disconnect().await.unwrap();
    drop(keeper);

    let (publisher, _) = V5::connect(v5_options(broker.addr, "pub")).await.unwrap();
    publisher.client.publish("kept/x", QoS::AtLeastOnce, false, "while away").await.unwrap();
    // Acknowledged after routing: the keeper's parked session (or its closing inbox) has it.
    let mut publisher = publisher;
    publisher.expect(|p| matches!(p, Packet::PubAck(_))).await;

    let (mut keeper, connack) = V5::connect(options).await.unwrap();
    assert!(connack.session_present, "the session was kept");
    assert_eq!(keeper.publish().await.payload.as_ref(), b"while away");
    keeper.client.disconnect().await.unwrap();
    drop(keeper);

    // Expiry 0 (absent): nothing is kept, whatever clean start says.
    let mut options = v5_options(broker.addr, "forgetful");
    options.set_clean_start(false);
    let (mut forgetful, _) = V5::connect(options.clone()).await.unwrap();
    forgetful.client.subscribe("gone/#", QoS::AtLeastOnce).await.unwrap();
    forgetful.suback().await;
    forgetful.client.disconnect().await.unwrap();
    drop(forgetful);
    let (_again, connack) = V5::connect(options).await.unwrap();
    assert!(!connack.session_present, "expiry 0 keeps no session");
}

/// A forbidden publish gets PUBACK 0x87 and a forbidden subscribe SUBACK 0x87 (PROTOCOL §11).
#[tokio::test]
async fn v5_device_refusals_carry_reason_codes() {
    let registry = TestRegistry::new().await;
    registry.device("dev5", "secret-5").await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut device, connack) =
        V5::connect(device_v5_options(broker.addr, "dev5", "secret-5")).await.unwrap();
    let p = connack.properties.unwrap();
    assert_eq!(p.max_qos, Some(1));
    assert_eq!(p.retain_available, Some(0));
    device
        .client
        .subscribe_many([
            Filter::new(format!("/{PRODUCT}/dev5/user/get"), QoS::AtLeastOnce),
            Filter::new(format!("/{PRODUCT}/other/user/get"), QoS::AtLeastOnce),
        ])
        .await
        .unwrap();
    assert_eq!(
        device.suback().await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce), SubscribeReasonCode::NotAuthorized]
    );
    device
        .client
        .publish(format!("/{PRODUCT}/other/user/update"), QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    let ack = device.expect(|p| matches!(p, Packet::PubAck(_))).await;
    let Packet::PubAck(ack) = ack else { unreachable!() };
    assert_eq!(ack.reason, PubAckReason::NotAuthorized);

    let refused = V5::connect(device_v5_options(broker.addr, "dev5", "wrong")).await.err().unwrap();
    assert!(refused.contains("BadUserNamePassword"), "{refused}");
}

/// A second connection with the same client id takes the session over: the first gets
/// DISCONNECT 0x8E.
#[tokio::test]
async fn v5_takeover_is_disconnect_0x8e() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut first, _) = V5::connect(v5_options(broker.addr, "same")).await.unwrap();
    let (_second, _) = V5::connect(v5_options(broker.addr, "same")).await.unwrap();
    let reason = first.disconnected().await;
    assert!(reason.contains("SessionTakenOver"), "{reason}");
}

/// A topic alias above the advertised maximum is DISCONNECT 0x94; one within it stands for
/// its topic.
#[tokio::test]
async fn v5_topic_aliases_from_the_client() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut sub, _) = V5::connect(v5_options(broker.addr, "sub")).await.unwrap();
    sub.client.subscribe("alias/#", QoS::AtMostOnce).await.unwrap();
    sub.suback().await;
    let (publisher, _) = V5::connect(v5_options(broker.addr, "pub")).await.unwrap();
    let alias = |n| PublishProperties { topic_alias: Some(n), ..Default::default() };
    publisher
        .client
        .publish_with_properties("alias/one", QoS::AtMostOnce, false, "1", alias(7))
        .await
        .unwrap();
    publisher
        .client
        .publish_with_properties("", QoS::AtMostOnce, false, "2", alias(7))
        .await
        .unwrap();
    for payload in ["1", "2"] {
        let got = sub.publish().await;
        assert_eq!(
            (got.topic.as_ref(), got.payload.as_ref()),
            (&b"alias/one"[..], payload.as_bytes())
        );
    }
    drop(publisher);

    // One above the maximum (rumqttc will not send it; raw bytes do): DISCONNECT 0x94.
    let mut stream = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    let mut connect = vec![0x10, 0];
    connect.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 5, 0xC2, 0, 30, 0, 0, 1, b'r']);
    for field in [USER.0, USER.1] {
        connect.extend_from_slice(&(field.len() as u16).to_be_bytes());
        connect.extend_from_slice(field.as_bytes());
    }
    connect[1] = (connect.len() - 2) as u8;
    // PUBLISH QoS 0 "a/b", properties: topic alias (0x23) 65, payload "x".
    let publish = [0x30, 9, 0, 3, b'a', b'/', b'b', 3, 0x23, 0, 65, b'x'];
    stream.write_all(&connect).await.unwrap();
    stream.write_all(&publish).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(HANG, stream.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(got[0], 0x20, "CONNACK first: {got:02x?}");
    let disconnect = &got[2 + usize::from(got[1])..];
    assert_eq!(&disconnect[..1], &[0xE0], "{got:02x?}");
    assert_eq!(disconnect[2], 0x94, "topic alias invalid: {got:02x?}");
}

/// `mosquitto_sub -V mqttv5` receives what `mosquitto_pub -V mqttv5` sends, with its user
/// property and content type.
#[tokio::test]
async fn mosquitto_v5_pub_sub() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let port = broker.addr.port().to_string();
    let common = ["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-u", USER.0, "-P", USER.1];
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(common)
        .args(["-t", "mosq/t", "-q", "1", "-C", "1", "-F", "%t|%p|%C|%P", "-i", "mosq-sub"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub");
    // Until the subscription is in place: a probe sees it through the broker's retained-free
    // path by polling with a v5 subscriber of the same filter is not possible, so publish
    // until the subscriber prints.
    let output = async {
        loop {
            let status = tokio::process::Command::new("mosquitto_pub")
                .args(common)
                .args(["-t", "mosq/t", "-q", "1", "-m", "hello", "-i", "mosq-pub"])
                .args(["-D", "publish", "user-property", "k", "v"])
                .args(["-D", "publish", "content-type", "text/plain"])
                .status()
                .await
                .expect("mosquitto_pub");
            assert!(status.success());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let got = tokio::select! {
        out = sub.wait_with_output() => out.expect("mosquitto_sub output"),
        () = output => unreachable!(),
    };
    let text = String::from_utf8_lossy(&got.stdout);
    assert_eq!(text.trim(), "mosq/t|hello|text/plain|k:v");
}

/// paho-mqtt (Python) with MQTTv5: request/response through the broker, the responder
/// answering on the request's response topic with its correlation data.
#[tokio::test]
async fn paho_v5_request_response() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let script = r#"
import sys, time, paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port = int(sys.argv[1]); user, password = sys.argv[2], sys.argv[3]
def client(name):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, password)
    return c
responder = client("responder")
def on_request(c, userdata, msg):
    props = Properties(PacketTypes.PUBLISH)
    props.CorrelationData = msg.properties.CorrelationData
    c.publish(msg.properties.ResponseTopic, b"pong:" + msg.payload, qos=1, properties=props)
responder.on_message = on_request
responder.connect("127.0.0.1", port)
responder.subscribe("service/ping", qos=1)
responder.loop_start()
requester = client("requester")
answers = []
requester.on_message = lambda c, u, msg: answers.append((msg.payload, msg.properties.CorrelationData))
requester.connect("127.0.0.1", port)
requester.subscribe("reply/me", qos=1)
requester.loop_start()
for _ in range(300):
    if answers: break
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "reply/me"
    props.CorrelationData = b"id-42"
    requester.publish("service/ping", b"ping", qos=1, properties=props)
    time.sleep(0.1)
print(answers[0][0].decode(), answers[0][1].decode())
"#;
    let out = tokio::time::timeout(
        HANG * 2,
        tokio::process::Command::new("python3")
            .args(["-c", script, &broker.addr.port().to_string(), USER.0, USER.1])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("paho in time")
    .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "pong:ping id-42");
}

/// A raw MQTT 5.0 connection (rumqttc's codec, no event loop) for what rumqttc's client does
/// not report: the Server Reference of a CONNACK or DISCONNECT.
struct Raw {
    stream: tokio::net::TcpStream,
    buffer: bytes::BytesMut,
}

impl Raw {
    async fn connect(addr: SocketAddr, client_id: &str, login: (&str, &str)) -> (Raw, ConnAck) {
        let connect = rumqttc::v5::mqttbytes::v5::Connect {
            keep_alive: 60,
            client_id: client_id.into(),
            clean_start: true,
            properties: None,
        };
        Raw::connect_with(addr, connect, None, login).await
    }

    async fn connect_with(
        addr: SocketAddr,
        connect: rumqttc::v5::mqttbytes::v5::Connect,
        will: Option<rumqttc::v5::mqttbytes::v5::LastWill>,
        login: (&str, &str),
    ) -> (Raw, ConnAck) {
        use rumqttc::v5::mqttbytes::v5::Login;
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the broker");
        let mut raw = Raw { stream, buffer: bytes::BytesMut::new() };
        let packet = Packet::Connect(connect, will, Some(Login::new(login.0, login.1)));
        let mut out = bytes::BytesMut::new();
        packet.write(&mut out, None).expect("an encodable CONNECT");
        raw.stream.write_all(&out).await.expect("CONNECT sent");
        match raw.next().await {
            Some(Packet::ConnAck(ack)) => (raw, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// The next packet, or `None` once the broker closed the connection.
    async fn next(&mut self) -> Option<Packet> {
        loop {
            match Packet::read(&mut self.buffer, None) {
                Ok(packet) => return Some(packet),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(error) => panic!("undecodable packet: {error:?}"),
            }
            let read = tokio::time::timeout(HANG, self.stream.read_buf(&mut self.buffer))
                .await
                .expect("a packet in time")
                .expect("a readable socket");
            if read == 0 {
                return None;
            }
        }
    }
}

/// PROTOCOL §11: a 5.0 device online when it is distributed gets the notify, then DISCONNECT
/// 0x9C with a Server Reference naming its new instance; connecting again where it is no longer
/// placed gets CONNACK 0x9C with the reference; at the destination it is accepted.
#[tokio::test]
async fn v5_device_redirected_on_distribution() {
    use meridian_registry::model::Placement;
    let registry = TestRegistry::new().await;
    let device = registry.device("mover5", "mover5-secret").await;
    let shanghai = registry
        .broker(SHANGHAI, |config| config.notify_reply_wait = Duration::from_millis(100))
        .await;
    let frankfurt = registry.broker(meridian_tests::FRANKFURT, |_| {}).await;
    let signed = sign_connect(SdkShape::Python, PRODUCT, "mover5", "mover5-secret", None);
    let login = (signed.username.as_str(), signed.password.as_str());
    let (mut mover, connack) = Raw::connect(shanghai.addr, &signed.client_id, login).await;
    assert_eq!(connack.code, ConnectReturnCode::Success);

    registry
        .registry
        .update_device(&device, |d| {
            d.placement = Placement::Specified { instance: meridian_tests::FRANKFURT.parse()? };
            Ok(())
        })
        .await
        .unwrap();
    let notify = loop {
        match mover.next().await.expect("the notify before the close") {
            Packet::Publish(publish) => break publish,
            _ => continue,
        }
    };
    assert!(notify.topic.ends_with(b"/thing/bootstrap/notify"));
    let disconnect = loop {
        match mover.next().await.expect("a DISCONNECT before the close") {
            Packet::Disconnect(disconnect) => break disconnect,
            _ => continue,
        }
    };
    assert_eq!(
        disconnect.reason_code,
        rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::UseAnotherServer
    );
    // Both test instances' endpoints are 127.0.0.1:1883 (TestRegistry).
    let reference = disconnect.properties.and_then(|p| p.server_reference);
    assert_eq!(reference.as_deref(), Some("127.0.0.1:1883"));

    let (_, refused) = Raw::connect(shanghai.addr, &signed.client_id, login).await;
    assert_eq!(refused.code, ConnectReturnCode::UseAnotherServer);
    let reference = refused.properties.and_then(|p| p.server_reference);
    assert_eq!(reference.as_deref(), Some("127.0.0.1:1883"));

    registry.sync(&frankfurt).await;
    let (_, accepted) = Raw::connect(frankfurt.addr, &signed.client_id, login).await;
    assert_eq!(accepted.code, ConnectReturnCode::Success);
}

/// A 3.1.1 device in the same place still gets CONNACK 5 (the bootstrap flow is the mechanism
/// for 3.1.1, PROTOCOL §11).
#[tokio::test]
async fn v3_device_placed_elsewhere_is_not_authorized() {
    use meridian_registry::model::Placement;
    let registry = TestRegistry::new().await;
    let device = registry.device("stay3", "stay3-secret").await;
    registry
        .registry
        .update_device(&device, |d| {
            d.placement = Placement::Specified { instance: meridian_tests::FRANKFURT.parse()? };
            Ok(())
        })
        .await
        .unwrap();
    let shanghai = registry.broker(SHANGHAI, |_| {}).await;
    let signed = sign_connect(SdkShape::Python, PRODUCT, "stay3", "stay3-secret", None);
    let mut options =
        rumqttc::MqttOptions::new(signed.client_id, "127.0.0.1", shanghai.addr.port());
    options.set_credentials(signed.username, signed.password);
    let refused = Client::connect(options).await.err().unwrap();
    assert!(refused.contains("NotAuthorized"), "{refused}");
}

/// MQTT 5.0 §3.1.3.2.2: the will waits for its delay (here the session outlives the
/// connection), and a session resumed before the delay passes sends none.
#[tokio::test]
async fn v5_will_delay() {
    use rumqttc::v5::mqttbytes::v5::{Connect, ConnectProperties, LastWill, LastWillProperties};
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut watcher, _) = V5::connect(v5_options(broker.addr, "watcher")).await.unwrap();
    watcher.client.subscribe("wills/#", QoS::AtLeastOnce).await.unwrap();
    watcher.suback().await;
    let connect = |id: &str| {
        let mut properties = ConnectProperties::new();
        properties.session_expiry_interval = Some(600);
        Connect {
            keep_alive: 60,
            client_id: id.into(),
            clean_start: false,
            properties: Some(properties),
        }
    };
    let will = |topic: &str, delay| {
        let properties = LastWillProperties {
            delay_interval: Some(delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        };
        LastWill::new(topic, "gone", QoS::AtLeastOnce, false, Some(properties))
    };

    // A delay of an hour: dropped without DISCONNECT, then resumed; nothing is sent meanwhile
    // (without the delay the will would arrive at once, ahead of the marker below).
    let (raw, _) =
        Raw::connect_with(broker.addr, connect("slow"), Some(will("wills/slow", 3600)), USER).await;
    drop(raw);
    let (resumed, connack) = Raw::connect_with(broker.addr, connect("slow"), None, USER).await;
    assert!(connack.session_present);
    // One second: dropped, resumed at once, and the second waited out before the marker
    // (a will sent regardless would arrive first).
    let (raw, _) =
        Raw::connect_with(broker.addr, connect("quick"), Some(will("wills/quick", 1)), USER).await;
    drop(raw);
    let (_quick, connack) = Raw::connect_with(broker.addr, connect("quick"), None, USER).await;
    assert!(connack.session_present);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (marker, _) = V5::connect(v5_options(broker.addr, "marker")).await.unwrap();
    marker.client.publish("wills/marker", QoS::AtLeastOnce, false, "marker").await.unwrap();
    assert_eq!(watcher.publish().await.topic.as_ref(), b"wills/marker");

    // Dropped for good: the will comes once its delay has passed.
    let (raw, _) =
        Raw::connect_with(broker.addr, connect("late"), Some(will("wills/late", 1)), USER).await;
    drop(raw);
    assert_eq!(watcher.publish().await.topic.as_ref(), b"wills/late");
    drop(resumed);
}

/// The broker sets topic aliases toward a client that allows them (MQTT 5.0 §3.3.2.3.4), up to
/// its maximum (rumqttc hands the events over as received, the alias alone where it was).
#[tokio::test]
async fn v5_topic_aliases_to_the_client() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let mut options = v5_options(broker.addr, "aliased");
    options.set_topic_alias_max(Some(2));
    let (mut sub, _) = V5::connect(options).await.unwrap();
    sub.client.subscribe("al/#", QoS::AtLeastOnce).await.unwrap();
    sub.suback().await;
    let (publisher, _) = V5::connect(v5_options(broker.addr, "pub")).await.unwrap();
    for topic in ["al/1", "al/1", "al/2", "al/3", "al/2"] {
        publisher.client.publish(topic, QoS::AtLeastOnce, false, "x").await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        let publish = sub.publish().await;
        let alias = publish.properties.and_then(|p| p.topic_alias);
        got.push((String::from_utf8_lossy(&publish.topic).into_owned(), alias));
    }
    // As sent: a topic the first time with its alias, then the alias alone; the third topic
    // finds no free alias (the client allows two) and goes in full.
    let sent: Vec<(&str, Option<u16>)> = got.iter().map(|(t, a)| (t.as_str(), *a)).collect();
    assert_eq!(
        sent,
        [("al/1", Some(1)), ("", Some(1)), ("al/2", Some(2)), ("al/3", None), ("", Some(2))]
    );
}

/// The broker's Receive Maximum: a client with more QoS 2 publications unreleased gets
/// DISCONNECT 0x93 (raw bytes: clients keep to the maximum themselves).
#[tokio::test]
async fn v5_receive_maximum_exceeded_is_0x93() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |config| config.limits.receive_maximum = 2).await;
    let connect = rumqttc::v5::mqttbytes::v5::Connect {
        keep_alive: 60,
        client_id: "greedy".into(),
        clean_start: true,
        properties: None,
    };
    let (mut raw, connack) = Raw::connect_with(broker.addr, connect, None, USER).await;
    assert_eq!(connack.properties.and_then(|p| p.receive_max), Some(2));
    for pkid in 1..=3u8 {
        // PUBLISH QoS 2 "q", pkid, no properties, payload "x"; never released.
        raw.stream.write_all(&[0x34, 7, 0, 1, b'q', 0, pkid, 0, b'x']).await.unwrap();
    }
    let reason = loop {
        match raw.next().await.expect("DISCONNECT before the close") {
            Packet::Disconnect(disconnect) => break disconnect.reason_code,
            _ => continue,
        }
    };
    assert_eq!(reason, rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::ReceiveMaximumExceeded);
}

/// A packet above the broker's maximum packet size: DISCONNECT 0x95.
#[tokio::test]
async fn v5_packet_too_large_is_0x95() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |config| config.limits.max_packet = 1024).await;
    let connect = rumqttc::v5::mqttbytes::v5::Connect {
        keep_alive: 60,
        client_id: "big".into(),
        clean_start: true,
        properties: None,
    };
    let (mut raw, connack) = Raw::connect_with(broker.addr, connect, None, USER).await;
    assert_eq!(connack.properties.and_then(|p| p.max_packet_size), Some(1024));
    let mut publish = vec![0x30, 0x88, 0x10, 0, 1, b't', 0];
    publish.extend(std::iter::repeat_n(b'x', 2048 - 4));
    raw.stream.write_all(&publish).await.unwrap();
    let reason = loop {
        match raw.next().await.expect("DISCONNECT before the close") {
            Packet::Disconnect(disconnect) => break disconnect.reason_code,
            _ => continue,
        }
    };
    assert_eq!(reason, rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::PacketTooLarge);
}

/// Server Keep Alive: a configured one is told to every 5.0 client; a device's keepalive
/// below 30 s is not refused over 5.0 but clamped (PROTOCOL §11; 3.1.1 refuses it).
#[tokio::test]
async fn v5_server_keep_alive() {
    let registry = TestRegistry::new().await;
    registry.device("sleepy5", "sleepy5-secret").await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let mut options = device_v5_options(broker.addr, "sleepy5", "sleepy5-secret");
    options.set_keep_alive(Duration::from_secs(10));
    let (_device, connack) = V5::connect(options).await.unwrap();
    assert_eq!(connack.code, ConnectReturnCode::Success);
    assert_eq!(connack.properties.and_then(|p| p.server_keep_alive), Some(30));

    let configured =
        registry.broker(SHANGHAI, |config| config.limits.server_keep_alive = Some(90)).await;
    let (_client, connack) = V5::connect(v5_options(configured.addr, "kept")).await.unwrap();
    assert_eq!(connack.properties.and_then(|p| p.server_keep_alive), Some(90));
}

/// Shared subscriptions `$share/{group}/{filter}` (MQTT 5.0 §4.8.2): each message to one
/// member of the group, in turn; an ordinary subscriber of the same filter gets every one, and
/// a 3.1.1 client may be a member too.
#[tokio::test]
async fn v5_shared_subscriptions() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut first, _) = V5::connect(v5_options(broker.addr, "worker-1")).await.unwrap();
    first.client.subscribe("$share/workers/jobs/+", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(first.suback().await, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    let (mut second, _) = Client::connect(user_options(broker.addr, "worker-2")).await.unwrap();
    second.client.subscribe("$share/workers/jobs/+", rumqttc::QoS::AtLeastOnce).await.unwrap();
    second.expect(|p| matches!(p, rumqttc::Packet::SubAck(_))).await;
    let (mut all, _) = V5::connect(v5_options(broker.addr, "audit")).await.unwrap();
    all.client.subscribe("jobs/#", QoS::AtLeastOnce).await.unwrap();
    all.suback().await;

    let (publisher, _) = V5::connect(v5_options(broker.addr, "pub")).await.unwrap();
    for n in 0..4 {
        publisher
            .client
            .publish(format!("jobs/{n}"), QoS::AtLeastOnce, false, "job")
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(String::from_utf8_lossy(&all.publish().await.topic).into_owned());
    }
    assert_eq!(seen, ["jobs/0", "jobs/1", "jobs/2", "jobs/3"]);
    // Two each, and together every job once.
    let mut jobs: Vec<String> = Vec::new();
    for _ in 0..2 {
        jobs.push(String::from_utf8_lossy(&first.publish().await.topic).into_owned());
        jobs.push(second.publish().await.topic);
    }
    jobs.sort();
    assert_eq!(jobs, ["jobs/0", "jobs/1", "jobs/2", "jobs/3"]);
}

/// A 5.0 client silent for 1.5 × its keepalive gets DISCONNECT 0x8D before the close (3.1.1
/// clients just see the close).
#[tokio::test]
async fn v5_keepalive_timeout_is_0x8d() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let connect = rumqttc::v5::mqttbytes::v5::Connect {
        keep_alive: 1,
        client_id: "silent".into(),
        clean_start: true,
        properties: None,
    };
    let (mut raw, _) = Raw::connect_with(broker.addr, connect, None, USER).await;
    let reason = loop {
        match raw.next().await.expect("DISCONNECT before the close") {
            Packet::Disconnect(disconnect) => break disconnect.reason_code,
            _ => continue,
        }
    };
    assert_eq!(reason, rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::KeepAliveTimeout);
    assert!(raw.next().await.is_none(), "then closed");
}

/// A broker shutting down tells each 5.0 client so: DISCONNECT 0x8B.
#[tokio::test]
async fn v5_shutdown_is_0x8b() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let connect = rumqttc::v5::mqttbytes::v5::Connect {
        keep_alive: 60,
        client_id: "bystander".into(),
        clean_start: true,
        properties: None,
    };
    let (mut raw, _) = Raw::connect_with(broker.addr, connect, None, USER).await;
    let stopping = tokio::spawn(broker.daemon.shutdown());
    let reason = loop {
        match raw.next().await.expect("DISCONNECT before the close") {
            Packet::Disconnect(disconnect) => break disconnect.reason_code,
            _ => continue,
        }
    };
    assert_eq!(reason, rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::ServerShuttingDown);
    stopping.await.expect("shut down");
}
