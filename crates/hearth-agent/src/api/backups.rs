//! `/v1/backups` and `/v1/backup-targets`: backups of VMs into restic repositories. An
//! admin names the targets (a restic location and the files on each worker holding its
//! password and keys); a VM's owner or an admin asks for a backup now, and the VM's disk
//! home runs it (`hearth_compute::backup_runs`). A member sees only their own VMs' backups.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use hearth_state::model::Command;
use hearth_state::model::backups::BackupCommand;
use hearth_types::api::{BackupRow, NewBackup, PutBackupTarget, RestoreBackup, StateBackupRow};
use hearth_types::backup::{BackupPolicy, BackupTarget, ScheduleChoice, StateRestore, VmBackups};
use hearth_types::desired::{DesiredState, Versioned};

use super::body::{Body, BodyRejection};
use super::context::{ApiState, Params, bad_body, error, expect_from, read, write};
use crate::auth::Caller;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/backups", get(list))
        .route("/v1/vms/{key}/backups", get(show).post(ask))
        .route("/v1/vms/{key}/restore", post(restore).delete(abort_restore))
        .route("/v1/vms/{key}/backup-schedule", put(set_schedule))
        .route("/v1/state-backups", get(state_backups))
        // A whole state: up to what one Raft message carries.
        .route(
            "/v1/restore",
            post(restore_state).layer(axum::extract::DefaultBodyLimit::max(RESTORE_LIMIT)),
        )
        .route("/v1/backup-targets", get(targets))
        .route(
            "/v1/backup-targets/{name}",
            get(target).put(put_target).delete(remove_target),
        )
}

/// The largest state `POST /v1/restore` takes.
const RESTORE_LIMIT: usize = 30 << 20;

fn backup(command: BackupCommand) -> Command {
    Command::Backup { command }
}

/// What a VM's backups come to now.
pub fn status(backups: &VmBackups) -> &'static str {
    if backups.restoring() {
        return "restoring";
    }
    if backups.recover.is_some() {
        return "recovering";
    }
    match (backups.pending(), backups.failures, &backups.last_error) {
        (true, 0, _) => "running",
        (true, _, _) => "retrying",
        (false, _, Some(_)) => "failed",
        (false, _, None) => "idle",
    }
}

/// The row of VM `id`'s backups.
pub fn row(desired: &DesiredState, id: &str, backups: &VmBackups) -> BackupRow {
    let vm = desired.compute.vms.get(id).map(|v| &v.value.request);
    let policy = hearth_types::backup::policy_of(desired, id).cloned();
    let now_ms = crate::unix_ms();
    let next_ms = policy.as_ref().and_then(|p| {
        let latest = crate::backup_schedule::latest_slot(p, now_ms)?;
        // A slot passed and not asked for yet is asked for within seconds.
        match latest > backups.scheduled_ms {
            true => Some(now_ms),
            false => crate::backup_schedule::next_slot(p, now_ms),
        }
    });
    BackupRow {
        vm: id.to_owned(),
        name: vm.map(|r| r.name.clone()).unwrap_or_default(),
        owner: vm.map(|r| r.owner.clone()).unwrap_or_default(),
        status: status(backups).to_owned(),
        policy,
        next_ms,
        backups: backups.clone(),
    }
}

async fn list(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<Params>,
) -> Response {
    let desired = match read(&state, &params).await {
        Ok(desired) => desired,
        Err(failure) => return failure.into_response(),
    };
    let rows: Vec<BackupRow> = desired
        .backups
        .vms
        .iter()
        .map(|(id, backups)| row(&desired, id, backups))
        .filter(|row| caller.only_owner().is_none_or(|o| o == row.owner))
        .collect();
    Json(rows).into_response()
}

async fn show(State(state): State<ApiState>, Path(key): Path<String>) -> Response {
    match super::vms::read_vm(&state, &key).await {
        Ok((desired, vm)) => {
            let backups = desired
                .backups
                .vms
                .get(&vm.value.id)
                .cloned()
                .unwrap_or_default();
            Json(row(&desired, &vm.value.id, &backups)).into_response()
        }
        Err(answer) => answer,
    }
}

