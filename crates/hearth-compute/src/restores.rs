//! On the disk home of a VM being restored from a backup (`hearth backup restore`): once
//! the VM has stopped, the snapshot is dumped from its restic repository and written as a
//! qcow2 overlay on the VM's image beside the VM's directory (`ID.restored/`); the cluster
//! then records it as the VM's disk of the next generation (a compare-and-set), and only
//! after that is the old disk archived (never deleted) and the new one put in its place.
//! A failure before the swap leaves the VM on its own disk; a restored disk that vanished
//! after it leaves the VM `lost` with a `missing-disk` entry, never on a blank disk. On
//! Ceph RBD the restored disk is a new image in the pool under a name no disk has, renamed
//! to its generation's only after the swap (`docs/rbd.md`).

use std::time::Duration;

use hearth_qemu::fake::VmDriver;
use hearth_state::model::backups::{BackupCommand, RestoreResult};
use hearth_state::model::{Command, Outcome};
use hearth_types::backup::{BackupTarget, RestoreRun, RestoreStage};
use hearth_types::desired::DesiredState;

use crate::backup_runs::{ATTEMPTS, Runner, repo_of};

/// A restore due on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreDue {
    pub vm: String,
    pub run: RestoreRun,
    /// The VM's disk generation as the cluster records it now.
    pub generation: u64,
    /// The format of the image the VM's disk is an overlay on.
    pub format: String,
    /// The snapshot's target, if it still exists.
    pub target: Option<BackupTarget>,
    /// The Ceph pool, for a disk on RBD.
    pub pool: Option<String>,
}

/// The restores of VMs whose disk is on host `me`.
pub fn due(me: &str, desired: &DesiredState) -> Vec<RestoreDue> {
    desired
        .backups
        .vms
        .iter()
        .filter_map(|(id, b)| {
            let run = b.restore.as_ref()?;
            let vm = &desired.compute.vms.get(id)?.value;
            (vm.disk.host.as_deref() == Some(me)).then(|| RestoreDue {
                vm: id.clone(),
                run: run.clone(),
                generation: vm.disk.generation,
                format: vm
                    .base_image(&desired.compute)
                    .map_or_else(|| "qcow2".to_owned(), |i| i.format.clone()),
                target: desired
                    .backups
                    .targets
                    .get(&run.snapshot.target)
                    .map(|t| t.value.clone()),
                pool: vm.storage.rbd_pool().map(str::to_owned),
            })
        })
        .collect()
}

/// One step of restore `due`: prepare and swap, or put the swapped disk in place.
pub async fn step(runner: &Runner, due: &RestoreDue) {
    let (stage, result) = match due.run.stage {
        RestoreStage::Asked => {
            // The local copy of the state may lag: only a restore still asked for, read
            // after catching up, is prepared (a preparation wipes `ID.restored/`).
            if runner.driver.running(&due.vm).is_some() || !still_asked(runner, due).await {
                return; // The host loop stops it first.
            }
            match prepare(runner, due).await {
                Err(error) => {
                    let give_up = due.run.failures + 1 >= ATTEMPTS;
                    tracing::warn!(vm = %due.vm, %error, give_up, "preparing a restore failed");
                    (
                        RestoreStage::Asked,
                        Some(RestoreResult::Failed { error, give_up }),
                    )
                }
                Ok(()) => match swap(runner, due).await {
                    Swap::Taken => (
                        RestoreStage::Swapped,
                        put_in_place(runner, due, due.generation + 1).await,
                    ),
                    Swap::Refused => {
                        drop_restored(runner, due).await;
                        return;
                    }
                    // The prepared disk stays: the cluster may have taken it.
                    Swap::Unknown => return,
                },
            }
        }
        RestoreStage::Swapped => (
            RestoreStage::Swapped,
            put_in_place(runner, due, due.generation).await,
        ),
    };
    let Some(result) = result else {
        return;
    };
    let command = Command::Backup {
        command: BackupCommand::RestoreDone {
            vm: due.vm.clone(),
            host: runner.name.clone(),
            stage,
            result,
            snapshot: due.run.snapshot.id.clone(),
        },
    };
    submit(runner, command).await;
}

/// Whether the restore is still asked for at the generation `due` saw, read after
/// catching up with the leader.
async fn still_asked(runner: &Runner, due: &RestoreDue) -> bool {
    if runner.state.linearizable_index().await.is_err() {
        return false;
    }
    let desired = runner.state.reader().current();
    due_now(&desired, &due.vm).is_some_and(|(run, generation)| {
        run.stage == RestoreStage::Asked
            && generation == due.generation
            && run.snapshot.id == due.run.snapshot.id
    })
}

/// Whether the cluster took a prepared disk.
enum Swap {
    Taken,
    Refused,
    Unknown,
}

