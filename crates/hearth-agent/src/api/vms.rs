//! `/v1/vms`: members' VMs: create, list, show, start, stop, reboot, recreate, IO limits,
//! moves to another host, delete, and the serial console.

use std::sync::Arc;

use super::body::{Body, BodyRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use hearth_compute::placement::shown_phase;
use hearth_state::model::{ComputeCommand, Expect};
use hearth_types::compute::{Phase, Power, Vm, VmRequest};
use hearth_types::desired::DesiredState;
use serde::Deserialize;

use hearth_types::api::{ConsoleText, MigrateVm, Recreate, SetIo, VmRow, VmStats};

use super::context::{
    ApiState, Params, bad_body, compute, error, expect_from, first_unknown, read, write,
};
use crate::auth::Caller;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/vms", get(list_vms).post(create_vm))
        .route("/v1/vms/{vm}", get(show_vm).delete(delete_vm))
        .route("/v1/vms/{vm}/start", post(start_vm))
        .route("/v1/vms/{vm}/stop", post(stop_vm))
        .route("/v1/vms/{vm}/reboot", post(reboot_vm))
        .route("/v1/vms/{vm}/recreate", post(recreate_vm))
        .route("/v1/vms/{vm}/io", put(set_io))
        .route("/v1/vms/{vm}/owner", post(set_owner))
        .route("/v1/vms/{vm}/migrate", post(migrate_vm))
        .route("/v1/vms/{vm}/migration", delete(cancel_migration))
        .route("/v1/vms/{vm}/console", get(console))
        .route("/v1/vms/{vm}/console/attach", get(super::console::attach))
        .route("/v1/vms/{vm}/stats", get(stats))
}

fn vm_row(
    state: &ApiState,
    desired: &DesiredState,
    vm: &hearth_types::desired::Versioned<Vm>,
) -> VmRow {
    let view = state.membership.views().borrow().clone();
    VmRow {
        version: vm.version,
        vm: vm.value.clone(),
        shown_phase: shown_phase(&vm.value, &desired.compute, &view),
    }
}

/// `?owner=NAME` lists only that member's VMs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmParams {
    #[serde(default)]
    consistent: Option<String>,
    #[serde(default)]
    owner: Option<String>,
}

async fn list_vms(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Query(params): Query<VmParams>,
) -> Response {
    // A member sees only their own VMs, whatever `?owner` says.
    let only = caller
        .as_ref()
        .and_then(|c| c.only_owner().map(str::to_owned));
    let read_params = Params {
        consistent: params.consistent.clone(),
        version: None,
    };
    match read(&state, &read_params).await {
        Ok(desired) => {
            let rows: Vec<VmRow> = desired
                .compute
                .vms
                .values()
                .filter(|vm| {
                    params
                        .owner
                        .as_ref()
                        .is_none_or(|o| *o == vm.value.request.owner)
                        && only.as_ref().is_none_or(|o| *o == vm.value.request.owner)
                })
                .map(|vm| vm_row(&state, &desired, vm))
                .collect();
            Json(rows).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

async fn create_vm(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    body: Result<Body<VmRequest>, BodyRejection>,
) -> Response {
    match body {
        Ok(Body(request)) => {
            if let Some(owner) = caller.as_ref().and_then(|c| c.only_owner())
                && request.owner != owner
            {
                return error(
                    StatusCode::FORBIDDEN,
                    &format!("owner: a member creates VMs for themselves ({owner})"),
                );
            }
            if let Err(message) = request.validate() {
                return error(StatusCode::BAD_REQUEST, &message);
            }
            let desired = match read(&state, &Params::default()).await {
                Ok(desired) => desired,
                Err(failure) => return failure.into_response(),
            };
            let refs = [
                ("owner", "account", request.owner.as_str()),
                ("image", "image", request.image.as_str()),
            ];
            let pools = request.pools.iter().map(|p| ("pools", "pool", p.as_str()));
            if let Some(missing) = first_unknown(&desired, refs.into_iter().chain(pools)) {
                return missing;
            }
            write(&state, compute(ComputeCommand::CreateVm { request })).await
        }
        Err(rejection) => bad_body(rejection),
    }
}

async fn show_vm(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    Query(params): Query<Params>,
) -> Response {
    match read(&state, &params).await {
        Ok(desired) => match desired.compute.find_vm(&key) {
            Some(vm) => Json(vm_row(&state, &desired, vm)).into_response(),
            None => error(
                StatusCode::NOT_FOUND,
                &format!("vm: no VM with id or name {key}"),
            ),
        },
        Err(failure) => failure.into_response(),
    }
}

/// The local state and the VM in it, by id or name; the error answer when there is none.
pub(super) async fn read_vm(
    state: &ApiState,
    key: &str,
) -> Result<(Arc<DesiredState>, hearth_types::desired::Versioned<Vm>), Response> {
    let desired = read(state, &Params::default())
        .await
        .map_err(IntoResponse::into_response)?;
    let vm = desired.compute.find_vm(key).cloned().ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            &format!("vm: no VM with id or name {key}"),
        )
    })?;
    Ok((desired, vm))
}

