//! The `/v1/` endpoints of the replicated desired state: status, static DNS records,
//! cluster-wide services and node drain. Writes go through Raft (forwarded to the leader);
//! reads are local unless `?consistent` asks for a linearizable read.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use hearth_state::model::{Command, Expect, Outcome};
use hearth_state::network::{StateError, WriteResult};
use hearth_state::node::StateNode;
use hearth_types::desired::{ClusterService, DesiredState, RecordSet, record_key};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::api::{ApiState, error};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/state", get(status))
        .route("/v1/desired", get(desired))
        .route("/v1/records", get(list_records).put(put_records))
        .route("/v1/records/{name}/{kind}", delete(remove_records))
        .route("/v1/cluster-services", get(list_services).put(put_service))
        .route("/v1/cluster-services/{name}", delete(remove_service))
        .route("/v1/events", get(events))
        .route("/v1/nodes/{name}/drain", post(drain))
        .route("/v1/nodes/{name}/undrain", post(undrain))
        .route("/v1/notices", get(list_notices).put(put_notice))
        .route("/v1/notices/{id}", delete(remove_notice))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutNotice {
    pub(crate) notice: hearth_types::notice::Notice,
    #[serde(default)]
    pub(crate) expect: Expect,
}

async fn list_notices(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => Json(&desired.notices).into_response(),
        Err(failure) => failure.into_response(),
    }
}

/// Posts or updates a status-page notice; `posted_at` defaults to now.
async fn put_notice(
    State(state): State<ApiState>,
    body: Result<Json<PutNotice>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(PutNotice { mut notice, expect })) => {
            if notice.posted_at == 0 {
                notice.posted_at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
            }
            write(&state, Command::PutNotice { notice, expect }).await
        }
        Err(rejection) => bad_body(rejection),
    }
}

async fn remove_notice(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(params): Query<Params>,
) -> Response {
    let expect = expect_from(&params);
    write(&state, Command::RemoveNotice { id, expect }).await
}

/// `?consistent` for a linearizable read; `?version=N` for a compare-and-set removal.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default)]
    pub(crate) consistent: Option<String>,
    #[serde(default)]
    pub(crate) version: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutRecords {
    pub(crate) records: RecordSet,
    #[serde(default)]
    pub(crate) expect: Expect,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutService {
    pub(crate) service: ClusterService,
    #[serde(default)]
    pub(crate) expect: Expect,
}

/// Why a state endpoint could not answer.
pub(crate) enum ApiError {
    NoState,
    State(StateError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::NoState => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "this node holds no replicated state (it is neither a server nor a witness); ask a server's API",
            ),
            ApiError::State(failure) => {
                error(StatusCode::SERVICE_UNAVAILABLE, &failure.to_string())
            }
        }
    }
}

pub(crate) fn node_of(state: &ApiState) -> Result<&StateNode, ApiError> {
    state.state.as_ref().ok_or(ApiError::NoState)
}

pub(crate) fn bad_body(rejection: JsonRejection) -> Response {
    error(StatusCode::BAD_REQUEST, &rejection.body_text())
}

/// Reads the desired state, after waiting for the leader's read index if asked to.
pub(crate) async fn read(
    state: &ApiState,
    params: &Params,
) -> Result<std::sync::Arc<DesiredState>, ApiError> {
    let node = node_of(state)?;
    if params.consistent.is_some() {
        node.linearizable_index().await.map_err(ApiError::State)?;
    }
    Ok(node.reader().current())
}

pub(crate) async fn write(state: &ApiState, command: Command) -> Response {
    write_noting(state, command, serde_json::Map::new()).await
}

/// `write`, with `notes` added to the answer's body (a warning, say).
pub(crate) async fn write_noting(
    state: &ApiState,
    command: Command,
    notes: serde_json::Map<String, serde_json::Value>,
) -> Response {
    let node = match node_of(state) {
        Ok(node) => node,
        Err(failure) => return failure.into_response(),
    };
    match node.submit(command).await {
        Ok(WriteResult { index, outcome }) => outcome_response(index, outcome, notes),
        Err(failure) => ApiError::State(failure).into_response(),
    }
}

fn outcome_response(
    index: u64,
    outcome: Outcome,
    notes: serde_json::Map<String, serde_json::Value>,
) -> Response {
    let mut body = serde_json::json!({ "index": index, "result": outcome });
    body.as_object_mut().expect("a JSON object").extend(notes);
    let status = match outcome {
        // A single command never comes back as `Many`; the batcher unpacks those.
        Outcome::Applied { .. } | Outcome::Removed | Outcome::Nothing | Outcome::Many { .. } => {
            StatusCode::OK
        }
        Outcome::Created { .. } => StatusCode::CREATED,
        Outcome::Conflict { .. } => StatusCode::CONFLICT,
        Outcome::NotFound => StatusCode::NOT_FOUND,
        Outcome::Invalid { message } => return error(StatusCode::BAD_REQUEST, &message),
    };
    (status, Json(body)).into_response()
}

pub(crate) fn expect_from(params: &Params) -> Expect {
    params.version.map_or(Expect::Any, Expect::Version)
}

async fn status(State(state): State<ApiState>) -> Response {
    match node_of(&state) {
        Ok(node) => Json(node.cluster_status().await).into_response(),
        Err(failure) => failure.into_response(),
    }
}

async fn desired(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => {
            // Hashes stay inside the cluster, even for admins.
            let mut shown = (*desired).clone();
            for account in shown.accounts.values_mut() {
                account.value.password_hash = "(hidden)".into();
            }
            for token in shown.tokens.values_mut() {
                token.value.secret_sha256 = "(hidden)".into();
            }
            Json(shown).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

async fn list_records(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => Json(&desired.records).into_response(),
        Err(failure) => failure.into_response(),
    }
}

async fn put_records(
    State(state): State<ApiState>,
    body: Result<Json<PutRecords>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(PutRecords { records, expect })) => {
            write(&state, Command::PutRecords { records, expect }).await
        }
        Err(rejection) => bad_body(rejection),
    }
}

async fn remove_records(
    State(state): State<ApiState>,
    Path((name, kind)): Path<(String, String)>,
    Query(params): Query<Params>,
) -> Response {
    let key = record_key(&name, &kind);
    write(
        &state,
        Command::RemoveRecords {
            key,
            expect: expect_from(&params),
        },
    )
    .await
}

async fn list_services(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => Json(&desired.services).into_response(),
        Err(failure) => failure.into_response(),
    }
}

async fn put_service(
    State(state): State<ApiState>,
    body: Result<Json<PutService>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(PutService { service, expect })) => {
            write(&state, Command::PutService { service, expect }).await
        }
        Err(rejection) => bad_body(rejection),
    }
}

async fn remove_service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
) -> Response {
    write(
        &state,
        Command::RemoveService {
            name,
            expect: expect_from(&params),
        },
    )
    .await
}

/// Recent cluster-wide events, newest first, with their delivery state.
async fn events(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    match read(&state, &params).await {
        Ok(desired) => {
            let events: Vec<_> = desired.events.values().rev().collect();
            Json(events).into_response()
        }
        Err(failure) => failure.into_response(),
    }
}

async fn drain(State(state): State<ApiState>, Path(node): Path<String>) -> Response {
    write(
        &state,
        Command::SetDrain {
            node,
            drained: true,
            expect: Expect::Any,
        },
    )
    .await
}

async fn undrain(State(state): State<ApiState>, Path(node): Path<String>) -> Response {
    write(
        &state,
        Command::SetDrain {
            node,
            drained: false,
            expect: Expect::Any,
        },
    )
    .await
}
