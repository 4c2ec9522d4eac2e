//! A minimal MQTT 3.1.1 (or, with `MERIDIAN_BENCH_MQTT=5` in the environment, 5.0) client over
//! tokio and `mqttbytes`, for generating load. The protocol is read from the environment so
//! that every scenario and the client processes `hold` starts speak the same one.
//!
//! Why not rumqttc: every rumqttc client is an event loop with its own request channel, state
//! and buffers, which costs tens of KiB and a task wake-up per request. The load generator
//! shares the machine's two cores with the broker under test, so every cycle it spends is one
//! the broker does not get. Here a connection is a socket and two buffers; CONNECT packets are
//! encoded (and signed) before the timed phase, so the timed work on the client side is a
//! socket connect, one write and one read. What it does not do: QoS 2, retries, session
//! resumption, TLS.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use mqttbytes::QoS;
use mqttbytes::v4::{self, ConnectReturnCode, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Largest packet the client accepts (the throughput payloads are at most a few KiB).
const MAX_PACKET: usize = 1 << 20;

/// Whether this process speaks MQTT 5.0 (`MERIDIAN_BENCH_MQTT=5`): CONNECT at level 5, an empty
/// property list in what it sends, and what it reads taken as 5.0 and seen in 3.1.1's terms.
pub fn v5() -> bool {
    static V5: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V5.get_or_init(|| std::env::var("MERIDIAN_BENCH_MQTT").is_ok_and(|v| v == "5"))
}

/// How a client logs in.
#[derive(Clone, Debug)]
pub enum Login {
    /// No username (Mosquitto with `allow_anonymous`, rumqttd without auth).
    Anonymous,
    /// A standard MQTT user.
    User { username: String, password: String },
    /// A PROTOCOL §2 signed device login (already signed).
    Device { client_id: String, username: String, password: String },
}

/// Encodes a CONNECT packet with `client_id` (ignored for a device login, which carries its own).
pub fn connect_packet(client_id: &str, login: &Login, keep_alive: u16) -> Bytes {
    let mut connect = v4::Connect::new(client_id);
    connect.keep_alive = keep_alive;
    match login {
        Login::Anonymous => {}
        Login::User { username, password } => {
            connect.set_login(username.as_str(), password.as_str());
        }
        Login::Device { client_id, username, password } => {
            connect.client_id = client_id.clone();
            connect.set_login(username.as_str(), password.as_str());
        }
    }
    let mut buffer = BytesMut::with_capacity(connect.len() + 8);
    if v5() {
        let v5 = mqttbytes::v5::Connect {
            protocol: mqttbytes::Protocol::V5,
            keep_alive: connect.keep_alive,
            client_id: connect.client_id,
            clean_session: connect.clean_session,
            last_will: None,
            login: connect.login.map(|l| mqttbytes::v5::Login::new(l.username, l.password)),
            properties: None,
        };
        let _ = v5.write(&mut buffer);
        return buffer.freeze();
    }
    // Encoding a CONNECT into a growable buffer fails only for fields over 64 KiB.
    let _ = connect.write(&mut buffer);
    buffer.freeze()
}

/// Why a connection attempt did not end in an accepted CONNACK.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectFailure {
    /// Binding the source address or the TCP handshake failed.
    Tcp(String),
    /// The broker answered with a refusing CONNACK.
    Refused(String),
    /// The broker closed the connection before a CONNACK.
    Closed,
    /// No CONNACK within the timeout.
    Timeout,
    /// Something other than a CONNACK arrived, or bytes that are not MQTT.
    Protocol(String),
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectFailure::Tcp(e) => write!(f, "tcp: {e}"),
            ConnectFailure::Refused(code) => write!(f, "CONNACK {code}"),
            ConnectFailure::Closed => write!(f, "closed before CONNACK"),
            ConnectFailure::Timeout => write!(f, "no CONNACK in time"),
            ConnectFailure::Protocol(e) => write!(f, "protocol: {e}"),
        }
    }
}

/// One client connection: the socket and a read buffer.
pub struct Connection {
    pub stream: TcpStream,
    pub read: BytesMut,
}

impl Connection {
    /// Opens a TCP connection from `source` (port chosen by the kernel), sends `connect` and
    /// waits for an accepting CONNACK.
    pub async fn open(
        source: Option<IpAddr>,
        to: SocketAddr,
        connect: &[u8],
        timeout: Duration,
    ) -> Result<Connection, ConnectFailure> {
        match tokio::time::timeout(timeout, Self::open_inner(source, to, connect)).await {
            Ok(result) => result,
            Err(_) => Err(ConnectFailure::Timeout),
        }
    }

