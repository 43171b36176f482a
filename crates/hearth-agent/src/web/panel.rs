//! The web panel's routes: login and logout, the member pages (`/panel`) and the admin pages
//! (`/admin`). Every read and change goes through the JSON API in-process, with the session's
//! token as the bearer, so the panel takes exactly the API's code path: the same
//! authorization, validation, Raft write and audit entry as `curl` or the CLI.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use hearth_state::model::Command;
use hearth_types::account::TokenScope;
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::pages::{self, Chrome};
use super::session::{self, FLASH_COOKIE, Flash, LOGIN_COOKIE, SESSION_COOKIE};
use crate::api::{ApiState, unix_now};
use crate::auth::{self, Caller};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/panel", get(member_home))
        .route("/panel/vms", post(create_vm))
        .route("/panel/vms/{vm}", get(vm_page))
        .route("/panel/vms/{vm}/{action}", post(vm_action))
        .route("/panel/account", get(account_page))
        .route("/panel/account/keys", post(add_key))
        .route("/panel/account/keys/{name}/delete", post(remove_key))
        .route("/panel/account/password", post(change_password))
        .route("/admin", get(nodes_page))
        .route("/admin/nodes/{name}/{action}", post(node_action))
        .route("/admin/members", get(members_page).post(create_account))
        .route("/admin/members/{name}/delete", post(remove_account))
        .route("/admin/services", get(services_page))
        .route(
            "/admin/vms",
            listing("/admin/vms", "/v1/vms", pages::all_vms_page),
        )
        .route(
            "/admin/drift",
            listing("/admin/drift", "/v1/drift", pages::drift_page),
        )
        .route("/admin/drift/{host}/{kind}/{vm}/fix", post(fix_drift))
        .route(
            "/admin/events",
            listing("/admin/events", "/v1/events", pages::events_page),
        )
        .route(
            "/admin/audit",
            listing("/admin/audit", "/v1/audit", pages::audit_page),
        )
        .route(
            "/admin/announce",
            listing("/admin/announce", "/v1/notices", pages::announce_page).post(announce),
        )
        .route("/admin/notices", post(post_notice))
        .route("/admin/notices/{id}/{action}", post(notice_action))
}

/// A logged-in browser: its session token (an API token), who that is, and the flash
/// message left by the last form, if any.
pub struct Session {
    token: String,
    name: String,
    admin: bool,
    csrf: String,
    flash: Option<Flash>,
}

impl FromRequestParts<ApiState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Response> {
        let token = session::cookie(&parts.headers, SESSION_COOKIE).unwrap_or("");
        let desired = state.state.as_ref().map(|node| node.reader().current());
        match auth::authenticate(token, &state.token, desired.as_deref(), unix_now()) {
            Some(Caller::Account { name, role, .. }) => Ok(Session {
                token: token.to_owned(),
                admin: role == hearth_types::account::AccountRole::Admin,
                name,
                csrf: session::csrf_token(token),
                flash: session::cookie(&parts.headers, FLASH_COOKIE).and_then(Flash::decode),
            }),
            _ => Err(see_other("/login", None)),
        }
    }
}

impl Session {
    fn chrome<'a>(&'a self, active: &'a str) -> Chrome<'a> {
        Chrome {
            user: &self.name,
            admin: self.admin,
            csrf: &self.csrf,
            active,
            flash: self.flash.as_ref(),
        }
    }

