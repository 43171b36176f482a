//! The driver: one directory per VM under a root (disk overlay, seed, console log, QMP socket,
//! pidfile), `qemu-system-<arch>` started in a process group of its own so it outlives the
//! agent, sandboxed (no new processes, no new privileges), control over
//! QMP, and observation from the pidfiles and `/proc` so a restarted agent adopts what runs.
//!
//! A VM's directory `ROOT/ID/` holds:
//! - `disk.qcow2`: the overlay on the base image, made only by [`Driver::create_disk`] and
//!   removed only by [`Driver::delete`]; `disk.gen`: its generation;
//! - `seed.iso` and `seed/`: the NoCloud seed, rewritten on every start;
//! - `console.log`: the serial console, appended across boots;
//! - `console.sock`: the serial console's socket while QEMU runs (one client at a time: the
//!   host's console hub, which the interactive consoles attach to); QEMU logs what the
//!   guest writes to `console.log` whether a client is connected or not;
//! - `qmp.sock`, `qemu.pid`, `qemu.log` (QEMU's own messages while it runs).

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hearth_types::compute::{Arch, IoLimits, ObservedVm};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::accel::Accel;
use crate::error::io_error;
use crate::files::{read_present, remove_vm_dir, valid_id, vm_dirs};
use crate::qmp::Qmp;
use crate::seed::Seed;

pub use crate::error::{ControlError, DiskError, IoAt, ObserveError, StartError};

/// The QOM path of the root disk's block backend, as `-device ... id=virtio-disk0` makes it.
pub const DISK_QOM: &str = "/machine/peripheral/virtio-disk0/virtio-backend";
/// A unix socket path longer than this does not fit in `sockaddr_un`.
const MAX_SOCKET_PATH: usize = 107;
/// How often the ACPI power button is pressed again during a graceful shutdown.
const POWER_BUTTON_EVERY: Duration = Duration::from_secs(3);
/// How long a started QEMU has to write its pidfile and open its QMP socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// QEMU's user-mode network, restricted: the guest reaches nothing. For tests and demos.
    User,
    /// A tap of its own on this host bridge, made by the agent (see [`crate::tap`]).
    Bridge(String),
}

/// How QEMU is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// Directly, in a process group of its own: QEMU outlives the agent. Without systemd
    /// (`--dev`, tests), for an agent that is not root (the shipped unit runs it as its own
    /// user: its QEMUs stay in its cgroup, which `KillMode=process` leaves running), and
    /// under systemd only if scopes are unavailable.
    Direct,
    /// In a transient systemd scope of its own (`hearth-vm-ID.scope` in `hearth-vms.slice`),
    /// through `systemd-run --scope`: outside the agent's cgroup, so stopping or restarting
    /// the agent's unit never kills a member's QEMU (as libvirt and Proxmox do).
    SystemdScope,
}

impl Launcher {
    /// A scope when the machine was booted with systemd, `systemd-run` is on the PATH and the
    /// agent is root (only root may make units of the system manager).
    pub fn detect() -> Launcher {
        use std::os::unix::fs::MetadataExt;
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let booted = Path::new("/run/systemd/system").is_dir() && root;
        let systemd_run = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join("systemd-run").is_file())
        });
        if booted && systemd_run {
            Launcher::SystemdScope
        } else {
            Launcher::Direct
        }
    }

    /// The program and arguments that run `binary ARGS` for VM `id` this way.
    pub fn command(self, binary: &str, args: &[String], id: &str) -> (String, Vec<String>) {
        match self {
            Launcher::Direct => (binary.to_owned(), args.to_vec()),
            Launcher::SystemdScope => {
                let mut wrapped = vec![
                    "--scope".to_owned(),
                    "--quiet".to_owned(),
                    "--collect".to_owned(),
                    format!("--unit=hearth-vm-{id}"),
                    "--slice=hearth-vms.slice".to_owned(),
                    format!("--description=hearth VM {id}"),
                    "--".to_owned(),
                    binary.to_owned(),
                ];
                wrapped.extend(args.iter().cloned());
                ("systemd-run".to_owned(), wrapped)
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// CIDR strings.
    pub addresses: Vec<String>,
    /// What the guest may send from on a bridge: each address (full-length prefix) and
    /// each network routed to it.
    pub allowed: Vec<(IpAddr, u8)>,
    pub gateway4: Option<IpAddr>,
    pub gateway6: Option<IpAddr>,
    pub resolvers: Vec<IpAddr>,
}

/// Everything the driver needs to create and start one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub id: String,
    pub hostname: String,
    pub arch: Arch,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_bytes: u64,
    pub base_image: PathBuf,
    /// `qcow2` or `raw`.
    pub base_format: String,
    /// Direct kernel boot, when the image brings a kernel.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: Option<String>,
    pub ssh_keys: Vec<String>,
    pub net: NetConfig,
    pub io: IoLimits,
    /// The generation of the VM's disk: a start refuses a disk of any other.
    pub generation: u64,
    /// Where the disk is kept.
    pub disk: DiskSpec,
}

/// Where a VM's disk is kept, as its driver sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DiskSpec {
    /// `disk.qcow2` in the VM's directory, over `base_image`.
    #[default]
    Local,
    /// An image in Ceph pool `pool` (see [`crate::rbd`]), cloned from `base_image` imported
    /// once into the pool as `base`.
    Rbd { pool: String, base: String },
}

/// The stable MAC of a VM: QEMU's locally administered prefix and three bytes of the id's hash.
pub fn mac_for(id: &str) -> String {
    let hash = Sha256::digest(id.as_bytes());
    format!("52:54:00:{:02x}:{:02x}:{:02x}", hash[0], hash[1], hash[2])
}

/// The most a console log grows to before it is rotated: the VM's directory holds at most
/// this twice (`console.log` and `console.log.1`), plus what the guest writes in one round.
pub const CONSOLE_MAX: u64 = 1024 * 1024;

