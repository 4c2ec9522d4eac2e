//! Devices of the caller's products. A device's JSON never holds its secret, except in the
//! answer that creates it (PROTOCOL §9: shown once).

use hyper::StatusCode;
use serde::{Deserialize, Serialize};

use meridian_registry::CreatedDevice;
use meridian_registry::ids::{AccountId, DeviceName};
use meridian_registry::secret::DeviceSecret;

use super::request::ApiRequest;
use super::response::{self, ApiError, Result};
use crate::plane::{ControlPlane, DeviceView};

/// `GET /v1/products/{pk}/devices`
pub(super) async fn list(plane: &ControlPlane, caller: &AccountId, request: ApiRequest) -> Result {
    #[derive(Serialize)]
    struct List {
        devices: Vec<DeviceView>,
    }
    let product = request.product_key()?;
    let devices = plane.devices(caller, &product).await?;
    response::json(
        StatusCode::OK,
        &List { devices: devices.iter().map(DeviceView::from).collect() },
    )
}

/// `POST /v1/products/{pk}/devices`: creates the listed devices, all or none.
pub(super) async fn create(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
) -> Result {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        devices: Vec<NewDevice>,
    }
    // Unknown fields are refused: a misspelt `deviceSecret` must not silently become a
    // generated secret.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct NewDevice {
        device_name: DeviceName,
        #[serde(default)]
        device_secret: Option<String>,
    }
    let product = request.product_key()?;
    let body: Body = request.json().await?;
    let mut names = Vec::with_capacity(body.devices.len());
    for (index, device) in body.devices.into_iter().enumerate() {
        let secret = match device.device_secret {
            Some(secret) => Some(DeviceSecret::new(secret).map_err(|error| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("devices[{index}].deviceSecret: {error}"),
                )
            })?),
            None => None,
        };
        names.push((device.device_name, secret));
    }
    let created = plane.create_devices(caller, &product, names).await?;
    response::json(StatusCode::CREATED, &Created::new(&created))
}

/// `POST /v1/products/{pk}/devices/import`: a `text/csv` body with a `deviceName` column and
/// an optional `deviceSecret` column, at most 1,000 rows, all or none.
pub(super) async fn import(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
) -> Result {
    let product = request.product_key()?;
    let csv = request.csv().await?;
    let created = plane.import_devices_csv(caller, &product, &csv).await?;
    response::json(StatusCode::CREATED, &Created::new(&created))
}

/// `GET /v1/products/{pk}/devices/{dn}`
pub(super) async fn get(plane: &ControlPlane, caller: &AccountId, request: ApiRequest) -> Result {
    let key = request.device_key()?;
    let device = plane.device(caller, &key).await?;
    response::json(StatusCode::OK, &DeviceView::from(&device))
}

/// `DELETE /v1/products/{pk}/devices/{dn}`: only at the source, and only while the device is
/// home (PROTOCOL §5).
pub(super) async fn delete(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
) -> Result {
    let key = request.device_key()?;
    plane.delete_device(caller, &key).await?;
    Ok(response::no_content())
}

/// `POST /v1/products/{pk}/devices/{dn}/disable` and `/enable`
pub(super) async fn set_enabled(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
    enabled: bool,
) -> Result {
    let key = request.device_key()?;
    let device = plane.set_device_enabled(caller, &key, enabled).await?;
    response::json(StatusCode::OK, &DeviceView::from(&device))
}

/// Devices just created, each with its secret: the only answer that ever shows one.
#[derive(Serialize)]
struct Created {
    devices: Vec<CreatedView>,
}

#[derive(Serialize)]
struct CreatedView {
    #[serde(flatten)]
    device: DeviceView,
    #[serde(rename = "deviceSecret")]
    device_secret: String,
}

impl Created {
    fn new(created: &[CreatedDevice]) -> Created {
        let devices = created
            .iter()
            .map(|created| CreatedView {
                device: DeviceView::from(&created.device),
                device_secret: created.secret.expose().to_owned(),
            })
            .collect();
        Created { devices }
    }
}
