//! `backup`: what a backup of a 1 GiB disk costs hearth, full and after 1 % of it changed,
//! against `restic backup` of the raw file; and what a restore costs. The disk is a raw file
//! of random data (nothing for restic to deduplicate in it); a change writes random data
//! over 1 MiB pieces spread across it. hearth's way is its own code: the disk copied into a
//! raw file (`qemu-img convert`, what `Driver::copy_disk` does for a stopped VM; a running
//! one is copied by QEMU's `blockdev-backup`, the same read and write) and streamed into
//! the repository by `hearth_compute::restic::Repo::backup` (`restic backup --stdin`). The
//! baseline is `restic backup FILE` into a repository of its own. A restore is
//! `Repo::dump` of the latest snapshot and `hearth_qemu::backup::prepare_restore` (a qcow2
//! overlay on an empty base, synced), as `hearth backup restore` does.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use hearth_compute::restic::Repo;
use hearth_testkit::TempDir;
use serde_json::json;

use crate::Report;
use crate::qsd;
use crate::stats::Summary;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Incremental runs (each after its own change) and restores to time.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The disk's size in MiB.
    #[arg(long, default_value_t = 1024)]
    pub disk_mib: u64,
    /// How much of the disk each change rewrites, in percent (whole MiB pieces).
    #[arg(long, default_value_t = 1)]
    pub changed_percent: u64,
    /// Also print the figures as one JSON line on stdout.
    #[arg(long)]
    pub json: bool,
}

const MIB: u64 = 1 << 20;

fn repo(dir: &Path, name: &str) -> Result<Repo> {
    let password = dir.join(format!("{name}.pass"));
    std::fs::write(&password, "a benchmark's restic password\n")?;
    Ok(Repo {
        location: dir.join(name).display().to_string(),
        password_file: password,
        cache_dir: dir.join(format!("{name}.cache")),
        env: vec![],
    })
}

/// Writes random data over `changed_percent` of the disk, in 1 MiB pieces spread evenly,
/// shifted by `round` so that each change touches other pieces.
fn change(disk: &Path, disk_mib: u64, changed_percent: u64, round: u64) -> Result<u64> {
    let pieces = (disk_mib * changed_percent / 100).max(1);
    let stride = disk_mib / pieces;
    let mut file = std::fs::OpenOptions::new().write(true).open(disk)?;
    for piece in 0..pieces {
        let mib = (piece * stride + round * 7 + 3) % disk_mib;
        file.seek(SeekFrom::Start(mib * MIB))?;
        file.write_all(&qsd::random_bytes(MIB as usize)?)?;
    }
    file.sync_all()?;
    Ok(pieces * MIB)
}

/// One backup hearth's way: (time, bytes new to the repository).
async fn hearth_backup(repo: &Repo, disk: &Path, copy: &Path) -> Result<(Duration, u64)> {
    let started = Instant::now();
    let (disk_arg, copy_arg) = (disk.display().to_string(), copy.display().to_string());
    qsd::qemu_img(&["convert", "-f", "raw", "-O", "raw", &disk_arg, &copy_arg])?;
    let summary = repo
        .backup("vm-1", "bench", copy)
        .await
        .map_err(|e| anyhow!(e))?;
    let took = started.elapsed();
    std::fs::remove_file(copy)?;
    Ok((took, summary.data_added))
}

/// One `restic backup FILE`: (time, bytes new to the repository).
fn restic_file_backup(repo: &Repo, disk: &Path) -> Result<(Duration, u64)> {
    let started = Instant::now();
    let output = std::process::Command::new("restic")
        .args(["backup", "--json", "--host", "bench"])
        .arg(disk)
        .env("RESTIC_REPOSITORY", &repo.location)
        .env("RESTIC_PASSWORD_FILE", &repo.password_file)
        .env("RESTIC_CACHE_DIR", &repo.cache_dir)
        .output()
        .context("restic (apt-get install restic)")?;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&output.stdout);
    let summary = hearth_compute::restic::summary(&text).map_err(|e| anyhow!(e))?;
    Ok((took, summary.data_added))
}

/// One restore: the latest snapshot dumped and written as a qcow2 overlay on `base`.
async fn restore(repo: &Repo, root: &Path, base: &Path) -> Result<Duration> {
    let latest = repo.list("vm-1").await.map_err(|e| anyhow!(e))?;
    let id = &latest.last().context("no snapshot")?.short_id;
    let raw = root.join("dumped.raw");
    let started = Instant::now();
    repo.dump("vm-1", id, &raw).await.map_err(|e| anyhow!(e))?;
    hearth_qemu::backup::prepare_restore(root, "vm-1", "disk.qcow2", &raw, base, "qcow2")
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let took = started.elapsed();
    std::fs::remove_file(&raw)?;
    Ok(took)
}

