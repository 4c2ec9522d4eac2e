//! The tokio driver of one client connection: reads bytes into packets for the [`Session`],
//! writes the packets it produces, and wakes it for deliveries, kicks and its keepalive timer.
//! No protocol decision is made here.
//!
//! An idle connection should cost as little as possible, since a broker holds mostly idle
//! devices: the handshake's state is boxed and freed once the connection is open, reads go
//! through one scratch buffer per thread (a connection keeps only the bytes of a packet that has
//! not fully arrived), and the router reaches the task through one small [`Link`].

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::Instant;

use bytes::BytesMut;
use mqttbytes::v4::ConnectReturnCode as V4Code;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::acl::{self, DOWNLINK_QOS};
use crate::auth::Credentials;
use crate::broker::Broker;
use crate::budget::Load;
use crate::codec::{self, DecodeError};
use crate::link::{FinishOnDrop, Link};
use crate::metrics as m;
use crate::packet::{
    self, ConnAck, ConnAckProperties, Connect, ConnectReturnCode, DisconnectReasonCode, Packet,
    Protocol, Version,
};
use crate::retained::RetainedCursor;
use crate::router::Kick;
use crate::session::{self, Close, Delivery, Event, Session, V5Settings, WillRefused};
use crate::view::Redirect;

/// Bytes one read may take from a socket: the per-thread scratch buffer's size.
const SCRATCH: usize = 32 * 1024;
/// How long a closing connection may spend flushing its last packets.
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);
/// A write buffer grown beyond this by a large packet is released once written.
const KEEP_BUFFER: usize = 8 * 1024;
/// Bytes encoded before they are written: a batch ends with the packet that crosses it.
const WRITE_BATCH: usize = 64 * 1024;
/// Retained messages one page may hold (and about `RETAINED_PAGE_BYTES` of payload).
const RETAINED_PAGE: usize = 64;

thread_local! {
    /// Where every connection on this thread reads into; see [`read_some`].
    static SCRATCH_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

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

impl Ended {
    /// The DISCONNECT a 5.0 client is sent as the server closes (MQTT 5.0 §4.13: every
    /// server-side close carries its reason); `None` when the client closed, or the socket did.
    /// `redirect`: where a device kicked for its placement should go (PROTOCOL §11).
    fn disconnect(&self, redirect: Option<Redirect>) -> Option<Packet> {
        if let (Ended::Kicked(Kick::NotAllowed), Some(redirect)) = (self, redirect) {
            let reason = if redirect.other_account {
                DisconnectReasonCode::ServerMoved
            } else {
                DisconnectReasonCode::UseAnotherServer
            };
            return Some(packet::disconnect(reason, Some("placed elsewhere"), redirect.reference));
        }
        let (reason, what) = match self {
            Ended::Session(close) => (close.reason()?, Some(close.reason_string())),
            Ended::Kicked(Kick::TakenOver) => {
                (DisconnectReasonCode::SessionTakenOver, Some("session taken over"))
            }
            Ended::Kicked(Kick::NotAllowed) => {
                (DisconnectReasonCode::NotAuthorized, Some("no longer allowed here"))
            }
            Ended::Kicked(Kick::SlowConsumer) => {
                (DisconnectReasonCode::QuotaExceeded, Some("slow consumer"))
            }
            Ended::Kicked(Kick::Shutdown) => {
                (DisconnectReasonCode::ServerShuttingDown, Some("server shutting down"))
            }
            Ended::Decode(DecodeError::TooLarge(_)) => {
                (DisconnectReasonCode::PacketTooLarge, Some("packet too large"))
            }
            Ended::Decode(DecodeError::Malformed(what)) => {
                (DisconnectReasonCode::MalformedPacket, Some(*what))
            }
            Ended::Decode(DecodeError::Protocol(what)) => {
                (DisconnectReasonCode::ProtocolError, Some(*what))
            }
            Ended::Decode(DecodeError::UnacceptableProtocol) => {
                (DisconnectReasonCode::ProtocolError, Some("second CONNECT"))
            }
            Ended::Io(_) | Ended::PeerClosed => return None,
        };
        Some(packet::disconnect(reason, what, None))
    }
}

/// A connection past CONNACK: what it needs for the rest of its life.
struct Open {
    version: Version,
    /// MQTT 5.0 Will Delay Interval (zero for 3.1.1).
    will_delay: std::time::Duration,
    session_id: Arc<str>,
    connection: u64,
    link: Arc<Link>,
    session: Session,
    /// Bytes the client sent after CONNECT.
    buffer: BytesMut,
    /// CONNACK, then whatever the session queued on resuming.
    out: BytesMut,
}

/// Serves one accepted connection until it ends.
pub async fn serve<S>(broker: Arc<Broker>, mut stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Boxed, so the handshake's state (CONNECT, credentials, a takeover's wait) is freed once
    // the connection is open instead of sizing the future every idle connection keeps.
    let Some(open) = Box::pin(handshake(&broker, &mut stream, peer)).await else {
        return;
    };
    run(&broker, stream, peer, open).await;
}

