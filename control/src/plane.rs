//! The control plane's operations, each scoped to the calling account: a resource of another
//! account is reported as not found, never as forbidden, so nothing leaks across accounts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

use meridian_registry::clock::Timestamp;
use meridian_registry::ids::{AccountId, DeviceKey, DeviceName, InstanceId, ProductKey, RegionId};
use meridian_registry::model::{
    Account, AccountKind, Device, DeviceStatus, Edition, Instance, InstanceUsage, MqttEndpoint,
    Placement, Product, ProductCopy, Region, TopicCategory,
};
use meridian_registry::secret::DeviceSecret;
use meridian_registry::store::{Entry, Expect, Op, StoreError};
use meridian_registry::{CreatedDevice, NewDevice, Registry, RegistryError, decode, encode, keys};

use crate::device_list::DeviceCsv;
use crate::error::ControlError;
use crate::listing::{self, Kind, Listing};
use crate::model::{ApiKey, AuditEntry, CodeAttempts, VerificationCode};

pub type Result<T, E = ControlError> = std::result::Result<T, E>;

pub(crate) const API_KEYS: &str = "api-keys/";
pub(crate) const CODES: &str = "codes/";
/// `code-attempts/{owner}/{attempter}`: a [`CodeAttempts`] record.
pub(crate) const CODE_ATTEMPTS: &str = "code-attempts/";
pub(crate) const AUDIT: &str = "audit/";

/// How long a cross-account verification code is valid (PROTOCOL §5).
pub const CODE_VALIDITY: Duration = Duration::from_secs(5 * 60);
/// Attempts one account may make at each live code of an account (its own or another's); the
/// last may succeed. Beyond it that account, and only that account, is locked out of the code.
pub const CODE_MAX_ATTEMPTS: u32 = 5;
/// Compare-and-swap rounds an attempt is given to be counted under contention.
const ATTEMPT_RETRIES: usize = 16;
/// Most rows a device CSV may hold (PROTOCOL §5 for distribution; the same bound for imports).
pub const MAX_CSV_ROWS: usize = 1_000;
/// Deepest nesting of arrays and objects a product's TSL model may have. Records wrap the TSL
/// (a product copy holds the product, which holds the TSL), and the store's JSON decoder stops
/// at 128 levels, so a TSL as deep as a request can carry would make its copies undecodable.
/// Half the decoder's limit leaves room for any wrapping; real TSL models nest about ten.
pub const MAX_TSL_DEPTH: usize = 64;

/// A new account, created by the operator.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    pub id: AccountId,
    pub name: String,
    pub kind: AccountKind,
    #[serde(default)]
    pub verified_entity: Option<String>,
}

/// A new instance and its endpoint. The operator provisions it for an account (`POST
/// /v1/operator/instances`); no API key reaches [`ControlPlane::create_instance`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInstance {
    pub id: InstanceId,
    pub region: RegionId,
    #[serde(default = "default_edition")]
    pub edition: Edition,
    pub endpoint: MqttEndpoint,
    /// Lifetime in days.
    #[serde(default = "default_lifetime_days")]
    pub lifetime_days: u64,
}

pub(crate) fn default_edition() -> Edition {
    Edition::Public
}

pub(crate) fn default_lifetime_days() -> u64 {
    365
}

/// A new product; its key is generated when absent.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    #[serde(default)]
    pub key: Option<ProductKey>,
    pub name: String,
    pub home_instance: InstanceId,
    #[serde(default)]
    pub topic_categories: Vec<TopicCategory>,
    #[serde(default)]
    pub tsl: serde_json::Value,
    #[serde(default)]
    pub parsing_script: Option<String>,
}

/// Fields of a product that may be edited; absent fields stay as they are.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    pub name: Option<String>,
    pub published: Option<bool>,
    pub topic_categories: Option<Vec<TopicCategory>>,
    pub tsl: Option<serde_json::Value>,
    pub parsing_script: Option<String>,
}

