//! A control plane that is killed with SIGKILL at random points by `tests/tests/control_crash.rs`.
//!
//! Usage: `control-crash <store path> <devices>`. On first start it creates an account, two
//! instances, a product and `<devices>` devices; if no task exists it submits one distribution
//! task moving them all to the second instance. Then it runs the executor, printing `step` after
//! each durable step and `settled` when the task is done.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::io::Write;
use std::sync::Arc;

use meridian_control::{
    ControlPlane, NewAccount, NewInstance, NewProduct, PolicyRequest, TaskRequest,
};
use meridian_registry::Registry;
use meridian_registry::clock::SystemClock;
use meridian_registry::model::{AccountKind, MqttEndpoint};
use meridian_registry::secret::SecretKey;
use meridian_registry::store::RedbStore;

/// Fixed so every run of the process opens the same sealed secrets.
const KEY: &str = "0101010101010101010101010101010101010101010101010101010101010101";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(count)) = (args.next(), args.next()) else {
        return Err("usage: control-crash <store path> <devices>".into());
    };
    let count: usize = count.parse()?;
    let store = Arc::new(RedbStore::open(&path)?);
    let registry = Registry::new(store, SecretKey::from_hex(KEY)?, Arc::new(SystemClock));
    // 500 devices per commit, not the default whole task in one: the task then takes several
    // commits, so the kills land between and inside them.
    let plane = ControlPlane::new(registry.clone(), "operator").with_task_batch(500);
    let owner = "crash".parse()?;

    if registry.account(&owner).await.is_err() {
        setup(&plane, count).await?;
    }
    if plane.tasks(&owner).await?.items.is_empty() {
        let request = TaskRequest {
            product: "crashProduct1".parse()?,
            devices: (0..count).map(|n| format!("dev-{n:05}")).collect(),
            csv: None,
            policy: PolicyRequest::Specified { instance: Some("iot-b".parse()?) },
            cross_account: None,
        };
        plane.submit_task(&owner, request).await?;
        println!("submitted");
    }
    let mut stdout = std::io::stdout();
    loop {
        let tasks = plane.tasks(&owner).await?.items;
        let task = &tasks[0];
        if task.state.settled() {
            writeln!(stdout, "settled")?;
            return Ok(());
        }
        plane.step_once(&task.id).await?;
        writeln!(stdout, "step")?;
        stdout.flush()?;
    }
}

async fn setup(plane: &ControlPlane, count: usize) -> Result<(), Box<dyn std::error::Error>> {
    let registry = plane.registry();
    for (region, lat) in [("region-a", 10.0), ("region-b", 20.0)] {
        registry
            .put_region(meridian_registry::model::Region {
                id: region.parse()?,
                display_name: region.into(),
                latitude: lat,
                longitude: lat,
                bias_km: 0.0,
                public_endpoint: None,
            })
            .await?;
    }
    let account = NewAccount {
        id: "crash".parse()?,
        name: "Crash".into(),
        kind: AccountKind::Individual,
        verified_entity: None,
    };
    let (account, _key) = plane.create_account(account).await?;
    for (instance, region) in [("iot-a", "region-a"), ("iot-b", "region-b")] {
        let new = NewInstance {
            id: instance.parse()?,
            region: region.parse()?,
            edition: meridian_registry::model::Edition::Public,
            endpoint: MqttEndpoint { host: "127.0.0.1".into(), tcp_port: 1883, tls_port: None },
            lifetime_days: 30,
        };
        plane.create_instance(&account.id, new).await?;
    }
    let product = NewProduct {
        key: Some("crashProduct1".parse()?),
        name: "Crash".into(),
        home_instance: "iot-a".parse()?,
        topic_categories: Vec::new(),
        tsl: serde_json::Value::Null,
        parsing_script: None,
    };
    plane.create_product(&account.id, product).await?;
    let names = (0..count)
        .map(|n| Ok((format!("dev-{n:05}").parse()?, None)))
        .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()?;
    plane.create_devices(&account.id, &"crashProduct1".parse()?, names).await?;
    Ok(())
}
