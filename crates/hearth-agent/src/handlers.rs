//! Node-local event handlers: one worker runs the configured commands for each event, in
//! the order events happened, each with a timeout, off the membership task's path.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hearth_types::ClusterEvent;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{HandlerConfig, HandlerScope};

/// Handler outcomes, rendered at `/metrics`.
#[derive(Debug, Default)]
pub struct HandlerMetrics {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub timed_out: AtomicU64,
}

/// The environment a handler sees for `event`.
pub fn event_env(self_name: &str, event: &ClusterEvent) -> Vec<(&'static str, String)> {
    let member = &event.member;
    let roles: Vec<&str> = member.roles.iter().map(|r| r.as_str()).collect();
    let mut env = vec![
        ("HEARTH_EVENT", event.kind.to_string()),
        ("HEARTH_SELF", self_name.to_owned()),
        ("HEARTH_MEMBER_NAME", member.name.clone()),
        ("HEARTH_MEMBER_ADDRESS", member.address.to_string()),
        ("HEARTH_MEMBER_STATE", member.state.to_string()),
        ("HEARTH_MEMBER_ROLES", roles.join(",")),
    ];
    if let Some(instance) = &event.instance {
        env.push(("HEARTH_SERVICE", instance.service.clone()));
        env.push(("HEARTH_SERVICE_ADDRESS", instance.address.to_string()));
        env.push(("HEARTH_CHECK_STATUS", instance.status.to_string()));
    }
    if let Some(vm) = &event.vm {
        env.push(("HEARTH_VM", vm.name.clone()));
        env.push(("HEARTH_VM_ID", vm.id.clone()));
        env.push(("HEARTH_VM_OWNER", vm.owner.clone()));
        if let Some(host) = &vm.replica_host {
            env.push(("HEARTH_REPLICA_HOST", host.clone()));
        }
        if let Some(from) = &vm.from {
            env.push(("HEARTH_FAILOVER_FROM", from.clone()));
        }
    }
    env
}

/// Runs handlers for events until `shutdown`. Events are handled one at a time, so each
/// handler sees them in order.
pub async fn run_handlers(
    self_name: String,
    handlers: Vec<HandlerConfig>,
    mut events: mpsc::Receiver<ClusterEvent>,
    metrics: Arc<HandlerMetrics>,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
        };
        tracing::info!(event = %event.kind, member = %event.member.name,
            service = event.instance.as_ref().map(|i| i.service.as_str()), "event");
        let local = handlers
            .iter()
            .filter(|h| h.scope == HandlerScope::Node && h.events.contains(&event.kind));
        for handler in local {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = run_one(&self_name, handler, &event, None, &metrics) => {}
            }
        }
    }
}

