//! The caller's products, and the read-only copies distributed to it from other products.

use hyper::StatusCode;
use serde::Serialize;

use meridian_registry::ids::AccountId;
use meridian_registry::model::{Product, ProductCopy};

use super::request::ApiRequest;
use super::response::{self, Result};
use crate::listing::BrokenRecord;
use crate::plane::{ControlPlane, NewProduct, ProductPatch};

/// `GET /v1/products`
pub(super) async fn list(plane: &ControlPlane, caller: &AccountId) -> Result {
    #[derive(Serialize)]
    struct List {
        products: Vec<Product>,
        /// The caller's products whose stored records do not decode (absent when none).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        broken: Vec<BrokenRecord>,
    }
    let listing = plane.products(caller).await?;
    response::json(StatusCode::OK, &List { products: listing.items, broken: listing.broken })
}

/// `POST /v1/products`
pub(super) async fn create(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
) -> Result {
    let new: NewProduct = request.json().await?;
    let product = plane.create_product(caller, new).await?;
    response::created(&format!("/v1/products/{}", product.key), &product)
}

/// `GET /v1/products/{pk}`
pub(super) async fn get(plane: &ControlPlane, caller: &AccountId, request: ApiRequest) -> Result {
    let key = request.product_key()?;
    response::json(StatusCode::OK, &plane.product(caller, &key).await?)
}

/// `PATCH /v1/products/{pk}`: absent fields stay as they are (merge-patch semantics).
pub(super) async fn update(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
) -> Result {
    let key = request.product_key()?;
    let patch: ProductPatch =
        request.json_as(&["application/json", "application/merge-patch+json"]).await?;
    response::json(StatusCode::OK, &plane.update_product(caller, &key, patch).await?)
}

/// `GET /v1/product-copies`
pub(super) async fn copies(plane: &ControlPlane, caller: &AccountId) -> Result {
    #[derive(Serialize)]
    struct List {
        product_copies: Vec<ProductCopy>,
        /// The caller's copies whose stored records do not decode (absent when none).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        broken: Vec<BrokenRecord>,
    }
    let listing = plane.product_copies(caller).await?;
    response::json(StatusCode::OK, &List { product_copies: listing.items, broken: listing.broken })
}
