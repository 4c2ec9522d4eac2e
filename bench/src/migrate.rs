//! The `migrate` scenario: K devices are connected at their home instance; one distribution
//! task (several when K exceeds the 10,000-device task limit) moves all of them to an instance
//! in another region. Reports the time until every device is connected at the destination,
//! the notifies the devices received, failures, and the reconnect-rate curve.
//!
//! Two processes, because one can hold at most ~19,900 sockets: the *world* (this binary as
//! `serve-world`) holds the registry (redb on a temporary file), the control plane and its task
//! executor, the bootstrap edge and both brokers, all real servers on `127.0.0.1:0`; the
//! devices run in this process. A device behaves like the vendor's C SDK (the logic of
//! `tests/src/device.rs`): it bootstraps over HTTP from its own `127.x` source address,
//! connects with its PROTOCOL §2 signature, answers `…/thing/bootstrap/notify` on `…/notify_reply`,
//! and when the broker drops it, waits 50 ms, bootstraps again and connects where it is told.
//!
//! The clock starts when this process tells the world to submit the task(s).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use mqttbytes::QoS;
use mqttbytes::v4::Packet;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::{Semaphore, mpsc};

use crate::mqtt::{self, Connection};
use crate::stats::{self, Latency};
use crate::{fleet, procfs, sources};

/// Source-address block of the devices.
const BLOCK: u8 = 200;
/// Bins of the reconnect-rate curve.
const BIN: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, clap::Args)]
pub struct MigrateArgs {
    /// Devices connected and then moved (at most ~19,000: this process holds them all).
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    /// The brokers' `limits.notify_rate` (bootstrap notifies per second; the shipped default
    /// is 5,000). Several values: one run each, with a fresh world.
    #[arg(long, value_delimiter = ',', default_values = ["5000"])]
    pub notify_rate: Vec<u32>,
    /// Initial connections in flight while the fleet comes online.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Give up waiting for the fleet to arrive after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MigrateRun {
    pub devices: usize,
    pub notify_rate: u32,
    /// Seconds from submitting the task until the last device connected at the destination.
    pub all_reconnected_s: Option<f64>,
    /// Devices connected at the destination when the scenario ended.
    pub arrived: usize,
    /// Devices that never arrived (timeout).
    pub lost: usize,
    /// Bootstrap notifies the devices received.
    pub notifies: u64,
    /// Failed bootstrap or CONNECT attempts by reason (each retried).
    pub failures: BTreeMap<String, u64>,
    /// Per device, time from submission to its connection at the destination.
    pub reconnect: Latency,
    /// Seconds from submission until the task(s) settled, and the task records.
    pub task_settled_s: Option<f64>,
    pub task_succeeded: u64,
    pub task_failed: u64,
    /// Seconds for the fleet to come online at the source before the task.
    pub initial_connect_s: f64,
    /// (seconds since submission, devices arrived in the 100 ms bin ending then, cumulative).
    pub curve: Vec<(f64, u64, u64)>,
    pub load1: f64,
}

/// What the world prints once it serves.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorldReady {
    pub edge: SocketAddr,
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// What the world prints once the task(s) settled.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorldSettled {
    pub settled_s: f64,
    pub succeeded: u64,
    pub failed: u64,
}

/// What a device tells the scenario.
#[derive(Debug)]
enum Event {
    Connected { device: usize, broker: SocketAddr, at: Instant },
    Notified,
    Failed(String),
}

pub async fn run(args: &MigrateArgs) -> Result<Vec<MigrateRun>> {
    let mut runs = Vec::new();
    for &rate in &args.notify_rate {
        let run = one_run(args, rate).await?;
        eprintln!(
            "migrate {} devices, notify rate {rate}/s: all at the destination after {}, {} lost, {} notifies, task settled after {:?} s, failures {:?}",
            run.devices,
            run.all_reconnected_s.map_or("never".into(), |s| format!("{s:.2} s")),
            run.lost,
            run.notifies,
            run.task_settled_s,
            run.failures
        );
        runs.push(run);
    }
    Ok(runs)
}

