//! The MQTT session (3.1.1 and 5.0 alike, PROTOCOL §11) as a deterministic state machine: no
//! sockets, no clock. It speaks [`crate::packet`]'s version-aware packets; what a 5.0 client
//! negotiated at CONNECT ([`V5Settings`]) shapes its acknowledgements and deliveries, and the
//! codec drops what 3.1.1 has no form for.
//!
//! Inputs are `handle_*(now, …)`; outputs are drained with [`Session::poll_transmit`] (packets
//! for the client), [`Session::poll_event`] (work for the router) and
//! [`Session::poll_timeout`] (when to call [`Session::handle_timeout`]). The tokio driver in
//! `connection.rs` only moves bytes and timers, so every protocol rule is tested here in virtual
//! time.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::packet::{
    Disconnect, DisconnectReasonCode, LastWill, Packet, PubAck, PubAckReason, PubComp, PubRec,
    PubRecReason, PubRel, Publish, PublishProperties, QoS, RetainForwardRule, SubAck, Subscribe,
    SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe, Version,
};

use crate::acl::{Origin, Principal, Profile};
use crate::budget::{Load, QueueBudget, subscription_cost};
use crate::retained::RetainedCursor;
use crate::topic;
use crate::view::RegistryView;

/// A message as routed between sessions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// Who published it; delivery checks depend on it (see [`Origin`]).
    pub origin: Origin,
    /// What an MQTT 5.0 publisher attached that travels with the message; `None` for 3.1.1
    /// publishers and the broker's own messages (shared, so a fan-out copies no strings).
    pub properties: Option<Arc<Properties>>,
    /// The connection that published it (0: the broker), for subscriptions with No Local
    /// (MQTT 5.0 §3.8.3.1).
    pub sender: u64,
}

/// The properties MQTT 5.0 forwards with a message to every subscriber (MQTT 5.0 §3.3.2.3):
/// user properties in their order, payload format, content type, request/response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
    /// When the message expires and the interval it was published with (MQTT 5.0
    /// §3.3.2.3.3): forwarded with the time it was held taken off, never delivered after.
    pub expiry: Option<(Instant, u32)>,
}

impl Properties {
    /// The forwarded part of a PUBLISH's properties received at `now`; `None` when there is
    /// nothing to forward.
    fn of(properties: Option<PublishProperties>, now: Instant) -> Option<Properties> {
        let p = properties?;
        let expiry = p.message_expiry_interval.map(|secs| {
            (now.checked_add(Duration::from_secs(u64::from(secs))).unwrap_or(now), secs)
        });
        let forwarded = Properties {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            expiry,
        };
        (forwarded != Properties::default()).then_some(forwarded)
    }

    /// Whether the message has expired at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.expiry.is_some_and(|(at, _)| at <= now)
    }
}

/// What an MQTT 5.0 client negotiated at CONNECT (MQTT 5.0 §3.1.2.11, §3.2.2.3), and the
/// broker's side of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V5Settings {
    /// The client's Receive Maximum: QoS 1/2 deliveries it takes unacknowledged.
    pub client_receive_maximum: u16,
    /// The client's Maximum Packet Size; a delivery larger than it is dropped for it.
    pub client_maximum_packet: Option<u32>,
    /// The client's Topic Alias Maximum: aliases the broker may set in what it sends.
    pub client_topic_alias_maximum: u16,
    /// The broker's Receive Maximum: QoS 2 publications the client may leave unreleased
    /// (0x93 beyond it).
    pub receive_maximum: u16,
    /// The broker's Topic Alias Maximum: aliases the client may set (0x94 beyond it).
    pub topic_alias_maximum: u16,
    /// The Session Expiry Interval, clamped to the profile's; `None`: 0, the session ends
    /// with the connection.
    pub session_expiry: Option<Duration>,
    /// Whether the CONNECT asked for a session expiry above 0: a DISCONNECT may then change it,
    /// and may not set one otherwise (MQTT-3.14.2-2).
    pub asked_expiry: bool,
}

/// A subscription's MQTT 5.0 options beyond its QoS (MQTT 5.0 §3.8.3.1, §3.8.2.1.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscriptionOptions {
    pub no_local: bool,
    pub retain_as_published: bool,
    pub identifier: Option<usize>,
}

/// A message on its way to one subscriber, at the QoS that subscriber was granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub qos: u8,
    /// Set when the message is sent because of a new subscription to a retained topic.
    pub retain: bool,
}

impl Load {
    /// One delivery's load. (Here rather than in `budget`, which knows nothing of sessions.)
    pub fn of(delivery: &Delivery) -> Load {
        Load { messages: 1, bytes: delivery.message.payload.len() }
    }
}

/// Work the session hands to the router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Route this message to subscribers (and, if `retain`, update the retained store).
    Publish(Message),
    /// Add these filters at these QoS (send matching retained messages).
    Subscribe(Vec<(String, u8)>),
    /// Remove these filters.
    Unsubscribe(Vec<String>),
    /// A publish the ACL refused (PROTOCOL §3: dropped and counted).
    PublishDenied { topic: String },
    /// A hostile-client limit triggered; the label of `meridian_broker_limited_total`.
    Limited(&'static str),
}

