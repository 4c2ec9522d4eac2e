//! The revisioned key/value store behind the registry, and its change feed.
//!
//! The [`Store`] trait is deliberately the shape of a distributed key/value engine with watch
//! (NATS JetStream KV is the planned scale-out backend), not of a SQL database:
//!
//! | here                          | JetStream KV                                         |
//! |-------------------------------|------------------------------------------------------|
//! | [`Revision`]                  | stream sequence of the bucket                        |
//! | [`Store::get`]                | `Store::entry(key)`                                  |
//! | [`Store::get_many`]           | `entry()` per key (JetStream has no multi-get)       |
//! | [`Store::put`]                | `Store::put` (returns the sequence)                  |
//! | [`Expect::Absent`]            | `Store::create`                                      |
//! | [`Expect::Revision`]          | `Store::update(key, value, last_revision)`           |
//! | [`Store::scan_prefix`]        | `keys()` + `entry()` over `prefix.>`                 |
//! | [`Store::batch`]              | atomic batch publish, one sequence per message       |
//! | [`Store::max_batch`]          | 1,000 (the server's atomic batch limit)              |
//! | [`Store::watch_from`]         | ordered consumer, `DeliverPolicy::ByStartSequence`   |
//!
//! Two backends implement it: [`RedbStore`], the embedded default (one file, one process), and
//! [`JetStreamStore`], a JetStream KV bucket shared by every daemon past one machine.
//!
//! # The contract, and what every consumer must tolerate
//!
//! Every write gets its own revision, strictly increasing across the whole store. A batch gets
//! increasing revisions and becomes visible all at once or not at all; it holds at most
//! [`Store::max_batch`] ops, so a caller with more commits in several batches and must stay
//! correct (exactly once) if it stops between them.
//!
//! The embedded store is the strongest case: its feed holds exactly one [`Change`] per
//! revision with no gaps, reads see every committed write, and a deleted missing key leaves no
//! trace. JetStream is weaker in three ways, and every consumer in this workspace is written
//! for the weaker one:
//!
//! - **The feed has gaps.** A superseded value is gone from the stream, so a watcher resuming
//!   from an old revision sees each key's newest value (or delete) once, not every intermediate
//!   change, and revisions in the feed are increasing but not consecutive. Consumers therefore
//!   apply changes as "the key's value is now this" (idempotent, last write wins), never as
//!   deltas, and track progress as "applied through revision R", never by counting.
//! - **Reads of a regional mirror lag.** A store reading from a mirror is not read-your-writes:
//!   a write acknowledged by the home cluster shows up there a little later. Only daemons that
//!   never read-modify-write (edges, brokers) read from mirrors; the control plane reads the
//!   home cluster, and every read-modify-write is a compare-and-swap ([`Expect`]) that fails
//!   rather than overwrites when its read was stale.
//! - **Deleting a missing key is a change.** JetStream records the delete marker; consumers
//!   already treat deleting an absent key as a no-op.
//!
//! A snapshot ([`Store::scan_prefix`]) is the prefix as of its revision on both backends;
//! following it with [`Store::watch_from`] that revision misses nothing.
//!
//! What this module does not do: interpret values (the registry layer encodes typed records),
//! or expire keys.

pub mod conformance;
mod jetstream;
mod redb;

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

pub use self::jetstream::{JetStreamStore, MAX_ATOMIC_BATCH, NatsConfig, NatsRead, NatsTls};
pub use self::redb::RedbStore;

/// Position in the change feed. `0` means "before the first write".
pub type Revision = u64;

/// A stored value with the revision that last wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Bytes,
    /// Revision of the write that produced this value (JetStream's per-entry `revision`).
    pub revision: Revision,
}

/// A consistent read of many keys: every entry as of `revision`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub entries: Vec<Entry>,
    /// The store's revision when the snapshot was read; watch from here to follow it.
    pub revision: Revision,
}

/// One committed change, as the feed delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub revision: Revision,
    pub key: String,
    /// The new value, or `None` when the key was deleted.
    pub value: Option<Bytes>,
}

/// Precondition of a write, checked atomically with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Write whatever is there.
    Any,
    /// The key must not exist (create).
    Absent,
    /// The key must exist and have been last written at exactly this revision (update).
    Revision(Revision),
}

/// One write inside a [`Store::batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub key: String,
    /// `None` deletes the key.
    pub value: Option<Bytes>,
    pub expect: Expect,
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>) -> Op {
        Op { key: key.into(), value: Some(value.into()), expect: Expect::Any }
    }

    pub fn delete(key: impl Into<String>) -> Op {
        Op { key: key.into(), value: None, expect: Expect::Any }
    }

    /// Adds a precondition to this write.
    pub fn expecting(mut self, expect: Expect) -> Op {
        self.expect = expect;
        self
    }
}

