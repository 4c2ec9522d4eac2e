//! What the edge answers: the success body devices parse, and one typed rejection per failure.
//!
//! The vendor C SDK finds `"host"`, `"port"` and `"ip"` by key search in compact JSON and cannot
//! read chunked bodies (PROTOCOL §4), so every answer is compact JSON with a `Content-Length`, no
//! other key is named `host`, `port` or `ip`, and every header line stays well under 128 bytes.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::Full;
use meridian_registry::model::MqttEndpoint;
use serde::Serialize;

use crate::metrics::Outcome;

/// The vendor's content type, byte for byte.
pub(crate) const JSON: HeaderValue = HeaderValue::from_static("application/json;charset=utf-8");

/// The complete `200` body naming `endpoint`:
/// `{"code":200,"data":{"resources":{"mqtt":{"host":"…","port":1883}}},"message":"success"}`.
///
/// The port is the plain-TCP one: the SDK's bootstrap flow connects with `securemode=3` unless
/// built for TLS, and the vendor answers 1883 too.
pub(crate) fn endpoint(endpoint: &MqttEndpoint) -> Bytes {
    #[derive(Serialize)]
    struct Body<'a> {
        code: u16,
        data: Data<'a>,
        message: &'static str,
    }
    #[derive(Serialize)]
    struct Data<'a> {
        resources: Resources<'a>,
    }
    #[derive(Serialize)]
    struct Resources<'a> {
        mqtt: Mqtt<'a>,
    }
    #[derive(Serialize)]
    struct Mqtt<'a> {
        host: &'a str,
        port: u16,
    }
    let body = Body {
        code: 200,
        data: Data {
            resources: Resources { mqtt: Mqtt { host: &endpoint.host, port: endpoint.tcp_port } },
        },
        message: "success",
    };
    // Structs of strings and integers always serialise.
    Bytes::from(serde_json::to_vec(&body).expect("plain structs serialise to JSON"))
}

/// Why a request gets no endpoint. The `Display` text is the `message` the client sees, so it
/// says what was wrong with the request and nothing about the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The device does not exist, or exists without a usable placement (indistinguishable on
    /// purpose, PROTOCOL §9).
    #[error("device not found")]
    UnknownDevice,
    /// `regionId/{n}` names no region with a configured public endpoint.
    #[error("unknown region")]
    UnknownRegion,
    /// `regionId/{n}` is not a small decimal number.
    #[error("regionId must be a decimal number")]
    BadRegionId,
    /// A required form field is absent or empty.
    #[error("missing parameter {0}")]
    MissingParameter(&'static str),
    /// A form field is present but not a valid identifier.
    #[error("invalid parameter {0}")]
    InvalidParameter(&'static str),
    /// The body is not a form: not UTF-8, or a field given twice.
    #[error("malformed form body")]
    MalformedBody,
    /// The body is larger than the configured cap.
    #[error("request body too large")]
    BodyTooLarge,
    /// The body did not arrive within the configured time.
    #[error("request body timed out")]
    BodyTimeout,
    /// The body could not be read (the client broke the connection or the framing).
    #[error("request body could not be read")]
    BodyUnreadable,
    /// `POST /auth/bootstrap` without a form content type.
    #[error("content type must be application/x-www-form-urlencoded")]
    UnsupportedMediaType,
    /// The path exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The method the path accepts.
        allow: &'static str,
    },
    /// No such path.
    #[error("not found")]
    NotFound,
    /// The request line or a header is not HTTP (hyper could not parse the head).
    #[error("malformed HTTP request")]
    MalformedRequest,
    /// The request head is larger than the edge reads.
    #[error("request header fields too large")]
    HeadTooLarge,
    /// The request target is longer than the edge reads.
    #[error("request URI too long")]
    UriTooLong,
    /// This client address sent too many requests.
    #[error("too many requests")]
    RateLimited {
        /// When the next request would be accepted.
        retry_after: Duration,
    },
}

