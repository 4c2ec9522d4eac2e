//! The exact bytes the vendor C SDK sends, and its replies read the way the SDK reads them
//! ([`meridian_edge::sdk`]): status line starting `HTTP/1.1 `, header names matched
//! case-sensitively (`Content-Length: `), each header line under 128 bytes with its CRLF, a
//! `Content-Length` body, only 200 a success, `"host"`/`"port"` found by key search in compact
//! JSON (PROTOCOL §4). Every answer a device can provoke is checked here, errors included: the SDK
//! must be able to frame each one, or it stops at its first step.

mod common;

use std::time::Duration;

use common::{Client, PK, Reply, Setup, Stack, sdk_form, specified};
use meridian_edge::RateLimitConfig;
use meridian_edge::sdk::{SdkEndpoint, SdkError};

/// The C SDK 4.1.0's request head, byte for byte (PROTOCOL §4); it sends the body in a second
/// write.
fn sdk_head(form: &str) -> String {
    format!(
        "POST /auth/bootstrap HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Accept: text/xml,text/javascript,text/html,application/json\r\n\
         Content-Type: application/x-www-form-urlencoded;charset=utf-8\r\n\
         Content-Length: {}\r\n\r\n",
        form.len()
    )
}

/// Head and body in two writes, as the SDK sends them.
async fn sdk_bootstrap(client: &mut Client, form: &str) -> Reply {
    client.raw_parts(&[sdk_head(form).as_bytes(), form.as_bytes()]).await
}

/// What every reply must look like for the SDK beyond framing: header names in the case it
/// matches, nothing else named like what its key search looks for.
fn assert_sdk_shape(reply: &Reply) {
    assert!(reply.sdk.status_line.starts_with("HTTP/1.1 "), "{}", reply.sdk.status_line);
    assert_eq!(reply.sdk.header("Content-Length"), Some(reply.body.len().to_string().as_str()));
    assert_eq!(reply.sdk.header("Content-Type"), Some("application/json;charset=utf-8"));
    for line in &reply.sdk.header_lines {
        let name = line.split_once(": ").map_or("", |(name, _)| name);
        let title_case =
            name.split('-').all(|word| word.starts_with(|c: char| c.is_ascii_uppercase()));
        assert!(title_case, "header name not in the SDK's case: {line}");
        assert!(line.len() + 2 < 128, "header line of {} bytes: {line}", line.len() + 2);
    }
    let text = String::from_utf8_lossy(&reply.body);
    assert!(!text.contains(": ") && !text.contains(", "), "compact JSON: {text}");
    for key in ["\"host\"", "\"port\"", "\"ip\""] {
        let expected = usize::from(reply.status == 200 && key != "\"ip\"");
        assert_eq!(text.matches(key).count(), expected, "{key} in {text}");
    }
}

