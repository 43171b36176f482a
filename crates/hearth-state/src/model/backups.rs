//! The backup commands' `apply`: an admin's backup targets, a backup of a VM asked for (by
//! its owner or an admin; one at a time), and the run's result as the VM's disk home
//! records it, stored as a snapshot or failed (and retried by the worker until it gives up).

use hearth_types::backup::{BackupSnapshot, BackupTarget, MAX_SNAPSHOTS, short_error};
use hearth_types::desired::DesiredState;

use super::Outcome;
use super::cas::{Expect, invalid, put, refused, remove};

/// What one run came to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RunResult {
    Stored {
        snapshot: BackupSnapshot,
    },
    /// An attempt failed; with `give_up`, the run is over.
    Failed {
        error: String,
        give_up: bool,
    },
}

/// The backup commands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackupCommand {
    PutTarget {
        target: BackupTarget,
        expect: Expect,
    },
    RemoveTarget {
        name: String,
        expect: Expect,
    },
    /// A backup of `vm` into `target` now; refused while one is due.
    Ask {
        vm: String,
        target: String,
        by: Option<String>,
    },
    /// The VM's disk home reports on run `run` (the `asked` count it started for).
    Record {
        vm: String,
        host: String,
        run: u64,
        result: RunResult,
    },
}

impl BackupCommand {
    /// The object the command changes.
    pub fn object_key(&self) -> String {
        match self {
            BackupCommand::PutTarget { target, .. } => format!("backup-target/{}", target.name),
            BackupCommand::RemoveTarget { name, .. } => format!("backup-target/{name}"),
            BackupCommand::Ask { vm, .. } | BackupCommand::Record { vm, .. } => {
                format!("backup/{vm}")
            }
        }
    }
}

pub(super) fn apply(state: &mut DesiredState, command: &BackupCommand, index: u64) -> Outcome {
    match command {
        BackupCommand::PutTarget { target, expect } => match target.validate() {
            Err(message) => invalid(message),
            Ok(()) => put(
                &mut state.backups.targets,
                target.name.clone(),
                target.clone(),
                *expect,
                index,
            ),
        },
        BackupCommand::RemoveTarget { name, expect } => {
            remove(&mut state.backups.targets, name, *expect)
        }
        BackupCommand::Ask { vm, target, by } => ask(state, vm, target, by.as_deref(), index),
        BackupCommand::Record {
            vm,
            host,
            run,
            result,
        } => record(state, vm, host, *run, result, index),
    }
}

fn ask(state: &mut DesiredState, id: &str, target: &str, by: Option<&str>, index: u64) -> Outcome {
    let Some(vm) = state.compute.vms.get(id).map(|v| &v.value) else {
        return invalid(format!("vm: no VM {id}"));
    };
    if !state.backups.targets.contains_key(target) {
        return invalid(format!(
            "target: no backup target {target:?} (hearth backup-target list)"
        ));
    }
    if vm.deleting {
        return refused(format!("{id} is being deleted"));
    }
    if vm.disk.host.is_none() {
        return refused(format!("{id} has no disk yet: it never started"));
    }
    let backups = state.backups.vms.entry(id.to_owned()).or_default();
    if backups.pending() {
        return refused(format!(
            "a backup of {id} is under way; ask again when it is done"
        ));
    }
    backups.asked += 1;
    backups.target = target.to_owned();
    backups.asked_by = by.map(str::to_owned);
    backups.failures = 0;
    Outcome::Applied { version: index }
}

