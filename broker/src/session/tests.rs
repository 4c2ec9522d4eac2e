//! The session in virtual time: one `Instant::now()` per test, everything else is an offset
//! from it. No sockets, no sleeping.

use meridian_registry::ids::DeviceKey;
use mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, PubRel, Publish, SubAck,
    Subscribe, SubscribeFilter, SubscribeReasonCode, UnsubAck, Unsubscribe,
};

use super::*;
use crate::packet;

/// These tests drive the session as a 3.1.1 client would: packets go in as 3.1.1 reads them
/// and come out as 3.1.1 writes them (the MQTT 5.0 ones are in `v5`).
trait V4Session {
    fn handle_v4(&mut self, now: Instant, packet: Packet, view: &RegistryView)
    -> Result<(), Close>;
}

impl V4Session for Session {
    fn handle_v4(
        &mut self,
        now: Instant,
        packet: Packet,
        view: &RegistryView,
    ) -> Result<(), Close> {
        self.handle_packet(now, packet::from_v4(packet), view)
    }
}

const PK: &str = "a13FN5TplKq";
const DN: &str = "dev1";

fn limits() -> Limits {
    Limits { inflight: 2, queued: 3, max_filters_per_subscribe: 16, max_topic_levels: 8 }
}

fn device() -> Principal {
    Principal::Device(DeviceKey {
        product_key: PK.parse().unwrap(),
        device_name: DN.parse().unwrap(),
    })
}

fn standard() -> Principal {
    Principal::Standard { username: None }
}

fn standard_profile() -> Profile {
    Profile::standard(1024 * 1024, 10)
}

/// A standard client with keepalive 60 s and the default test limits.
fn standard_session(now: Instant) -> Session {
    Session::new(now, standard(), standard_profile(), limits(), 60, None, None)
}

/// A device with keepalive 60 s.
fn device_session(now: Instant) -> Session {
    Session::new(now, device(), Profile::DEVICE, limits(), 60, None, None)
}

fn transmitted(session: &mut Session) -> Vec<Packet> {
    std::iter::from_fn(|| session.poll_transmit()).filter_map(|p| packet::to_v4(&p)).collect()
}

fn events(session: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

fn publish(topic: &str, qos: QoS, pkid: u16, payload: &str) -> Packet {
    let mut publish = Publish::new(topic, qos, payload.as_bytes().to_vec());
    publish.pkid = pkid;
    Packet::Publish(publish)
}

fn subscribe(pkid: u16, filters: &[(&str, QoS)]) -> Packet {
    let mut subscribe = Subscribe::new_many(
        filters.iter().map(|(path, qos)| SubscribeFilter::new((*path).to_owned(), *qos)),
    );
    subscribe.pkid = pkid;
    Packet::Subscribe(subscribe)
}

fn unsubscribe(pkid: u16, filters: &[&str]) -> Packet {
    Packet::Unsubscribe(Unsubscribe {
        pkid,
        topics: filters.iter().map(|filter| (*filter).to_owned()).collect(),
    })
}

fn message(topic: &str, qos: u8, payload: &str) -> Message {
    Message {
        topic: topic.into(),
        payload: Bytes::from(payload.to_owned()),
        qos,
        retain: false,
        origin: Default::default(),
        properties: None,
        sender: 0,
    }
}

fn delivery(topic: &str, qos: u8, payload: &str) -> Delivery {
    Delivery { message: Arc::new(message(topic, qos, payload)), qos, retain: false }
}

/// The (pkid, qos, dup, payload) of every PUBLISH in `packets`; panics on anything else.
fn publishes(packets: &[Packet]) -> Vec<(u16, QoS, bool, String)> {
    packets
        .iter()
        .map(|packet| match packet {
            Packet::Publish(p) => {
                (p.pkid, p.qos, p.dup, String::from_utf8(p.payload.to_vec()).unwrap())
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        })
        .collect()
}

fn device_topic(suffix: &str) -> String {
    format!("/{PK}/{DN}/{suffix}")
}

fn connect_packet() -> Packet {
    Packet::Connect(Connect::new("again"))
}

// ---- inbound publishes ----

#[test]
fn qos0_publish_is_routed_without_acknowledgement() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = standard_session(now);
    session.handle_v4(now, publish("a/b", QoS::AtMostOnce, 0, "hi"), &view).unwrap();
    assert!(transmitted(&mut session).is_empty());
    assert_eq!(events(&mut session), vec![Event::Publish(message("a/b", 0, "hi"))]);
}

#[test]
fn qos1_publish_is_acknowledged_and_routed() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = standard_session(now);
    session.handle_v4(now, publish("a/b", QoS::AtLeastOnce, 7, "hi"), &view).unwrap();
    assert_eq!(transmitted(&mut session), vec![Packet::PubAck(PubAck::new(7))]);
    assert_eq!(events(&mut session), vec![Event::Publish(message("a/b", 1, "hi"))]);

    // A QoS 1 duplicate is routed again: at-least-once allows it.
    let mut again = publish("a/b", QoS::AtLeastOnce, 7, "hi");
    if let Packet::Publish(p) = &mut again {
        p.dup = true;
    }
    session.handle_v4(now, again, &view).unwrap();
    assert_eq!(transmitted(&mut session), vec![Packet::PubAck(PubAck::new(7))]);
    assert_eq!(events(&mut session).len(), 1);
}

#[test]
fn qos2_publish_handshake_routes_once() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = standard_session(now);

    session.handle_v4(now, publish("a/b", QoS::ExactlyOnce, 9, "once"), &view).unwrap();
    assert_eq!(transmitted(&mut session), vec![Packet::PubRec(PubRec::new(9))]);
    assert_eq!(events(&mut session), vec![Event::Publish(message("a/b", 2, "once"))]);

    // The client did not see the PUBREC and sends the PUBLISH again: acknowledged, not routed.
    let mut again = publish("a/b", QoS::ExactlyOnce, 9, "once");
    if let Packet::Publish(p) = &mut again {
        p.dup = true;
    }
    session.handle_v4(now, again, &view).unwrap();
    assert_eq!(transmitted(&mut session), vec![Packet::PubRec(PubRec::new(9))]);
    assert!(events(&mut session).is_empty());

    session.handle_v4(now, Packet::PubRel(PubRel::new(9)), &view).unwrap();
    assert_eq!(transmitted(&mut session), vec![Packet::PubComp(PubComp::new(9))]);
    assert!(events(&mut session).is_empty());

    // A repeated PUBREL is completed again (the client may have missed the PUBCOMP).
    session.handle_v4(now, Packet::PubRel(PubRel::new(9)), &view).unwrap();
    assert_eq!(transmitted(&mut session), vec![Packet::PubComp(PubComp::new(9))]);

    // Once released, the id is free: a new message with it is a new message.
    session.handle_v4(now, publish("a/b", QoS::ExactlyOnce, 9, "next"), &view).unwrap();
    assert_eq!(transmitted(&mut session), vec![Packet::PubRec(PubRec::new(9))]);
    assert_eq!(events(&mut session), vec![Event::Publish(message("a/b", 2, "next"))]);
}

