//! MQTT 3.1.1 and 5.0 framing on top of `mqttbytes`, with the checks it leaves out.
//!
//! `mqttbytes` parses packets but does not enforce fixed-header flag bits, CONNECT's reserved and
//! will flags, or the protocol level (it would read an MQTT 5 CONNECT with 3.1.1 rules). Those
//! checks run here on the raw bytes first, so everything the session sees is well formed.
//!
//! [`decode`] and [`encode`] speak 3.1.1's packets (the tests' raw clients and the bench use
//! them); [`read`] and [`write`] speak the session's version-aware [`crate::packet::Packet`]
//! for a connection of either version (PROTOCOL §11).

use bytes::BytesMut;
use mqttbytes::v4::{self, Packet};
use mqttbytes::v5;

use crate::packet::{self, Version};

/// Why bytes from a client could not become a packet.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The CONNECT asks for a protocol level other than 3.1.1 (answered with CONNACK 0x01).
    #[error("unacceptable protocol level")]
    UnacceptableProtocol,
    /// The packet exceeds the broker's maximum packet size.
    #[error("packet of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The bytes break MQTT 3.1.1 framing or a packet's rules.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// A well-formed packet the protocol does not allow here (MQTT 5.0 reason 0x82): an AUTH
    /// from a client that did not start enhanced authentication.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

/// Takes one complete packet off the front of `buffer` in the session's vocabulary, read by
/// the rules of `version`; `None` before CONNECT, when the CONNECT's protocol level decides
/// (a CONNECT of level 5 is read as 5.0, anything else as 3.1.1, which refuses other levels).
/// `Ok(None)` if more bytes are needed.
pub fn read(
    buffer: &mut BytesMut,
    max_packet: usize,
    version: Option<Version>,
) -> Result<Option<packet::Packet>, DecodeError> {
    let version = match version {
        Some(version) => version,
        None => match connect_level(buffer) {
            Some(5) => Version::V5,
            _ => Version::V311,
        },
    };
    match version {
        Version::V311 => Ok(decode(buffer, max_packet)?.map(packet::from_v4)),
        Version::V5 => decode_v5(buffer, max_packet),
    }
}

/// The protocol level of the CONNECT at the front of `buffer`, once its header has arrived.
fn connect_level(buffer: &[u8]) -> Option<u8> {
    if buffer.first()? >> 4 != 1 {
        return None;
    }
    // Only this packet's bytes, as in `decode`: a cut-off CONNECT is judged alike however the
    // bytes after it arrived.
    let frame = mqttbytes::check(buffer.iter(), usize::MAX).ok()?.frame_length();
    let body = buffer.get(fixed_header_len(buffer)..frame)?;
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    if body.get(2..2 + name_len)? != b"MQTT" {
        return None;
    }
    body.get(2 + name_len).copied()
}

