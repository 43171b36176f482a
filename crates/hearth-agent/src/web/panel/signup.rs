//! The public sign-up, email verification and password reset routes. Each form carries
//! the login form's double-submit value; each attempt from a client counts against the
//! login rate limit (`login_limit`), whatever its outcome; the codes and tokens are random,
//! only their sha256 goes through Raft, and they reach the member only by email, in links
//! that start with the co-op's `public_url`.

use std::net::SocketAddr;

use axum::Form;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use hearth_state::model::Command;
use hearth_state::model::signup::SignupCommand;
use hearth_types::account::Account;
use hearth_types::signup::{MailPurpose, MailToken, RESET_SECS, SignupMode, VERIFY_SECS};
use serde::Deserialize;

use super::context::html;
use crate::api::{ApiState, unix_now};
use crate::auth::{self, sha256_hex};
use crate::login_limit::client_address;
use crate::web::session::{self, LOGIN_COOKIE};
use crate::web::signup::{self as pages, Filled};

/// A random token for a link: 32 bytes, base64url; and its sha256 in hex, which is all the
/// state keeps.
fn new_secret() -> (String, String) {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    (secret.clone(), sha256_hex(&secret))
}

/// A page with a fresh double-submit value (kept when the browser has one), as the login
/// form does.
fn with_csrf(
    headers: &HeaderMap,
    status: StatusCode,
    build: impl FnOnce(&str) -> String,
) -> Response {
    let value = session::cookie(headers, LOGIN_COOKIE)
        .filter(|v| v.len() >= 20)
        .map(str::to_owned)
        .unwrap_or_else(session::random_value);
    let mut response = html(status, build(&value));
    if let Ok(cookie) = session::set_cookie(LOGIN_COOKIE, &value, 3600).parse() {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// Whether the form's value is the one its cookie holds.
fn csrf_ok(headers: &HeaderMap, sent: &str) -> bool {
    let expected = session::cookie(headers, LOGIN_COOKIE).unwrap_or("");
    !expected.is_empty() && auth::constant_time_eq(expected.as_bytes(), sent.as_bytes())
}

/// Counts one attempt of `what` from the client against the login rate limit; the seconds
/// to wait when over it.
fn count_attempt(
    state: &ApiState,
    peer: SocketAddr,
    headers: &HeaderMap,
    what: &str,
) -> Result<(), u64> {
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let client = client_address(peer.ip(), forwarded, &state.logins.trusted_proxies);
    let reserved = match state.logins.limiter.lock() {
        // Never settled: every attempt counts, successful or not.
        Ok(mut limiter) => limiter.reserve(what, client, unix_now()).map(drop),
        Err(_) => Err(1),
    };
    reserved.inspect_err(|_| {
        state
            .logins
            .metrics
            .limited
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(%client, what, "refused: too many attempts");
    })
}

/// The page of an attempt over the rate limit.
fn too_many(wait: u64) -> Response {
    html(
        StatusCode::TOO_MANY_REQUESTS,
        pages::message(
            "Too many attempts",
            &format!("Too many attempts from your address; try again in {wait} s."),
            ("/login", "Log in"),
        ),
    )
}

fn signup_command(command: SignupCommand) -> Command {
    Command::Signup { command }
}

/// Writes `command`; `Ok` when it changed the state, else the message to show.
async fn submit(state: &ApiState, command: Command) -> Result<(), (StatusCode, String)> {
    use hearth_state::model::Outcome;
    let Some(node) = &state.state else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "This node holds no accounts (it is a worker); use a server's panel.".into(),
        ));
    };
    match node.submit(command).await {
        Ok(written) => match written.outcome {
            outcome if outcome.changed() => Ok(()),
            Outcome::Invalid { message } | Outcome::Refused { message } => {
                Err((StatusCode::BAD_REQUEST, message))
            }
            Outcome::Conflict { .. } => Err((
                StatusCode::CONFLICT,
                "That name is taken; choose another.".into(),
            )),
            other => Err((StatusCode::BAD_REQUEST, format!("{other:?}"))),
        },
        Err(error) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("The cluster cannot take it now ({error}); try again in a moment."),
        )),
    }
}

/// Sends one email through the node's `[smtp]`.
async fn send_mail(
    state: &ApiState,
    to: &str,
    (subject, body): (String, String),
) -> Result<(), String> {
    let Some(mail) = &state.mail else {
        return Err("this node has no [smtp] settings to send email with".into());
    };
    crate::mail::send_one(mail, to, &subject, &body).await
}

fn settings(state: &ApiState) -> hearth_types::signup::SignupSettings {
    state
        .state
        .as_ref()
        .map(|node| node.reader().current().signup.settings.clone())
        .unwrap_or_default()
}

