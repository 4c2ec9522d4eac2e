//! Instance (resource) transfer orders (PROTOCOL §7) through the admin API: batches with one result
//! per order, the 24-hour expiry on the injected clock, cancel and reject, the account-kind
//! rules, instance age and expiry, configuration changes refused while pending, what
//! confirmation changes (the owner, nothing else), the organisation admin's read-only window,
//! and pending orders of both kinds surviving a restart of the control plane.

// Test helpers outside `#[test]` functions panic on failure by design.
#![allow(clippy::unwrap_used)]

// Each test file uses part of the shared support.
#[allow(dead_code)]
mod support;

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use meridian_registry::ids::DeviceKey;
use support::{Body, OPERATOR_TOKEN, Tenant, TestApi};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const PK: &str = "a13FN5TplKq";

/// Creates an account of `kind` (with `entity` for enterprises) through the operator endpoint.
async fn account(api: &TestApi, id: &str, kind: &str, entity: Option<&str>) -> Tenant {
    let reply = create_account(api, id, kind, entity).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    Tenant { key: reply.json()["api_key"].as_str().expect("api_key").to_owned() }
}

async fn create_account(
    api: &TestApi,
    id: &str,
    kind: &str,
    entity: Option<&str>,
) -> support::Reply {
    let mut body = json!({ "id": id, "name": format!("{id} Ltd"), "kind": kind });
    if let Some(entity) = entity {
        body["verified_entity"] = json!(entity);
    }
    api.request(Method::POST, "/v1/accounts", Some(OPERATOR_TOKEN), Body::Json(body)).await
}