/// MQTT 5.0 framing: the same fixed-header rules as 3.1.1 plus AUTH, acknowledgements with
/// reason codes and properties, and subscription options.
fn decode_v5(
    buffer: &mut BytesMut,
    max_packet: usize,
) -> Result<Option<packet::Packet>, DecodeError> {
    let Some(&first) = buffer.first() else { return Ok(None) };
    if first >> 4 != 15 {
        check_flags(first)?;
    } else if first & 0x0F != 0 {
        return Err(DecodeError::Malformed("invalid fixed header flags"));
    }
    let (header_len, frame_len) = match mqttbytes::check(buffer.iter(), max_packet) {
        Ok(header) => (fixed_header_len(buffer), header.frame_length()),
        Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
        Err(mqttbytes::Error::PayloadSizeLimitExceeded(size)) => {
            return Err(DecodeError::TooLarge(size));
        }
        Err(_) => return Err(DecodeError::Malformed("bad remaining length")),
    };
    let body = &buffer[header_len..frame_len];
    check_property_length(first, body)?;
    let username_flag = match first >> 4 {
        1 => {
            let flags = check_connect_v5(body)?;
            flags & USERNAME_FLAG != 0 || flags & PASSWORD_FLAG != 0
        }
        8 => {
            check_subscribe_v5(body)?;
            false
        }
        // PINGREQ and PINGRESP have no body (MQTT 5.0 §3.12, §3.13).
        12 | 13 if !body.is_empty() => {
            return Err(DecodeError::Malformed("wrong remaining length for the packet type"));
        }
        // An acknowledgement is at least its packet id (MQTT 5.0 §3.4–§3.7, §3.9, §3.11).
        4..=7 | 9 | 11 if body.len() < 2 => {
            return Err(DecodeError::Malformed("wrong remaining length for the packet type"));
        }
        // MQTT 5.0 §4.12: AUTH only continues an enhanced authentication the CONNECT began,
        // and the broker accepts no CONNECT that begins one.
        15 => return Err(DecodeError::Protocol("AUTH without an authentication method")),
        _ => false,
    };
    // MQTT 5.0 §3.14.2.1: a DISCONNECT of remaining length 0 is a normal disconnection; the
    // reader mqttbytes has wants a body.
    if first >> 4 == 14 && body.is_empty() {
        let _ = buffer.split_to(frame_len);
        return Ok(Some(packet::Packet::Disconnect(v5::Disconnect::new())));
    }
    // §3.14.2.2.1: a DISCONNECT of remaining length 1 is its reason code alone (no property
    // length), which mqttbytes refuses (found by fuzzing: DISCONNECT 0x04, "with will").
    if first >> 4 == 14
        && let [reason] = *body
    {
        let reason_code = v5::DisconnectReasonCode::try_from(reason)
            .map_err(|_| DecodeError::Malformed("invalid DISCONNECT reason code"))?;
        let _ = buffer.split_to(frame_len);
        return Ok(Some(packet::Packet::Disconnect(v5::Disconnect {
            reason_code,
            properties: None,
        })));
    }
    let mut packet =
        v5::read(buffer, max_packet).map_err(|error| DecodeError::Malformed(describe(&error)))?;
    // MQTT-3.3.4-6: a client's PUBLISH carries no subscription identifier (found by fuzzing:
    // mqttbytes read them, and wrote them back differently).
    if let v5::Packet::Publish(publish) = &packet
        && publish.properties.as_ref().is_some_and(|p| !p.subscription_identifiers.is_empty())
    {
        return Err(DecodeError::Protocol("subscription identifier in a client's PUBLISH"));
    }
    // As for 3.1.1 (see `decode`): set login flags with empty strings are a login.
    if let v5::Packet::Connect(connect) = &mut packet
        && username_flag
        && connect.login.is_none()
    {
        connect.login = Some(v5::Login::new("", ""));
    }
    Ok(Some(packet))
}

/// Appends `packet` to `out` in the form `version` has for it; a packet 3.1.1 has no form for
/// (a server's DISCONNECT) appends nothing.
///
/// # Errors
///
/// [`DecodeError::Malformed`] for a packet mqttbytes cannot write.
pub fn write(
    packet: &packet::Packet,
    version: Version,
    out: &mut BytesMut,
) -> Result<(), DecodeError> {
    if version == Version::V311 {
        return match packet::to_v4(packet) {
            Some(packet) => encode(&packet, out),
            None => Ok(()),
        };
    }
    use packet::Packet as P;
    let result = match packet {
        P::Connect(p) => p.write(out),
        // mqttbytes writes a CONNACK without properties with no property length, which
        // 5.0 requires (§3.2.2.3; found by fuzzing): written with an empty list instead.
        P::ConnAck(p) if p.properties.is_none() => {
            let mut with = p.clone();
            with.properties = Some(v5::ConnAckProperties::new());
            with.write(out)
        }
        P::ConnAck(p) => p.write(out),
        P::Publish(p) => p.write(out),
        P::PubAck(p) => p.write(out),
        P::PubRec(p) => p.write(out),
        P::PubRel(p) => p.write(out),
        P::PubComp(p) => p.write(out),
        P::Subscribe(p) => p.write(out),
        P::SubAck(p) => p.write(out),
        P::Unsubscribe(p) => p.write(out),
        P::UnsubAck(p) => p.write(out),
        P::PingReq => v5::PingReq.write(out),
        P::PingResp => v5::PingResp.write(out),
        P::Disconnect(p) => p.write(out),
    };
    result.map(drop).map_err(|error| DecodeError::Malformed(describe(&error)))
}

