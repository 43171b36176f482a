//! `/v1/signup`, `/v1/invites` and `/v1/accounts/{name}/approve`: the admins' side of
//! sign-up (the public side is the panel's `/signup`, `/verify` and `/reset` pages): the
//! co-op's setting, invite codes (each shown once, when made; the state keeps its sha256),
//! and the approval of a new member, who is told by email.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use hearth_state::model::signup::SignupCommand;
use hearth_state::model::{Command, Expect};
use hearth_types::api::{CreatedInvite, NewInvite, SignupView};
use hearth_types::signup::{Invite, SignupMode, SignupSettings};

use super::body::{Body, BodyRejection};
use super::context::{ApiState, Params, bad_body, error, read, unix_now, write, write_noting};
use crate::auth::Caller;

fn signup_command(command: SignupCommand) -> Command {
    Command::Signup { command }
}

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/signup", get(show).put(set))
        .route("/v1/invites", get(list_invites).post(create_invite))
        .route("/v1/invites/{id}", delete(remove_invite))
        .route("/v1/accounts/{name}/approve", post(approve))
}

async fn show(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => Json(SignupView {
            settings: desired.signup.settings.clone(),
            awaiting_approval: desired
                .accounts
                .values()
                .filter(|a| a.value.awaiting_approval)
                .map(|a| a.value.name.clone())
                .collect(),
            unverified: desired
                .accounts
                .values()
                .filter(|a| a.value.unverified)
                .map(|a| a.value.name.clone())
                .collect(),
        })
        .into_response(),
        Err(failure) => failure.into_response(),
    }
}

async fn set(
    State(state): State<ApiState>,
    body: Result<Body<SignupSettings>, BodyRejection>,
) -> Response {
    let settings = match body {
        Ok(Body(settings)) => settings,
        Err(rejection) => return bad_body(rejection),
    };
    if settings.mode != SignupMode::Closed && state.mail.is_none() {
        return error(
            StatusCode::CONFLICT,
            "sign-up sends email; give this node [smtp] settings first (and every node whose panel members use)",
        );
    }
    write(
        &state,
        signup_command(SignupCommand::PutSettings { settings }),
    )
    .await
}

async fn list_invites(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => {
            let invites: Vec<Invite> = desired.signup.invites.values().cloned().collect();
            Json(invites).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

/// The longest an invite may live: a year.
const MAX_INVITE_SECS: u64 = 366 * 86_400;

async fn create_invite(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Body<NewInvite>, BodyRejection>,
) -> Response {
    let new = match body {
        Ok(Body(new)) => new,
        Err(rejection) => return bad_body(rejection),
    };
    let secs = new.expires_in_secs.unwrap_or(7 * 86_400);
    if secs == 0 || secs > MAX_INVITE_SECS {
        return error(
            StatusCode::BAD_REQUEST,
            "expires_in_secs: between 1 s and a year",
        );
    }
    let code = {
        use base64::Engine;
        let mut bytes = [0u8; 15];
        rand::fill(&mut bytes);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    };
    let sha256 = crate::auth::sha256_hex(&code);
    let now = unix_now();
    let invite = Invite {
        id: sha256[..16].to_owned(),
        code_sha256: sha256,
        note: new.note,
        created_by: caller.name().to_owned(),
        created_at: now,
        expires_at: now + secs,
        used_by: None,
    };
    let created = CreatedInvite {
        id: invite.id.clone(),
        code,
        expires_at: invite.expires_at,
    };
    let mut notes = serde_json::Map::new();
    if let Ok(value) = serde_json::to_value(&created) {
        notes.insert("invite".into(), value);
    }
    let answer = write_noting(
        &state,
        signup_command(SignupCommand::PutInvite { invite, at: now }),
        notes,
    )
    .await;
    if answer.status().is_success() {
        (StatusCode::CREATED, Json(created)).into_response()
    } else {
        answer
    }
}

async fn remove_invite(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    write(&state, signup_command(SignupCommand::RemoveInvite { id })).await
}

/// An admin lets a new member in; the member is told by email when this node can send it.
async fn approve(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    let desired = match read(&state, &Params::default()).await {
        Ok(desired) => desired,
        Err(failure) => return failure.into_response(),
    };
    let Some(account) = desired.accounts.get(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("account: no account named {name}"),
        );
    };
    if !account.value.awaiting_approval {
        return error(
            StatusCode::CONFLICT,
            &format!("account: {name} is not awaiting approval"),
        );
    }
    let mut approved = account.value.clone();
    approved.awaiting_approval = false;
    let email = approved.email.clone();
    let command = Command::PutAccount {
        account: approved,
        expect: Expect::Version(account.version),
        revoke_tokens: false,
    };
    let answer = write(&state, command).await;
    if answer.status().is_success()
        && let Some(mail) = &state.mail
        && !email.is_empty()
    {
        let link = desired.signup.settings.link("/login");
        let body = format!(
            "Hello {name},\n\nan admin approved your account {name}. Log in at\n\n{link}\n"
        );
        if let Err(error) = crate::mail::send_one(mail, &email, "Your account is open", &body).await
        {
            tracing::warn!(account = %name, %error, "approval email not sent");
        }
    }
    answer
}
