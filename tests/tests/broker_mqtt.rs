//! The broker as a standard MQTT 3.1.1 broker, driven by rumqttc and by raw bytes.

use std::time::Duration;

use meridian_tests::raw::{self, ConnectReturnCode as Code};
use meridian_tests::{Client, FRANKFURT, HANG, SHANGHAI, TestRegistry, USER, user_options};
use rumqttc::{LastWill, MqttOptions, Packet, QoS};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn qos_0_1_2_and_wildcards() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;

    let (mut sub, _) = Client::connect(user_options(broker.addr, "sub")).await.unwrap();
    sub.client.subscribe("plant/+/temp", QoS::ExactlyOnce).await.unwrap();
    sub.client.subscribe("alarm/#", QoS::AtLeastOnce).await.unwrap();
    sub.expect(|p| matches!(p, Packet::SubAck(_))).await;
    sub.expect(|p| matches!(p, Packet::SubAck(_))).await;

    let (publisher, _) = Client::connect(user_options(broker.addr, "pub")).await.unwrap();
    for (topic, qos) in [
        ("plant/a/temp", QoS::AtMostOnce),
        ("plant/b/temp", QoS::AtLeastOnce),
        ("plant/c/temp", QoS::ExactlyOnce),
    ] {
        publisher.client.publish(topic, qos, false, topic.as_bytes().to_vec()).await.unwrap();
        let got = sub.publish().await;
        assert_eq!((got.topic.as_str(), got.qos), (topic, qos));
        assert_eq!(got.payload.as_ref(), topic.as_bytes());
    }
    // Delivered at the lower of the published and granted QoS.
    publisher.client.publish("alarm/x/y", QoS::ExactlyOnce, false, "fire").await.unwrap();
    let got = sub.publish().await;
    assert_eq!((got.topic.as_str(), got.qos), ("alarm/x/y", QoS::AtLeastOnce));
    // Not matched: a deeper topic under `+`.
    publisher.client.publish("plant/a/b/temp", QoS::AtLeastOnce, false, "no").await.unwrap();
    publisher.client.publish("plant/z/temp", QoS::AtLeastOnce, false, "yes").await.unwrap();
    assert_eq!(sub.publish().await.topic, "plant/z/temp");
}

#[tokio::test]
async fn retained_messages() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (publisher, _) = Client::connect(user_options(broker.addr, "pub")).await.unwrap();
    publisher.client.publish("state/lamp", QoS::AtLeastOnce, true, "on").await.unwrap();
    publisher.client.publish("state/door", QoS::AtLeastOnce, true, "open").await.unwrap();
    publisher.client.publish("state/door", QoS::AtLeastOnce, true, "").await.unwrap();
    publisher.client.publish("state/lamp", QoS::AtLeastOnce, true, "off").await.unwrap();
    // Wait until the broker has them all (the last one is acknowledged after routing).
    let mut probe = Client::connect(user_options(broker.addr, "probe")).await.unwrap().0;
    probe.client.subscribe("state/lamp", QoS::AtLeastOnce).await.unwrap();
    loop {
        if probe.publish().await.payload.as_ref() == b"off" {
            break;
        }
        probe.client.unsubscribe("state/lamp").await.unwrap();
        probe.client.subscribe("state/lamp", QoS::AtLeastOnce).await.unwrap();
    }

    let (mut late, _) = Client::connect(user_options(broker.addr, "late")).await.unwrap();
    late.client.subscribe("state/#", QoS::AtLeastOnce).await.unwrap();
    let got = late.publish().await;
    assert_eq!(
        (got.topic.as_str(), got.payload.as_ref(), got.retain),
        ("state/lamp", &b"off"[..], true)
    );
    // A live publish is not flagged retained for existing subscribers.
    publisher.client.publish("state/lamp", QoS::AtLeastOnce, true, "on").await.unwrap();
    let got = late.publish().await;
    assert!(!got.retain);
}

