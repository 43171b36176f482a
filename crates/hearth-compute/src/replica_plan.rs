//! The pure decisions about replicas (`docs/replicas.md`): the leader's (where a VM that asks
//! for two copies gets its second, and when a replica is dropped) and each host's (export an
//! empty copy, mirror into it, watch the mirror, let go of what is no longer wanted).
//!
//! A replica is dropped only while the disk's home is up: the home holds the VM's disk then,
//! so the copy is redundant. While the home is away the replica may be the disk's only
//! reachable copy, and nothing touches it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hearth_state::model::ComputeCommand;
use hearth_types::View;
use hearth_types::compute::{
    Compute, ObservedReplica, ObservedVm, Phase, Replica, ReplicaState, Vm,
};
use hearth_types::desired::DesiredState;

use crate::placement::{HostLiveness, free_room, liveness};
use crate::reconcile::Action;

/// Why the leader drops `replica` of `vm`, if it should.
fn drop_reason(desired: &DesiredState, view: &View, vm: &Vm, replica: &Replica) -> Option<String> {
    let compute = &desired.compute;
    let host = &replica.host;
    let why = if vm.request.replicas < 2 {
        "the VM asks for one copy".to_owned()
    } else if replica.state == ReplicaState::Degraded {
        replica
            .message
            .clone()
            .unwrap_or_else(|| "it fell behind".to_owned())
    } else if vm.migration.is_some() {
        "the VM moves to another host".to_owned()
    } else if vm.disk.host.as_deref() == Some(host.as_str()) {
        "its host holds the disk".to_owned()
    } else if desired.is_drained(host) {
        format!("{host} is drained")
    } else {
        match liveness(compute, view, host) {
            HostLiveness::Up => return None,
            HostLiveness::Fenced => format!("{host} is fenced"),
            HostLiveness::Away => format!("{host} is down"),
        }
    };
    Some(why)
}

/// The leader's replica commands: drop what is no longer a good replica, and place one for
/// each running VM that asks for two copies and has none, on the up worker (not drained or
/// fenced, able to run QEMU) other than its home with the most free disk that fits it.
pub fn plan(desired: &DesiredState, view: &View) -> Vec<ComputeCommand> {
    let compute = &desired.compute;
    let mut free = free_room(desired, view);
    let mut commands = Vec::new();
    for vm in compute.vms.values().map(|v| &v.value) {
        let Some(home) = vm.disk.host.as_deref() else {
            continue;
        };
        if vm.deleting || liveness(compute, view, home) != HostLiveness::Up {
            continue;
        }
        if let Some(replica) = &vm.replica {
            if let Some(why) = drop_reason(desired, view, vm, replica) {
                commands.push(ComputeCommand::DropReplica {
                    vm: vm.id.clone(),
                    since: replica.since,
                    why,
                });
            }
            continue;
        }
        let wanted = vm.request.replicas >= 2
            && vm.host.as_deref() == Some(home)
            && vm.phase == Phase::Running
            && vm.migration.is_none()
            && can_replicate(compute, home);
        if !wanted {
            continue;
        }
        let best = free
            .iter_mut()
            .filter(|(name, room)| {
                **name != home
                    && can_replicate(compute, name)
                    && room.disk_gib >= vm.request.disk_gib
            })
            .max_by(|(a_name, a), (b_name, b)| {
                a.disk_gib.cmp(&b.disk_gib).then(b_name.cmp(a_name))
            });
        if let Some((name, room)) = best {
            room.disk_gib -= vm.request.disk_gib;
            commands.push(ComputeCommand::PlaceReplica {
                vm: vm.id.clone(),
                host: (*name).to_owned(),
            });
        }
    }
    commands
}

/// Whether a host's driver can keep or feed a replica (QEMU's, not the stand-in's).
fn can_replicate(compute: &Compute, host: &str) -> bool {
    compute
        .hosts
        .get(host)
        .is_some_and(|h| h.capacity.live_migration)
}

