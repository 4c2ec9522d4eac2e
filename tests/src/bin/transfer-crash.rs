//! A control plane that is killed with SIGKILL at random points by `tests/tests/transfer_crash.rs`
//! while it drives device transfer orders (PROTOCOL §6) and instance transfer orders (PROTOCOL §7).
//!
//! Usage: `transfer-crash <store path> <product devices> <instances> <devices per instance>
//! <orders per instance>`.
//!
//! It keeps no state of its own, like an operator retrying after an outage: each round it reads
//! the store, picks the next thing to do from what it finds, prints `act`, does it once a line
//! arrives on stdin, and prints `step` once that is durable; it prints `settled` when nothing is
//! left to do. Whatever a kill interrupted is therefore either done (and seen as done) or not
//! (and done again). To run it by hand, feed it `yes go |`.
//!
//! The world: accounts `alpha`, `bravo` and `charlie`; `alpha` owns everything at first, and only
//! it is on the transfer allow-list. Product [`PRODUCT`] (on [`HOME`]) and the product of
//! instance `inst-3` have their devices transferred to `bravo` and `charlie` in orders of 1 to
//! 100 devices, a few pending at a time, settled in the pattern [`DEVICE_FATES`]. Meanwhile
//! every `inst-N` (with its product and devices) passes from owner to owner through
//! `<orders per instance>` instance orders initiated in batches, each settled by its
//! [`INSTANCE_FATES`] entry, expiry included: the driver moves the injected clock past the 24
//! hours. So `inst-3`'s product changes owner (in the third round of instance orders) while
//! device orders may be pending on it.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use meridian_control::resource_transfer::{CONFIRM_WITHIN, MIN_INSTANCE_AGE};
use meridian_control::{
    ControlError, ControlPlane, DeviceTransfer, DeviceTransferRequest, DeviceTransferState,
    InstanceTransfer, InstanceTransferRequest, InstanceTransferState, NewAccount, NewInstance,
    NewProduct, ProductPatch,
};
use meridian_registry::clock::{Clock, ManualClock, Timestamp};
use meridian_registry::ids::{AccountId, DeviceName, InstanceId, ProductKey, RegionId};
use meridian_registry::model::{AccountKind, Edition, MqttEndpoint, Placement, Region};
use meridian_registry::secret::SecretKey;
use meridian_registry::store::{RedbStore, Store};
use meridian_registry::{Registry, decode};

type Error = Box<dyn std::error::Error>;