#[tokio::test]
async fn will_is_published_on_abrupt_close_only() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut watcher, _) = Client::connect(user_options(broker.addr, "watcher")).await.unwrap();
    watcher.client.subscribe("wills/#", QoS::AtLeastOnce).await.unwrap();
    watcher.expect(|p| matches!(p, Packet::SubAck(_))).await;

    // A raw client with a will whose socket vanishes without DISCONNECT.
    let (mortal, connack) =
        raw::open(broker.addr, &connect_with_will("mortal", "wills/mortal", "gone")).await;
    assert_eq!(connack, raw::ACCEPTED);
    drop(mortal);
    let got = watcher.publish().await;
    assert_eq!((got.topic.as_str(), got.payload.as_ref()), ("wills/mortal", &b"gone"[..]));

    // A clean DISCONNECT discards the will.
    let mut options = user_options(broker.addr, "polite");
    options.set_last_will(LastWill::new("wills/polite", "gone", QoS::AtLeastOnce, false));
    let (polite, _) = Client::connect(options).await.unwrap();
    polite.client.disconnect().await.unwrap();
    let (marker, _) =
        raw::open(broker.addr, &connect_with_will("marker", "wills/marker", "after")).await;
    drop(marker);
    assert_eq!(watcher.publish().await.topic, "wills/marker", "no will from the polite client");
}

#[tokio::test]
async fn persistent_sessions_queue_while_offline() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let persistent = |id: &str| {
        let mut options = user_options(broker.addr, id);
        options.set_clean_session(false);
        options
    };
    let (first, present) = Client::connect(persistent("keeper")).await.unwrap();
    assert!(!present);
    first.client.subscribe("jobs/#", QoS::AtLeastOnce).await.unwrap();
    let mut first = first;
    first.expect(|p| matches!(p, Packet::SubAck(_))).await;
    first.client.disconnect().await.unwrap();
    first.closed().await;

    let (publisher, _) = Client::connect(user_options(broker.addr, "pub")).await.unwrap();
    for n in 0..3 {
        publisher.client.publish(format!("jobs/{n}"), QoS::AtLeastOnce, false, "x").await.unwrap();
    }
    publisher.client.publish("jobs/qos0", QoS::AtMostOnce, false, "lost").await.unwrap();
    publisher.client.publish("jobs/last", QoS::AtLeastOnce, false, "x").await.unwrap();
    // The publisher's QoS 1 acks arrive after routing, so once it has all four, they are queued.
    let mut publisher = publisher;
    for _ in 0..4 {
        publisher.expect(|p| matches!(p, Packet::PubAck(_))).await;
    }

    let (mut back, present) = Client::connect(persistent("keeper")).await.unwrap();
    assert!(present, "session_present for a resumed session");
    let mut topics = Vec::new();
    for _ in 0..4 {
        topics.push(back.publish().await.topic);
    }
    assert_eq!(topics, ["jobs/0", "jobs/1", "jobs/2", "jobs/last"]);

    // A clean session starts from nothing.
    back.client.disconnect().await.unwrap();
    let mut options = user_options(broker.addr, "keeper");
    options.set_clean_session(true);
    let (_clean, present) = Client::connect(options).await.unwrap();
    assert!(!present);
}

#[tokio::test]
async fn newest_connection_takes_over() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut old, _) = Client::connect(user_options(broker.addr, "twin")).await.unwrap();
    let (mut new, _) = Client::connect(user_options(broker.addr, "twin")).await.unwrap();
    old.closed().await;
    new.client.subscribe("t", QoS::AtLeastOnce).await.unwrap();
    new.expect(|p| matches!(p, Packet::SubAck(_))).await;
}

#[tokio::test]
async fn keepalive_is_enforced_at_one_and_a_half_times() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut stream, connack) =
        raw::open(broker.addr, &raw::connect_packet("sleepy", Some(USER), 1)).await;
    assert_eq!(connack, raw::ACCEPTED);
    // Silence: the broker must close within 1.5 s of the last packet (we only check it does).
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(HANG, stream.read_to_end(&mut rest)).await.expect("closed");
    assert!(read.is_ok() && rest.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(1400), "not closed before 1.5 x keepalive");
}

#[tokio::test]
async fn refusals_get_their_connack_codes() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let code = |connect: raw::Connect| async move {
        raw::open(broker.addr, &raw::encode(&raw::Packet::Connect(connect))).await.1.code
    };
    let wrong = raw::connect("x", Some(("alice", "wrong")), 30);
    assert_eq!(code(wrong).await, Code::BadUserNamePassword);
    let unknown = raw::connect("x", Some(("mallory", "pw")), 30);
    assert_eq!(code(unknown).await, Code::BadUserNamePassword);
    let anonymous = raw::connect("x", None, 30);
    assert_eq!(code(anonymous.clone()).await, Code::NotAuthorized, "anonymous not allowed");
    // A protocol level the broker does not speak (6; 4 and 5 are 3.1.1 and 5.0, PROTOCOL §11).
    let mut level_6 = raw::encode(&raw::Packet::Connect(anonymous));
    level_6[8] = 6;
    assert_eq!(
        raw::open(broker.addr, &level_6).await.1.code,
        Code::RefusedProtocolVersion,
        "unacceptable protocol level"
    );
    let persistent_empty = raw::Connect { clean_session: false, ..raw::connect("", None, 30) };
    assert_eq!(code(persistent_empty).await, Code::BadClientId, "empty id, clean session 0");
}

