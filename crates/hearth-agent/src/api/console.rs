//! `GET /v1/vms/{vm}/console/attach`: a VM's serial console over a WebSocket, from any node.
//! The session runs on the VM's host (`hearth_compute::console`); this node carries it to
//! the caller, over the encrypted cluster RPC when the host is another node. The panel's
//! terminal page uses the same session through `bridge`.
//!
//! On the socket, binary messages from the server are what the guest wrote; text messages
//! are JSON: `{"writer": NAME|null, "you": BOOL}` when the keyboard changes hands, and
//! `{"closed": WHY}` before the server closes. Everything the client sends (binary or text)
//! is keystrokes, dropped unless this attachment holds the keyboard.

use axum::Extension;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use hearth_state::files::{ConsoleAttach, ConsoleEvent, ConsoleSession};
use hearth_types::account::TokenScope;

use super::audit::{Audited, record};
use super::context::{ApiState, error};
use crate::auth::Caller;
use crate::login_limit::client_of;

/// The most bytes of keystrokes one message may carry.
pub const MAX_KEYS: usize = 64 * 1024;

/// The API's route: the caller's token was checked by the guard, which lets only admins and
/// the VM's owner reach it.
pub(super) async fn attach(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    Extension(caller): Extension<Caller>,
    extensions: Extensions,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        if let Err(answer) = super::vms::placed(&state, &key, "console").await {
            return answer;
        }
        return error(
            StatusCode::UPGRADE_REQUIRED,
            "this is a WebSocket: connect with a WebSocket client (`hearth vm console NAME --interactive` does)",
        );
    };
    let client = client_of(&extensions, &headers, &state.logins.trusted_proxies);
    match open(&state, &key, &caller, client).await {
        Ok(session) => upgrade
            .max_message_size(MAX_KEYS)
            .on_upgrade(move |socket| bridge(socket, session)),
        Err(answer) => answer,
    }
}

/// Whether `caller` may type into a console: not with a read-only token, nor a worker's
/// node token (which only reads).
pub fn may_type(caller: &Caller) -> bool {
    match caller {
        Caller::Root => true,
        Caller::Worker => false,
        Caller::Account { scope, .. } => *scope != TokenScope::ReadOnly,
    }
}

/// Attaches `caller` to the console of VM `key`, wherever it runs; the answer saying why
/// not (404 no such VM, 409 not placed, 503 its host does not serve the console). The
/// attachment is recorded in the audit log with the browser's or client's address.
pub async fn open(
    state: &ApiState,
    key: &str,
    caller: &Caller,
    client: Option<std::net::IpAddr>,
) -> Result<ConsoleSession, Response> {
    let (vm, host, here) = super::vms::placed(state, key, "console").await?;
    let Some(node) = &state.state else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node holds no state",
        ));
    };
    let attach = ConsoleAttach {
        vm: vm.id.clone(),
        who: caller.name().to_owned(),
        may_write: may_type(caller),
    };
    let may_write = attach.may_write;
    let session = node
        .attach_console(&host, here, attach)
        .await
        .map_err(|e| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("console of {key} on {host}: {e}"),
            )
        })?;
    record(
        state,
        Audited {
            who: caller.name(),
            method: "GET",
            path: format!("/v1/vms/{}/console/attach", vm.id),
            status: StatusCode::SWITCHING_PROTOCOLS,
            client,
            note: match may_write {
                true => format!("attached to the console of {} on {host}", vm.id),
                false => format!("watching the console of {} on {host}", vm.id),
            },
        },
    );
    Ok(session)
}

/// Carries a console session over a WebSocket until either side ends it.
pub async fn bridge(socket: WebSocket, session: ConsoleSession) {
    let (mut sink, mut stream) = socket.split();
    let ConsoleSession { mut events, input } = session;
    let to_client = async move {
        while let Some(event) = events.recv().await {
            let (message, last) = match event {
                ConsoleEvent::Output(bytes) => (Message::Binary(bytes.into()), false),
                ConsoleEvent::Writer { name, you } => {
                    let text = serde_json::json!({ "writer": name, "you": you }).to_string();
                    (Message::Text(text.into()), false)
                }
                ConsoleEvent::Closed(why) => {
                    let text = serde_json::json!({ "closed": why }).to_string();
                    (Message::Text(text.into()), true)
                }
            };
            if sink.send(message).await.is_err() || last {
                break;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    };
    let from_client = async move {
        while let Some(Ok(message)) = stream.next().await {
            let keys = match message {
                Message::Binary(bytes) => bytes.to_vec(),
                Message::Text(text) => text.as_bytes().to_vec(),
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if input.send(keys).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = to_client => {}
        _ = from_client => {}
    }
}