/// Why the session ended (or must end).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Close {
    /// The client sent DISCONNECT; its will is discarded.
    #[error("client disconnected")]
    Disconnect,
    /// No packet for 1.5 × keepalive.
    #[error("keepalive expired")]
    KeepaliveExpired,
    /// The client broke MQTT 3.1.1 (or its profile's limits); the connection is closed.
    #[error("protocol violation: {0}")]
    ProtocolViolation(&'static str),
    /// The client broke an MQTT 5.0 rule with a reason code of its own (0x93 receive maximum
    /// exceeded, 0x94 topic alias invalid, ...): a 5.0 client gets DISCONNECT with it.
    #[error("refused ({0:#04x}): {1}")]
    Refused(u8, &'static str),
    /// The client sent DISCONNECT 0x04 (MQTT 5.0 §3.14.2.1): close, and publish the will.
    #[error("client disconnected with its will")]
    DisconnectWithWill,
}

impl Close {
    /// The MQTT 5.0 DISCONNECT reason the server sends for this close, if it sends one.
    pub fn reason(&self) -> Option<DisconnectReasonCode> {
        Some(match self {
            Close::Disconnect | Close::DisconnectWithWill => return None,
            Close::KeepaliveExpired => DisconnectReasonCode::KeepAliveTimeout,
            Close::ProtocolViolation(_) => DisconnectReasonCode::ProtocolError,
            Close::Refused(0x93, _) => DisconnectReasonCode::ReceiveMaximumExceeded,
            Close::Refused(0x94, _) => DisconnectReasonCode::TopicAliasInvalid,
            Close::Refused(0x95, _) => DisconnectReasonCode::PacketTooLarge,
            Close::Refused(0x97, _) => DisconnectReasonCode::QuotaExceeded,
            Close::Refused(0x81, _) => DisconnectReasonCode::MalformedPacket,
            Close::Refused(_, _) => DisconnectReasonCode::ProtocolError,
        })
    }

    /// The reason string for a 5.0 DISCONNECT.
    pub fn reason_string(&self) -> &'static str {
        match self {
            Close::ProtocolViolation(what) | Close::Refused(_, what) => what,
            Close::KeepaliveExpired => "keepalive expired",
            Close::Disconnect | Close::DisconnectWithWill => "client disconnected",
        }
    }
}

/// Why a CONNECT's will was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WillRefused {
    /// The will breaks a rule a PUBLISH on its topic would break and close the connection for:
    /// its topic is not a valid topic name (empty, a wildcard, U+0000) or is longer than the
    /// client's profile allows, or its QoS or payload exceed the profile. MQTT-3.1.4-1: the
    /// connection is closed without CONNACK.
    #[error("malformed will: {0}")]
    Malformed(&'static str),
    /// The client may not publish on the will's topic (PROTOCOL §3): CONNACK 5 "not authorized".
    #[error("will topic not permitted")]
    NotPermitted,
}

/// Checks a CONNECT's will exactly as a PUBLISH of it would be checked, at CONNECT, for every
/// kind of client: a client must not leave behind a message it could not have sent itself (an
/// application client's will on another account's device downlink, a device's on another
/// device's topic). Returns the message to publish if the connection ends without DISCONNECT:
/// `None` when the profile keeps no wills (devices, PROTOCOL §3), and its retain flag cleared when
/// the profile keeps no retained messages, as for a PUBLISH.
pub fn check_will(
    principal: &Principal,
    profile: &Profile,
    will: LastWill,
    view: &RegistryView,
) -> Result<Option<Message>, WillRefused> {
    let qos = will.qos as u8;
    if qos > profile.max_qos {
        return Err(WillRefused::Malformed("will QoS above this client's profile"));
    }
    if will.message.len() > profile.max_payload {
        return Err(WillRefused::Malformed("will payload above this client's limit"));
    }
    if topic::validate_name(&will.topic, profile.max_topic_len).is_err() {
        return Err(WillRefused::Malformed("invalid will topic"));
    }
    if !principal.may_publish(&will.topic, view) {
        return Err(WillRefused::NotPermitted);
    }
    if !profile.will {
        return Ok(None);
    }
    // MQTT 5.0 §3.1.3.2: the will's properties travel with it like a PUBLISH's.
    let properties = will.properties.and_then(|p| {
        let forwarded = Properties {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            // Its expiry counts from when it is published, set then (see `will_at`).
            expiry: p.message_expiry_interval.map(|secs| (far_future(), secs)),
        };
        (forwarded != Properties::default()).then(|| Arc::new(forwarded))
    });
    Ok(Some(Message {
        topic: will.topic.into(),
        payload: will.message,
        qos,
        retain: will.retain && profile.retain,
        origin: principal.origin(),
        properties,
        sender: 0,
    }))
}

/// A placeholder instant for a will's expiry until it is published.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// The will `message` as published at `now`: its expiry interval counts from then.
pub fn will_at(mut message: Message, now: Instant) -> Message {
    if let Some(properties) = &message.properties
        && let Some((_, secs)) = properties.expiry
    {
        let mut properties = (**properties).clone();
        properties.expiry =
            Some((now.checked_add(Duration::from_secs(u64::from(secs))).unwrap_or(now), secs));
        message.properties = Some(Arc::new(properties));
    }
    message
}

/// Tunables shared by every session of a broker.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: usize,
    /// QoS 1/2 messages waiting for the inflight window (online or parked offline).
    pub queued: usize,
    /// Filters in one SUBSCRIBE; more is a protocol violation that closes the connection.
    pub max_filters_per_subscribe: usize,
    /// Levels in one filter; a deeper filter is refused with SUBACK 0x80.
    pub max_topic_levels: usize,
}

/// State that outlives a connection of a persistent (clean session = 0) client.
#[derive(Debug, Default)]
pub struct Parked {
    pub subscriptions: HashMap<String, u8>,
    inflight: BTreeMap<u16, Inflight>,
    pending: VecDeque<Delivery>,
    incoming_qos2: BTreeSet<u16>,
    next_pkid: u16,
    /// Retained messages still owed to subscriptions made before the connection ended.
    retained: VecDeque<RetainedCursor>,
    /// When the session is forgotten if its client has not come back; `None`: never.
    pub expires: Option<Instant>,
    /// Messages dropped while parked because the queue was full (or they were QoS 0).
    pub dropped: u64,
    /// MQTT 5.0 options of the subscriptions that have any.
    options: HashMap<String, SubscriptionOptions>,
}

impl Parked {
    /// Queues a delivery for when the client returns. QoS 0 is not kept for offline clients.
    /// Returns false when the message was dropped.
    pub fn enqueue(&mut self, delivery: Delivery, limits: &Limits) -> bool {
        if delivery.qos == 0 || self.pending.len() >= limits.queued {
            self.dropped += 1;
            return false;
        }
        self.pending.push_back(delivery);
        true
    }

