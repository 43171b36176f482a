//! `/v1/audit`: the changes made and refused through the API and the logins, who made them and
//! how they ended; and `record`, which writes one entry through Raft off the request's path.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hearth_types::account::{ANONYMOUS, AuditEntry};
use serde::Deserialize;

use super::context::{ApiState, error, unix_now};

/// Entries with no credential behind them (wrong tokens, failed logins) one node records
/// per minute at most; the rest are counted in `hearth_audit_dropped_total`, so a scanner
/// cannot turn refusals into a stream of Raft writes.
pub const ANONYMOUS_PER_MINUTE: u32 = 60;

/// The anonymous entries of the current minute, and the entries dropped.
#[derive(Debug, Default)]
pub struct AuditBudget {
    minute: Mutex<(u64, u32)>,
    pub dropped: AtomicU64,
}

impl AuditBudget {
    /// Whether an entry by `who` at `now` may be recorded.
    fn admit(&self, who: &str, now: u64) -> bool {
        if who != ANONYMOUS {
            return true;
        }
        let Ok(mut minute) = self.minute.lock() else {
            return false;
        };
        if minute.0 != now / 60 {
            *minute = (now / 60, 0);
        }
        minute.1 += 1;
        minute.1 <= ANONYMOUS_PER_MINUTE
    }
}

/// What one audit entry says, before the node and the time are added.
pub struct Audited<'a> {
    pub who: &'a str,
    pub method: &'a str,
    pub path: String,
    pub status: StatusCode,
    pub client: Option<std::net::IpAddr>,
    pub note: String,
}

/// Records an entry in the replicated audit log, off the request's path. A write without a
/// quorum is not recorded (nothing can be recorded then, and nothing changed), nor is an
/// anonymous entry over the node's budget; a node without the state records nothing.
pub fn record(state: &ApiState, audited: Audited<'_>) {
    let Some(node) = state.state.clone() else {
        return;
    };
    let now = unix_now();
    if audited.status == StatusCode::SERVICE_UNAVAILABLE {
        return;
    }
    if !state.audit.admit(audited.who, now) {
        state.audit.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let entry = AuditEntry {
        at: now,
        who: audited.who.to_owned(),
        method: audited.method.to_owned(),
        path: audited.path,
        status: audited.status.as_u16(),
        node: state.membership.views().borrow().self_name.clone(),
        client: audited.client.map(|c| c.to_string()).unwrap_or_default(),
        note: audited.note,
    };
    tokio::spawn(async move {
        let command = hearth_state::model::Command::Audit { entry };
        if let Err(error) = node.submit(command).await {
            tracing::warn!(%error, "audit entry not recorded");
        }
    });
}

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/v1/audit", get(audit_log))
}

/// `?format=jsonl` for one JSON object per line (an export); `?who=NAME` for one caller's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    who: Option<String>,
}

async fn audit_log(
    State(state): State<ApiState>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "query: only format=json|jsonl and who=NAME are known",
        );
    };
    let Some(node) = &state.state else {
        return error(StatusCode::NOT_FOUND, "this node holds no state");
    };
    let desired = node.reader().current();
    let entries = desired
        .audit
        .iter()
        .filter(|e| query.who.as_deref().is_none_or(|who| e.who == who));
    match query.format.as_deref() {
        None | Some("json") => Json(entries.collect::<Vec<_>>()).into_response(),
        Some("jsonl") => {
            let mut body = String::new();
            for entry in entries {
                if let Ok(line) = serde_json::to_string(entry) {
                    body.push_str(&line);
                    body.push('\n');
                }
            }
            ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
        }
        Some(other) => error(
            StatusCode::BAD_REQUEST,
            &format!("format: `{other}` is not json or jsonl"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_entries_have_a_budget_per_minute_and_callers_none() {
        let budget = AuditBudget::default();
        let admitted = (0..100).filter(|_| budget.admit(ANONYMOUS, 120)).count();
        assert_eq!(admitted, ANONYMOUS_PER_MINUTE as usize);
        assert!((0..100).all(|_| budget.admit("alice", 120)));
        assert!(budget.admit(ANONYMOUS, 180), "a new minute, a new budget");
    }
}
