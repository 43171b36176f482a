//! A replica's work on the hosts (the decisions are `crate::replica_plan`, the commands
//! `hearth_state::model::replicas`, the protocol `docs/replicas.md`): the replica host's
//! empty copy and its export, the disk home's mirror into it and the watch that reports it
//! syncing, in sync or degraded, and the rule every start keeps: a VM never starts while the
//! cluster says a replica follows its QEMU, so a replica is never called in sync with writes
//! it missed.

use std::net::SocketAddr;
use std::time::Duration;

use hearth_qemu::driver::Driver;
use hearth_qemu::replica::Mirror;
use hearth_state::model::{Command, ComputeCommand, Outcome};
use hearth_state::node::StateNode;
use hearth_types::compute::{Compute, Replica, ReplicaState, Vm};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::moves::Host;

/// The TLS pre-shared key of replica `since` of VM `vm`, derived on both hosts from the key
/// each derived from the cluster secret: no key travels, and each replica has its own.
pub fn replica_psk(key: &[u8; 32], vm: &str, since: u64) -> [u8; 32] {
    let hkdf = Hkdf::<Sha256>::new(Some(b"hearth replica v1"), key);
    let mut out = [0u8; 32];
    hkdf.expand(format!("{vm}/{since}").as_bytes(), &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

async fn submit(state: &StateNode, command: ComputeCommand) -> Option<Outcome> {
    match state.submit(Command::Compute { command }).await {
        Ok(written) => Some(written.outcome),
        Err(error) => {
            tracing::debug!(%error, "replica write not committed; the next pass retries");
            None
        }
    }
}

fn qemu<'a>(host: &'a Host<'_>) -> Result<&'a Driver, String> {
    host.driver.qemu().ok_or_else(|| {
        format!(
            "{} cannot keep replicas (its driver is not QEMU)",
            host.name
        )
    })
}

/// The VM's replica as the cluster records it now.
fn current(state: &StateNode, vm: &str) -> Option<Replica> {
    let desired = state.reader().current();
    desired.compute.vms.get(vm)?.value.replica.clone()
}

fn progress(
    host: &Host<'_>,
    vm: &str,
    r: &Replica,
    state: ReplicaState,
    job: Option<&Mirror>,
    message: Option<String>,
) -> ComputeCommand {
    ComputeCommand::ReplicaProgress {
        vm: vm.to_owned(),
        host: host.name.to_owned(),
        since: r.since,
        state,
        done_bytes: job.map_or(r.done_bytes, |j| j.done),
        total_bytes: job.map_or(r.total_bytes, |j| j.total),
        message,
        at_ms: crate::unix_ms(),
    }
}

/// On the replica host, at `Preparing`: an empty copy exported over NBD, and the cluster
/// told where. On failure nothing is left here, and the home reports nothing: the leader
/// sees the replica stay `preparing` and this host's log says why.
pub async fn export(host: &Host<'_>, vm: &Vm, compute: &Compute) {
    let Some(r) = vm.replica.as_ref().filter(|r| r.host == host.name) else {
        return;
    };
    match export_copy(host, vm, compute, r).await {
        Ok(nbd) => {
            let command = ComputeCommand::ReplicaListening {
                vm: vm.id.clone(),
                host: host.name.to_owned(),
                since: r.since,
                nbd: nbd.to_string(),
            };
            if matches!(
                submit(host.state, command).await,
                Some(Outcome::Applied { .. })
            ) {
                tracing::info!(vm = %vm.id, %nbd, since = r.since, "replica copy exported");
            } else {
                tracing::warn!(vm = %vm.id, "the replica was dropped before it listened");
                drop_copy(host, &vm.id, false).await;
            }
        }
        Err(why) => {
            tracing::warn!(vm = %vm.id, %why, "exporting a replica copy failed; retrying");
            drop_copy(host, &vm.id, false).await;
        }
    }
}

async fn export_copy(
    host: &Host<'_>,
    vm: &Vm,
    compute: &Compute,
    r: &Replica,
) -> Result<SocketAddr, String> {
    let driver = qemu(host)?;
    crate::moves::fetch_image(host, vm, compute).await?;
    let spec = crate::host::spec_for(vm, compute, host.blobs)?;
    let key = replica_psk(host.move_key, &vm.id, r.since);
    driver
        .export_replica(&spec, &key, host.advertise, r.since)
        .await
        .map_err(|e| e.to_string())
}

/// On the replica host: the copy of a replica no longer wanted goes (or, for a disk an admin
/// gave up, is archived).
pub async fn drop_copy(host: &Host<'_>, vm: &str, archive: bool) {
    let Ok(driver) = qemu(host) else {
        return;
    };
    let done = if archive {
        driver
            .archive_replica(vm)
            .await
            .map(|path| tracing::warn!(%vm, path = %path.display(), "archived a replica copy of a disk given up"))
    } else {
        driver
            .drop_replica(vm)
            .await
            .map(|()| tracing::info!(%vm, "replica copy removed"))
    };
    if let Err(error) = done {
        tracing::warn!(%vm, %error, "letting go of a replica copy");
    }
}

/// On the disk's home: the running VM's disk mirrored into its replica, every guest write to
/// both copies. A mirror that cannot start makes the replica degraded.
pub async fn mirror(host: &Host<'_>, vm: &Vm) {
    let Some(r) = vm.replica.as_ref() else {
        return;
    };
    let started = async {
        let driver = qemu(host)?;
        let nbd: SocketAddr = r
            .nbd
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e| format!("the replica's address: {e}"))?;
        let key = replica_psk(host.move_key, &vm.id, r.since);
        driver
            .start_replica_mirror(&vm.id, &key, nbd, r.since)
            .await
            .map_err(|e| format!("the mirror into {}: {e}", r.host))
    }
    .await;
    match started {
        Ok(()) => {
            tracing::info!(vm = %vm.id, replica = %r.host, "mirroring the disk into its replica");
            submit(
                host.state,
                progress(host, &vm.id, r, ReplicaState::Syncing, None, None),
            )
            .await;
        }
        Err(why) => {
            tracing::warn!(vm = %vm.id, %why, "the mirror into the replica did not start");
            unmirror(host, &vm.id).await;
            submit(
                host.state,
                progress(host, &vm.id, r, ReplicaState::Degraded, None, Some(why)),
            )
            .await;
        }
    }
}

/// On the disk's home: what the mirror into the replica is, reported when it changed:
/// syncing with progress, in sync once QEMU says every write goes to both copies, degraded
/// (and the mirror ended) once it failed or is gone.
pub async fn tend(host: &Host<'_>, vm: &Vm) {
    let Some(r) = vm.replica.as_ref() else {
        return;
    };
    let Ok(driver) = qemu(host) else {
        return;
    };
    let job = match driver.replica_mirror(&vm.id).await {
        Ok(job) => job,
        Err(error) => {
            tracing::debug!(vm = %vm.id, %error, "looking at the mirror");
            return;
        }
    };
    let failed = match &job {
        None => Some(format!(
            "the mirror into {} ended (the VM's QEMU restarted or lost it)",
            r.host
        )),
        Some(j)
            if j.error.is_some()
                || matches!(j.status.as_str(), "concluded" | "aborting" | "null") =>
        {
            Some(format!(
                "the mirror into {} failed: {}",
                r.host,
                j.error.as_deref().unwrap_or(&j.status)
            ))
        }
        Some(_) => None,
    };
    let command = match (failed, &job) {
        (Some(why), _) => {
            tracing::warn!(vm = %vm.id, %why, "replica degraded");
            unmirror(host, &vm.id).await;
            progress(
                host,
                &vm.id,
                r,
                ReplicaState::Degraded,
                job.as_ref(),
                Some(why),
            )
        }
        (None, Some(j)) if j.in_sync && r.state != ReplicaState::InSync => {
            tracing::info!(vm = %vm.id, replica = %r.host, "replica in sync");
            progress(host, &vm.id, r, ReplicaState::InSync, Some(j), None)
        }
        (None, Some(j))
            if r.state == ReplicaState::Syncing
                && (j.done, j.total) != (r.done_bytes, r.total_bytes) =>
        {
            progress(host, &vm.id, r, ReplicaState::Syncing, Some(j), None)
        }
        _ => return,
    };
    submit(host.state, command).await;
}

/// On the disk's home: the mirror into a replica nothing wants ends.
pub async fn unmirror(host: &Host<'_>, vm: &str) {
    let Ok(driver) = qemu(host) else {
        return;
    };
    if let Err(error) = driver.stop_replica_mirror(vm).await {
        tracing::warn!(%vm, %error, "ending the mirror into the replica");
    }
}

/// How long a connection attempt to a replica client's host may take before the host
/// counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the host at `peer` answers at all: a connection to its address, even refused,
/// says it is there; a timeout or an unreachable host or network says it is not.
async fn answers(peer: SocketAddr) -> bool {
    use std::io::ErrorKind as K;
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(peer)).await {
        Err(_) => false,
        Ok(Err(e)) if matches!(e.kind(), K::HostUnreachable | K::NetworkUnreachable) => false,
        Ok(_) => true,
    }
}