#[tokio::test]
async fn malformed_packets_close_only_that_connection() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut bystander, _) = Client::connect(user_options(broker.addr, "bystander")).await.unwrap();
    bystander.client.subscribe("still/#", QoS::AtLeastOnce).await.unwrap();
    bystander.expect(|p| matches!(p, Packet::SubAck(_))).await;

    let attacks: Vec<Vec<u8>> = vec![
        vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], // bad remaining length
        vec![0x30, 0x05, 0x00, 0x02, 0xC3, 0x28, b'x'], // topic not UTF-8
        vec![0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], // SUBSCRIBE with flags 0b0010? (valid)...
        vec![0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], // ...and with reserved flags 0
        vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F],                   // oversize (256 MiB)
        vec![0x10, 0x00],                                     // second CONNECT
    ];
    for (n, attack) in attacks.into_iter().enumerate() {
        let connect = raw::connect_packet(&format!("attacker{n}"), Some(USER), 30);
        let (mut stream, _) = raw::open(broker.addr, &connect).await;
        stream.write_all(&attack).await.unwrap();
        let mut rest = Vec::new();
        // A valid SUBSCRIBE gets its SUBACK and the connection stays; everything else is closed.
        if attack[0] == 0x82 {
            let mut suback = [0u8; 5];
            stream.read_exact(&mut suback).await.unwrap();
            assert_eq!(suback, [0x90, 0x03, 0x00, 0x01, 0x00]);
            continue;
        }
        let closed =
            tokio::time::timeout(HANG, stream.read_to_end(&mut rest)).await.expect("closed");
        assert!(closed.is_ok(), "attack {n}: connection closed cleanly");
    }

    let (publisher, _) = Client::connect(user_options(broker.addr, "pub")).await.unwrap();
    publisher.client.publish("still/alive", QoS::AtLeastOnce, false, "yes").await.unwrap();
    assert_eq!(bystander.publish().await.topic, "still/alive");
}

/// MQTT-3.8.3-4 and §3.12/§3.14: reserved bits in a SUBSCRIBE's requested-QoS byte, and a
/// PINGREQ or DISCONNECT with a body, are malformed: the connection is closed without an answer
/// (no SUBACK, no PINGRESP), and a DISCONNECT that is malformed is no DISCONNECT, so the will
/// goes out. Other clients are unaffected.
#[tokio::test]
async fn reserved_qos_bits_and_bodies_of_empty_packets_close_the_connection() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let (mut bystander, _) = Client::connect(user_options(broker.addr, "bystander")).await.unwrap();
    bystander.client.subscribe("conformance/#", QoS::AtLeastOnce).await.unwrap();
    bystander.expect(|p| matches!(p, Packet::SubAck(_))).await;

    let attacks: [&[u8]; 5] = [
        // SUBSCRIBE pkid 1, "a" with requested QoS 1 plus reserved bit 2.
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x05],
        // The same with the top bit set, in the second filter.
        &[0x82, 0x0A, 0x00, 0x01, 0x00, 0x01, b'a', 0x00, 0x00, 0x01, b'b', 0x80],
        // PINGREQ with remaining length 1.
        &[0xC0, 0x01, 0x00],
        // PINGREQ with remaining length 2.
        &[0xC0, 0x02, 0x00, 0x00],
        // DISCONNECT with remaining length 2.
        &[0xE0, 0x02, 0x00, 0x00],
    ];
    for (n, attack) in attacks.into_iter().enumerate() {
        let topic = format!("conformance/will{n}");
        let (mut stream, ack) =
            raw::open(broker.addr, &connect_with_will(&format!("attacker{n}"), &topic, "gone"))
                .await;
        assert_eq!(ack.code, Code::Success);
        stream.write_all(attack).await.unwrap();
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(HANG, stream.read_to_end(&mut rest)).await.expect("closed");
        assert!(closed.is_ok(), "attack {n}: connection closed cleanly");
        assert!(rest.is_empty(), "attack {n}: answered {rest:02x?} instead of closing");
        // Closed as malformed, not disconnected: the will is published.
        let will = bystander.publish().await;
        assert_eq!((will.topic.as_str(), will.payload.as_ref()), (topic.as_str(), &b"gone"[..]));
    }

    let (publisher, _) = Client::connect(user_options(broker.addr, "pub")).await.unwrap();
    publisher.client.publish("conformance/alive", QoS::AtLeastOnce, false, "yes").await.unwrap();
    assert_eq!(bystander.publish().await.topic, "conformance/alive");
}

