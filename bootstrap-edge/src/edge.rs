//! The edge's shared state: configuration turned into the typed pieces requests use.

use std::sync::Arc;
use std::time::Duration;

use meridian_geo::{GeoDb, GeoError, Locator, LocatorOptions};
use meridian_registry::ids::RegionId;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::client_ip::TrustedProxies;
use crate::config::{ConfigError, EdgeConfig, GeoIpConfig};
use crate::metrics::EdgeMetrics;
use crate::rate_limit::ClientLimiter;
use crate::routing::RoutingTable;

/// Everything a request needs. Cheap to clone; every clone is the same edge.
#[derive(Clone)]
pub struct Edge {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) table: Arc<RoutingTable>,
    pub(crate) locator: Locator,
    pub(crate) trusted: TrustedProxies,
    /// `None`: rate limiting is off.
    pub(crate) limiter: Option<ClientLimiter>,
    pub(crate) proxy_protocol: bool,
    pub(crate) header_read_timeout: Duration,
    pub(crate) body_read_timeout: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_connections: usize,
    /// `regionId/{n}` → region.
    pub(crate) region_numbers: Vec<RegionId>,
    /// Renders `GET /metrics`; `None` answers 404.
    pub(crate) prometheus: Option<PrometheusHandle>,
    pub(crate) metrics: EdgeMetrics,
}

impl Edge {
    /// An edge answering from `table`, locating nearest-access clients with `locator`.
    ///
    /// Call it after the process has installed its metrics recorder: the edge registers its
    /// metric handles here.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `config` fails [`EdgeConfig::check`].
    pub fn new(
        config: &EdgeConfig,
        table: Arc<RoutingTable>,
        locator: Locator,
        prometheus: Option<PrometheusHandle>,
    ) -> Result<Self, ConfigError> {
        config.check()?;
        Ok(Self {
            inner: Arc::new(Inner {
                table,
                locator,
                trusted: TrustedProxies::new(config.trusted_proxies.clone()),
                limiter: ClientLimiter::new(&config.rate_limit),
                proxy_protocol: config.proxy_protocol,
                header_read_timeout: config.header_read_timeout,
                body_read_timeout: config.body_read_timeout,
                max_body_bytes: config.max_body_bytes,
                max_connections: config.max_connections,
                region_numbers: config.region_numbers.clone(),
                prometheus,
                metrics: EdgeMetrics::register(),
            }),
        })
    }

    /// The routing table this edge answers from.
    #[must_use]
    pub fn table(&self) -> &Arc<RoutingTable> {
        &self.inner.table
    }
}

/// The locator `config` describes: its database opened if files are configured (without, every
/// nearest-access client gets the default region). Spawn the database's reload watcher with
/// [`GeoDb::spawn_reload_on_change`] on `locator.db()`.
///
/// # Errors
///
/// [`GeoError`] when the configured files cannot be opened.
pub fn open_locator(config: &GeoIpConfig) -> Result<Locator, GeoError> {
    let db = config.files.clone().map(GeoDb::open).transpose()?;
    let options = LocatorOptions { geolocate_loopback: config.geolocate_loopback };
    Ok(Locator::new(db, config.default_region.clone(), options))
}