/// Fixed so every run of the process opens the same sealed secrets.
const KEY: &str = "0101010101010101010101010101010101010101010101010101010101010101";
/// Where the injected clock's time is kept, so it never runs backwards across a restart. The
/// test reads it too, to tell a live instance order from an expired one.
const CLOCK_KEY: &str = "crash-driver/clock";
const START: Timestamp = Timestamp(1_700_000_000_000);
/// Instance owners pass an instance on to the next account in this ring.
const ACCOUNTS: [&str; 3] = ["alpha", "bravo", "charlie"];
/// The product whose devices are only ever moved by device orders, and its instance.
const PRODUCT: &str = "xferProduct01";
const HOME: &str = "iot-home";
/// The instance whose product has device orders too: `INSTANCE_FATES` first confirm an order
/// of it in the third round, so device orders come and go on its product before.
const SHARED: usize = 3;
/// Sizes of successive device orders: full ones, single devices and odd sizes between.
const ORDER_SIZES: [usize; 8] = [37, 12, 64, 100, 88, 5, 23, 1];
/// Device orders submitted in all; after that the driver only settles.
const MAX_DEVICE_ORDERS: usize = 30;
/// Device orders pending at once, at most.
const MAX_PENDING: usize = 3;
/// How device orders are settled, oldest first. With [`ORDER_SIZES`] this accepts 253 devices
/// at most (two full orders among them), so a [`PRODUCT`] of 300 never runs out and the driver
/// does the same work whatever the kills.
const DEVICE_FATES: [DeviceFate; 6] = [
    DeviceFate::Reject,
    DeviceFate::Accept,
    DeviceFate::Cancel,
    DeviceFate::Reject,
    DeviceFate::Cancel,
    DeviceFate::Accept,
];
/// How the k-th order of instance i is settled: `INSTANCE_FATES[(i + k) % 5]`.
const INSTANCE_FATES: [InstanceFate; 5] = [
    InstanceFate::Confirm,
    InstanceFate::Reject,
    InstanceFate::Confirm,
    InstanceFate::Cancel,
    InstanceFate::Expire,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeviceFate {
    Accept,
    Reject,
    Cancel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InstanceFate {
    Confirm,
    Reject,
    Cancel,
    Expire,
}

/// One durable step.
#[derive(Debug)]
enum Action {
    SubmitDevices(DeviceTransferRequest),
    SettleDevices { order: DeviceTransfer, fate: DeviceFate },
    SettleInstances { caller: AccountId, fate: InstanceFate, orders: Vec<String> },
    Initiate { source: AccountId, destination: AccountId, instances: Vec<String> },
    PassTime(Duration),
}

struct Driver {
    plane: ControlPlane,
    /// `ACCOUNTS[0]`: the first owner of everything, and the only account allowed to transfer
    /// devices out.
    alpha: AccountId,
    clock: ManualClock,
    product_devices: usize,
    instances: Vec<InstanceId>,
    /// Devices of each instance's product.
    instance_devices: usize,
    orders_per_instance: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, product_devices, instances, instance_devices, orders_per_instance] = args.as_slice()
    else {
        return Err("usage: transfer-crash <store path> <product devices> <instances> \
                    <devices per instance> <orders per instance>"
            .into());
    };
    let store = Arc::new(RedbStore::open(path)?);
    let now = match store.get(CLOCK_KEY).await? {
        Some(entry) => Timestamp(serde_json::from_slice(&entry.value)?),
        None => START,
    };
    let clock = ManualClock::new(now);
    let registry = Registry::new(store, SecretKey::from_hex(KEY)?, Arc::new(clock.clone()));
    let instances: usize = instances.parse()?;
    let driver = Driver {
        plane: ControlPlane::new(registry, "operator"),
        alpha: ACCOUNTS[0].parse()?,
        clock,
        product_devices: product_devices.parse()?,
        instances: (0..instances).map(|i| format!("inst-{i}").parse()).collect::<Result<_, _>>()?,
        instance_devices: instance_devices.parse()?,
        orders_per_instance: orders_per_instance.parse()?,
    };
    driver.setup().await?;

    let mut stdout = std::io::stdout();
    let stdin = std::io::stdin();
    let mut go = String::new();
    loop {
        let device = driver.next_device_action().await?;
        let instance = driver.next_instance_action().await?;
        // Interleave the two kinds of work by a number that depends on the store's history.
        let revision = driver.plane.registry().store().revision().await?;
        let action = match (device, instance) {
            (Some(device), Some(instance)) => {
                if revision % 2 == 0 {
                    device
                } else {
                    instance
                }
            }
            (Some(action), None) | (None, Some(action)) => action,
            (None, None) => {
                writeln!(stdout, "settled")?;
                return Ok(());
            }
        };
        // Announced, and begun only when the test says `go`: however late the test gets to run,
        // its kill lands a chosen time into this action.
        writeln!(stdout, "act")?;
        stdout.flush()?;
        go.clear();
        if stdin.read_line(&mut go)? == 0 {
            return Err("stdin closed: the test is gone".into());
        }
        driver.perform(action).await?;
        writeln!(stdout, "step")?;
        stdout.flush()?;
    }
}

impl Driver {
    /// Creates whatever of the world is missing.
    async fn setup(&self) -> Result<(), Error> {
        let registry = self.plane.registry();
        let region: RegionId = "region-a".parse()?;
        if registry.region(&region).await.is_err() {
            let region = Region {
                id: region.clone(),
                display_name: "Region A".into(),
                latitude: 10.0,
                longitude: 10.0,
                bias_km: 0.0,
                public_endpoint: None,
            };
            registry.put_region(region).await?;
        }
        for id in ACCOUNTS {
            let id: AccountId = id.parse()?;
            if registry.account(&id).await.is_err() {
                let new = NewAccount {
                    id: id.clone(),
                    name: id.to_string(),
                    kind: AccountKind::Individual,
                    verified_entity: None,
                };
                self.plane.create_account(new).await?;
            }
        }
        let alpha = &self.alpha;
        let mut homes = vec![(HOME.parse()?, PRODUCT.parse()?, self.product_devices)];
        for (i, instance) in self.instances.iter().enumerate() {
            homes.push((instance.clone(), instance_product(i)?, self.instance_devices));
        }
        for (instance, product, devices) in homes {
            if registry.instance(&instance).await.is_err() {
                let new = NewInstance {
                    id: instance.clone(),
                    region: region.clone(),
                    edition: Edition::Public,
                    endpoint: MqttEndpoint {
                        host: "127.0.0.1".into(),
                        tcp_port: 1883,
                        tls_port: None,
                    },
                    lifetime_days: 3_650,
                };
                self.plane.create_instance(alpha, new).await?;
            }
            if registry.product(&product).await.is_err() {
                let new = NewProduct {
                    key: Some(product.clone()),
                    name: format!("Product of {instance}"),
                    home_instance: instance,
                    topic_categories: Vec::new(),
                    tsl: serde_json::Value::Null,
                    parsing_script: None,
                };
                self.plane.create_product(alpha, new).await?;
            }
            if registry.devices(&product).await?.is_empty() {
                let names = (0..devices)
                    .map(|n| Ok((format!("dev-{n:04}").parse()?, None)))
                    .collect::<Result<Vec<_>, Error>>()?;
                self.plane.create_devices(alpha, &product, names).await?;
            }
            if !registry.product(&product).await?.published {
                let patch = ProductPatch { published: Some(true), ..ProductPatch::default() };
                self.plane.update_product(alpha, &product, patch).await?;
            }
        }
        if !self.plane.transfer_allow_list().await?.iter().any(|entry| &entry.account == alpha) {
            self.plane.allow_transfers(alpha).await?;
        }
        Ok(())
    }

    /// Settles the oldest pending device order, or submits a new one while few are pending.
    async fn next_device_action(&self) -> Result<Option<Action>, Error> {
        let alpha = &self.alpha;
        // Oldest first. Creation times tie (the clock moves for instance orders only), but a
        // pending order's record was written once, at its creation, so its revision orders it.
        let store = self.plane.registry().store();
        let mut entries = store.scan_prefix("device-transfers/").await?.entries;
        entries.sort_by_key(|entry| entry.revision);
        let orders = entries
            .iter()
            .map(|entry| decode::<DeviceTransfer>(&entry.key, &entry.value))
            .collect::<Result<Vec<_>, _>>()?;
        let (pending, settled): (Vec<_>, Vec<_>) =
            orders.iter().partition(|order| order.state == DeviceTransferState::Pending);
        if pending.len() < MAX_PENDING && orders.len() < MAX_DEVICE_ORDERS {
            let n = orders.len();
            let locked: BTreeSet<(&ProductKey, &DeviceName)> = pending
                .iter()
                .flat_map(|order| order.devices.iter().map(|name| (&order.product, name)))
                .collect();
            // Every fourth order is of the shared product while `alpha` owns it and it has free
            // devices.
            let mut products = vec![PRODUCT.parse()?];
            if SHARED < self.instances.len() {
                products.insert(usize::from(n % 4 != 1), instance_product(SHARED)?);
            }
            for product in products {
                if self.plane.product(alpha, &product).await.is_err() {
                    continue;
                }
                let free: Vec<DeviceName> = self
                    .plane
                    .registry()
                    .devices(&product)
                    .await?
                    .into_iter()
                    .filter(|d| &d.owner == alpha && d.placement == Placement::Home)
                    .filter(|d| !locked.contains(&(&product, &d.key.device_name)))
                    .map(|d| d.key.device_name)
                    .take(ORDER_SIZES[n % ORDER_SIZES.len()])
                    .collect();
                if free.is_empty() {
                    continue;
                }
                let destination = ACCOUNTS[1 + n / 2 % 2].to_owned();
                let with_tags = n % 3 == 0;
                let request = if n % 5 == 4 {
                    let mut csv = String::from("productKey,deviceName\n");
                    for name in &free {
                        csv.push_str(&format!("{product},{name}\n"));
                    }
                    let devices = Vec::new();
                    DeviceTransferRequest {
                        product,
                        destination,
                        devices,
                        csv: Some(csv),
                        with_tags,
                    }
                } else {
                    let devices = free.iter().map(ToString::to_string).collect();
                    DeviceTransferRequest { product, destination, devices, csv: None, with_tags }
                };
                return Ok(Some(Action::SubmitDevices(request)));
            }
        }
        let Some(order) = pending.first() else { return Ok(None) };
        let fate = DEVICE_FATES[settled.len() % DEVICE_FATES.len()];
        Ok(Some(Action::SettleDevices { order: (*order).clone(), fate }))
    }

    /// Settles the live instance orders by their fates; once only orders meant to expire are
    /// left, lets a day pass; once none is live, initiates the next batch.
    async fn next_instance_action(&self) -> Result<Option<Action>, Error> {
        if self.instances.is_empty() {
            return Ok(None);
        }
        let now = self.clock.now();
        if now < START.after(MIN_INSTANCE_AGE) {
            return Ok(Some(Action::PassTime(MIN_INSTANCE_AGE + Duration::from_secs(3_600))));
        }
        let mut orders = BTreeMap::new();
        for account in ACCOUNTS {
            for order in self.plane.instance_transfers(&account.parse()?).await? {
                orders.insert(order.id.clone(), order);
            }
        }
        let live: Vec<(&InstanceTransfer, InstanceFate)> = orders
            .values()
            .filter(|order| order.state == InstanceTransferState::Pending)
            .map(|order| Ok((order, self.fate(order, &orders)?)))
            .collect::<Result<_, Error>>()?;
        if let Some((first, fate)) = live.iter().find(|(_, fate)| *fate != InstanceFate::Expire) {
            let caller_of = |order: &InstanceTransfer| match fate {
                InstanceFate::Cancel => order.source.clone(),
                _ => order.destination.clone(),
            };
            let caller = caller_of(first);
            let orders = live
                .iter()
                .filter(|(order, f)| f == fate && caller_of(order) == caller)
                .map(|(order, _)| order.id.clone())
                .collect();
            return Ok(Some(Action::SettleInstances { caller, fate: *fate, orders }));
        }
        if !live.is_empty() {
            return Ok(Some(Action::PassTime(CONFIRM_WITHIN + Duration::from_secs(3_600))));
        }
        let mut ready = Vec::new();
        for instance in &self.instances {
            let count = orders.values().filter(|order| &order.instance == instance).count();
            if count < self.orders_per_instance {
                ready.push(self.plane.registry().instance(instance).await?);
            }
        }
        let Some(first) = ready.first() else { return Ok(None) };
        let source = first.owner.clone();
        let mut instances: Vec<String> = ready
            .iter()
            .filter(|instance| instance.owner == source)
            .map(|instance| instance.id.to_string())
            .collect();
        // One target that fails on its own, so every batch mixes results.
        instances.push("inst-missing".into());
        let next = ACCOUNTS.iter().position(|a| *a == source.as_str()).map_or(0, |i| i + 1);
        let destination = ACCOUNTS[next % ACCOUNTS.len()].parse()?;
        Ok(Some(Action::Initiate { source, destination, instances }))
    }

    /// `INSTANCE_FATES[(i + k) % 5]` for the k-th order of instance i.
    fn fate(
        &self,
        order: &InstanceTransfer,
        orders: &BTreeMap<String, InstanceTransfer>,
    ) -> Result<InstanceFate, Error> {
        let i = self
            .instances
            .iter()
            .position(|instance| instance == &order.instance)
            .ok_or("an order of an unknown instance")?;
        // Orders of an instance follow one another, so the live one is the newest.
        let k = orders.values().filter(|other| other.instance == order.instance).count() - 1;
        Ok(INSTANCE_FATES[(i + k) % INSTANCE_FATES.len()])
    }

    async fn perform(&self, action: Action) -> Result<(), Error> {
        match action {
            Action::SubmitDevices(request) => {
                self.plane.create_device_transfer(&self.alpha, request).await?;
            }
            Action::SettleDevices { order, fate } => {
                let settled = match fate {
                    DeviceFate::Accept => {
                        self.plane.accept_device_transfer(&order.destination, &order.id).await
                    }
                    DeviceFate::Reject => {
                        self.plane.reject_device_transfer(&order.destination, &order.id).await
                    }
                    DeviceFate::Cancel => {
                        self.plane.cancel_device_transfer(&order.source, &order.id).await
                    }
                };
                match settled {
                    Ok(_) => {}
                    // Refused only because its product went with its instance to another
                    // owner: the source withdraws it.
                    Err(ControlError::Rule(why)) if fate == DeviceFate::Accept => {
                        let product = self.plane.registry().product(&order.product).await?;
                        if product.owner == order.source {
                            return Err(format!("accept {}: {why}", order.id).into());
                        }
                        self.plane.cancel_device_transfer(&order.source, &order.id).await?;
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            Action::SettleInstances { caller, fate, orders } => {
                let results = match fate {
                    InstanceFate::Confirm => {
                        // An instance whose devices are in pending device orders is refused
                        // until those are settled: their source withdraws them, then the
                        // destination confirms again.
                        let results =
                            self.plane.confirm_instance_transfers(&caller, orders.clone()).await?;
                        let blocked = results.iter().any(|result| {
                            result.message.as_deref().is_some_and(|message| {
                                message.contains("pending device transfer order")
                            })
                        });
                        if blocked {
                            self.withdraw_device_orders().await?;
                            self.plane.confirm_instance_transfers(&caller, orders).await?
                        } else {
                            results
                        }
                    }
                    InstanceFate::Reject => {
                        self.plane.reject_instance_transfers(&caller, orders).await?
                    }
                    InstanceFate::Cancel => {
                        self.plane.cancel_instance_transfers(&caller, orders).await?
                    }
                    InstanceFate::Expire => return Err("expiry is the clock's".into()),
                };
                if let Some(failed) = results.iter().find(|result| result.status != 200) {
                    return Err(format!("{fate:?} {}: {:?}", failed.target, failed.message).into());
                }
            }
            Action::Initiate { source, destination, instances } => {
                let code = self.plane.request_code(&source).await?;
                let request = InstanceTransferRequest {
                    destination: destination.to_string(),
                    instances,
                    code,
                };
                let (_, results) = self.plane.initiate_instance_transfers(&source, request).await?;
                for result in results {
                    let expected = if result.target == "inst-missing" { 404 } else { 201 };
                    if result.status != expected {
                        return Err(
                            format!("initiate {}: {:?}", result.target, result.message).into()
                        );
                    }
                }
            }
            Action::PassTime(by) => {
                let now = self.clock.now().after(by);
                let value = serde_json::to_vec(&now.millis())?;
                self.plane.registry().store().put(CLOCK_KEY, value.into()).await?;
                self.clock.set(now);
            }
        }
        Ok(())
    }
}

impl Driver {
    /// Cancels every pending device order, as its source.
    async fn withdraw_device_orders(&self) -> Result<(), Error> {
        for order in self.plane.device_transfers(&self.alpha).await? {
            if order.state == DeviceTransferState::Pending && order.source == self.alpha {
                self.plane.cancel_device_transfer(&order.source, &order.id).await?;
            }
        }
        Ok(())
    }
}

fn instance_product(i: usize) -> Result<ProductKey, Error> {
    Ok(format!("xferInstance{i}").parse()?)
}
