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
    pub fn record(&self, device: &DeviceKey, filters: BTreeMap<String, u8>) {
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

    /// One write of up to [`MAX_DEVICES_PER_WRITE`] dirty devices. `Ok(false)` when there was
    /// nothing to write, `Err` when the write failed (the devices stay dirty).
    async fn flush_once(
        &self,
        writer: &dyn SubscriptionWriter,
        view: &RegistryView,
    ) -> Result<bool, ()> {
        let taken: Vec<(DeviceKey, u64, Filters)> = {
            let mut local = lock(&self.local);
            let applied = view.revision();
            local.retain(|_, entry| !matches!(entry.state, State::Committed(at) if applied >= at));
            local
                .iter_mut()
                .filter(|(_, entry)| entry.state == State::Dirty)
                .take(MAX_DEVICES_PER_WRITE)
                .map(|(device, entry)| {
                    entry.state = State::Writing(entry.version);
                    (device.clone(), entry.version, entry.filters.clone())
                })
                .collect()
        };
        if taken.is_empty() {
            return Ok(false);
        }
        // Sessions only grant what the registry's bounds allow, so nothing should fail here;
        // a record that did would be refused with the whole write again and again.
        let records = taken
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
        let outcome = writer.write_subscriptions(records).await;
        let mut local = lock(&self.local);
        for (device, version, _) in &taken {
            let Some(entry) = local.get_mut(device) else { continue };
            if entry.state != State::Writing(*version) {
                // Recorded again meanwhile: the newer set is dirty and will be written.
                continue;
            }
            entry.state = match &outcome {
                Ok(written) => State::Committed(written.revision),
                Err(_) => State::Dirty,
            };
        }
        drop(local);
        match outcome {
            Ok(written) => {
                crate::metrics::kept_subscriptions_written(taken.len(), written.skipped);
                Ok(true)
            }
            Err(error) => {
                crate::metrics::kept_subscriptions_failed();
                tracing::warn!(%error, devices = taken.len(), "device subscriptions not written; retrying");
                Err(())
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning only follows a panic elsewhere; the map is still valid.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
