//! `/v1/drift`: where what runs differs from what should, and the one-click fixes.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hearth_compute::placement::lost_drift;
use hearth_state::model::ComputeCommand;
use serde::Deserialize;

use super::context::{ApiState, Params, compute, error, read, write};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/drift", get(list_drift))
        .route("/v1/drift/{host}/{kind}/{vm}/fix", post(fix_drift))
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
