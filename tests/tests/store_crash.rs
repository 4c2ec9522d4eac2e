//! Crash safety of the embedded store: a writer process is killed with SIGKILL mid-stream,
//! several times over; every write it saw acknowledged must survive, the feed must stay gap-free,
//! and a watcher resuming from its last revision must see each later change exactly once.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use futures::StreamExt;
use meridian_registry::store::{RedbStore, Revision, Store};

/// Runs the writer until it has acknowledged `acks` writes, then kills it. Returns the
/// acknowledged `(n, revision)` pairs.
fn write_then_kill(path: &std::path::Path, prefix: &str, acks: usize) -> Vec<(u64, Revision)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_store-writer"))
        .arg(path)
        .arg(prefix)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn store-writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut acked = Vec::with_capacity(acks);
    for line in BufReader::new(stdout).lines().take(acks) {
        let line = line.expect("read ack");
        let (n, revision) = line.split_once(' ').expect("ack format");
        acked.push((n.parse().expect("n"), revision.parse().expect("revision")));
    }
    // SIGKILL: no destructors, no flush, no clean close of the database.
    child.kill().expect("kill");
    child.wait().expect("reap");
    assert_eq!(acked.len(), acks, "writer died before acknowledging {acks} writes");
    acked
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut watched: Revision = 0;

    for round in 0..4 {
        let prefix = format!("round{round}");
        let acked = write_then_kill(&path, &prefix, 60 + round * 17);

        let store = RedbStore::open(&path).expect("reopen after SIGKILL");
        let last_acked = acked.last().unwrap().1;
        let revision = store.revision().await.unwrap();
        assert!(revision >= last_acked, "lost acknowledged revisions: {revision} < {last_acked}");
        for (n, written_at) in &acked {
            let entry = store.get(&format!("{prefix}/{n}")).await.unwrap();
            let entry = entry.unwrap_or_else(|| panic!("acknowledged write {prefix}/{n} lost"));
            assert_eq!(entry.value.as_ref(), n.to_string().as_bytes());
            assert_eq!(entry.revision, *written_at);
            if n % 2 == 1 {
                // The other half of an acknowledged batch is there too.
                assert!(store.get(&format!("{prefix}/{n}/pair")).await.unwrap().is_some());
            }
        }

        // Resume the watcher where the previous round left it: exactly the missing revisions,
        // in order, once each.
        let mut watch = store.watch_from(watched);
        let mut expected = watched + 1;
        while expected <= revision {
            let change = watch.next().await.expect("watch ended").expect("watch error");
            assert_eq!(change.revision, expected, "gap or duplicate after SIGKILL");
            expected += 1;
        }
        watched = revision;
    }
}
