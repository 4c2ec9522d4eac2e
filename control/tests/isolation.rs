//! Account isolation (issue 8): one account never sees or touches another's resources.
//!
//! The sweep walks every operation of the OpenAPI document the server itself serves, so an
//! endpoint added later is covered the day it is documented: an operation the sweep does not
//! know fails it (see [`classify`]). For each operation it puts another account's resources
//! in the path (or the body), calls it as a stranger, without a key and with wrong keys, and
//! checks the answer: 401 without valid credentials, 404 exactly like a missing resource with
//! a key, a JSON error either way, and never a word of the other account's data. Afterwards
//! the store must hold byte for byte what it held before, save the stranger's own records,
//! and the owner's reads must answer as before. Last, the owners make the same calls, proving
//! that each call was well formed and the 404 came from isolation, not from a typo.
//!
//! Operations that legitimately cross accounts are checked for their documented rule: the
//! addressee of a transfer or of a cross-account distribution sees what is addressed to it,
//! an organisation admin sees its members and no one else's, and a third account sees nothing.
//! Then regressions for the leaks the sweep's review found: the distribution executor copying
//! a product that changed owner, cross-account submission answering about the destination's
//! instances before checking the code, and owner checks that were not atomic with the write.

// Test helpers outside `#[test]` functions panic on failure by design.
#![allow(clippy::unwrap_used)]

// Each test file uses part of the shared support.
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use meridian_control::{ControlError, ControlPlane};
use meridian_registry::clock::{ManualClock, Timestamp};
use meridian_registry::ids::{AccountId, DeviceKey, InstanceId, ProductKey};
use meridian_registry::model::{Device, DeviceStatus, InstanceUsage, Product, Region};
use meridian_registry::secret::SecretKey;
use meridian_registry::store::{
    Entry, Op, RedbStore, Revision, Snapshot, Store, StoreError, Watch,
};
use meridian_registry::{NewDevice, Registry, RegistryError, encode, keys};
use support::{Body, OPERATOR_TOKEN, REGIONS, Reply, Tenant, TestApi};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// What an attacker puts where another account's identifier goes, to get the answer for a
/// resource that does not exist.
const MISSING_PK: &str = "zzzzzzzzzzz";
const MISSING: &str = "zz-missing";

/// The four accounts every world has, with their product keys.
const ACCOUNTS: [(&str, &str); 4] = [
    ("alpha", "a13FN5TplKq"),
    ("bravo", "b13FN5TplKq"),
    ("charlie", "c13FN5TplKq"),
    ("echo", "e13FN5TplKq"),
];

/// Alpha's, the product every world revolves around.
const PK: &str = "a13FN5TplKq";

fn pk_of(account: &str) -> &'static str {
    ACCOUNTS.iter().find(|(id, _)| *id == account).map(|(_, pk)| *pk).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// A stranger (bravo) against everything alpha owns or is a party to, alpha's counterparty
/// being echo: 401 or 404 on every operation, nothing shown, nothing changed.
#[tokio::test]
async fn a_stranger_reaches_nothing_on_any_operation() {
    let api = TestApi::start().await;
    let world = world(&api, "echo").await;
    let swept = sweep(&api, &world, "bravo").await;
    // Every operation of the document was visited (the sweep panics on one it cannot place).
    assert_eq!(swept, document(&api).await.len());
    controls(&api, &world).await;
}

/// Alpha's cross-account resources addressed to bravo: bravo sees those and only those, and
/// charlie, a third account, reaches none of them on any operation.
#[tokio::test]
async fn cross_account_resources_reach_their_addressee_only() {
    let api = TestApi::start().await;
    let w = world(&api, "bravo").await;
    let bravo = &w.tenants["bravo"];

    // Device transfer orders: the four alpha and bravo are on, each shown to bravo from its
    // side; where bravo is the destination, without alpha's ProductKey.
    let listed = api.get("/v1/device-transfers", &bravo.key).await;
    assert!(!listed.text().contains(PK), "{}", listed.text());
    assert_eq!(ids(&listed.json()["transfers"], "id"), sorted(&w.device_transfers));
    for id in &w.device_transfers {
        let order = api.get(&format!("/v1/device-transfers/{id}"), &bravo.key).await.json();
        assert!(order["source"] == "bravo" || order["destination"] == "bravo", "{order}");
    }
    // Product views: bravo's own, of alpha's product without its key; alpha's view of
    // bravo's product is alpha's, even though bravo owns the product.
    let (bravo_view, _) = w.view_of("bravo");
    let (alpha_view, _) = w.view_of("alpha");
    let views = api.get("/v1/product-views", &bravo.key).await;
    assert!(!views.text().contains(PK), "{}", views.text());
    assert_eq!(ids(&views.json()["product_views"], "id"), [bravo_view.as_str()]);
    let devices = api.get(&format!("/v1/product-views/{bravo_view}/devices"), &bravo.key).await;
    assert!(!devices.text().contains(PK), "{}", devices.text());
    assert_eq!(ids(&devices.json()["devices"], "deviceName"), ["alpha-0004"]);
    for path in [
        format!("/v1/product-views/{alpha_view}"),
        format!("/v1/product-views/{alpha_view}/devices"),
        format!("/v1/product-views/{alpha_view}/devices/bravo-0001"),
    ] {
        api.get(&path, &bravo.key).await.error(StatusCode::NOT_FOUND);
    }
    // Instance transfer orders: both, from either side.
    let orders = api.get("/v1/instance-transfers", &bravo.key).await.json();
    assert_eq!(ids(&orders["orders"], "id"), sorted(&w.instance_transfers));
    for id in &w.instance_transfers {
        let order = api.get(&format!("/v1/instance-transfers/{id}"), &bravo.key).await;
        assert_eq!(order.status, StatusCode::OK, "{}", order.text());
    }
    // The cross-account distribution: bravo holds the read-only copy at its instance (PROTOCOL §5:
    // the product's info moves with the devices), but not the task, the devices or alpha's
    // own-account copy.
    let copies = api.get("/v1/product-copies", &bravo.key).await.json();
    let copies = copies["product_copies"].as_array().unwrap();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0]["instance"], "bravo-fra");
    assert_eq!(copies[0]["product"]["key"], PK);
    let tasks = api.get("/v1/distribution-tasks", &bravo.key).await.json();
    assert_eq!(tasks["tasks"], json!([]));
    for task in &w.tasks {
        api.get(&format!("/v1/distribution-tasks/{task}"), &bravo.key)
            .await
            .error(StatusCode::NOT_FOUND);
    }
    api.get(&format!("/v1/products/{PK}/devices/alpha-0005"), &bravo.key)
        .await
        .error(StatusCode::NOT_FOUND);
    // Nothing else of alpha's: its instances, product, devices and usage stay out of reach.
    for path in [
        "/v1/instances/alpha-sh".to_owned(),
        format!("/v1/products/{PK}"),
        format!("/v1/products/{PK}/devices"),
        format!("/v1/products/{PK}/devices/alpha-0001"),
    ] {
        api.get(&path, &bravo.key).await.error(StatusCode::NOT_FOUND);
    }
    for list in ["/v1/instances", "/v1/products", "/v1/usage", "/v1/audit"] {
        let reply = api.get(list, &bravo.key).await;
        for secret in ["alpha-sh", "alpha-fra", "alpha-0001", "Alpha Secret Lamp"] {
            assert!(!reply.text().contains(secret), "{list}: {}", reply.text());
        }
    }

    // Charlie is on none of it: every operation, every resource of alpha's and of bravo's
    // side of their exchanges.
    sweep(&api, &w, "charlie").await;
}

