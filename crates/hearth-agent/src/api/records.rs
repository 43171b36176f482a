//! `/v1/records`: static DNS records in the desired state.

use super::body::{Body, BodyRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use hearth_state::model::Command;
use hearth_types::desired::record_key;

use hearth_types::api::PutRecords;

use super::context::{ApiState, Params, bad_body, expect_from, read, write};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/records", get(list_records).put(put_records))
        .route("/v1/records/{name}/{kind}", delete(remove_records))
}

async fn list_records(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => Json(&desired.records).into_response(),
        Err(failure) => failure.into_response(),
    }
}

async fn put_records(
    State(state): State<ApiState>,
    body: Result<Body<PutRecords>, BodyRejection>,
) -> Response {
    match body {
        Ok(Body(PutRecords { records, expect })) => {
            write(&state, Command::PutRecords { records, expect }).await
        }
        Err(rejection) => bad_body(rejection),
    }
}

async fn remove_records(
    State(state): State<ApiState>,
    Path((name, kind)): Path<(String, String)>,
    Query(params): Query<Params>,
) -> Response {
    let key = record_key(&name, &kind);
    write(
        &state,
        Command::RemoveRecords {
            key,
            expect: expect_from(&params),
        },
    )
    .await
}