    /// Appends a delivery its connection had accepted but not yet read when it ended. It was
    /// promised at QoS 1/2 and its budget is already reserved, so the queue bound that
    /// [`Parked::enqueue`] applies to new arrivals does not refuse it.
    pub fn requeue(&mut self, delivery: Delivery) {
        self.pending.push_back(delivery);
    }

    pub fn queued(&self) -> usize {
        self.pending.len() + self.inflight.len()
    }

    /// Whether the session's expiry has passed at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|expires| expires <= now)
    }

    /// Keeps the queued deliveries `keep` accepts and returns the others, so their share of
    /// the queue budget can be given back: what a client may receive can change while it is
    /// away (a device transferred to another account, PROTOCOL §6).
    pub fn retain_pending(&mut self, keep: impl FnMut(&Delivery) -> bool) -> VecDeque<Delivery> {
        let (kept, refused) = std::mem::take(&mut self.pending).into_iter().partition(keep);
        self.pending = kept;
        refused
    }

    /// What this parked state holds against the broker-wide queue budget.
    pub fn load(&self) -> Load {
        load(&self.pending, &self.inflight)
    }
}

/// QoS 1/2 messages waiting behind and inside an inflight window, with their payload bytes.
fn load(pending: &VecDeque<Delivery>, inflight: &BTreeMap<u16, Inflight>) -> Load {
    let waiting = pending.iter().map(|delivery| delivery.message.payload.len());
    let sent = inflight.values().map(|entry| match entry {
        Inflight::Sent(publish) => publish.payload.len(),
        Inflight::Released => 0,
    });
    Load { messages: pending.len() + inflight.len(), bytes: waiting.chain(sent).sum() }
}

#[derive(Clone, Debug)]
enum Inflight {
    /// Sent, awaiting PUBACK (QoS 1) or PUBREC (QoS 2).
    /// Boxed: 5.0 properties make a PUBLISH large, and most entries wait only briefly.
    Sent(Box<Publish>),
    /// PUBREL sent, awaiting PUBCOMP.
    Released,
}

pub struct Session {
    principal: Principal,
    /// How this client's messages are marked, made once rather than per message.
    origin: Origin,
    profile: Profile,
    limits: Limits,
    /// `None` when the client disabled keepalive (0).
    keep_alive: Option<Duration>,
    deadline: Option<Instant>,
    /// Boxed: most clients have none, and every idle connection holds a session.
    will: Option<Box<Message>>,
    /// Filters the client subscribed to, with the granted QoS.
    subscriptions: HashMap<String, u8>,
    /// Bytes of the filters in `subscriptions`, against the profile's
    /// `max_subscription_bytes`.
    subscription_bytes: usize,
    /// Kept filters [`Session::restore`] had no room for in the broker's session-state budget
    /// (or memory): still the device's, so they stay in the set it records
    /// ([`Session::subscription_set`]) and are tried again at its next connect, unless it
    /// subscribes or unsubscribes them meanwhile.
    deferred: BTreeMap<String, u8>,
    /// Where each new subscription reserves its share of the broker's session state (the
    /// router gives it back when it removes the subscription); `None` counts nothing (tests).
    budget: Option<Arc<QueueBudget>>,
    next_pkid: u16,
    inflight: BTreeMap<u16, Inflight>,
    pending: VecDeque<Delivery>,
    /// QoS 2 packet ids received and PUBREC'd, awaiting PUBREL: a duplicate PUBLISH with one
    /// of these ids is acknowledged again but not routed twice.
    incoming_qos2: BTreeSet<u16>,
    transmit: VecDeque<Packet>,
    events: VecDeque<Event>,
    /// Retained messages owed to new subscriptions, oldest subscription first, one cursor per
    /// filter: the driver reads them a page at a time while the client keeps up
    /// ([`Session::retained_due`]), so what one SUBSCRIBE owes never sits in memory at once.
    retained: VecDeque<RetainedCursor>,
    /// Messages dropped because the queue was full.
    dropped: u64,
    /// The protocol version of the client's connection.
    version: Version,
    /// What a 5.0 client negotiated; `None` for 3.1.1.
    v5: Option<V5Settings>,
    /// This connection's id, stamped on what it publishes (No Local).
    connection: u64,
    /// Topic aliases the client set (MQTT 5.0 §3.3.2.3.4).
    aliases: HashMap<u16, String>,
    /// Topic aliases the broker set toward the client, topic → alias; the first topics sent
    /// take the aliases the client allows, for the connection's life.
    out_aliases: HashMap<Arc<str>, u16>,
    /// MQTT 5.0 options of the subscriptions that have any; empty for most sessions, so a
    /// delivery looks up nothing.
    options: HashMap<String, SubscriptionOptions>,
    /// Filters of the last SUBSCRIBE whose retained messages are not to be sent (retain
    /// handling 1 for an existing subscription, 2), consumed by [`Session::owe_retained`].
    skip_retained: Vec<String>,
    /// The latest time an input brought: deliveries carry no clock of their own.
    now: Instant,
}

