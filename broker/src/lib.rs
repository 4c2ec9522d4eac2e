//! Meridian's MQTT broker, 3.1.1 and 5.0 on every listener: device signature authentication,
//! per-device ACL, persistent sessions, force-offline and (over 5.0) redirect for distribution.
//!
//! Layout: `codec` frames bytes into `packet`'s version-aware packets, `session` is the sans-I/O
//! protocol state machine both versions share, `router` holds subscriptions (`trie`, with shared
//! groups), retained messages and sessions, `link` is a connection's inbox; `connection` drives
//! one socket, `listener` accepts, `broker` holds the shared state and offers the force-offline
//! API; `tls` and `websocket` turn accepted sockets into byte streams; `auth` and `acl` decide who
//! may do what from the in-memory registry `view`; `kept` writes each device's subscriptions to
//! the registry and restores them when it connects (PROTOCOL §2). What it does not do:
//! clustering (one broker per instance), enhanced authentication (AUTH: refused with 0x8C), or
//! write any other device state back into the registry.
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
