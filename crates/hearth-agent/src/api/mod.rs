//! The JSON API under `/v1/`, one file per resource. This file composes their routes behind the
//! token check (`guard`); `context` holds what every handler shares; `openapi` describes them
//! all. `crate::http` serves this router beside the web panel and `/metrics`.

pub mod accounts;
pub mod announce;
pub mod audit;
pub mod backups;
pub mod billing;
pub mod body;
pub mod cluster_services;
pub mod console;
pub mod context;
pub mod drift;
mod guard;
pub mod hosts;
pub mod images;
pub mod me;
pub mod members;
pub mod nodes;
pub mod notices;
pub mod openapi;
pub mod plans;
pub mod pools;
pub mod records;
pub mod signup;
pub mod state;
pub mod tokens;
pub mod vms;
pub mod zones;

use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router, middleware};

pub use context::{ApiState, error, unix_now};

/// Every `/v1/` endpoint, with `state`. All but the OpenAPI document need a token.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .merge(members::routes())
        .merge(audit::routes())
        .merge(state::routes())
        .merge(records::routes())
        .merge(cluster_services::routes())
        .merge(notices::routes())
        .merge(nodes::routes())
        .merge(images::routes())
        .merge(pools::routes())
        .merge(plans::routes())
        .merge(billing::routes())
        .merge(vms::routes())
        .merge(hosts::routes())
        .merge(drift::routes())
        .merge(accounts::routes())
        .merge(signup::routes())
        .merge(zones::routes())
        .merge(backups::routes())
        .merge(tokens::routes())
        .merge(me::routes())
        .merge(announce::routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            guard::require_token,
        ))
        .route("/v1/openapi.json", get(openapi))
        .with_state(state)
}

async fn openapi() -> Response {
    Json(openapi::document()).into_response()
}
