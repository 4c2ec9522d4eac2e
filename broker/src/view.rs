//! The broker's in-memory view of the registry: device credentials and products, kept current
//! from the store's change feed, so CONNECT never reads the store.
//!
//! Data flows one way: the control plane writes the registry; [`follow`] applies the feed here.
//! The one exception is the devices' kept subscriptions (PROTOCOL §2), which brokers write (see
//! [`crate::kept`]) and read back from here like any other record, so a device distributed to
//! another instance finds them there.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use dashmap::DashMap;
use futures::StreamExt;
use meridian_registry::ids::{AccountId, DeviceKey, InstanceId, ProductKey};
use meridian_registry::model::{Device, DeviceStatus, Instance, MqttEndpoint, Placement, Product};
use meridian_registry::secret::{DeviceSecret, SecretKey};
use meridian_registry::store::{Change, Revision, Store, StoreError};
use meridian_registry::{decode, keys, subscriptions};
use tokio::sync::{mpsc, watch};

/// What the broker needs to know about one device.
#[derive(Clone, Debug)]
pub struct DeviceEntry {
    /// Opened once when the record arrives, so verification is a plain HMAC.
    pub secret: DeviceSecret,
    pub owner: AccountId,
    pub status: DeviceStatus,
    pub placement: Placement,
}

#[derive(Clone, Debug)]
pub struct ProductEntry {
    pub owner: AccountId,
    pub home: InstanceId,
}

/// Where a device that is no longer placed here should go (PROTOCOL §11): the MQTT 5.0
/// Server Reference, and whether the move is to another account (0x9D rather than 0x9C).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// `host:port` of its new instance; `None` when the broker cannot name one (a
    /// nearest-access placement with several candidates: which is nearest is the edge's to
    /// say, so the device re-bootstraps).
    pub reference: Option<String>,
    /// The new instance belongs to another account than this one.
    pub other_account: bool,
}

#[derive(Clone, Debug)]
struct InstanceEntry {
    owner: AccountId,
    endpoint: MqttEndpoint,
}

/// Credentials and ownership, readable from every connection task without blocking.
#[derive(Default)]
pub struct RegistryView {
    devices: DashMap<DeviceKey, DeviceEntry>,
    products: DashMap<ProductKey, ProductEntry>,
    /// Instances' owners and endpoints, for the Server Reference of a redirect.
    instances: DashMap<InstanceId, InstanceEntry>,
    /// Each device's kept subscriptions (filter → granted QoS), as last committed.
    subscriptions: DashMap<DeviceKey, Arc<BTreeMap<String, u8>>>,
    /// The feed revision applied so far; tests and the supervisor wait on it.
    applied: watch::Sender<Revision>,
}

impl RegistryView {
    pub fn device(&self, key: &DeviceKey) -> Option<DeviceEntry> {
        self.devices.get(key).map(|entry| entry.clone())
    }

    /// The subscriptions kept for a device, as last committed to the registry.
    pub fn kept_subscriptions(&self, key: &DeviceKey) -> Option<Arc<BTreeMap<String, u8>>> {
        self.subscriptions.get(key).map(|entry| entry.clone())
    }

    pub fn product(&self, key: &ProductKey) -> Option<ProductEntry> {
        self.products.get(key).map(|entry| entry.clone())
    }

    /// Whether a device may connect to `instance` now: it exists, is not disabled, and its
    /// placement names this instance.
    pub fn admits(&self, key: &DeviceKey, instance: &InstanceId) -> Admission {
        let Some(device) = self.devices.get(key) else {
            return Admission::Unknown;
        };
        if device.status == DeviceStatus::Disabled {
            return Admission::Disabled;
        }
        let Some(product) = self.products.get(&key.product_key) else {
            return Admission::Unknown;
        };
        if device.placement.allows(instance, &product.home) {
            Admission::Allowed
        } else {
            Admission::Elsewhere
        }
    }