/// The operator provisions an instance in Shanghai living `days` for `tenant`.
async fn instance(api: &TestApi, tenant: &Tenant, id: &str, days: u64) -> Value {
    let owner = api.get("/v1/account", &tenant.key).await.json()["id"].clone();
    let reply = api
        .provision(
            owner.as_str().expect("account id"),
            json!({ "id": id, "region": "cn-shanghai", "lifetime_days": days,
                "endpoint": { "host": format!("{id}.example"), "tcp_port": 1883 } }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    reply.json()
}

/// A fresh verification code of `tenant`: the identity check of an initiation.
async fn code(api: &TestApi, tenant: &Tenant) -> String {
    let reply = api.post_empty("/v1/verification-codes", &tenant.key).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    reply.json()["code"].as_str().unwrap().to_owned()
}

/// Initiates orders for `instances` to `destination`, with a fresh code; returns the results.
async fn initiate(api: &TestApi, source: &Tenant, destination: &str, instances: &[&str]) -> Value {
    let code = code(api, source).await;
    let reply = api
        .post(
            "/v1/instance-transfers",
            &source.key,
            json!({ "destination": destination, "instances": instances, "code": code }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()
}

/// Initiates one order that must succeed; returns its id.
async fn order(api: &TestApi, source: &Tenant, destination: &str, instance: &str) -> String {
    let answer = initiate(api, source, destination, &[instance]).await;
    let result = &answer["results"][0];
    assert_eq!(result["status"], 201, "{answer}");
    result["order"]["id"].as_str().unwrap().to_owned()
}

/// A confirm, cancel or reject call; returns the results.
async fn settle(api: &TestApi, tenant: &Tenant, action: &str, orders: &[&str]) -> Vec<Value> {
    let reply = api
        .post(&format!("/v1/instance-transfers/{action}"), &tenant.key, json!({ "orders": orders }))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()["results"].as_array().unwrap().clone()
}

/// The result's status, and its message when it failed.
fn outcome(result: &Value) -> (u64, &str) {
    (result["status"].as_u64().unwrap(), result["message"].as_str().unwrap_or(""))
}

/// Product `PK` of `tenant` (account `account`), homed on `home`, published, with devices
/// `lamp-0001` and `lamp-0002`, and the account on the device transfer allow-list.
async fn transferable_lamps(api: &TestApi, tenant: &Tenant, account: &str, home: &str) {
    let reply = api
        .post(
            "/v1/products",
            &tenant.key,
            json!({ "key": PK, "name": "Lamp", "home_instance": home }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let reply = api
        .request(
            Method::PATCH,
            &format!("/v1/products/{PK}"),
            Some(&tenant.key),
            Body::Json(json!({ "published": true })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    api.devices(tenant, PK, &["lamp-0001", "lamp-0002"]).await;
    let path = format!("/v1/operator/transfer-allow-list/{account}");
    let reply = api.request(Method::PUT, &path, Some(OPERATOR_TOKEN), Body::None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn a_batch_gives_each_order_its_own_result() {
    let api = TestApi::start().await;
    let a = account(&api, "ind-a", "individual", None).await;
    let b = account(&api, "ind-b", "individual", None).await;
    let old = instance(&api, &a, "inst-old", 365).await;
    instance(&api, &a, "inst-short", 8).await;
    instance(&api, &b, "inst-b", 365).await;
    // A product homed on the old instance, with devices: they move with it.
    let reply = api
        .post(
            "/v1/products",
            &a.key,
            json!({ "key": PK, "name": "Lamp", "home_instance": "inst-old" }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    api.devices(&a, PK, &["lamp-0001", "lamp-0002"]).await;
    api.clock.advance(6 * DAY);
    instance(&api, &a, "inst-new", 365).await;

    // Refused as a whole: no code, a wrong code, an unknown destination, the caller itself,
    // an empty or repeated list.
    let body = |destination: &str, instances: Value, code: &str| json!({ "destination": destination, "instances": instances, "code": code });
    let message = api
        .post(
            "/v1/instance-transfers",
            &a.key,
            json!({ "destination": "ind-b", "instances": ["inst-old"] }),
        )
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("code"), "{message}");
    let message = api
        .post("/v1/instance-transfers", &a.key, body("ind-b", json!(["inst-old"]), "000000x"))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("verification code"), "{message}");
    let valid = code(&api, &a).await;
    api.post("/v1/instance-transfers", &a.key, body("nobody", json!(["inst-old"]), &valid))
        .await
        .error(StatusCode::NOT_FOUND);
    let message = api
        .post("/v1/instance-transfers", &a.key, body("ind-a", json!(["inst-old"]), &valid))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("own account"), "{message}");
    let message = api
        .post("/v1/instance-transfers", &a.key, body("ind-b", json!([]), &valid))
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("1 to 100"), "{message}");
    let message = api
        .post(
            "/v1/instance-transfers",
            &a.key,
            body("ind-b", json!(["inst-old", "inst-old"]), &valid),
        )
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("twice"), "{message}");

    // One batch, some valid and some not: each gets its own result.
    let answer = initiate(
        &api,
        &a,
        "ind-b Ltd",
        &["inst-old", "inst-new", "inst-short", "inst-gone", "inst-b", "Not An Id"],
    )
    .await;
    let results = answer["results"].as_array().unwrap();
    let targets: Vec<&str> = results.iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["inst-old", "inst-new", "inst-short", "inst-gone", "inst-b", "Not An Id"]);
    assert_eq!(outcome(&results[0]).0, 201, "{answer}");
    let (status, message) = outcome(&results[1]);
    assert_eq!(status, 422);
    assert!(message.contains("created less than 5 days ago"), "{message}");
    let (status, message) = outcome(&results[2]);
    assert_eq!(status, 422);
    assert!(message.contains("expires within 3 days"), "{message}");
    assert_eq!(outcome(&results[3]).0, 404);
    assert_eq!(outcome(&results[4]).0, 404, "another account's instance is not found");
    assert_eq!(outcome(&results[5]).0, 404);
    let order = &results[0]["order"];
    let id = order["id"].as_str().unwrap().to_owned();
    assert_eq!(order["state"], "Pending");
    assert_eq!(order["batch"], answer["batch"]);
    assert_eq!(order["source"], "ind-a");
    assert_eq!(order["destination"], "ind-b");
    assert_eq!(
        order["expires_at"].as_u64().unwrap() - order["created_at"].as_u64().unwrap(),
        24 * 60 * 60 * 1000
    );

    // One pending order per instance.
    let again = initiate(&api, &a, "ind-b", &["inst-old"]).await;
    let (status, message) = outcome(&again["results"][0]);
    assert_eq!(status, 422);
    assert!(message.contains("already has pending transfer order") && message.contains(&id));

    // While pending, configuration changes are refused; other instances renew as usual.
    let message = api
        .post("/v1/instances/inst-old/renew", &a.key, json!({ "days": 30 }))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("pending transfer order"), "{message}");
    let renewed = api.post("/v1/instances/inst-new/renew", &a.key, json!({ "days": 30 })).await;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.text());
    api.post("/v1/instances/inst-new/renew", &a.key, json!({ "days": 0 }))
        .await
        .error(StatusCode::BAD_REQUEST);
    api.post("/v1/instances/inst-b/renew", &a.key, json!({ "days": 1 }))
        .await
        .error(StatusCode::NOT_FOUND);

    // Both sides see the order; a third account does not.
    for tenant in [&a, &b] {
        let orders = api.get("/v1/instance-transfers", &tenant.key).await.json();
        assert_eq!(orders["orders"].as_array().unwrap().len(), 1, "{orders}");
    }
    let c = account(&api, "ind-c", "individual", None).await;
    api.get(&format!("/v1/instance-transfers/{id}"), &c.key).await.error(StatusCode::NOT_FOUND);
    assert!(
        api.get("/v1/instance-transfers", &c.key).await.json()["orders"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // The source cannot confirm its own order; the destination confirms it and an unknown one.
    let results = settle(&api, &a, "confirm", &[&id]).await;
    assert_eq!(outcome(&results[0]).0, 422);
    let results = settle(&api, &b, "confirm", &[&id, "it-unknown"]).await;
    assert_eq!(outcome(&results[0]).0, 200, "{results:?}");
    assert_eq!(results[0]["order"]["state"], "Confirmed");
    assert_eq!(outcome(&results[1]).0, 404);
    let results = settle(&api, &b, "confirm", &[&id]).await;
    let (status, message) = outcome(&results[0]);
    assert_eq!(status, 422);
    assert!(message.contains("Confirmed"), "{message}");

    // Only the owner changed: endpoint, expiry and the rest are as they were.
    api.get("/v1/instances/inst-old", &a.key).await.error(StatusCode::NOT_FOUND);
    let mut now = api.get("/v1/instances/inst-old", &b.key).await.json();
    assert_eq!(now["owner"], "ind-b");
    now["owner"] = json!("ind-a");
    assert_eq!(now, old);
    // Its products and their devices moved with it, placements and status untouched.
    api.get(&format!("/v1/products/{PK}"), &a.key).await.error(StatusCode::NOT_FOUND);
    assert_eq!(api.get(&format!("/v1/products/{PK}"), &b.key).await.json()["owner"], "ind-b");
    let devices = api.get(&format!("/v1/products/{PK}/devices"), &b.key).await.json();
    let devices = devices["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    assert!(devices.iter().all(|d| d["placement"] == json!({ "kind": "home" })));
    assert!(devices.iter().all(|d| d["status"] == "inactive"));
    let key =
        DeviceKey { product_key: PK.parse().unwrap(), device_name: "lamp-0001".parse().unwrap() };
    assert_eq!(api.plane.registry().device(&key).await.unwrap().owner.as_str(), "ind-b");
    // Now the new owner may renew it.
    let renewed = api.post("/v1/instances/inst-old/renew", &b.key, json!({ "days": 30 })).await;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.text());
    assert_eq!(
        renewed.json()["expires_at"].as_u64().unwrap(),
        old["expires_at"].as_u64().unwrap() + 30 * 24 * 60 * 60 * 1000
    );

    for (tenant, action) in
        [(&a, "instance-transfer.confirmed"), (&b, "instance-transfer.confirmed")]
    {
        let audit = api.get("/v1/audit", &tenant.key).await.json();
        assert!(audit["entries"].as_array().unwrap().iter().any(|e| e["action"] == action));
    }
}

#[tokio::test]
async fn orders_expire_after_24_hours_and_can_be_cancelled_or_rejected() {
    let api = TestApi::start().await;
    let a = account(&api, "ind-a", "individual", None).await;
    let b = account(&api, "ind-b", "individual", None).await;
    for id in ["inst-1", "inst-2", "inst-3"] {
        instance(&api, &a, id, 365).await;
    }
    api.clock.advance(5 * DAY);

    // Expiry: 24 hours on the injected clock, to the millisecond.
    let expiring = order(&api, &a, "ind-b", "inst-1").await;
    api.clock.advance(DAY - Duration::from_millis(1));
    let shown = api.get(&format!("/v1/instance-transfers/{expiring}"), &b.key).await.json();
    assert_eq!(shown["state"], "Pending");
    api.clock.advance(Duration::from_millis(1));
    let shown = api.get(&format!("/v1/instance-transfers/{expiring}"), &b.key).await.json();
    assert_eq!(shown["state"], "Expired");
    let results = settle(&api, &b, "confirm", &[&expiring]).await;
    let (status, message) = outcome(&results[0]);
    assert_eq!(status, 422);
    assert!(message.contains("expired") && message.contains("24 hours"), "{message}");
    assert_eq!(api.get("/v1/instances/inst-1", &a.key).await.json()["owner"], "ind-a");
    // An expired order no longer blocks: the instance renews, and a new order may start.
    let renewed = api.post("/v1/instances/inst-1/renew", &a.key, json!({ "days": 1 })).await;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.text());
    order(&api, &a, "ind-b", "inst-1").await;

    // Cancel by the source and reject by the destination, in batches, before confirmation.
    let first = order(&api, &a, "ind-b", "inst-2").await;
    let second = order(&api, &a, "ind-b", "inst-3").await;
    let results = settle(&api, &b, "cancel", &[&first]).await;
    let (status, message) = outcome(&results[0]);
    assert_eq!(status, 422);
    assert!(message.contains("only by its source"), "{message}");
    let results = settle(&api, &a, "reject", &[&second]).await;
    assert!(outcome(&results[0]).1.contains("only by its destination"), "{results:?}");
    let results = settle(&api, &a, "cancel", &[&first, "it-nothing"]).await;
    assert_eq!(results[0]["order"]["state"], "Cancelled");
    assert_eq!(outcome(&results[1]).0, 404);
    let results = settle(&api, &b, "reject", &[&second]).await;
    assert_eq!(results[0]["order"]["state"], "Rejected");
    for (tenant, action, id) in
        [(&b, "confirm", &first), (&b, "confirm", &second), (&a, "cancel", &second)]
    {
        let results = settle(&api, tenant, action, &[id]).await;
        assert_eq!(outcome(&results[0]).0, 422, "{action} {id}: {results:?}");
    }
    for id in ["inst-2", "inst-3"] {
        assert_eq!(api.get(&format!("/v1/instances/{id}"), &a.key).await.json()["owner"], "ind-a");
    }
    // Settled orders release their instances.
    order(&api, &a, "ind-b", "inst-2").await;
    let message = api
        .post("/v1/instance-transfers/confirm", &b.key, json!({ "orders": [] }))
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("1 to 100"), "{message}");
}

#[tokio::test]
async fn account_kinds_decide_who_may_receive() {
    let api = TestApi::start().await;
    let ind_a = account(&api, "ind-a", "individual", None).await;
    account(&api, "ind-b", "individual", None).await;
    let ind_c = account(&api, "ind-c", "individual", None).await;
    let ent_x = account(&api, "ent-x", "enterprise", Some("X Corp")).await;
    account(&api, "ent-y", "enterprise", Some("X Corp")).await;
    account(&api, "ent-z", "enterprise", Some("Z Corp")).await;
    for (tenant, prefix) in [(&ind_a, "a"), (&ind_c, "c"), (&ent_x, "x")] {
        for n in 1..=4 {
            instance(&api, tenant, &format!("{prefix}-inst-{n}"), 365).await;
        }
    }
    api.clock.advance(5 * DAY);
    let attempt = |source: &Tenant, destination: &str, instance: &str| {
        let (api, source, destination, instance) =
            (&api, source.clone(), destination.to_owned(), instance.to_owned());
        async move {
            let code = code(api, &source).await;
            api.post(
                "/v1/instance-transfers",
                &source.key,
                json!({ "destination": destination, "instances": [instance], "code": code }),
            )
            .await
        }
    };

    // Enterprise → individual: never. Enterprise → enterprise: same verified entity only.
    let message =
        attempt(&ent_x, "ind-a", "x-inst-1").await.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("cannot transfer instances to individual"), "{message}");
    let message =
        attempt(&ent_x, "ent-z", "x-inst-1").await.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("same verified entity"), "{message}");
    order(&api, &ent_x, "ent-y", "x-inst-1").await;

    // Individual → individual, and individual → one enterprise account only.
    order(&api, &ind_a, "ind-b", "a-inst-1").await;
    let to_x = order(&api, &ind_a, "ent-x", "a-inst-2").await;
    assert_eq!(settle(&api, &ent_x, "confirm", &[&to_x]).await[0]["status"], 200);
    let message =
        attempt(&ind_a, "ent-y", "a-inst-3").await.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        message.contains("one enterprise account only") && message.contains("ent-x"),
        "{message}"
    );
    order(&api, &ind_a, "ent-x", "a-inst-3").await;
    order(&api, &ind_a, "ind-b", "a-inst-4").await;
    // A pending order to an enterprise account binds as well.
    order(&api, &ind_c, "ent-y", "c-inst-1").await;
    let message =
        attempt(&ind_c, "ent-x", "c-inst-2").await.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("ent-y"), "{message}");

    // One verified entity holds at most 10 accounts.
    for n in 3..=10 {
        account(&api, &format!("ent-x{n}"), "enterprise", Some("X Corp")).await;
    }
    let message = create_account(&api, "ent-x11", "enterprise", Some("X Corp"))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("10 accounts"), "{message}");
}

