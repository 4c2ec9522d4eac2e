//! Distribution tasks (PROTOCOL §5): submission with every rule checked up front, and the executor
//! that moves devices in batches.
//!
//! Progress is durable and exactly-once by construction: each batch commits the devices' new
//! placements *and* the task's advanced cursor and records in one atomic store batch, with
//! compare-and-swap on every record it read. A crash before the commit leaves nothing applied; a
//! crash after leaves the cursor past those devices. A restart (or a retry) resumes at the
//! cursor, so no device is moved twice by one task.
//!
//! Records:
//!
//! | key | what |
//! |---|---|
//! | `tasks/{id}` | the task, its device list and per-device records; kept once settled, for the owner to read |
//! | `pending-tasks/{owner}/{slot}` | one per unsettled task, naming it: all the executor reads to find work, so settled tasks cost it nothing |
//! | `task-index` | present once every unsettled task has its slot; the first executor pass on a store written before slots existed gives them out |
//!
//! Slots `0..` make the per-account cap on unsettled tasks ([`TaskLimits`]) a store
//! precondition: a submission (or the retry of a `Failed` task) creates the lowest free slot
//! with "absent" in the batch that stores the task, so two racing for the last slot cannot both
//! win. The batch that settles a task deletes its slot.

mod limits;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use meridian_registry::ids::{AccountId, DeviceKey, InstanceId, ProductKey};
use meridian_registry::model::{
    Device, DeviceStatus, Edition, Placement, PlacementCandidate, ProductCopy, Topology,
};
use meridian_registry::store::{Entry, Expect, Op, Revision, StoreError};
use meridian_registry::{decode, encode, keys};

use crate::device_list::{DeviceCsv, unique_names};
use crate::error::ControlError;
use crate::listing::{self, Kind, Listing};
use crate::model::{DeviceRecord, Policy, RecordResult, Task, TaskState};
use crate::plane::{ControlPlane, Result, not_found, random_token};

pub(crate) use limits::SubmissionRate;
pub use limits::{DEFAULT_MAX_ACTIVE_TASKS, TaskLimits};

pub(crate) const TASKS: &str = "tasks/";
/// `pending-tasks/{owner}/{slot}`: a [`PendingSlot`], one per unsettled task.
pub(crate) const PENDING_TASKS: &str = "pending-tasks/";
/// `owner-tasks/{owner}/{id}`: an [`OwnedTask`], one per task, so one account's list reads
/// its own tasks and no other account's.
pub(crate) const OWNER_TASKS: &str = "owner-tasks/";
/// Present once every unsettled task holds a slot and (from version 2) every task is in its
/// owner's index.
pub(crate) const TASK_INDEX: &str = "task-index";
/// The [`TASK_INDEX`] version this code builds.
const TASK_INDEX_VERSION: u32 = 2;
/// Ops a distribution commit writes per device: its record, and the guard that it is not
/// locked by a transfer.
const OPS_PER_DEVICE: usize = 2;
/// Ops a distribution commit writes besides its devices': the transfer guard, the task
/// record and its pending slot.
const COMMIT_OVERHEAD: usize = 3;
/// Compare-and-swap rounds a submission or retry is given to find a free slot under contention.
const SLOT_RETRIES: usize = 16;

/// Most devices one task may list (PROTOCOL §5).
pub const MAX_TASK_DEVICES: usize = 10_000;
/// Devices a task moves per atomic commit unless [`ControlPlane::with_task_batch`] says
/// otherwise. Every commit also rewrites the task record, which holds the whole device list and
/// every record so far (about 1.3 MB for 10,000 devices), so the fewer commits the faster: the
/// largest task moves in one, as one batch of routing-table changes (PROTOCOL §4).
pub const TASK_BATCH: usize = MAX_TASK_DEVICES;