pub(super) async fn signup_form(headers: HeaderMap, State(state): State<ApiState>) -> Response {
    let mode = settings(&state).mode;
    with_csrf(&headers, StatusCode::OK, |csrf| {
        pages::signup_form(mode, csrf, &Filled::default(), None)
    })
}

#[derive(Deserialize)]
pub(super) struct SignupForm {
    name: String,
    email: String,
    password: String,
    #[serde(default)]
    invite: String,
    csrf: String,
}

/// A sign-up as one command: the account and its verification token (and the invite
/// code's sha256, if one was typed); and the secret the emailed link carries.
fn sign_up_command(
    name: &str,
    email: &str,
    password_hash: String,
    invite: &str,
) -> Option<(Command, String)> {
    let account = serde_json::from_value::<Account>(serde_json::json!({
        "name": name, "role": "member", "email": email, "password_hash": password_hash,
    }))
    .ok()?;
    let now = unix_now();
    let (secret, sha256) = new_secret();
    let token = MailToken {
        sha256,
        account: name.to_owned(),
        purpose: MailPurpose::Verify,
        expires_at: now + VERIFY_SECS,
        used: false,
    };
    let command = signup_command(SignupCommand::SignUp {
        account: Box::new(account),
        invite: (!invite.is_empty()).then(|| sha256_hex(invite)),
        token,
        at: now,
    });
    Some((command, secret))
}

pub(super) async fn signup(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<SignupForm>,
) -> Response {
    let settings = settings(&state);
    let name = form.name.trim().to_owned();
    let email = form.email.trim().to_owned();
    let again = |status, problem: &str| {
        let filled = Filled {
            name: &name,
            email: &email,
            invite: form.invite.trim(),
        };
        with_csrf(&headers, status, |csrf| {
            pages::signup_form(settings.mode, csrf, &filled, Some(problem))
        })
    };
    if !csrf_ok(&headers, &form.csrf) {
        return again(StatusCode::FORBIDDEN, "The form expired; send it again.");
    }
    if let Err(wait) = count_attempt(&state, peer, &headers, "signup") {
        return too_many(wait);
    }
    if settings.mode == SignupMode::Closed {
        return again(StatusCode::FORBIDDEN, "Sign-up is closed.");
    }
    if form.password.chars().count() < auth::MIN_PASSWORD {
        let problem = format!(
            "The password needs at least {} characters.",
            auth::MIN_PASSWORD
        );
        return again(StatusCode::BAD_REQUEST, &problem);
    }
    let password_hash = match crate::api::context::hash_password(&state, form.password).await {
        Ok(hash) => hash,
        Err(_) => return again(StatusCode::SERVICE_UNAVAILABLE, "Try again in a moment."),
    };
    let Some((command, secret)) = sign_up_command(&name, &email, password_hash, form.invite.trim())
    else {
        return again(StatusCode::BAD_REQUEST, "That account cannot be made.");
    };
    if let Err((status, problem)) = submit(&state, command).await {
        return again(status, &problem);
    }
    tracing::info!(account = %name, "signed up; verification email sent");
    let sent = send_mail(
        &state,
        &email,
        pages::verify_mail(&settings, &name, &secret),
    )
    .await;
    let text = match sent {
        Ok(()) => format!("We sent a link to {email}. Open it to confirm your address."),
        Err(error) => {
            tracing::warn!(account = %name, %error, "verification email not sent");
            "Your account is made, but the email could not be sent; ask for a new link with \"Forgot your password?\", or ask an admin.".into()
        }
    };
    html(
        StatusCode::OK,
        pages::message("Check your email", &text, ("/login", "Log in")),
    )
}

#[derive(Deserialize)]
pub(super) struct TokenQuery {
    #[serde(default)]
    token: String,
}

pub(super) async fn verify_form(headers: HeaderMap, Query(query): Query<TokenQuery>) -> Response {
    with_csrf(&headers, StatusCode::OK, |csrf| {
        pages::verify_form(&query.token, csrf)
    })
}

#[derive(Deserialize)]
pub(super) struct TokenForm {
    token: String,
    csrf: String,
}

