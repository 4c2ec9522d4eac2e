//! The admin HTTP API through real HTTP on 127.0.0.1: authentication, every resource, every
//! PROTOCOL §5 distribution rule, account isolation, and the error contract (JSON, never HTML).

mod support;

use std::time::Duration;

use hyper::header;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use meridian_registry::clock::Timestamp;
use meridian_registry::encode;
use meridian_registry::ids::DeviceKey;
use meridian_registry::model::InstanceUsage;
use support::{Body, Connection, HANG, OPERATOR_TOKEN, TestApi};

const PK: &str = "a13FN5TplKq";
const PK_B: &str = "b13FN5TplKq";

#[tokio::test]
async fn operator_creates_accounts_and_keys_authenticate() {
    let api = TestApi::start().await;
    let body = json!({ "id": "acme", "name": "Acme", "kind": "individual" });

    for token in [None, Some("wrong-token")] {
        let reply =
            api.request(Method::POST, "/v1/accounts", token, Body::Json(body.clone())).await;
        reply.error(StatusCode::UNAUTHORIZED);
        assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Bearer");
    }
    // A tenant's API key is not the operator token.
    let other = api.account("other").await;
    let reply =
        api.request(Method::POST, "/v1/accounts", Some(&other.key), Body::Json(body.clone())).await;
    reply.error(StatusCode::UNAUTHORIZED);

    let reply = api
        .request(Method::POST, "/v1/accounts", Some(OPERATOR_TOKEN), Body::Json(body.clone()))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.headers[header::CACHE_CONTROL], "no-store");
    let created = reply.json();
    assert_eq!(created["account"]["id"], "acme");
    let key = created["api_key"].as_str().unwrap().to_owned();

    // Same name again: conflict. Enterprise without a verified entity: invalid.
    let again = json!({ "id": "acme-2", "name": "Acme", "kind": "individual" });
    api.request(Method::POST, "/v1/accounts", Some(OPERATOR_TOKEN), Body::Json(again))
        .await
        .error(StatusCode::CONFLICT);
    let enterprise = json!({ "id": "corp", "name": "Corp", "kind": "enterprise" });
    let message = api
        .request(Method::POST, "/v1/accounts", Some(OPERATOR_TOKEN), Body::Json(enterprise))
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("verified_entity"), "{message}");

    let reply = api.get("/v1/account", &key).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["name"], "Acme");

    // Missing, malformed, unknown and wrong-secret keys all look the same, and none is echoed.
    let (id, _) = key.split_once('.').unwrap();
    let wrong_secret = format!("{id}.not-the-secret");
    for bad in ["", "nodot", "x.y", "../../etc.passwd", wrong_secret.as_str()] {
        let reply = api.get("/v1/account", bad).await;
        let message = reply.error(StatusCode::UNAUTHORIZED);
        assert!(bad.is_empty() || !message.contains(bad), "{message}");
    }
    let reply = api.request(Method::GET, "/v1/account", None, Body::None).await;
    reply.error(StatusCode::UNAUTHORIZED);
    // A Basic credential is not a bearer token, even holding a valid key.
    let mut connection = Connection::open(api.addr).await;
    let basic = hyper::Request::get("/v1/account")
        .header(header::HOST, "admin")
        .header(header::AUTHORIZATION, format!("Basic {key}"))
        .body(Default::default())
        .unwrap();
    connection.send(basic).await.error(StatusCode::UNAUTHORIZED);
    // The scheme is case-insensitive.
    let lower = hyper::Request::get("/v1/account")
        .header(header::HOST, "admin")
        .header(header::AUTHORIZATION, format!("bearer {key}"))
        .body(Default::default())
        .unwrap();
    assert_eq!(connection.send(lower).await.status, StatusCode::OK);

    // A second key works alongside the first.
    let reply = api.post_empty("/v1/api-keys", &key).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let second = reply.json()["api_key"].as_str().unwrap().to_owned();
    assert_ne!(second, key);
    assert_eq!(api.get("/v1/account", &second).await.json()["id"], "acme");
    assert_eq!(api.get("/v1/account", &key).await.json()["id"], "acme");

    // The audit log records the account's creation.
    let audit = api.get("/v1/audit", &key).await.json();
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"account.created"), "{actions:?}");
}

