//! A VM's second disk copy (`replicas = 2`) as commands on the desired state: the leader
//! places and drops it, the replica host says where its empty copy listens, and the disk's
//! home reports the mirror into it. Each checks the replica's `since`, so a stale command
//! about an earlier copy changes nothing. `docs/replicas.md` gives the whole protocol.

use hearth_types::compute::{Compute, DiskHome, Phase, Replica, ReplicaState, Vm};
use hearth_types::desired::Versioned;

use super::cas::Outcome;
use super::compute::ComputeCommand;

/// The replica commands of [`super::compute::apply`].
pub(super) fn apply(compute: &mut Compute, command: &ComputeCommand, index: u64) -> Outcome {
    use ComputeCommand as C;
    match command {
        C::PlaceReplica { vm, host } => place(compute, vm, host, index),
        C::DropReplica { vm, since, why } => drop_replica(compute, vm, *since, why),
        C::ReplicaListening {
            vm,
            host,
            since,
            nbd,
        } => listening(compute, vm, host, *since, nbd),
        C::ReplicaProgress {
            vm,
            host,
            since,
            state,
            done_bytes,
            total_bytes,
            message,
            ..
        } => {
            let report = Report {
                state: *state,
                done: *done_bytes,
                total: *total_bytes,
                message: message.clone(),
            };
            progress(compute, vm, host, *since, report)
        }
        C::RenewLease { host } => match compute.hosts.get_mut(host) {
            Some(h) => {
                h.lease = index;
                Outcome::Applied { version: index }
            }
            None => Outcome::NotFound,
        },
        C::Failover {
            vm,
            from,
            to,
            since,
            lease,
            ..
        } => failover(compute, vm, from, to, (*since, *lease), index),
        _ => Outcome::Nothing,
    }
}

fn unchanged(entry: &Versioned<Vm>) -> Outcome {
    Outcome::Applied {
        version: entry.version,
    }
}

fn conflict(entry: &Versioned<Vm>) -> Outcome {
    Outcome::Conflict {
        current: Some(entry.version),
    }
}

/// A replica of the VM's disk on `host`: the VM asks for two copies, has a disk home that
/// is not `host`, is not moving or being deleted, has no replica yet, and `host` is a known
/// worker that is not fenced.
fn place(compute: &mut Compute, key: &str, host: &str, index: u64) -> Outcome {
    let host_ok = compute.hosts.get(host).is_some_and(|h| !h.fenced);
    let Some(entry) = compute.vms.get_mut(key) else {
        return Outcome::NotFound;
    };
    let vm = &mut entry.value;
    let home = vm.disk.host.as_deref();
    if vm.request.replicas < 2
        || home.is_none()
        || home == Some(host)
        || vm.deleting
        || vm.migration.is_some()
        || vm.replica.is_some()
        || !host_ok
    {
        return conflict(entry);
    }
    vm.adopt_replica = None;
    vm.replica = Some(Replica {
        host: host.to_owned(),
        since: index,
        state: ReplicaState::Preparing,
        nbd: None,
        done_bytes: 0,
        total_bytes: 0,
        message: None,
    });
    unchanged(entry)
}

/// The leader drops replica `since` (degraded, its host gone or drained, or no longer
/// wanted); its host then removes the copy, which is not the VM's disk.
fn drop_replica(compute: &mut Compute, key: &str, since: u64, why: &str) -> Outcome {
    let Some(entry) = compute.vms.get_mut(key) else {
        return Outcome::NotFound;
    };
    match &entry.value.replica {
        Some(r) if r.since == since => {
            tracing::debug!(vm = key, since, why, "replica dropped");
            entry.value.replica = None;
            unchanged(entry)
        }
        _ => Outcome::Nothing,
    }
}

/// The replica host exports its empty copy of replica `since` at `nbd`: the disk's home may
/// mirror into it.
fn listening(compute: &mut Compute, key: &str, host: &str, since: u64, nbd: &str) -> Outcome {
    let Some(entry) = compute.vms.get_mut(key) else {
        return Outcome::NotFound;
    };
    match &mut entry.value.replica {
        Some(r) if r.host == host && r.since == since && r.state == ReplicaState::Preparing => {
            r.state = ReplicaState::Syncing;
            r.nbd = Some(nbd.to_owned());
            unchanged(entry)
        }
        _ => conflict(entry),
    }
}

