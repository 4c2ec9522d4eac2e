//! The conformance suite every [`Store`] backend passes, unchanged: one set of cases, generic
//! over the backend, run against the embedded store and a real NATS server alike (see
//! `tests/tests/store_conformance.rs`, which also restarts the NATS server in the middle of a
//! watch).
//!
//! The cases assert the contract in the module docs of [`crate::store`], and only that: where
//! JetStream is allowed to be weaker (gaps in the feed, a delete marker for a missing key), a
//! case accepts both behaviours, so a backend passes by keeping the promise, not by copying
//! redb.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::{Change, Expect, Op, Store, StoreError, Watch};

/// A backend under test: a fresh, empty store per case, and a way to restart its server.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// A store with nothing in it.
    async fn store(&self) -> Arc<dyn Store>;

    /// Restarts whatever serves the store (a server process), keeping its data. A backend
    /// without a server does nothing.
    async fn restart(&self);
}

fn value(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

/// Reads exactly `n` changes, failing on an error or the end of the feed.
pub async fn take(watch: &mut Watch, n: usize) -> Vec<Change> {
    let mut changes = Vec::with_capacity(n);
    while changes.len() < n {
        match watch.next().await {
            Some(Ok(change)) => changes.push(change),
            Some(Err(error)) => panic!("watch failed after {} changes: {error}", changes.len()),
            None => panic!("watch ended after {} changes", changes.len()),
        }
    }
    changes
}

/// Reads changes until `done` holds for the ones read so far.
async fn take_until(watch: &mut Watch, done: impl Fn(&[Change]) -> bool) -> Vec<Change> {
    let mut changes = Vec::new();
    while !done(&changes) {
        changes.extend(take(watch, 1).await);
    }
    changes
}

fn assert_increasing(changes: &[Change]) {
    for pair in changes.windows(2) {
        assert!(
            pair[0].revision < pair[1].revision,
            "feed out of order or repeated: {} then {}",
            pair[0].revision,
            pair[1].revision
        );
    }
}

/// Writes get increasing revisions; reads answer the newest value with the revision that wrote it.
pub async fn put_get_and_revisions_increase(backend: &dyn Backend) {
    let store = backend.store().await;
    let start = store.revision().await.expect("revision");
    assert_eq!(store.get("conf/a").await.expect("get"), None);
    let r1 = store.put("conf/a", value("1")).await.expect("put");
    let r2 = store.put("conf/b", value("2")).await.expect("put");
    let r3 = store.put("conf/a", value("3")).await.expect("put");
    assert!(start < r1 && r1 < r2 && r2 < r3, "revisions {r1} {r2} {r3} after {start}");
    let a = store.get("conf/a").await.expect("get").expect("a is there");
    assert_eq!((a.value, a.revision), (value("3"), r3));
    assert_eq!(store.revision().await.expect("revision"), r3);
    let many = store
        .get_many(&["conf/b".into(), "conf/none".into(), "conf/a".into()])
        .await
        .expect("get_many");
    let revisions: Vec<_> = many.iter().map(|entry| entry.as_ref().map(|e| e.revision)).collect();
    assert_eq!(revisions, vec![Some(r2), None, Some(r3)]);
}

/// Create, update and their conflicts, each naming the key and what was found.
pub async fn compare_and_swap(backend: &dyn Backend) {
    let store = backend.store().await;
    let created =
        store.compare_and_swap("cas/k", Expect::Absent, Some(value("v1"))).await.expect("create");
    let again = store.compare_and_swap("cas/k", Expect::Absent, Some(value("v2"))).await;
    assert!(
        matches!(&again, Err(StoreError::Conflict { key, expected: Expect::Absent, found: Some(r) }) if key == "cas/k" && *r == created),
        "{again:?}"
    );
    let stale =
        store.compare_and_swap("cas/k", Expect::Revision(created + 7), Some(value("x"))).await;
    assert!(
        matches!(&stale, Err(StoreError::Conflict { found: Some(r), .. }) if *r == created),
        "{stale:?}"
    );
    let missing = store.compare_and_swap("cas/none", Expect::Revision(1), Some(value("x"))).await;
    assert!(matches!(&missing, Err(StoreError::Conflict { found: None, .. })), "{missing:?}");
    let updated = store
        .compare_and_swap("cas/k", Expect::Revision(created), Some(value("v2")))
        .await
        .expect("update");
    assert!(updated > created);
    assert_eq!(store.get("cas/k").await.expect("get").expect("k").value, value("v2"));

    // A deleted key is absent again: it can be created, and not updated.
    store.delete("cas/k").await.expect("delete");
    let gone = store.compare_and_swap("cas/k", Expect::Revision(updated), Some(value("x"))).await;
    assert!(matches!(gone, Err(StoreError::Conflict { .. })), "{gone:?}");
    let recreated =
        store.compare_and_swap("cas/k", Expect::Absent, Some(value("v3"))).await.expect("recreate");
    assert_eq!(store.get("cas/k").await.expect("get").expect("k").revision, recreated);
}

/// One failing precondition writes nothing of its batch.
pub async fn failed_batch_writes_nothing(backend: &dyn Backend) {
    let store = backend.store().await;
    let existing = store.put("fail/exists", value("old")).await.expect("put");
    let before = store.revision().await.expect("revision");
    let result = store
        .batch(vec![
            Op::put("fail/new", value("n")),
            Op::put("fail/exists", value("new")).expecting(Expect::Absent),
            Op::delete("fail/other"),
        ])
        .await;
    assert!(
        matches!(&result, Err(StoreError::Conflict { key, found: Some(r), .. }) if key == "fail/exists" && *r == existing),
        "{result:?}"
    );
    assert_eq!(store.get("fail/new").await.expect("get"), None);
    assert_eq!(store.get("fail/exists").await.expect("get").expect("kept").value, value("old"));
    assert_eq!(store.revision().await.expect("revision"), before);
}

/// Bad keys, duplicate keys and oversized batches are refused before anything is written.
pub async fn refuses_bad_batches(backend: &dyn Backend) {
    let store = backend.store().await;
    for key in ["", "a//b", "/a", "a/", "a b", "a.", "ü"] {
        let result = store.put(key, value("x")).await;
        assert!(matches!(result, Err(StoreError::InvalidKey(_))), "{key:?}: {result:?}");
    }
    let duplicate = store.batch(vec![Op::put("dup/a", value("1")), Op::put("dup/a", value("2"))]);
    assert!(matches!(duplicate.await, Err(StoreError::DuplicateKey(_))));

    let max = store.max_batch();
    if max < 100_000 {
        let ops = (0..=max).map(|i| Op::put(format!("big/{i}"), value("x"))).collect();
        let too_large = store.batch(ops).await;
        assert!(
            matches!(too_large, Err(StoreError::BatchTooLarge { ops, max: m }) if ops == max + 1 && m == max),
            "{too_large:?}"
        );
        assert_eq!(store.scan_prefix("big/").await.expect("scan").entries.len(), 0);
    }
    // The largest batch commits, every op with its own revision.
    let largest = max.min(1000);
    let ops = (0..largest).map(|i| Op::put(format!("big/{i:04}"), value("x"))).collect();
    let last = store.batch(ops).await.expect("largest batch");
    let snapshot = store.scan_prefix("big/").await.expect("scan");
    assert_eq!(snapshot.entries.len(), largest);
    let revisions: HashSet<_> = snapshot.entries.iter().map(|entry| entry.revision).collect();
    assert_eq!(revisions.len(), largest);
    assert_eq!(snapshot.entries.iter().map(|entry| entry.revision).max(), Some(last));
}

/// Scans are in key order, bounded by the prefix, read at one revision; odd key characters
/// round-trip.
pub async fn scan_prefix(backend: &dyn Backend) {
    let store = backend.store().await;
    for key in ["scan/b", "scan/a.b", "scan/a=b", "scan/a/c", "scanned/x", "scan-x/y", "scan2"] {
        store.put(key, value(key)).await.expect("put");
    }
    let snapshot = store.scan_prefix("scan/").await.expect("scan");
    let keys: Vec<_> = snapshot.entries.iter().map(|entry| entry.key.as_str()).collect();
    assert_eq!(keys, ["scan/a.b", "scan/a/c", "scan/a=b", "scan/b"]);
    for entry in &snapshot.entries {
        assert_eq!(entry.value, value(&entry.key));
    }
    assert_eq!(snapshot.revision, store.revision().await.expect("revision"));
    // A prefix that ends inside a segment.
    let partial = store.scan_prefix("scan").await.expect("scan");
    assert_eq!(partial.entries.len(), 7);
    assert!(store.scan_prefix("nothing/").await.expect("scan").entries.is_empty());
}

/// Deletes: gone from reads and scans, in the feed as a change without a value; deleting a
/// missing key succeeds.
pub async fn deletes(backend: &dyn Backend) {
    let store = backend.store().await;
    let from = store.revision().await.expect("revision");
    store.put("del/a", value("1")).await.expect("put");
    store.put("del/b", value("2")).await.expect("put");
    let deleted = store.delete("del/a").await.expect("delete");
    store.delete("del/never").await.expect("deleting a missing key");
    assert_eq!(store.get("del/a").await.expect("get"), None);
    let keys: Vec<_> =
        store.scan_prefix("del/").await.expect("scan").entries.into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["del/b"]);
    let changes = take(&mut store.watch_from(from), 3).await;
    assert_increasing(&changes);
    // The feed may or may not still hold the put that the delete superseded (JetStream's does
    // not); the delete is the key's last change either way.
    let delete = changes.iter().rev().find(|change| change.key == "del/a").expect("the delete");
    assert_eq!((delete.revision, delete.value.as_ref()), (deleted, None));
}