#[test]
fn qos2_ids_are_tracked_independently() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = standard_session(now);
    session.handle_v4(now, publish("a", QoS::ExactlyOnce, 1, "one"), &view).unwrap();
    session.handle_v4(now, publish("a", QoS::ExactlyOnce, 2, "two"), &view).unwrap();
    session.handle_v4(now, Packet::PubRel(PubRel::new(1)), &view).unwrap();
    // 2 is still awaiting PUBREL, so its duplicate is not routed; 1 is free again.
    session.handle_v4(now, publish("a", QoS::ExactlyOnce, 2, "two"), &view).unwrap();
    session.handle_v4(now, publish("a", QoS::ExactlyOnce, 1, "three"), &view).unwrap();
    let routed: Vec<_> = events(&mut session)
        .into_iter()
        .map(|event| match event {
            Event::Publish(m) => String::from_utf8(m.payload.to_vec()).unwrap(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(routed, ["one", "two", "three"]);
}

#[test]
fn packet_identifier_zero_is_refused() {
    let now = Instant::now();
    let view = RegistryView::default();
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut session = standard_session(now);
        assert_eq!(
            session.handle_v4(now, publish("a", qos, 0, "x"), &view),
            Err(Close::ProtocolViolation("packet identifier 0"))
        );
        assert!(events(&mut session).is_empty());
    }
    // QoS 0 has no packet identifier at all.
    let mut session = standard_session(now);
    assert!(session.handle_v4(now, publish("a", QoS::AtMostOnce, 0, "x"), &view).is_ok());
}

#[test]
fn invalid_topic_names_are_protocol_violations() {
    let now = Instant::now();
    let view = RegistryView::default();
    for topic in ["", "a/+", "a/#", "a\0b"] {
        let mut session = standard_session(now);
        assert_eq!(
            session.handle_v4(now, publish(topic, QoS::AtMostOnce, 0, "x"), &view),
            Err(Close::ProtocolViolation("invalid topic name")),
            "{topic:?}"
        );
    }
    // A device's topics are at most 128 bytes.
    let mut session = device_session(now);
    let long = device_topic(&format!("user/{}", "x".repeat(128)));
    assert_eq!(
        session.handle_v4(now, publish(&long, QoS::AtMostOnce, 0, "x"), &view),
        Err(Close::ProtocolViolation("invalid topic name"))
    );
}

#[test]
fn retain_is_kept_for_standard_clients_and_stripped_for_devices() {
    let now = Instant::now();
    let view = RegistryView::default();

    let mut standard = standard_session(now);
    let mut packet = publish("a/b", QoS::AtMostOnce, 0, "r");
    if let Packet::Publish(p) = &mut packet {
        p.retain = true;
    }
    standard.handle_v4(now, packet, &view).unwrap();
    let Some(Event::Publish(routed)) = standard.poll_event() else { panic!("no publish") };
    assert!(routed.retain);

    let mut device = device_session(now);
    let mut packet = publish(&device_topic("update"), QoS::AtLeastOnce, 1, "r");
    if let Packet::Publish(p) = &mut packet {
        p.retain = true;
    }
    device.handle_v4(now, packet, &view).unwrap();
    let Some(Event::Publish(routed)) = device.poll_event() else { panic!("no publish") };
    assert!(!routed.retain);
}

// ---- device profile ----

#[test]
fn device_downlink_is_the_routers_not_a_subscription() {
    // The router reaches a device's `/sys/{pk}/{dn}/#` by its session id (see
    // `router::tests::device_downlink_is_routed_without_a_subscription`): the session
    // announces nothing and lists no filter for it.
    let now = Instant::now();
    let mut session = Session::new(now, device(), Profile::DEVICE, limits(), 60, None, None);
    assert!(events(&mut session).is_empty());
    assert_eq!(session.filters().count(), 0);
    assert!(transmitted(&mut session).is_empty());

    // Nobody else gets one.
    let mut session = standard_session(now);
    assert!(events(&mut session).is_empty());
    assert_eq!(session.filters().count(), 0);
}

#[test]
fn device_publish_outside_its_topics_is_denied_but_acknowledged() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = device_session(now);
    let foreign = format!("/sys/{PK}/dev2/thing/event/property/post");

    session.handle_v4(now, publish(&foreign, QoS::AtLeastOnce, 3, "{}"), &view).unwrap();
    assert_eq!(transmitted(&mut session), vec![Packet::PubAck(PubAck::new(3))]);
    assert_eq!(events(&mut session), vec![Event::PublishDenied { topic: foreign.clone() }]);

    session.handle_v4(now, publish(&foreign, QoS::AtMostOnce, 0, "{}"), &view).unwrap();
    assert!(transmitted(&mut session).is_empty());
    assert_eq!(events(&mut session), vec![Event::PublishDenied { topic: foreign }]);

    // Its own topic goes through.
    let own = format!("/sys/{PK}/{DN}/thing/event/property/post");
    session.handle_v4(now, publish(&own, QoS::AtLeastOnce, 4, "{}"), &view).unwrap();
    assert_eq!(transmitted(&mut session), vec![Packet::PubAck(PubAck::new(4))]);
    // Marked as the device's, so its own implicit downlink does not echo it.
    let origin = Origin::Device(crate::acl::device_session_id(PK, DN).into());
    let sent = Message { origin, ..message(&own, 1, "{}") };
    assert_eq!(events(&mut session), vec![Event::Publish(sent)]);
}

#[test]
fn device_qos2_publish_is_a_protocol_violation() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = device_session(now);
    assert_eq!(
        session.handle_v4(now, publish(&device_topic("update"), QoS::ExactlyOnce, 1, "x"), &view),
        Err(Close::ProtocolViolation("QoS above this client's profile"))
    );
    assert!(transmitted(&mut session).is_empty());
    assert!(events(&mut session).is_empty());
}

#[test]
fn payload_above_the_profile_limit_is_a_protocol_violation() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = device_session(now);
    let topic = device_topic("update");
    let at_limit = "x".repeat(Profile::DEVICE.max_payload);
    session.handle_v4(now, publish(&topic, QoS::AtMostOnce, 0, &at_limit), &view).unwrap();
    assert_eq!(events(&mut session).len(), 1);

    let over = "x".repeat(Profile::DEVICE.max_payload + 1);
    assert_eq!(
        session.handle_v4(now, publish(&topic, QoS::AtLeastOnce, 1, &over), &view),
        Err(Close::ProtocolViolation("payload above this client's limit"))
    );
    assert!(transmitted(&mut session).is_empty(), "not acknowledged");
    assert!(events(&mut session).is_empty(), "not routed");

    let profile = Profile { max_payload: 4, ..standard_profile() };
    let mut session = Session::new(now, standard(), profile, limits(), 0, None, None);
    assert!(session.handle_v4(now, publish("a", QoS::AtMostOnce, 0, "four"), &view).is_ok());
    assert!(session.handle_v4(now, publish("a", QoS::AtMostOnce, 0, "five!"), &view).is_err());
}

// ---- subscribe and unsubscribe ----

#[test]
fn granted_qos_is_capped_by_the_profile() {
    let now = Instant::now();
    let view = RegistryView::default();

    let mut device = device_session(now);
    let filter = device_topic("user/#");
    device.handle_v4(now, subscribe(1, &[(&filter, QoS::ExactlyOnce)]), &view).unwrap();
    assert_eq!(
        transmitted(&mut device),
        vec![Packet::SubAck(SubAck::new(1, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]))]
    );
    assert_eq!(events(&mut device), vec![Event::Subscribe(vec![(filter, 1)])]);

    let mut standard = standard_session(now);
    standard
        .handle_v4(now, subscribe(2, &[("a/#", QoS::ExactlyOnce), ("b", QoS::AtMostOnce)]), &view)
        .unwrap();
    assert_eq!(
        transmitted(&mut standard),
        vec![Packet::SubAck(SubAck::new(
            2,
            vec![
                SubscribeReasonCode::Success(QoS::ExactlyOnce),
                SubscribeReasonCode::Success(QoS::AtMostOnce)
            ]
        ))]
    );
    assert_eq!(
        events(&mut standard),
        vec![Event::Subscribe(vec![("a/#".into(), 2), ("b".into(), 0)])]
    );
}

#[test]
fn forbidden_filter_gets_failure_and_the_rest_are_granted() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = device_session(now);
    let own = device_topic("user/#");
    let broadcast = format!("/broadcast/{PK}/#");
    session
        .handle_v4(
            now,
            subscribe(
                5,
                &[
                    (&own, QoS::AtLeastOnce),
                    ("/sys/#", QoS::AtLeastOnce),
                    (&broadcast, QoS::AtMostOnce),
                    ("#", QoS::AtMostOnce),
                ],
            ),
            &view,
        )
        .unwrap();
    assert_eq!(
        transmitted(&mut session),
        vec![Packet::SubAck(SubAck::new(
            5,
            vec![
                SubscribeReasonCode::Success(QoS::AtLeastOnce),
                SubscribeReasonCode::Failure,
                SubscribeReasonCode::Success(QoS::AtMostOnce),
                SubscribeReasonCode::Failure,
            ]
        ))]
    );
    assert_eq!(events(&mut session), vec![Event::Subscribe(vec![(own, 1), (broadcast, 0)])]);

    // A SUBSCRIBE refused entirely still gets its SUBACK, and no event.
    session.handle_v4(now, subscribe(6, &[("#", QoS::AtMostOnce)]), &view).unwrap();
    assert_eq!(
        transmitted(&mut session),
        vec![Packet::SubAck(SubAck::new(6, vec![SubscribeReasonCode::Failure]))]
    );
    assert!(events(&mut session).is_empty());
}

#[test]
fn failure_is_0x80_on_the_wire() {
    let mut out = bytes::BytesMut::new();
    SubAck::new(1, vec![SubscribeReasonCode::Failure]).write(&mut out).unwrap();
    assert_eq!(out.last(), Some(&0x80));
}

