//! The distribution executor: one task moving 10,000 devices (PROTOCOL §5's largest task) to
//! another instance, stepped with `step_once` until it settles, on a `RedbStore` in a temporary
//! directory (fsync per commit). Only the stepping is timed: the account, instances, product,
//! devices and the submitted task are set up afresh, untimed, for every iteration.
//!
//! Two batch sizes: the default ([`TASK_BATCH`], the whole task in one commit) and 500 devices
//! per commit, to show what the task record's rewrite per commit costs.
//!
//! `cargo bench -p meridian-control --bench distribution`; criterion reports devices/s as
//! elements/s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meridian_control::distribution::TASK_BATCH;
use meridian_control::{
    ControlPlane, NewAccount, NewInstance, NewProduct, PolicyRequest, TaskRequest,
};
use meridian_registry::Registry;
use meridian_registry::clock::SystemClock;
use meridian_registry::ids::AccountId;
use meridian_registry::model::{AccountKind, Edition, MqttEndpoint, Region};
use meridian_registry::secret::SecretKey;
use meridian_registry::store::RedbStore;

const DEVICES: usize = 10_000;
const KEY: &str = "0101010101010101010101010101010101010101010101010101010101010101";
const PRODUCT: &str = "benchProduct1";

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("distribution");
    group.throughput(Throughput::Elements(DEVICES as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for batch in [TASK_BATCH, 500] {
        group.bench_function(format!("move_10000_devices/batch_{batch}"), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let world = World::new(batch).await;
                        let started = Instant::now();
                        world.run_task().await;
                        total += started.elapsed();
                    }
                    total
                })
            })
        });
    }
    group.finish();
}

/// A control plane on a fresh store holding the devices and one submitted task.
struct World {
    plane: ControlPlane,
    task: String,
    _dir: tempfile::TempDir,
}

impl World {
    async fn new(batch: usize) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(RedbStore::open(dir.path().join("control.redb")).expect("store"));
        let key = SecretKey::from_hex(KEY).expect("key");
        let registry = Registry::new(store, key, Arc::new(SystemClock));
        let plane = ControlPlane::new(registry, "operator").with_task_batch(batch);
        let owner = setup(&plane).await;
        let request = TaskRequest {
            product: PRODUCT.parse().expect("product key"),
            devices: (0..DEVICES).map(device_name).collect(),
            csv: None,
            policy: PolicyRequest::Specified { instance: Some("iot-b".parse().expect("id")) },
            cross_account: None,
        };
        let task = plane.submit_task(&owner, request).await.expect("submit").id;
        World { plane, task, _dir: dir }
    }

    /// Steps the task until it settles, as the executor does, and checks every device moved.
    async fn run_task(&self) {
        loop {
            if let Some(task) = self.plane.step_once(&self.task).await.expect("step") {
                assert_eq!(task.records.len(), DEVICES);
                return;
            }
        }
    }
}

async fn setup(plane: &ControlPlane) -> AccountId {
    let registry = plane.registry();
    for (region, lat) in [("region-a", 10.0), ("region-b", 20.0)] {
        let region = Region {
            id: region.parse().expect("region"),
            display_name: region.into(),
            latitude: lat,
            longitude: lat,
            bias_km: 0.0,
            public_endpoint: None,
        };
        registry.put_region(region).await.expect("region");
    }
    let account = NewAccount {
        id: "bench".parse().expect("account"),
        name: "Bench".into(),
        kind: AccountKind::Individual,
        verified_entity: None,
    };
    let (account, _key) = plane.create_account(account).await.expect("account");
    for (instance, region) in [("iot-a", "region-a"), ("iot-b", "region-b")] {
        let new = NewInstance {
            id: instance.parse().expect("instance"),
            region: region.parse().expect("region"),
            edition: Edition::Public,
            endpoint: MqttEndpoint { host: "127.0.0.1".into(), tcp_port: 1883, tls_port: None },
            lifetime_days: 30,
        };
        plane.create_instance(&account.id, new).await.expect("instance");
    }
    let product = NewProduct {
        key: Some(PRODUCT.parse().expect("product key")),
        name: "Bench".into(),
        home_instance: "iot-a".parse().expect("instance"),
        topic_categories: Vec::new(),
        tsl: serde_json::Value::Null,
        parsing_script: None,
    };
    plane.create_product(&account.id, product).await.expect("product");
    let names = (0..DEVICES).map(|n| (device_name(n).parse().expect("name"), None)).collect();
    let product = PRODUCT.parse().expect("product key");
    plane.create_devices(&account.id, &product, names).await.expect("devices");
    account.id
}

fn device_name(n: usize) -> String {
    format!("dev-{n:05}")
}

criterion_group!(benches, bench);
criterion_main!(benches);
