//! The tokio driver of one client connection: reads bytes into packets for the [`Session`],
//! writes the packets it produces, and wakes it for deliveries, kicks and its keepalive timer.
//! No protocol decision is made here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::auth::Credentials;
use crate::broker::Broker;
use crate::budget::Load;
use crate::codec::{self, DecodeError};
use crate::metrics as m;
use crate::router::{Handle, Kick};
use crate::session::{Close, Delivery, Event, Message, Session};

/// Read buffer reserved when a read needs room. Small, because most packets are small and an
/// idle connection should hold as little as possible.
const READ_CHUNK: usize = 512;
/// How long a closing connection may spend flushing its last packets.
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);
/// Buffers grown beyond this by a large packet are released once empty.
const KEEP_BUFFER: usize = 8 * 1024;

/// Why a connection ended, for logs and metrics.
#[derive(Debug)]
// The payloads are read through `Debug` in the disconnect log line.
#[allow(dead_code)]
enum Ended {
    Session(Close),
    Kicked(Kick),
    Decode(DecodeError),
    Io(std::io::Error),
    PeerClosed,
}

/// Serves one accepted connection until it ends.
pub async fn serve<S>(broker: Arc<Broker>, mut stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut buffer = BytesMut::new();
    let limits = broker.limits();
    let connect = tokio::time::timeout(
        limits.connect_timeout,
        read_connect(&mut stream, &mut buffer, limits.max_packet),
    )
    .await;
    let connect = match connect {
        Ok(Ok(connect)) => connect,
        Ok(Err(Ended::Decode(DecodeError::UnacceptableProtocol))) => {
            m::connect_result("unacceptable_protocol");
            let _ = write_packet(
                &mut stream,
                &Packet::ConnAck(ConnAck::new(ConnectReturnCode::RefusedProtocolVersion, false)),
            )
            .await;
            return;
        }
        Ok(Err(ended)) => {
            m::connect_result("malformed");
            if let Ended::Decode(DecodeError::TooLarge(_)) = ended {
                m::limited("max_packet");
            }
            tracing::debug!(%peer, ?ended, "connection closed before CONNECT");
            return;
        }
        Err(_) => {
            m::connect_result("timeout");
            m::limited("connect_timeout");
            tracing::debug!(%peer, "no CONNECT in time");
            return;
        }
    };

    let mut client_id = connect.client_id.clone();
    if client_id.is_empty() {
        if !connect.clean_session {
            m::connect_result("identifier_rejected");
            let _ = write_packet(&mut stream, &connack(ConnectReturnCode::BadClientId)).await;
            return;
        }
        client_id = broker.assign_client_id();
    }
    let login = connect.login.as_ref();
    let username = login.map(|l| l.username.as_str());
    // Guessing is answered before any password is checked, the same way whichever side is
    // backed off, so a guesser learns nothing and costs nothing.
    if let Err(backed_off) = broker.auth_backoff().check(peer.ip(), username, Instant::now()) {
        m::limited(backed_off.label());
        m::connect_result(m::refusal(ConnectReturnCode::NotAuthorized));
        tracing::info!(%peer, client_id = %client_id, "CONNECT refused: login back-off");
        let _ = write_packet(&mut stream, &connack(ConnectReturnCode::NotAuthorized)).await;
        return;
    }
    let offered = Credentials {
        client_id: &client_id,
        username,
        password: login.map(|l| l.password.as_bytes()),
        keep_alive: connect.keep_alive,
    };
    let accepted = match broker.authenticator().authenticate(offered) {
        Ok(accepted) => {
            broker.auth_backoff().succeeded(username);
            accepted
        }
        Err(code) => {
            // Only a wrong credential is a guess; placement and keepalive refusals follow a
            // correct signature.
            if code == ConnectReturnCode::BadUserNamePassword {
                broker.auth_backoff().failed(peer.ip(), username, Instant::now());
            }
            m::connect_result(m::refusal(code));
            // Never log credentials: the username is safe to name, the password is not.
            tracing::info!(%peer, client_id = %client_id, ?code, "CONNECT refused");
            let _ = write_packet(&mut stream, &connack(code)).await;
            return;
        }
    };

    let session_id: Arc<str> = match accepted.principal.device() {
        Some(device) => Broker::device_session_id(device).into(),
        None => client_id.as_str().into(),
    };
    let connection = broker.next_connection_id();
    let (mailbox_tx, mut mailbox) = mpsc::channel(limits.mailbox);
    let (control_tx, mut control) = mpsc::unbounded_channel();
    let (finished_tx, finished) = watch::channel(());
    let handle = Handle { connection, mailbox: mailbox_tx, control: control_tx, finished };
    let parked = broker.router().connect(&session_id, connect.clean_session, handle).await;
    let session_present = parked.is_some();
    // What was queued for a persistent client while it was away, on a device its account no
    // longer owns (SPEC §6), is not handed over on its return.
    let parked = parked.map(|mut parked| {
        let may_receive =
            |d: &Delivery| accepted.principal.may_receive(&d.message.topic, broker.view());
        for delivery in parked.retain_pending(may_receive) {
            broker.router().budget().release(Load::of(&delivery));
            m::dropped("not_permitted");
        }
        parked
    });

    let will = connect.last_will.map(|will| Message {
        topic: will.topic.into(),
        payload: will.message,
        qos: will.qos as u8,
        retain: will.retain,
    });
    let mut session = Session::new(
        Instant::now(),
        accepted.principal,
        accepted.profile,
        *broker.router().limits(),
        accepted.keep_alive,
        will,
        parked,
    );
    m::connect_result("accepted");
    m::connection_opened();
    broker.usage().opened(connection, Instant::now());
    tracing::debug!(%peer, session = %session_id, session_present, "connected");

    // The session's share of the broker-wide queue budget: a resumed session's queue is already
    // reserved (the router held it while parked); from here on it moves with `adjust`.
    let mut held = session.load();
    let mut out = BytesMut::new();
    codec::encode(
        &Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, session_present)),
        &mut out,
    )
    .unwrap_or_default();
    broker.drain_events(&session_id, &mut session);

    let ended = loop {
        while let Some(packet) = session.poll_transmit() {
            if let Packet::Publish(_) = packet {
                broker.usage().message_out();
            }
            m::packet_out(&packet);
            if let Err(error) = codec::encode(&packet, &mut out) {
                tracing::warn!(?error, "could not encode an outgoing packet");
            }
        }
        if !out.is_empty() {
            m::bytes_out(out.len());
            // A client that stops reading blocks this write; a kick (slow consumer, takeover,
            // shutdown) must still get through.
            tokio::select! {
                written = async { stream.write_all(&out).await?; stream.flush().await } => {
                    if let Err(error) = written {
                        break Ended::Io(error);
                    }
                }
                Some(kick) = control.recv() => break Ended::Kicked(kick),
            }
            out.clear();
            if out.capacity() > KEEP_BUFFER {
                out = BytesMut::new();
            }
        }

        let deadline = session.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            read = read_some(&mut stream, &mut buffer) => {
                match read {
                    Ok(0) => break Ended::PeerClosed,
                    Ok(n) => m::bytes_in(n),
                    Err(error) => break Ended::Io(error),
                }
                if let Err(ended) = handle_input(&broker, &session_id, &mut session, &mut buffer, limits.max_packet) {
                    break ended;
                }
            }
            Some(delivery) = mailbox.recv() => {
                deliver(&broker, &mut session, delivery);
                // Take whatever else is already waiting, so one wake-up writes many messages.
                while let Ok(delivery) = mailbox.try_recv() {
                    deliver(&broker, &mut session, delivery);
                }
            }
            Some(kick) = control.recv() => break Ended::Kicked(kick),
            _ = sleep_until(deadline) => {
                if let Err(close) = session.handle_timeout(Instant::now()) {
                    break Ended::Session(close);
                }
            }
        }
        let now = session.load();
        broker.router().budget().adjust(held, now);
        held = now;
    };
    // Deliveries still in the mailbox will never be read: give their reservations back. Once
    // closed, the router's sends fail and it releases those itself.
    mailbox.close();
    while let Ok(delivery) = mailbox.try_recv() {
        broker.router().budget().release(Load::of(&delivery));
    }
    broker.router().budget().adjust(held, session.load());

    let graceful =
        matches!(ended, Ended::Session(Close::Disconnect) | Ended::Kicked(Kick::Shutdown));
    // Best effort, bounded: a peer that stopped reading must not hold the task open.
    let _ = tokio::time::timeout(FINAL_FLUSH, async {
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        stream.shutdown().await
    })
    .await;
    if !graceful && let Some(will) = session.take_will() {
        broker.publish(will);
    }
    let filters: Vec<String> = session.filters().map(str::to_owned).collect();
    broker.router().disconnect(&session_id, connection, session.park(), &filters);
    drop(finished_tx);
    m::connection_closed();
    broker.usage().closed(connection, Instant::now());
    tracing::debug!(%peer, session = %session_id, ?ended, "disconnected");
}

