//! [`Replica`]: a local redb copy of the registry prefixes a node needs, kept current from a
//! remote store's feed, and itself a [`Store`] a broker or edge runs on.
//!
//! The sync task records the remote revision it has applied under [`META_KEY`], in the same
//! local batch as the changes it applied, so the file never claims more (or less) than it
//! holds. A restart resumes the remote feed right after that revision: no re-download, no gap,
//! no duplicate. The first start, or a remote feed compacted past that revision, loads a full
//! snapshot of the prefixes and swaps it in with one local batch.
//!
//! Revisions: entries, snapshots and the feed read from a replica carry *local* revisions (the
//! local file numbers its own writes), consistent with each other, so "scan, then watch from
//! the scan's revision" works exactly as on the control plane. The local feed also carries the
//! [`META_KEY`] writes; followers ignore keys outside the prefixes they know. Remote revisions
//! appear only in [`Replica::caught_up`], [`Replica::synced_revision`] and the result of
//! [`Store::batch`], which is forwarded to the remote.
//!
//! What it does not do: make a remote batch atomic locally (the feed does not mark batch
//! boundaries; changes that arrive together are applied together), or write anything locally
//! on a caller's behalf.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use meridian_registry::keys;
use meridian_registry::store::{
    Change, Entry, Expect, Op, RedbStore, Revision, Snapshot, Store, StoreError, Watch,
};
use tokio::sync::watch;
use tokio::time::Instant;

/// What a broker or edge needs: the catalogue, the device certificates and the devices' kept
/// subscriptions.
pub const DEFAULT_PREFIXES: [&str; 5] =
    [keys::REGIONS, keys::INSTANCES, keys::PRODUCTS, keys::DEVICES, keys::SUBSCRIPTIONS];

/// Local key holding the remote revision applied so far, as decimal text. No registry prefix
/// starts with `_`, so it can never collide with a mirrored key.
pub const META_KEY: &str = "_replica/applied";

/// Most remote changes applied in one local batch (one fsync).
const GROUP_MAX: usize = 1024;

/// When only changes outside the prefixes arrived (usage writes), the applied revision is
/// persisted at most this late, so a restart does not replay a long tail of them and an idle
/// replica's position does not fall behind the remote's compaction horizon.
const META_FLUSH: Duration = Duration::from_secs(5);

/// The local feed keeps this many revisions for local watchers that fall behind; older ones
/// are compacted every [`COMPACT_STEP`] revisions, so the file does not grow without bound.
const FEED_RETAIN: Revision = 100_000;
const COMPACT_STEP: Revision = 10_000;

/// Pause before the sync task retries after an error, doubling up to the maximum.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// A local mirror of some prefixes of a remote store, usable as a [`Store`]: reads of mirrored
/// keys come from the local file, other reads and every write go to the remote. Cheap to clone.
#[derive(Clone)]
pub struct Replica {
    local: RedbStore,
    remote: Arc<dyn Store>,
    prefixes: Arc<[String]>,
    /// Remote revision the local file reflects. The sync task holds the sender; it stops when
    /// every receiver (every `Replica` clone) is gone.
    synced: watch::Receiver<Revision>,
}

/// The background work of a [`Replica`]: spawn [`SyncTask::run`].
pub struct SyncTask {
    local: RedbStore,
    remote: Arc<dyn Store>,
    prefixes: Arc<[String]>,
    synced: watch::Sender<Revision>,
}

/// The sync task is gone (it panicked, was aborted, or never ran), so the replica will not
/// advance.
#[derive(Debug, thiserror::Error)]
#[error("the replica's sync task has stopped")]
pub struct SyncStopped;

