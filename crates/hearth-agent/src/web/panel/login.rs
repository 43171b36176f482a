//! The login form, with its rate limit and double-submit cookie, and logging out.

use axum::Form;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::response::Response;
use hearth_state::model::Command;
use hearth_types::account::TokenScope;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use super::context::*;
use crate::api::{ApiState, unix_now};
use crate::auth::{self};
use crate::login_limit::client_address;
use crate::web::pages;
use crate::web::session::{self, LOGIN_COOKIE, SESSION_COOKIE};

/// The login form, with a fresh double-submit value when the browser has none.
pub(super) async fn login_form(headers: HeaderMap, State(state): State<ApiState>) -> Response {
    let mut parts = Request::new(()).into_parts().0;
    parts.headers = headers.clone();
    if Session::from_request_parts(&mut parts, &state)
        .await
        .is_ok()
    {
        return see_other("/", None);
    }
    login_page(&headers, StatusCode::OK, "", None)
}

pub(super) fn login_page(
    headers: &HeaderMap,
    status: StatusCode,
    name: &str,
    problem: Option<&str>,
) -> Response {
    let value = session::cookie(headers, LOGIN_COOKIE)
        .filter(|v| v.len() >= 20)
        .map(str::to_owned)
        .unwrap_or_else(session::random_value);
    let mut response = html(status, pages::login(&value, name, problem));
    if let Ok(cookie) = session::set_cookie(LOGIN_COOKIE, &value, 3600).parse() {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    name: String,
    password: String,
    csrf: String,
}

/// The enabled account `name` if `password` is its password, by this node's copy of the
/// accounts. An unknown name costs the same hashing as a wrong password.
pub(super) async fn check_password(
    node: &hearth_state::node::StateNode,
    name: &str,
    password: String,
) -> Option<hearth_types::account::Account> {
    let desired = node.reader().current();
    let account = desired
        .accounts
        .get(name)
        .map(|a| a.value.clone())
        .filter(|a| !a.disabled);
    let hash = account.as_ref().map(|a| a.password_hash.clone());
    let matches = tokio::task::spawn_blocking(move || {
        let hash = hash.unwrap_or_else(decoy_hash);
        auth::verify_password(&password, &hash)
    })
    .await
    .unwrap_or(false);
    account.filter(|_| matches)
}

/// Reserves an attempt, takes a hashing permit and checks the password: the account, or
/// the status and message of the refusal. Every refusal is counted and logged.
async fn evaluate(
    state: &ApiState,
    name: &str,
    client: std::net::IpAddr,
    password: String,
) -> Result<hearth_types::account::Account, (StatusCode, String)> {
    let logins = &state.logins;
    let count = |counter: &std::sync::atomic::AtomicU64| counter.fetch_add(1, Ordering::Relaxed);
    let Some(node) = state.state.clone() else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "This node holds no accounts (it is a worker); log in on a server.".into(),
        ));
    };
    let reserved = match logins.limiter.lock() {
        Ok(mut limiter) => limiter.reserve(name, client, unix_now()),
        Err(_) => Err(1),
    };
    let attempt = match reserved {
        Ok(attempt) => attempt,
        Err(wait) => {
            count(&logins.metrics.limited);
            tracing::warn!(%client, "login refused: too many failures");
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                format!("Too many failed logins; try again in {wait} s."),
            ));
        }
    };
    let Ok(_permit) = logins.hashing.clone().try_acquire_owned() else {
        if let Ok(mut limiter) = logins.limiter.lock() {
            limiter.withdraw(attempt);
        }
        count(&logins.metrics.busy);
        return Err((
            StatusCode::TOO_MANY_REQUESTS,
            "Too many logins at once on this node; try again in a moment.".into(),
        ));
    };
    count(&logins.metrics.checks);
    let checked = check_password(&node, name, password).await;
    let Some(account) = checked else {
        count(&logins.metrics.failed);
        // A name that is no account may be a password typed in the wrong field: not kept.
        let known = node.reader().current().accounts.contains_key(name);
        let shown = if known { name } else { "(no such account)" };
        tracing::info!(account = %shown, %client, "login failed");
        audit_login(state, shown, client, StatusCode::UNAUTHORIZED);
        return Err((
            StatusCode::UNAUTHORIZED,
            "Wrong account name or password.".into(),
        ));
    };
    if let Ok(mut limiter) = logins.limiter.lock() {
        limiter.succeeded(attempt);
    }
    // The right password of an account that cannot log in yet: say why.
    if let Some(why) = account.locked() {
        return Err((StatusCode::FORBIDDEN, why.to_owned()));
    }
    count(&logins.metrics.succeeded);
    audit_login(state, name, client, StatusCode::OK);
    Ok(account)
}