/// Reads CONNECT, authenticates, and registers the session; answers refusals itself.
async fn handshake<S>(broker: &Arc<Broker>, stream: &mut S, peer: SocketAddr) -> Option<Box<Open>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut buffer = BytesMut::new();
    let limits = broker.limits();
    let connect = tokio::time::timeout(
        limits.connect_timeout,
        read_connect(stream, &mut buffer, limits.max_packet),
    )
    .await;
    let connect = match connect {
        Ok(Ok(connect)) => connect,
        Ok(Err(Ended::Decode(DecodeError::UnacceptableProtocol))) => {
            m::connect_result("unacceptable_protocol");
            let refused = connack(Version::V311, ConnectReturnCode::UnsupportedProtocolVersion);
            let _ = write_packet(stream, Version::V311, &refused).await;
            return None;
        }
        Ok(Err(ended)) => {
            m::connect_result("malformed");
            if let Ended::Decode(DecodeError::TooLarge(_)) = ended {
                m::limited("max_packet");
            }
            tracing::debug!(%peer, ?ended, "connection closed before CONNECT");
            return None;
        }
        Err(_) => {
            m::connect_result("timeout");
            m::limited("connect_timeout");
            tracing::debug!(%peer, "no CONNECT in time");
            return None;
        }
    };

    let version = if connect.protocol == Protocol::V5 { Version::V5 } else { Version::V311 };
    let refuse = |code: ConnectReturnCode| connack(version, code);
    let properties = connect.properties.clone().unwrap_or_else(empty_connect_properties);
    // MQTT 5.0 §4.12: no enhanced authentication method is configured, so a CONNECT that asks
    // for one is refused with 0x8C (PROTOCOL §11).
    if properties.authentication_method.is_some() {
        m::connect_result("bad_authentication_method");
        let _ = write_packet(stream, version, &refuse(ConnectReturnCode::BadAuthenticationMethod))
            .await;
        return None;
    }
    // MQTT-3.1.2-24 / MQTT-3.3.4-8: 0 is a protocol error for both.
    if properties.receive_maximum == Some(0) || properties.max_packet_size == Some(0) {
        m::connect_result("malformed");
        let _ = write_packet(stream, version, &refuse(ConnectReturnCode::ProtocolError)).await;
        return None;
    }
    let mut client_id = connect.client_id.clone();
    let mut assigned = None;
    if client_id.is_empty() {
        // MQTT 3.1.1 assigns one only to a clean session; 5.0 to any (MQTT-3.1.3-6), and
        // says which in CONNACK.
        if !connect.clean_session && version == Version::V311 {
            m::connect_result("identifier_rejected");
            let _ =
                write_packet(stream, version, &refuse(ConnectReturnCode::ClientIdentifierNotValid))
                    .await;
            return None;
        }
        client_id = broker.assign_client_id();
        if version.is_v5() {
            assigned = Some(client_id.clone());
        }
    }
    let login = connect.login.as_ref();
    let username = login.map(|l| l.username.as_str());
    // Guessing is answered before any password is checked, the same way whichever side is
    // backed off, so a guesser learns nothing and costs nothing.
    if let Err(backed_off) = broker.auth_backoff().check(peer.ip(), username, Instant::now()) {
        m::limited(backed_off.label());
        m::connect_result(m::refusal(V4Code::NotAuthorized));
        tracing::info!(%peer, client_id = %client_id, "CONNECT refused: login back-off");
        // PROTOCOL §11: 0x8A banned over 5.0.
        let code = match version {
            Version::V5 => ConnectReturnCode::Banned,
            Version::V311 => ConnectReturnCode::NotAuthorized,
        };
        let _ = write_packet(stream, version, &refuse(code)).await;
        return None;
    }
    let offered = Credentials {
        client_id: &client_id,
        username,
        password: login.map(|l| l.password.as_bytes()),
        keep_alive: connect.keep_alive,
    };
    let mut authenticated = broker.authenticator().authenticate_placed(offered);
    // PROTOCOL §11: over 5.0 a device's keepalive below 30 s is not refused but answered with
    // a Server Keep Alive clamped into 30–1200 (the only refusal "server unavailable" stands for).
    if version.is_v5()
        && matches!(&authenticated, Err(refused) if refused.code == V4Code::ServiceUnavailable)
    {
        let clamped = Credentials { keep_alive: crate::auth::DEVICE_MIN_KEEPALIVE, ..offered };
        authenticated = broker.authenticator().authenticate_placed(clamped);
    }
    // PROTOCOL §11: a 5.0 device that signed correctly but is placed elsewhere is told where
    // to go (0x9C, or 0x9D for another account's instance) instead of "not authorized".
    if version.is_v5()
        && let Err(refused) = &authenticated
        && let Some(device) = &refused.elsewhere
        && let Some(redirect) = broker.view().redirect(device, broker.authenticator().instance())
    {
        broker.auth_backoff().succeeded(username);
        m::connect_result("redirected");
        tracing::info!(%peer, client_id = %client_id, reference = ?redirect.reference, "CONNECT redirected");
        let code = if redirect.other_account {
            ConnectReturnCode::ServerMoved
        } else {
            ConnectReturnCode::UseAnotherServer
        };
        let mut connack = ConnAck::new(code, false);
        let mut properties = ConnAckProperties::new();
        properties.server_reference = redirect.reference;
        properties.reason_string = Some("placed elsewhere".into());
        connack.properties = Some(properties);
        let _ = write_packet(stream, version, &Packet::ConnAck(connack)).await;
        return None;
    }
    let authenticated = authenticated.map_err(|refused| refused.code);
    let accepted = match authenticated {
        Ok(accepted) => {
            broker.auth_backoff().succeeded(username);
            accepted
        }
        Err(code) => {
            // Only a wrong credential is a guess; placement and keepalive refusals follow a
            // correct signature.
            if code == V4Code::BadUserNamePassword {
                broker.auth_backoff().failed(peer.ip(), username, Instant::now());
            }
            m::connect_result(m::refusal(code));
            // Never log credentials: the username is safe to name, the password is not.
            tracing::info!(%peer, client_id = %client_id, ?code, "CONNECT refused");
            let _ = write_packet(stream, version, &refuse(packet::v5_return_code(code))).await;
            return None;
        }
    };

    // MQTT 5.0 §3.1.3.2.2: the will waits this long after the connection ends (or until the
    // session does), and is not sent if the session resumes meanwhile.
    let will_delay = connect
        .last_will
        .as_ref()
        .and_then(|will| will.properties.as_ref()?.delay_interval)
        .map_or(std::time::Duration::ZERO, |secs| std::time::Duration::from_secs(u64::from(secs)));
    // Before the session is registered: a refused will takes nothing over.
    let will = connect.last_will.map(|will| {
        session::check_will(&accepted.principal, &accepted.profile, will, broker.view())
    });
    let will = match will.transpose() {
        Ok(will) => will.flatten(),
        Err(WillRefused::NotPermitted) => {
            m::connect_result(m::refusal(V4Code::NotAuthorized));
            tracing::info!(%peer, client_id = %client_id, "CONNECT refused: will topic not permitted");
            let _ = write_packet(stream, version, &refuse(ConnectReturnCode::NotAuthorized)).await;
            return None;
        }
        Err(refused @ WillRefused::Malformed(_)) => {
            // MQTT-3.1.4-1: a CONNECT that does not conform is closed without CONNACK.
            m::connect_result("malformed");
            m::dropped("malformed_packet");
            tracing::debug!(%peer, client_id = %client_id, %refused, "CONNECT refused");
            return None;
        }
    };

    // MQTT 5.0 §3.1.2.11.2: 0 (or absent) ends the session with the connection; more keeps it,
    // up to what this kind of client may keep.
    let profile_expiry = accepted.profile.session_expiry;
    let asked_expiry = properties.session_expiry_interval.unwrap_or(0);
    let session_expiry = (asked_expiry > 0)
        .then(|| std::time::Duration::from_secs(u64::from(asked_expiry)).min(profile_expiry))
        .filter(|expiry| !expiry.is_zero());
    let (clean_start, persistent) = match version {
        Version::V311 => (connect.clean_session, !connect.clean_session),
        Version::V5 => (connect.clean_session, session_expiry.is_some()),
    };
    // The keepalive the session enforces: a configured Server Keep Alive for 5.0 clients, the
    // authenticator's (devices clamped) otherwise.
    let keep_alive = match (version, limits.server_keep_alive) {
        (Version::V5, Some(server)) if accepted.principal.device().is_some() => {
            server.clamp(crate::auth::DEVICE_MIN_KEEPALIVE, crate::auth::DEVICE_MAX_KEEPALIVE)
        }
        (Version::V5, Some(server)) => server,
        _ => accepted.keep_alive,
    };

    let session_id: Arc<str> = accepted.principal.session_id(&client_id).into();
    let connection = broker.next_connection_id();
    let link = Arc::new(Link::new(connection, limits.mailbox, limits.queued));
    let parked =
        broker.router().connect_with(&session_id, clean_start, persistent, link.clone()).await;
    // Expired since it was parked, and not yet swept: the client starts afresh.
    let parked = parked.and_then(|parked| {
        if parked.expired(Instant::now()) {
            m::limited("session_expired");
            broker.router().discard(&session_id, parked);
            return None;
        }
        Some(parked)
    });
    let session_present = parked.is_some();
    // What was queued for a persistent client while it was away, on a device its account no
    // longer owns (PROTOCOL §6), is not handed over on its return.
    let parked = parked.map(|mut parked| {
        let may_receive = |d: &Delivery| {
            accepted.principal.may_receive(&d.message.topic, &d.message.origin, broker.view())
        };
        for delivery in parked.retain_pending(may_receive) {
            broker.router().budget().release(Load::of(&delivery));
            m::dropped("not_permitted");
        }
        parked
    });

    // A device's downlink is subscribed from the start: its retained messages are due now.
    let downlink: Vec<(String, u8)> =
        accepted.principal.implicit_filters().into_iter().map(|f| (f, DOWNLINK_QOS)).collect();
    let profile = accepted.profile;
    let mut session = Session::new(
        Instant::now(),
        accepted.principal,
        accepted.profile,
        *broker.router().limits(),
        keep_alive,
        will,
        parked,
    )
    .with_budget(broker.router().budget().clone())
    .with_connection(connection);
    if version.is_v5() {
        session = session.with_v5(V5Settings {
            client_receive_maximum: properties.receive_maximum.unwrap_or(u16::MAX),
            client_maximum_packet: properties.max_packet_size,
            client_topic_alias_maximum: properties.topic_alias_max.unwrap_or(0),
            receive_maximum: limits.receive_maximum.max(1),
            topic_alias_maximum: limits.topic_alias_maximum,
            session_expiry,
            asked_expiry: asked_expiry > 0,
        });
    }
    // The platform keeps a device's subscriptions (PROTOCOL §2): they are back before CONNACK
    // goes out, whatever the clean-session flag and wherever they were made.
    let restored = match session.principal().device().cloned() {
        Some(device) => match broker.kept().kept(&device, broker.view()) {
            Some(kept) => session.restore(kept.iter(), broker.view()),
            None => Vec::new(),
        },
        None => Vec::new(),
    };
    m::connect_result("accepted");
    m::connection_opened();
    broker.usage().opened(connection, Instant::now());
    tracing::debug!(%peer, session = %session_id, session_present, "connected");

    let mut connack = ConnAck::new(ConnectReturnCode::Success, session_present);
    if version.is_v5() {
        // MQTT 5.0 §3.2.2.3: what the broker supports, truthfully (PROTOCOL §11).
        let mut p = ConnAckProperties::new();
        if session_expiry.map(|e| e.as_secs()) != Some(u64::from(asked_expiry)) && asked_expiry > 0
        {
            p.session_expiry_interval =
                Some(session_expiry.map_or(0, |e| u32::try_from(e.as_secs()).unwrap_or(u32::MAX)));
        }
        p.receive_max = Some(limits.receive_maximum.max(1));
        if profile.max_qos < 2 {
            p.max_qos = Some(profile.max_qos);
        }
        p.retain_available = Some(u8::from(profile.retain));
        p.max_packet_size = u32::try_from(limits.max_packet).ok();
        p.assigned_client_identifier = assigned;
        p.topic_alias_max = Some(limits.topic_alias_maximum);
        p.wildcard_subscription_available = Some(1);
        p.subscription_identifiers_available = Some(1);
        // Standard and application clients (a device gets 0x9E, its topics are its own).
        p.shared_subscription_available = Some(u8::from(session.principal().device().is_none()));
        if keep_alive != connect.keep_alive {
            p.server_keep_alive = Some(keep_alive);
        }
        connack.properties = Some(p);
    }
    let mut out = BytesMut::new();
    codec::write(&Packet::ConnAck(connack), version, &mut out).unwrap_or_default();
    // Owed a page at a time like any subscription's; only what the implicit route carries.
    let downlink = broker.router().retained_cursors(&downlink);
    session.owe_retained(downlink.into_iter().map(RetainedCursor::for_downlink));
    // Restored like the downlink: subscribed from the start, so retained messages are due.
    session.owe_retained(broker.router().subscribe_paced(&session_id, connection, &restored));
    broker.drain_events(&session_id, connection, &mut session, &mut Vec::new());
    if buffer.is_empty() {
        // CONNECT's bytes are consumed; keep no buffer for the next packet.
        buffer = BytesMut::new();
    }
    // Boxed: `serve` holds it only until `run` takes its fields apart.
    Some(Box::new(Open { version, will_delay, session_id, connection, link, session, buffer, out }))
}