    /// Where a device placed elsewhere than `here` should connect (PROTOCOL §11): its
    /// specified instance, its product's home, or the one candidate of a nearest-access
    /// placement. `None` when the device is placed here, or unknown.
    pub fn redirect(&self, key: &DeviceKey, here: &InstanceId) -> Option<Redirect> {
        let device = self.devices.get(key)?;
        let product = self.products.get(&key.product_key)?;
        if device.placement.allows(here, &product.home) {
            return None;
        }
        let target = match &device.placement {
            Placement::Home => Some(product.home.clone()),
            Placement::Specified { instance } => Some(instance.clone()),
            Placement::Nearest { candidates } => match candidates.as_slice() {
                [only] => Some(only.instance.clone()),
                _ => None,
            },
        };
        let here_owner = self.instances.get(here).map(|entry| entry.owner.clone());
        let target = target.and_then(|id| self.instances.get(&id).map(|entry| entry.clone()));
        Some(Redirect {
            reference: target
                .as_ref()
                .map(|entry| format!("{}:{}", entry.endpoint.host, entry.endpoint.tcp_port)),
            other_account: match (&target, &here_owner) {
                (Some(target), Some(here)) => &target.owner != here,
                _ => false,
            },
        })
    }

    pub fn account_owns_product(&self, account: &AccountId, product: &str) -> bool {
        let Ok(product) = product.parse::<ProductKey>() else {
            return false;
        };
        self.products.get(&product).is_some_and(|entry| &entry.owner == account)
    }

    /// Whether `account` may use the topics of device `product`/`device`: it owns the device,
    /// which after a transfer (PROTOCOL §6) need not be the product's owner. A device this view
    /// does not know (not created yet, or a name no device can have) falls back to the
    /// product's owner, as before devices could change hands.
    pub fn account_may_use_device(&self, account: &AccountId, product: &str, device: &str) -> bool {
        let key = match (product.parse::<ProductKey>(), device.parse()) {
            (Ok(product_key), Ok(device_name)) => DeviceKey { product_key, device_name },
            _ => return self.account_owns_product(account, product),
        };
        match self.devices.get(&key) {
            Some(entry) => &entry.owner == account,
            None => self.account_owns_product(account, product),
        }
    }

    /// Records one device as the feed describes it, minus its secret; unit tests elsewhere in
    /// the crate use it to give devices an owner.
    #[cfg(test)]
    pub(crate) fn apply_device(&self, key: DeviceKey, entry: DeviceEntry) {
        self.devices.insert(key, entry);
    }

    /// Records one product as the feed describes it; unit tests elsewhere in the crate use it
    /// to give application clients something to own.
    #[cfg(test)]
    pub(crate) fn apply_product(&self, key: ProductKey, entry: ProductEntry) {
        self.products.insert(key, entry);
    }

    /// Pretends the feed was applied up to `revision`, for unit tests of what waits on it.
    #[cfg(test)]
    pub(crate) fn set_revision(&self, revision: Revision) {
        self.applied.send_replace(revision);
    }

    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// The feed revision this view reflects.
    pub fn revision(&self) -> Revision {
        *self.applied.borrow()
    }

    /// Waits until the view reflects at least `revision`.
    pub async fn caught_up(&self, revision: Revision) {
        let mut applied = self.applied.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we borrow it.
        let _ = applied.wait_for(|applied| *applied >= revision).await;
    }
}

/// Outcome of [`RegistryView::admits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// No such device (or its product is unknown here).
    Unknown,
    Disabled,
    /// Placed on another instance.
    Elsewhere,
}