#[test]
fn invalid_filter_is_a_protocol_violation_and_changes_nothing() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = standard_session(now);
    assert_eq!(
        session.handle_v4(
            now,
            subscribe(1, &[("ok/#", QoS::AtLeastOnce), ("a/#/b", QoS::AtLeastOnce)]),
            &view
        ),
        Err(Close::ProtocolViolation("invalid topic filter"))
    );
    assert!(transmitted(&mut session).is_empty());
    assert!(events(&mut session).is_empty());
    // The valid filter before the invalid one must not linger: the router never heard of it,
    // and a parked session would otherwise carry a subscription nothing delivers to.
    assert_eq!(session.filters().count(), 0);

    for bad in ["a+", "", "#/a"] {
        let mut session = standard_session(now);
        assert!(
            session.handle_v4(now, subscribe(1, &[(bad, QoS::AtMostOnce)]), &view).is_err(),
            "{bad:?}"
        );
    }
    // Too long for a device.
    let mut session = device_session(now);
    let long = device_topic(&format!("user/{}", "x".repeat(128)));
    assert_eq!(
        session.handle_v4(now, subscribe(1, &[(&long, QoS::AtMostOnce)]), &view),
        Err(Close::ProtocolViolation("invalid topic filter"))
    );
}

#[test]
fn malformed_subscribe_and_unsubscribe_are_protocol_violations() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = standard_session(now);
    assert_eq!(
        session.handle_v4(now, subscribe(0, &[("a", QoS::AtMostOnce)]), &view),
        Err(Close::ProtocolViolation("packet identifier 0"))
    );
    assert_eq!(
        session.handle_v4(now, subscribe(1, &[]), &view),
        Err(Close::ProtocolViolation("SUBSCRIBE without filters"))
    );
    assert_eq!(
        session.handle_v4(now, unsubscribe(0, &["a"]), &view),
        Err(Close::ProtocolViolation("packet identifier 0"))
    );
    assert_eq!(
        session.handle_v4(now, unsubscribe(1, &[]), &view),
        Err(Close::ProtocolViolation("UNSUBSCRIBE without filters"))
    );
}

fn suback_codes(session: &mut Session) -> Vec<SubscribeReasonCode> {
    match transmitted(session).as_slice() {
        [Packet::SubAck(ack)] => ack.return_codes.clone(),
        other => panic!("expected one SUBACK, got {other:?}"),
    }
}

/// A filter repeated in one SUBSCRIBE is one subscription (the last QoS asked wins), asks the
/// router once, and so is sent its retained messages once; it takes no second place under
/// `max_subscriptions`.
#[test]
fn a_filter_repeated_in_one_subscribe_is_one_subscription() {
    let now = Instant::now();
    let view = RegistryView::default();
    let profile = Profile { max_subscriptions: 2, ..standard_profile() };
    let mut session = Session::new(now, standard(), profile, limits(), 60, None, None);
    let (q0, q1) = (QoS::AtMostOnce, QoS::AtLeastOnce);
    let filters = [("r/#", q1), ("r/#", q1), ("b", q0), ("r/#", q0), ("c", q0), ("r/#", q1)];
    session.handle_v4(now, subscribe(1, &filters), &view).unwrap();
    let ok = |qos| SubscribeReasonCode::Success(qos);
    assert_eq!(
        suback_codes(&mut session),
        [ok(q1), ok(q1), ok(q0), ok(q0), SubscribeReasonCode::Failure, ok(q1)],
        "one code per filter; `c` is the third subscription"
    );
    assert_eq!(events(&mut session), [Event::Subscribe(vec![("r/#".into(), 1), ("b".into(), 0)])]);
    assert_eq!(session.filters().count(), 2);
}

/// The bytes of a session's filters are bounded (`max_subscription_bytes`), and each new
/// filter reserves its share of the broker's session state.
#[test]
fn subscription_memory_is_bounded_per_session_and_broker_wide() {
    let now = Instant::now();
    let view = RegistryView::default();
    let profile = Profile { max_subscription_bytes: 10, ..standard_profile() };
    let mut session = Session::new(now, standard(), profile, limits(), 60, None, None);
    let q0 = QoS::AtMostOnce;
    let ok = SubscribeReasonCode::Success(q0);
    session
        .handle_v4(now, subscribe(1, &[("aaaaa", q0), ("bbbbb", q0), ("c", q0)]), &view)
        .unwrap();
    assert_eq!(suback_codes(&mut session), [ok, ok, SubscribeReasonCode::Failure]);
    assert!(events(&mut session).contains(&Event::Limited("subscription_bytes")));
    // Re-subscribing costs nothing more; unsubscribing frees its bytes.
    session.handle_v4(now, subscribe(2, &[("aaaaa", q0)]), &view).unwrap();
    assert_eq!(suback_codes(&mut session), [ok]);
    session.handle_v4(now, unsubscribe(3, &["aaaaa"]), &view).unwrap();
    session.handle_v4(now, subscribe(4, &[("c", q0)]), &view).unwrap();
    transmitted(&mut session);
    events(&mut session);

    // Broker-wide: room for two filters' state only.
    let cap = subscription_cost("x") + subscription_cost("y");
    let budget = Arc::new(QueueBudget::unlimited().with_state_cap(cap));
    let mut session = standard_session(now).with_budget(budget.clone());
    session
        .handle_v4(now, subscribe(1, &[("x", q0), ("y", q0), ("z", q0), ("x", q0)]), &view)
        .unwrap();
    assert_eq!(suback_codes(&mut session), [ok, ok, SubscribeReasonCode::Failure, ok]);
    assert!(events(&mut session).contains(&Event::Limited("session_state_full")));
    assert_eq!(budget.state(), cap);
}

/// A parked session carries its expiry: the profile's `session_expiry` after it was parked.
#[test]
fn parked_sessions_carry_their_expiry() {
    let now = Instant::now();
    let hour = Duration::from_secs(3600);
    let profile = Profile { session_expiry: hour, ..standard_profile() };
    let parked = Session::new(now, standard(), profile, limits(), 60, None, None).park_at(now);
    assert_eq!(parked.expires, Some(now + hour));
    assert!(!parked.expired(now + hour - Duration::from_millis(1)));
    assert!(parked.expired(now + hour));
    let forever = Profile { session_expiry: Duration::MAX, ..standard_profile() };
    let parked = Session::new(now, standard(), forever, limits(), 60, None, None).park_at(now);
    assert_eq!(parked.expires, None, "an expiry past the clock's range is none");
    assert!(!parked.expired(now + hour * 1_000_000));
}

/// Retained messages owed to subscriptions wait as cursors: one per filter (a repeated
/// subscription restarts its own), dropped on unsubscribe, and a QoS 1 one is due only while
/// the session has room.
#[test]
fn retained_cursors_are_owed_per_filter() {
    let now = Instant::now();
    let view = RegistryView::default();
    let store = crate::retained::Retained::new(10, 1_000);
    let mut session = standard_session(now);
    session.owe_retained([store.cursor("a/#".into(), 1), store.cursor("b".into(), 0)]);
    session.owe_retained([store.cursor("a/#".into(), 0)]);
    assert_eq!(session.retained_due().map(|cursor| cursor.filter.clone()), Some("b".into()));
    session.handle_v4(now, unsubscribe(1, &["b"]), &view).unwrap();
    // `b` was not subscribed in this session, so it is still owed; a subscribed one goes.
    session.retained_done();
    assert_eq!(session.retained_due().map(|cursor| cursor.qos), Some(0));
    session.retained_done();
    assert!(session.retained_due().is_none());

    // QoS 1: due only while there is room (inflight 2 + queued 3 in these limits).
    session.owe_retained([store.cursor("q".into(), 1)]);
    for n in 0..5 {
        assert!(session.handle_delivery(delivery("q", 1, &n.to_string())));
    }
    assert_eq!(session.room(), 0);
    assert!(session.retained_due().is_none(), "no room: not due");
    session.handle_v4(now, Packet::PubAck(PubAck::new(1)), &view).unwrap();
    assert!(session.retained_due().is_some());
    session.handle_v4(now, subscribe(2, &[("q", QoS::AtLeastOnce)]), &view).unwrap();
    session.handle_v4(now, unsubscribe(3, &["q"]), &view).unwrap();
    assert!(session.retained_due().is_none(), "unsubscribed: no longer owed");
}

