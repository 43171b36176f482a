//! Desired-state objects for members' virtual machines: base images, IP pools, VMs with their
//! placement and reported phase, worker hosts' capacity and fencing, and drift entries.
//! Plain data and pure helpers (address allocation, CIDR parsing); no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::names::check_name;
use crate::versioned::Versioned;

/// A guest CPU architecture; the host runs `qemu-system-<arch>`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    #[serde(rename = "x86_64")]
    X86_64,
    Aarch64,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            other => Err(format!("arch: `{other}` is not x86_64 or aarch64")),
        }
    }
}

/// A file identified by its content: workers keep verified copies under `data_dir/images`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Blob {
    /// Lowercase hex SHA-256 of the content.
    #[schemars(regex(pattern = crate::names::SHA256_PATTERN))]
    pub sha256: String,
    pub size_bytes: u64,
}

/// A base image VMs' disks are overlays on. With `kernel`, QEMU boots that kernel directly
/// (with `initrd` and `append`) instead of the disk's boot loader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
// An initrd only with a kernel.
#[schemars(extend("anyOf" = [
    {"properties": {"initrd": {"type": "null"}}},
    {"required": ["kernel"], "properties": {"kernel": {"type": "object"}}}
]))]
pub struct Image {
    #[schemars(regex(pattern = crate::names::NAME_PATTERN))]
    pub name: String,
    /// `qcow2` or `raw`.
    #[schemars(extend("enum" = ["qcow2", "raw"]))]
    pub format: String,
    pub arch: Arch,
    pub disk: Blob,
    #[serde(default)]
    pub kernel: Option<Blob>,
    #[serde(default)]
    pub initrd: Option<Blob>,
    #[serde(default)]
    pub append: Option<String>,
}

impl Image {
    pub fn validate(&self) -> Result<(), String> {
        check_name("name", &self.name)?;
        if !matches!(self.format.as_str(), "qcow2" | "raw") {
            return Err(format!("format: `{}` is not qcow2 or raw", self.format));
        }
        for (field, blob) in [
            ("sha256", Some(&self.disk)),
            ("kernel.sha256", self.kernel.as_ref()),
            ("initrd.sha256", self.initrd.as_ref()),
        ] {
            if let Some(blob) = blob
                && !is_sha256(&blob.sha256)
            {
                return Err(format!("{field}: give 64 lowercase hex digits"));
            }
        }
        if self.initrd.is_some() && self.kernel.is_none() {
            return Err("initrd: only with a kernel".into());
        }
        Ok(())
    }

    /// Every blob the image needs on a host.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.disk)
            .chain(self.kernel.as_ref())
            .chain(self.initrd.as_ref())
    }
}

/// A network VMs get static addresses from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IpPool {
    #[schemars(regex(pattern = crate::names::NAME_PATTERN))]
    pub name: String,
    /// `192.0.2.0/24` or `2001:db8::/64`.
    pub cidr: String,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub resolvers: Vec<IpAddr>,
    /// The first and last allocatable address; the whole network (less its network and
    /// broadcast addresses and the gateway) when absent.
    #[serde(default)]
    pub first: Option<IpAddr>,
    #[serde(default)]
    pub last: Option<IpAddr>,
    /// Copies of the disk of a VM that takes an address from this pool and does not say
    /// (`replicas` 0 or absent): 2 makes replicated disks the pool's rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2))]
    pub replicas: Option<u8>,
    /// IPv6 only: give each VM a whole network of this prefix length (64: a routed /64 per
    /// VM) instead of one address. The first such network, the link's, is never given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub delegate: Option<u8>,
    /// Where the disks of VMs that take an address from this pool are kept (the first of
    /// a VM's pools that says wins over its owner's plan); local qcow2 files when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
}

/// Where a VM's disk is kept. Chosen when the VM is created (by its pools, else its owner's
/// plan) and never changed after.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Storage {
    /// A qcow2 file on one worker's own disk: the VM runs only where that file is.
    #[default]
    Local,
    /// An image in a pool of the co-op's Ceph cluster, through QEMU's rbd driver, cloned
    /// from the VM's image imported once into the pool: any worker with `[ceph]` in its
    /// config may run it, after Ceph has fenced the last one (`docs/rbd.md`).
    Rbd {
        #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]{1,64}$"))]
        pool: String,
    },
}

impl Storage {
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Storage::Local => Ok(()),
            Storage::Rbd { pool } => {
                let ok = (1..=64).contains(&pool.len())
                    && !pool.starts_with('.')
                    && pool
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
                match ok {
                    true => Ok(()),
                    false => Err(format!(
                        "storage.pool: `{pool}` is not a Ceph pool name; give 1-64 letters, digits, `_`, `.` or `-`"
                    )),
                }
            }
        }
    }

    pub fn is_local(&self) -> bool {
        *self == Storage::Local
    }

    /// The generation a disk of `generation` has once moved to another host: a local disk's
    /// copy there is a new generation (the copy left behind is then older); a disk on RBD is
    /// not copied, and the same image keeps its generation (and its name).
    pub fn moved_generation(&self, generation: u64) -> u64 {
        match self {
            Storage::Local => generation + 1,
            Storage::Rbd { .. } => generation,
        }
    }

    /// The Ceph pool, for a disk on RBD.
    pub fn rbd_pool(&self) -> Option<&str> {
        match self {
            Storage::Rbd { pool } => Some(pool),
            Storage::Local => None,
        }
    }

    /// As people write it: `local` or `rbd:POOL`.
    pub fn parse(text: &str) -> Result<Storage, String> {
        let storage = match text.split_once(':') {
            None if text == "local" => Storage::Local,
            Some(("rbd", pool)) => Storage::Rbd { pool: pool.into() },
            _ => {
                return Err(format!(
                    "storage: `{text}` is not a storage; give `local` or `rbd:POOL`"
                ));
            }
        };
        storage.validate().map(|()| storage)
    }
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Storage::Local => f.write_str("local"),
            Storage::Rbd { pool } => write!(f, "rbd:{pool}"),
        }
    }
}

