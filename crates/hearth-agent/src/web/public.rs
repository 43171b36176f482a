//! The public status page, `/status` and `/status.json`: no token, and built from this node's
//! own gossip view and its own copy of the notices, so it answers while Raft has no quorum.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::api::ApiState;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/status", get(status_page))
        .route("/status.json", get(status_json))
}

/// The status from this node's own view and its own copy of the notices: never waits on
/// another node.
fn local_status(state: &ApiState) -> hearth_types::status::Status {
    let view = state.membership.views().borrow().clone();
    let desired = state
        .state
        .as_ref()
        .map(|node| node.reader().current())
        .unwrap_or_default();
    let notices: Vec<_> = desired.notices.values().map(|n| &n.value).collect();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    super::status::status(
        &view,
        super::status::History {
            notices: &notices,
            uptime: &desired.uptime,
            now_ms,
        },
    )
}

async fn status_page(State(state): State<ApiState>) -> Response {
    let html = super::status::render(&local_status(&state));
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

async fn status_json(State(state): State<ApiState>) -> Response {
    Json(local_status(&state)).into_response()
}