/// The bytes `packet` takes on the wire in `version`, for the client's maximum packet size
/// (MQTT 5.0 §3.1.2.11.4).
pub fn wire_size(packet: &packet::Packet, version: Version) -> usize {
    let mut out = BytesMut::new();
    write(packet, version, &mut out).map_or(usize::MAX, |()| out.len())
}

/// MQTT 5.0 §3.1.2: as [`check_connect`], except that a password without a username is
/// allowed (§3.1.2.9). Returns the connect flags.
fn check_connect_v5(body: &[u8]) -> Result<u8, DecodeError> {
    let short = || DecodeError::Malformed("truncated CONNECT header");
    let length = body.get(..2).ok_or_else(short)?;
    let name_len = usize::from(u16::from_be_bytes([length[0], length[1]]));
    let name = body.get(2..2 + name_len).ok_or_else(short)?;
    let level = *body.get(2 + name_len).ok_or_else(short)?;
    let flags = *body.get(3 + name_len).ok_or_else(short)?;
    if (name, level) != (b"MQTT".as_slice(), 5) {
        return Err(DecodeError::Malformed("not an MQTT 5.0 CONNECT"));
    }
    if flags & 0b0000_0001 != 0 {
        return Err(DecodeError::Malformed("reserved CONNECT flag set"));
    }
    let will = flags & 0b0000_0100 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0b0010_0000 != 0;
    if will_qos == 3 || (!will && (will_qos != 0 || will_retain)) {
        return Err(DecodeError::Malformed("invalid will flags"));
    }
    Ok(flags)
}

/// MQTT 5.0 §3.8.3.1: subscription options; bits 6 and 7 are reserved [MQTT-3.8.3-5], QoS 3
/// and retain handling 3 are malformed. Skips the properties first.
fn check_subscribe_v5(body: &[u8]) -> Result<(), DecodeError> {
    let Some(after_id) = body.get(2..) else { return Ok(()) };
    let Some((properties_len, len_len)) = variable_int(after_id) else { return Ok(()) };
    let mut rest = after_id.get(len_len + properties_len..).unwrap_or_default();
    while let [high, low, after @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*high, *low]));
        let Some(&options) = after.get(len) else { break };
        if options & 0b1100_0000 != 0 || options & 0b11 == 3 || (options >> 4) & 0b11 == 3 {
            return Err(DecodeError::Malformed("invalid subscription options"));
        }
        rest = &after[len + 1..];
    }
    Ok(())
}

/// MQTT 5.0 §2.2.2: a packet's property length must fit inside the packet. mqttbytes reads
/// the properties of a PUBLISH whose property length runs past its end from the payload's bytes
/// (found by fuzzing: the payload then changed on re-encoding). The header before the
/// properties is mqttbytes' to check: when it is cut short this leaves it be.
fn check_property_length(first: u8, body: &[u8]) -> Result<(), DecodeError> {
    let u16_at =
        |at: usize| body.get(at..at + 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    let at = match first >> 4 {
        // CONNECT: protocol name, level, flags, keep alive.
        1 => u16_at(0).map(|name| 2 + name + 4),
        3 => {
            let id = if (first >> 1) & 0b11 > 0 { 2 } else { 0 };
            u16_at(0).map(|topic| 2 + topic + id)
        }
        // Acknowledgements: packet id and reason code, when there are properties at all.
        4..=7 if body.len() > 3 => Some(3),
        // SUBSCRIBE, UNSUBSCRIBE: the packet id.
        8 | 10 => Some(2),
        14 if body.len() > 1 => Some(1),
        _ => None,
    };
    let Some(at) = at else { return Ok(()) };
    let Some(rest) = body.get(at..) else { return Ok(()) };
    match variable_int(rest) {
        Some((len, len_len)) if len_len + len > rest.len() => {
            Err(DecodeError::Malformed("properties overrun the packet"))
        }
        _ => Ok(()),
    }
}

/// A variable byte integer (MQTT 5.0 §1.5.5) and how many bytes it took.
fn variable_int(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (n, byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * n);
        if byte & 0x80 == 0 {
            return Some((value, n + 1));
        }
    }
    None
}

