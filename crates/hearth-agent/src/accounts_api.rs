//! Accounts, tokens and a member's own SSH keys: `/v1/accounts` (admins), `/v1/tokens`
//! (anyone, for themselves; admins for anyone) and `/v1/me`. Passwords are hashed here, on the
//! node that takes the request; only hashes go through Raft.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use hearth_state::model::{Command, Expect};
use hearth_types::account::{Account, AccountRole, TokenScope, check_ssh_key};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use crate::api::{ApiState, error};
use crate::auth::{self, Caller};
use crate::state_api::{Params, bad_body, read, write};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/accounts", get(list_accounts).post(create_account))
        .route("/v1/accounts/{name}", delete(remove_account))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route("/v1/me", get(me))
        .route("/v1/me/ssh-keys/{name}", put(put_key).delete(remove_key))
        .route("/v1/me/password", post(change_password))
        .route("/v1/announce", post(announce))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Announcement {
    subject: String,
    body: String,
}

/// Emails every member who owns a VM, through this node's `[smtp]` server.
async fn announce(
    State(state): State<ApiState>,
    body: Result<Json<Announcement>, JsonRejection>,
) -> Response {
    let Json(Announcement { subject, body }) = match body {
        Ok(body) => body,
        Err(rejection) => return bad_body(rejection),
    };
    if subject.trim().is_empty() || subject.chars().count() > 200 || subject.contains(['\r', '\n'])
    {
        return error(
            StatusCode::BAD_REQUEST,
            "subject: give 1 to 200 characters on one line",
        );
    }
    if body.trim().is_empty() || body.len() > 64 * 1024 {
        return error(
            StatusCode::BAD_REQUEST,
            "body: give 1 byte to 64 KiB of text",
        );
    }
    let Some(mail) = state.mail.clone() else {
        return error(
            StatusCode::CONFLICT,
            "smtp: this node sends no email; add an [smtp] section (server, from) to its config",
        );
    };
    let desired = match read(&state, &Params::default()).await {
        Ok(desired) => desired,
        Err(failure) => return failure.into_response(),
    };
    let recipients = crate::mail::recipients(&desired);
    let report = crate::mail::announce(&mail, recipients, subject.trim(), &body).await;
    Json(report).into_response()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An account as the API shows it: never the hash.
fn row(account: &Account, version: u64) -> serde_json::Value {
    json!({
        "name": account.name,
        "role": account.role,
        "email": account.email,
        "ssh_keys": account.ssh_keys,
        "disabled": account.disabled,
        "version": version,
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewAccount {
    name: String,
    role: AccountRole,
    #[serde(default)]
    email: String,
    password: String,
}

async fn list_accounts(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => {
            let rows: Vec<_> = desired
                .accounts
                .values()
                .map(|a| row(&a.value, a.version))
                .collect();
            Json(rows).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

async fn create_account(
    State(state): State<ApiState>,
    body: Result<Json<NewAccount>, JsonRejection>,
) -> Response {
    let new = match body {
        Ok(Json(new)) => new,
        Err(rejection) => return bad_body(rejection),
    };
    if new.password.chars().count() < auth::MIN_PASSWORD {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("password: at least {} characters", auth::MIN_PASSWORD),
        );
    }
    let password = new.password;
    let hash = match tokio::task::spawn_blocking(move || auth::hash_password(&password)).await {
        Ok(Ok(hash)) => hash,
        _ => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "hashing the password failed",
            );
        }
    };
    let account = Account {
        name: new.name,
        role: new.role,
        email: new.email,
        password_hash: hash,
        ssh_keys: Default::default(),
        disabled: false,
    };
    write(
        &state,
        Command::PutAccount {
            account,
            expect: Expect::Absent,
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

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewToken {
    /// Admins may make one for another account; default: the caller's.
    #[serde(default)]
    account: Option<String>,
    #[serde(default = "full")]
    scope: TokenScope,
    #[serde(default)]
    note: String,
}

fn full() -> TokenScope {
    TokenScope::Full
}

async fn create_token(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewToken>, JsonRejection>,
) -> Response {
    let new = match body {
        Ok(Json(new)) => new,
        Err(rejection) => return bad_body(rejection),
    };
    let account = match (new.account, &caller) {
        (Some(account), c) if c.is_admin() => account,
        (None, Caller::Account { name, .. }) => name.clone(),
        (None, Caller::Root) => {
            return error(
                StatusCode::BAD_REQUEST,
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
    // A token never gets more than the token that made it.
    let scope = match &caller {
        Caller::Account {
            scope: TokenScope::ReadOnly,
            ..
        } => TokenScope::ReadOnly,
        _ => new.scope,
    };
    let (secret, token) = auth::new_token(&account, scope, new.note, now());
    let id = token.id.clone();
    let response = write(&state, Command::PutToken { token }).await;
    if !response.status().is_success() {
        return response;
    }
    (
        StatusCode::CREATED,
        Json(json!({ "id": id, "account": account, "scope": scope, "token": secret })),
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
                .map(|t| {
                    json!({
                        "id": t.value.id,
                        "account": t.value.account,
                        "scope": t.value.scope,
                        "note": t.value.note,
                        "created_at": t.value.created_at,
                        "revoked": t.value.revoked,
                    })
                })
                .collect();
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

/// The caller's own account.
async fn me(State(state): State<ApiState>, Extension(caller): Extension<Caller>) -> Response {
    let desired = match read(&state, &Params::default()).await {
        Ok(desired) => desired,
        Err(failure) => return failure.into_response(),
    };
    match desired.accounts.get(caller.name()) {
        Some(account) if caller != Caller::Root => {
            Json(row(&account.value, account.version)).into_response()
        }
        _ => Json(json!({ "name": "root", "role": "admin" })).into_response(),
    }
}

/// Changes the caller's own account through `change`, with compare-and-set on its version.
async fn change_me(
    state: &ApiState,
    caller: &Caller,
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
        return error(StatusCode::BAD_REQUEST, "the node token has no account");
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
        },
    )
    .await
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Key {
    key: String,
}

async fn put_key(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Result<Json<Key>, JsonRejection>,
) -> Response {
    let key = match body {
        Ok(Json(Key { key })) => key,
        Err(rejection) => return bad_body(rejection),
    };
    if let Err(message) = check_ssh_key(&key) {
        return error(StatusCode::BAD_REQUEST, &message);
    }
    change_me(&state, &caller, |account| {
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
    change_me(&state, &caller, |account| {
        match account.ssh_keys.remove(&name) {
            Some(_) => Ok(()),
            None => Err(format!("name: no key named {name}")),
        }
    })
    .await
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewPassword {
    current: String,
    new: String,
}

async fn change_password(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewPassword>, JsonRejection>,
) -> Response {
    let NewPassword { current, new } = match body {
        Ok(Json(body)) => body,
        Err(rejection) => return bad_body(rejection),
    };
    if new.chars().count() < auth::MIN_PASSWORD {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("new: at least {} characters", auth::MIN_PASSWORD),
        );
    }
    let hash = match tokio::task::spawn_blocking(move || auth::hash_password(&new)).await {
        Ok(Ok(hash)) => hash,
        _ => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "hashing the password failed",
            );
        }
    };
    change_me(&state, &caller, move |account| {
        if auth::verify_password(&current, &account.password_hash) {
            account.password_hash = hash;
            Ok(())
        } else {
            Err("current: wrong password".into())
        }
    })
    .await
}
