//! What one account's distribution tasks may cost everyone else: a cap on its unsettled tasks
//! (409 naming it), a submission rate (429 with `Retry-After`), an executor that reads only
//! the pending index and never the settled tasks, and one task whose record does not decode
//! that is skipped and shown as broken while the others progress.

#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::RETRY_AFTER;
use serde_json::{Value, json};

use meridian_control::distribution::TaskLimits;
use meridian_registry::store::{Entry, Op, Revision, Snapshot, Store, StoreError, Watch};
use support::{Tenant, TestApi};

fn product_only(instance: &str) -> Value {
    json!({ "product": "a1Product01", "policy": { "kind": "specified", "instance": instance } })
}

fn missing_product() -> Value {
    json!({ "product": "x1Missing001", "policy": { "kind": "specified", "instance": "x" } })
}

fn one_device(instance: &str) -> Value {
    json!({ "product": "a1Product01", "devices": ["lamp-1"],
        "policy": { "kind": "specified", "instance": instance } })
}

async fn state(api: &TestApi, tenant: &Tenant, task: &str) -> String {
    let reply = api.get(&format!("/v1/distribution-tasks/{task}"), &tenant.key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()["state"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_account_at_its_cap_of_unsettled_tasks_gets_409_naming_it() {
    let api = TestApi::start().await;
    let limit = TaskLimits::default().max_active_per_account;
    let alpha = api.tenant_with_product("alpha", "a1Product01").await;
    api.devices(&alpha, "a1Product01", &["lamp-1"]).await;
    let beta = api.tenant_with_product("beta", "a1Product02").await;

    let mut tasks = Vec::new();
    for _ in 0..limit {
        tasks.push(api.task(&alpha, one_device("alpha-fra")).await);
    }
    let reply = api.post("/v1/distribution-tasks", &alpha.key, one_device("alpha-fra")).await;
    let message = reply.error(StatusCode::CONFLICT);
    assert!(message.contains(&format!("already has {limit} unsettled")), "{message}");
    let listed = api.get("/v1/distribution-tasks", &alpha.key).await.json();
    assert_eq!(listed["tasks"].as_array().unwrap().len(), limit as usize, "nothing stored");

    // Another account is not held up by alpha's tasks.
    let body = json!({ "product": "a1Product02",
        "policy": { "kind": "specified", "instance": "beta-fra" } });
    api.task(&beta, body).await;

    // Once one settles, there is room for one more.
    api.plane.drive(&tasks[0]).await.unwrap();
    assert_eq!(state(&api, &alpha, &tasks[0]).await, "Distributed");
    api.task(&alpha, one_device("alpha-fra")).await;
    let reply = api.post("/v1/distribution-tasks", &alpha.key, one_device("alpha-fra")).await;
    reply.error(StatusCode::CONFLICT);
}

#[tokio::test]
async fn submissions_faster_than_the_rate_get_429_with_retry_after() {
    let api = TestApi::start().await;
    let limits = TaskLimits::default();
    let alpha = api.tenant_with_product("alpha", "a1Product01").await;
    let beta = api.tenant_with_product("beta", "a1Product02").await;

    // The burst, each task run to its end at once so the cap stays out of the way.
    for _ in 0..limits.submission_burst {
        let task = api.task(&alpha, product_only("alpha-fra")).await;
        api.plane.drive(&task).await.unwrap();
    }
    let reply = api.post("/v1/distribution-tasks", &alpha.key, product_only("alpha-fra")).await;
    let message = reply.error(StatusCode::TOO_MANY_REQUESTS);
    assert!(message.contains("too many task submissions"), "{message}");
    let interval = 60 / u64::from(limits.submissions_per_minute);
    let retry_after = reply.headers.get(RETRY_AFTER).expect("Retry-After").to_str().unwrap();
    assert_eq!(retry_after, interval.to_string());
    // A refused submission counts too: checking it was work.
    let reply = api.post("/v1/distribution-tasks", &alpha.key, missing_product()).await;
    reply.error(StatusCode::TOO_MANY_REQUESTS);

    // Other accounts have their own rate.
    let body = json!({ "product": "a1Product02",
        "policy": { "kind": "specified", "instance": "beta-fra" } });
    api.task(&beta, body).await;

    // On the registry's clock: one interval later, one more is allowed.
    api.clock.advance(Duration::from_secs(interval));
    api.task(&alpha, product_only("alpha-fra")).await;
    let reply = api.post("/v1/distribution-tasks", &alpha.key, product_only("alpha-fra")).await;
    reply.error(StatusCode::TOO_MANY_REQUESTS);
}

/// Records the keys and prefixes read, to show what the executor touches.
struct Reads {
    inner: Arc<dyn Store>,
    log: Mutex<Vec<String>>,
}

impl Reads {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

#[async_trait]
impl Store for Reads {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.log.lock().unwrap().push(format!("get {key}"));
        self.inner.get(key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, StoreError> {
        self.log.lock().unwrap().extend(keys.iter().map(|key| format!("get {key}")));
        self.inner.get_many(keys).await
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        self.log.lock().unwrap().push(format!("scan {prefix}"));
        self.inner.scan_prefix(prefix).await
    }

    async fn batch(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        self.inner.batch(ops).await
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }

    fn watch_from(&self, after: Revision) -> Watch {
        self.inner.watch_from(after)
    }

    async fn compact(&self, through: Revision) -> Result<(), StoreError> {
        self.inner.compact(through).await
    }
}

#[tokio::test]
async fn the_executor_reads_pending_tasks_only_and_skips_a_broken_one() {
    let mut reads = None;
    let api = TestApi::start_with_store(|inner| {
        let store = Arc::new(Reads { inner, log: Mutex::default() });
        reads = Some(store.clone());
        store
    })
    .await;
    let reads = reads.unwrap();
    let alpha = api.tenant_with_product("alpha", "a1Product01").await;
    api.devices(&alpha, "a1Product01", &["lamp-1"]).await;
    let beta = api.tenant_with_product("beta", "b1Product01").await;
    api.devices(&beta, "b1Product01", &["plug-1"]).await;

    // Two of alpha's tasks go bad: one as an earlier version might have left it, sorting
    // before every other task, already there when this version first runs; and one submitted
    // later and damaged.
    let store = api.plane.registry().store();
    let garbage = Bytes::from_static(br#"{"owner":"alpha","state":"Exploded"}"#);
    store.put("tasks/dt-000000broken", garbage.clone()).await.unwrap();
    let settled = api.task(&alpha, product_only("alpha-fra")).await;
    api.plane.run_pending().await.unwrap();
    assert_eq!(state(&api, &alpha, &settled).await, "Distributed");
    let damaged = api.task(&alpha, one_device("alpha-fra")).await;
    store.put(&format!("tasks/{damaged}"), garbage).await.unwrap();
    let body = json!({ "product": "b1Product01", "devices": ["plug-1"],
        "policy": { "kind": "specified", "instance": "beta-fra" } });
    let healthy = api.task(&beta, body).await;

    reads.take();
    api.plane.run_pending().await.unwrap();
    assert_eq!(state(&api, &beta, &healthy).await, "Distributed", "the others go on");
    let read = reads.take();
    assert!(!read.iter().any(|r| r == "scan tasks/"), "the executor scanned every task: {read:?}");
    assert!(
        !read.iter().any(|r| r.ends_with(&settled)),
        "the executor read a settled task: {read:?}"
    );
    assert!(read.iter().any(|r| r.ends_with(&damaged)), "{read:?}");

    // The damaged tasks show as such, to their owner only; nothing else breaks.
    let listed = api.get("/v1/distribution-tasks", &alpha.key).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text());
    let listed = listed.json();
    let mut broken: Vec<&str> =
        listed["broken"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    broken.sort();
    let mut expected = vec![damaged.as_str(), "dt-000000broken"];
    expected.sort();
    assert_eq!(broken, expected, "{listed}");
    assert_eq!(listed["tasks"][0]["id"], settled.as_str());
    let one = api.get(&format!("/v1/distribution-tasks/{damaged}"), &alpha.key).await;
    let message = one.error(StatusCode::INTERNAL_SERVER_ERROR);
    assert!(message.contains(&damaged) && message.contains("does not decode"), "{message}");
    let theirs = api.get(&format!("/v1/distribution-tasks/{damaged}"), &beta.key).await;
    theirs.error(StatusCode::NOT_FOUND);
    reads.take();
    let beta_list = api.get("/v1/distribution-tasks", &beta.key).await.json();
    assert!(beta_list.get("broken").is_none(), "{beta_list}");
    assert_eq!(beta_list["tasks"][0]["id"], healthy.as_str());
    // One account's list reads its own tasks only, never every account's.
    let read = reads.take();
    assert!(!read.iter().any(|r| r == "scan tasks/"), "beta's list scanned every task: {read:?}");
    assert!(!read.iter().any(|r| r.ends_with(&settled)), "beta's list read alpha's: {read:?}");
}

#[tokio::test]
async fn tasks_stored_before_the_pending_index_existed_still_run() {
    let api = TestApi::start().await;
    let alpha = api.tenant_with_product("alpha", "a1Product01").await;
    api.devices(&alpha, "a1Product01", &["lamp-1"]).await;
    let limit = TaskLimits::default().max_active_per_account;

    // Unsettled tasks as an earlier version stored them: no slot, no index. More of them than
    // the cap allows now.
    let mut tasks = Vec::new();
    for _ in 0..limit {
        tasks.push(api.task(&alpha, one_device("alpha-fra")).await);
    }
    let store = api.plane.registry().store();
    let legacy = "dt-legacy000001";
    let mut record: Value = {
        let entry = store.get(&format!("tasks/{}", tasks[0])).await.unwrap().unwrap();
        serde_json::from_slice(&entry.value).unwrap()
    };
    record["id"] = json!(legacy);
    record.as_object_mut().unwrap().remove("slot");
    let mut ops = vec![Op::put(format!("tasks/{legacy}"), Bytes::from(record.to_string()))];
    for task in &tasks {
        let entry = store.get(&format!("tasks/{task}")).await.unwrap().unwrap();
        let mut record: Value = serde_json::from_slice(&entry.value).unwrap();
        record.as_object_mut().unwrap().remove("slot");
        ops.push(Op::put(entry.key, Bytes::from(record.to_string())));
    }
    for entry in store.scan_prefix("pending-tasks/").await.unwrap().entries {
        ops.push(Op::delete(entry.key));
    }
    store.batch(ops).await.unwrap();

    // The first pass indexes them all, and runs them.
    api.plane.run_pending().await.unwrap();
    for task in tasks.iter().map(String::as_str).chain([legacy]) {
        assert_eq!(state(&api, &alpha, task).await, "Distributed", "{task}");
    }
    assert!(store.scan_prefix("pending-tasks/").await.unwrap().entries.is_empty());
    assert!(store.get("task-index").await.unwrap().is_some());
    // They are in their owner's index too: alpha's list, read through it, has every one.
    let listed = api.get("/v1/distribution-tasks", &alpha.key).await.json();
    let ids: Vec<&str> =
        listed["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    for task in tasks.iter().map(String::as_str).chain([legacy]) {
        assert!(ids.contains(&task), "{task} missing from {listed}");
    }
}

#[tokio::test]
async fn racing_submissions_never_pass_the_cap() {
    let api = TestApi::start().await;
    let limit = TaskLimits::default().max_active_per_account as usize;
    let alpha = api.tenant_with_product("alpha", "a1Product01").await;
    api.devices(&alpha, "a1Product01", &["lamp-1"]).await;

    let submissions = (0..2 * limit)
        .map(|_| api.post("/v1/distribution-tasks", &alpha.key, one_device("alpha-fra")));
    let replies = futures::future::join_all(submissions).await;
    let created = replies.iter().filter(|reply| reply.status == StatusCode::CREATED).count();
    assert_eq!(created, limit, "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
    for reply in replies.iter().filter(|reply| reply.status != StatusCode::CREATED) {
        reply.error(StatusCode::CONFLICT);
    }
    let listed = api.get("/v1/distribution-tasks", &alpha.key).await.json();
    assert_eq!(listed["tasks"].as_array().unwrap().len(), limit);
}

#[tokio::test]
async fn a_failed_task_gives_up_its_place_and_needs_one_to_be_retried() {
    let api = TestApi::start().await;
    let limit = TaskLimits::default().max_active_per_account;
    let alpha = api.tenant_with_product("alpha", "a1Product01").await;
    let other = json!({ "key": "a1Product02", "name": "Plug", "home_instance": "alpha-sh" });
    assert_eq!(api.post("/v1/products", &alpha.key, other).await.status, StatusCode::CREATED);
    api.devices(&alpha, "a1Product01", &["lamp-1"]).await;
    api.devices(&alpha, "a1Product02", &["plug-1"]).await;

    // The task fails: its product is gone by the time the executor runs it.
    let failed = api.task(&alpha, one_device("alpha-fra")).await;
    api.plane.registry().store().delete("products/a1Product01").await.unwrap();
    api.plane.run_pending().await.unwrap();
    assert_eq!(state(&api, &alpha, &failed).await, "Failed");

    // Its place is free again: the account fills its cap with other tasks.
    let body = json!({ "product": "a1Product02", "devices": ["plug-1"],
        "policy": { "kind": "specified", "instance": "alpha-fra" } });
    for _ in 0..limit {
        api.task(&alpha, body.clone()).await;
    }
    // A retry would make the failed task active again, beyond the cap.
    let reply = api.post_empty(&format!("/v1/distribution-tasks/{failed}/retry"), &alpha.key).await;
    let message = reply.error(StatusCode::CONFLICT);
    assert!(message.contains(&format!("already has {limit} unsettled")), "{message}");
    assert_eq!(state(&api, &alpha, &failed).await, "Failed", "the refused retry changed nothing");
}
