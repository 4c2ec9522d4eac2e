//! Crash safety of transfer orders (PROTOCOL §6, §7): the control plane is killed with SIGKILL at
//! varying points, dozens of times, while `tests/src/bin/transfer-crash.rs` submits, accepts,
//! rejects and cancels device transfer orders and initiates, confirms, rejects, cancels and
//! expires instance transfer orders, resuming from the store after every restart.
//!
//! Between runs the store must hold: every order in a valid state, its locks held exactly while
//! it is pending, product views and transferred-product markers exactly for the accepted
//! orders; every device, product and instance owned by the account that replaying the settled
//! orders in commit order gives (so none lost, none moved twice, none moved without its order);
//! and a watcher resuming where it left off reads every revision once and rebuilds exactly what
//! a fresh scan shows. At the end nothing is pending and every kind of outcome happened.

// Test helpers outside `#[test]` functions panic on failure by design.
#![allow(clippy::unwrap_used)]

mod feed;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use meridian_control::resource_transfer::CONFIRM_WITHIN;
use meridian_control::{
    DeviceTransfer, DeviceTransferState, InstanceTransfer, InstanceTransferState,
};
use meridian_registry::clock::Timestamp;
use meridian_registry::ids::{AccountId, DeviceKey, InstanceId, ProductKey};
use meridian_registry::model::{Device, Instance, Product};
use meridian_registry::store::{Entry, RedbStore, Revision, Store};
use meridian_registry::{decode, keys};

/// Devices of the product moved by device orders only.
const PRODUCT_DEVICES: usize = 300;
/// Instances moved by instance orders, each with a product of [`INSTANCE_DEVICES`] devices.
const INSTANCES: usize = 6;
const INSTANCE_DEVICES: usize = 20;
const ORDERS_PER_INSTANCE: usize = 5;
/// The first owner of everything (the driver's `ACCOUNTS[0]`).
const FIRST_OWNER: &str = "alpha";
/// Where the driver keeps its clock's time.
const CLOCK_KEY: &str = "crash-driver/clock";

/// Runs the driver through `steps` actions, lets it start the next one and kills it `jitter`
/// into that action: before its batch, mid-batch, mid-fsync, among its audit writes or just
/// after. The driver waits for a `go` before each action, so the kill lands where it is aimed
/// however late this process gets to run. Returns whether the driver settled first.
fn run_then_kill(path: &std::path::Path, steps: usize, jitter: Duration) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_transfer-crash"))
        .arg(path)
        .args(
            [PRODUCT_DEVICES, INSTANCES, INSTANCE_DEVICES, ORDERS_PER_INSTANCE]
                .map(|n| n.to_string()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn transfer-crash");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut seen = 0;
    for line in BufReader::new(stdout).lines() {
        match line.expect("read").as_str() {
            "settled" => {
                let status = child.wait().expect("reap");
                assert!(status.success(), "transfer-crash failed after settling: {status}");
                return true;
            }
            "act" => {
                stdin.write_all(b"go\n").expect("write to transfer-crash");
                if seen == steps {
                    // Not a wait for anything: it only places the kill.
                    std::thread::sleep(jitter);
                    child.kill().expect("kill");
                    child.wait().expect("reap");
                    return false;
                }
            }
            "step" => seen += 1,
            _ => {}
        }
    }
    let status = child.wait().expect("reap");
    panic!("transfer-crash exited by itself after {seen} steps: {status}");
}

#[tokio::test]
async fn kill_9_mid_transfer_orders_leaves_every_order_valid_and_every_device_owned_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.redb");
    let mut follower = feed::Follower::default();
    let mut history = History::default();
    let mut runs = 0;
    loop {
        // Kill during the 3rd, 4th, 2nd, 3rd, ... action, 0 to 30 ms into it.
        let jitter = Duration::from_millis(runs as u64 * 7 % 31);
        let settled = run_then_kill(&path, 1 + (runs + 1) % 3, jitter);
        runs += 1;
        assert!(runs < 300, "the driver never settled");

        let store = RedbStore::open(&path).unwrap();
        follower.catch_up(&store).await;
        follower.assert_matches(&store).await;
        let world = World::read(&store).await;
        world.check(&mut history);
        if settled {
            world.check_settled();
            break;
        }
    }
    // The driver's plan is 97 actions whatever the kills, and a run does at most 4 of them
    // (about 37 runs in practice).
    assert!(runs >= 30, "only {runs} runs: the driver was killed too few times");
}

