//! A VM's cold move to another host, on the hosts (the desired-state side is
//! `hearth_state::model::migration`, the protocol `docs/migration.md`): the target's copy of
//! the stopped disk from its home, checked by sha256, adopted under the VM's name at the next
//! generation and switched in one Raft command; and the source's watch that gives a move up
//! when its target stops making progress, so the VM runs again where it was.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hearth_state::model::{Command, ComputeCommand, Outcome};
use hearth_types::compute::{Compute, MigrationStage, Vm};

use hearth_qemu::fake::VmDriver;
use hearth_state::node::StateNode;

use crate::blobs::BlobStore;

/// What a host's move work needs of it.
pub struct Host<'a> {
    pub name: &'a str,
    pub driver: &'a VmDriver,
    pub blobs: &'a BlobStore,
    pub state: &'a StateNode,
    /// The key live moves derive their TLS keys from (from the cluster secret).
    pub move_key: &'a [u8; 32],
    /// Where this host listens for a VM moving here live.
    pub advertise: std::net::IpAddr,
    /// Bytes/s a live move may use for its disk and its RAM (0: no limit).
    pub move_speed: u64,
}

/// How long a move may go without progress before its source gives it up.
pub const MOVE_STALL: Duration = Duration::from_secs(120);
/// How often the target reports its copy's progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Attempts at the copy before the target gives the move up.
const ATTEMPTS: usize = 3;

/// What the source last saw of each move of a VM whose disk is here: the progress, and since
/// when it has not changed.
pub type Watch = BTreeMap<String, ((MigrationStage, u64), Instant)>;

/// The moves away from host `me` that made no progress for [`MOVE_STALL`], with why; `watch`
/// is brought up to date (moves that ended are dropped).
pub fn stalled(
    me: &str,
    compute: &Compute,
    watch: &mut Watch,
    now: Instant,
) -> Vec<(String, String)> {
    let mut stalled = Vec::new();
    let mut seen = BTreeMap::new();
    for vm in compute.vms.values().map(|v| &v.value) {
        let Some(moving) = &vm.migration else {
            continue;
        };
        if vm.disk.host.as_deref() != Some(me) {
            continue;
        }
        let progress = (moving.stage, moving.done_bytes);
        let since = match watch.get(&vm.id) {
            Some((last, since)) if *last == progress => *since,
            _ => now,
        };
        if now.duration_since(since) >= MOVE_STALL {
            let secs = MOVE_STALL.as_secs();
            let why = match moving.stage {
                MigrationStage::Stopping => "the VM did not stop here".to_owned(),
                MigrationStage::Copying => format!("{} copied nothing for {secs} s", moving.to),
                MigrationStage::Preparing => {
                    format!("{} did not get ready for the VM in {secs} s", moving.to)
                }
                MigrationStage::Mirroring => format!("the copy made no progress for {secs} s"),
                MigrationStage::Switching => {
                    format!("{} did not switch the VM in {secs} s", moving.to)
                }
            };
            stalled.push((vm.id.clone(), why));
        }
        seen.insert(vm.id.clone(), (progress, since));
    }
    *watch = seen;
    stalled
}

/// Why a copy failed, as the give-up says it.
type CopyError = String;

fn failed(error: impl std::fmt::Display) -> CopyError {
    error.to_string()
}