/// Rotates the console log at `path` when it is over `max` bytes: its text becomes
/// `console.log.1` (replacing the older one) and the log starts empty. QEMU keeps writing
/// to the same file, opened for appending, so its next line lands at the new start.
/// Whether it rotated.
pub fn rotate_console(path: &Path, max: u64) -> std::io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max {
        return Ok(false);
    }
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    std::fs::copy(path, &old)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(true)
}

/// Where the serial console of VM `id` is logged under `root`, the same for both drivers;
/// `None` when `id` is not a VM id (so a name can never reach outside `root`).
pub fn console_log(root: &Path, id: &str) -> Option<PathBuf> {
    valid_id(id).then(|| root.join(id).join("console.log"))
}

/// The serial console's socket in a VM's directory.
pub const CONSOLE_SOCKET: &str = "console.sock";

/// Where the serial console of VM `id` takes its one client under `root`; `None` when `id`
/// is not a VM id.
pub fn console_socket(root: &Path, id: &str) -> Option<PathBuf> {
    valid_id(id).then(|| root.join(id).join(CONSOLE_SOCKET))
}

/// Where the host keeps VM `id`'s recent load (`hearth_types::vmstats::VmHistory`, JSON)
/// under `root`; `None` when `id` is not a VM id.
pub fn stats_file(root: &Path, id: &str) -> Option<PathBuf> {
    valid_id(id).then(|| root.join(id).join("stats.json"))
}

/// QEMU's seccomp filter: obsolete system calls, gaining privileges (set*uid and the like),
/// starting processes (fork, clone of a new process, exec) and CPU/scheduler resource
/// control denied. A guest that escapes into QEMU cannot start a shell.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The seccomp filter for QEMU on `network`: the same on both, since a bridged VM's tap is
/// made by the agent before QEMU starts, and QEMU only opens it.
pub fn sandbox(_network: &Network) -> &'static str {
    SANDBOX
}

/// A bridged VM's tap on `bridge`, its anti-spoofing rules for its MAC and addresses and
/// its bandwidth limits, before its QEMU starts (and again when the reconciler finds them
/// altered), recorded in its directory `dir`.
fn plug_in(spec: &VmSpec, bridge: &str, dir: &Path) -> Result<(), String> {
    let guard = crate::guard::Guard {
        tap: crate::tap::ensure(&spec.id, bridge)?,
        mac: mac_for(&spec.id),
        allowed: spec.net.allowed.clone(),
        in_bytes_per_sec: spec.io.net_in_bytes_per_sec,
        out_bytes_per_sec: spec.io.net_out_bytes_per_sec,
    };
    guard.apply(dir)
}

/// The pid of the QEMU in `dir` once it has finished starting: its pidfile names it and its
/// QMP monitor answers (which it does only from its main loop, after the machine is set up,
/// so a QEMU that fails under KVM is not taken for started).
async fn ready(dir: &Path) -> Option<u32> {
    let pid = pid_from(dir, &[dir]).ok().flatten()?;
    let answered = tokio::time::timeout(Duration::from_secs(2), async {
        let mut qmp = Qmp::connect(&dir.join("qmp.sock")).await.ok()?;
        qmp.execute("query-status", None).await.ok()
    })
    .await;
    matches!(answered, Ok(Some(_))).then_some(pid)
}

/// The `-drive` of VM `spec`'s disk at `file` (commas already doubled), with its IO limits.
fn disk_drive(spec: &VmSpec, file: &str) -> String {
    // auto-read-only=off: the disk is opened read-write once and kept so. With -drive's
    // default (on), QEMU reopens the file by its name to drop write access when a live move
    // out completes; for a QEMU that came in live, that name (the incoming directory) is gone
    // by then, and the move fails ("Bad address").
    let format = match spec.disk {
        DiskSpec::Local => "qcow2",
        DiskSpec::Rbd { .. } => "raw",
    };
    let mut drive = format!(
        "file={file},format={format},if=none,id=disk0,auto-read-only=off,discard=unmap,detect-zeroes=unmap",
    );
    if let Some(iops) = spec.io.iops {
        drive.push_str(&format!(",throttling.iops-total={iops}"));
    }
    if let Some(bps) = spec.io.bytes_per_sec {
        drive.push_str(&format!(",throttling.bps-total={bps}"));
    }
    drive
}

/// Direct kernel boot, when the image brings a kernel.
fn kernel_args(spec: &VmSpec) -> Vec<String> {
    let Some(kernel) = &spec.kernel else {
        return Vec::new();
    };
    let mut args = vec!["-kernel".to_owned(), kernel.display().to_string()];
    if let Some(initrd) = &spec.initrd {
        args.extend(["-initrd".to_owned(), initrd.display().to_string()]);
    }
    let console = match spec.arch {
        Arch::X86_64 => "console=ttyS0",
        Arch::Aarch64 => "console=ttyAMA0",
    };
    let append = spec.append.clone().unwrap_or_else(|| console.to_owned());
    args.extend(["-append".to_owned(), append]);
    args
}

