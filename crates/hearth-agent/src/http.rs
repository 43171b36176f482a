//! The node's whole HTTP surface: the JSON API (`api`), the web panel and the public status
//! page (`web`), and `/metrics`, with the security headers on every answer and a JSON 404
//! for everything else.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::api::{self, ApiState, error};
use crate::metrics::{MetricsSources, render};

pub fn router(state: ApiState) -> Router {
    Router::new()
        .merge(api::router(state.clone()))
        .merge(crate::web::routes().with_state(state.clone()))
        .route("/metrics", get(metrics).with_state(state))
        .fallback(not_found)
        .layer(middleware::map_response(with_security_headers))
}

/// Adds `web::security_headers` to an answer.
async fn with_security_headers(mut response: Response) -> Response {
    static HEADERS: std::sync::LazyLock<Vec<(HeaderName, HeaderValue)>> =
        std::sync::LazyLock::new(|| {
            crate::web::security_headers()
                .into_iter()
                .filter_map(|(name, value)| {
                    Some((
                        HeaderName::from_static(name),
                        HeaderValue::from_str(&value).ok()?,
                    ))
                })
                .collect()
        });
    for (name, value) in HEADERS.iter() {
        // A page with a policy of its own (the terminal's) keeps it.
        if !response.headers().contains_key(name) {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    response
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

/// Closed invoices the webhook was tried with and has not taken: (still being tried, every
/// attempt spent). Without a webhook nothing is tried, so nothing counts.
fn webhook_backlog(billing: &hearth_types::invoice::Billing) -> (u64, u64) {
    let mut backlog = (0, 0);
    for delivery in billing.deliveries.values() {
        match delivery {
            d if d.delivered || d.attempts == 0 => {}
            d if d.attempts >= crate::webhook::MAX_ATTEMPTS => backlog.1 += 1,
            _ => backlog.0 += 1,
        }
    }
    backlog
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let view = state.membership.views().borrow().clone();
    let local: Vec<_> = state.instances.lock().await.values().cloned().collect();
    let desired = state.state.as_ref().map(|s| s.reader().current());
    let empty = hearth_types::compute::Compute::default();
    let host = crate::host_metrics::HostFacts::read(&state.vms_dir);
    let vm_usage = crate::host_metrics::vm_usage(
        desired.as_ref().map_or(&empty, |d| &d.compute),
        &view.self_name,
        &state.vms_dir,
    )
    .await;
    let raft = state.state.as_ref().map(|s| s.status());
    let secret_files: Vec<(String, u64)> = state
        .secret_files
        .iter()
        .map(|(key, path)| {
            let problem = crate::config::secret_file_problem(path).is_some();
            ((*key).to_owned(), u64::from(problem))
        })
        .collect();
    let state_backups: Vec<(String, u64, u64)> = desired.as_ref().map_or_else(Vec::new, |d| {
        (d.backups.targets.keys())
            .map(|target| {
                let backups = d.backups.state.get(target);
                let failures = backups.map_or(0, |b| u64::from(b.failures));
                let last = backups.and_then(|b| b.last.as_ref());
                (
                    target.clone(),
                    failures,
                    last.map_or(0, |l| l.time_ms / 1000),
                )
            })
            .collect()
    });
    let body = render(&MetricsSources {
        state_backups: &state_backups,
        raft: raft.as_ref(),
        secret_files: &secret_files,
        host: &host,
        vm_usage: &vm_usage,
        vms: desired.as_ref().map_or(&empty, |d| &d.compute),
        view: &view,
        local_instances: &local,
        gossip: &state.membership.metrics,
        dns: &state.dns_metrics,
        handlers: &state.handler_metrics,
        compute: &state.compute_metrics,
        logins: &state.logins.metrics,
        rpc_refused: state.state.as_ref().map_or(0, |s| s.rpc_refused()),
        api_refused: state.api_connections.refused(),
        audit_dropped: state
            .audit
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        webhook: desired
            .as_ref()
            .map_or((0, 0), |d| webhook_backlog(&d.billing)),
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[cfg(test)]
mod tests {
    use hearth_types::invoice::{Billing, WebhookDelivery};

    #[test]
    fn the_webhook_backlog_counts_tried_and_undelivered_invoices_only() {
        let mut billing = Billing::default();
        let delivery = |attempts, delivered| WebhookDelivery {
            attempts,
            delivered,
            ..Default::default()
        };
        for (key, d) in [
            ("a", delivery(0, false)),
            ("b", delivery(2, false)),
            ("c", delivery(crate::webhook::MAX_ATTEMPTS, false)),
            ("d", delivery(1, true)),
        ] {
            billing.deliveries.insert(key.into(), d);
        }
        assert_eq!(super::webhook_backlog(&billing), (1, 1));
    }
}