/// What the caller asks for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    pub product: ProductKey,
    /// Device names of `product`; empty distributes the product alone (specified policy only).
    #[serde(default)]
    pub devices: Vec<String>,
    /// Alternatively, a CSV `productKey,deviceName` with a header, at most 1,000 rows.
    #[serde(default)]
    pub csv: Option<String>,
    pub policy: PolicyRequest,
    /// For cross-account tasks: the destination account (ID or name) and its code.
    #[serde(default)]
    pub cross_account: Option<CrossAccount>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PolicyRequest {
    /// `instance` may be omitted for cross-account tasks (the destination's default public
    /// instance is used).
    Specified {
        instance: Option<InstanceId>,
    },
    Nearest {
        instances: Vec<InstanceId>,
    },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossAccount {
    pub account: String,
    pub code: String,
}

/// The CSV template users download for device lists.
pub const CSV_TEMPLATE: &str = "productKey,deviceName\n";

/// The value of a `pending-tasks/{owner}/{slot}` key.
#[derive(Serialize, Deserialize)]
struct PendingSlot {
    task: String,
}

/// The value of a `owner-tasks/{owner}/{id}` key.
#[derive(Serialize, Deserialize)]
struct OwnedTask {
    task: String,
}

/// The value of the [`TASK_INDEX`] key.
#[derive(Serialize, Deserialize)]
struct IndexBuilt {
    version: u32,
    at: meridian_registry::clock::Timestamp,
}

impl ControlPlane {
    /// Sets how many devices a task moves per atomic commit (at least one; default
    /// [`TASK_BATCH`]). Smaller batches show progress in more steps and hold the store's write
    /// lock for less time each, but a task takes longer, since each commit rewrites the task
    /// record.
    pub fn with_task_batch(mut self, devices: usize) -> ControlPlane {
        self.task_batch = devices.max(1);
        self
    }

    /// Sets the limits on each account's tasks (default [`TaskLimits::default`]).
    pub fn with_task_limits(mut self, limits: TaskLimits) -> ControlPlane {
        let limits =
            TaskLimits { max_active_per_account: limits.max_active_per_account.max(1), ..limits };
        self.submission_rate =
            std::sync::Arc::new(SubmissionRate::new(&limits, self.registry.clock().clone()));
        self.task_limits = limits;
        self
    }

    /// Checks a task request against every PROTOCOL §5 rule and stores it as `Initializing`; the
    /// executor takes it from there. Nothing is stored when a rule fails.
    pub async fn submit_task(&self, caller: &AccountId, request: TaskRequest) -> Result<Task> {
        // Counted first, refused or not: checking a request is work too.
        if let Err(retry_after) = self.submission_rate.check(caller) {
            limited("task_submission_rate");
            return Err(ControlError::RateLimited { what: "task submissions", retry_after });
        }
        let product = self.product(caller, &request.product).await?;
        // A product stored before TSL depth was checked: its copies would not decode.
        if crate::plane::tsl_too_deep(&product.tsl) {
            return Err(ControlError::Rule(format!(
                "product {}'s TSL nests deeper than the limit of {} levels, so its copies could \
                 not be read; patch its tsl before distributing it",
                product.key,
                crate::plane::MAX_TSL_DEPTH
            )));
        }
        let devices = task_devices(&request)?;
        if devices.len() > MAX_TASK_DEVICES {
            return Err(ControlError::Invalid(format!(
                "a task distributes at most {MAX_TASK_DEVICES} devices, got {}",
                devices.len()
            )));
        }

        let (policy, destination_account, consume_code) =
            match (&request.policy, &request.cross_account) {
                (PolicyRequest::Nearest { .. }, Some(_)) => {
                    return Err(ControlError::Rule(
                        "cross-account distribution cannot use nearest access".into(),
                    ));
                }
                (PolicyRequest::Nearest { instances }, None) => {
                    if devices.is_empty() {
                        return Err(ControlError::Rule(
                            "nearest access cannot distribute a product alone".into(),
                        ));
                    }
                    if instances.is_empty() {
                        return Err(ControlError::Invalid(
                            "nearest access needs at least one instance".into(),
                        ));
                    }
                    let mut candidates = Vec::with_capacity(instances.len());
                    for id in instances {
                        let instance = self.instance(caller, id).await?;
                        if candidates
                            .iter()
                            .any(|c: &PlacementCandidate| c.region == instance.region)
                        {
                            return Err(ControlError::Rule(format!(
                                "nearest access takes one instance per region; {} is named twice",
                                instance.region
                            )));
                        }
                        candidates.push(PlacementCandidate {
                            region: instance.region,
                            instance: instance.id,
                        });
                    }
                    (Policy::Nearest { candidates }, None, None)
                }
                (PolicyRequest::Specified { instance }, None) => {
                    let id = instance.as_ref().ok_or_else(|| {
                        ControlError::Invalid("specified region needs an instance".into())
                    })?;
                    let instance = self.instance(caller, id).await?;
                    (Policy::Specified { instance: instance.id }, None, None)
                }
                (PolicyRequest::Specified { instance }, Some(cross)) => {
                    let destination = self.find_account(&cross.account).await?;
                    if &destination.id == caller {
                        return Err(ControlError::Rule(
                            "cross-account destination is the caller's own account".into(),
                        ));
                    }
                    // The code first: only a caller the destination handed a code to may
                    // learn which instances it owns, or whether it has a public one.
                    let consume = self.check_code(&destination.id, caller, &cross.code).await?;
                    let instance = match instance {
                        Some(id) => {
                            let instance = self
                                .registry
                                .instance(id)
                                .await
                                .map_err(|_| not_found("instance", id.as_str()))?;
                            if instance.owner != destination.id {
                                return Err(not_found("instance", id.as_str()));
                            }
                            instance
                        }
                        None => self.default_public_instance(&destination.id).await?,
                    };
                    (
                        Policy::Specified { instance: instance.id },
                        Some(destination.id),
                        Some(consume),
                    )
                }
            };
        if self.product_was_transferred(&product.key).await? {
            return Err(ControlError::Rule(format!(
                "a device of product {} was transferred or authorized to another account; its devices cannot be distributed",
                product.key
            )));
        }
        let locked = self.pending_transfer_locks(&product.key).await?;
        if let Some((device, transfer)) =
            devices.iter().find_map(|d| locked.get(&d.device_name).map(|t| (d, t)))
        {
            return Err(ControlError::Rule(format!(
                "device {device} is in pending transfer {transfer}; transfer and distribution exclude each other"
            )));
        }

        let now = self.now();
        let mut task = Task {
            id: format!("dt-{}", random_token(16)?),
            owner: caller.clone(),
            product: product.key,
            policy,
            destination_account,
            devices,
            state: TaskState::Initializing,
            cursor: 0,
            records: Vec::new(),
            failure: None,
            attempts: 0,
            slot: None,
            created_at: now,
            updated_at: now,
        };
        let audit = self.audit_op(caller, "task.started", &task.id)?;
        for _ in 0..SLOT_RETRIES {
            let slot = self.free_slot(caller, true).await?;
            task.slot = Some(slot);
            let mut ops =
                vec![Op::put(task_key(&task.id), encode(&task)?).expecting(Expect::Absent)];
            ops.push(owner_op(caller, &task.id)?);
            ops.push(slot_op(&task, slot)?);
            ops.extend(consume_code.clone());
            ops.push(audit.clone());
            match self.registry.store().batch(ops).await {
                Ok(_) => {
                    self.wake.notify_one();
                    return Ok(task);
                }
                // Another submission of this account took the slot: look again.
                Err(StoreError::Conflict { key, .. }) if key == pending_key(caller, slot) => {}
                Err(StoreError::Conflict { .. }) => {
                    return Err(ControlError::Rule(
                        "verification code is invalid or expired".into(),
                    ));
                }
                Err(other) => return Err(other.into()),
            }
        }
        Err(contended(caller))
    }

    pub async fn task(&self, caller: &AccountId, id: &str) -> Result<Task> {
        let (task, _) = self.load_own_task(caller, id).await?;
        Ok(task)
    }

    /// The caller's tasks; one whose record does not decode is listed as broken, not fatal.
    ///
    /// Reads the caller's own tasks through its owner index; only a store whose index is not
    /// built yet (the executor builds it on its first pass) is scanned whole.
    pub async fn tasks(&self, caller: &AccountId) -> Result<Listing<Task>> {
        let store = self.registry.store();
        let entries = if self.owner_index_built().await? {
            let index = store.scan_prefix(&format!("{OWNER_TASKS}{caller}/")).await?;
            let keys: Vec<String> = index
                .entries
                .iter()
                .filter_map(|entry| entry.key.rsplit('/').next().map(task_key))
                .collect();
            store.get_many(&keys).await?.into_iter().flatten().collect()
        } else {
            store.scan_prefix(TASKS).await?.entries
        };
        let mine = |task: &Task| &task.owner == caller;
        let kind = Kind { name: "task", prefix: TASKS, mine: &mine, owner: &listing::owner_field };
        Ok(listing::decode_all(caller, entries, kind))
    }

    /// Whether every task is in its owner's index ([`TASK_INDEX`] at version 2 or later).
    async fn owner_index_built(&self) -> Result<bool> {
        if self.task_index_built.load(Ordering::Acquire) {
            return Ok(true);
        }
        let Some(entry) = self.registry.store().get(TASK_INDEX).await? else {
            return Ok(false);
        };
        Ok(decode::<IndexBuilt>(&entry.key, &entry.value)
            .is_ok_and(|built| built.version >= TASK_INDEX_VERSION))
    }

    /// Retries a task stuck in `Distributing` or `Failed`: it resumes at its cursor, so devices
    /// already handled are not handled again. A task cannot be cancelled. A `Failed` task
    /// becomes active again, so it needs a free place under the account's cap.
    pub async fn retry_task(&self, caller: &AccountId, id: &str) -> Result<Task> {
        for _ in 0..SLOT_RETRIES {
            let (mut task, revision) = self.load_own_task(caller, id).await?;
            match task.state {
                TaskState::Failed | TaskState::Distributing => {}
                other => {
                    return Err(ControlError::Rule(format!(
                        "a task in state {other:?} cannot be retried"
                    )));
                }
            }
            let was_settled = task.state.settled();
            if task.cursor < task.devices.len() || task.devices.is_empty() {
                task.state = if task.cursor == 0 {
                    TaskState::Initializing
                } else {
                    TaskState::Distributing
                };
            }
            task.failure = None;
            task.attempts += 1;
            task.updated_at = self.now();
            let mut also = vec![self.audit_op(caller, "task.retried", id)?];
            let mut new_slot = None;
            if !task.state.settled() && task.slot.is_none() {
                // A task still Distributing is active already (one stored before slots
                // existed): it gets a slot whatever the cap.
                let slot = self.free_slot(caller, was_settled).await?;
                task.slot = Some(slot);
                also.push(slot_op(&task, slot)?);
                new_slot = Some(pending_key(caller, slot));
            }
            let mut ops = task_writes(&mut task, revision)?;
            ops.extend(also);
            match self.registry.store().batch(ops).await {
                Ok(_) => {
                    self.wake.notify_one();
                    return Ok(task);
                }
                Err(StoreError::Conflict { key, .. }) if Some(&key) == new_slot.as_ref() => {}
                Err(StoreError::Conflict { key, .. }) => {
                    return Err(ControlError::Conflict { kind: "record", id: key });
                }
                Err(other) => return Err(other.into()),
            }
        }
        Err(contended(caller))
    }

    /// The lowest slot number free among `owner`'s pending tasks; with `capped`, refused when
    /// the owner already holds as many as [`TaskLimits::max_active_per_account`]. Below the
    /// cap a free number below it exists, since fewer slots than that are taken.
    async fn free_slot(&self, owner: &AccountId, capped: bool) -> Result<u32> {
        let taken = self.registry.store().scan_prefix(&pending_prefix(owner)).await?.entries;
        let limit = self.task_limits.max_active_per_account;
        if capped && taken.len() >= limit as usize {
            limited("active_tasks");
            return Err(ControlError::TooManyActiveTasks { limit });
        }
        let used: BTreeSet<u32> =
            taken.iter().filter_map(|entry| slot_number(&entry.key)).collect();
        Ok((0..=u32::MAX).find(|n| !used.contains(n)).unwrap_or(u32::MAX))
    }

    /// The per-device record as CSV: `productKey,deviceName,result,reason`.
    pub fn records_csv(task: &Task) -> String {
        let mut writer = csv::Writer::from_writer(Vec::new());
        // Writing to a Vec cannot fail.
        let _ = writer.write_record(["productKey", "deviceName", "result", "reason"]);
        for record in &task.records {
            let result = match record.result {
                RecordResult::Succeeded => "succeeded",
                RecordResult::Failed => "failed",
            };
            let _ = writer.write_record([
                record.product_key.as_str(),
                &record.device_name,
                result,
                &record.reason,
            ]);
        }
        String::from_utf8(writer.into_inner().unwrap_or_default()).unwrap_or_default()
    }

    /// Runs tasks until `shutdown` resolves: every unsettled task found at start (a restart
    /// resumes them), then each newly submitted or retried one.
    pub async fn run_executor(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            // Register for wake-ups before scanning, so a submission during the scan is not lost.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Err(error) = self.run_pending().await {
                tracing::warn!(%error, "task executor pass failed; retrying on the next wake-up");
            }
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                () = &mut shutdown => return,
            }
        }
    }

    /// Drives every unsettled task to a settled state. Reads the pending index only, never
    /// the settled tasks; a task whose record does not decode is reported and skipped, and
    /// the others go on.
    pub async fn run_pending(&self) -> Result<()> {
        // Tasks that already hold slots run meanwhile; the rest wait for the next pass.
        if let Err(error) = self.build_task_index().await {
            tracing::warn!(%error, "pending distribution tasks not indexed yet");
        }
        let snapshot = self.registry.store().scan_prefix(PENDING_TASKS).await?;
        for entry in snapshot.entries {
            let id = match serde_json::from_slice::<PendingSlot>(&entry.value) {
                Ok(slot) => slot.task,
                Err(error) => {
                    listing::report("pending task", &entry.key, &error);
                    continue;
                }
            };
            // One broken task must not hold up the others; it stays unsettled (retryable) and
            // is tried again on the next pass.
            match self.drive(&id).await {
                // Settled, so its slot is normally gone with the batch that settled it. One left
                // behind (its task deleted, or settled by a version that knew no slots) goes
                // now; the precondition leaves a slot taken again meanwhile alone.
                Ok(_) | Err(ControlError::NotFound { kind: "task", .. }) => {
                    self.drop_slot(&entry).await;
                }
                // Reported where it was read.
                Err(ControlError::Unreadable { .. }) => {}
                Err(error) => {
                    tracing::warn!(task = %id, %error, "distribution task step failed");
                }
            }
        }
        Ok(())
    }

    async fn drop_slot(&self, entry: &Entry) {
        let op = Op::delete(entry.key.clone()).expecting(Expect::Revision(entry.revision));
        if let Err(error) = self.registry.store().batch(vec![op]).await {
            tracing::debug!(key = entry.key, %error, "stale task slot not dropped");
        }
    }

    /// Gives a slot to every unsettled task stored before slots existed, then marks the index
    /// complete; a no-op once marked. One batch, expecting every task as read, so a task
    /// changing meanwhile makes it start over rather than index a stale state.
    async fn build_task_index(&self) -> Result<()> {
        if self.task_index_built.load(Ordering::Acquire) {
            return Ok(());
        }
        let store = self.registry.store();
        for _ in 0..SLOT_RETRIES {
            let marker = store.get(TASK_INDEX).await?;
            let marker_expect = match &marker {
                Some(entry) => {
                    let built = decode::<IndexBuilt>(&entry.key, &entry.value).ok();
                    if built.is_some_and(|built| built.version >= TASK_INDEX_VERSION) {
                        self.task_index_built.store(true, Ordering::Release);
                        return Ok(());
                    }
                    Expect::Revision(entry.revision)
                }
                None => Expect::Absent,
            };
            let tasks = store.scan_prefix(TASKS).await?;
            let pending = store.scan_prefix(PENDING_TASKS).await?;
            let mut used: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
            for entry in &pending.entries {
                let Some((owner, _)) = entry.key[PENDING_TASKS.len()..].split_once('/') else {
                    continue;
                };
                used.entry(owner.to_owned()).or_default().extend(slot_number(&entry.key));
            }
            let mut ops = Vec::new();
            // Every task in its owner's index, a broken one too when its owner can be read (it
            // is listed to its owner as broken). Putting an entry again is harmless.
            for entry in &tasks.entries {
                let id = entry.key.strip_prefix(TASKS).unwrap_or(&entry.key);
                if let Some(owner) = listing::owner_field(&entry.value) {
                    ops.push(owner_op(&owner, id)?);
                }
            }
            let owned = ops.len();
            for entry in tasks.entries {
                let mut task = match serde_json::from_slice::<Task>(&entry.value) {
                    Ok(task) => task,
                    Err(error) => {
                        listing::report("task", &entry.key, &error);
                        continue;
                    }
                };
                if task.state.settled() || task.slot.is_some() {
                    continue;
                }
                let taken = used.entry(task.owner.to_string()).or_default();
                let slot = (0..=u32::MAX).find(|n| !taken.contains(n)).unwrap_or(u32::MAX);
                taken.insert(slot);
                task.slot = Some(slot);
                ops.push(
                    Op::put(entry.key, encode(&task)?).expecting(Expect::Revision(entry.revision)),
                );
                ops.push(slot_op(&task, slot)?);
            }
            let indexed = (ops.len() - owned) / 2;
            let built = IndexBuilt { version: TASK_INDEX_VERSION, at: self.now() };
            ops.push(Op::put(TASK_INDEX, encode(&built)?).expecting(marker_expect));
            match store.batch(ops).await {
                Ok(_) => {
                    tracing::info!(tasks = indexed, "pending distribution tasks indexed");
                    self.task_index_built.store(true, Ordering::Release);
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(ControlError::Conflict {
            kind: "task index",
            id: "(tasks changed during every attempt to build it; retrying on the next pass)"
                .into(),
        })
    }

    /// Steps one task until it settles.
    pub async fn drive(&self, id: &str) -> Result<Task> {
        loop {
            if let Some(task) = self.step_once(id).await? {
                return Ok(task);
            }
        }
    }

    /// One durable step of a task; returns it once settled. A step that lost a race with
    /// another writer (a device edited meanwhile) is simply redone from fresh reads. A task
    /// whose product disappeared fails with the reason recorded.
    pub async fn step_once(&self, id: &str) -> Result<Option<Task>> {
        let (task, revision) = self.load_task(id).await?;
        match self.step(task, revision).await {
            Ok(settled) => Ok(settled),
            Err(ControlError::Conflict { .. }) => Ok(None),
            Err(ControlError::NotFound { kind: "product", id: product }) => {
                let (mut task, revision) = self.load_task(id).await?;
                task.state = TaskState::Failed;
                task.failure = Some(format!("product {product} no longer exists"));
                task.updated_at = self.now();
                self.commit(task_writes(&mut task, revision)?).await?;
                Ok(Some(task))
            }
            Err(error) => Err(error),
        }
    }

    /// One durable step. Returns the task once it is settled.
    async fn step(&self, mut task: Task, revision: Revision) -> Result<Option<Task>> {
        match task.state {
            TaskState::Distributed | TaskState::Failed => Ok(Some(task)),
            TaskState::Initializing => {
                // Copy the product, read-only, to every destination (PROTOCOL §5); a snapshot, so
                // later edits at the source do not propagate.
                let product = self.registry.product(&task.product).await?;
                // The product changed owner since submission (its instance was transferred):
                // copying it now would hand the new owner's product to the task's account.
                if product.owner != task.owner {
                    task.state = TaskState::Failed;
                    task.failure =
                        Some(format!("product {} no longer belongs to this account", task.product));
                    task.updated_at = self.now();
                    self.commit(task_writes(&mut task, revision)?).await?;
                    return Ok(Some(task));
                }
                let holder = task.destination_account.clone().unwrap_or_else(|| task.owner.clone());
                let mut ops = Vec::new();
                for instance in destinations(&task.policy) {
                    if instance == product.home_instance {
                        continue;
                    }
                    let copy = ProductCopy {
                        instance: instance.clone(),
                        holder: holder.clone(),
                        product: product.clone(),
                        copied_at: self.now(),
                    };
                    ops.push(Op::put(keys::product_copy(&instance, &product.key), encode(&copy)?));
                }
                task.state = if task.devices.is_empty() {
                    TaskState::Distributed
                } else {
                    TaskState::Distributing
                };
                task.updated_at = self.now();
                ops.extend(task_writes(&mut task, revision)?);
                self.commit(ops).await?;
                Ok(task.state.settled().then_some(task))
            }
            TaskState::Distributing => {
                let home = self.registry.product(&task.product).await?.home_instance;
                // PROTOCOL §5: once a device of the product is transferred, no device of it is
                // distributed, even by a task submitted before. The guard makes a transfer
                // accepted meanwhile conflict with this batch, which is then redone.
                let transferred = self.product_was_transferred(&task.product).await?;
                // Two ops per device, plus the transfer guard and the task's own writes, must
                // fit in one atomic batch of the store (1,000 ops on JetStream).
                let room = self.registry.store().max_batch().saturating_sub(COMMIT_OVERHEAD);
                let per_commit = self.task_batch.min(room / OPS_PER_DEVICE).max(1);
                let end = (task.cursor + per_commit).min(task.devices.len());
                let batch = &task.devices[task.cursor..end];
                let mut ops = Vec::with_capacity(2 * batch.len() + 2);
                if transferred {
                    let reason = "a device of the product was transferred to another account";
                    task.records
                        .extend(batch.iter().map(|key| record(key, RecordResult::Failed, reason)));
                } else {
                    let marker = crate::transfer::transferred_marker(&task.product);
                    ops.push(Op::delete(marker).expecting(Expect::Absent));
                    let found = self.read_batch(batch).await?;
                    for (key, (device, locked)) in batch.iter().zip(found) {
                        let (record, op) = move_device(&task, key, &home, device, locked)?;
                        ops.extend(op);
                        task.records.push(record);
                    }
                }
                task.cursor = end;
                if task.cursor == task.devices.len() {
                    task.state = TaskState::Distributed;
                }
                task.updated_at = self.now();
                ops.extend(task_writes(&mut task, revision)?);
                self.commit(ops).await?;
                Ok(task.state.settled().then_some(task))
            }
        }
    }

    /// The batch's device records, each with whether the device is in a pending transfer, from
    /// one consistent read: one store round-trip per batch, not two per device.
    async fn read_batch(&self, batch: &[DeviceKey]) -> Result<Vec<(Option<Entry>, bool)>> {
        let mut keys: Vec<String> = batch.iter().map(keys::device).collect();
        keys.extend(batch.iter().map(crate::transfer::lock_key));
        let mut devices = self.registry.store().get_many(&keys).await?;
        let locks = devices.split_off(batch.len());
        Ok(devices.into_iter().zip(locks.iter().map(Option::is_some)).collect())
    }

    async fn commit(&self, ops: Vec<Op>) -> Result<()> {
        match self.registry.store().batch(ops).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict { key, .. }) => {
                Err(ControlError::Conflict { kind: "record", id: key })
            }
            Err(other) => Err(other.into()),
        }
    }

    /// A task, whoever owns it. One that does not decode is reported (log and metric) and
    /// answered as [`ControlError::Unreadable`].
    async fn load_task(&self, id: &str) -> Result<(Task, Revision)> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(not_found("task", id));
        }
        let entry =
            self.registry.store().get(&task_key(id)).await?.ok_or_else(|| not_found("task", id))?;
        match serde_json::from_slice(&entry.value) {
            Ok(task) => Ok((task, entry.revision)),
            Err(error) => {
                listing::report("task", &entry.key, &error);
                let owner = listing::owner_field(&entry.value);
                Err(ControlError::Unreadable { kind: "task", id: id.to_owned(), owner })
            }
        }
    }

    /// One of `caller`'s tasks: another account's is not found, readable or not.
    async fn load_own_task(&self, caller: &AccountId, id: &str) -> Result<(Task, Revision)> {
        match self.load_task(id).await {
            Ok((task, _)) if &task.owner != caller => Err(not_found("task", id)),
            Err(ControlError::Unreadable { owner, .. }) if owner.as_ref() != Some(caller) => {
                Err(not_found("task", id))
            }
            other => other,
        }
    }

    /// The destination account's default public instance: its oldest public instance.
    async fn default_public_instance(
        &self,
        account: &AccountId,
    ) -> Result<meridian_registry::model::Instance> {
        let mut instances: Vec<_> = self
            .registry
            .instances()
            .await?
            .into_iter()
            .filter(|i| &i.owner == account && i.edition == Edition::Public)
            .collect();
        instances.sort_by_key(|i| i.created_at);
        instances.into_iter().next().ok_or_else(|| {
            ControlError::Rule(
                "the destination account has no public instance; name an instance".into(),
            )
        })
    }

    /// Whether any device of the product was transferred or authorized to another account
    /// (PROTOCOL §5): then none of its devices may be distributed.
    async fn product_was_transferred(&self, product: &ProductKey) -> Result<bool> {
        let marker = crate::transfer::transferred_marker(product);
        Ok(self.registry.store().get(&marker).await?.is_some())
    }
}