/// QEMU's command line for a VM, as a pure function of the spec and the VM's directory; `rbd`
/// is QEMU's file name of a disk on RBD (`Ceph::qemu_file`).
pub fn qemu_args(
    spec: &VmSpec,
    dir: &Path,
    accel: Accel,
    network: &Network,
    rbd: Option<&str>,
) -> Vec<String> {
    let path = |name: &str| dir.join(name).display().to_string();
    // QEMU's option syntax splits on commas; a comma in a path is written twice.
    let opt = |p: String| p.replace(',', ",,");
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| (*s).to_owned()));
    push(&["-name", &format!("guest={},debug-threads=on", spec.id)]);
    let (machine, cpu) = match (spec.arch, accel) {
        (Arch::X86_64, Accel::Kvm) => ("q35", "host"),
        (Arch::X86_64, Accel::Tcg) => ("q35", "max"),
        (Arch::Aarch64, Accel::Kvm) => ("virt", "host"),
        (Arch::Aarch64, Accel::Tcg) => ("virt", "max"),
    };
    push(&["-machine", &format!("{machine},accel={accel}")]);
    push(&["-cpu", cpu]);
    push(&["-smp", &spec.vcpus.max(1).to_string()]);
    push(&["-m", &format!("{}M", spec.memory_mib.max(64))]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    push(&["-pidfile", &path("qemu.pid")]);
    push(&["-sandbox", sandbox(network)]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", opt(path("qmp.sock"))),
    ]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=console0,path={},server=on,wait=off,logfile={},logappend=on",
            opt(path(CONSOLE_SOCKET)),
            opt(path("console.log"))
        ),
        "-serial",
        "chardev:console0",
    ]);
    args.extend(kernel_args(spec));
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| (*s).to_owned()));
    let file = match rbd {
        Some(file) => opt(file.to_owned()),
        None => opt(path("disk.qcow2")),
    };
    let drive = disk_drive(spec, &file);
    push(&["-drive", &drive]);
    push(&[
        "-device",
        "virtio-blk-pci,drive=disk0,id=virtio-disk0,bootindex=1",
    ]);
    push(&[
        "-drive",
        &format!(
            "file={},format=raw,if=none,id=seed0,readonly=on",
            opt(path("seed.iso"))
        ),
        "-device",
        "virtio-blk-pci,drive=seed0,id=virtio-disk1",
    ]);
    let netdev = match network {
        Network::User => "user,id=net0,restrict=on".to_owned(),
        Network::Bridge(_) => format!(
            "tap,id=net0,ifname={},script=no,downscript=no",
            crate::tap::tap_name(&spec.id)
        ),
    };
    push(&["-netdev", &netdev]);
    push(&[
        "-device",
        &format!("virtio-net-pci,netdev=net0,mac={}", mac_for(&spec.id)),
    ]);
    args
}

/// Writes a fresh NoCloud seed for `spec` into `dir` (`seed/` and `seed.iso`).
pub(crate) async fn write_seed(spec: &VmSpec, dir: &Path) -> Result<(), StartError> {
    let seed = Seed {
        instance_id: spec.id.clone(),
        hostname: spec.hostname.clone(),
        ssh_keys: spec.ssh_keys.clone(),
        mac: mac_for(&spec.id),
        addresses: spec.net.addresses.clone(),
        gateway4: spec.net.gateway4,
        gateway6: spec.net.gateway6,
        resolvers: spec.net.resolvers.clone(),
    };
    let (seed_dir, iso) = (dir.join("seed"), dir.join("seed.iso"));
    tokio::task::spawn_blocking(move || seed.write_iso(&seed_dir, &iso))
        .await
        .map_err(|e| StartError::Launch(format!("writing the seed: {e}")))?
        .map_err(|e| StartError::Launch(format!("writing the seed: {e}")))
}

/// Makes `path` a new qcow2 overlay of `spec`'s size on its base image (removed again when
/// `qemu-img` fails).
pub(crate) async fn make_overlay(spec: &VmSpec, path: &Path) -> Result<(), DiskError> {
    let _ = std::fs::remove_file(path);
    let size = spec.disk_bytes.to_string();
    let args: [&std::ffi::OsStr; 10] = [
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-b".as_ref(),
        spec.base_image.as_os_str(),
        "-F".as_ref(),
        spec.base_format.as_ref(),
        path.as_os_str(),
        size.as_ref(),
    ];
    let made = crate::disk::qemu_img("create", &args).await.map(drop);
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// The process's command line, if it is a `qemu-system-*` process.
pub(crate) fn qemu_cmdline(pid: u32) -> Option<Vec<String>> {
    qemu_cmdline_checked(pid).ok().flatten()
}

/// `qemu_cmdline`, telling a failed read from an absent process.
fn qemu_cmdline_checked(pid: u32) -> std::io::Result<Option<Vec<String>>> {
    cmdline_of(pid, |program| program.starts_with("qemu-system-"))
}

/// The process's command line, if the file name of its program passes `program`; `None`
/// for a process that is gone (a zombie has an empty command line and counts as gone).
pub(crate) fn cmdline_of(
    pid: u32,
    program: impl Fn(&str) -> bool,
) -> std::io::Result<Option<Vec<String>>> {
    let Some(raw) = read_present(Path::new(&format!("/proc/{pid}/cmdline")))? else {
        return Ok(None);
    };
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let named = args.first().is_some_and(|a| {
        Path::new(a)
            .file_name()
            .is_some_and(|n| program(&n.to_string_lossy()))
    });
    Ok(named.then_some(args))
}

/// The VM ids whose directory under `root` a command line mentions.
fn ids_in(args: &[String], root: &str) -> BTreeSet<String> {
    let prefix = format!("{}/", root.trim_end_matches('/'));
    let mut ids = BTreeSet::new();
    for arg in args {
        let mut rest = arg.as_str();
        while let Some(at) = rest.find(&prefix) {
            let after = &rest[at + prefix.len()..];
            let id: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            if valid_id(&id) && after[id.len()..].starts_with('/') {
                ids.insert(id.clone());
            }
            rest = &after[id.len()..];
        }
    }
    ids
}

/// The pid in `dir/qemu.pid`, if that process is alive and a QEMU whose command line uses
/// one of `dirs` (a recycled pid is not).
fn pid_from(dir: &Path, dirs: &[&Path]) -> std::io::Result<Option<u32>> {
    let Some(text) = read_present(&dir.join("qemu.pid"))? else {
        return Ok(None);
    };
    let Some(pid) = String::from_utf8_lossy(&text).trim().parse::<u32>().ok() else {
        return Ok(None);
    };
    let Some(args) = qemu_cmdline_checked(pid)? else {
        return Ok(None);
    };
    let prefixes: Vec<String> = dirs.iter().map(|d| format!("{}/", d.display())).collect();
    Ok(args
        .iter()
        .any(|a| prefixes.iter().any(|p| a.contains(p)))
        .then_some(pid))
}

/// The pid of the QEMU running in VM directory `dir`, if one runs (see [`pid_from`]).
pub fn running_pid(dir: &Path) -> Option<u32> {
    pid_from(dir, &[dir]).ok().flatten()
}

pub struct Driver {
    root: PathBuf,
    accel: Mutex<Accel>,
    kvm_failed: AtomicBool,
    network: Network,
    launcher: Launcher,
    /// Ids whose QEMU is being launched: not yet foreign, not yet ours.
    starting: Mutex<BTreeSet<String>>,
    /// The Ceph cluster for disks on RBD (`[ceph]`), if this worker has one.
    ceph: Option<crate::rbd::Ceph>,
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("root", &self.root)
            .field("accel", &self.accel())
            .field("network", &self.network)
            .field("launcher", &self.launcher)
            .finish()
    }
}

