//! The subscriptions the broker keeps for its devices (PROTOCOL §2: the real SDKs connect with clean
//! session and never subscribe again after a reconnect or a re-bootstrap).
//!
//! Each SUBSCRIBE or UNSUBSCRIBE that changes a device's set records the device's whole set
//! here, at once and without waiting; [`Keeper::run`] writes what changed to the registry in
//! batches through a [`SubscriptionWriter`] (the store itself inside `meridian up`, the control
//! plane's internal API for a `meridian broker` process). The feed brings the record to every
//! broker's [`RegistryView`], and a connecting device gets back [`Keeper::kept`]: what this
//! broker recorded and has not yet seen come back through the feed, else the view's record.
//!
//! Coalescing: a device's entry holds only its latest set, so a storm of SUBSCRIBEs costs one
//! write per device per flush, and a flush carries every device that changed meanwhile (up to
//! [`MAX_DEVICES_PER_WRITE`]). SUBACK never waits for the store.
//!
//! What it does not do: guarantee a set reaches the registry. A set not yet committed when the
//! broker dies is lost, and a device connecting elsewhere before the commit reaches that broker
//! gets the previous set. A failed write is retried with back-off until it succeeds or the set
//! is replaced.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_registry::ids::DeviceKey;
use meridian_registry::model::DeviceSubscriptions;
use meridian_registry::store::Revision;
use meridian_registry::subscriptions::{self, MAX_DEVICES_PER_WRITE, SubscriptionWriter};
use tokio::sync::{Notify, watch};

use crate::view::RegistryView;

/// First pause after a failed write; doubles per failure up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Most bytes of encoded records one write carries: well below the internal API's body cap
/// (8 MiB), so filters JSON escapes at six bytes a character cannot make a write too large.
/// A single record encodes to at most about 80 KB, so every write holds several.
pub const MAX_WRITE_BYTES: usize = 1024 * 1024;

/// A device's set as filter → granted QoS.
pub type Filters = Arc<BTreeMap<String, u8>>;

/// Sets recorded here and not yet seen back in the view, per device.
#[derive(Default)]
pub struct Keeper {
    // A std mutex: held for map operations only, never across an await.
    local: Mutex<HashMap<DeviceKey, Local>>,
    /// Wakes the writer when something was recorded.
    dirty: Notify,
}

struct Local {
    filters: Filters,
    /// Bumped by every record, so a write that finishes after a newer record leaves it dirty.
    version: u64,
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not written yet.
    Dirty,
    /// In a write that took `version`.
    Writing(u64),
    /// Committed at this registry revision; dropped once the view has applied it.
    Committed(Revision),
}

impl Keeper {
    /// Records a device's whole set after a change; written to the registry soon.
    pub fn record(&self, device: &DeviceKey, mut filters: BTreeMap<String, u8>) {
        // MQTT lets a device subscribe to a filter with control characters; the registry keeps
        // none, so such a filter is left out here instead of the whole set at the write.
        filters.retain(|filter, _| subscriptions::keepable(filter));
        let mut local = lock(&self.local);
        let version = local.get(device).map_or(0, |entry| entry.version + 1);
        local.insert(
            device.clone(),
            Local { filters: Arc::new(filters), version, state: State::Dirty },
        );
        drop(local);
        self.dirty.notify_one();
    }

    /// The set to restore for a device: what this broker recorded last, until the view has
    /// caught up with it, else the view's.
    pub fn kept(&self, device: &DeviceKey, view: &RegistryView) -> Option<Filters> {
        let mut local = lock(&self.local);
        if let Some(entry) = local.get(device) {
            let seen = matches!(entry.state, State::Committed(at) if view.revision() >= at);
            if !seen {
                return Some(entry.filters.clone());
            }
            // The view has it: nothing to remember here any more.
            local.remove(device);
        }
        drop(local);
        view.kept_subscriptions(device)
    }

    /// Devices whose set is recorded and not yet committed.
    pub fn unsaved(&self) -> usize {
        lock(&self.local)
            .values()
            .filter(|entry| !matches!(entry.state, State::Committed(_)))
            .count()
    }

    /// Writes recorded sets until `stopped`; failures are retried with back-off.
    pub async fn run(
        self: Arc<Self>,
        writer: Arc<dyn SubscriptionWriter>,
        view: Arc<RegistryView>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut backoff = RETRY_MIN;
        loop {
            tokio::select! {
                () = self.dirty.notified() => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            loop {
                match self.flush_once(writer.as_ref(), &view).await {
                    Ok(true) => backoff = RETRY_MIN,
                    Ok(false) => break,
                    Err(()) => {
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            _ = stopped.wait_for(|stop| *stop) => return,
                        }
                        backoff = (backoff * 2).min(RETRY_MAX);
                    }
                }
            }
        }
    }

    /// Writes everything still unsaved, once each (the daemon's last flush at shutdown).
    pub async fn flush(&self, writer: &dyn SubscriptionWriter, view: &RegistryView) {
        // Bounded: each round takes at least one device off, or fails and stops.
        while let Ok(true) = self.flush_once(writer, view).await {}
    }

