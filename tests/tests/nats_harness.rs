//! The real-process NATS harness (`meridian_tests::nats`) does what the JetStream store's
//! failure tests rely on, shown with a real client (async-nats): a key/value bucket on one node
//! survives kill -9 and restart; an R3 stream keeps taking writes when a node of three is
//! killed; a leaf node's mirror of a hub bucket serves reads while its link is cut and catches
//! up after the heal.

use std::time::Duration;

use async_nats::jetstream::{self, kv, message::PublishMessage, stream};
use bytes::Bytes;
use futures::StreamExt;
use meridian_tests::HANG;
use meridian_tests::nats::{LeafNode, NatsCluster, NatsServer};
use meridian_tests::proxy::CuttableProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Polls `check` until it holds; a guard against a hang, not a performance bound.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let wait = async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // Mirrors and leaders take their own time after a failure: twice the usual hang guard.
    tokio::time::timeout(HANG * 2, wait).await.unwrap_or_else(|_| panic!("never: {what}"));
}

async fn connect(urls: Vec<String>) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(urls)
        .await
        .expect("connect to nats")
}

#[tokio::test]
async fn single_node_bucket_survives_kill9_and_restart() {
    let server = NatsServer::start().await;
    let client = connect(vec![server.url()]).await;
    let js = jetstream::new(client.clone());
    let bucket = js
        .create_key_value(kv::Config {
            bucket: "meridian".into(),
            history: 4,
            ..Default::default()
        })
        .await
        .expect("create bucket");
    let mut revisions = Vec::new();
    for i in 0..50u32 {
        revisions.push(
            bucket.put(format!("device.{i}"), Bytes::from(i.to_string())).await.expect("put"),
        );
    }
    bucket.delete("device.7").await.expect("delete");

    server.kill9();
    assert!(!server.is_running());
    server.restart().await;

    // The same client reconnects to the same port by itself.
    let bucket =
        jetstream::new(client).get_key_value("meridian").await.expect("bucket after restart");
    for i in 0..50u32 {
        let entry = bucket.entry(format!("device.{i}")).await.expect("entry");
        if i == 7 {
            assert!(
                entry.as_ref().is_none_or(|e| e.operation != kv::Operation::Put),
                "device.7 was deleted before the kill"
            );
            continue;
        }
        let entry = entry.unwrap_or_else(|| panic!("device.{i} survives the restart"));
        assert_eq!(entry.value, Bytes::from(i.to_string()));
        assert_eq!(
            entry.revision, revisions[i as usize],
            "revisions are the stream sequence, kept"
        );
    }
    let next = bucket.put("device.50", Bytes::from_static(b"50")).await.expect("put after restart");
    assert!(
        next > revisions[49] + 1,
        "the sequence goes on after the restart (a delete came between)"
    );
}