pub(super) async fn verify(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Response {
    if !csrf_ok(&headers, &form.csrf) {
        return with_csrf(&headers, StatusCode::FORBIDDEN, |csrf| {
            pages::verify_form(&form.token, csrf)
        });
    }
    if let Err(wait) = count_attempt(&state, peer, &headers, "verify") {
        return too_many(wait);
    }
    let command = signup_command(SignupCommand::UseMailToken {
        sha256: sha256_hex(&form.token),
        purpose: MailPurpose::Verify,
        password_hash: None,
        at: unix_now(),
    });
    let (status, title, text) = match submit(&state, command).await {
        Ok(()) => match settings(&state).mode {
            SignupMode::Approval => (
                StatusCode::OK,
                "Address confirmed",
                "Thank you. An admin approves new accounts; you can log in once they have."
                    .to_owned(),
            ),
            _ => (
                StatusCode::OK,
                "Address confirmed",
                "Thank you. You can log in now.".to_owned(),
            ),
        },
        Err((status, problem)) => (status, "Not confirmed", problem),
    };
    html(status, pages::message(title, &text, ("/login", "Log in")))
}

pub(super) async fn reset_form(headers: HeaderMap) -> Response {
    with_csrf(&headers, StatusCode::OK, |csrf| {
        pages::reset_request_form(csrf, None)
    })
}

#[derive(Deserialize)]
pub(super) struct ResetForm {
    who: String,
    csrf: String,
}

/// Sends a reset link to the account named (by name or address), if there is one with an
/// address; the page says the same either way, so it tells nobody who has an account.
pub(super) async fn reset(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<ResetForm>,
) -> Response {
    if !csrf_ok(&headers, &form.csrf) {
        return with_csrf(&headers, StatusCode::FORBIDDEN, |csrf| {
            pages::reset_request_form(csrf, Some("The form expired; send it again."))
        });
    }
    let who = form.who.trim().to_owned();
    if let Err(wait) = count_attempt(&state, peer, &headers, &format!("reset:{who}")) {
        return too_many(wait);
    }
    let desired = state.state.as_ref().map(|node| node.reader().current());
    let account = desired.as_ref().and_then(|d| {
        d.accounts
            .values()
            .map(|a| &a.value)
            .find(|a| {
                !a.disabled
                    && !a.email.is_empty()
                    && (a.name == who || a.email.eq_ignore_ascii_case(&who))
            })
            .cloned()
    });
    if let Some(account) = account {
        let now = unix_now();
        let (secret, sha256) = new_secret();
        let token = MailToken {
            sha256,
            account: account.name.clone(),
            purpose: MailPurpose::Reset,
            expires_at: now + RESET_SECS,
            used: false,
        };
        match submit(
            &state,
            signup_command(SignupCommand::AddMailToken { token, at: now }),
        )
        .await
        {
            Ok(()) => {
                let mail = pages::reset_mail(&settings(&state), &account.name, &secret);
                if let Err(error) = send_mail(&state, &account.email, mail).await {
                    tracing::warn!(account = %account.name, %error, "reset email not sent");
                }
            }
            Err((_, problem)) => {
                tracing::warn!(account = %account.name, %problem, "reset token not written")
            }
        }
    }
    html(
        StatusCode::OK,
        pages::message(
            "Check your email",
            "If an account has that name or address, we sent a link to its address. It works once, for an hour.",
            ("/login", "Log in"),
        ),
    )
}

pub(super) async fn reset_confirm_form(
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    with_csrf(&headers, StatusCode::OK, |csrf| {
        pages::reset_confirm_form(&query.token, csrf, None)
    })
}

#[derive(Deserialize)]
pub(super) struct NewPasswordForm {
    token: String,
    password: String,
    csrf: String,
}

pub(super) async fn reset_confirm(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<NewPasswordForm>,
) -> Response {
    let again = |status, problem: &str| {
        with_csrf(&headers, status, |csrf| {
            pages::reset_confirm_form(&form.token, csrf, Some(problem))
        })
    };
    if !csrf_ok(&headers, &form.csrf) {
        return again(StatusCode::FORBIDDEN, "The form expired; send it again.");
    }
    if let Err(wait) = count_attempt(&state, peer, &headers, "reset-confirm") {
        return too_many(wait);
    }
    if form.password.chars().count() < auth::MIN_PASSWORD {
        let problem = format!(
            "The password needs at least {} characters.",
            auth::MIN_PASSWORD
        );
        return again(StatusCode::BAD_REQUEST, &problem);
    }
    let password_hash =
        match crate::api::context::hash_password(&state, form.password.clone()).await {
            Ok(hash) => hash,
            Err(_) => return again(StatusCode::SERVICE_UNAVAILABLE, "Try again in a moment."),
        };
    let command = signup_command(SignupCommand::UseMailToken {
        sha256: sha256_hex(&form.token),
        purpose: MailPurpose::Reset,
        password_hash: Some(password_hash),
        at: unix_now(),
    });
    match submit(&state, command).await {
        Ok(()) => html(
            StatusCode::OK,
            pages::message(
                "Password changed",
                "Your new password works now; your other sessions have ended.",
                ("/login", "Log in"),
            ),
        ),
        Err((status, problem)) => html(
            status,
            pages::message(
                "Password not changed",
                &problem,
                ("/reset", "Ask for a new link"),
            ),
        ),
    }
}
