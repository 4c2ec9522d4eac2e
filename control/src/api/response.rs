//! What the API answers: JSON bodies, CSV attachments, and errors as
//! `{"code":<status>,"message":"…"}` — never HTML, never a stack trace, never a secret.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, StatusCode};
use serde::Serialize;

use crate::error::ControlError;

pub(crate) type Response = hyper::Response<Full<Bytes>>;
pub(crate) type Result<T = Response, E = ApiError> = std::result::Result<T, E>;

/// Longest piece of caller input quoted back in an error message.
const ECHO_MAX: usize = 64;

/// A failed request: its status and a message for the caller.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    /// For 405: the methods the path takes.
    allow: Option<String>,
    /// For 429 from a rate: whole seconds until a retry may succeed.
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), allow: None, retry_after: None }
    }

    pub(crate) fn no_route(path: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("no route {}", echo(path)))
    }

    pub(crate) fn method_not_allowed(method: &Method, allowed: &[Method]) -> ApiError {
        let allow = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
        let message = format!("method {} not allowed here; use {allow}", echo(method.as_str()));
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message,
            allow: Some(allow),
            retry_after: None,
        }
    }

    pub(crate) fn internal() -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }

    #[cfg(test)]
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.status.as_u16(), "message": self.message });
        let mut response = bytes_response(
            self.status,
            "application/json",
            Bytes::from(body.to_string().into_bytes()),
        );
        let headers = response.headers_mut();
        if let Some(allow) = self.allow.and_then(|allow| HeaderValue::from_str(&allow).ok()) {
            headers.insert(header::ALLOW, allow);
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<ControlError> for ApiError {
    fn from(error: ControlError) -> ApiError {
        let status =
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match &error {
            ControlError::RateLimited { retry_after, .. } => {
                let seconds = crate::error::retry_after_secs(*retry_after);
                let mut api = ApiError::new(status, error.to_string());
                api.retry_after = Some(seconds);
                return api;
            }
            // Names only what the caller asked for; the operator has the details logged.
            ControlError::Unreadable { .. } => return ApiError::new(status, error.to_string()),
            _ => {}
        }
        if status.is_server_error() {
            // Storage details are for the operator's log, not for the caller.
            tracing::error!(%error, "admin API request failed");
            return ApiError::internal();
        }
        ApiError::new(status, error.to_string())
    }
}

/// `body` as JSON with `status`.
pub(crate) fn json(status: StatusCode, body: &impl Serialize) -> Result {
    let bytes = serde_json::to_vec(body).map_err(|error| {
        tracing::error!(%error, "admin API response does not serialize");
        ApiError::internal()
    })?;
    Ok(bytes_response(status, "application/json", Bytes::from(bytes)))
}

/// `201 Created` with the new resource's address.
pub(crate) fn created(location: &str, body: &impl Serialize) -> Result {
    let mut response = json(StatusCode::CREATED, body)?;
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// A CSV download. `filename` must be a plain token (letters, digits, `-`, `.`).
pub(crate) fn csv_attachment(filename: &str, body: String) -> Response {
    let mut response =
        bytes_response(StatusCode::OK, "text/csv; charset=utf-8", Bytes::from(body.into_bytes()));
    let disposition = format!("attachment; filename=\"{filename}\"");
    if let Ok(disposition) = HeaderValue::from_str(&disposition) {
        response.headers_mut().insert(header::CONTENT_DISPOSITION, disposition);
    }
    response
}

pub(crate) fn no_content() -> Response {
    let mut response = hyper::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    secure(response.headers_mut());
    response
}

pub(super) fn bytes_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response {
    let mut response = hyper::Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure(headers);
    response
}

fn secure(headers: &mut HeaderMap) {
    // Responses carry API keys, device secrets and codes shown once: no cache may keep them.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
}

/// Caller input quoted in a message, cut short so a huge path cannot bloat the answer.
pub(crate) fn echo(input: &str) -> String {
    match input.char_indices().nth(ECHO_MAX) {
        Some((cut, _)) => format!("{}…", &input[..cut]),
        None => input.to_owned(),
    }
}