/// On the target: copies VM `vm`'s disk of `generation` from `from`, adopts it here as
/// `generation + 1` and switches the VM here (a disk on RBD is not copied: its handle is
/// adopted, at the same generation). A copy that fails [`ATTEMPTS`] times gives the move
/// up, and nothing it left is the VM's disk.
pub async fn receive(host: &Host<'_>, vm: &Vm, compute: &Compute, from: &str, generation: u64) {
    // A copy already adopted here (this host stopped, or its copy of the state lagged, before
    // the switch showed) only needs the switch: copying again would archive it first.
    let next = vm.storage.moved_generation(generation);
    let adopted = host
        .driver
        .observe()
        .ok()
        .into_iter()
        .flatten()
        .any(|s| s.id == vm.id && !s.foreign && s.disk_present && s.generation == next);
    if adopted {
        return switch_cold(host, vm, from, generation).await;
    }
    let mut why = String::new();
    for attempt in 1..=ATTEMPTS {
        let copied = match vm.storage.is_local() {
            true => copy(host, vm, compute, from, generation).await,
            false => adopt_rbd(host, vm, compute).await,
        };
        match copied {
            Ok(()) => return switch_cold(host, vm, from, generation).await,
            Err(error) => {
                tracing::warn!(vm = %vm.id, %from, attempt, %error, "copying the disk of a VM moving here failed");
                why = error;
            }
        }
        let _ = hearth_qemu::moving::drop_incoming(host.driver.root(), &vm.id);
        if attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    submit(host, abort(vm, &why)).await;
}

/// The cold switch; a copy the cluster surely does not take is archived (never deleted).
async fn switch_cold(host: &Host<'_>, vm: &Vm, from: &str, generation: u64) {
    if switch(host, vm, from, generation).await == Switched::No
        && let Err(error) = host.driver.archive(&vm.id).await
    {
        tracing::warn!(vm = %vm.id, %error, "archiving the copy");
    }
}

pub(crate) fn abort(vm: &Vm, why: &str) -> ComputeCommand {
    ComputeCommand::AbortMigration {
        vm: vm.id.clone(),
        why: why.to_owned(),
    }
}

pub(crate) async fn submit(host: &Host<'_>, command: ComputeCommand) -> Option<Outcome> {
    match host.state.submit(Command::Compute { command }).await {
        Ok(written) => Some(written.outcome),
        Err(error) => {
            tracing::warn!(%error, "a move's step was not recorded");
            None
        }
    }
}

/// The copy, whole and checked, adopted under the VM's name at `generation + 1`.
async fn copy(
    host: &Host<'_>,
    vm: &Vm,
    compute: &Compute,
    from: &str,
    generation: u64,
) -> Result<(), CopyError> {
    let image = fetch_image(host, vm, compute).await?;
    let root = host.driver.root();
    let incoming = hearth_qemu::moving::fresh_incoming(root, &vm.id).map_err(failed)?;
    let path = incoming.join(host.driver.disk_name());
    let mut file = std::fs::File::create(&path).map_err(failed)?;
    let (done, total) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (sink_done, sink_total) = (done.clone(), total.clone());
    let fetch = host
        .state
        .fetch_disk(from, &vm.id, generation, move |bytes, size| {
            file.write_all(bytes).map_err(|e| e.to_string())?;
            sink_done.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            sink_total.store(size, Ordering::Relaxed);
            Ok(())
        });
    // The digest is checked on the file as written, read back once the copy is whole.
    let mut fetch = std::pin::pin!(fetch);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    let (size, sha256) = loop {
        tokio::select! {
            result = &mut fetch => break result.map_err(failed)?,
            _ = tick.tick() => progress(host, vm, &done, &total).await,
        }
    };
    progress(host, vm, &done, &total).await;
    let (written, written_size) = crate::blobs::sha256_file(&path).map_err(failed)?;
    if written != sha256 || written_size != size {
        return Err(failed(format!(
            "the copy does not match the source's disk (sha256 {written}, {from} says {sha256})"
        )));
    }
    make_room(host, vm).await?;
    let base = host.blobs.path(&image.disk.sha256);
    host.driver
        .adopt_incoming(&vm.id, generation + 1, (&base, &image.format))
        .await
        .map_err(failed)?;
    tracing::info!(vm = %vm.id, %from, bytes = size, "disk copied and checked");
    Ok(())
}

/// A cold move of a disk on RBD: the stopped VM's image, at its generation, becomes the
/// VM's disk here by its handle; nothing is copied.
async fn adopt_rbd(host: &Host<'_>, vm: &Vm, compute: &Compute) -> Result<(), CopyError> {
    let driver = host
        .driver
        .qemu()
        .ok_or_else(|| format!("{} cannot run disks on RBD", host.name))?;
    fetch_image(host, vm, compute).await?;
    let spec = crate::host::spec_for(vm, compute, host.blobs)?;
    make_room(host, vm).await?;
    driver.adopt_rbd(&spec).await.map_err(failed)?;
    tracing::info!(vm = %vm.id, "took the handle of the VM's disk on RBD");
    Ok(())
}

/// Archives an old copy of the VM here, never running, before a new one is adopted.
async fn make_room(host: &Host<'_>, vm: &Vm) -> Result<(), CopyError> {
    if !host.driver.root().join(&vm.id).exists() {
        return Ok(());
    }
    if let Some(pid) = host.driver.running(&vm.id) {
        return Err(failed(format!(
            "an old copy of {} runs here (pid {pid})",
            vm.id
        )));
    }
    let archived = host.driver.archive(&vm.id).await.map_err(failed)?;
    tracing::warn!(vm = %vm.id, path = %archived.display(), "archived an old copy before adopting the new one");
    Ok(())
}

/// The files of the image the VM's disk is an overlay on, fetched here if missing.
pub(crate) async fn fetch_image<'c>(
    host: &Host<'_>,
    vm: &'c Vm,
    compute: &'c Compute,
) -> Result<&'c hearth_types::compute::Image, String> {
    let image = vm
        .base_image(compute)
        .ok_or_else(|| format!("image {} no longer exists", vm.request.image))?;
    for blob in image.blobs().filter(|b| !host.blobs.has(&b.sha256)) {
        crate::images::fetch_blob(host.state, host.blobs, &blob.sha256)
            .await
            .map_err(|e| format!("cannot fetch image {}: {e}", image.name))?;
    }
    Ok(image)
}

