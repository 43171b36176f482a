//! The panel's terminal: the page holding xterm.js, and its WebSocket, which takes the
//! session cookie, refuses another site's page (the `Origin` must be this node's own
//! address), applies the API's rules for the console, and carries the same session as
//! `GET /v1/vms/{vm}/console/attach`.

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use hearth_types::api::VmRow;

use super::context::{Session, bad_segment, segment};
use crate::api::{ApiState, error, unix_now};
use crate::auth::{self, Verdict};
use crate::web::html::TERMINAL_CSP;
use crate::web::pages;

pub(super) async fn terminal_page(
    State(state): State<ApiState>,
    session: Session,
    Path(vm): Path<String>,
) -> Response {
    let Some(vm) = segment(&vm) else {
        return bad_segment(&session, "vm");
    };
    let shown: VmRow = match session
        .api(&state, Method::GET, &format!("/v1/vms/{vm}"), None)
        .await
        .and_then(|value| {
            serde_json::from_value(value)
                .map_err(|e| (StatusCode::BAD_GATEWAY, format!("vm {vm}: {e}")))
        }) {
        Ok(shown) => shown,
        Err((status, message)) => {
            return session.problem(status, "/panel", "No such VM", &message);
        }
    };
    let active = if session.admin && shown.vm.request.owner != session.name {
        "/admin/vms"
    } else {
        "/panel"
    };
    let html = pages::terminal_page(&session.chrome(active), &shown);
    let mut response = session.page(StatusCode::OK, html);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(TERMINAL_CSP),
    );
    response
}

/// Whether the request comes from a page of this node: its `Origin`'s host and port are
/// the `Host` it was sent to. A WebSocket is not bound by the same-origin policy, so
/// without this another site's page could attach with the visitor's cookie.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let (Some(origin), Some(host)) = (text(header::ORIGIN), text(header::HOST)) else {
        return false;
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

pub(super) async fn terminal_socket(
    State(state): State<ApiState>,
    session: Session,
    Path(vm): Path<String>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !same_origin(&headers) {
        return error(
            StatusCode::FORBIDDEN,
            "the terminal's socket takes connections from this node's own pages only",
        );
    }
    let desired = state.state.as_ref().map(|node| node.reader().current());
    let Some(caller) =
        auth::authenticate(&session.token, &state.token, desired.as_deref(), unix_now())
    else {
        return error(StatusCode::UNAUTHORIZED, "the session ended; log in again");
    };
    let path = format!("/v1/vms/{vm}/console/attach");
    match auth::authorize(&caller, &Method::GET, &path, desired.as_deref()) {
        Verdict::Allow => {}
        Verdict::Forbidden(why) => return error(StatusCode::FORBIDDEN, &why),
        Verdict::Hidden(why) => return error(StatusCode::NOT_FOUND, &why),
    }
    match crate::api::console::open(&state, &vm, &caller, session.client).await {
        Ok(attached) => upgrade
            .max_message_size(crate::api::console::MAX_KEYS)
            .on_upgrade(move |socket| crate::api::console::bridge(socket, attached)),
        Err(answer) => answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_nodes_own_pages_may_open_the_socket() {
        let headers = |origin: Option<&str>, host: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, host.parse().unwrap());
            if let Some(origin) = origin {
                headers.insert(header::ORIGIN, origin.parse().unwrap());
            }
            headers
        };
        assert!(same_origin(&headers(
            Some("http://127.0.0.1:7800"),
            "127.0.0.1:7800"
        )));
        assert!(same_origin(&headers(
            Some("https://Panel.Example.org"),
            "panel.example.org"
        )));
        for (origin, host) in [
            (Some("http://evil.example"), "127.0.0.1:7800"),
            (Some("http://127.0.0.1:7801"), "127.0.0.1:7800"),
            (Some("null"), "127.0.0.1:7800"),
            (None, "127.0.0.1:7800"),
        ] {
            assert!(!same_origin(&headers(origin, host)), "{origin:?} {host}");
        }
    }
}