/// What earlier checks saw, for the checks that compare runs.
#[derive(Default)]
struct History {
    /// Devices, products and instances as first seen: later only their owner may differ.
    first: Option<FirstSeen>,
    /// Settled orders and how: a settled order never changes again.
    settled: BTreeMap<String, String>,
}

struct FirstSeen {
    devices: BTreeMap<DeviceKey, Device>,
    products: BTreeMap<ProductKey, Product>,
    instances: BTreeMap<InstanceId, Instance>,
}

/// Everything transfers touch, as one check reads it from the store.
struct World {
    now: Timestamp,
    instances: BTreeMap<InstanceId, Instance>,
    products: BTreeMap<ProductKey, Product>,
    devices: BTreeMap<DeviceKey, Device>,
    /// Device orders with the revision of their last write (their settlement, once settled).
    device_orders: BTreeMap<String, (DeviceTransfer, Revision)>,
    device_locks: BTreeMap<DeviceKey, String>,
    instance_orders: BTreeMap<String, (InstanceTransfer, Revision)>,
    instance_locks: BTreeMap<String, String>,
    /// `product-views/{holder}/{pk}` grants.
    views: BTreeMap<String, serde_json::Value>,
    /// `transferred-products/{pk}` markers, by ProductKey.
    markers: BTreeMap<String, serde_json::Value>,
    /// Audit entries as (account, action, target).
    audit: BTreeSet<(String, String, String)>,
}

impl World {
    async fn read(store: &RedbStore) -> World {
        let scan =
            async |prefix: &str| -> Vec<Entry> { store.scan_prefix(prefix).await.unwrap().entries };
        let json =
            |entry: &Entry| -> serde_json::Value { serde_json::from_slice(&entry.value).unwrap() };
        let suffix = |entry: &Entry, prefix: &str| entry.key[prefix.len()..].to_owned();
        let now = store.get(CLOCK_KEY).await.unwrap().expect("the driver's clock");
        let mut world = World {
            now: Timestamp(serde_json::from_slice(&now.value).unwrap()),
            instances: BTreeMap::new(),
            products: BTreeMap::new(),
            devices: BTreeMap::new(),
            device_orders: BTreeMap::new(),
            device_locks: BTreeMap::new(),
            instance_orders: BTreeMap::new(),
            instance_locks: BTreeMap::new(),
            views: BTreeMap::new(),
            markers: BTreeMap::new(),
            audit: BTreeSet::new(),
        };
        for entry in scan(keys::INSTANCES).await {
            let instance: Instance = decode(&entry.key, &entry.value).unwrap();
            world.instances.insert(instance.id.clone(), instance);
        }
        for entry in scan(keys::PRODUCTS).await {
            let product: Product = decode(&entry.key, &entry.value).unwrap();
            world.products.insert(product.key.clone(), product);
        }
        for entry in scan(keys::DEVICES).await {
            let device: Device = decode(&entry.key, &entry.value).unwrap();
            world.devices.insert(device.key.clone(), device);
        }
        for entry in scan("device-transfers/").await {
            let order: DeviceTransfer = decode(&entry.key, &entry.value).unwrap();
            world.device_orders.insert(order.id.clone(), (order, entry.revision));
        }
        for entry in scan("device-transfer-locks/").await {
            // The lock key mirrors the device key below `devices/`.
            let stored = format!("{}{}", keys::DEVICES, suffix(&entry, "device-transfer-locks/"));
            let device = keys::parse_device(&stored).expect("a lock named like a device");
            let order = json(&entry)["transfer"].as_str().unwrap().to_owned();
            world.device_locks.insert(device, order);
        }
        for entry in scan("instance-transfers/").await {
            let order: InstanceTransfer = decode(&entry.key, &entry.value).unwrap();
            world.instance_orders.insert(order.id.clone(), (order, entry.revision));
        }
        for entry in scan("instance-transfer-locks/").await {
            let order = json(&entry)["order"].as_str().unwrap().to_owned();
            world.instance_locks.insert(suffix(&entry, "instance-transfer-locks/"), order);
        }
        for entry in scan("product-views/").await {
            world.views.insert(suffix(&entry, "product-views/"), json(&entry));
        }
        for entry in scan("transferred-products/").await {
            world.markers.insert(suffix(&entry, "transferred-products/"), json(&entry));
        }
        for entry in scan("audit/").await {
            let entry = json(&entry);
            let field = |name: &str| entry[name].as_str().unwrap().to_owned();
            world.audit.insert((field("account"), field("action"), field("target")));
        }
        world
    }

