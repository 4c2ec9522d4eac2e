//! Instance transfer orders (PROTOCOL §7): batch initiation, confirmation, cancellation and
//! rejection, each answered with one result per order; the renewal that a pending order
//! blocks; and an organisation admin's read-only window on its members.
//!
//! A batch call answers `200` once the batch itself is acceptable; each result then carries
//! the status that order alone would have had (`201`/`200`, or the error's) and its message.

use hyper::StatusCode;
use serde::{Deserialize, Serialize};

use meridian_registry::ids::AccountId;
use meridian_registry::model::Instance;

use super::request::ApiRequest;
use super::response::{self, Result};
use crate::plane::ControlPlane;
use crate::resource_transfer::{InstanceTransfer, InstanceTransferRequest, OrderResult};

#[derive(Serialize)]
struct Orders {
    orders: Vec<InstanceTransfer>,
}

#[derive(Serialize)]
struct Results {
    results: Vec<OrderResult>,
}

/// The order ids of a confirm, cancel or reject call.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    orders: Vec<String>,
}

/// `GET /v1/instance-transfers`
pub(super) async fn list(plane: &ControlPlane, caller: &AccountId) -> Result {
    response::json(StatusCode::OK, &Orders { orders: plane.instance_transfers(caller).await? })
}

/// `GET /v1/instance-transfers/{id}`
pub(super) async fn get(plane: &ControlPlane, caller: &AccountId, request: ApiRequest) -> Result {
    response::json(StatusCode::OK, &plane.instance_transfer(caller, request.param("id")).await?)
}

/// `POST /v1/instance-transfers`: one order per instance.
pub(super) async fn initiate(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
) -> Result {
    #[derive(Serialize)]
    struct Initiated {
        batch: String,
        results: Vec<OrderResult>,
    }
    let body: InstanceTransferRequest = request.json().await?;
    let (batch, results) = plane.initiate_instance_transfers(caller, body).await?;
    response::json(StatusCode::OK, &Initiated { batch, results })
}

/// `POST /v1/instance-transfers/confirm` (destination)
pub(super) async fn confirm(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
) -> Result {
    let batch: Batch = request.json().await?;
    let results = plane.confirm_instance_transfers(caller, batch.orders).await?;
    response::json(StatusCode::OK, &Results { results })
}

/// `POST /v1/instance-transfers/cancel` (source)
pub(super) async fn cancel(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
) -> Result {
    let batch: Batch = request.json().await?;
    let results = plane.cancel_instance_transfers(caller, batch.orders).await?;
    response::json(StatusCode::OK, &Results { results })
}

/// `POST /v1/instance-transfers/reject` (destination)
pub(super) async fn reject(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
) -> Result {
    let batch: Batch = request.json().await?;
    let results = plane.reject_instance_transfers(caller, batch.orders).await?;
    response::json(StatusCode::OK, &Results { results })
}

/// `POST /v1/instances/{id}/renew`: `{"days":N}`.
pub(super) async fn renew(plane: &ControlPlane, caller: &AccountId, request: ApiRequest) -> Result {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        days: u64,
    }
    let id = request.instance_id()?;
    let body: Body = request.json().await?;
    response::json(StatusCode::OK, &plane.renew_instance(caller, &id, body.days).await?)
}

/// `GET /v1/organisation/instances` (organisation admin)
pub(super) async fn organisation_instances(plane: &ControlPlane, caller: &AccountId) -> Result {
    #[derive(Serialize)]
    struct List {
        instances: Vec<Instance>,
    }
    response::json(StatusCode::OK, &List { instances: plane.organisation_instances(caller).await? })
}

/// `GET /v1/organisation/instance-transfers` (organisation admin)
pub(super) async fn organisation_orders(plane: &ControlPlane, caller: &AccountId) -> Result {
    response::json(
        StatusCode::OK,
        &Orders { orders: plane.organisation_instance_transfers(caller).await? },
    )
}