impl Replica {
    /// Opens (or creates) the replica file at `path`, mirroring `prefixes` of `remote`. Reads
    /// work at once, from whatever the file holds; spawn the returned task to follow the remote.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] if the file cannot be opened (in use, corrupt);
    /// [`StoreError::InvalidKey`] for an empty prefix list or a prefix that would cover
    /// [`META_KEY`].
    pub async fn open<P>(
        path: impl AsRef<Path>,
        remote: Arc<dyn Store>,
        prefixes: impl IntoIterator<Item = P>,
    ) -> Result<(Replica, SyncTask), StoreError>
    where
        P: Into<String>,
    {
        let prefixes = normalise(prefixes.into_iter().map(Into::into).collect())?;
        let path = path.as_ref().to_owned();
        let local = tokio::task::spawn_blocking(move || RedbStore::open(path))
            .await
            .map_err(|e| StoreError::Backend(format!("opening the replica: {e}")))??;
        let applied = applied(&local).await?.unwrap_or(0);
        let (synced_tx, synced) = watch::channel(applied);
        let replica = Replica {
            local: local.clone(),
            remote: remote.clone(),
            prefixes: prefixes.clone(),
            synced,
        };
        Ok((replica, SyncTask { local, remote, prefixes, synced: synced_tx }))
    }

    /// The remote revision the local file reflects (every remote change up to it is applied).
    pub fn synced_revision(&self) -> Revision {
        *self.synced.borrow()
    }

    /// Waits until the local file reflects the remote at least as of `remote_revision`.
    pub async fn caught_up(&self, remote_revision: Revision) -> Result<(), SyncStopped> {
        let mut synced = self.synced.clone();
        synced
            .wait_for(|synced| *synced >= remote_revision)
            .await
            .map(drop)
            .map_err(|_| SyncStopped)
    }

    /// The mirrored prefixes.
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    fn mirrored(&self, key: &str) -> bool {
        mirrored(&self.prefixes, key)
    }
}

#[async_trait]
impl Store for Replica {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        if self.mirrored(key) { self.local.get(key).await } else { self.remote.get(key).await }
    }

    /// Mirrored keys from the local file in one read, the others from the remote; answers in
    /// the order asked, like [`Replica::get`] per key.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, StoreError> {
        let (local, remote): (Vec<String>, Vec<String>) =
            keys.iter().cloned().partition(|key| self.mirrored(key));
        let mut local = self.local.get_many(&local).await?.into_iter();
        let mut remote = self.remote.get_many(&remote).await?.into_iter();
        // Each side answers one entry per key it was asked, so neither runs out.
        let entries = keys
            .iter()
            .map(|key| if self.mirrored(key) { local.next() } else { remote.next() }.flatten())
            .collect();
        Ok(entries)
    }

    /// A prefix inside the mirrored ones (or covering some, like `""`) reads the local file —
    /// only mirrored keys, local revisions; any other prefix reads the remote.
    async fn scan_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let local = self.mirrored(prefix) || self.prefixes.iter().any(|p| p.starts_with(prefix));
        if !local {
            return self.remote.scan_prefix(prefix).await;
        }
        let mut snapshot = self.local.scan_prefix(prefix).await?;
        snapshot.entries.retain(|entry| entry.key != META_KEY);
        Ok(snapshot)
    }

    /// Forwarded to the remote, which lets nodes write only their own records (usage); the
    /// revision returned is the remote's.
    async fn batch(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        self.remote.batch(ops).await
    }

    /// The local file's revision.
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.local.revision().await
    }

    /// The local feed (local revisions), including [`META_KEY`] writes.
    fn watch_from(&self, after: Revision) -> Watch {
        self.local.watch_from(after)
    }

    /// Compacts the local feed (the sync task also does so on its own).
    async fn compact(&self, through: Revision) -> Result<(), StoreError> {
        self.local.compact(through).await
    }
}

