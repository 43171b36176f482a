//! Moving a VM and its disk to another host (cold or live migration), as commands on the
//! desired state: ask, the source's "stopped" (cold) or the target's "listening" and the
//! source's "completed" (live), progress, the switch, and giving up.
//! Each checks the facts its step depends on, so a stale or repeated command changes nothing
//! and the disk home moves exactly once. `docs/migration.md` gives the whole protocol.

use hearth_types::compute::{
    Compute, DiskHome, Evacuation, Listening, Migration, MigrationStage, Phase, Vm,
};
use hearth_types::desired::Versioned;

use super::cas::{Expect, Outcome};
use super::compute::ComputeCommand;

/// The migration commands of [`super::compute::apply`].
pub(super) fn apply(compute: &mut Compute, command: &ComputeCommand, index: u64) -> Outcome {
    use ComputeCommand as C;
    match command {
        C::Migrate {
            vm,
            to,
            live,
            expect,
        } => migrate(compute, vm, to, *live, *expect, index),
        C::MigrationStopped {
            vm,
            host,
            generation,
        } => stopped(compute, vm, host, *generation),
        C::MigrationListening {
            vm,
            to,
            since,
            listen,
        } => listening(compute, vm, to, *since, listen),
        C::MigrationProgress {
            vm,
            host,
            done_bytes,
            total_bytes,
        } => progress(compute, vm, host, *done_bytes, *total_bytes),
        C::MigrationCompleted { vm, host, since } => completed(compute, vm, host, *since),
        C::MoveDisk {
            vm,
            from,
            to,
            generation,
        } => move_disk(compute, vm, from, to, *generation, index),
        C::AbortMigration { vm, why } => abort(compute, vm, why, index),
        _ => Outcome::Nothing,
    }
}

fn conflict(entry: &Versioned<Vm>) -> Outcome {
    Outcome::Conflict {
        current: Some(entry.version),
    }
}

fn invalid(message: String) -> Outcome {
    Outcome::Invalid { message }
}

/// `hearth vm migrate NAME [--to HOST] [--cold]`: the VM must run from its disk's home, with
/// no other move under way, and the target must be another known host that is not fenced.
pub(super) fn migrate(
    compute: &mut Compute,
    key: &str,
    to: &str,
    live: bool,
    expect: Expect,
    index: u64,
) -> Outcome {
    let target = compute.hosts.get(to).filter(|h| !h.fenced);
    let target_ok = target.is_some();
    let target_ceph = target.is_some_and(|h| h.capacity.rbd);
    let Some(entry) = compute.vms.get_mut(key) else {
        return Outcome::NotFound;
    };
    if !expect.holds(Some(entry.version)) {
        return conflict(entry);
    }
    let vm = &mut entry.value;
    let name = vm.request.name.clone();
    let Some(host) = vm.host.clone() else {
        return invalid(format!(
            "vm: {name} is not placed yet; it starts where it fits"
        ));
    };
    if vm.deleting {
        return invalid(format!("vm: {name} is being deleted"));
    }
    if vm.migration.is_some() {
        return invalid(format!("vm: {name} is already being moved"));
    }
    if vm.disk.host.as_deref() != Some(host.as_str()) {
        return invalid(format!(
            "vm: {name} has no disk on {host} yet; it moves once it has run there"
        ));
    }
    if to == host {
        return invalid(format!("to: {name} is on {to} already"));
    }
    if !target_ok {
        return invalid(format!(
            "to: {to} is not a worker host that is up and unfenced"
        ));
    }
    if !vm.storage.is_local() && !target_ceph {
        return invalid(format!(
            "to: {name}'s disk is on Ceph ({}), and {to} has no [ceph] in its config; choose a worker that reaches Ceph",
            vm.storage
        ));
    }
    vm.move_given_up = None;
    vm.migration = Some(Migration {
        to: to.to_owned(),
        stage: if live {
            MigrationStage::Preparing
        } else {
            MigrationStage::Stopping
        },
        since: index,
        done_bytes: 0,
        total_bytes: 0,
        live,
        listen: None,
    });
    entry.version = index;
    Outcome::Applied { version: index }
}

