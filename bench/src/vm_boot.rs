//! VM start latency: from `POST /v1/vms` on a one-node server+worker agent until the test
//! guest's markers appear on its serial console (first `HEARTH-GUEST-UP`, then
//! `HEARTH-GUEST-READY`), against the same guest booted by QEMU directly, so hearth's share
//! (placement, reconcile, disk, seed, launch) stands apart from the guest's own boot.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hearth_testkit::{TestAgent, TestCluster, kill_pid, qemu_pids_under};
use serde_json::{Value, json};

use crate::procs::poll_until;
use crate::stats::Summary;
use crate::{Common, Report};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Runs: VMs created one after another (vm-boot), or moves made (live-move).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// The test guest (built by scripts/build-test-guest.sh).
    #[arg(long, default_value = "target/test-guest")]
    pub guest: PathBuf,
    /// `auto`, `kvm` or `tcg`, as `[compute] accel`.
    #[arg(long, default_value = "auto")]
    pub accel: String,
}

const DEADLINE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(10);

fn console_has(path: &Path, marker: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    if text.contains(marker) {
        Ok(())
    } else {
        bail!("no {marker} yet")
    }
}

/// A disk for [`direct_qemu`]: QEMU's file name and the image format.
pub struct DirectDisk<'a> {
    pub file: &'a str,
    pub format: &'a str,
}