/// Records a login (as its account) or a failed one (as anonymous, naming the account
/// tried) in the audit log.
fn audit_login(state: &ApiState, name: &str, client: std::net::IpAddr, status: StatusCode) {
    let ok = status.is_success();
    crate::api::audit::record(
        state,
        crate::api::audit::Audited {
            who: if ok {
                name
            } else {
                hearth_types::account::ANONYMOUS
            },
            method: "POST",
            path: "/login".into(),
            status,
            client: Some(client),
            note: if ok {
                "logged in".into()
            } else {
                format!("failed login as {name}")
            },
        },
    );
}

/// Writes a session token for `account` through Raft; returns its secret, or `None` when
/// the cluster cannot take the write.
pub(super) async fn open_session(state: &ApiState, account: &str, now: u64) -> Option<String> {
    let (secret, mut token) = auth::new_token(account, TokenScope::Full, "web session".into(), now);
    token.expires_at = Some(now + session::SESSION_SECS);
    token.session = true;
    let written = crate::api::context::write(state, Command::PutToken { token }).await;
    written.status().is_success().then_some(secret)
}

/// Checks the password against this node's copy of the account, within the rate limit,
/// and opens a session: a new API token with an expiry, written through Raft.
pub(super) async fn login(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let expected = session::cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if expected.is_empty() || !auth::constant_time_eq(expected.as_bytes(), form.csrf.as_bytes()) {
        return login_page(
            &headers,
            StatusCode::FORBIDDEN,
            &form.name,
            Some("The form expired; log in again."),
        );
    }
    let name = form.name.trim().to_owned();
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let client = client_address(peer.ip(), forwarded, &state.logins.trusted_proxies);
    let account = match evaluate(&state, &name, client, form.password).await {
        Ok(account) => account,
        Err((status, problem)) => return login_page(&headers, status, &name, Some(&problem)),
    };
    let now = unix_now();
    let Some(secret) = open_session(&state, &account.name, now).await else {
        return login_page(
            &headers,
            StatusCode::SERVICE_UNAVAILABLE,
            &name,
            Some(
                "The cluster cannot record a session now (no quorum?); the status page still works. Try again shortly.",
            ),
        );
    };
    tracing::info!(account = %name, "logged in");
    let mut response = see_other(
        if account.role == hearth_types::account::AccountRole::Admin {
            "/admin"
        } else {
            "/panel"
        },
        None,
    );
    for cookie in [
        session::set_cookie(SESSION_COOKIE, &secret, session::SESSION_SECS),
        session::set_cookie(LOGIN_COOKIE, "", 0),
    ] {
        if let Ok(value) = cookie.parse() {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// argon2id of a random password nobody knows, made once: verified against when the account
/// does not exist, so a wrong name takes as long as a wrong password.
pub(super) fn decoy_hash() -> String {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY
        .get_or_init(|| auth::hash_password(&session::random_value()).unwrap_or_default())
        .clone()
}

pub(super) async fn logout(
    State(state): State<ApiState>,
    Posted { session, .. }: Posted<CsrfOnly>,
) -> Response {
    if let Some(id) = session
        .token
        .strip_prefix("hth_")
        .and_then(|t| t.split_once('.'))
        .map(|(id, _)| id.to_owned())
    {
        let _ = session
            .api(&state, Method::DELETE, &format!("/v1/tokens/{id}"), None)
            .await;
    }
    let mut response = see_other("/login", None);
    if let Ok(value) = session::set_cookie(SESSION_COOKIE, "", 0).parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}
