//! Cluster-wide events: the Raft leader records what it observes (members, checks) through
//! the log, which turns changes into events with stable ids; the leader then runs each
//! `scope = "cluster"` handler once per event, recording every attempt through the log, with
//! backoff between failed attempts. A new leader picks up where the old one stopped.

use std::sync::Arc;
use std::time::Duration;

use crate::unix_ms;

use hearth_state::model::Command;
use hearth_state::node::StateNode;
use hearth_types::View;
use hearth_types::desired::{Delivery, DesiredState, EventRecord};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::HandlerConfig;
use crate::handlers::{HandlerMetrics, run_one};

/// Attempts per handler and event before it is left as failed.
pub const MAX_ATTEMPTS: u32 = 8;
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The observations a leader should record: each member or check whose state differs from
/// the last recorded one.
pub fn observations(view: &View, desired: &DesiredState, at_ms: u64) -> Vec<Command> {
    let mut commands = Vec::new();
    for member in view.members.values() {
        let row = member.row();
        if desired.observed.members.get(&row.name) != Some(&row) {
            commands.push(Command::ObserveMember {
                member: row.clone(),
                at_ms,
            });
        }
        for instance in &member.services {
            let key = format!("{}/{}", row.name, instance.service);
            if desired.observed.checks.get(&key) != Some(&instance.status) {
                commands.push(Command::ObserveCheck {
                    member: row.clone(),
                    instance: instance.clone(),
                    at_ms,
                });
            }
        }
    }
    commands
}

/// Whether `handler` should run for `event` now.
pub fn due(handler: &HandlerConfig, name: &str, event: &EventRecord, now_ms: u64) -> bool {
    if !handler.events.contains(&event.event.kind) {
        return false;
    }
    match event.deliveries.get(name) {
        None => true,
        Some(d) => !d.delivered && d.attempts < MAX_ATTEMPTS && now_ms >= d.next_attempt_ms,
    }
}

fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(9)).min(MAX_BACKOFF)
}

/// On the leader: records observations of the view. Runs until `shutdown`.
pub async fn observe(
    state: StateNode,
    mut views: watch::Receiver<Arc<View>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            changed = views.changed() => if changed.is_err() { return },
        }
        if !state.is_leader() {
            continue;
        }
        let view = views.borrow_and_update().clone();
        let desired = state.reader().current();
        for command in observations(&view, &desired, unix_ms()) {
            if let Err(error) = state.submit(command).await {
                tracing::debug!(%error, "recording an observation");
                break;
            }
        }
    }
}

/// On the leader: runs cluster handlers for due events, in event order. Runs until `shutdown`.
pub async fn deliver(
    state: StateNode,
    self_name: String,
    handlers: Vec<HandlerConfig>,
    metrics: Arc<HandlerMetrics>,
    shutdown: CancellationToken,
) {
    if handlers.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !state.is_leader() {
            continue;
        }
        let desired = state.reader().current();
        for record in desired.events.values() {
            for handler in &handlers {
                let name = handler.name.clone().unwrap_or_default();
                if !due(handler, &name, record, unix_ms()) {
                    continue;
                }
                let attempts = record.deliveries.get(&name).map_or(0, |d| d.attempts) + 1;
                let result = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    result = run_one(&self_name, handler, &record.event, Some(record.id), &metrics) => result,
                };
                let delivery = Delivery {
                    attempts,
                    delivered: result.is_ok(),
                    last_error: result.err(),
                    next_attempt_ms: unix_ms() + backoff(attempts).as_millis() as u64,
                };
                let command = Command::RecordDelivery {
                    event: record.id,
                    handler: name,
                    delivery,
                };
                if let Err(error) = state.submit(command).await {
                    // Lost leadership or quorum: the next leader retries (handlers dedupe by id).
                    tracing::warn!(%error, event = record.id, "recording a delivery");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HandlerScope;
    use hearth_types::{ClusterEvent, EventKind, MemberRow, MemberState};

    fn record(kind: EventKind) -> EventRecord {
        EventRecord {
            id: 7,
            at_ms: 0,
            event: ClusterEvent {
                kind,
                member: MemberRow {
                    name: "n2".into(),
                    address: "10.0.0.2".parse().unwrap(),
                    gossip_addr: "10.0.0.2:7946".parse().unwrap(),
                    state: MemberState::Dead,
                    roles: vec![],
                    tags: Default::default(),
                    rpc_addr: None,
                },
                instance: None,
                vm: None,
            },
            deliveries: Default::default(),
        }
    }

    fn handler() -> HandlerConfig {
        HandlerConfig {
            scope: HandlerScope::Cluster,
            name: Some("pager".into()),
            events: vec![EventKind::MemberFailed],
            command: vec!["true".into()],
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn due_respects_kind_delivery_and_backoff() {
        let h = handler();
        let mut event = record(EventKind::MemberFailed);
        assert!(due(&h, "pager", &event, 0));
        assert!(!due(&h, "pager", &record(EventKind::MemberJoin), 0));
        event.deliveries.insert(
            "pager".into(),
            Delivery {
                attempts: 1,
                delivered: false,
                last_error: None,
                next_attempt_ms: 1_000,
            },
        );
        assert!(!due(&h, "pager", &event, 999));
        assert!(due(&h, "pager", &event, 1_000));
        event.deliveries.get_mut("pager").unwrap().attempts = MAX_ATTEMPTS;
        assert!(!due(&h, "pager", &event, 10_000));
        event.deliveries.get_mut("pager").unwrap().delivered = true;
        assert!(!due(&h, "pager", &event, 10_000));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
