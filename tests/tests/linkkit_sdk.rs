//! The vendor's own Python device SDK, `aliyun-iot-linkkit` 1.2.13 from PyPI, as a real device
//! against brokers on loopback: it signs its CONNECT itself, posts properties an application
//! client sees, subscribes to its `/user/get`, gets a downlink there after a broker-side kick
//! (the SDK reconnects with clean session and does not subscribe again: PROTOCOL §2), and hears the
//! bootstrap notify when distributed through the control plane, then finds its subscription at
//! the destination after re-bootstrapping.
//!
//! The SDK wants paho-mqtt 1.x, so it lives in its own virtual environment, which `.ci/run`
//! creates at `target/linkkit-venv`; `MERIDIAN_LINKKIT_PYTHON` names another interpreter. Under
//! CI (`CI=true`) a missing SDK fails the test; elsewhere it is skipped with a message.

// Test helpers outside `#[test]` functions panic on failure by design.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use meridian_broker::Broker;
use meridian_broker::router::Kick;
use meridian_control::ControlPlane;
use meridian_control::distribution::{PolicyRequest, TaskRequest};
use meridian_tests::{
    ACCOUNT, APPLICATION, Client, FRANKFURT, HANG, PRODUCT, SHANGHAI, TestRegistry,
};
use rumqttc::{MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const LAMP: &str = "linkkit-lamp";
const SECRET: &str = "linkkit-lamp-secret-0123456789ab";

/// The venv's interpreter, or `None` (after saying why) when the test should be skipped.
fn sdk_python() -> Option<PathBuf> {
    let python = match std::env::var_os("MERIDIAN_LINKKIT_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/linkkit-venv/bin/python"),
    };
    let installed = std::process::Command::new(&python)
        .args(["-c", "import linkkit.linkkit"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if installed {
        return Some(python);
    }
    let why = format!(
        "the linkkit SDK is not installed at {} (run .ci/run, or set MERIDIAN_LINKKIT_PYTHON)",
        python.display()
    );
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{why}");
    }
    eprintln!("skipping: {why}");
    None
}

/// One run of `tests/linkkit/driver.py`: the SDK connected to one broker.
struct Sdk {
    child: Child,
    stdin: ChildStdin,
    events: Lines<BufReader<ChildStdout>>,
}

impl Sdk {
    fn start(python: &PathBuf, broker: SocketAddr) -> Sdk {
        let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("linkkit/driver.py");
        let mut child = Command::new(python)
            .arg(driver)
            .args([broker.ip().to_string(), broker.port().to_string()])
            .args([PRODUCT, LAMP, SECRET])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the SDK driver");
        let stdin = child.stdin.take().unwrap();
        let events = BufReader::new(child.stdout.take().unwrap()).lines();
        Sdk { child, stdin, events }
    }

    /// Waits for the next event named `name`, skipping others.
    async fn event(&mut self, name: &str) -> Value {
        loop {
            let line = tokio::time::timeout(HANG, self.events.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {name:?} event from the SDK"))
                .unwrap()
                .unwrap_or_else(|| panic!("the SDK driver exited before {name:?}"));
            let event: Value = serde_json::from_str(&line).unwrap();
            if event["event"] == name {
                return event;
            }
        }
    }

    /// Waits for a message on `topic`; returns its payload.
    async fn message(&mut self, topic: &str) -> String {
        loop {
            let event = self.event("message").await;
            if event["topic"] == topic {
                return event["payload"].as_str().unwrap().to_owned();
            }
        }
    }

    async fn command(&mut self, line: &str) {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    async fn quit(mut self) {
        self.command("quit").await;
        let _ = tokio::time::timeout(HANG, self.child.wait()).await;
    }
}

async fn application(addr: SocketAddr) -> Client {
    let mut options = MqttOptions::new("backend", addr.ip().to_string(), addr.port());
    options.set_credentials(APPLICATION.0, APPLICATION.1);
    Client::connect(options).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vendor_python_sdk_as_a_device() {
    let Some(python) = sdk_python() else { return };
    let registry = TestRegistry::new().await;
    let device = registry.device(LAMP, SECRET).await;
    // The SDK never answers the notify; don't wait for it.
    let shanghai = registry.broker(SHANGHAI, |c| c.notify_reply_wait = Duration::ZERO).await;
    let frankfurt = registry.broker(FRANKFURT, |_| {}).await;
    let user_get = format!("/{PRODUCT}/{LAMP}/user/get");

    let mut app = application(shanghai.addr).await;
    app.client
        .subscribe(format!("/sys/{PRODUCT}/+/thing/event/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    app.expect(|p| matches!(p, Packet::SubAck(_))).await;

    // Its own signature, clean session.
    let mut sdk = Sdk::start(&python, shanghai.addr);
    let connected = sdk.event("connected").await;
    assert_eq!(connected["rc"], 0, "{connected}");

    // Properties posted reach the application.
    sdk.command(r#"post {"temperature":21.5}"#).await;
    let posted = sdk.event("posted").await;
    assert_eq!(posted["rc"], 0, "{posted}");
    let post = app.publish().await;
    assert_eq!(post.topic, format!("/sys/{PRODUCT}/{LAMP}/thing/event/property/post"));
    let body: Value = serde_json::from_slice(&post.payload).unwrap();
    assert_eq!(body["method"], "thing.event.property.post");
    assert_eq!(body["params"]["temperature"], 21.5);

    // Subscribed, a downlink arrives.
    sdk.command(&format!("subscribe {user_get}")).await;
    let granted = sdk.event("subscribed").await;
    assert_eq!(granted["granted"], serde_json::json!([1]), "{granted}");
    app.client.publish(&user_get, QoS::AtLeastOnce, false, "before-kick").await.unwrap();
    assert_eq!(sdk.message(&user_get).await, "before-kick");

    // Kicked by the broker, the SDK reconnects by itself without subscribing again, and the
    // downlink still arrives.
    let session = Broker::device_session_id(&device);
    assert!(shanghai.daemon.broker.router().kick(&session, Kick::SlowConsumer));
    sdk.event("disconnected").await;
    let again = sdk.event("connected").await;
    assert_eq!(again["rc"], 0, "{again}");
    app.client.publish(&user_get, QoS::AtLeastOnce, false, "after-reconnect").await.unwrap();
    assert_eq!(sdk.message(&user_get).await, "after-reconnect");

    // Distributed to Frankfurt through the control plane: the bootstrap notify arrives.
    let plane = ControlPlane::new(registry.registry.clone(), "operator-token");
    let request = TaskRequest {
        product: PRODUCT.parse().unwrap(),
        devices: vec![LAMP.into()],
        csv: None,
        policy: PolicyRequest::Specified { instance: Some(FRANKFURT.parse().unwrap()) },
        cross_account: None,
    };
    let task = plane.submit_task(&ACCOUNT.parse().unwrap(), request).await.unwrap();
    plane.drive(&task.id).await.unwrap();
    let notify = sdk.message(&format!("/sys/{PRODUCT}/{LAMP}/thing/bootstrap/notify")).await;
    let notify: Value = serde_json::from_str(&notify).unwrap();
    assert_eq!(notify["method"], "thing.bootstrap.notify");
    assert_eq!(notify["params"], serde_json::json!({"cmd": 0}));
    sdk.event("disconnected").await;
    sdk.quit().await;

    // Re-bootstrapped (the firmware's job: here a new SDK instance at the new endpoint), its
    // subscription is waiting at Frankfurt.
    registry.sync(&frankfurt).await;
    let app = application(frankfurt.addr).await;
    let mut sdk = Sdk::start(&python, frankfurt.addr);
    let connected = sdk.event("connected").await;
    assert_eq!(connected["rc"], 0, "{connected}");
    app.client.publish(&user_get, QoS::AtLeastOnce, false, "at-frankfurt").await.unwrap();
    assert_eq!(sdk.message(&user_get).await, "at-frankfurt");
    sdk.quit().await;
}
