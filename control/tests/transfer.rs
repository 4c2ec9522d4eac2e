//! Device transfer orders (PROTOCOL §6) through the admin API: the allow-list, every rule and its
//! error, acceptance and what each side can do afterwards, the exclusion with distribution
//! both ways (at submission and inside the executor), and the destination's product view.

// Test helpers outside `#[test]` functions panic on failure by design.
#![allow(clippy::unwrap_used)]

// Each test file uses part of the shared support.
#[allow(dead_code)]
mod support;

use hyper::{Method, StatusCode, header};
use serde_json::{Value, json};

use meridian_registry::ids::DeviceKey;
use meridian_registry::model::{TopicCategory, TopicOperation};
use support::{Body, OPERATOR_TOKEN, Tenant, TestApi};

const PK: &str = "a13FN5TplKq";
const PK_B: &str = "b13FN5TplKq";

/// `alpha` (allow-listed, product `PK` published, devices `alpha-0001`..`alpha-0004`) and
/// `bravo` (its own product `PK_B`).
async fn world() -> (TestApi, Tenant, Tenant) {
    let api = TestApi::start().await;
    let a = api.tenant_with_product("alpha", PK).await;
    let b = api.tenant_with_product("bravo", PK_B).await;
    api.devices(&a, PK, &["alpha-0001", "alpha-0002", "alpha-0003", "alpha-0004"]).await;
    publish(&api, &a, PK).await;
    let reply = allow(&api, "alpha").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    (api, a, b)
}

async fn allow(api: &TestApi, account: &str) -> support::Reply {
    let path = format!("/v1/operator/transfer-allow-list/{account}");
    api.request(Method::PUT, &path, Some(OPERATOR_TOKEN), Body::None).await
}

