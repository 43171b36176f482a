//! `rbd-write`: what a disk on Ceph RBD costs a VM's writes against a local qcow2 overlay,
//! through QEMU's own block layer (`qemu-img bench -w`, the drivers a VM's QEMU uses; no
//! guest). Both disks are made as hearth makes them: the test guest's image imported once
//! into pool `rbd` of a single-node Ceph (`hearth_testkit::ceph`: one monitor, one memstore
//! OSD, loopback) and cloned (`hearth_qemu::rbd::Ceph`), and a qcow2 overlay on the same
//! image in a directory. Two loads: 64 KiB sequential writes at queue depth 16 (MiB/s) and
//! 4 KiB writes at queue depth 1, each flushed (`-t none`, writes per second).
//!
//! Then the same two disks from inside the test guest, booted by QEMU with hearth's drive
//! options (`vm_boot::direct_qemu`) and `hearth.write_bench=MIB` on its kernel command line:
//! the guest writes MIB MiB of random data in 1 MiB O_DIRECT writes, then 2000 4 KiB
//! O_DIRECT writes one at a time, and prints its uptime around each
//! (`HEARTH-GUEST-WRITE-BENCH`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use hearth_testkit::TempDir;
use hearth_testkit::ceph::Ceph;
use serde_json::json;

use crate::Report;
use crate::qsd;
use crate::stats::Summary;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Runs of each load on each disk.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// MiB written by each sequential run.
    #[arg(long, default_value_t = 256)]
    pub mib: u64,
    /// Guest boots on each disk for the in-guest figures (0: none).
    #[arg(long, default_value_t = 3)]
    pub guest_runs: usize,
    /// Also print the figures as one JSON line on stdout.
    #[arg(long)]
    pub json: bool,
}

/// One `qemu-img bench -w` run: its wall time.
fn bench(format: &str, file: &str, count: u64, size: &str, depth: &str) -> Result<Duration> {
    let count = count.to_string();
    let started = Instant::now();
    qsd::qemu_img(&[
        "bench", "-w", "-q", "-t", "none", "-f", format, "-c", &count, "-s", size, "-d", depth,
        file,
    ])?;
    Ok(started.elapsed())
}

struct Disk {
    name: &'static str,
    format: &'static str,
    file: String,
}

/// A fresh pair of disks, the `n`th: a clone in the pool and a qcow2 overlay in `dir/n`.
fn disks(ceph: &Ceph, dir: &TempDir, n: usize) -> Result<[Disk; 2]> {
    let base = hearth_testkit::test_guest().join("base.qcow2");
    let client = hearth_qemu::rbd::Ceph {
        conf: ceph.conf.clone(),
        user: "admin".into(),
        keyring: None,
    };
    let image = format!("hearth-vm-{n}-g1");
    let runtime = tokio::runtime::Runtime::new()?;
    runtime
        .block_on(async {
            client
                .import("rbd", "hearth-base-bench", &base, "qcow2")
                .await?;
            client
                .clone_disk("rbd", "hearth-base-bench", &image, 1 << 30)
                .await
        })
        .map_err(|e| anyhow!("{e}"))?;
    let at = dir.path().join(n.to_string());
    std::fs::create_dir_all(&at)?;
    let overlay = at.join("disk.qcow2");
    let (base_arg, overlay_arg) = (base.display().to_string(), overlay.display().to_string());
    qsd::qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        &base_arg,
        "-F",
        "qcow2",
        &overlay_arg,
        "1G",
    ])?;
    Ok([
        Disk {
            name: "local qcow2",
            format: "qcow2",
            file: overlay_arg,
        },
        Disk {
            name: "Ceph RBD",
            format: "raw",
            file: client.qemu_file("rbd", &image),
        },
    ])
}

pub fn run(args: &Args) -> Result<Report> {
    let ceph = Ceph::start();
    let dir = TempDir::new("bench-rbd");
    let mut text = String::new();
    let mut fields = json!({ "runs": args.runs, "mib": args.mib });
    for disk in disks(&ceph, &dir, 0)? {
        eprintln!("rbd-write: {}", disk.name);
        let (mut seq, mut small) = (Vec::new(), Vec::new());
        for _ in 0..args.runs {
            seq.push(bench(disk.format, &disk.file, args.mib * 16, "64k", "16")?);
            small.push(bench(disk.format, &disk.file, 1000, "4k", "1")?);
        }
        let seq = Summary::of(&seq).context("no runs")?;
        let small = Summary::of(&small).context("no runs")?;
        let (mib_s, iops) = (args.mib as f64 / seq.p50, 1000.0 / small.p50);
        text.push_str(&format!(
            "{:<12} 64 KiB x16: {mib_s:>7.1} MiB/s   4 KiB x1 flushed: {iops:>7.0} writes/s (p50 of {})\n",
            disk.name, args.runs
        ));
        fields[disk.format] = json!({ "seq_mib_per_s": mib_s, "small_writes_per_s": iops });
    }
    if args.guest_runs > 0 {
        in_guest(args, &ceph, &dir, &mut text, &mut fields)?;
    }
    Ok(Report {
        bench: "rbd-write",
        text,
        fields,
    })
}

