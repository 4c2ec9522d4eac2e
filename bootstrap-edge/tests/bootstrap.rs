//! Every answer of the bootstrap endpoint over real HTTP: success, each rejection, the
//! region-pinned variant, keep-alive, slow clients, rate limiting and metrics.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Client, PK, Setup, Stack, sdk_form, specified};
use http::{Request, StatusCode};
use http_body_util::Full;
use meridian_edge::RateLimitConfig;
use meridian_registry::clock::Timestamp;
use meridian_registry::model::{
    Account, AccountKind, Edition, Instance, MqttEndpoint, Placement, Region,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn answers_each_placement_with_its_endpoint_on_one_connection() {
    let stack = Stack::start().await;
    stack.devices(&[("lamp-home", Placement::Home), ("lamp-fra", specified("iot-fra-1"))]).await;
    let mut client = Client::connect(stack.addr).await;

    let home = client.bootstrap(&sdk_form("lamp-home"), &[]).await;
    assert_eq!(home.host(), "sh.mqtt.example");
    assert_eq!(home.json()["data"]["resources"]["mqtt"]["port"], 1883);
    assert_eq!(home.json()["message"], "success");
    assert_eq!(home.sdk.header("Content-Type"), Some("application/json;charset=utf-8"));
    assert_eq!(home.sdk.header("Content-Length"), Some(home.body.len().to_string().as_str()));
    assert!(home.headers.get("transfer-encoding").is_none());

    // Keep-alive: the same connection answers again.
    let fra = client.bootstrap(&sdk_form("lamp-fra"), &[]).await;
    assert_eq!(fra.host(), "fra.mqtt.example");

    // Optional fields may be absent, and a charset parameter is fine.
    let minimal = client
        .bootstrap(
            &format!("productKey={PK}&deviceName=lamp-home"),
            &[("content-type", "application/x-www-form-urlencoded;charset=utf-8")],
        )
        .await;
    assert_eq!(minimal.host(), "sh.mqtt.example");
    stack.stop().await;
}

#[tokio::test]
async fn unknown_and_unplaced_devices_get_the_same_404() {
    let stack = Stack::start().await;
    stack.devices(&[("lamp-lost", specified("iot-fra-1"))]).await;
    stack.registry.store().delete("instances/iot-fra-1").await.expect("delete instance");
    stack.sync().await;
    let mut client = Client::connect(stack.addr).await;

    let unknown = client.bootstrap(&sdk_form("nobody-here"), &[]).await;
    let unplaced = client.bootstrap(&sdk_form("lamp-lost"), &[]).await;
    let unknown_product =
        client.bootstrap("productKey=zzzzzzzzzzz&deviceName=nobody-here", &[]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.error(), (404, "device not found".to_owned()));
    for other in [&unplaced, &unknown_product] {
        assert_eq!(other.status, unknown.status);
        assert_eq!(other.body, unknown.body, "byte-identical bodies");
    }
    stack.stop().await;
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let stack = Stack::start().await;
    let mut client = Client::connect(stack.addr).await;

    let missing = client.bootstrap("deviceName=lamp-1", &[]).await;
    assert_eq!(missing.error(), (400, "missing parameter productKey".to_owned()));
    let empty = client.bootstrap(&format!("productKey={PK}&deviceName="), &[]).await;
    assert_eq!(empty.error(), (400, "missing parameter deviceName".to_owned()));
    let invalid = client.bootstrap("productKey=short&deviceName=lamp-1", &[]).await;
    assert_eq!(invalid.error(), (400, "invalid parameter productKey".to_owned()));
    let duplicate =
        client.bootstrap(&format!("productKey={PK}&productKey={PK}&deviceName=lamp-1"), &[]).await;
    assert_eq!(duplicate.error(), (400, "malformed form body".to_owned()));

    let json = client.bootstrap("{}", &[("content-type", "application/json")]).await;
    assert_eq!(json.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    json.error();

    let get = client.get("/auth/bootstrap").await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get.headers["allow"], "POST");
    get.error();

    for path in ["/", "/auth", "/auth/bootstrap/", "/index.html"] {
        let reply = client.get(path).await;
        assert_eq!(reply.error(), (404, "not found".to_owned()), "{path}");
    }
    stack.stop().await;
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let stack = Stack::start().await;
    let cap = stack_cap();
    let big = format!("{}&padding={}", sdk_form("lamp-1"), "x".repeat(cap));

    // Announced in Content-Length: refused before reading.
    let reply = Client::connect(stack.addr).await.bootstrap(&big, &[]).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.headers["connection"], "close");
    reply.error();

    // Chunked, so only counting reveals it.
    let chunked = format!(
        "POST /auth/bootstrap HTTP/1.1\r\nHost: edge\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let reply = common::raw_reply(stack.addr, chunked.as_bytes()).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    reply.error();
    stack.stop().await;
}

fn stack_cap() -> usize {
    meridian_edge::EdgeConfig::default().max_body_bytes
}

#[tokio::test]
async fn region_pinned_bootstrap_answers_the_regions_public_endpoint() {
    let stack = Stack::start().await;
    let mut client = Client::connect(stack.addr).await;
    // Vendor numbering: 0 Shanghai, 3 Virginia, 4 Frankfurt.
    assert_eq!(client.get("/auth/bootstrap/regionId/0").await.host(), "sh.mqtt.example");
    assert_eq!(client.get("/auth/bootstrap/regionId/3").await.host(), "va.mqtt.example");
    assert_eq!(client.get("/auth/bootstrap/regionId/4").await.host(), "fra.mqtt.example");

    // Singapore is numbered but not deployed here; 99 is not numbered.
    for path in ["/auth/bootstrap/regionId/1", "/auth/bootstrap/regionId/99"] {
        assert_eq!(client.get(path).await.error(), (404, "unknown region".to_owned()), "{path}");
    }
    for path in
        ["/auth/bootstrap/regionId/x", "/auth/bootstrap/regionId/-1", "/auth/bootstrap/regionId/"]
    {
        assert_eq!(client.get(path).await.status, StatusCode::BAD_REQUEST, "{path}");
    }
    let request = Request::post("/auth/bootstrap/regionId/0")
        .header("host", "edge")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let wrong = client.send(request).await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.headers["allow"], "GET");
    stack.stop().await;
}

