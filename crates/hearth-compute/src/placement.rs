//! The leader's pure decisions about VMs: which host a pending VM goes to, which VMs may move
//! off a host that is provably off, how a VM's phase reads given the gossip view, and the drift
//! entries of VMs whose host is away.

use std::collections::BTreeMap;

use hearth_state::model::ComputeCommand;
use hearth_types::compute::{Capacity, Compute, Drift, DriftKind, Evacuation, Phase, Vm};
use hearth_types::desired::DesiredState;
use hearth_types::{MemberState, Role, View};

/// How a host's VMs stand in the gossip view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostLiveness {
    /// Alive or suspect: its reports count.
    Up,
    /// Dead, left, or unknown to gossip: its agent is away, but its VMs may still be running
    /// there (QEMU outlives the agent), and their disks are there.
    Away,
    /// Fenced: an operator confirmed it is powered off. Its VMs are not running, but their
    /// disks are there, out of reach.
    Fenced,
}

pub fn liveness(compute: &Compute, view: &View, host: &str) -> HostLiveness {
    if compute.hosts.get(host).is_some_and(|h| h.fenced) {
        return HostLiveness::Fenced;
    }
    match view.members.get(host).map(|m| m.state) {
        Some(MemberState::Alive | MemberState::Suspect) => HostLiveness::Up,
        Some(MemberState::Left | MemberState::Dead) | None => HostLiveness::Away,
    }
}

/// A `missing-disk` entry for every VM whose host is not up: the VM is `lost` until the host
/// comes back (its agent adopts the VM) or, once the host is fenced, an admin recreates the VM
/// on an empty disk. Derived from the gossip view, so each node computes its own.
pub fn lost_drift(compute: &Compute, view: &View) -> Vec<Drift> {
    let mut drift = Vec::new();
    for vm in compute.vms.values().map(|v| &v.value) {
        let Some(host) = vm.host.as_deref() else {
            continue;
        };
        let state = match liveness(compute, view, host) {
            HostLiveness::Up => continue,
            HostLiveness::Fenced => "fenced",
            HostLiveness::Away => match view.members.get(host).map(|m| m.state) {
                Some(MemberState::Left) => "left the cluster",
                Some(_) => "dead",
                None => "unknown to this node",
            },
        };
        let name = &vm.request.name;
        let (detail, fix) = match (&vm.disk.host, state) {
            (Some(_), "fenced") => (
                format!("{name}'s disk is on {host}, which is fenced: the disk is out of reach"),
                format!(
                    "none keeps the data: bring {host} back and unfence it, or give the data up with `hearth vm recreate {name} --empty-disk`"
                ),
            ),
            (Some(_), _) if !vm.storage.is_local() => (
                format!(
                    "{name}'s disk is on Ceph ({}), and its worker {host} is {state}: the VM may still run there",
                    vm.storage
                ),
                format!(
                    "none needed: once {host} has not renewed its lease for its timeout, a worker with [ceph] fences {host}'s Ceph clients and restarts {name}; or `hearth node fence {host}`"
                ),
            ),
            (Some(_), _) => (
                format!("{name}'s disk is on {host}, which is {state}: the VM may still run there"),
                format!(
                    "wait for {host} to come back (its agent adopts the VM); if it is off for good, `hearth node fence {host}`"
                ),
            ),
            (None, _) => (
                format!("{name} is placed on {host}, which is {state}, and has no disk yet"),
                format!(
                    "`hearth node fence {host}` once it is off, and {name} is placed elsewhere"
                ),
            ),
        };
        drift.push(Drift {
            id: format!("{host}/{}/{}", DriftKind::MissingDisk.as_str(), vm.id),
            host: host.to_owned(),
            vm: vm.id.clone(),
            kind: DriftKind::MissingDisk,
            detail,
            fix,
        });
    }
    drift
}

/// The phase to show: a VM on a host that is not up is `lost` at once, never `stopped`.
pub fn shown_phase(vm: &Vm, compute: &Compute, view: &View) -> Phase {
    match &vm.host {
        Some(host) if liveness(compute, view, host) != HostLiveness::Up => Phase::Lost,
        _ => vm.phase,
    }
}

