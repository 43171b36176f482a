//! `/v1/state`, `/v1/desired` and `/v1/events`: the Raft group's status, the whole desired
//! state, and the recorded cluster events.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use hearth_types::shared_map::OrdMapExt;

use super::context::{ApiState, Params, node_of, read};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/state", get(status))
        .route("/v1/desired", get(desired))
        .route("/v1/events", get(events))
}

async fn status(State(state): State<ApiState>) -> Response {
    match node_of(&state) {
        Ok(node) => Json(node.cluster_status().await).into_response(),
        Err(failure) => failure.into_response(),
    }
}

async fn desired(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => {
            // Hashes stay inside the cluster, even for admins.
            let mut shown = (*desired).clone();
            shown.accounts.change_each(|_, account| {
                account.value.password_hash = "(hidden)".into();
            });
            shown.tokens.change_each(|_, token| {
                token.value.secret_sha256 = "(hidden)".into();
            });
            Json(shown).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

/// Recent cluster-wide events, newest first, with their delivery state.
async fn events(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => {
            let events: Vec<_> = desired.events.values().rev().collect();
            Json(events).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}