/// The hijack of the security issue: an account created an instance `aaa-evil` in Shanghai
/// (sorting before the platform's) with its own host, and the region-pinned route sent every
/// device asking for region 0 there. Only the operator's endpoint for the region is answered,
/// whoever owns instances in it.
#[tokio::test]
async fn region_pinned_bootstrap_never_answers_a_tenants_instance() {
    let stack = Stack::start().await;
    let evil = Account {
        id: "evil".parse().expect("id"),
        name: "Evil".into(),
        kind: AccountKind::Individual,
        verified_entity: None,
        organisation: None,
        organisation_admin: false,
        created_at: Timestamp(1_800_000_000_000),
    };
    stack.registry.create_account(evil).await.expect("account");
    for (id, region) in [("aaa-evil", "cn-shanghai"), ("aaa-evil-us", "us-west-1")] {
        stack
            .registry
            .put_region(Region {
                id: "us-west-1".parse().expect("region"),
                display_name: "US (Silicon Valley)".into(),
                latitude: 37.4,
                longitude: -122.1,
                bias_km: 0.0,
                public_endpoint: None,
            })
            .await
            .expect("region");
        stack
            .registry
            .create_instance(Instance {
                id: id.parse().expect("instance id"),
                region: region.parse().expect("region"),
                owner: "evil".parse().expect("id"),
                edition: Edition::Public,
                endpoint: MqttEndpoint {
                    host: "evil.example".into(),
                    tcp_port: 1883,
                    tls_port: None,
                },
                created_at: Timestamp(1_800_000_000_000),
                expires_at: Timestamp(1_900_000_000_000),
            })
            .await
            .expect("instance");
    }
    stack.sync().await;
    let mut client = Client::connect(stack.addr).await;
    assert_eq!(client.get("/auth/bootstrap/regionId/0").await.host(), "sh.mqtt.example");
    // Silicon Valley (5) has only the tenant's instance and no configured endpoint.
    let reply = client.get("/auth/bootstrap/regionId/5").await;
    assert_eq!(reply.error(), (404, "unknown region".to_owned()));
    stack.stop().await;
}