impl IpPool {
    pub fn validate(&self) -> Result<(), String> {
        check_name("name", &self.name)?;
        if self.replicas.is_some_and(|r| !(1..=2).contains(&r)) {
            return Err("replicas: give 1 or 2, or leave it out (one copy)".into());
        }
        let (network, prefix) = parse_cidr(&self.cidr)?;
        let inside = |field: &str, ip: &IpAddr| {
            if contains(network, prefix, *ip) || (field == "gateway" && is_link_local(ip)) {
                Ok(())
            } else {
                Err(format!("{field}: {ip} is outside {}", self.cidr))
            }
        };
        if let Some(gateway) = &self.gateway {
            inside("gateway", gateway)?;
        }
        if let Some(first) = &self.first {
            inside("first", first)?;
        }
        if let Some(last) = &self.last {
            inside("last", last)?;
        }
        if let Some(storage) = &self.storage {
            storage.validate()?;
        }
        if let Some(length) = self.delegate {
            if network.is_ipv4() {
                return Err("delegate: only for an IPv6 pool".into());
            }
            if length <= prefix || length > 64 {
                return Err(format!(
                    "delegate: give a prefix length from {} to 64 (64: a /64 per VM)",
                    prefix + 1
                ));
            }
            if self.first.is_some() || self.last.is_some() {
                return Err(
                    "first: not with delegate; every network but the first is given".into(),
                );
            }
        }
        let (first, last) = self.range()?;
        if first > last {
            return Err(format!("first: {} is after last {}", first, last));
        }
        Ok(())
    }

    /// The prefix length of the pool's network.
    pub fn prefix(&self) -> Result<u8, String> {
        Ok(parse_cidr(&self.cidr)?.1)
    }

    /// The allocatable range as numbers (IPv4 addresses in the low 32 bits).
    fn range(&self) -> Result<(u128, u128), String> {
        let (network, prefix) = parse_cidr(&self.cidr)?;
        let bits: u32 = if network.is_ipv4() { 32 } else { 128 };
        let base = to_number(network);
        // A /0 of IPv6 has 2^128 addresses: the shift would overflow, so it is spelled out.
        let host_bits = bits - prefix as u32;
        let size_minus_one = match 1u128.checked_shl(host_bits) {
            Some(size) if host_bits < 128 => size - 1,
            _ => u128::MAX,
        };
        // Skip the network address, and the broadcast address on IPv4.
        let (mut first, mut last) = (base, base + size_minus_one);
        if size_minus_one >= 3 {
            first += 1;
            if network.is_ipv4() {
                last -= 1;
            }
        }
        if let Some(ip) = self.first {
            first = to_number(ip);
        }
        if let Some(ip) = self.last {
            last = to_number(ip);
        }
        Ok((first, last))
    }

    /// The lowest allocatable address not in `used` and not the gateway; `None` when the pool
    /// is exhausted. Deterministic, so every replica allocates the same address.
    pub fn allocate(&self, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
        if let Some(length) = self.delegate {
            return self.allocate_network(length, used);
        }
        let (first, last) = self.range().ok()?;
        let v4 = parse_cidr(&self.cidr).ok()?.0.is_ipv4();
        // Bounded by the number of used addresses plus the gateway: each step skips one. An
        // inclusive range never steps past its end, so a pool ending at the last address of
        // the family cannot wrap around to the first.
        (first..=last)
            .map(|n| from_number(n, v4))
            .find(|ip| Some(*ip) != self.gateway && !used.contains(ip))
    }
}

impl IpPool {
    /// The first host address of the lowest free network of prefix `length`, skipping the
    /// first (the link's) and the gateway's.
    fn allocate_network(&self, length: u8, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
        let (network, prefix) = parse_cidr(&self.cidr).ok()?;
        if network.is_ipv4() || length <= prefix || length > 64 {
            return None;
        }
        let step = 1u128 << (128 - length);
        let count = 1u128 << (length - prefix);
        let base = to_number(network);
        let holds_gateway = |start: u128| {
            self.gateway
                .is_some_and(|gw| (start..start + step).contains(&to_number(gw)))
        };
        (1..count)
            .map(|i| base + i * step)
            .filter(|start| !holds_gateway(*start))
            .map(|start| from_number(start + 1, false))
            .find(|ip| !used.contains(ip))
    }

    /// The prefix length each VM's address gets: the delegated network's, or the pool's.
    pub fn assigned_prefix(&self) -> Result<u8, String> {
        match self.delegate {
            Some(length) => Ok(length),
            None => self.prefix(),
        }
    }
}

