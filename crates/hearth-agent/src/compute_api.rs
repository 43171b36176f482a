//! The `/v1/` endpoints of compute: base images (and the upload of their files), IP pools,
//! VMs, worker hosts with fencing, and drift. Writes go through Raft like every desired-state
//! change; reads are local unless `?consistent`.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};

use crate::auth::Caller;
use futures_util::StreamExt;
use hearth_state::model::{Command, ComputeCommand, Expect};
use hearth_types::compute::{Image, IoLimits, IpPool, Phase, Power, Vm, VmRequest};
use hearth_types::desired::DesiredState;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::{ApiState, error};
use crate::state_api::{Params, bad_body, expect_from, read, write, write_noting};
use hearth_compute::placement::{HostLiveness, liveness, lost_drift, shown_phase};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/images", get(list_images).put(put_image))
        .route("/v1/images/{name}", delete(remove_image))
        .route(
            "/v1/blobs/{sha256}",
            put(upload_blob).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/pools", get(list_pools).put(put_pool))
        .route("/v1/pools/{name}", delete(remove_pool))
        .route("/v1/vms", get(list_vms).post(create_vm))
        .route("/v1/vms/{vm}", get(show_vm).delete(delete_vm))
        .route("/v1/vms/{vm}/start", post(start_vm))
        .route("/v1/vms/{vm}/stop", post(stop_vm))
        .route("/v1/vms/{vm}/reboot", post(reboot_vm))
        .route("/v1/vms/{vm}/recreate", post(recreate_vm))
        .route("/v1/vms/{vm}/io", put(set_io))
        .route("/v1/vms/{vm}/console", get(console))
        .route("/v1/hosts", get(list_hosts))
        .route("/v1/nodes/{name}/fence", post(fence))
        .route("/v1/nodes/{name}/unfence", post(unfence))
        .route("/v1/drift", get(list_drift))
        .route("/v1/drift/{host}/{kind}/{vm}/fix", post(fix_drift))
}

fn compute(command: ComputeCommand) -> Command {
    Command::Compute { command }
}

/// A VM as the API shows it: the desired object, with the phase read against the local
/// gossip view (a VM on a host that is not up is `lost`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct VmRow {
    pub version: u64,
    #[serde(flatten)]
    pub vm: Vm,
    /// Overrides the stored phase.
    pub shown_phase: Phase,
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

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutImage {
    pub(crate) image: Image,
    #[serde(default)]
    pub(crate) expect: Expect,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutPool {
    pub(crate) pool: IpPool,
    #[serde(default)]
    pub(crate) expect: Expect,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetIo {
    pub(crate) io: IoLimits,
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

async fn list_images(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => Json(&desired.compute.images).into_response(),
        Err(failure) => failure.into_response(),
    }
}

async fn put_image(
    State(state): State<ApiState>,
    body: Result<Json<PutImage>, JsonRejection>,
) -> Response {
    let Json(PutImage { image, expect }) = match body {
        Ok(body) => body,
        Err(rejection) => return bad_body(rejection),
    };
    // The files must be here first, so that a worker can always find a copy.
    if let Some(missing) = image.blobs().find(|b| !state.blobs.has(&b.sha256)) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "sha256: no file with sha256 {} was uploaded to this node; PUT it to /v1/blobs/{} first",
                missing.sha256, missing.sha256
            ),
        );
    }
    write(&state, compute(ComputeCommand::PutImage { image, expect })).await
}

async fn remove_image(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
) -> Response {
    let expect = expect_from(&params);
    write(
        &state,
        compute(ComputeCommand::RemoveImage { name, expect }),
    )
    .await
}

