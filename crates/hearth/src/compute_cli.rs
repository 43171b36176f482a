//! CLI commands of compute: `image add|list|rm`, `pool add|list|rm`,
//! `vm create|list|show|start|stop|migrate|delete`, `drift`, `hosts`, and `node evacuate`.

use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use hearth_types::api::{
    ConsoleText, MigrateVm, PoolRow, PutImage, PutPool, Recreate, VmRow, VmStats,
};
use hearth_types::compute::{
    Arch, Blob, Drift, Image, IoLimits, IpPool, Power, Replica, Storage, VmRequest,
};
use hearth_types::desired::Versioned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

use crate::client::{ApiClient, ClientError};
use crate::output::{print_json, print_table, report};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import a base image: hash its files, upload them to the local agent (which keeps a
    /// verified copy and serves it to the workers), and declare it.
    Add {
        /// The image's name, used by `vm create --image`.
        name: String,
        /// The disk image VMs' disks are overlays on.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// `qcow2` or `raw`.
        #[arg(long, default_value = "qcow2")]
        format: String,
        /// `x86_64` or `aarch64`.
        #[arg(long, default_value = "x86_64")]
        arch: Arch,
        /// Boot this kernel directly instead of the disk's boot loader.
        #[arg(long, value_name = "FILE")]
        kernel: Option<PathBuf>,
        /// The initramfs for --kernel.
        #[arg(long, value_name = "FILE", requires = "kernel")]
        initrd: Option<PathBuf>,
        /// The kernel command line for --kernel.
        #[arg(long, value_name = "ARGS", requires = "kernel")]
        append: Option<String>,
    },
    /// List the base images.
    List,
    /// Remove a base image no VM uses.
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum PoolCommand {
    /// Declare an IP pool VMs take static addresses from.
    Add {
        name: String,
        /// The network, like 192.0.2.0/24 or 2001:db8::/64.
        cidr: String,
        /// The gateway the VMs route through (never allocated).
        #[arg(long)]
        gateway: Option<IpAddr>,
        /// A DNS resolver for the VMs; repeat for several.
        #[arg(long = "resolver", value_name = "IP")]
        resolvers: Vec<IpAddr>,
        /// The first allocatable address (default: the network's first host).
        #[arg(long)]
        first: Option<IpAddr>,
        /// The last allocatable address (default: the network's last host).
        #[arg(long)]
        last: Option<IpAddr>,
        /// IPv6 only: give each VM a whole network of this prefix length (64: a routed /64
        /// per VM, which the co-op's router sends to the VM) instead of one address.
        #[arg(long, value_name = "LENGTH")]
        delegate: Option<u8>,
        /// Copies of the disk of a VM created with an address from this pool and no
        /// `--replicas` of its own: 2 keeps a synchronous copy on another worker.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
        replicas: Option<u8>,
        /// Where the disks of VMs created with an address from this pool are kept:
        /// `local` (a qcow2 file on the worker) or `rbd:POOL` (an image in that pool of the
        /// co-op's Ceph cluster, which any worker with [ceph] in its config may run after
        /// fencing the last one) [default: the owner's plan's, else local].
        #[arg(long, value_name = "STORAGE", value_parser = parse_storage)]
        storage: Option<Storage>,
    },
    /// List the pools and how many addresses each has given out.
    List,
    /// Remove a pool none of whose addresses is in use.
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum VmCommand {
    /// Create a VM. Returns once the leader has placed it on a worker (or after 10 s, if no
    /// worker has room: it stays pending and is placed when one does).
    Create(CreateArgs),
    /// List VMs with their phase, host and addresses.
    List {
        /// Only this member's VMs.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Show one VM (by name or id).
    Show { vm: String },
    /// Ask for the VM to run.
    Start { vm: String },
    /// Ask for the VM to shut down (ACPI power button, then stop after a grace period).
    Stop { vm: String },
    /// Ask for a running VM to reboot: its host shuts it down (as `stop` does) and starts it
    /// again with its current settings.
    Reboot { vm: String },
    /// Delete the VM: its host stops it and removes its disk; its addresses are freed then.
    Delete { vm: String },
    /// Admins: give up a lost disk and start the VM over on an empty disk from its image.
    ///
    /// Only for a VM whose disk is gone: its host reported the disk missing, or its host is
    /// fenced (powered off for good). The old disk's data is given up; should a copy of it
    /// turn up later, it is never used, and its host archives it. The request is recorded in
    /// the audit log.
    Recreate {
        vm: String,
        /// Required: says that the VM starts on an empty disk and its old data is gone.
        #[arg(long)]
        empty_disk: bool,
    },
    /// Set the VM's disk and network limits, replacing all it has: a limit left out is no
    /// limit. Its host applies them to the running VM at once (the disk's through QEMU, the
    /// network's on a bridged VM's tap). A member's plan may set limits of its own, which
    /// only an admin can change.
    Limits {
        vm: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Admins: give the VM to another account, within that account's quota (the way to
    /// remove an account whose VMs should live on).
    Reassign {
        vm: String,
        /// The account that owns it from now on.
        #[arg(long)]
        owner: String,
    },
    /// Admins: move the VM and its disk to another host.
    ///
    /// A running VM moves live: the target starts a paused QEMU, the VM's host mirrors its
    /// disk into it and then moves its RAM (QEMU's own block mirror and migration, under TLS
    /// with a key derived from the cluster secret), the VM pauses for the last of it (QEMU
    /// allows 300 ms), the cluster switches the VM and its disk to the target in one step, and
    /// the target lets it run on: same guest, same IPs, no reboot. A host whose driver cannot
    /// (the fake) refuses; then ask for --cold.
    ///
    /// With --cold, or for a VM that does not run, the VM's host shuts it down (ACPI, then a
    /// hard stop after 60 s), the target copies its disk over the cluster's encrypted RPC and
    /// checks it by sha256, the cluster switches the VM and its disk to the target in one
    /// step, and the target starts it.
    ///
    /// Until the switch the VM's disk is the one where it was: a move that fails or is given
    /// up (--cancel, or two minutes without progress) leaves it there, and it runs there
    /// again. The copy left behind after a move is archived on the old host, never deleted.
    /// Waits, printing progress, until the VM runs on the target (or --no-wait).
    Migrate {
        vm: String,
        /// The host to move to (default: the worker with the most free memory that fits).
        #[arg(long, value_name = "HOST")]
        to: Option<String>,
        /// Shut the VM down for the move (its guest sees a reboot).
        #[arg(long)]
        cold: bool,
        /// Return once the move is asked for.
        #[arg(long)]
        no_wait: bool,
        /// Give up the move under way; the VM starts where it was.
        #[arg(long, conflicts_with_all = ["to", "cold", "no_wait"])]
        cancel: bool,
    },
    /// Print the VM's serial console log, or with --interactive, type into it.
    ///
    /// Any node's API serves it: the node asks the VM's host over the cluster's encrypted
    /// connections.
    Console {
        vm: String,
        /// Keep printing what the guest writes, until interrupted.
        #[arg(long, short, conflicts_with = "interactive")]
        follow: bool,
        /// Attach this terminal to the console, as if at the VM's keyboard (raw mode: every
        /// key goes to the guest, Ctrl-C included). Ctrl-] detaches. One attachment at a
        /// time holds the keyboard; the others watch until it leaves, then the next to type
        /// takes it. A read-only token only watches. Exits 1 if the console closes (the VM
        /// stopped or moved).
        #[arg(long, short)]
        interactive: bool,
    },
    /// Print the VM's load as its host recorded it: CPU, disk bytes (and network bytes for a
    /// VM with a tap) per 5 minutes over the last day, or per 30 minutes over the last week.
    /// The member panel charts the same figures. Times are UTC; rates are averages over
    /// the part of each period the host watched.
    Load {
        vm: String,
        /// The last week, in 30-minute periods, instead of the last day.
        #[arg(long)]
        week: bool,
    },
}

/// A VM's disk and network limits; each left out is no limit.
#[derive(Args)]
pub struct LimitArgs {
    /// Disk IO operations per second (default: unlimited).
    #[arg(long)]
    iops: Option<u64>,
    /// Disk bytes per second (default: unlimited).
    #[arg(long)]
    bytes_per_sec: Option<u64>,
    /// Network bytes per second into the VM, for a bridged VM (default: unlimited;
    /// 12500000 is 100 Mbit/s).
    #[arg(long, value_name = "BYTES")]
    net_in_bytes_per_sec: Option<u64>,
    /// Network bytes per second out of the VM, for a bridged VM (default: unlimited).
    #[arg(long, value_name = "BYTES")]
    net_out_bytes_per_sec: Option<u64>,
}

impl LimitArgs {
    fn io(&self) -> IoLimits {
        IoLimits {
            iops: self.iops,
            bytes_per_sec: self.bytes_per_sec,
            net_in_bytes_per_sec: self.net_in_bytes_per_sec,
            net_out_bytes_per_sec: self.net_out_bytes_per_sec,
        }
    }
}

#[derive(Args)]
pub struct CreateArgs {
    /// The VM's name (also its hostname).
    name: String,
    /// The base image.
    #[arg(long)]
    image: String,
    /// The account that owns it (`hearth account add` makes one; a name with no account is
    /// refused, since whoever made that account later would get the VM).
    #[arg(long)]
    owner: String,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory_mib: u64,
    /// Disk size in GiB.
    #[arg(long, default_value_t = 10)]
    disk_gib: u64,
    /// An IP pool to take an address from; repeat for several.
    #[arg(long = "pool", value_name = "POOL")]
    pools: Vec<String>,
    /// An SSH public key, or @FILE to read keys from a file; repeat for several.
    #[arg(long = "ssh-key", value_name = "KEY|@FILE")]
    ssh_keys: Vec<String>,
    #[command(flatten)]
    limits: LimitArgs,
    #[arg(long, default_value = "x86_64")]
    arch: Arch,
    /// Create it stopped.
    #[arg(long)]
    stopped: bool,
    /// Copies of its disk: 2 keeps a synchronous second copy on another worker (every write
    /// the guest sees done is on both), so the VM can survive its host's death [default: the
    /// most its pools ask for, else 1].
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
    replicas: Option<u8>,
}

/// `--storage`: `local` or `rbd:POOL`.
pub fn parse_storage(text: &str) -> Result<Storage, String> {
    Storage::parse(text)
}

/// Reads a file through, printing progress on stderr at most once a second.
struct Progress<R> {
    inner: R,
    label: String,
    total: u64,
    done: u64,
    last: Instant,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.last.elapsed() >= Duration::from_secs(1) || (n == 0 && self.total > 0) {
            self.last = Instant::now();
            let percent = (self.done * 100).checked_div(self.total).unwrap_or(100);
            eprint!("\r{}: {percent}% of {} MiB", self.label, self.total >> 20);
            if n == 0 {
                eprintln!();
            }
        }
        Ok(n)
    }
}

fn open_progress(path: &Path, label: &str) -> Result<Progress<std::fs::File>, ClientError> {
    let file = std::fs::File::open(path)
        .map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok(Progress {
        inner: file,
        label: format!("{label} {}", path.display()),
        total,
        done: 0,
        last: Instant::now(),
    })
}

fn hash_file(path: &Path) -> Result<Blob, ClientError> {
    let mut reader = open_progress(path, "hashing")?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Blob {
        sha256,
        size_bytes: reader.done,
    })
}

fn upload(client: &ApiClient, path: &Path) -> Result<Blob, ClientError> {
    let blob = hash_file(path)?;
    let mut reader = open_progress(path, "uploading")?;
    let _: Value = client.put_stream(&format!("/v1/blobs/{}", blob.sha256), &mut reader)?;
    Ok(blob)
}

pub fn image(client: &ApiClient, json: bool, command: ImageCommand) -> Result<(), ClientError> {
    match command {
        ImageCommand::Add {
            name,
            file,
            format,
            arch,
            kernel,
            initrd,
            append,
        } => {
            let image = Image {
                name: name.clone(),
                format,
                arch,
                disk: upload(client, &file)?,
                kernel: kernel.as_deref().map(|k| upload(client, k)).transpose()?,
                initrd: initrd.as_deref().map(|i| upload(client, i)).transpose()?,
                append,
            };
            let body = PutImage {
                image,
                expect: Default::default(),
            };
            let answer: Value = client.put("/v1/images", &body)?;
            let image = body.image;
            report(
                json,
                &answer,
                &format!("image {name} added ({})", image.disk.sha256),
            );
            Ok(())
        }
        ImageCommand::List => {
            let images: BTreeMap<String, Versioned<Image>> = client.get("/v1/images")?;
            if json {
                print_json(&images);
                return Ok(());
            }
            let rows = images.iter().map(|(name, v)| {
                let image = &v.value;
                vec![
                    name.clone(),
                    image.arch.to_string(),
                    image.format.clone(),
                    format!("{} MiB", image.disk.size_bytes >> 20),
                    image.disk.sha256.chars().take(12).collect(),
                    if image.kernel.is_none() {
                        "-".into()
                    } else {
                        "direct".into()
                    },
                ]
            });
            print_table(
                &["NAME", "ARCH", "FORMAT", "SIZE", "SHA256", "KERNEL"],
                rows,
            );
            Ok(())
        }
        ImageCommand::Rm { name } => {
            let answer: Value = client.delete(&format!("/v1/images/{name}"))?;
            report(json, &answer, &format!("image {name} removed"));
            Ok(())
        }
    }
}

pub fn pool(client: &ApiClient, json: bool, command: PoolCommand) -> Result<(), ClientError> {
    match command {
        PoolCommand::Add {
            name,
            cidr,
            gateway,
            resolvers,
            first,
            last,
            delegate,
            replicas,
            storage,
        } => {
            let pool = IpPool {
                name: name.clone(),
                cidr,
                gateway,
                resolvers,
                first,
                last,
                replicas,
                delegate,
                storage,
            };
            let body = PutPool {
                pool,
                expect: Default::default(),
            };
            let answer: Value = client.put("/v1/pools", &body)?;
            report(json, &answer, &format!("pool {name} added"));
            Ok(())
        }
        PoolCommand::List => {
            let pools: Vec<PoolRow> = client.get("/v1/pools")?;
            if json {
                print_json(&pools);
                return Ok(());
            }
            let rows = pools.iter().map(|p| {
                vec![
                    p.pool.name.clone(),
                    p.pool.cidr.clone(),
                    p.pool
                        .gateway
                        .map_or_else(|| "-".to_owned(), |g| g.to_string()),
                    p.used.len().to_string(),
                    p.pool.replicas.unwrap_or(1).to_string(),
                ]
            });
            print_table(&["NAME", "CIDR", "GATEWAY", "USED", "COPIES"], rows);
            Ok(())
        }
        PoolCommand::Rm { name } => {
            let answer: Value = client.delete(&format!("/v1/pools/{name}"))?;
            report(json, &answer, &format!("pool {name} removed"));
            Ok(())
        }
    }
}

fn ssh_keys(args: &[String]) -> Result<Vec<String>, ClientError> {
    let mut keys = Vec::new();
    for arg in args {
        match arg.strip_prefix('@') {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ClientError::Usage(format!("--ssh-key @{path}: {e}")))?;
                keys.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(String::from),
                );
            }
            None => keys.push(arg.clone()),
        }
    }
    Ok(keys)
}