impl SyncTask {
    /// Follows the remote until every [`Replica`] clone is dropped, retrying with backoff after
    /// errors (remote unreachable, local disk failure); each attempt resumes from the revision
    /// recorded in the file.
    pub async fn run(self) {
        let mut delay = RETRY_MIN;
        loop {
            let before = *self.synced.borrow();
            let outcome = tokio::select! {
                () = self.synced.closed() => return,
                outcome = self.sync() => outcome,
            };
            match outcome {
                Ok(()) => tracing::warn!("registry feed ended; resubscribing"),
                Err(error) => tracing::warn!(%error, "replica sync failed; retrying"),
            }
            if *self.synced.borrow() > before {
                delay = RETRY_MIN;
            }
            tokio::select! {
                () = self.synced.closed() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    /// One attempt: resume (or snapshot), then apply the feed until it ends or fails.
    async fn sync(&self) -> Result<(), StoreError> {
        let (mut feed, mut cursor) = match applied(&self.local).await? {
            Some(revision) => {
                tracing::info!(revision, "replica resuming the registry feed");
                self.publish(revision);
                (self.remote.watch_from(revision), revision)
            }
            None => self.snapshot().await?,
        };
        // Remote revision recorded in the file; `cursor` may be ahead of it when only changes
        // outside the prefixes arrived since.
        let mut persisted = cursor;
        let mut flush_at: Option<Instant> = None;
        // An item already taken from the feed and not yet handled.
        let mut carry: Option<Option<Result<Change, StoreError>>> = None;
        let mut compacted_through: Revision = 0;

        loop {
            let item = match (carry.take(), flush_at) {
                (Some(item), _) => item,
                (None, None) => feed.next().await,
                (None, Some(at)) => tokio::select! {
                    item = feed.next() => item,
                    () = tokio::time::sleep_until(at) => {
                        self.local.batch(vec![Op::put(META_KEY, meta_value(cursor))]).await?;
                        persisted = cursor;
                        flush_at = None;
                        continue;
                    }
                },
            };
            let first = match item {
                None => return Ok(()),
                Some(Ok(change)) => change,
                Some(Err(StoreError::Compacted { requested, compacted })) => {
                    tracing::warn!(
                        requested,
                        compacted,
                        "registry feed compacted past the replica; reloading"
                    );
                    (feed, cursor) = self.snapshot().await?;
                    persisted = cursor;
                    flush_at = None;
                    continue;
                }
                Some(Err(error)) => return Err(error),
            };

            // Apply `first` and whatever else is already available, in one local batch. A key
            // may appear once per batch, so a second change to it waits for the next one.
            let mut ops = Vec::new();
            let mut keys = HashSet::new();
            let mut last = cursor;
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(change) = next.take() {
                if change.revision > last {
                    if mirrored(&self.prefixes, &change.key) {
                        if !keys.insert(change.key.clone()) {
                            carry = Some(Some(Ok(change)));
                            break;
                        }
                        ops.push(Op { key: change.key, value: change.value, expect: Expect::Any });
                    }
                    last = change.revision;
                }
                taken += 1;
                if taken == GROUP_MAX {
                    break;
                }
                match feed.next().now_or_never() {
                    None => {}
                    Some(Some(Ok(change))) => next = Some(change),
                    Some(other) => carry = Some(other),
                }
            }

            if !ops.is_empty() {
                ops.push(Op::put(META_KEY, meta_value(last)));
                let local_revision = self.local.batch(ops).await?;
                persisted = last;
                flush_at = None;
                if local_revision > compacted_through + FEED_RETAIN + COMPACT_STEP {
                    compacted_through = local_revision - FEED_RETAIN;
                    self.local.compact(compacted_through).await?;
                }
            } else if last > persisted && flush_at.is_none() {
                flush_at = Some(Instant::now() + META_FLUSH);
            }
            cursor = last;
            self.publish(cursor);
        }
    }

    /// Loads every prefix from the remote, brings the copy to one consistent revision, and
    /// swaps it into the local file in one batch. Returns the feed positioned after it.
    async fn snapshot(&self) -> Result<(Watch, Revision), StoreError> {
        let mut copy = BTreeMap::new();
        let (mut low, mut high) = (Revision::MAX, 0);
        for prefix in self.prefixes.iter() {
            let snapshot = self.remote.scan_prefix(prefix).await?;
            low = low.min(snapshot.revision);
            high = high.max(snapshot.revision);
            copy.extend(snapshot.entries.into_iter().map(|entry| (entry.key, entry.value)));
        }
        // The scans happened at different revisions. Replaying the feed from the oldest to the
        // newest over the copy leaves every key as it was at the newest, so what lands in the
        // file is one consistent cut.
        let mut feed = self.remote.watch_from(low);
        let mut cursor = low;
        while cursor < high {
            let change = match feed.next().await {
                Some(change) => change?,
                None => {
                    return Err(StoreError::Backend(
                        "the registry feed ended during a snapshot".into(),
                    ));
                }
            };
            if mirrored(&self.prefixes, &change.key) {
                match change.value {
                    Some(value) => copy.insert(change.key, value),
                    None => copy.remove(&change.key),
                };
            }
            cursor = change.revision;
        }

        // Write only the difference, so a reload after compaction shows local watchers the
        // real changes rather than the whole registry again.
        let mut ops = Vec::new();
        for prefix in self.prefixes.iter() {
            for entry in self.local.scan_prefix(prefix).await?.entries {
                match copy.get(&entry.key) {
                    None => ops.push(Op::delete(entry.key)),
                    Some(value) if *value == entry.value => {
                        copy.remove(&entry.key);
                    }
                    Some(_) => {}
                }
            }
        }
        let entries = copy.len();
        ops.extend(copy.into_iter().map(|(key, value)| Op::put(key, value)));
        ops.push(Op::put(META_KEY, meta_value(cursor)));
        self.local.batch(ops).await?;
        tracing::info!(revision = cursor, changed = entries, "replica loaded a registry snapshot");
        self.publish(cursor);
        Ok((feed, cursor))
    }

    fn publish(&self, revision: Revision) {
        self.synced.send_if_modified(|synced| {
            let newer = revision > *synced;
            if newer {
                *synced = revision;
            }
            newer
        });
    }
}

/// The remote revision recorded in the local file, if any.
async fn applied(local: &RedbStore) -> Result<Option<Revision>, StoreError> {
    let Some(entry) = local.get(META_KEY).await? else {
        return Ok(None);
    };
    let parsed = std::str::from_utf8(&entry.value).ok().and_then(|text| text.parse().ok());
    if parsed.is_none() {
        tracing::warn!("replica revision record unreadable; reloading a snapshot");
    }
    Ok(parsed)
}

fn meta_value(revision: Revision) -> Bytes {
    Bytes::from(revision.to_string())
}

fn mirrored(prefixes: &[String], key: &str) -> bool {
    prefixes.iter().any(|prefix| key.starts_with(prefix.as_str()))
}

/// Sorts the prefixes and drops those inside another, so local scans never list a key twice.
fn normalise(mut prefixes: Vec<String>) -> Result<Arc<[String]>, StoreError> {
    if prefixes.is_empty() {
        return Err(StoreError::InvalidKey(String::new()));
    }
    if let Some(bad) = prefixes.iter().find(|p| META_KEY.starts_with(p.as_str())) {
        return Err(StoreError::InvalidKey(bad.clone()));
    }
    prefixes.sort();
    let mut kept: Vec<String> = Vec::with_capacity(prefixes.len());
    for prefix in prefixes {
        // Sorted, so a covering prefix comes right before the prefixes it covers.
        if kept.last().is_none_or(|last| !prefix.starts_with(last.as_str())) {
            kept.push(prefix);
        }
    }
    Ok(kept.into())
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn prefixes_are_normalised() {
        let kept =
            normalise(vec!["devices/pk/".into(), "products/".into(), "devices/".into()]).unwrap();
        assert_eq!(&*kept, ["devices/".to_owned(), "products/".to_owned()]);
        assert!(normalise(Vec::new()).is_err());
        assert!(normalise(vec![String::new()]).is_err());
        assert!(normalise(vec!["_rep".into()]).is_err());
    }
}