/// Takes one complete packet off the front of `buffer`, or `Ok(None)` if more bytes are needed.
pub fn decode(buffer: &mut BytesMut, max_packet: usize) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buffer.first() else { return Ok(None) };
    check_flags(first)?;
    let (header_len, frame_len) = match mqttbytes::check(buffer.iter(), max_packet) {
        Ok(header) => (fixed_header_len(buffer), header.frame_length()),
        Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
        Err(mqttbytes::Error::PayloadSizeLimitExceeded(size)) => {
            return Err(DecodeError::TooLarge(size));
        }
        Err(_) => return Err(DecodeError::Malformed("bad remaining length")),
    };
    // Only this packet's bytes: the buffer may already hold the next packets, and a CONNECT
    // must be judged the same whether they arrived with it or not (found by fuzzing).
    let body = &buffer[header_len..frame_len];
    check_length(first, body.len())?;
    let username_flag = match first >> 4 {
        1 => check_connect(body)? & USERNAME_FLAG != 0,
        8 => {
            check_subscribe(body)?;
            false
        }
        _ => false,
    };
    let mut packet =
        v4::read(buffer, max_packet).map_err(|error| DecodeError::Malformed(describe(&error)))?;
    // mqttbytes reads a CONNECT whose username and password flags are set but whose strings
    // are empty as no login at all, which would make it anonymous; it is a login with an
    // empty username (found by fuzzing).
    if let Packet::Connect(connect) = &mut packet
        && username_flag
        && connect.login.is_none()
    {
        connect.login = Some(v4::Login::new("", ""));
    }
    Ok(Some(packet))
}

/// CONNECT flag: a username follows (MQTT 3.1.1 §3.1.2.8).
const USERNAME_FLAG: u8 = 0b1000_0000;
/// CONNECT flag: a password follows (MQTT 5.0 §3.1.2.9).
const PASSWORD_FLAG: u8 = 0b0100_0000;

/// Appends `packet` to `out`.
///
/// # Errors
///
/// [`DecodeError::Malformed`] for a packet mqttbytes cannot write faithfully: a CONNECT whose
/// login has an empty username (it would drop the username flag but keep the password, which
/// no server accepts). The broker never sends CONNECT; this keeps the bench and tests honest.
pub fn encode(packet: &Packet, out: &mut BytesMut) -> Result<(), DecodeError> {
    if let Packet::Connect(connect) = packet
        && connect.login.as_ref().is_some_and(|login| login.username.is_empty())
    {
        return Err(DecodeError::Malformed("CONNECT with an empty username cannot be encoded"));
    }
    let result = match packet {
        Packet::Connect(p) => p.write(out),
        Packet::ConnAck(p) => p.write(out),
        Packet::Publish(p) => p.write(out),
        Packet::PubAck(p) => p.write(out),
        Packet::PubRec(p) => p.write(out),
        Packet::PubRel(p) => p.write(out),
        Packet::PubComp(p) => p.write(out),
        Packet::Subscribe(p) => p.write(out),
        Packet::SubAck(p) => p.write(out),
        Packet::Unsubscribe(p) => p.write(out),
        Packet::UnsubAck(p) => p.write(out),
        Packet::PingReq => v4::PingReq.write(out),
        Packet::PingResp => v4::PingResp.write(out),
        Packet::Disconnect => v4::Disconnect.write(out),
    };
    result.map(drop).map_err(|error| DecodeError::Malformed(describe(&error)))
}

/// Length of the fixed header (type byte plus 1-4 remaining-length bytes) of a buffer whose
/// header `mqttbytes::check` already accepted.
fn fixed_header_len(buffer: &[u8]) -> usize {
    let length_bytes = buffer.iter().skip(1).take(4).position(|byte| byte & 0x80 == 0);
    1 + length_bytes.map_or(4, |position| position + 1)
}

/// MQTT 3.1.1 §2.2.2: the low nibble of the first byte is fixed per packet type.
fn check_flags(first: u8) -> Result<(), DecodeError> {
    let flags = first & 0x0F;
    let ok = match first >> 4 {
        0 | 15 => return Err(DecodeError::Malformed("reserved packet type")),
        3 => {
            let qos = (flags >> 1) & 0b11;
            qos != 3 && !(qos == 0 && flags & 0b1000 != 0)
        }
        6 | 8 | 10 => flags == 0b0010,
        _ => flags == 0,
    };
    if ok { Ok(()) } else { Err(DecodeError::Malformed("invalid fixed header flags")) }
}

