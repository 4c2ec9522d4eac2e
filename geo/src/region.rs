//! Regions and the nearest-region rule: great-circle distance minus a per-region bias.

use serde::{Deserialize, Serialize};

use crate::location::Location;

/// Mean Earth radius (IUGG), in kilometres.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// A candidate region for nearest access.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Region {
    /// Region id, e.g. `eu-central-1`.
    pub id: String,
    /// Latitude of the region's data centre, in degrees.
    pub lat: f64,
    /// Longitude of the region's data centre, in degrees.
    pub lon: f64,
    /// Kilometres **subtracted** from this region's great-circle distance before comparing:
    /// a positive bias pulls clients towards the region (it wins ties it would otherwise lose
    /// by up to `bias_km`), a negative bias pushes them away. Defaults to 0.
    #[serde(default)]
    pub bias_km: f64,
}

impl Region {
    /// A region without bias.
    #[must_use]
    pub fn new(id: impl Into<String>, lat: f64, lon: f64) -> Self {
        Self { id: id.into(), lat, lon, bias_km: 0.0 }
    }

    /// Sets [`bias_km`](Self::bias_km).
    #[must_use]
    pub fn with_bias_km(mut self, bias_km: f64) -> Self {
        self.bias_km = bias_km;
        self
    }

    /// Great-circle distance from `from` minus [`bias_km`](Self::bias_km); may be negative.
    #[must_use]
    pub fn effective_distance_km(&self, from: &Location) -> f64 {
        haversine_km(from.lat, from.lon, self.lat, self.lon) - self.bias_km
    }
}

/// The candidate with the smallest [effective distance](Region::effective_distance_km) from
/// `location`; on an exact tie, the smallest id wins so the answer never depends on order.
/// Candidates whose distance is not a finite number (bad coordinates or bias) are skipped.
/// `None` only when no candidate qualifies.
#[must_use]
pub fn nearest<'a>(location: &Location, candidates: &'a [Region]) -> Option<&'a Region> {
    candidates
        .iter()
        .map(|region| (region.effective_distance_km(location), region))
        .filter(|(distance, _)| distance.is_finite())
        .min_by(|(da, a), (db, b)| da.total_cmp(db).then_with(|| a.id.cmp(&b.id)))
        .map(|(_, region)| region)
}

/// Great-circle distance in kilometres between two points given in degrees (haversine on a
/// sphere of radius [`EARTH_RADIUS_KM`]; within 0.5 % of the ellipsoidal distance, which is
/// far finer than GeoIP accuracy).
#[must_use]
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let d_phi = (lat2 - lat1).to_radians();
    let d_lambda = (lon2 - lon1).to_radians();
    let a = (d_phi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (d_lambda / 2.0).sin().powi(2);
    // Rounding can push `a` a hair past 1 for antipodal points, where asin would return NaN.
    // `clamp`, unlike `min`, keeps a NaN input NaN so bad coordinates stay detectable.
    2.0 * EARTH_RADIUS_KM * a.sqrt().clamp(0.0, 1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> Vec<Region> {
        vec![
            Region::new("eu-central-1", 50.11, 8.68),
            Region::new("cn-shanghai", 31.23, 121.47),
            Region::new("us-east-1", 38.95, -77.45),
        ]
    }

    fn pick(lat: f64, lon: f64, candidates: &[Region]) -> Option<&str> {
        nearest(&Location::new(lat, lon), candidates).map(|r| r.id.as_str())
    }

    #[test]
    fn haversine_known_distances() {
        assert_eq!(haversine_km(50.11, 8.68, 50.11, 8.68), 0.0);
        // Quarter of the equator.
        let quarter = haversine_km(0.0, 0.0, 0.0, 90.0);
        assert!((quarter - EARTH_RADIUS_KM * std::f64::consts::FRAC_PI_2).abs() < 1e-6);
        // Antipodes: half the circumference, no NaN (asin is ill-conditioned there, so a
        // metre of slack).
        let half = haversine_km(10.0, 20.0, -10.0, -160.0);
        assert!((half - EARTH_RADIUS_KM * std::f64::consts::PI).abs() < 1e-3, "{half}");
        assert!(haversine_km(f64::NAN, 0.0, 0.0, 0.0).is_nan());
        // Frankfurt to Shanghai is about 8,820 km.
        let fra_sha = haversine_km(50.11, 8.68, 31.23, 121.47);
        assert!((8_800.0..8_850.0).contains(&fra_sha), "{fra_sha}");
        // Symmetric.
        assert_eq!(fra_sha, haversine_km(31.23, 121.47, 50.11, 8.68));
    }

    #[test]
    fn nearest_without_bias() {
        let regions = regions();
        assert_eq!(pick(51.51, -0.13, &regions), Some("eu-central-1")); // London
        assert_eq!(pick(35.68, 139.69, &regions), Some("cn-shanghai")); // Tokyo
        assert_eq!(pick(-33.87, 151.21, &regions), Some("cn-shanghai")); // Sydney
        assert_eq!(pick(37.39, -122.08, &regions), Some("us-east-1")); // Mountain View
        assert_eq!(pick(0.0, 0.0, &[]), None);
    }

    #[test]
    fn positive_bias_attracts_and_negative_repels() {
        // Moscow: Frankfurt ~2,000 km, Shanghai ~6,800 km.
        let moscow = (55.76, 37.62);
        let mut regions = regions();
        assert_eq!(pick(moscow.0, moscow.1, &regions), Some("eu-central-1"));

        regions[1].bias_km = 5_000.0;
        assert_eq!(pick(moscow.0, moscow.1, &regions), Some("cn-shanghai"));

        regions[1].bias_km = 0.0;
        regions[0].bias_km = -5_000.0;
        assert_eq!(pick(moscow.0, moscow.1, &regions), Some("cn-shanghai"));
    }

    #[test]
    fn exact_tie_goes_to_smallest_id_in_any_order() {
        // Mirror images around the client: the distances are bit-for-bit equal.
        let east = Region::new("b-east", 0.0, 10.0);
        let west = Region::new("a-west", 0.0, -10.0);
        let here = Location::new(0.0, 0.0);
        assert_eq!(east.effective_distance_km(&here), west.effective_distance_km(&here));
        assert_eq!(pick(0.0, 0.0, &[east.clone(), west.clone()]), Some("a-west"));
        assert_eq!(pick(0.0, 0.0, &[west.clone(), east.clone()]), Some("a-west"));

        // One kilometre of bias breaks the tie the other way.
        let east = east.with_bias_km(1.0);
        assert_eq!(pick(0.0, 0.0, &[east.clone(), west.clone()]), Some("b-east"));
        assert_eq!(pick(0.0, 0.0, &[west, east]), Some("b-east"));
    }

    #[test]
    fn non_finite_candidates_are_skipped() {
        let candidates = [
            Region::new("broken", f64::NAN, 0.0),
            Region::new("inf-bias", 0.0, 0.0).with_bias_km(f64::NEG_INFINITY),
            Region::new("ok", 40.0, 40.0),
        ];
        assert_eq!(pick(0.0, 0.0, &candidates), Some("ok"));
        assert_eq!(pick(0.0, 0.0, &candidates[..2]), None);
    }
}
