//! One request in, one response out: routing by path, the bootstrap answer, every rejection.

use std::net::IpAddr;
use std::pin::pin;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use meridian_registry::ids::DeviceKey;

use crate::edge::{Edge, Inner};
use crate::metrics::Outcome;
use crate::reply::{self, Rejection};
use crate::request::{is_form, parse_form};
use crate::routing::Resolution;

/// The SDK's bootstrap path.
pub const BOOTSTRAP_PATH: &str = "/auth/bootstrap";
/// The region-pinned variant: `/auth/bootstrap/regionId/{n}`.
pub const REGION_PATH_PREFIX: &str = "/auth/bootstrap/regionId/";
/// Prometheus scrape path.
pub const METRICS_PATH: &str = "/metrics";

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// Region numbers are small: the vendor's enum has single digits.
const MAX_REGION_DIGITS: usize = 6;

/// What a connection knows about its client before any request arrives.
pub(crate) struct Connection {
    pub(crate) edge: Edge,
    /// The socket peer, or the source a trusted PROXY header named.
    pub(crate) peer: IpAddr,
}

/// Answers one request. Never fails: every problem becomes a JSON rejection.
pub(crate) async fn handle(
    connection: &Connection,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let edge = &*connection.edge.inner;
    // The head is only read from here on, so it is lent rather than moved down the calls: a
    // `Request` is 248 bytes, copied on every move and held by every enclosing future.
    let (head, body) = request.into_parts();
    let forwarded_for = head.headers.get_all(X_FORWARDED_FOR).iter();
    let client = edge.trusted.client_ip(connection.peer, forwarded_for);
    let (response, outcome) = match answer(edge, client, &head, body).await {
        Ok(response) => (response, Outcome::Ok),
        Err(rejection) => {
            let outcome = rejection.outcome();
            (rejection.into_response(), outcome)
        }
    };
    edge.metrics.request(outcome, started.elapsed());
    response
}

async fn answer(
    edge: &Inner,
    client: IpAddr,
    head: &Parts,
    body: Incoming,
) -> Result<Response<Full<Bytes>>, Rejection> {
    if let Some(limiter) = &edge.limiter {
        limiter.check(client).map_err(|retry_after| Rejection::RateLimited { retry_after })?;
    }
    let path = head.uri.path();
    if path == BOOTSTRAP_PATH {
        allow(head, Method::POST, "POST")?;
        let device = read_form(edge, head, body).await?;
        return bootstrap(edge, &device, client);
    }
    if let Some(number) = path.strip_prefix(REGION_PATH_PREFIX) {
        allow(head, Method::GET, "GET")?;
        return region(edge, number);
    }
    if path == METRICS_PATH {
        allow(head, Method::GET, "GET")?;
        let prometheus = edge.prometheus.as_ref().ok_or(Rejection::NotFound)?;
        let mut response = Response::new(Full::new(Bytes::from(prometheus.render())));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
        return Ok(response);
    }
    Err(Rejection::NotFound)
}

fn allow(head: &Parts, method: Method, name: &'static str) -> Result<(), Rejection> {
    if head.method == method { Ok(()) } else { Err(Rejection::MethodNotAllowed { allow: name }) }
}

/// The form body: the right content type, no larger than the cap, complete within the body
/// timeout.
async fn read_form(edge: &Inner, head: &Parts, body: Incoming) -> Result<DeviceKey, Rejection> {
    if !is_form(&head.headers) {
        return Err(Rejection::UnsupportedMediaType);
    }
    // Refuse an announced oversized body before reading any of it. hyper has parsed and
    // checked `Content-Length` already (dropping it when the body is chunked): the body's
    // exact size hint is its value.
    if body.size_hint().lower() > edge.max_body_bytes as u64 {
        return Err(Rejection::BodyTooLarge);
    }
    let mut body = pin!(Limited::new(body, edge.max_body_bytes).collect());
    // The SDK's whole request fits one packet, so the body is usually complete already; only a
    // body still in flight needs (and pays for) a timer.
    let collected = match futures::poll!(body.as_mut()) {
        Poll::Ready(collected) => collected,
        Poll::Pending => tokio::time::timeout(edge.body_read_timeout, body)
            .await
            .map_err(|_| Rejection::BodyTimeout)?,
    };
    let collected = collected.map_err(|error| {
        if error.is::<LengthLimitError>() {
            Rejection::BodyTooLarge
        } else {
            Rejection::BodyUnreadable
        }
    })?;
    parse_form(&collected.to_bytes())
}

fn bootstrap(
    edge: &Inner,
    device: &DeviceKey,
    client: IpAddr,
) -> Result<Response<Full<Bytes>>, Rejection> {
    match edge.table.resolve(device, client, &edge.locator) {
        Resolution::Endpoint { reply, geo } => {
            if let Some(outcome) = geo {
                edge.metrics.geo(outcome);
            }
            Ok(reply::json(StatusCode::OK, reply))
        }
        Resolution::Unroutable => Err(Rejection::UnknownDevice),
    }
}

/// `regionId/{n}`: the operator-configured public endpoint of the `n`th numbered region. The
/// request names no device (the SDK sends no body), so the answer is the region's, not a
/// placement's.
fn region(edge: &Inner, number: &str) -> Result<Response<Full<Bytes>>, Rejection> {
    let well_formed = (1..=MAX_REGION_DIGITS).contains(&number.len())
        && number.bytes().all(|b| b.is_ascii_digit());
    if !well_formed {
        return Err(Rejection::BadRegionId);
    }
    let index: usize = number.parse().map_err(|_| Rejection::BadRegionId)?;
    let region = edge.region_numbers.get(index).ok_or(Rejection::UnknownRegion)?;
    let reply = edge.table.region_reply(region).ok_or(Rejection::UnknownRegion)?;
    Ok(reply::json(StatusCode::OK, reply))
}
