//! At a worker's start, before any backup or restore runs: the work directories beside the
//! VMs' that an interrupted backup or restore left behind. `ID.backup/` only ever holds
//! copies (a disk copied out for restic, a snapshot dumped from it), so it is removed.
//! `ID.restored/` holds a disk made from a backup; it is kept while the VM's restore or
//! recovery is under way (it may be the disk the cluster recorded), and otherwise archived
//! beside the other stale copies (`vms-archive/`), never deleted. `ID.last-backup/` (the copy
//! kept as of a VM's last backup, `hearth_qemu::last_backup`) is removed once the VM is
//! neither here nor its replica kept here: at the start, and from time to time while the
//! worker runs (`stale_copies`).

use std::path::Path;
use std::sync::Arc;

use hearth_types::desired::DesiredState;

/// What to do with one leftover directory of the VM root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sweep {
    /// `NAME` (an `ID.backup`, or an `ID.last-backup` of a VM no longer here): copies
    /// only, removed.
    Remove(String),
    /// `NAME` (an `ID.restored`) that nothing needs any more, archived.
    Archive(String),
}

/// The sweep of the VM root's entries `names`, given the cluster's state. Entries that are
/// not a leftover, and restored disks a restore or recovery still needs, are left alone.
pub fn plan(names: &[String], desired: &DesiredState, here: &str) -> Vec<Sweep> {
    let stale = stale_copies(names, desired, here, &Default::default());
    names
        .iter()
        .filter_map(|name| {
            if stale.contains(name) {
                return Some(Sweep::Remove(name.clone()));
            }
            if let Some(vm) = name.strip_suffix(".backup") {
                return valid(vm).then(|| Sweep::Remove(name.clone()));
            }
            let vm = name.strip_suffix(".restored")?;
            let needed = desired
                .backups
                .vms
                .get(vm)
                .is_some_and(|b| b.restore.is_some() || b.recover.is_some());
            (valid(vm) && !needed).then(|| Sweep::Archive(name.clone()))
        })
        .collect()
}

/// The entries of `names` that are the copy kept as of the last backup (`ID.last-backup`)
/// of a VM neither placed here (`here`) nor with its disk or replica here, and not in
/// `busy` (a backup of it running).
pub fn stale_copies(
    names: &[String],
    desired: &DesiredState,
    here: &str,
    busy: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    let suffix = hearth_qemu::last_backup::SUFFIX;
    (names.iter())
        .filter(|name| {
            let Some(vm) = name.strip_suffix(suffix).filter(|vm| valid(vm)) else {
                return false;
            };
            let kept = desired.compute.vms.get(vm).is_some_and(|v| {
                let v = &v.value;
                v.host.as_deref() == Some(here)
                    || v.disk.host.as_deref() == Some(here)
                    || v.replica.as_ref().is_some_and(|r| r.host == here)
            });
            !kept && !busy.contains(vm)
        })
        .cloned()
        .collect()
}

/// Removes the copies [`stale_copies`] names under the VM root `root`; returns how many.
pub fn remove_stale_copies(
    root: &Path,
    desired: &DesiredState,
    here: &str,
    busy: &std::collections::BTreeSet<String>,
) -> usize {
    let names = dir_names(root);
    let mut removed = 0;
    for name in stale_copies(&names, desired, here, busy) {
        match remove_unheld(&root.join(&name)) {
            Ok(true) => {
                tracing::info!(dir = %name, "removed the copy kept of a VM no longer here");
                removed += 1;
            }
            Ok(false) => tracing::info!(dir = %name, "a kept copy still being read; removed later"),
            Err(error) => {
                tracing::warn!(dir = %name, %error, "removing a kept copy; tried again later")
            }
        }
    }
    removed
}

/// Removes the directory `dir` unless another process holds it (`last_backup::Hold`: a
/// restic an earlier agent started, still reading the copy): whether it did.
fn remove_unheld(dir: &Path) -> std::io::Result<bool> {
    let Some(_held) = hearth_qemu::last_backup::Hold::try_take(dir)? else {
        return Ok(false);
    };
    std::fs::remove_dir_all(dir).map(|()| true)
}

/// The directories in `root` (none if it cannot be read).
fn dir_names(root: &Path) -> Vec<String> {
    match std::fs::read_dir(root) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(error) => {
            tracing::debug!(root = %root.display(), %error, "no VM root to sweep");
            Vec::new()
        }
    }
}

fn valid(vm: &str) -> bool {
    hearth_qemu::disk::valid_id(vm)
}

/// [`sweep`] on a thread of the blocking pool (removing a multi-GiB copy takes a moment),
/// awaited.
pub async fn sweep_aside(root: &Path, desired: Arc<DesiredState>, here: &str) {
    let (root, here) = (root.to_owned(), here.to_owned());
    let swept = tokio::task::spawn_blocking(move || sweep(&root, &desired, &here)).await;
    if let Err(error) = swept {
        tracing::warn!(%error, "sweeping leftovers failed; the next start tries again");
    }
}

/// Applies [`plan`] to the VM root `root`; returns how many leftovers were removed or
/// archived. A failure is logged and left for the next start.
pub fn sweep(root: &Path, desired: &DesiredState, here: &str) -> usize {
    let names = dir_names(root);
    let mut swept = 0;
    for step in plan(&names, desired, here) {
        let done = match &step {
            Sweep::Remove(name) => match remove_unheld(&root.join(name)) {
                Ok(true) => {
                    tracing::info!(dir = %name, "removed the copies an interrupted backup or restore left");
                    Ok(())
                }
                Ok(false) => Err("a restic an earlier agent started still reads it".into()),
                Err(error) => Err(error.to_string()),
            },
            Sweep::Archive(name) => hearth_qemu::disk::archive_dir(root, &root.join(name), name)
                .map(|to| tracing::info!(dir = %name, to = %to.display(), "archived a restored disk no restore needs any more"))
                .map_err(|e| e.to_string()),
        };
        match done {
            Ok(()) => swept += 1,
            Err(error) => {
                tracing::warn!(?step, %error, "sweeping a leftover failed; the next start tries again")
            }
        }
    }
    swept
}

