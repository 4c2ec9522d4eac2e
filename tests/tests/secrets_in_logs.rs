//! Secrets never reach logs, error answers or metrics (issue 8, PROTOCOL §9).
//!
//! One flow through the admin API and a broker, in-process, with every log line of every crate
//! captured at TRACE level and every metric recorded: accounts and API keys (right and wrong), device secrets given,
//! generated and imported, a verification code requested and a wrong one tried, device
//! CONNECTs with right and wrong signatures, a standard user with a wrong password. Then no
//! secret may appear in the captured logs, the rendered metrics, or any error answer.
//!
//! The only test in this file: the subscriber and the recorder are process-wide (nextest runs
//! each test in its own process), so tasks on every runtime thread are captured too.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use meridian_control::ControlPlane;
use meridian_registry::signature::{SdkShape, sign_connect};
use meridian_tests::{ACCOUNT, Client, HANG, PRODUCT, SHANGHAI, TestRegistry, USER, user_options};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const OPERATOR_TOKEN: &str = "operator-token-7f3a9c21e4";
const GIVEN_SECRET: &str = "given-secret-Q8vX2mZk";
const IMPORTED_SECRET: &str = "imported-secret-J4nR7wLp";
const WRONG_SECRET: &str = "wrong-secret-H5tB9cYe";
const WRONG_PASSWORD: &str = "wrong-password-K2dF6sGa";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_metrics_or_errors() {
    let logs = capture_logs();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder");
    let registry = TestRegistry::new().await;
    let plane = ControlPlane::new(registry.registry.clone(), OPERATOR_TOKEN);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let api = listener.local_addr().expect("addr");
    tokio::spawn(meridian_control::api::serve(listener, plane.clone(), std::future::pending()));
    let broker = registry.broker(SHANGHAI, |_| {}).await;
    let mut secrets = vec![OPERATOR_TOKEN.to_owned(), USER.1.to_owned(), WRONG_PASSWORD.to_owned()];
    let mut errors = Vec::new();

    // Accounts and API keys: the operator creates one (its key is shown once), the tenant
    // makes another; a wrong secret for a real key id is refused.
    let (_, created) = http(
        api,
        "POST",
        "/v1/accounts",
        OPERATOR_TOKEN,
        Body::Json(json!({
            "id": "beta", "name": "Beta", "kind": "individual"
        })),
    )
    .await;
    let beta_key = created["api_key"].as_str().expect("api key shown once").to_owned();
    let acme_key = plane.create_api_key(&ACCOUNT.parse().expect("id")).await.expect("key");
    for key in [&beta_key, &acme_key] {
        secrets.push(key.split_once('.').expect("id.secret").1.to_owned());
    }
    let (key_id, _) = acme_key.split_once('.').expect("id.secret");
    let near_miss = format!("{key_id}.{WRONG_SECRET}");
    let (status, body) = http(api, "GET", "/v1/account", &near_miss, Body::None).await;
    assert_eq!(status, 401);
    errors.push(body);
    secrets.push(WRONG_SECRET.to_owned());

    // Device secrets: given, generated (shown once), imported by CSV; a malformed one whose
    // decoding error must not quote it.
    let devices = format!("/v1/products/{PRODUCT}/devices");
    let (status, created) = http(api, "POST", &devices, &acme_key, Body::Json(json!({
        "devices": [{"deviceName": "leak-1", "deviceSecret": GIVEN_SECRET}, {"deviceName": "leak-2"}]
    })))
    .await;
    assert_eq!(status, 201, "{created}");
    let generated = created["devices"][1]["deviceSecret"].as_str().expect("generated").to_owned();
    secrets.extend([GIVEN_SECRET.to_owned(), generated.clone(), IMPORTED_SECRET.to_owned()]);
    let csv = format!("deviceName,deviceSecret\nleak-3,{IMPORTED_SECRET}\n");
    let (status, _) =
        http(api, "POST", &format!("{devices}/import"), &acme_key, Body::Csv(csv)).await;
    assert_eq!(status, 201);
    let bad_secret = "bad secret with spaces 9Xq";
    let (status, body) = http(
        api,
        "POST",
        &devices,
        &acme_key,
        Body::Json(json!({
            "devices": [{"deviceName": "leak-4", "deviceSecret": bad_secret}]
        })),
    )
    .await;
    assert_eq!(status, 400);
    errors.push(body);
    let (status, body) = http(
        api,
        "POST",
        &devices,
        &acme_key,
        Body::Json(json!({
            "devices": [{"deviceName": "leak-5", "deviceSecret": 918_273_645}]
        })),
    )
    .await;
    assert_eq!(status, 400);
    errors.push(body);
    secrets.extend([bad_secret.to_owned(), "918273645".to_owned()]);

    // A verification code for beta, then a cross-account task from acme with a wrong one.
    let (status, code) = http(api, "POST", "/v1/verification-codes", &beta_key, Body::None).await;
    assert_eq!(status, 201);
    let code = code["code"].as_str().expect("code").to_owned();
    let wrong_code = if code == "000000" { "111111" } else { "000000" };
    let (status, body) = http(
        api,
        "POST",
        "/v1/distribution-tasks",
        &acme_key,
        Body::Json(json!({
            "product": PRODUCT, "devices": ["leak-1"], "policy": {"kind": "specified"},
            "cross_account": {"account": "beta", "code": wrong_code}
        })),
    )
    .await;
    assert!(status >= 400, "wrong code refused: {status}");
    errors.push(body);

    // The broker: devices with right and wrong signatures, a user with a wrong password.
    registry.sync(&broker).await;
    for (device, secret) in [("leak-1", GIVEN_SECRET), ("leak-2", generated.as_str())] {
        let right = sign_connect(SdkShape::CSdk, PRODUCT, device, secret, None);
        let wrong = sign_connect(SdkShape::Python, PRODUCT, device, WRONG_SECRET, None);
        assert_eq!(
            mqtt_connect(broker.addr, &right.client_id, &right.username, &right.password).await,
            0
        );
        assert_eq!(
            mqtt_connect(broker.addr, &wrong.client_id, &wrong.username, &wrong.password).await,
            4
        );
        secrets.extend([right.password.clone(), right.password.to_lowercase(), wrong.password]);
    }
    let mut options = user_options(broker.addr, "wrong-user");
    options.set_credentials(USER.0, WRONG_PASSWORD);
    assert!(Client::connect(options).await.is_err());
    assert!(Client::connect(user_options(broker.addr, "right-user")).await.is_ok());

    broker.daemon.shutdown().await;
    let logs = String::from_utf8_lossy(&logs.lock().expect("log buffer")).into_owned();
    assert!(logs.contains("CONNECT refused"), "the capture works: {} bytes", logs.len());
    let metrics = metrics.render();
    assert!(metrics.contains("bad_username_password"), "the recorder works: {metrics}");
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs: {secret}");
        assert!(!metrics.contains(secret.as_str()), "a secret reached the metrics: {secret}");
        for error in &errors {
            assert!(!error.to_string().contains(secret.as_str()), "{secret} in {error}");
        }
    }
    // Six digits could occur inside some other number; only a standalone token would be it.
    for candidate in [code.as_str(), wrong_code] {
        assert!(!standalone(&logs, candidate), "a verification code reached the logs");
        assert!(!standalone(&metrics, candidate), "a verification code reached the metrics");
    }
}

