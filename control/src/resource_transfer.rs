//! Instance (resource) transfer orders (PROTOCOL §7): whole instances change owner, with their
//! products and those products' devices, through orders the destination confirms within 24
//! hours. Initiation, confirmation, cancellation (by the source) and rejection (by the
//! destination) all work in batches, each order with its own result.
//!
//! Initiation needs a fresh verification code of the *source* account (`POST
//! /v1/verification-codes`), standing in for the seed's identity check: whoever initiates must
//! hold the account's current credentials, not merely an old API key's copy of a request.
//!
//! Records:
//!
//! | key | what |
//! |---|---|
//! | `instance-transfers/{id}` | the order and its state |
//! | `instance-transfer-locks/{instance}` | the order pending on an instance: at most one, and configuration changes (renewal) refuse while it is live |
//! | `enterprise-bindings/{account}` | the one enterprise account an individual account transferred instances to |
//!
//! Time is the registry's injected clock: an order still `Pending` in the store past its
//! `expires_at` *is* expired (every read shows it so, and it can no longer be confirmed), so no
//! sweeper is needed and tests move the clock instead of waiting.
//!
//! Confirmation changes owners only, in one atomic batch per order: the instance, its
//! products and their devices that the source owned. Endpoints, expiry dates, placements and
//! connected devices are untouched (devices keep their certificates and connections).
//!
//! Account-kind rules: individual → individual; individual → enterprise, but only ever one
//! enterprise account per individual account (bound when the first such order is confirmed;
//! a pending order to another enterprise account blocks as well); enterprise → enterprise only
//! with the same verified entity, which verifies at most 10 accounts (checked when accounts are
//! created); enterprise → individual is refused.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use meridian_registry::clock::Timestamp;
use meridian_registry::ids::{AccountId, InstanceId, OrganisationId};
use meridian_registry::model::{Account, AccountKind, Device, Instance, Product};
use meridian_registry::store::{Expect, Op, Revision, StoreError};
use meridian_registry::{decode, encode, keys};

use crate::error::ControlError;
use crate::plane::{ControlPlane, Result, not_found, random_token};

pub(crate) const INSTANCE_TRANSFERS: &str = "instance-transfers/";
pub(crate) const INSTANCE_TRANSFER_LOCKS: &str = "instance-transfer-locks/";
pub(crate) const ENTERPRISE_BINDINGS: &str = "enterprise-bindings/";

/// How long the destination has to confirm (PROTOCOL §7).
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(24 * 60 * 60);
/// Instances younger than this cannot be transferred.
pub const MIN_INSTANCE_AGE: Duration = Duration::from_secs(5 * 24 * 60 * 60);
/// Instances expiring sooner than this cannot be transferred.
pub const MIN_REMAINING_LIFETIME: Duration = Duration::from_secs(3 * 24 * 60 * 60);
/// Most accounts one verified entity may hold (PROTOCOL §7).
pub const MAX_ACCOUNTS_PER_ENTITY: usize = 10;
/// Most orders one batch call may name.
pub const MAX_ORDERS_PER_BATCH: usize = 100;
/// Longest renewal one call may add, ten years.
pub const MAX_RENEWAL_DAYS: u64 = 3_650;

/// The source's batch of new orders.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceTransferRequest {
    /// The destination account, by ID or by name.
    pub destination: String,
    /// Instance ids, each becoming its own order.
    pub instances: Vec<String>,
    /// A verification code the source account requested (the identity check).
    pub code: String,
}

/// An instance transfer order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceTransfer {
    pub id: String,
    /// Orders initiated together share it.
    pub batch: String,
    pub instance: InstanceId,
    pub source: AccountId,
    pub destination: AccountId,
    /// As stored; [`InstanceTransfer::state_at`] says what it is now.
    pub state: InstanceTransferState,
    pub created_at: Timestamp,
    /// When it expires unless confirmed: `created_at` + 24 h.
    pub expires_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceTransferState {
    /// Waiting for the destination, for at most 24 hours.
    Pending,
    /// The instance is the destination's.
    Confirmed,
    Cancelled,
    Rejected,
    /// Not confirmed within 24 hours.
    Expired,
}

