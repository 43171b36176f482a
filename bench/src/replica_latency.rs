//! `replica-latency`: what a synchronous replica costs a guest's writes, on the block graph
//! hearth builds for a VM with `replicas = 2`, without a guest. A `qemu-storage-daemon` holds
//! the VM's qcow2 (the node `disk0`) and exports it over NBD on a unix socket, standing in
//! for the guest's disk device; a second daemon is the replica host: an empty qcow2 exported
//! over NBD on 127.0.0.1 under TLS-PSK with `writethrough=on` (hearth-qemu's `replica.rs`).
//! With the replica, the first daemon mirrors `disk0` into it with `blockdev-mirror`
//! (`sync=top`, `copy-mode=write-blocking`), and the writes start once the job is ready and
//! actively synced. The writes are 4 KiB at queue depth 1 from this process through a small
//! NBD client, each timed from request to acknowledgement: plain writes (a guest writing
//! into its disk's volatile cache), and writes each followed by a flush (`O_DSYNC`, a
//! database commit). Every run measures each graph in turn: no replica, hearth's replica,
//! and the replica without TLS and without `writethrough` to show what each costs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hearth_testkit::TempDir;
use serde_json::{Value, json};

use crate::Report;
use crate::nbd::NbdClient;
use crate::procs::poll_until;
use crate::qsd::{self, Export, StorageDaemon};
use crate::stats::{Summary, percentile};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Runs of each graph.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Timed writes per run and kind of write.
    #[arg(long, default_value_t = 5000)]
    pub writes: usize,
    /// The disk's virtual size in MiB.
    #[arg(long, default_value_t = 1024)]
    pub disk_mib: u64,
    /// The disk's first MiB that are written before the runs and overwritten by them.
    #[arg(long, default_value_t = 64)]
    pub region_mib: u64,
    /// Also print the figures as one JSON line on stdout.
    #[arg(long)]
    pub json: bool,
}

const MIB: u64 = 1 << 20;
const BLOCK: usize = 4096;
/// Untimed writes after connecting, before the timed ones.
const WARM_UP: usize = 50;
/// hearth's ids for the NBD node and the mirror job of a replica.
const NODE: &str = "hearth-replica";
const JOB: &str = "hearth-replica";
/// The export standing in for the guest's disk device.
const GUEST_EXPORT: &str = "guest";

/// The block graphs measured, in the order each run measures them.
const GRAPHS: [Option<Export>; 4] = [
    None,
    Some(Export {
        tls: true,
        writethrough: true,
    }),
    Some(Export {
        tls: false,
        writethrough: true,
    }),
    Some(Export {
        tls: true,
        writethrough: false,
    }),
];

fn graph_label(graph: Option<Export>) -> &'static str {
    match graph {
        None => "no replica",
        Some(Export {
            tls: true,
            writethrough: true,
        }) => "replica, TLS, writethrough (hearth)",
        Some(Export {
            tls: false,
            writethrough: true,
        }) => "replica without TLS",
        Some(Export {
            tls: true,
            writethrough: false,
        }) => "replica without writethrough",
        Some(Export { .. }) => "replica, no TLS, no writethrough",
    }
}

fn graph_key(graph: Option<Export>) -> String {
    match graph {
        None => "plain".to_owned(),
        Some(export) => format!(
            "replica{}{}",
            if export.tls { "_tls" } else { "" },
            if export.writethrough {
                "_writethrough"
            } else {
                ""
            }
        ),
    }
}

/// The VM's disk, held by the daemon that stands in for its QEMU.
struct Vm {
    dir: TempDir,
    tls: PathBuf,
    disk_bytes: u64,
    daemon: StorageDaemon,
}

/// Makes the VM's disk (the region to be overwritten already written) and starts its daemon.
fn start_vm(args: &Args) -> Result<Vm> {
    let dir = TempDir::new("bench-replica");
    let disk = dir.path().join("vm.qcow2");
    let disk_bytes = args.disk_mib * MIB;
    qsd::create_qcow2(&disk, disk_bytes)?;
    let fill = format!("write -P 0x5a 0 {}M", args.region_mib);
    let status = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &fill])
        .arg(&disk)
        .stdout(std::process::Stdio::null())
        .status()
        .context("run qemu-io (apt-get install qemu-utils)")?;
    if !status.success() {
        bail!("qemu-io {fill:?} failed");
    }
    let tls = qsd::write_psk(&dir.path().join("tls"))?;
    let socket = dir.path().join("guest.sock");
    let mut daemon_args = qsd::source_args(&disk, &tls, None);
    daemon_args.extend([
        "--nbd-server".to_owned(),
        format!("addr.type=unix,addr.path={}", qsd::opt(&socket)),
        "--export".to_owned(),
        format!("type=nbd,id=guest,node-name=disk0,name={GUEST_EXPORT},writable=on"),
    ]);
    let daemon = StorageDaemon::start("vm", dir.path(), &daemon_args)?;
    Ok(Vm {
        dir,
        tls,
        disk_bytes,
        daemon,
    })
}

