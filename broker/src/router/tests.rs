//! The router with real channels as connection handles; no sockets, no connection tasks.

use std::collections::VecDeque;

use bytes::Bytes;
use futures::FutureExt;

use super::*;

const LIMITS: Limits =
    Limits { inflight: 4, queued: 3, max_filters_per_subscribe: 8, max_topic_levels: 8 };

/// The far side of a [`Link`]: what a connection task would read.
struct Client {
    link: Arc<Link>,
}

impl Client {
    fn deliveries(&mut self) -> Vec<Delivery> {
        let mut inbox = VecDeque::new();
        self.link.take(&mut inbox, usize::MAX);
        inbox.into()
    }

    fn kick(&self) -> Option<Kick> {
        self.link.kicked()
    }

    /// What a connection task does as it ends: a waiting takeover may proceed.
    fn finish(&self) {
        self.link.finish();
    }
}

/// A link whose inbox holds `mailbox` deliveries of QoS 0 and as many of QoS 1/2.
fn handle(connection: u64, mailbox: usize) -> (Arc<Link>, Client) {
    let link = Arc::new(Link::new(connection, mailbox, mailbox));
    (link.clone(), Client { link })
}

fn id(name: &str) -> Arc<str> {
    name.into()
}

fn message(topic: &str, qos: u8, payload: &str, retain: bool) -> Message {
    Message {
        topic: topic.into(),
        payload: Bytes::from(payload.to_owned()),
        qos,
        retain,
        origin: Default::default(),
        properties: None,
        sender: 0,
    }
}

/// (topic, payload, qos, retain) of each delivery.
fn summary(deliveries: &[Delivery]) -> Vec<(String, String, u8, bool)> {
    deliveries
        .iter()
        .map(|d| {
            let payload = String::from_utf8(d.message.payload.to_vec()).unwrap();
            (d.message.topic.to_string(), payload, d.qos, d.retain)
        })
        .collect()
}

fn filters(filters: &[(&str, u8)]) -> Vec<(String, u8)> {
    filters.iter().map(|(filter, qos)| ((*filter).to_owned(), *qos)).collect()
}

#[tokio::test]
async fn publish_reaches_matching_subscribers_at_the_lower_qos() {
    let router = Router::new(LIMITS, 10);
    let (a, b, c) = (id("a"), id("b"), id("c"));
    let (handle_a, mut client_a) = handle(1, 16);
    let (handle_b, mut client_b) = handle(2, 16);
    let (handle_c, mut client_c) = handle(3, 16);
    assert!(router.connect(&a, true, handle_a).await.is_none());
    assert!(router.connect(&b, true, handle_b).await.is_none());
    assert!(router.connect(&c, true, handle_c).await.is_none());

    assert!(router.subscribe(&a, 1, &filters(&[("sensors/+/temp", 2)])).is_empty());
    assert!(router.subscribe(&b, 2, &filters(&[("sensors/#", 0)])).is_empty());
    router.subscribe(&c, 3, &filters(&[("other/#", 2)]));
    assert_eq!(router.subscription_count(), 3);

    let routed = router.publish(message("sensors/k1/temp", 1, "21.5", false));
    assert_eq!(routed, Routed { delivered: 2, dropped: 0 });
    assert_eq!(
        summary(&client_a.deliveries()),
        [("sensors/k1/temp".into(), "21.5".into(), 1, false)]
    );
    assert_eq!(
        summary(&client_b.deliveries()),
        [("sensors/k1/temp".into(), "21.5".into(), 0, false)]
    );
    assert!(client_c.deliveries().is_empty());

    // QoS 2 published, QoS 2 granted: QoS 2; QoS 0 published stays QoS 0.
    router.publish(message("sensors/k1/temp", 2, "x", false));
    router.publish(message("sensors/k1/temp", 0, "y", false));
    let qos: Vec<u8> = client_a.deliveries().iter().map(|d| d.qos).collect();
    assert_eq!(qos, [2, 0]);

    // Nobody subscribed.
    assert_eq!(router.publish(message("nowhere", 1, "z", false)), Routed::default());
}

#[tokio::test]
async fn overlapping_filters_deliver_once_at_the_highest_grant() {
    let router = Router::new(LIMITS, 10);
    let a = id("a");
    let (handle_a, mut client) = handle(1, 16);
    router.connect(&a, true, handle_a).await;
    router.subscribe(&a, 1, &filters(&[("t/#", 0), ("t/+", 1), ("t/x", 0)]));
    let routed = router.publish(message("t/x", 2, "once", false));
    assert_eq!(routed.delivered, 1);
    assert_eq!(summary(&client.deliveries()), [("t/x".into(), "once".into(), 1, false)]);
}

#[tokio::test]
async fn unsubscribe_stops_deliveries() {
    let router = Router::new(LIMITS, 10);
    let a = id("a");
    let (handle_a, mut client) = handle(1, 16);
    router.connect(&a, true, handle_a).await;
    router.subscribe(&a, 1, &filters(&[("t/#", 1), ("u", 1)]));
    router.unsubscribe(&a, 1, &["t/#".to_owned()]);
    assert_eq!(router.subscription_count(), 1);
    router.publish(message("t/x", 1, "gone", false));
    router.publish(message("u", 1, "kept", false));
    assert_eq!(summary(&client.deliveries()), [("u".into(), "kept".into(), 1, false)]);
}