#[tokio::test]
async fn slow_clients_time_out() {
    let mut setup = Setup::default();
    setup.config.header_read_timeout = Duration::from_millis(200);
    setup.config.body_read_timeout = Duration::from_millis(200);
    let stack = Stack::with(setup).await;

    // Half a request head, then nothing: the edge closes the connection.
    let mut stream = TcpStream::connect(stack.addr).await.expect("connect");
    stream.write_all(b"POST /auth/bootstrap HTTP/1.1\r\nHost: ed").await.expect("write");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("the edge closes");
    assert!(rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"), "{rest:?}");

    // A complete head, then only part of the promised body: 408, connection closed.
    let mut client = Client::connect(stack.addr).await;
    let reply = client
        .raw(
            b"POST /auth/bootstrap HTTP/1.1\r\nHost: edge\r\n\
              Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nproduct",
        )
        .await;
    assert_eq!(reply.error(), (408, "request body timed out".to_owned()));
    assert!(client.rest().await.is_empty(), "the edge answers and closes");
    stack.stop().await;
}

#[tokio::test]
async fn each_client_address_is_rate_limited() {
    let mut setup = Setup::default();
    setup.config.rate_limit = RateLimitConfig { enabled: true, per_second: 1, burst: 2 };
    let stack = Stack::with(setup).await;
    stack.devices(&[("lamp-1", Placement::Home)]).await;
    let mut client = Client::connect(stack.addr).await;
    for _ in 0..2 {
        assert_eq!(client.bootstrap(&sdk_form("lamp-1"), &[]).await.status, StatusCode::OK);
    }
    let limited = client.bootstrap(&sdk_form("lamp-1"), &[]).await;
    assert_eq!(limited.error(), (429, "too many requests".to_owned()));
    assert_eq!(limited.headers["retry-after"], "1");

    // Another address has its own bucket.
    let other = common::bootstrap_from(stack.addr, [127, 0, 0, 2].into(), "lamp-1").await;
    assert_eq!(other.status, StatusCode::OK);
    stack.stop().await;
}

#[tokio::test]
async fn metrics_are_rendered_when_the_process_hands_over_its_handle() {
    let stack = Stack::start().await;
    stack.devices(&[("lamp-1", Placement::Home)]).await;
    let mut client = Client::connect(stack.addr).await;
    client.bootstrap(&sdk_form("lamp-1"), &[]).await;
    client.bootstrap(&sdk_form("nobody-1"), &[]).await;

    let metrics = client.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = String::from_utf8(metrics.body.to_vec()).expect("text");
    assert!(text.contains(r#"meridian_edge_requests_total{result="ok"} 1"#), "{text}");
    assert!(text.contains(r#"meridian_edge_requests_total{result="unknown_device"} 1"#), "{text}");
    assert!(text.contains("meridian_edge_routing_devices 1"), "{text}");
    assert!(text.contains("meridian_edge_request_duration_seconds"), "{text}");
    stack.stop().await;

    let stack = Stack::with(Setup { metrics: false, ..Setup::default() }).await;
    let reply = Client::connect(stack.addr).await.get("/metrics").await;
    assert_eq!(reply.error(), (404, "not found".to_owned()));
    stack.stop().await;
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections() {
    let stack = Stack::start().await;
    let mut client = Client::connect(stack.addr).await;
    let reply = client.raw(b"GET /auth/bootstrap/regionId/0 HTTP/1.1\r\nHost: edge\r\n\r\n").await;
    assert_eq!(reply.status, StatusCode::OK);
    // Returns only once every connection, this idle one included, is closed.
    stack.stop().await;
    assert!(client.rest().await.is_empty(), "closed by the edge");
}
