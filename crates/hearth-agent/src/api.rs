//! The local HTTP API: JSON under `/v1/` (token required), Prometheus `/metrics` and the
//! public status page `/status` (no token).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hearth_dns::DnsMetrics;
use hearth_membership::Membership;
use hearth_types::{MemberRow, ServiceRow};
use tokio_util::sync::CancellationToken;

use crate::auth;
use crate::checks::Instances;
use crate::handlers::HandlerMetrics;
use crate::metrics::{MetricsSources, render};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub token: Arc<str>,
    pub membership: Membership,
    pub instances: Instances,
    pub dns_metrics: Arc<DnsMetrics>,
    pub handler_metrics: Arc<HandlerMetrics>,
    /// The replicated state, on servers and witnesses.
    pub state: Option<hearth_state::node::StateNode>,
    pub compute_metrics: Arc<hearth_compute::ComputeMetrics>,
    /// Where this node's VMs live (`data_dir/vms`), for their consoles.
    pub vms_dir: std::path::PathBuf,
    /// Verified image files on this node.
    pub blobs: hearth_compute::blobs::BlobStore,
    /// Cancelled by `POST /v1/leave` once the node has left, to stop the agent.
    pub shutdown: CancellationToken,
    /// `[smtp]`, for announcements.
    pub mail: Option<Arc<crate::mail::MailSettings>>,
    /// Failed web logins on this node.
    pub logins: Arc<std::sync::Mutex<crate::web::session::LoginLimiter>>,
}

pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/v1/members", get(members))
        .route("/v1/services", get(services))
        .route("/v1/leave", post(leave))
        .route("/v1/audit", get(audit_log))
        .merge(crate::state_api::routes())
        .merge(crate::compute_api::routes())
        .merge(crate::accounts_api::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(v1)
        .route("/metrics", get(metrics))
        .route("/status", get(status_page))
        .route("/status.json", get(status_json))
        .route("/v1/openapi.json", get(openapi))
        .merge(crate::web::panel::routes())
        .fallback(not_found)
        .layer(middleware::map_response(with_security_headers))
        .with_state(state)
}

/// Adds `web::security_headers` to an answer.
async fn with_security_headers(mut response: Response) -> Response {
    static HEADERS: std::sync::LazyLock<Vec<(HeaderName, HeaderValue)>> =
        std::sync::LazyLock::new(|| {
            crate::web::security_headers()
                .into_iter()
                .filter_map(|(name, value)| {
                    Some((
                        HeaderName::from_static(name),
                        HeaderValue::from_str(&value).ok()?,
                    ))
                })
                .collect()
        });
    for (name, value) in HEADERS.iter() {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// Seconds since the epoch, by this node's clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An error body: `{"error": "..."}`.
pub fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

/// Authenticates the bearer token, applies the authorization rules (`auth::authorize`) and
/// hands the caller to the handlers as an extension.
async fn require_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let Some(token) = presented else {
        return error(
            StatusCode::UNAUTHORIZED,
            "an API token is required: send `Authorization: Bearer <token>` (the agent keeps it in <data_dir>/api-token)",
        );
    };
    let desired = state.state.as_ref().map(|node| node.reader().current());
    let Some(caller) = auth::authenticate(token, &state.token, desired.as_deref(), unix_now())
    else {
        return error(
            StatusCode::UNAUTHORIZED,
            "the API token is wrong or revoked",
        );
    };
    match auth::authorize(
        &caller,
        request.method(),
        request.uri().path(),
        desired.as_deref(),
    ) {
        auth::Verdict::Allow => {
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            request.extensions_mut().insert(caller.clone());
            let response = next.run(request).await;
            if method != Method::GET {
                audit(&state, &caller, &method, path, response.status());
            }
            response
        }
        auth::Verdict::Forbidden(why) => error(StatusCode::FORBIDDEN, &why),
        auth::Verdict::Hidden(why) => error(StatusCode::NOT_FOUND, &why),
    }
}

/// Records a change attempt in the audit log, off the request's path (a write without a
/// quorum is not audited: nothing can be recorded then, and nothing changed).
fn audit(
    state: &ApiState,
    caller: &auth::Caller,
    method: &Method,
    path: String,
    status: StatusCode,
) {
    let Some(node) = state.state.clone() else {
        return;
    };
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return;
    }
    let entry = hearth_types::account::AuditEntry {
        at: unix_now(),
        who: caller.name().to_owned(),
        method: method.as_str().to_owned(),
        path,
        status: status.as_u16(),
        node: state.membership.views().borrow().self_name.clone(),
    };
    tokio::spawn(async move {
        let command = hearth_state::model::Command::Audit { entry };
        if let Err(error) = node.submit(command).await {
            tracing::warn!(%error, "audit entry not recorded");
        }
    });
}

async fn audit_log(State(state): State<ApiState>) -> Response {
    match &state.state {
        Some(node) => Json(node.reader().current().audit.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "this node holds no state"),
    }
}

async fn members(State(state): State<ApiState>) -> Json<Vec<MemberRow>> {
    Json(state.membership.views().borrow().member_rows())
}

async fn services(State(state): State<ApiState>) -> Json<Vec<ServiceRow>> {
    Json(state.membership.views().borrow().service_rows())
}

async fn leave(State(state): State<ApiState>) -> Json<serde_json::Value> {
    state.membership.leave().await;
    state.shutdown.cancel();
    Json(serde_json::json!({ "left": true }))
}

/// The status from this node's own view and its own copy of the notices: never waits on
/// another node, so it answers while Raft has no quorum.
fn local_status(state: &ApiState) -> crate::web::status::Status {
    let view = state.membership.views().borrow().clone();
    let desired = state.state.as_ref().map(|node| node.reader().current());
    let notices = desired
        .as_ref()
        .map(|d| d.notices.values().map(|n| &n.value).collect::<Vec<_>>())
        .unwrap_or_default();
    crate::web::status::status(&view, notices.into_iter())
}

/// The public status page: no token.
async fn status_page(State(state): State<ApiState>) -> Response {
    let html = crate::web::status::render(&local_status(&state));
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

async fn openapi() -> Response {
    Json(crate::openapi::document()).into_response()
}

async fn status_json(State(state): State<ApiState>) -> Response {
    Json(local_status(&state)).into_response()
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let view = state.membership.views().borrow().clone();
    let local: Vec<_> = state.instances.lock().await.values().cloned().collect();
    let body = render(&MetricsSources {
        view: &view,
        local_instances: &local,
        gossip: &state.membership.metrics,
        dns: &state.dns_metrics,
        handlers: &state.handler_metrics,
        compute: &state.compute_metrics,
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[cfg(test)]
mod tests {
    use crate::auth::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