impl Driver {
    pub fn new(root: PathBuf, accel: Accel, network: Network) -> Driver {
        Driver {
            root,
            accel: Mutex::new(accel),
            kvm_failed: AtomicBool::new(false),
            network,
            launcher: Launcher::Direct,
            starting: Mutex::new(BTreeSet::new()),
            ceph: None,
        }
    }

    /// Runs disks on RBD in this Ceph cluster from now on.
    pub fn with_ceph(mut self, ceph: Option<crate::rbd::Ceph>) -> Driver {
        self.ceph = ceph;
        self
    }

    /// The Ceph cluster, or why there is none.
    pub fn ceph(&self) -> Result<&crate::rbd::Ceph, DiskError> {
        self.ceph.as_ref().ok_or_else(|| {
            DiskError::Ceph(
                "this worker has no [ceph] in its config; it cannot run disks on RBD".into(),
            )
        })
    }

    /// QEMU's file name of `spec`'s disk when it is on RBD.
    fn rbd_file(&self, spec: &VmSpec) -> Result<Option<String>, DiskError> {
        match &spec.disk {
            DiskSpec::Local => Ok(None),
            DiskSpec::Rbd { pool, .. } => {
                let image = crate::rbd::disk_image(&spec.id, spec.generation);
                Ok(Some(self.ceph()?.qemu_file(pool, &image)))
            }
        }
    }

    /// Makes sure the VM's own disk on RBD, `spec.generation`'s image, is in the pool, and
    /// writes its handle into `dir` (a worker taking the disk over, or a move's target, has
    /// none yet). Never makes an image: a missing one is an error.
    pub(crate) async fn rbd_handle(
        &self,
        spec: &VmSpec,
        dir: &Path,
        pool: &str,
    ) -> Result<(), DiskError> {
        let image = crate::rbd::disk_image(&spec.id, spec.generation);
        if !self.ceph()?.exists(pool, &image).await? {
            return Err(DiskError::NoDisk(format!(
                "{} (image {pool}/{image})",
                spec.id
            )));
        }
        if crate::rbd::read_handle(dir).as_ref() != Some(&(pool.to_owned(), image.clone())) {
            crate::rbd::write_handle(dir, pool, &image, spec.generation)?;
        }
        Ok(())
    }

    /// Starts QEMU this way from now on (see [`Launcher`]).
    pub fn launcher(&self) -> Launcher {
        self.launcher
    }

    pub fn with_launcher(mut self, launcher: Launcher) -> Driver {
        self.launcher = launcher;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn accel(&self) -> Accel {
        *self.accel.lock().expect("accel lock")
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    pub fn console_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("console.log")
    }

    fn qmp_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("qmp.sock")
    }

    /// The pid of the QEMU hearth started for `id`, if it is alive and really that QEMU
    /// (a recycled pid is not).
    pub fn pid(&self, id: &str) -> Option<u32> {
        self.pid_checked(id).ok().flatten()
    }

    /// `pid`, telling a failed read from a VM that does not run. A QEMU started for a live
    /// move in the VM's incoming directory, which became the VM's directory at the switch,
    /// is the VM's QEMU too.
    fn pid_checked(&self, id: &str) -> std::io::Result<Option<u32>> {
        let dir = self.dir(id);
        let incoming = crate::moving::incoming_dir(&self.root, id).unwrap_or_else(|_| dir.clone());
        pid_from(&dir, &[&dir, &incoming])
    }

    /// The pid of the QEMU started in VM `id`'s incoming directory for a live move, if alive.
    pub fn incoming_pid(&self, id: &str) -> Option<u32> {
        let dir = crate::moving::incoming_dir(&self.root, id).ok()?;
        pid_from(&dir, &[&dir]).ok().flatten()
    }

    /// Every VM directory under the root, and every QEMU process that uses one without being
    /// the process hearth started for it (reported as a separate, foreign entry).
    /// An error means the host could not look (no file descriptors left, say): the caller
    /// must not take it for "nothing runs".
    pub fn observe(&self) -> Result<Vec<ObservedVm>, ObserveError> {
        let mut seen = Vec::new();
        let mut ours = BTreeSet::new();
        // The rules and queues of every tap, read once for all the VMs.
        let mut listing = None;
        for (id, path) in vm_dirs(&self.root)? {
            let pid = self.pid_checked(&id).map_err(io_error(&path))?;
            if let Some(pid) = pid {
                ours.insert(pid);
            }
            let guard_altered = pid.is_some()
                && matches!(self.network, Network::Bridge(_))
                && !listing
                    .get_or_insert_with(crate::guard::Listing::take)
                    .intact(&path);
            seen.push(ObservedVm {
                guard_altered,
                disk_present: path.join("disk.qcow2").is_file()
                    || path.join(crate::rbd::HANDLE).is_file(),
                generation: crate::disk::read_generation(&path)?,
                held: path.join(crate::live::HELD).exists(),
                mirroring: crate::replica::mirroring(&path),
                id,
                pid,
                foreign: false,
            });
        }
        let starting = self.starting.lock().expect("starting lock").clone();
        let root = self.root.display().to_string();
        let proc = Path::new("/proc");
        for entry in std::fs::read_dir(proc).map_err(io_error(proc))? {
            let entry = entry.map_err(io_error(proc))?;
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if ours.contains(&pid) {
                continue;
            }
            let Some(args) = qemu_cmdline_checked(pid).map_err(io_error(&entry.path()))? else {
                continue;
            };
            for id in ids_in(&args, &root) {
                if starting.contains(&id) {
                    continue;
                }
                seen.push(ObservedVm {
                    id,
                    pid: Some(pid),
                    disk_present: false,
                    generation: 0,
                    foreign: true,
                    held: false,
                    mirroring: None,
                    guard_altered: false,
                });
            }
        }
        seen.sort_by(|a, b| (&a.id, a.foreign).cmp(&(&b.id, b.foreign)));
        Ok(seen)
    }

