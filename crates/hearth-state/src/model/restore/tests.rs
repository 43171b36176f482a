//! Unit tests of `hearth restore`'s apply and of a recovered disk's record.

use super::*;
use crate::model::backups::BackupCommand;
use crate::model::{Command, ComputeCommand, apply as apply_command};
use hearth_types::account::{Account, AccountRole};
use hearth_types::backup::{BackupTarget, StateFile};
use hearth_types::compute::Host;
use hearth_types::desired::Versioned;

fn snapshot(id: &str, time_ms: u64, generation: u64) -> BackupSnapshot {
    BackupSnapshot {
        id: id.into(),
        target: "local".into(),
        time_ms,
        host: "old-w1".into(),
        generation,
        size_bytes: 10,
        added_bytes: 10,
        read_bytes: 10,
        by: None,
    }
}

/// The old cluster: three VMs on old-w1 (one backed up twice, one never, one being
/// deleted), one that never had a disk, an account and a target; last index 900.
fn old_state() -> DesiredState {
    let mut state = DesiredState::default();
    let mut add = |id: &str, name: &str, home: Option<&str>| {
        let mut vm = Vm::example(id, name, "ana");
        vm.host = Some("old-w1".into());
        vm.phase = Phase::Running;
        vm.disk.host = home.map(str::to_owned);
        state.compute.vms.insert(
            id.into(),
            Versioned {
                version: 800,
                value: vm,
            },
        );
    };
    add("vm-10", "web", Some("old-w1"));
    add("vm-11", "db", Some("old-w1"));
    add("vm-12", "gone", Some("old-w1"));
    add("vm-13", "new", None);
    state.compute.vms.get_mut("vm-12").unwrap().value.deleting = true;
    state.compute.vms.get_mut("vm-13").unwrap().value.phase = Phase::Placed;
    let web = state.backups.vms.entry("vm-10".into()).or_default();
    web.snapshots = vec![snapshot("s1", 100, 1), snapshot("s2", 200, 1)];
    web.asked = 3;
    web.done = 2;
    state.backups.targets.insert(
        "local".into(),
        Versioned {
            version: 5,
            value: BackupTarget {
                name: "local".into(),
                location: "/srv/backups".into(),
                password_file: "/etc/hearth/restic.pass".into(),
                env_file: None,
            },
        },
    );
    let account = Account::example("ana", AccountRole::Member);
    state.accounts.insert(
        "ana".into(),
        Versioned {
            version: 3,
            value: account,
        },
    );
    state
}

fn restore_of(state: DesiredState, newer: &[(&str, BackupSnapshot)]) -> Command {
    Command::RestoreState {
        restore: Box::new(StateRestore {
            snapshot: "st1".into(),
            file: StateFile {
                index: 900,
                taken_ms: 250,
                state,
            },
            snapshots: newer
                .iter()
                .map(|(vm, s)| ((*vm).to_owned(), s.clone()))
                .collect(),
            check: false,
        }),
    }
}

/// A new cluster: one worker host, new-w1, and nothing else.
fn new_cluster() -> DesiredState {
    let mut state = DesiredState::default();
    state.compute.hosts.insert("new-w1".into(), Host::default());
    state
}

#[test]
fn a_new_cluster_takes_the_state_and_each_vm_waits_for_its_newest_backup() {
    let mut state = new_cluster();
    let newer = [("vm-10", snapshot("s3", 300, 0))];
    let outcome = apply_command(&mut state, &restore_of(old_state(), &newer), 7);
    assert!(outcome.changed(), "{outcome:?}");
    assert!(state.accounts.contains_key("ana"));
    assert!(
        state.compute.hosts.contains_key("new-w1"),
        "this cluster's hosts stay"
    );
    assert!(!state.compute.hosts.contains_key("old-w1"));
    // Counted on from the old cluster's last index.
    assert_eq!(state.index_base, 901);

    // Backed up: recovered from the newest (the repository's, newer than the state's).
    let web = &state.compute.vms["vm-10"].value;
    assert_eq!((web.host.as_deref(), web.phase), (None, Phase::Pending));
    assert_eq!(
        (web.disk.host.as_deref(), web.disk.generation),
        (None, 2),
        "a new disk of the next generation, no home yet"
    );
    let backups = &state.backups.vms["vm-10"];
    assert_eq!(
        backups.recover.as_ref().map(|r| r.snapshot.id.as_str()),
        Some("s3")
    );
    assert!(!backups.pending(), "the run under way is dropped");
    let listed: Vec<&str> = backups.snapshots.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        listed,
        ["s1", "s2", "s3"],
        "the repository's snapshot is listed"
    );

    // Never backed up: lost where its disk was, never given a new one.
    let db = &state.compute.vms["vm-11"].value;
    assert_eq!(db.phase, Phase::Lost);
    assert_eq!(db.disk.host.as_deref(), Some("old-w1"));
    assert_eq!(db.host.as_deref(), Some("old-w1"));
    assert!(db.message.as_deref().unwrap().contains("no backup"));
    assert!(state.backups.vms["vm-11"].recover.is_none());

    // Being deleted: gone. Never had a disk: placed afresh.
    assert!(!state.compute.vms.contains_key("vm-12"));
    let new = &state.compute.vms["vm-13"].value;
    assert_eq!((new.host.as_deref(), new.phase), (None, Phase::Pending));
    assert!(
        state
            .backups
            .vms
            .get("vm-13")
            .is_none_or(|b| b.recover.is_none())
    );
}

