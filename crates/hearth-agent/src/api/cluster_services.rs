//! `/v1/cluster-services`: services the cluster runs on nodes it picks, in the desired state.

use super::body::{Body, BodyRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use hearth_state::model::Command;

use hearth_types::api::PutService;

use super::context::{ApiState, Params, bad_body, expect_from, read, write};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/cluster-services", get(list_services).put(put_service))
        .route("/v1/cluster-services/{name}", delete(remove_service))
}

async fn list_services(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => Json(&desired.services).into_response(),
        Err(failure) => failure.into_response(),
    }
}

async fn put_service(
    State(state): State<ApiState>,
    body: Result<Body<PutService>, BodyRejection>,
) -> Response {
    match body {
        Ok(Body(PutService { service, expect })) => {
            write(&state, Command::PutService { service, expect }).await
        }
        Err(rejection) => bad_body(rejection),
    }
}

async fn remove_service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
) -> Response {
    write(
        &state,
        Command::RemoveService {
            name,
            expect: expect_from(&params),
        },
    )
    .await
}