/// Host `me`'s replica actions: as a replica host, export the copy of each replica placed
/// here and let go of copies no replica names; as a disk's home, mirror each running VM
/// into its replica, watch the mirror, and end a mirror no replica wants.
pub fn host(
    me: &str,
    compute: &Compute,
    seen: &[ObservedVm],
    copies: &[ObservedReplica],
) -> Vec<Action> {
    let mut actions = Vec::new();
    for vm in compute.vms.values().map(|v| &v.value) {
        if let Some(r) = &vm.replica
            && r.host == me
            && r.state == ReplicaState::Preparing
            && !vm.deleting
        {
            actions.push(Action::ExportReplica { vm: vm.id.clone() });
        }
    }
    for copy in copies {
        if let Some(action) = unwanted_copy(me, compute, copy) {
            actions.push(action);
        }
        // Restarted here from this copy, and no disk of the VM here yet: take it.
        let adopt = compute.vms.get(&copy.vm).is_some_and(|v| {
            let vm = &v.value;
            vm.adopt_replica == Some(copy.since)
                && vm.host.as_deref() == Some(me)
                && vm.disk.host.as_deref() == Some(me)
                && !vm.deleting
        });
        if adopt && !seen.iter().any(|s| s.id == copy.vm && s.disk_present) {
            actions.push(Action::AdoptReplica {
                vm: copy.vm.clone(),
            });
        }
    }
    for s in seen.iter().filter(|s| !s.foreign && s.pid.is_some()) {
        let Some(vm) = compute.vms.get(&s.id).map(|v| &v.value) else {
            continue;
        };
        let home = vm.host.as_deref() == Some(me) && vm.disk.host.as_deref() == Some(me);
        if let Some(action) = mirror_action(vm, s, home) {
            actions.push(action);
        }
    }
    actions
}

/// What to do with a replica copy here that no replica of its VM names any more: removed
/// when the VM is gone or its home holds its disk of the same generation; archived when the
/// VM's disk was given up since (a recreate), since the copy may hold the only old data.
fn unwanted_copy(me: &str, compute: &Compute, copy: &ObservedReplica) -> Option<Action> {
    let vm = compute.vms.get(&copy.vm).map(|v| &v.value);
    let wanted = vm.is_some_and(|vm| {
        let adopting = vm.adopt_replica == Some(copy.since) && vm.disk.host.as_deref() == Some(me);
        !vm.deleting
            && (adopting
                || vm
                    .replica
                    .as_ref()
                    .is_some_and(|r| r.host == me && r.since == copy.since))
    });
    if wanted {
        return None;
    }
    let archive = match vm {
        None => false,
        Some(vm) if vm.deleting => false,
        Some(vm) => vm.disk.generation != copy.generation || vm.disk.host.as_deref() == Some(me),
    };
    Some(Action::DropReplicaCopy {
        vm: copy.vm.clone(),
        archive,
    })
}

/// The disk's home's action for the mirror of a VM running here into its replica.
fn mirror_action(vm: &Vm, s: &ObservedVm, home: bool) -> Option<Action> {
    let id = vm.id.clone();
    let replica = vm.replica.as_ref().filter(|_| home && !vm.deleting);
    match (replica, s.mirroring) {
        // The mirror into this replica: watch it.
        (Some(r), Some(since)) if since == r.since && r.state != ReplicaState::Degraded => {
            Some(Action::TendReplica { vm: id })
        }
        // A mirror nothing wants (the replica was dropped, degraded or replaced).
        (_, Some(_)) => Some(Action::UnmirrorReplica { vm: id }),
        // The replica listens, and this QEMU does not mirror into it yet.
        (Some(r), None)
            if r.state == ReplicaState::Syncing
                && r.nbd.is_some()
                && vm.migration.is_none()
                && !s.held =>
        {
            Some(Action::MirrorReplica { vm: id })
        }
        // Said to be in sync, but this QEMU mirrors into nothing: the watch says degraded.
        (Some(r), None) if r.state == ReplicaState::InSync => Some(Action::TendReplica { vm: id }),
        _ => None,
    }
}

