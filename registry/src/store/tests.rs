//! What only the embedded store promises (consecutive revisions, no feed entry for a no-op
//! delete, compaction, durability across reopen) and the trait's default methods. The contract
//! both backends keep is the conformance suite (`super::conformance`, run against each by
//! `tests/tests/store_conformance.rs`).

use std::collections::HashMap;

use bytes::Bytes;
use futures::StreamExt;

use super::*;

fn open() -> (tempfile::TempDir, RedbStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbStore::open(dir.path().join("store.redb")).expect("open");
    (dir, store)
}

fn value(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

/// Reads exactly `n` changes from a watch.
async fn take(watch: &mut Watch, n: usize) -> Vec<Change> {
    let mut changes = Vec::with_capacity(n);
    while changes.len() < n {
        let change = watch.next().await.expect("watch ended").expect("watch error");
        changes.push(change);
    }
    changes
}

#[tokio::test]
async fn batch_gets_consecutive_revisions() {
    let (_dir, store) = open();
    store.put("x", value("0")).await.unwrap();
    let last = store
        .batch(vec![Op::put("a", value("1")), Op::put("b", value("2")), Op::delete("x")])
        .await
        .unwrap();
    assert_eq!(last, 4);
    let changes = take(&mut store.watch_from(1), 3).await;
    let got: Vec<_> =
        changes.iter().map(|c| (c.revision, c.key.as_str(), c.value.clone())).collect();
    assert_eq!(got, vec![(2, "a", Some(value("1"))), (3, "b", Some(value("2"))), (4, "x", None)]);
}

#[tokio::test]
async fn deleting_a_missing_key_is_a_no_op() {
    let (_dir, store) = open();
    store.put("a", value("1")).await.unwrap();
    assert_eq!(store.delete("missing").await.unwrap(), 1);
    assert_eq!(store.revision().await.unwrap(), 1);
}

#[tokio::test]
async fn get_many_answers_in_order_with_gaps() {
    let (_dir, store) = open();
    store.put("a", value("1")).await.unwrap();
    store.put("b", value("2")).await.unwrap();
    store.put("a", value("3")).await.unwrap();
    let keys: Vec<String> = ["b", "missing", "a", "b"].map(String::from).to_vec();

    let entries = store.get_many(&keys).await.unwrap();
    let got: Vec<_> =
        entries.iter().map(|e| e.as_ref().map(|e| (e.key.as_str(), e.revision))).collect();
    assert_eq!(got, vec![Some(("b", 2)), None, Some(("a", 3)), Some(("b", 2))]);
    for (key, entry) in keys.iter().zip(&entries) {
        assert_eq!(&store.get(key).await.unwrap(), entry);
    }
    // The trait's one-by-one default (what a remote backend uses) answers the same.
    assert_eq!(GetOnly(store.clone()).get_many(&keys).await.unwrap(), entries);
    assert!(store.get_many(&[]).await.unwrap().is_empty());
}

/// A store that keeps the trait's default `get_many`.
struct GetOnly(RedbStore);

#[async_trait::async_trait]
impl Store for GetOnly {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.0.get(key).await
    }
    async fn scan_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        self.0.scan_prefix(prefix).await
    }
    async fn batch(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        self.0.batch(ops).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.0.revision().await
    }
    fn watch_from(&self, after: Revision) -> Watch {
        self.0.watch_from(after)
    }
    async fn compact(&self, through: Revision) -> Result<(), StoreError> {
        self.0.compact(through).await
    }
}

#[tokio::test]
async fn committed_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let store = RedbStore::open(&path).unwrap();
        store.put("a", value("1")).await.unwrap();
        store.batch(vec![Op::put("b", value("2")), Op::put("c", value("3"))]).await.unwrap();
        store.delete("a").await.unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.revision().await.unwrap(), 4);
    assert_eq!(store.get("a").await.unwrap(), None);
    assert_eq!(store.get("c").await.unwrap().unwrap().revision, 3);
    // The feed survives too, and new writes continue the numbering.
    assert_eq!(store.put("d", value("4")).await.unwrap(), 5);
    let changes = take(&mut store.watch_from(0), 5).await;
    let revisions: Vec<_> = changes.iter().map(|c| c.revision).collect();
    assert_eq!(revisions, vec![1, 2, 3, 4, 5]);
}

/// Several writers race while one watcher follows from the start and another resumes half way;
/// each must see every revision exactly once, in order, with the value that revision wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_sees_every_change_once_under_concurrent_writers() {
    const WRITERS: usize = 4;
    const WRITES: usize = 150;
    const TOTAL: usize = WRITERS * WRITES;
    let (_dir, store) = open();
    let mut from_start = store.watch_from(0);

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for i in 0..WRITES {
                let key = format!("w{w}/k{}", i % 7);
                let body = format!("{w}-{i}");
                let revision = if i % 5 == 4 {
                    // Every fifth write is a two-key batch.
                    let other = format!("w{w}/b{i}");
                    store
                        .batch(vec![
                            Op::put(other.clone(), value(&body)),
                            Op::put(key.clone(), value(&body)),
                        ])
                        .await
                        .unwrap()
                } else {
                    store.put(&key, value(&body)).await.unwrap()
                };
                written.push((revision, key, body));
            }
            written
        }));
    }

    let mut expected: HashMap<Revision, (String, String)> = HashMap::new();
    for writer in writers {
        for (revision, key, body) in writer.await.unwrap() {
            expected.insert(revision, (key, body));
        }
    }
    let batches = WRITERS * WRITES / 5;
    let total = TOTAL + batches;
    assert_eq!(store.revision().await.unwrap() as usize, total);

    let seen = take(&mut from_start, total).await;
    for (i, change) in seen.iter().enumerate() {
        assert_eq!(change.revision as usize, i + 1, "gap or duplicate at {i}");
        if let Some((key, body)) = expected.get(&change.revision) {
            assert_eq!(&change.key, key);
            assert_eq!(change.value.as_deref(), Some(body.as_bytes()));
        }
    }

    // A watcher resuming from a revision sees exactly the rest.
    let half = (total / 2) as Revision;
    let resumed = take(&mut store.watch_from(half), total - half as usize).await;
    assert_eq!(resumed.first().unwrap().revision, half + 1);
    assert_eq!(resumed.last().unwrap().revision as usize, total);
    assert_eq!(&resumed[..], &seen[half as usize..]);
}

#[tokio::test]
async fn compacted_feed_refuses_old_watchers() {
    let (_dir, store) = open();
    for i in 0..10 {
        store.put(&format!("k{i}"), value("v")).await.unwrap();
    }
    store.compact(6).await.unwrap();
    let mut old = store.watch_from(3);
    let error = old.next().await.unwrap().unwrap_err();
    assert!(matches!(error, StoreError::Compacted { requested: 3, compacted: 6 }));
    assert!(old.next().await.is_none(), "a failed watch ends");

    let rest = take(&mut store.watch_from(6), 4).await;
    assert_eq!(rest[0].revision, 7);
    // Values are untouched by compaction.
    assert_eq!(store.scan_prefix("k").await.unwrap().entries.len(), 10);
}