#[test]
fn subscription_limit_refuses_the_extra_filters() {
    let now = Instant::now();
    let view = RegistryView::default();
    let profile = Profile { max_subscriptions: 2, ..standard_profile() };
    let mut session = Session::new(now, standard(), profile, limits(), 60, None, None);
    let ok = SubscribeReasonCode::Success(QoS::AtMostOnce);
    let suback = |session: &mut Session| match transmitted(session).as_slice() {
        [Packet::SubAck(ack)] => ack.return_codes.clone(),
        other => panic!("expected one SUBACK, got {other:?}"),
    };

    session
        .handle_v4(
            now,
            subscribe(1, &[("a", QoS::AtMostOnce), ("b", QoS::AtMostOnce), ("c", QoS::AtMostOnce)]),
            &view,
        )
        .unwrap();
    assert_eq!(suback(&mut session), vec![ok, ok, SubscribeReasonCode::Failure]);
    assert_eq!(
        events(&mut session),
        vec![Event::Subscribe(vec![("a".into(), 0), ("b".into(), 0)])]
    );

    // Re-subscribing an existing filter replaces it and does not count twice.
    session.handle_v4(now, subscribe(2, &[("a", QoS::AtLeastOnce)]), &view).unwrap();
    assert_eq!(suback(&mut session), vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    assert_eq!(events(&mut session), vec![Event::Subscribe(vec![("a".into(), 1)])]);
    session.handle_v4(now, subscribe(3, &[("d", QoS::AtMostOnce)]), &view).unwrap();
    assert_eq!(suback(&mut session), vec![SubscribeReasonCode::Failure]);

    // Unsubscribing makes room.
    session.handle_v4(now, unsubscribe(4, &["b"]), &view).unwrap();
    let _ = transmitted(&mut session);
    let _ = events(&mut session);
    session.handle_v4(now, subscribe(5, &[("d", QoS::AtMostOnce)]), &view).unwrap();
    assert_eq!(suback(&mut session), vec![ok]);
    let mut filters: Vec<_> = session.filters().collect();
    filters.sort_unstable();
    assert_eq!(filters, ["a", "d"]);
}

/// Subscription bombs: a SUBSCRIBE with more filters than allowed closes the connection
/// before any is granted; a filter deeper than allowed gets 0x80 while the others are granted.
#[test]
fn subscription_bombs_are_refused() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = standard_session(now);
    let many: Vec<String> = (0..17).map(|i| format!("bomb/{i}")).collect();
    let filters: Vec<(&str, QoS)> = many.iter().map(|f| (f.as_str(), QoS::AtMostOnce)).collect();
    assert_eq!(
        session.handle_v4(now, subscribe(1, &filters), &view),
        Err(Close::ProtocolViolation("too many filters in one SUBSCRIBE"))
    );
    assert!(transmitted(&mut session).is_empty());
    assert_eq!(events(&mut session), vec![Event::Limited("subscribe_filters")]);
    assert_eq!(session.filters().count(), 0);

    let mut session = standard_session(now);
    let deep = "+/".repeat(8) + "#";
    let just_deep_enough = "+/".repeat(7) + "#";
    session
        .handle_v4(
            now,
            subscribe(2, &[(&deep, QoS::AtMostOnce), (&just_deep_enough, QoS::AtMostOnce)]),
            &view,
        )
        .unwrap();
    assert_eq!(
        transmitted(&mut session),
        vec![Packet::SubAck(SubAck::new(
            2,
            vec![SubscribeReasonCode::Failure, SubscribeReasonCode::Success(QoS::AtMostOnce)]
        ))]
    );
    assert_eq!(
        events(&mut session),
        vec![Event::Limited("topic_levels"), Event::Subscribe(vec![(just_deep_enough, 0)])]
    );
}

#[test]
fn device_downlink_does_not_count_against_its_subscription_limit() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = device_session(now);
    let filters: Vec<String> = (0..Profile::DEVICE.max_subscriptions)
        .map(|i| device_topic(&format!("user/{i}")))
        .collect();
    for (i, filter) in filters.iter().enumerate() {
        let pkid = u16::try_from(i + 1).unwrap();
        session.handle_v4(now, subscribe(pkid, &[(filter, QoS::AtLeastOnce)]), &view).unwrap();
    }
    let granted = transmitted(&mut session)
        .into_iter()
        .filter(|packet| {
            matches!(packet, Packet::SubAck(ack)
                if ack.return_codes == [SubscribeReasonCode::Success(QoS::AtLeastOnce)])
        })
        .count();
    assert_eq!(granted, Profile::DEVICE.max_subscriptions);

    let extra = device_topic("user/extra");
    session.handle_v4(now, subscribe(999, &[(&extra, QoS::AtLeastOnce)]), &view).unwrap();
    assert_eq!(
        transmitted(&mut session),
        vec![Packet::SubAck(SubAck::new(999, vec![SubscribeReasonCode::Failure]))]
    );
    assert_eq!(session.filters().count(), Profile::DEVICE.max_subscriptions);
}

#[test]
fn unsubscribe_acknowledges_and_reports_what_was_removed() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = standard_session(now);
    session
        .handle_v4(now, subscribe(1, &[("a/#", QoS::AtLeastOnce), ("b", QoS::AtMostOnce)]), &view)
        .unwrap();
    let _ = transmitted(&mut session);
    let _ = events(&mut session);

    session.handle_v4(now, unsubscribe(2, &["a/#", "never"]), &view).unwrap();
    assert_eq!(transmitted(&mut session), vec![Packet::UnsubAck(UnsubAck::new(2))]);
    assert_eq!(events(&mut session), vec![Event::Unsubscribe(vec!["a/#".into()])]);
    assert_eq!(session.filters().collect::<Vec<_>>(), ["b"]);

    // Unsubscribing only unknown filters is still acknowledged, with nothing for the router.
    session.handle_v4(now, unsubscribe(3, &["a/#"]), &view).unwrap();
    assert_eq!(transmitted(&mut session), vec![Packet::UnsubAck(UnsubAck::new(3))]);
    assert!(events(&mut session).is_empty());
}

#[test]
fn device_unsubscribing_its_downlink_removes_only_the_explicit_subscription() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = device_session(now);
    let downlink = format!("/sys/{PK}/{DN}/#");
    session.handle_v4(now, subscribe(1, &[(&downlink, QoS::AtLeastOnce)]), &view).unwrap();
    assert_eq!(
        transmitted(&mut session),
        vec![Packet::SubAck(SubAck::new(1, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]))]
    );
    assert_eq!(events(&mut session), vec![Event::Subscribe(vec![(downlink.clone(), 1)])]);

    // The index entry goes; the downlink itself is routed by session id and stays.
    session.handle_v4(now, unsubscribe(2, &[&downlink]), &view).unwrap();
    assert_eq!(transmitted(&mut session), vec![Packet::UnsubAck(UnsubAck::new(2))]);
    assert_eq!(events(&mut session), vec![Event::Unsubscribe(vec![downlink])]);
    assert_eq!(session.filters().count(), 0);
}

#[test]
fn qos0_delivery_is_sent_at_once_without_an_id() {
    let now = Instant::now();
    let mut session = standard_session(now);
    assert!(session.handle_delivery(delivery("a", 0, "zero")));
    assert_eq!(publishes(&transmitted(&mut session)), [(0, QoS::AtMostOnce, false, "zero".into())]);
}

#[test]
fn qos1_deliveries_respect_the_window_and_the_queue() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = standard_session(now); // inflight 2, queued 3

    for i in 0..5 {
        assert!(session.handle_delivery(delivery("a", 1, &format!("m{i}"))), "m{i}");
    }
    assert_eq!(
        publishes(&transmitted(&mut session)),
        [(1, QoS::AtLeastOnce, false, "m0".into()), (2, QoS::AtLeastOnce, false, "m1".into())]
    );
    // Window (2) and queue (3) are full: the next is dropped and counted.
    assert!(!session.handle_delivery(delivery("a", 1, "m5")));
    assert!(!session.handle_delivery(delivery("a", 2, "m6")));
    assert_eq!(session.dropped(), 2);
    assert!(transmitted(&mut session).is_empty());

    // QoS 0 is never queued, so it is never dropped here.
    assert!(session.handle_delivery(delivery("a", 0, "fast")));
    assert_eq!(publishes(&transmitted(&mut session)), [(0, QoS::AtMostOnce, false, "fast".into())]);

    // A PUBACK frees one slot, filled from the queue in order.
    session.handle_v4(now, Packet::PubAck(PubAck::new(1)), &view).unwrap();
    assert_eq!(publishes(&transmitted(&mut session)), [(3, QoS::AtLeastOnce, false, "m2".into())]);
    // Unknown and repeated PUBACKs change nothing.
    session.handle_v4(now, Packet::PubAck(PubAck::new(1)), &view).unwrap();
    session.handle_v4(now, Packet::PubAck(PubAck::new(77)), &view).unwrap();
    assert!(transmitted(&mut session).is_empty());

    session.handle_v4(now, Packet::PubAck(PubAck::new(2)), &view).unwrap();
    session.handle_v4(now, Packet::PubAck(PubAck::new(3)), &view).unwrap();
    assert_eq!(
        publishes(&transmitted(&mut session)),
        [(4, QoS::AtLeastOnce, false, "m3".into()), (5, QoS::AtLeastOnce, false, "m4".into())]
    );
    // The queue has room again.
    assert!(session.handle_delivery(delivery("a", 1, "m7")));
    assert_eq!(session.dropped(), 2);
}

