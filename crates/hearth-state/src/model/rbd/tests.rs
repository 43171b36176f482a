//! The RBD commands: clients recorded only by the disk's home, and a take-over allowed only
//! when the home went silent and every recorded client was fenced.

use hearth_types::compute::{Capacity, Compute, Host, Phase, Storage, Vm};
use hearth_types::desired::Versioned;

use super::*;

fn world() -> Compute {
    let mut compute = Compute::default();
    for name in ["w1", "w2"] {
        compute.hosts.insert(
            name.into(),
            Host {
                capacity: Capacity {
                    vcpus: 4,
                    memory_mib: 1024,
                    disk_gib: 10,
                    live_migration: true,
                    rbd: true,
                },
                lease: 5,
                ..Host::default()
            },
        );
    }
    let mut vm = Vm::example("vm-1", "web", "alice");
    vm.storage = Storage::Rbd { pool: "rbd".into() };
    vm.host = Some("w1".into());
    vm.disk.host = Some("w1".into());
    vm.phase = Phase::Running;
    compute.vms.insert(
        "vm-1".into(),
        Versioned {
            version: 3,
            value: vm,
        },
    );
    compute
}

fn clients(host: &str, list: &[&str]) -> ComputeCommand {
    ComputeCommand::RbdClients {
        vm: "vm-1".into(),
        host: host.into(),
        clients: list.iter().map(|c| (*c).to_owned()).collect(),
    }
}

fn take_over(lease: u64, fenced: &[&str]) -> ComputeCommand {
    ComputeCommand::TakeOver {
        vm: "vm-1".into(),
        from: "w1".into(),
        to: "w2".into(),
        lease,
        fenced: fenced.iter().map(|c| (*c).to_owned()).collect(),
        at_ms: 0,
    }
}

#[test]
fn only_the_disks_home_records_clients_and_the_newest_are_kept() {
    let mut compute = world();
    let before = compute.clone();
    assert!(matches!(
        apply(&mut compute, &clients("w2", &["127.0.0.1:0/1"]), 10),
        Outcome::Conflict { .. }
    ));
    assert_eq!(compute, before, "a refusal changes nothing");
    assert!(apply(&mut compute, &clients("w1", &["127.0.0.1:0/1"]), 11).changed());
    assert_eq!(
        apply(&mut compute, &clients("w1", &["127.0.0.1:0/1"]), 12),
        Outcome::Nothing
    );
    for n in 2..=12 {
        let address = format!("127.0.0.1:0/{n}");
        apply(&mut compute, &clients("w1", &[&address]), 12 + n);
    }
    let kept = &compute.vms["vm-1"].value.rbd_clients;
    assert_eq!(kept.len(), RBD_CLIENTS_KEPT);
    assert_eq!(kept.last().unwrap(), "127.0.0.1:0/12");
    assert!(!kept.contains(&"127.0.0.1:0/1".to_owned()));
}

#[test]
fn a_take_over_needs_a_silent_home_and_every_recorded_client_fenced() {
    let mut compute = world();
    apply(&mut compute, &clients("w1", &["a:0/1", "a:0/2"]), 10);
    let before = compute.clone();
    // The home renewed its lease since (6, not 5): refused.
    compute.hosts.get_mut("w1").unwrap().lease = 6;
    assert!(matches!(
        apply(&mut compute, &take_over(5, &["a:0/1", "a:0/2"]), 11),
        Outcome::Conflict { .. }
    ));
    compute.hosts.get_mut("w1").unwrap().lease = 5;
    // One recorded client not fenced: refused.
    assert!(matches!(
        apply(&mut compute, &take_over(5, &["a:0/1"]), 12),
        Outcome::Conflict { .. }
    ));
    assert_eq!(compute, before);
    assert!(
        apply(
            &mut compute,
            &take_over(5, &["a:0/1", "a:0/2", "b:0/3"]),
            13
        )
        .changed()
    );
    let vm = &compute.vms["vm-1"].value;
    assert_eq!(vm.host.as_deref(), Some("w2"));
    assert_eq!(vm.disk.host.as_deref(), Some("w2"));
    assert_eq!(vm.disk.generation, 1, "the same disk, not a new one");
    assert!(vm.rbd_clients.is_empty());
    assert_eq!(vm.phase, Phase::Placed);
    // Said twice: the second finds the VM moved.
    assert!(matches!(
        apply(&mut compute, &take_over(5, &["a:0/1", "a:0/2"]), 14),
        Outcome::Conflict { .. }
    ));
}

#[test]
fn a_local_disk_is_never_taken_over_nor_by_a_worker_without_ceph() {
    let mut compute = world();
    compute.vms.get_mut("vm-1").unwrap().value.storage = Storage::Local;
    assert!(matches!(
        apply(&mut compute, &take_over(5, &[]), 10),
        Outcome::Conflict { .. }
    ));
    let mut compute = world();
    compute.hosts.get_mut("w2").unwrap().capacity.rbd = false;
    assert!(matches!(
        apply(&mut compute, &take_over(5, &[]), 10),
        Outcome::Conflict { .. }
    ));
    // A fenced home needs no lapsed lease.
    let mut compute = world();
    compute.hosts.get_mut("w1").unwrap().fenced = true;
    compute.hosts.get_mut("w1").unwrap().lease = 9;
    assert!(apply(&mut compute, &take_over(5, &[]), 10).changed());
}

/// A home that went silent in the middle of a move: the take-over ends the move too, so the
/// VM is not stuck waiting for a source that never answers.
#[test]
fn a_take_over_ends_a_move_whose_source_went_silent() {
    let mut compute = world();
    let vm = &mut compute.vms.get_mut("vm-1").unwrap().value;
    vm.migration = Some(hearth_types::compute::Migration {
        to: "w2".into(),
        stage: hearth_types::compute::MigrationStage::Mirroring,
        since: 4,
        done_bytes: 0,
        total_bytes: 0,
        live: true,
        listen: None,
    });
    assert!(apply(&mut compute, &take_over(5, &[]), 10).changed());
    let vm = &compute.vms["vm-1"].value;
    assert_eq!(vm.migration, None);
    assert_eq!(vm.disk.host.as_deref(), Some("w2"));
}