fn record(
    state: &mut DesiredState,
    id: &str,
    host: &str,
    run: u64,
    result: &RunResult,
    index: u64,
) -> Outcome {
    let home = state
        .compute
        .vms
        .get(id)
        .and_then(|v| v.value.disk.host.as_deref());
    if home != Some(host) {
        return refused(format!("{host} is not the home of {id}'s disk"));
    }
    let Some(backups) = state.backups.vms.get_mut(id) else {
        return refused(format!("no backup of {id} was asked for"));
    };
    if run != backups.asked || !backups.pending() {
        return refused(format!("run {run} of {id} is not the one due"));
    }
    match result {
        RunResult::Stored { snapshot } => {
            backups.done = run;
            backups.failures = 0;
            backups.last_error = None;
            backups.snapshots.push(snapshot.clone());
            let extra = backups.snapshots.len().saturating_sub(MAX_SNAPSHOTS);
            backups.snapshots.drain(..extra);
        }
        RunResult::Failed { error, give_up } => {
            backups.failures = backups.failures.saturating_add(1);
            backups.last_error = Some(short_error(error));
            if *give_up {
                backups.done = run;
            }
        }
    }
    Outcome::Applied { version: index }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_types::compute::{Phase, Power};
    use hearth_types::desired::Versioned;

    fn state() -> DesiredState {
        let mut state = DesiredState::default();
        let vm = hearth_types::compute::Vm {
            id: "vm-1".into(),
            request: hearth_types::compute::VmRequest {
                name: "web".into(),
                owner: "ana".into(),
                arch: hearth_types::compute::Arch::X86_64,
                vcpus: 1,
                memory_mib: 64,
                disk_gib: 1,
                image: "tiny".into(),
                ssh_keys: vec![],
                pools: vec![],
                io: Default::default(),
                power: Power::Running,
                replicas: 1,
            },
            ips: vec![],
            host: Some("w1".into()),
            deleting: false,
            phase: Phase::Running,
            message: None,
            phase_since: 1,
            reboots_asked: 0,
            reboots_done: 0,
            disk: hearth_types::compute::DiskHome {
                host: Some("w1".into()),
                generation: 1,
            },
            base: None,
            migration: None,
            moved_from: None,
            move_given_up: None,
            replica: None,
            adopt_replica: None,
        };
        let vm = Versioned {
            version: 1,
            value: vm,
        };
        state.compute.vms.insert("vm-1".into(), vm);
        let target = BackupTarget {
            name: "local".into(),
            location: "/srv/backups".into(),
            password_file: "/etc/hearth/restic.pass".into(),
            env_file: None,
        };
        state.backups.targets.insert(
            "local".into(),
            Versioned {
                version: 1,
                value: target,
            },
        );
        state
    }

    fn snapshot() -> BackupSnapshot {
        BackupSnapshot {
            id: "abc".into(),
            target: "local".into(),
            time_ms: 5,
            host: "w1".into(),
            generation: 1,
            size_bytes: 10,
            added_bytes: 10,
            by: None,
        }
    }

    fn ask_of(vm: &str, target: &str) -> BackupCommand {
        BackupCommand::Ask {
            vm: vm.into(),
            target: target.into(),
            by: Some("ana".into()),
        }
    }

    fn record_of(host: &str, run: u64, result: RunResult) -> BackupCommand {
        BackupCommand::Record {
            vm: "vm-1".into(),
            host: host.into(),
            run,
            result,
        }
    }

    #[test]
    fn one_backup_at_a_time_recorded_only_by_the_disks_home() {
        let mut state = state();
        assert!(matches!(
            apply(&mut state, &ask_of("vm-9", "local"), 2),
            Outcome::Invalid { .. }
        ));
        assert!(matches!(
            apply(&mut state, &ask_of("vm-1", "nowhere"), 2),
            Outcome::Invalid { .. }
        ));
        assert!(apply(&mut state, &ask_of("vm-1", "local"), 2).changed());
        assert!(matches!(
            apply(&mut state, &ask_of("vm-1", "local"), 3),
            Outcome::Refused { .. }
        ));
        let stored = RunResult::Stored {
            snapshot: snapshot(),
        };
        assert!(!apply(&mut state, &record_of("w2", 1, stored.clone()), 4).changed());
        assert!(!apply(&mut state, &record_of("w1", 7, stored.clone()), 4).changed());
        let failed = RunResult::Failed {
            error: "restic: repository is locked".into(),
            give_up: false,
        };
        assert!(apply(&mut state, &record_of("w1", 1, failed), 5).changed());
        let backups = &state.backups.vms["vm-1"];
        assert!(backups.pending() && backups.failures == 1);
        assert!(apply(&mut state, &record_of("w1", 1, stored.clone()), 6).changed());
        let backups = &state.backups.vms["vm-1"];
        assert!(!backups.pending() && backups.last_error.is_none());
        assert_eq!(backups.snapshots, vec![snapshot()]);
        // The same report again changes nothing.
        assert!(!apply(&mut state, &record_of("w1", 1, stored), 7).changed());
        assert!(apply(&mut state, &ask_of("vm-1", "local"), 8).changed());
    }

    #[test]
    fn a_run_given_up_ends_and_targets_are_checked() {
        let mut state = state();
        apply(&mut state, &ask_of("vm-1", "local"), 2);
        let gave_up = RunResult::Failed {
            error: "x".repeat(10_000),
            give_up: true,
        };
        assert!(apply(&mut state, &record_of("w1", 1, gave_up), 3).changed());
        let backups = &state.backups.vms["vm-1"];
        assert!(!backups.pending());
        assert!(backups.last_error.as_ref().unwrap().len() <= 500);
        let bad = BackupCommand::PutTarget {
            target: BackupTarget {
                name: "x".into(),
                location: "nowhere".into(),
                password_file: "/p".into(),
                env_file: None,
            },
            expect: Expect::Any,
        };
        assert!(matches!(
            apply(&mut state, &bad, 4),
            Outcome::Invalid { .. }
        ));
    }
}