/// What a VM asks of its host: a disk on RBD takes no room on the host, but needs a host
/// that reaches Ceph.
fn demand(vm: &Vm) -> Capacity {
    let rbd = !vm.storage.is_local();
    Capacity {
        vcpus: vm.request.vcpus,
        memory_mib: vm.request.memory_mib,
        disk_gib: if rbd { 0 } else { vm.request.disk_gib },
        live_migration: false,
        rbd,
    }
}

/// Whether a move of `vm` to `to` can be live: it runs, and both its host's and `to`'s
/// drivers can move a running VM. Otherwise a move is cold.
pub fn can_move_live(compute: &Compute, vm: &Vm, to: &str) -> bool {
    let live = |host: &str| {
        compute
            .hosts
            .get(host)
            .is_some_and(|h| h.capacity.live_migration)
    };
    vm.phase == Phase::Running && vm.host.as_deref().is_some_and(live) && live(to)
}

fn fits(free: &Capacity, need: &Capacity) -> bool {
    free.vcpus >= need.vcpus
        && free.memory_mib >= need.memory_mib
        && free.disk_gib >= need.disk_gib
        && (free.rbd || !need.rbd)
}

/// The room left on each host that may take VMs (an up worker, not drained, not fenced): its
/// capacity less what the VMs placed on it, or moving to it, ask for, and the disk room of
/// the replicas it keeps.
pub(crate) fn free_room<'a>(desired: &'a DesiredState, view: &View) -> BTreeMap<&'a str, Capacity> {
    let compute = &desired.compute;
    let mut free: BTreeMap<&str, Capacity> = compute
        .hosts
        .iter()
        .filter(|(name, host)| {
            !host.fenced
                && !desired.is_drained(name)
                && view.members.get(name.as_str()).is_some_and(|m| {
                    m.state == MemberState::Alive
                        && m.meta.roles.contains(&Role::Worker)
                        && !m.meta.roles.contains(&Role::Witness)
                })
        })
        .map(|(name, host)| (name.as_str(), host.capacity))
        .collect();
    for vm in compute.vms.values().map(|v| &v.value) {
        let target = vm.migration.as_ref().map(|m| m.to.as_str());
        for host in vm.host.as_deref().into_iter().chain(target) {
            if let Some(room) = free.get_mut(host) {
                let need = demand(vm);
                room.vcpus = room.vcpus.saturating_sub(need.vcpus);
                room.memory_mib = room.memory_mib.saturating_sub(need.memory_mib);
                room.disk_gib = room.disk_gib.saturating_sub(need.disk_gib);
            }
        }
        // A replica takes disk room on its host.
        if let Some(room) = vm
            .replica
            .as_ref()
            .and_then(|r| free.get_mut(r.host.as_str()))
        {
            room.disk_gib = room.disk_gib.saturating_sub(vm.request.disk_gib);
        }
    }
    free
}

/// The host VM `vm` should move to: `to` when it may take it, else the one with the most
/// free memory that fits it, never its own host. The error says why none will do, naming
/// the field to change.
pub fn move_target(
    desired: &DesiredState,
    view: &View,
    vm: &Vm,
    to: Option<&str>,
) -> Result<String, String> {
    let need = demand(vm);
    let free = free_room(desired, view);
    let here = vm.host.as_deref();
    let name = &vm.request.name;
    let wants = format!(
        "{} vCPUs, {} MiB, {} GiB",
        need.vcpus, need.memory_mib, need.disk_gib
    );
    match to {
        Some(to) if Some(to) == here => Err(format!("to: {name} is on {to} already")),
        Some(to) => match free.get(to) {
            None => Err(format!(
                "to: {to} is not a worker that is up, unfenced and not drained"
            )),
            Some(room) if !fits(room, &need) => Err(format!(
                "to: {to} has room for {} vCPUs, {} MiB, {} GiB; {name} needs {wants}",
                room.vcpus, room.memory_mib, room.disk_gib
            )),
            Some(_) => Ok(to.to_owned()),
        },
        None => free
            .iter()
            .filter(|(host, room)| Some(**host) != here && fits(room, &need))
            .max_by(|(a_name, a), (b_name, b)| {
                a.memory_mib.cmp(&b.memory_mib).then(b_name.cmp(a_name))
            })
            .map(|(host, _)| (*host).to_owned())
            .ok_or_else(|| {
                format!("to: no other worker has room for {name} ({wants}); add one, or free room")
            }),
    }
}