/// An IPv6 link-local address (`fe80::/10`), a routed pool's usual gateway.
fn is_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// Per-disk IO limits, applied through QEMU's block throttling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IoLimits {
    #[serde(default)]
    #[schemars(range(min = 1, max = crate::quota::IO_MAX))]
    pub iops: Option<u64>,
    #[serde(default)]
    #[schemars(range(min = 1, max = crate::quota::IO_MAX))]
    pub bytes_per_sec: Option<u64>,
    /// Network bytes per second into the guest, shaped on its tap (bridged VMs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::quota::IO_MAX))]
    pub net_in_bytes_per_sec: Option<u64>,
    /// Network bytes per second out of the guest, dropped above it at its tap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::quota::IO_MAX))]
    pub net_out_bytes_per_sec: Option<u64>,
}

impl IoLimits {
    /// The disk's limits only (what QEMU throttles).
    pub fn disk(&self) -> IoLimits {
        IoLimits {
            iops: self.iops,
            bytes_per_sec: self.bytes_per_sec,
            ..IoLimits::default()
        }
    }

    /// Whether a network limit is set (which a release before state level 3 cannot read).
    pub fn limits_network(&self) -> bool {
        self.net_in_bytes_per_sec.is_some() || self.net_out_bytes_per_sec.is_some()
    }

    /// Each limit, when set, between 1 and QEMU's largest (`quota::IO_MAX`, 10^15).
    pub fn validate(&self) -> Result<(), String> {
        for (field, value) in [
            ("iops", self.iops),
            ("bytes_per_sec", self.bytes_per_sec),
            ("net_in_bytes_per_sec", self.net_in_bytes_per_sec),
            ("net_out_bytes_per_sec", self.net_out_bytes_per_sec),
        ] {
            if let Some(value) = value
                && !(1..=crate::quota::IO_MAX).contains(&value)
            {
                return Err(format!(
                    "io.{field}: {value} is out of range; give 1 to 1000000000000000, or leave it out for no limit"
                ));
            }
        }
        Ok(())
    }
}

/// Whether a VM should be running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Power {
    Running,
    Stopped,
}

impl Power {
    pub fn as_str(self) -> &'static str {
        match self {
            Power::Running => "running",
            Power::Stopped => "stopped",
        }
    }
}

/// What a member asks for: everything about a VM that its owner decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmRequest {
    #[schemars(regex(pattern = crate::names::NAME_PATTERN))]
    pub name: String,
    #[schemars(length(min = 1, max = 64))]
    pub owner: String,
    #[serde(default = "default_arch")]
    pub arch: Arch,
    #[schemars(range(min = 1, max = 256))]
    pub vcpus: u32,
    #[schemars(range(min = 16, max = 4_194_304))]
    pub memory_mib: u64,
    #[schemars(range(min = 1, max = 65536))]
    pub disk_gib: u64,
    #[schemars(regex(pattern = crate::names::NAME_PATTERN))]
    pub image: String,
    /// OpenSSH public keys, one line each.
    #[serde(default)]
    #[schemars(inner(regex(pattern = "^(ssh-|ecdsa-)[^\\n]*$")))]
    pub ssh_keys: Vec<String>,
    /// The pools to take one address each from.
    #[serde(default)]
    pub pools: Vec<String>,
    #[serde(default)]
    pub io: IoLimits,
    #[serde(default = "default_power")]
    pub power: Power,
    /// Copies of its disk: 1, or 2 for a second, synchronous copy on another worker
    /// (`docs/replicas.md`). 0 or absent when asking: the most any of its `pools` asks
    /// for, else 1; the VM is recorded with the number it got.
    #[serde(default)]
    #[schemars(range(max = 2))]
    pub replicas: u8,
}

fn default_arch() -> Arch {
    Arch::X86_64
}
fn default_power() -> Power {
    Power::Running
}

impl VmRequest {
    pub fn validate(&self) -> Result<(), String> {
        check_name("name", &self.name)?;
        if self.owner.is_empty() || self.owner.len() > 64 {
            return Err("owner: give 1 to 64 characters".into());
        }
        if !(1..=256).contains(&self.vcpus) {
            return Err("vcpus: give 1 to 256".into());
        }
        if !(16..=4 * 1024 * 1024).contains(&self.memory_mib) {
            return Err("memory_mib: give 16 to 4194304".into());
        }
        if !(1..=65536).contains(&self.disk_gib) {
            return Err("disk_gib: give 1 to 65536".into());
        }
        check_name("image", &self.image)?;
        self.io.validate()?;
        if self.replicas > 2 {
            return Err(
                "replicas: give 1 (one copy) or 2 (a synchronous copy on another worker)".into(),
            );
        }
        for key in &self.ssh_keys {
            if key.contains('\n') || !key.starts_with("ssh-") && !key.starts_with("ecdsa-") {
                return Err("ssh_keys: give OpenSSH public keys, one line each".into());
            }
        }
        Ok(())
    }
}

/// Where a VM is in its life, as the cluster last saw it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Accepted, waiting for a host with room.
    Pending,
    /// A host was chosen; it has not reported yet.
    Placed,
    /// The host is fetching the image and creating the disk.
    Creating,
    /// QEMU runs.
    Running,
    /// Shut down as asked.
    Stopped,
    /// The host is shutting it down.
    Stopping,
    /// QEMU keeps dying; the host stopped restarting it.
    Crashed,
    /// The host cannot run it (the message says why).
    Failed,
    /// Its host is dead: it may or may not still run there.
    Lost,
    /// Being deleted.
    Deleting,
}

