//! This machine's load for `/metrics`: CPU time by mode, memory, and the data directory's
//! file system, read from `/proc` and `statvfs` at each scrape; and what this host offers to
//! VMs against what is placed on it, from the desired state.

use std::path::Path;

use hearth_types::compute::Compute;

/// Ticks per second of `/proc/stat` (`USER_HZ`, 100 on every Linux architecture hearth runs on).
pub const USER_HZ: u64 = 100;

/// The machine's figures at one scrape, each as (label value, number).
#[derive(Debug, Default)]
pub struct HostFacts {
    /// CPU seconds by mode, all CPUs together.
    pub cpu_seconds: Vec<(String, u64)>,
    /// `total` and `available` memory, bytes.
    pub memory: Vec<(String, u64)>,
    /// `size` and `free` (for unprivileged users) bytes of the data directory's file system.
    pub data_dir: Vec<(String, u64)>,
    /// Bytes read and written on the block device holding the data directory, by direction.
    pub io_bytes: Vec<(String, u64)>,
    /// Read and write operations completed on it, by direction.
    pub io_operations: Vec<(String, u64)>,
}

impl HostFacts {
    /// Reads them; a figure that cannot be read is left out.
    pub fn read(data_dir: &Path) -> HostFacts {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let space = match disk_space(data_dir) {
            Ok((size, free)) => vec![("size".to_owned(), size), ("free".to_owned(), free)],
            Err(_) => Vec::new(),
        };
        let io = block_device_stat(data_dir)
            .and_then(|path| std::fs::read_to_string(path).ok())
            .and_then(|text| block_io(&text));
        let (io_bytes, io_operations) = io.map_or_else(Default::default, |io| {
            (
                vec![
                    ("read".to_owned(), io.read_bytes),
                    ("write".to_owned(), io.written_bytes),
                ],
                vec![
                    ("read".to_owned(), io.reads),
                    ("write".to_owned(), io.writes),
                ],
            )
        });
        HostFacts {
            cpu_seconds: cpu_seconds(&read("/proc/stat")),
            memory: memory(&read("/proc/meminfo")),
            data_dir: space,
            io_bytes,
            io_operations,
        }
    }
}

/// The `stat` file of the block device holding `dir`: `/sys/dev/block/MAJOR:MINOR/stat`; none
/// for a file system without one (tmpfs, overlay).
fn block_device_stat(dir: &Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let path = std::path::PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"));
    path.exists().then_some(path)
}

/// Bytes and operations from the text of a block device's `stat` file (reads completed,
/// reads merged, sectors read, ms reading, writes completed, writes merged, sectors
/// written, ...; a sector there is always 512 bytes).
pub fn block_io(stat: &str) -> Option<hearth_qemu::stats::DiskIo> {
    let fields: Vec<u64> = stat
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    Some(hearth_qemu::stats::DiskIo {
        reads: *fields.first()?,
        read_bytes: fields.get(2)?.saturating_mul(512),
        writes: *fields.get(4)?,
        written_bytes: fields.get(6)?.saturating_mul(512),
    })
}

/// The size of the file system holding `dir`, and its bytes free for unprivileged users.
pub fn disk_space(dir: &Path) -> nix::Result<(u64, u64)> {
    let fs = nix::sys::statvfs::statvfs(dir)?;
    let block = fs.fragment_size();
    Ok((
        fs.blocks().saturating_mul(block),
        fs.blocks_available().saturating_mul(block),
    ))
}

/// CPU seconds by mode from the text of `/proc/stat` (its first, all-CPU `cpu` line).
pub fn cpu_seconds(stat: &str) -> Vec<(String, u64)> {
    const MODES: [&str; 8] = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return Vec::new();
    };
    MODES
        .iter()
        .zip(line.split_whitespace().skip(1))
        .filter_map(|(mode, ticks)| {
            Some(((*mode).to_owned(), ticks.parse::<u64>().ok()? / USER_HZ))
        })
        .collect()
}

/// Total and available memory in bytes from the text of `/proc/meminfo`.
pub fn memory(meminfo: &str) -> Vec<(String, u64)> {
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
    };
    [("total", "MemTotal:"), ("available", "MemAvailable:")]
        .into_iter()
        .filter_map(|(kind, key)| Some((kind.to_owned(), kib(key)?.saturating_mul(1024))))
        .collect()
}

/// What host `host` offers to VMs, by resource (`vcpus`, `memory_mib`, `disk_gib`); nothing
/// when it is not a worker.
pub fn offered(compute: &Compute, host: &str) -> Vec<(String, u64)> {
    compute.hosts.get(host).map_or_else(Vec::new, |h| {
        let c = h.capacity;
        resources(u64::from(c.vcpus), c.memory_mib, c.disk_gib)
    })
}

/// What the VMs placed on host `host` ask for, by resource.
pub fn placed(compute: &Compute, host: &str) -> Vec<(String, u64)> {
    let placed = hearth_types::quota::placed(compute, host);
    resources(placed.vcpus, placed.memory_mib, placed.disk_gib)
}