/// Whether the other hosts can hold every VM on `host` (the N+1 check of `hearth node
/// evacuate` and `hearth hosts`): placed greedily, largest memory first, on the room left
/// on the hosts that may take VMs. The error names the first VM that does not fit.
pub fn evacuation_check(desired: &DesiredState, view: &View, host: &str) -> Result<(), String> {
    let mut free = free_room(desired, view);
    free.remove(host);
    let mut on_it: Vec<&Vm> = desired
        .compute
        .vms
        .values()
        .map(|v| &v.value)
        .filter(|vm| vm.host.as_deref() == Some(host) && !vm.deleting)
        .collect();
    on_it.sort_by_key(|vm| std::cmp::Reverse(vm.request.memory_mib));
    for vm in on_it {
        let need = demand(vm);
        let best = free
            .iter_mut()
            .filter(|(_, room)| fits(room, &need))
            .max_by(|(a_name, a), (b_name, b)| {
                a.memory_mib.cmp(&b.memory_mib).then(b_name.cmp(a_name))
            });
        let Some((_, room)) = best else {
            return Err(format!(
                "the other workers cannot hold {} ({} vCPUs, {} MiB, {} GiB) with the rest of {host}'s VMs; add a worker or free room first",
                vm.request.name, need.vcpus, need.memory_mib, need.disk_gib
            ));
        };
        room.vcpus -= need.vcpus;
        room.memory_mib -= need.memory_mib;
        room.disk_gib -= need.disk_gib;
    }
    Ok(())
}

/// The next step of each host's evacuation: one move at a time, each to the roomiest other
/// host; a VM that never had a disk is simply placed elsewhere; over when no VM is left, and
/// stopped when the next VM fits nowhere.
fn evacuate(desired: &DesiredState, view: &View, commands: &mut Vec<ComputeCommand>) {
    let compute = &desired.compute;
    for (name, host) in &compute.hosts {
        if host.evacuation != Some(Evacuation::Moving) {
            continue;
        }
        let on_it = || {
            compute
                .vms
                .values()
                .map(|v| &v.value)
                .filter(|vm| vm.host.as_deref() == Some(name.as_str()) && !vm.deleting)
        };
        if on_it().any(|vm| vm.migration.is_some()) {
            continue;
        }
        let set = |evacuation| ComputeCommand::SetEvacuation {
            host: name.clone(),
            evacuation: Some(evacuation),
        };
        let Some(vm) = on_it().next() else {
            commands.push(set(Evacuation::Done));
            continue;
        };
        match move_target(desired, view, vm, None) {
            Ok(to) if vm.disk.host.is_none() => commands.push(ComputeCommand::Place {
                vm: vm.id.clone(),
                host: Some(to),
                from: vm.host.clone(),
            }),
            // A VM whose last move was given up moves cold: a live move that failed once
            // (QEMU's "Bad address" after an earlier live move, docs/migration.md) would
            // fail again, and the evacuation must still empty the host.
            Ok(to) => commands.push(ComputeCommand::Migrate {
                vm: vm.id.clone(),
                live: can_move_live(compute, vm, &to) && vm.move_given_up.is_none(),
                to,
                expect: hearth_state::model::Expect::Any,
            }),
            Err(why) => commands.push(set(Evacuation::Stopped {
                why: format!("{}: {}", vm.request.name, why.trim_start_matches("to: ")),
            })),
        }
    }
}

