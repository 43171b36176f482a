//! After `hearth restore`: the host a VM is placed on makes the VM's disk from the backup
//! the cluster names (`VmBackups::recover`), never from its image. The snapshot is dumped
//! from its restic repository and written as an overlay on the VM's image beside the VMs'
//! directory (`ID.restored/`, marked with the snapshot's id), put in place as the disk of
//! the VM's generation, and only then recorded as the disk's home
//! (`BackupCommand::Recovered`); until that record nothing runs on it. A directory of the
//! VM already here that is not this snapshot's recovered disk is archived first (never
//! deleted, never taken).

use std::path::Path;

use hearth_qemu::driver::{DiskSpec, VmSpec};
use hearth_state::model::backups::BackupCommand;
use hearth_state::model::{Command, Outcome};
use hearth_types::backup::Recover;
use hearth_types::compute::Vm;

use hearth_qemu::fake::VmDriver;
use hearth_state::node::StateNode;

/// What a recovery needs of the host it runs on.
pub struct Here<'a> {
    pub name: &'a str,
    pub driver: &'a VmDriver,
    pub state: &'a StateNode,
}

/// The file beside a recovered disk naming the snapshot it was made from.
pub const MARK: &str = "recovered-from";

/// Makes VM `vm`'s disk (of `spec.generation`) from `recover`'s snapshot unless it is here
/// already, then records this host as its home.
pub async fn recover(
    host: &Here<'_>,
    vm: &Vm,
    spec: &VmSpec,
    recover: &Recover,
) -> Result<(), String> {
    let snapshot = &recover.snapshot;
    let Some(driver) = host.driver.qemu() else {
        return Err(
            "recovering a disk from its backup needs QEMU; this worker runs the stand-in driver"
                .into(),
        );
    };
    let root = driver.root();
    let dir = root.join(&vm.id);
    if !recovered_here(&dir, spec.generation, &snapshot.id) {
        if dir.exists() {
            // Not running: the host starts a VM only when no QEMU runs it.
            let path = (host.driver.archive(&vm.id).await).map_err(|e| e.to_string())?;
            tracing::warn!(vm = %vm.id, path = %path.display(), "archived a copy that is not the disk to recover");
        }
        tracing::info!(vm = %vm.id, snapshot = %snapshot.id, target = %snapshot.target, "recovering the disk from its backup");
        make(host, root, vm, spec, recover).await?;
        tracing::info!(vm = %vm.id, snapshot = %snapshot.id, "the disk is recovered from its backup");
    }
    record(host, vm, spec.generation, &snapshot.id).await
}

/// Whether `dir` holds the disk recovered from `snapshot`, of `generation`.
fn recovered_here(dir: &Path, generation: u64, snapshot: &str) -> bool {
    let mark = std::fs::read_to_string(dir.join(MARK)).unwrap_or_default();
    mark.trim() == snapshot && hearth_qemu::disk::read_generation(dir).ok() == Some(generation)
}

/// Dumps the snapshot and puts it in place as the VM's disk of `spec.generation`.
async fn make(
    host: &Here<'_>,
    root: &Path,
    vm: &Vm,
    spec: &VmSpec,
    recover: &Recover,
) -> Result<(), String> {
    let snapshot = &recover.snapshot;
    // The file inside is named after the VM the snapshot is of.
    let of = recover.of.as_deref().unwrap_or(&vm.id);
    let target = (host.state.reader().current().backups.targets)
        .get(&snapshot.target)
        .map(|t| t.value.clone())
        .ok_or_else(|| format!("the backup target {} is gone", snapshot.target))?;
    let repo = crate::backup_runs::repo_of(&target, root)?;
    if let DiskSpec::Rbd { pool, .. } = &spec.disk {
        return make_rbd(host, &repo, vm, spec, recover, pool).await;
    }
    let work = root.join(format!("{}.backup", vm.id));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let raw = work.join("disk.raw");
    let disk_name = host.driver.disk_name();
    let made = async {
        repo.dump(of, &snapshot.id, &raw).await?;
        hearth_qemu::backup::prepare_restore(
            root,
            &vm.id,
            disk_name,
            &raw,
            &spec.base_image,
            &spec.base_format,
        )
        .await
        .map_err(|e| format!("writing the recovered disk: {e}"))
    }
    .await;
    if let Err(error) = std::fs::remove_dir_all(&work) {
        tracing::warn!(path = %work.display(), %error, "removing a recovery's dump");
    }
    let file = made?;
    let restored = file.parent().unwrap_or(root).to_owned();
    let mark = restored.join(MARK);
    std::fs::write(&mark, format!("{}\n", snapshot.id))
        .and_then(|()| std::fs::File::open(&mark)?.sync_all())
        .map_err(|e| format!("{}: {e}", mark.display()))?;
    hearth_qemu::moving::adopt_from(root, &restored, &vm.id, disk_name, spec.generation, None)
        .await
        .map(|_| ())
        .map_err(|e| format!("putting the recovered disk in place: {e}"))
}

