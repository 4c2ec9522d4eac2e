//! The `throughput` scenario: p2p (N publisher → subscriber pairs, a topic each), fan-in (N
//! publishers → one subscriber of `+`) and fan-out (one publisher → N subscribers of one topic),
//! at QoS 0 and 1, with 16-byte and 1 KiB payloads.
//!
//! Flow control is end to end: each publisher may have at most `window` messages not yet
//! delivered to every subscriber, so the queues inside the broker stay bounded and the latency
//! measured is the broker's, not an ever-growing backlog's. Every payload starts with the send
//! time, the publisher's number and a sequence number; a subscriber that sees a gap counts the
//! missing messages as lost (a broker dropping QoS 0 under load) and returns their window
//! slots, so a drop never stalls a publisher.
//!
//! Counted: deliveries received during the measured interval (after the warm-up); latency from
//! the send timestamp to the subscriber reading the message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::BytesMut;
use mqttbytes::QoS;
use mqttbytes::v4::Packet;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::brokers::{BrokerKind, BrokerOptions, RunningBroker};
use crate::mqtt::{self, Connection, Login};
use crate::stats::{self, Latency};
use crate::{fleet, procfs, sources};

/// Bytes a publisher batches into one write when its window allows several messages.
const WRITE_BATCH: usize = 64 * 1024;
/// Payload bytes carrying the send time (u64 ns), publisher (u32) and sequence number (u32).
const HEAD: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    P2p,
    FanIn,
    FanOut,
}

impl Pattern {
    pub fn name(self) -> &'static str {
        match self {
            Pattern::P2p => "p2p",
            Pattern::FanIn => "fan-in",
            Pattern::FanOut => "fan-out",
        }
    }
}

#[derive(Clone, Debug, clap::Args)]
pub struct ThroughputArgs {
    #[arg(long, value_delimiter = ',', default_values = ["meridian", "mosquitto", "rumqttd"])]
    pub brokers: Vec<BrokerKind>,
    #[arg(long, value_delimiter = ',', default_values = ["p2p", "fan-in", "fan-out"])]
    pub patterns: Vec<Pattern>,
    #[arg(long, value_delimiter = ',', default_values = ["0", "1"])]
    pub qos: Vec<u8>,
    /// Payload sizes, bytes (at least 16).
    #[arg(long, value_delimiter = ',', default_values = ["16", "1024"])]
    pub sizes: Vec<usize>,
    /// Pairs (p2p), publishers (fan-in) or subscribers (fan-out).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Messages each publisher may have in flight (sent, not yet delivered everywhere).
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// Offered load in messages per second over all publishers, on an open-loop schedule
    /// (latency counted from the scheduled send time); omitted: as fast as the window allows.
    #[arg(long)]
    pub rate: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThroughputRun {
    pub broker: BrokerKind,
    /// Offered messages per second (all publishers), when the run was at a fixed rate.
    #[serde(default)]
    pub rate: Option<f64>,
    pub pattern: Pattern,
    pub qos: u8,
    pub size: usize,
    pub publishers: usize,
    pub subscribers: usize,
    /// Deliveries per second during the measured interval.
    pub msgs_per_s: f64,
    pub delivered: u64,
    /// Messages published, whole run (warm-up included).
    pub sent: u64,
    /// Messages a subscriber never received (sequence gaps less late arrivals), whole run.
    pub lost: u64,
    /// Messages that arrived after a later one of the same publisher, or twice.
    #[serde(default)]
    pub out_of_order: u64,
    pub latency: Latency,
    /// Broker CPU time per delivery, µs.
    pub broker_cpu_us: f64,
    /// The load generator's own CPU time per delivery, µs.
    pub client_cpu_us: f64,
    pub load1: f64,
}

pub async fn run(args: &ThroughputArgs) -> Result<Vec<ThroughputRun>> {
    let mut brokers = Vec::new();
    for &kind in &args.brokers {
        let options = BrokerOptions { devices: 0, max_connections: 4 * args.clients + 100 };
        brokers.push(RunningBroker::start(kind, options).await?);
    }
    let mut runs = Vec::new();
    let mut id = 0;
    for &pattern in &args.patterns {
        for &qos in &args.qos {
            for &size in &args.sizes {
                // Brokers alternate within each configuration, so background load drifting
                // during the run hits them alike.
                for broker in &brokers {
                    id += 1;
                    let run =
                        one_run(broker, args, pattern, qos, size, id).await.with_context(|| {
                            format!("{} {} qos{qos} {size} B", broker.kind, pattern.name())
                        })?;
                    eprintln!(
                        "throughput {} {} qos{qos} {size} B: {:.0} msg/s, p50 {} p99 {} max {}, lost {}, out of order {}",
                        broker.kind,
                        pattern.name(),
                        run.msgs_per_s,
                        stats::human_us(run.latency.p50_us),
                        stats::human_us(run.latency.p99_us),
                        stats::human_us(run.latency.max_us),
                        run.lost,
                        run.out_of_order
                    );
                    runs.push(run);
                }
            }
        }
    }
    for broker in brokers {
        broker.stop().await;
    }
    Ok(runs)
}

/// State the publishers and subscribers of one run share.
struct Shared {
    /// Timestamps in payloads are nanoseconds since this instant.
    epoch: Instant,
    /// One per publisher: free slots of its window, in deliveries.
    windows: Vec<Semaphore>,
    /// Deliveries each message makes (subscribers per topic).
    fanout: u32,
    /// Nanoseconds since `epoch` when measuring starts and stops.
    measure_from: u64,
    measure_until: u64,
    sent: AtomicU64,
    /// Time between two messages of one publisher at a fixed offered rate.
    interval: Option<Duration>,
}

async fn one_run(
    broker: &RunningBroker,
    args: &ThroughputArgs,
    pattern: Pattern,
    qos: u8,
    size: usize,
    id: usize,
) -> Result<ThroughputRun> {
    let n = args.clients.max(1);
    let (publishers, subscribers) = match pattern {
        Pattern::P2p => (n, n),
        Pattern::FanIn => (n, 1),
        Pattern::FanOut => (1, n),
    };
    let fanout = if pattern == Pattern::FanOut { n as u32 } else { 1 };
    let qos = if qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
    let size = size.max(HEAD);
    let login = match broker.kind {
        BrokerKind::Meridian => {
            Login::User { username: fleet::USER.0.into(), password: fleet::USER.1.into() }
        }
        _ => Login::Anonymous,
    };
    let topic = |publisher: usize| match pattern {
        Pattern::P2p => format!("b/{id}/p/{publisher}"),
        Pattern::FanIn => format!("b/{id}/i/{publisher}"),
        Pattern::FanOut => format!("b/{id}/o"),
    };
    let filter = |subscriber: usize| match pattern {
        Pattern::P2p => format!("b/{id}/p/{subscriber}"),
        Pattern::FanIn => format!("b/{id}/i/+"),
        Pattern::FanOut => format!("b/{id}/o"),
    };
    let block = 150 + (id % 100) as u8;
    let open = |name: String, i: usize| {
        let packet = mqtt::connect_packet(&name, &login, 60);
        let addr = broker.addr;
        async move {
            Connection::open(
                Some(sources::source(block, i)),
                addr,
                &packet,
                Duration::from_secs(10),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))
        }
    };

