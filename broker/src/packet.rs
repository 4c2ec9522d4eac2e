//! The one packet vocabulary the session machine speaks, whichever protocol version the client
//! chose (PROTOCOL §11): MQTT 5.0's packets, which are 3.1.1's plus reason codes and properties.
//!
//! A 3.1.1 packet read from a client becomes its 5.0 form with no properties and success
//! reasons ([`from_v4`]); what the session sends a 3.1.1 client is written in 3.1.1's form, its
//! properties and reason strings dropped as the standard says ([`to_v4`]). So one session machine
//! serves both versions, and the version only matters at the codec.

use mqttbytes::v4;
pub use mqttbytes::v5::*;
pub use mqttbytes::{Protocol, QoS};

/// The protocol version a connection speaks, fixed by its CONNECT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    #[default]
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl Version {
    pub fn is_v5(self) -> bool {
        self == Version::V5
    }
}

/// A 3.1.1 packet in the session's vocabulary: no properties, success reasons.
pub fn from_v4(packet: v4::Packet) -> Packet {
    match packet {
        v4::Packet::Connect(connect) => Packet::Connect(Connect {
            protocol: Protocol::V4,
            keep_alive: connect.keep_alive,
            client_id: connect.client_id,
            clean_session: connect.clean_session,
            last_will: connect.last_will.map(|will| LastWill {
                topic: will.topic,
                message: will.message,
                qos: will.qos,
                retain: will.retain,
                properties: None,
            }),
            login: connect.login.map(|login| Login::new(login.username, login.password)),
            properties: None,
        }),
        v4::Packet::ConnAck(connack) => Packet::ConnAck(ConnAck::new(
            match connack.code {
                v4::ConnectReturnCode::Success => ConnectReturnCode::Success,
                v4::ConnectReturnCode::RefusedProtocolVersion => {
                    ConnectReturnCode::UnsupportedProtocolVersion
                }
                v4::ConnectReturnCode::BadClientId => ConnectReturnCode::ClientIdentifierNotValid,
                v4::ConnectReturnCode::ServiceUnavailable => ConnectReturnCode::ServerUnavailable,
                v4::ConnectReturnCode::BadUserNamePassword => {
                    ConnectReturnCode::BadUserNamePassword
                }
                v4::ConnectReturnCode::NotAuthorized => ConnectReturnCode::NotAuthorized,
            },
            connack.session_present,
        )),
        v4::Packet::Publish(publish) => Packet::Publish(Publish {
            dup: publish.dup,
            qos: publish.qos,
            retain: publish.retain,
            topic: publish.topic,
            pkid: publish.pkid,
            properties: None,
            payload: publish.payload,
        }),
        v4::Packet::PubAck(ack) => Packet::PubAck(PubAck::new(ack.pkid)),
        v4::Packet::PubRec(ack) => Packet::PubRec(PubRec::new(ack.pkid)),
        v4::Packet::PubRel(ack) => Packet::PubRel(PubRel::new(ack.pkid)),
        v4::Packet::PubComp(ack) => Packet::PubComp(PubComp::new(ack.pkid)),
        v4::Packet::Subscribe(subscribe) => Packet::Subscribe(Subscribe {
            pkid: subscribe.pkid,
            filters: subscribe
                .filters
                .into_iter()
                .map(|filter| SubscribeFilter::new(filter.path, filter.qos))
                .collect(),
            properties: None,
        }),
        v4::Packet::SubAck(suback) => Packet::SubAck(SubAck::new(
            suback.pkid,
            suback
                .return_codes
                .into_iter()
                .map(|code| match code {
                    v4::SubscribeReasonCode::Success(QoS::AtMostOnce) => SubscribeReasonCode::QoS0,
                    v4::SubscribeReasonCode::Success(QoS::AtLeastOnce) => SubscribeReasonCode::QoS1,
                    v4::SubscribeReasonCode::Success(QoS::ExactlyOnce) => SubscribeReasonCode::QoS2,
                    v4::SubscribeReasonCode::Failure => SubscribeReasonCode::Unspecified,
                })
                .collect(),
        )),
        v4::Packet::Unsubscribe(unsubscribe) => Packet::Unsubscribe(Unsubscribe {
            pkid: unsubscribe.pkid,
            filters: unsubscribe.topics,
            properties: None,
        }),
        v4::Packet::UnsubAck(ack) => Packet::UnsubAck(UnsubAck::new(ack.pkid)),
        v4::Packet::PingReq => Packet::PingReq,
        v4::Packet::PingResp => Packet::PingResp,
        v4::Packet::Disconnect => Packet::Disconnect(Disconnect::new()),
    }
}

