//! Hostile clients against a real broker and a real bootstrap edge on loopback, each limit
//! configured small (issue 8; docs/RELIABILITY.md maps every case to its limit and metric).
//!
//! Loopback is all of 127.0.0.0/8 on Linux, so "another address" is a socket bound to
//! 127.0.0.2 and up. Every wait is bounded by [`HANG`], a guard against a test that never
//! ends; nothing here asserts how long anything took. The client that never reads is
//! `broker_mqtt.rs`'s `slow_consumer_is_dropped_without_hurting_others`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use meridian_edge::{Edge, EdgeConfig, RoutingTable};
use meridian_geo::{Locator, LocatorOptions};
use meridian_registry::signature::{SdkShape, sign_connect};
use meridian_tests::raw::{self, ConnectReturnCode as Code};
use meridian_tests::{
    Client, HANG, PRODUCT, SHANGHAI, TestBroker, TestRegistry, USER, user_options,
};
use rumqttc::{Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

// --- Slowloris ---------------------------------------------------------------------------

/// A connection that sends part of a CONNECT and then nothing is closed at `connect_timeout`,
/// and so is one that trickles its CONNECT a byte at a time: the timeout covers the whole
/// CONNECT, not each read. (A connection that sends nothing at all: `broker_mqtt.rs`'s
/// `connect_must_arrive_in_time`.)
#[tokio::test]
async fn mqtt_slowloris_is_closed_at_the_connect_timeout() {
    let registry = TestRegistry::new().await;
    let broker = registry
        .broker(SHANGHAI, |config| config.limits.connect_timeout = Duration::from_millis(300))
        .await;
    let connect = raw::connect_packet("slow", Some(USER), 30);

    let mut partial = TcpStream::connect(broker.addr).await.unwrap();
    partial.write_all(&connect[..10]).await.unwrap();
    assert_eq!(closed_without_reply(&mut partial).await, Vec::<u8>::new());

    let trickler = TcpStream::connect(broker.addr).await.unwrap();
    let (mut reader, mut writer) = trickler.into_split();
    let trickle = tokio::spawn(async move {
        for byte in connect {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut rest = Vec::new();
    let read = tokio::time::timeout(HANG, reader.read_to_end(&mut rest)).await;
    assert!(read.expect("closed in time").is_ok() || rest.is_empty());
    assert!(rest.is_empty(), "no CONNACK for a CONNECT that never completed: {rest:?}");
    trickle.abort();

    // The broker still serves a client that behaves.
    assert!(Client::connect(user_options(broker.addr, "fine")).await.is_ok());
}

/// The edge closes a connection whose request head never completes within
/// `header_read_timeout`, whether it sends nothing or trickles bytes. (A head cut off
/// half-way, and a body that never arrives: `bootstrap-edge/tests/bootstrap.rs`'s
/// `slow_clients_time_out`.)
#[tokio::test]
async fn http_slowloris_is_closed_at_the_header_timeout() {
    let config =
        EdgeConfig { header_read_timeout: Duration::from_millis(300), ..EdgeConfig::default() };
    let (addr, _stop) = start_edge(config).await;

    let mut silent = TcpStream::connect(addr).await.unwrap();
    let reply = closed_without_reply(&mut silent).await;
    assert!(reply.is_empty() || reply.starts_with(b"HTTP/1.1 408"), "{reply:?}");

    let trickler = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = trickler.into_split();
    let trickle = tokio::spawn(async move {
        let head = b"POST /auth/bootstrap HTTP/1.1\r\nHost: edge\r\nX-Padding: ".iter();
        for byte in head.chain(std::iter::repeat(&b'a')) {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(HANG, reader.read_to_end(&mut reply)).await.expect("closed");
    assert!(reply.is_empty() || reply.starts_with(b"HTTP/1.1 408"), "{reply:?}");
    trickle.abort();
}

// --- Floods ------------------------------------------------------------------------------

/// One address opening connections faster than `connection_rate` (burst 2, then 1 a second)
/// has the extras closed at accept, before any CONNACK; another address still gets in.
#[tokio::test]
async fn connect_flood_from_one_address_is_refused_while_others_get_in() {
    let registry = TestRegistry::new().await;
    let broker = registry
        .broker(SHANGHAI, |config| {
            config.limits.connection_rate = 1;
            config.limits.connection_burst = 2;
        })
        .await;
    let mut accepted = Vec::new();
    let mut refused = 0;
    // Far more attempts than the burst plus anything that could refill while they run.
    for n in 0..20 {
        let mut stream = connect_from(broker.addr, [127, 0, 0, 1]).await;
        match mqtt_login(&mut stream, &format!("flood{n}"), USER.0, USER.1).await {
            Some(code) => {
                assert_eq!(code, Code::Success);
                accepted.push(stream);
            }
            None => refused += 1,
        }
    }
    assert!(accepted.len() >= 2, "the burst is admitted");
    assert!(refused > 0, "the flood is refused");

    let mut other = connect_from(broker.addr, [127, 0, 0, 2]).await;
    assert_eq!(mqtt_login(&mut other, "other", USER.0, USER.1).await, Some(Code::Success));
}

/// Global admission control: beyond `max_connections` open connections, new sockets are
/// closed at accept from any address; once one closes, a newcomer gets in.
#[tokio::test]
async fn connections_beyond_the_global_cap_are_refused_at_accept() {
    let registry = TestRegistry::new().await;
    let broker = registry
        .broker(SHANGHAI, |config| {
            config.limits.max_connections = 3;
            config.limits.connection_rate = 0;
        })
        .await;
    let mut open = Vec::new();
    for n in 0..3u8 {
        let mut stream = connect_from(broker.addr, [127, 0, 0, 10 + n]).await;
        assert_eq!(
            mqtt_login(&mut stream, &format!("c{n}"), USER.0, USER.1).await,
            Some(Code::Success)
        );
        open.push(stream);
    }
    let mut fourth = connect_from(broker.addr, [127, 0, 0, 20]).await;
    assert_eq!(mqtt_login(&mut fourth, "c4", USER.0, USER.1).await, None, "refused at accept");

    drop(open.pop());
    let admission = broker.daemon.broker.admission();
    wait_until(|| admission.open() < 3).await;
    let mut later = connect_from(broker.addr, [127, 0, 0, 21]).await;
    assert_eq!(mqtt_login(&mut later, "c5", USER.0, USER.1).await, Some(Code::Success));
}

// --- Brute force -------------------------------------------------------------------------

/// After `auth_failures_per_address` wrong signatures from one address, every CONNECT from it
/// gets CONNACK 5, even one with the right signature (so the answer reveals nothing), while
/// the same device with its right signature from another address still connects.
#[tokio::test]
async fn brute_force_from_one_address_backs_off_that_address() {
    let registry = TestRegistry::new().await;
    registry.device("brute-a", "secret-a").await;
    let broker = registry
        .broker(SHANGHAI, |config| {
            config.limits.auth_failures_per_address = 3;
            config.limits.auth_failures_per_username = 100;
        })
        .await;
    let attacker = [127, 0, 0, 1];
    for guess in 0..3 {
        let code = device_login(&broker, attacker, "brute-a", &format!("guess-{guess}")).await;
        assert_eq!(code, Some(Code::BadUserNamePassword));
    }
    assert_eq!(
        device_login(&broker, attacker, "brute-a", "guess-3").await,
        Some(Code::NotAuthorized)
    );
    assert_eq!(
        device_login(&broker, attacker, "brute-a", "secret-a").await,
        Some(Code::NotAuthorized)
    );
    // Standard users from that address are backed off too: the address is what guessed.
    let mut user = connect_from(broker.addr, attacker).await;
    assert_eq!(mqtt_login(&mut user, "u", USER.0, USER.1).await, Some(Code::NotAuthorized));

    assert_eq!(
        device_login(&broker, [127, 0, 0, 2], "brute-a", "secret-a").await,
        Some(Code::Success)
    );
}

/// After `auth_failures_per_username` wrong signatures for one device, from any addresses,
/// CONNECTs for that device get CONNACK 5 whatever they carry; other devices are unaffected.
#[tokio::test]
async fn brute_force_on_one_device_backs_off_that_device() {
    let registry = TestRegistry::new().await;
    registry.device("brute-b", "secret-b").await;
    registry.device("brute-c", "secret-c").await;
    let broker = registry
        .broker(SHANGHAI, |config| {
            config.limits.auth_failures_per_address = 0;
            config.limits.auth_failures_per_username = 3;
        })
        .await;
    for n in 0..3u8 {
        let code = device_login(&broker, [127, 0, 1, n], "brute-b", "wrong").await;
        assert_eq!(code, Some(Code::BadUserNamePassword));
    }
    assert_eq!(
        device_login(&broker, [127, 0, 1, 9], "brute-b", "secret-b").await,
        Some(Code::NotAuthorized)
    );
    assert_eq!(
        device_login(&broker, [127, 0, 1, 9], "brute-b", "wrong").await,
        Some(Code::NotAuthorized)
    );
    assert_eq!(
        device_login(&broker, [127, 0, 1, 9], "brute-c", "secret-c").await,
        Some(Code::Success)
    );
}

// --- Oversized ---------------------------------------------------------------------------

/// A packet announcing more than `max_packet` bytes closes the connection as soon as its
/// fixed header arrives, before or after CONNECT; nothing of the body is read or buffered.
#[tokio::test]
async fn oversized_packets_close_the_connection() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |config| config.limits.max_packet = 1024).await;
    // Remaining length 2000 (0xD0 0x0F), no body.
    let mut before = TcpStream::connect(broker.addr).await.unwrap();
    before.write_all(&[0x10, 0xD0, 0x0F]).await.unwrap();
    assert_eq!(closed_without_reply(&mut before).await, Vec::<u8>::new());

    let mut after = TcpStream::connect(broker.addr).await.unwrap();
    assert_eq!(mqtt_login(&mut after, "big", USER.0, USER.1).await, Some(Code::Success));
    after.write_all(&[0x30, 0xD0, 0x0F]).await.unwrap();
    assert_eq!(closed_without_reply(&mut after).await, Vec::<u8>::new());
}

/// A bootstrap body over `max_body_bytes` gets 413, whether announced or chunked. (The
/// default cap: `bootstrap-edge/tests/bootstrap.rs`'s `oversized_bodies_get_413`.)
#[tokio::test]
async fn oversized_bootstrap_bodies_get_413() {
    let config = EdgeConfig { max_body_bytes: 64, ..EdgeConfig::default() };
    let (addr, _stop) = start_edge(config).await;
    let body = format!("productKey={PRODUCT}&deviceName=lamp&padding={}", "x".repeat(100));
    let announced = format!(
        "POST /auth/bootstrap HTTP/1.1\r\nHost: edge\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let chunked = format!(
        "POST /auth/bootstrap HTTP/1.1\r\nHost: edge\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    for request in [announced, chunked] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let reply = closed_without_reply(&mut stream).await;
        // Framed as the vendor C SDK frames replies (it has to read the refusal too).
        let (reply, _) = meridian_edge::sdk::parse(&reply)
            .expect("the SDK can read the reply")
            .expect("a complete reply");
        assert_eq!(reply.status, 413);
        assert!(reply.body.starts_with(br#"{"code":413,"#), "{reply:?}");
    }
}

// --- Subscription bombs ------------------------------------------------------------------

/// More filters in one SUBSCRIBE than `max_filters_per_subscribe` closes the connection
/// without granting any; a filter deeper than `max_topic_levels` gets SUBACK 0x80 while the
/// rest of its SUBSCRIBE is granted.
#[tokio::test]
async fn subscription_bombs_are_refused() {
    let registry = TestRegistry::new().await;
    let broker = registry
        .broker(SHANGHAI, |config| {
            config.limits.max_filters_per_subscribe = 4;
            config.limits.max_topic_levels = 4;
        })
        .await;

    let mut bomber = TcpStream::connect(broker.addr).await.unwrap();
    assert_eq!(mqtt_login(&mut bomber, "bomber", USER.0, USER.1).await, Some(Code::Success));
    let filters: Vec<String> = (0..5).map(|n| format!("bomb/{n}")).collect();
    let refs: Vec<(&str, raw::QoS)> =
        filters.iter().map(|f| (f.as_str(), raw::QoS::AtMostOnce)).collect();
    bomber.write_all(&raw::subscribe_packet(1, &refs)).await.unwrap();
    assert_eq!(closed_without_reply(&mut bomber).await, Vec::<u8>::new());
    assert_eq!(broker.daemon.broker.router().subscription_count(), 0);

    let mut deep = TcpStream::connect(broker.addr).await.unwrap();
    assert_eq!(mqtt_login(&mut deep, "deep", USER.0, USER.1).await, Some(Code::Success));
    let filters = [("a/b/c/d/#", raw::QoS::AtLeastOnce), ("a/b/c/#", raw::QoS::AtLeastOnce)];
    deep.write_all(&raw::subscribe_packet(2, &filters)).await.unwrap();
    let mut suback = [0u8; 6];
    tokio::time::timeout(HANG, deep.read_exact(&mut suback)).await.expect("SUBACK").unwrap();
    assert_eq!(suback, [0x90, 0x04, 0x00, 0x02, 0x80, 0x01]);
}

// --- Bounded queues ----------------------------------------------------------------------

/// The broker-wide queue cap (`max_queued_messages` 20, soft mark 15): an offline persistent
/// session stops being queued for at the soft mark, while an online subscriber that keeps up
/// receives every message. On return, the offline session gets what was kept, oldest first.
#[tokio::test]
async fn global_queue_cap_sheds_the_offline_backlog_not_the_live_subscriber() {
    let registry = TestRegistry::new().await;
    let broker = registry.broker(SHANGHAI, |config| config.limits.max_queued_messages = 20).await;
    let mut away_options = user_options(broker.addr, "away");
    away_options.set_clean_session(false);
    let (mut away, _) = Client::connect(away_options.clone()).await.unwrap();
    away.client.subscribe("load/#", QoS::AtLeastOnce).await.unwrap();
    away.expect(|p| matches!(p, Packet::SubAck(_))).await;
    away.client.disconnect().await.unwrap();
    let router = broker.daemon.broker.router();
    wait_until(|| !router.is_online("client:away")).await;

    let (mut live, _) = Client::connect(user_options(broker.addr, "live")).await.unwrap();
    live.client.subscribe("load/#", QoS::AtLeastOnce).await.unwrap();
    live.expect(|p| matches!(p, Packet::SubAck(_))).await;
    let (publisher, _) = Client::connect(user_options(broker.addr, "publisher")).await.unwrap();
    for n in 0..100 {
        publisher.client.publish("load/t", QoS::AtLeastOnce, false, format!("m{n}")).await.unwrap();
        assert_eq!(live.publish().await.payload, format!("m{n}").as_bytes());
    }
    let held = router.budget().used().messages;
    assert!(held <= 20, "the cap holds: {held}");

    let (mut away, session_present) = Client::connect(away_options).await.unwrap();
    assert!(session_present);
    publisher.client.publish("load/t", QoS::AtLeastOnce, false, "end").await.unwrap();
    let mut kept = Vec::new();
    loop {
        let publish = away.publish().await;
        if publish.payload == "end".as_bytes() {
            break;
        }
        let payload = String::from_utf8(publish.payload.to_vec()).unwrap();
        kept.push(payload.trim_start_matches('m').parse::<u32>().unwrap());
    }
    // In order, from the first; a message may be missing where the live subscriber's own
    // in-flight share briefly touched the soft mark.
    assert_eq!(kept.first(), Some(&0));
    assert!(kept.windows(2).all(|pair| pair[0] < pair[1]), "in order: {kept:?}");
    assert!(kept.len() <= 15, "kept {} of 100: {kept:?}", kept.len());
}

/// Bounded memory under a 10x overload: 20 offline persistent sessions are sent 160 MiB of
/// QoS 1 messages (distinct payloads, per-session queues set far above it), ten times
/// `max_queued_bytes` (16 MiB). The budget refuses what would exceed it, the process's resident
/// memory (broker and test together) grows by less than four times the cap, and a well-behaved
/// client is still served.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_overload_stays_within_the_queue_cap() {
    const SESSIONS: usize = 20;
    const PAYLOAD: usize = 8 * 1024;
    const CAP: usize = 16 * 1024 * 1024;
    const MESSAGES: usize = 10 * CAP / PAYLOAD;
    let registry = TestRegistry::new().await;
    let broker = registry
        .broker(SHANGHAI, |config| {
            config.limits.max_queued_bytes = CAP;
            config.limits.queued = 1_000_000;
        })
        .await;
    let router = broker.daemon.broker.router();
    for n in 0..SESSIONS {
        let id = format!("offline{n}");
        raw::park_subscriber(broker.addr, &id, USER, &format!("load/{n}")).await;
        wait_until(|| !router.is_online(&format!("client:{id}"))).await;
    }
    let before = resident_bytes();

    let mut flood = raw::Flood::open(broker.addr, "overload", USER).await;
    for m in 0..MESSAGES {
        let mut payload = Vec::with_capacity(PAYLOAD);
        payload.extend_from_slice(&(m as u64).to_be_bytes());
        payload.resize(PAYLOAD, (m % 251) as u8);
        flood.publish(&format!("load/{}", m % SESSIONS), payload).await;
    }
    flood.finish().await;

    let queued = router.budget().used();
    assert!(queued.bytes <= CAP, "queued {} bytes", queued.bytes);
    let grown = resident_bytes().saturating_sub(before);
    // Measured: about 18 MiB with the cap, 250 MiB without it. The margin covers allocator
    // slack and read buffers shared by queued payloads.
    let offered = MESSAGES * PAYLOAD;
    assert!(grown < 4 * CAP, "resident memory grew {grown} bytes for {offered} offered");

    let (mut live, _) = Client::connect(user_options(broker.addr, "live")).await.unwrap();
    live.client.subscribe("probe", QoS::AtLeastOnce).await.unwrap();
    live.expect(|p| matches!(p, Packet::SubAck(_))).await;
    live.client.publish("probe", QoS::AtLeastOnce, false, "still here").await.unwrap();
    assert_eq!(live.publish().await.payload, "still here".as_bytes());
}

/// This process's resident set size (Linux `/proc/self/status`).
#[cfg(target_os = "linux")]
fn resident_bytes() -> usize {
    meridian_broker::memory::resident_bytes().expect("VmRSS of /proc/self/status")
}

// --- Helpers -----------------------------------------------------------------------------

/// A TCP connection to `addr` from the loopback address `source`.
async fn connect_from(addr: SocketAddr, source: [u8; 4]) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((Ipv4Addr::from(source), 0))).expect("bind a loopback address");
    tokio::time::timeout(HANG, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Sends a CONNECT; returns the CONNACK code, or `None` when the broker closed the connection
/// without one (refused at accept).
async fn mqtt_login(
    stream: &mut TcpStream,
    client_id: &str,
    user: &str,
    password: &str,
) -> Option<Code> {
    let connect = raw::connect_packet(client_id, Some((user, password)), 60);
    raw::handshake(stream, &connect).await.ok().map(|connack| connack.code)
}

/// Logs a device in from `source` with its C SDK signature under `secret` (right or wrong).
async fn device_login(
    broker: &TestBroker,
    source: [u8; 4],
    device: &str,
    secret: &str,
) -> Option<Code> {
    let signed = sign_connect(SdkShape::CSdk, PRODUCT, device, secret, None);
    let mut stream = connect_from(broker.addr, source).await;
    mqtt_login(&mut stream, &signed.client_id, &signed.username, &signed.password).await
}

/// Reads until the peer closes; returns whatever it sent first.
async fn closed_without_reply(stream: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    let read =
        tokio::time::timeout(HANG, stream.read_to_end(&mut rest)).await.expect("closed in time");
    // A reset instead of an orderly close is a close too.
    let _ = read;
    rest
}

async fn wait_until(condition: impl Fn() -> bool) {
    tokio::time::timeout(HANG, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("condition reached in time");
}

/// An edge with an empty routing table on 127.0.0.1:0; dropping the sender stops it.
async fn start_edge(config: EdgeConfig) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (table, _writer) = RoutingTable::new();
    let locator =
        Locator::new(None, config.geoip.default_region.clone(), LocatorOptions::default());
    let edge = Edge::new(&config, Arc::clone(&table), locator, None).expect("valid config");
    let listener =
        tokio::net::TcpListener::bind((IpAddr::from(Ipv4Addr::LOCALHOST), 0)).await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(meridian_edge::run(listener, edge, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}
