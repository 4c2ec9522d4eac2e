//! The admin API client: HTTP/1.1 to one base URL, bearer credentials, and the API's error
//! contract (`{"code":<status>,"message":"…"}`) turned into a typed [`ClientError`].
//!
//! What it does not do: TLS. The admin API has none of its own (it sits on a private address
//! or behind a terminating proxy), so an `https` URL is refused up front rather than sent in
//! clear.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// How long one exchange may take, connecting included. The slowest legitimate call, a
/// 10,000-device batch create, answers in seconds; past this the server is stuck, not busy.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long establishing the TCP connection may take before the URL is called unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Path-segment characters sent as they are: RFC 3986 unreserved. Everything else (a `/` or
/// `?` typed into a name, but also the `@` and `:` a DeviceName may hold) is percent-encoded,
/// and the API decodes it.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A user-supplied value as one path segment.
pub(crate) fn segment(value: &str) -> String {
    utf8_percent_encode(value, SEGMENT).to_string()
}

/// Why a call failed. Variants never hold a credential: the API key and operator token are
/// only ever put in a request header.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// The call needs an API key and none was given.
    #[error("no API key: pass --api-key or set MERIDIAN_API_KEY")]
    MissingApiKey,
    /// Account creation needs the operator token and none was given.
    #[error("no operator token: pass --operator-token or set MERIDIAN_OPERATOR_TOKEN")]
    MissingOperatorToken,
    /// The credential cannot be sent as an HTTP header (a stray newline from a copy-paste).
    #[error("the {0} holds characters an HTTP header cannot carry")]
    UnsendableCredential(&'static str),
    /// The request could not be put together (a path with characters a URI cannot carry).
    #[error("cannot build the request: {0}")]
    Unbuildable(String),
    /// No connection could be made to the base URL.
    #[error(
        "cannot reach the admin API at {url}: {reason} \
         (is the control plane running there? set --url or MERIDIAN_URL)"
    )]
    Connect { url: String, reason: String },
    /// The connection broke before a whole answer arrived.
    #[error("the admin API at {url} broke off the exchange: {reason}")]
    Transport { url: String, reason: String },
    /// No answer within [`REQUEST_TIMEOUT`].
    #[error("the admin API at {url} did not answer within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout { url: String },
    /// The API refused the request; its own message and status.
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    /// An error answer that is not the API's JSON: something else listens at the URL.
    #[error("HTTP {status} from {url}, which is not an admin API answer (check --url)")]
    Foreign { status: u16, url: String },
    /// A success answer that does not have the shape the API documents.
    #[error("unexpected answer from {url}: {reason}")]
    Decode { url: String, reason: String },
}

/// The admin API's address, parsed once at the edge: `http://host[:port][/prefix]`.
#[derive(Clone, Debug)]
pub(crate) struct BaseUrl {
    /// `http://host:port`, with no user-info, so it can be shown in any message.
    origin: String,
    /// A path prefix for an API mounted below `/` by a proxy; empty or `/`-led, no trailing `/`.
    prefix: String,
}

impl FromStr for BaseUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<BaseUrl, String> {
        let uri: Uri = url.parse().map_err(|error| format!("not a URL: {error}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err("https is not supported: the admin API speaks plain HTTP on a \
                            private address; use http://"
                    .into());
            }
            Some(other) => return Err(format!("unsupported scheme {other}; use http://")),
            None => return Err("missing scheme; write it as http://host:port".into()),
        }
        let authority = uri.authority().ok_or("missing host")?;
        if authority.as_str().contains('@') {
            // A credential in the URL would end up in every error message that names it.
            return Err("credentials in the URL are not supported; use --api-key".into());
        }
        if uri.query().is_some() {
            return Err("the URL must not have a query".into());
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(BaseUrl { origin: format!("http://{authority}"), prefix })
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.origin, self.prefix)
    }
}

/// A credential from a flag or the environment. `Debug` never shows it, so neither can an
/// error, a log line or a panic message.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl Secret {
    fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Which credential a call presents.
#[derive(Clone, Copy, Debug)]
enum Auth {
    ApiKey,
    Operator,
}

/// A request body.
enum Body {
    Empty,
    Json(Vec<u8>),
    Csv(String),
}

