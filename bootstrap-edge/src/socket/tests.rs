use super::*;

const HYPER_400: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nDate: Fri, 04 Dec 2026 18:00:00 GMT\r\n\r\n";
const SERVICE_404: &[u8] =
    b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json;charset=utf-8\r\n\
    Content-Length: 41\r\n\r\n{\"code\":404,\"message\":\"device not found\"}";

#[test]
fn service_answers_pass() {
    assert_eq!(hyper_error_answer(SERVICE_404), None);
    // An empty 200 (a metrics page with nothing in it) and 100 Continue end with a blank line.
    assert_eq!(hyper_error_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), None);
    assert_eq!(hyper_error_answer(b"HTTP/1.1 100 Continue\r\n\r\n"), None);
    // A bodiless error that is the service's own (it has a Content-Type) is left alone.
    let typed = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\r\n";
    assert_eq!(hyper_error_answer(typed), None);
}

#[test]
fn hyper_answers_are_found_at_the_tail() {
    assert_eq!(hyper_error_answer(HYPER_400), Some((0, Rejection::MalformedRequest)));
    let too_large = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(hyper_error_answer(too_large), Some((0, Rejection::HeadTooLarge)));
    let uri = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n";
    assert_eq!(hyper_error_answer(uri), Some((0, Rejection::UriTooLong)));
    // Behind a previous answer still being flushed: that one goes out unchanged.
    let both = [SERVICE_404, HYPER_400].concat();
    assert_eq!(hyper_error_answer(&both), Some((SERVICE_404.len(), Rejection::MalformedRequest)));
}

#[test]
fn the_substitute_is_json_in_the_sdks_framing() {
    let wire = Rejection::HeadTooLarge.into_wire();
    let (reply, used) = crate::sdk::parse(&wire).expect("SDK framing").expect("complete");
    assert_eq!(used, wire.len());
    assert_eq!(reply.status, 431);
    assert_eq!(reply.header("Connection"), Some("close"));
    assert_eq!(reply.body, br#"{"code":431,"message":"request header fields too large"}"#);
}