    fn check(&self, history: &mut History) {
        self.check_audit();
        self.check_device_orders();
        self.check_views_and_markers();
        self.check_instance_orders();
        self.check_owners(history);
        for (id, (order, _)) in &self.device_orders {
            if order.state != DeviceTransferState::Pending {
                let state = format!("{:?}", order.state);
                let before = history.settled.insert(id.clone(), state.clone());
                assert!(before.is_none_or(|before| before == state), "{id} changed once settled");
            }
        }
        for (id, (order, _)) in &self.instance_orders {
            if order.state != InstanceTransferState::Pending {
                let state = format!("{:?}", order.state);
                let before = history.settled.insert(id.clone(), state.clone());
                assert!(before.is_none_or(|before| before == state), "{id} changed once settled");
            }
        }
    }

    /// Every order's creation and settlement is in the audit log of both sides: the entries
    /// commit in the same batch as the change they record.
    fn check_audit(&self) {
        let logged = |account: &AccountId, action: &str, id: &str| {
            let entry = (account.to_string(), action.to_owned(), id.to_owned());
            assert!(self.audit.contains(&entry), "no audit entry {entry:?}");
        };
        for (id, (order, _)) in &self.device_orders {
            logged(&order.source, "device-transfer.created", id);
            let settled = match order.state {
                DeviceTransferState::Pending => continue,
                DeviceTransferState::Accepted => "device-transfer.accepted",
                DeviceTransferState::Rejected => "device-transfer.rejected",
                DeviceTransferState::Cancelled => "device-transfer.cancelled",
            };
            logged(&order.source, settled, id);
            logged(&order.destination, settled, id);
        }
        for (id, (order, _)) in &self.instance_orders {
            logged(&order.source, "instance-transfer.initiated", id);
            logged(&order.destination, "instance-transfer.received", id);
            let settled = match order.state {
                InstanceTransferState::Confirmed => "instance-transfer.confirmed",
                InstanceTransferState::Rejected => "instance-transfer.rejected",
                InstanceTransferState::Cancelled => "instance-transfer.cancelled",
                _ => continue,
            };
            logged(&order.source, settled, id);
            logged(&order.destination, settled, id);
        }
    }

    /// A pending device order holds the lock of each of its devices; a settled one holds none;
    /// no lock belongs to anything else.
    fn check_device_orders(&self) {
        for (id, (order, _)) in &self.device_orders {
            assert!(
                (1..=100).contains(&order.devices.len()),
                "{id}: {} devices",
                order.devices.len()
            );
            let unique: BTreeSet<_> = order.devices.iter().collect();
            assert_eq!(unique.len(), order.devices.len(), "{id} lists a device twice");
            let accepted = order.state == DeviceTransferState::Accepted;
            assert_eq!(order.product_view.is_some(), accepted, "{id}: view without acceptance");
            let pending = order.state == DeviceTransferState::Pending;
            for name in &order.devices {
                let key =
                    DeviceKey { product_key: order.product.clone(), device_name: name.clone() };
                let lock = self.device_locks.get(&key);
                if pending {
                    assert_eq!(lock, Some(id), "pending {id} lost the lock of {key}");
                } else {
                    assert_ne!(
                        lock,
                        Some(id),
                        "{:?} {id} still holds the lock of {key}",
                        order.state
                    );
                }
            }
        }
        for (key, id) in &self.device_locks {
            let (order, _) = self
                .device_orders
                .get(id)
                .unwrap_or_else(|| panic!("the lock of {key} names {id}, which does not exist"));
            assert_eq!(order.state, DeviceTransferState::Pending, "settled {id} holds {key}");
            assert_eq!(order.product, key.product_key);
            assert!(order.devices.contains(&key.device_name), "{id} holds {key}, not its own");
        }
    }

