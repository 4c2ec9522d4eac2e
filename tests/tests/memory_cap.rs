//! The broker's resident-memory cap (`max_rss`) under a 10× overload, measured on a broker in
//! its own process (`broker-proc`): its resident set is sampled throughout and never reaches
//! the cap, a well-behaved subscriber receives every message meant for it, and the broker
//! still admits a new client afterwards.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use meridian_broker::memory::resident_bytes_of as resident;
use meridian_tests::{Client, HANG, USER, raw, user_options};
use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The broker process's cap.
const CAP: usize = 64 * 1024 * 1024;
const PAYLOAD: usize = 8 * 1024;
/// Ten times the cap, offered to sessions that never read.
const MESSAGES: usize = 10 * CAP / PAYLOAD;
const OFFLINE: usize = 20;
/// Every this many messages, one goes to the live subscriber.
const LIVE_EVERY: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_overload_keeps_the_broker_process_under_its_memory_cap() {
    // The queue budget is set far above the load, so the memory cap alone bounds it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_broker-proc"))
        .args([CAP.to_string(), (64 * CAP).to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn broker-proc");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = lines.next().expect("a line").expect("read");
    let addr: std::net::SocketAddr =
        line.strip_prefix("listening ").expect("listening line").parse().expect("address");
    let pid = child.id();
    let baseline = resident(pid).expect("broker RSS");
    assert!(baseline < CAP / 2, "the broker starts at {baseline} bytes: the cap means nothing");

    // Sampled every millisecond from another thread for as long as the load runs.
    let peak = Arc::new(AtomicUsize::new(baseline));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let (peak, stop) = (peak.clone(), stop.clone());
        move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(rss) = resident(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    });

    // Persistent sessions that subscribe and go away: everything sent to them waits in memory.
    for n in 0..OFFLINE {
        raw::park_subscriber(addr, &format!("offline{n}"), USER, &format!("load/{n}")).await;
    }
    // A subscriber that keeps up.
    let (mut live, _) = Client::connect(user_options(addr, "live")).await.unwrap();
    live.client.subscribe("live/#", QoS::AtLeastOnce).await.unwrap();
    live.expect(|packet| matches!(packet, rumqttc::Packet::SubAck(_))).await;
    let live_expected = MESSAGES.div_ceil(LIVE_EVERY);
    let received = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < live_expected {
            let publish = live.publish().await;
            seen.push(String::from_utf8(publish.payload.to_vec()).unwrap());
        }
        seen
    });

    let mut flood = raw::Flood::open(addr, "overload", USER).await;
    for m in 0..MESSAGES {
        if m % LIVE_EVERY == 0 {
            flood.publish(&format!("live/{m}"), m.to_string().into_bytes()).await;
        } else {
            let mut payload = Vec::with_capacity(PAYLOAD);
            payload.extend_from_slice(&(m as u64).to_be_bytes());
            payload.resize(PAYLOAD, (m % 251) as u8);
            flood.publish(&format!("load/{}", m % OFFLINE), payload).await;
        }
    }
    flood.finish().await;
    let seen = tokio::time::timeout(HANG, received).await.expect("live messages").unwrap();

    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak < CAP, "resident set peaked at {peak} bytes, cap {CAP} (from {baseline})");
    // The shedding engaged: far more was offered than the cap.
    assert!(peak > CAP / 2, "peak {peak}: the load never came near the cap");
    // The subscriber that keeps up lost nothing, in order.
    let expected: Vec<String> = (0..MESSAGES).step_by(LIVE_EVERY).map(|m| m.to_string()).collect();
    assert_eq!(seen, expected);

    // Still up, and admitting: a new client connects.
    let (_stream, ack) = raw::open(addr, &raw::connect_packet("after", Some(USER), 60)).await;
    assert_eq!(ack.code, raw::ConnectReturnCode::Success);

    drop(child.stdin.take());
    child.wait().expect("broker-proc exits when its stdin closes");
}

/// Retained messages sent on SUBSCRIBE go through the same bounded path as live ones. One
/// client holding 64 copies of `#` in each of four SUBSCRIBEs over 8 MiB of retained messages,
/// and reading nothing after its first SUBACK, used to have every match encoded at once (512
/// MiB for one SUBSCRIBE); now it is owed one cursor, written a batch at a time, and the
/// broker's resident set stays under its cap while a client that reads gets each retained
/// message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_for_repeated_filters_stay_under_the_memory_cap() {
    const RETAINED: usize = 1_000;
    let mut child = Command::new(env!("CARGO_BIN_EXE_broker-proc"))
        .args([CAP.to_string(), (64 * CAP).to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn broker-proc");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = lines.next().expect("a line").expect("read");
    let addr: std::net::SocketAddr =
        line.strip_prefix("listening ").expect("listening line").parse().expect("address");
    let pid = child.id();
    let baseline = resident(pid).expect("broker RSS");

    let peak = Arc::new(AtomicUsize::new(baseline));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let (peak, stop) = (peak.clone(), stop.clone());
        move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(rss) = resident(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    });

    let mut flood = raw::Flood::open(addr, "retainer", USER).await;
    for m in 0..RETAINED {
        let mut payload = (m as u64).to_be_bytes().to_vec();
        payload.resize(PAYLOAD, (m % 251) as u8);
        flood.publish_retained(&format!("kept/{m}"), payload).await;
    }
    flood.finish().await;

    // The attacker: 64 × `#` per SUBSCRIBE (the most one SUBSCRIBE may hold), four times.
    let (mut attacker, _) =
        raw::open(addr, &raw::connect_packet("attacker", Some(USER), 600)).await;
    let filters = [("#", raw::QoS::AtMostOnce); 64];
    attacker.write_all(&raw::subscribe_packet(1, &filters)).await.unwrap();
    let mut suback = [0u8; 68];
    attacker.read_exact(&mut suback).await.unwrap();
    assert_eq!(suback[..4], [0x90, 66, 0, 1], "the SUBACK comes first");
    assert!(suback[4..].iter().all(|code| *code == 0), "all 64 granted");
    for pkid in 2..=4 {
        attacker.write_all(&raw::subscribe_packet(pkid, &filters)).await.unwrap();
    }

    // A client that reads gets every retained message once, however often it names `#`.
    let (mut reader, _) = Client::connect(user_options(addr, "reader")).await.unwrap();
    let repeated = (0..8).map(|_| rumqttc::SubscribeFilter::new("kept/#".into(), QoS::AtMostOnce));
    reader.client.subscribe_many(repeated).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < RETAINED {
        let publish = reader.publish().await;
        assert!(publish.retain, "{}", publish.topic);
        assert!(seen.insert(publish.topic.clone()), "{} sent twice", publish.topic);
    }
    // Nothing more of them before a live message sent after.
    reader.client.subscribe("after", QoS::AtLeastOnce).await.unwrap();
    reader.expect(|p| matches!(p, rumqttc::Packet::SubAck(_))).await;
    let (marker, _) = Client::connect(user_options(addr, "marker")).await.unwrap();
    marker.client.publish("after", QoS::AtLeastOnce, false, "end").await.unwrap();
    assert_eq!(reader.publish().await.topic, "after");

    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak < CAP, "resident set peaked at {peak} bytes, cap {CAP} (from {baseline})");
    let (_stream, ack) = raw::open(addr, &raw::connect_packet("after", Some(USER), 60)).await;
    assert_eq!(ack.code, raw::ConnectReturnCode::Success);
    drop(attacker);
    drop(child.stdin.take());
    child.wait().expect("broker-proc exits when its stdin closes");
}
