//! Device transfer orders (PROTOCOL §6) and the destination's product views, under which it manages
//! the devices it received by view id and DeviceName. The destination is never shown the
//! ProductKey: orders show it the product's name, views show everything else of the product.

use hyper::StatusCode;
use serde::Serialize;

use meridian_registry::clock::Timestamp;
use meridian_registry::ids::{AccountId, DeviceName, ProductKey};
use meridian_registry::model::{Device, DeviceStatus, Placement};

use super::request::{ApiRequest, strip_bom};
use super::response::{self, Result, echo};
use crate::error::ControlError;
use crate::plane::ControlPlane;
use crate::transfer::{
    DeviceTransfer, DeviceTransferRequest, DeviceTransferState, ProductView, Side,
    TRANSFER_CSV_TEMPLATE,
};

/// `GET /v1/device-transfers`: orders the caller is the source or the destination of.
pub(super) async fn list(plane: &ControlPlane, caller: &AccountId) -> Result {
    #[derive(Serialize)]
    struct List<'a> {
        transfers: Vec<TransferView<'a>>,
    }
    let transfers = plane.device_transfers(caller).await?;
    let transfers = transfers.iter().map(|t| TransferView::new(t, caller)).collect();
    response::json(StatusCode::OK, &List { transfers })
}

/// `POST /v1/device-transfers`
pub(super) async fn create(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
) -> Result {
    let mut body: DeviceTransferRequest = request.json().await?;
    body.csv = body.csv.map(strip_bom);
    let transfer = plane.create_device_transfer(caller, body).await?;
    response::created(
        &format!("/v1/device-transfers/{}", transfer.id),
        &TransferView::new(&transfer, caller),
    )
}

/// `GET /v1/device-transfers/template.csv`
pub(super) fn template() -> Result {
    Ok(response::csv_attachment("transfer-template.csv", TRANSFER_CSV_TEMPLATE.to_owned()))
}

/// `GET /v1/device-transfers/{id}`
pub(super) async fn get(plane: &ControlPlane, caller: &AccountId, request: ApiRequest) -> Result {
    let transfer = plane.device_transfer(caller, request.param("id")).await?;
    response::json(StatusCode::OK, &TransferView::new(&transfer, caller))
}

/// `POST /v1/device-transfers/{id}/accept` (destination)
pub(super) async fn accept(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
) -> Result {
    let transfer = plane.accept_device_transfer(caller, request.param("id")).await?;
    response::json(StatusCode::OK, &TransferView::new(&transfer, caller))
}

/// `POST /v1/device-transfers/{id}/reject` (destination)
pub(super) async fn reject(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
) -> Result {
    let transfer = plane.reject_device_transfer(caller, request.param("id")).await?;
    response::json(StatusCode::OK, &TransferView::new(&transfer, caller))
}

/// `POST /v1/device-transfers/{id}/cancel` (source)
pub(super) async fn cancel(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
) -> Result {
    let transfer = plane.cancel_device_transfer(caller, request.param("id")).await?;
    response::json(StatusCode::OK, &TransferView::new(&transfer, caller))
}

/// `GET /v1/product-views`
pub(super) async fn views(plane: &ControlPlane, caller: &AccountId) -> Result {
    #[derive(Serialize)]
    struct List {
        product_views: Vec<ProductView>,
    }
    response::json(StatusCode::OK, &List { product_views: plane.product_views(caller).await? })
}

/// `GET /v1/product-views/{id}`
pub(super) async fn view(plane: &ControlPlane, caller: &AccountId, request: ApiRequest) -> Result {
    response::json(StatusCode::OK, &plane.product_view(caller, request.param("id")).await?)
}

/// `GET /v1/product-views/{id}/devices`: the caller's devices of the viewed product.
pub(super) async fn view_devices(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
) -> Result {
    #[derive(Serialize)]
    struct List {
        devices: Vec<ViewDevice>,
    }
    let devices = plane.view_devices(caller, request.param("id")).await?;
    response::json(
        StatusCode::OK,
        &List { devices: devices.iter().map(ViewDevice::from).collect() },
    )
}

/// `GET /v1/product-views/{id}/devices/{dn}`
pub(super) async fn view_device(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
) -> Result {
    let name = device_name(&request)?;
    let device = plane.view_device(caller, request.param("id"), &name).await?;
    response::json(StatusCode::OK, &ViewDevice::from(&device))
}

/// `DELETE /v1/product-views/{id}/devices/{dn}`
pub(super) async fn delete_view_device(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
) -> Result {
    let name = device_name(&request)?;
    plane.delete_view_device(caller, request.param("id"), &name).await?;
    Ok(response::no_content())
}

/// `POST /v1/product-views/{id}/devices/{dn}/disable` and `/enable`
pub(super) async fn set_enabled(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
    enabled: bool,
) -> Result {
    let name = device_name(&request)?;
    let device = plane.set_view_device_enabled(caller, request.param("id"), &name, enabled).await?;
    response::json(StatusCode::OK, &ViewDevice::from(&device))
}

fn device_name(request: &ApiRequest) -> Result<DeviceName> {
    let value = request.param("dn");
    value.parse().map_err(|_| ControlError::NotFound { kind: "device", id: echo(value) }.into())
}

/// An order as one side sees it: the destination gets the product's name, not its key, and
/// the source does not get the destination's product view.
#[derive(Serialize)]
struct TransferView<'a> {
    id: &'a str,
    /// The caller's side of the order.
    side: Side,
    source: &'a AccountId,
    destination: &'a AccountId,
    #[serde(skip_serializing_if = "Option::is_none")]
    product: Option<&'a ProductKey>,
    product_name: &'a str,
    devices: &'a [DeviceName],
    with_tags: bool,
    state: DeviceTransferState,
    #[serde(skip_serializing_if = "Option::is_none")]
    product_view: Option<&'a str>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl<'a> TransferView<'a> {
    fn new(transfer: &'a DeviceTransfer, caller: &AccountId) -> TransferView<'a> {
        // Orders reach here only for a caller on one of their sides.
        let side = transfer.side(caller).unwrap_or(Side::Destination);
        TransferView {
            id: &transfer.id,
            side,
            source: &transfer.source,
            destination: &transfer.destination,
            product: (side == Side::Source).then_some(&transfer.product),
            product_name: &transfer.product_name,
            devices: &transfer.devices,
            with_tags: transfer.with_tags,
            state: transfer.state,
            product_view: transfer.product_view.as_deref().filter(|_| side == Side::Destination),
            created_at: transfer.created_at,
            updated_at: transfer.updated_at,
        }
    }
}

/// A device under a product view: named by its DeviceName, without the ProductKey or secret.
#[derive(Serialize)]
struct ViewDevice {
    #[serde(rename = "deviceName")]
    device_name: DeviceName,
    status: DeviceStatus,
    placement: Placement,
    tags: std::collections::BTreeMap<String, String>,
    created_at: Timestamp,
}

impl From<&Device> for ViewDevice {
    fn from(device: &Device) -> ViewDevice {
        ViewDevice {
            device_name: device.key.device_name.clone(),
            status: device.status,
            placement: device.placement.clone(),
            tags: device.tags.clone(),
            created_at: device.created_at,
        }
    }
}
