//! `rbd-write`: what a disk on Ceph RBD costs a VM's writes against a local qcow2 overlay,
//! through QEMU's own block layer (`qemu-img bench -w`, the drivers a VM's QEMU uses; no
//! guest). Both disks are made as hearth makes them: the test guest's image imported once
//! into pool `rbd` of a single-node Ceph (`hearth_testkit::ceph`: one monitor, one memstore
//! OSD, loopback) and cloned (`hearth_qemu::rbd::Ceph`), and a qcow2 overlay on the same
//! image in a directory. Two loads: 64 KiB sequential writes at queue depth 16 (MiB/s) and
//! 4 KiB writes at queue depth 1, each flushed (`-t none`, writes per second).

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

fn disks(ceph: &Ceph, dir: &TempDir) -> Result<[Disk; 2]> {
    let base = hearth_testkit::test_guest().join("base.qcow2");
    let client = hearth_qemu::rbd::Ceph {
        conf: ceph.conf.clone(),
        user: "admin".into(),
        keyring: None,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime
        .block_on(async {
            client
                .import("rbd", "hearth-base-bench", &base, "qcow2")
                .await?;
            client
                .clone_disk("rbd", "hearth-base-bench", "hearth-vm-1-g1", 1 << 30)
                .await
        })
        .map_err(|e| anyhow!("{e}"))?;
    let overlay = dir.path().join("disk.qcow2");
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
            file: client.qemu_file("rbd", "hearth-vm-1-g1"),
        },
    ])
}

pub fn run(args: &Args) -> Result<Report> {
    let ceph = Ceph::start();
    let dir = TempDir::new("bench-rbd");
    let mut text = String::new();
    let mut fields = json!({ "runs": args.runs, "mib": args.mib });
    for disk in disks(&ceph, &dir)? {
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
    Ok(Report {
        bench: "rbd-write",
        text,
        fields,
    })
}
