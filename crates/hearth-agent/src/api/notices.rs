//! `/v1/notices`: the status page's notices.

use super::body::{Body, BodyRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use hearth_state::model::Command;

use hearth_types::api::PutNotice;

use super::context::{ApiState, Params, bad_body, expect_from, read, write};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/notices", get(list_notices).put(put_notice))
        .route("/v1/notices/{id}", delete(remove_notice))
}

async fn list_notices(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => Json(&desired.notices).into_response(),
        Err(failure) => failure.into_response(),
    }
}

/// Posts or updates a status-page notice; `posted_at` defaults to now.
async fn put_notice(
    State(state): State<ApiState>,
    body: Result<Body<PutNotice>, BodyRejection>,
) -> Response {
    match body {
        Ok(Body(PutNotice { mut notice, expect })) => {
            if notice.posted_at == 0 {
                notice.posted_at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
            }
            write(&state, Command::PutNotice { notice, expect }).await
        }
        Err(rejection) => bad_body(rejection),
    }
}

async fn remove_notice(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(params): Query<Params>,
) -> Response {
    let expect = expect_from(&params);
    write(&state, Command::RemoveNotice { id, expect }).await
}