impl Session {
    /// A session for a client whose CONNECT was accepted. `parked` is the state of a
    /// persistent session being resumed: its unacknowledged messages are sent again with DUP.
    pub fn new(
        now: Instant,
        principal: Principal,
        profile: Profile,
        limits: Limits,
        keep_alive: u16,
        will: Option<Message>,
        parked: Option<Parked>,
    ) -> Session {
        let keep_alive = (keep_alive > 0).then(|| Duration::from_secs(u64::from(keep_alive)));
        let parked = parked.unwrap_or_default();
        let mut session = Session {
            origin: principal.origin(),
            principal,
            profile,
            limits,
            keep_alive,
            deadline: None,
            will: if profile.will { will.map(Box::new) } else { None },
            subscription_bytes: parked.subscriptions.keys().map(String::len).sum(),
            subscriptions: parked.subscriptions,
            deferred: BTreeMap::new(),
            budget: None,
            next_pkid: parked.next_pkid,
            inflight: BTreeMap::new(),
            pending: parked.pending,
            incoming_qos2: parked.incoming_qos2,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            retained: parked.retained,
            dropped: parked.dropped,
            version: Version::V311,
            v5: None,
            connection: 0,
            aliases: HashMap::new(),
            out_aliases: HashMap::new(),
            options: parked.options,
            skip_retained: Vec::new(),
            now,
        };
        session.touch(now);
        // Sent again in the order first sent (MQTT 4.6): ids are handed out cyclically after
        // `next_pkid`, so across a wrap the oldest are those above it.
        let mut recent = parked.inflight;
        let before_wrap = recent.split_off(&parked.next_pkid.wrapping_add(1));
        for (pkid, inflight) in before_wrap.into_iter().chain(recent) {
            match &inflight {
                Inflight::Sent(publish) => {
                    let mut again = (**publish).clone();
                    again.dup = true;
                    session.transmit.push_back(Packet::Publish(again));
                }
                Inflight::Released => session.transmit.push_back(Packet::PubRel(PubRel::new(pkid))),
            }
            session.inflight.insert(pkid, inflight);
        }
        session.fill_window();
        session
    }

    /// Reserves each new subscription's share of the broker's session state in `budget`; a
    /// filter it has no room for gets SUBACK 0x80.
    pub fn with_budget(mut self, budget: Arc<QueueBudget>) -> Session {
        self.budget = Some(budget);
        self
    }

    /// Marks what this session publishes as coming from `connection` (No Local).
    pub fn with_connection(mut self, connection: u64) -> Session {
        self.connection = connection;
        self
    }