impl Rejection {
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownDevice | Self::UnknownRegion | Self::NotFound => StatusCode::NOT_FOUND,
            Self::BadRegionId
            | Self::MissingParameter(_)
            | Self::InvalidParameter(_)
            | Self::MalformedBody
            | Self::BodyUnreadable
            | Self::MalformedRequest => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub(crate) fn outcome(&self) -> Outcome {
        match self {
            Self::UnknownDevice => Outcome::UnknownDevice,
            Self::UnknownRegion => Outcome::UnknownRegion,
            Self::BadRegionId
            | Self::MissingParameter(_)
            | Self::InvalidParameter(_)
            | Self::MalformedBody
            | Self::BodyUnreadable
            | Self::MalformedRequest
            | Self::UriTooLong => Outcome::BadRequest,
            Self::BodyTooLarge | Self::HeadTooLarge => Outcome::TooLarge,
            Self::BodyTimeout => Outcome::Timeout,
            Self::UnsupportedMediaType => Outcome::UnsupportedMediaType,
            Self::MethodNotAllowed { .. } => Outcome::MethodNotAllowed,
            Self::NotFound => Outcome::NotFound,
            Self::RateLimited { .. } => Outcome::RateLimited,
        }
    }

    /// `{"code":<status>,"message":"…"}` with the status, plus the headers the status calls
    /// for.
    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = json(self.status(), Bytes::from(self.body()));
        let headers = response.headers_mut();
        match self {
            Self::MethodNotAllowed { allow } => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            Self::RateLimited { retry_after } => {
                // Whole seconds, rounded up: `Retry-After: 0` would invite an instant retry.
                let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
            }
            // The rest of the request may still be in flight: the connection cannot be reused.
            Self::BodyTooLarge
            | Self::BodyTimeout
            | Self::BodyUnreadable
            | Self::MalformedRequest
            | Self::HeadTooLarge
            | Self::UriTooLong => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl Rejection {
    /// `{"code":<status>,"message":"…"}`.
    fn body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body {
            code: u16,
            message: String,
        }
        let body = Body { code: self.status().as_u16(), message: self.to_string() };
        // A struct of an integer and a string always serialises.
        serde_json::to_vec(&body).expect("plain structs serialise to JSON")
    }

    /// The whole response on the wire, for the answers written in hyper's place when it could
    /// not parse the request ([`crate::socket`]): the head as hyper writes the others (PROTOCOL §4:
    /// `HTTP/1.1 `, the SDK's header case), then the body; the connection closes after it.
    pub(crate) fn into_wire(self) -> Vec<u8> {
        let status = self.status();
        let body = self.body();
        let mut wire = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or(""),
            // `JSON` is a static ASCII value.
            JSON.to_str().unwrap_or("application/json"),
            body.len()
        )
        .into_bytes();
        wire.extend_from_slice(&body);
        wire
    }
}

/// A JSON response; hyper adds `Content-Length` from the body's exact size.
pub(crate) fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, JSON);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_body_is_the_vendor_shape() {
        let endpoint =
            MqttEndpoint { host: "mqtt.example.com".into(), tcp_port: 1883, tls_port: Some(8883) };
        assert_eq!(
            &endpoint_body(&endpoint)[..],
            br#"{"code":200,"data":{"resources":{"mqtt":{"host":"mqtt.example.com","port":1883}}},"message":"success"}"#
        );
    }

    #[test]
    fn hosts_are_escaped() {
        let endpoint = MqttEndpoint { host: "a\"b".into(), tcp_port: 1, tls_port: None };
        assert!(
            std::str::from_utf8(&endpoint_body(&endpoint))
                .expect("utf8")
                .contains(r#""host":"a\"b""#)
        );
    }

    #[test]
    fn rejections_carry_status_and_message() {
        let response = Rejection::MissingParameter("productKey").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let limited = Rejection::RateLimited { retry_after: Duration::from_millis(1) };
        let response = limited.into_response();
        assert_eq!(response.headers()[RETRY_AFTER], "1");
    }

    fn endpoint_body(endpoint: &MqttEndpoint) -> Bytes {
        super::endpoint(endpoint)
    }
}
