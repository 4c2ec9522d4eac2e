//! Device transfer orders (PROTOCOL §6): the owner of a published product hands up to 100 of its
//! devices to another account, which accepts or rejects the order; the source may cancel it
//! until then. Only accounts on the operator's allow-list may transfer out.
//!
//! Records:
//!
//! | key | what |
//! |---|---|
//! | `device-transfers/{id}` | the order and its state |
//! | `device-transfer-locks/{pk}/{dn}` | one per device of a pending order: a device is in at most one, and the distribution executor refuses a locked device in the same batch that would move it |
//! | `transfer-allow-list/{account}` | accounts the operator allows to transfer out |
//! | `transferred-products/{pk}` | set on acceptance: no device of the product is distributed any more (PROTOCOL §5) |
//! | `product-views/{account}/{pk}` | the destination's permanent read-only view of the product |
//!
//! Every state change is a compare-and-swap. Acceptance is one store batch with a revision
//! precondition on everything it read: the devices' new owner, the order, its locks and the
//! product view, plus the product marker. A crash leaves all of it or none.
//!
//! What changes for a device is its owner, and its tags unless the order carries them (groups
//! are the source's and are cleared). Certificate, placement and status stay, so a connected
//! device stays connected; brokers follow the feed and move application-client access to the
//! new owner.
//!
//! The destination manages its devices through its product view, by view id and DeviceName:
//! the view shows everything of the product except its ProductKey (topic templates show
//! `${productKey}` in its place). The destination has full management rights over the devices
//! (show, disable, enable, delete); it cannot edit the product, create devices in it, or transfer
//! the devices on (only a product's owner transfers). A completed transfer cannot be undone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use meridian_registry::clock::Timestamp;
use meridian_registry::ids::{AccountId, DeviceKey, DeviceName, InstanceId, ProductKey};
use meridian_registry::model::{Device, Placement, TopicCategory};
use meridian_registry::store::{Entry, Expect, Op, Revision, StoreError};
use meridian_registry::{decode, encode, keys};

use crate::device_list::{DeviceCsv, unique_names};
use crate::error::ControlError;
use crate::plane::{ControlPlane, Result, not_found, random_token};

pub(crate) const DEVICE_TRANSFERS: &str = "device-transfers/";
pub(crate) const DEVICE_TRANSFER_LOCKS: &str = "device-transfer-locks/";
pub(crate) const TRANSFER_ALLOW_LIST: &str = "transfer-allow-list/";
pub(crate) const TRANSFERRED_PRODUCTS: &str = "transferred-products/";
pub(crate) const PRODUCT_VIEWS: &str = "product-views/";

/// Most devices one transfer order may hold (PROTOCOL §6).
pub const MAX_TRANSFER_DEVICES: usize = 100;
/// The CSV template for device lists: the same shape distribution takes.
pub const TRANSFER_CSV_TEMPLATE: &str = "productKey,deviceName\n";

/// What the source asks for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceTransferRequest {
    pub product: ProductKey,
    /// The destination account, by ID or by name.
    pub destination: String,
    /// DeviceNames of `product`, 1 to 100.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Alternatively, a CSV `productKey,deviceName` with a header, 1 to 100 rows.
    #[serde(default)]
    pub csv: Option<String>,
    /// Whether the devices keep their tags at the destination.
    #[serde(default)]
    pub with_tags: bool,
}

/// A device transfer order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceTransfer {
    pub id: String,
    pub source: AccountId,
    pub destination: AccountId,
    pub product: ProductKey,
    /// What the destination is shown instead of the ProductKey.
    pub product_name: String,
    pub devices: Vec<DeviceName>,
    pub with_tags: bool,
    pub state: DeviceTransferState,
    /// The destination's product view, once accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_view: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceTransferState {
    /// Waiting for the destination; the source may still cancel.
    Pending,
    /// Done and final: the devices are the destination's.
    Accepted,
    Rejected,
    Cancelled,
}

/// Which side of an order the caller is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Source,
    Destination,
}