/// Moves packets both ways until the connection ends, then parks or forgets its session.
async fn run<S>(broker: &Arc<Broker>, mut stream: S, peer: SocketAddr, open: Box<Open>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Unboxed by value, so the box is freed now rather than when `run` returns.
    let Open {
        version,
        will_delay,
        session_id,
        connection,
        link,
        mut session,
        mut buffer,
        mut out,
    } = unbox(open);
    // However the task ends, a takeover waiting for it is released.
    let finish = FinishOnDrop(&link);
    let max_packet = broker.limits().max_packet;
    // The session's share of the broker-wide queue budget: a resumed session's queue is already
    // reserved (the router held it while parked); from here on it moves with `adjust`.
    let mut held = session.load();
    // Set when the link woke the task while it was busy writing: deliveries are waiting.
    let mut woken = false;
    // Deliveries left in the inbox because the session's queue was full.
    let mut behind = false;
    // Flow control: subscribers this client's QoS 1/2 messages filled up. Until each has room
    // (or `backpressure_wait` passes) the client's socket is not read; its own deliveries
    // still flow, so two clients feeding each other cannot deadlock.
    let mut blocked: Vec<Arc<Link>> = Vec::new();
    let mut unblocked: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    let mut blocked_until: Option<tokio::time::Instant> = None;

    // Packets the client sent right behind CONNECT, without waiting for CONNACK (paho does
    // with SUBSCRIBE), arrived with it: handled now, not when the next bytes come (which for an
    // idle client is its next PINGREQ).
    let mut early = if buffer.is_empty() {
        None
    } else {
        handle_input(
            broker,
            &session_id,
            connection,
            &mut session,
            &mut buffer,
            (max_packet, version),
            &mut blocked,
        )
        .err()
    };
    let ended = 'connection: loop {
        // Written as it is encoded, a bounded batch at a time: what the session has to send
        // is never all encoded at once.
        loop {
            while out.len() < WRITE_BATCH
                && let Some(packet) = session.poll_transmit()
            {
                if let Packet::Publish(_) = packet {
                    broker.usage().message_out();
                }
                m::packet_out(&packet);
                if let Err(error) = codec::write(&packet, version, &mut out) {
                    tracing::warn!(?error, "could not encode an outgoing packet");
                }
            }
            if out.is_empty() {
                break;
            }
            m::bytes_out(out.len());
            // A client that stops reading blocks this write; a kick (slow consumer, takeover,
            // shutdown) must still get through, and deliveries arriving meanwhile must not
            // cancel it.
            // What a write cut short by a kick already sent is counted, so the final flush
            // sends the rest of the buffer, not all of it again (which would repeat a partly
            // sent packet's first bytes and garble the stream).
            // (An atomic only because the connection's future must be `Send`; one task touches it.)
            let sent = std::sync::atomic::AtomicUsize::new(0);
            let written = {
                let write = async {
                    use std::sync::atomic::Ordering::Relaxed;
                    while sent.load(Relaxed) < out.len() {
                        match stream.write(&out[sent.load(Relaxed)..]).await? {
                            0 => return Err(std::io::ErrorKind::WriteZero.into()),
                            n => drop(sent.fetch_add(n, Relaxed)),
                        }
                    }
                    stream.flush().await
                };
                tokio::pin!(write);
                loop {
                    tokio::select! {
                        written = &mut write => break Ok(written),
                        () = link.woken() => match link.kicked() {
                            Some(kick) => break Err(kick),
                            None => woken = true,
                        },
                    }
                }
            };
            match written {
                Ok(Ok(())) => {}
                Ok(Err(error)) => break 'connection Ended::Io(error),
                Err(kick) => {
                    bytes::Buf::advance(&mut out, sent.into_inner());
                    break 'connection Ended::Kicked(kick);
                }
            }
            out.clear();
            if out.capacity() > KEEP_BUFFER {
                out = BytesMut::new();
            }
        }

        // What the early packets answered is written: now the connection may end for them.
        if let Some(ended) = early.take() {
            break ended;
        }
        let keepalive = session.poll_timeout().map(tokio::time::Instant::from_std);
        let deadline = match (keepalive, blocked_until) {
            (Some(keepalive), Some(until)) => Some(keepalive.min(until)),
            (keepalive, until) => keepalive.or(until),
        };
        tokio::select! {
            read = read_some(&mut stream, &mut buffer), if unblocked.is_none() => {
                match read {
                    Ok(0) => break Ended::PeerClosed,
                    Ok(n) => m::bytes_in(n),
                    Err(error) => break Ended::Io(error),
                }
                if let Err(ended) = handle_input(broker, &session_id, connection, &mut session, &mut buffer, (max_packet, version), &mut blocked) {
                    break ended;
                }
                woken |= behind && session.room() > 0;
                if !blocked.is_empty() {
                    m::limited("backpressure_held");
                    let links = blocked.clone();
                    unblocked = Some(Box::pin(async move {
                        for link in &links {
                            link.room().await;
                        }
                    }));
                    blocked_until = Some(tokio::time::Instant::now() + broker.limits().backpressure_wait);
                }
            }
            () = async { if let Some(wait) = unblocked.as_mut() { wait.await } }, if unblocked.is_some() => {
                (unblocked, blocked_until) = (None, None);
                blocked.clear();
                session.excuse_silence(Instant::now());
            }
            // Everything above is written: the next page of retained messages, if one is due.
            // A branch of its own, so reads, kicks and the keepalive still take turns with a
            // subscription owed a million of them.
            () = std::future::ready(()), if session.retained_due().is_some() => {
                send_retained(broker, &mut session);
            }
            () = woken_or_ready(&link, woken) => {
                woken = false;
                // Everything waiting at once, so one wake-up writes many messages.
                let mut inbox = VecDeque::new();
                let (kick, left) = link.take(&mut inbox, session.room());
                // What the session had no room for is taken when acknowledgements free some.
                behind = left;
                for delivery in inbox {
                    // The router reserved each inbox entry; what the session keeps is
                    // accounted as `held`.
                    broker.router().budget().release(Load::of(&delivery));
                    deliver(broker, &mut session, delivery);
                }
                // Only now: what was taken is in the session, so a persistent one parks it.
                if let Some(kick) = kick {
                    break Ended::Kicked(kick);
                }
            }
            _ = sleep_until(deadline) => {
                if blocked_until.is_some_and(|until| until <= tokio::time::Instant::now()) {
                    // Held back too long: whoever is still full is not keeping up.
                    for link in blocked.drain(..).filter(|link| !link.has_room()) {
                        m::limited("backpressure_slow_consumer");
                        link.kick(Kick::SlowConsumer);
                    }
                    (unblocked, blocked_until) = (None, None);
                    session.excuse_silence(Instant::now());
                } else if let Err(close) = session.handle_timeout(Instant::now()) {
                    break Ended::Session(close);
                }
            }
        }
        let now = session.load();
        broker.router().budget().adjust(held, now);
        held = now;
    };
    broker.router().budget().adjust(held, session.load());
    let graceful =
        matches!(ended, Ended::Session(Close::Disconnect) | Ended::Kicked(Kick::Shutdown));
    // MQTT 5.0 §4.13: the server's close carries its reason, after whatever was still queued.
    let redirect = match (&ended, session.principal().device()) {
        (Ended::Kicked(Kick::NotAllowed), Some(device)) if version.is_v5() => {
            broker.view().redirect(device, broker.authenticator().instance())
        }
        _ => None,
    };
    if version.is_v5()
        && let Some(disconnect) = ended.disconnect(redirect)
    {
        let _ = codec::write(&disconnect, version, &mut out);
    }
    let will = if graceful { None } else { session.take_will() };
    // Whichever comes first: the will delay, or the end of the session (MQTT-3.1.3-9).
    let will_delay = will_delay.min(session.session_expiry());
    // Kept for the will's check after the session is parked.
    let principal = session.principal().clone();
    // Parked (or forgotten) before the last flush: the router closes the link as it parks, so
    // deliveries arriving while this task still flushes are queued for the session instead of
    // refused by a closed inbox.
    let filters: Vec<String> = session.filters().map(str::to_owned).collect();
    broker.router().disconnect(&session_id, connection, session.park_at(Instant::now()), &filters);
    // Empty unless another connection had already replaced this one: then nothing will read
    // what waits, so its reservations are given back.
    for delivery in link.close() {
        broker.router().budget().release(Load::of(&delivery));
    }
    // Best effort, bounded: a peer that stopped reading must not hold the task open.
    let _ = tokio::time::timeout(FINAL_FLUSH, async {
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        stream.shutdown().await
    })
    .await;
    if let Some(will) = will {
        // Checked at CONNECT, and again now: what a client may publish can change while it is
        // connected (a device transferred away from an application's account, PROTOCOL §6).
        if !principal.may_publish(&will.topic, broker.view()) {
            m::publish_denied();
            tracing::debug!(%peer, session = %session_id, topic = %will.topic, "will no longer permitted: dropped");
        } else if will_delay.is_zero() {
            broker.publish(session::will_at(will, Instant::now()));
        } else {
            // Delayed: sent unless a connection resumed the session meanwhile. (A broker
            // shutting down before the delay passes sends none.)
            let broker = broker.clone();
            let session_id = session_id.clone();
            tokio::spawn(async move {
                tokio::time::sleep(will_delay).await;
                if broker.router().is_online(&session_id) {
                    m::limited("will_resumed");
                } else if principal.may_publish(&will.topic, broker.view()) {
                    broker.publish(session::will_at(will, Instant::now()));
                }
            });
        }
    }
    drop(finish);
    m::connection_closed();
    broker.usage().closed(connection, Instant::now());
    tracing::debug!(%peer, session = %session_id, ?ended, "disconnected");
}

