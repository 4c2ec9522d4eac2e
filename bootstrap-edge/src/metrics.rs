//! The edge's metrics, recorded through the `metrics` facade; the process installs the
//! Prometheus exporter and hands its handle to the edge for `GET /metrics`.
//!
//! Handles are registered once, when the [`Edge`](crate::Edge) is built, so the request path
//! only bumps atomics instead of looking metric names up.

use std::time::Duration;

use meridian_geo::{FallbackReason, LookupOutcome};
use metrics::{Counter, Gauge, Histogram, Unit};

/// Requests answered, by `result`.
pub const REQUESTS: &str = "meridian_edge_requests_total";
/// Time from request head to response, in seconds.
pub const REQUEST_DURATION: &str = "meridian_edge_request_duration_seconds";
/// Devices in the routing table.
pub const ROUTING_DEVICES: &str = "meridian_edge_routing_devices";
/// Nearest-access GeoIP lookups, by `outcome`.
pub const GEO_LOOKUPS: &str = "meridian_edge_geo_lookups_total";

/// How a request ended; the `result` label of [`REQUESTS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    UnknownDevice,
    UnknownRegion,
    BadRequest,
    TooLarge,
    Timeout,
    UnsupportedMediaType,
    MethodNotAllowed,
    NotFound,
    RateLimited,
}

impl Outcome {
    const ALL: [Outcome; 10] = [
        Outcome::Ok,
        Outcome::UnknownDevice,
        Outcome::UnknownRegion,
        Outcome::BadRequest,
        Outcome::TooLarge,
        Outcome::Timeout,
        Outcome::UnsupportedMediaType,
        Outcome::MethodNotAllowed,
        Outcome::NotFound,
        Outcome::RateLimited,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::UnknownDevice => "unknown_device",
            Outcome::UnknownRegion => "unknown_region",
            Outcome::BadRequest => "bad_request",
            Outcome::TooLarge => "too_large",
            Outcome::Timeout => "timeout",
            Outcome::UnsupportedMediaType => "unsupported_media_type",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::NotFound => "not_found",
            Outcome::RateLimited => "rate_limited",
        }
    }
}

/// Geo outcomes in label order: found, then each fallback reason.
const GEO_OUTCOMES: [&str; 5] = ["found", "private", "loopback", "no_database", "unknown"];

fn geo_index(outcome: LookupOutcome) -> usize {
    match outcome {
        LookupOutcome::Found => 0,
        LookupOutcome::Fallback(FallbackReason::Private) => 1,
        LookupOutcome::Fallback(FallbackReason::Loopback) => 2,
        LookupOutcome::Fallback(FallbackReason::NoDatabase) => 3,
        LookupOutcome::Fallback(FallbackReason::Unknown) => 4,
    }
}

/// Registered handles for the request path.
pub(crate) struct EdgeMetrics {
    /// Indexed like [`Outcome::ALL`].
    requests: Vec<Counter>,
    duration: Histogram,
    /// Indexed like [`GEO_OUTCOMES`].
    geo: Vec<Counter>,
}

impl EdgeMetrics {
    pub(crate) fn register() -> Self {
        metrics::describe_counter!(REQUESTS, Unit::Count, "Bootstrap edge requests by result");
        metrics::describe_histogram!(
            REQUEST_DURATION,
            Unit::Seconds,
            "Bootstrap edge time from request head to response"
        );
        metrics::describe_gauge!(ROUTING_DEVICES, Unit::Count, "Devices in the routing table");
        metrics::describe_counter!(GEO_LOOKUPS, Unit::Count, "Nearest-access lookups by outcome");
        Self {
            requests: Outcome::ALL
                .iter()
                .map(|outcome| metrics::counter!(REQUESTS, "result" => outcome.as_str()))
                .collect(),
            duration: metrics::histogram!(REQUEST_DURATION),
            geo: GEO_OUTCOMES
                .iter()
                .map(|outcome| metrics::counter!(GEO_LOOKUPS, "outcome" => *outcome))
                .collect(),
        }
    }

    pub(crate) fn request(&self, outcome: Outcome, elapsed: Duration) {
        // `ALL` lists every variant in declaration order, so the index is in range.
        self.requests[outcome as usize].increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }

    /// Counts a request that never reached the service (hyper could not parse it), so it has
    /// no duration.
    pub(crate) fn count(&self, outcome: Outcome) {
        self.requests[outcome as usize].increment(1);
    }

    pub(crate) fn geo(&self, outcome: LookupOutcome) {
        self.geo[geo_index(outcome)].increment(1);
    }
}

/// The routing table size gauge, held by the table's writer.
pub(crate) fn routing_devices_gauge() -> Gauge {
    metrics::gauge!(ROUTING_DEVICES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_indices_match_the_label_table() {
        for (index, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, index, "{outcome:?}");
        }
        assert_eq!(GEO_OUTCOMES[geo_index(LookupOutcome::Found)], "found");
        for reason in [
            FallbackReason::Private,
            FallbackReason::Loopback,
            FallbackReason::NoDatabase,
            FallbackReason::Unknown,
        ] {
            assert_eq!(GEO_OUTCOMES[geo_index(LookupOutcome::Fallback(reason))], reason.as_str());
        }
    }
}
