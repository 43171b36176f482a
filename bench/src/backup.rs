//! `backup`: what a backup of a 1 GiB disk costs hearth, full and after 1 % of it changed,
//! against `restic backup` of the raw file; and what a restore costs. The disk is random data
//! (nothing for restic to deduplicate in it); a change writes random data over 1 MiB pieces
//! spread across it. hearth's way is its own code, on the disk as QEMU holds it while a
//! guest runs: a qcow2 node in a `qemu-storage-daemon`, changed through an NBD export of that
//! node (so its dirty bitmap sees every write), copied by `hearth_qemu::last_backup::copy`
//! (`blockdev-backup` into the copy kept as of the last backup: the whole disk the first
//! time, then only the blocks written since) and stored by
//! `hearth_compute::restic::Repo::backup` (restic reads only the copy's parts that changed).
//! The baseline is `restic backup FILE` of the same disk as one raw file, into a repository
//! of its own. A restore is `Repo::dump` of the latest snapshot and
//! `hearth_qemu::backup::prepare_restore` (a qcow2 overlay on an empty base, synced), as
//! `hearth backup restore` does.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
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

/// The disk as QEMU holds it while a guest runs: node `disk0` (qcow2) of a storage daemon,
/// with a second QMP socket for hearth's copy and an NBD export the changes go through.
struct Held {
    daemon: qsd::StorageDaemon,
    qmp: PathBuf,
    nbd: PathBuf,
}

fn hold(dir: &Path, image: &Path) -> Result<Held> {
    let (qmp, nbd) = (dir.join("copy.qmp"), dir.join("nbd.sock"));
    let args = [
        "--blockdev".to_owned(),
        format!("driver=file,node-name=file0,filename={}", qsd::opt(image)),
        "--blockdev".to_owned(),
        "driver=qcow2,node-name=disk0,file=file0".to_owned(),
        "--chardev".to_owned(),
        format!("socket,id=copy,path={},server=on,wait=off", qsd::opt(&qmp)),
        "--monitor".to_owned(),
        "chardev=copy".to_owned(),
        "--nbd-server".to_owned(),
        format!("addr.type=unix,addr.path={}", qsd::opt(&nbd)),
        "--export".to_owned(),
        "type=nbd,id=changes,node-name=disk0,name=disk,writable=on".to_owned(),
    ];
    let daemon = qsd::StorageDaemon::start("held", dir, &args)?;
    Ok(Held { daemon, qmp, nbd })
}

/// Writes random data over `changed_percent` of the disk, in 1 MiB pieces spread evenly,
/// shifted by `round` so that each change touches other pieces: into the raw file `raw` and
/// the same through the export of `held`.
fn change(raw: &Path, held: &Held, args: &Args, round: u64, dir: &Path) -> Result<u64> {
    let (disk_mib, changed_percent) = (args.disk_mib, args.changed_percent);
    let pieces = (disk_mib * changed_percent / 100).max(1);
    let stride = disk_mib / pieces;
    let mut file = std::fs::OpenOptions::new().write(true).open(raw)?;
    let piece_file = dir.join("piece.bin");
    let nbd = format!("nbd+unix:///disk?socket={}", held.nbd.display());
    for piece in 0..pieces {
        let mib = (piece * stride + round * 7 + 3) % disk_mib;
        let data = qsd::random_bytes(MIB as usize)?;
        file.seek(SeekFrom::Start(mib * MIB))?;
        file.write_all(&data)?;
        std::fs::write(&piece_file, &data)?;
        let write = format!("write -s {} {} {MIB}", piece_file.display(), mib * MIB);
        let done = std::process::Command::new("qemu-io")
            .args(["-f", "raw", "-c", &write, &nbd])
            .output()
            .context("qemu-io (apt-get install qemu-utils)")?;
        if !done.status.success() {
            bail!("qemu-io: {}", String::from_utf8_lossy(&done.stderr));
        }
    }
    file.sync_all()?;
    Ok(pieces * MIB)
}

/// One backup hearth's way, compared with snapshot `since`: (time, bytes new to the
/// repository, bytes the copy read, the snapshot).
async fn hearth_backup(
    repo: &Repo,
    held: &Held,
    copy: &Path,
    since: Option<&str>,
) -> Result<(Duration, u64, u64, String)> {
    let started = Instant::now();
    // The worker first checks that the snapshot it compares with is still there.
    repo.list("vm-1").await.map_err(|e| anyhow!(e))?;
    std::fs::create_dir_all(copy)?;
    let hold = hearth_qemu::last_backup::Hold::try_take(copy)?
        .ok_or_else(|| anyhow!("another process holds {}", copy.display()))?;
    let copied = hearth_qemu::last_backup::copy(&held.qmp, "vm-1", "disk0", copy)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let summary = repo
        .backup("vm-1", "bench", (copy, &hold), since)
        .await
        .map_err(|e| anyhow!(e))?;
    let took = started.elapsed();
    Ok((took, summary.data_added, copied.read, summary.snapshot_id))
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
    full: (Duration, u64, u64),
    incremental: Vec<(Duration, u64, u64)>,
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
    let image = dir.join("disk.qcow2");
    let (raw_arg, image_arg) = (disk.display().to_string(), image.display().to_string());
    qsd::qemu_img(&["convert", "-f", "raw", "-O", "qcow2", &raw_arg, &image_arg])?;
    let held = hold(dir, &image)?;
    let (ours, theirs) = (repo(dir, "hearth")?, repo(dir, "restic")?);
    for repo in [&ours, &theirs] {
        repo.ensure().await.map_err(|e| anyhow!(e))?;
    }
    let copy = dir.join("vm-1.last-backup");
    eprintln!("backup: full backups of {} MiB", args.disk_mib);
    let (took, added, read, mut last) = hearth_backup(&ours, &held, &copy, None).await?;
    let full = (took, added, read);
    let file_full = restic_file_backup(&theirs, &disk)?;
    let (mut incremental, mut file_incremental) = (Vec::new(), Vec::new());
    let mut changed_bytes = 0;
    for round in 0..args.runs as u64 {
        eprintln!("backup: incremental run {} of {}", round + 1, args.runs);
        changed_bytes = change(&disk, &held, args, round, dir)?;
        let (took, added, read, id) = hearth_backup(&ours, &held, &copy, Some(&last)).await?;
        incremental.push((took, added, read));
        last = id;
        file_incremental.push(restic_file_backup(&theirs, &disk)?);
    }
    held.daemon.stop()?;
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
    let two = |runs: &[(Duration, u64, u64)]| runs.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>();
    let (inc, inc_bytes) = p50(&two(&figures.incremental))?;
    let mut reads: Vec<u64> = figures.incremental.iter().map(|r| r.2).collect();
    reads.sort_unstable();
    let inc_read = reads[reads.len() / 2];
    let (file_inc, file_inc_bytes) = p50(&figures.file_incremental)?;
    let restore = Summary::of(&figures.restores).context("no restores")?;
    let mib = |b: u64| b as f64 / MIB as f64;
    let text = format!(
        "disk {} MiB of random data; each change rewrites {:.0} MiB\n\
         hearth full:              {:>7.2} s, {:>7.1} MiB added\n\
         hearth incremental (p50): {:>7.2} s, {:>7.1} MiB added (min {:.2} s, max {:.2} s), {:.1} MiB read from the disk\n\
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
        mib(inc_read),
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
        "hearth_incremental_read_p50": inc_read,
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