/// Writers race with two-key batches that keep a pair equal (a counter under CAS); every scan
/// sees the pair equal, the counters end at the number of successful batches, and a watcher
/// from the start sees each batch's writes together.
pub async fn batch_atomicity_under_concurrent_writers(backend: &dyn Backend) {
    const WRITERS: usize = 4;
    const ROUNDS: usize = 25;
    let store = backend.store().await;
    store
        .batch(vec![Op::put("pair/a", value("0")), Op::put("pair/b", value("0"))])
        .await
        .expect("seed");
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let mut done = 0;
            while done < ROUNDS {
                let pair = store.scan_prefix("pair/").await.expect("scan");
                let [a, b] = pair.entries.as_slice() else { panic!("pair torn: {pair:?}") };
                assert_eq!(a.value, b.value, "a batch became visible in part");
                let n: u64 = std::str::from_utf8(&a.value).expect("utf8").parse().expect("number");
                let next = value(&(n + 1).to_string());
                // The batch ends outside the prefix (as the registry's end with an audit
                // record): a scan of the prefix must not wait for that last write, nor miss it.
                let log = format!("pairlog/{}", n + 1);
                let result = store
                    .batch(vec![
                        Op::put("pair/a", next.clone()).expecting(Expect::Revision(a.revision)),
                        Op::put("pair/b", next.clone()).expecting(Expect::Revision(b.revision)),
                        Op::put(log, next).expecting(Expect::Absent),
                    ])
                    .await;
                match result {
                    Ok(_) => done += 1,
                    Err(StoreError::Conflict { .. }) => {}
                    Err(error) => panic!("batch failed: {error}"),
                }
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let pair = store.scan_prefix("pair/").await.expect("scan");
    let total = (WRITERS * ROUNDS).to_string();
    assert!(pair.entries.iter().all(|entry| entry.value == value(&total)), "{pair:?}");
}

/// A watcher that started before the writers sees every write exactly once, in order; one
/// resuming from the middle sees exactly the rest; one resuming after keys were overwritten
/// ends on every key's newest value with no revision twice.
pub async fn watch_resume_without_gap_or_duplicate(backend: &dyn Backend) {
    const WRITERS: usize = 4;
    const WRITES: usize = 60;
    let store = backend.store().await;
    let start = store.revision().await.expect("revision");
    let mut live = store.watch_from(start);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for i in 0..WRITES {
                // Distinct keys: no write supersedes another, so no backend may skip one.
                let key = format!("feed/w{w}/{i}");
                let revision = if i % 5 == 4 {
                    let other = format!("feed/w{w}/{i}-pair");
                    store
                        .batch(vec![
                            Op::put(other.clone(), value(&other)),
                            Op::put(key.clone(), value(&key)),
                        ])
                        .await
                        .expect("batch")
                } else {
                    store.put(&key, value(&key)).await.expect("put")
                };
                written.push((revision, key));
            }
            written
        }));
    }
    let mut expected = BTreeMap::new();
    for writer in writers {
        for (revision, key) in writer.await.expect("writer") {
            expected.insert(revision, key);
        }
    }
    let total = WRITERS * WRITES + WRITERS * WRITES / 5;
    let seen = take(&mut live, total).await;
    assert_increasing(&seen);
    for change in &seen {
        assert_eq!(change.value.as_ref(), Some(&value(&change.key)));
        if let Some(key) = expected.get(&change.revision) {
            assert_eq!(&change.key, key);
        }
    }
    let keys: HashSet<_> = seen.iter().map(|change| change.key.as_str()).collect();
    assert_eq!(keys.len(), total, "a change delivered twice or one missing");

    let half = seen[total / 2 - 1].revision;
    let rest = take(&mut store.watch_from(half), total - total / 2).await;
    assert_eq!(&rest[..], &seen[total / 2..]);

    // Overwrites: a watcher from before them ends on each key's newest value.
    let before = store.revision().await.expect("revision");
    let mut newest = BTreeMap::new();
    for round in 0..5 {
        for k in 0..10 {
            let key = format!("feed/over/{k}");
            let revision = store.put(&key, value(&format!("{round}"))).await.expect("put");
            newest.insert(key, (revision, round.to_string()));
        }
    }
    let last = store.revision().await.expect("revision");
    let mut resumed = store.watch_from(before);
    let changes = take_until(&mut resumed, |changes| {
        changes.last().is_some_and(|change| change.revision >= last)
    })
    .await;
    assert_increasing(&changes);
    let mut state = BTreeMap::new();
    for change in &changes {
        state.insert(change.key.clone(), (change.revision, change.value.clone()));
    }
    for (key, (revision, body)) in &newest {
        assert_eq!(state.get(key), Some(&(*revision, Some(value(body)))), "{key}");
    }
}