/// Streams the body into the local image store; it gets its name only if its sha256 matches.
async fn upload_blob(
    State(state): State<ApiState>,
    Path(sha256): Path<String>,
    body: axum::body::Body,
) -> Response {
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "sha256: give 64 lowercase hex digits",
        );
    }
    if state.blobs.has(&sha256) {
        // Read the body to its end all the same: a client still sending it would otherwise
        // see its connection reset (a new version of an image re-sends its kernel, say).
        let mut stream = body.into_data_stream();
        while let Some(Ok(_)) = stream.next().await {}
        return (
            StatusCode::OK,
            Json(serde_json::json!({ "sha256": sha256, "stored": "already" })),
        )
            .into_response();
    }
    let mut writer = match state.blobs.writer(&sha256) {
        Ok(writer) => writer,
        Err(failure) => return error(StatusCode::INTERNAL_SERVER_ERROR, &failure.to_string()),
    };
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let result = match chunk {
            Ok(bytes) => writer.write(&bytes).map_err(|e| e.to_string()),
            Err(e) => Err(format!("the upload broke off: {e}")),
        };
        if let Err(message) = result {
            writer.abort();
            return error(StatusCode::BAD_REQUEST, &message);
        }
    }
    let size = writer.written();
    match writer.finish() {
        Ok(_) => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "sha256": sha256, "size_bytes": size })),
        )
            .into_response(),
        Err(failure) => error(StatusCode::BAD_REQUEST, &format!("body: {failure}")),
    }
}

async fn list_pools(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => {
            let pools: Vec<_> = desired
                .compute
                .pools
                .values()
                .map(|p| {
                    let used = desired.compute.used_addresses(&p.value.name);
                    serde_json::json!({
                        "version": p.version,
                        "pool": p.value,
                        "used": used,
                    })
                })
                .collect();
            Json(pools).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

async fn put_pool(
    State(state): State<ApiState>,
    body: Result<Json<PutPool>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(PutPool { pool, expect })) => {
            write(&state, compute(ComputeCommand::PutPool { pool, expect })).await
        }
        Err(rejection) => bad_body(rejection),
    }
}

async fn remove_pool(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
) -> Response {
    let expect = expect_from(&params);
    write(&state, compute(ComputeCommand::RemovePool { name, expect })).await
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
    body: Result<Json<VmRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(request)) => {
            if let Some(owner) = caller.as_ref().and_then(|c| c.only_owner())
                && request.owner != owner
            {
                return error(
                    StatusCode::FORBIDDEN,
                    &format!("owner: a member creates VMs for themselves ({owner})"),
                );
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

/// The body of `POST /v1/vms/{vm}/recreate`: the caller must say, in so many words, that
/// the VM starts over on an empty disk.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Recreate {
    /// Must be true: the VM's old disk is given up, and it starts on an empty one.
    pub(crate) empty_disk: bool,
}

/// An admin gives up a VM's lost disk (`hearth vm recreate NAME --empty-disk`).
async fn recreate_vm(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    body: Result<Json<Recreate>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(Recreate { empty_disk: true })) => {
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

/// `?destroy=true` on a fix: remove the files of a VM that no longer exists instead of
/// archiving them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixParams {
    #[serde(default)]
    destroy: Option<bool>,
}

/// Applies a drift entry's proposed fix (the entry's id is `host/kind/vm`).
async fn fix_drift(
    State(state): State<ApiState>,
    Path((host, kind, vm)): Path<(String, String, String)>,
    Query(params): Query<FixParams>,
) -> Response {
    let id = format!("{host}/{kind}/{vm}");
    // An entry of a VM whose host is away has no one-click fix: say what to do instead.
    if let Ok(desired) = read(&state, &Params::default()).await
        && !desired.compute.drift.values().flatten().any(|d| d.id == id)
    {
        let view = state.membership.views().borrow().clone();
        if let Some(entry) = lost_drift(&desired.compute, &view)
            .into_iter()
            .find(|d| d.id == id)
        {
            return error(
                StatusCode::CONFLICT,
                &format!("id: {}; {}", entry.detail, entry.fix),
            );
        }
    }
    let destroy = params.destroy.unwrap_or(false);
    write(&state, compute(ComputeCommand::Fix { id, destroy })).await
}

async fn set_io(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    body: Result<Json<SetIo>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(SetIo { io })) => {
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

/// A part of the VM's serial console log: read here when this node is its host, else asked
/// of the host over the encrypted cluster RPC.
async fn console(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    Query(params): Query<ConsoleParams>,
) -> Response {
    let desired = match read(&state, &Params::default()).await {
        Ok(desired) => desired,
        Err(failure) => return failure.into_response(),
    };
    let Some(vm) = desired.compute.find_vm(&key) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("vm: no VM with id or name {key}"),
        );
    };
    let id = vm.value.id.clone();
    let me = state.membership.views().borrow().self_name.clone();
    let Some(host) = vm.value.host.clone() else {
        return error(
            StatusCode::CONFLICT,
            &format!("vm: {key} is not placed on a host yet, so it has no console"),
        );
    };
    let chunk = if host == me {
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
        Ok(chunk) => Json(serde_json::json!({
            "vm": id,
            "host": host,
            "offset": chunk.offset,
            "next": chunk.next,
            "total": chunk.total,
            "text": chunk.text,
        }))
        .into_response(),
        Err(message) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("console of {key} on {host}: {message}"),
        ),
    }
}

