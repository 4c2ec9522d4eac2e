//! The bootstrap edge's routing table when its feed breaks: it keeps answering from what it
//! has, follows again from a fresh snapshot once the feed is back, and then forgets what was
//! deleted meanwhile.

use std::net::{IpAddr, Ipv4Addr};

use meridian_edge::{Edge, EdgeConfig, RoutingTable};
use meridian_geo::{Locator, LocatorOptions};
use meridian_tests::cuttable::CuttableFeed;
use meridian_tests::device::http_exchange;
use meridian_tests::{HANG, PRODUCT, TestRegistry};

/// The status line of the edge's answer to a C SDK bootstrap request for `device`.
async fn bootstrap(edge: std::net::SocketAddr, device: &str) -> String {
    let body = format!("productKey={PRODUCT}&deviceName={device}&resources=mqtt");
    let request = format!(
        "POST /auth/bootstrap HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: \
         application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let response =
        http_exchange(loopback, edge, request.as_bytes()).await.expect("bootstrap exchange");
    response.lines().next().unwrap_or_default().to_owned()
}

/// A device deleted while the edge's feed was broken is unknown to the edge once the feed is
/// back (404), like a delete seen on the live feed; the others still bootstrap. Before, the
/// follower gave up at the first store error and the table answered for deleted devices for
/// good.
#[tokio::test]
async fn a_device_deleted_while_the_feed_was_broken_is_unknown_after_following_again() {
    let registry = TestRegistry::new().await;
    let gone = registry.device("gone-1", "gone-secret-1").await;
    registry.device("kept-1", "kept-secret-1").await;
    let feed = CuttableFeed::new(registry.store.clone());

    let mut config = EdgeConfig::default();
    config.rate_limit.enabled = false;
    let locator = Locator::new(
        None,
        config.geoip.default_region.clone(),
        LocatorOptions { geolocate_loopback: false },
    );
    let (table, writer) = RoutingTable::new();
    let follower = tokio::spawn(meridian_edge::follow(feed.clone(), writer));
    table.caught_up(registry.store.revision().await.unwrap()).await;
    let edge = Edge::new(&config, table.clone(), locator, None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(meridian_edge::run(listener, edge, std::future::pending()));
    assert_eq!(bootstrap(addr, "gone-1").await, "HTTP/1.1 200 OK");

    // The feed breaks; while the edge is retrying, the device is deleted. Meanwhile the edge
    // answers from what it has.
    feed.cut();
    feed.retrying().await;
    registry.registry.delete_device(&gone).await.unwrap();
    assert_eq!(bootstrap(addr, "kept-1").await, "HTTP/1.1 200 OK");
    feed.heal();

    let revision = registry.store.revision().await.unwrap();
    tokio::time::timeout(HANG, table.caught_up(revision)).await.unwrap();
    assert_eq!(bootstrap(addr, "gone-1").await, "HTTP/1.1 404 Not Found");
    assert_eq!(bootstrap(addr, "kept-1").await, "HTTP/1.1 200 OK", "the others stay");
    assert!(!follower.is_finished(), "the follower keeps following");
    server.abort();
    follower.abort();
}