async fn progress(host: &Host<'_>, vm: &Vm, done: &AtomicU64, total: &AtomicU64) {
    let command = ComputeCommand::MigrationProgress {
        vm: vm.id.clone(),
        host: host.name.to_owned(),
        done_bytes: done.load(Ordering::Relaxed),
        total_bytes: total.load(Ordering::Relaxed),
    };
    submit(host, command).await;
}

/// Whether a switch happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Switched {
    Yes,
    /// Surely not: the cluster, read after catching up, does not record the copy here as the
    /// VM's disk. The copy is not the VM's disk.
    No,
    /// Refused, and the cluster cannot say more now: the copy stays for the reconciler.
    Unknown,
}

/// Records the switch, retried while the cluster cannot answer. A refusal is checked against
/// the state read after catching up: an earlier attempt whose answer was lost may have
/// switched it.
pub(crate) async fn switch(host: &Host<'_>, vm: &Vm, from: &str, generation: u64) -> Switched {
    let command = ComputeCommand::MoveDisk {
        vm: vm.id.clone(),
        from: from.to_owned(),
        to: host.name.to_owned(),
        generation,
    };
    for _ in 0..30 {
        match submit(host, command.clone()).await {
            Some(Outcome::Applied { .. }) => {
                tracing::info!(vm = %vm.id, %from, "VM moved here");
                return Switched::Yes;
            }
            Some(outcome) => {
                return match moved_here(host, vm, generation).await {
                    Some(true) => {
                        tracing::info!(vm = %vm.id, %from, "VM moved here");
                        Switched::Yes
                    }
                    Some(false) => {
                        tracing::warn!(vm = %vm.id, ?outcome, "the move was given up before the switch");
                        Switched::No
                    }
                    None => {
                        tracing::warn!(vm = %vm.id, ?outcome, "the switch was refused and the cluster cannot say why; the copy stays for the reconciler");
                        Switched::Unknown
                    }
                };
            }
            None => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    Switched::Unknown
}

/// Whether the cluster records this host as the VM's disk home at the generation a move of
/// `generation` makes, read after catching up with the leader; `None` when it cannot be read.
async fn moved_here(host: &Host<'_>, vm: &Vm, generation: u64) -> Option<bool> {
    host.state.linearizable_index().await.ok()?;
    let desired = host.state.reader().current();
    let now = &desired.compute.vms.get(&vm.id)?.value;
    let next = vm.storage.moved_generation(generation);
    Some(now.disk.host.as_deref() == Some(host.name) && now.disk.generation == next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_types::compute::{Migration, Phase, Power};

    #[test]
    fn a_move_without_progress_is_given_up_by_its_source_only() {
        let mut compute = Compute::default();
        let mut entry = crate::reconcile::tests::vm("vm-1", "w1", Phase::Stopped, Power::Running);
        entry.value.migration = Some(Migration {
            to: "w2".into(),
            stage: MigrationStage::Copying,
            since: 1,
            done_bytes: 0,
            total_bytes: 0,
            live: false,
            listen: None,
        });
        compute.vms.insert("vm-1".into(), entry);
        let (mut watch, mut other) = (Watch::new(), Watch::new());
        let start = Instant::now();
        assert!(stalled("w1", &compute, &mut watch, start).is_empty());
        assert!(stalled("w2", &compute, &mut other, start).is_empty());
        let late = start + MOVE_STALL;
        assert!(
            stalled("w2", &compute, &mut other, late).is_empty(),
            "the target never gives up for the source"
        );
        // Progress restarts the clock.
        let m = compute.vms.get_mut("vm-1").unwrap();
        m.value.migration.as_mut().unwrap().done_bytes = 1 << 20;
        assert!(stalled("w1", &compute, &mut watch, late).is_empty());
        let stuck = stalled("w1", &compute, &mut watch, late + MOVE_STALL);
        assert_eq!(stuck.len(), 1);
        assert!(stuck[0].1.contains("w2 copied nothing"), "{stuck:?}");
        // A move that ended is forgotten.
        compute.vms.get_mut("vm-1").unwrap().value.migration = None;
        assert!(stalled("w1", &compute, &mut watch, late + MOVE_STALL).is_empty());
        assert!(watch.is_empty());
    }
}