/// MQTT 3.1.1 fixes the remaining length of the packets without a payload; mqttbytes reads a
/// PINGREQ or DISCONNECT with a body, or an acknowledgement with trailing bytes, as if they
/// were well formed.
fn check_length(first: u8, body: usize) -> Result<(), DecodeError> {
    let expected = match first >> 4 {
        // PINGREQ, PINGRESP, DISCONNECT (§3.12, §3.13, §3.14).
        12..=14 => 0,
        // CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK (§3.2, §3.4–§3.7, §3.11).
        2 | 4..=7 | 11 => 2,
        _ => return Ok(()),
    };
    if body == expected {
        Ok(())
    } else {
        Err(DecodeError::Malformed("wrong remaining length for the packet type"))
    }
}

/// MQTT 3.1.1 §3.8.3.1: the upper six bits of each requested-QoS byte are reserved and must be
/// zero [MQTT-3-8.3-4]; mqttbytes masks them off. The rest of the layout is mqttbytes' to
/// check: a truncated filter here is left for it to refuse.
fn check_subscribe(body: &[u8]) -> Result<(), DecodeError> {
    let mut rest = body.get(2..).unwrap_or_default();
    while let [high, low, after @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*high, *low]));
        let Some(&options) = after.get(len) else { break };
        if options & 0b1111_1100 != 0 {
            return Err(DecodeError::Malformed("reserved bits set in a requested QoS"));
        }
        rest = &after[len + 1..];
    }
    Ok(())
}

/// MQTT 3.1.1 §3.1.2: protocol name and level, reserved flag, will and password flags.
/// Returns the connect flags.
fn check_connect(body: &[u8]) -> Result<u8, DecodeError> {
    let short = || DecodeError::Malformed("truncated CONNECT header");
    let length = body.get(..2).ok_or_else(short)?;
    let name_len = usize::from(u16::from_be_bytes([length[0], length[1]]));
    let name = body.get(2..2 + name_len).ok_or_else(short)?;
    let level = *body.get(2 + name_len).ok_or_else(short)?;
    let flags = *body.get(3 + name_len).ok_or_else(short)?;
    match (name, level) {
        (b"MQTT", 4) => {}
        (b"MQTT", _) | (b"MQIsdp", _) => return Err(DecodeError::UnacceptableProtocol),
        _ => return Err(DecodeError::Malformed("unknown protocol name")),
    }
    if flags & 0b0000_0001 != 0 {
        return Err(DecodeError::Malformed("reserved CONNECT flag set"));
    }
    let will = flags & 0b0000_0100 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0b0010_0000 != 0;
    if will_qos == 3 || (!will && (will_qos != 0 || will_retain)) {
        return Err(DecodeError::Malformed("invalid will flags"));
    }
    let username = flags & 0b1000_0000 != 0;
    let password = flags & 0b0100_0000 != 0;
    if password && !username {
        return Err(DecodeError::Malformed("password without username"));
    }
    Ok(flags)
}

