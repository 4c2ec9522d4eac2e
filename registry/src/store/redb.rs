//! The embedded default [`Store`]: one redb file, fsync on every commit.
//!
//! Three tables live in one file and change in the same transaction, so the current values,
//! the feed and the revision counter can never disagree after a crash:
//! `kv` maps key → (revision, value), `feed` maps revision → (key, value or tombstone), and
//! `meta` holds the last revision and the compaction horizon.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use super::{Change, Entry, Expect, Op, Revision, Snapshot, Store, StoreError, Watch};

const KV: TableDefinition<'_, &str, (u64, &[u8])> = TableDefinition::new("kv");
const FEED: TableDefinition<'_, u64, (&str, Option<&[u8]>)> = TableDefinition::new("feed");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

/// How many feed entries a watcher reads per transaction: large enough to keep a catching-up
/// watcher fast, small enough that one read never holds much memory.
const WATCH_CHUNK: usize = 1024;

/// A [`Store`] on a local redb file. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// Latest committed revision. Watchers only use it as a wake-up: they always read the feed
    /// from the database, so a missed or coalesced notification can never lose a change.
    committed: watch::Sender<Revision>,
}

impl RedbStore {
    /// Opens (or creates) the store at `path`. Everything committed before is there.
    pub fn open(path: impl AsRef<Path>) -> Result<RedbStore, StoreError> {
        let db = Database::create(path.as_ref()).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        {
            // Create the tables so read transactions never see them missing.
            txn.open_table(KV).map_err(backend)?;
            txn.open_table(FEED).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        let revision = {
            let read = db.begin_read().map_err(backend)?;
            let meta = read.open_table(META).map_err(backend)?;
            meta_value(&meta, META_REVISION)?
        };
        let (committed, _) = watch::channel(revision);
        Ok(RedbStore { inner: Arc::new(Inner { db, committed }) })
    }

    /// Runs blocking database work off the async runtime.
    async fn blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |inner| {
            let read = inner.db.begin_read().map_err(backend)?;
            let kv = read.open_table(KV).map_err(backend)?;
            let entry = kv.get(key.as_str()).map_err(backend)?.map(|guard| {
                let (revision, value) = guard.value();
                Entry { key, value: Bytes::copy_from_slice(value), revision }
            });
            Ok(entry)
        })
        .await
    }

    /// One read transaction for all of `keys`, so they are read as of one revision and a
    /// batch of reads costs one hop to the blocking pool, not one per key.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, StoreError> {
        let keys = keys.to_vec();
        self.blocking(move |inner| {
            let read = inner.db.begin_read().map_err(backend)?;
            let kv = read.open_table(KV).map_err(backend)?;
            let mut entries = Vec::with_capacity(keys.len());
            for key in keys {
                let entry = kv.get(key.as_str()).map_err(backend)?.map(|guard| {
                    let (revision, value) = guard.value();
                    Entry { key, value: Bytes::copy_from_slice(value), revision }
                });
                entries.push(entry);
            }
            Ok(entries)
        })
        .await
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |inner| {
            let read = inner.db.begin_read().map_err(backend)?;
            let revision = meta_value(&read.open_table(META).map_err(backend)?, META_REVISION)?;
            let kv = read.open_table(KV).map_err(backend)?;
            let mut entries = Vec::new();
            for item in kv.range(prefix.as_str()..).map_err(backend)? {
                let (key, value) = item.map_err(backend)?;
                let key = key.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                let (revision, value) = value.value();
                entries.push(Entry {
                    key: key.to_owned(),
                    value: Bytes::copy_from_slice(value),
                    revision,
                });
            }
            Ok(Snapshot { entries, revision })
        })
        .await
    }

    async fn batch(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        super::check_batch(&ops)?;
        self.blocking(move |inner| {
            let revision = inner.commit(&ops)?;
            inner.committed.send_if_modified(|last| {
                let newer = revision > *last;
                if newer {
                    *last = revision;
                }
                newer
            });
            Ok(revision)
        })
        .await
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.blocking(|inner| {
            let read = inner.db.begin_read().map_err(backend)?;
            meta_value(&read.open_table(META).map_err(backend)?, META_REVISION)
        })
        .await
    }

    fn watch_from(&self, after: Revision) -> Watch {
        let state = WatchState {
            store: self.clone(),
            cursor: after,
            buffered: VecDeque::new(),
            wake: self.inner.committed.subscribe(),
            failed: false,
        };
        Box::pin(futures::stream::unfold(state, WatchState::next))
    }

    async fn compact(&self, through: Revision) -> Result<(), StoreError> {
        self.blocking(move |inner| {
            let mut txn = inner.db.begin_write().map_err(backend)?;
            txn.set_durability(Durability::Immediate).map_err(backend)?;
            {
                let mut meta = txn.open_table(META).map_err(backend)?;
                let last = meta_value(&meta, META_REVISION)?;
                let through = through.min(last);
                if through <= meta_value(&meta, META_COMPACTED)? {
                    return Ok(());
                }
                let mut feed = txn.open_table(FEED).map_err(backend)?;
                feed.retain_in(..=through, |_, _| false).map_err(backend)?;
                meta.insert(META_COMPACTED, through).map_err(backend)?;
            }
            txn.commit().map_err(backend)
        })
        .await
    }
}

