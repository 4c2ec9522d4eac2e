//! The exact bytes the vendor C SDK sends and parses. Its HTTP client reads a status line,
//! header lines of under 128 bytes each and a `Content-Length` body (no chunked decoding),
//! then finds `"host"` and `"port"` by key search in compact JSON (SPEC §4).

mod common;

use common::{PK, Stack, sdk_form, specified};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the SDK's core HTTP client puts on the wire: the Host header has no port.
fn sdk_request(form: &str) -> String {
    format!(
        "POST /auth/bootstrap HTTP/1.1\r\nHost: iot-auth-global.aliyuncs.com\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    )
}

/// Reads one response: head up to the blank line, then exactly `Content-Length` body bytes.
async fn read_response(stream: &mut TcpStream) -> (Vec<String>, Vec<u8>) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("ASCII head");
    let lines: Vec<String> =
        head.trim_end_matches("\r\n").split("\r\n").map(str::to_owned).collect();
    let length: usize = lines
        .iter()
        .find_map(|line| line.strip_prefix("content-length: "))
        .expect("Content-Length is always set")
        .parse()
        .expect("numeric length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.expect("body");
    (lines, body)
}

#[tokio::test]
async fn the_c_sdk_exchange_byte_for_byte() {
    let stack = Stack::start().await;
    stack.devices(&[("bootstrap_posix_demo", specified("iot-fra-1"))]).await;
    let mut stream = TcpStream::connect(stack.addr).await.expect("connect");

    stream
        .write_all(sdk_request(&sdk_form("bootstrap_posix_demo")).as_bytes())
        .await
        .expect("write");
    let (lines, body) = read_response(&mut stream).await;

    let expected_body =
        br#"{"code":200,"data":{"resources":{"mqtt":{"host":"fra.mqtt.example","port":1883}}},"message":"success"}"#;
    assert_eq!(String::from_utf8_lossy(&body), String::from_utf8_lossy(expected_body));
    assert_eq!(lines[0], "HTTP/1.1 200 OK");
    assert_eq!(lines[1], "content-type: application/json;charset=utf-8");
    assert_eq!(lines[2], format!("content-length: {}", expected_body.len()));
    assert!(lines[3].starts_with("date: ") && lines[3].ends_with(" GMT"), "{}", lines[3]);
    assert_eq!(lines.len(), 4, "no other header lines: {lines:?}");
    for line in &lines {
        assert!(line.len() + 2 < 128, "header line of {} bytes: {line}", line.len() + 2);
    }
    // Only the endpoint's keys are named like the ones the SDK searches for.
    let text = String::from_utf8_lossy(&body);
    assert_eq!(text.matches("\"host\"").count(), 1);
    assert_eq!(text.matches("\"port\"").count(), 1);
    assert!(!text.contains("\"ip\""));
    assert!(!text.contains(' '), "compact JSON");

    // Keep-alive: a second request on the same socket, then an error in the same framing.
    stream
        .write_all(sdk_request(&sdk_form("bootstrap_posix_demo")).as_bytes())
        .await
        .expect("write");
    let (again, body) = read_response(&mut stream).await;
    assert_eq!(again[0], "HTTP/1.1 200 OK");
    assert_eq!(body, expected_body);

    stream
        .write_all(sdk_request(&format!("productKey={PK}&deviceName=nobody-1")).as_bytes())
        .await
        .expect("write");
    let (lines, body) = read_response(&mut stream).await;
    assert_eq!(lines[0], "HTTP/1.1 404 Not Found");
    assert_eq!(body, br#"{"code":404,"message":"device not found"}"#);
    for line in &lines {
        assert!(line.len() + 2 < 128, "{line}");
    }
    stack.stop().await;
}
