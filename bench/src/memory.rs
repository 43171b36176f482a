//! `memory`: resident memory (VmRSS) of idle hearth agents and idle Serf agents, side by side
//! on the same machine in the same run.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::hearth::{pids, start_cluster};
use crate::procs::{ensure_tools, pss_kib, status_kib};
use crate::serf::SerfCluster;
use crate::{Common, Report};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Nodes in each cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds both clusters sit idle (converged) before VmRSS is read.
    #[arg(long, default_value_t = 30)]
    idle_secs: u64,
    #[command(flatten)]
    pub common: Common,
}

/// VmRSS and VmHWM (peak) of each PID, in KiB.
fn rss_of(pids: &[u32]) -> Result<Vec<(u64, u64)>> {
    pids.iter()
        .map(|&pid| Ok((status_kib(pid, "VmRSS")?, status_kib(pid, "VmHWM")?)))
        .collect()
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 100.0).round() / 100.0
}

fn mean_mib(rows: &[(u64, u64)]) -> f64 {
    mib(rows.iter().map(|(rss, _)| rss).sum::<u64>() / rows.len().max(1) as u64)
}

pub fn run(args: &Args) -> Result<Report> {
    ensure_tools(&[("serf", "serf")])?;
    let hearth = start_cluster(&args.common.hearth, args.nodes, |_| String::new())?;
    let serf = SerfCluster::start(args.nodes)?;
    serf.wait_all_alive(Duration::from_secs(60))?;
    eprintln!("both clusters converged; idling {} s", args.idle_secs);
    std::thread::sleep(Duration::from_secs(args.idle_secs));
    let serf_pids: Vec<u32> = (0..args.nodes).filter_map(|idx| serf.pid(idx)).collect();
    let hearth_rows = rss_of(&pids(&hearth))?;
    let serf_rows = rss_of(&serf_pids)?;
    let hearth_parts = breakdown(&pids(&hearth))?;
    let serf_parts = breakdown(&serf_pids)?;
    let (hearth_mean, serf_mean) = (mean_mib(&hearth_rows), mean_mib(&serf_rows));
    let hearth_max = hearth_rows.iter().map(|r| r.0).max().unwrap_or(0);
    let serf_min = serf_rows.iter().map(|r| r.0).min().unwrap_or(0);
    let describe = |rows: &[(u64, u64)]| {
        rows.iter()
            .map(|(rss, hwm)| format!("{:.2} MiB (peak {:.2})", mib(*rss), mib(*hwm)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let target_met = hearth_max <= serf_min;
    let text = format!(
        "after {} s idle, VmRSS per agent:\nhearth: {}; mean {hearth_mean:.2} MiB\n\
         serf:   {}; mean {serf_mean:.2} MiB\nhearth/serf mean ratio {:.2}; \
         largest hearth <= smallest serf: {}\n",
        args.idle_secs,
        describe(&hearth_rows),
        describe(&serf_rows),
        hearth_mean / serf_mean,
        if target_met { "met" } else { "missed" }
    ) + &format!(
        "hearth, anonymous / file-backed RSS, PSS and threads: {}\nserf:   {}\n",
        describe_parts(&hearth_parts),
        describe_parts(&serf_parts)
    );
    let as_json = |rows: &[(u64, u64)]| {
        rows.iter()
            .map(|(rss, hwm)| json!({"rss_mib": mib(*rss), "peak_mib": mib(*hwm)}))
            .collect::<Vec<_>>()
    };
    let fields = json!({
        "nodes": args.nodes,
        "idle_secs": args.idle_secs,
        "hearth": as_json(&hearth_rows),
        "serf": as_json(&serf_rows),
        "hearth_mean_rss_mib": hearth_mean,
        "serf_mean_rss_mib": serf_mean,
        "target_met": target_met,
        "hearth_parts": parts_json(&hearth_parts),
        "serf_parts": parts_json(&serf_parts),
    });
    Ok(Report {
        bench: "memory",
        text,
        fields,
    })
}

/// One process's memory beyond VmRSS, in KiB.
struct Parts {
    /// Heap, stacks, caches: what the process allocated.
    anon: u64,
    /// The binary's and libraries' pages mapped.
    file: u64,
    /// Proportional set size: shared pages divided among the processes that map them.
    pss: u64,
    threads: u64,
}

fn breakdown(pids: &[u32]) -> Result<Vec<Parts>> {
    pids.iter()
        .map(|&pid| {
            Ok(Parts {
                anon: status_kib(pid, "RssAnon")?,
                file: status_kib(pid, "RssFile")?,
                pss: pss_kib(pid)?,
                threads: status_kib(pid, "Threads")?,
            })
        })
        .collect()
}

fn describe_parts(rows: &[Parts]) -> String {
    rows.iter()
        .map(|p| {
            format!(
                "{:.2} / {:.2} MiB, PSS {:.2} MiB, {} threads",
                mib(p.anon),
                mib(p.file),
                mib(p.pss),
                p.threads
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn parts_json(rows: &[Parts]) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|p| {
            json!({"anon_mib": mib(p.anon), "file_mib": mib(p.file), "pss_mib": mib(p.pss), "threads": p.threads})
        })
        .collect()
}