#[tokio::test]
async fn the_c_sdk_exchange_byte_for_byte() {
    let stack = Stack::start().await;
    stack.devices(&[("bootstrap_posix_demo", specified("iot-fra-1"))]).await;
    let mut client = Client::connect(stack.addr).await;

    let reply = sdk_bootstrap(&mut client, &sdk_form("bootstrap_posix_demo")).await;
    let expected_body =
        br#"{"code":200,"data":{"resources":{"mqtt":{"host":"fra.mqtt.example","port":1883}}},"message":"success"}"#;
    assert_eq!(String::from_utf8_lossy(&reply.body), String::from_utf8_lossy(expected_body));
    assert_eq!(
        reply.sdk.endpoint(),
        Ok(SdkEndpoint { host: "fra.mqtt.example".into(), port: 1883, ip: None })
    );
    assert_eq!(reply.sdk.status_line, "HTTP/1.1 200 OK");
    let lines = &reply.sdk.header_lines;
    assert_eq!(lines[0], "Content-Type: application/json;charset=utf-8");
    assert_eq!(lines[1], format!("Content-Length: {}", expected_body.len()));
    assert!(lines[2].starts_with("Date: ") && lines[2].ends_with(" GMT"), "{}", lines[2]);
    assert_eq!(lines.len(), 3, "no other header lines: {lines:?}");
    assert_sdk_shape(&reply);

    // Keep-alive: the SDK keeps the connection until its next bootstrap.
    let again = sdk_bootstrap(&mut client, &sdk_form("bootstrap_posix_demo")).await;
    assert_eq!(again.sdk.status_line, "HTTP/1.1 200 OK");
    assert_eq!(again.body, &expected_body[..]);

    // An unknown device: framed the same way, and a failure to the SDK.
    let unknown = sdk_bootstrap(&mut client, &format!("productKey={PK}&deviceName=nobody-1")).await;
    assert_eq!(unknown.sdk.status_line, "HTTP/1.1 404 Not Found");
    assert_eq!(unknown.body, &br#"{"code":404,"message":"device not found"}"#[..]);
    assert_eq!(unknown.sdk.endpoint(), Err(SdkError::Status(404)));
    assert_sdk_shape(&unknown);
    stack.stop().await;
}

/// Every rejection the edge answers itself: each one framed so the SDK reads it (and reads it
/// as a failure), none with a lower-case header name.
#[tokio::test]
async fn every_rejection_is_framed_for_the_sdk() {
    let mut setup = Setup::default();
    setup.config.max_body_bytes = 64;
    setup.config.body_read_timeout = Duration::from_millis(100);
    let stack = Stack::with(setup).await;
    let mut client = Client::connect(stack.addr).await;
    let mut replies = vec![
        client.raw(b"GET /auth/bootstrap HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await,
        client.raw(b"GET /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await,
        client.raw(b"GET /auth/bootstrap/regionId/1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await,
        client.raw(b"GET /auth/bootstrap/regionId/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await,
        client.raw(b"POST /auth/bootstrap/regionId/0 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n").await,
        sdk_bootstrap(&mut client, "deviceName=lamp-1").await,
        sdk_bootstrap(&mut client, "productKey=short&deviceName=lamp-1").await,
        client.raw(b"POST /auth/bootstrap HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}").await,
    ];
    let big = format!("{}&padding={}", sdk_form("lamp-1"), "x".repeat(100));
    replies
        .push(common::raw_reply(stack.addr, format!("{}{big}", sdk_head(&big)).as_bytes()).await);
    // A body that never completes: 408.
    let short = sdk_head(&"x".repeat(40));
    replies.push(common::raw_reply(stack.addr, short.as_bytes()).await);
    let statuses: Vec<u16> = replies.iter().map(|reply| reply.status.as_u16()).collect();
    assert_eq!(statuses, [405, 404, 404, 400, 405, 400, 400, 415, 413, 408]);
    for reply in &replies {
        assert_sdk_shape(reply);
        reply.error();
        assert_eq!(reply.sdk.endpoint(), Err(SdkError::Status(reply.status.as_u16())));
    }
    assert_eq!(replies[0].sdk.header("Allow"), Some("POST"));
    assert_eq!(replies[8].sdk.header("Connection"), Some("close"));
    stack.stop().await;

    // 429, with its Retry-After.
    let mut setup = Setup::default();
    setup.config.rate_limit = RateLimitConfig { enabled: true, per_second: 1, burst: 1 };
    let stack = Stack::with(setup).await;
    let mut client = Client::connect(stack.addr).await;
    sdk_bootstrap(&mut client, &sdk_form("nobody-1")).await;
    let limited = sdk_bootstrap(&mut client, &sdk_form("nobody-1")).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.sdk.header("Retry-After"), Some("1"));
    assert_sdk_shape(&limited);
    stack.stop().await;
}

/// The SDK never sends HTTP/1.0, but a client that does still gets a reply the SDK's framing
/// rules hold for, except that hyper answers an HTTP/1.0 client in its own version (RFC 9110
/// §6.2 allows either) and then closes, as HTTP/1.0 without keep-alive means.
#[tokio::test]
async fn http_1_0_clients_get_a_framed_json_reply() {
    let stack = Stack::start().await;
    stack.devices(&[("lamp-1", specified("iot-sh-1"))]).await;
    let form = sdk_form("lamp-1");
    let request = format!(
        "POST /auth/bootstrap HTTP/1.0\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    let mut stream = tokio::net::TcpStream::connect(stack.addr).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.expect("write");
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut bytes).await.expect("closed");
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
    assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())), "{head}");
    assert!(body.contains(r#""host":"sh.mqtt.example","port":1883"#), "{body}");
    stack.stop().await;
}

/// Requests hyper cannot parse never reach the service; hyper's own answer to them has no body.
/// The edge answers them like every other error (PROTOCOL §4): a JSON body with the numeric `code`
/// and a `message`, framed for the SDK, then closes the connection.
#[tokio::test]
async fn unparseable_requests_get_json_errors() {
    let stack = Stack::start().await;
    stack.devices(&[("lamp-1", specified("iot-sh-1"))]).await;
    let oversized = format!(
        "POST /auth/bootstrap HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    let cases: [(&[u8], u16, &str); 6] = [
        (b"GARBAGE\r\n\r\n", 400, "malformed HTTP request"),
        (
            b"GET /auth/bootstrap/regionId/0 HTTP/9.9\r\nHost: edge\r\n\r\n",
            400,
            "malformed HTTP request",
        ),
        (
            b"GET /auth/bootstrap/regionId/0 HTTP/1.1\r\nHost edge\r\n\r\n",
            400,
            "malformed HTTP request",
        ),
        (
            b"GET /auth/bootstrap/regionId/0 HTTP/1.1\r\nHost: e\x01dge\r\n\r\n",
            400,
            "malformed HTTP request",
        ),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "malformed HTTP request"),
        (oversized.as_bytes(), 431, "request header fields too large"),
    ];
    for (request, status, message) in cases {
        let mut client = Client::connect(stack.addr).await;
        let reply = client.raw(request).await;
        let shown = String::from_utf8_lossy(&request[..request.len().min(40)]).into_owned();
        assert_eq!(reply.error(), (u64::from(status), message.to_owned()), "{shown}");
        assert_eq!(reply.sdk.header("Connection"), Some("close"), "{shown}");
        assert_sdk_shape(&reply);
        assert!(client.rest().await.is_empty(), "closed after the answer: {shown}");
    }

    // After a good request on the same connection, and pipelined behind one in the same write.
    let form = sdk_form("lamp-1");
    let good = format!("{}{form}", sdk_head(&form));
    let mut client = Client::connect(stack.addr).await;
    assert_eq!(client.raw(good.as_bytes()).await.host(), "sh.mqtt.example");
    assert_eq!(client.raw(b"GARBAGE\r\n\r\n").await.error().0, 400);
    let mut client = Client::connect(stack.addr).await;
    let pipelined = [good.as_bytes(), b"GARBAGE\r\n\r\n"].concat();
    assert_eq!(client.raw(&pipelined).await.host(), "sh.mqtt.example");
    let second = client.reply().await;
    assert_eq!(second.error(), (400, "malformed HTTP request".to_owned()));
    assert!(client.rest().await.is_empty());

    let metrics = Client::connect(stack.addr).await.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(text.contains(r#"meridian_edge_requests_total{result="bad_request"} 7"#), "{text}");
    assert!(text.contains(r#"meridian_edge_requests_total{result="too_large"} 1"#), "{text}");
    stack.stop().await;
}