#[tokio::test]
async fn an_organisation_admin_sees_members_read_only() {
    let api = TestApi::start().await;
    let member = account(&api, "ind-a", "individual", None).await;
    let outsider = account(&api, "ind-b", "individual", None).await;
    let admin = account(&api, "org-admin", "enterprise", Some("Org Corp")).await;
    instance(&api, &member, "member-inst", 365).await;
    instance(&api, &outsider, "outsider-inst", 365).await;
    api.clock.advance(5 * DAY);
    let id = order(&api, &member, "ind-b", "member-inst").await;

    let set = |account: &str, body: Value, token: &str| {
        let path = format!("/v1/operator/accounts/{account}/organisation");
        let token = token.to_owned();
        let api = &api;
        async move { api.request(Method::PUT, &path, Some(&token), Body::Json(body)).await }
    };
    set("ind-a", json!({ "organisation": "org-1" }), &member.key)
        .await
        .error(StatusCode::UNAUTHORIZED);
    set("nobody", json!({ "organisation": "org-1" }), OPERATOR_TOKEN)
        .await
        .error(StatusCode::NOT_FOUND);
    let message = set("org-admin", json!({ "organisation": null, "admin": true }), OPERATOR_TOKEN)
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("needs an organisation"), "{message}");
    let reply = set("ind-a", json!({ "organisation": "org-1" }), OPERATOR_TOKEN).await;
    assert_eq!(reply.json()["organisation"], "org-1");
    let reply =
        set("org-admin", json!({ "organisation": "org-1", "admin": true }), OPERATOR_TOKEN).await;
    assert_eq!(reply.json()["organisation_admin"], true);

    let instances = api.get("/v1/organisation/instances", &admin.key).await.json();
    let ids: Vec<&str> = instances["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(ids, ["member-inst"]);
    let orders = api.get("/v1/organisation/instance-transfers", &admin.key).await.json();
    assert_eq!(orders["orders"][0]["id"], id.as_str());
    assert_eq!(orders["orders"][0]["state"], "Pending");
    api.clock.advance(DAY);
    let orders = api.get("/v1/organisation/instance-transfers", &admin.key).await.json();
    assert_eq!(orders["orders"][0]["state"], "Expired");

    // Read-only: the admin acts on nothing, and members have no window.
    let results = settle(&api, &admin, "cancel", &[&id]).await;
    assert_eq!(outcome(&results[0]).0, 404);
    api.get(&format!("/v1/instance-transfers/{id}"), &admin.key).await.error(StatusCode::NOT_FOUND);
    api.get("/v1/instances/member-inst", &admin.key).await.error(StatusCode::NOT_FOUND);
    let message = api
        .get("/v1/organisation/instances", &member.key)
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("not an organisation's admin"), "{message}");
}

