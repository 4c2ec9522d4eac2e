//! Broker lifecycles: every broker under test runs as its own process on a loopback port, so
//! its resident memory and CPU time are its own and the load generator competes with it only
//! for the cores, as it would with any broker. Dropping a [`RunningBroker`] kills it.
//!
//! - Meridian: this binary re-executed as `meridian-bench serve-broker`, which seeds a
//!   temporary redb registry with the benchmark fleet and runs `meridian_broker::daemon::start`
//!   on `127.0.0.1:0`, printing the bound address.
//! - Mosquitto: `mosquitto -c <generated config>` (Debian package `mosquitto`).
//! - rumqttd: the `rumqttd-peer` binary built next to this one (crates.io `rumqttd`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::procfs;

/// How long a broker may take to start listening (Meridian seeds its registry first).
const START_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    Meridian,
    Mosquitto,
    Rumqttd,
}

impl BrokerKind {
    pub fn name(self) -> &'static str {
        match self {
            BrokerKind::Meridian => "meridian",
            BrokerKind::Mosquitto => "mosquitto",
            BrokerKind::Rumqttd => "rumqttd",
        }
    }
}

impl std::fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a broker is started with.
#[derive(Clone, Copy, Debug)]
pub struct BrokerOptions {
    /// Devices in Meridian's registry (device logins `0..devices` are valid).
    pub devices: usize,
    /// Connections the broker must accept (rumqttd refuses beyond its configured maximum).
    pub max_connections: usize,
}

pub struct RunningBroker {
    pub kind: BrokerKind,
    pub addr: SocketAddr,
    child: Child,
    /// Meridian's serve-broker exits when this closes.
    stdin: Option<tokio::process::ChildStdin>,
    /// Holds the generated configuration file.
    _dir: tempfile::TempDir,
}

impl RunningBroker {
    pub async fn start(kind: BrokerKind, options: BrokerOptions) -> Result<RunningBroker> {
        let dir = tempfile::tempdir()?;
        let (mut command, addr) = match kind {
            BrokerKind::Meridian => {
                let exe = std::env::current_exe()?;
                // A profiler to run the broker under, e.g. `perf record -g -o perf.data --` or
                // `valgrind --tool=massif`: the broker then exits through its stdin closing,
                // so the profiler gets to write its output.
                let mut command = match std::env::var("MERIDIAN_BENCH_WRAP") {
                    Ok(wrap) if !wrap.trim().is_empty() => {
                        let mut words = wrap.split_whitespace();
                        let mut command = Command::new(words.next().unwrap_or_default());
                        command.args(words).arg(exe);
                        command
                    }
                    _ => Command::new(exe),
                };
                command.args(["serve-broker", "--devices", &options.devices.to_string()]);
                (command, None)
            }
            BrokerKind::Mosquitto => {
                let addr = free_port()?;
                let config = dir.path().join("mosquitto.conf");
                // Extra configuration lines for experiments (e.g. `set_tcp_nodelay false`);
                // a later line wins in Mosquitto's configuration.
                let extra = std::env::var("MERIDIAN_BENCH_MOSQUITTO_CONF").unwrap_or_default();
                std::fs::write(&config, mosquitto_config(addr) + &extra.replace("\\n", "\n"))?;
                let mut command = Command::new(mosquitto_binary()?);
                command.arg("-c").arg(&config);
                (command, Some(addr))
            }
            BrokerKind::Rumqttd => {
                let addr = free_port()?;
                let mut command = Command::new(sibling_binary("rumqttd-peer")?);
                command.args([
                    "--listen",
                    &addr.to_string(),
                    "--max-connections",
                    &options.max_connections.to_string(),
                ]);
                (command, Some(addr))
            }
        };
        // serve-broker runs until its stdin closes: the pipe is held until `stop` or drop.
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        command.kill_on_drop(true);
        let mut child = command.spawn().with_context(|| format!("starting {kind}"))?;
        let stdin = child.stdin.take();
        let addr = match addr {
            Some(addr) => addr,
            None => read_listening(&mut child).await?,
        };
        wait_listening(addr).await.with_context(|| format!("{kind} did not start listening"))?;
        Ok(RunningBroker { kind, addr, child, stdin, _dir: dir })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// The broker process's resident memory, KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        procfs::rss_kib(self.pid())
    }

    /// The broker process's user + system CPU time so far, seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        procfs::cpu_seconds(self.pid())
    }

    /// Closes Meridian's stdin (it shuts down cleanly) and kills whatever is still running a
    /// few seconds later (the peers, which know nothing of stdin).
    pub async fn stop(mut self) {
        drop(self.stdin.take());
        let grace = if self.kind == BrokerKind::Meridian { 30 } else { 0 };
        let exited = tokio::time::timeout(Duration::from_secs(grace), self.child.wait()).await;
        if exited.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// The generated Mosquitto configuration: one loopback listener, no connection cap, no
/// persistence, `TCP_NODELAY` as Meridian and the load generator set it.
pub fn mosquitto_config(addr: SocketAddr) -> String {
    format!(
        "listener {} {}\nallow_anonymous true\nmax_connections -1\npersistence false\n\
         set_tcp_nodelay true\nlog_dest stderr\nlog_type error\nlog_type warning\n",
        addr.port(),
        addr.ip()
    )
}

fn mosquitto_binary() -> Result<PathBuf> {
    for candidate in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"] {
        let path = PathBuf::from(candidate);
        if path.exists() {
            return Ok(path);
        }
    }
    bail!("mosquitto is not installed: apt-get install -y mosquitto")
}

/// A binary of this package next to the running one (`target/release/rumqttd-peer`).
fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!("{} not found: cargo build --release -p meridian-bench", path.display());
    }
    Ok(path)
}

/// A loopback port nobody listens on right now. Another process could take it before the
/// broker binds it; the broker would then fail to start, loudly.
fn free_port() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// Reads `listening ADDR` from a serve-broker child's stdout.
async fn read_listening(child: &mut Child) -> Result<SocketAddr> {
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let read = async {
        while let Some(line) = lines.next_line().await? {
            if let Some(addr) = line.strip_prefix("listening ") {
                return Ok(addr.trim().parse()?);
            }
        }
        bail!("broker exited before listening")
    };
    let addr =
        tokio::time::timeout(START_TIMEOUT, read).await.context("broker start timed out")??;
    // Keep draining its stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(addr)
}

async fn wait_listening(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
