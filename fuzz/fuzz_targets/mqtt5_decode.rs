//! The broker's MQTT 5.0 decoder (`codec::read` with the 5.0 rules: mqttbytes' v5 reader plus
//! Meridian's framing checks) on arbitrary bytes, then every packet it accepts through a 5.0
//! standard client's session.
//!
//! Properties beyond "never panics":
//! - decoding the bytes in small chunks yields exactly the packets and the error that decoding
//!   them in one piece does;
//! - every accepted packet but CONNECT (which the broker never writes) re-encodes with
//!   `codec::write` to bytes that decode to the same packet;
//! - whatever the session answers encodes.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use meridian_broker::acl::{Principal, Profile};
use meridian_broker::codec::{self, DecodeError};
use meridian_broker::packet::{Packet, Version};
use meridian_broker::session::{Limits, Session, V5Settings};
use meridian_broker::view::RegistryView;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the packet-size limit and the chunk size; the rest is the stream.
    let Some((&knobs, stream)) = data.split_first() else { return };
    let max_packet = [16, 256, 4096, 1 << 20][usize::from(knobs & 3)];
    let chunk = usize::from(knobs >> 2) + 1;

    let whole = decode_stream(stream, max_packet, stream.len().max(1));
    let trickled = decode_stream(stream, max_packet, chunk);
    assert_eq!(whole, trickled, "chunked decoding differs from whole decoding");

    for packet in &whole.0 {
        if let Packet::Connect(_) = packet {
            continue;
        }
        let mut out = BytesMut::new();
        if codec::write(packet, Version::V5, &mut out).is_err() {
            continue;
        }
        let again = codec::read(&mut out, 1 << 28, Some(Version::V5));
        assert_eq!(again.as_ref(), Ok(&Some(packet.clone())), "re-encoded packet differs");
        assert!(out.is_empty(), "re-encoding left bytes behind");
    }

    drive_session(whole.0);
});

/// Every packet `stream` holds, fed `chunk` bytes at a time, and the error that stopped it.
/// The first packet is read as a CONNECT decides (so a stream need not start with one), the
/// rest by the 5.0 rules.
fn decode_stream(
    stream: &[u8],
    max_packet: usize,
    chunk: usize,
) -> (Vec<Packet>, Option<DecodeError>) {
    let mut buffer = BytesMut::new();
    let mut packets = Vec::new();
    for piece in stream.chunks(chunk) {
        buffer.extend_from_slice(piece);
        loop {
            match codec::read(&mut buffer, max_packet, Some(Version::V5)) {
                Ok(Some(packet)) => packets.push(packet),
                Ok(None) => break,
                Err(error) => return (packets, Some(error)),
            }
        }
    }
    (packets, None)
}

/// The packets after a leading CONNECT, as a connected 5.0 standard client would send them.
fn drive_session(mut packets: Vec<Packet>) {
    if let Some(Packet::Connect(_)) = packets.first() {
        packets.remove(0);
    }
    static VIEW: OnceLock<RegistryView> = OnceLock::new();
    let view = VIEW.get_or_init(RegistryView::default);
    let start = Instant::now();
    let limits =
        Limits { inflight: 4, queued: 8, max_filters_per_subscribe: 8, max_topic_levels: 8 };
    let profile = Profile::standard(4096, 16);
    let principal = Principal::Standard { username: Some("fuzz".into()) };
    let mut session = Session::new(start, principal, profile, limits, 30, None, None)
        .with_connection(1)
        .with_v5(V5Settings {
            client_receive_maximum: 2,
            client_maximum_packet: Some(256),
            client_topic_alias_maximum: 2,
            receive_maximum: 4,
            topic_alias_maximum: 4,
            session_expiry: Some(Duration::from_secs(60)),
            asked_expiry: true,
        });
    for (n, packet) in packets.into_iter().enumerate() {
        let now = start + Duration::from_millis(n as u64);
        let result = session.handle_packet(now, packet, view);
        while let Some(packet) = session.poll_transmit() {
            let mut out = BytesMut::new();
            codec::write(&packet, Version::V5, &mut out).expect("the session's packets encode");
        }
        while session.poll_event().is_some() {}
        if result.is_err() {
            return;
        }
    }
}