    /// Writes a fresh seed and starts QEMU on the VM's own disk (of `spec.generation`),
    /// which must be here already. Returns its pid. Refuses when the VM already runs.
    pub async fn start(&self, spec: &VmSpec) -> Result<u32, StartError> {
        if !valid_id(&spec.id) {
            return Err(StartError::BadId(spec.id.clone()));
        }
        {
            let mut starting = self.starting.lock().expect("starting lock");
            if !starting.insert(spec.id.clone()) {
                return Err(StartError::AlreadyStarting(spec.id.clone()));
            }
        }
        let result = self.start_inner(spec).await;
        self.starting
            .lock()
            .expect("starting lock")
            .remove(&spec.id);
        result
    }

    async fn start_inner(&self, spec: &VmSpec) -> Result<u32, StartError> {
        if let Some(pid) = self.pid(&spec.id) {
            return Err(StartError::AlreadyRunning(spec.id.clone(), pid));
        }
        let dir = self.dir(&spec.id);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        // The console's socket has the longer name of the two.
        let socket = dir.join(CONSOLE_SOCKET);
        if socket.display().to_string().len() > MAX_SOCKET_PATH {
            return Err(StartError::Launch(format!(
                "{} is longer than a unix socket path may be ({MAX_SOCKET_PATH} bytes); choose a shorter data_dir",
                socket.display()
            )));
        }
        match &spec.disk {
            DiskSpec::Local => {
                crate::disk::check_own(&spec.id, &dir, "disk.qcow2", spec.generation)?
            }
            DiskSpec::Rbd { pool, .. } => self.rbd_handle(spec, &dir, pool).await?,
        }
        write_seed(spec, &dir).await?;
        // A new QEMU mirrors into no replica yet.
        for stale in [
            "qemu.pid",
            "qmp.sock",
            CONSOLE_SOCKET,
            crate::replica::MIRRORING,
        ] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        self.launch_here(spec, &dir, &[]).await
    }

    /// Launches QEMU for `spec` in `dir` with `extra` arguments, falling back to TCG for good
    /// when KVM fails the first time.
    pub(crate) async fn launch_here(
        &self,
        spec: &VmSpec,
        dir: &Path,
        extra: &[String],
    ) -> Result<u32, StartError> {
        let accel = self.accel();
        match self.launch(spec, dir, accel, extra).await {
            Err(error) if accel == Accel::Kvm && !self.kvm_failed.swap(true, Ordering::SeqCst) => {
                tracing::warn!(vm = %spec.id, %error, "QEMU failed under KVM; falling back to TCG for this host");
                *self.accel.lock().expect("accel lock") = Accel::Tcg;
                self.launch(spec, dir, Accel::Tcg, extra).await
            }
            other => other,
        }
    }

    /// Creates the VM's disk of `spec.generation` as an overlay on the base image, unless it
    /// is here already: true when it made one. A disk of another generation here is an error,
    /// never overwritten. The only thing that makes a disk; the caller decides whether the VM
    /// may have a new one.
    pub async fn create_disk(&self, spec: &VmSpec) -> Result<bool, DiskError> {
        if !valid_id(&spec.id) {
            return Err(DiskError::BadId(spec.id.clone()));
        }
        let dir = self.dir(&spec.id);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        if let DiskSpec::Rbd { pool, base } = &spec.disk {
            return self.create_rbd(spec, &dir, pool, base).await;
        }
        let disk = dir.join("disk.qcow2");
        if disk.is_file() {
            return crate::disk::check_own(&spec.id, &dir, "disk.qcow2", spec.generation)
                .map(|()| false);
        }
        let partial = dir.join("disk.qcow2.partial");
        make_overlay(spec, &partial).await?;
        // The generation first: a disk under its final name always has its generation.
        crate::disk::write_generation(&dir, spec.generation)?;
        std::fs::rename(&partial, &disk).map_err(io_error(&disk))?;
        Ok(true)
    }

    /// [`Driver::create_disk`] on RBD: the image imported once into the pool, the disk a
    /// clone of it named by its generation (one made before for this generation, never run,
    /// is taken), then the handle here.
    async fn create_rbd(
        &self,
        spec: &VmSpec,
        dir: &Path,
        pool: &str,
        base: &str,
    ) -> Result<bool, DiskError> {
        if dir.join(crate::rbd::HANDLE).is_file() {
            return crate::disk::check_own(&spec.id, dir, crate::rbd::HANDLE, spec.generation)
                .map(|()| false);
        }
        let ceph = self.ceph()?;
        ceph.import(pool, base, &spec.base_image, &spec.base_format)
            .await?;
        let image = crate::rbd::disk_image(&spec.id, spec.generation);
        let made = ceph.clone_disk(pool, base, &image, spec.disk_bytes).await?;
        crate::rbd::write_handle(dir, pool, &image, spec.generation)?;
        Ok(made)
    }

    /// A cold move's target of a disk on RBD: nothing is copied; the handle of the same
    /// image, at the same generation (`spec.generation`), becomes the VM's directory here
    /// in one rename. A VM directory already here is an error (the caller archives it).
    pub async fn adopt_rbd(&self, spec: &VmSpec) -> Result<PathBuf, DiskError> {
        let DiskSpec::Rbd { pool, .. } = &spec.disk else {
            return Err(DiskError::NoDisk(format!("{} has no disk on RBD", spec.id)));
        };
        let incoming = crate::moving::fresh_incoming(&self.root, &spec.id)?;
        self.rbd_handle(spec, &incoming, pool).await?;
        crate::moving::adopt(
            &self.root,
            &spec.id,
            crate::rbd::HANDLE,
            spec.generation,
            None,
        )
        .await
    }

