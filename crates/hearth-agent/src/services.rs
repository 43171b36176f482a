//! This node's service instances: the ones its config declares plus the cluster-wide ones
//! the desired state assigns to it, each with its check loop, started and stopped as the
//! desired state changes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hearth_membership::Membership;
use hearth_types::desired::{CheckSpec, DesiredState};
use hearth_types::{CheckStatus, ServiceInstance};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::checks::{Instances, check_loop};
use crate::config::{CheckConfig, ServiceConfig};

/// One instance this node should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceDef {
    pub address: IpAddr,
    pub check: Option<CheckConfig>,
}

fn check_from_spec(spec: &CheckSpec) -> CheckConfig {
    CheckConfig {
        http: spec.http.clone(),
        tcp: spec.tcp.clone(),
        exec: spec.exec.clone(),
        interval: Duration::from_millis(spec.interval_ms),
        timeout: Duration::from_millis(spec.timeout_ms),
        rise: spec.rise,
        fall: spec.fall,
    }
}

/// The instances this node should run: its config's services, then the cluster-wide ones
/// that select it. A config service wins over a cluster-wide one of the same name.
pub fn wanted_instances(
    configured: &[ServiceConfig],
    desired: &DesiredState,
    node_name: &str,
    address: IpAddr,
) -> BTreeMap<String, InstanceDef> {
    let mut wanted = BTreeMap::new();
    for declared in desired.services.values().map(|v| &v.value) {
        if declared.runs_on(node_name) {
            let def = InstanceDef {
                address,
                check: declared.check.as_ref().map(check_from_spec),
            };
            wanted.insert(declared.name.to_ascii_lowercase(), def);
        }
    }
    for service in configured {
        let def = InstanceDef {
            address: service.address.unwrap_or(address),
            check: service.check.clone(),
        };
        wanted.insert(service.name.to_ascii_lowercase(), def);
    }
    wanted
}

fn initial_status(def: &InstanceDef) -> CheckStatus {
    if def.check.is_some() {
        CheckStatus::Unknown
    } else {
        CheckStatus::Passing
    }
}

/// Keeps the running check loops equal to `wanted` until `shutdown`.
pub async fn supervise(
    mut wanted: watch::Receiver<BTreeMap<String, InstanceDef>>,
    instances: Instances,
    membership: Membership,
    shutdown: CancellationToken,
) {
    let mut running: BTreeMap<String, (InstanceDef, CancellationToken)> = BTreeMap::new();
    let mut loops = JoinSet::new();
    loop {
        let next = wanted.borrow_and_update().clone();
        reconcile(
            &next,
            &mut running,
            &mut loops,
            &instances,
            &membership,
            &shutdown,
        )
        .await;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = wanted.changed() => if changed.is_err() {
                // The source is gone: keep what runs until shutdown.
                shutdown.cancelled().await;
                break;
            },
            Some(_) = loops.join_next(), if !loops.is_empty() => {}
        }
    }
    loops.shutdown().await;
}

async fn reconcile(
    wanted: &BTreeMap<String, InstanceDef>,
    running: &mut BTreeMap<String, (InstanceDef, CancellationToken)>,
    loops: &mut JoinSet<()>,
    instances: &Instances,
    membership: &Membership,
    shutdown: &CancellationToken,
) {
    let stale: Vec<String> = running
        .iter()
        .filter(|(name, (def, _))| wanted.get(*name) != Some(def))
        .map(|(name, _)| name.clone())
        .collect();
    let mut guard = instances.lock().await;
    let before = guard.clone();
    for name in stale {
        if let Some((_, stop)) = running.remove(&name) {
            stop.cancel();
        }
        guard.remove(&name);
    }
    for (name, def) in wanted {
        if running.contains_key(name) {
            continue;
        }
        guard.insert(
            name.clone(),
            ServiceInstance {
                service: name.clone(),
                address: def.address,
                status: initial_status(def),
            },
        );
        let stop = shutdown.child_token();
        if let Some(check) = def.check.clone() {
            loops.spawn(check_loop(
                name.clone(),
                check,
                Arc::clone(instances),
                membership.clone(),
                stop.clone(),
            ));
        }
        running.insert(name.clone(), (def.clone(), stop));
    }
    if *guard != before {
        tracing::info!(services = ?guard.keys().collect::<Vec<_>>(), "this node's services changed");
        membership
            .set_services(guard.values().cloned().collect())
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_types::desired::{ClusterService, Versioned};

    #[test]
    fn config_and_cluster_services_merge() {
        let mut desired = DesiredState::default();
        for (name, nodes) in [
            ("web", vec![]),
            ("db", vec!["n2".to_string()]),
            ("www", vec![]),
        ] {
            desired.services.insert(
                name.into(),
                Versioned {
                    version: 1,
                    value: ClusterService {
                        name: name.into(),
                        nodes,
                        check: None,
                    },
                },
            );
        }
        let configured = vec![ServiceConfig {
            name: "WWW".into(),
            address: Some("10.0.0.9".parse().unwrap()),
            check: None,
        }];
        let address: IpAddr = "10.0.0.1".parse().unwrap();
        let wanted = wanted_instances(&configured, &desired, "n1", address);
        assert_eq!(wanted.keys().collect::<Vec<_>>(), ["web", "www"]);
        assert_eq!(wanted["www"].address, "10.0.0.9".parse::<IpAddr>().unwrap());
        assert_eq!(wanted["web"].address, address);
        let on_n2 = wanted_instances(&configured, &desired, "n2", address);
        assert!(on_n2.contains_key("db"));
    }
}
