//! The routes of a VM's backups in the panel: the list, "Back up now", and a restore (one
//! click on a snapshot, one confirmation), or a new VM made from a snapshot. Each goes through `/v1/vms/{vm}/backups` and
//! `/restore` in-process, so the panel is authorized and validated exactly as the API is.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::get;
use hearth_types::api::{BackupRow, NewBackup, RestoreBackup};

use super::context::*;
use crate::api::ApiState;
use crate::web::backups;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/panel/vms/{vm}/backups",
            get(backups_page).post(back_up_now),
        )
        .route(
            "/panel/vms/{vm}/backups/{snapshot}/restore",
            get(confirm_restore).post(restore),
        )
        .route(
            "/panel/vms/{vm}/backups/{snapshot}/restore-new",
            axum::routing::post(restore_new),
        )
}

/// The VM's backups row, or the page saying why not.
async fn row_of(state: &ApiState, session: &Session, vm: &str) -> Result<BackupRow, Response> {
    session
        .api(state, Method::GET, &format!("/v1/vms/{vm}/backups"), None)
        .await
        .and_then(|value| {
            serde_json::from_value(value).map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))
        })
        .map_err(|(status, message)| session.problem(status, "/panel", "No such VM", &message))
}

async fn backups_page(
    State(state): State<ApiState>,
    Path(vm): Path<String>,
    session: Session,
) -> Response {
    let Some(vm) = segment(&vm) else {
        return bad_segment(&session, "vm");
    };
    match row_of(&state, &session, vm).await {
        Ok(row) => {
            let name = if row.name.is_empty() { vm } else { &row.name };
            session.page(
                StatusCode::OK,
                backups::backups_page(&session.chrome("/panel"), name, &row),
            )
        }
        Err(response) => response,
    }
}

async fn back_up_now(
    State(state): State<ApiState>,
    Path(vm): Path<String>,
    Posted { session, .. }: Posted<CsrfOnly>,
) -> Response {
    let Some(vm) = segment(&vm) else {
        return bad_segment(&session, "vm");
    };
    let back = format!("/panel/vms/{vm}/backups");
    let request = NewBackup { target: None };
    let path = format!("/v1/vms/{vm}/backups");
    let result = session
        .api(&state, Method::POST, &path, body(&request))
        .await;
    after(&back, result, |_| {
        "A backup is under way; the VM runs on.".to_owned()
    })
}

async fn confirm_restore(
    State(state): State<ApiState>,
    Path((vm, snapshot)): Path<(String, String)>,
    session: Session,
) -> Response {
    let (Some(vm), Some(snapshot)) = (segment(&vm), segment(&snapshot)) else {
        return bad_segment(&session, "snapshot");
    };
    let row = match row_of(&state, &session, vm).await {
        Ok(row) => row,
        Err(response) => return response,
    };
    let Some(found) = row.backups.snapshots.iter().find(|s| s.id == snapshot) else {
        return bad_segment(&session, "snapshot");
    };
    let name = if row.name.is_empty() { vm } else { &row.name };
    session.page(
        StatusCode::OK,
        backups::restore_page(&session.chrome("/panel"), name, &row.vm, found),
    )
}

async fn restore(
    State(state): State<ApiState>,
    Path((vm, snapshot)): Path<(String, String)>,
    Posted { session, .. }: Posted<CsrfOnly>,
) -> Response {
    let (Some(vm), Some(snapshot)) = (segment(&vm), segment(&snapshot)) else {
        return bad_segment(&session, "snapshot");
    };
    let back = format!("/panel/vms/{vm}/backups");
    let request = RestoreBackup {
        snapshot: snapshot.to_owned(),
        into: None,
    };
    let path = format!("/v1/vms/{vm}/restore");
    let result = session
        .api(&state, Method::POST, &path, body(&request))
        .await;
    after(&back, result, |_| {
        "Restoring: the VM stops, and starts again on the backup's disk.".to_owned()
    })
}

/// The new VM's name, from the restore page's second form.
#[derive(serde::Deserialize)]
struct NewVmFrom {
    csrf: String,
    name: String,
}

impl CsrfField for NewVmFrom {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

async fn restore_new(
    State(state): State<ApiState>,
    Path((vm, snapshot)): Path<(String, String)>,
    Posted { session, form }: Posted<NewVmFrom>,
) -> Response {
    let (Some(vm), Some(snapshot)) = (segment(&vm), segment(&snapshot)) else {
        return bad_segment(&session, "snapshot");
    };
    let back = format!("/panel/vms/{vm}/backups");
    let request = RestoreBackup {
        snapshot: snapshot.to_owned(),
        into: Some(form.name.trim().to_owned()),
    };
    let path = format!("/v1/vms/{vm}/restore");
    let result = session
        .api(&state, Method::POST, &path, body(&request))
        .await;
    let name = request.into.clone().unwrap_or_default();
    after(&back, result, move |_| {
        format!("{name} is made: its disk comes from the backup before it first starts.")
    })
}