/// Moves a value out of its box and frees the box now (a `*boxed` in place would keep the
/// allocation until the box's binding goes out of scope).
#[allow(clippy::boxed_local, reason = "taking the box by value is the point")]
fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// Resolves at once when `already` (the task was woken while busy), else at the next wake-up.
async fn woken_or_ready(link: &Link, already: bool) {
    if !already {
        link.woken().await;
    }
}

/// Hands the session the next page of retained messages it owes, through the queue budget like
/// a live delivery: under memory pressure QoS 0 is shed first, then everything.
fn send_retained(broker: &Broker, session: &mut Session) {
    let room = session.room();
    let Some(cursor) = session.retained_due() else { return };
    let max = if cursor.qos == 0 { RETAINED_PAGE } else { RETAINED_PAGE.min(room) };
    let downlink_only = cursor.downlink_only();
    let (page, done) = broker.router().retained_page(cursor, max);
    if done {
        session.retained_done();
    }
    let budget = broker.router().budget();
    for delivery in page {
        // Only what the implicit route carries: a retained message on the device's uplink
        // topics (set by another client) is not downlink.
        if downlink_only && !acl::carries_downlink(&delivery.message.topic) {
            continue;
        }
        let load = Load::of(&delivery);
        if let Err(shed) = budget.reserve(load.bytes, delivery.qos, false) {
            m::limited(shed.label());
            m::dropped("retained_shed");
            continue;
        }
        // What the session keeps is accounted as its `held` load, as for the inbox.
        budget.release(load);
        deliver(broker, session, delivery);
    }
}

