//! A member's pages: their VMs (create, show, start, stop, reboot, delete) and their account
//! (SSH keys, password).

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use hearth_types::api::{AccountRow, ConsoleText, Key, PoolRow, VmRow, VmStats};
use hearth_types::compute::{Arch, Image, IoLimits, Power, VmRequest};
use hearth_types::desired::Versioned;
use serde::Deserialize;
use std::collections::BTreeMap;

use super::context::*;
use crate::api::ApiState;
use crate::web::pages;
use crate::web::session::Flash;

pub(super) async fn member_home(State(state): State<ApiState>, session: Session) -> Response {
    let owner = session.name.clone();
    let loaded = async {
        let vms: Vec<VmRow> = session
            .get(&state, &format!("/v1/vms?owner={owner}"))
            .await?;
        let images: BTreeMap<String, Versioned<Image>> = session.get(&state, "/v1/images").await?;
        let pools: Vec<PoolRow> = session.get(&state, "/v1/pools").await?;
        let me: AccountRow = session.get(&state, "/v1/me").await?;
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
pub(super) struct NewVm {
    csrf: String,
    name: String,
    image: String,
    size: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    pool: String,
}

impl CsrfField for NewVm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub(super) async fn create_vm(
    State(state): State<ApiState>,
    Posted { session, form }: Posted<NewVm>,
) -> Response {
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
    let me: AccountRow = match session.get(&state, "/v1/me").await {
        Ok(me) => me,
        Err(response) => return response,
    };
    let keys: Vec<String> = me
        .ssh_keys
        .into_iter()
        .filter(|(name, _)| form.key.is_empty() || *name == form.key)
        .map(|(_, key)| key)
        .collect();
    let pools: Vec<String> = if form.pool.is_empty() {
        vec![]
    } else {
        vec![form.pool.clone()]
    };
    let request = VmRequest {
        name: form.name.trim().to_owned(),
        owner: session.name.clone(),
        arch: Arch::X86_64,
        vcpus: *vcpus,
        memory_mib: *memory_mib,
        disk_gib: *disk_gib,
        image: form.image.clone(),
        ssh_keys: keys,
        pools,
        io: IoLimits::default(),
        power: Power::Running,
        replicas: 1,
    };
    let result = session
        .api(&state, Method::POST, "/v1/vms", body(&request))
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

/// A piece of a VM's console, or why there is none.
async fn console_text(
    session: &Session,
    state: &ApiState,
    path: &str,
) -> Result<ConsoleText, (StatusCode, String)> {
    let value = session.api(state, Method::GET, path, None).await?;
    serde_json::from_value(value).map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))
}

/// The last bytes of the console shown on a VM's page.
pub(super) const CONSOLE_TAIL: u64 = 8 * 1024;

/// `?range=week` on a VM's page: its charts cover the last week instead of the last day.
#[derive(Debug, Default, Deserialize)]
pub(super) struct VmPageQuery {
    #[serde(default)]
    range: Option<String>,
}

pub(super) async fn vm_page(
    State(state): State<ApiState>,
    session: Session,
    Path(vm): Path<String>,
    Query(query): Query<VmPageQuery>,
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
    let path = format!("/v1/vms/{vm}/console");
    let console = match console_text(&session, &state, &path).await {
        Ok(first) if first.total > CONSOLE_TAIL => {
            let offset = first.total - CONSOLE_TAIL;
            console_text(&session, &state, &format!("{path}?offset={offset}")).await
        }
        other => other,
    };
    let stats = session
        .api(&state, Method::GET, &format!("/v1/vms/{vm}/stats"), None)
        .await
        .and_then(|value| {
            serde_json::from_value::<VmStats>(value)
                .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))
        });
    let load = pages::Load {
        stats: stats.as_ref().map_err(|(_, message)| message.clone()),
        range: match query.range.as_deref() {
            Some("week") => pages::Range::Week,
            _ => pages::Range::Day,
        },
        now_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    let active = if session.admin && shown.vm.request.owner != session.name {
        "/admin/vms"
    } else {
        "/panel"
    };
    session.page(
        StatusCode::OK,
        pages::vm_page(
            &session.chrome(active),
            &shown,
            &load,
            console.as_ref().map_err(|(_, message)| message.clone()),
        ),
    )
}

pub(super) async fn vm_action(
    State(state): State<ApiState>,
    Path((vm, action)): Path<(String, String)>,
    Posted { session, .. }: Posted<CsrfOnly>,
) -> Response {
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

pub(super) async fn account_page(State(state): State<ApiState>, session: Session) -> Response {
    match session.get::<AccountRow>(&state, "/v1/me").await {
        Ok(me) => session.page(
            StatusCode::OK,
            pages::account_page(&session.chrome("/panel/account"), &me),
        ),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
pub(super) struct NewKey {
    csrf: String,
    name: String,
    key: String,
}

impl CsrfField for NewKey {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub(super) async fn add_key(
    State(state): State<ApiState>,
    Posted { session, form }: Posted<NewKey>,
) -> Response {
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
    let request = Key {
        key: form.key.trim().to_owned(),
    };
    let result = session
        .api(
            &state,
            Method::PUT,
            &format!("/v1/me/ssh-keys/{name}"),
            body(&request),
        )
        .await;
    after("/panel/account", result, |_| format!("Key {name} added."))
}

pub(super) async fn remove_key(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Posted { session, .. }: Posted<CsrfOnly>,
) -> Response {
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
pub(super) struct NewPassword {
    csrf: String,
    current: String,
    new: String,
}

impl CsrfField for NewPassword {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub(super) async fn change_password(
    State(state): State<ApiState>,
    Posted { session, form }: Posted<NewPassword>,
) -> Response {
    let request = hearth_types::api::NewPassword {
        current: form.current,
        new: form.new,
        revoke_tokens: false,
    };
    let result = session
        .api(&state, Method::POST, "/v1/me/password", body(&request))
        .await;
    let changed = result.is_ok();
    let mut response = after("/panel/account", result, |_| "Password changed.".into());
    // The change ended every session of the account, this one too: this browser gets a
    // new one, the others log in again.
    if changed
        && let Some(secret) =
            super::login::open_session(&state, &session.name, crate::api::unix_now()).await
        && let Ok(cookie) = crate::web::session::set_cookie(
            crate::web::session::SESSION_COOKIE,
            &secret,
            crate::web::session::SESSION_SECS,
        )
        .parse()
    {
        response
            .headers_mut()
            .append(axum::http::header::SET_COOKIE, cookie);
    }
    response
}
