//! The `hold` scenario: C idle connections, spread over worker processes (this binary
//! re-executed as `hold-worker`; one process can hold at most ~19,900 sockets here) and over
//! many `127.x` source addresses, held through more than one keepalive period with a PINGREQ
//! every half period. Reports the broker process's resident memory (`VmRSS`) before, once all
//! are connected, and at the end of the hold, and how many connections survived.
//!
//! Against Meridian the clients are signed devices (each with its implicit `/sys/…/#`
//! subscription, as real devices have); against the peers anonymous clients.
//!
//! Parent ↔ worker protocol, one JSON line each way on stdout/stdin: the worker connects its
//! share and prints [`WorkerConnected`]; on `hold` it keeps them alive for the hold period and
//! prints [`WorkerHeld`]; it exits (closing everything) when its stdin closes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use mqttbytes::v4::Packet;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::brokers::{BrokerKind, BrokerOptions, RunningBroker};
use crate::connect::{connect_all, connect_packets};
use crate::mqtt::{self, Connection};
use crate::procfs;

/// Most connections one worker process takes (its file descriptor limit is 20,000).
const PER_WORKER_MAX: usize = 19_000;

#[derive(Clone, Debug, clap::Args)]
pub struct HoldArgs {
    #[arg(long, value_delimiter = ',', default_values = ["meridian", "mosquitto", "rumqttd"])]
    pub brokers: Vec<BrokerKind>,
    /// Connections to hold (at most ~19,800: the broker process has the same 20,000-descriptor
    /// limit).
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Client processes (each takes at most 19,000).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Keepalive the clients announce, seconds (Meridian refuses devices below 30).
    #[arg(long, default_value_t = 30)]
    pub keepalive: u16,
    /// How long to hold once all are connected, seconds (more than one keepalive period).
    #[arg(long, default_value_t = 35.0)]
    pub hold: f64,
    /// Handshakes in flight per worker.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HoldRun {
    pub broker: BrokerKind,
    pub requested: usize,
    pub connected: u64,
    pub failed: BTreeMap<String, u64>,
    /// Connections still open after the hold.
    pub alive: u64,
    pub rss_before_kib: u64,
    pub rss_connected_kib: u64,
    pub rss_held_kib: u64,
    /// (RSS once connected − RSS before) / connected.
    pub bytes_per_connection: f64,
    /// (RSS at the end of the hold − RSS before) / connected.
    pub bytes_per_connection_held: f64,
    pub connect_elapsed_s: f64,
    pub keepalive_s: u16,
    pub hold_s: f64,
    pub load1: f64,
}

/// A worker's first line.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerConnected {
    pub connected: u64,
    pub failed: BTreeMap<String, u64>,
}

/// A worker's second line.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerHeld {
    pub alive: u64,
}

pub async fn run(args: &HoldArgs) -> Result<Vec<HoldRun>> {
    let workers = args.workers.max(args.connections.div_ceil(PER_WORKER_MAX)).max(1);
    let mut runs = Vec::new();
    for (b, &kind) in args.brokers.iter().enumerate() {
        let options =
            BrokerOptions { devices: args.connections, max_connections: args.connections + 100 };
        let broker = RunningBroker::start(kind, options).await?;
        let result = one_broker(&broker, args, workers, 100 + 10 * b as u8).await;
        broker.stop().await;
        let run = result?;
        eprintln!(
            "hold {kind}: {} connected, {} alive after {:.0} s, {:.0} B/connection ({:.0} after the hold), failed {:?}",
            run.connected,
            run.alive,
            run.hold_s,
            run.bytes_per_connection,
            run.bytes_per_connection_held,
            run.failed
        );
        runs.push(run);
    }
    Ok(runs)
}