impl DeviceTransfer {
    /// The caller's side of this order, if it is on one.
    pub fn side(&self, caller: &AccountId) -> Option<Side> {
        if &self.source == caller {
            Some(Side::Source)
        } else if &self.destination == caller {
            Some(Side::Destination)
        } else {
            None
        }
    }
}

/// An account the operator allows to transfer devices out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowListEntry {
    pub account: AccountId,
    pub added_at: Timestamp,
}

/// The destination's read-only view of a product: everything but its ProductKey. Rendered from
/// the product as it is now, so it stays current for as long as the view exists (forever).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProductView {
    /// Opaque: devices under the view are addressed by it and their DeviceName.
    pub id: String,
    pub name: String,
    pub owner: AccountId,
    pub home_instance: InstanceId,
    pub published: bool,
    /// Topic templates with `${productKey}` in place of the key.
    pub topic_categories: Vec<TopicCategory>,
    pub tsl: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parsing_script: Option<String>,
    pub created_at: Timestamp,
    /// When the first transfer into this view was accepted.
    pub granted_at: Timestamp,
}

/// `device-transfer-locks/{pk}/{dn}`: the pending order a device is in.
#[derive(Serialize, Deserialize)]
struct TransferLock {
    transfer: String,
}

/// `product-views/{holder}/{pk}`: the grant behind a [`ProductView`].
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ProductGrant {
    id: String,
    holder: AccountId,
    product: ProductKey,
    /// The accepted orders that brought devices under this view.
    transfers: Vec<String>,
    granted_at: Timestamp,
}

/// `transferred-products/{pk}`: a device of the product went to another account.
#[derive(Serialize, Deserialize)]
struct TransferredProduct {
    product: ProductKey,
    transfer: String,
    at: Timestamp,
}

impl ControlPlane {
    /// Puts `account` on the transfer allow-list (operator).
    pub async fn allow_transfers(&self, account: &AccountId) -> Result<AllowListEntry> {
        self.registry.account(account).await?;
        let entry = AllowListEntry { account: account.clone(), added_at: self.now() };
        let ops = vec![
            Op::put(allow_key(account), encode(&entry)?),
            self.audit_op(account, "transfer-allow-list.added", account.as_str())?,
        ];
        self.registry.store().batch(ops).await?;
        Ok(entry)
    }

    /// Takes `account` off the transfer allow-list (operator); pending orders stay valid.
    pub async fn disallow_transfers(&self, account: &AccountId) -> Result<()> {
        if self.registry.store().get(&allow_key(account)).await?.is_none() {
            return Err(not_found("allow-list entry", account.as_str()));
        }
        let ops = vec![
            Op::delete(allow_key(account)),
            self.audit_op(account, "transfer-allow-list.removed", account.as_str())?,
        ];
        self.registry.store().batch(ops).await?;
        Ok(())
    }

    /// The transfer allow-list (operator).
    pub async fn transfer_allow_list(&self) -> Result<Vec<AllowListEntry>> {
        let snapshot = self.registry.store().scan_prefix(TRANSFER_ALLOW_LIST).await?;
        snapshot.entries.iter().map(|entry| Ok(decode(&entry.key, &entry.value)?)).collect()
    }