#[tokio::test]
async fn retained_messages_are_stored_replaced_deleted_and_sent_on_subscribe() {
    let router = Router::new(LIMITS, 10);
    let (a, b) = (id("a"), id("b"));
    let (handle_a, mut client_a) = handle(1, 16);
    router.connect(&a, true, handle_a).await;
    router.subscribe(&a, 1, &filters(&[("status/#", 1)]));

    // Stored, and delivered to current subscribers as a normal message (retain flag clear).
    router.publish(message("status/lamp", 1, "on", true));
    router.publish(message("status/fan", 0, "slow", true));
    router.publish(message("status/door", 1, "open", false));
    assert_eq!(router.retained_count(), 2);
    let live = client_a.deliveries();
    assert_eq!(live.len(), 3);
    assert!(live.iter().all(|d| !d.retain));

    // A new subscription gets the retained messages, flagged, at the lower QoS.
    let (handle_b, _client_b) = handle(2, 16);
    router.connect(&b, true, handle_b).await;
    let mut sent = summary(&router.subscribe(&b, 2, &filters(&[("status/+", 2)])));
    sent.sort();
    assert_eq!(
        sent,
        [
            ("status/fan".into(), "slow".into(), 0, true),
            ("status/lamp".into(), "on".into(), 1, true)
        ]
    );
    assert_eq!(summary(&router.subscribe(&b, 2, &filters(&[("status/lamp", 0)]))).len(), 1);
    assert_eq!(summary(&router.subscribe(&b, 2, &filters(&[("status/lamp", 0)])))[0].2, 0);

    // Replaced.
    router.publish(message("status/lamp", 2, "off", true));
    assert_eq!(router.retained_count(), 2);
    assert_eq!(
        summary(&router.subscribe(&b, 2, &filters(&[("status/lamp", 2)]))),
        [("status/lamp".into(), "off".into(), 2, true)]
    );

    // Deleted by an empty retained payload, which subscribers still receive.
    let _ = client_a.deliveries();
    router.publish(message("status/lamp", 1, "", true));
    assert_eq!(router.retained_count(), 1);
    assert!(router.subscribe(&b, 2, &filters(&[("status/lamp", 2)])).is_empty());
    assert_eq!(summary(&client_a.deliveries()), [("status/lamp".into(), "".into(), 1, false)]);

    // Deleting what is not there is harmless.
    router.publish(message("status/none", 0, "", true));
    assert_eq!(router.retained_count(), 1);
}

#[tokio::test]
async fn retained_system_topics_are_not_sent_to_leading_wildcards() {
    let router = Router::new(LIMITS, 10);
    let a = id("a");
    let (handle_a, _client) = handle(1, 16);
    router.connect(&a, true, handle_a).await;
    router.publish(message("$SYS/uptime", 0, "1", true));
    assert!(router.subscribe(&a, 1, &filters(&[("#", 0)])).is_empty());
    assert_eq!(router.subscribe(&a, 1, &filters(&[("$SYS/#", 0)])).len(), 1);
}

#[tokio::test]
async fn clean_session_disconnect_removes_its_subscriptions() {
    let router = Router::new(LIMITS, 10);
    let a = id("a");
    let (handle_a, _client) = handle(7, 16);
    router.connect(&a, true, handle_a).await;
    let subscribed = filters(&[("t/#", 1), ("u", 0)]);
    router.subscribe(&a, 7, &subscribed);
    assert!(router.is_online("a"));
    assert_eq!(router.subscription_count(), 2);

    let names: Vec<String> = subscribed.into_iter().map(|(filter, _)| filter).collect();
    router.disconnect(&a, 7, Parked::default(), &names);
    assert!(!router.is_online("a"));
    assert!(router.online().is_empty());
    assert_eq!(router.subscription_count(), 0);
    assert_eq!(router.publish(message("t/x", 1, "m", false)), Routed::default());

    // Nothing is parked: a later persistent connect starts fresh.
    let (handle_again, _client) = handle(8, 16);
    assert!(router.connect(&a, false, handle_again).await.is_none());
}