/// `hearth vm recreate NAME --empty-disk`: only with the flag that says the data is given up.
fn recreate(client: &ApiClient, json: bool, vm: &str, empty_disk: bool) -> Result<(), ClientError> {
    if !empty_disk {
        return Err(ClientError::Usage(format!(
            "--empty-disk: required; `hearth vm recreate {vm} --empty-disk` starts {vm} over on an empty disk and gives up its old data"
        )));
    }
    let answer: Value = client.post_json(
        &format!("/v1/vms/{vm}/recreate"),
        &Recreate { empty_disk: true },
    )?;
    report(
        json,
        &answer,
        &format!("{vm}: recreated with an empty disk (its old data is given up)"),
    );
    Ok(())
}

/// A replica as `vm show` says it: its host and state, with the first copy's progress.
fn replica_line(replica: Option<&Replica>) -> String {
    let Some(r) = replica else {
        return "none yet (placed on another worker while the VM runs)".into();
    };
    format!("on {}, {}", r.host, r.summary())
}

fn vm_row(row: &VmRow) -> Vec<String> {
    let vm = &row.vm;
    let request = &vm.request;
    let ips: Vec<String> = vm
        .ips
        .iter()
        .map(|a| format!("{}/{}", a.address, a.prefix))
        .collect();
    vec![
        request.name.clone(),
        vm.id.clone(),
        request.owner.clone(),
        row.shown_phase.to_string(),
        vm.host.clone().unwrap_or_else(|| "-".into()),
        if ips.is_empty() {
            "-".into()
        } else {
            ips.join(",")
        },
        format!(
            "{}c/{}M/{}G",
            request.vcpus, request.memory_mib, request.disk_gib
        ),
    ]
}