    /// A restored disk on RBD, `pool`'s image of `generation` (already under its final
    /// name), becomes VM `id`'s disk here: its handle, written in `staging` (emptied first),
    /// renamed to the VM's directory. A VM directory already here is an error.
    pub async fn adopt_rbd_image(
        &self,
        id: &str,
        pool: &str,
        generation: u64,
        staging: &Path,
    ) -> Result<PathBuf, DiskError> {
        let image = crate::rbd::disk_image(id, generation);
        if !self.ceph()?.exists(pool, &image).await? {
            return Err(DiskError::NoDisk(format!("{id} (image {pool}/{image})")));
        }
        remove_vm_dir(staging)?;
        crate::rbd::write_handle(staging, pool, &image, generation)?;
        crate::moving::adopt_from(
            &self.root,
            staging,
            id,
            crate::rbd::HANDLE,
            generation,
            None,
        )
        .await
    }

    /// Moves a VM's files, disk included, to the archive (see [`crate::disk::archive`]).
    /// Refuses while its QEMU runs.
    pub async fn archive(&self, id: &str) -> Result<PathBuf, DiskError> {
        if let Some(pid) = self.pid(id) {
            return Err(DiskError::Running(id.to_owned(), pid));
        }
        self.cleanup_runtime(id);
        self.remove_tap(id);
        crate::disk::archive(&self.root, id)
    }