async fn publish(api: &TestApi, tenant: &Tenant, pk: &str) {
    let reply = api
        .request(
            Method::PATCH,
            &format!("/v1/products/{pk}"),
            Some(&tenant.key),
            Body::Json(json!({ "published": true })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

fn order(devices: &[&str]) -> Value {
    json!({ "product": PK, "destination": "bravo", "devices": devices })
}

/// Creates an order, asserting `201`; returns its id.
async fn transfer(api: &TestApi, tenant: &Tenant, body: Value) -> String {
    let reply = api.post("/v1/device-transfers", &tenant.key, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    reply.json()["id"].as_str().expect("id").to_owned()
}

/// Accepts an order as `tenant`, asserting `200`; returns the order.
async fn accept(api: &TestApi, tenant: &Tenant, id: &str) -> Value {
    let reply = api.post_empty(&format!("/v1/device-transfers/{id}/accept"), &tenant.key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()
}

fn key(name: &str) -> DeviceKey {
    DeviceKey { product_key: PK.parse().unwrap(), device_name: name.parse().unwrap() }
}

#[tokio::test]
async fn only_allow_listed_accounts_transfer_published_products() {
    let api = TestApi::start().await;
    let a = api.tenant_with_product("alpha", PK).await;
    api.tenant_with_product("bravo", PK_B).await;
    api.devices(&a, PK, &["alpha-0001"]).await;

    let message = api
        .post("/v1/device-transfers", &a.key, order(&["alpha-0001"]))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("allow-list"), "{message}");

    // The allow-list is the operator's: a tenant key does not reach it.
    let path = "/v1/operator/transfer-allow-list/alpha";
    api.request(Method::PUT, path, Some(&a.key), Body::None).await.error(StatusCode::UNAUTHORIZED);
    allow(&api, "nobody").await.error(StatusCode::NOT_FOUND);
    let entry = allow(&api, "alpha").await.json();
    assert_eq!(entry["account"], "alpha");
    let list = api
        .request(Method::GET, "/v1/operator/transfer-allow-list", Some(OPERATOR_TOKEN), Body::None)
        .await
        .json();
    assert_eq!(list["accounts"].as_array().unwrap().len(), 1);

    let message = api
        .post("/v1/device-transfers", &a.key, order(&["alpha-0001"]))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains(&format!("product {PK} is not published")), "{message}");
    publish(&api, &a, PK).await;
    transfer(&api, &a, order(&["alpha-0001"])).await;

    // Off the list again: no new orders.
    let reply = api.request(Method::DELETE, path, Some(OPERATOR_TOKEN), Body::None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    api.request(Method::DELETE, path, Some(OPERATOR_TOKEN), Body::None)
        .await
        .error(StatusCode::NOT_FOUND);
    api.devices(&a, PK, &["alpha-0002"]).await;
    let message = api
        .post("/v1/device-transfers", &a.key, order(&["alpha-0002"]))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("allow-list"), "{message}");
}

#[tokio::test]
async fn every_order_rule_has_a_clear_error() {
    let (api, a, b) = world().await;
    let submit = |body: Value| {
        let key = a.key.clone();
        let api = &api;
        async move { api.post("/v1/device-transfers", &key, body).await }
    };

    // Sizes and shapes.
    let message = submit(order(&[])).await.error(StatusCode::BAD_REQUEST);
    assert!(message.contains("1 to 100"), "{message}");
    let many: Vec<String> = (0..101).map(|i| format!("dev-{i:04}")).collect();
    let message = submit(json!({ "product": PK, "destination": "bravo", "devices": many }))
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("1 to 100") && message.contains("101"), "{message}");
    let message = submit(order(&["alpha-0001", "alpha-0001"])).await.error(StatusCode::BAD_REQUEST);
    assert!(message.contains("twice"), "{message}");
    let message = submit(json!({ "product": PK, "destination": "bravo",
        "devices": ["alpha-0001"], "csv": format!("productKey,deviceName\n{PK},alpha-0002\n") }))
    .await
    .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("not both"), "{message}");
    let message =
        submit(json!({ "product": PK, "destination": "bravo", "csv": "deviceName\nalpha-0001\n" }))
            .await
            .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("productKey,deviceName"), "{message}");
    let message = submit(json!({ "product": PK, "destination": "bravo",
        "csv": format!("productKey,deviceName\n{PK_B},alpha-0001\n") }))
    .await
    .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("one product per transfer"), "{message}");
    let message = submit(json!({ "product": PK, "devices": ["alpha-0001"] }))
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("destination"), "{message}");

    // Who and what.
    let message =
        submit(json!({ "product": PK, "destination": "nobody", "devices": ["alpha-0001"] }))
            .await
            .error(StatusCode::NOT_FOUND);
    assert!(message.contains("account nobody"), "{message}");
    let message =
        submit(json!({ "product": PK, "destination": "alpha", "devices": ["alpha-0001"] }))
            .await
            .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("own account"), "{message}");
    submit(json!({ "product": PK_B, "destination": "bravo", "devices": ["bravo-0001"] }))
        .await
        .error(StatusCode::NOT_FOUND);
    let message = submit(order(&["alpha-0001", "ghost-0001"])).await.error(StatusCode::NOT_FOUND);
    assert!(message.contains("ghost-0001"), "{message}");

    // By CSV (with a spreadsheet's byte-order mark), by account name, with tags.
    let csv = format!("\u{feff}productKey,deviceName\n{PK},alpha-0001\n{PK},alpha-0002\n");
    let reply = submit(json!({ "product": PK, "destination": "bravo Ltd", "csv": csv,
        "with_tags": true }))
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let created = reply.json();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(reply.headers[header::LOCATION], format!("/v1/device-transfers/{id}").as_str());
    assert_eq!(created["side"], "source");
    assert_eq!(created["destination"], "bravo");
    assert_eq!(created["product"], PK);
    assert_eq!(created["state"], "Pending");
    assert_eq!(created["with_tags"], true);
    assert_eq!(created["devices"], json!(["alpha-0001", "alpha-0002"]));

    // A device is in one pending order at a time.
    let message =
        submit(order(&["alpha-0003", "alpha-0002"])).await.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("alpha-0002") && message.contains(&id), "{message}");

    // The destination sees it as pending, without the ProductKey.
    let reply = api.get("/v1/device-transfers", &b.key).await;
    assert!(!reply.text().contains(PK), "{}", reply.text());
    let seen = &reply.json()["transfers"][0];
    assert_eq!(seen["side"], "destination");
    assert_eq!(seen["state"], "Pending");
    assert_eq!(seen["product_name"], "Lamp");
    assert!(seen.get("product").is_none(), "{seen}");
    assert_eq!(api.get(&format!("/v1/device-transfers/{id}"), &b.key).await.json()["id"], id);

    // Each side does only its own part; a third account sees nothing.
    let c = api.account("charlie").await;
    api.get(&format!("/v1/device-transfers/{id}"), &c.key).await.error(StatusCode::NOT_FOUND);
    api.post_empty(&format!("/v1/device-transfers/{id}/accept"), &c.key)
        .await
        .error(StatusCode::NOT_FOUND);
    assert!(
        api.get("/v1/device-transfers", &c.key).await.json()["transfers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let message = api
        .post_empty(&format!("/v1/device-transfers/{id}/accept"), &a.key)
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("only its destination"), "{message}");
    let message = api
        .post_empty(&format!("/v1/device-transfers/{id}/cancel"), &b.key)
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("only its source"), "{message}");
    api.post_empty("/v1/device-transfers/no-such-order/accept", &b.key)
        .await
        .error(StatusCode::NOT_FOUND);

    // The source cancels before acceptance: nothing moves, the devices are free again.
    let reply = api.post_empty(&format!("/v1/device-transfers/{id}/cancel"), &a.key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["state"], "Cancelled");
    let message = api
        .post_empty(&format!("/v1/device-transfers/{id}/accept"), &b.key)
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("Cancelled"), "{message}");
    let device = api.get(&format!("/v1/products/{PK}/devices/alpha-0001"), &a.key).await;
    assert_eq!(device.status, StatusCode::OK);

    // The destination rejects: nothing moves either.
    let again = transfer(&api, &a, order(&["alpha-0001"])).await;
    let reply = api.post_empty(&format!("/v1/device-transfers/{again}/reject"), &b.key).await;
    assert_eq!(reply.json()["state"], "Rejected");
    api.post_empty(&format!("/v1/device-transfers/{again}/cancel"), &a.key)
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        api.get("/v1/product-views", &b.key).await.json()["product_views"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let template = api.get("/v1/device-transfers/template.csv", &a.key).await;
    assert_eq!(template.text(), "productKey,deviceName\n");
    let audit = api.get("/v1/audit", &a.key).await.json();
    let actions: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    for action in
        ["device-transfer.created", "device-transfer.cancelled", "device-transfer.rejected"]
    {
        assert!(actions.contains(&action), "{actions:?}");
    }
}