#[test]
fn a_cluster_holding_anything_refuses_a_restore_and_keeps_what_it_has() {
    let mut state = new_cluster();
    state.accounts.insert(
        "ann".into(),
        Versioned {
            version: 2,
            value: Account::example("ann", AccountRole::Admin),
        },
    );
    let before = state.clone();
    let Outcome::Refused { message } = apply_command(&mut state, &restore_of(old_state(), &[]), 7)
    else {
        panic!("a cluster with an account took a restore");
    };
    assert!(message.contains("1 account(s)"), "{message}");
    assert_eq!(state, before);
}

#[test]
fn a_snapshot_of_a_disk_given_up_is_not_recovered_from() {
    let mut old = old_state();
    // The admin recreated web on an empty disk after its backups: they are of generation 1.
    old.compute
        .vms
        .get_mut("vm-10")
        .unwrap()
        .value
        .disk
        .generation = 2;
    let mut state = new_cluster();
    apply_command(&mut state, &restore_of(old, &[]), 7);
    let web = &state.compute.vms["vm-10"].value;
    assert_eq!(web.phase, Phase::Lost, "{web:?}");
    assert!(state.backups.vms["vm-10"].recover.is_none());
}

#[test]
fn the_recovered_disk_is_recorded_once_by_its_placed_host_and_no_other_is_claimed() {
    let mut state = new_cluster();
    apply_command(&mut state, &restore_of(old_state(), &[]), 7);
    let place = Command::Compute {
        command: ComputeCommand::Place {
            vm: "vm-10".into(),
            host: Some("new-w1".into()),
            from: None,
        },
    };
    assert!(apply_command(&mut state, &place, 8).changed());
    // No disk but the recovered one: a blank one is never claimed.
    let claim = Command::Compute {
        command: ComputeCommand::ClaimDisk {
            vm: "vm-10".into(),
            host: "new-w1".into(),
            generation: 2,
        },
    };
    let before = state.clone();
    assert!(matches!(
        apply_command(&mut state, &claim, 9),
        Outcome::Refused { .. }
    ));
    assert_eq!(state, before);
    let recovered = |host: &str, generation: u64, snapshot: &str| Command::Backup {
        command: BackupCommand::Recovered {
            vm: "vm-10".into(),
            host: host.into(),
            generation,
            snapshot: snapshot.into(),
        },
    };
    for wrong in [
        recovered("other", 2, "s2"),
        recovered("new-w1", 1, "s2"),
        recovered("new-w1", 2, "s1"),
    ] {
        assert!(
            matches!(
                apply_command(&mut state, &wrong, 10),
                Outcome::Conflict { .. }
            ),
            "{wrong:?}"
        );
        assert_eq!(state, before);
    }
    assert!(apply_command(&mut state, &recovered("new-w1", 2, "s2"), 11).changed());
    let web = &state.compute.vms["vm-10"].value;
    assert_eq!(web.disk.host.as_deref(), Some("new-w1"));
    let backups = &state.backups.vms["vm-10"];
    assert!(backups.recover.is_none());
    assert_eq!(
        backups
            .restored
            .as_ref()
            .map(|r| (r.snapshot.as_str(), r.generation)),
        Some(("s2", 2))
    );
    // Sent again after a lost answer: nothing more.
    assert_eq!(
        apply_command(&mut state, &recovered("new-w1", 2, "s2"), 12),
        Outcome::Nothing
    );
}

#[test]
fn an_admin_who_gives_the_disk_up_ends_its_recovery() {
    let mut state = new_cluster();
    apply_command(&mut state, &restore_of(old_state(), &[]), 7);
    let recreate = Command::Compute {
        command: ComputeCommand::Recreate {
            vm: "vm-10".into(),
            expect: crate::model::Expect::Any,
        },
    };
    assert!(apply_command(&mut state, &recreate, 8).changed());
    assert!(state.backups.vms["vm-10"].recover.is_none());
    assert_eq!(state.compute.vms["vm-10"].value.disk.generation, 3);
}

#[test]
fn the_highest_index_comes_from_versions_ids_and_phases() {
    let mut state = old_state();
    assert_eq!(highest_index(&state), 800);
    state
        .compute
        .vms
        .get_mut("vm-10")
        .unwrap()
        .value
        .phase_since = 850;
    assert_eq!(highest_index(&state), 850);
    let mut vm = Vm::example("vm-870", "late", "ana");
    vm.phase_since = 1;
    state.compute.vms.insert(
        "vm-870".into(),
        Versioned {
            version: 2,
            value: vm,
        },
    );
    assert_eq!(highest_index(&state), 870);
}