    /// Checks an order against every PROTOCOL §6 rule and stores it as pending, with a lock on
    /// each of its devices. Nothing is stored when a rule fails.
    pub async fn create_device_transfer(
        &self,
        caller: &AccountId,
        request: DeviceTransferRequest,
    ) -> Result<DeviceTransfer> {
        if self.registry.store().get(&allow_key(caller)).await?.is_none() {
            return Err(ControlError::Rule(format!(
                "account {caller} is not on the transfer allow-list; only allow-listed accounts \
                 may transfer devices out"
            )));
        }
        let product = self.product(caller, &request.product).await?;
        if !product.published {
            return Err(ControlError::Rule(format!(
                "product {} is not published; publish it before transferring its devices",
                product.key
            )));
        }
        let names = device_names(&request)?;
        let destination = self.find_account(&request.destination).await?;
        if &destination.id == caller {
            return Err(ControlError::Rule(
                "the destination of a transfer is the caller's own account".into(),
            ));
        }

        let id = format!("tr-{}", random_token(16)?);
        let mut ops = Vec::with_capacity(names.len() + 1);
        for name in &names {
            let key = DeviceKey { product_key: product.key.clone(), device_name: name.clone() };
            let device = self.transferable(caller, &key).await?;
            if let Some(pending) = self.lock_of(&key).await?.map(|(lock, _)| lock.transfer) {
                return Err(ControlError::Rule(format!(
                    "device {} is already in pending transfer {pending}",
                    device.key
                )));
            }
            let lock = TransferLock { transfer: id.clone() };
            ops.push(Op::put(lock_key(&key), encode(&lock)?).expecting(Expect::Absent));
        }
        let now = self.now();
        let transfer = DeviceTransfer {
            id,
            source: caller.clone(),
            destination: destination.id,
            product: product.key,
            product_name: product.name,
            devices: names,
            with_tags: request.with_tags,
            state: DeviceTransferState::Pending,
            product_view: None,
            created_at: now,
            updated_at: now,
        };
        ops.push(Op::put(transfer_key(&transfer.id), encode(&transfer)?).expecting(Expect::Absent));
        ops.push(self.audit_op(caller, "device-transfer.created", &transfer.id)?);
        match self.registry.store().batch(ops).await {
            Ok(_) => {}
            Err(StoreError::Conflict { key, .. }) => {
                return Err(ControlError::Rule(format!(
                    "a device of this order ({}) was put in another pending transfer meanwhile",
                    key.strip_prefix(DEVICE_TRANSFER_LOCKS).unwrap_or(&key)
                )));
            }
            Err(other) => return Err(other.into()),
        }
        Ok(transfer)
    }

    /// Orders the caller is the source or the destination of.
    pub async fn device_transfers(&self, caller: &AccountId) -> Result<Vec<DeviceTransfer>> {
        let snapshot = self.registry.store().scan_prefix(DEVICE_TRANSFERS).await?;
        let mut transfers = Vec::new();
        for entry in snapshot.entries {
            let transfer: DeviceTransfer = decode(&entry.key, &entry.value)?;
            if transfer.side(caller).is_some() {
                transfers.push(transfer);
            }
        }
        Ok(transfers)
    }

    pub async fn device_transfer(&self, caller: &AccountId, id: &str) -> Result<DeviceTransfer> {
        let (transfer, _) = self.load_transfer(caller, id).await?;
        Ok(transfer)
    }

