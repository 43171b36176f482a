//! On each worker: the backups due of the VMs whose disk is here, or whose replica in sync
//! is (`due`, pure), each run as a copy of the disk, or of that replica, while the guest
//! runs (`hearth_qemu::backup`), streamed into the
//! target's restic repository and recorded through Raft as a snapshot; a failed attempt is
//! recorded with why and tried again after a pause, [`ATTEMPTS`] times in all. The copy is
//! kept under `ID.last-backup/` in the VMs' directory (never a VM's name), so the next run
//! reads only what changed; the copies of VMs no longer here are removed every minute.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hearth_qemu::fake::VmDriver;
use hearth_state::model::backups::{BackupCommand, RunResult};
use hearth_state::model::{Command, Outcome};
use hearth_state::node::StateNode;
use hearth_types::backup::{BackupSnapshot, BackupTarget, Keep};
use hearth_types::compute::ReplicaState;
use hearth_types::desired::DesiredState;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::restic::Repo;

/// Every how many ticks of the loop the copies kept of VMs no longer here are removed.
const COPIES_SWEPT_EVERY: u64 = 30;
/// Attempts at one run before it is given up.
pub const ATTEMPTS: u32 = 3;
/// The pause after a failed attempt, times the failures so far.
const PAUSE: Duration = Duration::from_secs(10);
/// How long an attempt made waits for its record before it may be made again.
const RECORD_WAIT: Duration = Duration::from_secs(600);
/// The most backups and restores a worker runs at once (each reads or writes a whole disk).
const PARALLEL: usize = 2;

/// One run due here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub vm: String,
    pub run: u64,
    pub target: BackupTarget,
    pub generation: u64,
    pub failures: u32,
    pub by: Option<String>,
    /// The VM's schedule's retention and time zone, when the run goes to its target.
    pub retention: Option<(Keep, String)>,
    /// Copied from the replica kept here (its `since`), not from the VM's disk.
    pub replica: Option<u64>,
}

/// The runs due on host `me`: backups asked for and not done of VMs whose disk is here,
/// not moving (the disk's home changes at the end of a move) and not being deleted. A VM
/// whose replica is in sync is copied from that replica, by its host: its QEMU mirrors
/// every write there, and QEMU lets no backup read a disk its mirror holds.
pub fn due(me: &str, desired: &DesiredState) -> Vec<Due> {
    let backups = &desired.backups;
    backups
        .vms
        .iter()
        .filter(|(_, b)| b.pending())
        .filter_map(|(id, b)| {
            let vm = &desired.compute.vms.get(id)?.value;
            let replica = vm
                .replica
                .as_ref()
                .filter(|r| r.state == ReplicaState::InSync);
            let copier = match replica {
                Some(replica) => Some(replica.host.as_str()),
                None => vm.disk.host.as_deref(),
            };
            let here = copier == Some(me);
            let steady = !vm.deleting && vm.migration.is_none() && !b.restoring();
            let target = backups.targets.get(&b.target)?;
            let retention = hearth_types::backup::policy_of(desired, id)
                .filter(|p| p.target == b.target && !p.keep.keeps_all())
                .map(|p| (p.keep, p.time_zone.clone()));
            (here && steady).then(|| Due {
                vm: id.clone(),
                run: b.asked,
                target: target.value.clone(),
                generation: vm.disk.generation,
                failures: b.failures,
                by: b.asked_by.clone(),
                retention,
                replica: replica.map(|r| r.since),
            })
        })
        .collect()
}

/// What the runner needs of its host.
#[derive(Clone)]
pub struct Runner {
    pub name: String,
    pub driver: Arc<VmDriver>,
    pub state: StateNode,
    pub metrics: Arc<crate::ComputeMetrics>,
}

/// The repository of `target`, with its keys read from its env file; restic's cache is
/// kept under the VMs' directory.
pub fn repo_of(target: &BackupTarget, root: &Path) -> Result<Repo, String> {
    let env = match &target.env_file {
        None => Vec::new(),
        Some(file) => {
            let text =
                std::fs::read_to_string(file).map_err(|e| format!("env_file {file}: {e}"))?;
            crate::restic::env_lines(&text).map_err(|e| format!("env_file {file}: {e}"))?
        }
    };
    Ok(Repo {
        location: target.location.clone(),
        password_file: PathBuf::from(&target.password_file),
        cache_dir: root.join(".restic-cache"),
        env,
    })
}

