//! `qemu-storage-daemon` processes for the block benchmarks, driven over a small synchronous
//! QMP client, and the pieces hearth's NBD mirrors use: a TLS-PSK key file, a free loopback
//! port, the replica host's export arguments (as `hearth-qemu`'s `replica.rs` builds them) and
//! `qemu-img`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::procs::{ProcessGuard, poll_until};

/// The PSK identity hearth's QEMU and storage daemons use.
pub const PSK_USER: &str = "hearth";
/// The NBD export name hearth gives a disk on the receiving end.
pub const EXPORT_NAME: &str = "disk0";
/// How long one QMP exchange may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(30);

/// A QMP session over a unix socket: one command at a time; the events QEMU sends meanwhile
/// are kept for [`Qmp::wait_event`].
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: VecDeque<Value>,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capability negotiation mode.
    pub fn connect(path: &Path) -> Result<Qmp> {
        let stream =
            UnixStream::connect(path).with_context(|| format!("connect {}", path.display()))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            events: VecDeque::new(),
        };
        let greeting = qmp.read_message(QMP_TIMEOUT)?;
        if greeting.get("QMP").is_none() {
            bail!("expected QMP's greeting, got {greeting}");
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let request = json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{request}").context("QMP write")?;
        loop {
            let message = self.read_message(QMP_TIMEOUT)?;
            if message.get("event").is_some() {
                self.events.push_back(message);
            } else if let Some(value) = message.get("return") {
                return Ok(value.clone());
            } else if let Some(error) = message.get("error") {
                bail!("QMP {command}: {}", error["desc"]);
            } else {
                bail!("QMP {command}: unexpected {message}");
            }
        }
    }

    /// Drops the events received so far (those of an earlier job with the same id).
    pub fn forget_events(&mut self) {
        self.events.clear();
    }

    /// Waits for the first event (queued or new) for which `accept` returns a value.
    pub fn wait_event<T>(
        &mut self,
        within: Duration,
        mut accept: impl FnMut(&Value) -> Option<Result<T>>,
    ) -> Result<T> {
        while let Some(event) = self.events.pop_front() {
            if let Some(found) = accept(&event) {
                return found;
            }
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no awaited QMP event within {within:?}");
            }
            let message = self.read_message(left)?;
            if message.get("event").is_some()
                && let Some(found) = accept(&message)
            {
                return found;
            }
        }
    }

    fn read_message(&mut self, within: Duration) -> Result<Value> {
        self.reader.get_ref().set_read_timeout(Some(within))?;
        let mut line = String::new();
        let read = (&mut self.reader)
            .take(4 << 20)
            .read_line(&mut line)
            .context("QMP read")?;
        if read == 0 {
            bail!("QMP: the daemon closed the connection");
        }
        serde_json::from_str(line.trim_end()).with_context(|| format!("QMP: not JSON: {line}"))
    }
}

/// A `qemu-storage-daemon` this benchmark started (killed by PID when dropped), with its QMP
/// session.
pub struct StorageDaemon {
    process: ProcessGuard,
    pub qmp: Qmp,
}