#[tokio::test]
async fn r3_stream_keeps_taking_writes_when_a_node_is_killed() {
    let cluster = NatsCluster::start(3).await;
    assert_eq!(cluster.urls().len(), 3);
    assert_eq!(cluster.domain(), "hub");
    let client = connect(cluster.urls()).await;
    let js = jetstream::new(client.clone());
    let mut events = js
        .create_stream(stream::Config {
            name: "EVENTS".into(),
            subjects: vec!["events.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("create R3 stream");
    assert_eq!(events.info().await.expect("info").config.num_replicas, 3);

    // Each message has an id, so a publish retried across the failover is stored once.
    let publish = |i: u32| {
        let js = js.clone();
        async move {
            let attempt = async {
                loop {
                    let message = PublishMessage::build()
                        .payload(Bytes::from(i.to_string()))
                        .message_id(format!("m{i}"));
                    if let Ok(ack) = js.send_publish(format!("events.{i}"), message).await
                        && ack.await.is_ok()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            tokio::time::timeout(HANG * 2, attempt)
                .await
                .unwrap_or_else(|_| panic!("publish {i} never acked"));
        }
    };
    for i in 0..100 {
        publish(i).await;
    }

    // Kill the stream's leader: the worst node to lose.
    let leader = events.info().await.expect("info").cluster.as_ref().and_then(|c| c.leader.clone());
    let leader = leader.expect("the stream has a leader");
    let victim =
        (0..cluster.len()).find(|&i| cluster.server_name(i) == leader).expect("leader is a node");
    cluster.kill9(victim);
    assert!(!cluster.is_running(victim));

    for i in 100..200 {
        publish(i).await;
    }

    // Every message once, in order, read through a consumer on the surviving nodes.
    // The JetStream API may answer with an error (or not in time) while a new meta leader is
    // elected after the kill: retried, as any client of a cluster must.
    let mut last_error = String::new();
    let create = async {
        loop {
            match events
                .create_consumer(jetstream::consumer::pull::Config {
                    durable_name: Some("reader".into()),
                    ..Default::default()
                })
                .await
            {
                Ok(consumer) => return consumer,
                Err(error) => last_error = error.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let consumer = tokio::time::timeout(HANG * 2, create)
        .await
        .unwrap_or_else(|_| panic!("no consumer after the kill: {last_error}"));
    let mut messages = consumer.messages().await.expect("messages");
    for i in 0..200u32 {
        let message = tokio::time::timeout(HANG, messages.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("message");
        assert_eq!(message.payload, Bytes::from(i.to_string()), "message {i}");
        message.ack().await.expect("ack");
    }
    drop(messages);

    // The killed node comes back with its store and catches up.
    cluster.restart(victim).await;
    cluster.wait_formed().await;
    eventually("the restarted node is a current replica again", || {
        let mut events = events.clone();
        let victim = cluster.server_name(victim).to_owned();
        async move {
            let Ok(info) = events.info().await else { return false };
            let Some(state) = info.cluster.as_ref() else { return false };
            state.leader.as_deref() == Some(victim.as_str())
                || state.replicas.iter().any(|r| r.name == victim && r.current)
        }
    })
    .await;
    assert_eq!(events.info().await.expect("info").state.messages, 200);
}

#[tokio::test]
async fn leaf_mirror_serves_reads_while_cut_and_catches_up_after_heal() {
    let cluster = NatsCluster::start(3).await;
    let leaf = LeafNode::start(&cluster.leafnode_urls(), "cn-shanghai").await;
    assert_eq!(leaf.domain(), "cn-shanghai");

    let hub = connect(cluster.urls()).await;
    let bucket = jetstream::new(hub)
        .create_key_value(kv::Config {
            bucket: "meridian".into(),
            history: 8,
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("create the hub bucket");
    let v1 = bucket.put("region.cn-shanghai", Bytes::from_static(b"v1")).await.expect("put");

    // A client of the leaf: the leaf's own JetStream by default, the hub's as domain "hub".
    let local = connect(vec![leaf.url()]).await;
    let leaf_js = jetstream::new(local.clone());
    let hub_via_leaf = jetstream::with_domain(local.clone(), "hub");
    hub_via_leaf
        .get_key_value("meridian")
        .await
        .expect("the hub's bucket through the leaf")
        .put("written.through.leaf", Bytes::from_static(b"yes"))
        .await
        .expect("a write through the leaf goes to the hub");
    assert_eq!(
        bucket.get("written.through.leaf").await.expect("get"),
        Some(Bytes::from_static(b"yes"))
    );

    let mirror = leaf_js
        .create_stream(stream::Config {
            name: "KV_meridian_cn-shanghai".into(),
            mirror: Some(stream::Source {
                name: "KV_meridian".into(),
                // Not `domain: Some("hub")`: async-nats 0.48 sends that field along with the
                // `external` it derives from it, and nats-server 2.15's strict API refuses it
                // ("unknown field domain").
                external: Some(stream::External {
                    api_prefix: "$JS.hub.API".into(),
                    delivery_prefix: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("create the leaf's mirror");
    let last = |key: &'static str| {
        let mirror = mirror.clone();
        async move {
            mirror
                .get_last_raw_message_by_subject(&format!("$KV.meridian.{key}"))
                .await
                .ok()
                .map(|message| message.payload)
        }
    };
    eventually("the mirror has the hub's value", || async {
        last("region.cn-shanghai").await.as_deref() == Some(b"v1".as_slice())
    })
    .await;
    // A mirror keeps the origin's sequence numbers: a revision means the same at hub and leaf.
    let mirrored = mirror
        .get_last_raw_message_by_subject("$KV.meridian.region.cn-shanghai")
        .await
        .expect("mirrored");
    assert_eq!(mirrored.sequence, v1, "the mirror's sequence is the hub's revision");

    leaf.cut().await;
    assert!(leaf.is_cut());
    // Changes at the hub while the region is cut off.
    bucket.put("region.cn-shanghai", Bytes::from_static(b"v2")).await.expect("put while cut");
    let placed =
        bucket.put("device.new", Bytes::from_static(b"placed")).await.expect("put while cut");
    // The region reads its last state, locally...
    assert_eq!(last("region.cn-shanghai").await.as_deref(), Some(b"v1".as_slice()));
    assert_eq!(last("device.new").await, None);
    // ...and cannot reach the hub.
    assert!(
        hub_via_leaf.get_stream("KV_meridian").await.is_err(),
        "the hub is unreachable while cut"
    );

    leaf.heal().await;
    eventually("the mirror catches up after the heal", || async {
        last("region.cn-shanghai").await.as_deref() == Some(b"v2".as_slice())
            && last("device.new").await.as_deref() == Some(b"placed".as_slice())
    })
    .await;
    assert_eq!(
        mirror
            .get_last_raw_message_by_subject("$KV.meridian.device.new")
            .await
            .expect("mirrored")
            .sequence,
        placed,
        "sequences still agree after the catch-up"
    );
}

#[tokio::test]
async fn proxy_cut_drops_connections_and_refuses_new_ones_until_healed() {
    // An echo server upstream.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream_addr = upstream.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    let proxy = CuttableProxy::start(upstream_addr).await;
    assert_eq!(proxy.upstream(), upstream_addr);

    async fn echo(stream: &mut tokio::net::TcpStream) -> std::io::Result<Vec<u8>> {
        stream.write_all(b"ping").await?;
        let mut buffer = [0u8; 4];
        stream.read_exact(&mut buffer).await?;
        Ok(buffer.to_vec())
    }
    let mut before = tokio::net::TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(echo(&mut before).await.expect("echo"), b"ping");

    proxy.cut();
    let mut buffer = [0u8; 1];
    let read = tokio::time::timeout(HANG, before.read(&mut buffer)).await.expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "the open connection is dropped: {read:?}");
    let mut during =
        tokio::net::TcpStream::connect(proxy.addr()).await.expect("accepted, then closed");
    assert!(echo(&mut during).await.is_err(), "nothing gets through while cut");

    proxy.heal();
    let mut after = tokio::net::TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(echo(&mut after).await.expect("echo after heal"), b"ping");
}

/// The registry's own store through the topology of deploy/cluster: a home replica writes to
/// the hub's bucket; a region's reader connects to its leaf only and reads the leaf's mirror,
/// which it creates; while the leaf is cut off it still reads the last state, and writes from
/// the region fail; after the heal it sees what the hub wrote meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_in_a_region_reads_its_leaf_mirror_while_cut() {
    use meridian_registry::store::{JetStreamStore, NatsConfig, Op, Store};

    let cluster = NatsCluster::start(3).await;
    let leaf = LeafNode::start(&cluster.leafnode_urls(), "cn-shanghai").await;
    let config = |servers: Vec<String>, read: bool| -> NatsConfig {
        let servers: Vec<String> = servers.iter().map(|url| format!("{url:?}")).collect();
        let mut text = format!(
            "servers = [{}]\nbucket = \"meridian\"\nreplicas = 3\ndomain = \"hub\"\nrequest_timeout = \"2s\"\n",
            servers.join(", ")
        );
        if read {
            text.push_str(
                "[read]\ndomain = \"cn-shanghai\"\nstream = \"KV_meridian_cn-shanghai\"\n",
            );
        }
        toml::from_str(&text).expect("store config")
    };
    let home = JetStreamStore::connect(config(cluster.urls(), false)).await.expect("home store");
    home.provision().await.expect("provision the bucket");
    let v1 = home
        .batch(vec![Op::put("regions/cn-shanghai", Bytes::from_static(b"v1"))])
        .await
        .expect("write");

    let region =
        JetStreamStore::connect(config(vec![leaf.url()], true)).await.expect("region store");
    let value = |store: &JetStreamStore, key: &'static str| {
        let store = store.clone();
        async move { store.get(key).await.ok().flatten().map(|entry| (entry.value, entry.revision)) }
    };
    eventually("the region reads the hub's write from its mirror", || async {
        value(&region, "regions/cn-shanghai").await == Some((Bytes::from_static(b"v1"), v1))
    })
    .await;

    leaf.cut().await;
    let v2 = home
        .batch(vec![Op::put("regions/cn-shanghai", Bytes::from_static(b"v2"))])
        .await
        .expect("write");
    assert_eq!(
        value(&region, "regions/cn-shanghai").await,
        Some((Bytes::from_static(b"v1"), v1)),
        "the region reads its last state while cut"
    );
    assert!(
        region.batch(vec![Op::put("devices/x", Bytes::from_static(b"x"))]).await.is_err(),
        "a write from the region fails while the hub is out of reach"
    );

    leaf.heal().await;
    eventually("the region catches up after the heal", || async {
        value(&region, "regions/cn-shanghai").await == Some((Bytes::from_static(b"v2"), v2))
    })
    .await;
}