/// Runs until `shutdown`: every two seconds, starts the runs due here that are not running
/// and not pausing after a failure.
pub async fn run(runner: Runner, shutdown: CancellationToken) {
    let running = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    // Per attempt (VM, run, failures so far): when it was first due, and when it started.
    let mut resume: BTreeMap<(String, u64, u32), (Instant, Option<Instant>)> = BTreeMap::new();
    let mut ticks = tokio::time::interval(Duration::from_secs(2));
    for tick in 0u64.. {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let desired = runner.state.reader().current();
        if tick % COPIES_SWEPT_EVERY == COPIES_SWEPT_EVERY - 1 {
            // Under the lock: no run starts on a copy while it is being removed.
            let busy = running.lock().await;
            let (root, here) = (runner.driver.root().to_owned(), runner.name.clone());
            let (desired, names) = (desired.clone(), busy.clone());
            let swept = tokio::task::spawn_blocking(move || {
                crate::leftovers::remove_stale_copies(&root, &desired, &here, &names)
            });
            let _ = swept.await;
            drop(busy);
        }
        let now = Instant::now();
        for due in due(&runner.name, &desired) {
            let key = (due.vm.clone(), due.run, due.failures);
            let pause = PAUSE * due.failures;
            let (first_seen, started) = resume.entry(key).or_insert((now, None));
            // An attempt already made is not made again until its record shows (a local
            // copy of the state may lag behind it), unless that never came.
            let made = started.is_some_and(|at| now.duration_since(at) < RECORD_WAIT);
            if made || now.duration_since(*first_seen) < pause || !start(&running, &due.vm).await {
                continue;
            }
            *started = Some(now);
            let (runner, running) = (runner.clone(), running.clone());
            tokio::spawn(async move {
                attempt(&runner, &due).await;
                running.lock().await.remove(&due.vm);
            });
        }
        for due in crate::restores::due(&runner.name, &desired) {
            if !start(&running, &due.vm).await {
                continue;
            }
            let (runner, running) = (runner.clone(), running.clone());
            tokio::spawn(async move {
                crate::restores::step(&runner, &due).await;
                running.lock().await.remove(&due.vm);
            });
        }
        resume.retain(|(vm, run, _), _| {
            desired
                .backups
                .vms
                .get(vm)
                .is_some_and(|b| b.pending() && b.asked == *run)
        });
    }
}

/// Marks VM `vm`'s backup or restore as running, unless it is or [`PARALLEL`] others are.
async fn start(running: &Mutex<BTreeSet<String>>, vm: &str) -> bool {
    let mut running = running.lock().await;
    running.len() < PARALLEL && running.insert(vm.to_owned())
}

/// Applies the schedule's retention after a run stored `id`: the snapshots forgotten
/// (none if it failed, which the next run tries again).
async fn retain(runner: &Runner, due: &Due) -> Vec<String> {
    let (Some((keep, zone)), VmDriver::Qemu(driver)) = (&due.retention, &*runner.driver) else {
        return Vec::new();
    };
    let forgot = match repo_of(&due.target, driver.root()) {
        Ok(repo) => repo.forget(&due.vm, keep, zone).await,
        Err(error) => Err(error),
    };
    match forgot {
        Ok(forgot) => {
            tracing::info!(vm = %due.vm, forgot = forgot.len(), "backup retention applied");
            forgot
        }
        Err(error) => {
            tracing::warn!(vm = %due.vm, %error, "backup retention failed; the next run tries again");
            Vec::new()
        }
    }
}