/// Hands a routed message to the session, unless its client may no longer receive it (an
/// application client whose account no longer owns the device, or a device that another
/// account's application client sent it to, PROTOCOL §6).
fn deliver(broker: &Broker, session: &mut Session, delivery: Delivery) {
    let message = &delivery.message;
    if !session.principal().may_receive(&message.topic, &message.origin, broker.view()) {
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
    connection: u64,
    session: &mut Session,
    buffer: &mut BytesMut,
    (max_packet, version): (usize, Version),
    blocked: &mut Vec<Arc<Link>>,
) -> Result<(), Ended> {
    loop {
        let packet = match codec::read(buffer, max_packet, Some(version)) {
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
        broker.drain_events(session_id, connection, session, blocked);
        result.map_err(Ended::Session)?;
    }
    // Nothing partial left: hold no buffer while waiting for the next packet.
    if buffer.is_empty() {
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
        match codec::read(buffer, max_packet, None) {
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

/// Reads what the socket has into `buffer`. The read lands in this thread's scratch buffer
/// and only the bytes read are copied into `buffer`, so a connection waiting for its next
/// packet holds no read buffer at all.
async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut BytesMut,
) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        SCRATCH_BUFFER.with_borrow_mut(|scratch| {
            let mut read = ReadBuf::new(scratch);
            ready!(Pin::new(&mut *stream).poll_read(cx, &mut read))?;
            buffer.extend_from_slice(read.filled());
            Poll::Ready(Ok(read.filled().len()))
        })
    })
    .await
}

async fn write_packet<S: AsyncWrite + Unpin>(
    stream: &mut S,
    version: Version,
    packet: &Packet,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    codec::write(packet, version, &mut out).map_err(std::io::Error::other)?;
    stream.write_all(&out).await?;
    stream.shutdown().await
}

/// A refusing CONNACK (a 5.0 one carries an empty property list, MQTT 5.0 §3.2.2.3).
fn connack(version: Version, code: ConnectReturnCode) -> Packet {
    let mut connack = ConnAck::new(code, false);
    if version.is_v5() {
        connack.properties = Some(ConnAckProperties::new());
    }
    Packet::ConnAck(connack)
}

fn empty_connect_properties() -> packet::ConnectProperties {
    packet::ConnectProperties {
        session_expiry_interval: None,
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: Vec::new(),
        authentication_method: None,
        authentication_data: None,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Broker {
    /// Records a device's set after a SUBSCRIBE or UNSUBSCRIBE, when it changed (an SDK that
    /// subscribes again on every connect costs no write).
    fn keep_device_subscriptions(&self, session: &Session) {
        let Some(device) = session.principal().device() else { return };
        let set = session.subscription_set();
        let unchanged = match self.kept().kept(device, self.view()) {
            Some(kept) => *kept == set,
            None => set.is_empty(),
        };
        if !unchanged {
            self.kept().record(device, set);
        }
    }

    /// Hands the session's events to the router, feeding retained messages back in; collects
    /// the subscribers its messages filled up in `blocked`.
    pub(crate) fn drain_events(
        &self,
        session_id: &Arc<str>,
        connection: u64,
        session: &mut Session,
        blocked: &mut Vec<Arc<Link>>,
    ) {
        while let Some(event) = session.poll_event() {
            match event {
                Event::Publish(message) => {
                    if let Some(device) = session.principal().device() {
                        self.observe_device_publish(device, &message.topic);
                    }
                    self.publish_from(message, blocked);
                }
                Event::Subscribe(filters) => {
                    let cursors = self.router().subscribe_paced(session_id, connection, &filters);
                    session.owe_retained(cursors);
                    self.keep_device_subscriptions(session);
                }
                Event::Unsubscribe(filters) => {
                    self.router().unsubscribe(session_id, connection, &filters);
                    self.keep_device_subscriptions(session);
                }
                Event::PublishDenied { topic } => {
                    m::publish_denied();
                    tracing::debug!(session = %session_id, %topic, "publish outside the client's topics dropped");
                }
                Event::Limited(limit) => m::limited(limit),
            }
        }
    }
}