/// The server restarts while a watcher follows: the watcher carries on with the writes made
/// after the restart, without a gap or a repeat (or, where it cannot, fails with an error so
/// its owner re-reads; it never silently skips).
pub async fn server_restart_during_watch(backend: &dyn Backend) {
    let store = backend.store().await;
    let start = store.revision().await.expect("revision");
    let mut watch = store.watch_from(start);
    for i in 0..10 {
        store.put(&format!("restart/before/{i}"), value("b")).await.expect("put");
    }
    let before = take(&mut watch, 10).await;
    backend.restart().await;
    // Writes fail while the server is away; retry until it is back.
    let mut after = Vec::new();
    for i in 0..10 {
        let key = format!("restart/after/{i}");
        let revision = loop {
            match store.put(&key, value("a")).await {
                Ok(revision) => break revision,
                Err(StoreError::Backend(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(error) => panic!("put after restart: {error}"),
            }
        };
        after.push(revision);
    }
    let mut changes = before;
    changes.extend(
        take_until(&mut watch, |changes| {
            changes.last().is_some_and(|change| change.revision >= *after.last().unwrap_or(&0))
        })
        .await,
    );
    assert_increasing(&changes);
    // A put whose acknowledgement was lost to the restart is retried, so it may be in the feed
    // twice, back to back: that is the writer's doing, not the feed's.
    let mut keys: Vec<_> = changes.iter().map(|change| change.key.as_str()).collect();
    keys.dedup();
    let expected: Vec<String> = (0..10)
        .map(|i| format!("restart/before/{i}"))
        .chain((0..10).map(|i| format!("restart/after/{i}")))
        .collect();
    assert_eq!(keys, expected.iter().map(String::as_str).collect::<Vec<_>>());
}