/// Looks the VM up in the local state, then writes the command built from its id.
async fn vm_write(
    state: &ApiState,
    key: &str,
    build: impl FnOnce(String) -> ComputeCommand,
) -> Response {
    let desired: Arc<DesiredState> = match read(state, &Params::default()).await {
        Ok(desired) => desired,
        Err(failure) => return failure.into_response(),
    };
    // The VM is looked up by id or by name.
    match desired.compute.find_vm(key) {
        Some(vm) => write(state, compute(build(vm.value.id.clone()))).await,
        None => error(
            StatusCode::NOT_FOUND,
            &format!("vm: no VM with id or name {key}"),
        ),
    }
}

async fn delete_vm(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    Query(params): Query<Params>,
) -> Response {
    let expect = expect_from(&params);
    vm_write(&state, &key, |vm| ComputeCommand::DeleteVm { vm, expect }).await
}

async fn start_vm(State(state): State<ApiState>, Path(key): Path<String>) -> Response {
    vm_write(&state, &key, |vm| ComputeCommand::SetPower {
        vm,
        power: Power::Running,
        expect: Expect::Any,
    })
    .await
}

async fn stop_vm(State(state): State<ApiState>, Path(key): Path<String>) -> Response {
    vm_write(&state, &key, |vm| ComputeCommand::SetPower {
        vm,
        power: Power::Stopped,
        expect: Expect::Any,
    })
    .await
}

async fn reboot_vm(State(state): State<ApiState>, Path(key): Path<String>) -> Response {
    vm_write(&state, &key, |vm| ComputeCommand::Reboot {
        vm,
        expect: Expect::Any,
    })
    .await
}

/// An admin gives a VM to another account (`hearth vm reassign NAME --owner M`), within
/// that account's quota: the way to remove an account whose VMs should live on.
async fn set_owner(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    body: Result<Body<hearth_types::api::SetOwner>, BodyRejection>,
) -> Response {
    let owner = match body {
        Ok(Body(body)) => body.owner,
        Err(rejection) => return bad_body(rejection),
    };
    match read(&state, &Params::default()).await {
        Ok(desired) => {
            if let Some(missing) = first_unknown(&desired, [("owner", "account", &*owner)]) {
                return missing;
            }
        }
        Err(failure) => return failure.into_response(),
    }
    vm_write(&state, &key, |vm| ComputeCommand::SetOwner {
        vm,
        owner,
        expect: Expect::Any,
    })
    .await
}

/// An admin gives up a VM's lost disk (`hearth vm recreate NAME --empty-disk`).
async fn recreate_vm(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    body: Result<Body<Recreate>, BodyRejection>,
) -> Response {
    match body {
        Ok(Body(Recreate { empty_disk: true })) => {
            vm_write(&state, &key, |vm| ComputeCommand::Recreate {
                vm,
                expect: Expect::Any,
            })
            .await
        }
        Ok(_) => error(
            StatusCode::BAD_REQUEST,
            "empty_disk: must be true; recreate starts the VM over on an empty disk, and its old data is given up",
        ),
        Err(rejection) => bad_body(rejection),
    }
}