const VM_HEADER: [&str; 7] = ["NAME", "ID", "OWNER", "PHASE", "HOST", "IPS", "SIZE"];

pub fn vm(client: &ApiClient, json: bool, command: VmCommand) -> Result<(), ClientError> {
    match command {
        VmCommand::Create(args) => create(client, json, args),
        VmCommand::List { owner } => {
            let path = match &owner {
                Some(owner) => format!("/v1/vms?owner={owner}"),
                None => "/v1/vms".into(),
            };
            let vms: Vec<VmRow> = client.get(&path)?;
            if json {
                print_json(&vms);
                return Ok(());
            }
            print_table(&VM_HEADER, vms.iter().map(vm_row));
            Ok(())
        }
        VmCommand::Show { vm } => {
            let row: VmRow = client.get(&format!("/v1/vms/{vm}"))?;
            if json {
                print_json(&row);
                return Ok(());
            }
            print_table(&VM_HEADER, std::iter::once(vm_row(&row)));
            let disk = &row.vm.disk;
            let generation = disk.generation;
            match &disk.host {
                Some(home) => println!("\ndisk: on {home} (generation {generation})"),
                None => println!("\ndisk: none yet (generation {generation} when made)"),
            }
            if row.vm.request.replicas > 1 {
                println!("replica: {}", replica_line(row.vm.replica.as_ref()));
            }
            if let Some(moving) = &row.vm.migration {
                println!("\nmoving to {}: {}", moving.to, move_progress(moving));
            } else if let Some(why) = &row.vm.move_given_up {
                println!("\nlast move: {why}");
            }
            if let Some(message) = &row.vm.message {
                println!("\n{message}");
            }
            Ok(())
        }
        VmCommand::Migrate {
            vm,
            to,
            cold,
            no_wait,
            cancel,
        } => migrate(client, json, &vm, MigrateVm { to, cold }, no_wait, cancel),
        VmCommand::Start { vm } => vm_post(client, json, &vm, "start", "asked to run"),
        VmCommand::Stop { vm } => vm_post(client, json, &vm, "stop", "asked to stop"),
        VmCommand::Reboot { vm } => vm_post(client, json, &vm, "reboot", "asked to reboot"),
        VmCommand::Recreate { vm, empty_disk } => recreate(client, json, &vm, empty_disk),
        VmCommand::Limits { vm, limits } => {
            let body = hearth_types::api::SetIo { io: limits.io() };
            let answer: Value = client.put(&format!("/v1/vms/{vm}/io"), &body)?;
            report(json, &answer, &format!("{vm}: limits set"));
            Ok(())
        }
        VmCommand::Reassign { vm, owner } => {
            let body = hearth_types::api::SetOwner {
                owner: owner.clone(),
            };
            let answer: Value = client.post_json(&format!("/v1/vms/{vm}/owner"), &body)?;
            report(json, &answer, &format!("{vm}: now owned by {owner}"));
            Ok(())
        }
        VmCommand::Console {
            vm,
            follow,
            interactive,
        } => console(client, json, &vm, follow, interactive),
        VmCommand::Load { vm, week } => load(client, json, &vm, week),
        VmCommand::Delete { vm } => {
            let answer: Value = client.delete(&format!("/v1/vms/{vm}"))?;
            report(json, &answer, &format!("{vm}: deleting"));
            Ok(())
        }
    }
}