/// The source host stopped the VM: its disk of `generation` is at rest, to be copied.
pub(super) fn stopped(compute: &mut Compute, key: &str, host: &str, generation: u64) -> Outcome {
    let Some(entry) = compute.vms.get_mut(key) else {
        return Outcome::NotFound;
    };
    let vm = &mut entry.value;
    let home = vm.disk.host.as_deref() == Some(host) && vm.disk.generation == generation;
    match &mut vm.migration {
        Some(m) if home && m.stage == MigrationStage::Stopping => {
            m.stage = MigrationStage::Copying;
            Outcome::Applied {
                version: entry.version,
            }
        }
        Some(m) if home && m.stage == MigrationStage::Copying => Outcome::Nothing,
        _ => conflict(entry),
    }
}

/// Live: the target's QEMU for move `since` waits at `listen`; the source may mirror.
fn listening(
    compute: &mut Compute,
    key: &str,
    to: &str,
    since: u64,
    listen: &Listening,
) -> Outcome {
    let Some(entry) = compute.vms.get_mut(key) else {
        return Outcome::NotFound;
    };
    match &mut entry.value.migration {
        Some(m) if m.to == to && m.since == since && m.stage == MigrationStage::Preparing => {
            m.stage = MigrationStage::Mirroring;
            m.listen = Some(listen.clone());
            Outcome::Applied {
                version: entry.version,
            }
        }
        _ => conflict(entry),
    }
}

/// Live: the source's QEMU finished move `since` and is paused; the target may switch.
fn completed(compute: &mut Compute, key: &str, host: &str, since: u64) -> Outcome {
    let Some(entry) = compute.vms.get_mut(key) else {
        return Outcome::NotFound;
    };
    let vm = &mut entry.value;
    let source = vm.host.as_deref() == Some(host) && vm.disk.host.as_deref() == Some(host);
    match &mut vm.migration {
        Some(m) if source && m.since == since && m.stage == MigrationStage::Mirroring => {
            m.stage = MigrationStage::Switching;
            m.done_bytes = m.total_bytes;
            Outcome::Applied {
                version: entry.version,
            }
        }
        _ => conflict(entry),
    }
}

/// The copying host's progress, shown by `vm show`: the target's copy of a cold move, the
/// source's mirror and RAM of a live one.
pub(super) fn progress(
    compute: &mut Compute,
    key: &str,
    host: &str,
    done: u64,
    total: u64,
) -> Outcome {
    let Some(entry) = compute.vms.get_mut(key) else {
        return Outcome::NotFound;
    };
    let source = entry.value.host.as_deref() == Some(host);
    match &mut entry.value.migration {
        Some(m)
            if (m.to == host && m.stage == MigrationStage::Copying)
                || (source && m.stage == MigrationStage::Mirroring) =>
        {
            m.done_bytes = done.min(total);
            m.total_bytes = total;
            Outcome::Applied {
                version: entry.version,
            }
        }
        _ => conflict(entry),
    }
}

/// The switch: the target holds a whole copy of the disk of `generation`, written there as
/// `generation + 1`. The VM and its disk home move to it together, and the copy left at the
/// source is stale from then on (an older generation, which no start accepts). A disk on
/// RBD is not copied: the target holds a handle of the same image, and the generation stays
/// (`Storage::moved_generation`); the source's QEMU has handed the image over (live) or is
/// stopped (cold), and its handle is archived.
pub(super) fn move_disk(
    compute: &mut Compute,
    key: &str,
    from: &str,
    to: &str,
    generation: u64,
    index: u64,
) -> Outcome {
    let target_ok = compute.hosts.get(to).is_some_and(|h| !h.fenced);
    let Some(entry) = compute.vms.get_mut(key) else {
        return Outcome::NotFound;
    };
    let vm = &mut entry.value;
    // Cold: the target copied the disk at rest. Live: the source's QEMU finished and waits,
    // paused, for this switch.
    let copying = vm.migration.as_ref().is_some_and(|m| {
        m.to == to
            && matches!(
                (m.live, m.stage),
                (false, MigrationStage::Copying) | (true, MigrationStage::Switching)
            )
    });
    let home = vm.host.as_deref() == Some(from)
        && vm.disk.host.as_deref() == Some(from)
        && vm.disk.generation == generation;
    if !copying || !home || vm.deleting || !target_ok {
        return conflict(entry);
    }
    vm.host = Some(to.to_owned());
    vm.moved_from = Some(vm.disk.clone());
    vm.disk = DiskHome {
        host: Some(to.to_owned()),
        generation: vm.storage.moved_generation(generation),
    };
    vm.migration = None;
    vm.set_phase(Phase::Placed, Some(format!("moved from {from}")), index);
    entry.version = index;
    Outcome::Applied { version: index }
}

