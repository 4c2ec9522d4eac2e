//! Meridian's bootstrap edge: the one address burned into every device, answering "where do I
//! connect?" exactly as the vendor's devices expect (PROTOCOL §4).
//!
//! - [`run`] serves `POST /auth/bootstrap` and `GET /auth/bootstrap/regionId/{n}` over
//!   HTTP/1.1 (hyper) on a listener the caller bound, until a shutdown future resolves.
//! - [`RoutingTable`] maps every device to its placement and the placement to an endpoint; reads
//!   never block. [`follow`] keeps it current from the registry's change feed.
//! - Nearest-access devices are located by client address with [`meridian_geo`]; the client
//!   address comes from the socket, a trusted proxy's `X-Forwarded-For`, or a PROXY v2 header
//!   ([`TrustedProxies`], [`proxy_protocol`]).
//! - Requests are rate limited per client address; metrics go to the `metrics` facade and are
//!   rendered at `GET /metrics` when the process hands over its Prometheus handle.
//!
//! ## `GET /auth/bootstrap/regionId/{n}`
//!
//! The vendor's C SDK (its "guider" code) sends this instead of the POST when the device has
//! stored a region number, which its companion app sets from the vendor's region enum
//! (`iotx_cloud_region_types_t`: 0 Shanghai, 1 Singapore, 2 Tokyo, 3 Virginia, 4 Frankfurt,
//! 5 Silicon Valley). The request has no body and so names no device: the answer can only be
//! the region's, not a placement's. The edge therefore answers with the public endpoint the
//! platform operator configured on the region record ([`Region::public_endpoint`]), where
//! region `n` is entry `n` of [`EdgeConfig::region_numbers`] (default: the vendor's enum order,
//! so unchanged firmware keeps working). It never answers with an instance's endpoint: any
//! account may own instances in a region, and a region's devices must not be sent to one of
//! them (PROTOCOL §4). An unnumbered region, or one without a configured endpoint, is
//! `404 unknown region`; anything but a decimal number is `400`.
//!
//! [`Region::public_endpoint`]: meridian_registry::model::Region::public_endpoint
//!
//! What this crate does **not** do: terminate TLS (a load balancer in front does, and passes
//! the client address by PROXY protocol), write to the registry (data flows one way: the
//! control plane writes, the edge follows the feed), authenticate devices (the vendor's
//! bootstrap carries no signature; the broker checks the MQTT signature), or serve the admin
//! API.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod client_ip;
mod config;
mod edge;
mod follow;
mod metrics;
pub mod proxy_protocol;
mod rate_limit;
mod reply;
mod request;
pub mod route;
mod routing;
#[doc(hidden)]
pub mod sdk;
mod server;
mod service;
mod socket;

pub use crate::client_ip::TrustedProxies;
pub use crate::config::{ConfigError, EdgeConfig, GeoIpConfig, RateLimitConfig};
pub use crate::edge::{Edge, open_locator};
pub use crate::follow::follow;
pub use crate::metrics::{GEO_LOOKUPS, REQUEST_DURATION, REQUESTS, ROUTING_DEVICES};
pub use crate::reply::Rejection;
pub use crate::routing::{Resolution, RoutingTable, TableWriter};
pub use crate::server::run;
pub use crate::service::{BOOTSTRAP_PATH, METRICS_PATH, REGION_PATH_PREFIX};

/// Entry points for the fuzz targets in `fuzz/`: the private parsers a request's bytes reach,
/// without a socket. Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use meridian_registry::ids::DeviceKey;

    use crate::reply::Rejection;

    /// The `POST /auth/bootstrap` form body parser.
    pub fn parse_bootstrap_form(body: &[u8]) -> Result<DeviceKey, Rejection> {
        crate::request::parse_form(body)
    }

    /// The form's fields as the edge splits and decodes them, to compare with
    /// `form_urlencoded::parse`.
    pub fn form_fields(body: &str) -> Vec<(String, String)> {
        crate::request::Fields::new(body)
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect()
    }
}