    /// The destination accepts: in one atomic batch the devices become its own, the source
    /// loses them, the product is marked transferred and the destination's view of it is
    /// created (or extended). Every device is checked again; if one no longer qualifies the
    /// whole order stays pending and the error names it.
    pub async fn accept_device_transfer(
        &self,
        caller: &AccountId,
        id: &str,
    ) -> Result<DeviceTransfer> {
        let (mut transfer, revision) =
            self.pending(caller, id, Side::Destination, "accept").await?;
        let product = self.registry.product(&transfer.product).await?;
        if product.owner != transfer.source {
            return Err(ControlError::Rule(format!(
                "transfer {id} can no longer be accepted: its product changed owner; the source \
                 may cancel it"
            )));
        }
        let mut ops = Vec::with_capacity(2 * transfer.devices.len() + 3);
        for name in &transfer.devices {
            let key =
                DeviceKey { product_key: transfer.product.clone(), device_name: name.clone() };
            let entry = self.registry.store().get(&keys::device(&key)).await?;
            let Some(entry) = entry else {
                return Err(no_longer(id, name, "it no longer exists"));
            };
            let mut device: Device = decode(&entry.key, &entry.value)?;
            if device.owner != transfer.source {
                return Err(no_longer(id, name, "it no longer belongs to the source account"));
            }
            if device.placement != Placement::Home {
                return Err(no_longer(id, name, "it was distributed away from its home instance"));
            }
            let Some((lock, lock_revision)) = self.lock_of(&key).await? else {
                return Err(no_longer(id, name, "its transfer lock is gone"));
            };
            if lock.transfer != transfer.id {
                return Err(no_longer(id, name, "it is locked by another transfer"));
            }
            device.owner = transfer.destination.clone();
            if !transfer.with_tags {
                device.tags.clear();
            }
            device.groups.clear();
            ops.push(
                Op::put(entry.key, encode(&device)?).expecting(Expect::Revision(entry.revision)),
            );
            ops.push(Op::delete(lock_key(&key)).expecting(Expect::Revision(lock_revision)));
        }

        let now = self.now();
        let grant_key = grant_key(&transfer.destination, &transfer.product);
        let grant = match self.registry.store().get(&grant_key).await? {
            Some(entry) => {
                let mut grant: ProductGrant = decode(&entry.key, &entry.value)?;
                grant.transfers.push(transfer.id.clone());
                ops.push(
                    Op::put(grant_key, encode(&grant)?).expecting(Expect::Revision(entry.revision)),
                );
                grant
            }
            None => {
                let grant = ProductGrant {
                    id: format!("pv-{}", random_token(16)?),
                    holder: transfer.destination.clone(),
                    product: transfer.product.clone(),
                    transfers: vec![transfer.id.clone()],
                    granted_at: now,
                };
                ops.push(Op::put(grant_key, encode(&grant)?).expecting(Expect::Absent));
                grant
            }
        };
        let marker = TransferredProduct {
            product: transfer.product.clone(),
            transfer: transfer.id.clone(),
            at: now,
        };
        ops.push(Op::put(transferred_marker(&transfer.product), encode(&marker)?));
        transfer.state = DeviceTransferState::Accepted;
        transfer.product_view = Some(grant.id);
        transfer.updated_at = now;
        ops.push(
            Op::put(transfer_key(&transfer.id), encode(&transfer)?)
                .expecting(Expect::Revision(revision)),
        );
        ops.push(self.audit_op(caller, "device-transfer.accepted", id)?);
        ops.push(self.audit_op(&transfer.source, "device-transfer.accepted", id)?);
        self.commit_transfer(ops, id).await?;
        Ok(transfer)
    }

    /// The destination declines a pending order; the devices stay with the source.
    pub async fn reject_device_transfer(
        &self,
        caller: &AccountId,
        id: &str,
    ) -> Result<DeviceTransfer> {
        self.settle(caller, id, Side::Destination, DeviceTransferState::Rejected).await
    }

    /// The source withdraws a pending order; the devices stay with it.
    pub async fn cancel_device_transfer(
        &self,
        caller: &AccountId,
        id: &str,
    ) -> Result<DeviceTransfer> {
        self.settle(caller, id, Side::Source, DeviceTransferState::Cancelled).await
    }

    /// The caller's read-only product views, one per product it received devices of.
    pub async fn product_views(&self, caller: &AccountId) -> Result<Vec<ProductView>> {
        let snapshot =
            self.registry.store().scan_prefix(&format!("{PRODUCT_VIEWS}{caller}/")).await?;
        let mut views = Vec::with_capacity(snapshot.entries.len());
        for entry in snapshot.entries {
            let grant: ProductGrant = decode(&entry.key, &entry.value)?;
            views.push(self.render(&grant).await?);
        }
        Ok(views)
    }

    pub async fn product_view(&self, caller: &AccountId, view: &str) -> Result<ProductView> {
        let grant = self.grant(caller, view).await?;
        self.render(&grant).await
    }

    /// The caller's devices under one of its product views.
    pub async fn view_devices(&self, caller: &AccountId, view: &str) -> Result<Vec<Device>> {
        let grant = self.grant(caller, view).await?;
        let devices = self.registry.devices(&grant.product).await?;
        Ok(devices.into_iter().filter(|device| &device.owner == caller).collect())
    }

    /// One of the caller's devices under one of its product views.
    pub async fn view_device(
        &self,
        caller: &AccountId,
        view: &str,
        name: &DeviceName,
    ) -> Result<Device> {
        let grant = self.grant(caller, view).await?;
        let key = DeviceKey { product_key: grant.product, device_name: name.clone() };
        // Errors name the device by its DeviceName only: the view does not show the key.
        let entry = self.registry.store().get(&keys::device(&key)).await?;
        let device = match entry {
            Some(entry) => decode::<Device>(&entry.key, &entry.value)?,
            None => return Err(not_found("device", name.as_str())),
        };
        if &device.owner != caller {
            return Err(not_found("device", name.as_str()));
        }
        Ok(device)
    }