/// On the replica host: restarts `vm` here from its replica, its home `from` silent since
/// its lease renewal at `lease`, unless the home's QEMU is still connected to the export
/// (its agent died but the VM lives: it must not run twice). A connection from a host that
/// no longer answers is left over from a cut link: the home, cut off, could not renew its
/// lease either and has killed the VM's QEMU (`crate::lease`). The command checks, in the
/// log, that the replica is in sync and that no renewal came since.
pub async fn fail_over(host: &Host<'_>, vm: &Vm, from: &str, lease: u64) {
    let (Some(r), Ok(driver)) = (vm.replica.as_ref(), qemu(host)) else {
        return;
    };
    let nbd = r.nbd.as_deref().and_then(|a| a.parse::<SocketAddr>().ok());
    for client in nbd
        .map(|nbd| driver.replica_clients(nbd))
        .unwrap_or_default()
    {
        if answers(client).await {
            tracing::warn!(vm = %vm.id, %from, %client, "the home stopped renewing its lease but its QEMU still writes to the replica: not restarting the VM here");
            return;
        }
        tracing::warn!(vm = %vm.id, %from, %client, "the replica's client no longer answers: its connection is left over from a cut link");
    }
    let command = ComputeCommand::Failover {
        vm: vm.id.clone(),
        from: from.to_owned(),
        to: host.name.to_owned(),
        since: r.since,
        lease,
        at_ms: crate::unix_ms(),
    };
    match submit(host.state, command).await {
        Some(Outcome::Applied { .. }) => {
            tracing::warn!(vm = %vm.id, %from, "restarting the VM here from its replica: its home stopped renewing its lease")
        }
        other => tracing::info!(vm = %vm.id, ?other, "failover not recorded"),
    }
}

