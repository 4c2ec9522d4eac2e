//! The broker against clients it did not grow up with, over every listener: rumqttc and a raw
//! tokio-rustls client over TLS, tokio-tungstenite over WebSocket, the `mosquitto_pub` /
//! `mosquitto_sub` command-line clients, and paho-mqtt from Python (tests/python).
//!
//! The external tools are installed by `.ci/run`. Locally a missing tool skips its test with a
//! note; in CI (`CI` set) a missing tool fails the test, so these cannot silently stop running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use meridian_broker::config::TlsConfig;
use meridian_broker::daemon::Listeners;
use meridian_tests::{
    APPLICATION, Client, HANG, PRODUCT, SHANGHAI, TestBroker, TestRegistry, USER, broker_config,
    user_options,
};
use mqttbytes::v4::{self as mqtt, ConnectReturnCode, Packet as RawPacket, SubscribeReasonCode};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rumqttc::{Packet, QoS, TlsConfiguration, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

// ---------------------------------------------------------------------------------------------
// TLS

#[tokio::test]
async fn rumqttc_over_tls_round_trip() {
    let pki = Pki::new();
    let registry = TestRegistry::new().await;
    let broker = tls_broker(&registry, &pki, false).await;
    let tls = broker.tls_addr.expect("TLS listener");
    let options = |id: &str| {
        let mut options = user_options(tls, id);
        let config = pki.client(&[&TLS13, &TLS12], Identity::None);
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        // rumqttc's own default is 10 KiB each way.
        options.set_max_packet_size(1 << 20, 1 << 20);
        options
    };

    let (mut sub, _) = Client::connect(options("tls-sub")).await.unwrap();
    sub.client.subscribe("secure/#", QoS::ExactlyOnce).await.unwrap();
    sub.expect(|p| matches!(p, Packet::SubAck(_))).await;
    // A plain TCP subscriber on the same broker: one router behind every listener.
    let (mut plain, _) = Client::connect(user_options(broker.addr, "plain-sub")).await.unwrap();
    plain.client.subscribe("secure/#", QoS::AtLeastOnce).await.unwrap();
    plain.expect(|p| matches!(p, Packet::SubAck(_))).await;

    let (publisher, _) = Client::connect(options("tls-pub")).await.unwrap();
    for (topic, qos) in [
        ("secure/0", QoS::AtMostOnce),
        ("secure/1", QoS::AtLeastOnce),
        ("secure/2", QoS::ExactlyOnce),
    ] {
        publisher.client.publish(topic, qos, false, topic.as_bytes().to_vec()).await.unwrap();
        let got = sub.publish().await;
        assert_eq!(
            (got.topic.as_str(), got.qos, got.payload.as_ref()),
            (topic, qos, topic.as_bytes())
        );
        assert_eq!(plain.publish().await.topic, topic);
    }
    // Many TLS records for one packet.
    let big = vec![b't'; 200 * 1024];
    publisher.client.publish("secure/big", QoS::AtLeastOnce, false, big.clone()).await.unwrap();
    let got = sub.publish().await;
    assert!(got.topic == "secure/big" && got.payload == big, "the large message arrived intact");
}

#[tokio::test]
async fn tls_1_2_and_1_3_are_both_served() {
    let pki = Pki::new();
    let registry = TestRegistry::new().await;
    let broker = tls_broker(&registry, &pki, false).await;
    let tls = broker.tls_addr.expect("TLS listener");
    for (version, expected) in
        [(&TLS12, ProtocolVersion::TLSv1_2), (&TLS13, ProtocolVersion::TLSv1_3)]
    {
        let config = pki.client(&[version], Identity::None);
        let (negotiated, connack) = mqtt_over_tls(tls, config).await.expect("TLS session");
        assert_eq!(negotiated, Some(expected));
        assert_eq!(connack, CONNACK_ACCEPTED, "MQTT over {expected:?}");
    }
}

/// rustls implements neither TLS 1.0 nor 1.1 (nor any SSL), so no configuration can enable
/// them; this pins that down from the wire.
#[tokio::test]
async fn tls_1_1_is_refused() {
    let pki = Pki::new();
    let registry = TestRegistry::new().await;
    let broker = tls_broker(&registry, &pki, false).await;
    let tls = broker.tls_addr.expect("TLS listener");

    // A TLS 1.1 ClientHello, byte by byte: no supported_versions extension, so 1.1 is the
    // client's best. It carries signature_algorithms (a 1.2 extension real 1.1 clients omit)
    // only because rustls refuses a hello without it first, with a generic handshake_failure;
    // with it, the refusal is specifically the fatal protocol_version alert.
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend_from_slice(&[0x5a; 32]); // random
    hello.push(0); // no session id
    hello.extend_from_slice(&[0x00, 0x04, 0xc0, 0x14, 0x00, 0x2f]); // two CBC suites of 1.1
    hello.extend_from_slice(&[0x01, 0x00]); // null compression only
    hello.extend_from_slice(&[0x00, 0x0a]); // extensions: 10 bytes
    hello.extend_from_slice(&[0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x01, 0x04, 0x03]);
    let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);

    let mut stream = TcpStream::connect(tls).await.unwrap();
    stream.write_all(&record).await.unwrap();
    let mut answer = Vec::new();
    timeout(HANG, stream.read_to_end(&mut answer)).await.expect("answered").unwrap();
    assert_eq!(answer.first(), Some(&0x15), "an alert record, not a ServerHello: {answer:02x?}");
    assert_eq!(answer.get(3..7), Some(&[0x00, 0x02, 0x02, 70][..]), "fatal protocol_version alert");

    // The same through OpenSSL, with its own floor lowered so it really offers 1.1; 1.2 in the
    // same invocation shows the failure is the version and nothing else.
    if !tool_present("openssl", Command::new("openssl").arg("version")).await {
        return;
    }
    assert!(!openssl_handshake(tls, &pki, "-tls1_1").await, "openssl -tls1_1 must fail");
    assert!(openssl_handshake(tls, &pki, "-tls1_2").await, "openssl -tls1_2 must succeed");
}