    pub async fn set_view_device_enabled(
        &self,
        caller: &AccountId,
        view: &str,
        name: &DeviceName,
        enabled: bool,
    ) -> Result<Device> {
        let device = self.view_device(caller, view, name).await?;
        self.set_own_device_enabled(caller, &device.key, enabled, &format!("{view}/{name}"))
            .await
            .map_err(|error| hide_key(error, name))
    }

    /// Deletes a transferred device: the destination's right as its owner.
    pub async fn delete_view_device(
        &self,
        caller: &AccountId,
        view: &str,
        name: &DeviceName,
    ) -> Result<()> {
        let device = self.view_device(caller, view, name).await?;
        self.delete_own_device(caller, &device.key, &format!("{view}/{name}"), |_| Ok(()))
            .await
            .map_err(|error| hide_key(error, name))
    }

    /// Devices of `product` in pending transfers, with the order each is in.
    pub(crate) async fn pending_transfer_locks(
        &self,
        product: &ProductKey,
    ) -> Result<BTreeMap<DeviceName, String>> {
        let prefix = format!("{DEVICE_TRANSFER_LOCKS}{product}/");
        let snapshot = self.registry.store().scan_prefix(&prefix).await?;
        let mut locked = BTreeMap::new();
        for entry in snapshot.entries {
            let lock: TransferLock = decode(&entry.key, &entry.value)?;
            let stored = format!("{}{}", keys::DEVICES, &entry.key[DEVICE_TRANSFER_LOCKS.len()..]);
            if let Some(key) = keys::parse_device(&stored) {
                locked.insert(key.device_name, lock.transfer);
            }
        }
        Ok(locked)
    }

    /// A device the caller may transfer: its own, and home (a device placed elsewhere by
    /// distribution is not transferred, PROTOCOL §6).
    async fn transferable(&self, caller: &AccountId, key: &DeviceKey) -> Result<Device> {
        let device = self.device(caller, key).await?;
        if device.placement != Placement::Home {
            return Err(ControlError::Rule(format!(
                "device {key} is distributed away from its home instance; transfer and \
                 distribution exclude each other, so distribute it back before transferring it"
            )));
        }
        Ok(device)
    }

    async fn lock_of(&self, device: &DeviceKey) -> Result<Option<(TransferLock, Revision)>> {
        match self.registry.store().get(&lock_key(device)).await? {
            Some(entry) => Ok(Some((decode(&entry.key, &entry.value)?, entry.revision))),
            None => Ok(None),
        }
    }