/// On the VM's new home after a failover: its replica copy becomes its disk, at the
/// generation the cluster recorded; the normal start follows.
pub async fn adopt(host: &Host<'_>, vm: &Vm) {
    let (Some(since), Ok(driver)) = (vm.adopt_replica, qemu(host)) else {
        return;
    };
    match driver
        .adopt_replica(&vm.id, since, vm.disk.generation)
        .await
    {
        Ok(()) => {
            tracing::info!(vm = %vm.id, since, generation = vm.disk.generation, "took the replica as the VM's disk")
        }
        Err(error) => tracing::warn!(vm = %vm.id, %error, "taking the replica as the VM's disk"),
    }
}

/// Before QEMU starts for `vm` on `host`: a replica the cluster calls syncing or in sync
/// follows a QEMU that is gone, and the new one will write without it. It is recorded
/// degraded first; until that is committed, nothing starts.
pub async fn before_boot(host: &str, state: &StateNode, vm: &str) -> Result<(), String> {
    let Some(r) = current(state, vm) else {
        return Ok(());
    };
    if !matches!(r.state, ReplicaState::Syncing | ReplicaState::InSync) {
        return Ok(());
    }
    let command = ComputeCommand::ReplicaProgress {
        vm: vm.to_owned(),
        host: host.to_owned(),
        since: r.since,
        state: ReplicaState::Degraded,
        done_bytes: r.done_bytes,
        total_bytes: r.total_bytes,
        message: Some("the VM started again: its replica is made afresh".into()),
        at_ms: crate::unix_ms(),
    };
    match submit(state, command).await {
        Some(Outcome::Applied { .. }) => Ok(()),
        other => Err(format!(
            "the replica on {} is not recorded degraded yet ({other:?}); not starting",
            r.host
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_replica_has_its_own_key_and_both_hosts_derive_the_same() {
        let key = [7u8; 32];
        assert_eq!(replica_psk(&key, "vm-1", 9), replica_psk(&key, "vm-1", 9));
        assert_ne!(replica_psk(&key, "vm-1", 9), replica_psk(&key, "vm-1", 10));
        assert_ne!(replica_psk(&key, "vm-1", 9), replica_psk(&key, "vm-2", 9));
        // Not the live move's key for the same numbers.
        assert_ne!(
            replica_psk(&key, "vm-1", 9),
            crate::live_moves::move_psk(&key, "vm-1", 9)
        );
    }
}
