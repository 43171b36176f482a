//! `/v1/accounts`: members and admins (admins only).

use super::body::{Body, BodyRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use hearth_state::model::{Command, Expect};
use hearth_types::account::Account;

use hearth_types::api::{AccountRow, NewAccount};

use super::context::{ApiState, Params, bad_body, error, hash_password, read, write};
use crate::auth::{self};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/accounts", get(list_accounts).post(create_account))
        .route("/v1/accounts/{name}", delete(remove_account))
}

async fn list_accounts(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => {
            let rows: Vec<_> = desired
                .accounts
                .values()
                .map(|a| AccountRow::with_quota(&a.value, a.version, &desired))
                .collect();
            Json(rows).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

async fn create_account(
    State(state): State<ApiState>,
    body: Result<Body<NewAccount>, BodyRejection>,
) -> Response {
    let new = match body {
        Ok(Body(new)) => new,
        Err(rejection) => return bad_body(rejection),
    };
    if new.password.chars().count() < auth::MIN_PASSWORD {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("password: at least {} characters", auth::MIN_PASSWORD),
        );
    }
    let hash = match hash_password(&state, new.password).await {
        Ok(hash) => hash,
        Err(failure) => return failure,
    };
    let account = Account {
        name: new.name,
        role: new.role,
        email: new.email,
        password_hash: hash,
        ssh_keys: Default::default(),
        disabled: false,
        plan: None,
        quota: Default::default(),
        unverified: false,
        awaiting_approval: false,
    };
    write(
        &state,
        Command::PutAccount {
            account,
            expect: Expect::Absent,
            revoke_tokens: false,
        },
    )
    .await
}

async fn remove_account(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    write(
        &state,
        Command::RemoveAccount {
            name,
            expect: Expect::Any,
        },
    )
    .await
}