impl InstanceTransfer {
    /// The state at `now`: a pending order past its deadline is expired.
    pub fn state_at(&self, now: Timestamp) -> InstanceTransferState {
        match self.state {
            InstanceTransferState::Pending if now >= self.expires_at => {
                InstanceTransferState::Expired
            }
            state => state,
        }
    }

    /// This order with its state as of `now`, for showing.
    pub fn as_of(mut self, now: Timestamp) -> InstanceTransfer {
        self.state = self.state_at(now);
        self
    }

    fn involves(&self, account: &AccountId) -> bool {
        &self.source == account || &self.destination == account
    }
}

/// One order's outcome in a batch call: the order, or the status and message it failed with.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OrderResult {
    /// The instance (initiation) or order id (the other calls) this result is for.
    pub target: String,
    /// The HTTP status this order alone would have had.
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<InstanceTransfer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl OrderResult {
    fn ok(target: String, status: u16, order: InstanceTransfer) -> OrderResult {
        OrderResult { target, status, order: Some(order), message: None }
    }

    fn failed(target: String, error: &ControlError) -> OrderResult {
        let message =
            if error.status() >= 500 { "internal error".to_owned() } else { error.to_string() };
        OrderResult { target, status: error.status(), order: None, message: Some(message) }
    }
}

/// `instance-transfer-locks/{instance}`.
#[derive(Serialize, Deserialize)]
struct InstanceLock {
    order: String,
}

/// `enterprise-bindings/{individual account}`.
#[derive(Serialize, Deserialize)]
struct EnterpriseBinding {
    enterprise: AccountId,
    bound_at: Timestamp,
}

/// What a batch call does to each order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settle {
    Confirm,
    Cancel,
    Reject,
}

impl ControlPlane {
    /// Initiates one order per instance. Account-level rules (destination, account kinds, the
    /// verification code) fail the whole call; instance-level rules fail that instance only.
    /// The valid orders are stored together with the code's consumption, all or none.
    pub async fn initiate_instance_transfers(
        &self,
        caller: &AccountId,
        request: InstanceTransferRequest,
    ) -> Result<(String, Vec<OrderResult>)> {
        check_batch(&request.instances)?;
        let source = self.registry.account(caller).await?;
        let destination = self.find_account(&request.destination).await?;
        if destination.id == source.id {
            return Err(ControlError::Rule(
                "the destination of a transfer is the caller's own account".into(),
            ));
        }
        let now = self.now();
        self.check_kinds(&source, &destination, now).await?;
        let consume_code = self.check_code(caller, caller, &request.code).await?;

        let batch = format!("itb-{}", random_token(12)?);
        let mut ops = vec![consume_code];
        let mut results = Vec::with_capacity(request.instances.len());
        for target in request.instances {
            match self.new_order(caller, &destination.id, &target, &batch, now).await {
                Ok((order, order_ops)) => {
                    ops.extend(order_ops);
                    results.push(OrderResult::ok(target, 201, order));
                }
                Err(error) => results.push(OrderResult::failed(target, &error)),
            }
        }
        // Nothing valid: nothing stored, and the code stays usable.
        if ops.len() == 1 {
            return Ok((batch, results));
        }
        for order in results.iter().filter_map(|result| result.order.as_ref()) {
            ops.push(self.audit_op(caller, "instance-transfer.initiated", &order.id)?);
            ops.push(self.audit_op(&order.destination, "instance-transfer.received", &order.id)?);
        }
        match self.registry.store().batch(ops).await {
            Ok(_) => {}
            Err(StoreError::Conflict { key, .. }) if key.starts_with(crate::plane::CODES) => {
                return Err(ControlError::Rule("verification code is invalid or expired".into()));
            }
            Err(StoreError::Conflict { .. }) => {
                return Err(ControlError::Conflict {
                    kind: "instance transfer batch",
                    id: format!("{batch} (an instance changed meanwhile; retry)"),
                });
            }
            Err(other) => return Err(other.into()),
        }
        Ok((batch, results))
    }