/// The guest's QEMU command line, as hearth would run it, without hearth: the disk is opened
/// with hearth's options, and `append` goes on the kernel's command line.
pub fn direct_qemu(
    guest: &Path,
    dir: &Path,
    disk: &DirectDisk<'_>,
    accel: &str,
    append: &str,
) -> Command {
    let console = dir.join("console.log");
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args([
            "-machine",
            &format!("q35,accel={accel}"),
            "-cpu",
            "max",
            "-m",
            "256M",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(guest.join("vmlinux"))
        .arg("-initrd")
        .arg(guest.join("initramfs.cpio.gz"))
        .arg("-append")
        .arg(format!("console=ttyS0 quiet panic=-1 {append}"))
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-drive")
        .arg(format!(
            "file={},format={},if=none,id=disk0,auto-read-only=off,discard=unmap,detect-zeroes=unmap",
            disk.file.replace(',', ",,"),
            disk.format
        ))
        .args(["-device", "virtio-blk-pci,drive=disk0,id=virtio-disk0"])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=none,id=seed0,readonly=on",
            dir.join("seed.iso").display()
        ))
        .args(["-device", "virtio-blk-pci,drive=seed0,id=virtio-disk1"])
        .args(["-netdev", "user,id=net0,restrict=on"])
        .args([
            "-device",
            "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// The guest's own boot: QEMU started by hand with the same disk and seed layout hearth
/// uses (overlay made, seed written before the clock starts), minus hearth. Returns (launch → UP, launch → READY).
fn direct_boot(
    agent: &TestAgent,
    guest: &Path,
    accel: &str,
    run: usize,
) -> Result<(Duration, Duration)> {
    let dir = agent.dir.join(format!("direct-{run}"));
    std::fs::create_dir_all(&dir)?;
    let overlay = dir.join("disk.qcow2");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(guest.join("base.qcow2"))
        .args(["-F", "qcow2"])
        .arg(&overlay)
        .status()?;
    if !status.success() {
        bail!("qemu-img create failed");
    }
    write_seed(&dir, run)?;
    let console = dir.join("console.log");
    let started = Instant::now();
    let file = overlay.display().to_string();
    let disk = DirectDisk {
        file: &file,
        format: "qcow2",
    };
    let mut child = direct_qemu(guest, &dir, &disk, accel, "")
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let result = (|| {
        poll_until("UP (direct)", DEADLINE, POLL, || {
            console_has(&console, "HEARTH-GUEST-UP")
        })?;
        let up = started.elapsed();
        poll_until("READY (direct)", DEADLINE, POLL, || {
            console_has(&console, "HEARTH-GUEST-READY")
        })?;
        Ok((up, started.elapsed()))
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The seed hearth would write, in `dir` (`seed.iso`), so the guest finds its config as fast.
pub fn write_seed(dir: &Path, run: usize) -> Result<()> {
    let seed = hearth_qemu::seed::Seed {
        instance_id: format!("direct-{run}"),
        hostname: format!("direct{run}"),
        ssh_keys: vec![],
        mac: "52:54:00:12:34:56".into(),
        addresses: vec!["192.0.2.200/24".into()],
        gateway4: Some([192, 0, 2, 1].into()),
        gateway6: None,
        resolvers: vec![],
    };
    seed.write_iso(&dir.join("seed"), &dir.join("seed.iso"))
        .map_err(anyhow::Error::msg)
}

/// One VM made through the API and deleted again; returns (create → UP, create → READY).
fn hearth_boot(agent: &TestAgent, run: usize) -> Result<(Duration, Duration)> {
    let name = format!("bench{run}");
    let body = json!({
        "name": name, "owner": "bench", "vcpus": 1, "memory_mib": 256, "disk_gib": 1,
        "image": "tiny", "pools": ["lan"],
    });
    let started = Instant::now();
    let (status, text) = agent
        .http_send("POST", "/v1/vms", &body.to_string())
        .map_err(anyhow::Error::msg)?;
    if status != 201 {
        bail!("create answered {status}: {text}");
    }
    let answer: Value = serde_json::from_str(&text)?;
    let id = answer["result"]["id"].as_str().context("no id")?.to_owned();
    let console = agent
        .dir
        .join("data")
        .join("vms")
        .join(&id)
        .join("console.log");
    poll_until("HEARTH-GUEST-UP", DEADLINE, POLL, || {
        console_has(&console, "HEARTH-GUEST-UP")
    })?;
    let up = started.elapsed();
    poll_until("HEARTH-GUEST-READY", DEADLINE, POLL, || {
        console_has(&console, "HEARTH-GUEST-READY")
    })?;
    let ready = started.elapsed();
    agent.cli(&["vm", "delete", &name]);
    poll_until(
        "the VM gone",
        DEADLINE,
        Duration::from_millis(50),
        || match agent.api_json(&format!("/v1/vms/{name}")) {
            Err(e) if e.contains("404") => Ok(()),
            other => bail!("{other:?}"),
        },
    )?;
    Ok((up, ready))
}

/// The test guest's directory, or how to build it.
pub fn guest_path(guest: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(guest).with_context(|| {
        format!(
            "{}: run ./scripts/build-test-guest.sh {}",
            guest.display(),
            guest.display()
        )
    })
}

pub fn run(args: &Args) -> Result<Report> {
    let guest = guest_path(&args.guest)?;
    let accel = args.accel.clone();
    let cluster = TestCluster::start_with(&args.common.hearth, 1, |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = format!(
            "[state]\nbootstrap_expect = 1\n[compute]\naccel = \"{accel}\"\nvcpus = 4\nmemory_mib = 4096\ndisk_gib = 50\n"
        );
    });
    let agent = &cluster.agents[0];
    poll_until(
        "the worker registered",
        DEADLINE,
        Duration::from_millis(100),
        || match agent.host_count().map_err(anyhow::Error::msg)? {
            1 => Ok(()),
            n => bail!("{n} hosts"),
        },
    )?;
    agent.add_test_guest(&guest);
    agent.ensure_account("bench");
    let used_accel = std::fs::read_to_string(agent.dir.join("agent.log"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.split("accel=")
                .nth(1)
                .map(|r| r.split(' ').next().unwrap_or("").to_owned())
        })
        .unwrap_or_else(|| args.accel.clone());

    let (mut up, mut ready, mut direct_up, mut direct_ready) = (vec![], vec![], vec![], vec![]);
    for run in 0..args.runs {
        let (u, r) = hearth_boot(agent, run)?;
        up.push(u);
        ready.push(r);
        eprintln!(
            "run {}/{}: UP {:.2} s, READY {:.2} s",
            run + 1,
            args.runs,
            u.as_secs_f64(),
            r.as_secs_f64()
        );
        let (u, r) = direct_boot(agent, &guest, &used_accel, run)?;
        direct_up.push(u);
        direct_ready.push(r);
    }
    for pid in qemu_pids_under(&agent.dir) {
        kill_pid(pid);
    }
    let s = |v: &[Duration]| Summary::of(v).context("no runs");
    let (up, ready, dup, dready) = (s(&up)?, s(&ready)?, s(&direct_up)?, s(&direct_ready)?);
    let text = format!(
        "accel {used_accel}, {} runs\nAPI create -> HEARTH-GUEST-UP:      {}\nAPI create -> HEARTH-GUEST-READY:   {}\nQEMU alone -> HEARTH-GUEST-UP:      {}\nQEMU alone -> HEARTH-GUEST-READY:   {}\nhearth's share at p50 (UP): {:.3} s\n",
        args.runs,
        up.line_p90(),
        ready.line_p90(),
        dup.line_p90(),
        dready.line_p90(),
        up.p50 - dup.p50,
    );
    Ok(Report {
        bench: "vm-boot",
        text,
        fields: json!({
            "accel": used_accel, "runs": args.runs,
            "api_to_up": up.json(), "api_to_ready": ready.json(),
            "direct_to_up": dup.json(), "direct_to_ready": dready.json(),
        }),
    })
}
