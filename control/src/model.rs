//! Records the control plane adds to the registry: API keys, verification codes and the
//! attempts at them, distribution tasks and their per-device records, and the audit log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use meridian_registry::clock::Timestamp;
use meridian_registry::ids::{AccountId, DeviceKey, InstanceId, ProductKey};
use meridian_registry::model::PlacementCandidate;

/// An account's API key; only the SHA-256 of its secret is stored (PROTOCOL §9).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub account: AccountId,
    /// Hex SHA-256 of the secret part.
    pub hash: String,
    pub created_at: Timestamp,
}

/// A cross-account verification code, requested by the destination account (PROTOCOL §5). Only
/// its hash is stored; it is valid for five minutes and for one task.
///
/// Attempts at it are not counted here but in [`CodeAttempts`], one record per attempting
/// account: a wrong guess must never change the record another account's task consumes.
/// (Records written before that split carry a `failed_attempts` field, now ignored.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationCode {
    /// The account that requested it (the destination of a cross-account task).
    pub account: AccountId,
    pub hash: String,
    pub expires_at: Timestamp,
}

/// How often one account has tried another account's (or its own) live verification codes.
/// Kept per attempting account so that a griefer exhausting its attempts locks out only
/// itself, never the account the code was handed to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeAttempts {
    /// Attempts so far, by code id (the last segment of the code's key). Entries of codes that
    /// expired or were used are dropped on the next attempt.
    pub codes: BTreeMap<String, u32>,
}

/// A distribution task (PROTOCOL §5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    /// The source account, which owns the devices.
    pub owner: AccountId,
    pub product: ProductKey,
    pub policy: Policy,
    /// Set for cross-account tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_account: Option<AccountId>,
    pub devices: Vec<DeviceKey>,
    pub state: TaskState,
    /// Devices handled so far, in `devices` order; the executor resumes here after a restart.
    pub cursor: usize,
    /// One entry per handled device.
    pub records: Vec<DeviceRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// How many times the task was retried.
    #[serde(default)]
    pub attempts: u32,
    /// While the task is unsettled: its slot among its owner's pending tasks (see
    /// `distribution.rs`), given up in the batch that settles it. `None` once settled, and on
    /// tasks stored before the index existed until the executor's first pass gives them one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Where a task sends devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Policy {
    /// One destination instance.
    Specified { instance: InstanceId },
    /// Nearest of these (region, instance) candidates, picked when the device bootstraps.
    Nearest { candidates: Vec<PlacementCandidate> },
}

/// PROTOCOL §5 task states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    Initializing,
    Distributing,
    /// Done; the records say which devices moved and why others did not.
    Distributed,
    Failed,
}

impl TaskState {
    pub fn settled(self) -> bool {
        matches!(self, TaskState::Distributed | TaskState::Failed)
    }
}

/// The outcome for one device of a task; a row of the downloadable CSV.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    #[serde(rename = "productKey")]
    pub product_key: ProductKey,
    #[serde(rename = "deviceName")]
    pub device_name: String,
    pub result: RecordResult,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordResult {
    Succeeded,
    Failed,
}

/// One audit log line (PROTOCOL §9): who did what, when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: Timestamp,
    pub account: AccountId,
    pub action: String,
    pub target: String,
}
