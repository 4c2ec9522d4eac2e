//! Crash safety of distribution tasks: the control plane is killed with SIGKILL at random points
//! while a task moves devices, many times over. After every restart the task is in a valid
//! state and a watcher resuming from the last revision it saw reads every change once, with no
//! gap, rebuilding exactly what the store holds; at the end every device was moved exactly once
//! and recorded exactly once.

mod feed;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use futures::StreamExt;
use meridian_control::model::{RecordResult, TaskState};
use meridian_registry::model::{Device, Placement};
use meridian_registry::store::{RedbStore, Store};
use meridian_registry::{decode, keys};

const DEVICES: usize = 2_400;

/// Runs the control plane until it has printed `steps` step lines (or settled), then kills it.
/// Returns whether the task settled.
fn run_then_kill(path: &std::path::Path, steps: usize) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_control-crash"))
        .arg(path)
        .arg(DEVICES.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn control-crash");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut seen = 0;
    let mut settled = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read");
        if line == "settled" {
            settled = true;
            break;
        }
        if line == "step" {
            seen += 1;
            if seen >= steps {
                break;
            }
        }
    }
    // SIGKILL, wherever it is: mid-batch, mid-fsync, between steps.
    let _ = child.kill();
    child.wait().expect("reap");
    settled
}

#[tokio::test]
async fn kill_9_mid_task_never_loses_or_double_moves_a_device() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.redb");
    let mut follower = feed::Follower::default();
    let mut runs = 0;
    // Kill after 0, 1, 2, ... steps: the first kills land before or during the first batch.
    let mut settled = false;
    while !settled {
        settled = run_then_kill(&path, runs % 3);
        runs += 1;
        assert!(runs < 200, "task never settled");

        // Between runs the store must hold a valid task, and the feed must follow it.
        let store = RedbStore::open(&path).unwrap();
        follower.catch_up(&store).await;
        follower.assert_matches(&store).await;
        let tasks = store.scan_prefix("tasks/").await.unwrap().entries;
        assert!(tasks.len() <= 1);
        if let Some(entry) = tasks.first() {
            let task: meridian_control::model::Task = decode(&entry.key, &entry.value).unwrap();
            assert_eq!(task.records.len(), task.cursor, "records follow the cursor exactly");
            assert!(task.cursor <= task.devices.len());
            let done = task.state == TaskState::Distributed;
            assert_eq!(done, task.cursor == task.devices.len());
        }
    }
    assert!(runs > 3, "the task was interrupted several times ({runs} runs)");

    let store = RedbStore::open(&path).unwrap();
    let entry = &store.scan_prefix("tasks/").await.unwrap().entries[0];
    let task: meridian_control::model::Task = decode(&entry.key, &entry.value).unwrap();
    assert_eq!(task.state, TaskState::Distributed);
    assert_eq!(task.records.len(), DEVICES);
    assert!(task.records.iter().all(|r| r.result == RecordResult::Succeeded));
    let mut names: Vec<_> = task.records.iter().map(|r| r.device_name.clone()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), DEVICES, "each device recorded exactly once");

    // Every device is at the destination, and the feed shows exactly one move per device.
    let devices = store.scan_prefix(keys::DEVICES).await.unwrap().entries;
    assert_eq!(devices.len(), DEVICES, "no device lost");
    for entry in &devices {
        let device: Device = decode(&entry.key, &entry.value).unwrap();
        assert_eq!(device.placement, Placement::Specified { instance: "iot-b".parse().unwrap() });
    }
    let revision = store.revision().await.unwrap();
    let mut feed = store.watch_from(0);
    let mut writes: HashMap<String, usize> = HashMap::new();
    loop {
        let change = feed.next().await.unwrap().unwrap();
        if change.key.starts_with(keys::DEVICES) {
            *writes.entry(change.key.clone()).or_default() += 1;
        }
        if change.revision == revision {
            break;
        }
    }
    // One write to create the device, one to move it.
    assert!(writes.values().all(|&n| n == 2), "a device was written more than once by the task");
}
