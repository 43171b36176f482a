//! The admins' pages: nodes (drain, fence), members, services, drift with its fixes,
//! announcements and status-page notices.

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::get;
use hearth_types::api::{AccountRow, Announcement, Expect, HostRow, PutNotice, VmRow};
use hearth_types::desired::{ClusterService, DesiredState, RecordSet, Versioned};
use hearth_types::notice::{Notice, NoticeKind};
use hearth_types::{MemberRow, ServiceRow};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

use crate::mail::Report;

use super::context::*;
use crate::api::{ApiState, unix_now};
use crate::web::pages::{self, Chrome};

pub(super) async fn nodes_page(State(state): State<ApiState>, session: Session) -> Response {
    if let Some(response) = session.admin_only("/admin") {
        return response;
    }
    let loaded = async {
        let members: Vec<MemberRow> = session.get(&state, "/v1/members").await?;
        let hosts: Vec<HostRow> = session.get(&state, "/v1/hosts").await?;
        let desired: DesiredState = session.get(&state, "/v1/desired").await?;
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
        let accounts: Vec<AccountRow> = session.get(&state, "/v1/accounts").await?;
        let vms: Vec<VmRow> = session.get(&state, "/v1/vms").await?;
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
    role: hearth_types::account::AccountRole,
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
    let request = hearth_types::api::NewAccount {
        name: name.clone(),
        role: form.role,
        email: form.email.trim().to_owned(),
        password: form.password,
    };
    let result = session
        .api(&state, Method::POST, "/v1/accounts", body(&request))
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

/// Lets in a member who signed up while the co-op approves new members.
pub(super) async fn approve_account(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Posted { session, .. }: Posted<CsrfOnly>,
) -> Response {
    let Some(name) = segment(&name) else {
        return bad_segment(&session, "account");
    };
    let path = format!("/v1/accounts/{name}/approve");
    let result = session.api(&state, Method::POST, &path, None).await;
    after("/admin/members", result, |_| {
        format!("Account {name} approved; they can log in.")
    })
}

pub(super) async fn services_page(State(state): State<ApiState>, session: Session) -> Response {
    if let Some(response) = session.admin_only("/admin/services") {
        return response;
    }
    let loaded = async {
        let services: Vec<ServiceRow> = session.get(&state, "/v1/services").await?;
        let cluster: BTreeMap<String, Versioned<ClusterService>> =
            session.get(&state, "/v1/cluster-services").await?;
        let records: BTreeMap<String, Versioned<RecordSet>> =
            session.get(&state, "/v1/records").await?;
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
pub(super) async fn admin_list<T: DeserializeOwned>(
    state: &ApiState,
    session: &Session,
    active: &str,
    path: &str,
    render: fn(&Chrome, &T) -> String,
) -> Response {
    if let Some(response) = session.admin_only(active) {
        return response;
    }
    match session.get::<T>(state, path).await {
        Ok(value) => session.page(StatusCode::OK, render(&session.chrome(active), &value)),
        Err(response) => response,
    }
}

/// The route of an admin page that shows one API document.
pub(super) fn listing<T: DeserializeOwned + 'static>(
    active: &'static str,
    path: &'static str,
    render: fn(&Chrome, &T) -> String,
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
    let request = Announcement {
        subject: form.subject,
        body: form.body.replace("\r\n", "\n"),
    };
    let result = session
        .api(&state, Method::POST, "/v1/announce", body(&request))
        .await;
    after("/admin/announce", result, |report| {
        let report: Report = serde_json::from_value(report).unwrap_or_default();
        let (sent, without) = (report.sent, report.without_email);
        let failed: Vec<String> = report.failed.into_iter().map(|(name, _)| name).collect();
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
    kind: NoticeKind,
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
    let request = PutNotice {
        notice: Notice {
            id: form.id.trim().to_owned(),
            kind: form.kind,
            title: form.title.trim().to_owned(),
            body: form.body.replace("\r\n", "\n"),
            posted_at: 0,
            resolved_at: None,
        },
        expect: Expect::Any,
    };
    let result = session
        .api(&state, Method::PUT, "/v1/notices", body(&request))
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
            let notices: BTreeMap<String, Versioned<Notice>> =
                match session.get(&state, "/v1/notices").await {
                    Ok(notices) => notices,
                    Err(response) => return response,
                };
            let Some(current) = notices.get(id) else {
                return bad_segment(&session, "notice");
            };
            let mut notice = current.value.clone();
            notice.resolved_at = Some(unix_now().max(notice.posted_at));
            let request = PutNotice {
                notice,
                expect: Expect::Version(current.version),
            };
            session
                .api(&state, Method::PUT, "/v1/notices", body(&request))
                .await
        }
        _ => return bad_segment(&session, "action"),
    };
    after("/admin/announce", result, |_| format!("Notice {id}: done."))
}
