//! A VM's synchronous second disk copy with QEMU's own machinery (`docs/replicas.md`): the
//! replica host runs `qemu-storage-daemon` exporting an overlay of its own base image over
//! NBD under TLS-PSK (`ID.replica/`; a `.` is not valid in an id, so it is never observed as
//! a VM); the disk's home mirrors the VM's disk into it with `blockdev-mirror` in
//! `copy-mode=write-blocking`, so once the mirror is ready a guest write completes only when
//! both copies hold it. The mirror lives as long as that QEMU: the file [`MIRRORING`] beside
//! the disk names the replica it was set up for, so a QEMU that lost it is told apart from
//! one that never had it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hearth_types::compute::ObservedReplica;
use serde_json::{Value, json};

use crate::driver::{Driver, VmSpec, make_overlay};
use crate::error::{ControlError, DiskError, ObserveError, StartError, io_error};
use crate::files::{read_present, remove_vm_dir, valid_id};
use crate::live::{inet, write_psk};
use crate::qmp::Qmp;

/// The file beside a VM's disk naming the replica (its `since`) its QEMU mirrors into.
pub const MIRRORING: &str = "replica";
/// The file in a replica's directory: its `since` and the generation of the disk it copies.
const REPLICA_FILE: &str = "replica";
/// QEMU ids of the replica's TLS object, NBD node and mirror job on the disk's home.
const TLS: &str = "hearth-replica-tls";
const NODE: &str = "hearth-replica";
pub(crate) const JOB: &str = "hearth-replica";
/// The NBD export name on the replica host.
const EXPORT_NAME: &str = "disk0";
/// The node name of the copy in the replica host's `qemu-storage-daemon`.
pub(crate) const DAEMON_NODE: &str = "disk0";
/// How long `qemu-storage-daemon` may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The mirror into a replica, as QEMU reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mirror {
    /// QEMU's job status (`running`, `ready`, `concluded`, ...).
    pub status: String,
    pub done: u64,
    pub total: u64,
    /// Ready, and every write since went to both copies (QEMU's `actively-synced`).
    pub in_sync: bool,
    /// QEMU's reason, when it failed.
    pub error: Option<String>,
}

/// Where a replica of VM `id` lives on its host.
pub fn replica_dir(root: &Path, id: &str) -> Result<PathBuf, DiskError> {
    if !valid_id(id) {
        return Err(DiskError::BadId(id.to_owned()));
    }
    Ok(root.join(format!("{id}.replica")))
}

