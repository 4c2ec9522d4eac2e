//! Raw MQTT 3.1.1 over a plain socket, for what a client library will not do: a CONNECT with
//! exactly the fields a test names (a captured SDK login, a 1 s keepalive, a wrong protocol
//! level), a client that never reads, a CONNACK checked as it came off the wire.
//!
//! Packets are encoded by mqttbytes through the broker's own `codec::encode`, and CONNACKs
//! decoded by mqttbytes, so no test writes lengths or flag bits by hand. This module never
//! sends malformed bytes: a test about malformed input spells its bytes out itself, so the
//! reader sees exactly what goes on the wire.

use std::io;
use std::net::SocketAddr;

use bytes::BytesMut;
use mqttbytes::v4::{Subscribe, SubscribeFilter};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::task::JoinHandle;

pub use mqttbytes::QoS;
pub use mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode, Packet, Publish};

use crate::HANG;

/// The CONNACK accepting a clean session.
pub const ACCEPTED: ConnAck = ConnAck { session_present: false, code: ConnectReturnCode::Success };

/// Connects to `addr`, sends `connect` and returns the connection with the broker's CONNACK.
/// Panics if the broker closes the connection instead of answering.
pub async fn open(addr: SocketAddr, connect: &[u8]) -> (TcpStream, ConnAck) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the broker");
    let ack = handshake(&mut stream, connect).await.expect("a CONNACK, not a closed connection");
    (stream, ack)
}

/// Sends `connect` on `stream` and reads the broker's CONNACK.
///
/// # Errors
///
/// When the broker closed the connection instead of answering (refused at accept, say). A
/// failed write is such a refusal too: the broker may close before the CONNECT is out.
pub async fn handshake<S>(stream: &mut S, connect: &[u8]) -> io::Result<ConnAck>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(connect).await?;
    read_connack(stream).await
}

/// Reads the CONNACK that answers a CONNECT. Panics on any other packet, or on no answer
/// within [`HANG`].
///
/// # Errors
///
/// When the connection closes before a whole CONNACK arrived.
pub async fn read_connack<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<ConnAck> {
    let mut connack = [0u8; CONNACK_LEN];
    tokio::time::timeout(HANG, stream.read_exact(&mut connack)).await.expect("CONNACK in time")?;
    Ok(decode_connack(connack))
}

/// A CONNECT of MQTT 3.1.1 with a clean session, logging in as `login` (username, password)
/// when given. Its fields are public, for a test that needs a will, a persistent session or
/// another protocol level; [`encode`] it then.
pub fn connect(client_id: &str, login: Option<(&str, &str)>, keep_alive: u16) -> Connect {
    let mut connect = Connect::new(client_id);
    connect.keep_alive = keep_alive;
    if let Some((username, password)) = login {
        connect.set_login(username, password);
    }
    connect
}

/// The bytes of [`connect`]`(client_id, login, keep_alive)`.
pub fn connect_packet(client_id: &str, login: Option<(&str, &str)>, keep_alive: u16) -> Vec<u8> {
    encode(&Packet::Connect(connect(client_id, login, keep_alive)))
}

/// A SUBSCRIBE with packet id `pkid` for each `(filter, maximum QoS)`.
pub fn subscribe_packet(pkid: u16, filters: &[(&str, QoS)]) -> Vec<u8> {
    let filters = filters.iter().map(|&(path, qos)| SubscribeFilter::new(path.to_owned(), qos));
    let mut subscribe = Subscribe::new_many(filters);
    subscribe.pkid = pkid;
    encode(&Packet::Subscribe(subscribe))
}

/// The wire bytes of `packet`. Panics on a packet mqttbytes cannot write faithfully (a login
/// with an empty username, a QoS 1 PUBLISH with packet id 0).
pub fn encode(packet: &Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    meridian_broker::codec::encode(packet, &mut out).expect("an encodable packet");
    out.to_vec()
}

/// The same over `std::net` streams, for tests that drive daemon processes without a runtime.
pub mod blocking {
    use std::io::{self, Read, Write};

    use bytes::BytesMut;

    use super::{CONNACK_LEN, ConnAck, Packet, decode_connack};