#[tokio::test]
async fn errors_are_json_with_the_right_status() {
    let api = TestApi::start().await;
    let acme = api.account("acme").await;

    let message = api.get("/v1/nothing-here", &acme.key).await.error(StatusCode::NOT_FOUND);
    assert!(message.contains("/v1/nothing-here"), "{message}");
    api.request(Method::GET, "/", None, Body::None).await.error(StatusCode::NOT_FOUND);
    // Unknown routes are 404 even without credentials.
    api.request(Method::GET, "/admin", None, Body::None).await.error(StatusCode::NOT_FOUND);

    let reply = api.delete("/v1/products", &acme.key).await;
    reply.error(StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers[header::ALLOW], "GET, POST");

    let instance = json!({ "owner": "acme", "id": "acme-sh", "region": "cn-shanghai",
        "endpoint": { "host": "sh.example", "tcp_port": 1883 } });
    let bytes = instance.to_string().into_bytes();
    for content_type in ["", "text/plain", "application/x-www-form-urlencoded"] {
        let reply = api
            .request(
                Method::POST,
                "/v1/operator/instances",
                Some(OPERATOR_TOKEN),
                Body::Typed(content_type, bytes.clone()),
            )
            .await;
        let message = reply.error(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(message.contains("application/json"), "{message}");
    }
    // Parameters and case in the media type are fine.
    let reply = api
        .request(
            Method::POST,
            "/v1/operator/instances",
            Some(OPERATOR_TOKEN),
            Body::Typed("Application/JSON; charset=utf-8", bytes),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());

    let malformed = |body: &'static str| {
        api.request(
            Method::POST,
            "/v1/products",
            Some(&acme.key),
            Body::Typed("application/json", body.into()),
        )
    };
    let message = malformed("{\"name\": \"Lamp\",").await.error(StatusCode::BAD_REQUEST);
    assert!(message.starts_with("malformed JSON") && message.contains("line 1"), "{message}");
    let message = malformed("").await.error(StatusCode::BAD_REQUEST);
    assert!(message.starts_with("malformed JSON"), "{message}");
    let message = malformed("{\"name\":\"Lamp\"}").await.error(StatusCode::BAD_REQUEST);
    assert!(message.contains("missing field `home_instance`"), "{message}");
    let message = malformed("{\"name\":\"Lamp\",\"home_instance\":\"Not An Id\"}")
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("`home_instance`") && message.contains("instance id"), "{message}");
    let message = malformed("{\"name\":\"Lamp\",\"home_instance\":\"acme-sh\"} trailing")
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(message.starts_with("malformed JSON"), "{message}");

    // The OpenAPI document is served without credentials.
    let reply = api.request(Method::GET, "/openapi.json", None, Body::None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["openapi"], "3.1.0");
}

#[tokio::test]
async fn oversize_bodies_are_refused() {
    let api = TestApi::start().await;
    let acme = api.account("acme").await;
    let limit = meridian_control::api::MAX_BODY_BYTES;

    // Declared in Content-Length: refused before the body is read.
    let huge = vec![b' '; limit + 1];
    let reply = api
        .request(
            Method::POST,
            "/v1/products",
            Some(&acme.key),
            Body::Typed("application/json", huge),
        )
        .await;
    let message = reply.error(StatusCode::PAYLOAD_TOO_LARGE);
    assert!(message.contains(&limit.to_string()), "{message}");

    // Chunked, so only counting while reading catches it.
    let head = format!(
        "POST /v1/products HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        acme.key
    );
    let answer = support::raw_exchange(api.addr, head, limit + 64 * 1024).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("\"code\":413"), "{answer}");

    // Just under the limit is read, and then judged on its content.
    let mut body = vec![b' '; limit - 2];
    body[0] = b'{';
    body[limit - 3] = b'}';
    let reply = api
        .request(
            Method::POST,
            "/v1/products",
            Some(&acme.key),
            Body::Typed("application/json", body),
        )
        .await;
    let message = reply.error(StatusCode::BAD_REQUEST);
    assert!(message.contains("missing field"), "{message}");
}

#[tokio::test]
async fn connections_are_kept_alive_and_shutdown_is_graceful() {
    let mut api = TestApi::start().await;
    let acme = api.account("acme").await;
    let mut connection = Connection::open(api.addr).await;
    for _ in 0..3 {
        let reply =
            connection.request(Method::GET, "/v1/account", Some(&acme.key), Body::None).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(!connection.is_closed());
    }
    // An error answer keeps the connection too.
    let reply = connection.request(Method::GET, "/v1/nope", Some(&acme.key), Body::None).await;
    reply.error(StatusCode::NOT_FOUND);
    let reply = connection.request(Method::GET, "/v1/account", Some(&acme.key), Body::None).await;
    assert_eq!(reply.status, StatusCode::OK);

    api.stop().await;
    assert!(tokio::net::TcpStream::connect(api.addr).await.is_err(), "still accepting");
}