/// What a change to the view means for the broker's sessions and stored messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    /// The device's placement or status changed, or it disappeared: an online session must be
    /// told to re-bootstrap.
    Placement(DeviceKey),
    /// The device has a new owner (a device transfer, PROTOCOL §6): what the former owner's
    /// application clients retained on its topics must go.
    DeviceOwner { device: DeviceKey, former: AccountId },
    /// The product has a new owner (an instance transfer, PROTOCOL §7): likewise for what the
    /// former owner retained on its broadcast topics.
    ProductOwner { product: ProductKey, former: AccountId },
    /// The device was deleted (its session is told by a [`Changed::Placement`] too): what its
    /// owner's application clients retained on its topics must go, or a later device of the
    /// same name, or the product's owner, would receive another account's leftovers.
    DeviceDeleted { device: DeviceKey, owner: AccountId },
}

/// Loads the view from a snapshot (dropping whatever the snapshot no longer holds, when this
/// follows again after an error), then applies the feed until `shutdown` or a feed error.
/// `changed` receives what each change means for sessions (see [`Changed`]), so the broker can
/// tell an online device to re-bootstrap and drop what a former owner left behind.
pub async fn follow(
    store: Arc<dyn Store>,
    sealer: SecretKey,
    view: Arc<RegistryView>,
    changed: mpsc::UnboundedSender<Changed>,
) -> Result<(), StoreError> {
    let products = store.scan_prefix(keys::PRODUCTS).await?;
    let devices = store.scan_prefix(keys::DEVICES).await?;
    let kept = store.scan_prefix(keys::SUBSCRIPTIONS).await?;
    let instances = store.scan_prefix(keys::INSTANCES).await?;
    let from = products.revision.min(devices.revision).min(kept.revision).min(instances.revision);
    for entry in instances
        .entries
        .iter()
        .chain(&products.entries)
        .chain(&devices.entries)
        .chain(&kept.entries)
    {
        let change = Change {
            revision: entry.revision,
            key: entry.key.clone(),
            value: Some(entry.value.clone()),
        };
        apply(&view, &sealer, &change, &changed);
    }
    // Following again after a feed error starts from a fresh snapshot, and what was deleted
    // while the feed was broken is in neither that snapshot nor the feed after it: dropped
    // here, or a deleted device's credentials would stay accepted.
    let products: HashSet<ProductKey> = products
        .entries
        .iter()
        .filter_map(|entry| entry.key.strip_prefix(keys::PRODUCTS)?.parse().ok())
        .collect();
    let devices: HashSet<DeviceKey> =
        devices.entries.iter().filter_map(|entry| keys::parse_device(&entry.key)).collect();
    view.products.retain(|key, _| products.contains(key));
    let kept: HashSet<DeviceKey> =
        kept.entries.iter().filter_map(|entry| keys::parse_subscriptions(&entry.key)).collect();
    view.subscriptions.retain(|key, _| kept.contains(key));
    let gone: Vec<DeviceKey> = view
        .devices
        .iter()
        .filter(|entry| !devices.contains(entry.key()))
        .map(|entry| entry.key().clone())
        .collect();
    for device in gone {
        // An online session of a deleted device is told to go, as on a live delete.
        if let Some((device, entry)) = view.devices.remove(&device) {
            let _ =
                changed.send(Changed::DeviceDeleted { device: device.clone(), owner: entry.owner });
            let _ = changed.send(Changed::Placement(device));
        }
    }
    view.applied.send_replace(from);

    let mut feed = store.watch_from(from);
    while let Some(change) = feed.next().await {
        let change = change?;
        apply(&view, &sealer, &change, &changed);
        view.applied.send_replace(change.revision);
    }
    Ok(())
}