async fn one_broker(
    broker: &RunningBroker,
    args: &HoldArgs,
    workers: usize,
    first_block: u8,
) -> Result<HoldRun> {
    // Let start-up allocations settle before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_kib = broker.rss_kib()?;
    let load1 = procfs::load_average();
    let share = args.connections.div_ceil(workers);
    let started = std::time::Instant::now();
    let mut children = Vec::new();
    for w in 0..workers {
        let first = w * share;
        let count = share.min(args.connections.saturating_sub(first));
        if count == 0 {
            break;
        }
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["hold-worker", "--addr", &broker.addr.to_string(), "--kind", broker.kind.name()])
            .args(["--first", &first.to_string(), "--count", &count.to_string()])
            .args(["--block", &(first_block + w as u8).to_string()])
            .args(["--keepalive", &args.keepalive.to_string(), "--hold", &args.hold.to_string()])
            .args(["--concurrency", &args.concurrency.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn().context("starting a hold worker")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        children.push((child, BufReader::new(stdout).lines(), stdin));
    }
    let mut connected = 0;
    let mut failed = BTreeMap::new();
    for (_, lines, _) in &mut children {
        let line = lines.next_line().await?.context("worker exited while connecting")?;
        let report: WorkerConnected = serde_json::from_str(&line)?;
        connected += report.connected;
        for (reason, count) in report.failed {
            *failed.entry(reason).or_insert(0) += count;
        }
    }
    let connect_elapsed_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_connected_kib = broker.rss_kib()?;
    for (_, _, stdin) in &mut children {
        stdin.write_all(b"hold\n").await?;
    }
    let mut alive = 0;
    for (_, lines, _) in &mut children {
        let line = lines.next_line().await?.context("worker exited while holding")?;
        alive += serde_json::from_str::<WorkerHeld>(&line)?.alive;
    }
    let rss_held_kib = broker.rss_kib()?;
    for (mut child, _, stdin) in children {
        drop(stdin);
        let _ = child.wait().await;
    }
    let per =
        |after: u64| (after as f64 - rss_before_kib as f64) * 1024.0 / connected.max(1) as f64;
    Ok(HoldRun {
        broker: broker.kind,
        requested: args.connections,
        connected,
        failed,
        alive,
        rss_before_kib,
        rss_connected_kib,
        rss_held_kib,
        bytes_per_connection: per(rss_connected_kib),
        bytes_per_connection_held: per(rss_held_kib),
        connect_elapsed_s,
        keepalive_s: args.keepalive,
        hold_s: args.hold,
        load1,
    })
}

#[derive(Clone, Debug, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub addr: SocketAddr,
    #[arg(long)]
    pub kind: BrokerKind,
    /// Index of this worker's first client (device `first` against Meridian).
    #[arg(long)]
    pub first: usize,
    #[arg(long)]
    pub count: usize,
    #[arg(long)]
    pub block: u8,
    #[arg(long)]
    pub keepalive: u16,
    #[arg(long)]
    pub hold: f64,
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
}

/// `meridian-bench hold-worker`: one client process of the hold scenario.
pub async fn worker(args: WorkerArgs) -> Result<()> {
    let mut packets = connect_packets(args.kind, args.first + args.count, "h", args.keepalive);
    let packets = packets.split_off(args.first);
    let outcome = connect_all(args.addr, packets, None, args.concurrency, args.block).await;
    let report =
        WorkerConnected { connected: outcome.connections.len() as u64, failed: outcome.failed };
    println!("{}", serde_json::to_string(&report)?);

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    match stdin.next_line().await? {
        Some(line) if line.trim() == "hold" => {}
        _ => return Ok(()),
    }
    let period = Duration::from_secs(u64::from(args.keepalive.max(2))) / 2;
    let hold = Duration::from_secs_f64(args.hold);
    let n = outcome.connections.len().max(1);
    let mut tasks = Vec::new();
    for (i, connection) in outcome.connections.into_iter().enumerate() {
        // Spread the pings over the period rather than sending them all at once.
        let offset = period.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(keep_alive(connection, offset, period, hold)));
    }
    // Connections that survived stay open until the parent has measured.
    let mut held = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(Ok(connection)) = task.await {
            held.push(connection);
        }
    }
    println!("{}", serde_json::to_string(&WorkerHeld { alive: held.len() as u64 })?);
    while stdin.next_line().await?.is_some() {}
    drop(held);
    Ok(())
}

/// Pings every `period` (after `offset`) for `hold`; fails if the broker closes the connection
/// or misses a PINGRESP for a whole period.
async fn keep_alive(
    mut connection: Connection,
    offset: Duration,
    period: Duration,
    hold: Duration,
) -> Result<Connection> {
    let end = tokio::time::Instant::now() + hold;
    tokio::time::sleep(offset).await;
    let mut ping = BytesMut::new();
    mqtt::write_pingreq(&mut ping);
    while tokio::time::Instant::now() < end {
        connection.stream.write_all(&ping).await?;
        let answered = tokio::time::timeout(period, async {
            loop {
                match connection.next().await {
                    Ok(Packet::PingResp) => return Ok(()),
                    Ok(_) => continue,
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        match answered {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("closed: {e:?}"),
            Err(_) => bail!("no PINGRESP"),
        }
        tokio::time::sleep(period).await;
    }
    Ok(connection)
}