#[tokio::test]
async fn regions_instances_and_products() {
    let api = TestApi::start().await;
    let acme = api.tenant_with_product("acme", PK).await;

    let regions = api.get("/v1/regions", &acme.key).await.json();
    assert_eq!(regions["regions"].as_array().unwrap().len(), 2);

    let instances = api.get("/v1/instances", &acme.key).await.json();
    assert_eq!(instances["instances"].as_array().unwrap().len(), 2);
    let reply = api.get("/v1/instances/acme-fra", &acme.key).await;
    assert_eq!(reply.json()["region"], "eu-central-1");
    api.get("/v1/instances/missing", &acme.key).await.error(StatusCode::NOT_FOUND);
    api.get("/v1/instances/Not%20An%20Id", &acme.key).await.error(StatusCode::NOT_FOUND);
    let reply = api
        .provision(
            "acme",
            json!({ "id": "acme-x", "region": "mars-1", "endpoint": { "host": "x", "tcp_port": 1 } }),
        )
        .await;
    reply.error(StatusCode::NOT_FOUND);
    let reply = api
        .provision(
            "acme",
            json!({ "id": "acme-sh", "region": "cn-shanghai", "endpoint": { "host": "x", "tcp_port": 1 } }),
        )
        .await;
    reply.error(StatusCode::CONFLICT);

    // An absurd lifetime is not an overflow (the plane saturates: it never expires).
    let reply = api
        .provision(
            "acme",
            json!({ "id": "acme-forever", "region": "cn-shanghai", "lifetime_days": u64::MAX,
                "endpoint": { "host": "x", "tcp_port": 1 } }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.json()["expires_at"], u64::MAX);

    // A product with a generated key, with a Location header.
    let reply = api
        .post("/v1/products", &acme.key, json!({ "name": "Plug", "home_instance": "acme-fra" }))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let generated = reply.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(generated.len(), 11);
    assert_eq!(reply.headers[header::LOCATION], format!("/v1/products/{generated}").as_str());
    let products = api.get("/v1/products", &acme.key).await.json();
    assert_eq!(products["products"].as_array().unwrap().len(), 2);

    let reply = api
        .request(
            Method::PATCH,
            &format!("/v1/products/{PK}"),
            Some(&acme.key),
            Body::Typed(
                "application/merge-patch+json",
                json!({ "name": "Lamp 2", "published": true }).to_string().into(),
            ),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // Names follow the same rule on edit as on creation.
    for name in ["", "  ", &"x".repeat(65)] {
        let reply = api
            .request(
                Method::PATCH,
                &format!("/v1/products/{PK}"),
                Some(&acme.key),
                Body::Json(json!({ "name": name })),
            )
            .await;
        reply.error(StatusCode::BAD_REQUEST);
    }
    let product = api.get(&format!("/v1/products/{PK}"), &acme.key).await.json();
    assert_eq!(product["name"], "Lamp 2");
    assert_eq!(product["published"], true);
    assert_eq!(product["home_instance"], "acme-sh");
    api.get("/v1/products/short", &acme.key).await.error(StatusCode::NOT_FOUND);
}

/// Usage is one record per instance of the caller: as its broker reported it, or zeros before
/// any report; another account's usage is never listed.
#[tokio::test]
async fn usage_lists_the_callers_instances_only() {
    let api = TestApi::start().await;
    let acme = api.tenant_with_product("acme", PK).await;
    let other = api.tenant_with_product("other", PK_B).await;
    for (instance, messages_in) in [("acme-sh", 7), ("other-sh", 1_000)] {
        let reported = InstanceUsage {
            instance: instance.parse().unwrap(),
            connections: 2,
            connects_total: 5,
            connected_seconds: 90,
            messages_in,
            messages_out: 3,
            updated_at: Timestamp(1_700_000_000_500),
        };
        let key = meridian_registry::keys::usage(&reported.instance);
        api.plane.registry().store().put(&key, encode(&reported).unwrap()).await.unwrap();
    }

    let usage = api.get("/v1/usage", &acme.key).await.json();
    let mut records = usage["usage"].as_array().unwrap().clone();
    records.sort_by_key(|record| record["instance"].as_str().unwrap().to_owned());
    assert_eq!(
        records,
        [
            json!({ "instance": "acme-fra", "connections": 0, "connects_total": 0,
                "connected_seconds": 0, "messages_in": 0, "messages_out": 0, "updated_at": 0 }),
            json!({ "instance": "acme-sh", "connections": 2, "connects_total": 5,
                "connected_seconds": 90, "messages_in": 7, "messages_out": 3,
                "updated_at": 1_700_000_000_500u64 }),
        ]
    );
    let theirs = api.get("/v1/usage", &other.key).await.json();
    assert!(!theirs.to_string().contains("acme"), "{theirs}");
    api.request(Method::GET, "/v1/usage", None, Body::None).await.error(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn devices_crud_never_shows_secrets_after_creation() {
    let api = TestApi::start().await;
    let acme = api.tenant_with_product("acme", PK).await;
    let devices = format!("/v1/products/{PK}/devices");

    let reply = api
        .post(
            &devices,
            &acme.key,
            json!({ "devices": [
                { "deviceName": "lamp-0001", "deviceSecret": "chosen-secret-0001" },
                { "deviceName": "lamp-0002" },
                { "deviceName": "import" },
                { "deviceName": "a@b:c.d" },
            ] }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.headers[header::CACHE_CONTROL], "no-store");
    let created = reply.json();
    let created = created["devices"].as_array().unwrap();
    assert_eq!(created.len(), 4);
    assert_eq!(created[0]["deviceSecret"], "chosen-secret-0001");
    assert_eq!(created[0]["status"], "inactive");
    assert_eq!(created[0]["placement"], json!({ "kind": "home" }));
    let generated = created[1]["deviceSecret"].as_str().unwrap().to_owned();
    assert_eq!(generated.len(), 32);

    let list = api.get(&devices, &acme.key).await;
    assert_eq!(list.json()["devices"].as_array().unwrap().len(), 4);
    for secret in ["chosen-secret-0001", generated.as_str()] {
        assert!(!list.text().contains(secret));
    }
    assert!(!list.text().contains("deviceSecret") && !list.text().contains("\"secret\""));

    let one = api.get(&format!("{devices}/lamp-0001"), &acme.key).await;
    assert_eq!(one.json()["deviceName"], "lamp-0001");
    assert!(!one.text().contains("chosen-secret-0001"));
    // `GET …/devices/import` is the device named import; `a@b:c.d` percent-encoded.
    assert_eq!(
        api.get(&format!("{devices}/import"), &acme.key).await.json()["deviceName"],
        "import"
    );
    let encoded = api.get(&format!("{devices}/a%40b%3Ac.d"), &acme.key).await;
    assert_eq!(encoded.json()["deviceName"], "a@b:c.d");

    // DeviceName is unique in its product, and a batch is all or none.
    let reply = api
        .post(
            &devices,
            &acme.key,
            json!({ "devices": [{ "deviceName": "lamp-0003" }, { "deviceName": "lamp-0001" }] }),
        )
        .await;
    let message = reply.error(StatusCode::CONFLICT);
    assert!(message.contains("lamp-0001"), "{message}");
    api.get(&format!("{devices}/lamp-0003"), &acme.key).await.error(StatusCode::NOT_FOUND);
    // Bad names, bad secrets and misspelt fields name the problem without echoing secrets.
    let message = api
        .post(&devices, &acme.key, json!({ "devices": [{ "deviceName": "ab" }] }))
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("devices[0].deviceName") && message.contains("4-32"), "{message}");
    let message = api
        .post(
            &devices,
            &acme.key,
            json!({ "devices": [{ "deviceName": "lamp-0004", "deviceSecret": "has space" }] }),
        )
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(
        message.contains("devices[0].deviceSecret") && !message.contains("has space"),
        "{message}"
    );
    let message = api
        .post(
            &devices,
            &acme.key,
            json!({ "devices": [{ "deviceName": "lamp-0004", "deviceSecret": 424242 }] }),
        )
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("deviceSecret") && !message.contains("424242"), "{message}");
    let message = api
        .post(
            &devices,
            &acme.key,
            json!({ "devices": [{ "deviceName": "lamp-0004", "devicesecret": "typo" }] }),
        )
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("unknown field `devicesecret`"), "{message}");
    api.post(&devices, &acme.key, json!({ "devices": [] }))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);

    // Disable, enable, delete.
    let reply = api.post_empty(&format!("{devices}/lamp-0002/disable"), &acme.key).await;
    assert_eq!(reply.json()["status"], "disabled");
    let reply = api.post_empty(&format!("{devices}/lamp-0002/enable"), &acme.key).await;
    assert_eq!(reply.json()["status"], "offline");
    let reply = api.delete(&format!("{devices}/lamp-0002"), &acme.key).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert!(reply.body.is_empty());
    api.get(&format!("{devices}/lamp-0002"), &acme.key).await.error(StatusCode::NOT_FOUND);
    api.delete(&format!("{devices}/lamp-0002"), &acme.key).await.error(StatusCode::NOT_FOUND);
    api.post_empty(&format!("{devices}/lamp-0002/disable"), &acme.key)
        .await
        .error(StatusCode::NOT_FOUND);

    let audit = api.get("/v1/audit", &acme.key).await.json();
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in ["devices.created", "device.disabled", "device.enabled", "device.deleted"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}

#[tokio::test]
async fn csv_import() {
    let api = TestApi::start().await;
    let acme = api.tenant_with_product("acme", PK).await;
    let import = format!("/v1/products/{PK}/devices/import");

    // A spreadsheet's byte-order mark and spaces are fine; the secret column is optional.
    let reply = api
        .post_csv(
            &import,
            &acme.key,
            "\u{feff}deviceName, deviceSecret\ncsv-0001, csv-secret-1\ncsv-0002,\n",
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let created = reply.json();
    assert_eq!(created["devices"][0]["deviceSecret"], "csv-secret-1");
    assert_eq!(created["devices"][1]["deviceSecret"].as_str().unwrap().len(), 32);

    let message =
        api.post_csv(&import, &acme.key, "name\ncsv-0003\n").await.error(StatusCode::BAD_REQUEST);
    assert!(message.contains("deviceName column"), "{message}");
    let message = api
        .post_csv(&import, &acme.key, "deviceName\ncsv-0003\nbad name\ncsv-0005\n")
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("row 3"), "{message}");
    let rows: String = (0..1001).map(|i| format!("bulk-{i:04}\n")).collect();
    let message = api
        .post_csv(&import, &acme.key, &format!("deviceName\n{rows}"))
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("1000"), "{message}");
    api.post_csv(&import, &acme.key, "deviceName\n").await.error(StatusCode::BAD_REQUEST);
    // Nothing from the refused files was created.
    let list = api.get(&format!("/v1/products/{PK}/devices"), &acme.key).await.json();
    assert_eq!(list["devices"].as_array().unwrap().len(), 2);

    // Exactly 1,000 rows is fine.
    let rows: String = (0..1000).map(|i| format!("bulk-{i:04}\n")).collect();
    let reply = api.post_csv(&import, &acme.key, &format!("deviceName\n{rows}")).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.json()["devices"].as_array().unwrap().len(), 1000);

    // JSON is not CSV.
    let reply = api.post(&import, &acme.key, json!({ "devices": [] })).await;
    let message = reply.error(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(message.contains("text/csv"), "{message}");
}

#[tokio::test]
async fn accounts_are_isolated_on_every_endpoint() {
    let api = TestApi::start().await;
    let a = api.tenant_with_product("alpha", PK).await;
    let b = api.tenant_with_product("bravo", PK_B).await;
    api.devices(&a, PK, &["alpha-0001", "alpha-0002"]).await;
    api.devices(&b, PK_B, &["bravo-0001"]).await;
    let task = api
        .task(
            &a,
            json!({ "product": PK, "devices": ["alpha-0002"],
            "policy": { "kind": "specified", "instance": "alpha-fra" } }),
        )
        .await;
    let device = format!("/v1/products/{PK}/devices/alpha-0001");

    // B reaches none of A's resources, with any method: 404, as if they did not exist.
    let not_found = StatusCode::NOT_FOUND;
    api.get("/v1/instances/alpha-sh", &b.key).await.error(not_found);
    api.get(&format!("/v1/products/{PK}"), &b.key).await.error(not_found);
    let patch = api
        .request(
            Method::PATCH,
            &format!("/v1/products/{PK}"),
            Some(&b.key),
            Body::Json(json!({ "name": "stolen" })),
        )
        .await;
    patch.error(not_found);
    api.get(&format!("/v1/products/{PK}/devices"), &b.key).await.error(not_found);
    api.post(
        &format!("/v1/products/{PK}/devices"),
        &b.key,
        json!({ "devices": [{ "deviceName": "intruder" }] }),
    )
    .await
    .error(not_found);
    api.post_csv(&format!("/v1/products/{PK}/devices/import"), &b.key, "deviceName\nintruder\n")
        .await
        .error(not_found);
    api.get(&device, &b.key).await.error(not_found);
    api.post_empty(&format!("{device}/disable"), &b.key).await.error(not_found);
    api.post_empty(&format!("{device}/enable"), &b.key).await.error(not_found);
    api.delete(&device, &b.key).await.error(not_found);
    api.get(&format!("/v1/distribution-tasks/{task}"), &b.key).await.error(not_found);
    api.get(&format!("/v1/distribution-tasks/{task}/records.csv"), &b.key).await.error(not_found);
    api.post_empty(&format!("/v1/distribution-tasks/{task}/retry"), &b.key).await.error(not_found);
    // B cannot build on A's resources either.
    api.post("/v1/products", &b.key, json!({ "name": "Mine", "home_instance": "alpha-sh" }))
        .await
        .error(not_found);
    api.post(
        "/v1/distribution-tasks",
        &b.key,
        json!({ "product": PK, "devices": ["alpha-0001"], "policy": { "kind": "specified", "instance": "bravo-fra" } }),
    )
    .await
    .error(not_found);
    for policy in [
        json!({ "kind": "specified", "instance": "alpha-fra" }),
        json!({ "kind": "nearest", "instances": ["bravo-sh", "alpha-fra"] }),
    ] {
        api.post(
            "/v1/distribution-tasks",
            &b.key,
            json!({ "product": PK_B, "devices": ["bravo-0001"], "policy": policy }),
        )
        .await
        .error(not_found);
    }
    // B's device list names its own product only, even when a name matches.
    api.get(&format!("/v1/products/{PK_B}/devices/alpha-0001"), &b.key).await.error(not_found);

    // B's lists hold only B's resources.
    let ids = |value: &Value, list: &str, field: &str| -> Vec<String> {
        value[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v[field].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(&api.get("/v1/instances", &b.key).await.json(), "instances", "id"),
        ["bravo-fra", "bravo-sh"]
    );
    assert_eq!(ids(&api.get("/v1/products", &b.key).await.json(), "products", "key"), [PK_B]);
    assert!(ids(&api.get("/v1/distribution-tasks", &b.key).await.json(), "tasks", "id").is_empty());
    assert_eq!(
        ids(&api.get("/v1/distribution-tasks", &a.key).await.json(), "tasks", "id"),
        [task.as_str()]
    );
    api.plane.run_pending().await.unwrap();
    // A's task copied A's product to A's own Frankfurt instance: A holds the copy, B does not.
    assert_eq!(
        api.get("/v1/product-copies", &a.key).await.json()["product_copies"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(
        api.get("/v1/product-copies", &b.key).await.json()["product_copies"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let audit = api.get("/v1/audit", &b.key).await.json();
    for entry in audit["entries"].as_array().unwrap() {
        assert_eq!(entry["account"], "bravo");
        assert!(!entry["target"].as_str().unwrap().contains(PK), "{entry}");
    }
    assert_eq!(api.get("/v1/account", &b.key).await.json()["id"], "bravo");

    // A's resources are untouched.
    let product = api.get(&format!("/v1/products/{PK}"), &a.key).await.json();
    assert_eq!(product["name"], "Lamp");
    assert_eq!(api.get(&device, &a.key).await.json()["status"], "inactive");
    let list = api.get(&format!("/v1/products/{PK}/devices"), &a.key).await.json();
    assert_eq!(list["devices"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn distribution_rules_of_spec_5() {
    let api = TestApi::start().await;
    let a = api.tenant_with_product("alpha", PK).await;
    let b = api.tenant_with_product("bravo", PK_B).await;
    api.devices(&a, PK, &["alpha-0001", "alpha-0002"]).await;
    let submit = |tenant: &support::Tenant, body: Value| {
        let key = tenant.key.clone();
        let api = &api;
        async move { api.post("/v1/distribution-tasks", &key, body).await }
    };
    let to_fra = json!({ "kind": "specified", "instance": "alpha-fra" });

    // Sizes: 10,001 listed devices; a CSV of 1,001 rows; a CSV with another header.
    let names: Vec<String> = (0..10_001).map(|i| format!("dev-{i:05}")).collect();
    let message = submit(&a, json!({ "product": PK, "devices": names, "policy": to_fra }))
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("10000"), "{message}");
    let rows: String = (0..1001).map(|i| format!("{PK},dev-{i:04}\n")).collect();
    let message = submit(
        &a,
        json!({ "product": PK, "csv": format!("productKey,deviceName\n{rows}"), "policy": to_fra }),
    )
    .await
    .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("1000"), "{message}");
    let message =
        submit(&a, json!({ "product": PK, "csv": "deviceName\nalpha-0001\n", "policy": to_fra }))
            .await
            .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("productKey,deviceName"), "{message}");
    let message = submit(
        &a,
        json!({ "product": PK, "devices": ["alpha-0001", "alpha-0001"], "policy": to_fra }),
    )
    .await
    .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("twice"), "{message}");
    let message = submit(
        &a,
        json!({ "product": PK, "devices": ["alpha-0001"], "policy": { "kind": "specified" } }),
    )
    .await
    .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("instance"), "{message}");
    let message = submit(
        &a,
        json!({ "product": PK, "devices": ["alpha-0001"], "policy": { "kind": "sideways" } }),
    )
    .await
    .error(StatusCode::BAD_REQUEST);
    assert!(message.contains("`policy.kind`") && message.contains("sideways"), "{message}");

    // Nearest access needs devices, one instance per region, and is never cross-account.
    let nearest = json!({ "kind": "nearest", "instances": ["alpha-sh", "alpha-fra"] });
    let message = submit(&a, json!({ "product": PK, "policy": nearest }))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("product alone"), "{message}");
    let message = submit(
        &a,
        json!({ "product": PK, "devices": ["alpha-0001"], "policy": nearest,
            "cross_account": { "account": "bravo", "code": "123456" } }),
    )
    .await
    .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("nearest"), "{message}");

    // Cross-account: no code, a wrong code, then a valid one, which works once.
    let cross = |account: &str, code: &str| {
        json!({ "product": PK, "devices": ["alpha-0001"],
            "policy": { "kind": "specified", "instance": "bravo-fra" },
            "cross_account": { "account": account, "code": code } })
    };
    let reply = api.post_empty("/v1/verification-codes", &b.key).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let issued = reply.json();
    assert_eq!(issued["expiresInSeconds"], 300);
    let code = issued["code"].as_str().unwrap().to_owned();
    assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()), "{code}");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let message = submit(&a, cross("bravo", "")).await.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("verification code"), "{message}");
    let message = submit(&a, cross("bravo", wrong)).await.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("verification code") && !message.contains(wrong), "{message}");
    let absent = json!({ "product": PK, "devices": ["alpha-0001"],
        "policy": { "kind": "specified", "instance": "bravo-fra" }, "cross_account": { "account": "bravo" } });
    let message = submit(&a, absent).await.error(StatusCode::BAD_REQUEST);
    assert!(message.contains("`code`"), "{message}");
    // The destination instance must be the destination account's.
    submit(
        &a,
        json!({ "product": PK, "devices": ["alpha-0001"],
        "policy": { "kind": "specified", "instance": "alpha-fra" },
        "cross_account": { "account": "bravo", "code": code } }),
    )
    .await
    .error(StatusCode::NOT_FOUND);
    submit(&a, cross("nobody", &code)).await.error(StatusCode::NOT_FOUND);
    submit(&a, cross("alpha", &code)).await.error(StatusCode::UNPROCESSABLE_ENTITY);
    // By name as well as by ID.
    let reply = submit(&a, cross("bravo Ltd", &code)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let task = reply.json();
    assert_eq!(task["destination_account"], "bravo");
    assert_eq!(task["state"], "Initializing");
    assert_eq!(task["device_count"], 1);
    assert_eq!(
        reply.headers[header::LOCATION],
        format!("/v1/distribution-tasks/{}", task["id"].as_str().unwrap()).as_str()
    );
    let message = submit(&a, cross("bravo", &code)).await.error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("verification code"), "{message}");

    // A code expires after five minutes.
    let code = api.post_empty("/v1/verification-codes", &b.key).await.json()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    api.clock.advance(Duration::from_secs(5 * 60 + 1));
    submit(&a, cross("bravo", &code)).await.error(StatusCode::UNPROCESSABLE_ENTITY);

    // Too many wrong codes lock the guesser out of the destination's codes, even the right
    // one (only the guesser: see tests/verification_codes.rs).
    let code = api.post_empty("/v1/verification-codes", &b.key).await.json()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(submit(&a, cross("bravo", wrong)).await.status);
    }
    assert_eq!(statuses[..4], [StatusCode::UNPROCESSABLE_ENTITY; 4]);
    assert_eq!(statuses[4], StatusCode::TOO_MANY_REQUESTS);
    let message = submit(&a, cross("bravo", &code)).await.error(StatusCode::TOO_MANY_REQUESTS);
    assert!(message.contains("too many"), "{message}");

    // Specified region with no devices distributes the product alone.
    let reply = submit(&a, json!({ "product": PK, "policy": to_fra })).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.json()["device_count"], 0);
}