async fn list_hosts(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => {
            let view = state.membership.views().borrow().clone();
            let rows: Vec<_> = desired
                .compute
                .hosts
                .iter()
                .map(|(name, host)| {
                    let vms = desired
                        .compute
                        .vms
                        .values()
                        .filter(|vm| vm.value.host.as_deref() == Some(name.as_str()))
                        .count();
                    serde_json::json!({
                        "name": name,
                        "capacity": host.capacity,
                        "fenced": host.fenced,
                        "state": view.members.get(name).map(|m| m.state.as_str()),
                        "vms": vms,
                    })
                })
                .collect();
            Json(rows).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

/// `?force=true` fences a host that gossip still sees up.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FenceParams {
    #[serde(default)]
    force: Option<bool>,
}

/// An operator confirms a host is powered off. Refused while this node's gossip sees it alive
/// or suspect (its VMs may run there), unless forced; a forced fence names the VMs at risk.
async fn fence(
    State(state): State<ApiState>,
    Path(host): Path<String>,
    Query(params): Query<FenceParams>,
) -> Response {
    let desired = match read(&state, &Params::default()).await {
        Ok(desired) => desired,
        Err(failure) => return failure.into_response(),
    };
    let view = state.membership.views().borrow().clone();
    let up = liveness(&desired.compute, &view, &host) == HostLiveness::Up;
    let at_risk: Vec<String> = desired
        .compute
        .vms
        .values()
        .filter(|vm| vm.value.host.as_deref() == Some(host.as_str()))
        .map(|vm| vm.value.request.name.clone())
        .collect();
    let vms = if at_risk.is_empty() {
        "none".to_owned()
    } else {
        at_risk.join(", ")
    };
    if up && !params.force.unwrap_or(false) {
        let state_name = view.members.get(&host).map_or("up", |m| m.state.as_str());
        return error(
            StatusCode::CONFLICT,
            &format!(
                "name: {host} is {state_name} in gossip, so it is not off; fencing it could run its VMs twice (VMs on it: {vms}). Power it off first, or force the fence (`--force`, `?force=true`) if you know it is off"
            ),
        );
    }
    let mut notes = serde_json::Map::new();
    if up {
        tracing::warn!(%host, vms = ?at_risk, "fencing a host that gossip sees up (forced)");
        notes.insert(
            "warning".into(),
            format!("{host} was up in gossip when it was fenced; if it is not really off, these VMs may run twice: {vms}").into(),
        );
        notes.insert("at_risk".into(), at_risk.into());
    }
    write_noting(
        &state,
        compute(ComputeCommand::Fence { host, fenced: true }),
        notes,
    )
    .await
}

async fn unfence(State(state): State<ApiState>, Path(host): Path<String>) -> Response {
    write(
        &state,
        compute(ComputeCommand::Fence {
            host,
            fenced: false,
        }),
    )
    .await
}

async fn list_drift(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => {
            // Hosts' own reports, and the entries of VMs whose host is away (from this node's
            // gossip view; an away host reports nothing).
            let view = state.membership.views().borrow().clone();
            let mut all: Vec<_> = desired.compute.drift.values().flatten().cloned().collect();
            for entry in lost_drift(&desired.compute, &view) {
                if !all.iter().any(|d| d.id == entry.id) {
                    all.push(entry);
                }
            }
            all.sort();
            Json(all).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}