/// Escapes a value for QEMU's `key=value,...` option syntax.
fn opt(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// The arguments of the `qemu-storage-daemon` exporting the copy in `dir` on `nbd`.
fn daemon_args(dir: &Path, nbd: SocketAddr) -> Vec<String> {
    [
        "--daemonize".to_owned(),
        "--pidfile".to_owned(),
        dir.join("qsd.pid").display().to_string(),
        "--object".to_owned(),
        format!(
            "tls-creds-psk,id=hearth-tls,endpoint=server,dir={}",
            opt(&dir.join("tls"))
        ),
        "--blockdev".to_owned(),
        format!(
            "driver=file,node-name=file0,filename={}",
            opt(&dir.join("disk.qcow2"))
        ),
        "--blockdev".to_owned(),
        format!("driver=qcow2,node-name={DAEMON_NODE},file=file0"),
        "--nbd-server".to_owned(),
        format!(
            "addr.type=inet,addr.host={},addr.port={},tls-creds=hearth-tls",
            nbd.ip(),
            nbd.port()
        ),
        "--export".to_owned(),
        // Writethrough: a write is flushed to this host's disk before the home hears it is
        // done, so a write the guest saw complete survives this host losing power too.
        format!(
            "type=nbd,id=hearth-export,node-name={DAEMON_NODE},name={EXPORT_NAME},writable=on,writethrough=on"
        ),
        "--chardev".to_owned(),
        format!(
            "socket,id=qmp,path={},server=on,wait=off",
            opt(&dir.join("qmp.sock"))
        ),
        "--monitor".to_owned(),
        "chardev=qmp".to_owned(),
    ]
    .to_vec()
}

/// The pid in `dir/qsd.pid`, if it is a live `qemu-storage-daemon` serving `dir`.
fn daemon_pid(dir: &Path) -> std::io::Result<Option<u32>> {
    let Some(text) = read_present(&dir.join("qsd.pid"))? else {
        return Ok(None);
    };
    let Some(pid) = String::from_utf8_lossy(&text).trim().parse::<u32>().ok() else {
        return Ok(None);
    };
    let Some(args) = crate::driver::cmdline_of(pid, |p| p == "qemu-storage-daemon")? else {
        return Ok(None);
    };
    let prefix = format!("{}/", dir.display());
    Ok(args.iter().any(|a| a.contains(&prefix)).then_some(pid))
}

/// The `since` and generation of the replica in `dir`, if its daemon is alive.
pub(crate) fn live_replica(dir: &Path) -> std::io::Result<Option<(u64, u64)>> {
    Ok(match daemon_pid(dir)? {
        Some(_) => read_replica_file(dir),
        None => None,
    })
}

/// `since generation` from a replica directory.
fn read_replica_file(dir: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(dir.join(REPLICA_FILE)).ok()?;
    let mut words = text.split_whitespace().map(str::parse::<u64>);
    Some((words.next()?.ok()?, words.next()?.ok()?))
}

async fn stop_pid(pid: u32, dir: &Path) -> bool {
    let pid_of = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(pid_of, nix::sys::signal::Signal::SIGTERM);
    let gone = |within: Duration| async move {
        let deadline = Instant::now() + within;
        while daemon_pid(dir).ok().flatten().is_some() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    };
    if gone(Duration::from_secs(10)).await {
        return true;
    }
    let _ = nix::sys::signal::kill(pid_of, nix::sys::signal::Signal::SIGKILL);
    gone(Duration::from_secs(10)).await
}

/// The mirror job into the replica, from `query-block-jobs` (which has QEMU's
/// `actively-synced`).
async fn mirror_job(qmp: &mut Qmp) -> Result<Option<Mirror>, ControlError> {
    let jobs = qmp.execute("query-block-jobs", None).await?;
    let job = jobs
        .as_array()
        .into_iter()
        .flatten()
        .find(|j| j["device"] == JOB)
        .map(|j: &Value| Mirror {
            status: j["status"].as_str().unwrap_or("").to_owned(),
            done: j["offset"].as_u64().unwrap_or(0),
            total: j["len"].as_u64().unwrap_or(0),
            in_sync: j["ready"] == true && j["actively-synced"] == true,
            error: j["error"].as_str().map(str::to_owned),
        });
    Ok(job)
}

async fn quietly(qmp: &mut Qmp, command: &str, args: Value) {
    if let Err(error) = qmp.execute(command, Some(args)).await {
        tracing::debug!(command, %error, "nothing to clean up");
    }
}

impl Driver {
    /// The replica host's half: a fresh copy for replica `since` of VM `spec.id`'s disk of
    /// `generation` (an empty overlay of this host's base image), exported over NBD on a free
    /// port of `ip` under TLS with `key`. What an earlier replica left here is removed first:
    /// it was never the VM's disk. On failure nothing is left running.
    pub async fn export_replica(
        &self,
        spec: &VmSpec,
        key: &[u8; 32],
        ip: IpAddr,
        since: u64,
    ) -> Result<SocketAddr, StartError> {
        self.drop_replica(&spec.id).await?;
        let dir = replica_dir(self.root(), &spec.id)?;
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        make_overlay(spec, &dir.join("disk.qcow2")).await?;
        let file = format!("{since} {}\n", spec.generation);
        std::fs::write(dir.join(REPLICA_FILE), file).map_err(io_error(&dir))?;
        write_psk(&dir, key).map_err(io_error(&dir))?;
        let nbd = crate::live::free_port(ip)
            .map_err(|e| StartError::Launch(format!("a port for the replica: {e}")))?;
        let log_path = dir.join("qsd.log");
        let log = std::fs::File::create(&log_path).map_err(io_error(&log_path))?;
        let unit = format!("{}-replica", spec.id);
        let (program, args) =
            self.launcher()
                .command("qemu-storage-daemon", &daemon_args(&dir, nbd), &unit);
        let status = tokio::process::Command::new(&program)
            .args(&args)
            .current_dir(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(io_error(&log_path))?)
            .stderr(log)
            .status()
            .await;
        let said = || {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let failed = match status {
            Err(e) => Some(format!(
                "cannot run qemu-storage-daemon (apt-get install qemu-utils): {e}"
            )),
            Ok(s) if !s.success() => Some(format!("qemu-storage-daemon failed ({s}): {}", said())),
            Ok(_) => None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let up = failed.is_none()
            && loop {
                if daemon_pid(&dir).ok().flatten().is_some() {
                    break true;
                }
                if Instant::now() > deadline {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
        if !up {
            let _ = self.drop_replica(&spec.id).await;
            return Err(StartError::Launch(failed.unwrap_or_else(|| {
                format!("qemu-storage-daemon did not come up: {}", said())
            })));
        }
        Ok(nbd)
    }

    /// Every replica copy on this host, with its daemon if alive.
    pub fn replicas(&self) -> Result<Vec<ObservedReplica>, ObserveError> {
        let root = self.root();
        let entries = match std::fs::read_dir(root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(root)(e).into()),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error(root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(vm) = name.strip_suffix(".replica").filter(|id| valid_id(id)) else {
                continue;
            };
            let dir = entry.path();
            let pid = daemon_pid(&dir).map_err(io_error(&dir))?;
            let (since, generation) = read_replica_file(&dir).unwrap_or((0, 0));
            found.push(ObservedReplica {
                vm: vm.to_owned(),
                since,
                generation,
                pid,
            });
        }
        found.sort_by(|a, b| a.vm.cmp(&b.vm));
        Ok(found)
    }

    /// The clients (the disk's home's QEMU) connected to a replica export at `nbd`: the
    /// remote ends of the established TCP connections on that local address. A connection
    /// whose peer vanished without a word (a cut link) stays listed: nothing is sent on it.
    pub fn replica_clients(&self, nbd: SocketAddr) -> Vec<SocketAddr> {
        let local = proc_net_address(nbd);
        let mut clients = Vec::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let text = std::fs::read_to_string(table).unwrap_or_default();
            for line in text.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // `sl local rem st ...`; state 01 is ESTABLISHED.
                if fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"01") {
                    clients.extend(fields.get(2).and_then(|rem| parse_proc_net_address(rem)));
                }
            }
        }
        clients
    }

    /// The replica host takes replica `since` of VM `id` as the VM's disk of `generation`
    /// (the cluster restarted the VM here from it): the daemon stops (a clean stop writes
    /// out what it held), the generation is written beside the disk, and the directory gets
    /// the VM's name in one rename, never over one already there.
    pub async fn adopt_replica(
        &self,
        id: &str,
        since: u64,
        generation: u64,
    ) -> Result<(), DiskError> {
        let dir = replica_dir(self.root(), id)?;
        if read_replica_file(&dir).map(|(s, _)| s) != Some(since) {
            return Err(DiskError::NoDisk(format!("{id} (replica {since})")));
        }
        self.stop_replica_daemon(id, &dir).await?;
        for leftover in ["qsd.pid", "qmp.sock", REPLICA_FILE] {
            let _ = std::fs::remove_file(dir.join(leftover));
        }
        let _ = std::fs::remove_dir_all(dir.join("tls"));
        let disk = dir.join("disk.qcow2");
        std::fs::File::open(&disk)
            .and_then(|f| f.sync_all())
            .map_err(io_error(&disk))?;
        crate::disk::write_generation(&dir, generation)?;
        let target = self.dir(id);
        if target.exists() {
            return Err(DiskError::Exists(id.to_owned()));
        }
        std::fs::rename(&dir, &target).map_err(io_error(&target))?;
        Ok(())
    }

    /// Stops the daemon exporting VM `id`'s replica copy, if any, and removes the copy.
    pub async fn drop_replica(&self, id: &str) -> Result<(), DiskError> {
        let dir = replica_dir(self.root(), id)?;
        self.stop_replica_daemon(id, &dir).await?;
        Ok(remove_vm_dir(&dir)?)
    }

    /// Stops the daemon, then moves the replica copy to the archive (a copy of a disk an
    /// admin gave up, which is never deleted unasked).
    pub async fn archive_replica(&self, id: &str) -> Result<PathBuf, DiskError> {
        let dir = replica_dir(self.root(), id)?;
        self.stop_replica_daemon(id, &dir).await?;
        crate::disk::archive_dir(self.root(), &dir, &format!("{id}-replica"))
    }

    async fn stop_replica_daemon(&self, id: &str, dir: &Path) -> Result<(), DiskError> {
        if let Some(pid) = daemon_pid(dir).map_err(io_error(dir))?
            && !stop_pid(pid, dir).await
        {
            return Err(DiskError::Running(id.to_owned(), pid));
        }
        Ok(())
    }

    /// The disk's home: mirrors VM `id`'s disk into replica `since` at `nbd` under TLS with
    /// `key`, every guest write to both copies (`copy-mode=write-blocking`). The mark
    /// [`MIRRORING`] goes down first, so a QEMU that dies meanwhile is seen to have lost it.
    pub async fn start_replica_mirror(
        &self,
        id: &str,
        key: &[u8; 32],
        nbd: SocketAddr,
        since: u64,
    ) -> Result<(), ControlError> {
        let dir = self.dir(id);
        let mut qmp = self.qmp(id).await?;
        std::fs::write(dir.join(MIRRORING), format!("{since}\n")).map_err(io_error(&dir))?;
        let tls = write_psk(&dir.join("replica-tls"), key).map_err(io_error(&dir))?;
        quietly(&mut qmp, "object-del", json!({ "id": TLS })).await;
        let added = qmp
            .execute(
                "object-add",
                Some(json!({
                    "qom-type": "tls-creds-psk", "id": TLS, "endpoint": "client",
                    "dir": tls.display().to_string(), "username": crate::live::PSK_USER,
                })),
            )
            .await;
        // The client reads its key once, when the object is made: the file goes at once.
        let _ = std::fs::remove_dir_all(dir.join("replica-tls"));
        added?;
        let mut server = inet(nbd);
        server["type"] = json!("inet");
        qmp.execute(
            "blockdev-add",
            Some(json!({
                "driver": "nbd", "node-name": NODE, "server": server,
                "export": EXPORT_NAME, "tls-creds": TLS,
            })),
        )
        .await?;
        let node = crate::live::disk_node(&mut qmp).await?;
        qmp.execute(
            "blockdev-mirror",
            Some(json!({
                "job-id": JOB, "device": node, "target": NODE, "sync": "top",
                "copy-mode": "write-blocking", "auto-dismiss": false,
                "auto-finalize": true,
            })),
        )
        .await?;
        Ok(())
    }

    /// The mirror into VM `id`'s replica, if its QEMU has one.
    pub async fn replica_mirror(&self, id: &str) -> Result<Option<Mirror>, ControlError> {
        let mut qmp = self.qmp(id).await?;
        mirror_job(&mut qmp).await
    }

    /// Ends the mirror into VM `id`'s replica (the copy is not switched to) and removes its
    /// NBD node, TLS object and mark. A VM that does not run only loses the mark.
    pub async fn stop_replica_mirror(&self, id: &str) -> Result<(), ControlError> {
        let dir = self.dir(id);
        if self.pid(id).is_some() {
            let mut qmp = self.qmp(id).await?;
            if mirror_job(&mut qmp)
                .await?
                .is_some_and(|j| j.status != "concluded")
            {
                quietly(
                    &mut qmp,
                    "block-job-cancel",
                    json!({ "device": JOB, "force": true }),
                )
                .await;
                let deadline = Instant::now() + Duration::from_secs(30);
                while mirror_job(&mut qmp)
                    .await?
                    .is_some_and(|j| j.status != "concluded")
                {
                    if Instant::now() > deadline {
                        return Err(ControlError::Unexpected(format!(
                            "the mirror of {id} into its replica did not end"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            quietly(&mut qmp, "job-dismiss", json!({ "id": JOB })).await;
            quietly(&mut qmp, "blockdev-del", json!({ "node-name": NODE })).await;
            quietly(&mut qmp, "object-del", json!({ "id": TLS })).await;
        }
        let _ = std::fs::remove_file(dir.join(MIRRORING));
        Ok(())
    }
}

/// `addr` as `/proc/net/tcp{,6}` spells a local address: each 32-bit word of the address in
/// host (little-endian) order, in hex, then the port.
fn proc_net_address(addr: SocketAddr) -> String {
    let words: Vec<u32> = match addr.ip() {
        IpAddr::V4(ip) => vec![u32::from_le_bytes(ip.octets())],
        IpAddr::V6(ip) => ip
            .octets()
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect(),
    };
    let hex: String = words.iter().map(|w| format!("{w:08X}")).collect();
    format!("{hex}:{:04X}", addr.port())
}

/// The address `proc_net_address` spells.
fn parse_proc_net_address(text: &str) -> Option<SocketAddr> {
    let (hex, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_le_bytes())
    };
    let ip = match hex.len() {
        8 => IpAddr::from(word(0)?),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::from(octets)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The replica VM `dir`'s QEMU mirrors into, from the mark beside its disk.
pub(crate) fn mirroring(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join(MIRRORING))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_exports_one_writable_node_under_tls() {
        let args = daemon_args(
            Path::new("/v/vm-1.replica"),
            "127.0.0.2:4000".parse().unwrap(),
        );
        let text = args.join(" ");
        assert!(
            text.contains("--daemonize --pidfile /v/vm-1.replica/qsd.pid"),
            "{text}"
        );
        assert!(text.contains("addr.host=127.0.0.2,addr.port=4000,tls-creds=hearth-tls"));
        assert!(text.contains("name=disk0,writable=on,writethrough=on"));
        assert!(text.contains("endpoint=server,dir=/v/vm-1.replica/tls"));
        // Commas in paths are doubled, as QEMU's option syntax wants.
        assert_eq!(opt(Path::new("/a,b")), "/a,,b");
    }

    #[test]
    fn local_addresses_are_spelled_as_the_kernel_lists_them() {
        assert_eq!(
            proc_net_address("127.0.0.1:8080".parse().unwrap()),
            "0100007F:1F90"
        );
        assert_eq!(
            proc_net_address("[::1]:8080".parse().unwrap()),
            "00000000000000000000000001000000:1F90"
        );
        // This process's own listening socket is no established connection.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let driver = Driver::new(
            std::env::temp_dir(),
            crate::accel::Accel::Tcg,
            crate::driver::Network::User,
        );
        assert_eq!(driver.replica_clients(addr), vec![]);
        let client = std::net::TcpStream::connect(addr).unwrap();
        let _served = listener.accept().unwrap();
        assert_eq!(
            driver.replica_clients(addr),
            vec![client.local_addr().unwrap()]
        );
        for text in ["127.0.0.1:8080", "[::1]:8080", "[2001:db8::7]:1"] {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(parse_proc_net_address(&proc_net_address(addr)), Some(addr));
        }
        assert_eq!(parse_proc_net_address("0100007F"), None);
    }

    #[test]
    fn a_replica_directory_reads_back_its_replica_and_generation() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_replica_file(dir.path()), None);
        std::fs::write(dir.path().join(REPLICA_FILE), "42 3\n").unwrap();
        assert_eq!(read_replica_file(dir.path()), Some((42, 3)));
        let vm = tempfile::tempdir().unwrap();
        assert_eq!(mirroring(vm.path()), None);
        std::fs::write(vm.path().join(MIRRORING), "42\n").unwrap();
        assert_eq!(mirroring(vm.path()), Some(42));
    }
}
