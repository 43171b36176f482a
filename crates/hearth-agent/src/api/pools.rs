//! `/v1/pools`: the IP pools VMs take their addresses from.

use super::body::{Body, BodyRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use hearth_state::model::ComputeCommand;

use hearth_types::api::{PoolRow, PutPool};

use super::context::{ApiState, Params, bad_body, compute, expect_from, read, write};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/pools", get(list_pools).put(put_pool))
        .route("/v1/pools/{name}", delete(remove_pool))
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
                    PoolRow {
                        version: p.version,
                        pool: p.value.clone(),
                        used,
                    }
                })
                .collect();
            Json(pools).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

async fn put_pool(
    State(state): State<ApiState>,
    body: Result<Body<PutPool>, BodyRejection>,
) -> Response {
    match body {
        Ok(Body(PutPool { pool, expect })) => {
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