/// One attempt at run `due`, recorded whatever its end.
async fn attempt(runner: &Runner, due: &Due) {
    let time_ms = crate::unix_ms();
    let result = match store(runner, due).await {
        Ok((id, size_bytes, added_bytes, read_bytes)) => {
            runner
                .metrics
                .backups_stored
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(vm = %due.vm, snapshot = %id, size_bytes, read_bytes, added_bytes, target = %due.target.name, "backup stored");
            RunResult::Stored {
                snapshot: BackupSnapshot {
                    id,
                    target: due.target.name.clone(),
                    time_ms,
                    host: runner.name.clone(),
                    generation: due.generation,
                    size_bytes,
                    added_bytes,
                    read_bytes,
                    by: due.by.clone(),
                },
                forgot: retain(runner, due).await,
            }
        }
        Err(error) => {
            runner
                .metrics
                .backup_failures
                .fetch_add(1, Ordering::Relaxed);
            let give_up = due.failures + 1 >= ATTEMPTS;
            tracing::warn!(vm = %due.vm, %error, give_up, "backup failed");
            RunResult::Failed { error, give_up }
        }
    };
    let command = Command::Backup {
        command: BackupCommand::Record {
            vm: due.vm.clone(),
            host: runner.name.clone(),
            run: due.run,
            result,
        },
    };
    for _ in 0..30 {
        match runner.state.submit(command.clone()).await {
            Ok(written) if matches!(written.outcome, Outcome::Applied { .. }) => return,
            Ok(written) => {
                tracing::warn!(vm = %due.vm, outcome = ?written.outcome, "a backup's record was refused");
                return;
            }
            Err(error) => tracing::debug!(%error, "recording a backup"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The copy, stored: (snapshot id, disk bytes, bytes new to the repository, bytes read). The copy is
/// the one kept beside the VM as of its last backup (`ID.last-backup/`), brought up to
/// date: after the first run only the blocks written since the last are read.
async fn store(runner: &Runner, due: &Due) -> Result<(String, u64, u64, u64), String> {
    let VmDriver::Qemu(driver) = &*runner.driver else {
        return Err("backups need QEMU; this worker runs the stand-in driver".into());
    };
    let root = driver.root();
    let repo = repo_of(&due.target, root)?;
    let dir = hearth_qemu::last_backup::dir(root, &due.vm).map_err(|e| e.to_string())?;
    repo.ensure().await?;
    let held = hold(&dir)?;
    let copied = match due.replica {
        Some(since) => copy_replica(runner, driver, due, since, &dir).await?,
        None => driver
            .copy_disk(&due.vm, &dir)
            .await
            .map_err(|e| format!("copying the disk: {e}"))?,
    };
    let since = parent(runner, due, &repo).await;
    let summary = repo
        .backup(&due.vm, &runner.name, (&dir, &held), since.as_deref())
        .await?;
    tracing::info!(
        vm = %due.vm,
        incremental = copied.incremental,
        read_bytes = copied.read,
        parts_read = summary.files_changed,
        parts_skipped = summary.files_unmodified,
        "disk copied and stored"
    );
    Ok((
        summary.snapshot_id,
        copied.size,
        summary.data_added,
        copied.read,
    ))
}

/// Holds the copy directory `dir` (made if missing) for a run, or says why not: a restic an
/// earlier agent started still reads it, and rewriting it now would store a torn disk.
fn hold(dir: &Path) -> Result<hearth_qemu::last_backup::Hold, String> {
    let failed = |e: std::io::Error| format!("holding the copy {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(failed)?;
    hearth_qemu::last_backup::Hold::try_take(dir)
        .map_err(failed)?
        .ok_or_else(|| {
            format!(
                "another process still reads the copy {} (a restic started before this agent did); the run is tried again once it is done",
                dir.display()
            )
        })
}

/// The snapshot restic compares the copy with: the newest this host stored of `due`'s VM
/// into its target that the cluster recorded, if the repository still has it. A snapshot
/// restic made that was never recorded (a run cut short, another run's restic left over
/// after a restart) is never one.
async fn parent(runner: &Runner, due: &Due, repo: &Repo) -> Option<String> {
    let desired = runner.state.reader().current();
    let recorded = (desired.backups.vms.get(&due.vm)?.snapshots.iter().rev())
        .find(|s| s.host == runner.name && s.target == due.target.name)?
        .id
        .clone();
    let listed = repo.list(&due.vm).await.ok()?;
    (listed.iter())
        .any(|s| s.short_id == recorded || s.id == recorded)
        .then_some(recorded)
}

/// Brings the copy in `dir` up to date with the replica of `due`'s VM kept here, and stores
/// it only if that replica (`since`, of the run's disk generation) was still in sync once
/// the copy was made, by a linearizable read: a mirror that broke before the copy began
/// would leave older data under a later time, so such a copy is refused and the run tried
/// again (from the VM's disk, once its replica is no longer in sync).
async fn copy_replica(
    runner: &Runner,
    driver: &hearth_qemu::driver::Driver,
    due: &Due,
    since: u64,
    dir: &Path,
) -> Result<hearth_qemu::last_backup::Copied, String> {
    let (copied, written) = driver
        .copy_replica(&due.vm, dir)
        .await
        .map_err(|e| format!("copying its replica: {e}"))?;
    if written != (since, due.generation) {
        return Err(format!(
            "the replica kept here is of replica {} and disk generation {}, not {since} and {}",
            written.0, written.1, due.generation
        ));
    }
    runner
        .state
        .linearizable_index()
        .await
        .map_err(|e| format!("checking its replica after the copy: {e}"))?;
    let desired = runner.state.reader().current();
    let still = desired
        .compute
        .vms
        .get(&due.vm)
        .and_then(|vm| vm.value.replica.as_ref())
        .is_some_and(|r| r.since == since && r.state == ReplicaState::InSync);
    if still {
        Ok(copied)
    } else {
        Err("its replica fell out of sync during the copy".into())
    }
}

#[cfg(test)]
mod tests {
    use hearth_types::backup::VmBackups;
    use hearth_types::compute::{Replica, Vm};
    use hearth_types::desired::Versioned;

    use super::*;

    /// VM `vm-1`, its disk on `w1`, a backup asked for into target `t`, and its replica on
    /// `w2` in `state` (no replica when `None`).
    fn desired(state: Option<ReplicaState>) -> DesiredState {
        let mut desired = DesiredState::default();
        let mut vm = Vm::example("vm-1", "vm-1", "alice");
        vm.disk.host = Some("w1".into());
        vm.disk.generation = 3;
        vm.replica = state.map(|state| Replica {
            host: "w2".into(),
            since: 42,
            state,
            nbd: None,
            done_bytes: 0,
            total_bytes: 0,
            message: None,
        });
        let versioned = |value| Versioned { version: 1, value };
        desired.compute.vms.insert("vm-1".into(), versioned(vm));
        desired.backups.targets.insert(
            "t".into(),
            Versioned {
                version: 1,
                value: BackupTarget {
                    name: "t".into(),
                    location: "/srv/backups".into(),
                    password_file: "/etc/hearth/restic".into(),
                    env_file: None,
                },
            },
        );
        desired.backups.vms.insert(
            "vm-1".into(),
            VmBackups {
                asked: 1,
                target: "t".into(),
                ..VmBackups::default()
            },
        );
        desired
    }

    fn hosts(desired: &DesiredState) -> Vec<(&'static str, Option<u64>)> {
        ["w1", "w2", "w3"]
            .into_iter()
            .flat_map(|me| due(me, desired).into_iter().map(move |d| (me, d.replica)))
            .collect()
    }

    #[test]
    fn the_disks_home_copies_unless_a_replica_in_sync_holds_every_write() {
        assert_eq!(hosts(&desired(None)), [("w1", None)]);
        for behind in [
            ReplicaState::Preparing,
            ReplicaState::Syncing,
            ReplicaState::Degraded,
        ] {
            assert_eq!(hosts(&desired(Some(behind))), [("w1", None)], "{behind:?}");
        }
        // In sync: the home's QEMU mirrors the disk, so the replica's host copies its copy.
        let in_sync = desired(Some(ReplicaState::InSync));
        assert_eq!(hosts(&in_sync), [("w2", Some(42))]);
        assert_eq!(due("w2", &in_sync)[0].generation, 3);
    }

    #[test]
    fn nothing_is_due_of_a_vm_being_deleted_not_even_from_its_replica() {
        let mut moving = desired(Some(ReplicaState::InSync));
        let vm = &mut moving.compute.vms.get_mut("vm-1").unwrap().value;
        vm.deleting = true;
        assert_eq!(hosts(&moving), []);
    }
}