impl Inner {
    /// One write transaction: check every precondition, then write values and feed entries.
    /// Any error drops the transaction, which aborts it.
    fn commit(&self, ops: &[Op]) -> Result<Revision, StoreError> {
        let mut txn = self.db.begin_write().map_err(backend)?;
        // Immediate is redb's default; set it so the fsync-per-commit promise is explicit.
        txn.set_durability(Durability::Immediate).map_err(backend)?;
        let revision = {
            let mut kv = txn.open_table(KV).map_err(backend)?;
            let mut feed = txn.open_table(FEED).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            let mut revision = meta_value(&meta, META_REVISION)?;

            for op in ops {
                let found = kv.get(op.key.as_str()).map_err(backend)?.map(|g| g.value().0);
                let holds = match op.expect {
                    Expect::Any => true,
                    Expect::Absent => found.is_none(),
                    Expect::Revision(expected) => found == Some(expected),
                };
                if !holds {
                    return Err(StoreError::Conflict {
                        key: op.key.clone(),
                        expected: op.expect,
                        found,
                    });
                }
            }
            for op in ops {
                match &op.value {
                    Some(value) => {
                        revision += 1;
                        kv.insert(op.key.as_str(), (revision, value.as_ref())).map_err(backend)?;
                        feed.insert(revision, (op.key.as_str(), Some(value.as_ref())))
                            .map_err(backend)?;
                    }
                    None => {
                        // Deleting a missing key changes nothing, so it makes no feed entry.
                        if kv.remove(op.key.as_str()).map_err(backend)?.is_some() {
                            revision += 1;
                            feed.insert(revision, (op.key.as_str(), None)).map_err(backend)?;
                        }
                    }
                }
            }
            meta.insert(META_REVISION, revision).map_err(backend)?;
            revision
        };
        txn.commit().map_err(backend)?;
        Ok(revision)
    }

    /// Reads up to [`WATCH_CHUNK`] feed entries after `cursor`.
    fn read_feed(&self, cursor: Revision) -> Result<Vec<Change>, StoreError> {
        let read = self.db.begin_read().map_err(backend)?;
        let compacted = meta_value(&read.open_table(META).map_err(backend)?, META_COMPACTED)?;
        if cursor < compacted {
            return Err(StoreError::Compacted { requested: cursor, compacted });
        }
        let feed = read.open_table(FEED).map_err(backend)?;
        let mut changes = Vec::new();
        for item in feed.range(cursor + 1..).map_err(backend)?.take(WATCH_CHUNK) {
            let (revision, change) = item.map_err(backend)?;
            let (key, value) = change.value();
            changes.push(Change {
                revision: revision.value(),
                key: key.to_owned(),
                value: value.map(Bytes::copy_from_slice),
            });
        }
        Ok(changes)
    }
}

/// Where one watcher is in the feed.
struct WatchState {
    store: RedbStore,
    /// Revision of the last change handed out.
    cursor: Revision,
    buffered: VecDeque<Change>,
    wake: watch::Receiver<Revision>,
    /// After an error the stream ends rather than retrying in a loop.
    failed: bool,
}

impl WatchState {
    async fn next(mut self) -> Option<(Result<Change, StoreError>, WatchState)> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(change) = self.buffered.pop_front() {
                self.cursor = change.revision;
                return Some((Ok(change), self));
            }
            // Mark the current notification seen *before* reading, so a commit that lands after
            // the read below still wakes `changed()`.
            self.wake.borrow_and_update();
            let cursor = self.cursor;
            match self.store.blocking(move |inner| inner.read_feed(cursor)).await {
                Ok(changes) if changes.is_empty() => {
                    if self.wake.changed().await.is_err() {
                        // The store was dropped: nothing more can ever commit.
                        return None;
                    }
                }
                Ok(changes) => self.buffered.extend(changes),
                Err(error) => {
                    self.failed = true;
                    return Some((Err(error), self));
                }
            }
        }
    }
}

fn meta_value(meta: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64, StoreError> {
    Ok(meta.get(name).map_err(backend)?.map(|g| g.value()).unwrap_or(0))
}

fn backend(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(error.into().to_string())
}
