//! Meridian's shared domain model, device signatures, and the durable store with its change feed.
//!
//! Daemons follow the store's change feed to keep their own in-memory views, and the control
//! plane writes through [`Registry`]. The only network code here is the JetStream backend of the
//! store (`store::JetStreamStore`).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod clock;
pub mod ids;
pub mod keys;
pub mod model;
mod registry;
pub mod secret;
pub mod signature;
pub mod store;
pub mod subscriptions;

pub use registry::{
    CreatedDevice, MAX_DEVICES_PER_BATCH, NewDevice, Registry, RegistryError, decode, encode,
};