    /// The page, clearing the flash message it showed.
    fn page(&self, status: StatusCode, html: String) -> Response {
        let mut response = (
            status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            html,
        )
            .into_response();
        if self.flash.is_some()
            && let Ok(value) = session::set_cookie(FLASH_COOKIE, "", 0).parse()
        {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
        response
    }

    fn problem(&self, status: StatusCode, active: &str, title: &str, message: &str) -> Response {
        self.page(status, pages::problem(&self.chrome(active), title, message))
    }

    /// Admin pages answer members with 403, as the API does: the refusal, if any.
    fn admin_only(&self, active: &str) -> Option<Response> {
        if self.admin {
            None
        } else {
            Some(self.problem(
                StatusCode::FORBIDDEN,
                active,
                "Admins only",
                &format!("{} is a member; this page is for admins", self.name),
            ))
        }
    }

    /// A form's CSRF field must belong to this session: the refusal, if it does not.
    fn check(&self, csrf: &str) -> Option<Response> {
        if session::csrf_ok(&self.token, csrf) {
            None
        } else {
            Some(self.problem(
                StatusCode::FORBIDDEN,
                "",
                "Form expired",
                "This form does not belong to your session; go back, reload the page and try again",
            ))
        }
    }

    /// Calls the JSON API as this session's account.
    async fn api(&self, state: &ApiState, method: Method, path: &str, body: Option<Value>) -> Api {
        call(state, &self.token, method, path, body).await
    }

    async fn get(&self, state: &ApiState, path: &str) -> Result<Value, Response> {
        match self.api(state, Method::GET, path, None).await {
            Ok(value) => Ok(value),
            Err((status, message)) => Err(self.problem(status, "", "Not available", &message)),
        }
    }
}

/// An API answer: the JSON, or the status and the `error` message.
type Api = Result<Value, (StatusCode, String)>;

/// One request through the API router, in-process.
async fn call(
    state: &ApiState,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Api {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    let body = match body {
        Some(value) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            Body::from(value.to_string())
        }
        None => Body::empty(),
    };
    let request = builder
        .body(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let response = crate::api::router(state.clone())
        .oneshot(request)
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024)
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status.is_success() {
        Ok(value)
    } else {
        let message = value["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| status.to_string());
        Err((status, message))
    }
}

/// 303 to `to`, leaving a flash message for the next page.
fn see_other(to: &str, flash: Option<Flash>) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response();
    if let Some(flash) = flash
        && let Ok(value) = session::set_cookie(FLASH_COOKIE, &flash.encode(), 60).parse()
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// After a form: back to `to`, with `done` or the API's error as the flash message.
fn after(to: &str, result: Api, done: impl FnOnce(Value) -> String) -> Response {
    let flash = match result {
        Ok(value) => Flash {
            ok: true,
            text: done(value),
        },
        Err((_, message)) => Flash {
            ok: false,
            text: message,
        },
    };
    see_other(to, Some(flash))
}

/// A path segment as the API expects it: only the characters names and ids use.
fn segment(text: &str) -> Option<&str> {
    (!text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    .then_some(text)
}

fn bad_segment(session: &Session, what: &str) -> Response {
    session.problem(
        StatusCode::NOT_FOUND,
        "",
        "Not found",
        &format!("{what}: no such name"),
    )
}

async fn home(headers: HeaderMap, State(state): State<ApiState>) -> Response {
    let mut parts = Request::new(()).into_parts().0;
    parts.headers = headers;
    match Session::from_request_parts(&mut parts, &state).await {
        Ok(session) if session.admin => see_other("/admin", None),
        Ok(_) => see_other("/panel", None),
        Err(_) => see_other("/login", None),
    }
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The login form, with a fresh double-submit value when the browser has none.
async fn login_form(headers: HeaderMap, State(state): State<ApiState>) -> Response {
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

fn login_page(
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
struct LoginForm {
    name: String,
    password: String,
    csrf: String,
}

/// The enabled account `name` if `password` is its password, by this node's copy of the
/// accounts. An unknown name costs the same hashing as a wrong password.
async fn check_password(
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

/// Writes a session token for `account` through Raft; returns its secret, or `None` when
/// the cluster cannot take the write.
async fn open_session(state: &ApiState, account: &str, now: u64) -> Option<String> {
    let (secret, mut token) = auth::new_token(account, TokenScope::Full, "web session".into(), now);
    token.expires_at = Some(now + session::SESSION_SECS);
    let written = crate::state_api::write(state, Command::PutToken { token }).await;
    written.status().is_success().then_some(secret)
}

/// Checks the password against this node's copy of the account, within the rate limit,
/// and opens a session: a new API token with an expiry, written through Raft.
async fn login(
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
    let keys = [format!("ip:{}", peer.ip()), format!("name:{name}")];
    let now = unix_now();
    let wait = state.logins.lock().map_or(None, |mut l| l.wait(&keys, now));
    if let Some(wait) = wait {
        tracing::warn!(account = %name, client = %peer.ip(), "login refused: too many failures");
        return login_page(
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            &name,
            Some(&format!("Too many failed logins; try again in {wait} s.")),
        );
    }
    let Some(node) = state.state.clone() else {
        return login_page(
            &headers,
            StatusCode::SERVICE_UNAVAILABLE,
            &name,
            Some("This node holds no accounts (it is a worker); log in on a server."),
        );
    };
    let Some(account) = check_password(&node, &name, form.password).await else {
        if let Ok(mut limiter) = state.logins.lock() {
            limiter.failed(&keys, now);
        }
        tracing::info!(account = %name, client = %peer.ip(), "login failed");
        return login_page(
            &headers,
            StatusCode::UNAUTHORIZED,
            &name,
            Some("Wrong account name or password."),
        );
    };
    if let Ok(mut limiter) = state.logins.lock() {
        limiter.succeeded(&keys[1]);
    }
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
fn decoy_hash() -> String {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY
        .get_or_init(|| auth::hash_password(&session::random_value()).unwrap_or_default())
        .clone()
}

#[derive(Deserialize)]
struct CsrfOnly {
    csrf: String,
}

async fn logout(
    State(state): State<ApiState>,
    session: Session,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(response) = session.check(&form.csrf) {
        return response;
    }
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

async fn member_home(State(state): State<ApiState>, session: Session) -> Response {
    let owner = session.name.clone();
    let loaded = async {
        let vms = session
            .get(&state, &format!("/v1/vms?owner={owner}"))
            .await?;
        let images = session.get(&state, "/v1/images").await?;
        let pools = session.get(&state, "/v1/pools").await?;
        let me = session.get(&state, "/v1/me").await?;
        Ok::<_, Response>((vms, images, pools, me))
    };
    match loaded.await {
        Ok((vms, images, pools, me)) => session.page(
            StatusCode::OK,
            pages::member_home(&session.chrome("/panel"), &vms, &images, &pools, &me),
        ),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct NewVm {
    csrf: String,
    name: String,
    image: String,
    size: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    pool: String,
}

async fn create_vm(
    State(state): State<ApiState>,
    session: Session,
    Form(form): Form<NewVm>,
) -> Response {
    if let Some(response) = session.check(&form.csrf) {
        return response;
    }
    let Some((_, vcpus, memory_mib, disk_gib)) =
        pages::SIZES.iter().find(|(name, ..)| *name == form.size)
    else {
        return see_other(
            "/panel",
            Some(Flash {
                ok: false,
                text: format!("size: `{}` is not one of the sizes offered", form.size),
            }),
        );
    };
    let me = match session.get(&state, "/v1/me").await {
        Ok(me) => me,
        Err(response) => return response,
    };
    let keys: Vec<String> = me["ssh_keys"]
        .as_object()
        .map(|keys| {
            keys.iter()
                .filter(|(name, _)| form.key.is_empty() || **name == form.key)
                .filter_map(|(_, key)| key.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let pools: Vec<&str> = if form.pool.is_empty() {
        vec![]
    } else {
        vec![form.pool.as_str()]
    };
    let request = json!({
        "name": form.name.trim(),
        "owner": session.name,
        "vcpus": vcpus,
        "memory_mib": memory_mib,
        "disk_gib": disk_gib,
        "image": form.image,
        "ssh_keys": keys,
        "pools": pools,
    });
    let result = session
        .api(&state, Method::POST, "/v1/vms", Some(request))
        .await;
    match result {
        Ok(value) => {
            let id = value["result"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            see_other(
                &format!("/panel/vms/{id}"),
                Some(Flash {
                    ok: true,
                    text: format!("{} is being created.", form.name.trim()),
                }),
            )
        }
        Err(failure) => after("/panel", Err(failure), |_| String::new()),
    }
}

/// The last bytes of the console shown on a VM's page.
const CONSOLE_TAIL: u64 = 8 * 1024;

async fn vm_page(
    State(state): State<ApiState>,
    session: Session,
    Path(vm): Path<String>,
) -> Response {
    let Some(vm) = segment(&vm) else {
        return bad_segment(&session, "vm");
    };
    let shown = match session
        .api(&state, Method::GET, &format!("/v1/vms/{vm}"), None)
        .await
    {
        Ok(shown) => shown,
        Err((status, message)) => {
            return session.problem(status, "/panel", "No such VM", &message);
        }
    };
    let path = format!("/v1/vms/{vm}/console");
    let console = match session.api(&state, Method::GET, &path, None).await {
        Ok(first) => {
            let total = first["total"].as_u64().unwrap_or(0);
            if total > CONSOLE_TAIL {
                let offset = total - CONSOLE_TAIL;
                session
                    .api(
                        &state,
                        Method::GET,
                        &format!("{path}?offset={offset}"),
                        None,
                    )
                    .await
            } else {
                Ok(first)
            }
        }
        Err(failure) => Err(failure),
    };
    let active = if session.admin && shown["owner"] != json!(session.name) {
        "/admin/vms"
    } else {
        "/panel"
    };
    session.page(
        StatusCode::OK,
        pages::vm_page(
            &session.chrome(active),
            &shown,
            console.as_ref().map_err(|(_, message)| message.clone()),
        ),
    )
}

async fn vm_action(
    State(state): State<ApiState>,
    session: Session,
    Path((vm, action)): Path<(String, String)>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(response) = session.check(&form.csrf) {
        return response;
    }
    let Some(vm) = segment(&vm) else {
        return bad_segment(&session, "vm");
    };
    let back = format!("/panel/vms/{vm}");
    let (method, path, done, to) = match action.as_str() {
        "start" | "stop" | "reboot" => (
            Method::POST,
            format!("/v1/vms/{vm}/{action}"),
            format!("{action}: asked."),
            back.clone(),
        ),
        "delete" => (
            Method::DELETE,
            format!("/v1/vms/{vm}"),
            "The VM is being deleted.".to_owned(),
            "/panel".to_owned(),
        ),
        _ => return bad_segment(&session, "action"),
    };
    match session.api(&state, method, &path, None).await {
        Ok(value) => after(&to, Ok(value), |_| done),
        Err(failure) => after(&back, Err(failure), |_| String::new()),
    }
}

async fn account_page(State(state): State<ApiState>, session: Session) -> Response {
    match session.get(&state, "/v1/me").await {
        Ok(me) => session.page(
            StatusCode::OK,
            pages::account_page(&session.chrome("/panel/account"), &me),
        ),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct NewKey {
    csrf: String,
    name: String,
    key: String,
}

async fn add_key(
    State(state): State<ApiState>,
    session: Session,
    Form(form): Form<NewKey>,
) -> Response {
    if let Some(response) = session.check(&form.csrf) {
        return response;
    }
    let name = form.name.trim();
    let Some(name) = segment(name) else {
        return see_other(
            "/panel/account",
            Some(Flash {
                ok: false,
                text: "name: use letters, digits and hyphens".into(),
            }),
        );
    };
    let body = json!({ "key": form.key.trim() });
    let result = session
        .api(
            &state,
            Method::PUT,
            &format!("/v1/me/ssh-keys/{name}"),
            Some(body),
        )
        .await;
    after("/panel/account", result, |_| format!("Key {name} added."))
}

async fn remove_key(
    State(state): State<ApiState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(response) = session.check(&form.csrf) {
        return response;
    }
    let Some(name) = segment(&name) else {
        return bad_segment(&session, "key");
    };
    let result = session
        .api(
            &state,
            Method::DELETE,
            &format!("/v1/me/ssh-keys/{name}"),
            None,
        )
        .await;
    after("/panel/account", result, |_| format!("Key {name} removed."))
}

#[derive(Deserialize)]
struct NewPassword {
    csrf: String,
    current: String,
    new: String,
}

async fn change_password(
    State(state): State<ApiState>,
    session: Session,
    Form(form): Form<NewPassword>,
) -> Response {
    if let Some(response) = session.check(&form.csrf) {
        return response;
    }
    let body = json!({ "current": form.current, "new": form.new });
    let result = session
        .api(&state, Method::POST, "/v1/me/password", Some(body))
        .await;
    after("/panel/account", result, |_| "Password changed.".into())
}

async fn nodes_page(State(state): State<ApiState>, session: Session) -> Response {
    if let Some(response) = session.admin_only("/admin") {
        return response;
    }
    let loaded = async {
        let members = session.get(&state, "/v1/members").await?;
        let hosts = session.get(&state, "/v1/hosts").await?;
        let desired = session.get(&state, "/v1/desired").await?;
        Ok::<_, Response>((members, hosts, desired))
    };
    match loaded.await {
        Ok((members, hosts, desired)) => session.page(
            StatusCode::OK,
            pages::nodes_page(&session.chrome("/admin"), &members, &hosts, &desired),
        ),
        Err(response) => response,
    }
}

async fn node_action(
    State(state): State<ApiState>,
    session: Session,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(response) = session.check(&form.csrf) {
        return response;
    }
    let Some(name) = segment(&name) else {
        return bad_segment(&session, "node");
    };
    if !matches!(action.as_str(), "drain" | "undrain" | "fence" | "unfence") {
        return bad_segment(&session, "action");
    }
    let result = session
        .api(
            &state,
            Method::POST,
            &format!("/v1/nodes/{name}/{action}"),
            None,
        )
        .await;
    after("/admin", result, |_| format!("{name}: {action} done."))
}

async fn members_page(State(state): State<ApiState>, session: Session) -> Response {
    if let Some(response) = session.admin_only("/admin/members") {
        return response;
    }
    let loaded = async {
        let accounts = session.get(&state, "/v1/accounts").await?;
        let vms = session.get(&state, "/v1/vms").await?;
        Ok::<_, Response>((accounts, vms))
    };
    match loaded.await {
        Ok((accounts, vms)) => session.page(
            StatusCode::OK,
            pages::members_page(&session.chrome("/admin/members"), &accounts, &vms),
        ),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct NewAccount {
    csrf: String,
    name: String,
    role: String,
    #[serde(default)]
    email: String,
    password: String,
}

async fn create_account(
    State(state): State<ApiState>,
    session: Session,
    Form(form): Form<NewAccount>,
) -> Response {
    if let Some(response) = session.check(&form.csrf) {
        return response;
    }
    let name = form.name.trim().to_owned();
    let body = json!({
        "name": name,
        "role": form.role,
        "email": form.email.trim(),
        "password": form.password,
    });
    let result = session
        .api(&state, Method::POST, "/v1/accounts", Some(body))
        .await;
    after("/admin/members", result, |_| {
        format!("Account {name} created.")
    })
}

async fn remove_account(
    State(state): State<ApiState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(response) = session.check(&form.csrf) {
        return response;
    }
    let Some(name) = segment(&name) else {
        return bad_segment(&session, "account");
    };
    let result = session
        .api(
            &state,
            Method::DELETE,
            &format!("/v1/accounts/{name}"),
            None,
        )
        .await;
    after("/admin/members", result, |_| {
        format!("Account {name} removed.")
    })
}

async fn services_page(State(state): State<ApiState>, session: Session) -> Response {
    if let Some(response) = session.admin_only("/admin/services") {
        return response;
    }
    let loaded = async {
        let services = session.get(&state, "/v1/services").await?;
        let cluster = session.get(&state, "/v1/cluster-services").await?;
        let records = session.get(&state, "/v1/records").await?;
        Ok::<_, Response>((services, cluster, records))
    };
    match loaded.await {
        Ok((services, cluster, records)) => session.page(
            StatusCode::OK,
            pages::services_page(
                &session.chrome("/admin/services"),
                &services,
                &cluster,
                &records,
            ),
        ),
        Err(response) => response,
    }
}

/// An admin page that shows one API document.
async fn admin_list(
    state: &ApiState,
    session: &Session,
    active: &str,
    path: &str,
    render: fn(&Chrome, &Value) -> String,
) -> Response {
    if let Some(response) = session.admin_only(active) {
        return response;
    }
    match session.get(state, path).await {
        Ok(value) => session.page(StatusCode::OK, render(&session.chrome(active), &value)),
        Err(response) => response,
    }
}

/// The route of an admin page that shows one API document.
fn listing(
    active: &'static str,
    path: &'static str,
    render: fn(&Chrome, &Value) -> String,
) -> axum::routing::MethodRouter<ApiState> {
    get(
        move |State(state): State<ApiState>, session: Session| async move {
            admin_list(&state, &session, active, path, render).await
        },
    )
}

async fn fix_drift(
    State(state): State<ApiState>,
    session: Session,
    Path((host, kind, vm)): Path<(String, String, String)>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(response) = session.check(&form.csrf) {
        return response;
    }
    let (Some(host), Some(kind), Some(vm)) = (segment(&host), segment(&kind), segment(&vm)) else {
        return bad_segment(&session, "drift");
    };
    let result = session
        .api(
            &state,
            Method::POST,
            &format!("/v1/drift/{host}/{kind}/{vm}/fix"),
            None,
        )
        .await;
    after("/admin/drift", result, |_| {
        format!("Fix of {host}/{kind}/{vm} asked; the host applies it on its next pass.")
    })
}

#[derive(Deserialize)]
struct AnnounceForm {
    csrf: String,
    subject: String,
    body: String,
}

async fn announce(
    State(state): State<ApiState>,
    session: Session,
    Form(form): Form<AnnounceForm>,
) -> Response {
    if let Some(response) = session.check(&form.csrf) {
        return response;
    }
    let body = json!({ "subject": form.subject, "body": form.body.replace("\r\n", "\n") });
    let result = session
        .api(&state, Method::POST, "/v1/announce", Some(body))
        .await;
    after("/admin/announce", result, |report| {
        let names = |key: &str| -> Vec<String> {
            report[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| v.as_str().or(v[0].as_str()).unwrap_or("").to_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let (sent, without, failed) = (names("sent"), names("without_email"), names("failed"));
        let mut text = format!("Sent to {} member(s)", sent.len());
        if !without.is_empty() {
            text.push_str(&format!("; no address for {}", without.join(", ")));
        }
        if !failed.is_empty() {
            text.push_str(&format!("; failed for {}", failed.join(", ")));
        }
        text + "."
    })
}

#[derive(Deserialize)]
struct NoticeForm {
    csrf: String,
    id: String,
    kind: String,
    title: String,
    #[serde(default)]
    body: String,
}

async fn post_notice(
    State(state): State<ApiState>,
    session: Session,
    Form(form): Form<NoticeForm>,
) -> Response {
    if let Some(response) = session.check(&form.csrf) {
        return response;
    }
    let notice = json!({
        "id": form.id.trim(),
        "kind": form.kind,
        "title": form.title.trim(),
        "body": form.body.replace("\r\n", "\n"),
    });
    let result = session
        .api(
            &state,
            Method::PUT,
            "/v1/notices",
            Some(json!({ "notice": notice })),
        )
        .await;
    after("/admin/announce", result, |_| {
        "Posted on the status page.".into()
    })
}

async fn notice_action(
    State(state): State<ApiState>,
    session: Session,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(response) = session.check(&form.csrf) {
        return response;
    }
    let Some(id) = segment(&id) else {
        return bad_segment(&session, "notice");
    };
    let result = match action.as_str() {
        "delete" => {
            session
                .api(&state, Method::DELETE, &format!("/v1/notices/{id}"), None)
                .await
        }
        "resolve" => {
            let notices = match session.get(&state, "/v1/notices").await {
                Ok(notices) => notices,
                Err(response) => return response,
            };
            let current = &notices[id];
            let mut notice = current["value"].clone();
            if notice.is_null() {
                return bad_segment(&session, "notice");
            }
            let posted = notice["posted_at"].as_u64().unwrap_or(0);
            notice["resolved_at"] = json!(unix_now().max(posted));
            let body = json!({ "notice": notice, "expect": { "version": current["version"] } });
            session
                .api(&state, Method::PUT, "/v1/notices", Some(body))
                .await
        }
        _ => return bad_segment(&session, "action"),
    };
    after("/admin/announce", result, |_| format!("Notice {id}: done."))
}
