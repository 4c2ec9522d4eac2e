//! Distribution tasks (PROTOCOL §5): submission, progress, retry, and the per-device record.
//!
//! Submission only stores the task; the executor (`ControlPlane::run_executor`) moves the
//! devices, so a client polls `GET /v1/distribution-tasks/{id}` until the state settles.

use hyper::StatusCode;
use serde::Serialize;

use meridian_registry::clock::Timestamp;
use meridian_registry::ids::{AccountId, ProductKey};

use super::request::{ApiRequest, strip_bom};
use super::response::{self, Result};
use crate::distribution::{CSV_TEMPLATE, TaskRequest};
use crate::listing::BrokenRecord;
use crate::model::{Policy, RecordResult, Task, TaskState};
use crate::plane::ControlPlane;

/// `POST /v1/distribution-tasks`
pub(super) async fn submit(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
) -> Result {
    let mut task: TaskRequest = request.json().await?;
    task.csv = task.csv.map(strip_bom);
    let task = plane.submit_task(caller, task).await?;
    response::created(&format!("/v1/distribution-tasks/{}", task.id), &TaskView::from(&task))
}

/// `GET /v1/distribution-tasks`
pub(super) async fn list(plane: &ControlPlane, caller: &AccountId) -> Result {
    #[derive(Serialize)]
    struct List<'a> {
        tasks: Vec<TaskView<'a>>,
        /// The caller's tasks whose stored records do not decode (absent when none).
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        broken: &'a [BrokenRecord],
    }
    let listing = plane.tasks(caller).await?;
    let tasks = listing.items.iter().map(TaskView::from).collect();
    response::json(StatusCode::OK, &List { tasks, broken: &listing.broken })
}

/// `GET /v1/distribution-tasks/{id}`
pub(super) async fn get(plane: &ControlPlane, caller: &AccountId, request: ApiRequest) -> Result {
    let task = plane.task(caller, request.param("id")).await?;
    response::json(StatusCode::OK, &TaskView::from(&task))
}

/// `POST /v1/distribution-tasks/{id}/retry`: accepted; the executor resumes the task.
pub(super) async fn retry(plane: &ControlPlane, caller: &AccountId, request: ApiRequest) -> Result {
    let task = plane.retry_task(caller, request.param("id")).await?;
    response::json(StatusCode::ACCEPTED, &TaskView::from(&task))
}

/// `GET /v1/distribution-tasks/{id}/records.csv`
pub(super) async fn records(
    plane: &ControlPlane,
    caller: &AccountId,
    request: ApiRequest,
) -> Result {
    let task = plane.task(caller, request.param("id")).await?;
    // Task ids are letters, digits and `-` (the plane refuses any other), so the name is a
    // plain token.
    let filename = format!("{}-records.csv", task.id);
    Ok(response::csv_attachment(&filename, ControlPlane::records_csv(&task)))
}

/// `GET /v1/distribution-tasks/template.csv`
pub(super) fn template() -> Result {
    Ok(response::csv_attachment("distribution-template.csv", CSV_TEMPLATE.to_owned()))
}

/// A task as the API shows it: counts instead of the device list and records, which can hold
/// 10,000 entries each (the records are downloaded as CSV).
#[derive(Serialize)]
struct TaskView<'a> {
    id: &'a str,
    product: &'a ProductKey,
    policy: &'a Policy,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination_account: Option<&'a AccountId>,
    state: TaskState,
    /// Devices the task distributes; 0 for a product-only task.
    device_count: usize,
    /// Devices handled so far (succeeded + failed).
    handled: usize,
    succeeded: usize,
    failed: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<&'a str>,
    attempts: u32,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl<'a> From<&'a Task> for TaskView<'a> {
    fn from(task: &'a Task) -> TaskView<'a> {
        let succeeded =
            task.records.iter().filter(|record| record.result == RecordResult::Succeeded).count();
        TaskView {
            id: &task.id,
            product: &task.product,
            policy: &task.policy,
            destination_account: task.destination_account.as_ref(),
            state: task.state,
            device_count: task.devices.len(),
            handled: task.cursor,
            succeeded,
            failed: task.records.len() - succeeded,
            failure: task.failure.as_deref(),
            attempts: task.attempts,
            created_at: task.created_at,
            updated_at: task.updated_at,
        }
    }
}
