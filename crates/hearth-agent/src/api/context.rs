//! What every API handler shares: `ApiState`, the error body, the query parameters, and reading
//! and writing the desired state.

use std::sync::Arc;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hearth_state::model::{Command, ComputeCommand, Expect};
use hearth_types::desired::DesiredState;
use serde::Deserialize;

use crate::checks::Instances;
use crate::handlers::HandlerMetrics;
use hearth_dns::DnsMetrics;
use hearth_membership::Membership;
use hearth_state::model::Outcome;
use hearth_state::network::{StateError, WriteResult};
use hearth_state::node::StateNode;
use tokio_util::sync::CancellationToken;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub token: Arc<str>,
    pub membership: Membership,
    pub instances: Instances,
    pub dns_metrics: Arc<DnsMetrics>,
    pub handler_metrics: Arc<HandlerMetrics>,
    /// The replicated state, on servers and witnesses.
    pub state: Option<hearth_state::node::StateNode>,
    pub compute_metrics: Arc<hearth_compute::ComputeMetrics>,
    /// Where this node's VMs live (`data_dir/vms`), for their consoles.
    pub vms_dir: std::path::PathBuf,
    /// Verified image files on this node.
    pub blobs: hearth_compute::blobs::BlobStore,
    /// Cancelled by `POST /v1/leave` once the node has left, to stop the agent.
    pub shutdown: CancellationToken,
    /// `[smtp]`, for announcements.
    pub mail: Option<Arc<crate::mail::MailSettings>>,
    /// Web logins on this node: the rate limit, hashing permits, trusted proxies, counters.
    pub logins: Arc<crate::login_limit::Logins>,
    /// `max_token_lifetime` in seconds: no token made here lives longer.
    pub max_token_secs: Option<u64>,
    /// This node is a worker only (neither server nor witness): its own token is
    /// `Caller::Worker`, not root.
    pub worker_only: bool,
    /// The caps on this node's API connections.
    pub api_connections: Arc<hearth_types::limits::ConnLimit>,
    /// The budget of anonymous audit entries on this node.
    pub audit: Arc<super::audit::AuditBudget>,
    /// The files holding this node's secrets, by the key that names them, watched by
    /// `/metrics`.
    pub secret_files: Arc<[(&'static str, std::path::PathBuf)]>,
    /// The co-op's own zone, which no member may claim any part of.
    pub dns_origin: Arc<str>,
    /// Where members' TXT challenges are looked up.
    pub verify_resolver: std::net::SocketAddr,
}

/// Seconds since the epoch, by this node's clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An error body: `{"error": "..."}`.
pub fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
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
            // A worker with only a worker key: the change must go through a server.
            ApiError::State(failure @ StateError::Forbidden(_)) => {
                error(StatusCode::FORBIDDEN, &failure.to_string())
            }
            ApiError::State(failure) => {
                error(StatusCode::SERVICE_UNAVAILABLE, &failure.to_string())
            }
        }
    }
}

pub(crate) fn node_of(state: &ApiState) -> Result<&StateNode, ApiError> {
    state.state.as_ref().ok_or(ApiError::NoState)
}

/// 404 for a body that names an object that is not there (`field: no WHAT named NAME`),
/// found on this node's copy of the state before writing; the write checks again.
pub(crate) fn unknown(field: &str, what: &str, name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &format!("{field}: no {what} named {name}"),
    )
}

/// The first of `refs` (field, kind of object, name) that `desired` does not hold.
pub(crate) fn first_unknown<'a>(
    desired: &DesiredState,
    refs: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
) -> Option<Response> {
    refs.into_iter()
        .find(|(_, what, name)| {
            let name = *name;
            match *what {
                "account" => !desired.accounts.contains_key(name),
                "image" => !desired.compute.images.contains_key(name),
                "pool" => !desired.compute.pools.contains_key(name),
                "plan" => !desired.plans.contains_key(name),
                _ => false,
            }
        })
        .map(|(field, what, name)| unknown(field, what, name))
}

pub(crate) fn bad_body(rejection: super::body::BodyRejection) -> Response {
    rejection.into_response()
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
        Ok(WriteResult { index, outcome }) => {
            // Read-your-writes on this node: a token made here works here at once, a VM
            // created here lists here. Committed either way, so a lagging node still answers.
            if !node.caught_up_to(index).await {
                tracing::warn!(index, "this node has not applied its client's write yet");
            }
            outcome_response(index, outcome, notes)
        }
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
        Outcome::Refused { message } => return error(StatusCode::FORBIDDEN, &message),
    };
    (status, Json(body)).into_response()
}

/// Hashes `password` with argon2id on a blocking thread, within the node's hashing permits
/// (shared with logins); the error answer when it cannot.
pub(crate) async fn hash_password(state: &ApiState, password: String) -> Result<String, Response> {
    let failed = || {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "hashing the password failed",
        )
    };
    let _permit = state
        .logins
        .hashing
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| failed())?;
    match tokio::task::spawn_blocking(move || crate::auth::hash_password(&password)).await {
        Ok(Ok(hash)) => Ok(hash),
        _ => Err(failed()),
    }
}

/// Whether `password` matches `hash`, checked on a blocking thread within the hashing permits.
pub(crate) async fn verify_password(state: &ApiState, password: String, hash: String) -> bool {
    let Ok(_permit) = state.logins.hashing.clone().acquire_owned().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || crate::auth::verify_password(&password, &hash))
        .await
        .unwrap_or(false)
}

pub(crate) fn expect_from(params: &Params) -> Expect {
    params.version.map_or(Expect::Any, Expect::Version)
}

pub(crate) fn compute(command: ComputeCommand) -> Command {
    Command::Compute { command }
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
