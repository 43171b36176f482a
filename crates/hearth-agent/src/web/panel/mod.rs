//! The web panel's routes: login and logout, the member pages (`/panel`) and the admin pages
//! (`/admin`). Every read and change goes through the JSON API in-process, with the session's
//! token as the bearer, so the panel takes exactly the API's code path: the same
//! authorization, validation, Raft write and audit entry as `curl` or the CLI.

mod admin;
mod backups;
mod billing;
mod context;
mod login;
mod member;
mod signup;
mod terminal;
mod zones;

use crate::api::ApiState;
use crate::web::pages::{self};
use admin::*;
use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::{HeaderMap, Request};
use axum::response::Response;
use axum::routing::{get, post};
use billing::*;
use context::*;
use hearth_types::account::AuditEntry;
use hearth_types::api::VmRow;
use hearth_types::compute::Drift;
use hearth_types::desired::EventRecord;
use login::*;
use member::*;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/signup", get(signup::signup_form).post(signup::signup))
        .route("/verify", get(signup::verify_form).post(signup::verify))
        .route("/reset", get(signup::reset_form).post(signup::reset))
        .route(
            "/reset/confirm",
            get(signup::reset_confirm_form).post(signup::reset_confirm),
        )
        .route("/panel", get(member_home))
        .route("/panel/vms", post(create_vm))
        .route("/panel/vms/{vm}", get(vm_page))
        .route("/panel/vms/{vm}/{action}", post(vm_action))
        .route("/panel/vms/{vm}/terminal", get(terminal::terminal_page))
        .route(
            "/panel/vms/{vm}/terminal/ws",
            get(terminal::terminal_socket),
        )
        .route("/panel/billing", get(billing_home))
        .route("/panel/billing/{month}", get(invoice_page))
        .route("/admin/billing", get(admin_billing))
        .route("/admin/billing.csv", get(admin_billing_csv))
        .route("/panel/account", get(account_page))
        .route("/panel/account/keys", post(add_key))
        .route("/panel/account/keys/{name}/delete", post(remove_key))
        .route("/panel/account/password", post(change_password))
        .route("/admin", get(nodes_page))
        .route("/admin/nodes/{name}/{action}", post(node_action))
        .route("/admin/members", get(members_page).post(create_account))
        .route("/admin/members/{name}/delete", post(remove_account))
        .route("/admin/members/{name}/approve", post(approve_account))
        .route("/admin/services", get(services_page))
        .route(
            "/admin/vms",
            listing("/admin/vms", "/v1/vms", |c, v: &Vec<VmRow>| {
                pages::all_vms_page(c, v)
            }),
        )
        .route(
            "/admin/drift",
            listing("/admin/drift", "/v1/drift", |c, v: &Vec<Drift>| {
                pages::drift_page(c, v)
            }),
        )
        .route("/admin/drift/{host}/{kind}/{vm}/fix", post(fix_drift))
        .route(
            "/admin/events",
            listing("/admin/events", "/v1/events", |c, v: &Vec<EventRecord>| {
                pages::events_page(c, v)
            }),
        )
        .route(
            "/admin/audit",
            listing("/admin/audit", "/v1/audit", |c, v: &Vec<AuditEntry>| {
                pages::audit_page(c, v)
            }),
        )
        .route(
            "/admin/announce",
            listing("/admin/announce", "/v1/notices", pages::announce_page).post(announce),
        )
        .route("/admin/notices", post(post_notice))
        .route("/admin/notices/{id}/{action}", post(notice_action))
        .merge(zones::routes())
        .merge(backups::routes())
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