struct Figures {
    full: (Duration, u64),
    incremental: Vec<(Duration, u64)>,
    file_full: (Duration, u64),
    file_incremental: Vec<(Duration, u64)>,
    restores: Vec<Duration>,
    changed_bytes: u64,
}

async fn measure(args: &Args, dir: &Path) -> Result<Figures> {
    let disk = dir.join("disk.raw");
    let mut file = std::fs::File::create(&disk)?;
    for _ in 0..args.disk_mib {
        file.write_all(&qsd::random_bytes(MIB as usize)?)?;
    }
    file.sync_all()?;
    drop(file);
    let (ours, theirs) = (repo(dir, "hearth")?, repo(dir, "restic")?);
    for repo in [&ours, &theirs] {
        repo.ensure().await.map_err(|e| anyhow!(e))?;
    }
    let copy = dir.join("copy.raw");
    eprintln!("backup: full backups of {} MiB", args.disk_mib);
    let full = hearth_backup(&ours, &disk, &copy).await?;
    let file_full = restic_file_backup(&theirs, &disk)?;
    let (mut incremental, mut file_incremental) = (Vec::new(), Vec::new());
    let mut changed_bytes = 0;
    for round in 0..args.runs as u64 {
        eprintln!("backup: incremental run {} of {}", round + 1, args.runs);
        changed_bytes = change(&disk, args.disk_mib, args.changed_percent, round)?;
        incremental.push(hearth_backup(&ours, &disk, &copy).await?);
        file_incremental.push(restic_file_backup(&theirs, &disk)?);
    }
    let root = dir.join("vms");
    std::fs::create_dir_all(&root)?;
    let base = root.join("base.qcow2");
    qsd::create_qcow2(&base, args.disk_mib * MIB)?;
    let mut restores = Vec::new();
    for run in 0..args.runs {
        eprintln!("backup: restore {} of {}", run + 1, args.runs);
        restores.push(restore(&ours, &root, &base).await?);
    }
    Ok(Figures {
        full,
        incremental,
        file_full,
        file_incremental,
        restores,
        changed_bytes,
    })
}

fn p50(runs: &[(Duration, u64)]) -> Result<(Summary, u64)> {
    let times: Vec<Duration> = runs.iter().map(|r| r.0).collect();
    let mut bytes: Vec<u64> = runs.iter().map(|r| r.1).collect();
    bytes.sort_unstable();
    let summary = Summary::of(&times).context("no runs")?;
    Ok((summary, bytes[bytes.len() / 2]))
}

pub fn run(args: &Args) -> Result<Report> {
    let dir = TempDir::new("bench-backup");
    let runtime = tokio::runtime::Runtime::new()?;
    let figures = runtime.block_on(measure(args, dir.path()))?;
    let (inc, inc_bytes) = p50(&figures.incremental)?;
    let (file_inc, file_inc_bytes) = p50(&figures.file_incremental)?;
    let restore = Summary::of(&figures.restores).context("no restores")?;
    let mib = |b: u64| b as f64 / MIB as f64;
    let text = format!(
        "disk {} MiB of random data; each change rewrites {:.0} MiB\n\
         hearth full:              {:>7.2} s, {:>7.1} MiB added\n\
         hearth incremental (p50): {:>7.2} s, {:>7.1} MiB added (min {:.2} s, max {:.2} s)\n\
         restic backup FILE full:  {:>7.2} s, {:>7.1} MiB added\n\
         restic backup FILE incr.: {:>7.2} s, {:>7.1} MiB added (p50)\n\
         restore (p50):            {:>7.2} s (min {:.2} s, max {:.2} s)\n",
        args.disk_mib,
        mib(figures.changed_bytes),
        figures.full.0.as_secs_f64(),
        mib(figures.full.1),
        inc.p50,
        mib(inc_bytes),
        inc.min,
        inc.max,
        figures.file_full.0.as_secs_f64(),
        mib(figures.file_full.1),
        file_inc.p50,
        mib(file_inc_bytes),
        restore.p50,
        restore.min,
        restore.max,
    );
    let fields = json!({
        "disk_mib": args.disk_mib,
        "changed_bytes": figures.changed_bytes,
        "hearth_full_s": figures.full.0.as_secs_f64(),
        "hearth_full_added": figures.full.1,
        "hearth_incremental": inc.json(),
        "hearth_incremental_added_p50": inc_bytes,
        "restic_file_full_s": figures.file_full.0.as_secs_f64(),
        "restic_file_full_added": figures.file_full.1,
        "restic_file_incremental": file_inc.json(),
        "restic_file_incremental_added_p50": file_inc_bytes,
        "restore": restore.json(),
    });
    Ok(Report {
        bench: "backup",
        text,
        fields,
    })
}