#[tokio::test]
async fn connect_must_arrive_in_time() {
    let registry = TestRegistry::new().await;
    let broker = registry
        .broker(FRANKFURT, |config| config.limits.connect_timeout = Duration::from_millis(200))
        .await;
    let mut stream = TcpStream::connect(broker.addr).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(HANG, stream.read_to_end(&mut rest)).await.expect("closed");
    assert!(closed.is_ok() && rest.is_empty());
    let _ = MqttOptions::new("unused", "127.0.0.1", 1);
}

/// A CONNECT of the standard user with a QoS 1 will.
fn connect_with_will(client_id: &str, topic: &str, message: &str) -> Vec<u8> {
    let mut connect = raw::connect(client_id, Some(USER), 30);
    connect.last_will =
        Some(mqttbytes::v4::LastWill::new(topic, message, raw::QoS::AtLeastOnce, false));
    raw::encode(&raw::Packet::Connect(connect))
}

/// A subscriber that never reads: its queue fills, its messages are dropped and counted, it is
/// disconnected, and a well-behaved subscriber of the same topic gets everything meanwhile.
#[tokio::test]
async fn slow_consumer_is_dropped_without_hurting_others() {
    let registry = TestRegistry::new().await;
    let broker = registry
        .broker(SHANGHAI, |config| {
            config.limits.mailbox = 8;
            config.limits.queued = 8;
            config.limits.slow_consumer_drops = 64;
        })
        .await;
    let (mut sloth, _) =
        raw::open(broker.addr, &raw::connect_packet("sloth", Some(USER), 60)).await;
    // SUBSCRIBE flood/# at QoS 0, then never read again.
    sloth.write_all(&raw::subscribe_packet(1, &[("flood/#", raw::QoS::AtMostOnce)])).await.unwrap();

    let (mut good, _) = Client::connect(user_options(broker.addr, "good")).await.unwrap();
    good.client.subscribe("flood/#", QoS::AtMostOnce).await.unwrap();
    good.expect(|p| matches!(p, Packet::SubAck(_))).await;

    let (mut writer, _) =
        raw::open(broker.addr, &raw::connect_packet("flooder", Some(USER), 60)).await;
    // 8000-byte payloads at QoS 0 until the sloth is gone (its socket buffers fill within a few
    // MB).
    let publish = mqttbytes::v4::Publish::new("flood/", raw::QoS::AtMostOnce, vec![b'x'; 8000]);
    let publish = raw::encode(&raw::Packet::Publish(publish));
    let mut sent = 0usize;
    while broker.daemon.broker.router().is_online("client:sloth") {
        writer.write_all(&publish).await.unwrap();
        sent += 1;
        let got = good.publish().await;
        assert_eq!(got.payload.len(), 8000);
        assert!(sent < 100_000, "slow consumer never disconnected");
    }
    // The good subscriber kept receiving every message in order the whole time.
    writer.write_all(&publish).await.unwrap();
    assert_eq!(good.publish().await.topic, "flood/");

    // The sloth reads what it was sent, now, while the broker's last flush runs: whole packets
    // only (the last may be cut off by the close), none garbled by a write cut short by the
    // kick and sent again from its start.
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), sloth.read_to_end(&mut received)).await;
    let mut bytes = bytes::BytesMut::from(&received[..]);
    let mut publishes = 0;
    loop {
        match mqttbytes::v4::read(&mut bytes, 1 << 20) {
            Ok(raw::Packet::SubAck(_)) => {}
            Ok(raw::Packet::Publish(publish)) => {
                assert_eq!(publish.topic, "flood/");
                assert!(
                    publish.payload.iter().all(|b| *b == b'x') && publish.payload.len() == 8000
                );
                publishes += 1;
            }
            Ok(other) => panic!("unexpected packet after {publishes} publishes: {other:?}"),
            Err(mqttbytes::Error::InsufficientBytes(_)) => break,
            Err(error) => panic!("the stream is garbled after {publishes} publishes: {error:?}"),
        }
    }
    assert!(publishes > 0);
}

