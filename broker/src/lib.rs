//! Meridian's MQTT 3.1.1 broker: device signature authentication, per-device ACL, persistent
//! sessions, and force-offline for distribution.
//!
//! Layout: `codec` frames bytes, `session` is the sans-I/O protocol state machine, `router`
//! holds subscriptions, retained messages and sessions, `connection` drives one socket, `broker`
//! accepts and offers the force-offline API, `tls` and `websocket` turn accepted sockets into
//! byte streams for it; `auth` and `acl` decide who may do what from the
//! in-memory registry `view`; `kept` writes each device's subscriptions to the registry and
//! restores them when it connects (PROTOCOL §2). What it does not do: MQTT 5, clustering (one broker
//! per instance), or write any other device state back into the registry.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod acl;
pub mod admission;
pub mod auth;
mod broker;
pub mod budget;
pub mod codec;
pub mod config;
mod connection;
pub mod daemon;
pub mod kept;
pub mod link;
mod listener;
pub mod memory;
mod metrics;
pub mod packet;
mod retained;
pub mod router;
pub mod session;
pub mod tls;
pub mod topic;
mod trie;
mod usage;
pub mod view;
pub mod websocket;

pub use broker::{Broker, ForcedOffline};
pub use retained::RetainedCursor;
pub use usage::Usage;