impl Phase {
    pub const ALL: [Phase; 10] = [
        Phase::Pending,
        Phase::Placed,
        Phase::Creating,
        Phase::Running,
        Phase::Stopped,
        Phase::Stopping,
        Phase::Crashed,
        Phase::Failed,
        Phase::Lost,
        Phase::Deleting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Placed => "placed",
            Phase::Creating => "creating",
            Phase::Running => "running",
            Phase::Stopped => "stopped",
            Phase::Stopping => "stopping",
            Phase::Crashed => "crashed",
            Phase::Failed => "failed",
            Phase::Lost => "lost",
            Phase::Deleting => "deleting",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A VM in the desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Vm {
    /// Assigned at creation: `vm-` and the creating log index, so it never repeats.
    pub id: String,
    #[serde(flatten)]
    pub request: VmRequest,
    /// One address per requested pool, allocated at creation.
    pub ips: Vec<Assigned>,
    /// The host the leader placed it on.
    pub host: Option<String>,
    /// Asked to be deleted: the host removes its disk, then the VM is forgotten.
    #[serde(default)]
    pub deleting: bool,
    /// What its host last reported (or the leader, for placement).
    pub phase: Phase,
    #[serde(default)]
    pub message: Option<String>,
    /// Log index of the last phase change.
    #[serde(default)]
    pub phase_since: u64,
    /// Reboots asked for (a counter), and reboots its host has done.
    #[serde(default)]
    pub reboots_asked: u64,
    #[serde(default)]
    pub reboots_done: u64,
    /// Where the VM's disk lives. Its host records it before QEMU first runs on the disk; only
    /// an admin's `recreate --empty-disk` takes it back.
    #[serde(default)]
    pub disk: DiskHome,
    /// The image the disk was made from, as it was when the VM was created (or recreated).
    /// New content under the image's name is a new version and does not change it, so the
    /// disk's backing file never changes under it. Absent only in states written before.
    #[serde(default)]
    pub base: Option<Image>,
    /// A move to another host, under way (see `docs/migration.md`): it ends when the target
    /// records the disk as its own, or is given up. Meanwhile hosts stop the VM and start it
    /// nowhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<Migration>,
    /// Where the disk was before its last move, and its generation there: the copy left
    /// there is superseded, and that host archives it (never deletes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_from: Option<DiskHome>,
    /// Why the last move was given up, until the next one is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub move_given_up: Option<String>,
    /// The second copy of its disk, for a VM asking for `replicas = 2` (`docs/replicas.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<Replica>,
    /// Restarted from its replica (that replica's `since`): its new home takes that copy as
    /// its disk. Kept until the next replica is placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt_replica: Option<u64>,
    /// Where its disk is kept, as chosen at its creation.
    #[serde(default, skip_serializing_if = "Storage::is_local")]
    pub storage: Storage,
    /// On RBD: the Ceph client addresses of the QEMU processes its disk's home ran it with
    /// (the newest last, at most [`RBD_CLIENTS_KEPT`]), each put on Ceph's blocklist before
    /// another worker takes the disk over.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rbd_clients: Vec<String>,
}

/// The Ceph client addresses a VM keeps (older ones belong to QEMU processes long gone).
pub const RBD_CLIENTS_KEPT: usize = 8;

/// A synchronous second copy of a VM's disk on another worker: the VM's QEMU mirrors every
/// write into it (`blockdev-mirror`, `copy-mode=write-blocking`) over NBD under TLS, so a
/// write the guest sees completed is on both hosts once the copy is in sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Replica {
    /// The host keeping the copy; never the disk's home.
    pub host: String,
    /// Log index of its placement: names this copy (and its key) among later ones.
    pub since: u64,
    pub state: ReplicaState,
    /// Where the replica host's NBD export listens (`IP:PORT`), once it set one up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<String>,
    /// The first copy's progress, as the disk's home last reported it.
    #[serde(default)]
    pub done_bytes: u64,
    #[serde(default)]
    pub total_bytes: u64,
    /// Why it is degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where a replica is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaState {
    /// Placed: the replica host makes an empty copy and exports it.
    Preparing,
    /// The disk's home copies the disk into it; guest writes go to both meanwhile.
    Syncing,
    /// Every write the guest sees completed is on both copies.
    InSync,
    /// The copy fell behind (its host, the link or the mirror failed, or the VM restarted):
    /// it is not the VM's disk, and the leader places a fresh one.
    Degraded,
}

impl Replica {
    /// Its state as `vm show` and the panel say it: the first copy's percent while syncing,
    /// why when degraded.
    pub fn summary(&self) -> String {
        match self.state {
            ReplicaState::Syncing if self.total_bytes > 0 => format!(
                "syncing {}% ({} of {} MiB)",
                self.done_bytes * 100 / self.total_bytes,
                self.done_bytes >> 20,
                self.total_bytes >> 20
            ),
            ReplicaState::Degraded => format!(
                "degraded: {}",
                self.message.as_deref().unwrap_or("it fell behind")
            ),
            state => state.as_str().to_owned(),
        }
    }
}

impl ReplicaState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Preparing => "preparing",
            ReplicaState::Syncing => "syncing",
            ReplicaState::InSync => "in-sync",
            ReplicaState::Degraded => "degraded",
        }
    }
}

