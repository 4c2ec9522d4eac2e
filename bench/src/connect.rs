//! The `connect` scenario: N clients connect, as fast as the broker lets them (with at most
//! `concurrency` handshakes in flight) or on an open-loop schedule at a target rate, and stay
//! connected until all have been tried. Against Meridian every client is a device with a PROTOCOL §2
//! signature; against the peers an anonymous client.
//!
//! Latency is from the start of the TCP connect to the accepting CONNACK; at a target rate it is
//! from the scheduled start instead, so a broker that falls behind is charged for the queue it
//! causes (no coordinated omission).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};

use crate::brokers::{BrokerKind, BrokerOptions, RunningBroker};
use crate::mqtt::{self, Connection, Login};
use crate::stats::{self, Latency};
use crate::{fleet, procfs, sources};

/// How long one CONNECT may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, clap::Args)]
pub struct ConnectArgs {
    /// Brokers to measure, in order.
    #[arg(long, value_delimiter = ',', default_values = ["meridian", "mosquitto", "rumqttd"])]
    pub brokers: Vec<BrokerKind>,
    /// Clients per round (at most ~19,000: one process holds them all).
    #[arg(long, default_value_t = 5_000)]
    pub clients: usize,
    /// Connects per second to attempt; omitted: as fast as possible.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Handshakes in flight at most. Kept below 100, Mosquitto's listen backlog: more
    /// outstanding handshakes overflow it and the dropped SYNs come back a second later.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Rounds; brokers alternate within each round and each round starts fresh brokers.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// One broker, one round.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnectRun {
    pub broker: BrokerKind,
    pub round: usize,
    pub clients: usize,
    pub succeeded: u64,
    /// Failure reason → count.
    pub failed: BTreeMap<String, u64>,
    /// From the first attempt to the last answer, seconds.
    pub elapsed_s: f64,
    /// Accepted connects per second.
    pub rate_per_s: f64,
    /// CONNACK latency.
    pub latency: Latency,
    /// Broker CPU time (user + system) per accepted connect, µs.
    pub broker_cpu_us: f64,
    /// 1-minute load average when the round started.
    pub load1: f64,
}

pub async fn run(args: &ConnectArgs) -> Result<Vec<ConnectRun>> {
    let mut runs = Vec::new();
    for round in 0..args.rounds {
        for (b, &kind) in args.brokers.iter().enumerate() {
            let options =
                BrokerOptions { devices: args.clients, max_connections: args.clients + 100 };
            let broker = RunningBroker::start(kind, options).await?;
            // Let the broker finish starting (Meridian's registry seeding) before the clock runs.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let block = 10 + (round * args.brokers.len() + b) as u8 % 80;
            let result = one_round(&broker, args, round, block).await;
            broker.stop().await;
            let result = result?;
            eprintln!(
                "connect {kind} round {round}: {:.0}/s, p50 {} p99 {} max {}, {} ok, failed {:?}",
                result.rate_per_s,
                stats::human_us(result.latency.p50_us),
                stats::human_us(result.latency.p99_us),
                stats::human_us(result.latency.max_us),
                result.succeeded,
                result.failed
            );
            runs.push(result);
        }
    }
    Ok(runs)
}

/// CONNECT packets for clients `0..n` of `kind`, encoded (and signed) before anything is timed.
pub fn connect_packets(kind: BrokerKind, n: usize, tag: &str, keep_alive: u16) -> Vec<Bytes> {
    (0..n)
        .map(|i| match kind {
            BrokerKind::Meridian => mqtt::connect_packet("", &fleet::device_login(i), keep_alive),
            _ => mqtt::connect_packet(&format!("bench-{tag}-{i}"), &Login::Anonymous, keep_alive),
        })
        .collect()
}

async fn one_round(
    broker: &RunningBroker,
    args: &ConnectArgs,
    round: usize,
    block: u8,
) -> Result<ConnectRun> {
    let packets = connect_packets(broker.kind, args.clients, &format!("c{round}"), 60);
    let load1 = procfs::load_average();
    let cpu_before = broker.cpu_seconds()?;
    let outcome = connect_all(broker.addr, packets, args.rate, args.concurrency, block).await;
    let broker_cpu = broker.cpu_seconds()? - cpu_before;
    let succeeded = outcome.connections.len() as u64;
    // The connections close here, after the measurement.
    drop(outcome.connections);
    Ok(ConnectRun {
        broker: broker.kind,
        round,
        clients: args.clients,
        succeeded,
        failed: outcome.failed,
        elapsed_s: outcome.elapsed.as_secs_f64(),
        rate_per_s: succeeded as f64 / outcome.elapsed.as_secs_f64().max(1e-9),
        latency: Latency::of(&outcome.histogram),
        broker_cpu_us: broker_cpu * 1e6 / succeeded.max(1) as f64,
        load1,
    })
}

/// What [`connect_all`] ends with.
pub struct Outcome {
    pub connections: Vec<Connection>,
    pub failed: BTreeMap<String, u64>,
    pub histogram: hdrhistogram::Histogram<u64>,
    /// From the first attempt to the last answer.
    pub elapsed: Duration,
}

/// Connects one client per packet to `addr`, from source addresses of `block`.
pub async fn connect_all(
    addr: SocketAddr,
    packets: Vec<Bytes>,
    rate: Option<f64>,
    concurrency: usize,
    block: u8,
) -> Outcome {
    let n = packets.len();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = Instant::now();
    let spawner = tokio::spawn(async move {
        for (i, packet) in packets.into_iter().enumerate() {
            let scheduled = match rate {
                Some(rate) => {
                    let at = start + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(at.into()).await;
                    Some(at)
                }
                None => None,
            };
            // The semaphore is never closed.
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let began = scheduled.unwrap_or_else(Instant::now);
                let source = Some(sources::source(block, i));
                let result = Connection::open(source, addr, &packet, CONNECT_TIMEOUT).await;
                let latency = began.elapsed();
                drop(permit);
                let _ = tx.send((result, latency, Instant::now()));
            });
        }
    });
    let mut connections = Vec::with_capacity(n);
    let mut failed = BTreeMap::new();
    let mut histogram = stats::histogram();
    let mut last = start;
    for _ in 0..n {
        let Some((result, latency, at)) = rx.recv().await else { break };
        last = last.max(at);
        match result {
            Ok(connection) => {
                stats::record(&mut histogram, latency.as_micros() as u64);
                connections.push(connection);
            }
            Err(failure) => *failed.entry(failure.to_string()).or_insert(0) += 1,
        }
    }
    let _ = spawner.await;
    Outcome { connections, failed, histogram, elapsed: last - start }
}