    /// An order the caller is on either side of; another account's is not found.
    async fn load_transfer(
        &self,
        caller: &AccountId,
        id: &str,
    ) -> Result<(DeviceTransfer, Revision)> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(not_found("transfer", id));
        }
        let entry = self
            .registry
            .store()
            .get(&transfer_key(id))
            .await?
            .ok_or_else(|| not_found("transfer", id))?;
        let transfer: DeviceTransfer = decode(&entry.key, &entry.value)?;
        if transfer.side(caller).is_none() {
            return Err(not_found("transfer", id));
        }
        Ok((transfer, entry.revision))
    }

    /// A pending order that `side` (which the caller must be) may act on.
    async fn pending(
        &self,
        caller: &AccountId,
        id: &str,
        side: Side,
        action: &str,
    ) -> Result<(DeviceTransfer, Revision)> {
        let (transfer, revision) = self.load_transfer(caller, id).await?;
        if transfer.side(caller) != Some(side) {
            let who = match side {
                Side::Source => "its source",
                Side::Destination => "its destination",
            };
            return Err(ControlError::Rule(format!(
                "only {who} account can {action} transfer {id}"
            )));
        }
        if transfer.state != DeviceTransferState::Pending {
            return Err(ControlError::Rule(format!(
                "transfer {id} is {:?}; only a pending transfer can be {}",
                transfer.state,
                past(action)
            )));
        }
        Ok((transfer, revision))
    }

    /// Ends a pending order without moving anything: its state and the release of its locks
    /// in one batch.
    async fn settle(
        &self,
        caller: &AccountId,
        id: &str,
        side: Side,
        state: DeviceTransferState,
    ) -> Result<DeviceTransfer> {
        let action = match state {
            DeviceTransferState::Cancelled => "cancel",
            _ => "reject",
        };
        let (mut transfer, revision) = self.pending(caller, id, side, action).await?;
        let mut ops = Vec::with_capacity(transfer.devices.len() + 1);
        for name in &transfer.devices {
            let key =
                DeviceKey { product_key: transfer.product.clone(), device_name: name.clone() };
            if let Some((lock, lock_revision)) = self.lock_of(&key).await?
                && lock.transfer == transfer.id
            {
                ops.push(Op::delete(lock_key(&key)).expecting(Expect::Revision(lock_revision)));
            }
        }
        transfer.state = state;
        transfer.updated_at = self.now();
        ops.push(
            Op::put(transfer_key(&transfer.id), encode(&transfer)?)
                .expecting(Expect::Revision(revision)),
        );
        let action = format!("device-transfer.{}", past(action));
        ops.push(self.audit_op(&transfer.source, &action, id)?);
        ops.push(self.audit_op(&transfer.destination, &action, id)?);
        self.commit_transfer(ops, id).await?;
        Ok(transfer)
    }

    async fn commit_transfer(&self, ops: Vec<Op>, id: &str) -> Result<()> {
        match self.registry.store().batch(ops).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict { .. }) => Err(ControlError::Conflict {
                kind: "transfer",
                id: format!("{id} (it or one of its devices changed meanwhile; retry)"),
            }),
            Err(other) => Err(other.into()),
        }
    }

    async fn grant(&self, caller: &AccountId, view: &str) -> Result<ProductGrant> {
        let snapshot =
            self.registry.store().scan_prefix(&format!("{PRODUCT_VIEWS}{caller}/")).await?;
        for entry in snapshot.entries {
            let grant: ProductGrant = decode(&entry.key, &entry.value)?;
            if grant.id == view {
                return Ok(grant);
            }
        }
        Err(not_found("product view", view))
    }

    async fn render(&self, grant: &ProductGrant) -> Result<ProductView> {
        let product = self.registry.product(&grant.product).await.map_err(|error| match error {
            meridian_registry::RegistryError::NotFound { .. } => {
                not_found("product view", &grant.id)
            }
            other => other.into(),
        })?;
        let key = product.key.as_str();
        let topic_categories = product
            .topic_categories
            .into_iter()
            .map(|category| TopicCategory {
                topic: category.topic.replace(key, "${productKey}"),
                ..category
            })
            .collect();
        Ok(ProductView {
            id: grant.id.clone(),
            name: product.name,
            owner: product.owner,
            home_instance: product.home_instance,
            published: product.published,
            topic_categories,
            tsl: product.tsl,
            parsing_script: product.parsing_script,
            created_at: product.created_at,
            granted_at: grant.granted_at,
        })
    }
}

/// The marker key that blocks distribution of a product's devices (PROTOCOL §5).
pub(crate) fn transferred_marker(product: &ProductKey) -> String {
    format!("{TRANSFERRED_PRODUCTS}{product}")
}

fn transfer_key(id: &str) -> String {
    format!("{DEVICE_TRANSFERS}{id}")
}

fn allow_key(account: &AccountId) -> String {
    format!("{TRANSFER_ALLOW_LIST}{account}")
}

fn grant_key(holder: &AccountId, product: &ProductKey) -> String {
    format!("{PRODUCT_VIEWS}{holder}/{product}")
}

/// For the distribution executor, given a device found in no pending transfer: an op that,
/// committed with the device's move, asserts it still is in none (PROTOCOL §6: transfer and
/// distribution exclude each other).
pub(crate) fn transfer_guard(device: &DeviceKey) -> Op {
    Op::delete(lock_key(device)).expecting(Expect::Absent)
}

