//! The admin HTTP API: JSON over HTTP/1.1 (keep-alive) in front of [`ControlPlane`], described
//! by the OpenAPI document at `GET /openapi.json`.
//!
//! Every tenant route authenticates `Authorization: Bearer <api key>` and passes the caller's
//! account to the plane, which scopes every read and write to it: another account's resource is
//! a 404, exactly like a missing one. Account creation and the `/v1/operator/...` routes take
//! the operator token instead: accounts, and instances with the endpoints devices are sent to,
//! are provisioned by the platform operator (PROTOCOL §1); a tenant owns, renews and transfers its
//! instances but cannot create one or choose an endpoint.
//! Errors are always `{"code":<status>,"message":"…"}`.
//!
//! What it does not do: TLS (put it behind a terminating proxy or bind it to a private
//! address), rate limiting, or run distribution tasks (the executor does; submission only
//! stores the task).

mod accounts;
mod device_transfers;
mod devices;
mod instance_transfers;
mod instances;
mod openapi;
mod products;
mod request;
mod response;
mod router;
mod tasks;
mod transfers;

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use meridian_registry::ids::AccountId;

use crate::plane::ControlPlane;
use request::ApiRequest;
use response::{ApiError, Response};
use router::{Endpoint, Resolution, Tenant};

/// Largest request body accepted, 4 MiB. The biggest legitimate bodies are a 10,000-device
/// batch create with 64-character secrets (about 1.3 MB of JSON) and a 10,000-name task
/// (about 0.4 MB); a 1,000-row CSV is under 70 KB. The cap leaves room for pretty-printed
/// JSON while bounding what one request can make the server buffer.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// How long a client may take to send its request headers; also how long an idle keep-alive
/// connection is kept. Guards against connections that trickle bytes to hold a slot.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client may take to send a request body: 4 MiB within a minute is a slow link.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting, lets requests
/// in flight finish, and returns.
pub async fn serve(listener: TcpListener, plane: ControlPlane, shutdown: impl Future<Output = ()>) {
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        // A client may shut its write side once the request is sent (`nc -N`, some scripts);
        // it still gets its answer.
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(%error, "admin API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let plane = plane.clone();
        let service = service_fn(move |request| {
            let plane = plane.clone();
            async move {
                // Each request runs in its own task: a client hanging up mid-request does not
                // cancel a change half-way between the plane's awaits, and a panic becomes a 500
                // instead of a dropped connection.
                let handled = tokio::spawn(async move { handle(&plane, request).await }).await;
                Ok::<_, Infallible>(handled.unwrap_or_else(|error| {
                    tracing::error!(%error, "admin API handler panicked");
                    ApiError::internal().into_response()
                }))
            }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "admin API connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn handle(plane: &ControlPlane, request: Request<Incoming>) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let outcome = match router::resolve(&method, &path) {
        Resolution::Found(endpoint, params) => {
            dispatch(plane, endpoint, ApiRequest::new(request, params)).await
        }
        Resolution::WrongMethod(allowed) => Err(ApiError::method_not_allowed(&method, &allowed)),
        Resolution::NotFound => Err(ApiError::no_route(&path)),
    };
    let response = outcome.unwrap_or_else(ApiError::into_response);
    tracing::debug!(%method, path, status = response.status().as_u16(), "admin API request");
    response
}

/// Checks the credentials the endpoint needs, then runs it.
async fn dispatch(
    plane: &ControlPlane,
    endpoint: Endpoint,
    request: ApiRequest,
) -> response::Result {
    match endpoint {
        Endpoint::OpenApi => Ok(openapi::response()),
        Endpoint::CreateAccount => {
            plane.authenticate_operator(request.bearer()?)?;
            accounts::create(plane, request).await
        }
        Endpoint::ProvisionInstance => {
            plane.authenticate_operator(request.bearer()?)?;
            instances::provision(plane, request).await
        }
        Endpoint::Operator(endpoint) => {
            plane.authenticate_operator(request.bearer()?)?;
            transfers::operator(plane, endpoint, request).await
        }
        Endpoint::Tenant(endpoint) => {
            let caller = plane.authenticate(request.bearer()?).await?;
            tenant(plane, &caller, endpoint, request).await
        }
    }
}

async fn tenant(
    plane: &ControlPlane,
    caller: &AccountId,
    endpoint: Tenant,
    request: ApiRequest,
) -> response::Result {
    match endpoint {
        Tenant::Account => accounts::own(plane, caller).await,
        Tenant::CreateApiKey => accounts::create_api_key(plane, caller).await,
        Tenant::Audit => accounts::audit(plane, caller).await,
        Tenant::RequestCode => accounts::request_code(plane, caller).await,
        Tenant::Regions => instances::regions(plane).await,
        Tenant::Instances => instances::list(plane, caller).await,
        Tenant::CreateInstance => Err(instances::tenant_create()),
        Tenant::Instance => instances::get(plane, caller, request).await,
        Tenant::Usage => instances::usage(plane, caller).await,
        Tenant::Products => products::list(plane, caller).await,
        Tenant::CreateProduct => products::create(plane, caller, request).await,
        Tenant::Product => products::get(plane, caller, request).await,
        Tenant::UpdateProduct => products::update(plane, caller, request).await,
        Tenant::ProductCopies => products::copies(plane, caller).await,
        Tenant::Devices => devices::list(plane, caller, request).await,
        Tenant::CreateDevices => devices::create(plane, caller, request).await,
        Tenant::ImportDevices => devices::import(plane, caller, request).await,
        Tenant::Device => devices::get(plane, caller, request).await,
        Tenant::DeleteDevice => devices::delete(plane, caller, request).await,
        Tenant::DisableDevice => devices::set_enabled(plane, caller, request, false).await,
        Tenant::EnableDevice => devices::set_enabled(plane, caller, request, true).await,
        Tenant::Tasks => tasks::list(plane, caller).await,
        Tenant::SubmitTask => tasks::submit(plane, caller, request).await,
        Tenant::TaskTemplate => tasks::template(),
        Tenant::Task => tasks::get(plane, caller, request).await,
        Tenant::RetryTask => tasks::retry(plane, caller, request).await,
        Tenant::TaskRecords => tasks::records(plane, caller, request).await,
        Tenant::Ownership(endpoint) => transfers::tenant(plane, caller, endpoint, request).await,
    }
}
