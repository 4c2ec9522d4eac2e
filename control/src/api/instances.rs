//! Regions (operator configuration, readable by every account), the caller's instances and
//! their usage.

use hyper::StatusCode;
use serde::Serialize;

use meridian_registry::ids::AccountId;
use meridian_registry::model::{Instance, InstanceUsage, Region};

use super::request::ApiRequest;
use super::response::{self, Result};
use crate::plane::{ControlPlane, NewInstance};

/// `GET /v1/regions`
pub(super) async fn regions(plane: &ControlPlane) -> Result {
    #[derive(Serialize)]
    struct List {
        regions: Vec<Region>,
    }
    response::json(StatusCode::OK, &List { regions: plane.regions().await? })
}

/// `GET /v1/instances`
pub(super) async fn list(plane: &ControlPlane, caller: &AccountId) -> Result {
    #[derive(Serialize)]
    struct List {
        instances: Vec<Instance>,
    }
    response::json(StatusCode::OK, &List { instances: plane.instances(caller).await? })
}

/// `POST /v1/instances`
pub(super) async fn create(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
) -> Result {
    let new: NewInstance = request.json().await?;
    let instance = plane.create_instance(caller, new).await?;
    response::created(&format!("/v1/instances/{}", instance.id), &instance)
}

/// `GET /v1/instances/{id}`
pub(super) async fn get(plane: &ControlPlane, caller: &AccountId, request: ApiRequest) -> Result {
    let id = request.instance_id()?;
    response::json(StatusCode::OK, &plane.instance(caller, &id).await?)
}

/// `GET /v1/usage`: one record per instance the caller owns, as its broker last reported it.
pub(super) async fn usage(plane: &ControlPlane, caller: &AccountId) -> Result {
    #[derive(Serialize)]
    struct List {
        usage: Vec<InstanceUsage>,
    }
    response::json(StatusCode::OK, &List { usage: plane.usage(caller).await? })
}