/// A move of a VM and its disk to another host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Migration {
    /// The target host.
    pub to: String,
    pub stage: MigrationStage,
    /// Log index of the request.
    pub since: u64,
    /// Bytes copied so far, and how many there are, as the copying host last reported them:
    /// the disk for a cold move; the disk, then the RAM, for a live one.
    #[serde(default)]
    pub done_bytes: u64,
    #[serde(default)]
    pub total_bytes: u64,
    /// A live move: the VM runs on while its disk is mirrored and its RAM copied, and pauses
    /// only for the switch (`docs/migration.md`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub live: bool,
    /// Where the target's QEMU listens for a live move's disk (NBD) and RAM (QEMU
    /// migration), both behind TLS with a key derived from the cluster secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<Listening>,
}

/// The target's endpoints of a live move, as `IP:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Listening {
    /// Empty for a disk on RBD: both hosts reach the same image, and only the RAM moves.
    pub nbd: String,
    pub migrate: String,
}

/// Where a migration is. A cold one goes Stopping, Copying; a live one Preparing,
/// Mirroring, Switching. Either ends with the switch (`MoveDisk`) or is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MigrationStage {
    /// The source host stops the VM.
    Stopping,
    /// The VM is stopped at its source, its disk at rest; the target copies it.
    Copying,
    /// Live: the target starts a paused QEMU that waits for the VM, and says where it listens.
    Preparing,
    /// Live: the source mirrors the disk to the target, then moves the RAM; the VM runs.
    Mirroring,
    /// Live: the move is complete and the source QEMU paused; the target takes the disk as
    /// its own, switches the VM and lets it run. Nothing starts the VM anywhere meanwhile.
    Switching,
}

impl MigrationStage {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationStage::Stopping => "stopping",
            MigrationStage::Copying => "copying",
            MigrationStage::Preparing => "preparing",
            MigrationStage::Mirroring => "mirroring",
            MigrationStage::Switching => "switching",
        }
    }
}

impl Vm {
    /// A small VM as tests and simulations write one: 1 vCPU, 64 MiB, 1 GiB over image
    /// `tiny`, asked to run, with no address, placed nowhere, no disk yet (generation 1).
    pub fn example(id: &str, name: &str, owner: &str) -> Vm {
        Vm {
            id: id.into(),
            request: VmRequest {
                name: name.into(),
                owner: owner.into(),
                arch: Arch::X86_64,
                vcpus: 1,
                memory_mib: 64,
                disk_gib: 1,
                image: "tiny".into(),
                ssh_keys: vec![],
                pools: vec![],
                io: IoLimits::default(),
                power: Power::Running,
                replicas: 1,
            },
            ips: vec![],
            host: None,
            deleting: false,
            phase: Phase::Pending,
            message: None,
            phase_since: 0,
            reboots_asked: 0,
            reboots_done: 0,
            disk: DiskHome {
                host: None,
                generation: 1,
            },
            base: None,
            migration: None,
            moved_from: None,
            move_given_up: None,
            replica: None,
            adopt_replica: None,
            storage: Storage::Local,
            rbd_clients: Vec::new(),
        }
    }

    /// Sets the phase and its message; `phase_since` moves only when the phase changes.
    pub fn set_phase(&mut self, phase: Phase, message: Option<String>, index: u64) {
        if self.phase != phase {
            self.phase_since = index;
        }
        self.phase = phase;
        self.message = message;
    }

    /// The image this VM's disk is (or will be) an overlay on: its own copy, or for a state
    /// written before VMs kept one, the current image of that name.
    pub fn base_image<'a>(&'a self, compute: &'a Compute) -> Option<&'a Image> {
        self.base.as_ref().or_else(|| {
            compute
                .images
                .get(&self.request.image)
                .map(|image| &image.value)
        })
    }
}

/// Where a VM's disk is: the host holding the one copy of a local disk, and the disk's
/// generation. A host writes the generation beside each disk it creates; a copy with another
/// generation than the VM's is stale (from before a recreate), never the VM's disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DiskHome {
    /// The host with the disk; `None` until a host created one.
    #[serde(default)]
    pub host: Option<String>,
    /// The generation of the VM's current disk: 1 at creation, one more at each recreate.
    #[serde(default)]
    pub generation: u64,
}

impl Default for DiskHome {
    /// States written before disks had homes: generation 0, which is also what a host reads
    /// for a disk with no generation file beside it.
    fn default() -> Self {
        DiskHome {
            host: None,
            generation: 0,
        }
    }
}

/// An address given to a VM from a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Assigned {
    pub pool: String,
    pub address: IpAddr,
    pub prefix: u8,
    /// The whole `address/prefix` network is the VM's, routed to it (a pool with
    /// `delegate`): `address` is its first host address, which the guest takes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub routed: bool,
}

/// What a worker host offers, as it reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Capacity {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    /// Its driver can move running VMs (live migration); the fake driver cannot.
    #[serde(default)]
    pub live_migration: bool,
    /// Its config names a Ceph cluster (`[ceph]`): it may run VMs whose disks are on RBD.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rbd: bool,
}

