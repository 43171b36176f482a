//! What every panel page shares: the `Session` of a logged-in browser, the `Posted` form
//! extractor that checks its CSRF field, and the in-process call of the JSON API.

use crate::api::{ApiState, unix_now};
use crate::auth::{self, Caller};
use crate::web::pages::{self, Chrome};
use crate::web::session::{self, FLASH_COOKIE, Flash, SESSION_COOKIE};
use axum::Form;
use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tower::ServiceExt;

/// A logged-in browser: its session token (an API token), who that is, and the flash
/// message left by the last form, if any.
pub struct Session {
    pub(super) token: String,
    pub(super) name: String,
    pub(super) admin: bool,
    pub(super) csrf: String,
    pub(super) flash: Option<Flash>,
    /// The browser's address, which the API's audit entries record.
    pub(super) client: Option<std::net::IpAddr>,
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
                client: crate::login_limit::client_of(
                    &parts.extensions,
                    &parts.headers,
                    &state.logins.trusted_proxies,
                ),
            }),
            _ => Err(see_other("/login", None)),
        }
    }
}

impl Session {
    pub(super) fn chrome<'a>(&'a self, active: &'a str) -> Chrome<'a> {
        Chrome {
            user: &self.name,
            admin: self.admin,
            csrf: &self.csrf,
            active,
            flash: self.flash.as_ref(),
        }
    }

    /// The page, clearing the flash message it showed.
    pub(super) fn page(&self, status: StatusCode, html: String) -> Response {
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

    pub(super) fn problem(
        &self,
        status: StatusCode,
        active: &str,
        title: &str,
        message: &str,
    ) -> Response {
        self.page(status, pages::problem(&self.chrome(active), title, message))
    }

    /// Admin pages answer members with 403, as the API does: the refusal, if any.
    pub(super) fn admin_only(&self, active: &str) -> Option<Response> {
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
    pub(super) fn check(&self, csrf: &str) -> Option<Response> {
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
    pub(super) async fn api(
        &self,
        state: &ApiState,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Api {
        call(state, &self.token, self.client, method, path, body).await
    }

    /// GETs an API document and reads it as `T`, the row type the API writes it from.
    pub(super) async fn get<T: DeserializeOwned>(
        &self,
        state: &ApiState,
        path: &str,
    ) -> Result<T, Response> {
        match self.api(state, Method::GET, path, None).await {
            Ok(value) => serde_json::from_value(value).map_err(|error| {
                self.problem(
                    StatusCode::BAD_GATEWAY,
                    "",
                    "Not available",
                    &format!("the answer of {path} could not be read: {error}"),
                )
            }),
            Err((status, message)) => Err(self.problem(status, "", "Not available", &message)),
        }
    }
}

/// A form's CSRF field, which `Posted` checks against the session.
pub(super) trait CsrfField {
    fn csrf(&self) -> &str;
}

/// A form posted by a logged-in browser, its CSRF field checked against the session: the
/// extractor every panel `POST` takes, so no handler can forget the check. It refuses as the
/// handlers did: no session sends the browser to the login page, a malformed form is the
/// form extractor's answer, and a field of another session is a 403 page.
pub(super) struct Posted<T> {
    pub(super) session: Session,
    pub(super) form: T,
}

impl<T> FromRequest<ApiState> for Posted<T>
where
    T: CsrfField + serde::de::DeserializeOwned + Send,
{
    type Rejection = Response;

    async fn from_request(request: Request<Body>, state: &ApiState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let session = Session::from_request_parts(&mut parts, state).await?;
        let request = Request::from_parts(parts, body);
        let Form(form) = Form::<T>::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        if let Some(refusal) = session.check(form.csrf()) {
            return Err(refusal);
        }
        Ok(Posted { session, form })
    }
}

/// An API answer: the JSON, or the status and the `error` message.
pub(super) type Api = Result<Value, (StatusCode, String)>;

/// One request through the API router, in-process.
pub(super) async fn call(
    state: &ApiState,
    token: &str,
    client: Option<std::net::IpAddr>,
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
    let mut request = builder
        .body(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    if let Some(client) = client {
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::new(
                client, 0,
            )));
    }
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
pub(super) fn see_other(to: &str, flash: Option<Flash>) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response();
    if let Some(flash) = flash
        && let Ok(value) = session::set_cookie(FLASH_COOKIE, &flash.encode(), 60).parse()
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// A typed request body for [`Session::api`].
pub(super) fn body(request: &impl Serialize) -> Option<Value> {
    serde_json::to_value(request).ok()
}

/// After a form: back to `to`, with `done` or the API's error as the flash message.
pub(super) fn after(to: &str, result: Api, done: impl FnOnce(Value) -> String) -> Response {
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
pub(super) fn segment(text: &str) -> Option<&str> {
    (!text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    .then_some(text)
}

pub(super) fn bad_segment(session: &Session, what: &str) -> Response {
    session.problem(
        StatusCode::NOT_FOUND,
        "",
        "Not found",
        &format!("{what}: no such name"),
    )
}

pub(super) fn html(status: StatusCode, body: String) -> Response {
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

#[derive(Deserialize)]
pub(super) struct CsrfOnly {
    pub(super) csrf: String,
}

impl CsrfField for CsrfOnly {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}
