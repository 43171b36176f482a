//! The admins' pages: nodes (drain, fence), members, services, drift with its fixes,
//! announcements and status-page notices.

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::context::*;
use crate::api::{ApiState, unix_now};
use crate::web::pages::{self, Chrome};

pub(super) async fn nodes_page(State(state): State<ApiState>, session: Session) -> Response {
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

pub(super) async fn node_action(
    State(state): State<ApiState>,
    Path((name, action)): Path<(String, String)>,
    Posted { session, .. }: Posted<CsrfOnly>,
) -> Response {
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

pub(super) async fn members_page(State(state): State<ApiState>, session: Session) -> Response {
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
pub(super) struct NewAccount {
    csrf: String,
    name: String,
    role: String,
    #[serde(default)]
    email: String,
    password: String,
}

impl CsrfField for NewAccount {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub(super) async fn create_account(
    State(state): State<ApiState>,
    Posted { session, form }: Posted<NewAccount>,
) -> Response {
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

pub(super) async fn remove_account(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Posted { session, .. }: Posted<CsrfOnly>,
) -> Response {
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

pub(super) async fn services_page(State(state): State<ApiState>, session: Session) -> Response {
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
pub(super) async fn admin_list(
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
pub(super) fn listing(
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

pub(super) async fn fix_drift(
    State(state): State<ApiState>,
    Path((host, kind, vm)): Path<(String, String, String)>,
    Posted { session, .. }: Posted<CsrfOnly>,
) -> Response {
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
pub(super) struct AnnounceForm {
    csrf: String,
    subject: String,
    body: String,
}

impl CsrfField for AnnounceForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub(super) async fn announce(
    State(state): State<ApiState>,
    Posted { session, form }: Posted<AnnounceForm>,
) -> Response {
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
pub(super) struct NoticeForm {
    csrf: String,
    id: String,
    kind: String,
    title: String,
    #[serde(default)]
    body: String,
}

impl CsrfField for NoticeForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub(super) async fn post_notice(
    State(state): State<ApiState>,
    Posted { session, form }: Posted<NoticeForm>,
) -> Response {
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

pub(super) async fn notice_action(
    State(state): State<ApiState>,
    Path((id, action)): Path<(String, String)>,
    Posted { session, .. }: Posted<CsrfOnly>,
) -> Response {
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