    /// Each accepted order is in exactly the view of its destination and product, and marks its
    /// product as transferred; nothing else makes a view or a marker.
    fn check_views_and_markers(&self) {
        let accepted: BTreeMap<&String, &DeviceTransfer> = self
            .device_orders
            .iter()
            .filter(|(_, (order, _))| order.state == DeviceTransferState::Accepted)
            .map(|(id, (order, _))| (id, order))
            .collect();
        let mut in_views = BTreeSet::new();
        for (key, view) in &self.views {
            let (holder, product) = key.split_once('/').expect("product-views/{holder}/{pk}");
            assert_eq!(view["holder"], holder, "{key}");
            assert_eq!(view["product"], product, "{key}");
            let transfers = view["transfers"].as_array().expect("transfers");
            assert!(!transfers.is_empty(), "view {key} without an order");
            for id in transfers {
                let id = id.as_str().unwrap().to_owned();
                let order = accepted
                    .get(&id)
                    .unwrap_or_else(|| panic!("view {key} names {id}, which is not accepted"));
                assert_eq!(order.destination.as_str(), holder, "{key}: {id}");
                assert_eq!(order.product.as_str(), product, "{key}: {id}");
                assert_eq!(order.product_view.as_deref(), view["id"].as_str(), "{key}: {id}");
                assert!(in_views.insert(id.clone()), "{id} is in a view twice");
            }
        }
        let accepted_ids: BTreeSet<String> = accepted.keys().map(|id| (*id).clone()).collect();
        assert_eq!(in_views, accepted_ids, "every accepted order is in its view");

        let transferred: BTreeSet<&str> = accepted.values().map(|o| o.product.as_str()).collect();
        let marked: BTreeSet<&str> = self.markers.keys().map(String::as_str).collect();
        assert_eq!(marked, transferred, "products marked transferred");
        for (product, marker) in &self.markers {
            let id = marker["transfer"].as_str().unwrap().to_owned();
            let order = accepted.get(&id).expect("a marker names an accepted order");
            assert_eq!(order.product.as_str(), product);
        }
    }

    /// Instance orders: stored states, deadlines, at most one live order per instance, holding
    /// its instance's lock; a lock names a pending order of its instance (an expired one's lock
    /// is stale: it blocks nothing and the next order replaces it).
    fn check_instance_orders(&self) {
        let mut live = BTreeSet::new();
        for (id, (order, _)) in &self.instance_orders {
            assert_ne!(order.state, InstanceTransferState::Expired, "{id}: expiry is never stored");
            let pending = order.state == InstanceTransferState::Pending;
            assert_eq!(order.settled_at.is_none(), pending, "{id}: settled_at");
            assert_eq!(order.expires_at, order.created_at.after(CONFIRM_WITHIN), "{id}");
            if order.state_at(self.now) == InstanceTransferState::Pending {
                assert!(
                    live.insert(order.instance.clone()),
                    "two live orders on {}",
                    order.instance
                );
                let lock = self.instance_locks.get(order.instance.as_str());
                assert_eq!(lock, Some(id), "live {id} does not hold its instance's lock");
            }
        }
        for (instance, id) in &self.instance_locks {
            let (order, _) = self.instance_orders.get(id).unwrap_or_else(|| {
                panic!("the lock of {instance} names {id}, which does not exist")
            });
            assert_eq!(
                order.state,
                InstanceTransferState::Pending,
                "settled {id} holds {instance}"
            );
            assert_eq!(order.instance.as_str(), instance);
        }
    }

