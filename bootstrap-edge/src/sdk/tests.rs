use super::*;

const OK_BODY: &str = r#"{"code":200,"data":{"resources":{"mqtt":{"host":"mqtt.example","port":1883}}},"message":"success"}"#;

fn reply(head: &str, body: &str) -> Vec<u8> {
    format!("{head}\r\n\r\n{body}").into_bytes()
}

fn ok_head(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json;charset=utf-8\r\nContent-Length: {}",
        body.len()
    )
}

#[test]
fn reads_the_vendor_reply() {
    let bytes = reply(&ok_head(OK_BODY), OK_BODY);
    let (parsed, used) = parse(&bytes).expect("valid").expect("complete");
    assert_eq!(used, bytes.len());
    assert_eq!(parsed.status, 200);
    assert_eq!(parsed.header("Content-Type"), Some("application/json;charset=utf-8"));
    assert_eq!(
        parsed.endpoint(),
        Ok(SdkEndpoint { host: "mqtt.example".into(), port: 1883, ip: None })
    );
}

#[test]
fn incomplete_replies_ask_for_more() {
    let bytes = reply(&ok_head(OK_BODY), OK_BODY);
    for cut in [0, 5, 20, bytes.len() - 1] {
        assert_eq!(parse(&bytes[..cut]), Ok(None), "cut at {cut}");
    }
}

#[test]
fn lower_case_length_is_the_sdks_0x0412() {
    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}", OK_BODY.len());
    assert!(matches!(parse(&reply(&head, OK_BODY)), Err(SdkError::NoContentLength(_))));
    let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked";
    assert!(matches!(parse(&reply(chunked, "")), Err(SdkError::NoContentLength(_))));
}

#[test]
fn only_http_1_1_status_lines() {
    for line in ["HTTP/1.0 200 OK", "http/1.1 200 OK", "HTTP/1.1  200 OK", "HTTP/1.1 20x OK"] {
        let head = format!("{line}\r\nContent-Length: 0");
        assert!(matches!(parse(&reply(&head, "")), Err(SdkError::StatusLine(_))), "{line}");
    }
}

#[test]
fn lines_of_128_bytes_fail() {
    // 125 bytes + CRLF = 127: fine. 126 + CRLF = 128: the SDK's -0x0409.
    let fits = format!("X-Pad: {}", "a".repeat(125 - 7));
    let head = format!("HTTP/1.1 200 OK\r\n{fits}\r\nContent-Length: 0");
    assert!(parse(&reply(&head, "")).expect("fits").is_some());
    let long = format!("X-Pad: {}", "a".repeat(126 - 7));
    let head = format!("HTTP/1.1 200 OK\r\n{long}\r\nContent-Length: 0");
    assert!(matches!(parse(&reply(&head, "")), Err(SdkError::LineTooLong(128, _))));
    // Also before the line ends.
    let unfinished = format!("HTTP/1.1 200 OK\r\n{}", "a".repeat(200));
    assert!(matches!(parse(unfinished.as_bytes()), Err(SdkError::LineTooLong(..))));
}

#[test]
fn only_200_is_a_success() {
    let body = r#"{"code":200,"host":"x","port":1}"#;
    let head = format!("HTTP/1.1 404 Not Found\r\nContent-Length: {}", body.len());
    let (parsed, _) = parse(&reply(&head, body)).expect("framed").expect("complete");
    assert_eq!(parsed.endpoint(), Err(SdkError::Status(404)));
}

#[test]
fn key_search_takes_the_first_key_and_needs_compact_json() {
    let first = r#"{"data":{"host":"first","port":"8883"},"host":"second","port":1}"#;
    let (parsed, _) = parse(&reply(&ok_head(first), first)).expect("framed").expect("complete");
    assert_eq!(parsed.endpoint(), Ok(SdkEndpoint { host: "first".into(), port: 8883, ip: None }));
    for (body, key) in [
        (r#"{"host": "x","port":1}"#, "host"),
        (r#"{"host":"x","port": 1}"#, "port"),
        (r#"{"host":"x"}"#, "port"),
        (r#"{"host":"x","port":1,"ip":"not-v4"}"#, "ip"),
    ] {
        let (parsed, _) = parse(&reply(&ok_head(body), body)).expect("framed").expect("complete");
        let error = parsed.endpoint().expect_err(body);
        assert!(
            error == SdkError::BadValue(key) || error == SdkError::MissingKey(key),
            "{body}: {error}"
        );
    }
    let with_ip = r#"{"host":"x","port":1,"ip":"192.0.2.1"}"#;
    let (parsed, _) = parse(&reply(&ok_head(with_ip), with_ip)).expect("framed").expect("complete");
    assert_eq!(parsed.endpoint().expect("ip").ip, Some(Ipv4Addr::new(192, 0, 2, 1)));
}