    /// An MQTT 5.0 client with what it negotiated: reason codes on acknowledgements,
    /// properties on deliveries, its receive maximum as the inflight window.
    pub fn with_v5(mut self, settings: V5Settings) -> Session {
        self.version = Version::V5;
        self.v5 = Some(settings);
        self.fill_window();
        self
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// QoS 1/2 deliveries the client takes unacknowledged: the broker's window, no more than
    /// a 5.0 client's Receive Maximum (MQTT-3.3.4-7).
    fn window(&self) -> usize {
        match &self.v5 {
            Some(v5) => self.limits.inflight.min(usize::from(v5.client_receive_maximum.max(1))),
            None => self.limits.inflight,
        }
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Every filter the client subscribed to. A device's implicit downlink is not among them:
    /// the router reaches it by its session id (see [`crate::acl::downlink_session`]).
    pub fn filters(&self) -> impl Iterator<Item = &str> {
        self.subscriptions.keys().map(String::as_str)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The client's subscriptions with their granted QoS, as a device's kept set (PROTOCOL §2),
    /// with the kept filters a restore had to defer for lack of room (within the
    /// subscription limit, so the set stays one the registry keeps).
    pub fn subscription_set(&self) -> BTreeMap<String, u8> {
        let mut set: BTreeMap<String, u8> =
            self.subscriptions.iter().map(|(filter, qos)| (filter.clone(), *qos)).collect();
        for (filter, qos) in &self.deferred {
            if set.len() >= self.profile.max_subscriptions {
                break;
            }
            set.entry(filter.clone()).or_insert(*qos);
        }
        set
    }

    /// Subscribes the client to `kept` without a SUBSCRIBE: a device's subscriptions restored
    /// by the platform (PROTOCOL §2). Each filter passes the same checks a SUBSCRIBE would (valid,
    /// not too deep, allowed by the ACL now, within the subscription limit and subscription
    /// bytes, room in the broker's session-state budget), at most at the profile's QoS;
    /// filters already held keep their grant. Returns the filters added, for the router.
    pub fn restore<'a>(
        &mut self,
        kept: impl IntoIterator<Item = (&'a String, &'a u8)>,
        view: &RegistryView,
    ) -> Vec<(String, u8)> {
        let mut added = Vec::new();
        for (filter, qos) in kept {
            if self.subscriptions.contains_key(filter)
                || self.subscriptions.len() >= self.profile.max_subscriptions
                || topic::validate_filter(filter, self.profile.max_topic_len).is_err()
                || filter.split('/').count() > self.limits.max_topic_levels
                || self.subscription_bytes + filter.len() > self.profile.max_subscription_bytes
                || !self.principal.may_subscribe(filter, view)
            {
                continue;
            }
            if let Some(budget) = &self.budget
                && budget.reserve_state(subscription_cost(filter)).is_err()
            {
                // Room may be back by the next connect; a filter the ACL or the profile now
                // refuses is not kept (above).
                self.deferred.insert(filter.clone(), *qos);
                continue;
            }
            let qos = (*qos).min(self.profile.max_qos);
            self.subscription_bytes += filter.len();
            self.subscriptions.insert(filter.clone(), qos);
            added.push((filter.clone(), qos));
        }
        added
    }

    /// What this session holds against the broker-wide queue budget.
    pub fn load(&self) -> Load {
        load(&self.pending, &self.inflight)
    }

    /// One packet from the client. An error means the connection must close now (the will, if
    /// any, is published unless the error is [`Close::Disconnect`]).
    pub fn handle_packet(
        &mut self,
        now: Instant,
        packet: Packet,
        view: &RegistryView,
    ) -> Result<(), Close> {
        self.touch(now);
        match packet {
            Packet::Publish(publish) => self.handle_publish(now, publish, view),
            Packet::PubAck(PubAck { pkid, .. }) => {
                if matches!(self.inflight.get(&pkid), Some(Inflight::Sent(p)) if p.qos == QoS::AtLeastOnce)
                {
                    self.inflight.remove(&pkid);
                    self.fill_window();
                }
                Ok(())
            }
            Packet::PubRec(PubRec { pkid, reason, .. }) => {
                // MQTT 5.0 §4.3.3: a PUBREC with a failure reason ends the exchange.
                if (reason as u8) >= 0x80 {
                    if matches!(self.inflight.get(&pkid), Some(Inflight::Sent(_))) {
                        self.inflight.remove(&pkid);
                        self.fill_window();
                    }
                    return Ok(());
                }
                if let Some(entry) = self.inflight.get_mut(&pkid) {
                    *entry = Inflight::Released;
                }
                // Answer even an unknown id, so a client that lost track still completes.
                self.transmit.push_back(Packet::PubRel(PubRel::new(pkid)));
                Ok(())
            }
            Packet::PubComp(PubComp { pkid, .. }) => {
                if matches!(self.inflight.get(&pkid), Some(Inflight::Released)) {
                    self.inflight.remove(&pkid);
                    self.fill_window();
                }
                Ok(())
            }
            Packet::PubRel(PubRel { pkid, .. }) => {
                self.incoming_qos2.remove(&pkid);
                self.transmit.push_back(Packet::PubComp(PubComp::new(pkid)));
                Ok(())
            }
            Packet::Subscribe(subscribe) => self.handle_subscribe(subscribe, view),
            Packet::Unsubscribe(unsubscribe) => self.handle_unsubscribe(unsubscribe),
            Packet::PingReq => {
                self.transmit.push_back(Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(disconnect) => self.handle_disconnect(disconnect),
            Packet::Connect(_) => Err(Close::ProtocolViolation("second CONNECT")),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(Close::ProtocolViolation("server-to-client packet sent by the client"))
            }
        }
    }

    /// MQTT 5.0 §3.14: a DISCONNECT may ask for the will (0x04) and change the session expiry,
    /// but not from 0 (MQTT-3.14.2-2).
    fn handle_disconnect(&mut self, disconnect: Disconnect) -> Result<(), Close> {
        let expiry = disconnect.properties.and_then(|p| p.session_expiry_interval);
        if let (Some(v5), Some(secs)) = (&mut self.v5, expiry) {
            if !v5.asked_expiry && secs > 0 {
                return Err(Close::ProtocolViolation("session expiry set by DISCONNECT"));
            }
            v5.session_expiry = (secs > 0)
                .then(|| Duration::from_secs(u64::from(secs)).min(self.profile.session_expiry));
        }
        if disconnect.reason_code == DisconnectReasonCode::DisconnectWithWillMessage {
            return Err(Close::DisconnectWithWill);
        }
        self.will = None;
        Err(Close::Disconnect)
    }

    /// MQTT 5.0 §3.3.2.3.4: a topic alias the client sets, or the topic it stands for.
    fn resolve_alias(&mut self, publish: &mut Publish) -> Result<(), Close> {
        let Some(alias) = publish.properties.as_mut().and_then(|p| p.topic_alias.take()) else {
            return Ok(());
        };
        let maximum = self.v5.map_or(0, |v5| v5.topic_alias_maximum);
        if alias == 0 || alias > maximum {
            return Err(Close::Refused(0x94, "topic alias 0 or above the maximum"));
        }
        if publish.topic.is_empty() {
            match self.aliases.get(&alias) {
                Some(topic) => publish.topic.clone_from(topic),
                None => return Err(Close::ProtocolViolation("unknown topic alias")),
            }
        } else {
            self.aliases.insert(alias, publish.topic.clone());
        }
        Ok(())
    }

    fn handle_publish(
        &mut self,
        now: Instant,
        mut publish: Publish,
        view: &RegistryView,
    ) -> Result<(), Close> {
        self.resolve_alias(&mut publish)?;
        let qos = publish.qos as u8;
        if qos > self.profile.max_qos {
            return Err(Close::ProtocolViolation("QoS above this client's profile"));
        }
        if publish.payload.len() > self.profile.max_payload {
            return Err(Close::ProtocolViolation("payload above this client's limit"));
        }
        if topic::validate_name(&publish.topic, self.profile.max_topic_len).is_err() {
            return Err(Close::ProtocolViolation("invalid topic name"));
        }
        if qos > 0 && publish.pkid == 0 {
            return Err(Close::ProtocolViolation("packet identifier 0"));
        }
        if qos == 2
            && !self.incoming_qos2.contains(&publish.pkid)
            && let Some(v5) = &self.v5
            && self.incoming_qos2.len() >= usize::from(v5.receive_maximum)
        {
            return Err(Close::Refused(0x93, "receive maximum exceeded"));
        }
        // PROTOCOL §11: a forbidden publish is acknowledged with 0x87 over 5.0 (3.1.1 has no
        // reason codes: it is acknowledged and dropped).
        let allowed = self.principal.may_publish(&publish.topic, view);
        let refused = !allowed && self.version.is_v5();
        // A refused QoS 2 exchange ends at its PUBREC (MQTT 5.0 §4.3.3).
        let duplicate_qos2 = qos == 2 && !refused && !self.incoming_qos2.insert(publish.pkid);
        match qos {
            1 => {
                let mut ack = PubAck::new(publish.pkid);
                if refused {
                    ack.reason = PubAckReason::NotAuthorized;
                }
                self.transmit.push_back(Packet::PubAck(ack));
            }
            2 => {
                let mut ack = PubRec::new(publish.pkid);
                if refused {
                    ack.reason = PubRecReason::NotAuthorized;
                }
                self.transmit.push_back(Packet::PubRec(ack));
            }
            _ => {}
        }
        if duplicate_qos2 {
            return Ok(());
        }
        if !allowed {
            self.events.push_back(Event::PublishDenied { topic: publish.topic });
            return Ok(());
        }
        self.events.push_back(Event::Publish(Message {
            topic: publish.topic.into(),
            payload: publish.payload,
            qos,
            retain: publish.retain && self.profile.retain,
            origin: self.origin.clone(),
            properties: Properties::of(publish.properties, now).map(Arc::new),
            sender: self.connection,
        }));
        Ok(())
    }

    fn handle_subscribe(&mut self, subscribe: Subscribe, view: &RegistryView) -> Result<(), Close> {
        if subscribe.pkid == 0 {
            return Err(Close::ProtocolViolation("packet identifier 0"));
        }
        if subscribe.filters.is_empty() {
            return Err(Close::ProtocolViolation("SUBSCRIBE without filters"));
        }
        // A subscription bomb: refused whole, before any filter is looked at.
        if subscribe.filters.len() > self.limits.max_filters_per_subscribe {
            self.events.push_back(Event::Limited("subscribe_filters"));
            return Err(Close::ProtocolViolation("too many filters in one SUBSCRIBE"));
        }
        // Validate every filter before granting any: a SUBSCRIBE that closes the connection
        // must not leave earlier filters in `subscriptions` that the router never heard of.
        if subscribe
            .filters
            .iter()
            .any(|filter| topic::validate_filter(&filter.path, self.profile.max_topic_len).is_err())
        {
            return Err(Close::ProtocolViolation("invalid topic filter"));
        }
        let identifier = subscribe.properties.as_ref().and_then(|p| p.id);
        // MQTT-3.8.2-... : a subscription identifier of 0 is a protocol error.
        if identifier == Some(0) {
            return Err(Close::ProtocolViolation("subscription identifier 0"));
        }
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut granted = Vec::new();
        for filter in subscribe.filters {
            // MQTT 5.0 §4.8.2: `$share/{group}/{filter}`, for standard and application
            // clients (a device's topics are its own: 0x9E). No Local on one is a protocol
            // error (MQTT-3.8.3-4).
            let share = crate::trie::shared(&filter.path);
            if filter.path.starts_with("$share/") {
                if share.is_none() {
                    return Err(Close::ProtocolViolation("malformed shared subscription"));
                }
                if filter.nolocal {
                    return Err(Close::ProtocolViolation("No Local on a shared subscription"));
                }
                if self.principal.device().is_some() {
                    codes.push(SubscribeReasonCode::SharedSubscriptionsNotSupported);
                    continue;
                }
            }
            // The ACL and limits judge the filter a shared subscription stands for.
            let acl_filter = share.map_or(filter.path.as_str(), |(_, inner)| inner);
            let options = SubscriptionOptions {
                no_local: filter.nolocal,
                retain_as_published: filter.preserve_retain,
                identifier,
            };
            let fresh = !self.subscriptions.contains_key(&filter.path);
            let full = fresh && self.subscriptions.len() >= self.profile.max_subscriptions;
            // Deep filters make every publish's trie walk longer.
            let deep = filter.path.split('/').count() > self.limits.max_topic_levels;
            if deep {
                self.events.push_back(Event::Limited("topic_levels"));
            }
            let heavy = fresh
                && self.subscription_bytes + filter.path.len()
                    > self.profile.max_subscription_bytes;
            if heavy {
                self.events.push_back(Event::Limited("subscription_bytes"));
            }
            // PROTOCOL §11: 0x87 for a filter the client may not use, 0x97 for a limit, 0x8F
            // for a filter too deep (3.1.1 sees 0x80 for all).
            if !self.principal.may_subscribe(acl_filter, view) {
                codes.push(SubscribeReasonCode::NotAuthorized);
                continue;
            }
            if deep {
                codes.push(SubscribeReasonCode::TopicFilterInvalid);
                continue;
            }
            if full || heavy {
                codes.push(SubscribeReasonCode::QuotaExceeded);
                continue;
            }
            if fresh
                && let Some(budget) = &self.budget
                && let Err(shed) = budget.reserve_state(subscription_cost(&filter.path))
            {
                self.events.push_back(Event::Limited(shed.label()));
                codes.push(SubscribeReasonCode::QuotaExceeded);
                continue;
            }
            if fresh {
                self.subscription_bytes += filter.path.len();
            }
            let qos = (filter.qos as u8).min(self.profile.max_qos);
            codes.push(granted_code(qos));
            self.deferred.remove(&filter.path);
            self.subscriptions.insert(filter.path.clone(), qos);
            if options == SubscriptionOptions::default() {
                self.options.remove(&filter.path);
            } else {
                self.options.insert(filter.path.clone(), options);
            }
            // MQTT 5.0 §3.8.3.1 retain handling: 1 sends retained messages only for a new
            // subscription, 2 never.
            let skip = match filter.retain_forward_rule {
                RetainForwardRule::OnEverySubscribe => false,
                RetainForwardRule::OnNewSubscribe => !fresh,
                RetainForwardRule::Never => true,
            };
            // MQTT 5.0 §4.8.2: retained messages are not sent for a shared subscription.
            if skip || share.is_some() {
                self.skip_retained.push(filter.path.clone());
            } else {
                self.skip_retained.retain(|path| *path != filter.path);
            }
            // A filter repeated in one SUBSCRIBE replaces its own subscription (MQTT-3.8.4-3):
            // one subscription, one sending of its retained messages, at the last QoS asked.
            match granted.iter_mut().find(|(path, _): &&mut (String, u8)| *path == filter.path) {
                Some(repeated) => repeated.1 = qos,
                None => granted.push((filter.path, qos)),
            }
        }
        self.transmit.push_back(Packet::SubAck(SubAck::new(subscribe.pkid, codes)));
        if !granted.is_empty() {
            self.events.push_back(Event::Subscribe(granted));
        }
        Ok(())
    }

    fn handle_unsubscribe(&mut self, unsubscribe: Unsubscribe) -> Result<(), Close> {
        if unsubscribe.pkid == 0 {
            return Err(Close::ProtocolViolation("packet identifier 0"));
        }
        if unsubscribe.filters.is_empty() {
            return Err(Close::ProtocolViolation("UNSUBSCRIBE without filters"));
        }
        // A device that unsubscribes from its `/sys` downlink keeps it: the implicit route is
        // not a subscription. A deferred kept filter is given up as well: the device no longer
        // wants it, and the event makes the driver record its set without it.
        let mut forgot_deferred = false;
        for filter in &unsubscribe.filters {
            forgot_deferred |= self.deferred.remove(filter).is_some();
        }
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        let removed: Vec<String> = unsubscribe
            .filters
            .into_iter()
            .filter(|filter| {
                let removed = self.subscriptions.remove(filter).is_some();
                self.options.remove(filter);
                reasons.push(if removed {
                    UnsubAckReason::Success
                } else {
                    UnsubAckReason::NoSubscriptionExisted
                });
                removed
            })
            .collect();
        self.subscription_bytes -= removed.iter().map(String::len).sum::<usize>();
        self.retained.retain(|cursor| !removed.contains(&cursor.filter));
        let mut ack = UnsubAck::new(unsubscribe.pkid);
        ack.reasons = reasons;
        self.transmit.push_back(Packet::UnsubAck(ack));
        if !removed.is_empty() || forgot_deferred {
            self.events.push_back(Event::Unsubscribe(removed));
        }
        Ok(())
    }

    /// Owes the retained messages of `cursors` (from the router, for the filters of an
    /// [`Event::Subscribe`] or a device's implicit downlink). A cursor for a filter already
    /// owed replaces it: a repeated subscription sends its retained messages once more
    /// (MQTT-3.8.4-3), not once per repetition.
    pub fn owe_retained(&mut self, cursors: impl IntoIterator<Item = RetainedCursor>) {
        let skip = std::mem::take(&mut self.skip_retained);
        for cursor in cursors {
            if skip.contains(&cursor.filter) {
                continue;
            }
            self.retained.retain(|owed| owed.filter != cursor.filter);
            self.retained.push_back(cursor);
        }
    }

    /// The cursor whose next page is due, if one is and the session has room for it: a QoS 0
    /// subscription's pages are bounded by the driver's page size, a QoS 1/2 one's also by
    /// [`Session::room`].
    pub fn retained_due(&mut self) -> Option<&mut RetainedCursor> {
        let room = self.room();
        self.retained.front_mut().filter(|cursor| cursor.qos == 0 || room > 0)
    }

    /// The cursor [`Session::retained_due`] returned has nothing more to send.
    pub fn retained_done(&mut self) {
        self.retained.pop_front();
        if self.retained.is_empty() {
            self.retained = VecDeque::new();
        }
    }

    /// QoS 1/2 deliveries [`Session::handle_delivery`] would take now without dropping: free
    /// places in the inflight window and in the queue behind it.
    pub fn room(&self) -> usize {
        (self.window() + self.limits.queued)
            .saturating_sub(self.inflight.len() + self.pending.len())
    }

    /// A message routed to this client. Returns false when it was dropped (queue full).
    pub fn handle_delivery(&mut self, delivery: Delivery) -> bool {
        if !self.options.is_empty() && self.filtered_out(&delivery) {
            return true;
        }
        if delivery.qos == 0 {
            if let Some(publish) = self.publish_for(&delivery, 0) {
                let publish = self.aliased(publish, &delivery.message.topic);
                self.transmit.push_back(Packet::Publish(publish));
            }
            return true;
        }
        // `queued` bounds what waits behind a full window; a free slot takes the message now.
        let must_wait = !self.pending.is_empty() || self.inflight.len() >= self.window();
        if must_wait && self.pending.len() >= self.limits.queued {
            self.dropped += 1;
            return false;
        }
        self.pending.push_back(delivery);
        self.fill_window();
        true
    }

    /// Whether a delivery is for No Local subscriptions only, of the connection that
    /// published it (MQTT 5.0 §3.8.3.1). A delivery is one per session however many of its
    /// subscriptions match, so it is dropped only when every matching one has No Local.
    fn filtered_out(&self, delivery: &Delivery) -> bool {
        let message = &delivery.message;
        if delivery.retain || message.sender == 0 || message.sender != self.connection {
            return false;
        }
        let mut matching = self
            .subscriptions
            .keys()
            .filter(|filter| topic::matches(subscribed(filter), &message.topic))
            .peekable();
        matching.peek().is_some()
            && matching.all(|filter| self.options.get(filter).is_some_and(|o| o.no_local))
    }

    /// Moves queued QoS 1/2 messages into the inflight window.
    fn fill_window(&mut self) {
        while self.inflight.len() < self.window() {
            let Some(delivery) = self.pending.pop_front() else { return };
            let Some(pkid) = self.next_free_pkid() else {
                self.pending.push_front(delivery);
                return;
            };
            let Some(publish) = self.publish_for(&delivery, pkid) else { continue };
            // Kept with its topic: a resend on a later connection has no aliases yet.
            let sent = self.aliased(publish.clone(), &delivery.message.topic);
            self.transmit.push_back(Packet::Publish(sent));
            self.inflight.insert(pkid, Inflight::Sent(Box::new(publish)));
        }
    }

    /// `publish` with a topic alias when the client allows them (MQTT 5.0 §3.3.2.3.4): a topic
    /// already aliased goes as the alias alone, a new one takes the next free alias.
    fn aliased(&mut self, mut publish: Publish, topic: &Arc<str>) -> Publish {
        let Some(maximum) = self.v5.map(|v5| v5.client_topic_alias_maximum) else { return publish };
        if maximum == 0 {
            return publish;
        }
        let alias = match self.out_aliases.get(topic) {
            Some(&alias) => {
                publish.topic.clear();
                alias
            }
            None => {
                let Ok(next) = u16::try_from(self.out_aliases.len() + 1) else { return publish };
                if next > maximum {
                    return publish;
                }
                self.out_aliases.insert(topic.clone(), next);
                next
            }
        };
        publish.properties.get_or_insert_with(empty_publish_properties).topic_alias = Some(alias);
        publish
    }

    /// The PUBLISH that carries `delivery` to this client, or `None` when it must not be sent:
    /// expired (MQTT-3.3.2-5), or larger than a 5.0 client's Maximum Packet Size (MQTT-3.1.2-25:
    /// dropped for this client as if sent).
    fn publish_for(&mut self, delivery: &Delivery, pkid: u16) -> Option<Publish> {
        let message = &delivery.message;
        if let Some(properties) = &message.properties
            && properties.expired(self.now)
        {
            self.events.push_back(Event::Limited("message_expired"));
            return None;
        }
        let mut publish = Publish {
            dup: false,
            qos: qos_from(delivery.qos),
            retain: delivery.retain,
            topic: message.topic.to_string(),
            pkid,
            properties: None,
            payload: message.payload.clone(),
        };
        let Some(v5) = self.v5 else { return Some(publish) };
        let mut identifiers = Vec::new();
        if !self.options.is_empty() {
            for (filter, options) in &self.options {
                if !topic::matches(subscribed(filter), &message.topic) {
                    continue;
                }
                if let Some(id) = options.identifier
                    && !identifiers.contains(&id)
                {
                    identifiers.push(id);
                }
                // MQTT 5.0 §3.8.3.1 Retain As Published: a live message keeps its flag.
                publish.retain |= options.retain_as_published && message.retain;
            }
            identifiers.sort_unstable();
        }
        if message.properties.is_some() || !identifiers.is_empty() {
            let forwarded = message.properties.as_deref();
            publish.properties = Some(PublishProperties {
                payload_format_indicator: forwarded.and_then(|p| p.payload_format_indicator),
                message_expiry_interval: forwarded.and_then(|p| p.expiry).map(|(at, secs)| {
                    // What is left, rounded up, never more than the publisher asked.
                    let left = at.saturating_duration_since(self.now);
                    let left = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                    u32::try_from(left).unwrap_or(u32::MAX).min(secs)
                }),
                topic_alias: None,
                response_topic: forwarded.and_then(|p| p.response_topic.clone()),
                correlation_data: forwarded.and_then(|p| p.correlation_data.clone()),
                user_properties: forwarded.map(|p| p.user_properties.clone()).unwrap_or_default(),
                subscription_identifiers: identifiers,
                content_type: forwarded.and_then(|p| p.content_type.clone()),
            });
        }
        if let Some(maximum) = v5.client_maximum_packet {
            let body = publish.len();
            let header = 1 + match body {
                0..=127 => 1,
                128..=16_383 => 2,
                16_384..=2_097_151 => 3,
                _ => 4,
            };
            if body + header > maximum as usize {
                self.events.push_back(Event::Limited("client_maximum_packet"));
                return None;
            }
        }
        Some(publish)
    }

    fn next_free_pkid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&self.next_pkid) {
                return Some(self.next_pkid);
            }
        }
        None
    }

