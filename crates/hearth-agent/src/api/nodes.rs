//! `/v1/nodes/NAME/...`: an admin's hold on a node: drain and undrain (DNS and new VMs keep off
//! it), fence and unfence (its VMs may be started elsewhere), evacuate (its VMs move off).

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use hearth_compute::placement::{HostLiveness, liveness};
use hearth_state::model::{Command, ComputeCommand, Expect};
use serde::Deserialize;

use super::context::{ApiState, Params, compute, error, read, write, write_noting};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/nodes/{name}/drain", post(drain))
        .route("/v1/nodes/{name}/undrain", post(undrain))
        .route("/v1/nodes/{name}/fence", post(fence))
        .route("/v1/nodes/{name}/unfence", post(unfence))
        .route("/v1/nodes/{name}/evacuate", post(evacuate))
        .route("/v1/nodes/{name}/evacuation", delete(stop_evacuation))
}

async fn drain(State(state): State<ApiState>, Path(node): Path<String>) -> Response {
    write(
        &state,
        Command::SetDrain {
            node,
            drained: true,
            expect: Expect::Any,
        },
    )
    .await
}

async fn undrain(State(state): State<ApiState>, Path(node): Path<String>) -> Response {
    write(
        &state,
        Command::SetDrain {
            node,
            drained: false,
            expect: Expect::Any,
        },
    )
    .await
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
    if !desired.compute.hosts.contains_key(&host) {
        return not_a_host(&host);
    }
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

/// Drains the worker and has the leader move its VMs off, one at a time (`hearth node
/// evacuate`). Refused when the other workers cannot hold them all.
async fn evacuate(State(state): State<ApiState>, Path(host): Path<String>) -> Response {
    let desired = match read(&state, &Params::default()).await {
        Ok(desired) => desired,
        Err(failure) => return failure.into_response(),
    };
    if !desired.compute.hosts.contains_key(&host) {
        return not_a_host(&host);
    }
    let view = state.membership.views().borrow().clone();
    if let Err(why) = hearth_compute::placement::evacuation_check(&desired, &view, &host) {
        return error(StatusCode::CONFLICT, &format!("name: {why}"));
    }
    let drain = Command::SetDrain {
        node: host.clone(),
        drained: true,
        expect: Expect::Any,
    };
    let node = match super::context::node_of(&state) {
        Ok(node) => node,
        Err(failure) => return failure.into_response(),
    };
    if let Err(failure) = node.submit(drain).await {
        return super::context::ApiError::State(failure).into_response();
    }
    let command = ComputeCommand::SetEvacuation {
        host,
        evacuation: Some(hearth_types::compute::Evacuation::Moving),
    };
    write(&state, compute(command)).await
}

/// Stops an evacuation: the move under way ends, no other starts; the host stays drained.
async fn stop_evacuation(State(state): State<ApiState>, Path(host): Path<String>) -> Response {
    let command = ComputeCommand::SetEvacuation {
        host,
        evacuation: None,
    };
    write(&state, compute(command)).await
}

/// 404 for a name that is no worker host: a typo must not make one.
fn not_a_host(host: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &format!("name: {host} is not a worker host"),
    )
}

async fn unfence(State(state): State<ApiState>, Path(host): Path<String>) -> Response {
    match read(&state, &Params::default()).await {
        Ok(desired) if !desired.compute.hosts.contains_key(&host) => return not_a_host(&host),
        Ok(_) => {}
        Err(failure) => return failure.into_response(),
    }
    write(
        &state,
        compute(ComputeCommand::Fence {
            host,
            fenced: false,
        }),
    )
    .await
}