#[test]
fn qos1_delivery_is_sent_when_the_window_has_room_even_without_a_queue() {
    let now = Instant::now();
    let view = RegistryView::default();
    let limits = Limits { inflight: 1, queued: 0, ..limits() };
    let mut session = Session::new(now, standard(), standard_profile(), limits, 60, None, None);
    assert!(session.handle_delivery(delivery("a", 1, "m0")));
    assert_eq!(publishes(&transmitted(&mut session)), [(1, QoS::AtLeastOnce, false, "m0".into())]);
    // The window is full and nothing may wait behind it.
    assert!(!session.handle_delivery(delivery("a", 1, "m1")));
    assert_eq!(session.dropped(), 1);
    session.handle_v4(now, Packet::PubAck(PubAck::new(1)), &view).unwrap();
    assert!(session.handle_delivery(delivery("a", 1, "m2")));
    assert_eq!(publishes(&transmitted(&mut session)), [(2, QoS::AtLeastOnce, false, "m2".into())]);
}

#[test]
fn qos2_delivery_handshake() {
    let now = Instant::now();
    let view = RegistryView::default();
    let limits = Limits { inflight: 1, queued: 10, ..limits() };
    let mut session = Session::new(now, standard(), standard_profile(), limits, 60, None, None);

    assert!(session.handle_delivery(delivery("a", 2, "first")));
    assert!(session.handle_delivery(delivery("a", 2, "second")));
    assert_eq!(
        publishes(&transmitted(&mut session)),
        [(1, QoS::ExactlyOnce, false, "first".into())]
    );

    // A PUBACK does not complete a QoS 2 delivery.
    session.handle_v4(now, Packet::PubAck(PubAck::new(1)), &view).unwrap();
    assert!(transmitted(&mut session).is_empty());
    // Neither does a PUBCOMP before PUBREC.
    session.handle_v4(now, Packet::PubComp(PubComp::new(1)), &view).unwrap();
    assert!(transmitted(&mut session).is_empty());

    session.handle_v4(now, Packet::PubRec(PubRec::new(1)), &view).unwrap();
    assert_eq!(transmitted(&mut session), vec![Packet::PubRel(PubRel::new(1))]);
    // Still in the window until PUBCOMP.
    session.handle_v4(now, Packet::PubComp(PubComp::new(1)), &view).unwrap();
    assert_eq!(
        publishes(&transmitted(&mut session)),
        [(2, QoS::ExactlyOnce, false, "second".into())]
    );

    // A PUBREC for an id we do not know is still released, so the client can finish.
    session.handle_v4(now, Packet::PubRec(PubRec::new(500)), &view).unwrap();
    assert_eq!(transmitted(&mut session), vec![Packet::PubRel(PubRel::new(500))]);
}

#[test]
fn retained_delivery_keeps_its_retain_flag() {
    let now = Instant::now();
    let mut session = standard_session(now);
    let mut retained = delivery("a", 1, "kept");
    retained.retain = true;
    session.handle_delivery(retained);
    let sent = transmitted(&mut session);
    let [Packet::Publish(p)] = sent.as_slice() else {
        panic!("expected one PUBLISH, got {sent:?}")
    };
    assert!(p.retain);
}

#[test]
fn packet_ids_skip_ids_in_use_and_zero() {
    let now = Instant::now();
    let view = RegistryView::default();
    let limits = Limits { inflight: 3, queued: 0, ..limits() };
    let mut session = Session::new(now, standard(), standard_profile(), limits, 60, None, None);

    session.handle_delivery(delivery("a", 1, "held"));
    assert_eq!(publishes(&transmitted(&mut session))[0].0, 1);

    // Jump to the top of the id space: the allocator wraps past 0 and past 1 (still in flight).
    session.next_pkid = u16::MAX - 1;
    session.handle_delivery(delivery("a", 1, "top"));
    session.handle_delivery(delivery("a", 1, "wrapped"));
    let ids: Vec<u16> =
        publishes(&transmitted(&mut session)).into_iter().map(|(pkid, ..)| pkid).collect();
    assert_eq!(ids, [u16::MAX, 2]);

    // Once acknowledged, ids are reused.
    for pkid in [1, u16::MAX, 2] {
        session.handle_v4(now, Packet::PubAck(PubAck::new(pkid)), &view).unwrap();
    }
    session.next_pkid = u16::MAX;
    session.handle_delivery(delivery("a", 1, "again"));
    assert_eq!(publishes(&transmitted(&mut session))[0].0, 1);
}

// ---- keepalive ----

#[test]
fn keepalive_deadline_is_one_and_a_half_periods_after_the_last_packet() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = standard_session(now); // keepalive 60 s
    assert_eq!(session.poll_timeout(), Some(now + Duration::from_secs(90)));
    assert_eq!(session.handle_timeout(now + Duration::from_millis(89_999)), Ok(()));

    // Any packet from the client moves the deadline.
    let later = now + Duration::from_secs(30);
    session.handle_v4(later, Packet::PingReq, &view).unwrap();
    assert_eq!(transmitted(&mut session), vec![Packet::PingResp]);
    assert_eq!(session.poll_timeout(), Some(later + Duration::from_secs(90)));
    assert_eq!(session.handle_timeout(now + Duration::from_secs(100)), Ok(()));

    // Deliveries to the client do not.
    session.handle_delivery(delivery("a", 0, "x"));
    assert_eq!(session.poll_timeout(), Some(later + Duration::from_secs(90)));

    assert_eq!(
        session.handle_timeout(later + Duration::from_secs(90)),
        Err(Close::KeepaliveExpired)
    );
    assert_eq!(
        session.handle_timeout(later + Duration::from_secs(3600)),
        Err(Close::KeepaliveExpired)
    );
}

#[test]
fn keepalive_deadline_is_exact_for_odd_and_large_periods() {
    let now = Instant::now();
    for (keep_alive, millis) in [(1, 1_500), (7, 10_500), (30, 45_000), (1200, 1_800_000)] {
        let mut session =
            Session::new(now, device(), Profile::DEVICE, limits(), keep_alive, None, None);
        let deadline = now + Duration::from_millis(millis);
        assert_eq!(session.poll_timeout(), Some(deadline), "keepalive {keep_alive}");
        assert_eq!(session.handle_timeout(deadline - Duration::from_millis(1)), Ok(()));
        assert_eq!(session.handle_timeout(deadline), Err(Close::KeepaliveExpired));
    }
}

#[test]
fn keepalive_zero_disables_the_deadline() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = Session::new(now, standard(), standard_profile(), limits(), 0, None, None);
    assert_eq!(session.poll_timeout(), None);
    let much_later = now + Duration::from_secs(365 * 24 * 3600);
    assert_eq!(session.handle_timeout(much_later), Ok(()));
    session.handle_v4(much_later, Packet::PingReq, &view).unwrap();
    assert_eq!(session.poll_timeout(), None);
}

// ---- connection end and will ----

fn will() -> Message {
    Message {
        topic: "clients/gone".into(),
        payload: Bytes::from_static(b"bye"),
        qos: 1,
        retain: true,
        origin: Default::default(),
        properties: None,
        sender: 0,
    }
}

#[test]
fn disconnect_discards_the_will() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session =
        Session::new(now, standard(), standard_profile(), limits(), 60, Some(will()), None);
    assert_eq!(session.handle_v4(now, Packet::Disconnect, &view), Err(Close::Disconnect));
    assert_eq!(session.take_will(), None);
}

#[test]
fn other_closes_keep_the_will() {
    let now = Instant::now();
    let view = RegistryView::default();

    let mut expired =
        Session::new(now, standard(), standard_profile(), limits(), 60, Some(will()), None);
    assert_eq!(expired.handle_timeout(now + Duration::from_secs(90)), Err(Close::KeepaliveExpired));
    assert_eq!(expired.take_will(), Some(will()));
    assert_eq!(expired.take_will(), None, "published once");

    let mut violated =
        Session::new(now, standard(), standard_profile(), limits(), 60, Some(will()), None);
    assert!(violated.handle_v4(now, connect_packet(), &view).is_err());
    assert_eq!(violated.take_will(), Some(will()));

    // Closed from outside (kick, socket error): the session saw nothing, the will stands.
    let mut kicked =
        Session::new(now, standard(), standard_profile(), limits(), 60, Some(will()), None);
    assert_eq!(kicked.take_will(), Some(will()));
}