/// The 3.1.1 form of a packet, properties and reason strings dropped; `None` for what 3.1.1
/// has no form for (a server's DISCONNECT: a 3.1.1 server just closes the connection).
pub fn to_v4(packet: &Packet) -> Option<v4::Packet> {
    Some(match packet {
        Packet::Connect(connect) => v4::Packet::Connect(v4::Connect {
            protocol: Protocol::V4,
            keep_alive: connect.keep_alive,
            client_id: connect.client_id.clone(),
            clean_session: connect.clean_session,
            last_will: connect.last_will.as_ref().map(|will| {
                v4::LastWill::new(&will.topic, will.message.to_vec(), will.qos, will.retain)
            }),
            login: connect.login.as_ref().map(|l| v4::Login::new(&*l.username, &*l.password)),
        }),
        Packet::ConnAck(connack) => v4::Packet::ConnAck(v4::ConnAck::new(
            v4_return_code(connack.code),
            connack.session_present,
        )),
        Packet::Publish(publish) => v4::Packet::Publish(v4::Publish {
            dup: publish.dup,
            qos: publish.qos,
            retain: publish.retain,
            topic: publish.topic.clone(),
            pkid: publish.pkid,
            payload: publish.payload.clone(),
        }),
        Packet::PubAck(ack) => v4::Packet::PubAck(v4::PubAck::new(ack.pkid)),
        Packet::PubRec(ack) => v4::Packet::PubRec(v4::PubRec::new(ack.pkid)),
        Packet::PubRel(ack) => v4::Packet::PubRel(v4::PubRel::new(ack.pkid)),
        Packet::PubComp(ack) => v4::Packet::PubComp(v4::PubComp::new(ack.pkid)),
        Packet::Subscribe(subscribe) => v4::Packet::Subscribe(v4::Subscribe {
            pkid: subscribe.pkid,
            filters: subscribe
                .filters
                .iter()
                .map(|filter| v4::SubscribeFilter::new(filter.path.clone(), filter.qos))
                .collect(),
        }),
        Packet::SubAck(suback) => v4::Packet::SubAck(v4::SubAck::new(
            suback.pkid,
            suback
                .return_codes
                .iter()
                .map(|code| match code {
                    SubscribeReasonCode::QoS0 => v4::SubscribeReasonCode::Success(QoS::AtMostOnce),
                    SubscribeReasonCode::QoS1 => v4::SubscribeReasonCode::Success(QoS::AtLeastOnce),
                    SubscribeReasonCode::QoS2 => v4::SubscribeReasonCode::Success(QoS::ExactlyOnce),
                    // MQTT 3.1.1 §3.9.3: 0x80 is its one failure code.
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Packet::Unsubscribe(unsubscribe) => v4::Packet::Unsubscribe(v4::Unsubscribe {
            pkid: unsubscribe.pkid,
            topics: unsubscribe.filters.clone(),
        }),
        Packet::UnsubAck(ack) => v4::Packet::UnsubAck(v4::UnsubAck::new(ack.pkid)),
        Packet::PingReq => v4::Packet::PingReq,
        Packet::PingResp => v4::Packet::PingResp,
        Packet::Disconnect(_) => return None,
    })
}

/// MQTT 5.0 §3.2.2.2 against 3.1.1 §3.2.2.3: the nearest 3.1.1 return code for a 5.0 reason.
pub fn v4_return_code(code: ConnectReturnCode) -> v4::ConnectReturnCode {
    use ConnectReturnCode as C;
    match code {
        C::Success => v4::ConnectReturnCode::Success,
        C::UnsupportedProtocolVersion => v4::ConnectReturnCode::RefusedProtocolVersion,
        C::ClientIdentifierNotValid => v4::ConnectReturnCode::BadClientId,
        C::ServerUnavailable | C::ServerBusy => v4::ConnectReturnCode::ServiceUnavailable,
        C::BadUserNamePassword => v4::ConnectReturnCode::BadUserNamePassword,
        _ => v4::ConnectReturnCode::NotAuthorized,
    }
}

/// The MQTT 5.0 reason for a refusal the authenticator states in 3.1.1 terms (SPEC §11: bad
/// signature 0x86, not authorized or disabled 0x87).
pub fn v5_return_code(code: v4::ConnectReturnCode) -> ConnectReturnCode {
    match code {
        v4::ConnectReturnCode::Success => ConnectReturnCode::Success,
        v4::ConnectReturnCode::RefusedProtocolVersion => {
            ConnectReturnCode::UnsupportedProtocolVersion
        }
        v4::ConnectReturnCode::BadClientId => ConnectReturnCode::ClientIdentifierNotValid,
        v4::ConnectReturnCode::ServiceUnavailable => ConnectReturnCode::ServerUnavailable,
        v4::ConnectReturnCode::BadUserNamePassword => ConnectReturnCode::BadUserNamePassword,
        v4::ConnectReturnCode::NotAuthorized => ConnectReturnCode::NotAuthorized,
    }
}

/// A DISCONNECT with `reason` and, when set, a reason string and server reference.
pub fn disconnect(
    reason: DisconnectReasonCode,
    reason_string: Option<&str>,
    server_reference: Option<String>,
) -> Packet {
    // Always with properties: mqttbytes writes a DISCONNECT whose reason and properties take
    // two bytes as an empty one, and clients (rumqttc) cannot read a reason code alone. The
    // broker's DISCONNECTs all carry a reason string, so theirs never take two bytes.
    let properties = Some(DisconnectProperties {
        session_expiry_interval: None,
        reason_string: reason_string.map(str::to_owned),
        user_properties: Vec::new(),
        server_reference,
    });
    Packet::Disconnect(Disconnect { reason_code: reason, properties })
}