/// Submits `command`, retried while the cluster cannot answer; its outcome.
async fn submit(runner: &Runner, command: Command) -> Option<Outcome> {
    for _ in 0..30 {
        match runner.state.submit(command.clone()).await {
            Ok(written) => return Some(written.outcome),
            Err(error) => tracing::debug!(%error, "recording a restore's step"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    None
}

/// Removes a prepared disk the cluster did not take: it never was the VM's disk (on RBD,
/// the image under its restored name, which no VM's disk has).
async fn drop_restored(runner: &Runner, due: &RestoreDue) {
    let vm = &due.vm;
    if let Ok(dir) = hearth_qemu::moving::restored_dir(runner.driver.root(), vm)
        && dir.exists()
        && let Err(error) = std::fs::remove_dir_all(&dir)
    {
        tracing::warn!(path = %dir.display(), %error, "removing a restored disk not taken");
    }
    if let (Some(pool), Some(driver)) = (&due.pool, runner.driver.qemu()) {
        let image = hearth_qemu::rbd::restored_image(vm, due.generation + 1);
        let removed = async { driver.ceph()?.remove(pool, &image).await };
        if let Err(error) = removed.await {
            tracing::warn!(%vm, %image, %error, "removing a restored disk not taken");
        }
    }
}

/// The snapshot's disk, ready in `ID.restored/` as an overlay on the VM's image (on RBD:
/// in the pool, under its restored name).
async fn prepare(runner: &Runner, due: &RestoreDue) -> Result<(), String> {
    let VmDriver::Qemu(driver) = &*runner.driver else {
        return Err("restores need QEMU; this worker runs the stand-in driver".into());
    };
    let target = due
        .target
        .as_ref()
        .ok_or_else(|| format!("the backup target {} was removed", due.run.snapshot.target))?;
    let root = driver.root();
    let repo = repo_of(target, root)?;
    if let Some(pool) = &due.pool {
        return prepare_rbd(driver, &repo, due, pool).await;
    }
    let disk_name = runner.driver.disk_name();
    let disk = root.join(&due.vm).join(disk_name);
    let base = hearth_qemu::disk::backing_file(&disk)
        .map_err(|e| format!("{}: {e}", disk.display()))?
        .ok_or_else(|| format!("{}: no image beneath the VM's disk", disk.display()))?;
    let work = root.join(format!("{}.backup", due.vm));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let raw = work.join("disk.raw");
    let made = async {
        repo.dump(&due.vm, &due.run.snapshot.id, &raw).await?;
        hearth_qemu::backup::prepare_restore(root, &due.vm, disk_name, &raw, &base, &due.format)
            .await
            .map_err(|e| format!("writing the restored disk: {e}"))
    }
    .await;
    if let Err(error) = std::fs::remove_dir_all(&work) {
        tracing::warn!(path = %work.display(), %error, "removing a restore's dump");
    }
    made.map(|_| ())
}

/// [`prepare`] of a disk on RBD: the snapshot dumped, then written into the pool under the
/// restored name of the next generation.
async fn prepare_rbd(
    driver: &hearth_qemu::driver::Driver,
    repo: &crate::restic::Repo,
    due: &RestoreDue,
    pool: &str,
) -> Result<(), String> {
    let ceph = driver.ceph().map_err(|e| e.to_string())?;
    let work = driver.root().join(format!("{}.backup", due.vm));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let raw = work.join("disk.raw");
    let image = hearth_qemu::rbd::restored_image(&due.vm, due.generation + 1);
    let made = async {
        repo.dump(&due.vm, &due.run.snapshot.id, &raw).await?;
        ceph.import_raw(pool, &image, &raw)
            .await
            .map_err(|e| format!("writing the restored disk into {pool}: {e}"))
    }
    .await;
    if let Err(error) = std::fs::remove_dir_all(&work) {
        tracing::warn!(path = %work.display(), %error, "removing a restore's dump");
    }
    made
}

/// Records the prepared disk as the VM's next generation; whether the cluster took it.
async fn swap(runner: &Runner, due: &RestoreDue) -> Swap {
    let command = Command::Backup {
        command: BackupCommand::RestoreSwapped {
            vm: due.vm.clone(),
            host: runner.name.clone(),
            generation: due.generation,
            snapshot: due.run.snapshot.id.clone(),
        },
    };
    match submit(runner, command).await {
        Some(Outcome::Applied { .. }) => Swap::Taken,
        outcome => {
            // An earlier answer may have been lost: the state read after catching up says.
            if runner.state.linearizable_index().await.is_err() {
                return Swap::Unknown;
            }
            let desired = runner.state.reader().current();
            let swapped = due_now(&desired, &due.vm).is_some_and(|(run, generation)| {
                run.stage == RestoreStage::Swapped
                    && generation == due.generation + 1
                    && run.snapshot.id == due.run.snapshot.id
            });
            if swapped {
                return Swap::Taken;
            }
            tracing::warn!(vm = %due.vm, ?outcome, "the restore's swap was refused");
            Swap::Refused
        }
    }
}

fn due_now<'a>(desired: &'a DesiredState, vm: &str) -> Option<(&'a RestoreRun, u64)> {
    let run = desired.backups.vms.get(vm)?.restore.as_ref()?;
    Some((run, desired.compute.vms.get(vm)?.value.disk.generation))
}

/// The swapped disk in place as the VM's disk of `generation`, the old one archived; `None`
/// to try again on a later pass.
async fn put_in_place(runner: &Runner, due: &RestoreDue, generation: u64) -> Option<RestoreResult> {
    let driver = &runner.driver;
    let observed = driver.observe().ok()?;
    let here = observed.iter().find(|s| s.id == due.vm && !s.foreign);
    if here.is_some_and(|s| s.disk_present && s.generation == generation) {
        return Some(RestoreResult::Ok);
    }
    if driver.running(&due.vm).is_some() {
        return None;
    }
    if let Some(pool) = &due.pool {
        return put_in_place_rbd(runner, due, pool, generation, here.is_some()).await;
    }
    let restored = hearth_qemu::moving::restored_dir(driver.root(), &due.vm).ok()?;
    let file = restored.join(driver.disk_name());
    let base = match hearth_qemu::disk::backing_file(&file) {
        Ok(Some(base)) => base,
        Ok(None) => {
            tracing::error!(vm = %due.vm, "the restored disk is gone from this host");
            return Some(RestoreResult::Failed {
                error: "the restored disk is gone from its host".into(),
                give_up: true,
            });
        }
        Err(error) => {
            tracing::warn!(vm = %due.vm, %error, "reading the restored disk; trying again");
            return None;
        }
    };
    if here.is_some() || driver.root().join(&due.vm).exists() {
        match driver.archive(&due.vm).await {
            Ok(path) => {
                tracing::info!(vm = %due.vm, path = %path.display(), "the disk before the restore is archived")
            }
            Err(error) => {
                tracing::warn!(vm = %due.vm, %error, "archiving the disk before the restore");
                return None;
            }
        }
    }
    let adopted = hearth_qemu::moving::adopt_from(
        driver.root(),
        &restored,
        &due.vm,
        driver.disk_name(),
        generation,
        Some((&base, &due.format)),
    );
    match adopted.await {
        Ok(_) => {
            tracing::info!(vm = %due.vm, snapshot = %due.run.snapshot.id, generation, "VM restored from its backup");
            Some(RestoreResult::Ok)
        }
        Err(error) => {
            tracing::warn!(vm = %due.vm, %error, "putting the restored disk in place");
            None
        }
    }
}

/// [`put_in_place`] of a disk on RBD: the restored image takes the name of its generation
/// (the cluster recorded that generation as the restore's, so no other disk has it), the
/// handle of the disk before is archived (its image stays in the pool, as an archived local
/// disk stays on its host), and the new handle takes the VM's directory.
async fn put_in_place_rbd(
    runner: &Runner,
    due: &RestoreDue,
    pool: &str,
    generation: u64,
    old_handle: bool,
) -> Option<RestoreResult> {
    let driver = runner.driver.qemu()?;
    let ceph = driver.ceph().ok()?;
    let (vm, image) = (&due.vm, hearth_qemu::rbd::disk_image(&due.vm, generation));
    let restored = hearth_qemu::rbd::restored_image(vm, generation);
    let step = async {
        if !ceph.exists(pool, &image).await? {
            if !ceph.exists(pool, &restored).await? {
                return Ok(false);
            }
            ceph.rename(pool, &restored, &image).await?;
        }
        Ok::<_, hearth_qemu::driver::DiskError>(true)
    };
    match step.await {
        Ok(true) => {}
        Ok(false) => {
            tracing::error!(%vm, %image, "the restored disk is gone from the pool");
            return Some(RestoreResult::Failed {
                error: format!("the restored disk is gone from pool {pool}"),
                give_up: true,
            });
        }
        Err(error) => {
            tracing::warn!(%vm, %error, "naming the restored disk; trying again");
            return None;
        }
    }
    if (old_handle || driver.root().join(vm).exists())
        && let Err(error) = driver.archive(vm).await
    {
        tracing::warn!(%vm, %error, "archiving the handle of the disk before the restore");
        return None;
    }
    let staging = hearth_qemu::moving::restored_dir(driver.root(), vm).ok()?;
    match driver.adopt_rbd_image(vm, pool, generation, &staging).await {
        Ok(_) => {
            tracing::info!(%vm, snapshot = %due.run.snapshot.id, generation, "VM restored from its backup");
            Some(RestoreResult::Ok)
        }
        Err(error) => {
            tracing::warn!(%vm, %error, "putting the restored disk in place");
            None
        }
    }
}