#[test]
fn device_profile_never_keeps_a_will() {
    let now = Instant::now();
    let mut session =
        Session::new(now, device(), Profile::DEVICE, limits(), 60, Some(will()), None);
    assert_eq!(session.handle_timeout(now + Duration::from_secs(90)), Err(Close::KeepaliveExpired));
    assert_eq!(session.take_will(), None);
}

/// A will is checked at CONNECT as a PUBLISH on its topic would be, for every kind of client.
#[test]
fn wills_are_checked_like_publishes() {
    let view = RegistryView::default();
    let last_will =
        |topic: &str, qos: QoS, retain: bool| packet::LastWill::new(topic, "bye", qos, retain);
    let standard_profile = standard_profile();
    let check = |principal: &Principal, profile: &Profile, will| {
        check_will(principal, profile, will, &view)
    };

    // A standard client may leave a retained will anywhere valid.
    assert_eq!(
        check(&standard(), &standard_profile, last_will("clients/gone", QoS::AtLeastOnce, true)),
        Ok(Some(will()))
    );
    // Malformed topics close the connection, whoever sends them.
    for topic in ["", "a/+", "a/#", "a\0b"] {
        let refused =
            check(&standard(), &standard_profile, last_will(topic, QoS::AtMostOnce, false));
        assert!(matches!(refused, Err(WillRefused::Malformed(_))), "{topic:?}: {refused:?}");
    }
    let long = format!("/{PK}/{DN}/user/{}", "x".repeat(128));
    assert!(matches!(
        check(&device(), &Profile::DEVICE, last_will(&long, QoS::AtMostOnce, false)),
        Err(WillRefused::Malformed(_))
    ));
    assert!(
        matches!(
            check(
                &device(),
                &Profile::DEVICE,
                last_will(&device_topic("user/x"), QoS::ExactlyOnce, false)
            ),
            Err(WillRefused::Malformed(_))
        ),
        "QoS 2 from a device"
    );

    // A device may not leave a will on another device's topic; on its own it is accepted and
    // (no wills for devices, PROTOCOL §3) kept nowhere.
    assert_eq!(
        check(
            &device(),
            &Profile::DEVICE,
            last_will(&format!("/{PK}/other/user/x"), QoS::AtMostOnce, false)
        ),
        Err(WillRefused::NotPermitted)
    );
    assert_eq!(
        check(
            &device(),
            &Profile::DEVICE,
            last_will(&device_topic("user/x"), QoS::AtLeastOnce, true)
        ),
        Ok(None)
    );

    // An application client of an account that owns nothing may not touch a device downlink.
    let application = Principal::Application { account: "acme".parse().unwrap() };
    let downlink = format!("/sys/{PK}/{DN}/thing/service/property/set");
    assert_eq!(
        check(&application, &standard_profile, last_will(&downlink, QoS::AtLeastOnce, true)),
        Err(WillRefused::NotPermitted)
    );

    // A profile without retained messages clears the flag, as it does for a PUBLISH.
    let no_retain = Profile { retain: false, ..standard_profile };
    let kept = check(&standard(), &no_retain, last_will("clients/gone", QoS::AtLeastOnce, true));
    assert_eq!(kept, Ok(Some(Message { retain: false, ..will() })));
}

#[test]
fn second_connect_is_a_protocol_violation() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = standard_session(now);
    assert_eq!(
        session.handle_v4(now, connect_packet(), &view),
        Err(Close::ProtocolViolation("second CONNECT"))
    );
}

#[test]
fn server_packets_from_the_client_are_protocol_violations() {
    let now = Instant::now();
    let view = RegistryView::default();
    for packet in [
        Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
        Packet::SubAck(SubAck::new(1, vec![])),
        Packet::UnsubAck(UnsubAck::new(1)),
        Packet::PingResp,
    ] {
        let mut session = standard_session(now);
        assert!(
            matches!(
                session.handle_v4(now, packet.clone(), &view),
                Err(Close::ProtocolViolation(_))
            ),
            "{packet:?}"
        );
    }
}

// ---- persistent sessions ----

#[test]
fn parked_session_resumes_with_its_state() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = standard_session(now); // inflight 2, queued 3

    session.handle_v4(now, subscribe(1, &[("a/#", QoS::ExactlyOnce)]), &view).unwrap();
    // An inbound QoS 2 message awaiting PUBREL when the connection drops.
    session.handle_v4(now, publish("in", QoS::ExactlyOnce, 7, "in"), &view).unwrap();
    let _ = transmitted(&mut session);
    let _ = events(&mut session);

    session.handle_delivery(delivery("a/x", 2, "q2"));
    session.handle_delivery(delivery("a/x", 1, "q1"));
    session.handle_delivery(delivery("a/x", 1, "pending1"));
    session.handle_delivery(delivery("a/x", 1, "pending2"));
    assert_eq!(transmitted(&mut session).len(), 2);
    // The client received the QoS 2 one: the server released it, PUBCOMP never arrived.
    session.handle_v4(now, Packet::PubRec(PubRec::new(1)), &view).unwrap();
    assert_eq!(transmitted(&mut session), vec![Packet::PubRel(PubRel::new(1))]);

    let parked = session.park();
    assert_eq!(parked.subscriptions.get("a/#"), Some(&2));
    assert_eq!(parked.queued(), 4);

    let later = now + Duration::from_secs(600);
    let mut resumed =
        Session::new(later, standard(), standard_profile(), limits(), 60, None, Some(parked));
    // Subscriptions are kept (the router still holds them; nothing to re-announce).
    assert_eq!(resumed.filters().collect::<Vec<_>>(), ["a/#"]);
    assert!(events(&mut resumed).is_empty());
    // The released id gets its PUBREL again; the unacknowledged QoS 1 is resent with DUP.
    let resent = transmitted(&mut resumed);
    assert_eq!(resent.len(), 2, "{resent:?}");
    assert_eq!(resent[0], Packet::PubRel(PubRel::new(1)));
    assert_eq!(publishes(&resent[1..]), [(2, QoS::AtLeastOnce, true, "q1".into())]);

    // Completing them lets the pending queue through, as fresh sends with new ids.
    resumed.handle_v4(later, Packet::PubComp(PubComp::new(1)), &view).unwrap();
    resumed.handle_v4(later, Packet::PubAck(PubAck::new(2)), &view).unwrap();
    assert_eq!(
        publishes(&transmitted(&mut resumed)),
        [
            (3, QoS::AtLeastOnce, false, "pending1".into()),
            (4, QoS::AtLeastOnce, false, "pending2".into())
        ]
    );

    // The inbound QoS 2 id survived: its duplicate is acknowledged, not routed again.
    resumed.handle_v4(later, publish("in", QoS::ExactlyOnce, 7, "in"), &view).unwrap();
    assert_eq!(transmitted(&mut resumed), vec![Packet::PubRec(PubRec::new(7))]);
    assert!(events(&mut resumed).is_empty());
}

#[test]
fn a_resumed_session_resends_in_the_order_first_sent_across_a_packet_id_wrap() {
    let now = Instant::now();
    let limits = Limits { inflight: 4, ..limits() };
    let parked = Parked { next_pkid: u16::MAX - 2, ..Parked::default() };
    let mut session =
        Session::new(now, standard(), standard_profile(), limits, 60, None, Some(parked));
    for payload in ["first", "second", "third", "fourth"] {
        session.handle_delivery(delivery("a", 1, payload));
    }
    let ids: Vec<u16> = publishes(&transmitted(&mut session)).iter().map(|p| p.0).collect();
    assert_eq!(ids, [u16::MAX - 1, u16::MAX, 1, 2]);

    let mut resumed =
        Session::new(now, standard(), standard_profile(), limits, 60, None, Some(session.park()));
    let resent: Vec<String> =
        publishes(&transmitted(&mut resumed)).into_iter().map(|p| p.3).collect();
    assert_eq!(resent, ["first", "second", "third", "fourth"]);
}