    async fn open_inner(
        source: Option<IpAddr>,
        to: SocketAddr,
        connect: &[u8],
    ) -> Result<Connection, ConnectFailure> {
        let stream =
            tcp_connect(source, to).await.map_err(|e| ConnectFailure::Tcp(e.kind().to_string()))?;
        let mut connection = Connection { stream, read: BytesMut::with_capacity(256) };
        connection.stream.write_all(connect).await.map_err(|_| ConnectFailure::Closed)?;
        match connection.next().await {
            Ok(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => Ok(connection),
            Ok(Packet::ConnAck(ack)) => Err(ConnectFailure::Refused(format!("{:?}", ack.code))),
            Ok(other) => Err(ConnectFailure::Protocol(format!("{other:?} before CONNACK"))),
            Err(ReadError::Closed) => Err(ConnectFailure::Closed),
            Err(ReadError::Malformed(e)) => Err(ConnectFailure::Protocol(e)),
        }
    }

    /// Reads the next packet.
    pub async fn next(&mut self) -> Result<Packet, ReadError> {
        loop {
            if let Some(packet) = self.buffered()? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }

    /// A packet already in the read buffer, if a whole one is there.
    pub fn buffered(&mut self) -> Result<Option<Packet>, ReadError> {
        if v5() {
            return match mqttbytes::v5::read(&mut self.read, MAX_PACKET) {
                Ok(packet) => match meridian_broker::packet::to_v4(&packet) {
                    Some(packet) => Ok(Some(packet)),
                    None => Err(ReadError::Closed),
                },
                Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(ReadError::Malformed(format!("{e:?}"))),
            };
        }
        match v4::read(&mut self.read, MAX_PACKET) {
            Ok(packet) => Ok(Some(packet)),
            Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(ReadError::Malformed(format!("{e:?}"))),
        }
    }

    /// Reads more bytes from the socket into the buffer.
    pub async fn fill(&mut self) -> Result<(), ReadError> {
        self.read.reserve(16 * 1024);
        match self.stream.read_buf(&mut self.read).await {
            Ok(0) | Err(_) => Err(ReadError::Closed),
            Ok(_) => Ok(()),
        }
    }

    /// Subscribes to `filter` and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), ReadError> {
        let mut subscribe = v4::Subscribe::new(filter, qos);
        subscribe.pkid = 1;
        let mut buffer = BytesMut::new();
        if v5() {
            let mut subscribe = mqttbytes::v5::Subscribe::new(filter, qos);
            subscribe.pkid = 1;
            let _ = subscribe.write(&mut buffer);
        } else {
            let _ = subscribe.write(&mut buffer);
        }
        self.stream.write_all(&buffer).await.map_err(|_| ReadError::Closed)?;
        loop {
            match self.next().await? {
                Packet::SubAck(ack) => {
                    return match ack.return_codes.first() {
                        Some(v4::SubscribeReasonCode::Success(_)) => Ok(()),
                        other => Err(ReadError::Malformed(format!("SUBACK {other:?}"))),
                    };
                }
                _ => continue,
            }
        }
    }
}

/// Why reading a packet failed.
#[derive(Debug)]
pub enum ReadError {
    /// The connection was closed or reset.
    Closed,
    /// The bytes are not a valid MQTT packet.
    Malformed(String),
}

/// A TCP connection from `source` with `TCP_NODELAY`, as the brokers set on their side.
pub async fn tcp_connect(source: Option<IpAddr>, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if to.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = socket.connect(to).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Appends a PUBLISH of `size` payload bytes to `buffer`: `head` first, zeros after.
///
/// Encoded by hand rather than through `mqttbytes::v4::Publish` so the publisher allocates
/// nothing per message (no topic `String`, no payload `Bytes`).
pub fn write_publish(
    buffer: &mut BytesMut,
    topic: &str,
    qos: QoS,
    pkid: u16,
    head: &[u8],
    size: usize,
) {
    let qos = qos as u8;
    let properties = usize::from(v5());
    let remaining = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + properties + size;
    buffer.reserve(remaining + 5);
    buffer.put_u8(0x30 | (qos << 1));
    let mut length = remaining;
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        buffer.put_u8(byte);
        if length == 0 {
            break;
        }
    }
    buffer.put_u16(topic.len() as u16);
    buffer.put_slice(topic.as_bytes());
    if qos > 0 {
        buffer.put_u16(pkid);
    }
    if properties > 0 {
        // MQTT 5.0 §3.3.2.3: an empty property list.
        buffer.put_u8(0);
    }
    let head = &head[..head.len().min(size)];
    buffer.put_slice(head);
    buffer.put_bytes(0, size - head.len());
}

/// Appends a PUBACK to `buffer`.
pub fn write_puback(buffer: &mut BytesMut, pkid: u16) {
    let _ = v4::PubAck::new(pkid).write(buffer);
}

/// Appends a PINGREQ to `buffer`.
pub fn write_pingreq(buffer: &mut BytesMut) {
    let _ = v4::PingReq.write(buffer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_encoded_publish_decodes() {
        for (qos, size) in
            [(QoS::AtMostOnce, 16), (QoS::AtLeastOnce, 1024), (QoS::AtLeastOnce, 200_000)]
        {
            let mut buffer = BytesMut::new();
            write_publish(&mut buffer, "b/1/p/7", qos, 42, &[1, 2, 3], size);
            let Ok(Packet::Publish(publish)) = v4::read(&mut buffer, MAX_PACKET) else {
                panic!("not a PUBLISH");
            };
            assert_eq!(publish.topic, "b/1/p/7");
            assert_eq!(publish.qos, qos);
            assert_eq!(publish.payload.len(), size);
            assert_eq!(&publish.payload[..3], &[1, 2, 3]);
            if qos == QoS::AtLeastOnce {
                assert_eq!(publish.pkid, 42);
            }
            assert!(buffer.is_empty());
        }
    }
}