/// An admin moves a VM and its disk to another host (`hearth vm migrate NAME [--cold]`):
/// live when it runs and both hosts can, cold when asked or when it does not run. The target
/// is checked here against the view and every host's room; the command checks the rest (the
/// disk is at its host, no move under way) again where it is applied.
async fn migrate_vm(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    body: Result<Body<MigrateVm>, BodyRejection>,
) -> Response {
    let request = match body {
        Ok(Body(request)) => request,
        Err(rejection) => return bad_body(rejection),
    };
    let (desired, vm) = match read_vm(&state, &key).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let vm = &vm;
    let view = state.membership.views().borrow().clone();
    let to = match hearth_compute::placement::move_target(
        &desired,
        &view,
        &vm.value,
        request.to.as_deref(),
    ) {
        Ok(to) => to,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let running = vm.value.phase == Phase::Running;
    let live = !request.cold && running;
    if live && !hearth_compute::placement::can_move_live(&desired.compute, &vm.value, &to) {
        let message = format!(
            "cold: {} cannot move live from {} to {to} (a host's driver cannot move running VMs); ask for a cold move (hearth vm migrate {} --cold), which shuts it down for the copy",
            vm.value.request.name,
            vm.value.host.as_deref().unwrap_or("its host"),
            vm.value.request.name
        );
        return error(StatusCode::CONFLICT, &message);
    }
    let command = ComputeCommand::Migrate {
        vm: vm.value.id.clone(),
        to,
        live,
        expect: Expect::Any,
    };
    write(&state, compute(command)).await
}

/// An admin gives a move up; the VM runs where it was.
async fn cancel_migration(State(state): State<ApiState>, Path(key): Path<String>) -> Response {
    vm_write(&state, &key, |vm| ComputeCommand::AbortMigration {
        vm,
        why: "given up by an admin".into(),
    })
    .await
}

async fn set_io(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    body: Result<Body<SetIo>, BodyRejection>,
) -> Response {
    match body {
        Ok(Body(SetIo { io })) => {
            vm_write(&state, &key, |vm| ComputeCommand::SetIo {
                vm,
                io,
                expect: Expect::Any,
            })
            .await
        }
        Err(rejection) => bad_body(rejection),
    }
}

/// `?offset=N`: the console log from byte N (default: the last 64 KiB).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleParams {
    #[serde(default)]
    offset: Option<u64>,
}

/// The VM `key` names, its host, and whether that is this node; or the answer saying why
/// it has no `what` (404 for no such VM, 409 while it is not placed).
pub(crate) async fn placed(
    state: &ApiState,
    key: &str,
    what: &str,
) -> Result<(Vm, String, bool), Response> {
    let (_, vm) = read_vm(state, key).await?;
    let Some(host) = vm.value.host.clone() else {
        return Err(error(
            StatusCode::CONFLICT,
            &format!("vm: {key} is not placed on a host yet, so it has no {what}"),
        ));
    };
    let here = host == state.membership.views().borrow().self_name;
    Ok((vm.value, host, here))
}

/// A part of the VM's serial console log: read here when this node is its host, else asked
/// of the host over the encrypted cluster RPC.
async fn console(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    Query(params): Query<ConsoleParams>,
) -> Response {
    let (vm, host, here) = match placed(&state, &key, "console").await {
        Ok(placed) => placed,
        Err(answer) => return answer,
    };
    let id = vm.id.clone();
    let chunk = if here {
        hearth_compute::files::read_console(&state.vms_dir, &id, params.offset)
            .await
            .map_err(|e| e.to_string())
    } else if let Some(node) = &state.state {
        node.console(&host, &id, params.offset)
            .await
            .map_err(|e| e.to_string())
    } else {
        Err("this node holds no state".to_owned())
    };
    match chunk {
        Ok(chunk) => Json(ConsoleText {
            vm: id,
            host,
            offset: chunk.offset,
            next: chunk.next,
            total: chunk.total,
            text: chunk.text,
        })
        .into_response(),
        Err(message) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("console of {key} on {host}: {message}"),
        ),
    }
}

/// The VM's recent load: read here when this node is its host, else asked of the host over
/// the encrypted cluster RPC.
async fn stats(State(state): State<ApiState>, Path(key): Path<String>) -> Response {
    let (vm, host, here) = match placed(&state, &key, "load").await {
        Ok(placed) => placed,
        Err(answer) => return answer,
    };
    let id = vm.id.clone();
    let history = if here {
        hearth_compute::files::read_vm_stats(&state.vms_dir, &id)
            .await
            .map_err(|e| e.to_string())
    } else if let Some(node) = &state.state {
        node.vm_stats(&host, &id).await.map_err(|e| e.to_string())
    } else {
        Err("this node holds no state".to_owned())
    };
    match history {
        Ok(history) => Json(VmStats {
            vm: id,
            host,
            vcpus: vm.request.vcpus,
            day: history.day,
            week: history.week,
        })
        .into_response(),
        Err(message) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("load of {key} on {host}: {message}"),
        ),
    }
}