/// Installs a process-wide TRACE subscriber writing into the returned buffer.
fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    #[derive(Clone)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let writer = Buffer(buffer.clone());
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    buffer
}

fn standalone(text: &str, token: &str) -> bool {
    text.match_indices(token).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + token.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

enum Body {
    None,
    Json(Value),
    Csv(String),
}

/// One request over a fresh connection; the status and the JSON body (`Null` if none).
async fn http(addr: SocketAddr, method: &str, path: &str, key: &str, body: Body) -> (u16, Value) {
    let (content_type, body) = match body {
        Body::None => ("application/json", String::new()),
        Body::Json(value) => ("application/json", value.to_string()),
        Body::Csv(text) => ("text/csv", text),
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    tokio::time::timeout(HANG, stream.read_to_string(&mut response))
        .await
        .expect("answer in time")
        .expect("read");
    let status = response.get(9..12).and_then(|s| s.parse().ok()).expect("status line");
    let json = response
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

/// A raw MQTT 3.1.1 CONNECT; the CONNACK code.
async fn mqtt_connect(addr: SocketAddr, client_id: &str, username: &str, password: &str) -> u8 {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60];
    for field in [client_id, username, password] {
        body.extend_from_slice(&u16::try_from(field.len()).expect("short").to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let byte = u8::try_from(len % 128).expect("7 bits");
        len /= 128;
        packet.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(&packet).await.expect("send");
    let mut connack = [0u8; 4];
    tokio::time::timeout(HANG, stream.read_exact(&mut connack))
        .await
        .expect("CONNACK in time")
        .expect("CONNACK");
    connack[3]
}