/// Gives the move up: nothing switched, so the VM runs at its source again.
pub(super) fn abort(compute: &mut Compute, key: &str, why: &str, index: u64) -> Outcome {
    let Some(entry) = compute.vms.get_mut(key) else {
        return Outcome::NotFound;
    };
    let Some(migration) = entry.value.migration.take() else {
        return Outcome::Nothing;
    };
    let message = format!("the move to {} was given up: {why}", migration.to);
    let phase = entry.value.phase;
    entry.value.set_phase(phase, Some(message.clone()), index);
    entry.value.move_given_up = Some(message.clone());
    // An evacuation of its host stops at the first cold move given up; after a live one it
    // moves that VM cold next (see `placement::evacuate`).
    if !migration.live
        && let Some(host) = entry.value.host.clone()
        && let Some(source) = compute.hosts.get_mut(&host)
        && source.evacuation == Some(Evacuation::Moving)
    {
        let why = format!("{}: {message}", entry.value.request.name);
        source.evacuation = Some(Evacuation::Stopped { why });
    }
    entry.version = index;
    Outcome::Applied { version: index }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use hearth_types::compute::Host;

    /// vm-1 (db1), running on w1 from its own disk of generation 3.
    pub(in crate::model) fn vm_on_w1() -> Vm {
        let mut vm = Vm::example("vm-1", "db1", "alice");
        vm.request.memory_mib = 256;
        vm.host = Some("w1".into());
        vm.phase = Phase::Running;
        vm.phase_since = 1;
        vm.disk = DiskHome {
            host: Some("w1".into()),
            generation: 3,
        };
        vm
    }

    /// w1 runs vm-1 from its own disk (generation 3); w2 is free; w3 is fenced.
    fn setup() -> Compute {
        let mut compute = Compute::default();
        for (name, fenced) in [("w1", false), ("w2", false), ("w3", true)] {
            let host = Host {
                fenced,
                ..Host::default()
            };
            compute.hosts.insert(name.into(), host);
        }
        let vm = vm_on_w1();
        compute.vms.insert(
            "vm-1".into(),
            Versioned {
                version: 1,
                value: vm,
            },
        );
        compute
    }

    fn vm(compute: &Compute) -> &Vm {
        &compute.vms["vm-1"].value
    }

    fn copying(compute: &mut Compute) {
        assert!(migrate(compute, "vm-1", "w2", false, Expect::Any, 10).changed());
        assert!(stopped(compute, "vm-1", "w1", 3).changed());
    }

    #[test]
    fn a_cold_move_switches_host_and_disk_home_together_with_a_new_generation() {
        let mut compute = setup();
        copying(&mut compute);
        assert!(progress(&mut compute, "vm-1", "w2", 50, 100).changed());
        assert_eq!(vm(&compute).migration.as_ref().unwrap().done_bytes, 50);
        assert!(move_disk(&mut compute, "vm-1", "w1", "w2", 3, 12).changed());
        let moved = vm(&compute);
        assert_eq!(moved.host.as_deref(), Some("w2"));
        assert_eq!(moved.disk.host.as_deref(), Some("w2"));
        // The copy left on w1 is generation 3: older than the home's, never started again.
        assert_eq!(moved.disk.generation, 4);
        assert_eq!(moved.migration, None);
        assert_eq!(moved.phase, Phase::Placed);
    }

    #[test]
    fn the_switch_happens_once_and_only_from_the_recorded_home() {
        let mut compute = setup();
        copying(&mut compute);
        // Not yet from a stale generation, a wrong source, or to another target.
        assert!(!move_disk(&mut compute, "vm-1", "w1", "w2", 2, 12).changed());
        assert!(!move_disk(&mut compute, "vm-1", "w2", "w2", 3, 12).changed());
        assert!(!move_disk(&mut compute, "vm-1", "w1", "w3", 3, 12).changed());
        assert!(move_disk(&mut compute, "vm-1", "w1", "w2", 3, 12).changed());
        // A retry, or a stale leader's copy of the command, changes nothing.
        let before = compute.clone();
        assert!(!move_disk(&mut compute, "vm-1", "w1", "w2", 3, 13).changed());
        assert_eq!(compute, before);
    }

    #[test]
    fn a_live_move_switches_only_after_the_target_listens_and_the_source_completes() {
        let mut compute = setup();
        assert!(migrate(&mut compute, "vm-1", "w2", true, Expect::Any, 10).changed());
        assert_eq!(
            vm(&compute).migration.as_ref().unwrap().stage,
            MigrationStage::Preparing
        );
        let listen = Listening {
            nbd: "127.0.0.2:4000".into(),
            migrate: "127.0.0.2:4001".into(),
        };
        // Not yet: nothing listens, nothing completed; a cold "stopped" does not apply.
        assert!(!move_disk(&mut compute, "vm-1", "w1", "w2", 3, 11).changed());
        assert!(!completed(&mut compute, "vm-1", "w1", 10).changed());
        assert!(!stopped(&mut compute, "vm-1", "w1", 3).changed());
        // Only the target, for this move.
        assert!(!listening(&mut compute, "vm-1", "w3", 10, &listen).changed());
        assert!(!listening(&mut compute, "vm-1", "w2", 9, &listen).changed());
        assert!(listening(&mut compute, "vm-1", "w2", 10, &listen).changed());
        assert_eq!(
            vm(&compute).migration.as_ref().unwrap().listen,
            Some(listen.clone())
        );
        // The source reports the mirror's progress; the target does not.
        assert!(progress(&mut compute, "vm-1", "w1", 5, 10).changed());
        assert!(!progress(&mut compute, "vm-1", "w2", 6, 10).changed());
        assert!(!move_disk(&mut compute, "vm-1", "w1", "w2", 3, 12).changed());
        // Only the source (the disk's home) completes, for this move.
        assert!(!completed(&mut compute, "vm-1", "w2", 10).changed());
        assert!(!completed(&mut compute, "vm-1", "w1", 9).changed());
        assert!(completed(&mut compute, "vm-1", "w1", 10).changed());
        assert_eq!(
            vm(&compute).migration.as_ref().unwrap().stage,
            MigrationStage::Switching
        );
        assert!(move_disk(&mut compute, "vm-1", "w1", "w2", 3, 13).changed());
        let moved = vm(&compute);
        assert_eq!(moved.disk.host.as_deref(), Some("w2"));
        assert_eq!(moved.disk.generation, 4);
        assert_eq!(moved.migration, None);
    }

    #[test]
    fn a_live_move_given_up_at_the_switch_leaves_the_vm_at_its_source() {
        let mut compute = setup();
        assert!(migrate(&mut compute, "vm-1", "w2", true, Expect::Any, 10).changed());
        let listen = Listening {
            nbd: "a:1".into(),
            migrate: "a:2".into(),
        };
        assert!(listening(&mut compute, "vm-1", "w2", 10, &listen).changed());
        assert!(completed(&mut compute, "vm-1", "w1", 10).changed());
        assert!(abort(&mut compute, "vm-1", "the target died", 14).changed());
        // The target's switch, arriving late, is refused: exactly one of the two wins.
        assert!(!move_disk(&mut compute, "vm-1", "w1", "w2", 3, 15).changed());
        assert_eq!(vm(&compute).disk.host.as_deref(), Some("w1"));
        assert_eq!(vm(&compute).host.as_deref(), Some("w1"));
    }

    #[test]
    fn nothing_switches_before_the_source_has_stopped_the_vm() {
        let mut compute = setup();
        assert!(migrate(&mut compute, "vm-1", "w2", false, Expect::Any, 10).changed());
        assert!(!progress(&mut compute, "vm-1", "w2", 1, 2).changed());
        assert!(!move_disk(&mut compute, "vm-1", "w1", "w2", 3, 12).changed());
        // Only the disk's home reports it stopped, and only at the disk's generation.
        assert!(!stopped(&mut compute, "vm-1", "w2", 3).changed());
        assert!(!stopped(&mut compute, "vm-1", "w1", 2).changed());
        assert_eq!(vm(&compute).host.as_deref(), Some("w1"));
    }

    #[test]
    fn moves_that_could_lose_or_double_a_disk_are_refused() {
        let mut compute = setup();
        for (to, why) in [
            ("w1", "on w1 already"),
            ("w3", "unfenced"),
            ("w9", "unfenced"),
        ] {
            match migrate(&mut compute, "vm-1", to, false, Expect::Any, 10) {
                Outcome::Invalid { message } => assert!(message.contains(why), "{message}"),
                other => panic!("{to}: {other:?}"),
            }
        }
        // A VM that never had a disk has nothing to move.
        compute.vms.get_mut("vm-1").unwrap().value.disk = DiskHome::default();
        assert!(matches!(
            migrate(&mut compute, "vm-1", "w2", false, Expect::Any, 10),
            Outcome::Invalid { .. }
        ));
        let mut compute = setup();
        assert!(migrate(&mut compute, "vm-1", "w2", false, Expect::Any, 10).changed());
        assert!(matches!(
            migrate(&mut compute, "vm-1", "w2", false, Expect::Any, 11),
            Outcome::Invalid { .. }
        ));
        assert!(matches!(
            migrate(&mut compute, "vm-1", "w2", false, Expect::Version(1), 11),
            Outcome::Conflict { .. }
        ));
    }

    #[test]
    fn a_given_up_move_leaves_the_vm_at_its_source() {
        let mut compute = setup();
        copying(&mut compute);
        compute.hosts.get_mut("w1").unwrap().evacuation = Some(Evacuation::Moving);
        assert!(abort(&mut compute, "vm-1", "w2 stopped answering", 12).changed());
        assert!(
            matches!(&compute.hosts["w1"].evacuation, Some(Evacuation::Stopped { why }) if why.contains("w2 stopped answering")),
            "an evacuation stops at the first move given up"
        );
        let vm = vm(&compute);
        assert_eq!(vm.migration, None);
        assert_eq!(vm.host.as_deref(), Some("w1"));
        assert_eq!(vm.disk.host.as_deref(), Some("w1"));
        assert_eq!(vm.disk.generation, 3);
        assert!(vm.message.as_deref().unwrap().contains("given up"));
        let kept = vm.move_given_up.as_deref().unwrap();
        assert!(kept.contains("w2 stopped answering"), "{kept}");
        // The target's late switch is refused.
        assert!(!move_disk(&mut compute, "vm-1", "w1", "w2", 3, 13).changed());
        assert_eq!(abort(&mut compute, "vm-1", "again", 14), Outcome::Nothing);
    }

    /// A disk on RBD moves to a worker that reaches Ceph only, and is not copied: the same
    /// image keeps its generation, and the source's handle is left behind (`moved_from`).
    #[test]
    fn a_move_of_a_disk_on_rbd_keeps_its_generation_and_needs_ceph_at_the_target() {
        let mut compute = setup();
        let storage = hearth_types::compute::Storage::Rbd { pool: "rbd".into() };
        compute.vms.get_mut("vm-1").unwrap().value.storage = storage;
        match migrate(&mut compute, "vm-1", "w2", true, Expect::Any, 10) {
            Outcome::Invalid { message } => assert!(message.contains("[ceph]"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(vm(&compute).migration, None);
        compute.hosts.get_mut("w2").unwrap().capacity.rbd = true;
        assert!(migrate(&mut compute, "vm-1", "w2", true, Expect::Any, 10).changed());
        let listen = Listening {
            nbd: String::new(),
            migrate: "127.0.0.2:4001".into(),
        };
        assert!(listening(&mut compute, "vm-1", "w2", 10, &listen).changed());
        assert!(completed(&mut compute, "vm-1", "w1", 10).changed());
        // The switch names the generation the disk has; it stays.
        assert!(!move_disk(&mut compute, "vm-1", "w1", "w2", 4, 11).changed());
        assert!(move_disk(&mut compute, "vm-1", "w1", "w2", 3, 11).changed());
        let moved = vm(&compute);
        assert_eq!(moved.disk.host.as_deref(), Some("w2"));
        assert_eq!(moved.disk.generation, 3);
        let left = moved.moved_from.as_ref().unwrap();
        assert_eq!((left.host.as_deref(), left.generation), (Some("w1"), 3));
    }

    /// A live move given up does not stop its host's evacuation: the next step moves that
    /// VM cold (QEMU's "Bad address" on a second live move, docs/migration.md).
    #[test]
    fn a_live_move_given_up_leaves_the_evacuation_going() {
        let mut compute = setup();
        compute.hosts.get_mut("w1").unwrap().evacuation = Some(Evacuation::Moving);
        assert!(migrate(&mut compute, "vm-1", "w2", true, Expect::Any, 10).changed());
        assert!(abort(&mut compute, "vm-1", "Bad address", 11).changed());
        assert_eq!(compute.hosts["w1"].evacuation, Some(Evacuation::Moving));
        assert!(vm(&compute).move_given_up.is_some());
    }
}