    /// Replays the accepted device orders and confirmed instance orders in commit order (the
    /// revision of each order's settlement, written in the same batch as the owners it changed)
    /// from everything owned by [`FIRST_OWNER`], and compares with the store.
    fn check_owners(&self, history: &mut History) {
        let first = history.first.get_or_insert_with(|| FirstSeen {
            devices: self.devices.clone(),
            products: self.products.clone(),
            instances: self.instances.clone(),
        });
        assert_eq!(self.devices.len(), PRODUCT_DEVICES + INSTANCES * INSTANCE_DEVICES);
        assert!(
            self.devices.keys().eq(first.devices.keys()),
            "the set of devices changed: one was lost or made"
        );
        assert!(self.products.keys().eq(first.products.keys()), "the set of products changed");
        assert!(self.instances.keys().eq(first.instances.keys()), "the set of instances changed");

        let first_owner: AccountId = FIRST_OWNER.parse().unwrap();
        let mut instance_owner: BTreeMap<InstanceId, AccountId> =
            self.instances.keys().map(|id| (id.clone(), first_owner.clone())).collect();
        let mut product_owner: BTreeMap<ProductKey, AccountId> =
            self.products.keys().map(|key| (key.clone(), first_owner.clone())).collect();
        let mut device_owner: BTreeMap<DeviceKey, AccountId> =
            self.devices.keys().map(|key| (key.clone(), first_owner.clone())).collect();

        enum Event<'a> {
            Devices(&'a DeviceTransfer),
            Instance(&'a InstanceTransfer),
        }
        let mut events: Vec<(Revision, Event<'_>)> = Vec::new();
        for (order, revision) in self.device_orders.values() {
            if order.state == DeviceTransferState::Accepted {
                events.push((*revision, Event::Devices(order)));
            }
        }
        for (order, revision) in self.instance_orders.values() {
            if order.state == InstanceTransferState::Confirmed {
                events.push((*revision, Event::Instance(order)));
            }
        }
        events.sort_by_key(|(revision, _)| *revision);
        for (_, event) in events {
            match event {
                Event::Devices(order) => {
                    let id = &order.id;
                    assert_eq!(product_owner[&order.product], order.source, "{id}: product owner");
                    for name in &order.devices {
                        let key = DeviceKey {
                            product_key: order.product.clone(),
                            device_name: name.clone(),
                        };
                        let owner = device_owner.get_mut(&key).expect("a device of the order");
                        assert_eq!(*owner, order.source, "{id} moved {key} from its non-owner");
                        *owner = order.destination.clone();
                    }
                }
                Event::Instance(order) => {
                    let id = &order.id;
                    let owner = instance_owner.get_mut(&order.instance).expect("its instance");
                    assert_eq!(*owner, order.source, "{id} moved an instance from its non-owner");
                    *owner = order.destination.clone();
                    for (key, product) in &self.products {
                        let owner = product_owner.get_mut(key).expect("a product");
                        if product.home_instance != order.instance || *owner != order.source {
                            continue;
                        }
                        *owner = order.destination.clone();
                        for (device, owner) in &mut device_owner {
                            if &device.product_key == key && *owner == order.source {
                                *owner = order.destination.clone();
                            }
                        }
                    }
                }
            }
        }

        // Owners as replayed, and nothing else changed.
        for (id, instance) in &first.instances {
            let expected = Instance { owner: instance_owner[id].clone(), ..instance.clone() };
            assert_eq!(self.instances[id], expected, "instance {id}");
        }
        for (key, product) in &first.products {
            let expected = Product { owner: product_owner[key].clone(), ..product.clone() };
            assert_eq!(self.products[key], expected, "product {key}");
        }
        for (key, device) in &first.devices {
            let expected = Device { owner: device_owner[key].clone(), ..device.clone() };
            assert_eq!(self.devices[key], expected, "device {key}");
        }
    }

    /// At the end: nothing pending, every instance through all its orders, every outcome seen.
    fn check_settled(&self) {
        let count = |state: DeviceTransferState| {
            self.device_orders.values().filter(|(order, _)| order.state == state).count()
        };
        assert_eq!(count(DeviceTransferState::Pending), 0, "a device order is still pending");
        for state in [
            DeviceTransferState::Accepted,
            DeviceTransferState::Rejected,
            DeviceTransferState::Cancelled,
        ] {
            assert!(count(state) > 0, "no device order ended {state:?}");
        }
        assert!(self.device_locks.is_empty(), "device locks left: {:?}", self.device_locks);

        let count = |state: InstanceTransferState| {
            let states = self.instance_orders.values().map(|(order, _)| order.state_at(self.now));
            states.filter(|s| *s == state).count()
        };
        assert_eq!(count(InstanceTransferState::Pending), 0, "an instance order is still live");
        for state in [
            InstanceTransferState::Confirmed,
            InstanceTransferState::Rejected,
            InstanceTransferState::Cancelled,
            InstanceTransferState::Expired,
        ] {
            assert!(count(state) > 0, "no instance order ended {state:?}");
        }
        for id in self.instances.keys().filter(|id| id.as_str().starts_with("inst-")) {
            let orders = self.instance_orders.values().filter(|(o, _)| &o.instance == id).count();
            assert_eq!(orders, ORDERS_PER_INSTANCE, "orders of {id}");
        }
        // Devices really changed hands, to both destinations.
        let owners: BTreeSet<&str> = self.devices.values().map(|d| d.owner.as_str()).collect();
        assert!(owners.contains("bravo") && owners.contains("charlie"), "owners {owners:?}");
    }
}
