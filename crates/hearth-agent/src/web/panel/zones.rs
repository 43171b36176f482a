//! The routes of a member's own DNS zones in the panel: list and claim, one zone, the proof
//! check (an admin's approval), record sets, followed names and release. Each goes through
//! `/v1/zones` in-process, so the panel is authorized and validated exactly as the API is.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use hearth_types::api::{AccountRow, FollowVm, NewZone, VmRow, ZoneRow};
use hearth_types::desired::RecordSet;
use serde::Deserialize;

use super::context::*;
use crate::api::ApiState;
use crate::web::session::Flash;
use crate::web::zones;

const ACTIVE: &str = "/panel/zones";

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/panel/zones", get(zones_home).post(claim_zone))
        .route("/panel/zones/{apex}", get(zone_page))
        .route("/panel/zones/{apex}/verify", post(verify_zone))
        .route("/panel/zones/{apex}/records", post(put_set))
        .route("/panel/zones/{apex}/records/delete", post(remove_set))
        .route("/panel/zones/{apex}/follows", post(follow))
        .route("/panel/zones/{apex}/unfollow", post(unfollow))
        .route("/panel/zones/{apex}/delete", post(release))
}

async fn zones_home(State(state): State<ApiState>, session: Session) -> Response {
    let loaded = async {
        let zones: Vec<ZoneRow> = session.get(&state, "/v1/zones").await?;
        let me: AccountRow = session.get(&state, "/v1/me").await?;
        Ok::<_, Response>((zones, me))
    };
    match loaded.await {
        Ok((zones, me)) => {
            let quota = me.quota.and_then(|q| q.zones);
            session.page(
                StatusCode::OK,
                zones::zones_page(&session.chrome(ACTIVE), &zones, quota),
            )
        }
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct NewZoneForm {
    csrf: String,
    apex: String,
}

impl CsrfField for NewZoneForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

async fn claim_zone(
    State(state): State<ApiState>,
    Posted { session, form }: Posted<NewZoneForm>,
) -> Response {
    let apex = form.apex.trim().trim_end_matches('.').to_ascii_lowercase();
    let request = NewZone {
        apex: apex.clone(),
        owner: None,
    };
    match session
        .api(&state, Method::POST, "/v1/zones", body(&request))
        .await
    {
        Ok(value) => after(&format!("{ACTIVE}/{apex}"), Ok(value), |_| {
            format!("{apex} is yours to prove: put the TXT record below, then check.")
        }),
        Err(failure) => after(ACTIVE, Err(failure), |_| String::new()),
    }
}

/// The zone of the path, when it is a domain at all.
fn apex_of(apex: &str) -> Option<String> {
    segment(apex).map(str::to_ascii_lowercase)
}

async fn zone_page(
    State(state): State<ApiState>,
    Path(apex): Path<String>,
    session: Session,
) -> Response {
    let Some(apex) = apex_of(&apex) else {
        return bad_segment(&session, "domain");
    };
    let row: ZoneRow = match session
        .api(&state, Method::GET, &format!("/v1/zones/{apex}"), None)
        .await
        .and_then(|value| {
            serde_json::from_value(value).map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))
        }) {
        Ok(row) => row,
        Err((status, message)) => {
            return session.problem(status, ACTIVE, "No such domain", &message);
        }
    };
    let owner = row.zone.owner.clone();
    let vms: Vec<VmRow> = match session.get(&state, &format!("/v1/vms?owner={owner}")).await {
        Ok(vms) => vms,
        Err(response) => return response,
    };
    session.page(
        StatusCode::OK,
        zones::zone_page(&session.chrome(ACTIVE), &row, &vms),
    )
}

/// `?approve=true` on the check: an admin's approval instead of the TXT record.
#[derive(Debug, Default, Deserialize)]
struct VerifyQuery {
    #[serde(default)]
    approve: Option<bool>,
}

async fn verify_zone(
    State(state): State<ApiState>,
    Path(apex): Path<String>,
    Query(query): Query<VerifyQuery>,
    Posted { session, .. }: Posted<CsrfOnly>,
) -> Response {
    let Some(apex) = apex_of(&apex) else {
        return bad_segment(&session, "domain");
    };
    let approve = query.approve == Some(true);
    let path = match approve {
        true => format!("/v1/zones/{apex}/verify?approve=true"),
        false => format!("/v1/zones/{apex}/verify"),
    };
    let done = format!("{apex} is verified: every server answers for it.");
    back_to_zone(&state, &session, &apex, (Method::POST, path, None), done).await
}

#[derive(Deserialize)]
struct SetForm {
    csrf: String,
    name: String,
    rtype: String,
    values: String,
    #[serde(default)]
    ttl: String,
}

