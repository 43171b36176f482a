//! A VM's live move on the hosts (the protocol is `docs/migration.md`, the desired-state side
//! `hearth_state::model::migration`): the target prepares a paused QEMU that listens
//! (`prepare`), the source mirrors the disk and moves the RAM into it and says so once its
//! own QEMU is paused (`send`), and the target takes the copy as the VM's disk, switches the
//! VM in one Raft command and only then lets it run (`switch`). The disk and RAM streams run
//! under TLS with a key derived from the cluster secret for this one move.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hearth_qemu::driver::Driver;
use hearth_qemu::live::{Listen, Progress};
use hearth_state::model::{ComputeCommand, Outcome};
use hearth_types::compute::{Compute, Listening, Migration, MigrationStage, Vm};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::moves::{Host, Switched, abort, submit};

/// How often the source looks at its mirror, and waits for the outcome.
const POLL: Duration = Duration::from_millis(250);
/// How often the source looks at its migration: the guest is paused from the migration's
/// last copy until the target runs it, and each look may add this much.
const RAM_POLL: Duration = Duration::from_millis(20);
/// How often the source reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// How long the paused source waits for the switch or the give-up before giving up itself.
const SWITCH_WAIT: Duration = Duration::from_secs(150);

/// The TLS pre-shared key of move `since` of VM `vm`: both hosts derive it from the key they
/// derived from the cluster secret, so no key travels and each move has its own.
pub fn move_psk(move_key: &[u8; 32], vm: &str, since: u64) -> [u8; 32] {
    let hkdf = Hkdf::<Sha256>::new(Some(b"hearth live move v1"), move_key);
    let mut key = [0u8; 32];
    hkdf.expand(format!("{vm}/{since}").as_bytes(), &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

fn qemu<'a>(host: &'a Host<'_>) -> Result<&'a Driver, String> {
    host.driver.qemu().ok_or_else(|| {
        format!(
            "{} cannot move running VMs (its driver is not QEMU)",
            host.name
        )
    })
}

/// The move `since` of `vm` as the cluster records it now, if still under way.
fn current(host: &Host<'_>, vm: &str) -> Option<Vm> {
    let desired = host.state.reader().current();
    desired.compute.vms.get(vm).map(|v| v.value.clone())
}

/// On the target, at `Preparing`: a paused QEMU waits for the VM, and the cluster learns
/// where. On failure the move is given up and nothing is left here.
pub async fn prepare(host: &Host<'_>, vm: &Vm, compute: &Compute, moving: &Migration) {
    match listen(host, vm, compute, moving).await {
        Ok(listen) => {
            let command = ComputeCommand::MigrationListening {
                vm: vm.id.clone(),
                to: host.name.to_owned(),
                since: moving.since,
                listen: Listening {
                    nbd: listen.nbd.map(|a| a.to_string()).unwrap_or_default(),
                    migrate: listen.migrate.to_string(),
                },
            };
            if !matches!(submit(host, command).await, Some(Outcome::Applied { .. })) {
                tracing::warn!(vm = %vm.id, "the move ended before the target listened");
                drop_incoming(host, &vm.id).await;
            }
        }
        Err(why) => {
            tracing::warn!(vm = %vm.id, %why, "preparing for a live move failed");
            drop_incoming(host, &vm.id).await;
            submit(host, abort(vm, &why)).await;
        }
    }
}

async fn drop_incoming(host: &Host<'_>, vm: &str) {
    if let Some(driver) = host.driver.qemu()
        && let Err(error) = driver.drop_incoming(vm).await
    {
        tracing::warn!(%vm, %error, "removing the incoming copy");
    }
}

async fn listen(
    host: &Host<'_>,
    vm: &Vm,
    compute: &Compute,
    moving: &Migration,
) -> Result<Listen, String> {
    let driver = qemu(host)?;
    crate::moves::fetch_image(host, vm, compute).await?;
    let spec = crate::host::spec_for(vm, compute, host.blobs)?;
    let key = move_psk(host.move_key, &vm.id, moving.since);
    let listen = driver
        .start_incoming(&spec, &key, host.advertise)
        .await
        .map_err(|e| format!("the target's QEMU: {e}"))?;
    tracing::info!(vm = %vm.id, nbd = ?listen.nbd, migrate = %listen.migrate, "waiting for a VM moving here live");
    Ok(listen)
}

/// On the source, at `Mirroring`: the mirror and the migration, then `MigrationCompleted`
/// with this QEMU paused, then the wait for the outcome: stopped for good once the VM is
/// switched to the target, running again if the move is given up.
pub async fn send(host: &Host<'_>, vm: &Vm, moving: &Migration) {
    let driver = match qemu(host) {
        Ok(driver) => driver,
        Err(why) => return give_up(host, None, vm, &why).await,
    };
    if driver.dir(&vm.id).join(hearth_qemu::live::HELD).exists() {
        // An earlier attempt's QEMU state is unknown (this agent restarted mid-move).
        let why = format!("{} restarted during the move", host.name);
        return give_up(host, Some(driver), vm, &why).await;
    }
    let (paused, downtime) = match mirror_and_migrate(host, driver, vm, moving).await {
        Ok(done) => done,
        Err(why) => return give_up(host, Some(driver), vm, &why).await,
    };
    let command = ComputeCommand::MigrationCompleted {
        vm: vm.id.clone(),
        host: host.name.to_owned(),
        since: moving.since,
    };
    match submit(host, command).await {
        Some(Outcome::Applied { .. }) => {
            // How long the guest has been paused so far: QEMU's last copy, then what
            // followed here (within one look at the migration).
            let paused_ms = downtime + paused.elapsed().as_millis() as u64;
            tracing::info!(vm = %vm.id, to = %moving.to, qemu_downtime_ms = downtime, paused_ms, "VM moved live; paused here until the switch")
        }
        _ => tracing::warn!(vm = %vm.id, "the completed move was not recorded"),
    }
    await_switch(host, driver, vm).await;
}

/// The source's part of the copy: the mirror until it has caught up, then the RAM. Returns
/// when it saw the migration complete (the guest paused) and QEMU's downtime in ms. A disk
/// on RBD is not mirrored: both QEMUs open the same image, and only the RAM moves.
async fn mirror_and_migrate(
    host: &Host<'_>,
    driver: &Driver,
    vm: &Vm,
    moving: &Migration,
) -> Result<(Instant, u64), String> {
    let listen = moving
        .listen
        .as_ref()
        .ok_or("the target said nowhere to send the VM")?;
    let parse = |addr: &str| {
        addr.parse::<SocketAddr>()
            .map_err(|e| format!("the target's address {addr}: {e}"))
    };
    let to = parse(&listen.migrate)?;
    let key = move_psk(host.move_key, &vm.id, moving.since);
    driver
        .hold_for_move(&vm.id, &key)
        .await
        .map_err(|e| format!("preparing the move: {e}"))?;
    let mut reporter = Reporter::new(host, vm);
    let mirrored = vm.storage.is_local();
    let disk = match mirrored {
        true => mirror(host, driver, vm, moving, parse(&listen.nbd)?, &mut reporter).await?,
        false => 0,
    };
    driver
        .start_migration(&vm.id, to, host.move_speed)
        .await
        .map_err(|e| format!("starting the migration: {e}"))?;
    let (paused, downtime) = loop {
        still_wanted(host, vm, moving)?;
        let ram = driver
            .migration_progress(&vm.id)
            .await
            .map_err(|e| format!("the migration: {e}"))?;
        fails("the migration", &ram)?;
        if ram.status == "completed" {
            break (Instant::now(), ram.downtime_ms.unwrap_or(0));
        }
        let total = disk + ram.total.max(ram.done);
        reporter.report(disk + ram.done, total).await;
        tokio::time::sleep(RAM_POLL).await;
    };
    if mirrored {
        driver
            .finish_mirror(&vm.id)
            .await
            .map_err(|e| format!("finishing the disk mirror: {e}"))?;
    }
    Ok((paused, downtime))
}

/// The mirror of a local disk into the target's export at `nbd`, until it has caught up:
/// the disk's size in bytes.
async fn mirror(
    host: &Host<'_>,
    driver: &Driver,
    vm: &Vm,
    moving: &Migration,
    nbd: SocketAddr,
    reporter: &mut Reporter<'_, '_>,
) -> Result<u64, String> {
    driver
        .start_mirror(&vm.id, nbd, host.move_speed)
        .await
        .map_err(|e| format!("starting the disk mirror: {e}"))?;
    loop {
        still_wanted(host, vm, moving)?;
        let job = driver
            .mirror_progress(&vm.id)
            .await
            .map_err(|e| format!("the disk mirror: {e}"))?;
        fails("the disk mirror", &job)?;
        reporter.report(job.done, job.total).await;
        if job.status == "ready" {
            return Ok(job.total);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// An error for a job or migration QEMU says failed.
fn fails(what: &str, progress: &Progress) -> Result<(), String> {
    match progress.status.as_str() {
        "failed" | "cancelled" | "aborting" | "concluded" | "null" => Err(format!(
            "{what} {}: {}",
            progress.status,
            progress.error.as_deref().unwrap_or("no reason given")
        )),
        _ => Ok(()),
    }
}

/// An error when the move is no longer the one under way (an admin cancelled it, say).
fn still_wanted(host: &Host<'_>, vm: &Vm, moving: &Migration) -> Result<(), String> {
    let now = current(host, &vm.id).and_then(|v| v.migration);
    match now {
        Some(m) if m.since == moving.since && m.stage == MigrationStage::Mirroring => Ok(()),
        _ => Err("the move was given up".to_owned()),
    }
}

/// Progress reports at most every [`PROGRESS_EVERY`].
struct Reporter<'a, 'b> {
    host: &'a Host<'b>,
    vm: &'a Vm,
    last: Option<Instant>,
}

impl<'a, 'b> Reporter<'a, 'b> {
    fn new(host: &'a Host<'b>, vm: &'a Vm) -> Self {
        Reporter {
            host,
            vm,
            last: None,
        }
    }

    async fn report(&mut self, done: u64, total: u64) {
        if self.last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let command = ComputeCommand::MigrationProgress {
            vm: self.vm.id.clone(),
            host: self.host.name.to_owned(),
            done_bytes: done,
            total_bytes: total,
        };
        submit(self.host, command).await;
    }
}

/// The paused source waits for the outcome: the switch (this QEMU stops for good) or the
/// give-up (it runs on). After [`SWITCH_WAIT`] it gives the move up itself; exactly one of
/// the give-up and the target's switch is committed.
async fn await_switch(host: &Host<'_>, driver: &Driver, vm: &Vm) {
    let deadline = Instant::now() + SWITCH_WAIT;
    let mut asked = false;
    loop {
        if let Some(now) = current(host, &vm.id) {
            if now.disk.host.as_deref() != Some(host.name) {
                tracing::info!(vm = %vm.id, "the VM runs on its new host; stopping the copy here");
                if let Err(error) = driver.kill(&vm.id).await {
                    tracing::warn!(vm = %vm.id, %error, "stopping the moved VM's old QEMU");
                }
                return;
            }
            if now.migration.is_none() && host.state.linearizable_index().await.is_ok() {
                let now = current(host, &vm.id);
                if now.is_some_and(|v| {
                    v.migration.is_none() && v.disk.host.as_deref() == Some(host.name)
                }) {
                    resume(driver, vm).await;
                    return;
                }
            }
        } else {
            return;
        }
        if Instant::now() > deadline && !asked {
            asked = true;
            let why = "the target did not switch the VM in time";
            submit(host, abort(vm, why)).await;
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn resume(driver: &Driver, vm: &Vm) {
    match driver.release(&vm.id).await {
        Ok(()) => tracing::info!(vm = %vm.id, "the move was given up; the VM runs on here"),
        Err(error) => tracing::warn!(vm = %vm.id, %error, "resuming the VM after its move"),
    }
}

/// The source gives the move up: the cluster records why, and once it has (the switch can no
/// longer happen), this QEMU is released to run on.
async fn give_up(host: &Host<'_>, driver: Option<&Driver>, vm: &Vm, why: &str) {
    tracing::warn!(vm = %vm.id, %why, "giving a live move up");
    submit(host, abort(vm, why)).await;
    if let Some(driver) = driver {
        await_switch(host, driver, vm).await;
    }
}

/// On the target, at `Switching`: the incoming QEMU holds the whole VM; its copy becomes the
/// VM's disk here (`generation + 1`; a disk on RBD keeps its generation), the switch is
/// recorded, and only then does it run. If the switch is refused, the copy is stopped and
/// archived.
pub async fn switch(host: &Host<'_>, vm: &Vm, from: &str, generation: u64) {
    let driver = match qemu(host) {
        Ok(driver) => driver,
        Err(why) => {
            submit(host, abort(vm, &why)).await;
            return;
        }
    };
    let next = vm.storage.moved_generation(generation);
    let adopted = driver.pid(&vm.id).is_some()
        && hearth_qemu::disk::read_generation(&driver.dir(&vm.id)).ok() == Some(next);
    if !adopted && let Err(why) = adopt(host, driver, vm, generation).await {
        tracing::warn!(vm = %vm.id, %why, "taking a live move's copy failed");
        drop_incoming(host, &vm.id).await;
        submit(host, abort(vm, &why)).await;
        return;
    }
    match crate::moves::switch(host, vm, from, generation).await {
        Switched::Yes => match driver.release(&vm.id).await {
            Ok(()) => tracing::info!(vm = %vm.id, %from, "VM moved here live and running"),
            Err(error) => tracing::warn!(vm = %vm.id, %error, "letting the moved VM run"),
        },
        Switched::No => {
            if let Err(error) = driver.kill(&vm.id).await {
                tracing::warn!(vm = %vm.id, %error, "stopping the copy of a move given up");
            }
            if let Err(error) = driver.archive(&vm.id).await {
                tracing::warn!(vm = %vm.id, %error, "archiving the copy of a move given up");
            }
        }
        Switched::Unknown => {}
    }
}

/// The incoming QEMU's copy, whole, becomes the VM's directory here at the generation the
/// move makes (a disk on RBD: its handle, at the same generation).
async fn adopt(host: &Host<'_>, driver: &Driver, vm: &Vm, generation: u64) -> Result<(), String> {
    let status = driver
        .incoming_status(&vm.id)
        .await
        .map_err(|e| format!("the target's QEMU: {e}"))?;
    if status.status != "completed" {
        return Err(format!(
            "the target's QEMU did not receive the whole VM (migration {})",
            status.status
        ));
    }
    driver
        .finish_incoming(&vm.id)
        .await
        .map_err(|e| format!("the target's QEMU: {e}"))?;
    if driver.dir(&vm.id).exists() {
        if let Some(pid) = driver.pid(&vm.id) {
            return Err(format!("an old copy of {} runs here (pid {pid})", vm.id));
        }
        let archived = driver.archive(&vm.id).await.map_err(|e| e.to_string())?;
        tracing::warn!(vm = %vm.id, path = %archived.display(), "archived an old copy before adopting the new one");
    }
    let file = match vm.storage.is_local() {
        true => "disk.qcow2",
        false => hearth_qemu::rbd::HANDLE,
    };
    hearth_qemu::moving::adopt(
        host.driver.root(),
        &vm.id,
        file,
        vm.storage.moved_generation(generation),
        None,
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Removes what moves to this host left behind once they are over: each incoming directory
/// (and its paused QEMU) of a VM with no move here under way and no task on it. None is ever
/// the VM's disk: a copy becomes that only by its rename to the VM's directory.
pub async fn sweep(host: &Host<'_>, compute: &Compute, busy: &std::collections::BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(host.driver.root()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".incoming") else {
            continue;
        };
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let moving_here = compute
            .vms
            .get(id)
            .and_then(|v| v.value.migration.as_ref())
            .is_some_and(|m| m.to == host.name);
        if moving_here || busy.contains(id) {
            continue;
        }
        tracing::info!(vm = %id, "removing the copy of a move that is over");
        match host.driver.qemu() {
            Some(_) => drop_incoming(host, id).await,
            None => {
                if let Err(error) = hearth_qemu::moving::drop_incoming(host.driver.root(), id) {
                    tracing::warn!(vm = %id, %error, "removing the incoming copy");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_move_has_its_own_key_from_the_cluster_key() {
        let key = [7u8; 32];
        assert_eq!(move_psk(&key, "vm-1", 10), move_psk(&key, "vm-1", 10));
        assert_ne!(move_psk(&key, "vm-1", 10), move_psk(&key, "vm-1", 11));
        assert_ne!(move_psk(&key, "vm-1", 10), move_psk(&key, "vm-2", 10));
        assert_ne!(move_psk(&key, "vm-1", 10), move_psk(&[8u8; 32], "vm-1", 10));
    }

    #[test]
    fn a_failed_job_or_migration_is_an_error_with_qemus_reason() {
        let ok = Progress {
            status: "ready".into(),
            ..Progress::default()
        };
        assert!(fails("the mirror", &ok).is_ok());
        let failed = Progress {
            status: "failed".into(),
            error: Some("Connection reset".into()),
            ..Progress::default()
        };
        assert_eq!(
            fails("the migration", &failed).unwrap_err(),
            "the migration failed: Connection reset"
        );
    }
}
