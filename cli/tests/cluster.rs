//! Meridian past one machine, as real processes on loopback: a 3-node NATS JetStream cluster
//! (domain `hub`, the registry bucket at R3), control-plane replicas, stateless bootstrap edges
//! and brokers reading the bucket, and a region whose edge and broker read a mirror on its own
//! leaf node. The failures of issue 13: a NATS node killed with `kill -9` during a 10,000-device
//! distribution, a control-plane replica killed in the middle of a task, and a region cut off
//! from the hub.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{
    Daemon, accepted, api, connect, devices_body, field, free_port, generated_config, id_of,
};
use meridian_tests::device::SimDevice;
use meridian_tests::nats::{LeafNode, NatsCluster};
use meridian_tests::raw::ConnectReturnCode as Code;

const PRODUCT: &str = "clusterProd1";
const BUCKET: &str = "meridian";
/// Devices per creation call: what one atomic JetStream batch holds (two ops per device).
const CREATE_CHUNK: usize = 400;

/// Where one process reads the registry: the hub itself, or its region's leaf and mirror.
#[derive(Clone, Copy)]
enum Reads<'a> {
    Hub,
    Leaf { url: &'a str, region: &'a str },
}

/// The shared pieces: one directory (configs, the sealing key, tokens, the demo API key, all
/// shared by every replica as an operator would distribute them) and the hub.
struct Site {
    dir: tempfile::TempDir,
    hub: NatsCluster,
}

impl Site {
    async fn start() -> Site {
        // Kept when MERIDIAN_KEEP_TEST_DIR is set, to read the daemons' logs.
        let mut dir = tempfile::tempdir().expect("tempdir");
        if std::env::var_os("MERIDIAN_KEEP_TEST_DIR").is_some() {
            dir.disable_cleanup(true);
            eprintln!("test directory: {}", dir.path().display());
        }
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        // The sealing key every control replica and broker shares.
        std::fs::write(dir.path().join("data/secret.key"), "ab".repeat(32)).expect("key");
        Site { dir, hub: NatsCluster::start(3).await }
    }

    fn store_section(&self, reads: Reads<'_>) -> String {
        let (servers, read) = match reads {
            Reads::Hub => (self.hub.urls(), String::new()),
            Reads::Leaf { url, region } => (
                vec![url.to_owned()],
                format!(
                    "[store.nats.read]\ndomain = \"{region}\"\nstream = \"KV_{BUCKET}_{region}\"\n"
                ),
            ),
        };
        let servers: Vec<String> = servers.iter().map(|url| format!("{url:?}")).collect();
        format!(
            "backend = \"nats\"\n[store.nats]\nservers = [{}]\nbucket = \"{BUCKET}\"\nreplicas = 3\ndomain = \"hub\"\n{read}",
            servers.join(", ")
        )
    }