impl CsrfField for SetForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// A flash saying what is wrong with a form, back on the zone's page.
fn refuse(apex: &str, text: String) -> Response {
    see_other(&format!("{ACTIVE}/{apex}"), Some(Flash { ok: false, text }))
}

/// Calls the API about zone `apex` and goes back to its page, with `done` or the API's error.
async fn back_to_zone(
    state: &ApiState,
    session: &Session,
    apex: &str,
    call: (Method, String, Option<serde_json::Value>),
    done: String,
) -> Response {
    let (method, path, request) = call;
    let result = session.api(state, method, &path, request).await;
    after(&format!("{ACTIVE}/{apex}"), result, |_| done)
}

async fn put_set(
    State(state): State<ApiState>,
    Path(apex): Path<String>,
    Posted { session, form }: Posted<SetForm>,
) -> Response {
    let Some(apex) = apex_of(&apex) else {
        return bad_segment(&session, "domain");
    };
    let kind = form.rtype.trim().to_ascii_uppercase();
    let values = match hearth_types::record_text::parse_values(&kind, &form.values) {
        Ok(values) => values,
        Err(message) => return refuse(&apex, message),
    };
    let ttl = match form.ttl.trim() {
        "" => None,
        text => match text.parse::<u32>() {
            Ok(ttl) => Some(ttl),
            Err(_) => return refuse(&apex, format!("ttl: `{text}` is not a number of seconds")),
        },
    };
    let name = form.name.trim().to_owned();
    let set = RecordSet {
        name: name.clone(),
        ttl,
        values,
    };
    let path = format!("/v1/zones/{apex}/records");
    let done = format!("{name} {kind} saved.");
    back_to_zone(
        &state,
        &session,
        &apex,
        (Method::PUT, path, body(&set)),
        done,
    )
    .await
}

#[derive(Deserialize)]
struct NamedForm {
    csrf: String,
    name: String,
    #[serde(default)]
    rtype: String,
    #[serde(default)]
    vm: String,
}

impl CsrfField for NamedForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// The relative name of a form, as a path segment of the API (`@` included).
fn relative(name: &str) -> Option<&str> {
    let name = name.trim();
    match name == "@" {
        true => Some(name),
        false => segment(name),
    }
}

async fn remove_set(
    State(state): State<ApiState>,
    Path(apex): Path<String>,
    Posted { session, form }: Posted<NamedForm>,
) -> Response {
    let Some(apex) = apex_of(&apex) else {
        return bad_segment(&session, "domain");
    };
    let (Some(name), Some(kind)) = (relative(&form.name), segment(form.rtype.trim())) else {
        return refuse(&apex, "name: no such record set".into());
    };
    let path = format!("/v1/zones/{apex}/records/{name}/{kind}");
    let done = format!("{name} {kind} removed.");
    back_to_zone(&state, &session, &apex, (Method::DELETE, path, None), done).await
}

async fn follow(
    State(state): State<ApiState>,
    Path(apex): Path<String>,
    Posted { session, form }: Posted<NamedForm>,
) -> Response {
    let Some(apex) = apex_of(&apex) else {
        return bad_segment(&session, "domain");
    };
    let Some(name) = relative(&form.name) else {
        return refuse(
            &apex,
            format!(
                "name: `{}` is not a name inside the zone (relative, like `www` or `@`)",
                form.name.trim()
            ),
        );
    };
    let vm = form.vm.trim().to_owned();
    let path = format!("/v1/zones/{apex}/follows/{name}");
    let request = body(&FollowVm { vm: vm.clone() });
    let done = format!("{name} follows {vm}.");
    back_to_zone(&state, &session, &apex, (Method::PUT, path, request), done).await
}

async fn unfollow(
    State(state): State<ApiState>,
    Path(apex): Path<String>,
    Posted { session, form }: Posted<NamedForm>,
) -> Response {
    let Some(apex) = apex_of(&apex) else {
        return bad_segment(&session, "domain");
    };
    let Some(name) = relative(&form.name) else {
        return refuse(&apex, "name: no such followed name".into());
    };
    let path = format!("/v1/zones/{apex}/follows/{name}");
    let done = format!("{name} follows no VM.");
    back_to_zone(&state, &session, &apex, (Method::DELETE, path, None), done).await
}

async fn release(
    State(state): State<ApiState>,
    Path(apex): Path<String>,
    Posted { session, .. }: Posted<CsrfOnly>,
) -> Response {
    let Some(apex) = apex_of(&apex) else {
        return bad_segment(&session, "domain");
    };
    match session
        .api(&state, Method::DELETE, &format!("/v1/zones/{apex}"), None)
        .await
    {
        Ok(value) => after(ACTIVE, Ok(value), |_| format!("{apex} released.")),
        Err(failure) => after(&format!("{ACTIVE}/{apex}"), Err(failure), |_| String::new()),
    }
}