/// The replica host restarts the VM from replica `since` (`docs/replicas.md`): its home
/// `from` renewed its lease last at `lease` and has killed the VM's QEMU since (a host that
/// cannot renew does that within its lease timeout, which the replica host waited out).
fn failover(
    compute: &mut Compute,
    key: &str,
    from: &str,
    to: &str,
    (since, lease): (u64, u64),
    index: u64,
) -> Outcome {
    let expired = compute.hosts.get(from).is_some_and(|h| h.lease == lease);
    let to_ok = compute.hosts.get(to).is_some_and(|h| !h.fenced);
    let Some(entry) = compute.vms.get_mut(key) else {
        return Outcome::NotFound;
    };
    let vm = &mut entry.value;
    let home = vm.host.as_deref() == Some(from) && vm.disk.host.as_deref() == Some(from);
    let in_sync = vm
        .replica
        .as_ref()
        .is_some_and(|r| r.host == to && r.since == since && r.state == ReplicaState::InSync);
    if !expired || !to_ok || !home || !in_sync || vm.deleting || vm.migration.is_some() {
        return conflict(entry);
    }
    vm.host = Some(to.to_owned());
    vm.moved_from = Some(vm.disk.clone());
    vm.disk = DiskHome {
        host: Some(to.to_owned()),
        generation: vm.disk.generation + 1,
    };
    vm.replica = None;
    vm.adopt_replica = Some(since);
    let message = format!("restarted on {to} from its replica: {from} stopped renewing its lease");
    vm.set_phase(Phase::Placed, Some(message), index);
    entry.version = index;
    Outcome::Applied { version: index }
}

/// What the disk's home says of the mirror into a replica.
struct Report {
    state: ReplicaState,
    done: u64,
    total: u64,
    message: Option<String>,
}

