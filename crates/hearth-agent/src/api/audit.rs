//! `/v1/audit`: the last changes made through the API, who made them and how they ended.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::context::{ApiState, error};

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/v1/audit", get(audit_log))
}

async fn audit_log(State(state): State<ApiState>) -> Response {
    match &state.state {
        Some(node) => Json(node.reader().current().audit.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "this node holds no state"),
    }
}
