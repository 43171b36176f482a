//! `disk-copy`: how fast a live move copies a disk, against `qemu-img convert`. The disk is a
//! qcow2 image (1 GiB by default) with random data in every other 1 MiB chunk, so half its
//! clusters are allocated. Each run copies it four ways on this machine: `qemu-img convert
//! -O qcow2` (the baseline), and hearth's live-move copy three times: a
//! `qemu-storage-daemon` holding an empty qcow2 of the same size exports it writable over NBD
//! on 127.0.0.1, and a second one holding the source runs `blockdev-mirror` (`sync=top`, no
//! speed limit, as hearth's `start_mirror`) into an NBD node connected to it, driven over
//! QMP; under `tls-creds-psk` as hearth has it, under TLS-PSK with ChaCha20 taken out of
//! GnuTLS's priority (so AES-GCM is chosen), and without TLS. A mirror's time is from
//! `blockdev-mirror` to the job's `BLOCK_JOB_READY` (the mirror flushes its target before it
//! says ready; `qemu-img convert` syncs its output before it exits), with the CPU time both
//! daemons used meanwhile.

use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hearth_testkit::TempDir;
use serde_json::{Value, json};

use crate::Report;
use crate::qsd::{self, Export, StorageDaemon};
use crate::stats::Summary;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Copies of each kind to time.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// The disk's virtual size in MiB; every other MiB of it holds random data.
    #[arg(long, default_value_t = 1024)]
    pub disk_mib: u64,
    /// Also print the figures as one JSON line on stdout.
    #[arg(long)]
    pub json: bool,
}

const MIB: u64 = 1 << 20;
/// hearth's ids for the NBD node and the mirror job of a live move.
const NODE: &str = "hearth-mirror";
const JOB: &str = "hearth-mirror";
/// The longest a single copy may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(600);

/// How the mirror's NBD connection is protected.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tls {
    /// TLS-PSK with GnuTLS's default priority, as hearth has it.
    Hearth,
    /// TLS-PSK with ChaCha20-Poly1305 taken out of the priority, so AES-GCM is chosen.
    AesGcm,
    Off,
}

/// The GnuTLS priority of [`Tls::AesGcm`].
const AES_GCM_PRIORITY: &str = "NORMAL:-CHACHA20-POLY1305";

/// The ways of copying, in the order each run does them.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Way {
    Convert,
    Mirror(Tls),
}

const WAYS: [Way; 4] = [
    Way::Convert,
    Way::Mirror(Tls::Hearth),
    Way::Mirror(Tls::AesGcm),
    Way::Mirror(Tls::Off),
];

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::Convert => "qemu-img convert -O qcow2",
            Way::Mirror(Tls::Hearth) => "blockdev-mirror over NBD, TLS-PSK (hearth)",
            Way::Mirror(Tls::AesGcm) => {
                "blockdev-mirror over NBD, TLS-PSK with priority=NORMAL:-CHACHA20-POLY1305"
            }
            Way::Mirror(Tls::Off) => "blockdev-mirror over NBD, no TLS",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Way::Convert => "convert",
            Way::Mirror(Tls::Hearth) => "mirror_tls",
            Way::Mirror(Tls::AesGcm) => "mirror_tls_aes_gcm",
            Way::Mirror(Tls::Off) => "mirror_plain",
        }
    }
}

/// The source disk and where the copies go.
struct Disk {
    dir: TempDir,
    source: PathBuf,
    tls: PathBuf,
    virtual_bytes: u64,
    allocated_bytes: u64,
}

/// Makes the source: a sparse raw file with random data in every other MiB, converted to
/// qcow2 (the holes stay unallocated), and the TLS key both daemons read.
fn make_disk(disk_mib: u64) -> Result<Disk> {
    let dir = TempDir::new("bench-disk-copy");
    let raw = dir.path().join("source.raw");
    let mut file = std::fs::File::create(&raw)?;
    file.set_len(disk_mib * MIB)?;
    for chunk_idx in (0..disk_mib).step_by(2) {
        file.seek(SeekFrom::Start(chunk_idx * MIB))?;
        file.write_all(&qsd::random_bytes(MIB as usize)?)?;
    }
    drop(file);
    let source = dir.path().join("source.qcow2");
    let (raw_arg, source_arg) = (raw.display().to_string(), source.display().to_string());
    qsd::qemu_img(&["convert", "-f", "raw", "-O", "qcow2", &raw_arg, &source_arg])?;
    std::fs::remove_file(&raw)?;
    let allocated_bytes = qsd::allocated_bytes(&source)?;
    let tls = qsd::write_psk(&dir.path().join("tls"))?;
    Ok(Disk {
        source,
        tls,
        virtual_bytes: disk_mib * MIB,
        allocated_bytes,
        dir,
    })
}