#[cfg(test)]
mod tests {
    use hearth_types::backup::{BackupSnapshot, Recover, RestoreRun, RestoreStage, VmBackups};
    use hearth_types::compute::Power;

    use super::*;

    fn snapshot() -> BackupSnapshot {
        BackupSnapshot {
            id: "abc".into(),
            target: "t".into(),
            time_ms: 1,
            host: "w1".into(),
            generation: 1,
            size_bytes: 1,
            added_bytes: 1,
            read_bytes: 1,
            by: None,
        }
    }

    /// VM `restoring` has a restore under way, `recovering` a recovery, `idle` neither.
    fn desired() -> DesiredState {
        let mut desired = DesiredState::default();
        let vms = &mut desired.backups.vms;
        vms.insert(
            "restoring".into(),
            VmBackups {
                restore: Some(RestoreRun {
                    snapshot: snapshot(),
                    stage: RestoreStage::Swapped,
                    power_after: Power::Running,
                    by: None,
                    failures: 0,
                    last_error: None,
                }),
                ..VmBackups::default()
            },
        );
        vms.insert(
            "recovering".into(),
            VmBackups {
                recover: Some(Recover::own(snapshot())),
                ..VmBackups::default()
            },
        );
        vms.insert("idle".into(), VmBackups::default());
        desired
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn copies_go_restored_disks_stay_while_needed_and_vms_are_never_touched() {
        let entries = names(&[
            "idle",
            "restoring",
            "idle.backup",
            "restoring.backup",
            "restoring.restored",
            "recovering.restored",
            "idle.restored",
            "deleted.restored",
            "bad.id.backup",
            "lost+found",
        ]);
        let plan = plan(&entries, &desired(), "w1");
        assert_eq!(
            plan,
            vec![
                Sweep::Remove("idle.backup".into()),
                Sweep::Remove("restoring.backup".into()),
                Sweep::Archive("idle.restored".into()),
                Sweep::Archive("deleted.restored".into()),
            ]
        );
    }

    #[test]
    fn a_kept_copy_goes_once_its_vm_is_neither_here_nor_its_replica() {
        use hearth_types::compute::{Replica, ReplicaState, Vm};
        use hearth_types::desired::Versioned;
        let mut desired = desired();
        let mut vm = |id: &str, disk: &str, replica: Option<&str>| {
            let mut vm = Vm::example(id, id, "alice");
            vm.disk.host = Some(disk.into());
            vm.replica = replica.map(|host| Replica {
                host: host.into(),
                since: 1,
                state: ReplicaState::InSync,
                nbd: None,
                done_bytes: 0,
                total_bytes: 0,
                message: None,
            });
            let value = Versioned {
                version: 1,
                value: vm,
            };
            desired.compute.vms.insert(id.into(), value);
        };
        vm("mine", "w1", None);
        vm("kept-for", "w2", Some("w1"));
        vm("moved", "w2", Some("w3"));
        let entries = names(&[
            "mine.last-backup",
            "kept-for.last-backup",
            "moved.last-backup",
            "deleted.last-backup",
            "busy.last-backup",
            "mine",
        ]);
        let busy = ["busy".to_owned()].into();
        assert_eq!(
            stale_copies(&entries, &desired, "w1", &busy),
            ["moved.last-backup", "deleted.last-backup"]
        );
        assert_eq!(
            stale_copies(&entries, &desired, "w3", &busy),
            [
                "mine.last-backup",
                "kept-for.last-backup",
                "deleted.last-backup"
            ]
        );
    }

    #[test]
    fn a_copy_a_restic_still_reads_is_removed_only_once_it_is_done() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("vms");
        let copy = root.join("gone.last-backup");
        std::fs::create_dir_all(&copy).unwrap();
        std::fs::write(copy.join("part-00000.raw"), "data").unwrap();
        // A restic an earlier agent started, still reading the copy.
        let hold = hearth_qemu::last_backup::Hold::try_take(&copy)
            .unwrap()
            .unwrap();
        let none = Default::default();
        assert_eq!(remove_stale_copies(&root, &desired(), "w1", &none), 0);
        // Nor by the sweep at a worker's start (the agent restarted while it ran).
        assert_eq!(sweep(&root, &desired(), "w1"), 0);
        assert!(copy.join("part-00000.raw").is_file());
        drop(hold);
        assert_eq!(remove_stale_copies(&root, &desired(), "w1", &none), 1);
        assert!(!copy.exists());
    }

    #[test]
    fn the_sweep_removes_copies_and_archives_restored_disks_with_their_contents() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("vms");
        for dir in ["idle", "idle.backup", "idle.restored", "restoring.restored"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join("disk"), dir).unwrap();
        }
        assert_eq!(sweep(&root, &desired(), "w1"), 2);
        let mut left: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["idle", "restoring.restored"]);
        let archived: Vec<_> = std::fs::read_dir(hearth_qemu::disk::archive_root(&root))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(archived.len(), 1);
        assert_eq!(
            std::fs::read_to_string(archived[0].join("disk")).unwrap(),
            "idle.restored"
        );
        // Nothing left to do the second time.
        assert_eq!(sweep(&root, &desired(), "w1"), 0);
    }
}