    /// The destination confirms each order: the instance, its products and their devices
    /// become its own, one atomic batch per order.
    pub async fn confirm_instance_transfers(
        &self,
        caller: &AccountId,
        orders: Vec<String>,
    ) -> Result<Vec<OrderResult>> {
        self.settle_orders(caller, orders, Settle::Confirm).await
    }

    /// The source withdraws each order before it is confirmed.
    pub async fn cancel_instance_transfers(
        &self,
        caller: &AccountId,
        orders: Vec<String>,
    ) -> Result<Vec<OrderResult>> {
        self.settle_orders(caller, orders, Settle::Cancel).await
    }

    /// The destination declines each order before confirming it.
    pub async fn reject_instance_transfers(
        &self,
        caller: &AccountId,
        orders: Vec<String>,
    ) -> Result<Vec<OrderResult>> {
        self.settle_orders(caller, orders, Settle::Reject).await
    }

    /// Orders the caller is the source or the destination of, states as of now.
    pub async fn instance_transfers(&self, caller: &AccountId) -> Result<Vec<InstanceTransfer>> {
        let now = self.now();
        let orders = self.all_orders().await?;
        Ok(orders.into_iter().filter(|o| o.involves(caller)).map(|o| o.as_of(now)).collect())
    }

    pub async fn instance_transfer(
        &self,
        caller: &AccountId,
        id: &str,
    ) -> Result<InstanceTransfer> {
        let (order, _) = self.load_order(caller, id).await?;
        Ok(order.as_of(self.now()))
    }