#[tokio::test]
async fn client_certificates_are_checked_when_client_ca_is_set() {
    let pki = Pki::new();
    let registry = TestRegistry::new().await;
    let broker = tls_broker(&registry, &pki, true).await;
    let tls = broker.tls_addr.expect("TLS listener");
    let options = |id: &str, identity: Identity| {
        let mut options = user_options(tls, id);
        let config = pki.client(&[&TLS13, &TLS12], identity);
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        options
    };

    // Over TLS 1.3 the client finishes its side of the handshake before the server has judged
    // its certificate, so a refusal may surface as an alert on the first read: either way no
    // CONNACK arrives.
    for version in [&TLS12, &TLS13] {
        for identity in [Identity::None, Identity::Stranger] {
            let refused = mqtt_over_tls(tls, pki.client(&[version], identity)).await;
            assert!(refused.is_err(), "{identity:?} over {version:?}: {refused:?}");
        }
        let (_, connack) = mqtt_over_tls(tls, pki.client(&[version], Identity::Signed))
            .await
            .expect("a CA-signed client certificate is accepted");
        assert_eq!(connack, CONNACK_ACCEPTED);
    }

    let refused = Client::connect(options("no-cert", Identity::None)).await;
    assert!(refused.is_err(), "rumqttc without a certificate: {:?}", refused.map(|_| ()));
    let (mut signed, _) = Client::connect(options("signed", Identity::Signed)).await.unwrap();
    signed.client.subscribe("t", QoS::AtLeastOnce).await.unwrap();
    signed.expect(|p| matches!(p, Packet::SubAck(_))).await;
}