#[tokio::test]
async fn pending_orders_survive_a_restart() {
    let api = TestApi::start().await;
    let a = account(&api, "ind-a", "individual", None).await;
    let b = account(&api, "ind-b", "individual", None).await;
    instance(&api, &a, "inst-1", 365).await;
    instance(&api, &a, "inst-2", 365).await;
    transferable_lamps(&api, &a, "ind-a", "inst-2").await;
    api.clock.advance(5 * DAY);
    let kept = order(&api, &a, "ind-b", "inst-1").await;
    let expiring = order(&api, &a, "ind-b", "inst-2").await;
    let reply = api
        .post(
            "/v1/device-transfers",
            &a.key,
            json!({ "product": PK, "destination": "ind-b", "devices": ["lamp-0001"] }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let device_transfer = reply.json()["id"].as_str().unwrap().to_owned();

    let api = api.restart().await;

    // Everything pending is still pending, and still binding.
    let orders = api.get("/v1/instance-transfers", &b.key).await.json();
    assert!(orders["orders"].as_array().unwrap().iter().all(|o| o["state"] == "Pending"));
    api.post("/v1/instances/inst-1/renew", &a.key, json!({ "days": 1 }))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    let transfers = api.get("/v1/device-transfers", &b.key).await.json();
    assert_eq!(transfers["transfers"][0]["state"], "Pending");
    api.post(
        "/v1/device-transfers",
        &a.key,
        json!({ "product": PK, "destination": "ind-b", "devices": ["lamp-0001"] }),
    )
    .await
    .error(StatusCode::UNPROCESSABLE_ENTITY);

    // The clock still decides: one order expires after the restart, the other is confirmed.
    api.clock.advance(DAY / 2);
    let results = settle(&api, &b, "confirm", &[&kept]).await;
    assert_eq!(outcome(&results[0]).0, 200, "{results:?}");
    api.clock.advance(DAY);
    let results = settle(&api, &b, "confirm", &[&expiring]).await;
    assert!(outcome(&results[0]).1.contains("expired"), "{results:?}");
    let accepted =
        api.post_empty(&format!("/v1/device-transfers/{device_transfer}/accept"), &b.key).await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.text());
    let key =
        DeviceKey { product_key: PK.parse().unwrap(), device_name: "lamp-0001".parse().unwrap() };
    assert_eq!(api.plane.registry().device(&key).await.unwrap().owner.as_str(), "ind-b");
    assert_eq!(api.get("/v1/instances/inst-1", &b.key).await.json()["owner"], "ind-b");
    assert_eq!(api.get("/v1/instances/inst-2", &a.key).await.json()["owner"], "ind-a");
}

/// An instance whose devices are in a pending device transfer order does not change owner:
/// they would move under a lock only the old owner could release. Once the order is settled,
/// the confirmation goes through.
#[tokio::test]
async fn pending_device_orders_hold_back_an_instance_confirmation() {
    let api = TestApi::start().await;
    let a = account(&api, "ind-a", "individual", None).await;
    let b = account(&api, "ind-b", "individual", None).await;
    instance(&api, &a, "inst-old", 365).await;
    transferable_lamps(&api, &a, "ind-a", "inst-old").await;
    let reply = api
        .post(
            "/v1/device-transfers",
            &a.key,
            json!({ "product": PK, "destination": "ind-b", "devices": ["lamp-0001"] }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let device_order = reply.json()["id"].as_str().unwrap().to_owned();

    api.clock.advance(6 * DAY);
    let id = order(&api, &a, "ind-b", "inst-old").await;
    let results = settle(&api, &b, "confirm", &[&id]).await;
    let (status, message) = outcome(&results[0]);
    assert_eq!(status, 422, "{message}");
    assert!(
        message.contains(&device_order) && message.contains("pending device transfer"),
        "{message}"
    );
    let lamp = |name: &str| DeviceKey {
        product_key: PK.parse().unwrap(),
        device_name: name.parse().unwrap(),
    };
    assert_eq!(
        api.plane.registry().device(&lamp("lamp-0002")).await.unwrap().owner.as_str(),
        "ind-a"
    );

    let cancelled =
        api.post_empty(&format!("/v1/device-transfers/{device_order}/cancel"), &a.key).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text());
    let results = settle(&api, &b, "confirm", &[&id]).await;
    assert_eq!(outcome(&results[0]).0, 200, "{results:?}");
    for name in ["lamp-0001", "lamp-0002"] {
        assert_eq!(api.plane.registry().device(&lamp(name)).await.unwrap().owner.as_str(), "ind-b");
    }
}