    /// Reads the next whole packet (up to 1 MiB), a byte at a time so nothing after it is
    /// taken; a read timeout is the stream's own.
    ///
    /// # Errors
    ///
    /// When the stream ends or times out first, or the bytes are not MQTT 3.1.1.
    pub fn read_packet<S: Read>(stream: &mut S) -> io::Result<Packet> {
        let mut bytes = BytesMut::new();
        loop {
            match mqttbytes::v4::read(&mut bytes.clone(), 1 << 20) {
                Ok(packet) => return Ok(packet),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(error) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{error:?}")));
                }
            }
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte)?;
            bytes.extend_from_slice(&byte);
        }
    }

    /// Sends `connect` on `stream` and reads the broker's CONNACK. Panics on any other packet;
    /// a read timeout is the stream's own.
    ///
    /// # Errors
    ///
    /// When the broker closed the connection instead of answering, or the read timed out.
    pub fn handshake<S: Read + Write>(stream: &mut S, connect: &[u8]) -> io::Result<ConnAck> {
        stream.write_all(connect)?;
        let mut connack = [0u8; CONNACK_LEN];
        stream.read_exact(&mut connack)?;
        Ok(decode_connack(connack))
    }
}

/// A CONNACK's length in MQTT 3.1.1, fixed header included (§3.2): reading exactly that much
/// never takes a byte of what follows it.
const CONNACK_LEN: usize = 4;

/// Decodes what should be a CONNACK; panics on anything else.
fn decode_connack(bytes: [u8; CONNACK_LEN]) -> ConnAck {
    match mqttbytes::v4::read(&mut BytesMut::from(&bytes[..]), CONNACK_LEN) {
        Ok(Packet::ConnAck(ack)) => ack,
        other => panic!("expected a CONNACK, read {bytes:02x?}: {other:?}"),
    }
}

/// A persistent session (clean session 0) of `client_id` subscribed to `filter` at QoS 1, then
/// disconnected: everything published to it from now on waits in the broker's memory.
pub async fn park_subscriber(addr: SocketAddr, client_id: &str, login: (&str, &str), filter: &str) {
    let connect = Connect { clean_session: false, ..connect(client_id, Some(login), 60) };
    let (mut stream, _) = open(addr, &encode(&Packet::Connect(connect))).await;
    stream.write_all(&subscribe_packet(1, &[(filter, QoS::AtLeastOnce)])).await.expect("SUBSCRIBE");
    let mut suback = [0u8; 5];
    stream.read_exact(&mut suback).await.expect("SUBACK");
    assert_eq!(suback, [0x90, 0x03, 0x00, 0x01, 0x01], "SUBACK granting QoS 1");
    stream.write_all(&[0xE0, 0x00]).await.expect("DISCONNECT");
}

/// A publisher for overload tests, writing QoS 1 PUBLISHes as fast as the socket takes them.
/// Its PUBACKs are read as they come, so the broker never blocks writing them; [`Flood::finish`]
/// sends PINGREQ and waits for PINGRESP, which marks that everything before it was handled.
pub struct Flood {
    writer: OwnedWriteHalf,
    drained: JoinHandle<()>,
    sent: usize,
}

impl Flood {
    pub async fn open(addr: SocketAddr, client_id: &str, login: (&str, &str)) -> Flood {
        let (stream, _) = open(addr, &connect_packet(client_id, Some(login), 60)).await;
        let (mut reader, writer) = stream.into_split();
        let drained = tokio::spawn(async move {
            let mut packet = [0u8; 2];
            loop {
                reader.read_exact(&mut packet).await.expect("answers");
                match packet {
                    [0x40, 0x02] => {
                        let mut pkid = [0u8; 2];
                        reader.read_exact(&mut pkid).await.expect("PUBACK id");
                    }
                    [0xD0, 0x00] => return,
                    other => panic!("unexpected packet {other:02x?}"),
                }
            }
        });
        Flood { writer, drained, sent: 0 }
    }

    /// One QoS 1 PUBLISH.
    pub async fn publish(&mut self, topic: &str, payload: Vec<u8>) {
        self.send(topic, payload, false).await;
    }

    /// One retained QoS 1 PUBLISH.
    pub async fn publish_retained(&mut self, topic: &str, payload: Vec<u8>) {
        self.send(topic, payload, true).await;
    }

    async fn send(&mut self, topic: &str, payload: Vec<u8>, retain: bool) {
        let mut publish = mqttbytes::v4::Publish::new(topic, QoS::AtLeastOnce, payload);
        publish.retain = retain;
        publish.pkid = u16::try_from(self.sent % 65_535 + 1).expect("a packet id");
        self.sent += 1;
        self.writer.write_all(&encode(&Packet::Publish(publish))).await.expect("PUBLISH");
    }

    /// Waits until the broker has handled everything sent (bounded by the hang guard).
    pub async fn finish(mut self) {
        self.writer.write_all(&[0xC0, 0x00]).await.expect("PINGREQ");
        tokio::time::timeout(HANG * 4, self.drained)
            .await
            .expect("the broker handled the flood")
            .expect("PUBACK reader");
    }
}