/// Hands a routed message to the session, unless its client may no longer receive it (an
/// application client whose account no longer owns the device, SPEC §6).
fn deliver(broker: &Broker, session: &mut Session, delivery: Delivery) {
    // The router reserved each mailbox entry; what the session keeps is accounted as `held`.
    broker.router().budget().release(Load::of(&delivery));
    if !session.principal().may_receive(&delivery.message.topic, broker.view()) {
        m::dropped("not_permitted");
        return;
    }
    if !session.handle_delivery(delivery) {
        m::dropped("queue_full");
    }
}

/// Decodes and handles every complete packet in `buffer`.
fn handle_input(
    broker: &Broker,
    session_id: &Arc<str>,
    session: &mut Session,
    buffer: &mut BytesMut,
    max_packet: usize,
) -> Result<(), Ended> {
    loop {
        let packet = match codec::decode(buffer, max_packet) {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            Err(error) => {
                m::dropped("malformed_packet");
                if let DecodeError::TooLarge(_) = error {
                    m::limited("max_packet");
                }
                return Err(Ended::Decode(error));
            }
        };
        if let Packet::Publish(_) = packet {
            broker.usage().message_in();
        }
        m::packet_in(&packet);
        let result = session.handle_packet(Instant::now(), packet, broker.view());
        broker.drain_events(session_id, session);
        result.map_err(Ended::Session)?;
    }
    if buffer.is_empty() && buffer.capacity() > KEEP_BUFFER {
        *buffer = BytesMut::new();
    }
    Ok(())
}