    /// One flush of up to [`MAX_DEVICES_PER_WRITE`] dirty devices whose records encode to at
    /// most [`MAX_WRITE_BYTES`] together (always at least one). A write the registry refuses
    /// as it is is split in halves, down to single records: a record refused alone is dropped
    /// (counted and logged without its filters) and the others are written. `Ok(false)` when
    /// there was nothing to write, `Err` when a write failed otherwise (what it held stays
    /// dirty; what was written before it is committed).
    async fn flush_once(
        &self,
        writer: &dyn SubscriptionWriter,
        view: &RegistryView,
    ) -> Result<bool, ()> {
        let taken: Vec<(DeviceKey, u64, Filters)> = {
            let mut local = lock(&self.local);
            let applied = view.revision();
            local.retain(|_, entry| !matches!(entry.state, State::Committed(at) if applied >= at));
            let mut bytes = 0usize;
            let mut taken = Vec::new();
            for (device, entry) in local.iter_mut() {
                if entry.state != State::Dirty {
                    continue;
                }
                let size = encoded_size(device, &entry.filters);
                if taken.len() == MAX_DEVICES_PER_WRITE
                    || (!taken.is_empty() && bytes.saturating_add(size) > MAX_WRITE_BYTES)
                {
                    break;
                }
                bytes = bytes.saturating_add(size);
                entry.state = State::Writing(entry.version);
                taken.push((device.clone(), entry.version, entry.filters.clone()));
            }
            taken
        };
        if taken.is_empty() {
            return Ok(false);
        }
        // Sessions only grant what the registry's bounds allow, so nothing should fail here;
        // a record that did is left out rather than refuse the write it is in.
        let records: Vec<DeviceSubscriptions> = taken
            .iter()
            .map(|(device, _, filters)| DeviceSubscriptions {
                device: device.clone(),
                filters: filters.as_ref().clone(),
            })
            .filter(|record| match subscriptions::check(record) {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(%error, "device subscriptions outside the registry's bounds not kept");
                    false
                }
            })
            .collect();
        let mut committed: HashMap<DeviceKey, Revision> = HashMap::new();
        let mut refused: Vec<DeviceKey> = Vec::new();
        let mut skipped = 0;
        let mut failure = None;
        // Each round writes one batch or splits it; every split halves, so this ends.
        let mut pending = vec![records];
        while let Some(batch) = pending.pop() {
            if batch.is_empty() {
                continue;
            }
            match writer.write_subscriptions(batch.clone()).await {
                Ok(written) => {
                    skipped += written.skipped;
                    committed
                        .extend(batch.into_iter().map(|record| (record.device, written.revision)));
                }
                Err(error) if error.is_refusal() && batch.len() > 1 => {
                    let mut first = batch;
                    let second = first.split_off(first.len() / 2);
                    pending.push(second);
                    pending.push(first);
                }
                Err(error) if error.is_refusal() => {
                    // The error names the device and the bound, never the filters.
                    tracing::warn!(%error, "device subscriptions refused by the registry; not kept");
                    crate::metrics::kept_subscriptions_refused(1);
                    refused.extend(batch.into_iter().map(|record| record.device));
                }
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        // Left out by the check: no write will take them, so they are as good as written.
        let revision_of_checked = committed.values().copied().max();
        let mut local = lock(&self.local);
        for (device, version, _) in &taken {
            let Some(entry) = local.get_mut(device) else { continue };
            if entry.state != State::Writing(*version) {
                // Recorded again meanwhile: the newer set is dirty and will be written.
                continue;
            }
            if refused.contains(device) {
                // Nothing to restore from here: the registry's (older) record stands.
                local.remove(device);
                continue;
            }
            entry.state = match committed.get(device).copied() {
                Some(revision) => State::Committed(revision),
                None if failure.is_none() => State::Committed(revision_of_checked.unwrap_or(0)),
                None => State::Dirty,
            };
        }
        drop(local);
        match failure {
            None => {
                crate::metrics::kept_subscriptions_written(committed.len(), skipped);
                Ok(true)
            }
            Some(error) => {
                crate::metrics::kept_subscriptions_failed();
                let unsaved = taken.len() - committed.len() - refused.len();
                tracing::warn!(%error, devices = unsaved, "device subscriptions not written; retrying");
                Err(())
            }
        }
    }
}

/// Bytes a device's record takes in a write (JSON, as the internal API carries it). Filters
/// may hold characters JSON escapes to six bytes each, so this is measured, not estimated.
fn encoded_size(device: &DeviceKey, filters: &Filters) -> usize {
    let record = DeviceSubscriptions { device: device.clone(), filters: filters.as_ref().clone() };
    // Serializing a map of strings cannot fail; a failure would be refused by the check later.
    serde_json::to_vec(&record).map_or(0, |encoded| encoded.len())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning only follows a panic elsewhere; the map is still valid.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
