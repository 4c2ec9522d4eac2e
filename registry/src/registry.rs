//! Typed access to the registry: records in, records out, rules that span records enforced
//! atomically through the store's preconditions.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clock::Clock;
use crate::ids::{AccountId, DeviceKey, DeviceName, IdError, InstanceId, ProductKey, RegionId};
use crate::keys;
use crate::model::{
    Account, Device, DeviceStatus, Instance, MqttEndpoint, Placement, Product, Region, RuntimeData,
};
use crate::secret::{DeviceSecret, SecretError, SecretKey};
use crate::store::{Expect, Op, Revision, Store, StoreError};

/// Most devices one call may create: a distribution task's maximum, so one task's devices fit
/// one atomic batch.
pub const MAX_DEVICES_PER_BATCH: usize = 10_000;

/// Errors from [`Registry`] operations.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The record does not exist (or is not visible to the caller).
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    /// A record with this identity already exists (for devices: DeviceName is unique per product).
    #[error("{kind} {id} already exists")]
    AlreadyExists { kind: &'static str, id: String },
    /// An identifier failed validation.
    #[error(transparent)]
    InvalidId(#[from] IdError),
    /// A request broke a rule of the model; the message names the rule.
    #[error("{0}")]
    Rule(String),
    /// Another writer changed the record between read and write; nothing was written.
    #[error("{kind} {id} was modified concurrently; retry")]
    Concurrent { kind: &'static str, id: String },
    /// A DeviceSecret could not be sealed or opened.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record does not decode: written by an incompatible version or damaged.
    #[error("record at {key} does not decode: {reason}")]
    Corrupt { key: String, reason: String },
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// A device to create.
#[derive(Clone, Debug)]
pub struct NewDevice {
    pub name: DeviceName,
    /// Operator-supplied secret; `None` generates one.
    pub secret: Option<DeviceSecret>,
}

/// A device just created, with its secret shown this once.
#[derive(Clone, Debug)]
pub struct CreatedDevice {
    pub device: Device,
    pub secret: DeviceSecret,
}

/// The registry over any [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    /// Seals DeviceSecrets before they reach the store (PROTOCOL §9).
    sealer: SecretKey,
    clock: Arc<dyn Clock>,
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, sealer: SecretKey, clock: Arc<dyn Clock>) -> Registry {
        Registry { store, sealer, clock }
    }

    /// The store underneath, for following its change feed.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn sealer(&self) -> &SecretKey {
        &self.sealer
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub async fn create_account(&self, account: Account) -> Result<Account> {
        self.create_account_with(account, Vec::new()).await
    }

    /// [`Registry::create_account`], committing `also` in the same atomic batch (the account's
    /// first API key and audit entry, so a crash cannot leave an account nobody can use).
    pub async fn create_account_with(&self, account: Account, also: Vec<Op>) -> Result<Account> {
        let key = keys::account(&account.id);
        self.create_with(key, "account", account.id.to_string(), &account, also).await?;
        Ok(account)
    }

    pub async fn account(&self, id: &AccountId) -> Result<Account> {
        self.require(keys::account(id), "account", id.as_str()).await
    }

    /// Creates or replaces a region (regions are operator configuration, not tenant data).
    pub async fn put_region(&self, region: Region) -> Result<Region> {
        if !(-90.0..=90.0).contains(&region.latitude)
            || !(-180.0..=180.0).contains(&region.longitude)
        {
            return Err(RegistryError::Rule(format!(
                "region {} has coordinates out of range ({}, {})",
                region.id, region.latitude, region.longitude
            )));
        }
        if let Some(problem) = region.public_endpoint.as_ref().and_then(MqttEndpoint::problem) {
            return Err(RegistryError::Rule(format!("region {}: {problem}", region.id)));
        }
        self.store.put(&keys::region(&region.id), encode(&region)?).await?;
        Ok(region)
    }

    pub async fn region(&self, id: &RegionId) -> Result<Region> {
        self.require(keys::region(id), "region", id.as_str()).await
    }

    pub async fn regions(&self) -> Result<Vec<Region>> {
        self.list(keys::REGIONS).await
    }

    /// Creates an instance in an existing region, owned by an existing account.
    pub async fn create_instance(&self, instance: Instance) -> Result<Instance> {
        self.create_instance_with(instance, Vec::new()).await
    }

    /// [`Registry::create_instance`], committing `also` in the same atomic batch (the control
    /// plane's audit entry, so a crash cannot keep the instance and lose its record).
    pub async fn create_instance_with(
        &self,
        instance: Instance,
        also: Vec<Op>,
    ) -> Result<Instance> {
        if let Some(problem) = instance.endpoint.problem() {
            return Err(RegistryError::Rule(format!("instance {}: {problem}", instance.id)));
        }
        self.region(&instance.region).await?;
        self.account(&instance.owner).await?;
        if instance.expires_at <= instance.created_at {
            return Err(RegistryError::Rule(format!(
                "instance {} expires before it is created",
                instance.id
            )));
        }
        self.create_with(
            keys::instance(&instance.id),
            "instance",
            instance.id.to_string(),
            &instance,
            also,
        )
        .await?;
        Ok(instance)
    }

    pub async fn instance(&self, id: &InstanceId) -> Result<Instance> {
        self.require(keys::instance(id), "instance", id.as_str()).await
    }

    pub async fn instances(&self) -> Result<Vec<Instance>> {
        self.list(keys::INSTANCES).await
    }

    /// Creates a product in its owner's home instance. The instance is rewritten unchanged in
    /// the same batch, expecting the revision whose owner was checked, so an instance changing
    /// owner meanwhile (a transfer confirmed at that moment) fails the call instead of homing a
    /// product on another account's instance.
    pub async fn create_product(&self, product: Product) -> Result<Product> {
        self.create_product_with(product, Vec::new()).await
    }

    /// [`Registry::create_product`], committing `also` in the same atomic batch.
    pub async fn create_product_with(&self, product: Product, also: Vec<Op>) -> Result<Product> {
        let id = &product.home_instance;
        let (home, revision) =
            self.read_required::<Instance>(keys::instance(id), "instance", id.as_str()).await?;
        if home.owner != product.owner {
            return Err(RegistryError::NotFound { kind: "instance", id: home.id.to_string() });
        }
        let product_key = keys::product(&product.key);
        let mut ops = vec![
            Op::put(keys::instance(id), encode(&home)?).expecting(Expect::Revision(revision)),
            Op::put(product_key.clone(), encode(&product)?).expecting(Expect::Absent),
        ];
        ops.extend(also);
        match self.store.batch(ops).await {
            Ok(_) => Ok(product),
            Err(StoreError::Conflict { key, .. }) if key == product_key => {
                Err(RegistryError::AlreadyExists { kind: "product", id: product.key.to_string() })
            }
            Err(StoreError::Conflict { .. }) => {
                Err(RegistryError::Concurrent { kind: "instance", id: id.to_string() })
            }
            Err(other) => Err(other.into()),
        }
    }

    pub async fn product(&self, key: &ProductKey) -> Result<Product> {
        self.require(keys::product(key), "product", key.as_str()).await
    }

    /// Applies `edit` to a product as one compare-and-swap; the product's key and owner cannot
    /// change this way.
    pub async fn update_product(
        &self,
        key: &ProductKey,
        edit: impl FnOnce(&mut Product),
    ) -> Result<Product> {
        let (mut product, revision) =
            self.read_required::<Product>(keys::product(key), "product", key.as_str()).await?;
        let (owner, home) = (product.owner.clone(), product.home_instance.clone());
        edit(&mut product);
        product.key = key.clone();
        product.owner = owner;
        product.home_instance = home;
        self.swap(keys::product(key), "product", key.as_str(), revision, &product).await?;
        Ok(product)
    }

    /// Creates devices of one product, all or none, owned by the product's owner. DeviceName
    /// is unique per product: a name already taken (or repeated in the request) fails the whole
    /// call.
    pub async fn create_devices(
        &self,
        product: &ProductKey,
        new: Vec<NewDevice>,
    ) -> Result<Vec<CreatedDevice>> {
        self.create_devices_as(None, product, new, Vec::new()).await
    }

    /// [`Registry::create_devices`] for `owner` only: a product of another account is not
    /// found. The product is rewritten unchanged in the same batch, expecting the revision
    /// whose owner was checked, so a change of owner committing meanwhile (an instance
    /// transfer) fails the call instead of devices landing in another account's product.
    pub async fn create_devices_for(
        &self,
        owner: &AccountId,
        product: &ProductKey,
        new: Vec<NewDevice>,
    ) -> Result<Vec<CreatedDevice>> {
        self.create_devices_as(Some(owner), product, new, Vec::new()).await
    }

    /// [`Registry::create_devices_for`], committing `also` in the same atomic batch.
    pub async fn create_devices_for_with(
        &self,
        owner: &AccountId,
        product: &ProductKey,
        new: Vec<NewDevice>,
        also: Vec<Op>,
    ) -> Result<Vec<CreatedDevice>> {
        self.create_devices_as(Some(owner), product, new, also).await
    }

    /// The most devices one call creates: [`MAX_DEVICES_PER_BATCH`], or fewer when the store
    /// commits fewer ops atomically (two per device, one for the product, and `also`), since a
    /// call creates all its devices or none.
    pub fn devices_per_call(&self, also: usize) -> usize {
        let room = self.store.max_batch().saturating_sub(1 + also) / 2;
        room.clamp(1, MAX_DEVICES_PER_BATCH)
    }

    async fn create_devices_as(
        &self,
        expected_owner: Option<&AccountId>,
        product: &ProductKey,
        new: Vec<NewDevice>,
        also: Vec<Op>,
    ) -> Result<Vec<CreatedDevice>> {
        let most = self.devices_per_call(also.len());
        if new.is_empty() || new.len() > most {
            return Err(RegistryError::Rule(format!(
                "create 1 to {most} devices per call, got {}",
                new.len()
            )));
        }
        let product_key = keys::product(product);
        let (record, revision) =
            self.read_required::<Product>(product_key.clone(), "product", product.as_str()).await?;
        if expected_owner.is_some_and(|expected| *expected != record.owner) {
            return Err(RegistryError::NotFound { kind: "product", id: product.to_string() });
        }
        let owner = record.owner.clone();
        let now = self.clock.now();
        let mut created = Vec::with_capacity(new.len());
        let mut ops = Vec::with_capacity(new.len() + 1);
        ops.push(
            Op::put(product_key.clone(), encode(&record)?).expecting(Expect::Revision(revision)),
        );
        for NewDevice { name, secret } in new {
            let key = DeviceKey { product_key: product.clone(), device_name: name };
            let secret = match secret {
                Some(secret) => secret,
                None => DeviceSecret::generate()?,
            };
            let device = Device {
                secret: self.sealer.seal(&key, &secret)?,
                key,
                owner: owner.clone(),
                tags: Default::default(),
                groups: Vec::new(),
                topology: Default::default(),
                status: DeviceStatus::Inactive,
                placement: Placement::Home,
                created_at: now,
            };
            ops.push(
                Op::put(keys::device(&device.key), encode(&device)?).expecting(Expect::Absent),
            );
            // A new device starts with no kept subscriptions, even if a broker's late write
            // for a deleted namesake left a record behind (no feed entry when there is none).
            ops.push(Op::delete(keys::subscriptions(&device.key)));
            created.push(CreatedDevice { device, secret });
        }
        ops.extend(also);
        match self.store.batch(ops).await {
            Ok(_) => Ok(created),
            Err(StoreError::Conflict { key, .. }) if key == product_key => {
                Err(RegistryError::Concurrent { kind: "product", id: product.to_string() })
            }
            Err(StoreError::Conflict { key, .. }) | Err(StoreError::DuplicateKey(key)) => {
                let name = created
                    .iter()
                    .find(|c| keys::device(&c.device.key) == key)
                    .map_or(key, |c| c.device.key.to_string());
                Err(RegistryError::AlreadyExists { kind: "device", id: name })
            }
            Err(other) => Err(other.into()),
        }
    }

    pub async fn device(&self, key: &DeviceKey) -> Result<Device> {
        self.require(keys::device(key), "device", &key.to_string()).await
    }

    /// Every device of a product, in DeviceName key order.
    pub async fn devices(&self, product: &ProductKey) -> Result<Vec<Device>> {
        self.list(&keys::devices_of(product)).await
    }

    /// The DeviceSecret in plain text, for signature verification.
    pub fn device_secret(&self, device: &Device) -> Result<DeviceSecret> {
        Ok(self.sealer.open(&device.key, &device.secret)?)
    }

    /// Disables a device (refused at CONNECT) or enables it again (back to `offline`, or
    /// `inactive` if it never connected where it is placed).
    pub async fn set_device_enabled(&self, key: &DeviceKey, enabled: bool) -> Result<Device> {
        self.update_device(key, |device| {
            device.status = match (enabled, device.status) {
                (false, _) => DeviceStatus::Disabled,
                (true, DeviceStatus::Disabled) => DeviceStatus::Offline,
                (true, status) => status,
            };
            Ok(())
        })
        .await
    }

    /// Applies `edit` to a device as one compare-and-swap.
    pub async fn update_device(
        &self,
        key: &DeviceKey,
        edit: impl FnOnce(&mut Device) -> Result<()>,
    ) -> Result<Device> {
        self.update_device_with(key, edit, Vec::new()).await
    }

    /// [`Registry::update_device`], committing `also` in the same atomic batch.
    pub async fn update_device_with(
        &self,
        key: &DeviceKey,
        edit: impl FnOnce(&mut Device) -> Result<()>,
        also: Vec<Op>,
    ) -> Result<Device> {
        let id = key.to_string();
        let (mut device, revision) =
            self.read_required::<Device>(keys::device(key), "device", &id).await?;
        edit(&mut device)?;
        device.key = key.clone();
        self.swap_with(keys::device(key), "device", &id, revision, &device, also).await?;
        Ok(device)
    }

    pub async fn delete_device(&self, key: &DeviceKey) -> Result<()> {
        let id = key.to_string();
        let (_, revision) = self.read_required::<Device>(keys::device(key), "device", &id).await?;
        let ops = vec![
            Op::delete(keys::device(key)).expecting(Expect::Revision(revision)),
            Op::delete(keys::subscriptions(key)),
        ];
        match self.store.batch(ops).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict { .. }) => {
                Err(RegistryError::Concurrent { kind: "device", id })
            }
            Err(other) => Err(other.into()),
        }
    }

    /// A device's runtime data at one instance; empty if it never ran there.
    pub async fn runtime(&self, instance: &InstanceId, device: &DeviceKey) -> Result<RuntimeData> {
        Ok(self
            .read(keys::runtime(instance, device))
            .await?
            .map(|(data, _)| data)
            .unwrap_or_default())
    }

    pub async fn put_runtime(
        &self,
        instance: &InstanceId,
        device: &DeviceKey,
        data: &RuntimeData,
    ) -> Result<Revision> {
        Ok(self.store.put(&keys::runtime(instance, device), encode(data)?).await?)
    }

    async fn read<T: DeserializeOwned>(&self, key: String) -> Result<Option<(T, Revision)>> {
        let Some(entry) = self.store.get(&key).await? else {
            return Ok(None);
        };
        let record = decode(&key, &entry.value)?;
        Ok(Some((record, entry.revision)))
    }

    async fn read_required<T: DeserializeOwned>(
        &self,
        key: String,
        kind: &'static str,
        id: &str,
    ) -> Result<(T, Revision)> {
        self.read(key).await?.ok_or_else(|| RegistryError::NotFound { kind, id: id.to_owned() })
    }

    async fn require<T: DeserializeOwned>(
        &self,
        key: String,
        kind: &'static str,
        id: &str,
    ) -> Result<T> {
        Ok(self.read_required(key, kind, id).await?.0)
    }

    async fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        let snapshot = self.store.scan_prefix(prefix).await?;
        snapshot.entries.iter().map(|entry| decode(&entry.key, &entry.value)).collect()
    }

    /// Creates `record` at `key` and commits `also` in the same batch.
    async fn create_with<T: Serialize>(
        &self,
        key: String,
        kind: &'static str,
        id: String,
        record: &T,
        also: Vec<Op>,
    ) -> Result<Revision> {
        let mut ops = vec![Op::put(key.clone(), encode(record)?).expecting(Expect::Absent)];
        ops.extend(also);
        match self.store.batch(ops).await {
            Ok(revision) => Ok(revision),
            Err(StoreError::Conflict { key: conflict, .. }) if conflict == key => {
                Err(RegistryError::AlreadyExists { kind, id })
            }
            Err(StoreError::Conflict { .. }) => Err(RegistryError::Concurrent { kind, id }),
            Err(other) => Err(other.into()),
        }
    }

    async fn swap<T: Serialize>(
        &self,
        key: String,
        kind: &'static str,
        id: &str,
        revision: Revision,
        record: &T,
    ) -> Result<Revision> {
        self.swap_with(key, kind, id, revision, record, Vec::new()).await
    }

    /// Rewrites `record` at `key` if it is still at `revision`, and commits `also` in the same
    /// batch.
    async fn swap_with<T: Serialize>(
        &self,
        key: String,
        kind: &'static str,
        id: &str,
        revision: Revision,
        record: &T,
        also: Vec<Op>,
    ) -> Result<Revision> {
        let mut ops = vec![Op::put(key, encode(record)?).expecting(Expect::Revision(revision))];
        ops.extend(also);
        match self.store.batch(ops).await {
            Ok(revision) => Ok(revision),
            Err(StoreError::Conflict { .. }) => {
                Err(RegistryError::Concurrent { kind, id: id.to_owned() })
            }
            Err(other) => Err(other.into()),
        }
    }
}

/// Records are stored as compact JSON: readable in a backup, stable across versions with
/// `#[serde(default)]` on new fields.
pub fn encode<T: Serialize>(record: &T) -> Result<Bytes> {
    serde_json::to_vec(record)
        .map(Bytes::from)
        .map_err(|e| RegistryError::Corrupt { key: String::new(), reason: e.to_string() })
}

pub fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T> {
    serde_json::from_slice(value)
        .map_err(|e| RegistryError::Corrupt { key: key.to_owned(), reason: e.to_string() })
}

#[cfg(test)]
mod tests;