    let epoch = Instant::now();
    let (stop_tx, stop) = watch::channel(false);
    let mut subscriber_tasks = JoinSet::new();
    // Subscribers first, each subscribed (SUBACK received) before anyone publishes.
    let mut subscriber_connections = Vec::new();
    for s in 0..subscribers {
        let mut connection = open(format!("bench-{id}-s{s}"), s).await?;
        connection
            .subscribe(&filter(s), qos)
            .await
            .map_err(|e| anyhow::anyhow!("subscribe: {e:?}"))?;
        subscriber_connections.push(connection);
    }
    let mut publisher_connections = Vec::new();
    for p in 0..publishers {
        publisher_connections.push(open(format!("bench-{id}-p{p}"), subscribers + p).await?);
    }
    let window = args.window.max(1) * fanout as usize;
    let warm = Duration::from_secs_f64(args.warmup);
    let measured = Duration::from_secs_f64(args.duration);
    let start = epoch.elapsed();
    let shared = Arc::new(Shared {
        epoch,
        windows: (0..publishers).map(|_| Semaphore::new(window)).collect(),
        fanout,
        measure_from: (start + warm).as_nanos() as u64,
        measure_until: (start + warm + measured).as_nanos() as u64,
        sent: AtomicU64::new(0),
        interval: args.rate.map(|rate| Duration::from_secs_f64(publishers as f64 / rate.max(1.0))),
    });
    for connection in subscriber_connections {
        subscriber_tasks.spawn(subscribe(connection, shared.clone(), publishers, stop.clone()));
    }
    let mut publisher_tasks = JoinSet::new();
    for (p, connection) in publisher_connections.into_iter().enumerate() {
        publisher_tasks.spawn(publish(
            connection,
            shared.clone(),
            p,
            topic(p),
            qos,
            size,
            stop.clone(),
        ));
    }

    tokio::time::sleep(warm).await;
    let load1 = procfs::load_average();
    let broker_cpu = broker.cpu_seconds()?;
    let client_cpu = procfs::cpu_seconds(std::process::id())?;
    tokio::time::sleep(measured).await;
    let broker_cpu = broker.cpu_seconds()? - broker_cpu;
    let client_cpu = procfs::cpu_seconds(std::process::id())? - client_cpu;
    let _ = stop_tx.send(true);
    while publisher_tasks.join_next().await.is_some() {}
    let mut histogram = stats::histogram();
    let mut delivered = 0;
    let mut lost = 0;
    let mut out_of_order = 0;
    while let Some(result) = subscriber_tasks.join_next().await {
        let tally = result?;
        histogram.add(&tally.histogram).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        delivered += tally.delivered;
        lost += tally.lost;
        out_of_order += tally.out_of_order;
    }
    Ok(ThroughputRun {
        rate: args.rate,
        sent: shared.sent.load(Ordering::Relaxed),
        broker: broker.kind,
        pattern,
        qos: qos as u8,
        size,
        publishers,
        subscribers,
        msgs_per_s: delivered as f64 / measured.as_secs_f64(),
        delivered,
        lost: lost.saturating_sub(out_of_order),
        out_of_order,
        latency: Latency::of(&histogram),
        broker_cpu_us: broker_cpu * 1e6 / delivered.max(1) as f64,
        client_cpu_us: client_cpu * 1e6 / delivered.max(1) as f64,
        load1,
    })
}

