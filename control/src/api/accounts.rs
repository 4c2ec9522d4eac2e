//! Accounts and what hangs off them: creation by the operator, the caller's own account, API
//! keys, the audit log, and cross-account verification codes.

use hyper::StatusCode;
use serde::Serialize;

use meridian_registry::ids::AccountId;
use meridian_registry::model::Account;

use super::request::ApiRequest;
use super::response::{self, Result};
use crate::model::AuditEntry;
use crate::plane::{CODE_VALIDITY, ControlPlane, NewAccount};

/// `POST /v1/accounts` (operator): the account and its first API key, shown this once.
pub(super) async fn create(plane: &ControlPlane, request: ApiRequest) -> Result {
    #[derive(Serialize)]
    struct Created {
        account: Account,
        api_key: String,
    }
    let new: NewAccount = request.json().await?;
    let (account, api_key) = plane.create_account(new).await?;
    // Accounts are read back through `GET /v1/account` with the new key.
    response::created("/v1/account", &Created { account, api_key })
}

/// `GET /v1/account`
pub(super) async fn own(plane: &ControlPlane, caller: &AccountId) -> Result {
    response::json(StatusCode::OK, &plane.account(caller).await?)
}

/// `POST /v1/api-keys`: another key for the caller's account, shown this once.
pub(super) async fn create_api_key(plane: &ControlPlane, caller: &AccountId) -> Result {
    #[derive(Serialize)]
    struct Created {
        api_key: String,
    }
    let api_key = plane.create_api_key(caller).await?;
    response::json(StatusCode::CREATED, &Created { api_key })
}

/// `GET /v1/audit`: the caller's audit log, oldest first.
pub(super) async fn audit(plane: &ControlPlane, caller: &AccountId) -> Result {
    #[derive(Serialize)]
    struct Log {
        entries: Vec<AuditEntry>,
    }
    response::json(StatusCode::OK, &Log { entries: plane.audit_log(caller).await? })
}

/// `POST /v1/verification-codes`: the caller, as a future cross-account destination, asks for
/// a code to hand to the source account.
pub(super) async fn request_code(plane: &ControlPlane, caller: &AccountId) -> Result {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Code {
        code: String,
        expires_in_seconds: u64,
    }
    let code = plane.request_code(caller).await?;
    response::json(StatusCode::CREATED, &Code { code, expires_in_seconds: CODE_VALIDITY.as_secs() })
}