fn resources(vcpus: u64, memory_mib: u64, disk_gib: u64) -> Vec<(String, u64)> {
    vec![
        ("vcpus".to_owned(), vcpus),
        ("memory_mib".to_owned(), memory_mib),
        ("disk_gib".to_owned(), disk_gib),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_give_cpu_seconds_and_memory_bytes() {
        let stat = "cpu  1000 20 300 40000 500 0 70 0 0 0\ncpu0 500 10 150 20000 250 0 35 0 0 0\n";
        let cpu = cpu_seconds(stat);
        assert_eq!(cpu[0], ("user".to_owned(), 10));
        assert_eq!(cpu[3], ("idle".to_owned(), 400));
        assert_eq!(cpu.len(), 8);
        let meminfo =
            "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   12288000 kB\n";
        assert_eq!(
            memory(meminfo),
            [
                ("total".to_owned(), 24_576_000 * 1024),
                ("available".to_owned(), 12_288_000 * 1024)
            ]
        );
        assert!(cpu_seconds("").is_empty() && memory("").is_empty());
    }
}

/// CPU seconds, resident memory and disk IO of the QEMU of each VM placed on `host` that
/// runs here, each labelled with the VM's name and owner (a pre-rendered label set). The disk
/// IO is asked over QMP, with a short deadline per VM.
pub async fn vm_usage(compute: &Compute, host: &str, vms_dir: &Path) -> VmUsage {
    let mut usage = VmUsage::default();
    let placed = compute.vms.values().map(|v| &v.value);
    for vm in placed.filter(|vm| vm.host.as_deref() == Some(host)) {
        let dir = vms_dir.join(&vm.id);
        let Some(pid) = hearth_qemu::driver::running_pid(&dir) else {
            continue;
        };
        let labels = format!("vm=\"{}\",owner=\"{}\"", vm.request.name, vm.request.owner);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if let Some(ticks) = process_ticks(&stat) {
            usage.cpu_seconds.push((labels.clone(), ticks / USER_HZ));
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        {
            usage.memory.push((labels.clone(), kib * 1024));
        }
        if let Some(io) = hearth_qemu::stats::disk_io(&dir).await {
            let (bytes, ops) = (&mut usage.disk_bytes, &mut usage.disk_operations);
            bytes.push((format!("{labels},direction=\"read\""), io.read_bytes));
            bytes.push((format!("{labels},direction=\"write\""), io.written_bytes));
            ops.push((format!("{labels},direction=\"read\""), io.reads));
            ops.push((format!("{labels},direction=\"write\""), io.writes));
        }
        if let Some((received, sent)) = hearth_qemu::tap::counters(&vm.id) {
            let net = &mut usage.network_bytes;
            net.push((format!("{labels},direction=\"received\""), received));
            net.push((format!("{labels},direction=\"sent\""), sent));
            let tap = hearth_qemu::tap::tap_name(&vm.id);
            if let Some(dropped) = hearth_qemu::guard::dropped(&tap) {
                usage.spoofed.push((labels.clone(), dropped));
            }
        }
    }
    usage
}

/// Per VM: CPU seconds and resident bytes of its QEMU, and its guest's disk IO (bytes and
/// operations, by direction).
#[derive(Debug, Default)]
pub struct VmUsage {
    pub cpu_seconds: Vec<(String, u64)>,
    pub memory: Vec<(String, u64)>,
    pub disk_bytes: Vec<(String, u64)>,
    pub disk_operations: Vec<(String, u64)>,
    /// A bridged VM's bytes through its tap, by direction as the guest sees it.
    pub network_bytes: Vec<(String, u64)>,
    /// Frames a bridged VM sent that its anti-spoofing rules dropped.
    pub spoofed: Vec<(String, u64)>,
}

/// utime + stime, in ticks, from the text of `/proc/PID/stat` (fields 14 and 15; the
/// command name in parentheses may hold spaces, so fields count from its closing one).
pub fn process_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3, so utime (14) is index 11 and stime (15) index 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod process_tests {
    use super::*;

    #[test]
    fn a_block_device_stat_gives_bytes_and_operations() {
        let stat = "    4390     1196   563922     2311   101553   152424  4003336   157468        0   237152   176172\n";
        let io = block_io(stat).unwrap();
        assert_eq!((io.reads, io.writes), (4390, 101553));
        assert_eq!(io.read_bytes, 563922 * 512);
        assert_eq!(io.written_bytes, 4003336 * 512);
        assert_eq!(block_io("1 2"), None);
        assert_eq!(block_io("a b c d e f g"), None);
    }

    #[test]
    fn process_ticks_skip_a_command_name_with_spaces() {
        let stat =
            "4242 (qemu-system-x86 a) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(process_ticks(stat), Some(300));
        assert_eq!(process_ticks("garbage"), None);
    }
}