/// The writes that move one device, or why it cannot move, from its record as read (`None`
/// when absent) and whether it is in a pending transfer.
fn move_device(
    task: &Task,
    key: &DeviceKey,
    home: &InstanceId,
    entry: Option<Entry>,
    locked: bool,
) -> Result<(DeviceRecord, Vec<Op>)> {
    let Some(entry) = entry else {
        return Ok((record(key, RecordResult::Failed, "device does not exist"), Vec::new()));
    };
    let mut device: Device = decode(&entry.key, &entry.value)?;
    if device.owner != task.owner {
        return Ok((record(key, RecordResult::Failed, "device does not exist"), Vec::new()));
    }
    if locked {
        let reason = "device is in a pending transfer";
        return Ok((record(key, RecordResult::Failed, reason), Vec::new()));
    }
    device.placement = match &task.policy {
        Policy::Specified { instance } if instance == home => Placement::Home,
        Policy::Specified { instance } => Placement::Specified { instance: instance.clone() },
        Policy::Nearest { candidates } => Placement::Nearest { candidates: candidates.clone() },
    };
    // What does not move (PROTOCOL §5): tags, groups and topology are cleared; runtime data stays
    // keyed by (device, source instance) and is untouched here.
    device.tags.clear();
    device.groups.clear();
    device.topology = Topology::default();
    if device.status != DeviceStatus::Disabled {
        device.status = DeviceStatus::Inactive;
    }
    let op = Op::put(entry.key, encode(&device)?).expecting(Expect::Revision(entry.revision));
    let guard = crate::transfer::transfer_guard(key);
    Ok((record(key, RecordResult::Succeeded, ""), vec![op, guard]))
}

