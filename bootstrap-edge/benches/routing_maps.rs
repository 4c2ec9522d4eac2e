//! Which concurrent map holds the routing table: dashmap vs papaya vs scc's `HashIndex`, with the
//! real key and value types, at 1 M and 10 M devices.
//!
//! For each map and size this measures
//! - read latency (criterion, mean per lookup) with no writer and while a writer thread applies
//!   10,000-entry batches back to back (the worst case of a distribution task);
//! - the read latency distribution under that writer (p50 … max, one timed lookup at a time, so
//!   a reader stalled by a writer shows in the tail);
//! - how long one 10,000-entry batch takes to apply while readers run;
//! - resident memory per entry, each map built in a fresh child process so that one map's freed
//!   pages do not hide the next one's.
//!
//! Run with `cargo bench -p meridian-edge --bench routing_maps`; the non-criterion figures are
//! printed as `routing_maps:` lines. `ROUTING_MAPS_SIZES=1000000` limits the sizes.

use std::hint::black_box;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use criterion::Criterion;
use foldhash::fast::RandomState;
use hdrhistogram::Histogram;
use meridian_edge::route::{Candidates, ProductNo, Route, RouteKey};
use meridian_registry::model::PlacementCandidate;

/// Devices per distribution task, the largest batch the routing table is asked to absorb.
const BATCH: usize = 10_000;
/// Products the devices are spread over.
const PRODUCTS: u64 = 1_000;
/// Distinct lookup keys the reader cycles through (a random sample of the table).
const SAMPLE: usize = 1 << 20;
/// Timed lookups for the latency distribution.
const TAIL_READS: usize = 2_000_000;
const PROBE_ENV: &str = "ROUTING_MAPS_MEMORY_PROBE";

fn main() {
    if let Ok(spec) = std::env::var(PROBE_ENV) {
        memory_probe(&spec);
        return;
    }
    let sizes: Vec<usize> = std::env::var("ROUTING_MAPS_SIZES")
        .map(|s| s.split(',').map(|n| n.trim().parse().expect("size")).collect())
        .unwrap_or_else(|_| vec![1_000_000, 10_000_000]);

    for &n in &sizes {
        for map in ["dashmap", "papaya", "scc"] {
            let output = Command::new(std::env::current_exe().expect("own path"))
                .env(PROBE_ENV, format!("{map}:{n}"))
                .output()
                .expect("memory probe runs");
            print!("{}", String::from_utf8_lossy(&output.stdout));
        }
    }

    for &n in &sizes {
        // Building 10 M entries takes seconds per map, so fewer samples there.
        let samples = if n >= 10_000_000 { 10 } else { 30 };
        let mut c = Criterion::default()
            .sample_size(samples)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .configure_from_args();
        bench_map::<Dash>(&mut c, n);
        bench_map::<Papaya>(&mut c, n);
        bench_map::<Scc>(&mut c, n);
        c.final_summary();
    }
}

/// The operations the routing table needs, implemented by each candidate map.
trait Table: Send + Sync + Sized + 'static {
    const NAME: &'static str;
    fn new() -> Self;
    /// Inserts or replaces every entry of `batch`, as the feed follower does.
    fn apply(&self, batch: &[(RouteKey, Route)]);
    /// What a request does: find the route and look at it.
    fn read(&self, key: &RouteKey) -> Option<u8>;
    fn len(&self) -> usize;
}

fn tag(route: &Route) -> u8 {
    match route {
        Route::Home => 0,
        Route::Specified(_) => 1,
        Route::Nearest(_) => 2,
    }
}

struct Dash(dashmap::DashMap<RouteKey, Route, RandomState>);

