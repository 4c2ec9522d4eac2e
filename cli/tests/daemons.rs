//! The separate daemons as real processes: `meridian edge` (control plane and bootstrap edge)
//! and two `meridian broker` processes that follow it over the internal watch API. A
//! distribution task is interrupted by `kill -9` of the control plane; after a restart it
//! resumes, every device moves once, the online device is notified and forced off its old
//! broker, and a restarted broker resumes from its replica.

// Test helpers outside `#[test]` functions panic on failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use common::{Daemon, field, free_port, generated_config};
use meridian_tests::raw::{self, ConnectReturnCode as Code};

const DEVICES: usize = 2_000;
const PRODUCT: &str = "daemonProd1";

struct Setup {
    dir: tempfile::TempDir,
    edge_config: PathBuf,
    admin: u16,
    internal: u16,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (admin, internal) = (free_port(), free_port());
    let text = generated_config(&[])
        .replace("listen = \"127.0.0.1:9100\"", "listen = \"\"")
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{admin}"))
        .replace("127.0.0.1:8082", &format!("127.0.0.1:{internal}"));
    let edge_config = dir.path().join("meridian.toml");
    std::fs::write(&edge_config, text).unwrap();
    Setup { dir, edge_config, admin, internal }
}

fn broker_config(setup: &Setup, instance: &str) -> PathBuf {
    let text = generated_config(&["--broker"])
        .replace("http://127.0.0.1:8082", &format!("http://127.0.0.1:{}", setup.internal))
        .replace("replica-iot-fra-1", &format!("replica-{instance}"))
        .replace("instance = \"iot-fra-1\"", &format!("instance = \"{instance}\""))
        .replace("listen = \"127.0.0.1:1884\"", "listen = \"127.0.0.1:0\"")
        .replace("listen = \"127.0.0.1:9101\"", "listen = \"\"");
    let path = setup.dir.path().join(format!("broker-{instance}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// One admin API request with the demo account's key; returns (status, body).
fn api(setup: &Setup, method: &str, path: &str, body: &str) -> (u16, String) {
    common::api(setup.admin, &setup.dir.path().join("data/demo-api-key"), method, path, body)
}

/// A raw CONNECT of one device; returns the CONNACK code and the open stream.
fn connect(broker: SocketAddr, n: usize) -> (Code, TcpStream) {
    common::connect(broker, PRODUCT, n)
}

#[test]
fn control_plane_kill_9_mid_task_and_broker_restart() {
    let setup = setup();
    let edge = Daemon::start(&["edge"], &setup.edge_config);
    edge.wait_for("meridian up: ready");

    let sh_config = broker_config(&setup, "iot-sh-1");
    let fra_config = broker_config(&setup, "iot-fra-1");
    let sh = Daemon::start(&["broker"], &sh_config);
    let sh_addr = field(&sh.wait_for("broker listening"), "addr");
    sh.wait_for("meridian broker: ready");
    let fra = Daemon::start(&["broker"], &fra_config);
    let fra_addr = field(&fra.wait_for("broker listening"), "addr");
    fra.wait_for("meridian broker: ready");

    // A product homed in Shanghai with 2,000 devices, created through the admin API.
    let product = format!(r#"{{"key":"{PRODUCT}","name":"Daemon","home_instance":"iot-sh-1"}}"#);
    assert_eq!(api(&setup, "POST", "/v1/products", &product).0, 201);
    let devices: Vec<String> = (0..DEVICES)
        .map(|n| format!(r#"{{"deviceName":"dev-{n:05}","deviceSecret":"secret-{n:05}"}}"#))
        .collect();
    let body = format!(r#"{{"devices":[{}]}}"#, devices.join(","));
    let (status, reply) = api(&setup, "POST", &format!("/v1/products/{PRODUCT}/devices"), &body);
    assert_eq!(status, 201, "{reply}");

    // The brokers learn of them through the watch API; one device goes online in Shanghai.
    let (code, mut online) = loop {
        let (code, stream) = connect(sh_addr, 7);
        if code == Code::Success {
            break (code, stream);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Code::Success);
    // Until Frankfurt's replica has the device it is unknown there (4); then misplaced (5).
    let code = (0..500)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(10));
            connect(fra_addr, 8).0
        })
        .find(|code| *code != Code::BadUserNamePassword);
    assert_eq!(code, Some(Code::NotAuthorized), "placed in Shanghai, not Frankfurt");

    // Distribute everything to Frankfurt and kill the control plane straight away.
    let names: Vec<String> = (0..DEVICES).map(|n| format!("\"dev-{n:05}\"")).collect();
    let task = format!(
        r#"{{"product":"{PRODUCT}","devices":[{}],"policy":{{"kind":"specified","instance":"iot-fra-1"}}}}"#,
        names.join(",")
    );
    let (status, reply) = api(&setup, "POST", "/v1/distribution-tasks", &task);
    assert_eq!(status, 201, "{reply}");
    let id = reply.split("\"id\":\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    edge.kill_9();

    // Restart: the executor resumes the task; the brokers' replicas reconnect by themselves.
    let edge = Daemon::start(&["edge"], &setup.edge_config);
    edge.wait_for("meridian up: ready");
    let settled = loop {
        let (status, reply) = api(&setup, "GET", &format!("/v1/distribution-tasks/{id}"), "");
        assert_eq!(status, 200, "{reply}");
        if reply.contains("\"state\":\"Distributed\"") || reply.contains("\"state\":\"Failed\"") {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(settled.contains("\"state\":\"Distributed\""), "{settled}");
    let (_, csv) = api(&setup, "GET", &format!("/v1/distribution-tasks/{id}/records.csv"), "");
    assert_eq!(csv.lines().count(), DEVICES + 1, "one record per device, none twice");
    assert_eq!(csv.lines().filter(|l| l.ends_with(",succeeded,")).count(), DEVICES);

    // The online device hears the notify (without having subscribed) and is disconnected.
    let mut seen = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match online.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("/thing/bootstrap/notify") && text.contains("thing.bootstrap.notify"),
        "{text}"
    );

    // Frankfurt accepts the moved devices, Shanghai refuses them.
    let accepted = |addr, n| loop {
        let (code, _) = connect(addr, n);
        if code == Code::Success {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    accepted(fra_addr, 7);
    assert_eq!(connect(sh_addr, 9).0, Code::NotAuthorized);

    // A restarted broker resumes from its replica (no full download) and still serves.
    fra.terminate();
    let fra = Daemon::start(&["broker"], &fra_config);
    let fra_addr = field(&fra.wait_for("broker listening"), "addr");
    fra.wait_for("meridian broker: ready");
    assert_eq!(connect(fra_addr, 1999).0, Code::Success);

    fra.terminate();
    sh.terminate();
    edge.terminate();
}

/// PROTOCOL §2 with `meridian broker` processes: the broker writes a device's subscriptions through
/// the control plane's internal API, and restores them after a clean-session reconnect and at
/// the other broker process after a distribution, with no SUBSCRIBE from the device.
#[test]
fn device_subscriptions_are_kept_across_broker_processes() {
    use meridian_tests::raw::blocking::read_packet;
    use meridian_tests::raw::{Packet, QoS, subscribe_packet};

    let setup = setup();
    let edge = Daemon::start(&["edge"], &setup.edge_config);
    edge.wait_for("meridian up: ready");
    let sh = Daemon::start(&["broker"], &broker_config(&setup, "iot-sh-1"));
    let sh_addr = field(&sh.wait_for("broker listening"), "addr");
    sh.wait_for("meridian broker: ready");
    let fra = Daemon::start(&["broker"], &broker_config(&setup, "iot-fra-1"));
    let fra_addr = field(&fra.wait_for("broker listening"), "addr");
    fra.wait_for("meridian broker: ready");

    let product = format!(r#"{{"key":"{PRODUCT}","name":"Daemon","home_instance":"iot-sh-1"}}"#);
    assert_eq!(api(&setup, "POST", "/v1/products", &product).0, 201);
    let body = r#"{"devices":[{"deviceName":"dev-00000","deviceSecret":"secret-00000"}]}"#;
    let (status, reply) = api(&setup, "POST", &format!("/v1/products/{PRODUCT}/devices"), body);
    assert_eq!(status, 201, "{reply}");
    let filter = format!("/{PRODUCT}/dev-00000/user/get");

    // Connected (once the replica has the device), subscribed, gone.
    let accepted = |addr| loop {
        let (code, stream) = connect(addr, 0);
        if code == Code::Success {
            return stream;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut device = accepted(sh_addr);
    device.write_all(&subscribe_packet(1, &[(filter.as_str(), QoS::AtLeastOnce)])).unwrap();
    assert!(matches!(read_packet(&mut device).unwrap(), Packet::SubAck(_)));
    device.write_all(&[0xE0, 0x00]).unwrap();
    drop(device);

    // A standard user of the broker sends the downlink; the device, back with clean session
    // and without SUBSCRIBE, receives it.
    let downlink = |addr, payload: &str| {
        let login = Some(("demo", "demo-password"));
        let mut user = TcpStream::connect(addr).unwrap();
        user.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let connack = raw::blocking::handshake(&mut user, &raw::connect_packet("ops", login, 60));
        assert_eq!(connack.unwrap().code, Code::Success);
        let publish = mqttbytes_publish(&filter, payload);
        user.write_all(&publish).unwrap();
        assert!(matches!(read_packet(&mut user).unwrap(), Packet::PubAck(_)));
    };
    let received = |device: &mut TcpStream, payload: &str| loop {
        match read_packet(device).unwrap() {
            Packet::Publish(publish) if publish.topic.ends_with("/user/get") => {
                assert_eq!(publish.payload.as_ref(), payload.as_bytes());
                return;
            }
            _ => {}
        }
    };
    let mut device = accepted(sh_addr);
    downlink(sh_addr, "at-sh");
    received(&mut device, "at-sh");

    // Committed at the control plane (read through its internal API with the node token).
    let token = std::fs::read_to_string(setup.dir.path().join("data/node.token")).unwrap();
    let key = format!("subscriptions/{PRODUCT}/dev-00000");
    loop {
        let mut stream = TcpStream::connect(("127.0.0.1", setup.internal)).unwrap();
        write!(
            stream,
            "GET /internal/v1/get?key={key} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token.trim()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        if response.contains(&format!("\"key\":\"{key}\"")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // Distributed to Frankfurt: notified and forced off Shanghai, restored at Frankfurt.
    let task = format!(
        r#"{{"product":"{PRODUCT}","devices":["dev-00000"],"policy":{{"kind":"specified","instance":"iot-fra-1"}}}}"#
    );
    let (status, reply) = api(&setup, "POST", "/v1/distribution-tasks", &task);
    assert_eq!(status, 201, "{reply}");
    loop {
        match read_packet(&mut device) {
            Ok(Packet::Publish(publish)) if publish.topic.ends_with("/thing/bootstrap/notify") => {
                break;
            }
            Ok(_) => {}
            Err(error) => panic!("closed before the notify: {error}"),
        }
    }
    let mut device = accepted(fra_addr);
    downlink(fra_addr, "at-fra");
    received(&mut device, "at-fra");

    fra.terminate();
    sh.terminate();
    edge.terminate();
}

/// A QoS 1 PUBLISH's bytes.
fn mqttbytes_publish(topic: &str, payload: &str) -> Vec<u8> {
    let mut publish = raw::Publish::new(topic, raw::QoS::AtLeastOnce, payload.as_bytes().to_vec());
    publish.pkid = 1;
    raw::encode(&raw::Packet::Publish(publish))
}