/// A worker host as the desired state knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Host {
    pub capacity: Capacity,
    /// An operator confirmed it is powered off: its VMs may run elsewhere.
    #[serde(default)]
    pub fenced: bool,
    /// `hearth node evacuate`: its VMs are being moved off it, one at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evacuation: Option<Evacuation>,
    /// Log index of its last lease renewal (`docs/replicas.md`): a host that cannot renew
    /// for its lease timeout kills the QEMU of its VMs with replicas, which may then be
    /// restarted from their replica elsewhere.
    #[serde(default)]
    pub lease: u64,
}

/// Where the evacuation of a host is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum Evacuation {
    /// The leader moves its VMs off, one at a time.
    Moving,
    /// No VM is left on it.
    Done,
    /// A move was given up, or no other host had room: the VMs left stay where they are.
    Stopped { why: String },
}

/// Something a host's reconciler found and must not, or cannot, fix alone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct Drift {
    /// Stable for the same finding: `host/kind/vm`.
    pub id: String,
    pub host: String,
    pub vm: String,
    pub kind: DriftKind,
    pub detail: String,
    /// What `hearth fix ID` does.
    pub fix: String,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum DriftKind {
    /// A QEMU process hearth did not start, or the files of a VM id the desired state does
    /// not hold (any more).
    UnknownVm,
    /// A VM whose disk is not where its home says, or whose home is unreachable (its host is
    /// dead, left or fenced): it is `lost` until the disk is back or an admin recreates it.
    MissingDisk,
    /// An address used by two VMs, or by a VM and something else.
    IpConflict,
    /// A copy of a VM (running, or only its files) on a host other than the one it is
    /// placed on: a stale copy, whose disk is kept until an admin archives it.
    WrongHost,
    /// A VM that kept dying after starts.
    CrashLoop,
    /// The anti-spoofing rules or the bandwidth shaper on a bridged VM's tap were missing
    /// or altered: its host put them back. Cleared by an admin's fix (an acknowledgement).
    GuardAltered,
}

impl DriftKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::UnknownVm => "unknown-vm",
            DriftKind::MissingDisk => "missing-disk",
            DriftKind::IpConflict => "ip-conflict",
            DriftKind::WrongHost => "wrong-host",
            DriftKind::CrashLoop => "crash-loop",
            DriftKind::GuardAltered => "guard-altered",
        }
    }
}

/// Everything about compute in the desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Compute {
    #[schemars(with = "BTreeMap<String, Versioned<Image>>")]
    pub images: imbl::OrdMap<String, Versioned<Image>>,
    #[schemars(with = "BTreeMap<String, Versioned<IpPool>>")]
    pub pools: imbl::OrdMap<String, Versioned<IpPool>>,
    #[schemars(with = "BTreeMap<String, Versioned<Vm>>")]
    pub vms: imbl::OrdMap<String, Versioned<Vm>>,
    pub hosts: BTreeMap<String, Host>,
    /// Current drift, per host, as each host last reported it.
    #[schemars(with = "BTreeMap<String, Vec<Drift>>")]
    pub drift: imbl::OrdMap<String, Vec<Drift>>,
    /// Fixes an operator asked for that the drift's host carries out: drift id → the log
    /// index of the request.
    #[serde(default)]
    pub fixes: BTreeMap<String, u64>,
    /// The asked fixes (ids in `fixes`) that destroy data: an admin asked to remove the files
    /// of a VM that no longer exists, instead of archiving them.
    #[serde(default)]
    pub destroy: BTreeSet<String>,
}

impl Compute {
    /// Every address in use, per pool.
    pub fn used_addresses(&self, pool: &str) -> BTreeSet<IpAddr> {
        self.vms
            .values()
            .flat_map(|vm| vm.value.ips.iter())
            .filter(|a| a.pool == pool)
            .map(|a| a.address)
            .collect()
    }

