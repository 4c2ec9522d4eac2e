//! `meridian-bench serve-world`: everything the migrate scenario moves devices through, in one
//! process: the registry (redb on a temporary file, seeded with the fleet), the control plane
//! and its task executor, the bootstrap edge, and a broker for each of the two instances, all
//! on `127.0.0.1:0`, wired as `meridian up` wires them (brokers and edge follow the registry's
//! change feed). Prints [`WorldReady`]; on `go` submits tasks moving every device to the
//! destination and prints [`WorldSettled`] once they settle; exits when stdin closes.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use meridian_broker::daemon::{self, Daemon, Listeners};
use meridian_control::distribution::TaskLimits;
use meridian_control::{ControlPlane, MAX_TASK_DEVICES, PolicyRequest, TaskRequest};
use meridian_edge::{Edge, EdgeConfig, RoutingTable};
use meridian_geo::{Locator, LocatorOptions};
use meridian_registry::ids::{AccountId, InstanceId};
use meridian_registry::model::Instance;
use meridian_registry::{decode, encode, keys};
use tokio::io::AsyncBufReadExt;

use crate::fleet::{self, Fleet};
use crate::migrate::{WorldReady, WorldSettled};
use crate::serve;

#[derive(Clone, Debug, clap::Args)]
pub struct WorldArgs {
    #[arg(long)]
    pub devices: usize,
    #[arg(long, default_value_t = 2_000)]
    pub notify_rate: u32,
}

pub async fn serve_world(args: WorldArgs) -> Result<()> {
    let fleet = Fleet::seed(args.devices).await?;
    let (source, source_addr) = broker(&fleet, fleet::SOURCE, args.notify_rate).await?;
    let (destination, destination_addr) =
        broker(&fleet, fleet::DESTINATION, args.notify_rate).await?;

    // The whole fleet moves at once, one task per 10,000 devices: the per-account limits that
    // keep tenants from burying the executor would hold the bench back.
    let limits = TaskLimits {
        max_active_per_account: u32::MAX,
        submissions_per_minute: 0,
        submission_burst: 0,
    };
    let plane =
        ControlPlane::new(fleet.registry.clone(), "bench-operator-token").with_task_limits(limits);
    tokio::spawn(plane.clone().run_executor(std::future::pending()));

    // The edge without GeoIP: every device here has a home or specified placement.
    let mut config = EdgeConfig::default();
    config.rate_limit.enabled = false;
    let locator = Locator::new(None, fleet::SOURCE_REGION, LocatorOptions::default());
    let (table, writer) = RoutingTable::new();
    let store = fleet.store.clone();
    tokio::spawn(async move {
        if let Err(error) = meridian_edge::follow(store, writer).await {
            eprintln!("edge stopped following the registry: {error}");
        }
    });
    table.caught_up(fleet.store.revision().await?).await;
    let edge = Edge::new(&config, table, locator, None)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let edge_addr = listener.local_addr()?;
    tokio::spawn(meridian_edge::run(listener, edge, std::future::pending()));

    let ready = WorldReady { edge: edge_addr, source: source_addr, destination: destination_addr };
    println!("{}", serde_json::to_string(&ready)?);

    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = stdin.next_line().await? {
        if line.trim() == "go" {
            let settled = distribute(&plane, args.devices).await?;
            println!("{}", serde_json::to_string(&settled)?);
        }
    }
    for daemon in [source, destination] {
        daemon.shutdown().await;
    }
    Ok(())
}

/// Starts the broker of `instance` and points the instance's endpoint at it.
async fn broker(
    fleet: &Fleet,
    instance: &str,
    notify_rate: u32,
) -> Result<(Daemon, std::net::SocketAddr)> {
    let mut config = serve::broker_config(instance, "127.0.0.1:0")?;
    config.limits.notify_rate = notify_rate;
    let listeners = Listeners::bind(&config).await?;
    let addr = listeners.tcp.local_addr()?;
    let daemon =
        daemon::start(config, fleet.store.clone(), fleet.sealer.clone(), listeners).await?;

    let id: InstanceId = instance.parse()?;
    let key = keys::instance(&id);
    let entry = fleet.store.get(&key).await?.context("instance record")?;
    let mut record: Instance = decode(&entry.key, &entry.value)?;
    record.endpoint.host = addr.ip().to_string();
    record.endpoint.tcp_port = addr.port();
    fleet.store.put(&key, encode(&record)?).await?;
    Ok((daemon, addr))
}

/// Submits tasks moving devices `0..devices` to the destination and waits until all settle.
async fn distribute(plane: &ControlPlane, devices: usize) -> Result<WorldSettled> {
    let started = Instant::now();
    let caller: AccountId = fleet::ACCOUNT.parse()?;
    let mut ids = Vec::new();
    for start in (0..devices).step_by(MAX_TASK_DEVICES) {
        let request = TaskRequest {
            product: fleet::PRODUCT.parse()?,
            devices: (start..devices.min(start + MAX_TASK_DEVICES))
                .map(fleet::device_name)
                .collect(),
            csv: None,
            policy: PolicyRequest::Specified { instance: Some(fleet::DESTINATION.parse()?) },
            cross_account: None,
        };
        ids.push(plane.submit_task(&caller, request).await?.id);
    }
    let mut settled = WorldSettled { settled_s: 0.0, succeeded: 0, failed: 0 };
    for id in ids {
        loop {
            let task = plane.task(&caller, &id).await?;
            if task.state.settled() {
                for record in &task.records {
                    match record.result {
                        meridian_control::model::RecordResult::Succeeded => settled.succeeded += 1,
                        meridian_control::model::RecordResult::Failed => settled.failed += 1,
                    }
                }
                break;
            }
            // Reading a task decodes its whole record (10,000 devices, ~1 MB of JSON): polled
            // often, this process would compete with the executor it is timing.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    settled.settled_s = started.elapsed().as_secs_f64();
    Ok(settled)
}