/// The target a backup of `vm` goes to when the caller names none: that of its schedule,
/// of its last snapshot, the only one, or the one named `default`.
fn default_target(desired: &DesiredState, vm: &str) -> Result<String, String> {
    let targets = &desired.backups.targets;
    let scheduled = hearth_types::backup::policy_of(desired, vm)
        .map(|p| &p.target)
        .filter(|t| targets.contains_key(*t));
    if let Some(target) = scheduled {
        return Ok(target.clone());
    }
    let last = desired
        .backups
        .vms
        .get(vm)
        .and_then(|b| b.snapshots.last())
        .map(|s| &s.target)
        .filter(|t| targets.contains_key(*t));
    if let Some(target) = last {
        return Ok(target.clone());
    }
    if targets.len() == 1 {
        return Ok(targets.keys().next().cloned().unwrap_or_default());
    }
    if targets.contains_key("default") {
        return Ok("default".into());
    }
    match targets.is_empty() {
        true => Err("target: the co-op has no backup target yet (an admin adds one: hearth backup-target put)".into()),
        false => Err(format!(
            "target: give one of {}",
            targets.keys().cloned().collect::<Vec<_>>().join(", ")
        )),
    }
}

async fn ask(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
    body: Result<Body<NewBackup>, BodyRejection>,
) -> Response {
    let new = match body {
        Ok(Body(new)) => new,
        Err(rejection) => return bad_body(rejection),
    };
    let (desired, vm) = match super::vms::read_vm(&state, &key).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let target = match new
        .target
        .map_or_else(|| default_target(&desired, &vm.value.id), Ok)
    {
        Ok(target) => target,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let command = BackupCommand::Ask {
        vm: vm.value.id.clone(),
        target,
        by: asker(&caller),
        at_ms: crate::unix_ms(),
    };
    write(&state, backup(command)).await
}

/// Why a schedule cannot be used on this node: its time zone is unknown here (the rest is
/// the state's check).
pub fn check_policy(policy: &BackupPolicy) -> Result<(), String> {
    policy.validate()?;
    crate::backup_schedule::time_zone(&policy.time_zone).map(|_| ())
}

/// An admin sets a VM's schedule: its own, none, or its plan's.
async fn set_schedule(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    body: Result<Body<ScheduleChoice>, BodyRejection>,
) -> Response {
    let schedule = match body {
        Ok(Body(schedule)) => schedule,
        Err(rejection) => return bad_body(rejection),
    };
    if let ScheduleChoice::Own { policy } = &schedule
        && let Err(why) = check_policy(policy)
    {
        return error(StatusCode::BAD_REQUEST, &format!("policy.{why}"));
    }
    let vm = match super::vms::read_vm(&state, &key).await {
        Ok((_, vm)) => vm,
        Err(answer) => return answer,
    };
    let command = BackupCommand::SetSchedule {
        vm: vm.value.id.clone(),
        schedule,
    };
    write(&state, backup(command)).await
}

/// Who asks, for the record: an account's name.
fn asker(caller: &Caller) -> Option<String> {
    match caller {
        Caller::Account { name, .. } => Some(name.clone()),
        _ => None,
    }
}

async fn restore(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
    body: Result<Body<RestoreBackup>, BodyRejection>,
) -> Response {
    let asked = match body {
        Ok(Body(asked)) => asked,
        Err(rejection) => return bad_body(rejection),
    };
    let vm = match super::vms::read_vm(&state, &key).await {
        Ok((_, vm)) => vm,
        Err(answer) => return answer,
    };
    let command = match asked.into {
        Some(name) => BackupCommand::RestoreInto {
            vm: vm.value.id.clone(),
            snapshot: asked.snapshot,
            name,
        },
        None => BackupCommand::Restore {
            vm: vm.value.id.clone(),
            snapshot: asked.snapshot,
            by: asker(&caller),
        },
    };
    write(&state, backup(command)).await
}

/// Ends a VM's restore before its disk was swapped (its owner or an admin).
async fn abort_restore(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
) -> Response {
    let vm = match super::vms::read_vm(&state, &key).await {
        Ok((_, vm)) => vm,
        Err(answer) => return answer,
    };
    let command = BackupCommand::AbortRestore {
        vm: vm.value.id.clone(),
        by: asker(&caller),
    };
    write(&state, backup(command)).await
}

/// `hearth restore`: a new, empty cluster takes a backup of another's state (admins; the
/// node's own token on a new cluster). With `check`, only whether it may.
async fn restore_state(
    State(state): State<ApiState>,
    body: Result<Body<StateRestore>, BodyRejection>,
) -> Response {
    let restore = match body {
        Ok(Body(restore)) => restore,
        Err(rejection) => return bad_body(rejection),
    };
    if restore.check {
        let params = Params {
            consistent: Some("true".into()),
            ..Params::default()
        };
        return match read(&state, &params).await {
            Ok(desired) => match hearth_state::model::restore::occupied(&desired) {
                here if here.is_empty() => {
                    Json(serde_json::json!({ "empty": true })).into_response()
                }
                here => error(
                    StatusCode::CONFLICT,
                    &format!(
                        "this cluster already holds {}: `hearth restore` fills only a new, empty cluster",
                        here.join(", ")
                    ),
                ),
            },
            Err(failure) => failure.into_response(),
        };
    }
    let command = Command::RestoreState {
        restore: Box::new(restore),
    };
    write(&state, command).await
}

/// Admins: the desired state's own backups, per target.
async fn state_backups(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => {
            let rows: Vec<StateBackupRow> = (desired.backups.targets.keys())
                .map(|target| StateBackupRow {
                    target: target.clone(),
                    backups: (desired.backups.state.get(target).cloned()).unwrap_or_default(),
                })
                .collect();
            Json(rows).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

async fn targets(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => {
            let list: Vec<&Versioned<BackupTarget>> = desired.backups.targets.values().collect();
            Json(list).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

async fn target(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    match read(&state, &Params::default()).await {
        Ok(desired) => match desired.backups.targets.get(&name) {
            Some(target) => Json(target).into_response(),
            None => error(
                StatusCode::NOT_FOUND,
                &format!("target: no backup target {name}"),
            ),
        },
        Err(failure) => failure.into_response(),
    }
}

async fn put_target(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
    body: Result<Body<PutBackupTarget>, BodyRejection>,
) -> Response {
    let target = match body {
        Ok(Body(put)) => BackupTarget {
            name,
            location: put.location,
            password_file: put.password_file,
            env_file: put.env_file,
        },
        Err(rejection) => return bad_body(rejection),
    };
    if let Err(message) = target.validate() {
        return error(StatusCode::BAD_REQUEST, &message);
    }
    make_repository(&state, &target).await;
    let expect = expect_from(&params);
    write(&state, backup(BackupCommand::PutTarget { target, expect })).await
}

/// Makes `target`'s repository here, once, before any node learns of the target: restic's
/// `init` is not atomic, and two nodes making one fresh repository at once (a worker's first
/// backup and the leader's state backup, say) can leave it unreadable to both. A node that
/// cannot make it (its password file is not here, say) leaves it to the first run.
async fn make_repository(state: &ApiState, target: &BackupTarget) {
    let made = match hearth_compute::backup_runs::repo_of(target, &state.vms_dir) {
        Ok(repo) => repo.ensure().await,
        Err(error) => Err(error),
    };
    if let Err(error) = made {
        tracing::info!(target = %target.name, %error, "the backup repository is left to be made by its first run");
    }
}

async fn remove_target(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
) -> Response {
    let expect = expect_from(&params);
    write(&state, backup(BackupCommand::RemoveTarget { name, expect })).await
}
