//! Live migration with QEMU's own machinery (`docs/migration.md`): the target's paused QEMU
//! (`-incoming defer -S`) exports its new overlay over NBD and waits for the RAM; the source
//! mirrors its disk into that export (`blockdev-mirror`), moves its RAM (QEMU migration) and
//! finishes the mirror while paused. Both streams run under TLS with a pre-shared key the
//! caller derives from the cluster secret; its file lives in the VM's directory, mode 0600,
//! only until QEMU no longer needs it (the client reads it once; the server at each
//! connection).
//!
//! A QEMU a move has touched is marked by the file [`HELD`] beside its disk until
//! [`Driver::release`] undoes what the move left on it (jobs, exports, the pause).

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::driver::{DiskSpec, Driver, VmSpec, make_overlay};
use crate::error::{ControlError, DiskError, StartError, io_error};
use crate::qmp::Qmp;

/// The file that marks a QEMU a live move has touched (see [`Driver::release`]).
pub const HELD: &str = "moving";
/// QEMU object, block node, job and export ids hearth uses for a move.
const TLS: &str = "hearth-tls";
const MIRROR: &str = "hearth-mirror";
const EXPORT: &str = "hearth-export";
/// The NBD export name of the disk on the target.
const EXPORT_NAME: &str = "disk0";
/// The PSK identity both ends use.
pub(crate) const PSK_USER: &str = "hearth";
/// QEMU's default most downtime for the final switch of RAM, said out loud.
pub const DOWNTIME_LIMIT_MS: u64 = 300;

/// Where the target waits: for the disk (none for a disk on RBD, which both ends reach)
/// and for the RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub nbd: Option<SocketAddr>,
    pub migrate: SocketAddr,
}

/// A block job's or a migration's state, as QEMU reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// QEMU's status word (`running`, `ready`, `active`, `completed`, `failed`, ...).
    pub status: String,
    pub done: u64,
    pub total: u64,
    /// QEMU's reason, when it failed.
    pub error: Option<String>,
    /// A completed migration: how long QEMU says the VM was stopped for its last copy, in ms.
    pub downtime_ms: Option<u64>,
}

/// Writes `dir/tls/keys.psk` (`hearth:HEX`, mode 0600 in a 0700 directory) for QEMU's
/// `tls-creds-psk`, returning the directory to give QEMU.
pub(crate) fn write_psk(dir: &Path, key: &[u8; 32]) -> std::io::Result<PathBuf> {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls)?;
    std::fs::set_permissions(&tls, std::fs::Permissions::from_mode(0o700))?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let path = tls.join("keys.psk");
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::io::Write::write_all(&mut file, format!("{PSK_USER}:{hex}\n").as_bytes())?;
    Ok(tls)
}

/// A free TCP port on `ip`, for QEMU to listen on (it may be taken again before QEMU binds
/// it; the caller then fails, and the move is tried again later).
pub(crate) fn free_port(ip: IpAddr) -> std::io::Result<SocketAddr> {
    TcpListener::bind(SocketAddr::new(ip, 0))?.local_addr()
}

/// QEMU's inet address object for `addr`.
pub(crate) fn inet(addr: SocketAddr) -> Value {
    json!({ "host": addr.ip().to_string(), "port": addr.port().to_string() })
}

/// QEMU's migration URI for `addr` (brackets around IPv6).
fn tcp_uri(addr: SocketAddr) -> String {
    format!("tcp:{addr}")
}

fn unexpected(what: &str, value: &Value) -> ControlError {
    ControlError::Unexpected(format!("{what}: unexpected answer {value}"))
}

/// The node name of the root disk's top node.
pub(crate) async fn disk_node(qmp: &mut Qmp) -> Result<String, ControlError> {
    let blocks = qmp.execute("query-block", None).await?;
    blocks
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["device"] == "disk0")
        .and_then(|b| b["inserted"]["node-name"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| unexpected("query-block has no disk0", &blocks))
}

