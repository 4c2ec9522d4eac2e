//! Polls the database files and reloads the [`GeoDb`] when they are replaced.
//!
//! Polling size, mtime and inode rather than using inotify keeps this portable and works on
//! the network and overlay file systems databases are often deployed on; a poll every few
//! seconds costs a `stat` per file.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::db::{Fingerprint, GeoDb, ReloadCheck, Shared};
use crate::error::GeoError;

/// The shortest poll interval honoured; `tokio::time::interval` rejects zero.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// The running watcher spawned by [`GeoDb::spawn_reload_on_change`]. Dropping it stops the
/// watcher; so does dropping every clone of the [`GeoDb`].
#[derive(Debug)]
#[must_use = "the watcher stops when this handle is dropped"]
pub struct ReloadWatcher {
    task: JoinHandle<()>,
}

impl ReloadWatcher {
    /// True once the watcher has stopped because its database was dropped.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for ReloadWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GeoDb {
    /// Spawns a task on the current tokio runtime that checks the files every `poll_interval`
    /// (at least 1 ms) and calls [`reload`](Self::reload) when any of them has a new size,
    /// modification time or inode.
    ///
    /// A replacement that fails to load is logged and the old database stays in service; the
    /// same broken files are not retried until they change again. Replace files atomically
    /// (write a sibling, then rename) so the watcher never sees a half-written one.
    ///
    /// # Errors
    ///
    /// [`GeoError::NoRuntime`] when called outside a tokio runtime.
    pub fn spawn_reload_on_change(
        &self,
        poll_interval: Duration,
    ) -> Result<ReloadWatcher, GeoError> {
        let runtime = Handle::try_current().map_err(|_| GeoError::NoRuntime)?;
        let shared = Arc::downgrade(&self.shared);
        let task = runtime.spawn(watch(shared, poll_interval.max(MIN_POLL_INTERVAL)));
        Ok(ReloadWatcher { task })
    }
}

/// Holds only a weak reference so the watcher never keeps a dropped database alive.
async fn watch(shared: Weak<Shared>, poll_interval: Duration) {
    let mut ticker = tokio::time::interval(poll_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_failed: Option<Fingerprint> = None;
    loop {
        ticker.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let db = GeoDb { shared };
        let skip = last_failed.clone();
        // stat + read + parse block, possibly for a second on a large file.
        let check = tokio::task::spawn_blocking(move || db.reload_if_changed(skip.as_ref())).await;
        match check {
            Ok(ReloadCheck::Unchanged) => {}
            Ok(ReloadCheck::Reloaded { generation }) => {
                tracing::debug!(generation, "GeoIP watcher picked up replaced files");
                last_failed = None;
            }
            Ok(ReloadCheck::Failed { fingerprint, error }) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "replaced GeoIP database did not load; keeping the previous one"
                );
                last_failed = Some(fingerprint);
            }
            Err(join_error) => {
                tracing::error!(%join_error, "GeoIP reload task panicked");
            }
        }
    }
}