#[test]
fn parked_qos2_publish_is_resent_with_dup() {
    let now = Instant::now();
    let mut session = standard_session(now);
    session.handle_delivery(delivery("a", 2, "exactly"));
    let _ = transmitted(&mut session);
    let mut resumed =
        Session::new(now, standard(), standard_profile(), limits(), 60, None, Some(session.park()));
    assert_eq!(
        publishes(&transmitted(&mut resumed)),
        [(1, QoS::ExactlyOnce, true, "exactly".into())]
    );
}

#[test]
fn parked_enqueue_drops_qos0_and_respects_the_queue_bound() {
    let limits = limits(); // queued 3
    let mut parked = Parked::default();
    assert!(!parked.enqueue(delivery("a", 0, "lost"), &limits));
    assert_eq!(parked.dropped, 1);
    for i in 0..3 {
        assert!(parked.enqueue(delivery("a", 1, &format!("m{i}")), &limits));
    }
    assert!(!parked.enqueue(delivery("a", 2, "m3"), &limits));
    assert_eq!(parked.dropped, 2);
    assert_eq!(parked.queued(), 3);

    // On return they go out through the window, oldest first; the rest wait.
    let now = Instant::now();
    let mut session =
        Session::new(now, standard(), standard_profile(), limits, 60, None, Some(parked));
    assert_eq!(
        publishes(&transmitted(&mut session)),
        [(1, QoS::AtLeastOnce, false, "m0".into()), (2, QoS::AtLeastOnce, false, "m1".into())]
    );
    assert_eq!(session.dropped(), 2, "offline drops stay counted");
    let view = RegistryView::default();
    session.handle_v4(now, Packet::PubAck(PubAck::new(1)), &view).unwrap();
    assert_eq!(publishes(&transmitted(&mut session)), [(3, QoS::AtLeastOnce, false, "m2".into())]);
}

#[test]
fn resumed_session_continues_packet_ids() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = standard_session(now);
    session.handle_delivery(delivery("a", 1, "m0"));
    session.handle_v4(now, Packet::PubAck(PubAck::new(1)), &view).unwrap();
    let _ = transmitted(&mut session);
    let mut resumed =
        Session::new(now, standard(), standard_profile(), limits(), 60, None, Some(session.park()));
    resumed.handle_delivery(delivery("a", 1, "m1"));
    assert_eq!(publishes(&transmitted(&mut resumed))[0].0, 2);
}

/// PROTOCOL §2: kept subscriptions come back without a SUBSCRIBE, each checked as a SUBSCRIBE
/// would be, and then count like any other (UNSUBSCRIBE, the set a device's record holds).
#[test]
fn restored_filters_pass_the_subscribe_checks() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = device_session(now);
    let deep = format!("/{PK}/{DN}/user/a/b/c/d/e/f/g");
    let kept: BTreeMap<String, u8> = [
        (device_topic("user/get"), 2),
        (format!("/{PK}/other/user/get"), 1),
        (deep, 1),
        ("bad/#/filter".to_owned(), 0),
    ]
    .into_iter()
    .collect();
    let added = session.restore(kept.iter(), &view);
    assert_eq!(added, vec![(device_topic("user/get"), 1)], "own, shallow, valid, QoS capped");
    assert_eq!(session.subscription_set(), added.into_iter().collect());
    // Already held: restoring again adds nothing.
    assert!(session.restore(kept.iter(), &view).is_empty());
    assert!(transmitted(&mut session).is_empty(), "no SUBACK for what was never sent");

    session.handle_v4(now, unsubscribe(7, &[&device_topic("user/get")]), &view).unwrap();
    assert!(session.subscription_set().is_empty());
}

#[test]
fn restoring_stops_at_the_subscription_limit() {
    let now = Instant::now();
    let view = RegistryView::default();
    let mut session = device_session(now);
    let kept: BTreeMap<String, u8> =
        (0..150).map(|n| (device_topic(&format!("user/t{n}")), 1)).collect();
    assert_eq!(session.restore(kept.iter(), &view).len(), Profile::DEVICE.max_subscriptions);
}

/// A restore cut short by the session-state budget must not shrink the device's kept set: the
/// set it records after a later SUBSCRIBE still holds what was deferred (tried again at the
/// next connect); what it unsubscribes is given up, deferred or not.
#[test]
fn filters_a_full_budget_defers_stay_in_the_kept_set() {
    let now = Instant::now();
    let view = RegistryView::default();
    let (get, set, post) =
        (device_topic("user/get"), device_topic("user/set"), device_topic("user/post"));
    // Room for exactly one restored subscription.
    let budget = Arc::new(
        crate::budget::QueueBudget::new(usize::MAX, usize::MAX)
            .with_state_cap(crate::budget::subscription_cost(&post)),
    );
    let mut session = device_session(now).with_budget(budget.clone());
    let kept: BTreeMap<String, u8> = [(get.clone(), 1), (set.clone(), 0)].into_iter().collect();
    assert_eq!(session.restore(kept.iter(), &view), vec![(get.clone(), 1)]);
    assert_eq!(session.subscription_set(), kept, "the deferred filter is still the device's");

    // Room again (another session let go): the device subscribes something new.
    budget.release_state(crate::budget::subscription_cost(&get));
    session.handle_v4(now, subscribe(1, &[(&post, QoS::AtMostOnce)]), &view).unwrap();
    let mut expected = kept.clone();
    expected.insert(post.clone(), 0);
    assert_eq!(session.subscription_set(), expected);

    // Unsubscribing the deferred filter gives it up, and says so to the driver.
    let _ = events(&mut session);
    session.handle_v4(now, unsubscribe(2, &[&set]), &view).unwrap();
    assert!(events(&mut session).iter().any(|event| matches!(event, Event::Unsubscribe(_))));
    expected.remove(&set);
    assert_eq!(session.subscription_set(), expected);
}

// ---- MQTT 5.0 (PROTOCOL §11), in virtual time ----

mod v5 {
    use super::*;
    use crate::packet::{
        self as p, DisconnectProperties, DisconnectReasonCode, Packet, PubAckReason,
        RetainForwardRule, SubscribeProperties, SubscribeReasonCode,
    };

    fn settings() -> V5Settings {
        V5Settings {
            client_receive_maximum: 1,
            client_maximum_packet: None,
            client_topic_alias_maximum: 0,
            receive_maximum: 2,
            topic_alias_maximum: 4,
            session_expiry: Some(Duration::from_secs(60)),
            asked_expiry: true,
        }
    }

    fn session(now: Instant, settings: V5Settings) -> Session {
        standard_session(now).with_connection(7).with_v5(settings)
    }

    fn sent(session: &mut Session) -> Vec<Packet> {
        std::iter::from_fn(|| session.poll_transmit()).collect()
    }

    fn publish(
        topic: &str,
        qos: QoS,
        pkid: u16,
        properties: Option<p::PublishProperties>,
    ) -> Packet {
        let mut publish = p::Publish::new(topic, qos, b"x".to_vec());
        publish.pkid = pkid;
        publish.properties = properties;
        Packet::Publish(publish)
    }

    fn subscribe(filter: &str, id: Option<usize>, set: impl Fn(&mut p::SubscribeFilter)) -> Packet {
        let mut entry = p::SubscribeFilter::new(filter.into(), QoS::AtLeastOnce);
        set(&mut entry);
        let properties = id.map(|id| SubscribeProperties { id: Some(id), user_properties: vec![] });
        Packet::Subscribe(p::Subscribe { pkid: 1, filters: vec![entry], properties })
    }

    fn with_expiry(secs: u32) -> Option<Arc<Properties>> {
        Some(Arc::new(Properties {
            expiry: Some((Instant::now() + Duration::from_secs(u64::from(secs)), secs)),
            ..Properties::default()
        }))
    }

    /// The broker never has more unacknowledged QoS 1 deliveries out than the client's Receive
    /// Maximum (here 1, the broker's window 2).
    #[test]
    fn client_receive_maximum_bounds_the_window() {
        let now = Instant::now();
        let view = RegistryView::default();
        let mut session = session(now, settings());
        assert!(session.handle_delivery(delivery("t", 1, "a")));
        assert!(session.handle_delivery(delivery("t", 1, "b")));
        assert_eq!(sent(&mut session).len(), 1, "one out until it is acknowledged");
        session.handle_packet(now, Packet::PubAck(p::PubAck::new(1)), &view).unwrap();
        assert_eq!(sent(&mut session).len(), 1);
    }