/// `n_writes` timed 4 KiB writes at queue depth 1 over the region, each followed by a flush
/// when `flush`; returns each one's time.
fn timed_writes(vm: &Vm, args: &Args, flush: bool) -> Result<Vec<Duration>> {
    let mut client = NbdClient::connect(&vm.dir.path().join("guest.sock"), GUEST_EXPORT)?;
    if client.size != vm.disk_bytes {
        bail!("the guest export is {} bytes", client.size);
    }
    let data = qsd::random_bytes(BLOCK)?;
    let region = args.region_mib * MIB;
    let mut took = Vec::with_capacity(args.writes);
    for write_idx in 0..WARM_UP + args.writes {
        let offset = (write_idx * BLOCK) as u64 % region;
        let started = Instant::now();
        client.write(offset, &data)?;
        if flush {
            client.flush()?;
        }
        if write_idx >= WARM_UP {
            took.push(started.elapsed());
        }
    }
    Ok(took)
}

/// Starts the replica host's daemon and the write-blocking mirror into it, and waits until
/// the job is ready and actively synced; returns the replica's daemon.
fn start_replica(vm: &mut Vm, export: Export) -> Result<StorageDaemon> {
    let dir = vm.dir.path();
    let copy = dir.join("replica.qcow2");
    let _ = std::fs::remove_file(&copy);
    qsd::create_qcow2(&copy, vm.disk_bytes)?;
    let nbd = qsd::free_port()?;
    let replica = StorageDaemon::start(
        "replica",
        dir,
        &qsd::export_args(&copy, &vm.tls, nbd, export, None),
    )?;
    let qmp = &mut vm.daemon.qmp;
    qsd::add_nbd_node(qmp, NODE, nbd, export.tls)?;
    qmp.forget_events();
    qmp.execute(
        "blockdev-mirror",
        json!({
            "job-id": JOB, "device": "disk0", "target": NODE, "sync": "top",
            "copy-mode": "write-blocking", "auto-dismiss": false, "auto-finalize": true,
        }),
    )?;
    qsd::wait_ready(qmp, JOB, Duration::from_secs(300))?;
    poll_until(
        "the mirror actively synced",
        Duration::from_secs(30),
        Duration::from_millis(5),
        || {
            let jobs = qmp.execute("query-block-jobs", json!({}))?;
            let job = jobs
                .as_array()
                .into_iter()
                .flatten()
                .find(|j| j["device"] == JOB);
            match job {
                Some(job) if job["actively-synced"] == true => Ok(()),
                other => bail!("{other:?}"),
            }
        },
    )?;
    Ok(replica)
}

/// One run of one graph: (plain writes, writes with a flush each).
fn measure(vm: &mut Vm, args: &Args, graph: Option<Export>) -> Result<[Vec<Duration>; 2]> {
    let Some(export) = graph else {
        return Ok([
            timed_writes(vm, args, false)?,
            timed_writes(vm, args, true)?,
        ]);
    };
    let replica = start_replica(vm, export)?;
    let samples = [
        timed_writes(vm, args, false)?,
        timed_writes(vm, args, true)?,
    ];
    qsd::end_mirror(&mut vm.daemon.qmp, JOB, NODE)?;
    replica.stop()?;
    Ok(samples)
}

pub fn run(args: &Args) -> Result<Report> {
    crate::procs::ensure_tools(&[
        ("qemu-io", "qemu-utils"),
        ("qemu-storage-daemon", "qemu-utils"),
    ])?;
    if args.writes == 0 || args.region_mib == 0 || args.region_mib > args.disk_mib {
        bail!("--writes must be above 0, and --region-mib between 1 and --disk-mib");
    }
    let mut vm = start_vm(args)?;
    // samples[graph][kind][run]: each write's time.
    let mut samples = vec![[Vec::new(), Vec::new()]; GRAPHS.len()];
    for run_idx in 0..args.runs {
        for (graph_idx, graph) in GRAPHS.into_iter().enumerate() {
            let [plain, flushed] = measure(&mut vm, args, graph)
                .with_context(|| format!("{} (run {})", graph_label(graph), run_idx + 1))?;
            eprintln!(
                "run {}/{}: {}: mean {:.3} ms per write, {:.3} ms per write + flush",
                run_idx + 1,
                args.runs,
                graph_label(graph),
                mean_ms(&plain),
                mean_ms(&flushed)
            );
            samples[graph_idx][0].push(plain);
            samples[graph_idx][1].push(flushed);
        }
    }
    vm.daemon.stop()?;
    report(args, &samples)
}