/// [`make`] of a disk on RBD: the snapshot written into the pool under the restored name,
/// renamed to the image of `spec.generation` once whole (an image of that name is one an
/// earlier attempt of this recovery made: the generation is new to it), then its handle
/// and the mark take the VM's directory here. The image of the generation before, if
/// Ceph still has it, stays in the pool untouched.
async fn make_rbd(
    host: &Here<'_>,
    repo: &crate::restic::Repo,
    vm: &Vm,
    spec: &VmSpec,
    recover: &Recover,
    pool: &str,
) -> Result<(), String> {
    let driver = host.driver.qemu().ok_or("no QEMU driver")?;
    let ceph = driver.ceph().map_err(|e| e.to_string())?;
    let root = driver.root();
    let image = hearth_qemu::rbd::disk_image(&vm.id, spec.generation);
    let made = ceph.exists(pool, &image).await.map_err(|e| e.to_string())?;
    if !made {
        let work = root.join(format!("{}.backup", vm.id));
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        let raw = work.join("disk.raw");
        let restored = hearth_qemu::rbd::restored_image(&vm.id, spec.generation);
        let of = recover.of.as_deref().unwrap_or(&vm.id);
        let written = async {
            repo.dump(of, &recover.snapshot.id, &raw).await?;
            ceph.import_raw(pool, &restored, &raw)
                .await
                .map_err(|e| format!("writing the recovered disk into {pool}: {e}"))?;
            (ceph.rename(pool, &restored, &image).await).map_err(|e| e.to_string())
        }
        .await;
        if let Err(error) = std::fs::remove_dir_all(&work) {
            tracing::warn!(path = %work.display(), %error, "removing a recovery's dump");
        }
        written?;
    }
    let staging = hearth_qemu::moving::restored_dir(root, &vm.id).map_err(|e| e.to_string())?;
    let dir = (driver
        .adopt_rbd_image(&vm.id, pool, spec.generation, &staging)
        .await)
        .map_err(|e| format!("putting the recovered disk in place: {e}"))?;
    let mark = dir.join(MARK);
    std::fs::write(&mark, format!("{}\n", recover.snapshot.id))
        .and_then(|()| std::fs::File::open(&mark)?.sync_all())
        .map_err(|e| format!("{}: {e}", mark.display()))
}

/// Records this host as the home of the recovered disk; until then nothing runs on it.
async fn record(host: &Here<'_>, vm: &Vm, generation: u64, snapshot: &str) -> Result<(), String> {
    let command = Command::Backup {
        command: BackupCommand::Recovered {
            vm: vm.id.clone(),
            host: host.name.to_owned(),
            generation,
            snapshot: snapshot.to_owned(),
        },
    };
    match host.state.submit(command).await {
        Ok(written) if matches!(written.outcome, Outcome::Applied { .. } | Outcome::Nothing) => {
            Ok(())
        }
        Ok(written) => Err(format!(
            "the cluster did not record the recovered disk: {:?}",
            written.outcome
        )),
        Err(error) => Err(format!("cannot record the recovered disk yet: {error}")),
    }
}
