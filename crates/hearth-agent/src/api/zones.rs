//! `/v1/zones`: members' own DNS zones. A member claims a domain, puts the TXT record the
//! answer names at `_hearth-challenge.<domain>` with their current DNS host, and asks for
//! the check: this node looks the record up through `[dns] verify_resolver` (an admin may
//! approve a claim without it). Once verified, every server answers for the domain with the
//! record sets the member puts here, and names that follow one of their VMs. A member sees
//! and edits only their own zones (`auth::authorize` hides the others).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use hearth_state::model::zones::ZoneCommand;
use hearth_state::model::{Command, Expect};
use hearth_types::api::{FollowVm, NewZone, ZoneRow};
use hearth_types::desired::{RecordSet, record_key};
use hearth_types::zones::{MemberZone, check_apex};
use serde::Deserialize;

use super::body::{Body, BodyRejection};
use super::context::{ApiState, Params, bad_body, error, read, unix_now, write};
use crate::auth::Caller;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/zones", get(list).post(claim))
        .route("/v1/zones/{apex}", get(show).delete(release))
        .route("/v1/zones/{apex}/verify", post(verify))
        .route("/v1/zones/{apex}/records", put(put_set))
        .route(
            "/v1/zones/{apex}/records/{name}/{rtype}",
            delete(remove_set),
        )
        .route(
            "/v1/zones/{apex}/follows/{name}",
            put(follow).delete(unfollow),
        )
}

fn zone_command(command: ZoneCommand) -> Command {
    Command::Zone { command }
}

fn row(zone: &hearth_types::desired::Versioned<MemberZone>) -> ZoneRow {
    ZoneRow {
        challenge_name: zone.value.challenge_name(),
        zone: zone.value.clone(),
        version: zone.version,
    }
}

async fn list(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<Params>,
) -> Response {
    match read(&state, &params).await {
        Ok(desired) => {
            let rows: Vec<ZoneRow> = desired
                .zones
                .values()
                .filter(|z| caller.only_owner().is_none_or(|o| o == z.value.owner))
                .map(row)
                .collect();
            Json(rows).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

async fn show(State(state): State<ApiState>, Path(apex): Path<String>) -> Response {
    match read(&state, &Params::default()).await {
        Ok(desired) => match desired.zones.get(&apex.to_ascii_lowercase()) {
            Some(zone) => Json(row(zone)).into_response(),
            None => error(StatusCode::NOT_FOUND, &format!("zone: no zone {apex}")),
        },
        Err(failure) => failure.into_response(),
    }
}

async fn claim(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Body<NewZone>, BodyRejection>,
) -> Response {
    let new = match body {
        Ok(Body(new)) => new,
        Err(rejection) => return bad_body(rejection),
    };
    let apex = match check_apex(&new.apex) {
        Ok(apex) => apex,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let owner = match (&caller, new.owner) {
        (Caller::Account { name, .. }, None) => name.clone(),
        (_, Some(owner)) if caller.is_admin() => owner,
        (Caller::Account { name, .. }, Some(owner)) if *name == owner => owner,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "owner: give the account that will hold the zone (only admins name another)",
            );
        }
    };
    let challenge = {
        use base64::Engine;
        let mut bytes = [0u8; 18];
        rand::fill(&mut bytes);
        format!(
            "hearth-verify={}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        )
    };
    let zone = MemberZone {
        apex,
        owner,
        challenge,
        verified: false,
        records: Default::default(),
        follows: Default::default(),
        created_at: unix_now(),
    };
    let command = ZoneCommand::Claim {
        zone: Box::new(zone),
        reserved: state.dns_origin.to_string(),
    };
    write(&state, zone_command(command)).await
}

/// `?approve=true`: an admin verifies the claim without the TXT record.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyParams {
    #[serde(default)]
    approve: Option<bool>,
}

async fn verify(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(apex): Path<String>,
    Query(params): Query<VerifyParams>,
) -> Response {
    let desired = match read(&state, &Params::default()).await {
        Ok(desired) => desired,
        Err(failure) => return failure.into_response(),
    };
    let apex = apex.to_ascii_lowercase();
    let Some(zone) = desired.zones.get(&apex) else {
        return error(StatusCode::NOT_FOUND, &format!("zone: no zone {apex}"));
    };
    if params.approve == Some(true) {
        if !caller.is_admin() {
            return error(
                StatusCode::FORBIDDEN,
                "approve: only admins approve a claim",
            );
        }
    } else {
        let name = zone.value.challenge_name();
        match hearth_dns::lookup::txt_records(state.verify_resolver, &name).await {
            Ok(found) if found.contains(&zone.value.challenge) => {}
            Ok(found) => {
                return error(
                    StatusCode::CONFLICT,
                    &format!(
                        "verify: {name} has no TXT record \"{}\" yet (found {found:?}); put it at your current DNS host and try again",
                        zone.value.challenge
                    ),
                );
            }
            Err(why) => {
                return error(
                    StatusCode::CONFLICT,
                    &format!(
                        "verify: looking up {name} TXT failed: {why}; try again once [dns] verify_resolver answers"
                    ),
                );
            }
        }
    }
    write(&state, zone_command(ZoneCommand::Verify { apex })).await
}

async fn put_set(
    State(state): State<ApiState>,
    Path(apex): Path<String>,
    body: Result<Body<RecordSet>, BodyRejection>,
) -> Response {
    let set = match body {
        Ok(Body(set)) => set,
        Err(rejection) => return bad_body(rejection),
    };
    let command = ZoneCommand::PutSet {
        apex: apex.to_ascii_lowercase(),
        set,
        expect: Expect::Any,
    };
    write(&state, zone_command(command)).await
}

async fn remove_set(
    State(state): State<ApiState>,
    Path((apex, name, rtype)): Path<(String, String, String)>,
) -> Response {
    let command = ZoneCommand::RemoveSet {
        apex: apex.to_ascii_lowercase(),
        key: record_key(&name, &rtype),
    };
    write(&state, zone_command(command)).await
}

async fn follow(
    State(state): State<ApiState>,
    Path((apex, name)): Path<(String, String)>,
    body: Result<Body<FollowVm>, BodyRejection>,
) -> Response {
    let vm = match body {
        Ok(Body(FollowVm { vm })) => vm,
        Err(rejection) => return bad_body(rejection),
    };
    let command = ZoneCommand::Follow {
        apex: apex.to_ascii_lowercase(),
        name,
        vm: Some(vm),
    };
    write(&state, zone_command(command)).await
}

async fn unfollow(
    State(state): State<ApiState>,
    Path((apex, name)): Path<(String, String)>,
) -> Response {
    let command = ZoneCommand::Follow {
        apex: apex.to_ascii_lowercase(),
        name,
        vm: None,
    };
    write(&state, zone_command(command)).await
}

async fn release(State(state): State<ApiState>, Path(apex): Path<String>) -> Response {
    let command = ZoneCommand::Release {
        apex: apex.to_ascii_lowercase(),
        expect: Expect::Any,
    };
    write(&state, zone_command(command)).await
}
