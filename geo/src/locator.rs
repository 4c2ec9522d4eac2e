//! The GeoIP pick: client address in, candidate region out, with the reason for any fallback.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::addr::{AddrClass, canonicalize, classify};
use crate::db::GeoDb;
use crate::location::Location;
use crate::region::{Region, nearest};

/// Tunables for [`Locator`], meant to be embedded in a daemon's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocatorOptions {
    /// Look loopback addresses (`127.0.0.0/8`, `::1`) up in the database instead of falling
    /// back. Off by default; end-to-end tests turn it on and give `127.x` sub-ranges locations
    /// (see `testdb`) so devices on one machine can appear to connect "from several places".
    pub geolocate_loopback: bool,
}

/// Picks a nearest-access region for a client address.
#[derive(Debug, Clone)]
pub struct Locator {
    /// `None` runs without GeoIP: every pick falls back with [`FallbackReason::NoDatabase`].
    db: Option<GeoDb>,
    default_region: String,
    options: LocatorOptions,
}

/// The region chosen for one client and how it was chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    /// Id of the chosen candidate.
    pub region_id: String,
    /// Whether the client was located or this is a fallback.
    pub outcome: LookupOutcome,
    /// Where the database placed the client; `Some` exactly when `outcome` is
    /// [`LookupOutcome::Found`]. For logs and metrics.
    pub location: Option<Location>,
}

/// How a [`Pick`] came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LookupOutcome {
    /// The client was located and the nearest candidate chosen.
    Found,
    /// The client could not be located; the default region (or the first candidate, if the
    /// default is not a candidate) was chosen.
    Fallback(FallbackReason),
}

/// Why a client could not be located. When several apply, the first listed wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackReason {
    /// The address is not publicly routable: private, CGNAT, link-local, unique-local,
    /// documentation, unspecified, … (see [`AddrClass::NonPublic`]).
    Private,
    /// A loopback address while [`LocatorOptions::geolocate_loopback`] is off.
    Loopback,
    /// The locator has no database.
    NoDatabase,
    /// The database was asked and does not know the address (no record, no coordinates, or a
    /// record that failed to decode).
    Unknown,
}

impl FallbackReason {
    /// A stable lower-case name, for metric labels and logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::Loopback => "loopback",
            Self::NoDatabase => "no_database",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Locator {
    /// A locator that falls back to `default_region` when a client cannot be located.
    #[must_use]
    pub fn new(
        db: Option<GeoDb>,
        default_region: impl Into<String>,
        options: LocatorOptions,
    ) -> Self {
        Self { db, default_region: default_region.into(), options }
    }

    /// Chooses among `candidates` for a client at `ip`: the [`nearest`] one when the client can
    /// be located, otherwise the default region if it is a candidate, otherwise the first
    /// candidate. `None` only when `candidates` is empty.
    #[must_use]
    pub fn pick(&self, ip: IpAddr, candidates: &[Region]) -> Option<Pick> {
        let fallback = candidates
            .iter()
            .find(|region| region.id == self.default_region)
            .or_else(|| candidates.first())?;
        let (region, outcome, location) = match self.locate(ip) {
            Ok(location) => {
                // `nearest` skips candidates with non-finite coordinates; if that leaves none,
                // the fallback is still a region the caller offered.
                let region = nearest(&location, candidates).unwrap_or(fallback);
                (region, LookupOutcome::Found, Some(location))
            }
            Err(reason) => (fallback, LookupOutcome::Fallback(reason), None),
        };
        Some(Pick { region_id: region.id.clone(), outcome, location })
    }

    /// Locates a client, or says why it cannot be located.
    ///
    /// # Errors
    ///
    /// The [`FallbackReason`] when the address is not looked up or not found.
    pub fn locate(&self, ip: IpAddr) -> Result<Location, FallbackReason> {
        let ip = canonicalize(ip);
        match classify(ip) {
            AddrClass::NonPublic => return Err(FallbackReason::Private),
            AddrClass::Loopback if !self.options.geolocate_loopback => {
                return Err(FallbackReason::Loopback);
            }
            AddrClass::Loopback | AddrClass::Public => {}
        }
        let db = self.db.as_ref().ok_or(FallbackReason::NoDatabase)?;
        match db.lookup(ip) {
            Ok(Some(location)) => Ok(location),
            Ok(None) => Err(FallbackReason::Unknown),
            Err(error) => {
                // Per-request, so debug: a corrupt record is not worth a warning per client.
                tracing::debug!(%ip, error = &error as &dyn std::error::Error, "GeoIP lookup failed");
                Err(FallbackReason::Unknown)
            }
        }
    }

    /// The region used when a client cannot be located.
    #[must_use]
    pub fn default_region(&self) -> &str {
        &self.default_region
    }

    /// The database, if any (e.g. to spawn its reload watcher).
    #[must_use]
    pub fn db(&self) -> Option<&GeoDb> {
        self.db.as_ref()
    }

    /// The options in force.
    #[must_use]
    pub fn options(&self) -> &LocatorOptions {
        &self.options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates() -> Vec<Region> {
        vec![Region::new("eu-central-1", 50.11, 8.68), Region::new("cn-shanghai", 31.23, 121.47)]
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address parses")
    }

    #[test]
    fn without_database_everything_falls_back() {
        let locator = Locator::new(None, "cn-shanghai", LocatorOptions::default());
        let pick = locator.pick(ip("8.8.8.8"), &candidates()).expect("candidates");
        assert_eq!(pick.region_id, "cn-shanghai");
        assert_eq!(pick.outcome, LookupOutcome::Fallback(FallbackReason::NoDatabase));
        assert_eq!(pick.location, None);
    }

    #[test]
    fn address_class_is_reported_before_missing_database() {
        let locator = Locator::new(None, "cn-shanghai", LocatorOptions::default());
        assert_eq!(locator.locate(ip("192.168.0.1")), Err(FallbackReason::Private));
        assert_eq!(locator.locate(ip("127.0.0.1")), Err(FallbackReason::Loopback));
        let loopback_on =
            Locator::new(None, "cn-shanghai", LocatorOptions { geolocate_loopback: true });
        assert_eq!(loopback_on.locate(ip("127.0.0.1")), Err(FallbackReason::NoDatabase));
    }

    #[test]
    fn default_region_not_a_candidate_uses_first_candidate() {
        let locator = Locator::new(None, "us-east-1", LocatorOptions::default());
        let pick = locator.pick(ip("10.0.0.1"), &candidates()).expect("candidates");
        assert_eq!(pick.region_id, "eu-central-1");
        assert_eq!(pick.outcome, LookupOutcome::Fallback(FallbackReason::Private));
    }

    #[test]
    fn no_candidates_no_pick() {
        let locator = Locator::new(None, "us-east-1", LocatorOptions::default());
        assert_eq!(locator.pick(ip("8.8.8.8"), &[]), None);
    }

    #[test]
    fn reasons_have_stable_names() {
        assert_eq!(FallbackReason::Private.to_string(), "private");
        assert_eq!(FallbackReason::NoDatabase.as_str(), "no_database");
    }
}