/// Each organisation admin sees its own members' instances and orders, read-only, and
/// nothing of another organisation's; an account outside any organisation has no window.
#[tokio::test]
async fn organisation_admins_see_their_members_only() {
    let api = TestApi::start().await;
    let w = world(&api, "echo").await;
    for (account, organisation, admin) in [
        ("alpha", "org-a", false),
        ("charlie", "org-a", true),
        ("echo", "org-e", false),
        ("bravo", "org-e", true),
    ] {
        let path = format!("/v1/operator/accounts/{account}/organisation");
        let body = json!({ "organisation": organisation, "admin": admin });
        let reply = api.request(Method::PUT, &path, Some(OPERATOR_TOKEN), Body::Json(body)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let instances = |tenant: &str| {
        let key = w.tenants[tenant].key.clone();
        let api = &api;
        async move {
            let reply = api.get("/v1/organisation/instances", &key).await.json();
            ids(&reply["instances"], "id")
        }
    };
    let orders = |tenant: &str| {
        let key = w.tenants[tenant].key.clone();
        let api = &api;
        async move {
            let reply = api.get("/v1/organisation/instance-transfers", &key).await.json();
            ids(&reply["orders"], "id")
        }
    };
    // org-a: alpha and its admin charlie; org-e: echo and its admin bravo. The two orders
    // between alpha and echo have a member on each side, so both admins see both.
    let org_a =
        ["alpha-fra", "alpha-moving", "alpha-sh", "charlie-fra", "charlie-moving", "charlie-sh"];
    assert_eq!(instances("charlie").await, org_a);
    let org_e = ["bravo-fra", "bravo-moving", "bravo-sh", "echo-fra", "echo-moving", "echo-sh"];
    assert_eq!(instances("bravo").await, org_e);
    assert_eq!(orders("charlie").await, sorted(&w.instance_transfers));
    assert_eq!(orders("bravo").await, sorted(&w.instance_transfers));
    // Members have no window, and the window is read-only.
    let member = &w.tenants["alpha"];
    api.get("/v1/organisation/instances", &member.key)
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    let admin = &w.tenants["charlie"];
    api.get("/v1/instances/alpha-sh", &admin.key).await.error(StatusCode::NOT_FOUND);
    for action in ["confirm", "cancel", "reject"] {
        let reply = api
            .post(
                &format!("/v1/instance-transfers/{action}"),
                &admin.key,
                json!({ "orders": w.instance_transfers }),
            )
            .await;
        for result in reply.json()["results"].as_array().unwrap() {
            assert_eq!(result["status"], 404, "{result}");
        }
    }
}

/// Regression: a task submitted before its product's instance was transferred must not copy
/// the product, now the new owner's, to the old owner's instance when the executor runs it.
#[tokio::test]
async fn a_task_never_copies_a_product_that_changed_owner() {
    let api = TestApi::start().await;
    let alpha = api.tenant_with_product("alpha", PK).await;
    let charlie = api.tenant_with_product("charlie", pk_of("charlie")).await;
    api.devices(&alpha, PK, &["alpha-0001"]).await;
    api.clock.advance(5 * DAY + Duration::from_secs(60));
    let task = api
        .task(
            &alpha,
            json!({ "product": PK, "devices": ["alpha-0001"],
                "policy": { "kind": "specified", "instance": "alpha-fra" } }),
        )
        .await;
    // Before the executor gets to it, alpha-sh (the product's home) goes to charlie, who
    // edits the product.
    let order = instance_order(&api, &alpha, "charlie", "alpha-sh").await;
    let reply = api
        .post("/v1/instance-transfers/confirm", &charlie.key, json!({ "orders": [order] }))
        .await;
    assert_eq!(reply.json()["results"][0]["status"], 200, "{}", reply.text());
    patch_product(&api, &charlie, PK, json!({ "name": "Charlie Secret Lamp" })).await;

    api.plane.run_pending().await.unwrap();
    let copies = api.get("/v1/product-copies", &alpha.key).await;
    assert!(!copies.text().contains("Charlie Secret Lamp"), "{}", copies.text());
    assert_eq!(copies.json()["product_copies"], json!([]));
    let task = api.get(&format!("/v1/distribution-tasks/{task}"), &alpha.key).await.json();
    assert_eq!(task["state"], "Failed", "{task}");
    assert!(task["failure"].as_str().unwrap().contains("no longer belongs"), "{task}");
    // A retry fails the same way.
    let reply = api
        .post_empty(
            &format!("/v1/distribution-tasks/{}/retry", task["id"].as_str().unwrap()),
            &alpha.key,
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    api.plane.run_pending().await.unwrap();
    let copies = api.get("/v1/product-copies", &alpha.key).await.json();
    assert_eq!(copies["product_copies"], json!([]));
}

/// Regression: a cross-account submission without a valid code learns nothing about the
/// destination: not which instances it owns, not whether it has a public one.
#[tokio::test]
async fn cross_account_submission_reveals_nothing_without_the_code() {
    let api = TestApi::start().await;
    let alpha = api.tenant_with_product("alpha", PK).await;
    let bravo = api.tenant_with_product("bravo", pk_of("bravo")).await;
    api.account("delta").await;
    api.devices(&bravo, pk_of("bravo"), &["bravo-0001"]).await;
    // Alpha has a live code, so wrong guesses are checked against something.
    api.post_empty("/v1/verification-codes", &alpha.key).await;
    let submit = |account: &str, instance: Option<&str>| {
        let mut policy = json!({ "kind": "specified" });
        if let Some(instance) = instance {
            policy["instance"] = json!(instance);
        }
        let body = json!({ "product": pk_of("bravo"), "devices": ["bravo-0001"], "policy": policy,
            "cross_account": { "account": account, "code": "not-a-code" } });
        let key = bravo.key.clone();
        let api = &api;
        async move { api.post("/v1/distribution-tasks", &key, body).await }
    };
    let answers = [
        submit("alpha", Some("alpha-sh")).await,
        submit("alpha", Some(MISSING)).await,
        submit("alpha", Some("bravo-sh")).await,
        submit("alpha", None).await,
        // Delta has no instance at all.
        submit("delta", None).await,
    ];
    for answer in &answers {
        let message = answer.error(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(message, "verification code is invalid or expired");
    }
}

/// Regression: the owner check and the write are one compare-and-swap. A device or product
/// that changes owner between the plane's check and its write (a transfer accepted, an
/// instance transfer confirmed, at that very moment) is not touched by its former owner.
#[tokio::test]
async fn an_owner_change_mid_request_leaves_the_resource_alone() {
    let (plane, store, _dir) = interposed_plane().await;
    let (alpha, _) = alpha_with_a_product(&plane).await;
    let bravo: AccountId = "bravo".parse().unwrap();
    let pk: ProductKey = PK.parse().unwrap();
    let names = ["lamp-0001", "lamp-0002", "lamp-0003"];
    let names = names.iter().map(|n| (n.parse().unwrap(), None)).collect();
    plane.create_devices(&alpha, &pk, names).await.unwrap();
    let device =
        |name: &str| DeviceKey { product_key: pk.clone(), device_name: name.parse().unwrap() };

    // Devices: the plane reads an alpha-owned device, and before it writes, bravo owns it.
    let stolen = device("lamp-0001");
    store.arm_owner_change(&plane, &stolen, "bravo").await;
    let refused = plane.set_device_enabled(&alpha, &stolen, false).await.unwrap_err();
    assert!(matches!(refused, ControlError::NotFound { .. }), "{refused:?}");
    let stored = plane.registry().device(&stolen).await.unwrap();
    assert_eq!((stored.owner.as_str(), stored.status), ("bravo", DeviceStatus::Inactive));
    let stolen = device("lamp-0002");
    store.arm_owner_change(&plane, &stolen, "bravo").await;
    let refused = plane.delete_device(&alpha, &stolen).await.unwrap_err();
    assert!(matches!(refused, ControlError::NotFound { .. }), "{refused:?}");
    assert_eq!(plane.registry().device(&stolen).await.unwrap().owner.as_str(), "bravo");

    // The product: read as alpha's, bravo's by the time of the write.
    let mut taken = plane.registry().product(&pk).await.unwrap();
    taken.owner = bravo.clone();
    store.arm(keys::product(&pk), encode(&taken).unwrap());
    let patch = serde_json::from_value(json!({ "name": "Stolen" })).unwrap();
    plane.update_product(&alpha, &pk, patch).await.unwrap_err();
    let stored: Product = plane.registry().product(&pk).await.unwrap();
    assert_eq!((stored.owner.as_str(), stored.name.as_str()), ("bravo", "Lamp"));

    // Under a product view: bravo received lamp-0003, which then goes on to charlie.
    taken.owner = alpha.clone();
    taken.published = true;
    plane.registry().store().put(&keys::product(&pk), encode(&taken).unwrap()).await.unwrap();
    plane.allow_transfers(&alpha).await.unwrap();
    let order = json!({ "product": PK, "destination": "bravo", "devices": ["lamp-0003"] });
    let order =
        plane.create_device_transfer(&alpha, serde_json::from_value(order).unwrap()).await.unwrap();
    let accepted = plane.accept_device_transfer(&bravo, &order.id).await.unwrap();
    let view = accepted.product_view.unwrap();
    let name = "lamp-0003".parse().unwrap();
    let moving = device("lamp-0003");
    store.arm_owner_change(&plane, &moving, "charlie").await;
    let refused = plane.set_view_device_enabled(&bravo, &view, &name, false).await.unwrap_err();
    assert!(matches!(refused, ControlError::NotFound { .. }), "{refused:?}");
    set_owner(&plane, &moving, "bravo").await;
    store.arm_owner_change(&plane, &moving, "charlie").await;
    let refused = plane.delete_view_device(&bravo, &view, &name).await.unwrap_err();
    assert!(matches!(refused, ControlError::NotFound { .. }), "{refused:?}");
    let stored = plane.registry().device(&moving).await.unwrap();
    assert_eq!((stored.owner.as_str(), stored.status), ("charlie", DeviceStatus::Inactive));
}

/// Creating devices or a product checks the owner of the product or home instance and writes in
/// one batch that expects the revision checked: an owner change committing in between (an
/// instance transfer confirmed at that moment) fails the call, and nothing lands under the new
/// owner.
#[tokio::test]
async fn nothing_is_created_under_an_owner_changing_meanwhile() {
    let (plane, store, _dir) = interposed_plane().await;
    let (alpha, product) = alpha_with_a_product(&plane).await;
    let pk = product.key.clone();
    let lamp = || vec![NewDevice { name: "lamp-0001".parse().unwrap(), secret: None }];

    // The plane checks alpha owns the product; bravo owns it by the time the registry reads.
    let mut taken = product.clone();
    taken.owner = "bravo".parse().unwrap();
    store.arm(keys::product(&pk), encode(&taken).unwrap());
    let names = vec![("lamp-0001".parse().unwrap(), None)];
    let refused = plane.create_devices(&alpha, &pk, names).await.unwrap_err();
    assert!(matches!(refused, ControlError::NotFound { .. }), "{refused:?}");
    // The registry reads alpha's product, and bravo's commits before the devices do.
    plane.registry().store().put(&keys::product(&pk), encode(&product).unwrap()).await.unwrap();
    store.arm(keys::product(&pk), encode(&taken).unwrap());
    let refused = plane.registry().create_devices_for(&alpha, &pk, lamp()).await.unwrap_err();
    assert!(matches!(refused, RegistryError::Concurrent { .. }), "{refused:?}");
    assert!(plane.registry().devices(&pk).await.unwrap().is_empty(), "no device created");

    // A product homed on alpha's instance while it becomes bravo's.
    let home: InstanceId = "alpha-sh".parse().unwrap();
    let mut moved = plane.registry().instance(&home).await.unwrap();
    moved.owner = "bravo".parse().unwrap();
    store.arm(keys::instance(&home), encode(&moved).unwrap());
    let mut second = product.clone();
    second.key = "b13FN5TplKq".parse().unwrap();
    let refused = plane.registry().create_product(second.clone()).await.unwrap_err();
    assert!(matches!(refused, RegistryError::Concurrent { .. }), "{refused:?}");
    assert!(plane.registry().product(&second.key).await.is_err(), "no product created");
}

// ---------------------------------------------------------------------------------------------
// The world: alpha with one of everything, and a counterparty it deals with.

struct World {
    tenants: BTreeMap<&'static str, Tenant>,
    /// Alpha's counterparty in transfers and the cross-account distribution.
    counterparty: &'static str,
    instances: Vec<String>,
    /// Devices of alpha's product, with the account that owns each now.
    devices: Vec<(String, &'static str)>,
    tasks: Vec<String>,
    /// Device transfer orders alpha is on, either side.
    device_transfers: Vec<String>,
    /// Product views from alpha's exchanges: (holder, view id, a device under it).
    views: Vec<(&'static str, String, String)>,
    /// Instance transfer orders alpha is on, either side.
    instance_transfers: Vec<String>,
    /// Everything an account outside these exchanges must never be shown.
    secrets: Vec<String>,
}

impl World {
    fn view_of(&self, holder: &str) -> (String, String) {
        let (_, view, device) = self.views.iter().find(|(h, _, _)| *h == holder).unwrap();
        (view.clone(), device.clone())
    }
}

/// Alpha, bravo, charlie and echo, each with instances `{id}-sh`, `{id}-fra` and
/// `{id}-moving` and a published product; alpha has devices, a usage record, an unused
/// verification code, an own-account task and a cross-account one to `counterparty`, device
/// transfer orders both ways (one pending and one accepted each way, so each side holds a
/// product view) and a pending instance transfer order each way.
async fn world(api: &TestApi, counterparty: &'static str) -> World {
    let mut tenants = BTreeMap::new();
    let mut secrets = Vec::new();
    for (id, pk) in ACCOUNTS {
        let tenant = api.tenant_with_product(id, pk).await;
        create_instance(api, &tenant, &format!("{id}-moving")).await;
        let name = format!("{} Secret Lamp", capitalised(id));
        patch_product(
            api,
            &tenant,
            pk,
            json!({ "name": name, "published": true, "parsing_script": format!("{id}-script") }),
        )
        .await;
        allow(api, id).await;
        tenants.insert(id, tenant);
    }
    let (alpha, other) = (&tenants["alpha"], &tenants[counterparty]);
    let x = counterparty;
    let mut devices = Vec::new();
    for name in ["alpha-0001", "alpha-0002", "alpha-0003", "alpha-0004", "alpha-0005"] {
        secrets.push(create_device(api, alpha, PK, name).await);
        devices.push((name.to_owned(), "alpha"));
    }
    for name in [format!("{x}-0001"), format!("{x}-0002")] {
        secrets.push(create_device(api, other, pk_of(x), &name).await);
    }
    api.clock.advance(5 * DAY + Duration::from_secs(60));

    // Distribution, before any transfer marks the product.
    let own = api
        .task(
            alpha,
            json!({ "product": PK, "devices": ["alpha-0002"],
                "policy": { "kind": "specified", "instance": "alpha-fra" } }),
        )
        .await;
    let code = verification_code(api, other).await;
    let cross = api
        .task(
            alpha,
            json!({ "product": PK, "devices": ["alpha-0005"],
                "policy": { "kind": "specified", "instance": format!("{x}-fra") },
                "cross_account": { "account": x, "code": code } }),
        )
        .await;
    api.plane.run_pending().await.unwrap();

    // Device transfers: pending and accepted, each way.
    let out_pending = device_transfer(api, alpha, PK, x, "alpha-0003").await;
    let out_accepted = device_transfer(api, alpha, PK, x, "alpha-0004").await;
    let x_view = accept(api, other, &out_accepted).await;
    devices[3].1 = x;
    let in_accepted = device_transfer(api, other, pk_of(x), "alpha", &format!("{x}-0001")).await;
    let a_view = accept(api, alpha, &in_accepted).await;
    let in_pending = device_transfer(api, other, pk_of(x), "alpha", &format!("{x}-0002")).await;

    // Instance transfers, each way.
    let it_out = instance_order(api, alpha, x, "alpha-moving").await;
    let it_in = instance_order(api, other, "alpha", &format!("{x}-moving")).await;

    // A code alpha asked for and has not handed out yet, and a usage report.
    secrets.push(verification_code(api, alpha).await);
    let usage = InstanceUsage {
        instance: "alpha-sh".parse().unwrap(),
        connections: 7,
        connects_total: 7_654_321,
        connected_seconds: 90,
        messages_in: 1_234_567,
        messages_out: 3,
        updated_at: Timestamp(1_700_000_000_500),
    };
    let key = keys::usage(&usage.instance);
    api.plane.registry().store().put(&key, encode(&usage).unwrap()).await.unwrap();
    secrets.extend(["7654321".to_owned(), "1234567".to_owned()]);

    let instances: Vec<String> =
        ["alpha-sh", "alpha-fra", "alpha-moving"].map(str::to_owned).into();
    let tasks = vec![own, cross];
    let device_transfers = vec![out_pending, out_accepted, in_accepted, in_pending];
    let views = vec![("alpha", a_view, format!("{x}-0001")), (x, x_view, "alpha-0004".to_owned())];
    let instance_transfers = vec![it_out, it_in];
    for id in ["alpha", x] {
        // Quoted: `alpha` alone is part of every alpha identifier, listed below.
        secrets.push(format!("\"{id}\""));
        secrets.push(format!("{id} Ltd"));
        secrets.push(format!("{} Secret Lamp", capitalised(id)));
        secrets.push(format!("{id}-script"));
        secrets.push(pk_of(id).to_owned());
        for suffix in ["sh", "fra", "moving", "0001", "0002"] {
            secrets.push(format!("{id}-{suffix}"));
        }
        let key = &tenants[id].key;
        secrets.push(key.clone());
        secrets.push(key.split_once('.').unwrap().0.to_owned());
    }
    secrets.extend(devices.iter().map(|(name, _)| name.clone()));
    secrets.extend(tasks.iter().cloned());
    secrets.extend(device_transfers.iter().cloned());
    secrets.extend(views.iter().map(|(_, view, _)| view.clone()));
    secrets.extend(instance_transfers.iter().cloned());
    World {
        tenants,
        counterparty,
        instances,
        devices,
        tasks,
        device_transfers,
        views,
        instance_transfers,
        secrets,
    }
}

// ---------------------------------------------------------------------------------------------
// The sweep.

/// What an operation must answer a caller reaching for another account's resources.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    /// Needs no credentials and is the same for everyone.
    Public,
    /// Takes the operator token: every API key is refused like no key.
    Operator,
    /// Names another account's resource: this status, and word for word the answer for a
    /// resource that does not exist.
    AsMissing(StatusCode),
    /// A batch naming another account's orders or instances: 200, each result 404.
    Batch,
    /// Reaches only the caller's own account (its lists, its keys, its codes): whatever it
    /// answers shows nothing of anyone else's.
    Own,
    /// Creates a resource under a name another account holds in a global namespace
    /// (ProductKeys): 409, telling the caller the name is taken and nothing more.
    NameTaken,
    /// Closed to API keys whatever the body (creating instances, which the operator
    /// provisions): 403 and nothing written.
    Refused,
}

#[derive(Clone, Debug)]
enum Payload {
    None,
    Json(Value),
    Csv(String),
}

impl Payload {
    fn body(&self) -> Body<'_> {
        match self {
            Payload::None => Body::None,
            Payload::Json(value) => Body::Json(value.clone()),
            Payload::Csv(text) => Body::Typed("text/csv", text.clone().into_bytes()),
        }
    }

    /// Every string the caller sends in it: what the answer may quote back.
    fn strings(&self) -> Vec<String> {
        fn visit(value: &Value, out: &mut Vec<String>) {
            match value {
                Value::String(text) => out.push(text.clone()),
                Value::Array(items) => items.iter().for_each(|item| visit(item, out)),
                Value::Object(map) => map.values().for_each(|item| visit(item, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        match self {
            Payload::None => {}
            Payload::Json(value) => visit(value, &mut out),
            Payload::Csv(text) => out.extend(text.split([',', '\n']).map(str::to_owned)),
        }
        out
    }
}

/// One request the sweep makes, and its twin for a resource that does not exist.
struct Call {
    rule: Rule,
    payload: Payload,
    /// For body-level [`Rule::AsMissing`]: the same request naming a missing resource.
    missing: Option<Payload>,
}

fn call(rule: Rule, payload: Payload) -> Call {
    Call { rule, payload, missing: None }
}

fn as_missing(status: StatusCode, payload: Value, missing: Value) -> Call {
    Call {
        rule: Rule::AsMissing(status),
        payload: Payload::Json(payload),
        missing: Some(Payload::Json(missing)),
    }
}

/// What the attacker knows of itself, for the bodies it sends.
struct Attacker<'a> {
    id: &'a str,
    pk: &'a str,
    device: String,
    /// A live code of its own, for initiating instance transfers.
    code: String,
}

/// The rule and the requests for each documented operation. An operation not listed here
/// fails the sweep: whoever adds an endpoint decides here how it keeps other accounts out.
fn classify(method: &str, template: &str, w: &World, attacker: &Attacker<'_>) -> Vec<Call> {
    use Rule::*;
    let not_found = StatusCode::NOT_FOUND;
    let none = Payload::None;
    let x = w.counterparty;
    let (own_sh, own_fra) = (format!("{}-sh", attacker.id), format!("{}-fra", attacker.id));
    match (method, template) {
        ("GET", "/openapi.json") => vec![call(Public, none)],
        ("POST", "/v1/accounts") => vec![call(
            Operator,
            Payload::Json(json!({ "id": "intruder", "name": "Intruder", "kind": "individual" })),
        )],
        ("GET", "/v1/operator/transfer-allow-list")
        | ("PUT", "/v1/operator/transfer-allow-list/{account}")
        | ("DELETE", "/v1/operator/transfer-allow-list/{account}") => vec![call(Operator, none)],
        ("PUT", "/v1/operator/accounts/{account}/organisation") => {
            vec![call(Operator, Payload::Json(json!({ "organisation": "org-x", "admin": true })))]
        }
        ("GET", "/v1/account")
        | ("POST", "/v1/api-keys")
        | ("GET", "/v1/audit")
        | ("POST", "/v1/verification-codes")
        | ("GET", "/v1/regions")
        | ("GET", "/v1/instances")
        | ("GET", "/v1/usage")
        | ("GET", "/v1/products")
        | ("GET", "/v1/product-copies")
        | ("GET", "/v1/distribution-tasks")
        | ("GET", "/v1/distribution-tasks/template.csv")
        | ("GET", "/v1/device-transfers")
        | ("GET", "/v1/device-transfers/template.csv")
        | ("GET", "/v1/product-views")
        | ("GET", "/v1/instance-transfers")
        | ("GET", "/v1/organisation/instances")
        | ("GET", "/v1/organisation/instance-transfers") => vec![call(Own, none)],
        // Closed to every API key: instances and their endpoints are the operator's.
        ("POST", "/v1/instances") => vec![
            call(
                Refused,
                Payload::Json(json!({ "id": "alpha-sh", "region": "cn-shanghai",
                    "endpoint": { "host": "intruder.example", "tcp_port": 1883 } })),
            ),
            call(
                Refused,
                Payload::Json(json!({ "id": format!("{}-new", attacker.id),
                    "region": "cn-shanghai",
                    "endpoint": { "host": "intruder.example", "tcp_port": 1883 } })),
            ),
        ],
        ("POST", "/v1/operator/instances") => vec![call(
            Operator,
            Payload::Json(json!({ "owner": attacker.id, "id": "op-provisioned",
                "region": "eu-central-1",
                "endpoint": { "host": "op.example", "tcp_port": 1883 } })),
        )],
        ("POST", "/v1/products") => vec![
            as_missing(
                not_found,
                json!({ "name": "Intruder", "home_instance": "alpha-sh" }),
                json!({ "name": "Intruder", "home_instance": MISSING }),
            ),
            call(
                NameTaken,
                Payload::Json(json!({ "key": PK, "name": "Intruder", "home_instance": own_sh })),
            ),
        ],
        ("POST", "/v1/distribution-tasks") => {
            let theirs = |product: &str, instance: &str| {
                json!({ "product": product, "devices": ["alpha-0001"],
                    "policy": { "kind": "specified", "instance": instance } })
            };
            let mine = |policy: Value| json!({ "product": attacker.pk, "devices": [attacker.device], "policy": policy });
            let cross = |instance: &str| {
                json!({ "product": attacker.pk, "devices": [attacker.device],
                    "policy": { "kind": "specified", "instance": instance },
                    "cross_account": { "account": "alpha", "code": "not-a-code" } })
            };
            let nearest = |other: &str| json!({ "kind": "nearest", "instances": [own_sh, other] });
            vec![
                as_missing(not_found, theirs(PK, &own_fra), theirs(MISSING_PK, &own_fra)),
                as_missing(
                    not_found,
                    mine(json!({ "kind": "specified", "instance": "alpha-fra" })),
                    mine(json!({ "kind": "specified", "instance": MISSING })),
                ),
                as_missing(not_found, mine(nearest("alpha-fra")), mine(nearest(MISSING))),
                // Without alpha's code nothing tells whether alpha-sh is alpha's.
                as_missing(StatusCode::UNPROCESSABLE_ENTITY, cross("alpha-sh"), cross(MISSING)),
            ]
        }
        ("POST", "/v1/device-transfers") => {
            let order = |product: &str| json!({ "product": product, "destination": x, "devices": ["alpha-0001"] });
            vec![as_missing(not_found, order(PK), order(MISSING_PK))]
        }
        ("POST", "/v1/instance-transfers") => vec![call(
            Batch,
            Payload::Json(json!({ "destination": x, "instances": w.instances,
                "code": attacker.code })),
        )],
        ("POST", "/v1/instance-transfers/confirm")
        | ("POST", "/v1/instance-transfers/cancel")
        | ("POST", "/v1/instance-transfers/reject") => {
            vec![call(Batch, Payload::Json(json!({ "orders": w.instance_transfers })))]
        }
        ("PATCH", "/v1/products/{pk}") => vec![call(
            AsMissing(not_found),
            Payload::Json(json!({ "name": "Stolen", "published": false })),
        )],
        ("POST", "/v1/products/{pk}/devices") => vec![call(
            AsMissing(not_found),
            Payload::Json(json!({ "devices": [{ "deviceName": "intruder-1" }] })),
        )],
        ("POST", "/v1/products/{pk}/devices/import") => {
            vec![call(AsMissing(not_found), Payload::Csv("deviceName\nintruder-2\n".into()))]
        }
        ("POST", "/v1/instances/{id}/renew") => {
            vec![call(AsMissing(not_found), Payload::Json(json!({ "days": 30 })))]
        }
        ("GET", "/v1/instances/{id}")
        | ("GET", "/v1/products/{pk}")
        | ("GET", "/v1/products/{pk}/devices")
        | ("GET", "/v1/products/{pk}/devices/{dn}")
        | ("DELETE", "/v1/products/{pk}/devices/{dn}")
        | ("POST", "/v1/products/{pk}/devices/{dn}/disable")
        | ("POST", "/v1/products/{pk}/devices/{dn}/enable")
        | ("GET", "/v1/distribution-tasks/{id}")
        | ("POST", "/v1/distribution-tasks/{id}/retry")
        | ("GET", "/v1/distribution-tasks/{id}/records.csv")
        | ("GET", "/v1/device-transfers/{id}")
        | ("POST", "/v1/device-transfers/{id}/accept")
        | ("POST", "/v1/device-transfers/{id}/reject")
        | ("POST", "/v1/device-transfers/{id}/cancel")
        | ("GET", "/v1/product-views/{id}")
        | ("GET", "/v1/product-views/{id}/devices")
        | ("GET", "/v1/product-views/{id}/devices/{dn}")
        | ("DELETE", "/v1/product-views/{id}/devices/{dn}")
        | ("POST", "/v1/product-views/{id}/devices/{dn}/disable")
        | ("POST", "/v1/product-views/{id}/devices/{dn}/enable")
        | ("GET", "/v1/instance-transfers/{id}") => vec![call(AsMissing(not_found), none)],
        _ => panic!(
            "{method} {template} is not classified: add it to `classify` in tests/isolation.rs \
             with the rule that keeps other accounts' resources out of its reach"
        ),
    }
}

/// One way to fill a template's parameters with another account's resources.
#[derive(Clone, Debug)]
struct Binding {
    values: Vec<(&'static str, String)>,
    /// The same parameters naming nothing.
    missing: Vec<(&'static str, String)>,
    /// Who may make the call: the control at the end proves the call reaches the resource.
    owner: Option<Owner>,
}

#[derive(Clone, Debug, PartialEq)]
enum Owner {
    Tenant(&'static str),
    Operator,
}

/// Every resource of the world a template's parameters can name.
fn bindings(template: &str, w: &World) -> Vec<Binding> {
    let params: Vec<&str> = template
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .collect();
    let one = |name: &'static str, value: &str, missing: &str, owner: Option<Owner>| Binding {
        values: vec![(name, value.to_owned())],
        missing: vec![(name, missing.to_owned())],
        owner,
    };
    let alpha = || Some(Owner::Tenant("alpha"));
    let by_id = |values: &[String], missing: &str| -> Vec<Binding> {
        values.iter().map(|value| one("id", value, missing, alpha())).collect()
    };
    let resource = template.split('/').nth(2).unwrap_or_default();
    match (resource, params.as_slice()) {
        (_, []) => vec![Binding { values: vec![], missing: vec![], owner: None }],
        ("instances", ["id"]) => by_id(&w.instances, MISSING),
        ("products", ["pk"]) => vec![one("pk", PK, MISSING_PK, alpha())],
        ("products", ["pk", "dn"]) => w
            .devices
            .iter()
            .map(|(name, owner)| Binding {
                values: vec![("pk", PK.to_owned()), ("dn", name.clone())],
                missing: vec![("pk", MISSING_PK.to_owned()), ("dn", MISSING.to_owned())],
                // A device transferred away is its new owner's, but not under this path.
                owner: (*owner == "alpha").then_some(Owner::Tenant("alpha")),
            })
            .collect(),
        ("distribution-tasks", ["id"]) => by_id(&w.tasks, "dt-zzmissing"),
        ("device-transfers", ["id"]) => by_id(&w.device_transfers, "tr-zzmissing"),
        ("product-views", ["id"]) => w
            .views
            .iter()
            .map(|(holder, view, _)| one("id", view, "pv-zzmissing", Some(Owner::Tenant(holder))))
            .collect(),
        ("product-views", ["id", "dn"]) => w
            .views
            .iter()
            .map(|(holder, view, device)| Binding {
                values: vec![("id", view.clone()), ("dn", device.clone())],
                missing: vec![("id", "pv-zzmissing".to_owned()), ("dn", MISSING.to_owned())],
                owner: Some(Owner::Tenant(holder)),
            })
            .collect(),
        ("instance-transfers", ["id"]) => by_id(&w.instance_transfers, "it-zzmissing"),
        ("operator", ["account"]) => vec![one("account", "alpha", MISSING, Some(Owner::Operator))],
        _ => panic!(
            "{template}: tests/isolation.rs has no resource for {params:?}; teach `bindings` \
             which resources of another account these parameters can name"
        ),
    }
}

fn fill(template: &str, values: &[(&'static str, String)]) -> String {
    values.iter().fold(template.to_owned(), |path, (name, value)| {
        path.replace(&format!("{{{name}}}"), value)
    })
}

/// The operations of the served OpenAPI document: (METHOD, path template), in its order.
async fn document(api: &TestApi) -> Vec<(String, String)> {
    let reply = api.request(Method::GET, "/openapi.json", None, Body::None).await;
    let document = reply.json();
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "options", "head", "patch", "trace"] {
            if item.get(method).is_some() {
                operations.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    assert!(operations.len() > 50, "{operations:?}");
    operations
}

/// Runs every documented operation against the world as `attacker`; returns how many
/// operations it covered.
async fn sweep(api: &TestApi, w: &World, attacker_id: &'static str) -> usize {
    let tenant = &w.tenants[attacker_id];
    let device = format!("{attacker_id}-9999");
    create_device(api, tenant, pk_of(attacker_id), &device).await;
    let attacker = Attacker {
        id: attacker_id,
        pk: pk_of(attacker_id),
        device,
        code: verification_code(api, tenant).await,
    };
    let secrets: Vec<&String> = w.secrets.iter().filter(|s| !s.contains(attacker_id)).collect();
    let alpha_key = &w.tenants["alpha"].key;
    let (alpha_key_id, _) = alpha_key.split_once('.').unwrap();
    let probe = Probe {
        api,
        key: &tenant.key,
        secrets: &secrets,
        // Keys that are not keys: a forged secret for alpha's key id, alpha's key cut short.
        forged: [format!("{alpha_key_id}.not-the-secret"), alpha_key[..alpha_key.len() - 1].into()],
        alpha_key,
    };
    let operations = document(api).await;
    let owners_before = owners_view(api, w, &operations).await;
    let store_before = store_contents(api).await;

    for (method, template) in &operations {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let calls = classify(method.as_str(), template, w, &attacker);
        for (index, binding) in bindings(template, w).iter().enumerate() {
            for call in &calls {
                // Credentials are checked before the path is resolved: one binding suffices.
                if index == 0 && call.rule != Rule::Public {
                    probe.without_credentials(&method, template, binding, call).await;
                }
                probe.as_attacker(&method, template, binding, call).await;
            }
        }
    }

    // Nothing of anyone else's changed: not a byte, not a revision.
    let store_after = store_contents(api).await;
    let mut keys: Vec<&String> = store_before.keys().chain(store_after.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let (before, after) = (store_before.get(key), store_after.get(key));
        if before != after {
            assert!(
                attacker_may_write(key, after.map(|(_, value)| value), attacker_id),
                "{attacker_id}'s sweep changed {key}: {before:?} -> {after:?}"
            );
        }
    }
    let owners_after = owners_view(api, w, &operations).await;
    assert_eq!(owners_before.len(), owners_after.len());
    for ((path, before), (_, after)) in owners_before.iter().zip(&owners_after) {
        assert_eq!(before, after, "the owner's {path} changed");
    }
    operations.len()
}

/// The attacker's side of the sweep: its requests, and what it must never be shown.
struct Probe<'a> {
    api: &'a TestApi,
    /// The attacker's API key.
    key: &'a str,
    secrets: &'a [&'a String],
    forged: [String; 2],
    alpha_key: &'a str,
}

impl Probe<'_> {
    /// No key, wrong keys, and keys of the wrong kind: 401, whatever the path names.
    async fn without_credentials(
        &self,
        method: &Method,
        template: &str,
        binding: &Binding,
        call: &Call,
    ) {
        let path = fill(template, &binding.values);
        let mut wrong = vec![None, Some("garbage"), Some(&*self.forged[0]), Some(&*self.forged[1])];
        if call.rule == Rule::Operator {
            wrong.extend([Some(self.key), Some(self.alpha_key)]);
        } else {
            wrong.push(Some(OPERATOR_TOKEN));
        }
        for bearer in wrong {
            let reply = self.api.request(method.clone(), &path, bearer, call.payload.body()).await;
            let context = format!("{method} {path} with {bearer:?}");
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{context}: {}", reply.text());
            reply.error(StatusCode::UNAUTHORIZED);
            assert_no_leak(&reply, &path, &call.payload, self.secrets, &context);
        }
    }

    /// The call with the attacker's own key: what `call.rule` says, and no secret shown.
    async fn as_attacker(&self, method: &Method, template: &str, binding: &Binding, call: &Call) {
        let path = fill(template, &binding.values);
        let context = format!("{method} {path} {:?}", call.payload);
        let reply =
            self.api.request(method.clone(), &path, Some(self.key), call.payload.body()).await;
        assert_no_leak(&reply, &path, &call.payload, self.secrets, &context);
        match call.rule {
            Rule::Public => {
                assert_eq!(reply.status, StatusCode::OK, "{context}");
                let anonymous = self.api.request(method.clone(), &path, None, Body::None).await;
                assert_eq!(reply.body, anonymous.body, "{context}");
            }
            Rule::Operator => {
                reply.error(StatusCode::UNAUTHORIZED);
            }
            Rule::AsMissing(status) => {
                let message = reply.error(status);
                // The twin: the same request naming nothing that exists.
                let (twin_path, twin_payload, pairs) = match &call.missing {
                    Some(missing) => {
                        (path.clone(), missing.clone(), differences(&call.payload, missing))
                    }
                    None => {
                        let pairs = binding.values.iter().zip(&binding.missing);
                        let pairs =
                            pairs.map(|((_, real), (_, gone))| (real.clone(), gone.clone()));
                        (fill(template, &binding.missing), call.payload.clone(), pairs.collect())
                    }
                };
                let twin = self
                    .api
                    .request(method.clone(), &twin_path, Some(self.key), twin_payload.body())
                    .await;
                let twin_message = twin.error(status);
                assert_eq!(
                    normalise(&message, pairs.iter().map(|(real, _)| real)),
                    normalise(&twin_message, pairs.iter().map(|(_, missing)| missing)),
                    "{context}: answered unlike a missing resource"
                );
            }
            Rule::Batch => {
                assert_eq!(reply.status, StatusCode::OK, "{context}: {}", reply.text());
                let results = reply.json()["results"].as_array().unwrap().clone();
                assert!(!results.is_empty(), "{context}");
                for result in results {
                    assert_eq!(result["status"], 404, "{context}: {result}");
                }
            }
            Rule::Own => {
                assert!(!reply.status.is_server_error(), "{context}: {}", reply.text());
                if !reply.status.is_success() {
                    reply.error(reply.status);
                }
            }
            Rule::NameTaken => {
                reply.error(StatusCode::CONFLICT);
            }
            Rule::Refused => {
                let message = reply.error(StatusCode::FORBIDDEN);
                assert!(message.contains("operator"), "{context}: {message}");
            }
        }
    }
}

/// Records the attacker's own actions leave: its audit entries, its codes and its attempts at
/// codes, its new API keys. Everything else must stay as it was.
fn attacker_may_write(key: &str, value: Option<&Bytes>, attacker: &str) -> bool {
    let segments: Vec<&str> = key.split('/').collect();
    match segments.as_slice() {
        ["audit" | "codes", owner, ..] => *owner == attacker,
        ["code-attempts", owner, attempter] => *owner == attacker || *attempter == attacker,
        ["api-keys", _] => value.is_some_and(|value| {
            serde_json::from_slice::<Value>(value).unwrap()["account"] == attacker
        }),
        _ => false,
    }
}

/// Every GET the world's resources answer their owners (and the operator), as bytes.
async fn owners_view(
    api: &TestApi,
    w: &World,
    operations: &[(String, String)],
) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    for (method, template) in operations.iter().filter(|(method, _)| method == "GET") {
        for binding in bindings(template, w) {
            let path = fill(template, &binding.values);
            let owners: Vec<(String, String)> = match binding.owner {
                Some(Owner::Tenant(owner)) => {
                    vec![(owner.to_owned(), w.tenants[owner].key.clone())]
                }
                Some(Owner::Operator) => vec![("operator".to_owned(), OPERATOR_TOKEN.to_owned())],
                None if template.starts_with("/v1/operator/") => {
                    vec![("operator".to_owned(), OPERATOR_TOKEN.to_owned())]
                }
                None => ["alpha", w.counterparty]
                    .iter()
                    .map(|id| (id.to_string(), w.tenants[id].key.clone()))
                    .collect(),
            };
            for (who, key) in owners {
                let reply = api.get(&path, &key).await;
                seen.push((
                    format!("{who}: {method} {path}"),
                    format!("{} {}", reply.status, reply.text()),
                ));
            }
        }
    }
    seen
}

/// The owners make the calls the attacker made. None may answer 401, 404 or 405: each call
/// named a live resource its owner reaches, so the attacker's 404 came from isolation. Reads
/// first, deletions last, so that no control takes a resource from under a later one.
async fn controls(api: &TestApi, w: &World) {
    let operations = document(api).await;
    let attacker = Attacker {
        id: "bravo",
        pk: pk_of("bravo"),
        device: "bravo-9999".into(),
        code: String::new(),
    };
    let phase = |method: &str| match method {
        "GET" => 0,
        "DELETE" => 2,
        _ => 1,
    };
    let mut planned = Vec::new();
    for (method, template) in &operations {
        for call in classify(method, template, w, &attacker) {
            if !matches!(call.rule, Rule::AsMissing(_) | Rule::Operator) || call.missing.is_some() {
                continue;
            }
            for binding in bindings(template, w) {
                let key = match &binding.owner {
                    Some(Owner::Tenant(owner)) => w.tenants[owner].key.clone(),
                    Some(Owner::Operator) => OPERATOR_TOKEN.to_owned(),
                    None if call.rule == Rule::Operator => OPERATOR_TOKEN.to_owned(),
                    None => continue,
                };
                let path = fill(template, &binding.values);
                planned.push((phase(method), method.clone(), path, call.payload.clone(), key));
            }
        }
    }
    planned.sort_by_key(|(phase, ..)| *phase);
    assert!(planned.len() > 40, "{}", planned.len());
    for (_, method, path, payload, key) in planned {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let reply = api.request(method.clone(), &path, Some(&key), payload.body()).await;
        let refused =
            [StatusCode::UNAUTHORIZED, StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED];
        assert!(!refused.contains(&reply.status), "owner's {method} {path}: {}", reply.text());
    }
}

/// Fails if the answer shows any of `secrets` beyond what the caller itself sent.
fn assert_no_leak(
    reply: &Reply,
    path: &str,
    payload: &Payload,
    secrets: &[&String],
    context: &str,
) {
    let mut sent: Vec<String> = path.split('/').map(str::to_owned).collect();
    sent.extend(payload.strings());
    sent.retain(|s| s.len() >= 3);
    // Longest first, so `alpha-sh` goes before `alpha`.
    sent.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut text = String::from_utf8_lossy(&reply.body).into_owned();
    for s in &sent {
        text = text.replace(s.as_str(), "");
    }
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{context}: the answer shows {secret}: {}",
            String::from_utf8_lossy(&reply.body)
        );
    }
}

/// The strings two JSON bodies differ in, pairwise: which identifier the twin replaced.
fn differences(real: &Payload, missing: &Payload) -> Vec<(String, String)> {
    real.strings().into_iter().zip(missing.strings()).filter(|(a, b)| a != b).collect()
}

/// `message` with each of `ids` replaced by a placeholder, longest first.
fn normalise<'a>(message: &str, ids: impl Iterator<Item = &'a String>) -> String {
    let mut ids: Vec<(usize, &String)> = ids.enumerate().collect();
    ids.sort_by_key(|(_, id)| std::cmp::Reverse(id.len()));
    ids.iter().fold(message.to_owned(), |message, (index, id)| {
        message.replace(id.as_str(), &format!("<{index}>"))
    })
}

/// Every record in the store: key → (revision, value).
async fn store_contents(api: &TestApi) -> BTreeMap<String, (Revision, Bytes)> {
    let snapshot = api.plane.registry().store().scan_prefix("").await.unwrap();
    assert!(!snapshot.entries.is_empty());
    snapshot.entries.into_iter().map(|entry| (entry.key, (entry.revision, entry.value))).collect()
}

// ---------------------------------------------------------------------------------------------
// Building blocks, through the API.

fn capitalised(id: &str) -> String {
    let mut chars = id.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

fn ids(list: &Value, field: &str) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item[field].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn sorted(values: &[String]) -> Vec<String> {
    let mut values = values.to_vec();
    values.sort();
    values
}

async fn create_instance(api: &TestApi, tenant: &Tenant, id: &str) {
    let owner = api.get("/v1/account", &tenant.key).await.json()["id"].clone();
    let reply = api
        .provision(
            owner.as_str().unwrap(),
            json!({ "id": id, "region": "cn-shanghai",
                "endpoint": { "host": format!("{id}.example"), "tcp_port": 1883 } }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
}

async fn patch_product(api: &TestApi, tenant: &Tenant, pk: &str, patch: Value) {
    let path = format!("/v1/products/{pk}");
    let reply = api.request(Method::PATCH, &path, Some(&tenant.key), Body::Json(patch)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

async fn allow(api: &TestApi, account: &str) {
    let path = format!("/v1/operator/transfer-allow-list/{account}");
    let reply = api.request(Method::PUT, &path, Some(OPERATOR_TOKEN), Body::None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

/// Creates one device; returns its secret.
async fn create_device(api: &TestApi, tenant: &Tenant, pk: &str, name: &str) -> String {
    let reply = api
        .post(
            &format!("/v1/products/{pk}/devices"),
            &tenant.key,
            json!({ "devices": [{ "deviceName": name }] }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    reply.json()["devices"][0]["deviceSecret"].as_str().unwrap().to_owned()
}

async fn verification_code(api: &TestApi, tenant: &Tenant) -> String {
    let reply = api.post_empty("/v1/verification-codes", &tenant.key).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    reply.json()["code"].as_str().unwrap().to_owned()
}

async fn device_transfer(
    api: &TestApi,
    source: &Tenant,
    pk: &str,
    destination: &str,
    device: &str,
) -> String {
    let body = json!({ "product": pk, "destination": destination, "devices": [device] });
    let reply = api.post("/v1/device-transfers", &source.key, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    reply.json()["id"].as_str().unwrap().to_owned()
}

/// Accepts an order; returns the destination's product view.
async fn accept(api: &TestApi, destination: &Tenant, order: &str) -> String {
    let reply =
        api.post_empty(&format!("/v1/device-transfers/{order}/accept"), &destination.key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()["product_view"].as_str().unwrap().to_owned()
}

/// Initiates one instance transfer order with a fresh code; returns its id.
async fn instance_order(
    api: &TestApi,
    source: &Tenant,
    destination: &str,
    instance: &str,
) -> String {
    let code = verification_code(api, source).await;
    let reply = api
        .post(
            "/v1/instance-transfers",
            &source.key,
            json!({ "destination": destination, "instances": [instance], "code": code }),
        )
        .await;
    let answer = reply.json();
    assert_eq!(answer["results"][0]["status"], 201, "{answer}");
    answer["results"][0]["order"]["id"].as_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------------
// A store that changes a record behind the plane's back, between its read and its write.

/// Wraps the redb store. Once armed with a key and a value, the next read of that key returns
/// what was there and then, before the reader can act on it, writes the value: exactly what a
/// concurrent transfer committing at that moment does.
struct Interposer {
    inner: Arc<dyn Store>,
    armed: Mutex<Option<(String, Bytes)>>,
}

impl Interposer {
    fn arm(&self, key: String, value: Bytes) {
        *self.armed.lock().unwrap() = Some((key, value));
    }

    /// Arms a change of `device`'s owner to `owner`.
    async fn arm_owner_change(&self, plane: &ControlPlane, device: &DeviceKey, owner: &str) {
        let mut changed: Device = plane.registry().device(device).await.unwrap();
        changed.owner = owner.parse().unwrap();
        self.arm(keys::device(device), encode(&changed).unwrap());
    }
}

#[async_trait]
impl Store for Interposer {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let entry = self.inner.get(key).await?;
        let armed = {
            let mut armed = self.armed.lock().unwrap();
            if armed.as_ref().is_some_and(|(armed, _)| armed == key) { armed.take() } else { None }
        };
        if let Some((key, value)) = armed {
            self.inner.put(&key, value).await?;
        }
        Ok(entry)
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
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

/// Accounts alpha, bravo and charlie; alpha's instance `alpha-sh` and its product `PK` on it.
async fn alpha_with_a_product(plane: &ControlPlane) -> (AccountId, Product) {
    let alpha: AccountId = "alpha".parse().unwrap();
    for id in ["alpha", "bravo", "charlie"] {
        let new = json!({ "id": id, "name": format!("{id} Ltd"), "kind": "individual" });
        plane.create_account(serde_json::from_value(new).unwrap()).await.unwrap();
    }
    let instance = json!({ "id": "alpha-sh", "region": "cn-shanghai",
        "endpoint": { "host": "sh.example", "tcp_port": 1883 } });
    plane.create_instance(&alpha, serde_json::from_value(instance).unwrap()).await.unwrap();
    let product = json!({ "key": PK, "name": "Lamp", "home_instance": "alpha-sh" });
    let product =
        plane.create_product(&alpha, serde_json::from_value(product).unwrap()).await.unwrap();
    (alpha, product)
}

/// Writes `device` with `owner`, past the plane.
async fn set_owner(plane: &ControlPlane, device: &DeviceKey, owner: &str) {
    let mut changed: Device = plane.registry().device(device).await.unwrap();
    changed.owner = owner.parse().unwrap();
    plane.registry().store().put(&keys::device(device), encode(&changed).unwrap()).await.unwrap();
}

async fn interposed_plane() -> (ControlPlane, Arc<Interposer>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn Store> =
        Arc::new(RedbStore::open(dir.path().join("registry.redb")).unwrap());
    let store = Arc::new(Interposer { inner, armed: Mutex::new(None) });
    let sealer = SecretKey::from_hex(&SecretKey::generate_hex().unwrap()).unwrap();
    let clock = ManualClock::new(Timestamp(1_700_000_000_000));
    let registry = Registry::new(store.clone(), sealer, Arc::new(clock));
    for (id, latitude, longitude) in REGIONS {
        let region = Region {
            id: id.parse().unwrap(),
            display_name: id.into(),
            latitude,
            longitude,
            bias_km: 0.0,
            public_endpoint: None,
        };
        registry.put_region(region).await.unwrap();
    }
    (ControlPlane::new(registry, OPERATOR_TOKEN), store, dir)
}