fn record(key: &DeviceKey, result: RecordResult, reason: &str) -> DeviceRecord {
    DeviceRecord {
        product_key: key.product_key.clone(),
        device_name: key.device_name.to_string(),
        result,
        reason: reason.to_owned(),
    }
}

fn task_key(id: &str) -> String {
    format!("{TASKS}{id}")
}

/// Puts task `id` in `owner`'s index.
fn owner_op(owner: &AccountId, id: &str) -> Result<Op> {
    let value = encode(&OwnedTask { task: id.to_owned() })?;
    Ok(Op::put(format!("{OWNER_TASKS}{owner}/{id}"), value))
}

fn pending_prefix(owner: &AccountId) -> String {
    format!("{PENDING_TASKS}{owner}/")
}

fn pending_key(owner: &AccountId, slot: u32) -> String {
    format!("{PENDING_TASKS}{owner}/{slot}")
}

/// The slot number a `pending-tasks/{owner}/{slot}` key ends in.
fn slot_number(key: &str) -> Option<u32> {
    key.rsplit('/').next()?.parse().ok()
}

/// Takes `slot` for `task`: it must be free.
fn slot_op(task: &Task, slot: u32) -> Result<Op> {
    let value = encode(&PendingSlot { task: task.id.clone() })?;
    Ok(Op::put(pending_key(&task.owner, slot), value).expecting(Expect::Absent))
}

