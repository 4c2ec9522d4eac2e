//! GeoIP lookup and nearest-region pick.
//!
//! The bootstrap edge answers a *nearest access* device with the candidate region closest to the
//! device's client address (PROTOCOL §4). This crate owns that decision:
//!
//! - [`GeoDb`] reads MaxMind DB (`.mmdb`) files — GeoIP2/GeoLite2 City or the flat DB-IP lite
//!   layout, one combined file or an IPv4 + IPv6 pair — and swaps in a new copy atomically on
//!   [`GeoDb::reload`] or from the polling watcher [`GeoDb::spawn_reload_on_change`].
//! - [`canonicalize`] and [`classify`] turn a socket address into something worth looking up:
//!   IPv4-mapped IPv6 becomes IPv4, and private, loopback and other non-public addresses are
//!   never sent to the database.
//! - [`nearest`] picks the closest [`Region`] by great-circle distance with a per-region bias.
//! - [`Locator`] puts the three together: [`Locator::pick`] always yields a region and says
//!   whether it was [found](LookupOutcome::Found) or a [fallback](LookupOutcome::Fallback).
//!
//! What this crate does **not** do: it never downloads or updates database files (an operator
//! or a cron job replaces them; the watcher notices), it does not work out the client address
//! from `X-Forwarded-For` or PROXY headers (the edge does that before calling here), and it
//! knows nothing about instances, devices or placements — it only names a region id.
//!
//! With the `test-util` feature, the `testdb` module writes small databases in either layout
//! for tests.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod addr;
mod db;
mod error;
mod location;
mod locator;
mod region;
#[cfg(feature = "test-util")]
pub mod testdb;
mod watch;

pub use crate::addr::{AddrClass, canonicalize, classify};
pub use crate::db::{DbFiles, GeoDb};
pub use crate::error::GeoError;
pub use crate::location::Location;
pub use crate::locator::{FallbackReason, Locator, LocatorOptions, LookupOutcome, Pick};
pub use crate::region::{EARTH_RADIUS_KM, Region, haversine_km, nearest};
pub use crate::watch::ReloadWatcher;
