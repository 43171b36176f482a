//! The `/v1/` middleware: authenticates the bearer token, applies `auth::authorize`, and writes
//! the audit entry of every change.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::context::{ApiState, error, unix_now};
use crate::auth::{self};
use axum::extract::Request;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;

/// Authenticates the bearer token, applies the authorization rules (`auth::authorize`) and
/// hands the caller to the handlers as an extension.
pub(super) async fn require_token(
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