impl Table for Dash {
    const NAME: &'static str = "dashmap";
    fn new() -> Self {
        Self(dashmap::DashMap::with_hasher(RandomState::default()))
    }
    fn apply(&self, batch: &[(RouteKey, Route)]) {
        for (key, route) in batch {
            self.0.insert(key.clone(), route.clone());
        }
    }
    fn read(&self, key: &RouteKey) -> Option<u8> {
        self.0.get(key).map(|route| tag(&route))
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

struct Papaya(papaya::HashMap<RouteKey, Route, RandomState>);

impl Table for Papaya {
    const NAME: &'static str = "papaya";
    fn new() -> Self {
        Self(papaya::HashMap::with_hasher(RandomState::default()))
    }
    fn apply(&self, batch: &[(RouteKey, Route)]) {
        let map = self.0.pin();
        for (key, route) in batch {
            map.insert(key.clone(), route.clone());
        }
    }
    fn read(&self, key: &RouteKey) -> Option<u8> {
        self.0.pin().get(key).map(tag)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

struct Scc(scc::HashIndex<RouteKey, Route, RandomState>);

impl Table for Scc {
    const NAME: &'static str = "scc";
    fn new() -> Self {
        Self(scc::HashIndex::with_hasher(RandomState::default()))
    }
    fn apply(&self, batch: &[(RouteKey, Route)]) {
        for (key, route) in batch {
            match self.0.entry_sync(key.clone()) {
                scc::hash_index::Entry::Occupied(mut entry) => entry.update(route.clone()),
                scc::hash_index::Entry::Vacant(entry) => {
                    entry.insert_entry(route.clone());
                }
            }
        }
    }
    fn read(&self, key: &RouteKey) -> Option<u8> {
        self.0.peek_with(key, |_, route| tag(route))
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Device `i`: products round-robin, 16-character names like the ones fleets use.
fn key(i: u64) -> RouteKey {
    let mut name = compact_str::CompactString::const_new("dev-");
    use std::fmt::Write;
    write!(name, "{i:012}").expect("writing to a string");
    RouteKey { product: ProductNo((i % PRODUCTS) as u32), name }
}

/// A few shared placements, as distribution tasks create them.
struct Routes {
    specified: Route,
    nearest: Route,
}

impl Routes {
    fn new() -> Self {
        let candidate = |region: &str, instance: &str| PlacementCandidate {
            region: region.parse().expect("region id"),
            instance: instance.parse().expect("instance id"),
        };
        Self {
            specified: Route::Specified(Arc::new("iot-fra-1".parse().expect("instance id"))),
            nearest: Route::Nearest(Arc::new(Candidates::new(Box::new([
                candidate("eu-central-1", "iot-fra-1"),
                candidate("cn-shanghai", "iot-sh-1"),
                candidate("us-east-1", "iot-va-1"),
            ])))),
        }
    }

    /// Mostly home placements, some distributed ones.
    fn initial(&self, i: u64) -> Route {
        match i % 20 {
            0 | 1 => self.specified.clone(),
            2 => self.nearest.clone(),
            _ => Route::Home,
        }
    }
}

/// SplitMix64: a fixed, dependency-free stream of random indices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> u64 {
        self.next() % n as u64
    }
}

fn build<T: Table>(n: usize) -> T {
    let routes = Routes::new();
    let table = T::new();
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..n as u64 {
        batch.push((key(i), routes.initial(i)));
        if batch.len() == BATCH {
            table.apply(&batch);
            batch.clear();
        }
    }
    table.apply(&batch);
    assert_eq!(table.len(), n);
    table
}

fn bench_map<T: Table>(c: &mut Criterion, n: usize) {
    let started = Instant::now();
    let table = Arc::new(build::<T>(n));
    println!("routing_maps: {} n={n} built in {:.1?}", T::NAME, started.elapsed());

    let mut rng = Rng(42);
    let sample: Vec<RouteKey> = (0..SAMPLE).map(|_| key(rng.below(n))).collect();
    let label = format!("{}M", n / 1_000_000);

    let mut group = c.benchmark_group(format!("routing_read/{label}"));
    let mut next = 0usize;
    group.bench_function(format!("{}/idle", T::NAME), |b| {
        b.iter(|| {
            next = (next + 1) & (SAMPLE - 1);
            black_box(table.read(&sample[next]))
        })
    });

    let writer = Writer::start(Arc::clone(&table), n);
    group.bench_function(format!("{}/writer_10k_batches", T::NAME), |b| {
        b.iter(|| {
            next = (next + 1) & (SAMPLE - 1);
            black_box(table.read(&sample[next]))
        })
    });
    group.finish();

    let mut reads = histogram();
    for i in 0..TAIL_READS {
        let key = &sample[i & (SAMPLE - 1)];
        let start = Instant::now();
        black_box(table.read(key));
        reads.saturating_record(start.elapsed().as_nanos() as u64);
    }
    let batches = writer.stop();
    println!(
        "routing_maps: {} n={n} reads under writer (ns, incl. ~20 ns clock): p50={} p99={} \
         p99.9={} p99.99={} max={}",
        T::NAME,
        reads.value_at_quantile(0.5),
        reads.value_at_quantile(0.99),
        reads.value_at_quantile(0.999),
        reads.value_at_quantile(0.9999),
        reads.max(),
    );
    println!(
        "routing_maps: {} n={n} 10k-entry batch apply (ms): batches={} p50={:.2} max={:.2}",
        T::NAME,
        batches.len(),
        batches.value_at_quantile(0.5) as f64 / 1e3,
        batches.max() as f64 / 1e3,
    );

    let started = Instant::now();
    drop(table);
    println!("routing_maps: {} n={n} dropped in {:.1?}", T::NAME, started.elapsed());
}

/// Up to 10 s in nanoseconds (or 3 h in microseconds) at 3 significant digits. A fixed range,
/// because `saturating_record` clamps to an auto-resizing histogram's current top.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid histogram bounds")
}

/// Applies 10,000-entry batches of placement changes to random existing devices, back to back,
/// until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Histogram<u64>>,
}

impl Writer {
    fn start<T: Table>(table: Arc<T>, n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let routes = Routes::new();
            let mut rng = Rng(7);
            // Batch apply time in microseconds.
            let mut batches = histogram();
            let mut round = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let batch: Vec<(RouteKey, Route)> = (0..BATCH)
                    .map(|_| {
                        let i = rng.below(n);
                        (key(i), routes.initial(i + round))
                    })
                    .collect();
                let start = Instant::now();
                table.apply(&batch);
                batches.saturating_record(start.elapsed().as_micros() as u64);
                round += 1;
            }
            batches
        });
        Self { stop, thread }
    }

    fn stop(self) -> Histogram<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("writer thread")
    }
}