#[tokio::test]
async fn distribution_moves_devices_and_records_every_one() {
    let api = TestApi::start().await;
    let a = api.tenant_with_product("alpha", PK).await;
    let b = api.tenant_with_product("bravo", PK_B).await;
    api.devices(&a, PK, &["alpha-0001", "alpha-0002", "alpha-0003", "alpha-0004"]).await;
    // Tags, groups and topology do not move (PROTOCOL §5).
    let key = |name: &str| DeviceKey {
        product_key: PK.parse().unwrap(),
        device_name: name.parse().unwrap(),
    };
    api.plane
        .registry()
        .update_device(&key("alpha-0001"), |device| {
            device.tags.insert("floor".into(), "3".into());
            device.groups.push("lobby".into());
            device.topology.gateway = Some(key("alpha-0004"));
            Ok(())
        })
        .await
        .unwrap();
    let executor = tokio::spawn(api.plane.clone().run_executor(std::future::pending()));

    // Same account, specified region, by CSV (with a spreadsheet's byte-order mark).
    let csv = format!(
        "\u{feff}productKey,deviceName\n{PK},alpha-0001\n{PK},alpha-0002\n{PK},ghost-0001\n"
    );
    let id = api
        .task(&a, json!({ "product": PK, "csv": csv, "policy": { "kind": "specified", "instance": "alpha-fra" } }))
        .await;
    let task = settled(&api, &a.key, &id).await;
    assert_eq!(task["state"], "Distributed");
    assert_eq!((task["device_count"].as_u64(), task["handled"].as_u64()), (Some(3), Some(3)));
    assert_eq!((task["succeeded"].as_u64(), task["failed"].as_u64()), (Some(2), Some(1)));

    let reply = api.get(&format!("/v1/distribution-tasks/{id}/records.csv"), &a.key).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "text/csv; charset=utf-8");
    assert_eq!(
        reply.headers[header::CONTENT_DISPOSITION],
        format!("attachment; filename=\"{id}-records.csv\"").as_str()
    );
    assert_eq!(
        reply.text(),
        format!(
            "productKey,deviceName,result,reason\n{PK},alpha-0001,succeeded,\n{PK},alpha-0002,succeeded,\n{PK},ghost-0001,failed,device does not exist\n"
        )
    );

    let device = api.get(&format!("/v1/products/{PK}/devices/alpha-0001"), &a.key).await.json();
    assert_eq!(device["placement"], json!({ "kind": "specified", "instance": "alpha-fra" }));
    assert_eq!(device["tags"], json!({}));
    assert_eq!(device["status"], "inactive");
    let stored = api.plane.registry().device(&key("alpha-0001")).await.unwrap();
    assert!(stored.groups.is_empty() && stored.topology.gateway.is_none());
    let untouched = api.get(&format!("/v1/products/{PK}/devices/alpha-0003"), &a.key).await.json();
    assert_eq!(untouched["placement"], json!({ "kind": "home" }));

    // A distributed device is not deleted; a settled task is not retried.
    let message = api
        .delete(&format!("/v1/products/{PK}/devices/alpha-0001"), &a.key)
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("distribute it back"), "{message}");
    let message = api
        .post_empty(&format!("/v1/distribution-tasks/{id}/retry"), &a.key)
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains("Distributed"), "{message}");

    // Back home, then it can be deleted.
    let back = api
        .task(&a, json!({ "product": PK, "devices": ["alpha-0001"], "policy": { "kind": "specified", "instance": "alpha-sh" } }))
        .await;
    assert_eq!(settled(&api, &a.key, &back).await["succeeded"], 1);
    let device = api.get(&format!("/v1/products/{PK}/devices/alpha-0001"), &a.key).await.json();
    assert_eq!(device["placement"], json!({ "kind": "home" }));
    let reply = api.delete(&format!("/v1/products/{PK}/devices/alpha-0001"), &a.key).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);

    // Nearest access binds the devices to the candidate set.
    let id = api
        .task(
            &a,
            json!({ "product": PK, "devices": ["alpha-0003"],
            "policy": { "kind": "nearest", "instances": ["alpha-sh", "alpha-fra"] } }),
        )
        .await;
    assert_eq!(settled(&api, &a.key, &id).await["state"], "Distributed");
    let device = api.get(&format!("/v1/products/{PK}/devices/alpha-0003"), &a.key).await.json();
    assert_eq!(device["placement"]["kind"], "nearest");
    assert_eq!(device["placement"]["candidates"].as_array().unwrap().len(), 2);

    // Cross-account with B's code: the device goes to B's instance, and B sees a read-only
    // copy of A's product, while the device itself stays A's.
    let code = api.post_empty("/v1/verification-codes", &b.key).await.json()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = api
        .task(
            &a,
            json!({ "product": PK, "devices": ["alpha-0002"], "policy": { "kind": "specified" },
            "cross_account": { "account": "bravo", "code": code } }),
        )
        .await;
    let task = settled(&api, &a.key, &id).await;
    assert_eq!(task["state"], "Distributed");
    assert_eq!(task["policy"], json!({ "kind": "specified", "instance": "bravo-sh" }));
    let copies = api.get("/v1/product-copies", &b.key).await.json();
    let copies = copies["product_copies"].as_array().unwrap();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0]["instance"], "bravo-sh");
    assert_eq!(copies[0]["holder"], "bravo");
    assert_eq!(copies[0]["product"]["key"], PK);
    api.get(&format!("/v1/products/{PK}"), &b.key).await.error(StatusCode::NOT_FOUND);
    api.get(&format!("/v1/products/{PK}/devices/alpha-0002"), &b.key)
        .await
        .error(StatusCode::NOT_FOUND);
    let device = api.get(&format!("/v1/products/{PK}/devices/alpha-0002"), &a.key).await.json();
    assert_eq!(device["placement"], json!({ "kind": "specified", "instance": "bravo-sh" }));

    let tasks = api.get("/v1/distribution-tasks", &a.key).await.json();
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 4);
    let audit = api.get("/v1/audit", &a.key).await.json();
    let started = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "task.started")
        .count();
    assert_eq!(started, 4);

    let template = api.get("/v1/distribution-tasks/template.csv", &a.key).await;
    assert_eq!(template.text(), "productKey,deviceName\n");
    assert_eq!(
        template.headers[header::CONTENT_DISPOSITION],
        "attachment; filename=\"distribution-template.csv\""
    );
    executor.abort();
}