    /// Extends an instance's lifetime by `days`; refused while a transfer order is pending on
    /// it (PROTOCOL §7: no configuration change during a transfer).
    pub async fn renew_instance(
        &self,
        caller: &AccountId,
        id: &InstanceId,
        days: u64,
    ) -> Result<Instance> {
        if !(1..=MAX_RENEWAL_DAYS).contains(&days) {
            return Err(ControlError::Invalid(format!(
                "a renewal adds 1 to {MAX_RENEWAL_DAYS} days, got {days}"
            )));
        }
        self.instance(caller, id).await?;
        let mut ops = Vec::with_capacity(2);
        // Settles the race with a new order: both write the lock key.
        ops.push(self.no_live_order(id, "renewed").await?);
        let entry = self
            .registry
            .store()
            .get(&keys::instance(id))
            .await?
            .ok_or_else(|| not_found("instance", id.as_str()))?;
        let mut instance: Instance = decode(&entry.key, &entry.value)?;
        if &instance.owner != caller {
            return Err(not_found("instance", id.as_str()));
        }
        instance.expires_at =
            instance.expires_at.after(Duration::from_secs(days.saturating_mul(86_400)));
        ops.push(
            Op::put(entry.key, encode(&instance)?).expecting(Expect::Revision(entry.revision)),
        );
        ops.push(self.audit_op(caller, "instance.renewed", &format!("{id} +{days}d"))?);
        match self.registry.store().batch(ops).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(ControlError::Conflict {
                    kind: "instance",
                    id: format!("{id} (modified concurrently; retry)"),
                });
            }
            Err(other) => return Err(other.into()),
        }
        Ok(instance)
    }

    /// Sets an account's organisation and whether it is the organisation's admin (operator).
    pub async fn set_organisation(
        &self,
        account: &AccountId,
        organisation: Option<OrganisationId>,
        admin: bool,
    ) -> Result<Account> {
        if admin && organisation.is_none() {
            return Err(ControlError::Invalid(
                "an organisation admin needs an organisation".into(),
            ));
        }
        let key = keys::account(account);
        let entry = self
            .registry
            .store()
            .get(&key)
            .await?
            .ok_or_else(|| not_found("account", account.as_str()))?;
        let mut record: Account = decode(&entry.key, &entry.value)?;
        record.organisation = organisation;
        record.organisation_admin = admin;
        let ops = vec![
            Op::put(key, encode(&record)?).expecting(Expect::Revision(entry.revision)),
            self.audit_op(account, "account.organisation-set", account.as_str())?,
        ];
        match self.registry.store().batch(ops).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(ControlError::Conflict {
                    kind: "account",
                    id: format!("{account} (modified concurrently; retry)"),
                });
            }
            Err(other) => return Err(other.into()),
        }
        Ok(record)
    }

    /// For an organisation's admin account: every member account's instances, read-only.
    pub async fn organisation_instances(&self, caller: &AccountId) -> Result<Vec<Instance>> {
        let members = self.organisation_members(caller).await?;
        let instances = self.registry.instances().await?;
        Ok(instances.into_iter().filter(|i| members.contains(&i.owner)).collect())
    }

    /// For an organisation's admin account: every order a member account is on, read-only.
    pub async fn organisation_instance_transfers(
        &self,
        caller: &AccountId,
    ) -> Result<Vec<InstanceTransfer>> {
        let members = self.organisation_members(caller).await?;
        let now = self.now();
        let orders = self.all_orders().await?;
        Ok(orders
            .into_iter()
            .filter(|o| members.contains(&o.source) || members.contains(&o.destination))
            .map(|o| o.as_of(now))
            .collect())
    }

    /// Refuses an 11th account of one verified entity (PROTOCOL §7).
    pub(crate) async fn check_entity_capacity(&self, entity: &str) -> Result<()> {
        let snapshot = self.registry.store().scan_prefix(keys::ACCOUNTS).await?;
        let mut verified = 0;
        for entry in snapshot.entries {
            let account: Account = decode(&entry.key, &entry.value)?;
            if account.verified_entity.as_deref() == Some(entity) {
                verified += 1;
            }
        }
        if verified >= MAX_ACCOUNTS_PER_ENTITY {
            return Err(ControlError::Rule(format!(
                "verified entity {entity:?} already verifies {MAX_ACCOUNTS_PER_ENTITY} accounts, \
                 the most one entity may verify"
            )));
        }
        Ok(())
    }

    /// The order pending on `instance` now, if any.
    pub async fn pending_instance_transfer(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<InstanceTransfer>> {
        let Some((lock, _)) = self.instance_lock(instance).await? else { return Ok(None) };
        let Some(entry) = self.registry.store().get(&order_key(&lock.order)).await? else {
            return Ok(None);
        };
        let order: InstanceTransfer = decode(&entry.key, &entry.value)?;
        Ok((order.state_at(self.now()) == InstanceTransferState::Pending).then_some(order))
    }

    /// PROTOCOL §7's account-kind rules for a transfer from `source` to `destination`.
    async fn check_kinds(
        &self,
        source: &Account,
        destination: &Account,
        now: Timestamp,
    ) -> Result<()> {
        match (source.kind, destination.kind) {
            (AccountKind::Individual, AccountKind::Individual) => Ok(()),
            (AccountKind::Enterprise, AccountKind::Individual) => Err(ControlError::Rule(format!(
                "enterprise account {} cannot transfer instances to individual account {}",
                source.id, destination.id
            ))),
            (AccountKind::Enterprise, AccountKind::Enterprise) => {
                match (&source.verified_entity, &destination.verified_entity) {
                    (Some(from), Some(to)) if from == to => Ok(()),
                    _ => Err(ControlError::Rule(format!(
                        "enterprise account {} can transfer instances only to an enterprise \
                         account of the same verified entity; {} is verified by another entity",
                        source.id, destination.id
                    ))),
                }
            }
            (AccountKind::Individual, AccountKind::Enterprise) => {
                let bound = self.binding(&source.id).await?.map(|(binding, _)| binding.enterprise);
                let pending = self
                    .all_orders()
                    .await?
                    .into_iter()
                    .filter(|o| o.source == source.id && o.destination != destination.id)
                    .filter(|o| o.state_at(now) == InstanceTransferState::Pending)
                    .map(|o| o.destination);
                let mut other = Vec::new();
                for account in bound.into_iter().chain(pending) {
                    if account != destination.id
                        && self.registry.account(&account).await?.kind == AccountKind::Enterprise
                    {
                        other.push(account);
                    }
                }
                match other.first() {
                    None => Ok(()),
                    Some(other) => Err(ControlError::Rule(format!(
                        "individual account {} may transfer instances to one enterprise account \
                         only, and that is {other}",
                        source.id
                    ))),
                }
            }
        }
    }

    /// Checks one instance for a new order; returns the order and its writes.
    async fn new_order(
        &self,
        caller: &AccountId,
        destination: &AccountId,
        target: &str,
        batch: &str,
        now: Timestamp,
    ) -> Result<(InstanceTransfer, Vec<Op>)> {
        let id: InstanceId = target.parse().map_err(|_| not_found("instance", target))?;
        let instance = self.instance(caller, &id).await?;
        if now < instance.created_at.after(MIN_INSTANCE_AGE) {
            return Err(ControlError::Rule(format!(
                "instance {id} was created less than 5 days ago; instances can be transferred \
                 from 5 days after their creation"
            )));
        }
        if instance.expires_at <= now.after(MIN_REMAINING_LIFETIME) {
            return Err(ControlError::Rule(format!(
                "instance {id} expires within 3 days; renew it before transferring it"
            )));
        }
        let order = InstanceTransfer {
            id: format!("it-{}", random_token(16)?),
            batch: batch.to_owned(),
            instance: id.clone(),
            source: caller.clone(),
            destination: destination.clone(),
            state: InstanceTransferState::Pending,
            created_at: now,
            expires_at: now.after(CONFIRM_WITHIN),
            settled_at: None,
        };
        let lock = InstanceLock { order: order.id.clone() };
        let lock_expect = match self.live_lock(&id).await? {
            LockState::Live(order) => {
                return Err(ControlError::Rule(format!(
                    "instance {id} already has pending transfer order {order}"
                )));
            }
            LockState::Stale(revision) => Expect::Revision(revision),
            LockState::Absent => Expect::Absent,
        };
        let ops = vec![
            Op::put(lock_key(&id), encode(&lock)?).expecting(lock_expect),
            Op::put(order_key(&order.id), encode(&order)?).expecting(Expect::Absent),
        ];
        Ok((order, ops))
    }

    async fn settle_orders(
        &self,
        caller: &AccountId,
        orders: Vec<String>,
        settle: Settle,
    ) -> Result<Vec<OrderResult>> {
        check_batch(&orders)?;
        let mut results = Vec::with_capacity(orders.len());
        for id in orders {
            match self.settle_order(caller, &id, settle).await {
                Ok(order) => results.push(OrderResult::ok(id, 200, order)),
                Err(error) => results.push(OrderResult::failed(id, &error)),
            }
        }
        Ok(results)
    }

    /// Confirms, cancels or rejects one order, atomically.
    async fn settle_order(
        &self,
        caller: &AccountId,
        id: &str,
        settle: Settle,
    ) -> Result<InstanceTransfer> {
        let (mut order, revision) = self.load_order(caller, id).await?;
        let (side, verb) = match settle {
            Settle::Confirm => (&order.destination, "confirmed"),
            Settle::Cancel => (&order.source, "cancelled"),
            Settle::Reject => (&order.destination, "rejected"),
        };
        if side != caller {
            let who = if settle == Settle::Cancel { "its source" } else { "its destination" };
            return Err(ControlError::Rule(format!(
                "order {id} can be {verb} only by {who} account"
            )));
        }
        let now = self.now();
        match order.state_at(now) {
            InstanceTransferState::Pending => {}
            InstanceTransferState::Expired => {
                return Err(ControlError::Rule(format!(
                    "order {id} expired: the destination did not confirm it within 24 hours"
                )));
            }
            state => {
                return Err(ControlError::Rule(format!(
                    "order {id} is {state:?}; only a pending order can be {verb}"
                )));
            }
        }
        let mut ops = Vec::new();
        if let Some((lock, lock_revision)) = self.instance_lock(&order.instance).await?
            && lock.order == order.id
        {
            ops.push(
                Op::delete(lock_key(&order.instance)).expecting(Expect::Revision(lock_revision)),
            );
        }
        if settle == Settle::Confirm {
            ops.extend(self.ownership_change(&order, now).await?);
        }
        order.state = match settle {
            Settle::Confirm => InstanceTransferState::Confirmed,
            Settle::Cancel => InstanceTransferState::Cancelled,
            Settle::Reject => InstanceTransferState::Rejected,
        };
        order.settled_at = Some(now);
        ops.push(
            Op::put(order_key(&order.id), encode(&order)?).expecting(Expect::Revision(revision)),
        );
        let action = format!("instance-transfer.{verb}");
        ops.push(self.audit_op(&order.source, &action, id)?);
        ops.push(self.audit_op(&order.destination, &action, id)?);
        match self.registry.store().batch(ops).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(ControlError::Conflict {
                    kind: "order",
                    id: format!("{id} (it or its instance changed meanwhile; retry)"),
                });
            }
            Err(other) => return Err(other.into()),
        }
        Ok(order)
    }

    /// The writes that make `order`'s instance the destination's: the instance, the products
    /// homed on it that the source owns, and their devices the source owns (a device it
    /// transferred away stays with its owner). Only `owner` changes.
    async fn ownership_change(&self, order: &InstanceTransfer, now: Timestamp) -> Result<Vec<Op>> {
        let source = self.registry.account(&order.source).await?;
        let destination = self.registry.account(&order.destination).await?;
        self.check_kinds(&source, &destination, now).await?;
        let id = &order.instance;
        let entry = self
            .registry
            .store()
            .get(&keys::instance(id))
            .await?
            .ok_or_else(|| not_found("instance", id.as_str()))?;
        let mut instance: Instance = decode(&entry.key, &entry.value)?;
        if instance.owner != order.source {
            return Err(ControlError::Rule(format!(
                "instance {id} no longer belongs to the source account"
            )));
        }
        if instance.expires_at <= now.after(MIN_REMAINING_LIFETIME) {
            return Err(ControlError::Rule(format!(
                "instance {id} now expires within 3 days and cannot be transferred"
            )));
        }
        instance.owner = order.destination.clone();
        let mut ops = vec![
            Op::put(entry.key, encode(&instance)?).expecting(Expect::Revision(entry.revision)),
        ];
        let products = self.registry.store().scan_prefix(keys::PRODUCTS).await?;
        for entry in products.entries {
            let mut product: Product = decode(&entry.key, &entry.value)?;
            if &product.home_instance != id || product.owner != order.source {
                continue;
            }
            let devices =
                self.registry.store().scan_prefix(&keys::devices_of(&product.key)).await?;
            let mut moving = Vec::new();
            for device_entry in devices.entries {
                let device: Device = decode(&device_entry.key, &device_entry.value)?;
                if device.owner == order.source {
                    moving.push((device_entry, device));
                }
            }
            // A device in a pending device transfer order would move under that order's lock,
            // which only the old owner could release: the orders are settled first. The
            // checked absence is part of the batch, so an order created meanwhile conflicts.
            let locks: Vec<String> =
                moving.iter().map(|(_, device)| crate::transfer::lock_key(&device.key)).collect();
            let held = self.registry.store().get_many(&locks).await?;
            if let Some(lock) = held.into_iter().flatten().next() {
                return Err(ControlError::Rule(format!(
                    "instance {id} has devices in a pending device transfer order ({}); it must \
                     be accepted, rejected or cancelled before the instance changes owner",
                    crate::transfer::lock_holder(&lock)?
                )));
            }
            for ((device_entry, mut device), lock) in moving.into_iter().zip(locks) {
                device.owner = order.destination.clone();
                ops.push(
                    Op::put(device_entry.key, encode(&device)?)
                        .expecting(Expect::Revision(device_entry.revision)),
                );
                ops.push(Op::delete(lock).expecting(Expect::Absent));
            }
            product.owner = order.destination.clone();
            ops.push(
                Op::put(entry.key, encode(&product)?).expecting(Expect::Revision(entry.revision)),
            );
        }
        if destination.kind == AccountKind::Enterprise && source.kind == AccountKind::Individual {
            let binding = EnterpriseBinding { enterprise: destination.id.clone(), bound_at: now };
            let expect = match self.binding(&source.id).await? {
                Some((_, revision)) => Expect::Revision(revision),
                None => Expect::Absent,
            };
            ops.push(Op::put(binding_key(&source.id), encode(&binding)?).expecting(expect));
        }
        Ok(ops)
    }

    /// The op that asserts no live order is pending on `instance` (clearing a stale lock),
    /// or the refusal naming the pending one.
    async fn no_live_order(&self, instance: &InstanceId, change: &str) -> Result<Op> {
        match self.live_lock(instance).await? {
            LockState::Live(order) => Err(ControlError::Rule(format!(
                "instance {instance} has pending transfer order {order}; it cannot be {change} \
                 until the order is confirmed, cancelled, rejected or expired"
            ))),
            LockState::Stale(revision) => {
                Ok(Op::delete(lock_key(instance)).expecting(Expect::Revision(revision)))
            }
            LockState::Absent => Ok(Op::delete(lock_key(instance)).expecting(Expect::Absent)),
        }
    }

    async fn live_lock(&self, instance: &InstanceId) -> Result<LockState> {
        let Some((lock, revision)) = self.instance_lock(instance).await? else {
            return Ok(LockState::Absent);
        };
        let live = match self.registry.store().get(&order_key(&lock.order)).await? {
            Some(entry) => {
                let order: InstanceTransfer = decode(&entry.key, &entry.value)?;
                order.state_at(self.now()) == InstanceTransferState::Pending
            }
            None => false,
        };
        Ok(if live { LockState::Live(lock.order) } else { LockState::Stale(revision) })
    }

    async fn instance_lock(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<(InstanceLock, Revision)>> {
        match self.registry.store().get(&lock_key(instance)).await? {
            Some(entry) => Ok(Some((decode(&entry.key, &entry.value)?, entry.revision))),
            None => Ok(None),
        }
    }

    async fn binding(&self, account: &AccountId) -> Result<Option<(EnterpriseBinding, Revision)>> {
        match self.registry.store().get(&binding_key(account)).await? {
            Some(entry) => Ok(Some((decode(&entry.key, &entry.value)?, entry.revision))),
            None => Ok(None),
        }
    }

    async fn all_orders(&self) -> Result<Vec<InstanceTransfer>> {
        let snapshot = self.registry.store().scan_prefix(INSTANCE_TRANSFERS).await?;
        snapshot.entries.iter().map(|entry| Ok(decode(&entry.key, &entry.value)?)).collect()
    }

    /// An order the caller is on either side of; another account's is not found.
    async fn load_order(
        &self,
        caller: &AccountId,
        id: &str,
    ) -> Result<(InstanceTransfer, Revision)> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(not_found("order", id));
        }
        let entry = self
            .registry
            .store()
            .get(&order_key(id))
            .await?
            .ok_or_else(|| not_found("order", id))?;
        let order: InstanceTransfer = decode(&entry.key, &entry.value)?;
        if !order.involves(caller) {
            return Err(not_found("order", id));
        }
        Ok((order, entry.revision))
    }

    /// The accounts of the organisation `caller` is the admin of.
    async fn organisation_members(&self, caller: &AccountId) -> Result<HashSet<AccountId>> {
        let account = self.registry.account(caller).await?;
        let organisation = match (&account.organisation, account.organisation_admin) {
            (Some(organisation), true) => organisation.clone(),
            _ => {
                return Err(ControlError::Rule(format!(
                    "account {caller} is not an organisation's admin account"
                )));
            }
        };
        let snapshot = self.registry.store().scan_prefix(keys::ACCOUNTS).await?;
        let mut members = HashSet::new();
        for entry in snapshot.entries {
            let member: Account = decode(&entry.key, &entry.value)?;
            if member.organisation.as_ref() == Some(&organisation) {
                members.insert(member.id);
            }
        }
        Ok(members)
    }
}