    /// More QoS 2 publications unreleased than the broker's Receive Maximum: DISCONNECT 0x93.
    #[test]
    fn broker_receive_maximum_is_enforced() {
        let now = Instant::now();
        let view = RegistryView::default();
        let mut session = session(now, settings());
        for pkid in 1..=2 {
            session.handle_packet(now, publish("t", QoS::ExactlyOnce, pkid, None), &view).unwrap();
        }
        let third = session.handle_packet(now, publish("t", QoS::ExactlyOnce, 3, None), &view);
        assert_eq!(third, Err(Close::Refused(0x93, "receive maximum exceeded")));
        assert_eq!(third.unwrap_err().reason(), Some(DisconnectReasonCode::ReceiveMaximumExceeded));
    }

    /// Forwarded with the time held taken off; once expired, never delivered.
    #[test]
    fn message_expiry_counts_down_and_drops() {
        let now = Instant::now();
        let view = RegistryView::default();
        let mut session = session(now, V5Settings { client_receive_maximum: 10, ..settings() });
        let message = Message { properties: with_expiry(10), ..message("t", 1, "soon") };
        let later = now + Duration::from_secs(4);
        session.handle_packet(later, Packet::PingReq, &view).unwrap();
        sent(&mut session);
        session.handle_delivery(Delivery {
            message: Arc::new(message.clone()),
            qos: 1,
            retain: false,
        });
        let Some(Packet::Publish(publish)) = sent(&mut session).pop() else { panic!("delivered") };
        let left = publish.properties.and_then(|p| p.message_expiry_interval).unwrap();
        assert!((6..=7).contains(&left), "{left}");
        // Past its expiry (virtual time moved on): dropped, not sent.
        session.handle_packet(now + Duration::from_secs(11), Packet::PingReq, &view).unwrap();
        sent(&mut session);
        session.handle_delivery(Delivery { message: Arc::new(message), qos: 1, retain: false });
        assert!(sent(&mut session).is_empty(), "expired messages are never delivered");
    }

    /// A delivery larger than the client's Maximum Packet Size is dropped for it, not sent.
    #[test]
    fn client_maximum_packet_size() {
        let now = Instant::now();
        let settings = V5Settings { client_maximum_packet: Some(20), ..settings() };
        let mut session = session(now, settings);
        session.handle_delivery(delivery("t", 0, "small"));
        session.handle_delivery(delivery("t", 0, &"x".repeat(40)));
        assert_eq!(sent(&mut session).len(), 1);
        assert!(events(&mut session).contains(&Event::Limited("client_maximum_packet")));
    }

    /// No Local: the client's own publication is not sent back to it; Retain As Published keeps
    /// a live message's retain flag; every matching subscription identifier comes with it.
    #[test]
    fn subscription_options_and_identifiers() {
        let now = Instant::now();
        let view = RegistryView::default();
        let mut session = session(now, V5Settings { client_receive_maximum: 10, ..settings() });
        session.handle_packet(now, subscribe("a/#", Some(1), |f| f.nolocal = true), &view).unwrap();
        session
            .handle_packet(now, subscribe("a/+", Some(2), |f| f.preserve_retain = true), &view)
            .unwrap();
        sent(&mut session);
        let own = Message { sender: 7, retain: true, ..message("a/b", 1, "own") };
        session.handle_delivery(Delivery { message: Arc::new(own), qos: 1, retain: false });
        let Some(Packet::Publish(publish)) = sent(&mut session).pop() else {
            panic!("a/+ has no No Local: delivered")
        };
        assert!(publish.retain, "retain as published");
        assert_eq!(publish.properties.unwrap().subscription_identifiers, vec![1, 2]);

        let mut alone = super::standard_session(now).with_connection(7).with_v5(settings());
        alone.handle_packet(now, subscribe("a/#", None, |f| f.nolocal = true), &view).unwrap();
        sent(&mut alone);
        let own = Message { sender: 7, ..message("a/b", 1, "own") };
        alone.handle_delivery(Delivery { message: Arc::new(own), qos: 1, retain: false });
        assert!(sent(&mut alone).is_empty(), "no local");
    }

    /// Retain handling 2 sends no retained messages; 1 only for a new subscription.
    #[test]
    fn retain_handling() {
        let now = Instant::now();
        let view = RegistryView::default();
        let mut session = session(now, settings());
        let store = crate::retained::Retained::new(10, 1024);
        let cursor = |filter: &str| store.cursor(filter.into(), 1);
        session
            .handle_packet(
                now,
                subscribe("r/1", None, |f| f.retain_forward_rule = RetainForwardRule::Never),
                &view,
            )
            .unwrap();
        session.owe_retained([cursor("r/1")]);
        assert!(session.retained_due().is_none());
        let once =
            |f: &mut p::SubscribeFilter| f.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
        session.handle_packet(now, subscribe("r/2", None, once), &view).unwrap();
        session.owe_retained([cursor("r/2")]);
        assert!(session.retained_due().is_some(), "new subscription: sent");
        session.retained_done();
        session.handle_packet(now, subscribe("r/2", None, once), &view).unwrap();
        session.owe_retained([cursor("r/2")]);
        assert!(session.retained_due().is_none(), "existing subscription: not sent");
    }

    /// A forbidden publish is acknowledged 0x87; a device's shared subscription is refused 0x9E.
    #[test]
    fn reason_codes() {
        let now = Instant::now();
        let view = RegistryView::default();
        let mut device = device_session(now).with_v5(settings());
        device
            .handle_packet(now, publish("/other/x/user/y", QoS::AtLeastOnce, 1, None), &view)
            .unwrap();
        let Some(Packet::PubAck(ack)) = sent(&mut device).pop() else { panic!("PUBACK") };
        assert_eq!(ack.reason, PubAckReason::NotAuthorized);
        let shared = format!("$share/g/{}", device_topic("user/get"));
        device.handle_packet(now, subscribe(&shared, None, |_| {}), &view).unwrap();
        let Some(Packet::SubAck(ack)) = sent(&mut device).pop() else { panic!("SUBACK") };
        assert_eq!(ack.return_codes, vec![SubscribeReasonCode::SharedSubscriptionsNotSupported]);
        // For a standard client a shared subscription is granted; No Local on one, or one
        // without a filter, is a protocol error (MQTT-3.8.3-4, §4.8.2).
        let mut session = session(now, settings());
        session.handle_packet(now, subscribe("$share/g/t/#", None, |_| {}), &view).unwrap();
        let Some(Packet::SubAck(ack)) = sent(&mut session).pop() else { panic!("SUBACK") };
        assert_eq!(ack.return_codes, vec![SubscribeReasonCode::QoS1]);
        let no_local =
            session.handle_packet(now, subscribe("$share/g/t", None, |f| f.nolocal = true), &view);
        assert!(matches!(no_local, Err(Close::ProtocolViolation(_))));
        let mut session = super::standard_session(now).with_v5(settings());
        let empty = session.handle_packet(now, subscribe("$share/g", None, |_| {}), &view);
        assert!(matches!(empty, Err(Close::ProtocolViolation(_))));
    }

    /// DISCONNECT may change the session expiry (and set 0), not set one the CONNECT did not
    /// ask for; 0x04 keeps the will.
    #[test]
    fn disconnect_changes_the_session_expiry() {
        let now = Instant::now();
        let view = RegistryView::default();
        let disconnect = |reason, secs| {
            Packet::Disconnect(p::Disconnect {
                reason_code: reason,
                properties: Some(DisconnectProperties {
                    session_expiry_interval: secs,
                    reason_string: None,
                    user_properties: vec![],
                    server_reference: None,
                }),
            })
        };
        let mut session = session(now, settings());
        let closed = session.handle_packet(
            now,
            disconnect(DisconnectReasonCode::NormalDisconnection, Some(0)),
            &view,
        );
        assert_eq!(closed, Err(Close::Disconnect));
        let parked = session.park_at(now);
        assert_eq!(parked.expires, Some(now), "expiry 0: forgotten at once");

        let unasked = V5Settings { session_expiry: None, asked_expiry: false, ..settings() };
        let mut session = super::standard_session(now).with_v5(unasked);
        let closed = session.handle_packet(
            now,
            disconnect(DisconnectReasonCode::NormalDisconnection, Some(30)),
            &view,
        );
        assert!(matches!(closed, Err(Close::ProtocolViolation(_))));

        let mut session = session_with_will(now);
        let closed = session.handle_packet(
            now,
            disconnect(DisconnectReasonCode::DisconnectWithWillMessage, None),
            &view,
        );
        assert_eq!(closed, Err(Close::DisconnectWithWill));
        assert!(session.take_will().is_some());
    }

    fn session_with_will(now: Instant) -> Session {
        let will = message("will/t", 0, "bye");
        Session::new(now, standard(), standard_profile(), limits(), 60, Some(will), None)
            .with_v5(settings())
    }
}