/// QoS 1 fan-in faster than the subscriber reads, with small queues: the broker holds the
/// publishers back instead of dropping, and the subscriber receives every message, each
/// publisher's in order.
#[tokio::test]
async fn qos1_fan_in_beyond_the_queues_loses_nothing() {
    const PUBLISHERS: usize = 4;
    const EACH: usize = 500;
    let registry = TestRegistry::new().await;
    let broker = registry
        .broker(SHANGHAI, |config| {
            config.limits.mailbox = 4;
            config.limits.queued = 8;
            config.limits.inflight = 4;
        })
        .await;
    let (mut subscriber, _) = Client::connect(user_options(broker.addr, "sink")).await.unwrap();
    subscriber.client.subscribe("in/#", QoS::AtLeastOnce).await.unwrap();
    subscriber.expect(|p| matches!(p, Packet::SubAck(_))).await;

    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (publisher, _) =
            Client::connect(user_options(broker.addr, &format!("source{p}"))).await.unwrap();
        publishers.push(tokio::spawn(async move {
            for n in 0..EACH {
                let payload = format!("{p}:{n}");
                publisher
                    .client
                    .publish(format!("in/{p}"), QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap();
            }
            publisher
        }));
    }
    let mut next = [0usize; PUBLISHERS];
    for received in 0..PUBLISHERS * EACH {
        let publish = subscriber.publish().await;
        let text = String::from_utf8(publish.payload.to_vec()).unwrap();
        let (p, n) = text.split_once(':').unwrap();
        let (p, n): (usize, usize) = (p.parse().unwrap(), n.parse().unwrap());
        assert_eq!(n, next[p], "publisher {p} out of order or lost: {text}");
        next[p] += 1;
        // A subscriber slower than the publishers together.
        if received % 64 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    for publisher in publishers {
        tokio::time::timeout(HANG, publisher).await.unwrap().unwrap();
    }
    assert!(broker.daemon.broker.router().is_online("client:sink"));
}

/// A QoS 1 subscriber that never reads holds a publisher back only for `backpressure_wait`:
/// then it is disconnected as a slow consumer and the publisher goes on; another subscriber
/// receives everything meanwhile.
#[tokio::test]
async fn a_subscriber_that_never_reads_holds_publishers_back_only_for_a_while() {
    let registry = TestRegistry::new().await;
    let broker = registry
        .broker(SHANGHAI, |config| {
            config.limits.mailbox = 4;
            config.limits.queued = 8;
            config.limits.inflight = 4;
            config.limits.backpressure_wait = Duration::from_millis(200);
        })
        .await;
    let (mut stuck, _) =
        raw::open(broker.addr, &raw::connect_packet("stuck", Some(USER), 60)).await;
    stuck.write_all(&raw::subscribe_packet(1, &[("held/#", raw::QoS::AtLeastOnce)])).await.unwrap();
    let (mut good, _) = Client::connect(user_options(broker.addr, "reader")).await.unwrap();
    good.client.subscribe("held/#", QoS::AtLeastOnce).await.unwrap();
    good.expect(|p| matches!(p, Packet::SubAck(_))).await;

    let (publisher, _) = Client::connect(user_options(broker.addr, "feeder")).await.unwrap();
    // 8000-byte payloads, so the stuck client's socket buffers fill and its queue with them.
    let payload = vec![b'x'; 8000];
    let mut sent = 0usize;
    while broker.daemon.broker.router().is_online("client:stuck") {
        publisher.client.publish("held/x", QoS::AtLeastOnce, false, payload.clone()).await.unwrap();
        sent += 1;
        assert_eq!(good.publish().await.payload.len(), 8000);
        assert!(sent < 100_000, "the stuck subscriber was never disconnected");
    }
    // The publisher goes on after it.
    publisher.client.publish("held/x", QoS::AtLeastOnce, false, "after").await.unwrap();
    assert_eq!(&good.publish().await.payload[..], b"after");
}

/// MQTT-3.1.2-5: a persistent QoS 1 subscriber whose connection is killed, or taken over by a
/// new connection of its client id, again and again while an open-loop publisher keeps sending,
/// still receives every message, in order; the only repeats are redeliveries marked DUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_subscriber_reconnecting_under_load_loses_nothing() {
    const MESSAGES: usize = 4000;
    const RECONNECTS: usize = 16;
    let registry = TestRegistry::new().await;
    // Queues far above what the test sends: no configured bound can explain a loss.
    let broker = registry
        .broker(SHANGHAI, |config| {
            config.limits.queued = 2 * MESSAGES;
            config.limits.inflight = 8;
        })
        .await;
    let subscriber = |broker: std::net::SocketAddr| {
        let mut options = user_options(broker, "keeper");
        options.set_clean_session(false);
        // Acknowledged only once recorded, so what the broker counts as delivered was seen.
        options.set_manual_acks(true);
        options
    };
    let (mut sub, _) = Client::connect(subscriber(broker.addr)).await.unwrap();
    sub.client.subscribe("load/#", QoS::AtLeastOnce).await.unwrap();
    sub.expect(|p| matches!(p, Packet::SubAck(_))).await;

    let (mut publisher, _) = Client::connect(user_options(broker.addr, "pub")).await.unwrap();
    let publishing = tokio::spawn(async move {
        for n in 0..MESSAGES {
            let payload = n.to_string();
            publisher.client.publish("load/n", QoS::AtLeastOnce, false, payload).await.unwrap();
            // Open loop at a steady pace, whatever the subscriber does.
            if n % 20 == 19 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        for _ in 0..MESSAGES {
            publisher.expect(|p| matches!(p, Packet::PubAck(_))).await;
        }
    });

    // `next` is the lowest message not yet seen; anything above it is a loss or a reordering.
    let mut next = 0;
    let mut reconnects = 0;
    let mut since_reconnect = 0;
    while next < MESSAGES {
        let publish = sub.publish().await;
        let n: usize = std::str::from_utf8(&publish.payload).unwrap().parse().unwrap();
        assert!(n <= next, "message {next} lost (or reordered): received {n} after it");
        if n < next {
            assert!(publish.dup, "message {n} delivered twice without DUP");
        } else {
            next += 1;
        }
        sub.client.ack(&publish).await.unwrap();
        since_reconnect += 1;
        if reconnects < RECONNECTS && since_reconnect == MESSAGES / (RECONNECTS + 4) {
            since_reconnect = 0;
            reconnects += 1;
            if reconnects % 2 == 0 {
                // A takeover: the new connection arrives while the old one is still up.
                let (new, present) = Client::connect(subscriber(broker.addr)).await.unwrap();
                assert!(present, "the session is resumed");
                drop(std::mem::replace(&mut sub, new));
            } else {
                // Killed: the socket closes without DISCONNECT, then the client comes back.
                drop(sub);
                let (new, present) = Client::connect(subscriber(broker.addr)).await.unwrap();
                assert!(present, "the session is resumed");
                sub = new;
            }
        }
    }
    assert_eq!(reconnects, RECONNECTS, "every reconnect happened while messages flowed");
    tokio::time::timeout(HANG, publishing).await.unwrap().unwrap();
}

/// A filter repeated in one SUBSCRIBE is one subscription: it takes one place under
/// `max_subscriptions` and its retained messages are sent once (MQTT-3.8.4-3: a repeated
/// filter replaces the subscription). A later SUBSCRIBE of it sends them once more.
#[tokio::test]
async fn a_repeated_filter_is_one_subscription_sent_its_retained_messages_once() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |config| config.limits.max_subscriptions = 3).await;
    let (mut publisher, _) = Client::connect(user_options(broker.addr, "pub")).await.unwrap();
    for n in 0..50 {
        publisher.client.publish(format!("r/{n}"), QoS::AtLeastOnce, true, "v").await.unwrap();
    }
    for _ in 0..50 {
        publisher.expect(|p| matches!(p, Packet::PubAck(_))).await;
    }

    let (mut sub, _) = Client::connect(user_options(broker.addr, "sub")).await.unwrap();
    let mut filters: Vec<_> =
        (0..20).map(|_| rumqttc::SubscribeFilter::new("r/#".into(), QoS::AtMostOnce)).collect();
    for filter in ["a", "b", "c"] {
        filters.push(rumqttc::SubscribeFilter::new(filter.into(), QoS::AtLeastOnce));
    }
    sub.client.subscribe_many(filters).await.unwrap();
    let Packet::SubAck(ack) = sub.expect(|p| matches!(p, Packet::SubAck(_))).await else {
        unreachable!()
    };
    use rumqttc::SubscribeReasonCode as Code;
    let mut expected = vec![Code::Success(QoS::AtMostOnce); 20];
    expected.extend([Code::Success(QoS::AtLeastOnce); 2]);
    expected.push(Code::Failure);
    assert_eq!(ack.return_codes, expected, "`c` would be the fourth subscription");
    assert_eq!(broker.daemon.broker.router().subscription_count(), 3, "r/#, a and b");

    let retained_once = async |sub: &mut Client| {
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < 50 {
            let publish = sub.publish().await;
            assert!(publish.retain && publish.topic.starts_with("r/"), "{publish:?}");
            assert!(seen.insert(publish.topic.clone()), "{} sent twice", publish.topic);
        }
        // Nothing more of them before a message published after.
        publisher_marker(sub).await;
    };
    async fn publisher_marker(sub: &mut Client) {
        sub.client.publish("a", QoS::AtLeastOnce, false, "marker").await.unwrap();
        let publish = sub.publish().await;
        assert_eq!((publish.topic.as_str(), publish.retain), ("a", false), "{publish:?}");
    }
    retained_once(&mut sub).await;

    // Subscribing again, even when full, replaces the subscription and re-sends them once.
    sub.client.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    sub.expect(|p| matches!(p, Packet::SubAck(_))).await;
    retained_once(&mut sub).await;
    assert_eq!(broker.daemon.broker.router().subscription_count(), 3);
}