/// A device as the API shows it: no secret.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceView {
    #[serde(rename = "productKey")]
    pub product_key: ProductKey,
    #[serde(rename = "deviceName")]
    pub device_name: DeviceName,
    pub status: meridian_registry::model::DeviceStatus,
    pub placement: Placement,
    pub tags: std::collections::BTreeMap<String, String>,
    pub created_at: Timestamp,
}

impl From<&Device> for DeviceView {
    fn from(device: &Device) -> DeviceView {
        DeviceView {
            product_key: device.key.product_key.clone(),
            device_name: device.key.device_name.clone(),
            status: device.status,
            placement: device.placement.clone(),
            tags: device.tags.clone(),
            created_at: device.created_at,
        }
    }
}

/// The control plane over a registry. Cheap to clone.
#[derive(Clone)]
pub struct ControlPlane {
    pub(crate) registry: Registry,
    operator_token_hash: Arc<[u8; 32]>,
    /// Wakes the task executor when a task is submitted or retried.
    pub(crate) wake: Arc<Notify>,
    /// Devices a distribution task moves per atomic commit; see
    /// [`ControlPlane::with_task_batch`].
    pub(crate) task_batch: usize,
    /// See [`ControlPlane::with_task_limits`].
    pub(crate) task_limits: crate::distribution::TaskLimits,
    /// Each account's submission rate under `task_limits`; shared by clones, so every request
    /// of this process counts against one bucket per account.
    pub(crate) submission_rate: Arc<crate::distribution::SubmissionRate>,
    /// Set once the pending-task index is known complete, so the executor stops checking.
    pub(crate) task_index_built: Arc<std::sync::atomic::AtomicBool>,
}