    /// `meridian.toml` for a control replica (admin API on `admin`) or an edge.
    fn config(&self, name: &str, admin: u16, reads: Reads<'_>) -> PathBuf {
        let text = generated_config(&[])
            .replace(
                "backend = \"redb\"\npath = \"data/meridian.redb\"\n",
                &self.store_section(reads),
            )
            .replace("listen = \"127.0.0.1:9100\"", "listen = \"\"")
            .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
            .replace("127.0.0.1:8081", &format!("127.0.0.1:{admin}"));
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// A regional broker's configuration, reading the registry as `reads` says.
    fn broker_config(&self, instance: &str, reads: Reads<'_>) -> PathBuf {
        let generated = generated_config(&["--broker"]);
        let mut text = without_sections(&generated, &["control_plane", "replica"]);
        text = text
            .replace("instance = \"iot-fra-1\"", &format!("instance = \"{instance}\""))
            .replace("listen = \"127.0.0.1:1884\"", "listen = \"127.0.0.1:0\"")
            .replace("listen = \"127.0.0.1:9101\"", "listen = \"\"");
        text = format!("[store]\n{}\n{text}", self.store_section(reads));
        let path = self.dir.path().join(format!("broker-{instance}.toml"));
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn api(&self, admin: u16, method: &str, path: &str, body: &str) -> (u16, String) {
        api(admin, &self.dir.path().join("data/demo-api-key"), method, path, body)
    }

    /// The same request on each admin port in turn until one answers (a replica or its NATS
    /// node may be down).
    fn api_any(&self, admins: &[u16], method: &str, path: &str, body: &str) -> (u16, String) {
        for _ in 0..600 {
            for admin in admins {
                if std::net::TcpStream::connect(("127.0.0.1", *admin)).is_err() {
                    continue;
                }
                let (status, reply) = self.api(*admin, method, path, body);
                if status < 500 {
                    return (status, reply);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no control replica answered {method} {path}");
    }

    /// The product (homed in Shanghai) and devices `0..n`, created in calls that fit a batch.
    fn create_devices(&self, admins: &[u16], range: std::ops::Range<usize>) {
        let mut from = range.start;
        while from < range.end {
            let to = (from + CREATE_CHUNK).min(range.end);
            let path = format!("/v1/products/{PRODUCT}/devices");
            let (status, reply) = self.api_any(admins, "POST", &path, &devices_body(from..to));
            assert_eq!(status, 201, "{reply}");
            from = to;
        }
    }

    fn create_product(&self, admins: &[u16]) {
        let product =
            format!(r#"{{"key":"{PRODUCT}","name":"Cluster","home_instance":"iot-sh-1"}}"#);
        assert_eq!(self.api_any(admins, "POST", "/v1/products", &product).0, 201);
    }

    /// Submits the distribution of devices `0..n` to Frankfurt; returns the task ID.
    fn distribute(&self, admins: &[u16], n: usize) -> String {
        let names: Vec<String> = (0..n).map(|i| format!("\"dev-{i:05}\"")).collect();
        let task = format!(
            r#"{{"product":"{PRODUCT}","devices":[{}],"policy":{{"kind":"specified","instance":"iot-fra-1"}}}}"#,
            names.join(",")
        );
        let (status, reply) = self.api_any(admins, "POST", "/v1/distribution-tasks", &task);
        assert_eq!(status, 201, "{reply}");
        id_of(&reply)
    }

    /// The task's JSON once it is settled.
    fn settled(&self, admins: &[u16], id: &str) -> String {
        loop {
            let (status, reply) =
                self.api_any(admins, "GET", &format!("/v1/distribution-tasks/{id}"), "");
            assert_eq!(status, 200, "{reply}");
            if reply.contains("\"state\":\"Distributed\"") || reply.contains("\"state\":\"Failed\"")
            {
                return reply;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Asserts every device `0..n` has exactly one record, moved, and sits in Frankfurt.
    fn assert_moved_once(&self, admins: &[u16], id: &str, n: usize) {
        let settled = self.settled(admins, id);
        assert!(settled.contains("\"state\":\"Distributed\""), "{settled}");
        let (_, csv) =
            self.api_any(admins, "GET", &format!("/v1/distribution-tasks/{id}/records.csv"), "");
        assert_eq!(csv.lines().count(), n + 1, "one record per device, none twice");
        assert_eq!(csv.lines().filter(|l| l.ends_with(",succeeded,")).count(), n);
        let mut names: Vec<&str> =
            csv.lines().skip(1).filter_map(|line| line.split(',').nth(1)).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a device recorded twice");
        let (_, list) = self.api_any(admins, "GET", &format!("/v1/products/{PRODUCT}/devices"), "");
        assert_eq!(list.matches("\"deviceName\"").count(), n, "no device lost");
        assert_eq!(list.matches("\"iot-fra-1\"").count(), n, "every device placed in Frankfurt");
    }
}

/// `text` without the TOML tables named in `names` (each up to the next table header).
fn without_sections(text: &str, names: &[&str]) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.starts_with('[') {
            let name = line.trim_matches(|c| c == '[' || c == ']');
            skipping = names.contains(&name);
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn start_control(site: &Site, name: &str) -> (Daemon, u16) {
    let admin = free_port();
    let daemon = Daemon::start(&["control"], &site.config(name, admin, Reads::Hub));
    daemon.wait_for("meridian up: ready");
    (daemon, admin)
}

fn start_edge(site: &Site, name: &str, reads: Reads<'_>) -> (Daemon, SocketAddr) {
    let daemon = Daemon::start(&["bootstrap-edge"], &site.config(name, free_port(), reads));
    let addr = field(&daemon.wait_for("bootstrap edge listening"), "addr");
    daemon.wait_for("meridian up: ready");
    (daemon, addr)
}

fn start_broker(site: &Site, instance: &str, reads: Reads<'_>) -> (Daemon, SocketAddr) {
    let daemon = Daemon::start(&["broker"], &site.broker_config(instance, reads));
    let addr = field(&daemon.wait_for("broker listening"), "addr");
    daemon.wait_for("meridian broker: ready");
    (daemon, addr)
}

fn device(n: usize, edge: SocketAddr) -> SimDevice {
    SimDevice {
        product_key: PRODUCT.into(),
        device_name: format!("dev-{n:05}"),
        secret: format!("secret-{n:05}"),
        source: "127.0.0.1".parse().expect("ip"),
        edge,
    }
}

/// Bootstraps device `n` at `edge` until the edge knows it; returns the endpoint.
async fn bootstrapped(edge: SocketAddr, n: usize) -> SocketAddr {
    loop {
        if let Ok(endpoint) = device(n, edge).bootstrap().await {
            return endpoint;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `kill -9` of one of three NATS nodes (the meta leader) while a 10,000-device distribution
/// runs: the task completes, every device moves exactly once and none is lost, and the edges
/// and brokers keep answering all the while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_node_kill_9_during_a_10000_device_distribution() {
    const DEVICES: usize = 10_000;
    let site = Site::start().await;
    let (_a, admin_a) = start_control(&site, "control-a");
    let (_b, admin_b) = start_control(&site, "control-b");
    let admins = [admin_a, admin_b];
    let (_edge_1, edge_1) = start_edge(&site, "edge-1", Reads::Hub);
    let (_edge_2, edge_2) = start_edge(&site, "edge-2", Reads::Hub);
    let (_sh, sh) = start_broker(&site, "iot-sh-1", Reads::Hub);
    let (_fra, fra) = start_broker(&site, "iot-fra-1", Reads::Hub);

    site.create_product(&admins);
    site.create_devices(&admins, 0..DEVICES);
    drop(accepted(sh, PRODUCT, DEVICES - 1));
    bootstrapped(edge_1, DEVICES - 1).await;
    bootstrapped(edge_2, DEVICES - 1).await;

    let id = site.distribute(&admins, DEVICES);
    let leader = site.hub.meta_leader().await.expect("a meta leader");
    site.hub.kill9(leader);

    // The edges answer from their tables while the cluster fails over and the task runs.
    for n in (0..DEVICES).step_by(997) {
        device(n, edge_1).bootstrap().await.expect("edge 1 answers");
        device(n, edge_2).bootstrap().await.expect("edge 2 answers");
    }
    site.assert_moved_once(&admins, &id, DEVICES);
    // The brokers followed: Frankfurt accepts the moved devices, Shanghai refuses them.
    drop(accepted(fra, PRODUCT, 4242));
    let refused = loop {
        let (code, _) = connect(sh, PRODUCT, 4243);
        if code != Code::Success {
            break code;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused, Code::NotAuthorized);
    site.hub.restart(leader).await;
}

/// `kill -9` of one control-plane replica in the middle of a task while the other runs: the
/// other finishes it, exactly once, and the records say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_replica_kill_9_mid_task_completes_exactly_once() {
    const DEVICES: usize = 10_000;
    let site = Site::start().await;
    let (a, admin_a) = start_control(&site, "control-a");
    let (_b, admin_b) = start_control(&site, "control-b");
    site.create_product(&[admin_a]);
    site.create_devices(&[admin_a], 0..DEVICES);

    let id = site.distribute(&[admin_a], DEVICES);
    // Mid-task: some devices moved, not all.
    loop {
        let (_, reply) = site.api(admin_b, "GET", &format!("/v1/distribution-tasks/{id}"), "");
        let cursor: usize = reply
            .split("\"handled\":")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok())
            .unwrap_or(0);
        assert!(cursor < DEVICES, "the task finished before the replica could be killed");
        if cursor > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.kill_9();
    site.assert_moved_once(&[admin_b], &id, DEVICES);
}

/// A region's edge and broker read a mirror on the region's leaf node. Cut off from the hub,
/// they keep bootstrapping and connecting devices from the last state they saw (a broker
/// restarted during the cut too); devices created at the control plane meanwhile arrive once
/// the link heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_cut_off_from_the_hub_keeps_working_and_catches_up() {
    let site = Site::start().await;
    let leaf = LeafNode::start(&site.hub.leafnode_urls(), "cn-shanghai").await;
    let leaf_url = leaf.url();
    let region = Reads::Leaf { url: &leaf_url, region: "cn-shanghai" };
    let (_control, admin) = start_control(&site, "control");
    let (_edge, edge) = start_edge(&site, "edge-sh", region);
    let (broker, sh) = start_broker(&site, "iot-sh-1", region);

    site.create_product(&[admin]);
    site.create_devices(&[admin], 0..100);
    drop(accepted(sh, PRODUCT, 99));
    bootstrapped(edge, 99).await;

    leaf.cut().await;
    // Meanwhile the hub takes new devices.
    site.create_devices(&[admin], 100..110);
    // The region serves what it saw: bootstraps and connects of known devices succeed…
    for n in [0, 42, 99] {
        device(n, edge).bootstrap().await.expect("the edge answers while cut off");
        assert_eq!(connect(sh, PRODUCT, n).0, Code::Success);
    }
    // …even from a broker restarted during the cut, which loads the region's mirror.
    broker.kill_9();
    let (_broker, sh) = start_broker(&site, "iot-sh-1", region);
    assert_eq!(connect(sh, PRODUCT, 7).0, Code::Success);
    // A device created during the cut is not known yet.
    assert_eq!(connect(sh, PRODUCT, 105).0, Code::BadUserNamePassword);

    leaf.heal().await;
    drop(accepted(sh, PRODUCT, 105));
    bootstrapped(edge, 109).await;
}