/// Applies one change, telling `changed` what it means for sessions. Records that fail to
/// decode are logged and skipped: one bad record must not stop the broker from following the
/// feed.
fn apply(
    view: &RegistryView,
    sealer: &SecretKey,
    change: &Change,
    changed: &mpsc::UnboundedSender<Changed>,
) {
    // The receiver going away only means nobody re-checks sessions (shutdown).
    let tell = |what| drop(changed.send(what));
    if change.key.starts_with(keys::INSTANCES) {
        match &change.value {
            Some(value) => match decode::<Instance>(&change.key, value) {
                Ok(instance) => {
                    let entry =
                        InstanceEntry { owner: instance.owner, endpoint: instance.endpoint };
                    view.instances.insert(instance.id, entry);
                }
                Err(error) => tracing::warn!(key = %change.key, %error, "skipping instance record"),
            },
            None => {
                let key = change.key.trim_start_matches(keys::INSTANCES);
                if let Ok(key) = key.parse::<InstanceId>() {
                    view.instances.remove(&key);
                }
            }
        }
        return;
    }
    if change.key.starts_with(keys::PRODUCTS) {
        match &change.value {
            Some(value) => match decode::<Product>(&change.key, value) {
                Ok(product) => {
                    let entry = ProductEntry { owner: product.owner, home: product.home_instance };
                    let previous = view.products.insert(product.key.clone(), entry.clone());
                    if let Some(previous) = previous.filter(|p| p.owner != entry.owner) {
                        tell(Changed::ProductOwner {
                            product: product.key,
                            former: previous.owner,
                        });
                    }
                }
                Err(error) => tracing::warn!(key = %change.key, %error, "skipping product record"),
            },
            None => {
                let key = change.key.trim_start_matches(keys::PRODUCTS);
                if let Ok(key) = key.parse::<ProductKey>() {
                    view.products.remove(&key);
                }
            }
        }
        return;
    }
    if change.key.starts_with(keys::SUBSCRIPTIONS) {
        apply_subscriptions(view, change);
        return;
    }
    if !change.key.starts_with(keys::DEVICES) {
        return;
    }
    match &change.value {
        Some(value) => {
            let device = match decode::<Device>(&change.key, value) {
                Ok(device) => device,
                Err(error) => {
                    tracing::warn!(key = %change.key, %error, "skipping device record");
                    return;
                }
            };
            let secret = match sealer.open(&device.key, &device.secret) {
                Ok(secret) => secret,
                Err(error) => {
                    tracing::warn!(device = %device.key, %error, "device secret does not open; device cannot connect");
                    view.devices.remove(&device.key);
                    tell(Changed::Placement(device.key));
                    return;
                }
            };
            let entry = DeviceEntry {
                secret,
                owner: device.owner,
                status: device.status,
                placement: device.placement,
            };
            let previous = view.devices.insert(device.key.clone(), entry.clone());
            // Only a change of where the device may be, or whether it may connect at all,
            // concerns an online session (a tag edit does not, nor does a new owner: a
            // transferred device stays connected, PROTOCOL §6).
            let moved = previous.as_ref().is_none_or(|previous| {
                previous.placement != entry.placement || previous.status != entry.status
            });
            if let Some(previous) = previous.filter(|p| p.owner != entry.owner) {
                let device = device.key.clone();
                tell(Changed::DeviceOwner { device, former: previous.owner });
            }
            if moved {
                tell(Changed::Placement(device.key));
            }
        }
        None => {
            let Some(key) = keys::parse_device(&change.key) else { return };
            if let Some((_, entry)) = view.devices.remove(&key) {
                tell(Changed::DeviceDeleted { device: key.clone(), owner: entry.owner });
            }
            tell(Changed::Placement(key));
        }
    }
}

/// Applies one change of a device's kept subscriptions. A record that does not check out is
/// dropped (the device's set is then empty here), never half-applied.
fn apply_subscriptions(view: &RegistryView, change: &Change) {
    let Some(device) = keys::parse_subscriptions(&change.key) else {
        tracing::warn!(key = %change.key, "skipping a subscriptions key that names no device");
        return;
    };
    let record = change.value.as_ref().and_then(|value| {
        let record = subscriptions::parse(&change.key, value);
        if record.is_none() {
            tracing::warn!(key = %change.key, "skipping a subscriptions record that does not check out");
        }
        record
    });
    match record {
        Some(record) => {
            view.subscriptions.insert(device, Arc::new(record.filters));
        }
        None => {
            view.subscriptions.remove(&device);
        }
    }
}