/// Runs a clean-up command whose failure only means there is nothing to clean.
async fn quietly(qmp: &mut Qmp, command: &str, args: Value) {
    if let Err(error) = qmp.execute(command, Some(args)).await {
        tracing::debug!(command, %error, "nothing to clean up");
    }
}

/// The state of the job `MIRROR`, if there is one.
async fn mirror_job(qmp: &mut Qmp) -> Result<Option<Progress>, ControlError> {
    let jobs = qmp.execute("query-jobs", None).await?;
    Ok(jobs
        .as_array()
        .into_iter()
        .flatten()
        .find(|j| j["id"] == MIRROR)
        .map(|j| Progress {
            status: j["status"].as_str().unwrap_or("").to_owned(),
            done: j["current-progress"].as_u64().unwrap_or(0),
            total: j["total-progress"].as_u64().unwrap_or(0),
            error: j["error"].as_str().map(str::to_owned),
            downtime_ms: None,
        }))
}

impl Driver {
    /// The target's half: a paused QEMU for `spec` in the VM's incoming directory, on a new
    /// overlay of this host's base image, exporting it over NBD and waiting for the RAM, both
    /// on `ip` under TLS with `key`. A disk on RBD is not copied: the QEMU opens the same
    /// image (its handle in the incoming directory) and waits for the RAM only. Whatever an
    /// earlier attempt left there is stopped and removed first (it was never the VM's
    /// disk). On failure nothing is left running.
    pub async fn start_incoming(
        &self,
        spec: &VmSpec,
        key: &[u8; 32],
        ip: IpAddr,
    ) -> Result<Listen, StartError> {
        self.drop_incoming(&spec.id).await?;
        let dir = crate::moving::fresh_incoming(self.root(), &spec.id)?;
        let shared = match &spec.disk {
            DiskSpec::Local => {
                make_overlay(spec, &dir.join("disk.qcow2")).await?;
                false
            }
            DiskSpec::Rbd { pool, .. } => {
                self.rbd_handle(spec, &dir, pool).await?;
                true
            }
        };
        std::fs::write(dir.join(HELD), b"incoming\n").map_err(io_error(&dir))?;
        let tls = write_psk(&dir, key).map_err(io_error(&dir))?;
        crate::driver::write_seed(spec, &dir).await?;
        let extra = [
            "-incoming".to_owned(),
            "defer".to_owned(),
            "-S".to_owned(),
            "-object".to_owned(),
            format!(
                "tls-creds-psk,id={TLS},endpoint=server,dir={}",
                tls.display().to_string().replace(',', ",,")
            ),
        ];
        self.launch_here(spec, &dir, &extra).await?;
        match listen_incoming(&dir, ip, !shared).await {
            Ok(listen) => Ok(listen),
            Err(error) => {
                let _ = self.drop_incoming(&spec.id).await;
                Err(StartError::Launch(format!(
                    "setting up the incoming QEMU: {error}"
                )))
            }
        }
    }

    /// Stops the QEMU in VM `id`'s incoming directory, if any, and removes the directory.
    pub async fn drop_incoming(&self, id: &str) -> Result<(), DiskError> {
        let dir = crate::moving::incoming_dir(self.root(), id)?;
        if let Some(pid) = self.incoming_pid(id) {
            if let Ok(mut qmp) = Qmp::connect(&dir.join("qmp.sock")).await {
                let _ = qmp.execute("quit", None).await;
            }
            if !self.wait_gone_pid(pid, Duration::from_secs(5)).await {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                if !self.wait_gone_pid(pid, Duration::from_secs(10)).await {
                    return Err(DiskError::Running(id.to_owned(), pid));
                }
            }
        }
        crate::moving::drop_incoming(self.root(), id)
    }