/// A persistent session is kept only for its kind's `session_expiry`: configured at zero for
/// standard users here, a client that comes back finds no session (session present 0), and
/// what was subscribed and queued for it is gone.
#[tokio::test]
async fn persistent_sessions_expire() {
    let registry = TestRegistry::new().await;
    let broker = registry
        .broker(SHANGHAI, |config| config.limits.standard.session_expiry = Duration::ZERO)
        .await;
    raw::park_subscriber(broker.addr, "away", USER, "queued/#").await;
    let (publisher, _) = Client::connect(user_options(broker.addr, "pub")).await.unwrap();
    publisher.client.publish("queued/x", QoS::AtLeastOnce, false, "lost").await.unwrap();

    let mut options = user_options(broker.addr, "away");
    options.set_clean_session(false);
    let (_back, present) = Client::connect(options).await.unwrap();
    assert!(!present, "the session expired");
    let router = broker.daemon.broker.router();
    assert_eq!((router.parked_count(), router.subscription_count()), (0, 0));
    assert_eq!(router.budget().used().messages, 0);
}

/// Application clients have their own, tighter bounds on topic length and subscription bytes
/// (`[broker.limits.application]`): a filter longer than `max_topic_len` is malformed for them
/// and closes the connection; filters beyond `max_subscription_bytes` get SUBACK 0x80.
#[tokio::test]
async fn application_clients_have_bounded_subscription_memory() {
    let registry = TestRegistry::new().await;
    let broker = registry
        .broker(SHANGHAI, |config| {
            config.limits.application.max_topic_len = 64;
            config.limits.application.max_subscription_bytes = 100;
        })
        .await;
    let mut options = MqttOptions::new("backend", "127.0.0.1", broker.addr.port());
    options.set_credentials(meridian_tests::APPLICATION.0, meridian_tests::APPLICATION.1);
    let (mut app, _) = Client::connect(options).await.unwrap();
    let product = meridian_tests::PRODUCT;
    // 30 bytes each: three fit in 100, the fourth does not.
    let filters: Vec<String> = (0..4).map(|n| format!("/{product}/+/user/{n:010}")).collect();
    assert!(filters.iter().all(|f| f.len() == 30));
    let filters = filters.into_iter().map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce));
    app.client.subscribe_many(filters).await.unwrap();
    let Packet::SubAck(ack) = app.expect(|p| matches!(p, Packet::SubAck(_))).await else {
        unreachable!()
    };
    use rumqttc::SubscribeReasonCode as Code;
    let ok = Code::Success(QoS::AtLeastOnce);
    assert_eq!(ack.return_codes, [ok, ok, ok, Code::Failure]);

    let long = format!("/{product}/+/user/{}", "x".repeat(64));
    app.client.subscribe(long, QoS::AtLeastOnce).await.unwrap();
    app.closed().await;
}