/// The writes that store `task` over `revision`. A task that settles gives up its slot in the
/// same batch, so the index never names a settled task and never loses an unsettled one.
fn task_writes(task: &mut Task, revision: Revision) -> Result<Vec<Op>> {
    let mut ops = Vec::with_capacity(2);
    if task.state.settled()
        && let Some(slot) = task.slot.take()
    {
        ops.push(Op::delete(pending_key(&task.owner, slot)));
    }
    ops.push(Op::put(task_key(&task.id), encode(task)?).expecting(Expect::Revision(revision)));
    Ok(ops)
}

/// Counts a request refused by a per-account limit; the label is fixed, never the account.
fn limited(limit: &'static str) {
    metrics::counter!("meridian_control_limited_total", "limit" => limit).increment(1);
}

fn contended(caller: &AccountId) -> ControlError {
    ControlError::Conflict {
        kind: "distribution task",
        id: format!("of {caller} (too many submissions at once; retry)"),
    }
}

fn destinations(policy: &Policy) -> Vec<InstanceId> {
    match policy {
        Policy::Specified { instance } => vec![instance.clone()],
        Policy::Nearest { candidates } => candidates.iter().map(|c| c.instance.clone()).collect(),
    }
}

/// The task's device list from names or CSV, validated, without duplicates. Public (hidden)
/// for the fuzz targets.
#[doc(hidden)]
pub fn task_devices(request: &TaskRequest) -> Result<Vec<DeviceKey>> {
    let mut names: Vec<String> = request.devices.clone();
    if let Some(csv_text) = &request.csv {
        if !names.is_empty() {
            return Err(ControlError::Invalid("give devices as a list or as CSV, not both".into()));
        }
        for row in DeviceCsv::open_list(csv_text)?.rows() {
            names.push(row?.device_name_of(&request.product, "task")?);
        }
    }
    let devices = unique_names(names)?.into_iter();
    Ok(devices
        .map(|device_name| DeviceKey { product_key: request.product.clone(), device_name })
        .collect())
}