    /// The VM named `name` (names are unique), or with id `key`.
    pub fn find_vm(&self, key: &str) -> Option<&Versioned<Vm>> {
        self.vms
            .get(key)
            .or_else(|| self.vms.values().find(|vm| vm.value.request.name == key))
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses `address/prefix`; the address must be the network's first.
pub fn parse_cidr(cidr: &str) -> Result<(IpAddr, u8), String> {
    let bad = || format!("cidr: `{cidr}` is not a network like 192.0.2.0/24 or 2001:db8::/64");
    let (address, prefix) = cidr.split_once('/').ok_or_else(bad)?;
    let address: IpAddr = address.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let bits = if address.is_ipv4() { 32 } else { 128 };
    if prefix > bits {
        return Err(bad());
    }
    if mask(to_number(address), prefix, bits) != to_number(address) {
        return Err(format!(
            "cidr: `{cidr}` has host bits set; give the network address"
        ));
    }
    Ok((address, prefix))
}

fn mask(n: u128, prefix: u8, bits: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let host_bits = (bits - prefix) as u32;
    (n >> host_bits) << host_bits
}

fn contains(network: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    if network.is_ipv4() != ip.is_ipv4() {
        return false;
    }
    let bits = if network.is_ipv4() { 32 } else { 128 };
    mask(to_number(ip), prefix, bits) == mask(to_number(network), prefix, bits)
}

fn to_number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_number(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((n as u32).into())
    } else {
        IpAddr::V6(n.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_is_written_local_or_rbd_and_a_pool_name_is_checked() {
        assert_eq!(Storage::parse("local"), Ok(Storage::Local));
        let rbd = Storage::parse("rbd:vms-1").unwrap();
        assert_eq!(rbd.rbd_pool(), Some("vms-1"));
        assert_eq!(rbd.to_string(), "rbd:vms-1");
        for bad in ["rbd:", "rbd:a/b", "nfs:x", "rbd:.hidden"] {
            assert!(Storage::parse(bad).is_err(), "{bad}");
        }
        let json = serde_json::to_string(&rbd).unwrap();
        assert_eq!(json, r#"{"kind":"rbd","pool":"vms-1"}"#);
    }

    fn pool(cidr: &str) -> IpPool {
        IpPool {
            name: "p".into(),
            cidr: cidr.into(),
            gateway: None,
            resolvers: vec![],
            first: None,
            last: None,
            replicas: None,
            delegate: None,
            storage: None,
        }
    }

    #[test]
    fn allocation_skips_network_broadcast_gateway_and_used() {
        let mut p = pool("192.0.2.0/29");
        p.gateway = Some("192.0.2.1".parse().unwrap());
        p.validate().unwrap();
        let mut used = BTreeSet::new();
        let mut got = vec![];
        while let Some(ip) = p.allocate(&used) {
            used.insert(ip);
            got.push(ip.to_string());
        }
        assert_eq!(
            got,
            [
                "192.0.2.2",
                "192.0.2.3",
                "192.0.2.4",
                "192.0.2.5",
                "192.0.2.6"
            ]
        );
    }

    #[test]
    fn ranges_and_ipv6() {
        let mut p = pool("2001:db8::/64");
        p.first = Some("2001:db8::100".parse().unwrap());
        p.last = Some("2001:db8::101".parse().unwrap());
        p.validate().unwrap();
        let a = p.allocate(&BTreeSet::new()).unwrap();
        assert_eq!(a.to_string(), "2001:db8::100");
        let b = p.allocate(&[a].into()).unwrap();
        assert_eq!(b.to_string(), "2001:db8::101");
        assert_eq!(p.allocate(&[a, b].into()), None);
    }

    /// Regression: a full IPv6 pool wrapped around and handed out `::` (and panicked on the
    /// overflow in a build with overflow checks, on every replica); `::/0` held only `::`.
    #[test]
    fn a_delegating_pool_gives_each_vm_a_network_but_the_links() {
        let mut p = pool("2001:db8:1::/48");
        p.delegate = Some(64);
        p.gateway = Some("fe80::1".parse().unwrap());
        p.validate().unwrap();
        assert_eq!(p.assigned_prefix(), Ok(64));
        let mut used = BTreeSet::new();
        let first = p.allocate(&used).unwrap();
        assert_eq!(first.to_string(), "2001:db8:1:1::1");
        used.insert(first);
        assert_eq!(p.allocate(&used).unwrap().to_string(), "2001:db8:1:2::1");
        // A gateway inside a network keeps that network from being given.
        p.gateway = Some("2001:db8:1:1::fe".parse().unwrap());
        assert_eq!(
            p.allocate(&BTreeSet::new()).unwrap().to_string(),
            "2001:db8:1:2::1"
        );
        // A /63 holds two /64s: the link's and one more.
        let mut small = pool("2001:db8::/63");
        small.delegate = Some(64);
        let one = small.allocate(&BTreeSet::new()).unwrap();
        assert_eq!(small.allocate(&BTreeSet::from([one])), None);
        for (change, field) in [(Some(48), "delegate"), (Some(65), "delegate")] {
            let mut bad = pool("2001:db8:1::/48");
            bad.delegate = change;
            assert!(bad.validate().unwrap_err().starts_with(field));
        }
        let mut v4 = pool("192.0.2.0/24");
        v4.delegate = Some(28);
        assert!(v4.validate().unwrap_err().contains("only for an IPv6 pool"));
        let mut ranged = pool("2001:db8:1::/48");
        ranged.delegate = Some(64);
        ranged.first = Some("2001:db8:1:5::1".parse().unwrap());
        assert!(ranged.validate().unwrap_err().starts_with("first"));
    }

    #[test]
    fn pools_at_the_ends_of_the_address_space_neither_wrap_nor_overflow() {
        let all = pool("::/0");
        all.validate().unwrap();
        assert_eq!(all.allocate(&BTreeSet::new()).unwrap().to_string(), "::1");
        let mut top = pool("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126");
        top.validate().unwrap();
        let mut used = BTreeSet::new();
        let mut got = vec![];
        while let Some(ip) = top.allocate(&used) {
            assert!(used.insert(ip), "{ip} handed out twice");
            got.push(ip.to_string());
        }
        assert_eq!(
            got,
            [
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ]
        );
        top.first = Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap());
        top.validate().unwrap();
        assert_eq!(top.allocate(&used), None, "full: no wrap to ::");
        let single = pool("2001:db8::1/128");
        single.validate().unwrap();
        assert_eq!(
            single.allocate(&BTreeSet::new()).unwrap().to_string(),
            "2001:db8::1"
        );
        let v4 = pool("0.0.0.0/0");
        v4.validate().unwrap();
        assert_eq!(
            v4.allocate(&BTreeSet::new()).unwrap().to_string(),
            "0.0.0.1"
        );
        let mut edge = pool("255.255.255.252/30");
        edge.validate().unwrap();
        let used: BTreeSet<IpAddr> = ["255.255.255.253", "255.255.255.254"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(edge.allocate(&used), None);
        edge.last = Some("255.255.255.255".parse().unwrap());
        assert_eq!(edge.allocate(&used).unwrap().to_string(), "255.255.255.255");
    }

    /// Property test over generated pools (a fixed-seed xorshift, so failures replay): IPv4
    /// and IPv6, networks anywhere including both ends of each family, with or without a
    /// gateway and a first/last range. Allocating until the pool is full hands out every
    /// candidate exactly once, each inside the network and the range, never the gateway,
    /// and never wraps or panics.
    #[test]
    fn allocation_hands_out_each_candidate_once_and_never_wraps() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..3000 {
            let v4 = case % 2 == 0;
            let bits: u8 = if v4 { 32 } else { 128 };
            let host_bits = (next() % 7) as u8; // pools of 1 to 64 addresses
            let prefix = bits - host_bits;
            let raw = match next() % 4 {
                0 => 0u128,
                1 => u128::MAX,
                _ => (u128::from(next()) << 64) | u128::from(next()),
            };
            let raw = if v4 { raw & 0xffff_ffff } else { raw };
            let network = mask(raw, prefix, bits);
            let cidr = format!("{}/{prefix}", from_number(network, v4));
            let mut p = pool(&cidr);
            let size = 1u128 << host_bits;
            let pick = |n: u64| from_number(network + u128::from(n) % size, v4);
            if next() % 2 == 0 {
                p.gateway = Some(pick(next()));
            }
            if next() % 3 == 0 {
                let (a, b) = (pick(next()), pick(next()));
                let (a, b) = if to_number(a) <= to_number(b) {
                    (a, b)
                } else {
                    (b, a)
                };
                p.first = Some(a);
                p.last = Some(b);
            }
            p.validate()
                .unwrap_or_else(|e| panic!("case {case} {cidr}: {e}"));
            let (first, last) = p.range().unwrap();
            let candidates: BTreeSet<IpAddr> = (first..=last)
                .map(|n| from_number(n, v4))
                .filter(|ip| Some(*ip) != p.gateway)
                .collect();
            let mut used = BTreeSet::new();
            while let Some(ip) = p.allocate(&used) {
                assert!(
                    contains(network_ip(&cidr), prefix, ip),
                    "case {case}: {ip} outside {cidr}"
                );
                assert!(
                    candidates.contains(&ip),
                    "case {case}: {ip} is no candidate of {cidr}"
                );
                assert!(used.insert(ip), "case {case}: {ip} twice in {cidr}");
                assert!(
                    used.len() <= candidates.len(),
                    "case {case}: {cidr} wrapped"
                );
            }
            assert_eq!(used, candidates, "case {case}: {cidr}");
            // Without a range of its own, a pool of 4 or more never hands out its network
            // address, nor on IPv4 its broadcast address.
            if p.first.is_none() && size >= 4 {
                assert!(
                    !used.contains(&from_number(network, v4)),
                    "case {case}: {cidr}"
                );
                let broadcast = from_number(network + (size - 1), v4);
                assert!(!v4 || !used.contains(&broadcast), "case {case}: {cidr}");
            }
        }
    }

    fn network_ip(cidr: &str) -> IpAddr {
        parse_cidr(cidr).unwrap().0
    }

    #[test]
    fn bad_pools_name_the_field() {
        assert!(
            pool("192.0.2.1/24")
                .validate()
                .unwrap_err()
                .starts_with("cidr")
        );
        assert!(
            pool("192.0.2.0/33")
                .validate()
                .unwrap_err()
                .starts_with("cidr")
        );
        let mut p = pool("192.0.2.0/24");
        p.gateway = Some("198.51.100.1".parse().unwrap());
        assert!(p.validate().unwrap_err().starts_with("gateway"));
        let mut p = pool("192.0.2.0/24");
        p.first = Some("192.0.2.9".parse().unwrap());
        p.last = Some("192.0.2.8".parse().unwrap());
        assert!(p.validate().unwrap_err().starts_with("first"));
    }
}

/// What a host found of one VM id under its VM directory: a QEMU process, a disk, or both
/// (from the driver's `observe`; the reconciler's input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedVm {
    pub id: String,
    /// The QEMU process hearth started for it, if alive; for a foreign entry, the intruder.
    pub pid: Option<u32>,
    pub disk_present: bool,
    /// The generation written beside the disk (0 when none is).
    pub generation: u64,
    /// A QEMU process that uses this VM's files but that hearth did not start.
    pub foreign: bool,
    /// A live move left its mark on this QEMU (the `moving` file beside the disk): it may be
    /// paused or still mirror its disk, until the move's outcome is dealt with.
    pub held: bool,
    /// The replica (by its `since`) this VM's QEMU was set to mirror into (the `replica`
    /// file beside the disk); the mirror lives only as long as that QEMU.
    pub mirroring: Option<u64>,
    /// It runs on a bridge, and the anti-spoofing rules or the shaper on its tap are not as
    /// they were applied (missing or altered).
    pub guard_altered: bool,
}

/// A replica's copy a host keeps for a VM whose disk lives elsewhere (`ID.replica/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedReplica {
    pub vm: String,
    /// The replica it was made for (the `since` written beside it), and the generation of
    /// the disk it copies (0 and 0 when unreadable).
    pub since: u64,
    pub generation: u64,
    /// The `qemu-storage-daemon` exporting it, if alive.
    pub pid: Option<u32>,
}