    async fn wait_gone_pid(&self, pid: u32, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while crate::driver::qemu_cmdline(pid).is_some() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// The target's incoming QEMU's migration state (`completed` once the whole VM is here).
    pub async fn incoming_status(&self, id: &str) -> Result<Progress, ControlError> {
        if self.incoming_pid(id).is_none() {
            return Err(ControlError::NotRunning(format!(
                "the incoming copy of {id}"
            )));
        }
        let dir = crate::moving::incoming_dir(self.root(), id)
            .map_err(|e| ControlError::Unexpected(e.to_string()))?;
        let mut qmp = Qmp::connect(&dir.join("qmp.sock")).await?;
        migration_progress(&mut qmp).await
    }

    /// The target's QEMU holds the whole VM: its NBD export and server go, and its disk is
    /// flushed to stable storage before the copy is adopted (a disk on RBD was never copied:
    /// the source's QEMU flushed it into Ceph when its migration completed).
    pub async fn finish_incoming(&self, id: &str) -> Result<(), ControlError> {
        let dir = crate::moving::incoming_dir(self.root(), id)
            .map_err(|e| ControlError::Unexpected(e.to_string()))?;
        let mut qmp = Qmp::connect(&dir.join("qmp.sock")).await?;
        quietly(&mut qmp, "block-export-del", json!({ "id": EXPORT })).await;
        quietly(&mut qmp, "nbd-server-stop", json!({})).await;
        // Both streams are in: the server's key file is needed no more.
        let _ = std::fs::remove_dir_all(dir.join("tls"));
        if dir.join(crate::rbd::HANDLE).is_file() {
            return Ok(());
        }
        let disk = dir.join("disk.qcow2");
        std::fs::File::open(&disk)
            .and_then(|f| f.sync_all())
            .map_err(io_error(&disk))?;
        Ok(())
    }

    /// The source's first step: marks the VM held, and gives its QEMU the TLS key `key` for
    /// the streams to the target.
    pub async fn hold_for_move(&self, id: &str, key: &[u8; 32]) -> Result<(), ControlError> {
        let dir = self.dir(id);
        let mut qmp = self.qmp(id).await?;
        std::fs::write(dir.join(HELD), b"source\n").map_err(io_error(&dir))?;
        let tls = write_psk(&dir, key).map_err(io_error(&dir))?;
        quietly(&mut qmp, "object-del", json!({ "id": TLS })).await;
        qmp.execute(
            "object-add",
            Some(json!({
                "qom-type": "tls-creds-psk", "id": TLS, "endpoint": "client",
                "dir": tls.display().to_string(), "username": PSK_USER,
            })),
        )
        .await?;
        // The client reads its key once, when the object is made: the file goes at once.
        let _ = std::fs::remove_dir_all(&tls);
        Ok(())
    }

    /// The source's copy of a local disk, after [`Driver::hold_for_move`]: mirrors it into
    /// the target's export at `nbd` under TLS, at most `speed` bytes/s (0: no limit).
    pub async fn start_mirror(
        &self,
        id: &str,
        nbd: SocketAddr,
        speed: u64,
    ) -> Result<(), ControlError> {
        let mut qmp = self.qmp(id).await?;
        let mut server = inet(nbd);
        server["type"] = json!("inet");
        qmp.execute(
            "blockdev-add",
            Some(json!({
                "driver": "nbd", "node-name": MIRROR, "server": server,
                "export": EXPORT_NAME, "tls-creds": TLS,
            })),
        )
        .await?;
        let node = disk_node(&mut qmp).await?;
        qmp.execute(
            "blockdev-mirror",
            Some(json!({
                "job-id": MIRROR, "device": node, "target": MIRROR, "sync": "top",
                "auto-dismiss": false, "speed": speed,
            })),
        )
        .await?;
        Ok(())
    }

    /// The mirror's state; `ready` once the copy has caught up with the guest's writes.
    pub async fn mirror_progress(&self, id: &str) -> Result<Progress, ControlError> {
        let mut qmp = self.qmp(id).await?;
        mirror_job(&mut qmp)
            .await?
            .ok_or_else(|| ControlError::Unexpected(format!("{id} has no mirror job")))
    }

    /// The source's second half: moves the RAM to the target at `to`, at most `speed`
    /// bytes/s (0: no limit), with QEMU's default most downtime.
    pub async fn start_migration(
        &self,
        id: &str,
        to: SocketAddr,
        speed: u64,
    ) -> Result<(), ControlError> {
        let mut qmp = self.qmp(id).await?;
        let mut parameters = json!({ "tls-creds": TLS, "downtime-limit": DOWNTIME_LIMIT_MS });
        if speed > 0 {
            parameters["max-bandwidth"] = json!(speed);
        }
        qmp.execute("migrate-set-parameters", Some(parameters))
            .await?;
        qmp.execute("migrate", Some(json!({ "uri": tcp_uri(to) })))
            .await?;
        Ok(())
    }

    /// The source's migration state (`completed`: the VM is paused here and whole there).
    pub async fn migration_progress(&self, id: &str) -> Result<Progress, ControlError> {
        let mut qmp = self.qmp(id).await?;
        migration_progress(&mut qmp).await
    }

    /// With the source paused after its migration: the mirror writes what is left and
    /// ends without switching the VM to its target, and its connection goes.
    pub async fn finish_mirror(&self, id: &str) -> Result<(), ControlError> {
        let mut qmp = self.qmp(id).await?;
        qmp.execute("block-job-cancel", Some(json!({ "device": MIRROR })))
            .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let job = loop {
            match mirror_job(&mut qmp).await? {
                Some(job) if job.status == "concluded" => break job,
                Some(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                other => {
                    return Err(ControlError::Unexpected(format!(
                        "the mirror of {id} did not finish: {other:?}"
                    )));
                }
            }
        };
        quietly(&mut qmp, "job-dismiss", json!({ "id": MIRROR })).await;
        quietly(&mut qmp, "blockdev-del", json!({ "node-name": MIRROR })).await;
        match job.error {
            Some(error) => Err(ControlError::Unexpected(format!(
                "the mirror of {id} failed: {error}"
            ))),
            None => Ok(()),
        }
    }

    /// Undoes what a live move left on VM `id`'s QEMU, at either end: the migration and
    /// mirror are cancelled, the NBD node, export and server and the TLS object removed, and
    /// a VM paused by the move runs again. Only for a VM that is to run here: the caller
    /// made sure the move is over and the VM's disk is this host's.
    pub async fn release(&self, id: &str) -> Result<(), ControlError> {
        let dir = self.dir(id);
        let mut qmp = self.qmp(id).await?;
        let migration = migration_progress(&mut qmp).await?;
        if matches!(
            migration.status.as_str(),
            "setup" | "active" | "device" | "pre-switchover" | "cancelling"
        ) {
            quietly(&mut qmp, "migrate_cancel", json!({})).await;
        }
        if let Some(job) = mirror_job(&mut qmp).await?
            && job.status != "concluded"
        {
            quietly(
                &mut qmp,
                "block-job-cancel",
                json!({ "device": MIRROR, "force": true }),
            )
            .await;
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline
                && mirror_job(&mut qmp)
                    .await?
                    .is_some_and(|j| j.status != "concluded")
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        quietly(&mut qmp, "job-dismiss", json!({ "id": MIRROR })).await;
        quietly(&mut qmp, "blockdev-del", json!({ "node-name": MIRROR })).await;
        quietly(&mut qmp, "block-export-del", json!({ "id": EXPORT })).await;
        quietly(&mut qmp, "nbd-server-stop", json!({})).await;
        quietly(&mut qmp, "object-del", json!({ "id": TLS })).await;
        let status = qmp.execute("query-status", None).await?;
        let status = status["status"].as_str().unwrap_or("");
        if matches!(status, "paused" | "postmigrate" | "finish-migrate") {
            // A source whose migration completed has its disk inactive; `cont` takes it
            // back. The caller made sure no other copy runs (the move was given up).
            qmp.execute("cont", None).await?;
        } else if status == "inmigrate" {
            return Err(ControlError::Unexpected(format!(
                "{id} is still waiting for an incoming migration"
            )));
        }
        let _ = std::fs::remove_dir_all(dir.join("tls"));
        let _ = std::fs::remove_file(dir.join(HELD));
        Ok(())
    }
}

/// `query-migrate` as a [`Progress`]: RAM transferred of RAM total.
async fn migration_progress(qmp: &mut Qmp) -> Result<Progress, ControlError> {
    let state = qmp.execute("query-migrate", None).await?;
    Ok(Progress {
        status: state["status"].as_str().unwrap_or("none").to_owned(),
        done: state["ram"]["transferred"].as_u64().unwrap_or(0),
        total: state["ram"]["total"].as_u64().unwrap_or(0),
        error: state["error-desc"].as_str().map(str::to_owned),
        downtime_ms: state["downtime"].as_u64(),
    })
}

/// On the target's fresh QEMU in `dir`: the NBD server and writable export of its disk
/// (when `export`: not for a disk on RBD), and the wait for the RAM, on free ports of `ip`.
async fn listen_incoming(dir: &Path, ip: IpAddr, export: bool) -> Result<Listen, ControlError> {
    let mut qmp = Qmp::connect(&dir.join("qmp.sock")).await?;
    let nbd = match export {
        true => Some(export_disk(&mut qmp, ip).await?),
        false => None,
    };
    qmp.execute("migrate-set-parameters", Some(json!({ "tls-creds": TLS })))
        .await?;
    let migrate = free_port(ip).map_err(|e| ControlError::Unexpected(format!("a port: {e}")))?;
    qmp.execute("migrate-incoming", Some(json!({ "uri": tcp_uri(migrate) })))
        .await?;
    Ok(Listen { nbd, migrate })
}

/// The NBD server, under TLS on a free port of `ip`, and the writable export of the disk.
async fn export_disk(qmp: &mut Qmp, ip: IpAddr) -> Result<SocketAddr, ControlError> {
    let node = disk_node(qmp).await?;
    let nbd = free_port(ip).map_err(|e| ControlError::Unexpected(format!("a port: {e}")))?;
    // `nbd-server-start` takes the legacy SocketAddress: `{type, data}`.
    let legacy = json!({ "type": "inet", "data": inet(nbd) });
    qmp.execute(
        "nbd-server-start",
        Some(json!({ "addr": legacy, "tls-creds": TLS })),
    )
    .await?;
    qmp.execute(
        "block-export-add",
        Some(json!({
            "type": "nbd", "id": EXPORT, "node-name": node, "name": EXPORT_NAME,
            "writable": true,
        })),
    )
    .await?;
    Ok(nbd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_is_private_and_in_qemus_format() {
        let dir = tempfile::tempdir().unwrap();
        let tls = write_psk(dir.path(), &[0xab; 32]).unwrap();
        let path = tls.join("keys.psk");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("hearth:{}\n", "ab".repeat(32)));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mode = std::fs::metadata(&tls).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // A second move writes a new key over the old one.
        write_psk(dir.path(), &[0xcd; 32]).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("cdcd"));
    }

    #[test]
    fn addresses_are_spelled_for_qemu() {
        let v4: SocketAddr = "127.0.0.2:4000".parse().unwrap();
        let v6: SocketAddr = "[::1]:4001".parse().unwrap();
        assert_eq!(tcp_uri(v4), "tcp:127.0.0.2:4000");
        assert_eq!(tcp_uri(v6), "tcp:[::1]:4001");
        assert_eq!(inet(v6), json!({"host": "::1", "port": "4001"}));
    }
}
