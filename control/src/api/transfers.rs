//! Ownership transfers through the API: device transfer orders and product views (PROTOCOL §6),
//! instance transfer orders and the instance renewal they block (PROTOCOL §7), an organisation
//! admin's read-only window, and the operator's transfer allow-list and organisations.
//!
//! The handlers live in [`super::device_transfers`] and [`super::instance_transfers`]; this
//! file names the endpoints and sends each to its handler.

use hyper::StatusCode;
use serde::{Deserialize, Serialize};

use meridian_registry::ids::{AccountId, OrganisationId};

use super::request::ApiRequest;
use super::response::{self, Result};
use super::{device_transfers, instance_transfers};
use crate::error::ControlError;
use crate::plane::ControlPlane;
use crate::transfer::AllowListEntry;

/// Ownership-transfer endpoints an API key reaches (and the renewal a pending order blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ownership {
    DeviceTransfers,
    CreateDeviceTransfer,
    DeviceTransferTemplate,
    DeviceTransfer,
    AcceptDeviceTransfer,
    RejectDeviceTransfer,
    CancelDeviceTransfer,
    ProductViews,
    ProductView,
    ViewDevices,
    ViewDevice,
    DeleteViewDevice,
    DisableViewDevice,
    EnableViewDevice,
    InstanceTransfers,
    InitiateInstanceTransfers,
    ConfirmInstanceTransfers,
    CancelInstanceTransfers,
    RejectInstanceTransfers,
    InstanceTransfer,
    RenewInstance,
    OrganisationInstances,
    OrganisationInstanceTransfers,
}

/// Endpoints that take the operator token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operator {
    AllowList,
    Allow,
    Disallow,
    SetOrganisation,
}

pub(super) async fn tenant(
    plane: &ControlPlane,
    caller: &AccountId,
    endpoint: Ownership,
    request: ApiRequest,
) -> Result {
    use device_transfers as d;
    use instance_transfers as i;
    match endpoint {
        Ownership::DeviceTransfers => d::list(plane, caller).await,
        Ownership::CreateDeviceTransfer => d::create(plane, caller, request).await,
        Ownership::DeviceTransferTemplate => d::template(),
        Ownership::DeviceTransfer => d::get(plane, caller, request).await,
        Ownership::AcceptDeviceTransfer => d::accept(plane, caller, request).await,
        Ownership::RejectDeviceTransfer => d::reject(plane, caller, request).await,
        Ownership::CancelDeviceTransfer => d::cancel(plane, caller, request).await,
        Ownership::ProductViews => d::views(plane, caller).await,
        Ownership::ProductView => d::view(plane, caller, request).await,
        Ownership::ViewDevices => d::view_devices(plane, caller, request).await,
        Ownership::ViewDevice => d::view_device(plane, caller, request).await,
        Ownership::DeleteViewDevice => d::delete_view_device(plane, caller, request).await,
        Ownership::DisableViewDevice => d::set_enabled(plane, caller, request, false).await,
        Ownership::EnableViewDevice => d::set_enabled(plane, caller, request, true).await,
        Ownership::InstanceTransfers => i::list(plane, caller).await,
        Ownership::InitiateInstanceTransfers => i::initiate(plane, caller, request).await,
        Ownership::ConfirmInstanceTransfers => i::confirm(plane, caller, request).await,
        Ownership::CancelInstanceTransfers => i::cancel(plane, caller, request).await,
        Ownership::RejectInstanceTransfers => i::reject(plane, caller, request).await,
        Ownership::InstanceTransfer => i::get(plane, caller, request).await,
        Ownership::RenewInstance => i::renew(plane, caller, request).await,
        Ownership::OrganisationInstances => i::organisation_instances(plane, caller).await,
        Ownership::OrganisationInstanceTransfers => i::organisation_orders(plane, caller).await,
    }
}

/// Runs an operator endpoint; the caller has presented the operator token.
pub(super) async fn operator(
    plane: &ControlPlane,
    endpoint: Operator,
    request: ApiRequest,
) -> Result {
    match endpoint {
        Operator::AllowList => {
            #[derive(Serialize)]
            struct List {
                accounts: Vec<AllowListEntry>,
            }
            response::json(StatusCode::OK, &List { accounts: plane.transfer_allow_list().await? })
        }
        Operator::Allow => {
            let account = account_param(&request)?;
            response::json(StatusCode::OK, &plane.allow_transfers(&account).await?)
        }
        Operator::Disallow => {
            let account = account_param(&request)?;
            plane.disallow_transfers(&account).await?;
            Ok(response::no_content())
        }
        Operator::SetOrganisation => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                organisation: Option<OrganisationId>,
                #[serde(default)]
                admin: bool,
            }
            let account = account_param(&request)?;
            let body: Body = request.json().await?;
            let account = plane.set_organisation(&account, body.organisation, body.admin).await?;
            response::json(StatusCode::OK, &account)
        }
    }
}

/// `{account}`; one that does not parse names no account: 404.
fn account_param(request: &ApiRequest) -> Result<AccountId> {
    let value = request.param("account");
    value.parse().map_err(|_| {
        ControlError::NotFound { kind: "account", id: super::response::echo(value) }.into()
    })
}

#[cfg(test)]
mod tests {
    use hyper::Method;

    use super::super::router::{Endpoint, Resolution, Tenant, resolve};
    use super::*;

    fn endpoint(method: Method, path: &str) -> Endpoint {
        match resolve(&method, path) {
            Resolution::Found(endpoint, _) => endpoint,
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    #[test]
    fn literal_segments_win_over_order_ids() {
        let ownership = |t| Endpoint::Tenant(Tenant::Ownership(t));
        let path = "/v1/instance-transfers/confirm";
        assert_eq!(endpoint(Method::POST, path), ownership(Ownership::ConfirmInstanceTransfers));
        assert_eq!(endpoint(Method::GET, path), ownership(Ownership::InstanceTransfer));
        let path = "/v1/device-transfers/template.csv";
        assert_eq!(endpoint(Method::GET, path), ownership(Ownership::DeviceTransferTemplate));
        let path = "/v1/operator/transfer-allow-list/acme";
        assert_eq!(endpoint(Method::PUT, path), Endpoint::Operator(Operator::Allow));
        assert_eq!(
            resolve(&Method::POST, path),
            Resolution::WrongMethod(vec![Method::PUT, Method::DELETE])
        );
    }
}
