//! Meridian's control plane: accounts with API keys, regions and instances, products and
//! devices, cross-account verification codes, distribution tasks, device and instance transfer
//! orders, and the audit log, all on the registry store. Every operation takes the calling
//! account and sees only its resources.
//!
//! The admin HTTP API over it is [`api::serve`].
//!
//! What it does not do: talk to brokers (they follow the registry's change feed).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod api;
mod device_list;
pub mod distribution;
pub mod error;
pub mod internal;
pub mod listing;
pub mod model;
pub mod plane;
pub mod remote;
pub mod resource_transfer;
pub mod transfer;

pub use distribution::{CSV_TEMPLATE, CrossAccount, MAX_TASK_DEVICES, PolicyRequest, TaskRequest};
pub use error::ControlError;
pub use plane::{ControlPlane, DeviceView, NewAccount, NewInstance, NewProduct, ProductPatch};
pub use resource_transfer::{InstanceTransfer, InstanceTransferRequest, InstanceTransferState};
pub use transfer::{DeviceTransfer, DeviceTransferRequest, DeviceTransferState, ProductView};