fn describe(error: &mqttbytes::Error) -> &'static str {
    use mqttbytes::Error as E;
    match error {
        E::TopicNotUtf8 => "string is not UTF-8",
        E::InvalidQoS(_) => "invalid QoS",
        E::PacketIdZero => "packet identifier 0",
        E::MalformedRemainingLength => "bad remaining length",
        E::PayloadRequired => "packet requires a payload",
        E::BoundaryCrossed(_) | E::MalformedPacket | E::IncorrectPacketFormat => {
            "packet body does not match its length"
        }
        E::InvalidProtocol | E::InvalidProtocolLevel(_) => "invalid protocol",
        E::InvalidSubscribeReasonCode(_) => "invalid subscription options",
        _ => "invalid packet",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
        decode(&mut BytesMut::from(bytes), 1024)
    }

    fn connect_bytes(name: &[u8], level: u8, flags: u8) -> Vec<u8> {
        let mut body = vec![0, name.len() as u8];
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, flags, 0, 60, 0, 1, b'c']);
        let mut packet = vec![0x10, body.len() as u8];
        packet.extend_from_slice(&body);
        packet
    }

    #[test]
    fn partial_packets_wait_for_more() {
        assert_eq!(decode_all(&[]), Ok(None));
        assert_eq!(decode_all(&[0x30]), Ok(None));
        assert_eq!(decode_all(&[0x30, 10, 0]), Ok(None));
    }

    #[test]
    fn round_trips() {
        let mut out = BytesMut::new();
        let publish = v4::Publish::new("a/b", mqttbytes::QoS::AtLeastOnce, vec![1, 2, 3]);
        let mut publish = publish;
        publish.pkid = 7;
        encode(&Packet::Publish(publish.clone()), &mut out).unwrap();
        encode(&Packet::PingResp, &mut out).unwrap();
        assert_eq!(decode(&mut out, 1024), Ok(Some(Packet::Publish(publish))));
        assert_eq!(decode(&mut out, 1024), Ok(Some(Packet::PingResp)));
        assert!(out.is_empty());
    }

    #[test]
    fn connect_checks() {
        assert!(matches!(
            decode_all(&connect_bytes(b"MQTT", 4, 0x02)),
            Ok(Some(Packet::Connect(_)))
        ));
        assert_eq!(
            decode_all(&connect_bytes(b"MQTT", 5, 0x02)),
            Err(DecodeError::UnacceptableProtocol)
        );
        assert_eq!(
            decode_all(&connect_bytes(b"MQIsdp", 3, 0x02)),
            Err(DecodeError::UnacceptableProtocol)
        );
        assert!(matches!(
            decode_all(&connect_bytes(b"HTTP", 4, 0x02)),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_all(&connect_bytes(b"MQTT", 4, 0x03)),
            Err(DecodeError::Malformed(_))
        ));
        // Will QoS without the will flag; will QoS 3; password without username.
        for flags in [0x0A, 0x1E, 0x42] {
            assert!(
                matches!(
                    decode_all(&connect_bytes(b"MQTT", 4, flags)),
                    Err(DecodeError::Malformed(_))
                ),
                "{flags:#x}"
            );
        }
    }

    #[test]
    fn fixed_header_checks() {
        // SUBSCRIBE must carry flags 0b0010.
        assert!(matches!(decode_all(&[0x80, 0]), Err(DecodeError::Malformed(_))));
        // PUBLISH with QoS 3, and QoS 0 with DUP.
        assert!(matches!(decode_all(&[0x36, 0]), Err(DecodeError::Malformed(_))));
        assert!(matches!(decode_all(&[0x38, 0]), Err(DecodeError::Malformed(_))));
        // Reserved types.
        assert!(matches!(decode_all(&[0x00, 0]), Err(DecodeError::Malformed(_))));
        assert!(matches!(decode_all(&[0xF0, 0]), Err(DecodeError::Malformed(_))));
        // Five remaining-length bytes.
        assert!(matches!(
            decode_all(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(DecodeError::Malformed(_))
        ));
        // PINGREQ with flags.
        assert!(matches!(decode_all(&[0xC1, 0]), Err(DecodeError::Malformed(_))));
    }

    /// MQTT-3.8.3-4: a requested-QoS byte with any of its upper six bits set is malformed,
    /// in whichever filter of the SUBSCRIBE it is.
    #[test]
    fn subscribe_reserved_qos_bits_are_malformed() {
        // pkid 1, "a" QoS 1, "b" QoS 0.
        let good = [0x82, 10, 0, 1, 0, 1, b'a', 0x01, 0, 1, b'b', 0x00];
        assert!(matches!(decode_all(&good), Ok(Some(Packet::Subscribe(_)))));
        for (at, options) in [(7, 0x05), (11, 0x80), (11, 0x04)] {
            let mut bad = good;
            bad[at] = options;
            assert_eq!(
                decode_all(&bad),
                Err(DecodeError::Malformed("reserved bits set in a requested QoS")),
                "options {options:#x} at {at}"
            );
        }
        // A truncated filter is still mqttbytes' to refuse, not a panic here.
        assert!(matches!(decode_all(&[0x82, 5, 0, 1, 0, 9, b'a']), Err(DecodeError::Malformed(_))));
    }

    /// PINGREQ and DISCONNECT have no body; acknowledgements are exactly a packet id.
    #[test]
    fn fixed_length_packets_must_have_their_length() {
        assert_eq!(decode_all(&[0xC0, 0]), Ok(Some(Packet::PingReq)));
        assert_eq!(decode_all(&[0xE0, 0]), Ok(Some(Packet::Disconnect)));
        let wrong = Err(DecodeError::Malformed("wrong remaining length for the packet type"));
        assert_eq!(decode_all(&[0xC0, 1, 0]), wrong);
        assert_eq!(decode_all(&[0xE0, 2, 0, 0]), wrong);
        assert_eq!(decode_all(&[0x40, 3, 0, 1, 0]), wrong);
        assert_eq!(decode_all(&[0x62, 4, 0, 1, 0, 0]), wrong);
        assert_eq!(decode_all(&[0x40, 2, 0, 1]), Ok(Some(Packet::PubAck(v4::PubAck::new(1)))));
    }

    #[test]
    fn oversize_is_refused_before_reading_the_body() {
        assert_eq!(
            decode(&mut BytesMut::from(&[0x30u8, 0x80, 0x08][..]), 100),
            Err(DecodeError::TooLarge(1024))
        );
    }

    /// Regression (fuzz target `mqtt_decode`): the CONNECT checks read past the packet into
    /// whatever the client had already sent after it, so a CONNECT cut off inside its protocol
    /// header was judged by the next packet's bytes (here, as a protocol level 5 refusal), and
    /// differently depending on how the bytes were split across reads.
    #[test]
    fn connect_checks_stay_inside_the_packet() {
        let cut = [0x10, 0x06, 0, 4, b'M', b'Q', b'T', b'T'];
        let mut pipelined = cut.to_vec();
        pipelined.extend_from_slice(&[0x05, 0x02, 0, 60, 0, 1, b'c']);
        let expected = Err(DecodeError::Malformed("truncated CONNECT header"));
        assert_eq!(decode_all(&cut), expected);
        assert_eq!(decode_all(&pipelined), expected);
    }

    /// Regression (fuzz target `mqtt_decode`): mqttbytes turns a login whose username and
    /// password are both empty into no login (anonymous), and writes a login with an empty
    /// username without the username flag but with the password.
    #[test]
    fn empty_username_is_a_login_not_anonymous() {
        let mut bytes = vec![0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60];
        bytes.extend_from_slice(&[0, 1, b'c', 0, 0, 0, 0]);
        let Ok(Some(Packet::Connect(connect))) = decode_all(&bytes) else {
            panic!("a valid CONNECT");
        };
        assert_eq!(connect.login, Some(v4::Login::new("", "")));

        let mut connect = connect;
        connect.login = Some(v4::Login::new("", "secret"));
        assert!(encode(&Packet::Connect(connect), &mut BytesMut::new()).is_err());
    }

    fn read_v5(bytes: &[u8]) -> Result<Option<packet::Packet>, DecodeError> {
        read(&mut BytesMut::from(bytes), 1024, Some(Version::V5))
    }

    /// A CONNECT's protocol level picks the rules: 5 is read as MQTT 5.0 (with its properties),
    /// 4 as 3.1.1, anything else is refused as 3.1.1 refuses it.
    #[test]
    fn connect_level_picks_the_version() {
        let v5 =
            [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 5, 0x11, 0, 0, 0, 9, 0, 1];
        let mut v5 = v5.to_vec();
        v5.push(b'c');
        v5[1] = (v5.len() - 2) as u8;
        let Ok(Some(packet::Packet::Connect(connect))) =
            read(&mut BytesMut::from(&v5[..]), 1024, None)
        else {
            panic!("a 5.0 CONNECT");
        };
        assert_eq!(connect.protocol, packet::Protocol::V5);
        assert_eq!(connect.properties.and_then(|p| p.session_expiry_interval), Some(9));
        let v4 = connect_bytes(b"MQTT", 4, 0x02);
        assert!(matches!(
            read(&mut BytesMut::from(&v4[..]), 1024, None),
            Ok(Some(packet::Packet::Connect(c))) if c.protocol == packet::Protocol::V4
        ));
        let v6 = connect_bytes(b"MQTT", 6, 0x02);
        assert_eq!(
            read(&mut BytesMut::from(&v6[..]), 1024, None),
            Err(DecodeError::UnacceptableProtocol)
        );
    }

    /// Regression (fuzz target `mqtt5_decode`): a DISCONNECT that is its reason code alone was
    /// malformed to mqttbytes; so is an empty one, which is a normal disconnection.
    #[test]
    fn short_disconnects() {
        let with_will = read_v5(&[0xE0, 1, 0x04]).unwrap().unwrap();
        assert_eq!(
            with_will,
            packet::Packet::Disconnect(v5::Disconnect {
                reason_code: v5::DisconnectReasonCode::DisconnectWithWillMessage,
                properties: None
            })
        );
        assert_eq!(
            read_v5(&[0xE0, 0]),
            Ok(Some(packet::Packet::Disconnect(v5::Disconnect::new())))
        );
        assert!(matches!(read_v5(&[0xE0, 1, 0x03]), Err(DecodeError::Malformed(_))));
    }

    /// MQTT 5.0 §3.8.3.1: reserved option bits, QoS 3 and retain handling 3 are malformed;
    /// AUTH (the broker starts no enhanced authentication) is a protocol error.
    #[test]
    fn v5_subscribe_options_and_auth() {
        // pkid 1, no properties, "a" with No Local, Retain As Published, retain handling 2, QoS 1.
        let good = [0x82, 7, 0, 1, 0, 0, 1, b'a', 0b10_1101];
        let Ok(Some(packet::Packet::Subscribe(subscribe))) = read_v5(&good) else {
            panic!("a 5.0 SUBSCRIBE");
        };
        let filter = &subscribe.filters[0];
        assert!(filter.nolocal && filter.preserve_retain);
        assert_eq!(filter.retain_forward_rule, v5::RetainForwardRule::Never);
        for options in [0b0100_0001, 0b0000_0011, 0b0011_0001] {
            let mut bad = good;
            bad[8] = options;
            assert_eq!(read_v5(&bad), Err(DecodeError::Malformed("invalid subscription options")));
        }
        assert!(matches!(read_v5(&[0xF0, 0]), Err(DecodeError::Protocol(_))));
    }

    /// What 3.1.1 has no form for is dropped toward a 3.1.1 client; reason codes become its.
    #[test]
    fn writing_for_3_1_1_drops_what_it_cannot_say() {
        let mut out = BytesMut::new();
        let disconnect =
            packet::disconnect(v5::DisconnectReasonCode::KeepAliveTimeout, Some("x"), None);
        write(&disconnect, Version::V311, &mut out).unwrap();
        assert!(out.is_empty(), "a 3.1.1 server sends no DISCONNECT");
        let suback = v5::SubAck::new(
            3,
            vec![v5::SubscribeReasonCode::QoS1, v5::SubscribeReasonCode::NotAuthorized],
        );
        write(&packet::Packet::SubAck(suback), Version::V311, &mut out).unwrap();
        assert_eq!(&out[..], &[0x90, 4, 0, 3, 1, 0x80]);
    }

    /// Regression (fuzz target `mqtt5_decode`): a PUBLISH whose property length runs past its
    /// end had its properties read out of its payload.
    #[test]
    fn properties_must_fit_the_packet() {
        // QoS 1 "a", pkid 1, property length 9 but only 3 bytes follow.
        let bad = [0x32, 9, 0, 1, b'a', 0, 1, 9, 0x01, 0x01, b'x'];
        assert_eq!(read_v5(&bad), Err(DecodeError::Malformed("properties overrun the packet")));
        let good = [0x32, 9, 0, 1, b'a', 0, 1, 2, 0x01, 0x01, b'x'];
        assert!(matches!(read_v5(&good), Ok(Some(packet::Packet::Publish(_)))));
        // Regression (fuzz target `mqtt5_decode`): a subscription identifier is the broker's
        // to send, never a client's (MQTT-3.3.4-6).
        let with_id = [0x32, 9, 0, 1, b'a', 0, 1, 2, 0x0B, 0x05, b'x'];
        assert!(matches!(read_v5(&with_id), Err(DecodeError::Protocol(_))));
    }

    #[test]
    fn bad_utf8_topic() {
        let bytes = [0x30, 5, 0, 2, 0xC3, 0x28, b'x'];
        assert!(matches!(decode_all(&bytes), Err(DecodeError::Malformed(_))));
    }
}