#[tokio::test]
async fn bad_tls_files_are_refused_at_bind_naming_the_file() {
    let pki = Pki::new();
    std::fs::write(pki.path("garbage.pem"), "not PEM at all\n").unwrap();
    let cases = [
        ("missing.pem", "server.key", "missing.pem"),
        ("garbage.pem", "server.key", "garbage.pem"),
        ("server.pem", "server.pem", "server.pem"), // no private key in it
        ("server.pem", "client.key", "client.key"), // a key that is not the certificate's
    ];
    for (cert, key, named) in cases {
        let mut config = broker_config(SHANGHAI.parse().unwrap());
        config.tls = Some(TlsConfig {
            listen: "127.0.0.1:0".into(),
            cert: pki.path(cert),
            key: pki.path(key),
            client_ca: None,
        });
        let Err(error) = Listeners::bind(&config).await else {
            panic!("cert {cert} with key {key} accepted");
        };
        let message = error.to_string();
        assert!(message.contains(path_str(&pki.path(named))), "{cert}/{key}: {message}");
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket

#[tokio::test]
async fn websocket_mqtt_round_trip() {
    let registry = TestRegistry::new().await;
    let broker = websocket_broker(&registry).await;
    let ws_addr = broker.websocket_addr.expect("WebSocket listener");
    let mut tcp_options = user_options(broker.addr, "tcp-sub");
    // rumqttc's own default is 10 KiB each way; the large message below is bigger.
    tcp_options.set_max_packet_size(1 << 20, 1 << 20);
    let (mut tcp_sub, _) = Client::connect(tcp_options).await.unwrap();
    tcp_sub.client.subscribe("ws/#", QoS::AtLeastOnce).await.unwrap();
    tcp_sub.expect(|p| matches!(p, Packet::SubAck(_))).await;

    let (ws, response) = ws_handshake(ws_addr, Some("mqtt")).await.expect("upgrade");
    assert_eq!(response.headers().get(header::SEC_WEBSOCKET_PROTOCOL).unwrap(), "mqtt");
    let mut ws = WsClient { ws, buffer: BytesMut::new() };

    // CONNECT split over two messages: message boundaries must not matter to the broker.
    let connect = connect_bytes("ws-client");
    ws.send(&connect[..5]).await;
    ws.send(&connect[5..]).await;
    assert_eq!(ws.packet().await, connack_accepted());

    // SUBSCRIBE and PINGREQ coalesced in one message.
    let mut subscribe = mqtt::Subscribe::new("ws/#", mqttbytes::QoS::AtLeastOnce);
    subscribe.pkid = 1;
    let mut both = encode(|b| subscribe.write(b));
    both.extend_from_slice(&[0xC0, 0x00]);
    ws.send(&both).await;
    let RawPacket::SubAck(suback) = ws.packet().await else { panic!("SUBACK expected") };
    assert_eq!(suback.return_codes, [SubscribeReasonCode::Success(mqttbytes::QoS::AtLeastOnce)]);
    assert_eq!(ws.packet().await, RawPacket::PingResp);

    // A WebSocket ping is the WebSocket layer's business and never reaches MQTT.
    ws.ws.send(Message::Ping(b"still there?".to_vec().into())).await.unwrap();
    ws.pong().await;

    // QoS 1 from the browser: PUBACK to it, the message to both subscribers.
    let mut publish = mqtt::Publish::new("ws/from-browser", mqttbytes::QoS::AtLeastOnce, "hi");
    publish.pkid = 7;
    ws.send(&encode(|b| publish.write(b))).await;
    let mut got_ack = false;
    let mut got_own = false;
    while !(got_ack && got_own) {
        match ws.packet().await {
            RawPacket::PubAck(ack) => got_ack = ack.pkid == 7,
            RawPacket::Publish(p) if p.topic == "ws/from-browser" && p.payload == "hi" => {
                ws.send(&encode(|b| mqtt::PubAck::new(p.pkid).write(b))).await;
                got_own = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let got = tcp_sub.publish().await;
    assert_eq!((got.topic.as_str(), got.payload.as_ref()), ("ws/from-browser", &b"hi"[..]));

    // And back: a TCP client's publish reaches the browser.
    tcp_sub.client.publish("ws/from-tcp", QoS::AtMostOnce, false, "hello").await.unwrap();
    let RawPacket::Publish(p) = ws.packet().await else { panic!("PUBLISH expected") };
    assert_eq!((p.topic.as_str(), p.payload.as_ref()), ("ws/from-tcp", &b"hello"[..]));

    // A packet far larger than the broker's read chunk, both ways: the broker consumes one
    // binary message over many reads, and writes one back.
    let big = vec![b'w'; 200 * 1024];
    let publish = mqtt::Publish::new("ws/big", mqttbytes::QoS::AtMostOnce, big.clone());
    ws.send(&encode(|b| publish.write(b))).await;
    let RawPacket::Publish(p) = ws.packet().await else { panic!("PUBLISH expected") };
    assert!(p.topic == "ws/big" && p.payload == big, "the large message came back intact");
    let got = loop {
        // tcp_sub also hears its own earlier publish on ws/from-tcp.
        let got = tcp_sub.publish().await;
        if got.topic == "ws/big" {
            break got;
        }
    };
    assert!(got.payload == big, "the large message reached the TCP subscriber intact");

    // DISCONNECT, then the broker closes the WebSocket.
    ws.send(&[0xE0, 0x00]).await;
    let closed = timeout(HANG, async {
        while let Some(Ok(message)) = ws.ws.next().await {
            if message.is_close() {
                break;
            }
        }
    });
    closed.await.expect("closed after DISCONNECT");
}

#[tokio::test]
async fn websocket_requires_the_mqtt_subprotocol_when_any_is_offered() {
    let registry = TestRegistry::new().await;
    let broker = websocket_broker(&registry).await;
    let ws_addr = broker.websocket_addr.expect("WebSocket listener");

    match ws_handshake(ws_addr, Some("wamp.2.json, v12.stomp")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), StatusCode::BAD_REQUEST),
        other => panic!("refusal expected, got {:?}", other.map(|(_, response)| response)),
    }
    // `mqttv3.1` is MQTT 3.1, which the broker does not speak.
    assert!(ws_handshake(ws_addr, Some("mqttv3.1")).await.is_err());

    let (_, response) = ws_handshake(ws_addr, Some("wamp.2.json, mqtt")).await.expect("upgrade");
    assert_eq!(response.headers().get(header::SEC_WEBSOCKET_PROTOCOL).unwrap(), "mqtt");

    // Offering nothing is accepted (older JavaScript clients) and MQTT works.
    let (ws, response) = ws_handshake(ws_addr, None).await.expect("upgrade");
    assert!(response.headers().get(header::SEC_WEBSOCKET_PROTOCOL).is_none());
    let mut ws = WsClient { ws, buffer: BytesMut::new() };
    ws.send(&connect_bytes("no-protocol")).await;
    assert_eq!(ws.packet().await, connack_accepted());
}

// ---------------------------------------------------------------------------------------------
// mosquitto_pub / mosquitto_sub

#[tokio::test]
async fn mosquitto_qos_0_1_2() {
    if !mosquitto_present().await {
        return;
    }
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let mut sub = MosquittoSub::start(broker.addr, &["-t", "x/#", "-q", "2"]).await;
    for qos in ["0", "1", "2"] {
        let topic = format!("x/qos{qos}");
        mosquitto_pub(broker.addr, &["-t", &topic, "-q", qos, "-m", "hello there"]).await;
        assert_eq!(sub.message().await, format!("{qos} 0 {topic} hello there"));
    }
}

#[tokio::test]
async fn mosquitto_retained() {
    if !mosquitto_present().await {
        return;
    }
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    // mosquitto_pub exits after the PUBACK, which the broker sends once it has routed.
    mosquitto_pub(broker.addr, &["-t", "x/lamp", "-q", "1", "-r", "-m", "on"]).await;
    let mut late = MosquittoSub::start(broker.addr, &["-t", "x/#", "-q", "1"]).await;
    assert_eq!(late.message().await, "1 1 x/lamp on", "replayed with the retain flag");
    // An empty retained payload clears it.
    mosquitto_pub(broker.addr, &["-t", "x/lamp", "-q", "1", "-r", "-n"]).await;
    let mut later = MosquittoSub::start(broker.addr, &["-t", "x/#", "-q", "1"]).await;
    mosquitto_pub(broker.addr, &["-t", "x/marker", "-q", "1", "-m", "end"]).await;
    assert_eq!(later.message().await, "1 0 x/marker end", "nothing retained any more");
}

#[tokio::test]
async fn mosquitto_will_on_sigkill() {
    if !mosquitto_present().await {
        return;
    }
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let mut watcher = MosquittoSub::start(broker.addr, &["-t", "wills/#", "-q", "1"]).await;
    let will = ["--will-topic", "wills/mortal", "--will-payload", "gone", "--will-qos", "1"];
    let mut mortal = MosquittoSub::start(broker.addr, &[&["-t", "any"][..], &will].concat()).await;
    // SIGKILL: no DISCONNECT, the kernel just closes the socket.
    mortal.child.kill().await.expect("SIGKILL");
    assert_eq!(watcher.message().await, "1 0 wills/mortal gone");
}

#[tokio::test]
async fn mosquitto_persistent_session() {
    if !mosquitto_present().await {
        return;
    }
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let session = ["-c", "-i", "keeper", "-q", "1", "-t", "jobs/#"];
    // Subscribe with a persistent session, then leave cleanly (-E: exit once subscribed).
    let output =
        run(Command::new("mosquitto_sub").args(login(broker.addr)).args(session).arg("-E")).await;
    assert!(output.status.success(), "mosquitto_sub -E: {}", describe(&output));

    mosquitto_pub(broker.addr, &["-t", "jobs/1", "-q", "1", "-m", "queued while away"]).await;
    let mut back = MosquittoSub::start(broker.addr, &session).await;
    assert_eq!(back.message().await, "1 0 jobs/1 queued while away");
}

#[tokio::test]
async fn mosquitto_over_tls_with_client_certificates() {
    if !mosquitto_present().await {
        return;
    }
    let pki = Pki::new();
    let registry = TestRegistry::new().await;
    let broker = tls_broker(&registry, &pki, true).await;
    let tls = broker.tls_addr.expect("TLS listener");
    let ca = pki.path("ca.pem");
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let trusted = ["--cafile", path_str(&ca), "--cert", path_str(&cert), "--key", path_str(&key)];

    let mut sub =
        MosquittoSub::start(tls, &[&trusted[..], &["-t", "tls/#", "-q", "1"]].concat()).await;
    mosquitto_pub(tls, &[&trusted[..], &["-t", "tls/a", "-q", "1", "-m", "sealed"]].concat()).await;
    assert_eq!(sub.message().await, "1 0 tls/a sealed");

    // The CA alone is not enough when the broker wants a client certificate.
    let output = run(Command::new("mosquitto_pub").args(login(tls)).args([
        "--cafile",
        path_str(&ca),
        "-t",
        "tls/b",
        "-m",
        "x",
    ]))
    .await;
    assert!(!output.status.success(), "mosquitto_pub without a certificate: {}", describe(&output));
}

/// MQTT 5.0 over TLS (PROTOCOL §11): `mosquitto_sub`/`mosquitto_pub -V mqttv5` with client
/// certificates. Before 5.0 support the broker answered their CONNECT with CONNACK 1.
#[tokio::test]
async fn mosquitto_v5_over_tls() {
    if !mosquitto_present().await {
        return;
    }
    let pki = Pki::new();
    let registry = TestRegistry::new().await;
    let broker = tls_broker(&registry, &pki, true).await;
    let tls = broker.tls_addr.expect("TLS listener");
    let ca = pki.path("ca.pem");
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let trusted = [
        "-V",
        "mqttv5",
        "--cafile",
        path_str(&ca),
        "--cert",
        path_str(&cert),
        "--key",
        path_str(&key),
    ];
    let mut sub =
        MosquittoSub::start(tls, &[&trusted[..], &["-t", "tls5/#", "-q", "1"]].concat()).await;
    mosquitto_pub(tls, &[&trusted[..], &["-t", "tls5/a", "-q", "1", "-m", "sealed"]].concat())
        .await;
    assert_eq!(sub.message().await, "1 0 tls5/a sealed");
}

/// MQTT 5.0 over WebSocket: a 5.0 CONNECT gets a 5.0 CONNACK (reason 0 and its properties),
/// and the connection serves 5.0 packets.
#[tokio::test]
async fn websocket_v5_connect() {
    let registry = TestRegistry::new().await;
    let broker = websocket_broker(&registry).await;
    let ws_addr = broker.websocket_addr.expect("WebSocket listener");
    let (ws, _) = ws_handshake(ws_addr, Some("mqtt")).await.expect("upgrade");
    let mut ws = WsClient { ws, buffer: BytesMut::new() };
    let mut connect = vec![0x10, 0, 0, 4, b'M', b'Q', b'T', b'T', 5, 0xC2, 0, 30, 0, 0, 2];
    connect.extend_from_slice(b"w5");
    for field in [USER.0, USER.1] {
        connect.extend_from_slice(&u16::try_from(field.len()).expect("short").to_be_bytes());
        connect.extend_from_slice(field.as_bytes());
    }
    connect[1] = u8::try_from(connect.len() - 2).expect("short");
    ws.send(&connect).await;
    let mut got = Vec::new();
    while got.len() < 2 || got.len() < 2 + usize::from(got[1]) {
        match ws.next().await {
            Message::Binary(data) => got.extend_from_slice(&data),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected WebSocket message {other:?}"),
        }
    }
    assert_eq!(got[0], 0x20, "CONNACK: {got:02x?}");
    assert!(got[1] > 2, "a 5.0 CONNACK carries properties: {got:02x?}");
    assert_eq!(got[3], 0x00, "reason: success");
    ws.send(&[0xC0, 0x00]).await;
    let mut pong = Vec::new();
    while pong.len() < 2 {
        if let Message::Binary(data) = ws.next().await {
            pong.extend_from_slice(&data);
        }
    }
    assert_eq!(&pong[..2], &[0xD0, 0x00]);
}

// ---------------------------------------------------------------------------------------------
// paho-mqtt (Python)

#[tokio::test]
async fn paho_standard_client() {
    if !paho_present().await {
        return;
    }
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    paho(&["standard", &broker.addr.port().to_string(), USER.0, USER.1]).await;
}

#[tokio::test]
async fn paho_device_with_the_python_sdk_signature() {
    if !paho_present().await {
        return;
    }
    let registry = TestRegistry::new().await;
    let (name, secret) = ("paho-lamp", "paho-secret-0123456789");
    registry.device(name, secret).await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;

    let mut app_options = user_options(broker.addr, "acme-app");
    app_options.set_credentials(APPLICATION.0, APPLICATION.1);
    let (mut app, _) = Client::connect(app_options).await.unwrap();
    app.client.subscribe(format!("/{PRODUCT}/+/user/#"), QoS::AtLeastOnce).await.unwrap();
    app.expect(|p| matches!(p, Packet::SubAck(_))).await;

    paho(&["device", &broker.addr.port().to_string(), PRODUCT, name, secret]).await;
    let got = app.publish().await;
    assert_eq!(got.topic, format!("/{PRODUCT}/{name}/user/update"));
    assert_eq!(got.payload.as_ref(), br#"{"power":"on"}"#);
}

// ---------------------------------------------------------------------------------------------
// Helpers: brokers and PKI

const CONNACK_ACCEPTED: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

async fn tls_broker(registry: &TestRegistry, pki: &Pki, client_ca: bool) -> TestBroker {
    let tls = TlsConfig {
        listen: "127.0.0.1:0".into(),
        cert: pki.path("server.pem"),
        key: pki.path("server.key"),
        client_ca: client_ca.then(|| pki.path("ca.pem")),
    };
    registry.broker(SHANGHAI, |config| config.tls = Some(tls)).await
}

async fn websocket_broker(registry: &TestRegistry) -> TestBroker {
    registry.broker(SHANGHAI, |config| config.websocket_listen = Some("127.0.0.1:0".into())).await
}

/// Which certificate a TLS test client presents.
#[derive(Clone, Copy, Debug)]
enum Identity {
    None,
    /// Signed by the broker's client CA.
    Signed,
    /// Self-signed, unknown to the broker.
    Stranger,
}

/// A throwaway PKI made at test time: a CA, a server certificate for 127.0.0.1 and a client
/// certificate it signed, written as PEM files for the broker and mosquitto, and kept as DER for
/// rustls clients.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    client: (CertificateDer<'static>, KeyPair),
    stranger: (CertificateDer<'static>, KeyPair),
}

impl Pki {
    fn new() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "Meridian test CA");
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>, purpose: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.distinguished_name.push(DnType::CommonName, "meridian test");
            params.extended_key_usages.push(purpose);
            let key = KeyPair::generate().expect("leaf key");
            (params.signed_by(&key, &issuer).expect("leaf certificate"), key)
        };
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let (server, server_key) = leaf(names, ExtendedKeyUsagePurpose::ServerAuth);
        let (client, client_key) = leaf(Vec::new(), ExtendedKeyUsagePurpose::ClientAuth);

        let mut stranger_params =
            CertificateParams::new(Vec::<String>::new()).expect("stranger params");
        stranger_params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        let stranger_key = KeyPair::generate().expect("stranger key");
        let stranger = stranger_params.self_signed(&stranger_key).expect("stranger certificate");

        let dir = tempfile::tempdir().expect("tempdir");
        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("server.pem", server.pem()),
            ("server.key", server_key.serialize_pem()),
            ("client.pem", client.pem()),
            ("client.key", client_key.serialize_pem()),
        ] {
            std::fs::write(dir.path().join(name), pem).expect("write PEM");
        }
        Pki {
            dir,
            ca: ca.der().clone(),
            client: (client.der().clone(), client_key),
            stranger: (stranger.der().clone(), stranger_key),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A rustls client configuration trusting the test CA, limited to `versions`.
    fn client(
        &self,
        versions: &[&'static SupportedProtocolVersion],
        identity: Identity,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).expect("CA as trust anchor");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(roots);
        let present = |(cert, key): &(CertificateDer<'static>, KeyPair)| {
            let key = PrivateKeyDer::try_from(key.serialize_der()).expect("PKCS#8 key");
            (vec![cert.clone()], key)
        };
        let config = match identity {
            Identity::None => builder.with_no_client_auth(),
            Identity::Signed => {
                let (chain, key) = present(&self.client);
                builder.with_client_auth_cert(chain, key).expect("client identity")
            }
            Identity::Stranger => {
                let (chain, key) = present(&self.stranger);
                builder.with_client_auth_cert(chain, key).expect("client identity")
            }
        };
        Arc::new(config)
    }
}

/// Opens a TLS session, sends the standard user's CONNECT and reads the 4-byte answer. Returns
/// the negotiated version with it; any TLS refusal is an error.
async fn mqtt_over_tls(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<(Option<ProtocolVersion>, [u8; 4])> {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        let server = ServerName::IpAddress(addr.ip().into());
        let mut tls = TlsConnector::from(config).connect(server, tcp).await?;
        let version = tls.get_ref().1.protocol_version();
        tls.write_all(&connect_bytes("tls-raw")).await?;
        let mut connack = [0u8; 4];
        tls.read_exact(&mut connack).await?;
        Ok((version, connack))
    };
    timeout(HANG, attempt).await.expect("TLS attempt ended")
}

/// Whether `openssl s_client` completes a handshake with the given version flag.
async fn openssl_handshake(addr: SocketAddr, pki: &Pki, version: &str) -> bool {
    let output = run(Command::new("openssl").args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-CAfile",
        path_str(&pki.path("ca.pem")),
        // OpenSSL 3 refuses 1.1 at its default security level; lower it so the attempt is real.
        "-cipher",
        "DEFAULT:@SECLEVEL=0",
        version,
    ]))
    .await;
    output.status.success()
}