/// The lease of each host as this host last saw it change: its index, and since when.
pub type LeaseWatch = BTreeMap<String, (u64, Instant)>;

/// The VMs whose in-sync replica is here and whose home has not renewed its lease for
/// `wait` since this host saw its last renewal: each to restart here (`FailOver`). `watch`
/// is brought up to date first; a host seen for the first time starts its wait now, so a
/// restarted agent waits the whole time again.
pub fn failovers(
    me: &str,
    compute: &Compute,
    watch: &mut LeaseWatch,
    now: Instant,
    wait: Duration,
) -> Vec<Action> {
    for (name, host) in &compute.hosts {
        match watch.get(name) {
            Some((lease, _)) if *lease == host.lease => {}
            _ => {
                watch.insert(name.clone(), (host.lease, now));
            }
        }
    }
    let mut actions = Vec::new();
    for vm in compute.vms.values().map(|v| &v.value) {
        let Some(r) = vm.replica.as_ref() else {
            continue;
        };
        let Some(home) = vm.disk.host.as_deref() else {
            continue;
        };
        let placed_home = vm.host.as_deref() == Some(home);
        if r.host != me || r.state != ReplicaState::InSync || !placed_home || vm.deleting {
            continue;
        }
        if let Some((lease, seen)) = watch.get(home)
            && now.duration_since(*seen) >= wait
        {
            actions.push(Action::FailOver {
                vm: vm.id.clone(),
                from: home.to_owned(),
                lease: *lease,
            });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::tests::vm;
    use hearth_types::compute::{Capacity, Host, Power};
    use hearth_types::{Member, MemberState, NodeMeta, Role};

    fn world(hosts: &[(&str, MemberState)]) -> (DesiredState, View) {
        let mut desired = DesiredState::default();
        let mut view = View::default();
        for (name, state) in hosts {
            let capacity = Capacity {
                vcpus: 4,
                memory_mib: 4096,
                disk_gib: 20,
                live_migration: true,
                rbd: false,
            };
            desired.compute.hosts.insert(
                (*name).into(),
                Host {
                    capacity,
                    ..Host::default()
                },
            );
            let meta = NodeMeta {
                name: (*name).into(),
                gossip_addr: "127.0.0.1:7946".parse().unwrap(),
                address: "127.0.0.1".parse().unwrap(),
                roles: vec![Role::Worker],
                tags: Default::default(),
                rpc_addr: None,
                in_group: true,
            };
            view.members.insert(
                (*name).into(),
                Member {
                    meta,
                    state: *state,
                    services: vec![],
                },
            );
        }
        let mut entry = vm("vm-1", "w1", Phase::Running, Power::Running);
        entry.value.request.replicas = 2;
        entry.value.disk.host = Some("w1".into());
        entry.value.disk.generation = 1;
        desired.compute.vms.insert("vm-1".into(), entry);
        (desired, view)
    }

    fn replica(host: &str, state: ReplicaState) -> Replica {
        Replica {
            host: host.into(),
            since: 9,
            state,
            nbd: Some("127.0.0.2:4000".into()),
            done_bytes: 0,
            total_bytes: 0,
            message: None,
        }
    }

    fn vm_mut(desired: &mut DesiredState) -> &mut Vm {
        &mut desired.compute.vms.get_mut("vm-1").unwrap().value
    }

    #[test]
    fn a_running_vm_asking_for_two_copies_gets_one_on_another_up_host() {
        let (desired, view) = world(&[
            ("w1", MemberState::Alive),
            ("w2", MemberState::Alive),
            ("w3", MemberState::Dead),
        ]);
        assert_eq!(
            plan(&desired, &view),
            [ComputeCommand::PlaceReplica {
                vm: "vm-1".into(),
                host: "w2".into()
            }]
        );
        // Not for a VM that asks for one, nor one that is not running, nor when its home
        // is away, nor when no other host can take it.
        let mut one = desired.clone();
        vm_mut(&mut one).request.replicas = 1;
        assert!(plan(&one, &view).is_empty());
        let mut stopped = desired.clone();
        vm_mut(&mut stopped).phase = Phase::Stopped;
        assert!(plan(&stopped, &view).is_empty());
        let mut home_down = view.clone();
        home_down.members.get_mut("w1").unwrap().state = MemberState::Dead;
        assert!(plan(&desired, &home_down).is_empty());
        let mut full = desired.clone();
        vm_mut(&mut full).request.disk_gib = 25;
        assert!(plan(&full, &view).is_empty());
    }

    #[test]
    fn a_replica_is_dropped_only_while_the_disks_home_is_up() {
        let (mut desired, view) = world(&[("w1", MemberState::Alive), ("w2", MemberState::Dead)]);
        vm_mut(&mut desired).replica = Some(replica("w2", ReplicaState::InSync));
        let commands = plan(&desired, &view);
        assert!(
            matches!(&commands[..], [ComputeCommand::DropReplica { since: 9, why, .. }] if why == "w2 is down"),
            "{commands:?}"
        );
        // The home is away: the replica may hold the only reachable copy. Left alone.
        let mut both_down = view.clone();
        both_down.members.get_mut("w1").unwrap().state = MemberState::Dead;
        assert!(plan(&desired, &both_down).is_empty());
        // A healthy replica on an up host stays.
        let (mut healthy, view) = world(&[("w1", MemberState::Alive), ("w2", MemberState::Alive)]);
        vm_mut(&mut healthy).replica = Some(replica("w2", ReplicaState::InSync));
        assert!(plan(&healthy, &view).is_empty());
        // Degraded, or the VM moving: dropped (and placed afresh on a later pass).
        vm_mut(&mut healthy).replica = Some(replica("w2", ReplicaState::Degraded));
        assert!(matches!(
            &plan(&healthy, &view)[..],
            [ComputeCommand::DropReplica { .. }]
        ));
    }

    fn running(mirroring: Option<u64>) -> ObservedVm {
        ObservedVm {
            guard_altered: false,
            id: "vm-1".into(),
            pid: Some(100),
            disk_present: true,
            generation: 1,
            foreign: false,
            held: false,
            mirroring,
        }
    }

    #[test]
    fn the_home_mirrors_into_a_listening_replica_and_watches_it() {
        let (mut desired, _) = world(&[("w1", MemberState::Alive), ("w2", MemberState::Alive)]);
        let act =
            |desired: &DesiredState, seen: ObservedVm| host("w1", &desired.compute, &[seen], &[]);
        vm_mut(&mut desired).replica = Some(replica("w2", ReplicaState::Syncing));
        assert_eq!(
            act(&desired, running(None)),
            [Action::MirrorReplica { vm: "vm-1".into() }]
        );
        assert_eq!(
            act(&desired, running(Some(9))),
            [Action::TendReplica { vm: "vm-1".into() }]
        );
        // A mirror into an older replica ends first.
        assert_eq!(
            act(&desired, running(Some(8))),
            [Action::UnmirrorReplica { vm: "vm-1".into() }]
        );
        // In sync, but the QEMU mirrors nothing (it restarted): the watch reports it.
        vm_mut(&mut desired).replica = Some(replica("w2", ReplicaState::InSync));
        assert_eq!(
            act(&desired, running(None)),
            [Action::TendReplica { vm: "vm-1".into() }]
        );
        // Dropped: the mirror ends.
        vm_mut(&mut desired).replica = None;
        assert_eq!(
            act(&desired, running(Some(9))),
            [Action::UnmirrorReplica { vm: "vm-1".into() }]
        );
        assert!(act(&desired, running(None)).is_empty());
        // Not while it moves.
        vm_mut(&mut desired).replica = Some(replica("w2", ReplicaState::Syncing));
        vm_mut(&mut desired).migration = Some(hearth_types::compute::Migration {
            to: "w3".into(),
            stage: hearth_types::compute::MigrationStage::Preparing,
            since: 10,
            done_bytes: 0,
            total_bytes: 0,
            live: true,
            listen: None,
        });
        assert!(act(&desired, running(None)).is_empty());
    }

    #[test]
    fn the_replica_host_restarts_a_vm_whose_home_went_silent_and_takes_the_copy() {
        let (mut desired, _) = world(&[("w1", MemberState::Alive), ("w2", MemberState::Alive)]);
        vm_mut(&mut desired).replica = Some(replica("w2", ReplicaState::InSync));
        desired.compute.hosts.get_mut("w1").unwrap().lease = 5;
        let wait = Duration::from_secs(20);
        let mut watch = LeaseWatch::new();
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        // The wait starts when this host first sees the lease.
        assert!(failovers("w2", &desired.compute, &mut watch, at(0), wait).is_empty());
        assert!(failovers("w2", &desired.compute, &mut watch, at(19), wait).is_empty());
        // A renewal starts it over.
        desired.compute.hosts.get_mut("w1").unwrap().lease = 6;
        assert!(failovers("w2", &desired.compute, &mut watch, at(21), wait).is_empty());
        assert!(failovers("w2", &desired.compute, &mut watch, at(40), wait).is_empty());
        assert_eq!(
            failovers("w2", &desired.compute, &mut watch, at(41), wait),
            [Action::FailOver {
                vm: "vm-1".into(),
                from: "w1".into(),
                lease: 6
            }]
        );
        // Only the replica's host, only for a replica in sync.
        assert!(failovers("w3", &desired.compute, &mut watch, at(41), wait).is_empty());
        vm_mut(&mut desired).replica = Some(replica("w2", ReplicaState::Syncing));
        assert!(failovers("w2", &desired.compute, &mut watch, at(41), wait).is_empty());

        // Restarted on w2 from replica 9: w2 takes its copy, and keeps it meanwhile.
        let vm = vm_mut(&mut desired);
        vm.replica = None;
        vm.host = Some("w2".into());
        vm.disk.host = Some("w2".into());
        vm.adopt_replica = Some(9);
        let copy = ObservedReplica {
            vm: "vm-1".into(),
            since: 9,
            generation: 1,
            pid: None,
        };
        assert_eq!(
            host("w2", &desired.compute, &[], std::slice::from_ref(&copy)),
            [Action::AdoptReplica { vm: "vm-1".into() }]
        );
    }

    #[test]
    fn the_replica_host_exports_and_lets_go_of_copies_no_replica_names() {
        let (mut desired, _) = world(&[("w1", MemberState::Alive), ("w2", MemberState::Alive)]);
        vm_mut(&mut desired).replica = Some(replica("w2", ReplicaState::Preparing));
        assert_eq!(
            host("w2", &desired.compute, &[], &[]),
            [Action::ExportReplica { vm: "vm-1".into() }]
        );
        let copy = |since, generation| ObservedReplica {
            vm: "vm-1".into(),
            since,
            generation,
            pid: Some(5),
        };
        vm_mut(&mut desired).replica = Some(replica("w2", ReplicaState::InSync));
        assert!(host("w2", &desired.compute, &[], &[copy(9, 1)]).is_empty());
        // An older replica's copy goes; a copy of a disk given up since is archived.
        assert_eq!(
            host("w2", &desired.compute, &[], &[copy(8, 1)]),
            [Action::DropReplicaCopy {
                vm: "vm-1".into(),
                archive: false
            }]
        );
        vm_mut(&mut desired).disk.generation = 2;
        vm_mut(&mut desired).replica = None;
        assert_eq!(
            host("w2", &desired.compute, &[], &[copy(9, 1)]),
            [Action::DropReplicaCopy {
                vm: "vm-1".into(),
                archive: true
            }]
        );
        // A VM that is gone takes its copies with it.
        desired.compute.vms.clear();
        assert_eq!(
            host("w2", &desired.compute, &[], &[copy(9, 1)]),
            [Action::DropReplicaCopy {
                vm: "vm-1".into(),
                archive: false
            }]
        );
    }
}