/// One `qemu-img convert` of the source to a new qcow2 file; with `check`, the copy is
/// compared with the source afterwards.
fn convert_once(disk: &Disk, check: bool) -> Result<Duration> {
    let copy = disk.dir.path().join("convert.qcow2");
    let _ = std::fs::remove_file(&copy);
    let (from, to) = (
        disk.source.display().to_string(),
        copy.display().to_string(),
    );
    let started = Instant::now();
    qsd::qemu_img(&["convert", "-O", "qcow2", &from, &to])?;
    let took = started.elapsed();
    if check {
        qsd::same_content(&disk.source, &copy)?;
    }
    std::fs::remove_file(&copy)?;
    Ok(took)
}

/// One copy: its time and, for a mirror, the CPU time the sending and the receiving daemon
/// used while it ran.
#[derive(Debug, Clone, Copy)]
struct Copied {
    took: Duration,
    cpu: Option<[Duration; 2]>,
}

/// One mirror of the source into an empty qcow2 exported by another daemon, until the job is
/// ready; with `check`, the copy is compared with the source once both daemons have quit.
fn mirror_once(disk: &Disk, tls: Tls, check: bool) -> Result<Copied> {
    let dir = disk.dir.path();
    let copy = dir.join("target.qcow2");
    let _ = std::fs::remove_file(&copy);
    qsd::create_qcow2(&copy, disk.virtual_bytes)?;
    let nbd = qsd::free_port()?;
    let export = Export {
        tls: tls != Tls::Off,
        writethrough: false,
    };
    let priority = (tls == Tls::AesGcm).then_some(AES_GCM_PRIORITY);
    let target = StorageDaemon::start(
        "target",
        dir,
        &qsd::export_args(&copy, &disk.tls, nbd, export, priority),
    )?;
    let mut source = StorageDaemon::start(
        "source",
        dir,
        &qsd::source_args(&disk.source, &disk.tls, priority),
    )?;
    qsd::add_nbd_node(&mut source.qmp, NODE, nbd, export.tls)?;
    let cpu_before = [source.cpu_time()?, target.cpu_time()?];
    let started = Instant::now();
    source.qmp.execute(
        "blockdev-mirror",
        json!({
            "job-id": JOB, "device": "disk0", "target": NODE, "sync": "top",
            "auto-dismiss": false, "speed": 0,
        }),
    )?;
    qsd::wait_ready(&mut source.qmp, JOB, COPY_TIMEOUT)?;
    let took = started.elapsed();
    let cpu = [
        source.cpu_time()?.saturating_sub(cpu_before[0]),
        target.cpu_time()?.saturating_sub(cpu_before[1]),
    ];
    qsd::end_mirror(&mut source.qmp, JOB, NODE)?;
    source.stop()?;
    target.stop()?;
    if check {
        qsd::same_content(&disk.source, &copy)?;
    }
    std::fs::remove_file(&copy)?;
    Ok(Copied {
        took,
        cpu: Some(cpu),
    })
}

fn copy_once(disk: &Disk, way: Way, check: bool) -> Result<Copied> {
    match way {
        Way::Convert => Ok(Copied {
            took: convert_once(disk, check)?,
            cpu: None,
        }),
        Way::Mirror(tls) => mirror_once(disk, tls, check),
    }
}

/// MiB/s for `bytes` copied in `secs`.
fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / MIB as f64 / secs
}