impl ControlPlane {
    /// `operator_token` authorises account creation (the operator, not a tenant).
    pub fn new(registry: Registry, operator_token: &str) -> ControlPlane {
        let task_limits = crate::distribution::TaskLimits::default();
        let submission_rate = Arc::new(crate::distribution::SubmissionRate::new(
            &task_limits,
            registry.clock().clone(),
        ));
        ControlPlane {
            registry,
            operator_token_hash: Arc::new(sha256(operator_token.as_bytes())),
            wake: Arc::new(Notify::new()),
            task_batch: crate::distribution::TASK_BATCH,
            task_limits,
            submission_rate,
            task_index_built: Arc::default(),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.registry.clock().now()
    }

    /// Checks the operator token (constant time).
    pub fn authenticate_operator(&self, token: &str) -> Result<()> {
        if bool::from(sha256(token.as_bytes()).ct_eq(self.operator_token_hash.as_ref())) {
            Ok(())
        } else {
            Err(ControlError::Unauthenticated)
        }
    }

    /// Creates an account and its first API key, which is returned this once.
    pub async fn create_account(&self, new: NewAccount) -> Result<(Account, String)> {
        if new.name.trim().is_empty() || new.name.len() > 64 {
            return Err(ControlError::Invalid("account name must be 1-64 characters".into()));
        }
        if new.kind == AccountKind::Enterprise && new.verified_entity.is_none() {
            return Err(ControlError::Invalid(
                "an enterprise account needs a verified_entity".into(),
            ));
        }
        if self.account_by_name(&new.name).await?.is_some() {
            return Err(ControlError::Conflict { kind: "account name", id: new.name });
        }
        if let Some(entity) = &new.verified_entity {
            self.check_entity_capacity(entity).await?;
        }
        let account = Account {
            id: new.id,
            name: new.name,
            kind: new.kind,
            verified_entity: new.verified_entity,
            organisation: None,
            organisation_admin: false,
            created_at: self.now(),
        };
        // One batch: a crash cannot leave an account without its key or its audit entry.
        let (key, key_op) = self.api_key_op(&account.id)?;
        let audit = self.audit_op(&account.id, "account.created", account.id.as_str())?;
        let account = self.registry.create_account_with(account, vec![key_op, audit]).await?;
        Ok((account, key))
    }

    /// A new API key `{id}.{secret}` for `account`; only its hash is stored.
    pub async fn create_api_key(&self, account: &AccountId) -> Result<String> {
        let (key, op) = self.api_key_op(account)?;
        // The audit names the key by its public id, never its secret.
        let (id, _) = key.split_once('.').unwrap_or((key.as_str(), ""));
        let audit = self.audit_op(account, "api-key.created", id)?;
        self.registry.store().batch(vec![op, audit]).await?;
        Ok(key)
    }

    /// A new API key for `account` and the write that stores its hash.
    fn api_key_op(&self, account: &AccountId) -> Result<(String, Op)> {
        let id = random_token(12)?;
        let secret = random_token(32)?;
        let record = ApiKey {
            id: id.clone(),
            account: account.clone(),
            hash: hex::encode(sha256(secret.as_bytes())),
            created_at: self.now(),
        };
        let op = Op::put(format!("{API_KEYS}{id}"), encode(&record)?).expecting(Expect::Absent);
        Ok((format!("{id}.{secret}"), op))
    }

    /// The account an API key belongs to. Unknown keys and wrong secrets look the same.
    pub async fn authenticate(&self, api_key: &str) -> Result<AccountId> {
        let (id, secret) = api_key.split_once('.').ok_or(ControlError::Unauthenticated)?;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ControlError::Unauthenticated);
        }
        let offered = sha256(secret.as_bytes());
        let Some(entry) = self.registry.store().get(&format!("{API_KEYS}{id}")).await? else {
            return Err(ControlError::Unauthenticated);
        };
        let record: ApiKey = decode(&entry.key, &entry.value)?;
        let stored = hex::decode(&record.hash).map_err(|_| ControlError::Unauthenticated)?;
        if bool::from(offered.as_slice().ct_eq(stored.as_slice())) {
            Ok(record.account)
        } else {
            Err(ControlError::Unauthenticated)
        }
    }

    pub async fn account(&self, caller: &AccountId) -> Result<Account> {
        Ok(self.registry.account(caller).await?)
    }

    /// Resolves a destination account by ID or by name.
    pub async fn find_account(&self, id_or_name: &str) -> Result<Account> {
        if let Ok(id) = id_or_name.parse::<AccountId>()
            && let Ok(account) = self.registry.account(&id).await
        {
            return Ok(account);
        }
        self.account_by_name(id_or_name)
            .await?
            .ok_or_else(|| ControlError::NotFound { kind: "account", id: id_or_name.to_owned() })
    }

    async fn account_by_name(&self, name: &str) -> Result<Option<Account>> {
        let snapshot = self.registry.store().scan_prefix(keys::ACCOUNTS).await?;
        for entry in snapshot.entries {
            let account: Account = decode(&entry.key, &entry.value)?;
            if account.name == name {
                return Ok(Some(account));
            }
        }
        Ok(None)
    }

    pub async fn regions(&self) -> Result<Vec<Region>> {
        Ok(self.registry.regions().await?)
    }

    /// Instances the caller owns.
    pub async fn instances(&self, caller: &AccountId) -> Result<Vec<Instance>> {
        let all = self.registry.instances().await?;
        Ok(all.into_iter().filter(|instance| &instance.owner == caller).collect())
    }

    pub async fn instance(&self, caller: &AccountId, id: &InstanceId) -> Result<Instance> {
        let instance = self.registry.instance(id).await?;
        if &instance.owner != caller {
            return Err(not_found("instance", id.as_str()));
        }
        Ok(instance)
    }

    /// Usage of each of the caller's instances as its broker last reported it (PROTOCOL §5: the
    /// instance a device is connected to accounts for it). An instance no broker has reported
    /// on yet shows zeros, as a broker starting on it would.
    pub async fn usage(&self, caller: &AccountId) -> Result<Vec<InstanceUsage>> {
        let mut usage = Vec::new();
        for instance in self.instances(caller).await? {
            let record = match self.registry.store().get(&keys::usage(&instance.id)).await? {
                Some(entry) => decode(&entry.key, &entry.value)?,
                None => InstanceUsage::empty(instance.id),
            };
            usage.push(record);
        }
        Ok(usage)
    }

    pub async fn create_instance(&self, caller: &AccountId, new: NewInstance) -> Result<Instance> {
        let now = self.now();
        let instance = Instance {
            id: new.id,
            region: new.region,
            owner: caller.clone(),
            edition: new.edition,
            endpoint: new.endpoint,
            created_at: now,
            // Saturating: an absurd lifetime means "never expires", not an overflow panic.
            expires_at: now
                .after(Duration::from_secs(new.lifetime_days.max(1).saturating_mul(86_400))),
        };
        let audit = self.audit_op(caller, "instance.created", instance.id.as_str())?;
        Ok(self.registry.create_instance_with(instance, vec![audit]).await?)
    }

    pub async fn create_product(&self, caller: &AccountId, new: NewProduct) -> Result<Product> {
        self.instance(caller, &new.home_instance).await?;
        if new.name.trim().is_empty() || new.name.len() > 64 {
            return Err(ControlError::Invalid("product name must be 1-64 characters".into()));
        }
        let key = match new.key {
            Some(key) => key,
            None => {
                random_token(11)?.parse().map_err(|e| ControlError::Internal(format!("{e}")))?
            }
        };
        check_tsl(&new.tsl)?;
        let product = Product {
            key,
            name: new.name,
            owner: caller.clone(),
            home_instance: new.home_instance,
            published: false,
            topic_categories: new.topic_categories,
            tsl: new.tsl,
            parsing_script: new.parsing_script,
            created_at: self.now(),
        };
        let audit = self.audit_op(caller, "product.created", product.key.as_str())?;
        Ok(self.registry.create_product_with(product, vec![audit]).await?)
    }

    /// A product the caller owns.
    pub async fn product(&self, caller: &AccountId, key: &ProductKey) -> Result<Product> {
        let product =
            self.registry.product(key).await.map_err(|_| not_found("product", key.as_str()))?;
        if &product.owner != caller {
            return Err(not_found("product", key.as_str()));
        }
        Ok(product)
    }

    /// The caller's products; one whose record does not decode is reported, not fatal.
    pub async fn products(&self, caller: &AccountId) -> Result<Listing<Product>> {
        let snapshot = self.registry.store().scan_prefix(keys::PRODUCTS).await?;
        let mine = |product: &Product| &product.owner == caller;
        let kind = Kind {
            name: "product",
            prefix: keys::PRODUCTS,
            mine: &mine,
            owner: &listing::owner_field,
        };
        Ok(listing::decode_all(caller, snapshot.entries, kind))
    }

    pub async fn update_product(
        &self,
        caller: &AccountId,
        key: &ProductKey,
        patch: ProductPatch,
    ) -> Result<Product> {
        self.product(caller, key).await?;
        if patch.name.as_ref().is_some_and(|name| name.trim().is_empty() || name.len() > 64) {
            return Err(ControlError::Invalid("product name must be 1-64 characters".into()));
        }
        if let Some(tsl) = &patch.tsl {
            check_tsl(tsl)?;
        }
        // Read, check the owner and write back on that same revision: a product whose
        // instance was transferred meanwhile is not edited by its former owner.
        let entry = self
            .registry
            .store()
            .get(&keys::product(key))
            .await?
            .ok_or_else(|| not_found("product", key.as_str()))?;
        let mut product: Product = decode(&entry.key, &entry.value)?;
        if &product.owner != caller {
            return Err(not_found("product", key.as_str()));
        }
        if let Some(name) = patch.name {
            product.name = name;
        }
        if let Some(published) = patch.published {
            product.published = published;
        }
        if let Some(categories) = patch.topic_categories {
            product.topic_categories = categories;
        }
        if let Some(tsl) = patch.tsl {
            product.tsl = tsl;
        }
        if let Some(script) = patch.parsing_script {
            product.parsing_script = Some(script);
        }
        let ops = vec![
            Op::put(entry.key, encode(&product)?).expecting(Expect::Revision(entry.revision)),
            self.audit_op(caller, "product.updated", key.as_str())?,
        ];
        match self.registry.store().batch(ops).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(ControlError::Conflict {
                    kind: "product",
                    id: format!("{key} (modified concurrently; retry)"),
                });
            }
            Err(other) => return Err(other.into()),
        }
        Ok(product)
    }

    /// Read-only copies of other products distributed to the caller's instances (PROTOCOL §5).
    /// A copy whose record does not decode is reported, never fatal to the list.
    pub async fn product_copies(&self, caller: &AccountId) -> Result<Listing<ProductCopy>> {
        let snapshot = self.registry.store().scan_prefix(keys::PRODUCT_COPIES).await?;
        let mine = |copy: &ProductCopy| &copy.holder == caller;
        let kind = Kind {
            name: "product copy",
            prefix: keys::PRODUCT_COPIES,
            mine: &mine,
            owner: &listing::holder_field,
        };
        Ok(listing::decode_all(caller, snapshot.entries, kind))
    }

    /// Creates devices (all or none); their secrets are returned this once.
    pub async fn create_devices(
        &self,
        caller: &AccountId,
        product: &ProductKey,
        names: Vec<(DeviceName, Option<DeviceSecret>)>,
    ) -> Result<Vec<CreatedDevice>> {
        self.product(caller, product).await?;
        let audit =
            self.audit_op(caller, "devices.created", &format!("{product} x{}", names.len()))?;
        let new = names.into_iter().map(|(name, secret)| NewDevice { name, secret }).collect();
        Ok(self.registry.create_devices_for_with(caller, product, new, vec![audit]).await?)
    }

    /// Creates devices from a CSV with a `deviceName` column (and an optional `deviceSecret`).
    pub async fn import_devices_csv(
        &self,
        caller: &AccountId,
        product: &ProductKey,
        csv_text: &str,
    ) -> Result<Vec<CreatedDevice>> {
        let names = parse_devices_csv(csv_text)?;
        self.create_devices(caller, product, names).await
    }

    pub async fn device(&self, caller: &AccountId, key: &DeviceKey) -> Result<Device> {
        self.product(caller, &key.product_key)
            .await
            .map_err(|_| not_found("device", &key.to_string()))?;
        let device = self.registry.device(key).await?;
        if &device.owner != caller {
            return Err(not_found("device", &key.to_string()));
        }
        Ok(device)
    }

    pub async fn devices(&self, caller: &AccountId, product: &ProductKey) -> Result<Vec<Device>> {
        self.product(caller, product).await?;
        let devices = self.registry.devices(product).await?;
        Ok(devices.into_iter().filter(|device| &device.owner == caller).collect())
    }

    pub async fn set_device_enabled(
        &self,
        caller: &AccountId,
        key: &DeviceKey,
        enabled: bool,
    ) -> Result<Device> {
        self.device(caller, key).await?;
        self.set_own_device_enabled(caller, key, enabled, &key.to_string()).await
    }

    /// Deletes a device at its source. A distributed device must first be distributed back
    /// (PROTOCOL §5); its runtime data at other instances stays where it is.
    pub async fn delete_device(&self, caller: &AccountId, key: &DeviceKey) -> Result<()> {
        self.device(caller, key).await?;
        self.delete_own_device(caller, key, &key.to_string(), |device| {
            if device.placement != Placement::Home {
                return Err(ControlError::Rule(format!(
                    "device {key} is distributed; distribute it back to its source before \
                     deleting it"
                )));
            }
            Ok(())
        })
        .await
    }

    /// Disables or enables one of `caller`'s devices, with its audit entry (naming the device
    /// as `target`) in the same batch. The owner is checked inside the compare-and-swap that
    /// writes the status, so a device that changes owner meanwhile (a transfer accepted, an
    /// instance transfer confirmed) is never touched by its former owner: it is not found.
    pub(crate) async fn set_own_device_enabled(
        &self,
        caller: &AccountId,
        key: &DeviceKey,
        enabled: bool,
        target: &str,
    ) -> Result<Device> {
        let action = if enabled { "device.enabled" } else { "device.disabled" };
        let audit = self.audit_op(caller, action, target)?;
        let edit = |device: &mut Device| {
            if &device.owner != caller {
                return Err(RegistryError::NotFound { kind: "device", id: key.to_string() });
            }
            // The transitions of `Registry::set_device_enabled`.
            device.status = match (enabled, device.status) {
                (false, _) => DeviceStatus::Disabled,
                (true, DeviceStatus::Disabled) => DeviceStatus::Offline,
                (true, status) => status,
            };
            Ok(())
        };
        Ok(self.registry.update_device_with(key, edit, vec![audit]).await?)
    }

    /// Deletes one of `caller`'s devices if `check` allows, on the very revision whose owner
    /// was checked (see [`ControlPlane::set_own_device_enabled`]), with its audit entry naming
    /// the device as `target` in the same batch.
    pub(crate) async fn delete_own_device(
        &self,
        caller: &AccountId,
        key: &DeviceKey,
        target: &str,
        check: impl FnOnce(&Device) -> Result<()>,
    ) -> Result<()> {
        let store = self.registry.store();
        let entry = store.get(&keys::device(key)).await?;
        let Some(entry) = entry else { return Err(not_found("device", &key.to_string())) };
        let device: Device = decode(&entry.key, &entry.value)?;
        if &device.owner != caller {
            return Err(not_found("device", &key.to_string()));
        }
        check(&device)?;
        // Its kept subscriptions (PROTOCOL §2) go with it, in the same batch, and so does its
        // audit entry.
        let ops = vec![
            Op::delete(entry.key.clone()).expecting(Expect::Revision(entry.revision)),
            Op::delete(keys::subscriptions(key)),
            self.audit_op(caller, "device.deleted", target)?,
        ];
        match store.batch(ops).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict { .. }) => Err(ControlError::Conflict {
                kind: "device",
                id: format!("{key} (modified concurrently; retry)"),
            }),
            Err(other) => Err(other.into()),
        }
    }

    /// A cross-account verification code for the caller (the destination account), valid for
    /// five minutes and one task.
    pub async fn request_code(&self, caller: &AccountId) -> Result<String> {
        self.registry.account(caller).await?;
        let now = self.now();
        self.prune_codes(caller, now).await;
        let code = random_digits(6)?;
        let record = VerificationCode {
            account: caller.clone(),
            hash: hex::encode(sha256(code.as_bytes())),
            expires_at: now.after(CODE_VALIDITY),
        };
        let key = format!("{CODES}{caller}/{}", &record.hash[..16]);
        let ops =
            vec![Op::put(key, encode(&record)?), self.audit_op(caller, "code.requested", "")?];
        self.registry.store().batch(ops).await?;
        Ok(code)
    }

    /// Checks `code`, offered by `attempter`, against `owner`'s live codes. Returns the op that
    /// consumes the matched code, to be committed atomically with whatever the code authorises.
    ///
    /// Every attempt counts against each of `owner`'s live codes, so guessing cannot outlast
    /// the limit by spreading over codes; but it counts for `attempter` alone. An account that
    /// exhausts [`CODE_MAX_ATTEMPTS`] is locked out of those codes, while the account the codes
    /// were handed to still uses them: nobody can burn another account's codes by guessing.
    pub(crate) async fn check_code(
        &self,
        owner: &AccountId,
        attempter: &AccountId,
        code: &str,
    ) -> Result<Op> {
        let now = self.now();
        let snapshot = self.registry.store().scan_prefix(&format!("{CODES}{owner}/")).await?;
        let mut live = Vec::new();
        for entry in snapshot.entries {
            let record: VerificationCode = decode(&entry.key, &entry.value)?;
            if record.expires_at > now {
                live.push((entry, record));
            }
        }
        if live.is_empty() {
            return Err(invalid_code());
        }
        // Counted before comparing, so concurrent guesses cannot outrun the limit.
        let tries = self.count_attempt(owner, attempter, &live).await?;
        // Every live code is in `tries`; a code that somehow is not counts as locked out.
        let tries_at = |key: &str| tries.get(code_id(key)).copied().unwrap_or(u32::MAX);
        let offered = sha256(code.trim().as_bytes());
        for (entry, record) in &live {
            // A code this attempter is locked out of matches nothing, so a locked code cannot
            // serve as an oracle while another code still takes guesses.
            if tries_at(&entry.key) > CODE_MAX_ATTEMPTS {
                continue;
            }
            let stored = hex::decode(&record.hash).unwrap_or_default();
            if bool::from(offered.as_slice().ct_eq(stored.as_slice())) {
                return Ok(
                    Op::delete(entry.key.clone()).expecting(Expect::Revision(entry.revision))
                );
            }
        }
        if live.iter().all(|(entry, _)| tries_at(&entry.key) >= CODE_MAX_ATTEMPTS) {
            return Err(ControlError::TooManyAttempts(
                "too many attempts at this account's verification codes; ask it for a new code"
                    .into(),
            ));
        }
        Err(invalid_code())
    }

    /// Adds one attempt by `attempter` to each of `live` (codes of `owner`); returns the
    /// attempts per code id, this one included. A compare-and-swap loop: concurrent attempts
    /// are all counted.
    async fn count_attempt(
        &self,
        owner: &AccountId,
        attempter: &AccountId,
        live: &[(Entry, VerificationCode)],
    ) -> Result<BTreeMap<String, u32>> {
        let key = format!("{CODE_ATTEMPTS}{owner}/{attempter}");
        let store = self.registry.store();
        for _ in 0..ATTEMPT_RETRIES {
            let (before, expect) = match store.get(&key).await? {
                Some(entry) => (
                    decode::<CodeAttempts>(&entry.key, &entry.value)?,
                    Expect::Revision(entry.revision),
                ),
                None => (CodeAttempts::default(), Expect::Absent),
            };
            let mut after = CodeAttempts::default();
            for (entry, _) in live {
                let id = code_id(&entry.key);
                let tries = before.codes.get(id).copied().unwrap_or(0);
                // Capped: past the limit the count only means "locked out", so a locked-out
                // attempter's further tries leave the record as it is.
                after
                    .codes
                    .insert(id.to_owned(), tries.saturating_add(1).min(CODE_MAX_ATTEMPTS + 1));
            }
            if after == before {
                return Ok(after.codes);
            }
            match store.compare_and_swap(&key, expect, Some(encode(&after)?)).await {
                Ok(_) => return Ok(after.codes),
                Err(StoreError::Conflict { .. }) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(ControlError::Conflict {
            kind: "verification code attempt",
            id: format!("by {attempter} (too many at once; retry)"),
        })
    }

    /// Best effort, when `owner` asks for a new code: forgets its expired codes and the attempt
    /// records that name none of its live ones, so neither piles up. A record that does not
    /// decode is left for the operator to see.
    async fn prune_codes(&self, owner: &AccountId, now: Timestamp) {
        let store = self.registry.store();
        let mut ops = Vec::new();
        let mut live = Vec::new();
        if let Ok(codes) = store.scan_prefix(&format!("{CODES}{owner}/")).await {
            for entry in codes.entries {
                let Ok(code) = decode::<VerificationCode>(&entry.key, &entry.value) else {
                    continue;
                };
                if code.expires_at > now {
                    live.push(code_id(&entry.key).to_owned());
                } else {
                    ops.push(Op::delete(entry.key).expecting(Expect::Revision(entry.revision)));
                }
            }
        }
        if let Ok(attempts) = store.scan_prefix(&format!("{CODE_ATTEMPTS}{owner}/")).await {
            for entry in attempts.entries {
                let Ok(record) = decode::<CodeAttempts>(&entry.key, &entry.value) else {
                    continue;
                };
                if !record.codes.keys().any(|id| live.contains(id)) {
                    ops.push(Op::delete(entry.key).expecting(Expect::Revision(entry.revision)));
                }
            }
        }
        // One batch: a concurrent attempt makes it conflict, and the next request tries again.
        if !ops.is_empty()
            && let Err(error) = store.batch(ops).await
        {
            tracing::debug!(%error, "verification codes not pruned");
        }
    }

    /// The write that records `action` in `account`'s audit log. Every change commits its
    /// audit entries in its own batch, so a crash between the change and its record cannot
    /// lose the record (PROTOCOL §9), and a failed audit write fails the change with it.
    pub(crate) fn audit_op(&self, account: &AccountId, action: &str, target: &str) -> Result<Op> {
        let entry = AuditEntry {
            at: self.now(),
            account: account.clone(),
            action: action.into(),
            target: target.into(),
        };
        let key = format!("{AUDIT}{account}/{:020}-{}", entry.at.millis(), random_token(6)?);
        Ok(Op::put(key, encode(&entry)?).expecting(Expect::Absent))
    }

    /// The caller's audit log, oldest first.
    pub async fn audit_log(&self, caller: &AccountId) -> Result<Vec<AuditEntry>> {
        let snapshot = self.registry.store().scan_prefix(&format!("{AUDIT}{caller}/")).await?;
        snapshot.entries.iter().map(|entry| Ok(decode(&entry.key, &entry.value)?)).collect()
    }
}

/// The devices of an import CSV (a `deviceName` column and an optional `deviceSecret` column,
/// at most [`MAX_CSV_ROWS`] rows), validated. Pure, so the fuzz targets reach it directly.
pub fn parse_devices_csv(csv_text: &str) -> Result<Vec<(DeviceName, Option<DeviceSecret>)>> {
    let csv = DeviceCsv::open(csv_text)?;
    let name_column = csv
        .column("deviceName")
        .ok_or_else(|| ControlError::Invalid("CSV needs a deviceName column".into()))?;
    let secret_column = csv.column("deviceSecret");
    let mut names = Vec::new();
    for row in csv.rows() {
        let row = row?;
        let name: DeviceName = row.get(name_column).parse().map_err(|e| row.invalid(e))?;
        let secret = match secret_column.map(|c| row.get(c)).filter(|s| !s.is_empty()) {
            Some(secret) => Some(DeviceSecret::new(secret).map_err(|e| row.invalid(e))?),
            None => None,
        };
        names.push((name, secret));
    }
    if names.is_empty() {
        return Err(ControlError::Invalid("CSV holds no devices".into()));
    }
    Ok(names)
}

/// Refuses a TSL model nested deeper than [`MAX_TSL_DEPTH`].
fn check_tsl(tsl: &serde_json::Value) -> Result<()> {
    if tsl_too_deep(tsl) {
        return Err(ControlError::Invalid(format!(
            "tsl nests arrays and objects deeper than the limit of {MAX_TSL_DEPTH} levels"
        )));
    }
    Ok(())
}

/// Whether a TSL model nests deeper than [`MAX_TSL_DEPTH`].
pub(crate) fn tsl_too_deep(tsl: &serde_json::Value) -> bool {
    json_depth(tsl, MAX_TSL_DEPTH) > MAX_TSL_DEPTH
}

/// How deeply `value` nests arrays and objects (a scalar is 0, `[]` is 1), counting no further
/// than `limit + 1`. Iterative, so the check itself has no depth limit.
fn json_depth(value: &serde_json::Value, limit: usize) -> usize {
    use serde_json::Value;
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        let depth = depth + 1;
        deepest = deepest.max(depth);
        if deepest > limit {
            return deepest;
        }
        stack.extend(children.map(|child| (child, depth)));
    }
    deepest
}

fn invalid_code() -> ControlError {
    ControlError::Rule("verification code is invalid or expired".into())
}

/// A code's id: the last segment of its key `codes/{owner}/{id}`.
fn code_id(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

pub(crate) fn not_found(kind: &'static str, id: &str) -> ControlError {
    ControlError::NotFound { kind, id: id.to_owned() }
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A random token of ASCII letters and digits.
pub(crate) fn random_token(len: usize) -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes)
        .map_err(|e| ControlError::Internal(format!("random source: {e}")))?;
    Ok(bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect())
}

fn random_digits(len: usize) -> Result<String> {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes)
        .map_err(|e| ControlError::Internal(format!("random source: {e}")))?;
    Ok(bytes.iter().map(|b| char::from(b'0' + b % 10)).collect())
}
