//! `/v1/members`, `/v1/services` and `/v1/leave`: this node's own gossip view, and leaving.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::context::ApiState;
use hearth_types::{MemberRow, ServiceRow};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/members", get(members))
        .route("/v1/services", get(services))
        .route("/v1/leave", post(leave))
}

async fn members(State(state): State<ApiState>) -> Json<Vec<MemberRow>> {
    Json(state.membership.views().borrow().member_rows())
}

async fn services(State(state): State<ApiState>) -> Json<Vec<ServiceRow>> {
    Json(state.membership.views().borrow().service_rows())
}

async fn leave(State(state): State<ApiState>) -> Json<serde_json::Value> {
    state.membership.leave().await;
    state.shutdown.cancel();
    Json(serde_json::json!({ "left": true }))
}