/// Reads until the first packet, which must be CONNECT.
async fn read_connect<S>(
    stream: &mut S,
    buffer: &mut BytesMut,
    max_packet: usize,
) -> Result<Connect, Ended>
where
    S: AsyncRead + Unpin,
{
    loop {
        match codec::decode(buffer, max_packet) {
            Ok(Some(Packet::Connect(connect))) => return Ok(connect),
            Ok(Some(_)) => {
                return Err(Ended::Session(Close::ProtocolViolation(
                    "first packet is not CONNECT",
                )));
            }
            Ok(None) => {}
            Err(error) => return Err(Ended::Decode(error)),
        }
        match read_some(stream, buffer).await {
            Ok(0) => return Err(Ended::PeerClosed),
            Ok(_) => {}
            Err(error) => return Err(Ended::Io(error)),
        }
    }
}

async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut BytesMut,
) -> std::io::Result<usize> {
    if buffer.capacity() - buffer.len() < READ_CHUNK / 4 {
        buffer.reserve(READ_CHUNK);
    }
    stream.read_buf(buffer).await
}

async fn write_packet<S: AsyncWrite + Unpin>(
    stream: &mut S,
    packet: &Packet,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    codec::encode(packet, &mut out).map_err(std::io::Error::other)?;
    stream.write_all(&out).await?;
    stream.shutdown().await
}

fn connack(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(ConnAck::new(code, false))
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Broker {
    /// Hands the session's events to the router, feeding retained messages back in.
    pub(crate) fn drain_events(&self, session_id: &Arc<str>, session: &mut Session) {
        while let Some(event) = session.poll_event() {
            match event {
                Event::Publish(message) => {
                    if let Some(device) = session.principal().device() {
                        self.observe_device_publish(device, &message.topic);
                    }
                    self.publish(message);
                }
                Event::Subscribe(filters) => {
                    for delivery in self.router().subscribe(session_id, &filters) {
                        deliver(self, session, delivery);
                    }
                }
                Event::Unsubscribe(filters) => self.router().unsubscribe(session_id, &filters),
                Event::PublishDenied { topic } => {
                    m::publish_denied();
                    tracing::debug!(session = %session_id, %topic, "publish outside the client's topics dropped");
                }
                Event::Limited(limit) => m::limited(limit),
            }
        }
    }
}
