//! On each worker: the backups due of the VMs whose disk is here (`due`, pure), each run as
//! a copy of the disk while the guest runs (`hearth_qemu::backup`), streamed into the
//! target's restic repository and recorded through Raft as a snapshot; a failed attempt is
//! recorded with why and tried again after a pause, [`ATTEMPTS`] times in all. The copy is
//! made under `ID.backup/` in the VMs' directory (never a VM's name) and removed after.

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
use hearth_types::desired::DesiredState;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::restic::Repo;

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
}

/// The runs due on host `me`: backups asked for and not done of VMs whose disk is here,
/// not moving (the disk's home changes at the end of a move) and not being deleted.
pub fn due(me: &str, desired: &DesiredState) -> Vec<Due> {
    let backups = &desired.backups;
    backups
        .vms
        .iter()
        .filter(|(_, b)| b.pending())
        .filter_map(|(id, b)| {
            let vm = &desired.compute.vms.get(id)?.value;
            let here = vm.disk.host.as_deref() == Some(me);
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
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let desired = runner.state.reader().current();
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
        Ok((id, size_bytes, added_bytes)) => {
            runner
                .metrics
                .backups_stored
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(vm = %due.vm, snapshot = %id, size_bytes, added_bytes, target = %due.target.name, "backup stored");
            RunResult::Stored {
                snapshot: BackupSnapshot {
                    id,
                    target: due.target.name.clone(),
                    time_ms,
                    host: runner.name.clone(),
                    generation: due.generation,
                    size_bytes,
                    added_bytes,
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

/// The copy, stored: (snapshot id, disk bytes, bytes new to the repository).
async fn store(runner: &Runner, due: &Due) -> Result<(String, u64, u64), String> {
    let VmDriver::Qemu(driver) = &*runner.driver else {
        return Err("backups need QEMU; this worker runs the stand-in driver".into());
    };
    let root = driver.root();
    let repo = repo_of(&due.target, root)?;
    let work = root.join(format!("{}.backup", due.vm));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let copy = work.join("disk.raw");
    let stored = async {
        repo.ensure().await?;
        driver
            .copy_disk(&due.vm, &copy)
            .await
            .map_err(|e| format!("copying the disk: {e}"))?;
        repo.backup(&due.vm, &runner.name, &copy).await
    }
    .await;
    if let Err(error) = std::fs::remove_dir_all(&work) {
        tracing::warn!(path = %work.display(), %error, "removing a backup's copy");
    }
    let summary = stored?;
    Ok((
        summary.snapshot_id,
        summary.total_bytes_processed,
        summary.data_added,
    ))
}