/// Where a move is, in words: `stopping`, or `copying its disk, 45% (120 of 260 MiB)`.
fn move_progress(moving: &hearth_types::compute::Migration) -> String {
    use hearth_types::compute::MigrationStage;
    let copied = |what: &str| match moving.total_bytes {
        0 => what.to_owned(),
        total => format!(
            "{what}, {}% ({} of {} MiB)",
            moving.done_bytes * 100 / total,
            moving.done_bytes >> 20,
            total >> 20
        ),
    };
    match moving.stage {
        MigrationStage::Stopping => "stopping the VM".into(),
        MigrationStage::Copying => copied("copying its disk"),
        MigrationStage::Preparing => "live: the target gets ready".into(),
        MigrationStage::Mirroring => copied("live: copying its disk, then its RAM"),
        MigrationStage::Switching => "live: paused for the switch".into(),
    }
}

/// `hearth vm migrate`: asks for the move (or gives it up), then follows it until the VM
/// runs on the target, printing each change of progress with the copy's rate on stderr.
fn migrate(
    client: &ApiClient,
    json: bool,
    vm: &str,
    request: MigrateVm,
    no_wait: bool,
    cancel: bool,
) -> Result<(), ClientError> {
    if cancel {
        let answer: Value = client.delete(&format!("/v1/vms/{vm}/migration"))?;
        report(json, &answer, &format!("{vm}: move given up"));
        return Ok(());
    }
    let before: VmRow = client.get(&format!("/v1/vms/{vm}"))?;
    let answer: Value = client.post_json(&format!("/v1/vms/{vm}/migrate"), &request)?;
    // The answer comes once the leader committed it; this node's copy follows shortly.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut row: VmRow = client.get(&format!("/v1/vms/{vm}"))?;
    while row.vm.migration.is_none() && row.vm.host == before.vm.host && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        row = client.get(&format!("/v1/vms/{vm}"))?;
    }
    if no_wait {
        let to = row
            .vm
            .migration
            .as_ref()
            .map_or("its target", |m| m.to.as_str());
        report(json, &answer, &format!("{vm}: moving to {to}"));
        return Ok(());
    }
    follow_move(client, json, vm, &before, row)
}

