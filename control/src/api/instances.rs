//! Regions (operator configuration, readable by every account), instances (provisioned by the
//! operator for an account, listed and read by their owner) and their usage.

use hyper::StatusCode;
use serde::{Deserialize, Serialize};

use meridian_registry::ids::{AccountId, InstanceId, RegionId};
use meridian_registry::model::{Edition, Instance, InstanceUsage, MqttEndpoint, Region};

use super::request::ApiRequest;
use super::response::{self, ApiError, Result};
use crate::plane::{ControlPlane, NewInstance, default_edition, default_lifetime_days};

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

/// `POST /v1/instances` with an API key: refused. Devices are sent to an instance's endpoint,
/// so a tenant that could create one, or choose its endpoint, could send devices anywhere
/// (through the region-pinned bootstrap, or placements naming it). The operator provisions
/// instances for accounts instead: [`provision`].
pub(super) fn tenant_create() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "instances and their endpoints are provisioned by the platform operator \
         (POST /v1/operator/instances); an API key cannot create an instance or choose an endpoint",
    )
}

/// `POST /v1/operator/instances` (operator): an instance, with the endpoint of the broker the
/// operator runs for it, provisioned for the `owner` account.
pub(super) async fn provision(plane: &ControlPlane, request: ApiRequest) -> Result {
    let new: ProvisionedInstance = request.json().await?;
    let (owner, new) = new.split();
    let instance = plane.create_instance(&owner, new).await?;
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

/// The operator's request: a [`NewInstance`] and the account that will own it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvisionedInstance {
    owner: AccountId,
    id: InstanceId,
    region: RegionId,
    #[serde(default = "default_edition")]
    edition: Edition,
    endpoint: MqttEndpoint,
    #[serde(default = "default_lifetime_days")]
    lifetime_days: u64,
}

impl ProvisionedInstance {
    fn split(self) -> (AccountId, NewInstance) {
        let ProvisionedInstance { owner, id, region, edition, endpoint, lifetime_days } = self;
        (owner, NewInstance { id, region, edition, endpoint, lifetime_days })
    }
}