#[tokio::test]
async fn persistent_session_queues_qos1_while_offline_and_resumes() {
    let router = Router::new(LIMITS, 10);
    let a = id("a");
    let (handle_a, _client) = handle(1, 16);
    assert!(router.connect(&a, false, handle_a).await.is_none());
    router.subscribe(&a, 1, &filters(&[("t/#", 1)]));
    let mut parked = Parked::default();
    parked.subscriptions.insert("t/#".into(), 1);
    router.disconnect(&a, 1, parked, &["t/#".into()]);
    assert!(!router.is_online("a"));
    assert_eq!(router.subscription_count(), 1, "kept while parked");

    // QoS 1 is kept for the offline client, QoS 0 is not; the queue is bounded (3).
    assert_eq!(
        router.publish(message("t/1", 1, "one", false)),
        Routed { delivered: 1, dropped: 0 }
    );
    assert_eq!(
        router.publish(message("t/0", 0, "zero", false)),
        Routed { delivered: 0, dropped: 1 }
    );
    // QoS 2 published is downgraded to the QoS 1 grant.
    router.publish(message("t/2", 2, "two", false));
    router.publish(message("t/3", 1, "three", false));
    assert_eq!(
        router.publish(message("t/4", 1, "four", false)),
        Routed { delivered: 0, dropped: 1 }
    );

    let (handle_back, mut client) = handle(2, 16);
    let parked = router.connect(&a, false, handle_back).await.expect("session present");
    assert!(router.is_online("a"));
    assert_eq!(parked.subscriptions.get("t/#"), Some(&1));
    assert_eq!(parked.queued(), 3);
    assert_eq!(parked.dropped, 2);

    // The resumed session sends what waited, in order.
    let mut session = crate::session::Session::new(
        std::time::Instant::now(),
        crate::acl::Principal::Standard { username: None },
        crate::acl::Profile::standard(1024, 10),
        LIMITS,
        60,
        None,
        Some(parked),
    );
    let payloads: Vec<Bytes> = std::iter::from_fn(|| session.poll_transmit())
        .map(|packet| match packet {
            crate::packet::Packet::Publish(publish) => publish.payload,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(payloads, ["one", "two", "three"]);

    // Online again: deliveries go to the mailbox, not the parked queue.
    router.publish(message("t/5", 0, "live", false));
    assert_eq!(summary(&client.deliveries()), [("t/5".into(), "live".into(), 0, false)]);
}

#[tokio::test]
async fn clean_connect_discards_a_parked_session_and_its_subscriptions() {
    let router = Router::new(LIMITS, 10);
    let (a, watcher) = (id("a"), id("watcher"));
    let (handle_w, mut client_w) = handle(100, 16);
    router.connect(&watcher, true, handle_w).await;
    router.subscribe(&watcher, 100, &filters(&[("t/#", 1)]));

    let (handle_a, _client) = handle(1, 16);
    router.connect(&a, false, handle_a).await;
    router.subscribe(&a, 1, &filters(&[("t/#", 1), ("u/+", 1)]));
    let mut parked = Parked::default();
    parked.subscriptions.insert("t/#".into(), 1);
    parked.subscriptions.insert("u/+".into(), 1);
    router.disconnect(&a, 1, parked, &[]);
    router.publish(message("t/x", 1, "queued", false));
    assert_eq!(router.subscription_count(), 3);

    let (handle_clean, mut client) = handle(2, 16);
    assert!(router.connect(&a, true, handle_clean).await.is_none());
    assert_eq!(router.subscription_count(), 1, "only the watcher's subscription is left");
    router.publish(message("t/y", 1, "after", false));
    router.publish(message("u/y", 1, "after", false));
    assert!(client.deliveries().is_empty());
    assert_eq!(client_w.deliveries().len(), 2, "other sessions are untouched");

    // And the clean session leaves nothing behind when it ends.
    router.disconnect(&a, 2, Parked::default(), &[]);
    let (handle_later, _client) = handle(3, 16);
    assert!(router.connect(&a, false, handle_later).await.is_none());
}

#[tokio::test]
async fn persistent_session_going_clean_then_persistent_does_not_resurrect() {
    // A persistent session resumed with clean=false keeps its subscriptions online.
    let router = Router::new(LIMITS, 10);
    let a = id("a");
    let (first, _c1) = handle(1, 16);
    router.connect(&a, false, first).await;
    router.subscribe(&a, 1, &filters(&[("t", 1)]));
    let mut parked = Parked::default();
    parked.subscriptions.insert("t".into(), 1);
    router.disconnect(&a, 1, parked, &["t".into()]);

    let (second, mut c2) = handle(2, 16);
    let resumed = router.connect(&a, false, second).await.expect("session present");
    assert_eq!(resumed.subscriptions.len(), 1);
    router.publish(message("t", 1, "m", false));
    assert_eq!(c2.deliveries().len(), 1);
}

#[tokio::test]
async fn takeover_kicks_the_old_connection_and_waits_for_it() {
    let router = Arc::new(Router::new(LIMITS, 10));
    let a = id("a");
    let (first, mut old) = handle(1, 16);
    assert!(router.connect(&a, false, first).await.is_none());
    router.subscribe(&a, 1, &filters(&[("t/#", 1)]));

    let (second, mut new) = handle(2, 16);
    let takeover = tokio::spawn({
        let router = router.clone();
        let a = a.clone();
        async move { router.connect(&a, false, second).await }
    });

    // The old connection is told to go.
    old.link.woken().await;
    assert_eq!(old.kick(), Some(Kick::TakenOver));
    tokio::task::yield_now().await;
    assert!(!takeover.is_finished(), "waits for the old connection to finish");
    assert!(router.is_online("a"));

    // The old task parks its state and finishes; the new connect resumes it.
    let mut parked = Parked::default();
    parked.subscriptions.insert("t/#".into(), 1);
    router.disconnect(&a, 1, parked, &["t/#".into()]);
    old.link.close();
    old.finish();
    let resumed = takeover.await.unwrap().expect("session present");
    assert_eq!(resumed.subscriptions.get("t/#"), Some(&1));
    assert!(router.is_online("a"));
    assert_eq!(router.online(), std::slice::from_ref(&a));

    // The new connection is the one reached now.
    router.publish(message("t/x", 0, "to-new", false));
    assert_eq!(new.deliveries().len(), 1);
    assert!(old.deliveries().is_empty());
    assert_eq!(new.kick(), None);
}

#[tokio::test]
async fn takeover_of_a_clean_session_starts_fresh() {
    let router = Arc::new(Router::new(LIMITS, 10));
    let a = id("a");
    let (first, old) = handle(1, 16);
    router.connect(&a, true, first).await;
    router.subscribe(&a, 1, &filters(&[("t/#", 1)]));

    let (second, _new) = handle(2, 16);
    let takeover = tokio::spawn({
        let router = router.clone();
        let a = a.clone();
        async move { router.connect(&a, false, second).await }
    });
    old.link.woken().await;
    assert_eq!(old.kick(), Some(Kick::TakenOver));
    router.disconnect(&a, 1, Parked::default(), &["t/#".into()]);
    old.finish();
    assert!(takeover.await.unwrap().is_none());
    assert_eq!(router.subscription_count(), 0);
    assert!(router.is_online("a"));
}

#[tokio::test]
async fn takeover_of_a_connection_that_ended_without_disconnect_does_not_wait() {
    let router = Router::new(LIMITS, 10);
    let a = id("a");
    let (first, old) = handle(1, 16);
    router.connect(&a, false, first).await;
    // The task ended (a panic, say) without `disconnect`: its slot still says online.
    drop(crate::link::FinishOnDrop(&old.link));
    assert!(router.is_online("a"));

    let (second, _new) = handle(2, 16);
    let resumed = router
        .connect(&a, false, second)
        .now_or_never()
        .expect("nothing left to wait for: completes on the first poll");
    assert!(resumed.is_none());
    assert_eq!(old.kick(), None, "a finished connection is not kicked");
    assert!(router.is_online("a"));
}

#[tokio::test]
async fn stale_disconnect_changes_nothing() {
    let router = Arc::new(Router::new(LIMITS, 10));
    let a = id("a");
    let (first, old) = handle(1, 16);
    router.connect(&a, true, first).await;
    router.subscribe(&a, 1, &filters(&[("t/#", 1)]));

    // Replace the first connection (it finishes without disconnecting, e.g. it crashed).
    old.finish();
    let (second, mut new) = handle(2, 16);
    router.connect(&a, true, second).await;
    assert_eq!(router.subscription_count(), 0, "the crashed connection's filters went with it");
    router.subscribe(&a, 2, &filters(&[("t/#", 1)]));

    // The first one's late disconnect must not remove the new connection or its filters.
    router.disconnect(&a, 1, Parked::default(), &["t/#".into()]);
    assert!(router.is_online("a"));
    assert_eq!(router.subscription_count(), 1);
    router.publish(message("t/x", 1, "still here", false));
    assert_eq!(new.deliveries().len(), 1);

    // Nor may it park anything over an offline slot.
    let (third, _c) = handle(3, 16);
    let b = id("b");
    router.connect(&b, false, third).await;
    let mut parked = Parked::default();
    parked.subscriptions.insert("kept".into(), 1);
    router.disconnect(&b, 3, parked, &[]);
    let mut bogus = Parked::default();
    bogus.subscriptions.insert("bogus".into(), 1);
    router.disconnect(&b, 3, bogus, &[]);
    router.disconnect(&b, 99, Parked::default(), &[]);
    let (fourth, _c) = handle(4, 16);
    let resumed = router.connect(&b, false, fourth).await.expect("session present");
    assert!(resumed.subscriptions.contains_key("kept"));
    assert!(!resumed.subscriptions.contains_key("bogus"));

    // Disconnecting an unknown session is harmless.
    router.disconnect(&id("nobody"), 1, Parked::default(), &[]);
}

#[tokio::test]
async fn slow_consumer_is_dropped_then_kicked() {
    let router = Router::new(LIMITS, 3);
    let a = id("a");
    let (handle_a, mut client) = handle(1, 1);
    router.connect(&a, true, handle_a).await;
    router.subscribe(&a, 1, &filters(&[("t", 0)]));

    assert_eq!(router.publish(message("t", 0, "fits", false)), Routed { delivered: 1, dropped: 0 });
    // Two drops: counted, not yet kicked.
    for _ in 0..2 {
        assert_eq!(
            router.publish(message("t", 0, "x", false)),
            Routed { delivered: 0, dropped: 1 }
        );
    }
    assert_eq!(client.kick(), None);

    // Reading resets the streak.
    assert_eq!(client.deliveries().len(), 1);
    router.publish(message("t", 0, "fits again", false));
    for _ in 0..2 {
        router.publish(message("t", 0, "x", false));
    }
    assert_eq!(client.kick(), None);

    // The third consecutive drop kicks.
    assert_eq!(router.publish(message("t", 0, "x", false)).dropped, 1);
    assert_eq!(client.kick(), Some(Kick::SlowConsumer));
    assert_eq!(client.deliveries().len(), 1);
}

#[tokio::test]
async fn closed_mailbox_counts_as_dropped() {
    let router = Router::new(LIMITS, 1);
    let a = id("a");
    let (handle_a, client) = handle(1, 4);
    router.connect(&a, true, handle_a).await;
    router.subscribe(&a, 1, &filters(&[("t", 0)]));
    client.link.close();
    assert_eq!(router.publish(message("t", 0, "x", false)), Routed { delivered: 0, dropped: 1 });
}

#[tokio::test]
async fn kick_and_kick_all_reach_online_connections_only() {
    let router = Router::new(LIMITS, 10);
    let (a, b, c) = (id("a"), id("b"), id("c"));
    let (handle_a, client_a) = handle(1, 4);
    let (handle_b, client_b) = handle(2, 4);
    let (handle_c, client_c) = handle(3, 4);
    router.connect(&a, true, handle_a).await;
    router.connect(&b, true, handle_b).await;
    router.connect(&c, false, handle_c).await;
    router.disconnect(&c, 3, Parked::default(), &[]);

    assert!(router.kick("a", Kick::NotAllowed));
    assert!(!router.kick("c", Kick::NotAllowed), "parked, not online");
    assert!(!router.kick("nobody", Kick::NotAllowed));
    assert_eq!(client_a.kick(), Some(Kick::NotAllowed));

    router.kick_all(Kick::Shutdown);
    assert_eq!(client_a.kick(), Some(Kick::NotAllowed), "the first reason stands");
    assert_eq!(client_b.kick(), Some(Kick::Shutdown));
    assert_eq!(client_c.kick(), None, "parked, not online");

    let mut online = router.online();
    online.sort();
    assert_eq!(online, [a, b]);
}

/// The broker-wide queue budget (8 messages): above its soft mark (6) QoS 0 is shed and QoS 1
/// goes only to queues that drain; an offline session is never draining; at the cap nothing
/// is queued; dropping parked state gives its share back.
#[tokio::test]
async fn global_queue_budget_sheds_qos0_then_backlogged_queues() {
    let router = Router::new(LIMITS, 1_000).with_queue_budget(QueueBudget::new(8, 1 << 20));
    let (fast, slow, away) = (id("fast"), id("slow"), id("away"));
    let (handle_fast, mut client_fast) = handle(1, 64);
    let (handle_slow, _client_slow) = handle(2, 4);
    let (handle_away, _) = handle(3, 4);
    router.connect(&fast, true, handle_fast).await;
    router.connect(&slow, true, handle_slow).await;
    router.connect(&away, false, handle_away).await;
    for (session, connection) in [(&fast, 1), (&slow, 2), (&away, 3)] {
        router.subscribe(session, connection, &filters(&[("t", 1)]));
    }
    router.disconnect(&away, 3, Parked::default(), &[]);

    // Two QoS 1 messages: each session queues both (6 reserved: the soft mark).
    for _ in 0..2 {
        assert_eq!(router.publish(message("t", 1, "m", false)).delivered, 3);
    }
    assert_eq!(router.budget().used().messages, 6);
    // Above the mark: QoS 0 is shed for both online clients (and never kept offline); QoS 1
    // reaches only the draining mailbox (the slow one is half full, the offline one never
    // drains).
    assert_eq!(router.publish(message("t", 0, "q0", false)), Routed { delivered: 0, dropped: 3 });
    assert_eq!(router.publish(message("t", 1, "m", false)), Routed { delivered: 1, dropped: 2 });
    // The fast client reads: its share is released by its connection task (here, by hand).
    let read = client_fast.deliveries();
    assert_eq!(read.len(), 3);
    for delivery in &read {
        router.budget().release(Load::of(delivery));
    }
    assert_eq!(router.budget().used().messages, 4);
    // Dropping the parked session gives its two back.
    let (handle_again, _) = handle(4, 4);
    assert!(router.connect(&away, true, handle_again).await.is_none());
    assert_eq!(router.budget().used().messages, 2);
}

/// A burst of QoS 1 larger than a connection's QoS 0 mailbox is queued, not dropped: the
/// inbox bounds QoS 1/2 by the session queue's size.
#[tokio::test]
async fn qos1_burst_beyond_the_qos0_mailbox_is_kept() {
    let router = Router::new(LIMITS, 1);
    let a = id("a");
    let link = Arc::new(Link::new(1, 2, 100));
    let mut client = Client { link: link.clone() };
    router.connect(&a, true, link).await;
    router.subscribe(&a, 1, &filters(&[("t", 1)]));
    for n in 0..50 {
        assert_eq!(router.publish(message("t", 1, &n.to_string(), false)).delivered, 1);
    }
    // QoS 0 still meets its own, smaller bound, and that is no reason to kick.
    assert_eq!(router.publish(message("t", 0, "a", false)).delivered, 1);
    assert_eq!(router.publish(message("t", 0, "b", false)).delivered, 1);
    assert_eq!(router.publish(message("t", 0, "c", false)).dropped, 1);
    let payloads: Vec<String> = summary(&client.deliveries()).into_iter().map(|d| d.1).collect();
    let expected: Vec<String> =
        (0..50).map(|n| n.to_string()).chain(["a".into(), "b".into()]).collect();
    assert_eq!(payloads, expected, "all of them, in order");
}

/// A device is reached on its `/sys/{pk}/{dn}/#` downlink by session id, online or parked,
/// without an entry in the subscription index; an explicit subscription to the same topics
/// does not deliver twice.
#[tokio::test]
async fn device_downlink_is_routed_without_a_subscription() {
    let router = Router::new(LIMITS, 10);
    let device = id(&crate::acl::device_session_id("pk", "dn"));
    let (link, mut client) = handle(1, 16);
    router.connect(&device, false, link).await;
    assert_eq!(router.subscription_count(), 0);

    router.publish(message("/sys/pk/dn/thing/bootstrap/notify", 1, "go", false));
    router.publish(message("/sys/pk/dn", 0, "parent level", false));
    router.publish(message("/sys/pk/other/thing/x", 1, "not mine", false));
    router.publish(message("/sys/pk/dnx/thing/x", 1, "not mine either", false));
    assert_eq!(
        summary(&client.deliveries()),
        [
            ("/sys/pk/dn/thing/bootstrap/notify".into(), "go".into(), 1, false),
            ("/sys/pk/dn".into(), "parent level".into(), 0, false),
        ]
    );

    // Subscribed explicitly at QoS 0 as well: once, at the downlink's QoS 1.
    router.subscribe(&device, 1, &filters(&[("/sys/pk/dn/thing/#", 0)]));
    let set = "/sys/pk/dn/thing/service/property/set";
    assert_eq!(router.publish(message(set, 1, "once", false)).delivered, 1);
    assert_eq!(summary(&client.deliveries()), [(set.into(), "once".into(), 1, false)]);

    // Uplink is not carried by the implicit route: only the explicit subscription's grant.
    let post = "/sys/pk/dn/thing/event/property/post";
    router.publish(message(post, 1, "explicit", false));
    assert_eq!(summary(&client.deliveries()), [(post.into(), "explicit".into(), 0, false)]);
    // No-local: the device's own downlink-shaped message does not come back through it
    // either (here its explicit subscription still delivers it, at its grant).
    let own = Message { origin: Origin::Device(device.clone()), ..message(set, 1, "own", false) };
    router.publish(own);
    assert_eq!(summary(&client.deliveries()), [(set.into(), "own".into(), 0, false)]);
    router.unsubscribe(&device, 1, &["/sys/pk/dn/thing/#".to_owned()]);
    assert_eq!(router.publish(message(post, 1, "echo", false)), Routed::default());
    let own = Message { origin: Origin::Device(device.clone()), ..message(set, 1, "own", false) };
    assert_eq!(router.publish(own), Routed::default());

    // Parked: QoS 1 waits for the device's return.
    router.disconnect(&device, 1, Parked::default(), &[]);
    assert_eq!(
        router.publish(message("/sys/pk/dn/thing/service/y", 1, "later", false)).delivered,
        1
    );
    let (back, _client) = handle(2, 16);
    assert_eq!(router.connect(&device, false, back).await.expect("session present").queued(), 1);

    // A standard client that picks a device-looking clientId gets its own namespace.
    let standard = crate::acl::Principal::Standard { username: None };
    assert_ne!(standard.session_id("device:pk/dn"), *device);
}

/// Retained messages count against their own caps; a refused one is still delivered.
#[tokio::test]
async fn retained_store_is_capped() {
    let router = Router::new(LIMITS, 10).with_retained_caps(2, 1_000);
    let a = id("a");
    let (link, mut client) = handle(1, 16);
    router.connect(&a, true, link).await;
    router.subscribe(&a, 1, &filters(&[("r/#", 1)]));
    for topic in ["r/1", "r/2", "r/3"] {
        assert_eq!(router.publish(message(topic, 1, "v", true)).delivered, 1);
    }
    assert_eq!(client.deliveries().len(), 3, "delivered even when not retained");
    assert_eq!(router.retained_count(), 2);
    assert_eq!(router.retained_bytes(), 8);
    let (b, (link_b, _c)) = (id("b"), handle(2, 16));
    router.connect(&b, true, link_b).await;
    let mut kept = summary(&router.subscribe(&b, 2, &filters(&[("r/+", 1)])));
    kept.sort();
    assert_eq!(kept.iter().map(|d| d.0.as_str()).collect::<Vec<_>>(), ["r/1", "r/2"]);
}

#[tokio::test]
async fn a_persistent_disconnect_parks_what_waited_in_the_inbox_and_what_arrives_after() {
    let router = Router::new(LIMITS, 10);
    let a = id("a");
    let (first, client) = handle(1, 16);
    router.connect(&a, false, first).await;
    router.subscribe(&a, 1, &filters(&[("t", 1)]));
    router.publish(message("t", 1, "waiting", false));
    router.publish(message("t", 0, "qos0", false));
    let mut parked = Parked::default();
    parked.subscriptions.insert("t".into(), 1);
    router.disconnect(&a, 1, parked, &["t".into()]);
    assert!(client.link.close().is_empty(), "the router took the inbox as it parked");
    router.publish(message("t", 1, "after", false));

    let (second, _client) = handle(2, 16);
    let resumed = router.connect(&a, false, second).await.expect("session present");
    assert_eq!(resumed.queued(), 2, "the QoS 1 deliveries, not the QoS 0 one");
    let held = resumed.load();
    assert_eq!(router.budget().used().messages, held.messages, "reservations moved, not leaked");
}

/// A takeover whose wait runs out replaces the old connection without its state: the old
/// connection's subscriptions do not stay attached to the session id (the new session would
/// receive what it never subscribed to), and the old task, still running, can neither add nor
/// remove any.
#[tokio::test(start_paused = true)]
async fn a_takeover_that_stops_waiting_drops_the_old_connections_subscriptions() {
    let router = Arc::new(Router::new(LIMITS, 10));
    let (a, watcher) = (id("a"), id("watcher"));
    let (handle_w, mut client_w) = handle(9, 16);
    router.connect(&watcher, true, handle_w).await;
    router.subscribe(&watcher, 9, &filters(&[("old/#", 1)]));
    let (first, old) = handle(1, 16);
    router.connect(&a, false, first).await;
    router.subscribe(&a, 1, &filters(&[("old/#", 1), ("both", 1)]));

    // The old connection is kicked but never finishes (stuck); virtual time runs the wait out.
    let (second, mut new) = handle(2, 16);
    let resumed = router.connect(&a, false, second).await;
    assert!(resumed.is_none(), "nothing to resume: the old state is still in its task");
    assert_eq!(old.kick(), Some(Kick::TakenOver));
    assert_eq!(router.subscription_count(), 1, "only the watcher's subscription is left");
    router.publish(message("old/x", 1, "not for the new session", false));
    assert!(new.deliveries().is_empty());
    assert_eq!(client_w.deliveries().len(), 1, "other sessions are untouched");

    // The new connection subscribes; the stale one's late SUBSCRIBE, UNSUBSCRIBE and
    // disconnect change nothing.
    router.subscribe(&a, 2, &filters(&[("both", 1)]));
    assert!(router.subscribe(&a, 1, &filters(&[("late/#", 1)])).is_empty());
    router.unsubscribe(&a, 1, &["both".to_owned()]);
    router.disconnect(&a, 1, Parked::default(), &["old/#".into(), "both".into()]);
    assert_eq!(router.subscription_count(), 2);
    router.publish(message("late/x", 1, "no", false));
    router.publish(message("both", 1, "yes", false));
    assert_eq!(summary(&new.deliveries()), [("both".into(), "yes".into(), 1, false)]);
}

/// A parked session expires at its deadline, in virtual time: its subscriptions, its queued
/// messages and its share of the budgets are given back; a session not yet due stays.
#[tokio::test]
async fn parked_sessions_expire_with_everything_they_held() {
    let router = Router::new(LIMITS, 10).with_queue_budget(QueueBudget::unlimited());
    let now = Instant::now();
    let hour = Duration::from_secs(3600);
    for (n, expiry) in [(1, hour), (2, 2 * hour)] {
        let session_id = id(&format!("s{n}"));
        let (link, _client) = handle(n, 16);
        assert!(router.connect(&session_id, false, link).await.is_none());
        let profile = crate::acl::Profile {
            session_expiry: expiry,
            ..crate::acl::Profile::standard(1024, 10)
        };
        let mut session = crate::session::Session::new(
            now,
            crate::acl::Principal::Standard { username: None },
            profile,
            LIMITS,
            60,
            None,
            None,
        )
        .with_budget(router.budget().clone());
        let subscribe =
            mqttbytes::v4::Subscribe::new(format!("t/{n}"), mqttbytes::QoS::AtLeastOnce);
        let mut subscribe = subscribe;
        subscribe.pkid = 1;
        let view = crate::view::RegistryView::default();
        session
            .handle_packet(
                now,
                crate::packet::from_v4(mqttbytes::v4::Packet::Subscribe(subscribe)),
                &view,
            )
            .unwrap();
        while let Some(event) = session.poll_event() {
            if let crate::session::Event::Subscribe(filters) = event {
                router.subscribe_paced(&session_id, n, &filters);
            }
        }
        let filters: Vec<String> = session.filters().map(str::to_owned).collect();
        router.disconnect(&session_id, n, session.park_at(now), &filters);
        router.publish(message(&format!("t/{n}"), 1, "queued", false));
    }
    assert_eq!((router.parked_count(), router.subscription_count()), (2, 2));
    let held = router.budget().state();
    assert!(held > 0, "subscriptions and parked sessions count as session state");
    assert_eq!(router.budget().used().messages, 2);

    assert_eq!(router.expire(now + hour - Duration::from_millis(1)), 0, "none due yet");
    assert_eq!(router.expire(now + hour), 1);
    assert_eq!((router.parked_count(), router.subscription_count()), (1, 1));
    assert_eq!(router.budget().used().messages, 1);
    assert_eq!(router.budget().state(), held / 2, "one session's share given back");
    assert_eq!(router.publish(message("t/1", 1, "late", false)), Routed::default());

    assert_eq!(router.expire(now + 2 * hour), 1);
    assert_eq!((router.parked_count(), router.subscription_count()), (0, 0));
    assert_eq!(router.budget().used(), Load::default());
    assert_eq!(router.budget().state(), 0);

    // A persistent session with no expiry at all is forgotten at once, like a clean one.
    let (link, _client) = handle(9, 16);
    let gone = id("gone");
    router.connect(&gone, false, link).await;
    let mut parked = Parked::default();
    parked.expires = Some(now);
    router.disconnect(&gone, 9, parked, &[]);
    assert_eq!(router.parked_count(), 0);
}

/// Retained messages are read a page at a time: a subscription owed many holds a cursor, not
/// the messages.
#[tokio::test]
async fn retained_messages_are_paged() {
    let router = Router::new(LIMITS, 10);
    for n in 0..100 {
        router.publish(message(&format!("r/{n:03}"), 0, "v", true));
    }
    let a = id("a");
    let (link, _client) = handle(1, 16);
    router.connect(&a, true, link).await;
    let mut cursors = router.subscribe_paced(&a, 1, &filters(&[("r/#", 1)]));
    assert_eq!(cursors.len(), 1);
    let cursor = &mut cursors[0];
    let (first, done) = router.retained_page(cursor, 30);
    assert_eq!((first.len(), done), (30, false));
    assert!(first.iter().all(|delivery| delivery.retain && delivery.qos == 0));
    let mut seen: Vec<String> = first.iter().map(|d| d.message.topic.to_string()).collect();
    loop {
        let (page, done) = router.retained_page(cursor, 30);
        seen.extend(page.iter().map(|d| d.message.topic.to_string()));
        if done {
            break;
        }
    }
    let expected: Vec<String> = (0..100).map(|n| format!("r/{n:03}")).collect();
    assert_eq!(seen, expected, "each once, in order");
}

/// Forgetting what an account left costs no scan when it left nothing, reads a large store a
/// page at a time, and deletes exactly that account's messages on the picked topics.
#[test]
fn forget_retained_scans_only_for_an_account_that_left_messages() {
    let router = Router::new(LIMITS, 10);
    let (a, b): (AccountId, AccountId) = ("a".parse().unwrap(), "b".parse().unwrap());
    let from = |origin: Origin, topic: String| Message { origin, ..message(&topic, 0, "v", true) };
    // A store of more than two pages: standard clients' messages and b's, with a's on
    // `dev/1/...` and `dev/2/...` only.
    for n in 0..2 * FORGET_PAGE + 10 {
        router.publish(from(Origin::Broker, format!("noise/{n}")));
    }
    for n in 0..10 {
        router.publish(from(Origin::Application(a.clone()), format!("dev/1/{n}")));
        router.publish(from(Origin::Application(a.clone()), format!("dev/2/{n}")));
        router.publish(from(Origin::Application(b.clone()), format!("dev/1/b{n}")));
        router.publish(from(Origin::Broker, format!("dev/1/std{n}")));
    }
    let total = router.retained_count();

    let nobody: AccountId = "nobody".parse().unwrap();
    assert_eq!(router.forget_retained(Some(&nobody), |_| true), Forgotten::default(), "no scan");

    let forgotten = router.forget_retained(Some(&a), |topic| topic.starts_with("dev/1/"));
    assert_eq!(forgotten.messages, 10);
    assert_eq!(forgotten.pages, 3, "every page of the store, {FORGET_PAGE} topics at a time");
    assert_eq!(router.retained_count(), total - 10);
    let left = router.retained(&filters(&[("dev/#", 0)]));
    assert_eq!(left.len(), 30, "a's dev/2, b's and the standard client's dev/1 stay");
    assert!(left.iter().all(|d| !d.message.topic.starts_with("dev/1/")
        || !matches!(&d.message.origin, Origin::Application(x) if *x == a)));

    // Once the account has nothing left the scan stops: `dev/` sorts before `noise/`.
    let forgotten = router.forget_retained(Some(&a), |_| true);
    assert_eq!(forgotten, Forgotten { messages: 10, pages: 1 });
    // Any application account.
    assert_eq!(router.forget_retained(None, |_| true).messages, 10);
    assert_eq!(router.forget_retained(None, |_| true), Forgotten::default());
    assert_eq!(router.retained_count(), total - 30);
}

/// A clean session's old connection ends while the client reconnects at once and restores the
/// same (kept) filter: the hook runs the reconnect the instant `disconnect` releases the
/// session table's lock, the first moment a real connection task could. The old connection's
/// cleanup must not remove the new session's entries nor give back their budget.
#[tokio::test]
async fn a_reconnect_as_the_old_connection_ends_keeps_its_subscriptions() {
    let router = Router::new(LIMITS, 10);
    let device = id("dev");
    let filter = "/user/get".to_owned();
    let (old, _old_client) = handle(1, 16);
    router.connect(&device, true, old).await;
    // What a session reserves as it subscribes (see `Session::with_budget`).
    router.budget().reserve_state(subscription_cost(&filter)).unwrap();
    router.subscribe(&device, 1, &filters(&[("/user/get", 1)]));

    let (new, new_client) = handle(2, 16);
    let reconnect = {
        let device = device.clone();
        let filter = filter.clone();
        move |router: &Router| {
            // No takeover to wait for: the slot is empty, so `connect` completes at once.
            let resumed = router.connect(&device, true, new).now_or_never();
            assert!(matches!(resumed, Some(None)));
            router.budget().reserve_state(subscription_cost(&filter)).unwrap();
            router.subscribe(&device, 2, &[(filter, 1)]);
        }
    };
    router.on_release(reconnect);
    router.disconnect(&device, 1, Parked::default(), std::slice::from_ref(&filter));

    assert!(router.is_online("dev"));
    assert_eq!(router.subscription_count(), 1, "the new session's filter is still indexed");
    assert_eq!(router.budget().state(), subscription_cost(&filter), "released once, not twice");
    assert_eq!(router.publish(message("/user/get", 1, "m", false)).delivered, 1);
    let mut new_client = new_client;
    assert_eq!(summary(&new_client.deliveries()).len(), 1);
}

/// The same for a parked session that expires as its client reconnects.
#[tokio::test]
async fn a_reconnect_as_the_parked_session_expires_keeps_its_subscriptions() {
    let router = Router::new(LIMITS, 10);
    let device = id("dev");
    let filter = "/user/get".to_owned();
    let now = Instant::now();
    let (old, _old_client) = handle(1, 16);
    router.connect(&device, false, old).await;
    router.subscribe(&device, 1, &filters(&[("/user/get", 1)]));
    let mut parked = Parked::default();
    parked.expires = Some(now + Duration::from_secs(60));
    parked.subscriptions.insert(filter.clone(), 1);
    router.disconnect(&device, 1, parked, std::slice::from_ref(&filter));
    assert_eq!(router.parked_count(), 1);

    let (new, new_client) = handle(2, 16);
    router.on_release(move |router: &Router| {
        assert!(matches!(router.connect(&device, true, new).now_or_never(), Some(None)));
        router.subscribe(&device, 2, &[(filter, 1)]);
    });
    assert_eq!(router.expire(now + Duration::from_secs(61)), 1);

    assert_eq!(router.subscription_count(), 1);
    assert_eq!(router.publish(message("/user/get", 1, "m", false)).delivered, 1);
    let mut new_client = new_client;
    assert_eq!(new_client.deliveries().len(), 1);
}