/// Polls the VM until its move is over: the VM on another host and running there (or
/// stopped, as its owner asked), or the move given up (an error, with the reason the cluster
/// recorded). Each change of progress goes to stderr, with the copy's rate.
fn follow_move(
    client: &ApiClient,
    json: bool,
    vm: &str,
    before: &VmRow,
    mut row: VmRow,
) -> Result<(), ClientError> {
    use hearth_types::compute::Phase;
    let from = before.vm.host.clone().unwrap_or_default();
    let mut last_line = String::new();
    let mut last_bytes = (Instant::now(), 0u64);
    loop {
        match (&row.vm.migration, row.vm.host.as_deref()) {
            (Some(moving), _) => {
                let (then, bytes) = last_bytes;
                let mut line = format!("{vm}: {from} -> {}: {}", moving.to, move_progress(moving));
                if line != last_line && !json {
                    last_line = line.clone();
                    let seconds = then.elapsed().as_secs_f64();
                    if moving.done_bytes > bytes && seconds > 0.0 {
                        let rate = (moving.done_bytes - bytes) as f64 / 1048576.0 / seconds;
                        line.push_str(&format!(", {rate:.1} MiB/s"));
                        last_bytes = (Instant::now(), moving.done_bytes);
                    }
                    eprintln!("{line}");
                }
            }
            (None, Some(host)) if host != from => {
                let stopped = row.vm.request.power == Power::Stopped;
                let done = match row.shown_phase {
                    Phase::Running => {
                        Some(format!("{vm}: moved from {from} to {host}; running there"))
                    }
                    Phase::Stopped if stopped => Some(format!(
                        "{vm}: moved from {from} to {host}; stopped, as asked"
                    )),
                    Phase::Crashed | Phase::Failed | Phase::Lost => {
                        let why = row.vm.message.clone().unwrap_or_default();
                        return Err(ClientError::Failed(format!(
                            "{vm}: moved to {host}, but it does not run there ({}): {why}",
                            row.shown_phase
                        )));
                    }
                    _ => None,
                };
                if let Some(done) = done {
                    if json {
                        print_json(&row);
                    } else {
                        println!("{done}");
                    }
                    return Ok(());
                }
            }
            (None, _) => {
                let why = row.vm.move_given_up.clone().unwrap_or_default();
                return Err(ClientError::Failed(format!(
                    "{vm}: the move did not happen; {vm} stays on {from}: {why}"
                )));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        row = client.get(&format!("/v1/vms/{vm}"))?;
    }
}

/// `POST /v1/vms/VM/ACTION`, saying `done` when it was taken.
fn vm_post(
    client: &ApiClient,
    json: bool,
    vm: &str,
    action: &str,
    done: &str,
) -> Result<(), ClientError> {
    let answer: Value = client.post(&format!("/v1/vms/{vm}/{action}"))?;
    report(json, &answer, &format!("{vm}: {done}"));
    Ok(())
}

/// Prints the VM's console log, and with `follow` what the guest writes next, until
/// interrupted.
fn console(
    client: &ApiClient,
    json: bool,
    vm: &str,
    follow: bool,
    interactive: bool,
) -> Result<(), ClientError> {
    if interactive {
        return crate::console_cli::interactive(client, vm);
    }
    let mut answer: ConsoleText = client.get(&format!("/v1/vms/{vm}/console"))?;
    loop {
        if json {
            print_json(&answer);
        } else {
            use std::io::Write;
            print!("{}", answer.text.replace('\r', ""));
            let _ = std::io::stdout().flush();
        }
        if !follow {
            return Ok(());
        }
        // The poll interval of --follow.
        std::thread::sleep(Duration::from_millis(500));
        let next = answer.next;
        answer = client.get(&format!("/v1/vms/{vm}/console?offset={next}"))?;
    }
}

fn load(client: &ApiClient, json: bool, vm: &str, week: bool) -> Result<(), ClientError> {
    let stats: VmStats = client.get(&format!("/v1/vms/{vm}/stats"))?;
    if json {
        print_json(&stats);
        return Ok(());
    }
    let series = if week { &stats.week } else { &stats.day };
    if series.buckets.is_empty() {
        println!(
            "{}: no figures yet (its host {} samples it while it runs)",
            stats.vm, stats.host
        );
        return Ok(());
    }
    let rate = |bytes: u64, covered: u64| {
        hearth_agent::web::pages::per_second(bytes as f64 * 1000.0 / covered.max(1) as f64)
    };
    let vcpus = u64::from(stats.vcpus.max(1));
    print_table(
        &["FROM", "CPU", "READ", "WRITTEN", "RECEIVED", "SENT"],
        series.buckets.iter().map(|b| {
            let covered = b.covered_ms.max(1);
            let net = |f: fn(&hearth_types::vmstats::Net) -> u64| {
                b.net
                    .as_ref()
                    .map_or("-".to_owned(), |n| rate(f(n), covered))
            };
            vec![
                hearth_agent::web::utc(b.start_ms / 1000),
                format!(
                    "{:.1} %",
                    b.cpu_ms as f64 * 100.0 / (covered * vcpus) as f64
                ),
                rate(b.read_bytes, covered),
                rate(b.written_bytes, covered),
                net(|n| n.rx_bytes),
                net(|n| n.tx_bytes),
            ]
        }),
    );
    Ok(())
}

fn create(client: &ApiClient, json: bool, args: CreateArgs) -> Result<(), ClientError> {
    let request = VmRequest {
        name: args.name.clone(),
        owner: args.owner,
        arch: args.arch,
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
        disk_gib: args.disk_gib,
        image: args.image,
        ssh_keys: ssh_keys(&args.ssh_keys)?,
        pools: args.pools,
        io: args.limits.io(),
        power: if args.stopped {
            Power::Stopped
        } else {
            Power::Running
        },
        // 0: the default of its pools.
        replicas: args.replicas.unwrap_or(0),
    };
    let answer: Value = client.post_json("/v1/vms", &request)?;
    let id = answer["result"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // Placement is the leader's next step; wait for it, briefly.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut row: VmRow = client.get(&format!("/v1/vms/{id}"))?;
    while row.vm.host.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        row = client.get(&format!("/v1/vms/{id}"))?;
    }
    if json {
        print_json(&row);
    } else if let Some(host) = &row.vm.host {
        println!(
            "{} ({id}) placed on {host}; `hearth vm show {}` follows it",
            args.name, args.name
        );
    } else {
        println!(
            "{} ({id}) created, pending: no worker has room yet; `hearth vm show {}` follows it",
            args.name, args.name
        );
    }
    Ok(())
}

/// `hearth hosts`: the workers, with the N+1 check.
pub fn hosts(client: &ApiClient, json: bool) -> Result<(), ClientError> {
    use hearth_types::compute::Evacuation;
    let rows: Vec<hearth_types::api::HostRow> = client.get("/v1/hosts")?;
    if json {
        print_json(&rows);
        return Ok(());
    }
    let lines = rows.iter().map(|h| {
        let state = h.state.map_or("unknown", |s| s.as_str());
        let evacuation = match &h.evacuation {
            None => "-".to_owned(),
            Some(Evacuation::Moving) => "moving".to_owned(),
            Some(Evacuation::Done) => "done".to_owned(),
            Some(Evacuation::Stopped { why }) => format!("stopped: {why}"),
        };
        let n_plus_one = match &h.cannot_evacuate {
            None => "yes".to_owned(),
            Some(why) => format!("no: {why}"),
        };
        vec![
            h.name.clone(),
            state.to_owned(),
            format!(
                "{}c/{}M/{}G",
                h.capacity.vcpus, h.capacity.memory_mib, h.capacity.disk_gib
            ),
            h.vms.to_string(),
            if h.fenced { "yes" } else { "no" }.to_owned(),
            evacuation,
            n_plus_one,
        ]
    });
    print_table(
        &[
            "NAME",
            "STATE",
            "CAPACITY",
            "VMS",
            "FENCED",
            "EVACUATION",
            "N+1 (OTHERS HOLD ITS VMS)",
        ],
        lines,
    );
    Ok(())
}

/// `hearth node evacuate NAME`: asks for it (or stops it), then follows it until the host
/// holds no VM, printing each move's progress on stderr.
pub fn evacuate(
    client: &ApiClient,
    json: bool,
    name: &str,
    no_wait: bool,
    stop: bool,
) -> Result<(), ClientError> {
    use hearth_types::compute::Evacuation;
    if stop {
        let answer: Value = client.delete(&format!("/v1/nodes/{name}/evacuation"))?;
        report(json, &answer, &format!("{name}: evacuation stopped"));
        return Ok(());
    }
    let answer: Value = client.post(&format!("/v1/nodes/{name}/evacuate"))?;
    if no_wait {
        report(json, &answer, &format!("{name}: drained, evacuating"));
        return Ok(());
    }
    let mut last_line = String::new();
    loop {
        let hosts: Vec<hearth_types::api::HostRow> = client.get("/v1/hosts")?;
        let host = hosts
            .into_iter()
            .find(|h| h.name == name)
            .ok_or_else(|| ClientError::Failed(format!("{name} is no longer a worker host")))?;
        match &host.evacuation {
            Some(Evacuation::Done) => {
                if json {
                    print_json(&host);
                } else {
                    println!("{name}: evacuated; no VM is left on it (it stays drained)");
                }
                return Ok(());
            }
            Some(Evacuation::Stopped { why }) => {
                return Err(ClientError::Failed(format!(
                    "{name}: the evacuation stopped, {} VMs are left on it: {why}",
                    host.vms
                )));
            }
            None => {
                return Err(ClientError::Failed(format!(
                    "{name}: the evacuation was stopped, {} VMs are left on it",
                    host.vms
                )));
            }
            Some(Evacuation::Moving) => {}
        }
        let vms: Vec<VmRow> = client.get("/v1/vms")?;
        let moving = vms.iter().find_map(|row| {
            let m = row.vm.migration.as_ref()?;
            (row.vm.host.as_deref() == Some(name)).then(|| (row.vm.request.name.clone(), m))
        });
        let line = match moving {
            Some((vm, m)) => format!(
                "{name}: {} VMs left; {vm} -> {}: {}",
                host.vms,
                m.to,
                move_progress(m)
            ),
            None => format!("{name}: {} VMs left", host.vms),
        };
        if line != last_line && !json {
            eprintln!("{line}");
            last_line = line;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn drift(client: &ApiClient, json: bool) -> Result<(), ClientError> {
    let entries: Vec<Drift> = client.get("/v1/drift")?;
    if json {
        print_json(&entries);
        return Ok(());
    }
    let rows = entries.iter().map(|d| {
        vec![
            d.id.clone(),
            d.kind.as_str().into(),
            d.detail.clone(),
            d.fix.clone(),
        ]
    });
    print_table(&["ID", "KIND", "DETAIL", "FIX"], rows);
    Ok(())
}

/// Applies a drift entry's proposed fix, by its id from `hearth drift`.
pub fn fix(client: &ApiClient, json: bool, id: &str, destroy: bool) -> Result<(), ClientError> {
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(ClientError::Usage(format!(
            "ID: `{id}` is not a drift id (HOST/KIND/VM, as `hearth drift` lists them)"
        )));
    }
    let query = if destroy { "?destroy=true" } else { "" };
    let answer: Value = client.post(&format!("/v1/drift/{id}/fix{query}"))?;
    report(
        json,
        &answer,
        &format!("{id}: fix asked; `hearth drift` shows when it is gone"),
    );
    Ok(())
}