/// The disk's home reports replica `since`: the first copy's progress, in sync, or
/// degraded. A replica only goes forward: preparing or syncing to degraded, syncing to in
/// sync, in sync to degraded; a degraded one stays so until the leader drops it.
fn progress(compute: &mut Compute, key: &str, host: &str, since: u64, report: Report) -> Outcome {
    let Some(entry) = compute.vms.get_mut(key) else {
        return Outcome::NotFound;
    };
    let home = entry.value.disk.host.as_deref() == Some(host);
    let Some(r) = entry.value.replica.as_mut().filter(|r| r.since == since) else {
        return conflict(entry);
    };
    use ReplicaState as S;
    let allowed = matches!(
        (r.state, report.state),
        (S::Preparing | S::Syncing | S::InSync, S::Degraded)
            | (S::Syncing, S::Syncing | S::InSync)
            | (S::InSync, S::InSync)
    );
    if !home || !allowed {
        return conflict(entry);
    }
    r.state = report.state;
    r.done_bytes = report.done.min(report.total);
    r.total_bytes = report.total;
    r.message = report.message;
    unchanged(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_types::compute::Host;

    /// vm-1 asks for two copies; its disk lives on w1; w2 is free; w3 is fenced.
    fn setup() -> Compute {
        let mut compute = Compute::default();
        for (name, fenced) in [("w1", false), ("w2", false), ("w3", true)] {
            let host = Host {
                fenced,
                ..Host::default()
            };
            compute.hosts.insert(name.into(), host);
        }
        let mut vm = super::super::migration::tests::vm_on_w1();
        vm.request.replicas = 2;
        compute.vms.insert(
            "vm-1".into(),
            Versioned {
                version: 7,
                value: vm,
            },
        );
        compute
    }

    fn run(compute: &mut Compute, command: ComputeCommand, index: u64) -> Outcome {
        apply(compute, &command, index)
    }

    fn place_on(host: &str) -> ComputeCommand {
        ComputeCommand::PlaceReplica {
            vm: "vm-1".into(),
            host: host.into(),
        }
    }

    fn report(host: &str, since: u64, state: ReplicaState, done: u64) -> ComputeCommand {
        ComputeCommand::ReplicaProgress {
            vm: "vm-1".into(),
            host: host.into(),
            since,
            state,
            done_bytes: done,
            total_bytes: 100,
            message: None,
            at_ms: 0,
        }
    }

    fn replica(compute: &Compute) -> Option<&Replica> {
        compute.vms["vm-1"].value.replica.as_ref()
    }

    #[test]
    fn a_replica_goes_only_to_another_unfenced_host_of_a_vm_that_wants_one() {
        let mut compute = setup();
        for host in ["w1", "w3", "nowhere"] {
            assert!(
                matches!(
                    run(&mut compute, place_on(host), 10),
                    Outcome::Conflict { .. }
                ),
                "{host}"
            );
        }
        let mut one_copy = setup();
        one_copy.vms.get_mut("vm-1").unwrap().value.request.replicas = 1;
        assert!(matches!(
            run(&mut one_copy, place_on("w2"), 10),
            Outcome::Conflict { .. }
        ));
        assert_eq!(replica(&one_copy), None);

        assert!(matches!(
            run(&mut compute, place_on("w2"), 10),
            Outcome::Applied { version: 7 }
        ));
        let r = replica(&compute).unwrap();
        assert_eq!(
            (r.host.as_str(), r.since, r.state),
            ("w2", 10, ReplicaState::Preparing)
        );
        // One replica at a time.
        assert!(matches!(
            run(&mut compute, place_on("w2"), 11),
            Outcome::Conflict { .. }
        ));
        assert_eq!(replica(&compute).unwrap().since, 10);
    }

    #[test]
    fn a_replica_goes_forward_and_only_its_home_reports_it() {
        let mut compute = setup();
        run(&mut compute, place_on("w2"), 10);
        // The disk's home cannot mirror before the replica host listens.
        assert!(matches!(
            run(
                &mut compute,
                report("w1", 10, ReplicaState::InSync, 100),
                11
            ),
            Outcome::Conflict { .. }
        ));
        let listening = |host: &str, since| ComputeCommand::ReplicaListening {
            vm: "vm-1".into(),
            host: host.into(),
            since,
            nbd: "127.0.0.2:4000".into(),
        };
        // Only the replica's host, for this replica.
        for wrong in [listening("w1", 10), listening("w2", 9)] {
            assert!(matches!(
                run(&mut compute, wrong, 11),
                Outcome::Conflict { .. }
            ));
        }
        run(&mut compute, listening("w2", 10), 11);
        assert_eq!(replica(&compute).unwrap().state, ReplicaState::Syncing);
        assert_eq!(
            replica(&compute).unwrap().nbd.as_deref(),
            Some("127.0.0.2:4000")
        );
        // The replica host does not report the mirror; the home does.
        assert!(matches!(
            run(
                &mut compute,
                report("w2", 10, ReplicaState::InSync, 100),
                12
            ),
            Outcome::Conflict { .. }
        ));
        run(
            &mut compute,
            report("w1", 10, ReplicaState::Syncing, 40),
            12,
        );
        assert_eq!(replica(&compute).unwrap().done_bytes, 40);
        run(
            &mut compute,
            report("w1", 10, ReplicaState::InSync, 100),
            13,
        );
        assert_eq!(replica(&compute).unwrap().state, ReplicaState::InSync);
        // In sync never goes back to syncing: falling behind is degraded.
        assert!(matches!(
            run(
                &mut compute,
                report("w1", 10, ReplicaState::Syncing, 50),
                14
            ),
            Outcome::Conflict { .. }
        ));
        run(
            &mut compute,
            report("w1", 10, ReplicaState::Degraded, 100),
            14,
        );
        assert_eq!(replica(&compute).unwrap().state, ReplicaState::Degraded);
        // And degraded stays degraded until dropped.
        assert!(matches!(
            run(
                &mut compute,
                report("w1", 10, ReplicaState::InSync, 100),
                15
            ),
            Outcome::Conflict { .. }
        ));
    }

    #[test]
    fn a_failover_needs_an_expired_lease_and_an_in_sync_replica_and_moves_the_home_once() {
        let mut compute = setup();
        run(
            &mut compute,
            ComputeCommand::RenewLease { host: "w1".into() },
            9,
        );
        assert_eq!(compute.hosts["w1"].lease, 9);
        run(&mut compute, place_on("w2"), 10);
        let failover = |lease| ComputeCommand::Failover {
            vm: "vm-1".into(),
            from: "w1".into(),
            to: "w2".into(),
            since: 10,
            lease,
            at_ms: 0,
        };
        // Not while the replica is not in sync.
        assert!(matches!(
            run(&mut compute, failover(9), 11),
            Outcome::Conflict { .. }
        ));
        compute
            .vms
            .get_mut("vm-1")
            .unwrap()
            .value
            .replica
            .as_mut()
            .unwrap()
            .state = ReplicaState::InSync;
        // Not when the home renewed since.
        run(
            &mut compute,
            ComputeCommand::RenewLease { host: "w1".into() },
            12,
        );
        assert!(matches!(
            run(&mut compute, failover(9), 13),
            Outcome::Conflict { .. }
        ));
        assert_eq!(compute.vms["vm-1"].value.disk.host.as_deref(), Some("w1"));
        // The home went silent after 12.
        assert!(matches!(
            run(&mut compute, failover(12), 14),
            Outcome::Applied { version: 14 }
        ));
        let vm = &compute.vms["vm-1"].value;
        assert_eq!(vm.host.as_deref(), Some("w2"));
        assert_eq!(vm.disk.host.as_deref(), Some("w2"));
        assert_eq!(vm.disk.generation, 4);
        assert_eq!(vm.moved_from.as_ref().unwrap().generation, 3);
        assert_eq!((vm.replica.as_ref(), vm.adopt_replica), (None, Some(10)));
        // Once: the same command again changes nothing.
        assert!(matches!(
            run(&mut compute, failover(12), 15),
            Outcome::Conflict { .. }
        ));
        assert_eq!(compute.vms["vm-1"].value.disk.generation, 4);
    }

    #[test]
    fn a_drop_names_the_replica_it_drops() {
        let mut compute = setup();
        run(&mut compute, place_on("w2"), 10);
        let drop = |since| ComputeCommand::DropReplica {
            vm: "vm-1".into(),
            since,
            why: "test".into(),
        };
        assert_eq!(run(&mut compute, drop(9), 11), Outcome::Nothing);
        assert!(replica(&compute).is_some());
        run(&mut compute, drop(10), 11);
        assert_eq!(replica(&compute), None);
        // A report about the dropped replica changes nothing.
        assert!(matches!(
            run(
                &mut compute,
                report("w1", 10, ReplicaState::Degraded, 0),
                12
            ),
            Outcome::Conflict { .. }
        ));
    }
}