async fn publish(
    connection: Connection,
    shared: Arc<Shared>,
    me: usize,
    topic: String,
    qos: QoS,
    size: usize,
    mut stop: watch::Receiver<bool>,
) {
    let (mut reader, mut writer) = connection.stream.into_split();
    // PUBACKs (and anything else) are read and dropped: the window is end to end.
    let drain = tokio::spawn(async move {
        let mut sink = vec![0u8; 16 * 1024];
        while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let window = &shared.windows[me];
    let mut buffer = BytesMut::with_capacity(WRITE_BATCH + size + 64);
    let mut seq: u32 = 0;
    let mut pkid: u16 = 0;
    // At a fixed rate: when the next message is due. Its timestamp is that time, not the time
    // it was written, so a publisher held back by the window is charged to the broker.
    let mut due = Instant::now();
    loop {
        if shared.interval.is_some() {
            tokio::select! {
                () = tokio::time::sleep_until(due.into()) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        let permit = tokio::select! {
            permit = window.acquire_many(shared.fanout) => permit,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Ok(permit) = permit else { break };
        permit.forget();
        buffer.clear();
        loop {
            seq = seq.wrapping_add(1);
            pkid = pkid % u16::MAX + 1;
            let stamp = match shared.interval {
                Some(_) => due.saturating_duration_since(shared.epoch),
                None => shared.epoch.elapsed(),
            };
            let mut head = [0u8; HEAD];
            head[..8].copy_from_slice(&(stamp.as_nanos() as u64).to_be_bytes());
            head[8..12].copy_from_slice(&(me as u32).to_be_bytes());
            head[12..16].copy_from_slice(&seq.to_be_bytes());
            mqtt::write_publish(&mut buffer, &topic, qos, pkid, &head, size);
            shared.sent.fetch_add(1, Ordering::Relaxed);
            if let Some(interval) = shared.interval {
                due += interval;
                if due > Instant::now() {
                    break;
                }
            }
            if buffer.len() >= WRITE_BATCH {
                break;
            }
            match window.try_acquire_many(shared.fanout) {
                Ok(permit) => permit.forget(),
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            written = writer.write_all(&buffer) => written,
            _ = stop.wait_for(|s| *s) => break,
        };
        if written.is_err() {
            break;
        }
    }
    drain.abort();
}

/// What one subscriber counted.
struct Tally {
    histogram: hdrhistogram::Histogram<u64>,
    delivered: u64,
    lost: u64,
    out_of_order: u64,
}

async fn subscribe(
    mut connection: Connection,
    shared: Arc<Shared>,
    publishers: usize,
    mut stop: watch::Receiver<bool>,
) -> Tally {
    let mut tally = Tally { histogram: stats::histogram(), delivered: 0, lost: 0, out_of_order: 0 };
    let mut last_seq = vec![0u32; publishers];
    let mut acks = BytesMut::new();
    loop {
        loop {
            let packet = match connection.buffered() {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(_) => return tally,
            };
            let Packet::Publish(publish) = packet else { continue };
            if publish.qos == QoS::AtLeastOnce {
                mqtt::write_puback(&mut acks, publish.pkid);
            }
            let payload = &publish.payload;
            if payload.len() < HEAD {
                continue;
            }
            let now = shared.epoch.elapsed().as_nanos() as u64;
            let sent = u64::from_be_bytes(payload[..8].try_into().unwrap_or_default());
            let publisher = u32::from_be_bytes(payload[8..12].try_into().unwrap_or_default());
            let seq = u32::from_be_bytes(payload[12..16].try_into().unwrap_or_default());
            let Some(last) = last_seq.get_mut(publisher as usize) else { continue };
            let gap = seq.wrapping_sub(*last);
            if gap == 0 || gap > u32::MAX / 2 {
                // A duplicate (QoS 1 redelivery) or a message overtaken by a later one, which
                // was counted as lost when the later one arrived.
                tally.out_of_order += 1;
                continue;
            }
            *last = seq;
            tally.lost += u64::from(gap - 1);
            shared.windows[publisher as usize].add_permits(gap as usize);
            if (shared.measure_from..shared.measure_until).contains(&now) {
                tally.delivered += 1;
                stats::record(&mut tally.histogram, now.saturating_sub(sent) / 1_000);
            }
        }
        if !acks.is_empty() {
            if connection.stream.write_all(&acks).await.is_err() {
                return tally;
            }
            acks.clear();
        }
        tokio::select! {
            filled = connection.fill() => if filled.is_err() { return tally },
            _ = stop.wait_for(|s| *s) => return tally,
        }
    }
}
