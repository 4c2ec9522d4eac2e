//! The `store` scenario (issue 13): the registry on NATS JetStream against the embedded default
//! (redb), in the same run, in interleaved rounds. Each round and backend, on a fresh store:
//!
//! 1. **Writes**: the catalogue, then N devices of one product created through
//!    `Registry::create_devices`, `--per-call` devices per call (one atomic batch each: two ops
//!    per device must fit JetStream's 1,000-op batch). Devices per second over the creations.
//! 2. **Followers**: an edge routing table (`meridian_edge::follow`) and a broker's registry view
//!    (`meridian_broker::view::follow`), each on its own connection to the store (a NATS client
//!    of its own, as a separate process would have; the same redb handle for the embedded store,
//!    as `meridian up` shares it). A sampler per follower waits on its applied-revision watch
//!    (`caught_up(last + 1)`) and records when each newer revision became visible.
//! 3. **Distribution**: the control plane's task executor, in this process, over a store wrapper
//!    that timestamps each `Store::batch` when it returns (its revision is what it returns).
//!    One task moves every device to the other instance; the clock runs from submission until the
//!    return of the commit that settled it as `Distributed` (the task is read after every
//!    commit, through a second plane on the unwrapped store). While it runs, every store call of
//!    the control plane is counted and timed, to show where the time goes. Then every device's record is read back from
//!    the store: each must sit on the destination, and the task must hold one succeeded record per
//!    device, none twice.
//! 4. **Feed lag**: for each commit the control plane made while the task ran, from the moment
//!    its batch returned to the first moment the follower's applied revision reached it (0 when
//!    the follower had it before the batch returned, as redb's in-process feed can).
//!
//! Backends: `redb` (a temporary file), `nats-r1` (one nats-server, bucket at R1), `nats-r3` (a
//! 3-node cluster, JetStream domain `hub`, bucket at R3; the writer and both followers each
//! connect to all three seed URLs). Every round uses a new bucket.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use async_trait::async_trait;
use meridian_control::ControlPlane;
use meridian_control::distribution::TaskLimits;
use meridian_control::model::RecordResult;
use meridian_control::{PolicyRequest, TaskRequest};
use meridian_registry::clock::SystemClock;
use meridian_registry::ids::InstanceId;
use meridian_registry::model::{Device, Placement};
use meridian_registry::secret::SecretKey;
use meridian_registry::store::{
    Entry, JetStreamStore, NatsConfig, Op, RedbStore, Revision, Snapshot, Store, StoreError, Watch,
};
use meridian_registry::{Registry, decode, keys};
use meridian_tests::nats::{NatsCluster, NatsServer};
use serde::Serialize;

use crate::fleet;
use crate::stats::{self, Latency};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    Redb,
    NatsR1,
    NatsR3,
}