/// Runs one handler for one event; `event_id` is set for cluster-wide events.
pub async fn run_one(
    self_name: &str,
    handler: &HandlerConfig,
    event: &ClusterEvent,
    event_id: Option<u64>,
    metrics: &HandlerMetrics,
) -> Result<(), String> {
    let Some((program, args)) = handler.command.split_first() else {
        return Err("no command".into());
    };
    let id_env = event_id.map(|id| ("HEARTH_EVENT_ID", id.to_string()));
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .envs(event_env(self_name, event))
        .envs(id_env)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            tracing::warn!(%error, %program, "cannot start event handler");
            metrics.failed.fetch_add(1, Ordering::Relaxed);
            return Err(format!("cannot start {program}: {error}"));
        }
    };
    let input =
        serde_json::json!({ "self": self_name, "id": event_id, "event": event }).to_string();
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            // A handler that ignores stdin may close it early; that is its right.
            let _ = stdin.write_all(input.as_bytes()).await;
        }
        child.wait().await
    };
    match tokio::time::timeout(handler.timeout, run).await {
        Ok(Ok(status)) if status.success() => {
            metrics.succeeded.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Ok(Ok(status)) => {
            tracing::warn!(%program, %status, event = %event.kind, "event handler failed");
            metrics.failed.fetch_add(1, Ordering::Relaxed);
            Err(format!("{program} exited with {status}"))
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, %program, "event handler failed");
            metrics.failed.fetch_add(1, Ordering::Relaxed);
            Err(format!("{program}: {error}"))
        }
        Err(_) => {
            tracing::warn!(%program, timeout = ?handler.timeout, "event handler timed out; killed");
            let _ = child.kill().await;
            metrics.timed_out.fetch_add(1, Ordering::Relaxed);
            Err(format!("{program} timed out after {:?}", handler.timeout))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_types::{CheckStatus, EventKind, MemberRow, MemberState, Role, ServiceInstance};
    use std::time::Duration;

    fn event(kind: EventKind, name: &str) -> ClusterEvent {
        ClusterEvent {
            kind,
            member: MemberRow {
                name: name.into(),
                address: "127.0.0.2".parse().unwrap(),
                gossip_addr: "127.0.0.2:7946".parse().unwrap(),
                state: MemberState::Alive,
                roles: vec![Role::Server, Role::Worker],
                tags: Default::default(),
                rpc_addr: None,
            },
            instance: Some(ServiceInstance {
                service: "www".into(),
                address: "10.0.0.2".parse().unwrap(),
                status: CheckStatus::Failing,
            }),
            vm: None,
        }
    }

    #[test]
    fn env_carries_the_event() {
        let env = event_env("n1", &event(EventKind::CheckFailing, "n2"));
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("HEARTH_EVENT"), Some("check-failing"));
        assert_eq!(get("HEARTH_MEMBER_NAME"), Some("n2"));
        assert_eq!(get("HEARTH_MEMBER_ROLES"), Some("server,worker"));
        assert_eq!(get("HEARTH_SERVICE"), Some("www"));
        assert_eq!(get("HEARTH_CHECK_STATUS"), Some("failing"));
    }

    #[tokio::test]
    async fn handlers_run_in_order_with_env_and_json_and_time_out() {
        let dir = std::env::temp_dir().join(format!("hearth-handlers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let script = format!(
            "read -r json; echo \"$HEARTH_EVENT $HEARTH_MEMBER_NAME $json\" >> {}",
            log.display()
        );
        let handlers = vec![
            HandlerConfig {
                scope: HandlerScope::Node,
                name: None,
                events: vec![EventKind::MemberJoin, EventKind::MemberFailed],
                command: vec!["/bin/sh".into(), "-c".into(), script],
                timeout: Duration::from_secs(10),
            },
            HandlerConfig {
                scope: HandlerScope::Node,
                name: None,
                events: vec![EventKind::MemberFailed],
                command: vec!["sleep".into(), "30".into()],
                timeout: Duration::from_millis(200),
            },
        ];
        let (tx, rx) = mpsc::channel(16);
        let metrics = Arc::new(HandlerMetrics::default());
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn(run_handlers(
            "n1".into(),
            handlers,
            rx,
            metrics.clone(),
            shutdown.clone(),
        ));
        for (kind, name) in [
            (EventKind::MemberJoin, "a"),
            (EventKind::CheckFailing, "ignored"),
            (EventKind::MemberFailed, "b"),
            (EventKind::MemberJoin, "c"),
        ] {
            tx.send(event(kind, name)).await.unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while metrics.succeeded.load(Ordering::Relaxed) < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "handlers did not run"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let lines: Vec<String> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let heads: Vec<String> = lines
            .iter()
            .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(heads, ["member-join a", "member-failed b", "member-join c"]);
        let json: serde_json::Value =
            serde_json::from_str(lines[1].splitn(3, ' ').nth(2).unwrap()).unwrap();
        assert_eq!(json["event"]["kind"], "member-failed");
        assert_eq!(json["self"], "n1");
        assert_eq!(metrics.timed_out.load(Ordering::Relaxed), 1);
        shutdown.cancel();
        worker.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