async fn one_run(args: &MigrateArgs, notify_rate: u32) -> Result<MigrateRun> {
    let mut world = Command::new(std::env::current_exe()?)
        .args(["serve-world", "--devices", &args.devices.to_string()])
        .args(["--notify-rate", &notify_rate.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the world")?;
    let mut world_in = world.stdin.take().context("world stdin")?;
    let mut world_out = BufReader::new(world.stdout.take().context("world stdout")?).lines();
    let line = world_out.next_line().await?.context("world exited before it was ready")?;
    let ready: WorldReady = serde_json::from_str(&line)?;

    // 1. The fleet comes online at the source.
    let (tx, mut events) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let started = Instant::now();
    let mut devices = Vec::with_capacity(args.devices);
    for n in 0..args.devices {
        let device = Device {
            n,
            name: fleet::device_name(n),
            connect: mqtt::connect_packet("", &fleet::device_login(n), 60),
            source: sources::source(BLOCK, n),
            edge: ready.edge,
        };
        devices.push(tokio::spawn(device.run(tx.clone(), gate.clone())));
    }
    let deadline = Duration::from_secs_f64(args.timeout);
    let mut online = vec![false; args.devices];
    let mut count = 0;
    let mut failures = BTreeMap::new();
    while count < args.devices {
        let event = tokio::time::timeout(deadline, events.recv())
            .await
            .context("the fleet did not come online")?
            .context("devices ended")?;
        match event {
            Event::Connected { device, broker, .. } if broker == ready.source => {
                if !std::mem::replace(&mut online[device], true) {
                    count += 1;
                }
            }
            Event::Connected { broker, .. } => {
                bail!("a device connected to {broker} before the task")
            }
            Event::Notified => bail!("a device was notified before the task"),
            Event::Failed(reason) => {
                *failures.entry(format!("initial: {reason}")).or_insert(0) += 1
            }
        }
    }
    let initial_connect_s = started.elapsed().as_secs_f64();
    eprintln!("migrate: {} devices online at the source in {initial_connect_s:.1} s", args.devices);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 2. One task moves them all; the clock starts now.
    let load1 = procfs::load_average();
    let t0 = Instant::now();
    world_in.write_all(b"go\n").await?;
    let settled = tokio::spawn(async move {
        let line = world_out.next_line().await.ok().flatten()?;
        serde_json::from_str::<WorldSettled>(&line).ok()
    });
    let mut arrived_at: Vec<Option<Duration>> = vec![None; args.devices];
    let mut arrived = 0;
    let mut notifies = 0;
    let end = t0 + deadline;
    while arrived < args.devices {
        let Ok(Some(event)) = tokio::time::timeout_at(end.into(), events.recv()).await else {
            break;
        };
        match event {
            Event::Connected { device, broker, at } if broker == ready.destination => {
                if arrived_at[device].is_none() {
                    arrived_at[device] = Some(at - t0);
                    arrived += 1;
                }
            }
            Event::Connected { .. } => {
                *failures.entry("reconnected at the source".into()).or_insert(0) += 1
            }
            Event::Notified => notifies += 1,
            Event::Failed(reason) => *failures.entry(reason).or_insert(0) += 1,
        }
    }
    let settled = tokio::time::timeout(Duration::from_secs(30), settled)
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten();
    for device in devices {
        device.abort();
    }
    drop(world_in);
    let _ = world.kill().await;

    let mut histogram = stats::histogram();
    let mut times: Vec<Duration> = arrived_at.iter().flatten().copied().collect();
    for time in &times {
        stats::record(&mut histogram, time.as_micros() as u64);
    }
    times.sort();
    let all_reconnected_s =
        (arrived == args.devices).then(|| times.last().map_or(0.0, Duration::as_secs_f64));
    Ok(MigrateRun {
        devices: args.devices,
        notify_rate,
        all_reconnected_s,
        arrived,
        lost: args.devices - arrived,
        notifies,
        failures,
        reconnect: Latency::of(&histogram),
        task_settled_s: settled.as_ref().map(|s| s.settled_s),
        task_succeeded: settled.as_ref().map_or(0, |s| s.succeeded),
        task_failed: settled.as_ref().map_or(0, |s| s.failed),
        initial_connect_s,
        curve: curve(&times),
        load1,
    })
}

/// Arrivals per [`BIN`] and cumulative, from the sorted arrival times.
fn curve(sorted: &[Duration]) -> Vec<(f64, u64, u64)> {
    let Some(last) = sorted.last() else { return Vec::new() };
    let bins = (last.as_nanos() / BIN.as_nanos()) as usize + 1;
    let mut counts = vec![0u64; bins];
    for time in sorted {
        counts[(time.as_nanos() / BIN.as_nanos()) as usize] += 1;
    }
    let mut cumulative = 0;
    counts
        .into_iter()
        .enumerate()
        .map(|(i, count)| {
            cumulative += count;
            (((i + 1) as f64) * BIN.as_secs_f64(), count, cumulative)
        })
        .collect()
}

/// One simulated SDK device.
struct Device {
    n: usize,
    name: String,
    /// Its signed CONNECT, encoded once.
    connect: bytes::Bytes,
    source: IpAddr,
    edge: SocketAddr,
}

impl Device {
    /// Bootstrap, connect, answer notifies, and do it again whenever the broker drops it. The
    /// first connection waits for a slot of `gate` so the fleet does not come online all at once.
    async fn run(self, events: mpsc::UnboundedSender<Event>, gate: Arc<Semaphore>) {
        let mut first = Some(gate);
        loop {
            let permit = match &first {
                Some(gate) => gate.clone().acquire_owned().await.ok(),
                None => None,
            };
            let broker = match self.bootstrap().await {
                Ok(broker) => broker,
                Err(reason) => {
                    let _ = events.send(Event::Failed(reason));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let connection =
                Connection::open(Some(self.source), broker, &self.connect, Duration::from_secs(10))
                    .await;
            drop(permit);
            match connection {
                Ok(connection) => {
                    first = None;
                    let _ = events.send(Event::Connected {
                        device: self.n,
                        broker,
                        at: Instant::now(),
                    });
                    self.session(connection, &events).await;
                }
                Err(failure) => {
                    let _ = events.send(Event::Failed(failure.to_string()));
                }
            }
            // The SDK backs off briefly before bootstrapping again.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Until the broker ends the connection: answers bootstrap notifies.
    async fn session(&self, mut connection: Connection, events: &mpsc::UnboundedSender<Event>) {
        let reply_topic =
            format!("/sys/{}/{}/thing/bootstrap/notify_reply", fleet::PRODUCT, self.name);
        let mut out = BytesMut::new();
        while let Ok(packet) = connection.next().await {
            let Packet::Publish(publish) = packet else { continue };
            if publish.qos == QoS::AtLeastOnce {
                mqtt::write_puback(&mut out, publish.pkid);
            }
            if publish.topic.ends_with("/thing/bootstrap/notify") {
                let id = serde_json::from_slice::<serde_json::Value>(&publish.payload)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                let reply = format!(r#"{{"id":"{id}","code":200,"data":{{}}}}"#);
                mqtt::write_publish(
                    &mut out,
                    &reply_topic,
                    QoS::AtMostOnce,
                    0,
                    reply.as_bytes(),
                    reply.len(),
                );
                let _ = events.send(Event::Notified);
            }
            if !out.is_empty() {
                if connection.stream.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        }
    }

    /// `POST /auth/bootstrap` as the C SDK sends it; returns the MQTT endpoint.
    async fn bootstrap(&self) -> Result<SocketAddr, String> {
        let body = format!(
            "productKey={pk}&deviceName={dn}&clientId={pk}.{dn}&resources=mqtt",
            pk = fleet::PRODUCT,
            dn = self.name
        );
        let request = format!(
            "POST /auth/bootstrap HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.edge.ip(),
            body.len()
        );
        let mut stream = mqtt::tcp_connect(Some(self.source), self.edge)
            .await
            .map_err(|e| format!("bootstrap connect: {}", e.kind()))?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("bootstrap: {}", e.kind()))?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.map_err(|e| format!("bootstrap: {}", e.kind()))?;
        parse_bootstrap(&response)
    }
}

/// The MQTT endpoint of a bootstrap response, read as the vendor C SDK reads it
/// ([`meridian_edge::sdk`]: strict framing, case-sensitive `Content-Length: `, only 200, key
/// search for `"host"` and `"port"`), so the fleet fails where real devices would.
fn parse_bootstrap(response: &[u8]) -> Result<SocketAddr, String> {
    let reply = match meridian_edge::sdk::parse(response) {
        Ok(Some((reply, _))) => reply,
        Ok(None) => return Err("bootstrap: incomplete reply".into()),
        Err(error) => return Err(format!("bootstrap: the SDK cannot read the reply ({error})")),
    };
    let endpoint = reply.endpoint().map_err(|error| format!("bootstrap refused: {error}"))?;
    let (host, port) = (endpoint.host, endpoint.port);
    format!("{host}:{port}").parse().map_err(|_| "bootstrap: bad endpoint".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_answer_and_curve() {
        let body =
            r#"{"code":200,"data":{"resources":{"mqtt":{"host":"127.0.0.1","port":"1883"}}}}"#;
        let response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        assert_eq!(parse_bootstrap(response.as_bytes()), Ok("127.0.0.1:1883".parse().unwrap()));
        // The SDK finds only `Content-Length: `, in that case.
        let lower = response.replace("Content-Length", "content-length");
        assert!(parse_bootstrap(lower.as_bytes()).is_err());
        assert!(parse_bootstrap(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}").is_err());

        let times = [50, 60, 250].map(Duration::from_millis);
        let curve = curve(&times);
        assert_eq!(curve.len(), 3);
        assert_eq!(curve[0].1, 2);
        assert_eq!((curve[2].1, curve[2].2), (1, 3));
        assert!((curve[2].0 - 0.3).abs() < 1e-9);
    }
}