/// One line and one JSON object for the copies of one way.
fn describe(disk: &Disk, way: Way, copies: &[Copied]) -> Result<(String, Value)> {
    let times: Vec<Duration> = copies.iter().map(|c| c.took).collect();
    let summary = Summary::of(&times).context("no runs")?;
    let rate = |bytes: u64| {
        json!({
            "min": round1(mib_per_s(bytes, summary.max)),
            "p50": round1(mib_per_s(bytes, summary.p50)),
            "max": round1(mib_per_s(bytes, summary.min)),
        })
    };
    let mut line = format!(
        "{}:\n  {}\n  p50 {:.0} MiB/s of allocated data, {:.0} MiB/s of virtual size\n",
        way.label(),
        summary.line(),
        mib_per_s(disk.allocated_bytes, summary.p50),
        mib_per_s(disk.virtual_bytes, summary.p50),
    );
    let mut fields = json!({
        "seconds": summary.json(),
        "allocated_mib_per_s": rate(disk.allocated_bytes),
        "virtual_mib_per_s": rate(disk.virtual_bytes),
    });
    let cpu: Vec<[Duration; 2]> = copies.iter().filter_map(|c| c.cpu).collect();
    if !cpu.is_empty() {
        let mean =
            |side: usize| cpu.iter().map(|c| c[side].as_secs_f64()).sum::<f64>() / cpu.len() as f64;
        let (sender, receiver) = (mean(0), mean(1));
        line.push_str(&format!(
            "  CPU per copy (mean): sending daemon {sender:.2} s, receiving daemon {receiver:.2} s; wall time mean {:.2} s\n",
            summary.mean
        ));
        fields["cpu_s"] = json!({ "sender": round2(sender), "receiver": round2(receiver) });
    }
    Ok((line, fields))
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

pub fn run(args: &Args) -> Result<Report> {
    crate::procs::ensure_tools(&[
        ("qemu-img", "qemu-utils"),
        ("qemu-storage-daemon", "qemu-utils"),
    ])?;
    let disk = make_disk(args.disk_mib)?;
    eprintln!(
        "source: {} MiB virtual, {} MiB allocated",
        disk.virtual_bytes / MIB,
        disk.allocated_bytes / MIB
    );
    let mut copies: Vec<Vec<Copied>> = vec![Vec::new(); WAYS.len()];
    for run_idx in 0..args.runs {
        for (way_idx, way) in WAYS.into_iter().enumerate() {
            let copied = copy_once(&disk, way, run_idx == 0)
                .with_context(|| format!("{} (run {})", way.label(), run_idx + 1))?;
            eprintln!(
                "run {}/{}: {}: {:.3} s, daemons' CPU {:?}",
                run_idx + 1,
                args.runs,
                way.key(),
                copied.took.as_secs_f64(),
                copied.cpu
            );
            copies[way_idx].push(copied);
        }
    }
    report(&disk, args, &copies)
}

fn report(disk: &Disk, args: &Args, copies: &[Vec<Copied>]) -> Result<Report> {
    let mut text = format!(
        "disk: {} MiB virtual, {} MiB allocated (random data in every other MiB), {} runs; copies checked with qemu-img compare in run 1\n",
        disk.virtual_bytes / MIB,
        disk.allocated_bytes / MIB,
        args.runs
    );
    let mut fields = json!({
        "runs": args.runs,
        "virtual_mib": disk.virtual_bytes / MIB,
        "allocated_mib": disk.allocated_bytes / MIB,
    });
    let mut p50s = Vec::new();
    for (way, samples) in WAYS.iter().zip(copies) {
        let (line, way_fields) = describe(disk, *way, samples)?;
        text.push_str(&line);
        fields[way.key()] = way_fields;
        let times: Vec<Duration> = samples.iter().map(|c| c.took).collect();
        p50s.push(Summary::of(&times).context("no runs")?.p50);
    }
    text.push_str("time against qemu-img convert (p50):");
    for (way, p50) in WAYS.iter().zip(&p50s).skip(1) {
        let ratio = p50 / p50s[0];
        text.push_str(&format!(" {} {ratio:.2}x", way.key()));
        fields[format!("{}_over_convert", way.key())] = json!(round2(ratio));
    }
    text.push('\n');
    Ok(Report {
        bench: "disk-copy",
        text,
        fields,
    })
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_mib_per_second() {
        assert_eq!(mib_per_s(512 * MIB, 2.0), 256.0);
        assert_eq!(round1(1.26), 1.3);
        assert_eq!(round2(1.256), 1.26);
    }

    #[test]
    fn each_way_has_its_own_key() {
        let keys: Vec<&str> = WAYS.iter().map(|w| w.key()).collect();
        assert_eq!(
            keys,
            [
                "convert",
                "mirror_tls",
                "mirror_tls_aes_gcm",
                "mirror_plain"
            ]
        );
    }
}