    /// Checks the keepalive deadline.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Close> {
        match self.deadline {
            Some(deadline) if now >= deadline => Err(Close::KeepaliveExpired),
            _ => Ok(()),
        }
    }

    /// The broker stopped reading from the client for a while (flow control): its silence
    /// meanwhile does not count against its keepalive.
    pub fn excuse_silence(&mut self, now: Instant) {
        self.touch(now);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn poll_transmit(&mut self) -> Option<Packet> {
        let packet = self.transmit.pop_front();
        if packet.is_none() {
            // An idle connection keeps no buffers: most sessions are idle most of the time, and
            // an emptied queue or map would otherwise hold its largest size.
            self.transmit = VecDeque::new();
            if self.pending.is_empty() {
                self.pending = VecDeque::new();
            }
            if self.inflight.is_empty() {
                self.inflight = BTreeMap::new();
            }
        }
        packet
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        if event.is_none() {
            self.events = VecDeque::new();
        }
        event
    }

    /// The will to publish because the connection ended without DISCONNECT.
    pub fn take_will(&mut self) -> Option<Message> {
        self.will.take().map(|will| *will)
    }

    /// The state to keep for a persistent session whose connection ended at `now`: it expires
    /// after the profile's `session_expiry`.
    pub fn park_at(self, now: Instant) -> Parked {
        let expires = now.checked_add(self.session_expiry());
        Parked { expires, ..self.park() }
    }

    /// How long the session outlives its connection: a 5.0 client's own expiry (MQTT 5.0
    /// §3.1.2.11.2, as a DISCONNECT last set it), within its profile's; the profile's for 3.1.1.
    pub fn session_expiry(&self) -> Duration {
        match &self.v5 {
            Some(v5) => v5.session_expiry.unwrap_or(Duration::ZERO),
            None => self.profile.session_expiry,
        }
    }

    /// The state to keep for a persistent session after its connection ends, for good.
    pub fn park(self) -> Parked {
        Parked {
            subscriptions: self.subscriptions,
            inflight: self.inflight,
            pending: self.pending,
            incoming_qos2: self.incoming_qos2,
            next_pkid: self.next_pkid,
            retained: self.retained,
            expires: None,
            dropped: self.dropped,
            options: self.options,
        }
    }

    /// MQTT 3.1.1 §3.1.2.10: the server disconnects after one and a half keepalive periods
    /// without a packet.
    fn touch(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.deadline = self.keep_alive.map(|keep_alive| now + keep_alive.mul_f32(1.5));
    }
}

fn empty_publish_properties() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: None,
        message_expiry_interval: None,
        topic_alias: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
        subscription_identifiers: Vec::new(),
        content_type: None,
    }
}

/// The filter a subscription matches with: a shared subscription's after `$share/{group}/`.
fn subscribed(filter: &str) -> &str {
    crate::trie::shared(filter).map_or(filter, |(_, inner)| inner)
}

/// SUBACK's reason for a granted QoS.
fn granted_code(qos: u8) -> SubscribeReasonCode {
    match qos {
        0 => SubscribeReasonCode::QoS0,
        1 => SubscribeReasonCode::QoS1,
        _ => SubscribeReasonCode::QoS2,
    }
}

pub fn qos_from(qos: u8) -> QoS {
    match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

#[cfg(test)]
mod tests;
