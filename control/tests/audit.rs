//! The audit log survives a crash (PROTOCOL §9): every change the admin API makes commits its audit
//! entry in the same store batch as the change itself. The store here "dies" right after the
//! batch that carries a change commits: every later write fails, as it would if the process
//! had been killed at that instant. Once the store is back, the audit log lists the change.

#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use meridian_registry::store::{Entry, Op, Revision, Snapshot, Store, StoreError, Watch};
use support::{Body, Tenant, TestApi};

/// A store that stops taking writes after the next committed batch, until revived.
struct DiesAfterNextCommit {
    inner: Arc<dyn Store>,
    /// The next batch that commits is the last one.
    armed: AtomicBool,
    /// Writes fail: the process "died".
    dead: AtomicBool,
}

impl DiesAfterNextCommit {
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    fn revive(&self) {
        self.armed.store(false, Ordering::SeqCst);
        self.dead.store(false, Ordering::SeqCst);
    }
}

#[async_trait]
impl Store for DiesAfterNextCommit {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.get(key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, StoreError> {
        self.inner.get_many(keys).await
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        self.inner.scan_prefix(prefix).await
    }

    async fn batch(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("the process died".into()));
        }
        let revision = self.inner.batch(ops).await?;
        if self.armed.swap(false, Ordering::SeqCst) {
            self.dead.store(true, Ordering::SeqCst);
        }
        Ok(revision)
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

async fn start() -> (TestApi, Arc<DiesAfterNextCommit>) {
    let mut handle = None;
    let api = TestApi::start_with_store(|inner| {
        let store = Arc::new(DiesAfterNextCommit {
            inner,
            armed: AtomicBool::new(false),
            dead: AtomicBool::new(false),
        });
        handle = Some(store.clone());
        store
    })
    .await;
    (api, handle.expect("the store was wrapped"))
}

/// Makes `call` with the store dying right after the change commits; the call itself
/// succeeds (its change is durable). Then the audit log must name it.
async fn survives(
    api: &TestApi,
    store: &DiesAfterNextCommit,
    tenant: &Tenant,
    call: (Method, String, Body<'_>),
    expected: StatusCode,
    action: &str,
    target: &str,
) {
    let (method, path, body) = call;
    store.arm();
    let reply = api.request(method.clone(), &path, Some(&tenant.key), body).await;
    store.revive();
    assert_eq!(reply.status, expected, "{method} {path}: {}", reply.text());

    let audit = api.get("/v1/audit", &tenant.key).await.json();
    let recorded = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .any(|entry| entry["action"] == action && entry["target"] == target);
    assert!(recorded, "{method} {path} lost its audit entry {action} {target}: {audit}");
}

fn json_call(method: Method, path: &str, body: Value) -> (Method, String, Body<'static>) {
    (method, path.to_owned(), Body::Json(body))
}

#[tokio::test]
async fn every_change_commits_its_audit_entry_with_it() {
    let (api, store) = start().await;

    // The account, its first key and its audit entry: one batch.
    let body = json!({ "id": "early", "name": "Early Ltd", "kind": "individual" });
    store.arm();
    let reply = api
        .request(Method::POST, "/v1/accounts", Some(support::OPERATOR_TOKEN), Body::Json(body))
        .await;
    store.revive();
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let early = Tenant { key: reply.json()["api_key"].as_str().unwrap().to_owned() };
    let audit = api.get("/v1/audit", &early.key).await.json();
    assert_eq!(audit["entries"][0]["action"], "account.created", "{audit}");

    let acme = api.tenant_with_product("acme", "a1Product01").await;

    // A new API key is audited by its public id, in the batch that stores it.
    store.arm();
    let reply = api.request(Method::POST, "/v1/api-keys", Some(&acme.key), Body::None).await;
    store.revive();
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let key = reply.json()["api_key"].as_str().unwrap().to_owned();
    let (key_id, secret) = key.split_once('.').unwrap();
    let audit = api.get("/v1/audit", &acme.key).await.json();
    let recorded = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|entry| entry["action"] == "api-key.created" && entry["target"] == key_id);
    assert!(recorded, "a new API key lost its audit entry: {audit}");
    assert!(!audit.to_string().contains(secret), "the audit log never shows a key's secret");

    // The operator provisions an instance for acme: the entry is in acme's log.
    let instance = json!({ "id": "acme-extra", "region": "cn-shanghai", "owner": "acme",
        "endpoint": { "host": "extra.example", "tcp_port": 1883 } });
    store.arm();
    let operator = Some(support::OPERATOR_TOKEN);
    let reply =
        api.request(Method::POST, "/v1/operator/instances", operator, Body::Json(instance)).await;
    store.revive();
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let audit = api.get("/v1/audit", &acme.key).await.json();
    let recorded = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|entry| entry["action"] == "instance.created" && entry["target"] == "acme-extra");
    assert!(recorded, "provisioning lost its audit entry: {audit}");
    let created = StatusCode::CREATED;
    let ok = StatusCode::OK;
    let product = json!({ "key": "a1Product02", "name": "Plug", "home_instance": "acme-sh" });
    survives(
        &api,
        &store,
        &acme,
        json_call(Method::POST, "/v1/products", product),
        created,
        "product.created",
        "a1Product02",
    )
    .await;
    let patch = (
        Method::PATCH,
        "/v1/products/a1Product01".to_owned(),
        Body::Typed("application/merge-patch+json", br#"{"name":"Lamp 2"}"#.to_vec()),
    );
    survives(&api, &store, &acme, patch, ok, "product.updated", "a1Product01").await;
    let devices = json!({ "devices": [{ "deviceName": "lamp-1" }, { "deviceName": "lamp-2" }] });
    let path = "/v1/products/a1Product01/devices";
    survives(
        &api,
        &store,
        &acme,
        json_call(Method::POST, path, devices),
        created,
        "devices.created",
        "a1Product01 x2",
    )
    .await;
    let import = (
        Method::POST,
        "/v1/products/a1Product01/devices/import".to_owned(),
        Body::Typed("text/csv", b"deviceName\nlamp-3\n".to_vec()),
    );
    survives(&api, &store, &acme, import, created, "devices.created", "a1Product01 x1").await;
    let device = "a1Product01/lamp-1";
    let path = "/v1/products/a1Product01/devices/lamp-1";
    let disable = (Method::POST, format!("{path}/disable"), Body::None);
    survives(&api, &store, &acme, disable, ok, "device.disabled", device).await;
    let enable = (Method::POST, format!("{path}/enable"), Body::None);
    survives(&api, &store, &acme, enable, ok, "device.enabled", device).await;
    let delete = (Method::DELETE, path.to_owned(), Body::None);
    survives(&api, &store, &acme, delete, StatusCode::NO_CONTENT, "device.deleted", device).await;

    // A task one step in (Distributing) can be retried.
    let task = api
        .task(
            &acme,
            json!({ "product": "a1Product01", "devices": ["lamp-2"],
                "policy": { "kind": "specified", "instance": "acme-fra" } }),
        )
        .await;
    api.plane.step_once(&task).await.expect("first step");
    let retry = (Method::POST, format!("/v1/distribution-tasks/{task}/retry"), Body::None);
    survives(&api, &store, &acme, retry, StatusCode::ACCEPTED, "task.retried", &task).await;

    let code = (Method::POST, "/v1/verification-codes".to_owned(), Body::None);
    survives(&api, &store, &acme, code, created, "code.requested", "").await;
}
