//! Control-plane errors, each with the HTTP status the admin API answers with.

use std::time::Duration;

use meridian_registry::RegistryError;
use meridian_registry::ids::AccountId;
use meridian_registry::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No valid API key (or operator token) was presented.
    #[error("missing or invalid credentials")]
    Unauthenticated,
    /// The resource does not exist, or belongs to another account (indistinguishable on
    /// purpose, so one account learns nothing of another's resources).
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    /// The request is malformed or names invalid values.
    #[error("{0}")]
    Invalid(String),
    /// The request is well formed but breaks a PROTOCOL rule; the message names the rule.
    #[error("{0}")]
    Rule(String),
    /// The resource already exists.
    #[error("{kind} {id} already exists")]
    Conflict { kind: &'static str, id: String },
    /// Too many attempts (verification codes).
    #[error("{0}")]
    TooManyAttempts(String),
    /// The caller makes requests of this kind faster than its rate allows.
    #[error("too many {what} from this account; retry in {} s", retry_after_secs(*retry_after))]
    RateLimited { what: &'static str, retry_after: Duration },
    /// The caller already has as many unsettled distribution tasks as one account may have.
    #[error(
        "this account already has {limit} unsettled distribution tasks, the most one account \
         may have at once; submit again once one is Distributed or Failed"
    )]
    TooManyActiveTasks { limit: u32 },
    /// A stored record does not decode (written by an incompatible version, or damaged). The
    /// operator is alerted (log and metric); `owner` is whom the record names, when that much
    /// of it decodes, and the only account told more than "not found".
    #[error("the stored record of {kind} {id} does not decode; the operator has been alerted")]
    Unreadable { kind: &'static str, id: String, owner: Option<AccountId> },
    /// Storage failed; nothing was changed.
    #[error("storage failure: {0}")]
    Internal(String),
}

impl ControlError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            ControlError::Unauthenticated => 401,
            ControlError::NotFound { .. } => 404,
            ControlError::Invalid(_) => 400,
            ControlError::Rule(_) => 422,
            ControlError::Conflict { .. } => 409,
            ControlError::TooManyAttempts(_) => 429,
            ControlError::RateLimited { .. } => 429,
            ControlError::TooManyActiveTasks { .. } => 409,
            ControlError::Unreadable { .. } => 500,
            ControlError::Internal(_) => 500,
        }
    }
}

/// Whole seconds to wait, rounded up, at least one: what `Retry-After` says.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs().saturating_add(u64::from(wait.subsec_nanos() > 0)).max(1)
}

impl From<RegistryError> for ControlError {
    fn from(error: RegistryError) -> ControlError {
        match error {
            RegistryError::NotFound { kind, id } => ControlError::NotFound { kind, id },
            RegistryError::AlreadyExists { kind, id } => ControlError::Conflict { kind, id },
            RegistryError::InvalidId(error) => ControlError::Invalid(error.to_string()),
            RegistryError::Rule(rule) => ControlError::Rule(rule),
            RegistryError::Concurrent { kind, id } => {
                ControlError::Conflict { kind, id: format!("{id} (modified concurrently; retry)") }
            }
            RegistryError::Secret(error) => ControlError::Invalid(error.to_string()),
            RegistryError::Store(error) => ControlError::Internal(error.to_string()),
            RegistryError::Corrupt { key, reason } => {
                ControlError::Internal(format!("record {key} does not decode: {reason}"))
            }
        }
    }
}

impl From<StoreError> for ControlError {
    fn from(error: StoreError) -> ControlError {
        ControlError::Internal(error.to_string())
    }
}