/// The change feed: every change after the starting revision, in order, then new ones as they
/// commit. It ends only on an error.
pub type Watch = Pin<Box<dyn Stream<Item = Result<Change, StoreError>> + Send>>;

/// Errors from a [`Store`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition did not hold; nothing in the batch was written.
    #[error("conflict on key {key:?}: expected {expected:?}, found revision {found:?}")]
    Conflict { key: String, expected: Expect, found: Option<Revision> },
    /// The key is empty or holds characters a distributed backend cannot carry.
    #[error("invalid key {0:?}: keys are non-empty, of [A-Za-z0-9_=/.-], without empty segments")]
    InvalidKey(String),
    /// A batch named the same key twice; its meaning would depend on order.
    #[error("batch writes key {0:?} more than once")]
    DuplicateKey(String),
    /// The feed before this revision was compacted away; re-read a snapshot and watch from it.
    #[error("revisions up to {compacted} were compacted; cannot watch from {requested}")]
    Compacted { requested: Revision, compacted: Revision },
    /// The batch holds more ops than this backend commits atomically ([`Store::max_batch`]).
    #[error("a batch of {ops} writes is more than the store commits at once ({max})")]
    BatchTooLarge { ops: usize, max: usize },
    /// The storage engine failed (I/O, corruption, an unreachable server); the write did not
    /// happen, or (a lost acknowledgement) did: callers re-read before retrying.
    #[error("storage backend: {0}")]
    Backend(String),
}

/// A revisioned key/value store with a change feed. See the module docs for the contract.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current value of `key`.
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;

    /// The current values of `keys`, in the same order (`None` where a key is absent). A
    /// backend that can should read them all in one consistent read; the default reads them
    /// one by one, as JetStream KV would.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, StoreError> {
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            entries.push(self.get(key).await?);
        }
        Ok(entries)
    }

    /// Every key starting with `prefix`, in key order, from one consistent read.
    async fn scan_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError>;

    /// Applies all `ops` atomically, each with its own consecutive revision, if every
    /// precondition holds; otherwise writes nothing. Returns the last revision written (the
    /// current revision when every op was a no-op delete).
    async fn batch(&self, ops: Vec<Op>) -> Result<Revision, StoreError>;

    /// The revision of the newest committed change.
    async fn revision(&self) -> Result<Revision, StoreError>;

    /// Streams every change with a revision greater than `after`, then new ones as they commit.
    fn watch_from(&self, after: Revision) -> Watch;

    /// Drops the feed up to and including `through` (current values are kept). Watchers asking
    /// for older revisions get [`StoreError::Compacted`].
    async fn compact(&self, through: Revision) -> Result<(), StoreError>;

    /// The most ops one [`Store::batch`] commits atomically; larger batches get
    /// [`StoreError::BatchTooLarge`] and write nothing.
    fn max_batch(&self) -> usize {
        usize::MAX
    }

    /// Writes `value` whatever was there.
    async fn put(&self, key: &str, value: Bytes) -> Result<Revision, StoreError> {
        self.batch(vec![Op::put(key, value)]).await
    }

    /// Writes `value` (or deletes, for `None`) only if `expect` holds.
    async fn compare_and_swap(
        &self,
        key: &str,
        expect: Expect,
        value: Option<Bytes>,
    ) -> Result<Revision, StoreError> {
        self.batch(vec![Op { key: key.to_owned(), value, expect }]).await
    }

    /// Deletes `key`; deleting a missing key is a no-op.
    async fn delete(&self, key: &str) -> Result<Revision, StoreError> {
        self.batch(vec![Op::delete(key)]).await
    }
}

/// Checks what every backend refuses before writing anything: bad keys, a key written twice.
pub(crate) fn check_batch(ops: &[Op]) -> Result<(), StoreError> {
    let mut seen = std::collections::HashSet::with_capacity(ops.len());
    for op in ops {
        validate_key(&op.key)?;
        if !seen.insert(op.key.as_str()) {
            return Err(StoreError::DuplicateKey(op.key.clone()));
        }
    }
    Ok(())
}

/// Checks that `key` can be carried unchanged by every backend. JetStream KV keys are
/// `[-/_=.a-zA-Z0-9]+` and `.` separates tokens, so a key must not start or end with `.` or `/`
/// nor hold an empty segment.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '_' | '=' | '.');
    let well_formed = !key.is_empty()
        && key.chars().all(allowed)
        && key.split(['.', '/']).all(|segment| !segment.is_empty());
    if well_formed { Ok(()) } else { Err(StoreError::InvalidKey(key.to_owned())) }
}

#[cfg(test)]
mod tests;