/// The admin API of one control plane, as one caller. Cheap to share by reference: the
/// underlying client pools keep-alive connections, which matters for `--watch` polling.
pub(crate) struct Client {
    http: HttpClient<HttpConnector, Full<Bytes>>,
    base: BaseUrl,
    api_key: Option<Secret>,
    operator_token: Option<Secret>,
}

impl Client {
    /// Empty credentials count as absent: `MERIDIAN_API_KEY=` is a cleared variable, not a key.
    pub(crate) fn new(
        base: BaseUrl,
        api_key: Option<Secret>,
        operator_token: Option<Secret>,
    ) -> Client {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let http = HttpClient::builder(TokioExecutor::new()).build(connector);
        let present = |secret: Option<Secret>| secret.filter(|secret| !secret.0.trim().is_empty());
        Client { http, base, api_key: present(api_key), operator_token: present(operator_token) }
    }

    /// `GET` a JSON resource.
    pub(crate) async fn get(&self, path: &str) -> Result<Value, ClientError> {
        let answer = self.send(Method::GET, path, Auth::ApiKey, Body::Empty).await?;
        self.json(&answer)
    }

    /// `GET` a text resource (the CSV downloads).
    pub(crate) async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let answer = self.send(Method::GET, path, Auth::ApiKey, Body::Empty).await?;
        String::from_utf8(Vec::from(answer))
            .map_err(|_| self.decode_error("the body is not UTF-8 text"))
    }

    /// `POST` a JSON body, answered with JSON.
    pub(crate) async fn post(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<Value, ClientError> {
        let body = Body::Json(self.encode(body)?);
        let answer = self.send(Method::POST, path, Auth::ApiKey, body).await?;
        self.json(&answer)
    }

    /// `POST` without a body, answered with JSON.
    pub(crate) async fn post_empty(&self, path: &str) -> Result<Value, ClientError> {
        let answer = self.send(Method::POST, path, Auth::ApiKey, Body::Empty).await?;
        self.json(&answer)
    }

    /// `POST` a `text/csv` body, answered with JSON.
    pub(crate) async fn post_csv(&self, path: &str, csv: String) -> Result<Value, ClientError> {
        let answer = self.send(Method::POST, path, Auth::ApiKey, Body::Csv(csv)).await?;
        self.json(&answer)
    }

    /// `PATCH` a JSON merge-patch, answered with JSON.
    pub(crate) async fn patch(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<Value, ClientError> {
        let body = Body::Json(self.encode(body)?);
        let answer = self.send(Method::PATCH, path, Auth::ApiKey, body).await?;
        self.json(&answer)
    }

    /// `DELETE`, answered with no content.
    pub(crate) async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, path, Auth::ApiKey, Body::Empty).await.map(drop)
    }

    /// `POST` with the operator token instead of an API key (account creation).
    pub(crate) async fn post_as_operator(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<Value, ClientError> {
        let body = Body::Json(self.encode(body)?);
        let answer = self.send(Method::POST, path, Auth::Operator, body).await?;
        self.json(&answer)
    }

    /// `method` with the operator token (the `/v1/operator/...` routes), with an optional JSON
    /// body; answered with JSON, or `null` for an answer without content.
    pub(crate) async fn as_operator(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let body = match body {
            Some(body) => Body::Json(self.encode(body)?),
            None => Body::Empty,
        };
        let answer = self.send(method, path, Auth::Operator, body).await?;
        if answer.is_empty() {
            return Ok(Value::Null);
        }
        self.json(&answer)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Auth,
        body: Body,
    ) -> Result<Bytes, ClientError> {
        let authorization = self.authorization(auth)?;
        let uri = format!("{}{}{path}", self.base.origin, self.base.prefix);
        let request = Request::builder()
            .method(method)
            .uri(&uri)
            .header(header::AUTHORIZATION, authorization)
            .header(header::ACCEPT, "application/json, text/csv");
        let (request, body) = match body {
            Body::Empty => (request, Bytes::new()),
            Body::Json(json) => {
                (request.header(header::CONTENT_TYPE, "application/json"), json.into())
            }
            Body::Csv(csv) => (request.header(header::CONTENT_TYPE, "text/csv"), csv.into()),
        };
        // The base URL was parsed at start-up and callers pass path segments through
        // `segment`, so this fails only for a path a caller forgot to encode.
        let request = request
            .body(Full::new(body))
            .map_err(|error| ClientError::Unbuildable(error.to_string()))?;

        let exchange = async {
            let response = self.http.request(request).await.map_err(|error| {
                let reason = root_cause(&error);
                let url = self.base.to_string();
                if error.is_connect() {
                    ClientError::Connect { url, reason }
                } else {
                    ClientError::Transport { url, reason }
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|error| ClientError::Transport {
                url: self.base.to_string(),
                reason: root_cause(&error),
            })?;
            Ok::<_, ClientError>((parts, body.to_bytes()))
        };
        let (parts, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout { url: self.base.to_string() })??;
        if parts.status.is_success() {
            return Ok(body);
        }
        Err(self.refusal(parts.status, &parts.headers, &body))
    }

    fn authorization(&self, auth: Auth) -> Result<HeaderValue, ClientError> {
        let (secret, what) = match auth {
            Auth::ApiKey => (self.api_key.as_ref().ok_or(ClientError::MissingApiKey)?, "API key"),
            Auth::Operator => (
                self.operator_token.as_ref().ok_or(ClientError::MissingOperatorToken)?,
                "operator token",
            ),
        };
        let mut value = HeaderValue::from_str(&format!("Bearer {}", secret.expose().trim()))
            .map_err(|_| ClientError::UnsendableCredential(what))?;
        // Keeps it out of hyper's debug output and out of HPACK tables, were it ever HTTP/2.
        value.set_sensitive(true);
        Ok(value)
    }

    /// The API's own error when the answer is one, else a note that something else answered.
    fn refusal(&self, status: StatusCode, headers: &header::HeaderMap, body: &[u8]) -> ClientError {
        // `code` repeats the status; the status line is the one trusted.
        #[derive(serde::Deserialize)]
        struct ApiError {
            message: String,
        }
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/json"));
        match serde_json::from_slice::<ApiError>(body) {
            Ok(error) if json => {
                ClientError::Api { status: status.as_u16(), message: error.message }
            }
            _ => ClientError::Foreign { status: status.as_u16(), url: self.base.to_string() },
        }
    }

    fn json(&self, body: &[u8]) -> Result<Value, ClientError> {
        serde_json::from_slice(body)
            .map_err(|error| self.decode_error(format!("not JSON: {error}")))
    }

    fn encode(&self, body: &impl Serialize) -> Result<Vec<u8>, ClientError> {
        serde_json::to_vec(body)
            .map_err(|error| self.decode_error(format!("request not encodable: {error}")))
    }

    fn decode_error(&self, reason: impl Into<String>) -> ClientError {
        ClientError::Decode { url: self.base.to_string(), reason: reason.into() }
    }
}

/// Turns an answer into the typed view a table shows. The API's shapes are fixed by its
/// OpenAPI document, so a mismatch means the server is not the version this client knows.
pub(crate) fn view<T: DeserializeOwned>(value: &Value) -> anyhow::Result<T> {
    T::deserialize(value).map_err(|error| {
        anyhow::anyhow!(
            "the admin API answered in an unexpected shape ({error}); \
             is it a different Meridian version?"
        )
    })
}

/// The innermost error's message: `connection refused`, not `client error (Connect)`.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_parse_at_the_edge() {
        let url: BaseUrl = "http://127.0.0.1:8081".parse().unwrap();
        assert_eq!(url.to_string(), "http://127.0.0.1:8081");
        let url: BaseUrl = "http://admin.internal/meridian/".parse().unwrap();
        assert_eq!(
            (url.origin.as_str(), url.prefix.as_str()),
            ("http://admin.internal", "/meridian")
        );
        for bad in ["127.0.0.1:8081", "https://x", "ftp://x", "http://key@x", "http://x/?a=b", ""] {
            assert!(bad.parse::<BaseUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("lamp-0001"), "lamp-0001");
        assert_eq!(segment("a@b:c.d_e"), "a%40b%3Ac.d_e");
        assert_eq!(segment("../x y"), "..%2Fx%20y");
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let secret = Secret::from("k1.s3cr3t".to_owned());
        assert!(!format!("{secret:?}").contains("s3cr3t"));
    }
}