/// `device-transfer-locks/` plus the device's key below `devices/`, escapes included: present
/// while the device is in a pending transfer.
/// The order a device transfer lock entry names.
pub(crate) fn lock_holder(lock: &Entry) -> Result<String> {
    let lock: TransferLock = decode(&lock.key, &lock.value)?;
    Ok(lock.transfer)
}

pub(crate) fn lock_key(device: &DeviceKey) -> String {
    let stored = keys::device(device);
    format!("{DEVICE_TRANSFER_LOCKS}{}", &stored[keys::DEVICES.len()..])
}

fn no_longer(id: &str, name: &DeviceName, why: &str) -> ControlError {
    ControlError::Rule(format!(
        "transfer {id} can no longer be accepted: device {name} does not qualify ({why}); the \
         source may cancel it"
    ))
}

fn past(action: &str) -> &'static str {
    match action {
        "accept" => "accepted",
        "cancel" => "cancelled",
        _ => "rejected",
    }
}

/// An error about a device under a product view, named by its DeviceName only.
fn hide_key(error: ControlError, name: &DeviceName) -> ControlError {
    match error {
        ControlError::NotFound { kind, .. } => not_found(kind, name.as_str()),
        ControlError::Conflict { kind, .. } => {
            ControlError::Conflict { kind, id: format!("{name} (modified concurrently; retry)") }
        }
        other => other,
    }
}

/// The order's device list from names or CSV: 1 to 100, valid, without duplicates.
fn device_names(request: &DeviceTransferRequest) -> Result<Vec<DeviceName>> {
    let mut names: Vec<String> = request.devices.clone();
    if let Some(csv_text) = &request.csv {
        if !names.is_empty() {
            return Err(ControlError::Invalid("give devices as a list or as CSV, not both".into()));
        }
        for row in DeviceCsv::open_list(csv_text)?.rows() {
            names.push(row?.device_name_of(&request.product, "transfer")?);
            if names.len() > MAX_TRANSFER_DEVICES {
                break;
            }
        }
    }
    if names.is_empty() || names.len() > MAX_TRANSFER_DEVICES {
        return Err(ControlError::Invalid(format!(
            "a transfer holds 1 to {MAX_TRANSFER_DEVICES} devices, got {}",
            names.len()
        )));
    }
    unique_names(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_mirror_device_keys() {
        let key = DeviceKey {
            product_key: "a13FN5TplKq".parse().unwrap(),
            device_name: "a.b@c".parse().unwrap(),
        };
        let lock = lock_key(&key);
        assert_eq!(lock, "device-transfer-locks/a13FN5TplKq/a=2Eb=40c");
        meridian_registry::store::validate_key(&lock).unwrap();
        let stored = format!("{}{}", keys::DEVICES, &lock[DEVICE_TRANSFER_LOCKS.len()..]);
        assert_eq!(keys::parse_device(&stored), Some(key));
    }

    #[test]
    fn device_lists_are_bounded_and_unique() {
        let request = |devices: Vec<String>, csv: Option<&str>| DeviceTransferRequest {
            product: "a13FN5TplKq".parse().unwrap(),
            destination: "bravo".into(),
            devices,
            csv: csv.map(str::to_owned),
            with_tags: false,
        };
        assert!(device_names(&request(vec![], None)).is_err());
        let many: Vec<String> = (0..101).map(|i| format!("dev-{i:03}")).collect();
        assert!(device_names(&request(many[..100].to_vec(), None)).is_ok());
        assert!(device_names(&request(many, None)).is_err());
        assert!(device_names(&request(vec!["lamp-1".into(), "lamp-1".into()], None)).is_err());
        let csv = "productKey,deviceName\na13FN5TplKq,lamp-1\na13FN5TplKq,lamp-2\n";
        assert_eq!(device_names(&request(vec![], Some(csv))).unwrap().len(), 2);
        let other = "productKey,deviceName\nb13FN5TplKq,lamp-1\n";
        assert!(device_names(&request(vec![], Some(other))).is_err());
    }
}