#[derive(Clone, Debug, clap::Args)]
pub struct StoreArgs {
    /// Devices created, then moved by one distribution task (at most 10,000, one task's limit).
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    /// Devices per `create_devices` call (two ops each; JetStream commits 1,000 ops at most).
    #[arg(long, default_value_t = 400)]
    pub per_call: usize,
    /// Rounds; each runs every backend once, the order rotating from round to round.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, value_delimiter = ',', default_values = ["redb", "nats-r1", "nats-r3"])]
    pub backends: Vec<Backend>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StoreRun {
    pub round: usize,
    pub backend: Backend,
    pub devices: usize,
    /// 1-minute load average when the run started.
    pub load1: f64,
    /// Devices created per second (the creation calls only).
    pub create_per_s: f64,
    /// Seconds from submitting the task until it read `Distributed`.
    pub distribution_s: f64,
    /// Devices found on the destination afterwards, and succeeded records (each device once).
    pub devices_moved: usize,
    pub records_succeeded: usize,
    /// Commits the control plane made while the task ran.
    pub commits: usize,
    /// Commit returned → visible in the edge's routing table / the broker's view.
    pub edge_lag: Latency,
    pub broker_lag: Latency,
    /// The store calls the control plane made while the task ran, and the time spent in them.
    pub store_calls: Calls,
    /// The same for the device creations.
    pub create_calls: Calls,
}

/// Calls of one kind: how many, items (keys read, ops written), bytes written, milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Count {
    pub calls: u64,
    pub items: u64,
    pub bytes: u64,
    pub ms: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Calls {
    pub get: Count,
    pub get_many: Count,
    pub scan_prefix: Count,
    pub batch: Count,
}

/// Where the NATS backends run; started once, shared by every round (a new bucket per round).
struct Servers {
    single: Option<NatsServer>,
    cluster: Option<NatsCluster>,
}

pub async fn run(args: &StoreArgs) -> Result<Vec<StoreRun>> {
    ensure!(
        (1..=meridian_control::MAX_TASK_DEVICES).contains(&args.devices),
        "--devices must be 1..=10000: one task moves them"
    );
    let servers = Servers {
        single: if args.backends.contains(&Backend::NatsR1) {
            Some(NatsServer::start().await)
        } else {
            None
        },
        cluster: if args.backends.contains(&Backend::NatsR3) {
            Some(NatsCluster::start(3).await)
        } else {
            None
        },
    };
    println!(
        "{:<6} {:<8} {:>6} {:>10} {:>8} {:>7} {:>20} {:>20}",
        "round",
        "backend",
        "load1",
        "create/s",
        "distr s",
        "commits",
        "edge lag p50/p99 ms",
        "broker lag p50/p99 ms"
    );
    let mut runs = Vec::new();
    for round in 0..args.rounds {
        for i in 0..args.backends.len() {
            let backend = args.backends[(i + round) % args.backends.len()];
            let run = run_once(args, &servers, backend, round).await?;
            println!(
                "{:<6} {:<8} {:>6.2} {:>10.0} {:>8.2} {:>7} {:>9.1} / {:>8.1} {:>9.1} / {:>8.1}",
                round + 1,
                format!("{backend:?}"),
                run.load1,
                run.create_per_s,
                run.distribution_s,
                run.commits,
                ms(run.edge_lag.p50_us),
                ms(run.edge_lag.p99_us),
                ms(run.broker_lag.p50_us),
                ms(run.broker_lag.p99_us),
            );
            for (what, c) in [("creations", &run.create_calls), ("executor", &run.store_calls)] {
                println!(
                    "       {what} store calls: get {} ({:.0} ms), get_many {} of {} keys ({:.0} ms), \
                 scan {} ({:.0} ms), batch {} of {} ops, {:.1} MB ({:.0} ms)",
                    c.get.calls,
                    c.get.ms,
                    c.get_many.calls,
                    c.get_many.items,
                    c.get_many.ms,
                    c.scan_prefix.calls,
                    c.scan_prefix.ms,
                    c.batch.calls,
                    c.batch.items,
                    c.batch.bytes as f64 / 1e6,
                    c.batch.ms,
                );
            }
            runs.push(run);
        }
    }
    summary(args, &runs);
    Ok(runs)
}

/// Medians over the rounds, and each as a ratio to redb's.
fn summary(args: &StoreArgs, runs: &[StoreRun]) {
    let median = |backend: Backend, f: &dyn Fn(&StoreRun) -> f64| {
        let mut v: Vec<f64> = runs.iter().filter(|r| r.backend == backend).map(f).collect();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    };
    println!("\nmedians over {} rounds ({} devices):", args.rounds, args.devices);
    let redb_create = median(Backend::Redb, &|r| r.create_per_s);
    let redb_distr = median(Backend::Redb, &|r| r.distribution_s);
    for &backend in &args.backends {
        let create = median(backend, &|r| r.create_per_s);
        let distr = median(backend, &|r| r.distribution_s);
        println!(
            "  {backend:?}: create {create:.0}/s ({:.2} x redb), distribution {distr:.2} s ({:.2} x \
             redb), edge lag p50 {:.1} ms p99 {:.1} ms, broker lag p50 {:.1} ms p99 {:.1} ms",
            create / redb_create,
            distr / redb_distr,
            median(backend, &|r| ms(r.edge_lag.p50_us)),
            median(backend, &|r| ms(r.edge_lag.p99_us)),
            median(backend, &|r| ms(r.broker_lag.p50_us)),
            median(backend, &|r| ms(r.broker_lag.p99_us)),
        );
    }
}

/// The stores of one run: the control plane's, and one per follower.
struct Stores {
    writer: Arc<dyn Store>,
    edge: Arc<dyn Store>,
    broker: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

async fn open(servers: &Servers, backend: Backend, round: usize) -> Result<Stores> {
    let (urls, replicas, domain) = match backend {
        Backend::Redb => {
            let dir = tempfile::tempdir().context("temporary directory")?;
            let store: Arc<dyn Store> = Arc::new(
                RedbStore::open(dir.path().join("registry.redb")).context("opening redb")?,
            );
            return Ok(Stores {
                writer: store.clone(),
                edge: store.clone(),
                broker: store,
                _dir: Some(dir),
            });
        }
        Backend::NatsR1 => {
            (vec![servers.single.as_ref().context("no single server")?.url()], 1, None)
        }
        Backend::NatsR3 => {
            let cluster = servers.cluster.as_ref().context("no cluster")?;
            (cluster.urls(), 3, Some(cluster.domain().to_owned()))
        }
    };
    let config: NatsConfig = serde_json::from_value(serde_json::json!({
        "servers": urls,
        "bucket": format!("bench{round}{}", replicas),
        "replicas": replicas,
        "domain": domain,
    }))?;
    let writer = JetStreamStore::connect(config.clone()).await?;
    writer.provision().await?;
    let edge = JetStreamStore::connect(config.clone()).await?;
    let broker = JetStreamStore::connect(config).await?;
    Ok(Stores {
        writer: Arc::new(writer),
        edge: Arc::new(edge),
        broker: Arc::new(broker),
        _dir: None,
    })
}

async fn run_once(
    args: &StoreArgs,
    servers: &Servers,
    backend: Backend,
    round: usize,
) -> Result<StoreRun> {
    let load1 = load_average();
    let stores = open(servers, backend, round).await?;
    let timed = Arc::new(Timed {
        inner: stores.writer.clone(),
        commits: Mutex::default(),
        committed: tokio::sync::Notify::new(),
        recording: AtomicBool::new(false),
        calls: Mutex::default(),
    });
    let sealer = SecretKey::from_hex(&SecretKey::generate_hex()?)?;
    let registry = Registry::new(timed.clone(), sealer.clone(), Arc::new(SystemClock));

    fleet::seed_catalogue(&registry).await?;
    timed.recording.store(true, Ordering::Release);
    let started = Instant::now();
    fleet::create_devices(&registry, 0..args.devices, args.per_call).await?;
    let create_per_s = args.devices as f64 / started.elapsed().as_secs_f64();
    timed.recording.store(false, Ordering::Release);
    let create_calls =
        std::mem::take(&mut *timed.calls.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);

    // The followers, each sampled on its applied-revision watch.
    let (table, writer) = meridian_edge::RoutingTable::new();
    let edge_follow = tokio::spawn(meridian_edge::follow(stores.edge.clone(), writer));
    let view = Arc::new(meridian_broker::view::RegistryView::default());
    let (changed, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let broker_follow = tokio::spawn(meridian_broker::view::follow(
        stores.broker.clone(),
        sealer.clone(),
        view.clone(),
        changed,
    ));
    let drain = tokio::spawn(async move { while changes.recv().await.is_some() {} });
    let edge_samples = Arc::new(Mutex::new(Vec::new()));
    let broker_samples = Arc::new(Mutex::new(Vec::new()));
    let edge_sampler = {
        let (table, samples) = (table.clone(), edge_samples.clone());
        tokio::spawn(async move {
            loop {
                table.caught_up(table.revision() + 1).await;
                push(&samples, table.revision());
            }
        })
    };
    let broker_sampler = {
        let (view, samples) = (view.clone(), broker_samples.clone());
        tokio::spawn(async move {
            loop {
                view.caught_up(view.revision() + 1).await;
                push(&samples, view.revision());
            }
        })
    };
    let seeded = stores.writer.revision().await?;
    table.caught_up(seeded).await;
    view.caught_up(seeded).await;

    // The distribution, timed from submission.
    let limits = TaskLimits {
        max_active_per_account: u32::MAX,
        submissions_per_minute: 0,
        submission_burst: 0,
    };
    let plane =
        ControlPlane::new(registry.clone(), "bench-operator-token").with_task_limits(limits);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let executor = tokio::spawn(plane.clone().run_executor(async {
        let _ = stopped.await;
    }));
    let watcher = ControlPlane::new(
        Registry::new(stores.writer.clone(), sealer.clone(), Arc::new(SystemClock)),
        "bench-operator-token",
    );
    let caller = fleet::ACCOUNT.parse()?;
    let destination: InstanceId = fleet::DESTINATION.parse()?;
    let request = TaskRequest {
        product: fleet::PRODUCT.parse()?,
        devices: (0..args.devices).map(fleet::device_name).collect(),
        csv: None,
        policy: PolicyRequest::Specified { instance: Some(destination.clone()) },
        cross_account: None,
    };
    let from_commit = timed.commits.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.len();
    let submitted = Instant::now();
    let id = plane.submit_task(&caller, request).await?.id;
    timed.recording.store(true, Ordering::Release);
    // Looked at after each commit, through a plane on the untimed store, so these reads are
    // not counted as the executor's.
    let task = loop {
        let committed = timed.committed.notified();
        tokio::pin!(committed);
        committed.as_mut().enable();
        let task = watcher.task(&caller, &id).await?;
        if task.state.settled() {
            break task;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), committed).await;
    };
    timed.recording.store(false, Ordering::Release);
    let commits: Vec<(Revision, Instant)> =
        timed.commits.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[from_commit..].to_vec();
    // Until the commit that settled it: the last one before it was seen settled.
    let settled_at = commits.last().map_or_else(Instant::now, |(_, at)| *at);
    let distribution_s = settled_at.saturating_duration_since(submitted).as_secs_f64();
    let store_calls = timed.calls.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    let _ = stop.send(());
    executor.await?;
    if task.state != meridian_control::model::TaskState::Distributed {
        bail!("{backend:?}: the task settled as {:?}: {:?}", task.state, task.failure);
    }

    // None lost: one succeeded record per device, and every device on the destination.
    let mut recorded = HashSet::new();
    let mut records_succeeded = 0;
    for record in &task.records {
        ensure!(
            recorded.insert(record.device_name.clone()),
            "{} recorded twice",
            record.device_name
        );
        if record.result == RecordResult::Succeeded {
            records_succeeded += 1;
        }
    }
    let snapshot = stores.writer.scan_prefix(keys::DEVICES).await?;
    let mut devices_moved = 0;
    for entry in &snapshot.entries {
        let device: Device = decode(&entry.key, &entry.value)?;
        if device.placement == (Placement::Specified { instance: destination.clone() }) {
            devices_moved += 1;
        }
    }
    ensure!(
        devices_moved == args.devices && records_succeeded == args.devices,
        "{backend:?}: {devices_moved} devices moved, {records_succeeded} records succeeded, of {}",
        args.devices
    );

    // Lag: every commit against the first sample at or past it, once both followers have all.
    let last = commits.iter().map(|(revision, _)| *revision).max().unwrap_or(seeded);
    for samples in [&edge_samples, &broker_samples] {
        // The samplers record right after the watch moves; give them that moment.
        while samples.lock().map_err(|_| anyhow::anyhow!("a sampler panicked"))?.last().map(|s| s.0)
            < Some(last)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for task in [edge_sampler, broker_sampler, drain] {
        task.abort();
    }
    edge_follow.abort();
    broker_follow.abort();
    let edge_lag = lag(&commits, &edge_samples)?;
    let broker_lag = lag(&commits, &broker_samples)?;
    Ok(StoreRun {
        round: round + 1,
        backend,
        devices: args.devices,
        load1,
        create_per_s,
        distribution_s,
        devices_moved,
        records_succeeded,
        commits: commits.len(),
        edge_lag,
        broker_lag,
        store_calls,
        create_calls,
    })
}

fn push(samples: &Mutex<Vec<(Revision, Instant)>>, revision: Revision) {
    let now = Instant::now();
    // A poisoned lock means a sampler panicked; the run's lag is then incomplete anyway.
    if let Ok(mut samples) = samples.lock() {
        samples.push((revision, now));
    }
}

/// Per commit, from its batch's return to the first sample at or past its revision.
fn lag(
    commits: &[(Revision, Instant)],
    samples: &Mutex<Vec<(Revision, Instant)>>,
) -> Result<Latency> {
    let samples = samples.lock().map_err(|_| anyhow::anyhow!("a sampler panicked"))?;
    let mut histogram = stats::histogram();
    for (revision, committed) in commits {
        // Samples are in time order with non-decreasing revisions.
        let index = samples.partition_point(|(applied, _)| applied < revision);
        let Some((_, seen)) = samples.get(index) else {
            bail!("revision {revision} was never applied");
        };
        let micros = seen.saturating_duration_since(*committed).as_micros();
        stats::record(&mut histogram, u64::try_from(micros).unwrap_or(u64::MAX));
    }
    Ok(Latency::of(&histogram))
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1e3
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The control plane's store, timestamping every batch when it returns and, while recording,
/// counting every call and the time spent in it.
struct Timed {
    inner: Arc<dyn Store>,
    commits: Mutex<Vec<(Revision, Instant)>>,
    committed: tokio::sync::Notify,
    recording: AtomicBool,
    calls: Mutex<Calls>,
}

impl Timed {
    fn count(
        &self,
        which: fn(&mut Calls) -> &mut Count,
        items: usize,
        bytes: usize,
        since: Instant,
    ) {
        if !self.recording.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut calls) = self.calls.lock() {
            let count = which(&mut calls);
            count.calls += 1;
            count.items += items as u64;
            count.bytes += bytes as u64;
            count.ms += since.elapsed().as_secs_f64() * 1e3;
        }
    }
}

#[async_trait]
impl Store for Timed {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let started = Instant::now();
        let entry = self.inner.get(key).await;
        self.count(|c| &mut c.get, 1, 0, started);
        entry
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, StoreError> {
        let started = Instant::now();
        let entries = self.inner.get_many(keys).await;
        self.count(|c| &mut c.get_many, keys.len(), 0, started);
        entries
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let started = Instant::now();
        let snapshot = self.inner.scan_prefix(prefix).await;
        self.count(|c| &mut c.scan_prefix, 0, 0, started);
        snapshot
    }

    async fn batch(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        let started = Instant::now();
        let (items, bytes) =
            (ops.len(), ops.iter().map(|op| op.value.as_ref().map_or(0, |v| v.len())).sum());
        let revision = self.inner.batch(ops).await;
        self.count(|c| &mut c.batch, items, bytes, started);
        let revision = revision?;
        let now = Instant::now();
        if let Ok(mut commits) = self.commits.lock() {
            commits.push((revision, now));
        }
        self.committed.notify_waiters();
        Ok(revision)
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }

    fn watch_from(&self, after: Revision) -> Watch {
        self.inner.watch_from(after)
    }

    async fn compact(&self, through: Revision) -> Result<(), StoreError> {
        self.inner.compact(through).await
    }

    fn max_batch(&self) -> usize {
        self.inner.max_batch()
    }
}
