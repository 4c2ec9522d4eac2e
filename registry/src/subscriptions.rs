//! The one write path for kept device subscriptions ([`DeviceSubscriptions`], PROTOCOL §2).
//!
//! Brokers are the only writers. An in-process broker writes through [`StoreWriter`]; a broker
//! in its own process writes through the control plane's internal API, whose handler calls
//! [`write`] too, so both check the same bounds: at most [`MAX_KEPT_FILTERS`] filters per
//! device, each at most [`MAX_FILTER_BYTES`] bytes, QoS 0 or 1, and no record for a device the
//! registry does not hold (writing one for an unknown device deletes any stale record instead).
//!
//! What it does not do: decide which filters a device may hold (the broker's ACL does, before
//! writing and again when it restores them), or order writes from two brokers (each record is
//! the device's whole set, and the last write wins).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::ids::DeviceKey;
use crate::keys;
use crate::model::DeviceSubscriptions;
use crate::registry::{decode, encode};
use crate::store::{Op, Revision, Store, StoreError};

/// Most filters kept per device: the device profile's subscription limit (PROTOCOL §3).
pub const MAX_KEPT_FILTERS: usize = 100;

/// Longest filter kept: the device profile's topic limit (PROTOCOL §3).
pub const MAX_FILTER_BYTES: usize = 128;

/// Most devices one write may carry, so one write is one bounded store batch and one bounded
/// internal API request (256 × 100 × 128 bytes of filters is about 3.3 MB).
pub const MAX_DEVICES_PER_WRITE: usize = 256;

/// Why a write of kept subscriptions was refused or failed; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    /// A record breaks a bound; the reason names which.
    #[error("subscriptions of {device}: {reason}")]
    Invalid { device: DeviceKey, reason: &'static str },
    /// More devices than [`MAX_DEVICES_PER_WRITE`] in one write.
    #[error("{0} devices in one write; at most {MAX_DEVICES_PER_WRITE}")]
    TooManyDevices(usize),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The write could not reach the registry (a remote broker's link to the control plane).
    #[error("subscriptions not written: {0}")]
    Unavailable(String),
    /// The registry refused this write as it is (a remote broker's request answered 400 or
    /// 413): sending the same records again fails again.
    #[error("subscriptions refused: {0}")]
    Refused(String),
}

impl SubscriptionError {
    /// Whether the records themselves were refused, so the same write can never succeed (a
    /// writer should split it or drop what is refused), as against a failure worth retrying.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            SubscriptionError::Invalid { .. }
                | SubscriptionError::TooManyDevices(_)
                | SubscriptionError::Refused(_)
        )
    }
}

/// What a write did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// The store's revision after the write: once a broker's view reaches it, the records are
    /// there.
    pub revision: Revision,
    /// Records not kept because their device does not exist (deleted meanwhile).
    pub skipped: usize,
}

/// Where a broker sends the subscriptions it keeps for its devices.
#[async_trait]
pub trait SubscriptionWriter: Send + Sync + 'static {
    /// Replaces each device's kept set with the record's (an empty set deletes the record).
    async fn write_subscriptions(
        &self,
        records: Vec<DeviceSubscriptions>,
    ) -> Result<Written, SubscriptionError>;
}

/// Writes straight into a store: the broker inside `meridian up`, and the internal API's
/// handler.
#[derive(Clone)]
pub struct StoreWriter(pub Arc<dyn Store>);

#[async_trait]
impl SubscriptionWriter for StoreWriter {
    async fn write_subscriptions(
        &self,
        records: Vec<DeviceSubscriptions>,
    ) -> Result<Written, SubscriptionError> {
        write(self.0.as_ref(), records).await
    }
}

/// Checks `records` and writes them in one batch: each existing device's record replaced (or
/// deleted when its set is empty), and any record of a device that does not exist deleted. A
/// device named twice keeps its last record.
pub async fn write(
    store: &dyn Store,
    records: Vec<DeviceSubscriptions>,
) -> Result<Written, SubscriptionError> {
    if records.len() > MAX_DEVICES_PER_WRITE {
        return Err(SubscriptionError::TooManyDevices(records.len()));
    }
    let mut latest = BTreeMap::new();
    for record in records {
        check(&record)?;
        latest.insert(record.device.clone(), record);
    }
    if latest.is_empty() {
        return Ok(Written { revision: store.revision().await?, skipped: 0 });
    }
    let device_keys: Vec<String> = latest.keys().map(keys::device).collect();
    let devices = store.get_many(&device_keys).await?;
    let mut ops = Vec::with_capacity(latest.len());
    let mut skipped = 0;
    for (record, device) in latest.into_values().zip(devices) {
        let key = keys::subscriptions(&record.device);
        if device.is_none() {
            skipped += 1;
            ops.push(Op::delete(key));
        } else if record.filters.is_empty() {
            ops.push(Op::delete(key));
        } else {
            let value = encode(&record).map_err(|_| SubscriptionError::Invalid {
                device: record.device.clone(),
                reason: "the record does not encode",
            })?;
            ops.push(Op::put(key, value));
        }
    }
    let revision = store.batch(ops).await?;
    Ok(Written { revision, skipped })
}

/// Decodes a stored record and checks it belongs at `key` and keeps the bounds; `None` for a
/// record no broker should restore from.
pub fn parse(key: &str, value: &[u8]) -> Option<DeviceSubscriptions> {
    let device = keys::parse_subscriptions(key)?;
    let record: DeviceSubscriptions = decode(key, value).ok()?;
    (record.device == device && check(&record).is_ok()).then_some(record)
}

/// Whether one filter can be kept at all, whatever else its set holds: a broker leaves out a
/// filter that cannot rather than lose the device's whole set to the check.
pub fn keepable(filter: &str) -> bool {
    !filter.is_empty() && filter.len() <= MAX_FILTER_BYTES && !has_control_character(filter)
}

/// Control characters are no topic a device publishes to, and JSON escapes each as six bytes,
/// which would let a small set outgrow every bound on an encoded write.
fn has_control_character(filter: &str) -> bool {
    filter.chars().any(|c| c < '\u{20}' || c == '\u{7f}')
}

/// The bounds every kept record keeps.
pub fn check(record: &DeviceSubscriptions) -> Result<(), SubscriptionError> {
    let invalid = |reason| SubscriptionError::Invalid { device: record.device.clone(), reason };
    if record.filters.len() > MAX_KEPT_FILTERS {
        return Err(invalid("more than 100 filters"));
    }
    for (filter, qos) in &record.filters {
        if filter.is_empty() || filter.len() > MAX_FILTER_BYTES {
            return Err(invalid("a filter is empty or longer than 128 bytes"));
        }
        if has_control_character(filter) {
            return Err(invalid("a filter holds a control character"));
        }
        if *qos > 1 {
            return Err(invalid("a QoS above 1 (devices use QoS 0 and 1)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
