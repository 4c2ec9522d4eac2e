//! Nearest access end to end: devices "in" three places (loopback sub-ranges the test GeoIP
//! database puts in Frankfurt, Shanghai and Virginia), fallbacks, trusted proxies on and off,
//! PROXY protocol v2, and a database replaced while the edge runs.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{Client, Setup, Stack, bootstrap_from, nearest_everywhere, sdk_form};
use meridian_geo::testdb::{self, Entry, IpVersion, Layout};
use ppp::v2::{Builder, Command, Protocol, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const EU: &str = "fra.mqtt.example";
const ASIA: &str = "sh.mqtt.example";
const NA: &str = "va.mqtt.example";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn trusting_localhost() -> Setup {
    let mut setup = Setup::default();
    setup.config.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
    setup
}

#[tokio::test]
async fn devices_in_three_places_get_three_regions() {
    let stack = Stack::start().await;
    stack.devices(&[("roamer-1", nearest_everywhere())]).await;
    for (source, host) in [("127.1.0.7", EU), ("127.2.0.7", ASIA), ("127.3.0.7", NA)] {
        let reply = bootstrap_from(stack.addr, ip(source), "roamer-1").await;
        assert_eq!(reply.host(), host, "from {source}");
    }
    // The device is bound to one of its candidates only: without Virginia among them, a
    // client in Virginia goes to the nearer of the others.
    let two = meridian_registry::model::Placement::Nearest {
        candidates: match nearest_everywhere() {
            meridian_registry::model::Placement::Nearest { candidates } => {
                candidates.into_iter().take(2).collect()
            }
            _ => unreachable!(),
        },
    };
    stack.place("roamer-1", two).await;
    assert_eq!(bootstrap_from(stack.addr, ip("127.3.0.7"), "roamer-1").await.host(), EU);

    let metrics = Client::connect(stack.addr).await.get("/metrics").await;
    let text = String::from_utf8(metrics.body.to_vec()).expect("text");
    assert!(text.contains(r#"meridian_edge_geo_lookups_total{outcome="found"} 4"#), "{text}");
    stack.stop().await;
}

#[tokio::test]
async fn unlocatable_clients_fall_back_to_the_default_region() {
    let stack = Stack::with(trusting_localhost()).await;
    stack.devices(&[("roamer-1", nearest_everywhere())]).await;
    let mut client = Client::connect(stack.addr).await;
    // Private, shared (CGNAT) and unknown public addresses: the default region, Virginia.
    for forwarded in ["10.1.2.3", "192.168.0.9", "100.64.0.1", "5.5.5.5", "fd00::1"] {
        let reply =
            client.bootstrap(&sdk_form("roamer-1"), &[("x-forwarded-for", forwarded)]).await;
        assert_eq!(reply.host(), NA, "{forwarded}");
    }
    // Public addresses the database knows go to their nearest region.
    for (forwarded, host) in [("81.2.69.160", EU), ("1.0.0.1", ASIA), ("8.8.8.8", NA)] {
        let reply =
            client.bootstrap(&sdk_form("roamer-1"), &[("x-forwarded-for", forwarded)]).await;
        assert_eq!(reply.host(), host, "{forwarded}");
    }
    let metrics = client.get("/metrics").await;
    let text = String::from_utf8(metrics.body.to_vec()).expect("text");
    assert!(text.contains(r#"meridian_edge_geo_lookups_total{outcome="private"} 4"#), "{text}");
    assert!(text.contains(r#"meridian_edge_geo_lookups_total{outcome="unknown"} 1"#), "{text}");
    stack.stop().await;
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    // Trusted: 127.0.0.1 forwards for a client in Shanghai; a spoofed entry further left (the
    // client's own claim) is ignored.
    let stack = Stack::with(trusting_localhost()).await;
    stack.devices(&[("roamer-1", nearest_everywhere())]).await;
    let mut proxy = Client::connect(stack.addr).await;
    let reply = proxy
        .bootstrap(&sdk_form("roamer-1"), &[("x-forwarded-for", "127.1.0.1, 127.2.0.9")])
        .await;
    assert_eq!(reply.host(), ASIA);
    // A peer outside the trusted set is located by its own address.
    let mut direct = Client::connect_from(stack.addr, ip("127.1.0.3")).await;
    let reply = direct.bootstrap(&sdk_form("roamer-1"), &[("x-forwarded-for", "127.2.0.9")]).await;
    assert_eq!(reply.host(), EU);
    stack.stop().await;

    // No trusted proxies (the default): the header is ignored even from 127.0.0.1, which the
    // test database does not place, so the default region answers.
    let stack = Stack::start().await;
    stack.devices(&[("roamer-1", nearest_everywhere())]).await;
    let mut client = Client::connect(stack.addr).await;
    let reply = client.bootstrap(&sdk_form("roamer-1"), &[("x-forwarded-for", "127.2.0.9")]).await;
    assert_eq!(reply.host(), NA);
    stack.stop().await;
}

#[tokio::test]
async fn proxy_protocol_v2_names_the_client() {
    let mut setup = trusting_localhost();
    setup.config.proxy_protocol = true;
    let stack = Stack::with(setup).await;
    stack.devices(&[("roamer-1", nearest_everywhere())]).await;

    // The trusted load balancer at 127.0.0.1 says the client is in Shanghai.
    let reply = behind_proxy(stack.addr, ip("127.0.0.1"), "127.2.0.5:40000").await;
    assert_eq!(reply.host(), ASIA);
    // An untrusted peer's header is read and ignored: it is located by its own address.
    let reply = behind_proxy(stack.addr, ip("127.1.0.5"), "127.2.0.5:40000").await;
    assert_eq!(reply.host(), EU);

    // Without a header the connection is closed unanswered.
    let mut stream = tokio::net::TcpStream::connect(stack.addr).await.expect("connect");
    let form = sdk_form("roamer-1");
    let request = format!(
        "POST /auth/bootstrap HTTP/1.1\r\nHost: edge\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    assert!(response.is_empty(), "{}", String::from_utf8_lossy(&response));
    stack.stop().await;
}

/// Connects from `peer`, sends a PROXY v2 header naming `client`, then bootstraps.
async fn behind_proxy(addr: SocketAddr, peer: IpAddr, client: &str) -> common::Reply {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(peer, 0)).expect("bind");
    let mut stream = socket.connect(addr).await.expect("connect");
    let client: SocketAddr = client.parse().expect("addr");
    let header =
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (client, addr))
            .build()
            .expect("PROXY header");
    stream.write_all(&header).await.expect("write header");
    Client::over(stream, addr).bootstrap(&sdk_form("roamer-1"), &[]).await
}

#[tokio::test]
async fn a_replaced_database_changes_the_answer() {
    let stack = Stack::start().await;
    stack.devices(&[("roamer-1", nearest_everywhere())]).await;
    let db = stack.geo.clone().expect("test database");
    let _watcher = db.spawn_reload_on_change(Duration::from_millis(5)).expect("watcher");
    assert_eq!(bootstrap_from(stack.addr, ip("127.1.0.9"), "roamer-1").await.host(), EU);

    // Operators replace the file atomically; the watcher notices and swaps it in.
    let mut entries = testdb::entries();
    entries.push(Entry::new("127.1.0.0/16", 31.23, 121.47, "CN", "AS", "Shanghai"));
    testdb::write_db(stack.dir().join("city.mmdb"), Layout::DbIpLite, IpVersion::V6, &entries)
        .expect("replacement database");
    // Bounded poll: the watcher runs on its own task at its own pace.
    for _ in 0..2_000 {
        if db.generation() > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(db.generation(), 2, "the watcher reloaded the database");
    assert_eq!(bootstrap_from(stack.addr, ip("127.1.0.9"), "roamer-1").await.host(), ASIA);
    stack.stop().await;
}
