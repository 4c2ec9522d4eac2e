//! A routed request, parsed at the edge: bearer credentials, typed path parameters, and a body
//! read under the size cap and checked for its content type before it is decoded.

use std::fmt::Display;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use hyper::http::request::Parts;
use hyper::{Request, StatusCode};
use serde::de::DeserializeOwned;

use meridian_registry::ids::{DeviceKey, InstanceId, ProductKey};

use super::response::{ApiError, Result, echo};
use super::router::Params;
use super::{BODY_READ_TIMEOUT, MAX_BODY_BYTES};
use crate::error::ControlError;

/// JSON fields whose values are secrets: a decoding error there names the field, not the value.
const SECRET_FIELDS: &[&str] = &["deviceSecret", "code", "secret", "api_key"];

pub(crate) struct ApiRequest {
    parts: Parts,
    body: Incoming,
    params: Params,
}

impl ApiRequest {
    pub(crate) fn new(request: Request<Incoming>, params: Params) -> ApiRequest {
        let (parts, body) = request.into_parts();
        ApiRequest { parts, body, params }
    }

    /// The token of `Authorization: Bearer <token>`.
    pub(crate) fn bearer(&self) -> Result<&str> {
        let unauthenticated = || ApiError::from(ControlError::Unauthenticated);
        let value = self.parts.headers.get(header::AUTHORIZATION).ok_or_else(unauthenticated)?;
        let value = value.to_str().map_err(|_| unauthenticated())?;
        let (scheme, token) = value.split_once(' ').ok_or_else(unauthenticated)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(unauthenticated());
        }
        Ok(token)
    }

    pub(crate) fn param(&self, name: &str) -> &str {
        self.params.get(name)
    }

    pub(crate) fn product_key(&self) -> Result<ProductKey> {
        parse_id(self.param("pk"), "product")
    }

    pub(crate) fn instance_id(&self) -> Result<InstanceId> {
        parse_id(self.param("id"), "instance")
    }

    pub(crate) fn device_key(&self) -> Result<DeviceKey> {
        let (pk, dn) = (self.param("pk"), self.param("dn"));
        let not_found = || not_found("device", format_args!("{pk}/{dn}"));
        Ok(DeviceKey {
            product_key: pk.parse().map_err(|_| not_found())?,
            device_name: dn.parse().map_err(|_| not_found())?,
        })
    }

    /// The body as `T`, from `application/json`. Unknown-field, type and syntax errors come back
    /// as 400 naming the field path and the position.
    pub(crate) async fn json<T: DeserializeOwned>(self) -> Result<T> {
        self.json_as(&["application/json"]).await
    }

    /// Like [`ApiRequest::json`], also accepting the given media types.
    pub(crate) async fn json_as<T: DeserializeOwned>(self, media_types: &[&str]) -> Result<T> {
        let body = self.body(media_types).await?;
        let mut deserializer = serde_json::Deserializer::from_slice(&body);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(json_error)?;
        deserializer.end().map_err(|error| bad_request(format!("malformed JSON: {error}")))?;
        Ok(value)
    }

    /// The body as CSV text from `text/csv`, without a leading byte-order mark (spreadsheets
    /// write one, and it would otherwise stick to the first header).
    pub(crate) async fn csv(self) -> Result<String> {
        let body = self.body(&["text/csv"]).await?;
        let text = String::from_utf8(body.to_vec())
            .map_err(|_| bad_request("CSV body is not UTF-8".to_owned()))?;
        Ok(strip_bom(text))
    }

    async fn body(self, media_types: &[&str]) -> Result<Bytes> {
        let given = media_type(&self.parts.headers);
        if !given.as_deref().is_some_and(|given| media_types.contains(&given)) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type must be {}", media_types.join(" or ")),
            ));
        }
        // Refuse a declared oversize body before reading any of it.
        let declared = self
            .parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        let read = Limited::new(self.body, MAX_BODY_BYTES).collect();
        match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Ok(Err(_)) => Err(bad_request("request body could not be read".to_owned())),
            Err(_) => Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "request body too slow")),
        }
    }
}

/// A path identifier that does not parse names nothing that exists: 404, like a missing one.
fn parse_id<T: std::str::FromStr>(value: &str, kind: &'static str) -> Result<T> {
    value.parse().map_err(|_| not_found(kind, value))
}

fn not_found(kind: &'static str, id: impl Display) -> ApiError {
    ControlError::NotFound { kind, id: echo(&id.to_string()) }.into()
}

fn bad_request(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body exceeds {} bytes", MAX_BODY_BYTES),
    )
}

/// The media type without parameters, lower-cased: `Application/JSON; charset=utf-8` is
/// `application/json`.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next()?.trim();
    Some(essence.to_ascii_lowercase())
}

fn json_error(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let inner = error.inner();
    if inner.is_syntax() || inner.is_eof() || inner.is_io() {
        return bad_request(format!("malformed JSON: {inner}"));
    }
    let secret = error.path().iter().any(|segment| match segment {
        serde_path_to_error::Segment::Map { key } => SECRET_FIELDS.contains(&key.as_str()),
        _ => false,
    });
    if secret {
        // serde's message may quote the offending value, which here is a secret.
        return bad_request(format!(
            "invalid request body at `{path}` (line {}, column {}): invalid value",
            inner.line(),
            inner.column()
        ));
    }
    if path == "." {
        bad_request(format!("invalid request body: {inner}"))
    } else {
        bad_request(format!("invalid request body at `{path}`: {inner}"))
    }
}

pub(crate) fn strip_bom(text: String) -> String {
    match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode<T: DeserializeOwned>(json: &str) -> std::result::Result<T, String> {
        let mut deserializer = serde_json::Deserializer::from_str(json);
        serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|error| json_error(error).message().to_owned())
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        devices: Vec<Entry>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Entry {
        device_name: String,
        device_secret: Option<String>,
    }

    #[test]
    fn json_errors_name_the_field() {
        let error = decode::<Body>(r#"{"devices":[{"deviceName":7}]}"#).unwrap_err();
        assert!(error.contains("`devices[0].deviceName`"), "{error}");
        assert!(error.contains("expected a string"), "{error}");
        let error = decode::<Body>(r#"{"devices":[{"deviceName":"x"#).unwrap_err();
        assert!(error.starts_with("malformed JSON"), "{error}");
    }

    #[test]
    fn json_errors_never_quote_secrets() {
        let error =
            decode::<Body>(r#"{"devices":[{"deviceName":"lamp","deviceSecret":987654321}]}"#)
                .unwrap_err();
        assert!(error.contains("deviceSecret"), "{error}");
        assert!(!error.contains("987654321"), "{error}");
    }

    #[test]
    fn media_types_ignore_parameters_and_case() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "Application/JSON; charset=utf-8".parse().unwrap());
        assert_eq!(media_type(&headers).as_deref(), Some("application/json"));
    }

    #[test]
    fn byte_order_marks_are_dropped() {
        assert_eq!(strip_bom("\u{feff}deviceName\n".into()), "deviceName\n");
        assert_eq!(strip_bom("deviceName\n".into()), "deviceName\n");
    }
}