    async fn launch(
        &self,
        spec: &VmSpec,
        dir: &Path,
        accel: Accel,
        extra: &[String],
    ) -> Result<u32, StartError> {
        let binary = format!("qemu-system-{}", spec.arch.as_str());
        if let Network::Bridge(bridge) = &self.network {
            plug_in(spec, bridge, dir).map_err(StartError::Launch)?;
        }
        let log_path = dir.join("qemu.log");
        let log = std::fs::File::create(&log_path).map_err(io_error(&log_path))?;
        let rbd = self
            .rbd_file(spec)
            .map_err(|e| StartError::Launch(e.to_string()))?;
        let mut args = qemu_args(spec, dir, accel, &self.network, rbd.as_deref());
        args.extend(extra.iter().cloned());
        let (program, args) = self.launcher.command(&binary, &args, &spec.id);
        tracing::debug!(vm = %spec.id, %program, ?args, "starting QEMU");
        // Not daemonized (its sandbox forbids forking): QEMU runs in a process group of its
        // own, so a signal to the agent's group (Ctrl-C of `hearth agent --dev`) never
        // reaches it, and it outlives the agent (in a scope, the agent's cgroup too). Its
        // messages go to `qemu.log` for as long as it runs.
        let mut child = tokio::process::Command::new(&program)
            .args(&args)
            .current_dir(dir)
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(io_error(&log_path))?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                StartError::Launch(format!(
                    "cannot run {binary} (apt-get install qemu-system-{}): {e}",
                    match spec.arch {
                        Arch::X86_64 => "x86",
                        Arch::Aarch64 => "arm",
                    }
                ))
            })?;
        let message = || {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let pid = loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(StartError::Launch(format!(
                    "{binary} exited at start ({status}): {}",
                    message()
                )));
            }
            if let Some(pid) = ready(dir).await {
                break pid;
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                return Err(StartError::Launch(format!(
                    "{binary} did not come up within {START_TIMEOUT:?}: {}",
                    message()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The agent reaps its QEMU when it ends (a restarted agent's init does).
        let id = spec.id.clone();
        tokio::spawn(async move {
            match child.wait().await {
                Ok(status) => tracing::info!(vm = %id, %status, "QEMU exited"),
                Err(error) => tracing::warn!(vm = %id, %error, "waiting for QEMU"),
            }
        });
        Ok(pid)
    }

    pub(crate) async fn qmp(&self, id: &str) -> Result<Qmp, ControlError> {
        if self.pid(id).is_none() {
            return Err(ControlError::NotRunning(id.to_owned()));
        }
        Ok(Qmp::connect(&self.qmp_path(id)).await?)
    }

    /// Runs one QMP command against a running VM.
    pub async fn execute(
        &self,
        id: &str,
        command: &str,
        args: Option<Value>,
    ) -> Result<Value, ControlError> {
        let mut qmp = self.qmp(id).await?;
        Ok(qmp.execute(command, args).await?)
    }

    /// QEMU's run state (`running`, `paused`, `shutdown`, ...).
    pub async fn status(&self, id: &str) -> Result<String, ControlError> {
        let value = self.execute(id, "query-status", None).await?;
        Ok(value["status"].as_str().unwrap_or("unknown").to_owned())
    }

    /// Waits until the VM's QEMU is gone; false when it is still there at the deadline.
    pub(crate) async fn wait_gone(&self, id: &str, pid: u32, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if qemu_cmdline(pid).is_none() || self.pid(id) != Some(pid) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Removes a bridged VM's tap and its rules with its files (a failure is logged: a stray
    /// tap holds no member's data).
    fn remove_tap(&self, id: &str) {
        if !matches!(self.network, Network::Bridge(_)) {
            return;
        }
        let removed =
            crate::guard::remove(&crate::tap::tap_name(id)).and_then(|()| crate::tap::remove(id));
        if let Err(error) = removed {
            tracing::warn!(vm = %id, %error, "removing the VM's tap and its rules");
        }
    }

    pub(crate) fn cleanup_runtime(&self, id: &str) {
        for stale in ["qemu.pid", "qmp.sock"] {
            let _ = std::fs::remove_file(self.dir(id).join(stale));
        }
    }

    /// ACPI power button, then `grace` for the guest to power off, then a hard stop.
    /// A VM that is not running is already shut down.
    pub async fn shutdown(&self, id: &str, grace: Duration) -> Result<(), ControlError> {
        let Some(pid) = self.pid(id) else {
            self.cleanup_runtime(id);
            return Ok(());
        };
        // The button is pressed again every few seconds: a guest that is still booting
        // (no ACPI daemon yet) misses the first press.
        let deadline = Instant::now() + grace;
        loop {
            if let Err(error) = self.execute(id, "system_powerdown", None).await {
                if self.pid(id) != Some(pid) {
                    break;
                }
                tracing::warn!(vm = %id, %error, "ACPI shutdown failed; stopping it");
                return self.kill(id).await;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if self.wait_gone(id, pid, left.min(POWER_BUTTON_EVERY)).await {
                break;
            }
            if left <= POWER_BUTTON_EVERY {
                tracing::warn!(vm = %id, ?grace, "the guest did not power off; stopping it");
                return self.kill(id).await;
            }
        }
        self.cleanup_runtime(id);
        Ok(())
    }

    /// A hard reset, as the reset button would.
    pub async fn reboot(&self, id: &str) -> Result<(), ControlError> {
        self.execute(id, "system_reset", None).await.map(|_| ())
    }

    /// Stops QEMU at once: `quit` over QMP, then SIGKILL.
    pub async fn kill(&self, id: &str) -> Result<(), ControlError> {
        let Some(pid) = self.pid(id) else {
            self.cleanup_runtime(id);
            return Ok(());
        };
        // A QEMU whose I/O hangs (a mirror target cut off) may never answer `quit`: it is
        // given a bounded time, then SIGKILL.
        let quit = async {
            if let Ok(mut qmp) = Qmp::connect(&self.qmp_path(id)).await {
                let _ = qmp.execute("quit", None).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), quit).await;
        if self.wait_gone(id, pid, Duration::from_secs(5)).await {
            self.cleanup_runtime(id);
            return Ok(());
        }
        self.kill_now(id).await
    }

    /// Sends the VM's QEMU SIGKILL at once, asking nothing over QMP (which a QEMU with
    /// hung I/O may not answer): the self-fence of a host whose lease lapsed, which must be
    /// over well within the margin its replica host waits.
    pub async fn kill_now(&self, id: &str) -> Result<(), ControlError> {
        let Some(pid) = self.pid(id) else {
            self.cleanup_runtime(id);
            return Ok(());
        };
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        if !self.wait_gone(id, pid, Duration::from_secs(10)).await {
            return Err(ControlError::Survives {
                id: id.to_owned(),
                pid,
            });
        }
        self.cleanup_runtime(id);
        Ok(())
    }

    /// Stops the VM and removes its directory, disk included. The only operation that does.
    pub async fn delete(&self, id: &str) -> Result<(), DiskError> {
        if !valid_id(id) {
            return Err(DiskError::BadId(id.to_owned()));
        }
        self.kill(id).await?;
        self.remove_tap(id);
        let dir = self.dir(id);
        if let Some((pool, image)) = crate::rbd::read_handle(&dir) {
            self.ceph()?.remove(&pool, &image).await?;
        }
        Ok(remove_vm_dir(&dir)?)
    }

    /// Changes the root disk's limits live, all six of QEMU's figures at once.
    pub async fn set_io_limits(&self, id: &str, limits: &IoLimits) -> Result<(), ControlError> {
        let dir = self.dir(id);
        if let Some(mut guard) = crate::guard::Guard::applied(&dir)
            && (guard.in_bytes_per_sec, guard.out_bytes_per_sec)
                != (limits.net_in_bytes_per_sec, limits.net_out_bytes_per_sec)
        {
            guard.in_bytes_per_sec = limits.net_in_bytes_per_sec;
            guard.out_bytes_per_sec = limits.net_out_bytes_per_sec;
            guard.apply(&dir).map_err(ControlError::Unexpected)?;
        }
        let args = json!({
            "id": DISK_QOM,
            "iops": limits.iops.unwrap_or(0),
            "iops_rd": 0,
            "iops_wr": 0,
            "bps": limits.bytes_per_sec.unwrap_or(0),
            "bps_rd": 0,
            "bps_wr": 0,
        });
        self.execute(id, "block_set_io_throttle", Some(args))
            .await
            .map(|_| ())
    }

    /// The root disk's limits as QEMU reports them.
    pub async fn io_limits(&self, id: &str) -> Result<IoLimits, ControlError> {
        let blocks = self.execute(id, "query-block", None).await?;
        let disk = blocks
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["qdev"] == DISK_QOM || b["device"] == "disk0")
            .ok_or_else(|| ControlError::Unexpected(format!("{id} has no disk0 in query-block")))?;
        let figure = |key: &str| disk["inserted"][key].as_u64().filter(|n| *n > 0);
        Ok(IoLimits {
            iops: figure("iops"),
            bytes_per_sec: figure("bps"),
            ..IoLimits::default()
        })
    }

    /// Puts a running bridged VM's tap, rules and limits back as `spec` has them (the
    /// reconciler found them missing or altered). Nothing to do on the user-mode network.
    pub fn guard(&self, spec: &VmSpec) -> Result<(), String> {
        match &self.network {
            Network::Bridge(bridge) => plug_in(spec, bridge, &self.dir(&spec.id)),
            Network::User => Ok(()),
        }
    }
}

#[cfg(test)]
mod console_tests {
    use super::*;
    use std::io::Write;

    /// Regression: the console log grew without bound on the disk the Raft store shares.
    #[test]
    fn a_console_log_over_its_limit_rotates_and_an_appending_writer_goes_on_at_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        // The writer holds the file open for appending, as QEMU does.
        let mut writer = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        writer.write_all(&[b'a'; 100]).unwrap();
        assert!(
            !rotate_console(&path, 100).unwrap(),
            "at the limit, not over"
        );
        writer.write_all(b"b").unwrap();
        assert!(rotate_console(&path, 100).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(
            std::fs::read(dir.path().join("console.log.1"))
                .unwrap()
                .len(),
            101
        );
        writer.write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
        assert!(!rotate_console(&dir.path().join("missing.log"), 1).unwrap());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            id: "vm-3".into(),
            hostname: "web1".into(),
            arch: Arch::X86_64,
            vcpus: 2,
            memory_mib: 512,
            disk_bytes: 1 << 30,
            base_image: "/blobs/abc".into(),
            base_format: "qcow2".into(),
            kernel: Some("/blobs/k".into()),
            initrd: None,
            append: None,
            ssh_keys: vec![],
            net: NetConfig::default(),
            io: IoLimits {
                iops: Some(100),
                bytes_per_sec: None,
                ..IoLimits::default()
            },
            generation: 1,
            disk: DiskSpec::Local,
        }
    }

    #[test]
    fn the_mac_is_stable_and_local() {
        assert_eq!(mac_for("vm-3"), mac_for("vm-3"));
        assert_ne!(mac_for("vm-3"), mac_for("vm-4"));
        assert!(mac_for("vm-3").starts_with("52:54:00:"));
        assert_eq!(mac_for("vm-3").len(), 17);
    }

    #[test]
    fn the_command_line_has_discard_throttling_console_and_qmp() {
        let args = qemu_args(
            &spec(),
            Path::new("/d/vm-3"),
            Accel::Tcg,
            &Network::User,
            None,
        );
        let joined = args.join(" ");
        assert!(
            joined.contains("-machine q35,accel=tcg -cpu max"),
            "{joined}"
        );
        assert!(
            joined.contains(
                "file=/d/vm-3/disk.qcow2,format=qcow2,if=none,id=disk0,auto-read-only=off,discard=unmap"
            ),
            "{joined}"
        );
        assert!(joined.contains("throttling.iops-total=100"), "{joined}");
        assert!(!joined.contains("bps-total"), "{joined}");
        assert!(
            joined.contains("-qmp unix:/d/vm-3/qmp.sock,server=on,wait=off"),
            "{joined}"
        );
        assert!(
            joined.contains("socket,id=console0,path=/d/vm-3/console.sock,server=on,wait=off,logfile=/d/vm-3/console.log,logappend=on"),
            "{joined}"
        );
        assert!(
            joined.contains("-pidfile /d/vm-3/qemu.pid -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny"),
            "{joined}"
        );
        assert!(!joined.contains("-daemonize"), "{joined}");
        assert!(
            joined.contains("-kernel /blobs/k -append console=ttyS0"),
            "{joined}"
        );
        assert!(
            joined.contains(&format!("mac={}", mac_for("vm-3"))),
            "{joined}"
        );
        assert!(joined.contains("restrict=on"), "{joined}");
    }

    #[test]
    fn commas_in_paths_are_escaped_and_bridges_named() {
        let args = qemu_args(
            &spec(),
            Path::new("/d,x/vm-3"),
            Accel::Kvm,
            &Network::Bridge("br0".into()),
            None,
        );
        let joined = args.join(" ");
        assert!(joined.contains("file=/d,,x/vm-3/disk.qcow2"), "{joined}");
        assert!(joined.contains("-cpu host"), "{joined}");
        assert!(
            joined.contains("tap,id=net0,ifname=hvm-3,script=no,downscript=no"),
            "{joined}"
        );
        assert!(joined.contains("spawn=deny"), "{joined}");
    }

    #[test]
    fn ids_are_found_in_command_lines_under_the_root_only() {
        let args = vec![
            "qemu-system-x86_64".to_owned(),
            "unix:/r/vms/vm-9/qmp.sock,server=on".to_owned(),
            "file=/r/vms/vm-2/disk.qcow2,x=/r/vms/vm-2/seed.iso".to_owned(),
            "/other/vm-5/disk".to_owned(),
            "/r/vms/notadir".to_owned(),
        ];
        let ids: Vec<String> = ids_in(&args, "/r/vms").into_iter().collect();
        assert_eq!(ids, ["vm-2", "vm-9"]);
    }

    #[test]
    fn observe_sees_directories_and_disks_without_processes() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("vm-1")).unwrap();
        std::fs::write(root.path().join("vm-1/disk.qcow2"), b"").unwrap();
        std::fs::write(root.path().join("vm-1/qemu.pid"), b"1\n").unwrap();
        std::fs::create_dir_all(root.path().join("vm-2")).unwrap();
        std::fs::write(root.path().join("stray-file"), b"").unwrap();
        let driver = Driver::new(root.path().into(), Accel::Tcg, Network::User);
        let seen = driver.observe().unwrap();
        assert_eq!(
            seen,
            [
                // pid 1 is not a QEMU with this VM's files: not running.
                ObservedVm {
                    guard_altered: false,
                    id: "vm-1".into(),
                    pid: None,
                    disk_present: true,
                    generation: 0,
                    foreign: false,
                    held: false,
                    mirroring: None,
                },
                ObservedVm {
                    guard_altered: false,
                    id: "vm-2".into(),
                    pid: None,
                    disk_present: false,
                    generation: 0,
                    foreign: false,
                    held: false,
                    mirroring: None,
                },
            ]
        );
    }

    #[test]
    fn under_systemd_qemu_runs_in_a_scope_of_its_own() {
        let args = vec!["-name".to_owned(), "guest=vm-3".to_owned()];
        assert_eq!(
            Launcher::Direct.command("qemu-system-x86_64", &args, "vm-3"),
            ("qemu-system-x86_64".to_owned(), args.clone())
        );
        let (program, wrapped) =
            Launcher::SystemdScope.command("qemu-system-x86_64", &args, "vm-3");
        assert_eq!(program, "systemd-run");
        let joined = wrapped.join(" ");
        assert!(
            joined.starts_with(
                "--scope --quiet --collect --unit=hearth-vm-vm-3 --slice=hearth-vms.slice"
            ),
            "{joined}"
        );
        assert!(
            joined.ends_with("-- qemu-system-x86_64 -name guest=vm-3"),
            "{joined}"
        );
    }
}