impl StorageDaemon {
    /// Starts `qemu-storage-daemon ARGS` with a QMP monitor on `dir/NAME.qmp` and its output
    /// in `dir/NAME.log`, and connects once the monitor is up.
    pub fn start(name: &str, dir: &Path, args: &[String]) -> Result<StorageDaemon> {
        let socket = dir.join(format!("{name}.qmp"));
        // A socket file left by an earlier daemon of that name would only refuse connections.
        let _ = std::fs::remove_file(&socket);
        let mut command = Command::new("qemu-storage-daemon");
        command.args(args).args([
            "--chardev".to_owned(),
            format!("socket,id=qmp,path={},server=on,wait=off", opt(&socket)),
            "--monitor".to_owned(),
            "chardev=qmp".to_owned(),
        ]);
        let log = dir.join(format!("{name}.log"));
        let process = ProcessGuard::spawn(name, command, Some(&log))?;
        let qmp = poll_until(
            "the storage daemon's QMP socket",
            Duration::from_secs(20),
            Duration::from_millis(5),
            || {
                if exited(process.pid()) {
                    let said = std::fs::read_to_string(&log).unwrap_or_default();
                    // Not worth polling on: fail at once with what it said.
                    return Ok(Err(anyhow::anyhow!("{name} exited early: {}", said.trim())));
                }
                Ok(Ok(Qmp::connect(&socket)?))
            },
        )??;
        Ok(StorageDaemon { process, qmp })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// CPU time (user + system) the daemon has used so far.
    pub fn cpu_time(&self) -> Result<Duration> {
        crate::procs::cpu_time(self.pid())
    }

    /// Asks the daemon to quit (it closes its images cleanly) and waits until it has exited.
    /// It is reaped when the guard drops: until then its PID cannot be reused, so the guard
    /// never signals another process.
    pub fn stop(mut self) -> Result<()> {
        // The answer may not come back before the daemon goes.
        let _ = self.qmp.execute("quit", json!({}));
        let pid = self.pid();
        poll_until(
            "the storage daemon to exit",
            Duration::from_secs(20),
            Duration::from_millis(5),
            || {
                if exited(pid) {
                    Ok(())
                } else {
                    bail!("still running")
                }
            },
        )
    }
}

/// Whether the child `pid` has exited (a zombie, not reaped yet) or is gone.
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the command name's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// Escapes a value for QEMU's `key=value,...` option syntax.
pub fn opt(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// Random bytes from the kernel.
pub fn random_bytes(n_bytes: usize) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; n_bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Writes `dir/keys.psk` (`hearth:HEX`, a fresh random 32-byte key, mode 0600 in a 0700
/// directory), the file both ends' `tls-creds-psk` read, as hearth writes it.
pub fn write_psk(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let hex: String = random_bytes(32)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("keys.psk"))?;
    writeln!(file, "{PSK_USER}:{hex}")?;
    Ok(dir.to_owned())
}

/// A free TCP port on 127.0.0.1 (it may be taken again before the daemon binds it: then
/// the daemon fails to start, and the benchmark with it).
pub fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// What the receiving end of a mirror looks like.
#[derive(Debug, Clone, Copy)]
pub struct Export {
    /// TLS-PSK on the NBD server, as hearth always has it.
    pub tls: bool,
    /// `writethrough=on`: each write is flushed before it is acknowledged (a replica).
    pub writethrough: bool,
}

/// The `tls-creds-psk` object `hearth-tls` for `endpoint` with the key in `dir`; hearth sets
/// no `priority` (GnuTLS's default then picks the cipher).
fn tls_object(endpoint: &str, dir: &Path, priority: Option<&str>) -> String {
    let mut object = format!(
        "tls-creds-psk,id=hearth-tls,endpoint={endpoint},dir={}",
        opt(dir)
    );
    if endpoint == "client" {
        object.push_str(&format!(",username={PSK_USER}"));
    }
    if let Some(priority) = priority {
        object.push_str(&format!(",priority={priority}"));
    }
    object
}

/// The arguments of the daemon that receives a mirror: `image` (qcow2) exported writable as
/// [`EXPORT_NAME`] over NBD on `nbd`, the TLS key read from `tls` (hearth's replica daemon,
/// `hearth-qemu/src/replica.rs`, with the export's `writethrough` as asked), and GnuTLS's
/// `priority` when given.
pub fn export_args(
    image: &Path,
    tls: &Path,
    nbd: SocketAddr,
    export: Export,
    priority: Option<&str>,
) -> Vec<String> {
    let mut args = vec![
        "--object".to_owned(),
        tls_object("server", tls, priority),
        "--blockdev".to_owned(),
        format!("driver=file,node-name=file0,filename={}", opt(image)),
        "--blockdev".to_owned(),
        "driver=qcow2,node-name=disk0,file=file0".to_owned(),
        "--nbd-server".to_owned(),
        format!(
            "addr.type=inet,addr.host={},addr.port={}",
            nbd.ip(),
            nbd.port()
        ),
    ];
    if export.tls {
        args[7].push_str(",tls-creds=hearth-tls");
    }
    let writethrough = if export.writethrough { "on" } else { "off" };
    args.extend([
        "--export".to_owned(),
        format!(
            "type=nbd,id=hearth-export,node-name=disk0,name={EXPORT_NAME},writable=on,writethrough={writethrough}"
        ),
    ]);
    args
}

/// The arguments of the sending end: `image` (qcow2) as the node `disk0`, and the client half
/// of the TLS key in `tls` as the object `hearth-tls`, with GnuTLS's `priority` when given.
pub fn source_args(image: &Path, tls: &Path, priority: Option<&str>) -> Vec<String> {
    vec![
        "--object".to_owned(),
        tls_object("client", tls, priority),
        "--blockdev".to_owned(),
        format!("driver=file,node-name=file0,filename={}", opt(image)),
        "--blockdev".to_owned(),
        "driver=qcow2,node-name=disk0,file=file0".to_owned(),
    ]
}

/// Adds the NBD client node `node` for the export at `nbd` (under TLS when `tls`), as hearth's
/// `start_mirror` and `start_replica_mirror` do.
pub fn add_nbd_node(qmp: &mut Qmp, node: &str, nbd: SocketAddr, tls: bool) -> Result<()> {
    let server = json!({
        "type": "inet", "host": nbd.ip().to_string(), "port": nbd.port().to_string(),
    });
    let mut args = json!({
        "driver": "nbd", "node-name": node, "server": server, "export": EXPORT_NAME,
    });
    if tls {
        args["tls-creds"] = json!("hearth-tls");
    }
    qmp.execute("blockdev-add", args)?;
    Ok(())
}

/// Waits for the mirror job `job` to report `ready` (`BLOCK_JOB_READY`); fails when it ends
/// first.
pub fn wait_ready(qmp: &mut Qmp, job: &str, within: Duration) -> Result<()> {
    qmp.wait_event(within, |event| {
        let for_job = event["data"]["device"] == job || event["data"]["id"] == job;
        match event["event"].as_str() {
            Some("BLOCK_JOB_READY") if for_job => Some(Ok(())),
            Some("BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED") if for_job => Some(Err(
                anyhow::anyhow!("the mirror ended before ready: {event}"),
            )),
            _ => None,
        }
    })
}

/// Cancels the ready mirror job `job` without switching to its target, waits until it has
/// ended, and removes it and the target node `node`.
pub fn end_mirror(qmp: &mut Qmp, job: &str, node: &str) -> Result<()> {
    qmp.execute("block-job-cancel", json!({ "device": job }))?;
    qmp.wait_event(Duration::from_secs(60), |event| {
        let concluded = event["event"] == "JOB_STATUS_CHANGE"
            && event["data"]["id"] == job
            && event["data"]["status"] == "concluded";
        concluded.then_some(Ok(()))
    })?;
    qmp.execute("job-dismiss", json!({ "id": job }))?;
    qmp.execute("blockdev-del", json!({ "node-name": node }))?;
    Ok(())
}

/// Runs `qemu-img ARGS` and fails with its output when it fails.
pub fn qemu_img(args: &[&str]) -> Result<String> {
    let output = Command::new("qemu-img")
        .args(args)
        .output()
        .context("run qemu-img (apt-get install qemu-utils)")?;
    if !output.status.success() {
        bail!(
            "qemu-img {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Creates an empty qcow2 image of `size` bytes.
pub fn create_qcow2(path: &Path, size: u64) -> Result<()> {
    let path = path.display().to_string();
    qemu_img(&["create", "-q", "-f", "qcow2", &path, &size.to_string()])?;
    Ok(())
}

/// The bytes of `image` that hold data (`qemu-img map`: data, not zero).
pub fn allocated_bytes(image: &Path) -> Result<u64> {
    let map = qemu_img(&["map", "--output=json", &image.display().to_string()])?;
    let extents: Vec<Value> = serde_json::from_str(&map).context("qemu-img map output")?;
    Ok(extents
        .iter()
        .filter(|e| e["data"] == true && e["zero"] == false)
        .filter_map(|e| e["length"].as_u64())
        .sum())
}

/// Fails unless `a` and `b` hold the same guest-visible data (`qemu-img compare`).
pub fn same_content(a: &Path, b: &Path) -> Result<()> {
    qemu_img(&[
        "compare",
        "-q",
        &a.display().to_string(),
        &b.display().to_string(),
    ])
    .map(|_| ())
    .context("the copy differs from the source")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_export_is_hearths_replica_export() {
        let nbd: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let args = export_args(
            Path::new("/t/d.qcow2"),
            Path::new("/t/tls"),
            nbd,
            Export {
                tls: true,
                writethrough: true,
            },
            None,
        )
        .join(" ");
        assert!(args.contains("tls-creds-psk,id=hearth-tls,endpoint=server,dir=/t/tls"));
        assert!(args.contains("addr.host=127.0.0.1,addr.port=4000,tls-creds=hearth-tls"));
        assert!(args.contains("name=disk0,writable=on,writethrough=on"));
        let plain = export_args(
            Path::new("/t/d.qcow2"),
            Path::new("/t/tls"),
            nbd,
            Export {
                tls: false,
                writethrough: false,
            },
            Some("NORMAL"),
        )
        .join(" ");
        assert!(plain.contains("addr.port=4000 --export"), "{plain}");
        assert!(plain.contains("writethrough=off"));
        assert!(plain.contains("endpoint=server,dir=/t/tls,priority=NORMAL "));
        let source = source_args(Path::new("/t/s.qcow2"), Path::new("/t/tls"), None).join(" ");
        assert!(source.contains("endpoint=client,dir=/t/tls,username=hearth "));
    }
}