/// The commands that move the desired state towards every VM being on a host that can run it.
/// Pending VMs go to the eligible host (an up worker, not drained, not fenced) with the most
/// free memory that fits them, ties broken by name, so VMs spread. On a fenced host, VMs that
/// never had a disk are placed again, and VMs being deleted are forgotten. Every other VM
/// stays put: on a dead or left host it may still run, and a disk never moves by placement.
pub fn plan(desired: &DesiredState, view: &View) -> Vec<ComputeCommand> {
    let compute = &desired.compute;
    let mut free = free_room(desired, view);
    let mut commands = Vec::new();
    for vm in compute.vms.values().map(|v| &v.value) {
        let fenced = vm
            .host
            .as_deref()
            .is_some_and(|h| liveness(compute, view, h) == HostLiveness::Fenced);
        if fenced && vm.deleting {
            commands.push(ComputeCommand::Forget {
                vm: vm.id.clone(),
                host: vm.host.clone().unwrap_or_default(),
            });
            continue;
        }
        // Generation 0 is a VM from before disks had homes: it may have had one, so it never
        // moves (its host records the home when it sees the disk).
        let movable = fenced && vm.disk.host.is_none() && vm.disk.generation > 0;
        if vm.deleting || (vm.host.is_some() && !movable) {
            continue;
        }
        let need = demand(vm);
        let best = free
            .iter()
            .filter(|(_, room)| fits(room, &need))
            .max_by(|(a_name, a), (b_name, b)| {
                a.memory_mib.cmp(&b.memory_mib).then(b_name.cmp(a_name))
            })
            .map(|(name, _)| *name);
        match best {
            Some(host) => {
                let room = free.get_mut(host).expect("chosen from the map");
                room.vcpus -= need.vcpus;
                room.memory_mib -= need.memory_mib;
                room.disk_gib -= need.disk_gib;
                commands.push(ComputeCommand::Place {
                    vm: vm.id.clone(),
                    host: Some(host.to_owned()),
                    from: vm.host.clone(),
                });
            }
            // Fenced host and no room elsewhere: back to pending, so it shows honestly.
            None if movable => commands.push(ComputeCommand::Place {
                vm: vm.id.clone(),
                host: None,
                from: vm.host.clone(),
            }),
            None => {}
        }
    }
    evacuate(desired, view, &mut commands);
    commands
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_types::compute::Host;
    use hearth_types::desired::Versioned;
    use hearth_types::{Member, NodeMeta};

    fn member(name: &str, state: MemberState, roles: &[Role]) -> Member {
        Member {
            meta: NodeMeta {
                name: name.into(),
                gossip_addr: "127.0.0.1:7946".parse().unwrap(),
                address: "127.0.0.1".parse().unwrap(),
                roles: roles.to_vec(),
                tags: Default::default(),
                rpc_addr: None,
                in_group: true,
            },
            state,
            services: vec![],
        }
    }

    fn vm(id: &str, memory_mib: u64, host: Option<&str>) -> Versioned<Vm> {
        let mut vm = Vm::example(id, id, "alice");
        vm.request.memory_mib = memory_mib;
        vm.host = host.map(Into::into);
        vm.phase = if host.is_some() {
            Phase::Running
        } else {
            Phase::Pending
        };
        vm.phase_since = 1;
        vm.disk = Default::default();
        Versioned {
            version: 1,
            value: vm,
        }
    }

    fn world(states: &[(&str, MemberState)]) -> (DesiredState, View) {
        let mut desired = DesiredState::default();
        let mut view = View::default();
        for (name, state) in states {
            desired.compute.hosts.insert(
                (*name).into(),
                Host {
                    capacity: Capacity {
                        vcpus: 4,
                        memory_mib: 1024,
                        disk_gib: 10,
                        live_migration: false,
                        rbd: false,
                    },
                    fenced: false,
                    evacuation: None,
                    lease: 0,
                },
            );
            view.members
                .insert((*name).into(), member(name, *state, &[Role::Worker]));
        }
        (desired, view)
    }

    /// A move goes to the named host only when it may take the VM, else to the roomiest
    /// other one; a VM moving to a host holds its room there until the switch.
    #[test]
    fn a_move_goes_only_where_the_vm_fits() {
        let (mut desired, mut view) = world(&[
            ("w1", MemberState::Alive),
            ("w2", MemberState::Alive),
            ("w3", MemberState::Alive),
            ("w4", MemberState::Dead),
        ]);
        view.members.get_mut("w3").unwrap().meta.roles = vec![Role::Server];
        let mut big = vm("vm-1", 700, Some("w1"));
        desired.compute.vms.insert("vm-1".into(), big.clone());
        let moving = &big.value;
        assert_eq!(move_target(&desired, &view, moving, None).unwrap(), "w2");
        assert_eq!(
            move_target(&desired, &view, moving, Some("w2")).unwrap(),
            "w2"
        );
        for (to, why) in [
            ("w1", "is on w1 already"),
            ("w3", "not a worker that is up"),
            ("w4", "not a worker that is up"),
            ("nope", "not a worker that is up"),
        ] {
            let error = move_target(&desired, &view, moving, Some(to)).unwrap_err();
            assert!(
                error.starts_with("to: ") && error.contains(why),
                "{to}: {error}"
            );
        }
        // Another VM on its way to w2 takes the room there.
        let mut other = vm("vm-2", 700, Some("w1"));
        other.value.migration = Some(hearth_types::compute::Migration {
            to: "w2".into(),
            stage: hearth_types::compute::MigrationStage::Copying,
            since: 1,
            done_bytes: 0,
            total_bytes: 0,
            live: false,
            listen: None,
        });
        desired.compute.vms.insert("vm-2".into(), other);
        let error = move_target(&desired, &view, moving, Some("w2")).unwrap_err();
        assert!(error.contains("needs 1 vCPUs, 700 MiB"), "{error}");
        let error = move_target(&desired, &view, moving, None).unwrap_err();
        assert!(error.contains("no other worker has room"), "{error}");
        big.value.request.memory_mib = 300;
        assert_eq!(
            move_target(&desired, &view, &big.value, None).unwrap(),
            "w2"
        );
    }

    /// An evacuation moves one VM at a time, places a VM that never had a disk, stops when
    /// the next VM fits nowhere, and is over when the host is empty; the N+1 check packs all
    /// of a host's VMs at once.
    #[test]
    fn an_evacuation_moves_one_vm_at_a_time_and_stops_where_nothing_fits() {
        let (mut desired, view) = world(&[("w1", MemberState::Alive), ("w2", MemberState::Alive)]);
        let mut a = vm("vm-1", 600, Some("w1"));
        a.value.disk.host = Some("w1".into());
        let b = vm("vm-2", 300, Some("w1"));
        desired.compute.vms.insert("vm-1".into(), a.clone());
        desired.compute.vms.insert("vm-2".into(), b);
        assert_eq!(evacuation_check(&desired, &view, "w1"), Ok(()));
        desired.compute.hosts.get_mut("w1").unwrap().evacuation = Some(Evacuation::Moving);
        desired.drained.insert(
            "w1".into(),
            hearth_types::desired::Versioned {
                version: 1,
                value: true,
            },
        );
        let moves: Vec<_> = plan(&desired, &view)
            .into_iter()
            .filter(|c| !matches!(c, ComputeCommand::Place { host: None, .. }))
            .collect();
        assert!(
            matches!(&moves[..], [ComputeCommand::Migrate { vm, to, .. }] if vm == "vm-1" && to == "w2"),
            "{moves:?}"
        );
        // While it moves, nothing else does.
        let mut moving = a.clone();
        moving.value.migration = Some(hearth_types::compute::Migration {
            to: "w2".into(),
            stage: hearth_types::compute::MigrationStage::Copying,
            since: 1,
            done_bytes: 0,
            total_bytes: 0,
            live: false,
            listen: None,
        });
        desired.compute.vms.insert("vm-1".into(), moving);
        assert_eq!(plan(&desired, &view), vec![]);
        // Moved; vm-2 never had a disk: placed on w2.
        let mut moved = a;
        moved.value.host = Some("w2".into());
        moved.value.disk.host = Some("w2".into());
        desired.compute.vms.insert("vm-1".into(), moved);
        assert_eq!(
            placed(&plan(&desired, &view)),
            [("vm-2".into(), Some("w2".into()))]
        );
        // Too big for what is left on w2: the evacuation stops and says why.
        desired
            .compute
            .vms
            .get_mut("vm-2")
            .unwrap()
            .value
            .request
            .memory_mib = 900;
        let error = evacuation_check(&desired, &view, "w1").unwrap_err();
        assert!(error.contains("cannot hold vm-2"), "{error}");
        assert!(matches!(
            &plan(&desired, &view)[..],
            [ComputeCommand::SetEvacuation { evacuation: Some(Evacuation::Stopped { why }), .. }] if why.starts_with("vm-2: ")
        ));
        desired.compute.vms.remove("vm-2");
        assert!(matches!(
            &plan(&desired, &view)[..],
            [ComputeCommand::SetEvacuation {
                evacuation: Some(Evacuation::Done),
                ..
            }]
        ));
    }

    fn placed(commands: &[ComputeCommand]) -> Vec<(String, Option<String>)> {
        commands
            .iter()
            .filter_map(|c| match c {
                ComputeCommand::Place { vm, host, .. } => Some((vm.clone(), host.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn pending_vms_spread_over_hosts_with_room() {
        let (mut desired, view) = world(&[("w1", MemberState::Alive), ("w2", MemberState::Alive)]);
        for id in ["a", "b", "c"] {
            desired.compute.vms.insert(id.into(), vm(id, 400, None));
        }
        let placed = placed(&plan(&desired, &view));
        let hosts: Vec<_> = placed.iter().map(|(_, h)| h.clone().unwrap()).collect();
        assert_eq!(hosts, ["w1", "w2", "w1"]);
    }

    #[test]
    fn nothing_goes_where_it_does_not_fit_or_is_not_wanted() {
        let (mut desired, mut view) =
            world(&[("w1", MemberState::Alive), ("w2", MemberState::Dead)]);
        desired
            .compute
            .vms
            .insert("big".into(), vm("big", 4096, None));
        desired
            .compute
            .vms
            .insert("small".into(), vm("small", 100, None));
        desired.drained.insert(
            "w1".into(),
            Versioned {
                version: 1,
                value: true,
            },
        );
        assert!(plan(&desired, &view).is_empty(), "w1 drained, w2 dead");
        desired.drained.clear();
        view.members.get_mut("w1").unwrap().meta.roles = vec![Role::Server];
        assert!(plan(&desired, &view).is_empty(), "w1 is not a worker");
    }

    #[test]
    fn a_dead_or_left_hosts_vms_are_lost_and_stay() {
        let (mut desired, mut view) =
            world(&[("w1", MemberState::Dead), ("w2", MemberState::Alive)]);
        desired
            .compute
            .vms
            .insert("a".into(), vm("a", 100, Some("w1")));
        desired.compute.vms.get_mut("a").unwrap().value.disk.host = Some("w1".into());
        let a = &desired.compute.vms["a"].value;
        assert_eq!(shown_phase(a, &desired.compute, &view), Phase::Lost);
        assert!(plan(&desired, &view).is_empty(), "may still run on w1");
        // A graceful leave (agent stopped or restarted) is not the VMs' end: QEMU outlives
        // the agent.
        view.members.get_mut("w1").unwrap().state = MemberState::Left;
        let a = &desired.compute.vms["a"].value;
        assert_eq!(shown_phase(a, &desired.compute, &view), Phase::Lost);
        assert!(plan(&desired, &view).is_empty(), "left is not gone");
        let drift = lost_drift(&desired.compute, &view);
        assert_eq!(drift.len(), 1);
        assert_eq!(drift[0].id, "w1/missing-disk/a");
        assert!(
            drift[0].detail.contains("left the cluster"),
            "{:?}",
            drift[0]
        );
        view.members.get_mut("w1").unwrap().state = MemberState::Alive;
        assert!(lost_drift(&desired.compute, &view).is_empty());
    }

    #[test]
    fn a_fenced_host_moves_only_vms_that_never_had_a_disk() {
        let (mut desired, view) = world(&[("w1", MemberState::Dead), ("w2", MemberState::Alive)]);
        for id in ["a", "b", "legacy"] {
            desired
                .compute
                .vms
                .insert(id.into(), vm(id, 100, Some("w1")));
        }
        let vms = &mut desired.compute.vms;
        // a ran on w1: its disk is there.
        vms.get_mut("a").unwrap().value.disk = hearth_types::compute::DiskHome {
            host: Some("w1".into()),
            generation: 1,
        };
        // b was placed on w1 but never got a disk.
        let b = &mut vms.get_mut("b").unwrap().value;
        b.disk.generation = 1;
        b.phase = Phase::Placed;
        // A VM of a state from before disks had homes (generation 0) may have one: it stays.
        desired.compute.hosts.get_mut("w1").unwrap().fenced = true;
        assert_eq!(
            placed(&plan(&desired, &view)),
            [("b".to_string(), Some("w2".to_string()))],
            "a's disk is on w1, and legacy may have one there: both stay lost"
        );
        for id in ["a", "legacy"] {
            let v = &desired.compute.vms[id].value;
            assert_eq!(shown_phase(v, &desired.compute, &view), Phase::Lost);
        }
        let drift = lost_drift(&desired.compute, &view);
        let entry = drift.iter().find(|d| d.vm == "a").unwrap();
        assert!(entry.fix.contains("recreate a --empty-disk"), "{entry:?}");
    }
}
