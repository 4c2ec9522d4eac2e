//! The routing table follows the registry's change feed: devices created, re-placed and deleted
//! through [`Registry`](meridian_registry::Registry) change what the edge answers, and a
//! 10,000-device batch lands while requests keep being answered.

mod common;

use std::sync::Arc;

use common::{Client, Setup, Stack, device_key, product_key, sdk_form, specified};
use http::StatusCode;
use meridian_edge::{EdgeConfig, RoutingTable, follow};
use meridian_registry::NewDevice;
use meridian_registry::model::Placement;
use tokio::sync::watch;

#[tokio::test]
async fn placement_changes_reach_the_edge() {
    let stack = Stack::start().await;
    let mut client = Client::connect(stack.addr).await;
    assert_eq!(client.bootstrap(&sdk_form("lamp-1"), &[]).await.status, StatusCode::NOT_FOUND);

    stack.devices(&[("lamp-1", Placement::Home)]).await;
    assert_eq!(client.bootstrap(&sdk_form("lamp-1"), &[]).await.host(), "sh.mqtt.example");

    // Distributed to Frankfurt, then to Virginia.
    stack.place("lamp-1", specified("iot-fra-1")).await;
    assert_eq!(client.bootstrap(&sdk_form("lamp-1"), &[]).await.host(), "fra.mqtt.example");
    stack.place("lamp-1", specified("iot-va-1")).await;
    assert_eq!(client.bootstrap(&sdk_form("lamp-1"), &[]).await.host(), "va.mqtt.example");

    // An instance's endpoint moves: the answer follows without touching the device.
    let mut instance =
        stack.registry.instance(&"iot-va-1".parse().expect("id")).await.expect("instance");
    instance.endpoint.host = "va2.mqtt.example".into();
    let value = meridian_registry::encode(&instance).expect("encode");
    stack.registry.store().put("instances/iot-va-1", value).await.expect("put");
    stack.sync().await;
    assert_eq!(client.bootstrap(&sdk_form("lamp-1"), &[]).await.host(), "va2.mqtt.example");

    stack.registry.delete_device(&device_key("lamp-1")).await.expect("delete");
    stack.sync().await;
    assert_eq!(client.bootstrap(&sdk_form("lamp-1"), &[]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(stack.table.device_count(), 0);
    stack.stop().await;
}

#[tokio::test]
async fn a_10k_device_batch_lands_while_requests_are_answered() {
    // The asker below sends as fast as it can; that is not what this test is about.
    let mut setup = Setup::default();
    setup.config.rate_limit.enabled = false;
    let stack = Stack::with(setup).await;
    let names: Vec<String> = (0..10_000).map(|i| format!("batch-{i:05}")).collect();
    let last = names.last().cloned().expect("names");

    // A client asks for the last device of the batch until it is there; every answer on the
    // way is a clean 404 or the endpoint.
    let (done_tx, mut done) = watch::channel(false);
    let addr = stack.addr;
    let asker = tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        let mut answers = 0u32;
        loop {
            let reply = client.bootstrap(&sdk_form(&last), &[]).await;
            answers += 1;
            match reply.status {
                StatusCode::OK => {
                    assert_eq!(reply.host(), "sh.mqtt.example");
                    return answers;
                }
                StatusCode::NOT_FOUND => assert_eq!(reply.error().1, "device not found"),
                other => panic!("unexpected {other}"),
            }
            if *done.borrow_and_update() {
                // The batch is applied: the next answer must be the endpoint.
                let reply = client.bootstrap(&sdk_form(&last), &[]).await;
                assert_eq!(reply.host(), "sh.mqtt.example");
                return answers + 1;
            }
        }
    });

    let new = names.iter().map(|n| NewDevice { name: n.parse().expect("name"), secret: None });
    stack.registry.create_devices(&product_key(), new.collect()).await.expect("batch");
    stack.sync().await;
    let _ = done_tx.send(true);
    assert!(asker.await.expect("asker") >= 1);
    assert_eq!(stack.table.device_count(), 10_000);
    stack.stop().await;
}

#[tokio::test]
async fn a_late_follower_loads_the_snapshot_then_the_feed() {
    let stack = Stack::start().await;
    stack.devices(&[("lamp-1", specified("iot-fra-1")), ("lamp-2", Placement::Home)]).await;
    stack.registry.delete_device(&device_key("lamp-2")).await.expect("delete");

    // A second table built from scratch over the same store sees the same state.
    let (table, writer) = RoutingTable::new();
    let follower = tokio::spawn(follow(Arc::clone(stack.registry.store()), writer));
    let revision = stack.registry.store().revision().await.expect("revision");
    table.caught_up(revision).await;
    assert_eq!(table.device_count(), 1);
    let locator = meridian_edge::open_locator(&EdgeConfig::default().geoip).expect("locator");
    let resolved = table.resolve(&device_key("lamp-1"), "8.8.8.8".parse().expect("ip"), &locator);
    assert!(matches!(resolved, meridian_edge::Resolution::Endpoint { .. }), "{resolved:?}");
    let gone = table.resolve(&device_key("lamp-2"), "8.8.8.8".parse().expect("ip"), &locator);
    assert_eq!(gone, meridian_edge::Resolution::Unroutable);
    follower.abort();
    stack.stop().await;
}