/// The guest's figures of one boot on `disk`: (MiB/s of the 1 MiB writes, 4 KiB writes/s).
fn guest_run(guest: &Path, dir: &Path, disk: &Disk, accel: &str, mib: u64) -> Result<(f64, f64)> {
    std::fs::create_dir_all(dir)?;
    crate::vm_boot::write_seed(dir, 0)?;
    let console = dir.join("console.log");
    let _ = std::fs::remove_file(&console);
    let direct = crate::vm_boot::DirectDisk {
        file: &disk.file,
        format: disk.format,
    };
    let append = format!("hearth.write_bench={mib}");
    let mut child = crate::vm_boot::direct_qemu(guest, dir, &direct, accel, &append)
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let line = crate::procs::poll_until(
        "the guest's write figures",
        Duration::from_secs(600),
        Duration::from_millis(100),
        || {
            let text = std::fs::read_to_string(&console).unwrap_or_default();
            text.lines()
                .find(|l| l.contains("HEARTH-GUEST-WRITE-BENCH"))
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("not yet"))
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    bench_figures(&line?)
}

/// (MiB/s, 4 KiB writes/s) from the guest's `HEARTH-GUEST-WRITE-BENCH mib=M t0=.. t1=..
/// small=N t2=..` line (uptimes in seconds, to 1/100 s).
fn bench_figures(line: &str) -> Result<(f64, f64)> {
    let value = |key: &str| -> Result<f64> {
        let prefix = format!("{key}=");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no {key} in {line}"))
    };
    let (mib, small) = (value("mib")?, value("small")?);
    let (t0, t1, t2) = (value("t0")?, value("t1")?, value("t2")?);
    if t1 <= t0 || t2 <= t1 {
        return Err(anyhow!("the guest's clock did not move: {line}"));
    }
    Ok((mib / (t1 - t0), small / (t2 - t1)))
}

/// The in-guest half: `args.guest_runs` boots on each disk.
fn in_guest(
    args: &Args,
    ceph: &Ceph,
    dir: &TempDir,
    text: &mut String,
    fields: &mut serde_json::Value,
) -> Result<()> {
    let guest = hearth_testkit::test_guest();
    let (accel, why) = hearth_qemu::accel::detect();
    let accel = accel.to_string();
    eprintln!("rbd-write: in the guest, under {accel} ({why})");
    text.push_str(&format!("in the test guest, under {accel}:\n"));
    for which in 0..2 {
        let (mut seq, mut small) = (Vec::new(), Vec::new());
        let mut name = "";
        for run in 0..args.guest_runs {
            // Fresh disks each boot: every run writes where nothing was written before.
            let [local, rbd] = disks(ceph, dir, 1 + run)?;
            let disk = if which == 0 { local } else { rbd };
            name = disk.name;
            let at = dir.path().join(format!("guest-{}-{run}", disk.format));
            let (mib_s, iops) = guest_run(&guest, &at, &disk, &accel, args.mib)?;
            eprintln!("rbd-write: {name} in the guest: {mib_s:.1} MiB/s, {iops:.0} writes/s");
            // As durations, so the summary's p50 is that of the runs' times.
            seq.push(Duration::from_secs_f64(1.0 / mib_s));
            small.push(Duration::from_secs_f64(1.0 / iops));
        }
        let seq = Summary::of(&seq).context("no runs")?;
        let small = Summary::of(&small).context("no runs")?;
        let (mib_s, iops) = (1.0 / seq.p50, 1.0 / small.p50);
        text.push_str(&format!(
            "{name:<12} 1 MiB O_DIRECT: {mib_s:>7.1} MiB/s   4 KiB O_DIRECT x1: {iops:>7.0} writes/s (p50 of {})\n",
            args.guest_runs
        ));
        let format = if which == 0 { "qcow2" } else { "raw" };
        fields["guest"][format] =
            json!({ "seq_mib_per_s": mib_s, "small_writes_per_s": iops, "accel": accel });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guests_line_gives_rates() {
        let line = "HEARTH-GUEST-WRITE-BENCH mib=256 t0=4.00 t1=6.00 small=2000 t2=7.00";
        assert_eq!(bench_figures(line).unwrap(), (128.0, 2000.0));
        assert!(bench_figures("HEARTH-GUEST-WRITE-BENCH mib=256 t0=4.00 t1=4.00").is_err());
    }
}