fn mean_ms(samples: &[Duration]) -> f64 {
    samples.iter().sum::<Duration>().as_secs_f64() * 1e3 / samples.len() as f64
}

/// The figures of one graph and kind of write over all runs: the runs' mean latencies
/// (min/p50/max), the p50 and p99 of every write pooled, and IOPS at the median run's mean.
struct Figures {
    run_means_ms: Summary,
    pooled_p50_ms: f64,
    pooled_p99_ms: f64,
    pooled_max_ms: f64,
}

impl Figures {
    fn of(runs: &[Vec<Duration>]) -> Result<Figures> {
        let means: Vec<Duration> = runs
            .iter()
            .map(|run| Duration::from_secs_f64(mean_ms(run) / 1e3))
            .collect();
        let mut pooled: Vec<f64> = runs
            .iter()
            .flatten()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        pooled.sort_by(f64::total_cmp);
        Ok(Figures {
            run_means_ms: Summary::of(&means).context("no runs")?,
            pooled_p50_ms: percentile(&pooled, 50.0),
            pooled_p99_ms: percentile(&pooled, 99.0),
            pooled_max_ms: *pooled.last().context("no writes")?,
        })
    }

    fn iops(&self) -> f64 {
        1.0 / self.run_means_ms.p50
    }

    fn line(&self, baseline: &Figures) -> String {
        let m = &self.run_means_ms;
        format!(
            "mean per run {:.3} / {:.3} / {:.3} ms (min/p50/max), {:.0} IOPS, {:.2}x no replica; every write: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            m.min * 1e3,
            m.p50 * 1e3,
            m.max * 1e3,
            self.iops(),
            m.p50 / baseline.run_means_ms.p50,
            self.pooled_p50_ms,
            self.pooled_p99_ms,
            self.pooled_max_ms,
        )
    }

    fn json(&self, baseline: &Figures) -> Value {
        let m = &self.run_means_ms;
        let ms = |s: f64| (s * 1e6).round() / 1e3;
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        json!({
            "run_mean_ms": { "min": ms(m.min), "p50": ms(m.p50), "max": ms(m.max) },
            "iops": self.iops().round(),
            "over_plain": round(m.p50 / baseline.run_means_ms.p50),
            "write_ms": {
                "p50": round(self.pooled_p50_ms),
                "p99": round(self.pooled_p99_ms),
                "max": round(self.pooled_max_ms),
            },
        })
    }
}

fn report(args: &Args, samples: &[[Vec<Vec<Duration>>; 2]]) -> Result<Report> {
    let mut text = format!(
        "4 KiB writes at queue depth 1 into the first {} MiB of a {} MiB qcow2, {} timed writes per run and kind, {} runs\n",
        args.region_mib, args.disk_mib, args.writes, args.runs
    );
    let mut fields = json!({
        "runs": args.runs, "writes": args.writes, "disk_mib": args.disk_mib,
        "region_mib": args.region_mib,
    });
    let baselines = [Figures::of(&samples[0][0])?, Figures::of(&samples[0][1])?];
    for (graph, kinds) in GRAPHS.into_iter().zip(samples) {
        text.push_str(&format!("{}:\n", graph_label(graph)));
        let mut graph_fields = json!({});
        for (kind_idx, kind) in ["write", "write_flush"].into_iter().enumerate() {
            let figures = Figures::of(&kinds[kind_idx])?;
            let name = if kind_idx == 0 {
                "write        "
            } else {
                "write + flush"
            };
            text.push_str(&format!(
                "  {name}: {}\n",
                figures.line(&baselines[kind_idx])
            ));
            graph_fields[kind] = figures.json(&baselines[kind_idx]);
        }
        fields[graph_key(graph)] = graph_fields;
    }
    Ok(Report {
        bench: "replica-latency",
        text,
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_graph_has_its_own_key_and_label() {
        let keys: Vec<String> = GRAPHS.into_iter().map(graph_key).collect();
        assert_eq!(
            keys,
            [
                "plain",
                "replica_tls_writethrough",
                "replica_writethrough",
                "replica_tls"
            ]
        );
        let labels: std::collections::HashSet<&str> = GRAPHS.into_iter().map(graph_label).collect();
        assert_eq!(labels.len(), GRAPHS.len());
    }

    #[test]
    fn figures_summarise_runs_and_writes() {
        let ms = |v: &[u64]| v.iter().map(|&m| Duration::from_millis(m)).collect();
        let figures = Figures::of(&[ms(&[1, 1, 4]), ms(&[2, 2, 2])]).unwrap();
        assert!((figures.run_means_ms.p50 - 0.002).abs() < 1e-9);
        assert!((figures.iops() - 500.0).abs() < 1e-6);
        assert_eq!(figures.pooled_p50_ms, 2.0);
        assert_eq!(figures.pooled_max_ms, 4.0);
    }
}
