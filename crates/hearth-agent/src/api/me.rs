//! `/v1/me`: the caller's own account: its SSH keys and its password.

use super::body::{Body, BodyRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use hearth_state::model::{Command, Expect};
use hearth_types::account::{Account, check_ssh_key};

use hearth_types::api::{AccountRow, Key, NewPassword};

use super::context::{
    ApiState, Params, bad_body, error, hash_password, read, verify_password, write,
};
use crate::auth::{self, Caller};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/me", get(me))
        .route("/v1/me/ssh-keys/{name}", put(put_key).delete(remove_key))
        .route("/v1/me/password", post(change_password))
}

/// The caller's own account.
async fn me(State(state): State<ApiState>, Extension(caller): Extension<Caller>) -> Response {
    let desired = match read(&state, &Params::default()).await {
        Ok(desired) => desired,
        Err(failure) => return failure.into_response(),
    };
    match desired.accounts.get(caller.name()) {
        Some(account) if caller != Caller::Root => Json(AccountRow::with_quota(
            &account.value,
            account.version,
            &desired,
        ))
        .into_response(),
        _ => Json(AccountRow::root()).into_response(),
    }
}

/// Changes the caller's own account through `change`, with compare-and-set on its version.
async fn change_me(
    state: &ApiState,
    caller: &Caller,
    revoke_tokens: bool,
    change: impl FnOnce(&mut Account) -> Result<(), String>,
) -> Response {
    let desired = match read(state, &Params::default()).await {
        Ok(desired) => desired,
        Err(failure) => return failure.into_response(),
    };
    let Some(current) = desired
        .accounts
        .get(caller.name())
        .filter(|_| *caller != Caller::Root)
    else {
        return error(
            StatusCode::FORBIDDEN,
            "the node token has no account; use an account's token",
        );
    };
    let mut account = current.value.clone();
    if let Err(message) = change(&mut account) {
        return error(StatusCode::BAD_REQUEST, &message);
    }
    write(
        state,
        Command::PutAccount {
            account,
            expect: Expect::Version(current.version),
            revoke_tokens,
        },
    )
    .await
}

async fn put_key(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Result<Body<Key>, BodyRejection>,
) -> Response {
    let key = match body {
        Ok(Body(Key { key })) => key,
        Err(rejection) => return bad_body(rejection),
    };
    if let Err(message) = check_ssh_key(&key) {
        return error(StatusCode::BAD_REQUEST, &message);
    }
    change_me(&state, &caller, false, |account| {
        account.ssh_keys.insert(name, key.trim().to_owned());
        Ok(())
    })
    .await
}

async fn remove_key(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    change_me(&state, &caller, false, |account| {
        match account.ssh_keys.remove(&name) {
            Some(_) => Ok(()),
            None => Err(format!("name: no key named {name}")),
        }
    })
    .await
}

/// A new password for the caller, given the current one. It ends the account's web
/// sessions (the panel opens a new one), and its API tokens with `revoke_tokens`.
async fn change_password(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Body<NewPassword>, BodyRejection>,
) -> Response {
    let NewPassword {
        current,
        new,
        revoke_tokens,
    } = match body {
        Ok(Body(body)) => body,
        Err(rejection) => return bad_body(rejection),
    };
    if new.chars().count() < auth::MIN_PASSWORD {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("new: at least {} characters", auth::MIN_PASSWORD),
        );
    }
    let desired = match read(&state, &Params::default()).await {
        Ok(desired) => desired,
        Err(failure) => return failure.into_response(),
    };
    let Some(old_hash) = desired
        .accounts
        .get(caller.name())
        .map(|a| a.value.password_hash.clone())
    else {
        return error(
            StatusCode::FORBIDDEN,
            "the node token has no account; use an account's token",
        );
    };
    if !verify_password(&state, current, old_hash.clone()).await {
        return error(StatusCode::FORBIDDEN, "current: wrong password");
    }
    let hash = match hash_password(&state, new).await {
        Ok(hash) => hash,
        Err(failure) => return failure,
    };
    change_me(&state, &caller, revoke_tokens, move |account| {
        // The version check would catch it too; this names the reason.
        if account.password_hash == old_hash {
            account.password_hash = hash;
            Ok(())
        } else {
            Err("current: the password changed meanwhile; try again".into())
        }
    })
    .await
}