/// What the lock on an instance says.
enum LockState {
    Absent,
    /// Names an order that is no longer pending (expired); the next order may replace it.
    Stale(Revision),
    /// Names this pending order.
    Live(String),
}

/// 1 to [`MAX_ORDERS_PER_BATCH`] targets, none twice.
fn check_batch(targets: &[String]) -> Result<()> {
    if targets.is_empty() || targets.len() > MAX_ORDERS_PER_BATCH {
        return Err(ControlError::Invalid(format!(
            "a batch names 1 to {MAX_ORDERS_PER_BATCH} entries, got {}",
            targets.len()
        )));
    }
    let mut seen = HashSet::with_capacity(targets.len());
    if let Some(twice) = targets.iter().find(|target| !seen.insert(target.as_str())) {
        return Err(ControlError::Invalid(format!("{twice} is listed twice")));
    }
    Ok(())
}

fn order_key(id: &str) -> String {
    format!("{INSTANCE_TRANSFERS}{id}")
}

fn lock_key(instance: &InstanceId) -> String {
    format!("{INSTANCE_TRANSFER_LOCKS}{instance}")
}

fn binding_key(account: &AccountId) -> String {
    format!("{ENTERPRISE_BINDINGS}{account}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(created: u64) -> InstanceTransfer {
        let created = Timestamp(created);
        InstanceTransfer {
            id: "it-1".into(),
            batch: "itb-1".into(),
            instance: "inst-1".parse().unwrap(),
            source: "alpha".parse().unwrap(),
            destination: "bravo".parse().unwrap(),
            state: InstanceTransferState::Pending,
            created_at: created,
            expires_at: created.after(CONFIRM_WITHIN),
            settled_at: None,
        }
    }

    #[test]
    fn a_pending_order_expires_after_24_hours() {
        let order = order(1_000);
        let deadline = Timestamp(1_000).after(CONFIRM_WITHIN);
        assert_eq!(order.state_at(Timestamp(deadline.0 - 1)), InstanceTransferState::Pending);
        assert_eq!(order.state_at(deadline), InstanceTransferState::Expired);
        let mut confirmed = order.clone();
        confirmed.state = InstanceTransferState::Confirmed;
        assert_eq!(confirmed.state_at(deadline), InstanceTransferState::Confirmed);
    }

    #[test]
    fn batches_are_bounded_and_unique() {
        assert!(check_batch(&[]).is_err());
        assert!(check_batch(&["a".into(), "b".into()]).is_ok());
        assert!(check_batch(&["a".into(), "a".into()]).is_err());
        let many: Vec<String> = (0..=MAX_ORDERS_PER_BATCH).map(|i| i.to_string()).collect();
        assert!(check_batch(&many).is_err());
    }
}
