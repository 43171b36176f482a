//! The `/v1/` middleware: authenticates the bearer token, applies `auth::authorize`, and writes
//! the audit entry of every change attempted, refused ones included.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::audit::{Audited, record};
use super::context::{ApiState, error, unix_now};
use crate::auth::{self};
use crate::login_limit::client_of;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use hearth_types::account::ANONYMOUS;

/// Authenticates the bearer token, applies the authorization rules (`auth::authorize`) and
/// hands the caller to the handlers as an extension. Every change attempted, refused ones
/// included, goes to the audit log.
pub(super) async fn require_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let client = client_of(
        request.extensions(),
        &headers,
        &state.logins.trusted_proxies,
    );
    let audit = |who: &str, status: StatusCode, note: &str| {
        if method != Method::GET {
            record(
                &state,
                Audited {
                    who,
                    method: method.as_str(),
                    path: path.clone(),
                    status,
                    client,
                    note: note.to_owned(),
                },
            );
        }
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let Some(token) = presented else {
        audit(ANONYMOUS, StatusCode::UNAUTHORIZED, "no token");
        return error(
            StatusCode::UNAUTHORIZED,
            "an API token is required: send `Authorization: Bearer <token>` (the agent keeps it in <data_dir>/api-token)",
        );
    };
    let desired = state.state.as_ref().map(|node| node.reader().current());
    let caller = auth::authenticate(token, &state.token, desired.as_deref(), unix_now());
    // A worker's own token is not root: its files must not be the keys to the co-op.
    let caller = caller.map(|c| match c {
        auth::Caller::Root if state.worker_only => auth::Caller::Worker,
        other => other,
    });
    let Some(caller) = caller else {
        audit(
            ANONYMOUS,
            StatusCode::UNAUTHORIZED,
            "wrong or revoked token",
        );
        return error(
            StatusCode::UNAUTHORIZED,
            "the API token is wrong or revoked",
        );
    };
    let (status, why) = match auth::authorize(&caller, &method, &path, desired.as_deref()) {
        auth::Verdict::Allow => {
            request.extensions_mut().insert(caller.clone());
            let response = next.run(request).await;
            audit(caller.name(), response.status(), "");
            return response;
        }
        auth::Verdict::Forbidden(why) => (StatusCode::FORBIDDEN, why),
        auth::Verdict::Hidden(why) => (StatusCode::NOT_FOUND, why),
    };
    audit(caller.name(), status, "refused");
    error(status, &why)
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