/// Polls a task until it settles.
async fn settled(api: &TestApi, key: &str, id: &str) -> Value {
    let poll = async {
        loop {
            let task = api.get(&format!("/v1/distribution-tasks/{id}"), key).await.json();
            if task["state"] == "Distributed" || task["state"] == "Failed" {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(HANG, poll).await.expect("task settles")
}

/// The hijack of the security issue: any API key could create an instance with any endpoint
/// (a new account created `aaa-evil` in Shanghai with host `evil.example`). Instances and
/// their endpoints are the operator's to provision; a tenant owns, lists and renews them.
#[tokio::test]
async fn tenants_cannot_create_instances_or_choose_endpoints() {
    let api = TestApi::start().await;
    api.tenant_with_product("acme", PK).await;
    // A second tenant, created with the operator token like every account.
    let evil = api.account("evil").await;
    let store_before = api.plane.registry().store().scan_prefix("instances/").await.unwrap();

    for body in [
        json!({ "id": "aaa-evil", "region": "cn-shanghai",
            "endpoint": { "host": "evil.example", "tcp_port": 1883 } }),
        json!({ "id": "aaa-evil", "region": "cn-shanghai" }),
        json!({}),
    ] {
        let reply = api.post("/v1/instances", &evil.key, body.clone()).await;
        let message = reply.error(StatusCode::FORBIDDEN);
        assert!(message.contains("provisioned by the platform operator"), "{body}: {message}");
    }
    // Nor through the operator's route with an API key.
    let provision = json!({ "owner": "evil", "id": "aaa-evil", "region": "cn-shanghai",
        "endpoint": { "host": "evil.example", "tcp_port": 1883 } });
    for key in [&evil.key, "garbage"] {
        let reply = api
            .request(
                Method::POST,
                "/v1/operator/instances",
                Some(key),
                Body::Json(provision.clone()),
            )
            .await;
        reply.error(StatusCode::UNAUTHORIZED);
    }
    let store_after = api.plane.registry().store().scan_prefix("instances/").await.unwrap();
    assert_eq!(store_before.entries, store_after.entries, "no instance was written");
    assert_eq!(api.get("/v1/instances", &evil.key).await.json()["instances"], json!([]));

    // The operator provisions one for the account: the owner sees, lists and renews it.
    let mut body = provision.clone();
    body.as_object_mut().unwrap().remove("owner");
    body["id"] = json!("evil-sh");
    body["endpoint"]["host"] = json!("mqtt-evil-sh.platform.example");
    let reply = api.provision("evil", body.clone()).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.json()["owner"], "evil");
    let listed = api.get("/v1/instances", &evil.key).await.json();
    assert_eq!(listed["instances"][0]["endpoint"]["host"], "mqtt-evil-sh.platform.example");
    let renewed = api.post("/v1/instances/evil-sh/renew", &evil.key, json!({ "days": 30 })).await;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.text());

    // The operator's input is checked too: unknown owner, an endpoint devices could not use.
    body["id"] = json!("nobody-sh");
    api.provision("nobody", body.clone()).await.error(StatusCode::NOT_FOUND);
    for endpoint in [
        json!({ "host": "evil\",\"host\":\"x", "tcp_port": 1883 }),
        json!({ "host": "two words", "tcp_port": 1883 }),
        json!({ "host": "ok.example", "tcp_port": 0 }),
    ] {
        body["endpoint"] = endpoint.clone();
        let message =
            api.provision("evil", body.clone()).await.error(StatusCode::UNPROCESSABLE_ENTITY);
        assert!(message.contains("endpoint"), "{endpoint}: {message}");
    }
    body["endpoint"] = json!({ "host": "ok.example", "tcp_port": 1883 });
    body["surprise"] = json!(true);
    api.provision("evil", body).await.error(StatusCode::BAD_REQUEST);
}