/// Child-process side of the memory measurement: `map:n`.
fn memory_probe(spec: &str) {
    let (map, n) = spec.split_once(':').expect("map:n");
    let n: usize = n.parse().expect("n");
    let before = resident_bytes();
    let after = match map {
        "dashmap" => {
            let table = build::<Dash>(n);
            let rss = resident_bytes();
            drop(black_box(table));
            rss
        }
        "papaya" => {
            let table = build::<Papaya>(n);
            let rss = resident_bytes();
            drop(black_box(table));
            rss
        }
        "scc" => {
            let table = build::<Scc>(n);
            let rss = resident_bytes();
            drop(black_box(table));
            rss
        }
        other => panic!("unknown map {other}"),
    };
    let per_entry = (after.saturating_sub(before)) as f64 / n as f64;
    println!(
        "routing_maps: {map} n={n} resident {:.0} MiB, {per_entry:.1} bytes/entry \
         (key {} B + value {} B inline)",
        (after - before) as f64 / (1 << 20) as f64,
        std::mem::size_of::<RouteKey>(),
        std::mem::size_of::<Route>(),
    );
}

/// Resident set size from `/proc/self/statm` (pages × 4 KiB).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("procfs");
    let pages: u64 = statm.split_whitespace().nth(1).expect("resident field").parse().expect("n");
    pages * 4096
}