// ---------------------------------------------------------------------------------------------
// Helpers: raw MQTT over WebSocket

/// The standard user's CONNECT, encoded by mqttbytes (the broker's answers are checked as
/// decoded packets).
fn connect_bytes(client_id: &str) -> Vec<u8> {
    let mut connect = mqtt::Connect::new(client_id);
    connect.keep_alive = 60;
    connect.set_login(USER.0, USER.1);
    encode(|b| connect.write(b))
}

fn connack_accepted() -> RawPacket {
    RawPacket::ConnAck(mqtt::ConnAck::new(ConnectReturnCode::Success, false))
}

fn encode(write: impl FnOnce(&mut BytesMut) -> Result<usize, mqttbytes::Error>) -> Vec<u8> {
    let mut buffer = BytesMut::new();
    write(&mut buffer).expect("encode");
    buffer.to_vec()
}

async fn ws_handshake(
    addr: SocketAddr,
    protocols: Option<&str>,
) -> Result<
    (WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::handshake::client::Response),
    WsError,
> {
    let mut request = format!("ws://{addr}/mqtt").into_client_request()?;
    if let Some(protocols) = protocols {
        let value = HeaderValue::from_str(protocols).expect("header value");
        request.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    let tcp = TcpStream::connect(addr).await?;
    timeout(HANG, tokio_tungstenite::client_async(request, tcp)).await.expect("handshake ended")
}

/// A browser-like MQTT client: packets in binary messages, read back however they are split.
struct WsClient {
    ws: WebSocketStream<TcpStream>,
    buffer: BytesMut,
}

impl WsClient {
    async fn send(&mut self, bytes: &[u8]) {
        self.ws.send(Message::Binary(bytes.to_vec().into())).await.expect("send");
    }

    async fn packet(&mut self) -> RawPacket {
        loop {
            match mqtt::read(&mut self.buffer, 1 << 20) {
                Ok(packet) => return packet,
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(error) => panic!("malformed packet from the broker: {error:?}"),
            }
            match self.next().await {
                Message::Binary(data) => self.buffer.extend_from_slice(&data),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected WebSocket message {other:?}"),
            }
        }
    }

    /// Waits for a Pong, keeping any MQTT bytes that arrive meanwhile.
    async fn pong(&mut self) {
        loop {
            match self.next().await {
                Message::Pong(_) => return,
                Message::Binary(data) => self.buffer.extend_from_slice(&data),
                other => panic!("unexpected WebSocket message {other:?}"),
            }
        }
    }

    async fn next(&mut self) -> Message {
        match timeout(HANG, self.ws.next()).await.expect("WebSocket message in time") {
            Some(Ok(message)) => message,
            other => panic!("WebSocket ended: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers: external tools

/// Whether a tool the test needs is here. Outside CI a missing tool skips the test with a
/// note; in CI, which installs every tool, it is a failure.
async fn tool_present(name: &str, probe: &mut Command) -> bool {
    let present = probe
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .is_ok_and(|status| status.success());
    if present {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{name} is missing in CI; .ci/run is supposed to install it"
    );
    eprintln!("SKIPPED: {name} is not installed here (CI installs it; see .ci/run)");
    false
}

async fn mosquitto_present() -> bool {
    // `--help` exits 1, so probe with `sh` whether both clients are on PATH.
    let probe = "command -v mosquitto_sub && command -v mosquitto_pub";
    tool_present("mosquitto-clients", Command::new("sh").args(["-c", probe])).await
}

async fn paho_present() -> bool {
    let mut probe = Command::new("python3");
    probe.args(["-c", "import paho.mqtt.client"]);
    tool_present("python3 with paho-mqtt", &mut probe).await
}

/// Runs a command to completion, bounded by the hang guard.
async fn run(command: &mut Command) -> std::process::Output {
    let output = command.stdin(Stdio::null()).kill_on_drop(true).output();
    timeout(HANG, output).await.expect("command ended").expect("command ran")
}

fn describe(output: &std::process::Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Host, port and the standard user's login for the mosquitto clients.
fn login(addr: SocketAddr) -> Vec<String> {
    let port = addr.port().to_string();
    let host = addr.ip().to_string();
    ["-h", &host, "-p", &port, "-u", USER.0, "-P", USER.1, "-V", "mqttv311"]
        .map(str::to_owned)
        .to_vec()
}

async fn mosquitto_pub(addr: SocketAddr, args: &[&str]) {
    let output = run(Command::new("mosquitto_pub").args(login(addr)).args(args)).await;
    assert!(output.status.success(), "mosquitto_pub {args:?}: {}", describe(&output));
}

/// `mosquitto_sub` as a child process, killed when dropped. It runs with `-d` so its log shows
/// when the broker acknowledged the subscription, and prints messages as
/// `MSG {qos} {retain} {topic} {payload}`.
struct MosquittoSub {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every line so far, for messages that arrive before the SUBACK log line (queued or
    /// retained ones) and for failure reports.
    seen: Vec<String>,
    /// How many of `seen` were examined for messages.
    consumed: usize,
}

impl MosquittoSub {
    /// Starts it and waits until the broker acknowledged its subscriptions, so anything
    /// published afterwards must reach it.
    async fn start(addr: SocketAddr, args: &[&str]) -> MosquittoSub {
        // stdbuf: mosquitto_sub's debug log goes through stdio, block-buffered into a pipe.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-d", "-F", "MSG %q %r %t %p"])
            .args(login(addr))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mosquitto_sub");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut sub = MosquittoSub {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
            consumed: 0,
        };
        while !sub.seen.iter().any(|line| line.contains("received SUBACK")) {
            sub.read_line().await;
        }
        sub
    }

    /// The next message printed, without the `MSG ` prefix.
    async fn message(&mut self) -> String {
        loop {
            while self.consumed < self.seen.len() {
                let line = &self.seen[self.consumed];
                self.consumed += 1;
                if let Some(message) = line.strip_prefix("MSG ") {
                    return message.to_owned();
                }
            }
            self.read_line().await;
        }
    }

    async fn read_line(&mut self) {
        match timeout(HANG, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => self.seen.push(line),
            other => {
                panic!("mosquitto_sub ended or hung ({other:?}); output:\n{}", self.seen.join("\n"))
            }
        }
    }
}

/// Runs tests/python/paho_roundtrip.py and fails with its output unless it exits 0.
async fn paho(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/paho_roundtrip.py");
    // The script bounds each of its waits; this only guards against the interpreter hanging.
    let output = Command::new("python3").arg(&script).args(args).kill_on_drop(true).output();
    let output = timeout(HANG * 4, output).await.expect("paho script ended").expect("python3 ran");
    assert!(output.status.success(), "paho script {args:?} failed: {}", describe(&output));
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
}
