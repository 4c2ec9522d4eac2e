//! Records that do not decode never break a list, and nothing the API accepts can later fail
//! to decode: a TSL model deep enough that the product copy wrapping it would pass the JSON
//! decoder's depth limit is refused on write with the limit named.

#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
mod support;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// The documented limit (`meridian_control::plane::MAX_TSL_DEPTH`).
const MAX_TSL_DEPTH: usize = 64;
use support::{Body, Tenant, TestApi};

/// `depth` nested arrays: `[[[…]]]`.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

async fn create_product(api: &TestApi, tenant: &Tenant, body: String) -> support::Reply {
    let body = Body::Typed("application/json", body.into_bytes());
    api.request(Method::POST, "/v1/products", Some(&tenant.key), body).await
}

/// Distributes `pk` alone (no devices) to `instance` and runs the task to its end.
async fn copy_product(api: &TestApi, tenant: &Tenant, pk: &str, instance: &str) {
    let body = json!({ "product": pk, "policy": { "kind": "specified", "instance": instance } });
    let task = api.task(tenant, body).await;
    let settled = api.plane.drive(&task).await.unwrap();
    assert_eq!(format!("{:?}", settled.state), "Distributed");
}

#[tokio::test]
async fn a_tsl_too_deep_for_its_copies_is_refused_naming_the_limit() {
    let api = TestApi::start().await;
    let acme = api.tenant_with_product("acme", "a1Product01").await;

    // 126 levels: the deepest a request body can carry (the body object is one more), and so
    // one level short of what a product copy, which wraps the product once more, can decode.
    for depth in [126, MAX_TSL_DEPTH + 1] {
        let body = format!(
            r#"{{"key":"a1Deep{depth:05}","name":"Deep","home_instance":"acme-sh","tsl":{}}}"#,
            nested(depth)
        );
        let message = create_product(&api, &acme, body).await.error(StatusCode::BAD_REQUEST);
        assert!(message.contains(&format!("limit of {MAX_TSL_DEPTH} levels")), "{message}");
        let missing = api.get(&format!("/v1/products/a1Deep{depth:05}"), &acme.key).await;
        missing.error(StatusCode::NOT_FOUND);
    }
    let patch = format!(r#"{{"tsl":{}}}"#, nested(MAX_TSL_DEPTH + 1));
    let reply = api
        .request(
            Method::PATCH,
            "/v1/products/a1Product01",
            Some(&acme.key),
            Body::Typed("application/json", patch.into_bytes()),
        )
        .await;
    let message = reply.error(StatusCode::BAD_REQUEST);
    assert!(message.contains(&format!("limit of {MAX_TSL_DEPTH} levels")), "{message}");
    let product = api.get("/v1/products/a1Product01", &acme.key).await.json();
    assert_eq!(product["tsl"], Value::Null, "the refused patch changed nothing");

    // At the limit the product is taken, and its copy decodes and lists.
    let tsl = nested(MAX_TSL_DEPTH);
    let body =
        format!(r#"{{"key":"a1AtLimit01","name":"Deep","home_instance":"acme-sh","tsl":{tsl}}}"#);
    let reply = create_product(&api, &acme, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    copy_product(&api, &acme, "a1AtLimit01", "acme-fra").await;
    let copies = api.get("/v1/product-copies", &acme.key).await;
    assert_eq!(copies.status, StatusCode::OK, "{}", copies.text());
    let copies = copies.json();
    assert_eq!(
        copies["product_copies"][0]["product"]["tsl"],
        serde_json::from_str::<Value>(&tsl).unwrap()
    );
    assert!(copies.get("broken").is_none(), "{copies}");
}

#[tokio::test]
async fn a_product_copy_that_does_not_decode_breaks_no_list() {
    let api = TestApi::start().await;
    let alpha = api.tenant_with_product("alpha", "a1Product01").await;
    let beta = api.tenant_with_product("beta", "b1Product01").await;
    copy_product(&api, &beta, "b1Product01", "beta-fra").await;

    // A copy of alpha's as an earlier version wrote it: its TSL nested so deep that the copy
    // passes the decoder's depth limit.
    let copy = format!(
        r#"{{"instance":"alpha-fra","holder":"alpha","copied_at":1,"product":{{"key":"a1Product01","name":"Lamp","owner":"alpha","home_instance":"alpha-sh","published":false,"topic_categories":[],"tsl":{},"created_at":1}}}}"#,
        nested(127)
    );
    let store = api.plane.registry().store();
    store.put("product-copies/alpha-fra/a1Product01", Bytes::from(copy)).await.unwrap();
    // And one of nobody's that is not even JSON.
    store
        .put("product-copies/beta-sh/x1Garbage01", Bytes::from_static(b"{not json"))
        .await
        .unwrap();

    let beta_copies = api.get("/v1/product-copies", &beta.key).await;
    assert_eq!(beta_copies.status, StatusCode::OK, "{}", beta_copies.text());
    let beta_copies = beta_copies.json();
    assert_eq!(beta_copies["product_copies"].as_array().unwrap().len(), 1, "{beta_copies}");
    assert_eq!(beta_copies["product_copies"][0]["instance"], "beta-fra");
    assert!(beta_copies.get("broken").is_none(), "beta is shown nobody else's record");

    let alpha_copies = api.get("/v1/product-copies", &alpha.key).await;
    assert_eq!(alpha_copies.status, StatusCode::OK, "{}", alpha_copies.text());
    let alpha_copies = alpha_copies.json();
    assert_eq!(alpha_copies["product_copies"], json!([]));
    assert_eq!(alpha_copies["broken"][0]["id"], "alpha-fra/a1Product01", "{alpha_copies}");
    let message = alpha_copies["broken"][0]["message"].as_str().unwrap();
    assert!(message.contains("does not decode"), "{message}");

    // The same for products: one broken product record hides only itself.
    store.put("products/x1Garbage01", Bytes::from_static(b"{\"owner\":\"alpha\",")).await.unwrap();
    let products = api.get("/v1/products", &beta.key).await;
    assert_eq!(products.status, StatusCode::OK, "{}", products.text());
    assert_eq!(products.json()["products"][0]["key"], "b1Product01");
}

#[tokio::test]
async fn a_product_stored_too_deep_before_the_check_is_not_distributed() {
    let api = TestApi::start().await;
    let acme = api.tenant_with_product("acme", "a1Product01").await;
    // As an earlier version let it in: the product decodes, a copy of it would not.
    let store = api.plane.registry().store();
    let entry = store.get("products/a1Product01").await.unwrap().unwrap();
    let mut product: Value = serde_json::from_slice(&entry.value).unwrap();
    product["tsl"] = Value::Null;
    let text = product.to_string().replace("\"tsl\":null", &format!("\"tsl\":{}", nested(126)));
    store.put("products/a1Product01", Bytes::from(text)).await.unwrap();

    let body = json!({ "product": "a1Product01",
        "policy": { "kind": "specified", "instance": "acme-fra" } });
    let reply = api.post("/v1/distribution-tasks", &acme.key, body).await;
    let message = reply.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains(&format!("limit of {MAX_TSL_DEPTH} levels")), "{message}");
    let tasks = api.get("/v1/distribution-tasks", &acme.key).await.json();
    assert_eq!(tasks["tasks"], json!([]), "nothing stored");
}
