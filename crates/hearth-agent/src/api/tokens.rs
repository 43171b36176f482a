//! `/v1/tokens`: API tokens: made, listed and revoked.

use super::body::{Body, BodyRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use hearth_state::model::Command;
use hearth_types::account::TokenScope;

use hearth_types::api::{CreatedToken, NewToken, TokenRow};

use super::context::{ApiState, Params, bad_body, error, first_unknown, now, read, write};
use crate::auth::{self, Caller};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}", delete(revoke_token))
}

async fn create_token(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Body<NewToken>, BodyRejection>,
) -> Response {
    let new = match body {
        Ok(Body(new)) => new,
        Err(rejection) => return bad_body(rejection),
    };
    let account = match (new.account, &caller) {
        (Some(account), c) if c.is_admin() => account,
        (None, Caller::Account { name, .. }) => name.clone(),
        (None, Caller::Root | Caller::Worker) => {
            return error(
                StatusCode::FORBIDDEN,
                "account: the node token has no account; name one",
            );
        }
        (Some(account), Caller::Account { name, .. }) if account == *name => account,
        (Some(_), _) => {
            return error(
                StatusCode::FORBIDDEN,
                "account: a member makes tokens for themselves only",
            );
        }
    };
    match read(&state, &Params::default()).await {
        Ok(desired) => {
            if let Some(missing) = first_unknown(&desired, [("account", "account", &*account)]) {
                return missing;
            }
        }
        Err(failure) => return failure.into_response(),
    }
    // A token never gets more than the token that made it.
    let scope = match &caller {
        Caller::Account {
            scope: TokenScope::ReadOnly,
            ..
        } => TokenScope::ReadOnly,
        _ => new.scope,
    };
    let now = now();
    let (secret, mut token) = auth::new_token(&account, scope, new.note, now);
    token.expires_at = auth::token_expiry(&caller, new.expires_in_secs, state.max_token_secs, now);
    let id = token.id.clone();
    let response = write(&state, Command::PutToken { token }).await;
    if !response.status().is_success() {
        return response;
    }
    (
        StatusCode::CREATED,
        Json(CreatedToken {
            id,
            account,
            scope,
            token: secret,
        }),
    )
        .into_response()
}

async fn list_tokens(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<Params>,
) -> Response {
    match read(&state, &params).await {
        Ok(desired) => {
            let rows: Vec<_> = desired
                .tokens
                .values()
                .filter(|t| caller.is_admin() || t.value.account == caller.name())
                .map(|t| TokenRow::from(&t.value))
                .collect::<Vec<_>>();
            Json(rows).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

async fn revoke_token(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let desired = match read(&state, &Params::default()).await {
        Ok(desired) => desired,
        Err(failure) => return failure.into_response(),
    };
    let visible = desired
        .tokens
        .get(&id)
        .is_some_and(|t| caller.is_admin() || t.value.account == caller.name());
    if !visible {
        return error(StatusCode::NOT_FOUND, &format!("id: no token {id}"));
    }
    write(&state, Command::RevokeToken { id }).await
}