#[tokio::test]
async fn acceptance_hands_the_devices_over() {
    let (api, a, b) = world().await;
    // Tags travel only when asked for; the product's topic templates name its key.
    for name in ["alpha-0001", "alpha-0002", "alpha-0003"] {
        api.plane
            .registry()
            .update_device(&key(name), |device| {
                device.tags.insert("floor".into(), "3".into());
                device.groups.push("lobby".into());
                Ok(())
            })
            .await
            .unwrap();
    }
    api.plane
        .registry()
        .update_product(&PK.parse().unwrap(), |product| {
            product.topic_categories = vec![TopicCategory {
                topic: format!("/{PK}/${{deviceName}}/user/get"),
                operation: TopicOperation::Subscribe,
                description: String::new(),
            }];
            product.parsing_script = Some("function parse(x) { return x; }".into());
        })
        .await
        .unwrap();

    let id = transfer(
        &api,
        &a,
        json!({ "product": PK, "destination": "bravo", "devices": ["alpha-0001", "alpha-0002"],
            "with_tags": true }),
    )
    .await;
    let accepted = accept(&api, &b, &id).await;
    assert_eq!(accepted["state"], "Accepted");
    let view = accepted["product_view"].as_str().unwrap().to_owned();

    // The source lost every permission: its calls on the devices are 404 like a missing one.
    for (method, suffix) in [
        (Method::GET, ""),
        (Method::POST, "/disable"),
        (Method::POST, "/enable"),
        (Method::DELETE, ""),
    ] {
        let path = format!("/v1/products/{PK}/devices/alpha-0001{suffix}");
        api.request(method.clone(), &path, Some(&a.key), Body::None)
            .await
            .error(StatusCode::NOT_FOUND);
    }
    let list = api.get(&format!("/v1/products/{PK}/devices"), &a.key).await.json();
    let names: Vec<&str> = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["deviceName"].as_str())
        .collect();
    assert_eq!(names, ["alpha-0003", "alpha-0004"]);
    // Nor can it create a device of the same name: it still exists, the destination's.
    api.post(
        &format!("/v1/products/{PK}/devices"),
        &a.key,
        json!({ "devices": [{ "deviceName": "alpha-0001" }] }),
    )
    .await
    .error(StatusCode::CONFLICT);
    // A completed transfer cannot be undone.
    api.post_empty(&format!("/v1/device-transfers/{id}/cancel"), &a.key)
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    // The source's view of the order does not name the destination's product view.
    let seen = api.get(&format!("/v1/device-transfers/{id}"), &a.key).await.json();
    assert_eq!(seen["state"], "Accepted");
    assert!(seen.get("product_view").is_none(), "{seen}");

    // The destination: a read-only view of the product without its key, its devices under it.
    let reply = api.get("/v1/product-views", &b.key).await;
    assert!(!reply.text().contains(PK), "{}", reply.text());
    let views = reply.json();
    let shown = &views["product_views"][0];
    assert_eq!(shown["id"], view.as_str());
    assert_eq!(shown["name"], "Lamp");
    assert_eq!(shown["owner"], "alpha");
    assert_eq!(shown["published"], true);
    assert!(shown.get("key").is_none(), "{shown}");
    assert_eq!(shown["topic_categories"][0]["topic"], "/${productKey}/${deviceName}/user/get");
    assert_eq!(shown["parsing_script"], "function parse(x) { return x; }");
    assert_eq!(api.get(&format!("/v1/product-views/{view}"), &b.key).await.json()["id"], view);
    api.get(&format!("/v1/product-views/{view}"), &a.key).await.error(StatusCode::NOT_FOUND);
    // Read-only: the product itself is not the destination's.
    api.get(&format!("/v1/products/{PK}"), &b.key).await.error(StatusCode::NOT_FOUND);
    api.request(
        Method::PATCH,
        &format!("/v1/products/{PK}"),
        Some(&b.key),
        Body::Json(json!({ "name": "Mine" })),
    )
    .await
    .error(StatusCode::NOT_FOUND);
    api.post(
        &format!("/v1/products/{PK}/devices"),
        &b.key,
        json!({ "devices": [{ "deviceName": "bravo-9999" }] }),
    )
    .await
    .error(StatusCode::NOT_FOUND);

    let reply = api.get(&format!("/v1/product-views/{view}/devices"), &b.key).await;
    assert!(!reply.text().contains(PK), "{}", reply.text());
    let devices = reply.json();
    let devices = devices["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0]["deviceName"], "alpha-0001");
    assert_eq!(devices[0]["tags"], json!({ "floor": "3" }));
    assert_eq!(devices[0]["placement"], json!({ "kind": "home" }));
    assert_eq!(devices[0]["status"], "inactive");
    let stored = api.plane.registry().device(&key("alpha-0001")).await.unwrap();
    assert_eq!(stored.owner.as_str(), "bravo");
    assert!(stored.groups.is_empty(), "groups are the source's");

    // Full management rights.
    let device = format!("/v1/product-views/{view}/devices/alpha-0001");
    let reply = api.post_empty(&format!("{device}/disable"), &b.key).await;
    assert_eq!(reply.json()["status"], "disabled");
    let reply = api.post_empty(&format!("{device}/enable"), &b.key).await;
    assert_eq!(reply.json()["status"], "offline");
    let other = format!("/v1/product-views/{view}/devices/alpha-0002");
    assert_eq!(api.delete(&other, &b.key).await.status, StatusCode::NO_CONTENT);
    let message = api.get(&other, &b.key).await.error(StatusCode::NOT_FOUND);
    assert!(!message.contains(PK), "{message}");
    // Devices of the product that were not transferred are not under the view.
    api.get(&format!("/v1/product-views/{view}/devices/alpha-0003"), &b.key)
        .await
        .error(StatusCode::NOT_FOUND);
    api.get(&format!("/v1/product-views/{view}/devices/alpha-0001"), &a.key)
        .await
        .error(StatusCode::NOT_FOUND);

    // A second order of the same product lands under the same view; without tags they go.
    let second = transfer(&api, &a, order(&["alpha-0003"])).await;
    assert_eq!(accept(&api, &b, &second).await["product_view"], view.as_str());
    let moved =
        api.get(&format!("/v1/product-views/{view}/devices/alpha-0003"), &b.key).await.json();
    assert_eq!(moved["tags"], json!({}));
    assert_eq!(
        api.get("/v1/product-views", &b.key).await.json()["product_views"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    for tenant in [&a, &b] {
        let audit = api.get("/v1/audit", &tenant.key).await.json();
        assert!(
            audit["entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == "device-transfer.accepted"),
            "{audit}"
        );
    }
}

#[tokio::test]
async fn transfer_and_distribution_exclude_each_other() {
    let (api, a, b) = world().await;
    let distribute = |devices: &[&str]| {
        json!({ "product": PK, "devices": devices,
            "policy": { "kind": "specified", "instance": "alpha-fra" } })
    };

    // A device placed elsewhere by distribution is not transferred.
    let task = api.task(&a, distribute(&["alpha-0004"])).await;
    api.plane.drive(&task).await.unwrap();
    let message = api
        .post("/v1/device-transfers", &a.key, order(&["alpha-0004"]))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("distribute it back"), "{message}");

    // A task submitted before a device entered a pending transfer skips it when it runs.
    let early = api.task(&a, distribute(&["alpha-0001", "alpha-0002"])).await;
    let id = transfer(&api, &a, order(&["alpha-0001"])).await;
    let settled = api.plane.drive(&early).await.unwrap();
    let csv = meridian_control::ControlPlane::records_csv(&settled);
    assert!(csv.contains("alpha-0001,failed,device is in a pending transfer"), "{csv}");
    assert!(csv.contains("alpha-0002,succeeded"), "{csv}");
    let home = api.get(&format!("/v1/products/{PK}/devices/alpha-0001"), &a.key).await.json();
    assert_eq!(home["placement"], json!({ "kind": "home" }));

    // A device in a pending transfer is not distributed.
    let message = api
        .post("/v1/distribution-tasks", &a.key, distribute(&["alpha-0001"]))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("pending transfer") && message.contains(&id), "{message}");

    // Once a device of the product is transferred, no device of it is distributed: not by a
    // new task, nor by one submitted before.
    let late = api.task(&a, distribute(&["alpha-0003"])).await;
    accept(&api, &b, &id).await;
    let message = api
        .post("/v1/distribution-tasks", &a.key, distribute(&["alpha-0003"]))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("transferred"), "{message}");
    let settled = api.plane.drive(&late).await.unwrap();
    let csv = meridian_control::ControlPlane::records_csv(&settled);
    assert!(csv.contains("alpha-0003,failed,a device of the product was transferred"), "{csv}");
}

#[tokio::test]
async fn acceptance_checks_every_device_again() {
    let (api, a, b) = world().await;
    let id = transfer(&api, &a, order(&["alpha-0001", "alpha-0002"])).await;
    // The source still manages its devices until acceptance; one goes away meanwhile.
    let reply = api.delete(&format!("/v1/products/{PK}/devices/alpha-0002"), &a.key).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let message = api
        .post_empty(&format!("/v1/device-transfers/{id}/accept"), &b.key)
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("alpha-0002") && message.contains("no longer exists"), "{message}");
    // Nothing moved, and the order is still pending for the source to cancel.
    let device = api.plane.registry().device(&key("alpha-0001")).await.unwrap();
    assert_eq!(device.owner.as_str(), "alpha");
    assert_eq!(
        api.get(&format!("/v1/device-transfers/{id}"), &a.key).await.json()["state"],
        "Pending"
    );
    let reply = api.post_empty(&format!("/v1/device-transfers/{id}/cancel"), &a.key).await;
    assert_eq!(reply.json()["state"], "Cancelled");
    transfer(&api, &a, order(&["alpha-0001"])).await;
}
