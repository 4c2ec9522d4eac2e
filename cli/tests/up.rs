//! The `meridian` binary end to end: the documented default parses, and `meridian up` seeds the
//! store, serves, and stops cleanly on SIGTERM, twice over the same data.

// Test helpers outside `#[test]` functions panic on failure by design.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use meridian_registry::store::{RedbStore, Store};
use meridian_tests::raw::{self, ConnectReturnCode as Code};

fn meridian() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
}

/// Starts `meridian up` and returns once it logged that it is ready, with the addresses its
/// brokers and its bootstrap edge listen on.
fn start_up(
    config: &std::path::Path,
) -> (UpProcess, Vec<std::net::SocketAddr>, Option<std::net::SocketAddr>) {
    let mut child = meridian()
        .args(["up", "--config"])
        .arg(config)
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .env_remove("MERIDIAN_SECRET_KEY")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meridian up");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut brokers = Vec::new();
    let mut edge = None;
    loop {
        let line = lines.next().expect("meridian up exited before ready").expect("read stderr");
        if line.contains("broker listening") {
            let addr = line.split("addr=").nth(1).expect("addr field");
            brokers.push(addr.split_whitespace().next().unwrap().parse().expect("socket address"));
        }
        if line.contains("bootstrap edge listening") {
            let addr = line.split("addr=").nth(1).expect("addr field");
            edge = Some(addr.split_whitespace().next().unwrap().parse().expect("socket address"));
        }
        if line.contains("meridian up: ready") {
            break;
        }
    }
    // Keep draining (and keeping) the log so the child never blocks on a full pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let _ = tx.send(rest.join("\n"));
    });
    (UpProcess { child, log: rx }, brokers, edge)
}

struct UpProcess {
    child: Child,
    log: std::sync::mpsc::Receiver<String>,
}

/// Stops `meridian up` with SIGTERM, checks it exited cleanly, and returns its log.
fn terminate(mut up: UpProcess) -> String {
    let status = Command::new("kill").arg("-TERM").arg(up.child.id().to_string()).status();
    assert!(status.expect("run kill").success());
    let exit = up.child.wait().expect("wait for meridian up");
    assert!(exit.success(), "meridian up exited with {exit}");
    up.log.recv().unwrap_or_default()
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to metrics");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn generate_config_prints_the_documented_default() {
    let output = meridian().arg("generate-config").output().expect("run generate-config");
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("[store]") && text.contains("[[regions]]"), "{text}");
    assert!(text.lines().filter(|l| l.starts_with('#')).count() > 5, "documented with comments");
}

#[tokio::test]
async fn up_seeds_the_store_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("meridian.toml");
    // Ephemeral ports, so the test never collides with anything else on the machine. The
    // metrics exporter binds its own address, so borrow a free port for it.
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = String::from_utf8(meridian().arg("generate-config").output().unwrap().stdout)
        .unwrap()
        .replace("../data/", "data/")
        .replace("mqtt_port = 1883", "mqtt_port = 1883\nlisten = \"127.0.0.1:0\"")
        .replace("mqtt_port = 1884", "mqtt_port = 1884\nlisten = \"127.0.0.1:0\"")
        .replace("mqtt_port = 1885", "mqtt_port = 1885\nlisten = \"127.0.0.1:0\"")
        .replace("listen = \"127.0.0.1:9100\"", &format!("listen = \"{metrics}\""))
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("127.0.0.1:8081", "127.0.0.1:0")
        .replace("127.0.0.1:8082", "127.0.0.1:0");
    std::fs::write(&config, text).unwrap();

    let (up, brokers, edge) = start_up(&config);
    assert_eq!(brokers.len(), 3, "one broker per configured instance");
    for broker in &brokers {
        assert_eq!(mqtt_connect(*broker, "demo", "demo-password"), Code::Success);
        assert_eq!(mqtt_connect(*broker, "demo", "wrong"), Code::BadUserNamePassword);
    }
    // The region-pinned bootstrap answers each region's configured public instance, in a reply
    // the vendor C SDK reads: Shanghai is 0, Virginia 3, Frankfurt 4 in its numbering.
    let edge = edge.expect("the edge logged its address");
    for (number, port) in [(0, 1883), (3, 1885), (4, 1884)] {
        let reply = http_get(edge, &format!("/auth/bootstrap/regionId/{number}"));
        let (reply, _) = meridian_edge::sdk::parse(reply.as_bytes())
            .expect("the SDK reads the reply")
            .expect("complete");
        let endpoint = reply.endpoint().expect("an endpoint");
        assert_eq!((endpoint.host.as_str(), endpoint.port), ("127.0.0.1", port), "{number}");
    }
    let exposition = http_get(metrics, "/metrics");
    assert!(exposition.contains("meridian_broker_connects_total"), "{exposition}");
    assert!(exposition.contains("result=\"bad_username_password\""), "{exposition}");
    let logs = terminate(up);
    // Secrets never reach the logs, even at debug level.
    assert!(!logs.contains("demo-password") && !logs.contains("wrong"), "secret in logs");
    let key_file = dir.path().join("data/secret.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "sealing key readable by the owner only");
    }

    // A second start reuses the key and finds everything in place.
    terminate(start_up(&config).0);
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key);

    let store = RedbStore::open(dir.path().join("data/meridian.redb")).unwrap();
    let regions = store.scan_prefix("regions/").await.unwrap().entries;
    let instances = store.scan_prefix("instances/").await.unwrap().entries;
    assert_eq!(regions.len(), 3);
    assert_eq!(instances.len(), 3);
    assert!(store.get("accounts/demo").await.unwrap().is_some());
}

#[test]
fn up_refuses_a_broken_config_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[store]\npath = 'x'\n").unwrap();
    let output = meridian().args(["up", "--config"]).arg(&config).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("secrets"), "names the missing section: {stderr}");
}

/// A raw MQTT 3.1.1 CONNECT; returns the CONNACK return code.
fn mqtt_connect(addr: std::net::SocketAddr, username: &str, password: &str) -> Code {
    let connect = raw::connect_packet("up-test", Some((username, password)), 30);
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to broker");
    raw::blocking::handshake(&mut stream, &connect).unwrap().code
}
