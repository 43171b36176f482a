//! `ha-restart`: a dead worker's VM running elsewhere, with no person involved. Three
//! server+worker agents; a test guest with `replicas = 2`. Each trial waits for its replica
//! to be in sync, then kills its host the way a power cut would (`kill -9` of the agent and
//! of its QEMU) and measures until the cluster shows the VM running on another host, and
//! until the guest's next boot is up there. The dead agent is then started again (its copy
//! is archived) before the next trial.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hearth_testkit::{TestAgent, TestCluster, kill_pid, qemu_pids_under};
use serde_json::{Value, json};

use crate::Common;
use crate::Report;
use crate::procs::poll_until;
use crate::stats::Summary;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Host deaths to measure.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// `[compute] lease_secs` of the agents (hearth's default is 15).
    #[arg(long, default_value_t = 15)]
    pub lease_secs: u64,
    /// The test guest (built by scripts/build-test-guest.sh).
    #[arg(long, default_value = "target/test-guest")]
    pub guest: std::path::PathBuf,
    /// `auto`, `kvm` or `tcg`, as `[compute] accel`.
    #[arg(long, default_value = "auto")]
    pub accel: String,
}

const DEADLINE: Duration = Duration::from_secs(240);

fn row(agent: &TestAgent) -> Result<Value> {
    agent.api_json("/v1/vms/ha").map_err(anyhow::Error::msg)
}

fn index_of(agents: &[TestAgent], host: &Value) -> Result<usize> {
    agents
        .iter()
        .position(|a| *host == a.spec.name.as_str())
        .with_context(|| format!("unknown host {host}"))
}

/// Waits until the VM runs with its replica in sync on a host other than `not_on` (the
/// host killed last, whose agent may still be catching up), seen through a node other
/// than that one; returns the index of its host.
fn in_sync(agents: &[TestAgent], not_on: Option<usize>) -> Result<usize> {
    let observer = not_on.map_or(0, |k| (k + 1) % agents.len());
    poll_until(
        "the replica in sync",
        DEADLINE,
        Duration::from_millis(200),
        || {
            let row = row(&agents[observer])?;
            let host = index_of(agents, &row["host"])?;
            if row["shown_phase"] == "running"
                && row["replica"]["state"] == "in-sync"
                && Some(host) != not_on
            {
                Ok(host)
            } else {
                bail!("{row}")
            }
        },
    )
}

/// One host death: (kill -> running elsewhere as the API shows it, kill -> the guest up).
fn one_death(
    agents: &mut [TestAgent],
    id: &str,
    last: Option<usize>,
) -> Result<(Duration, Duration, usize)> {
    let h = in_sync(agents, last)?;
    let observer = (h + 1) % agents.len();
    let qemu = qemu_pids_under(&agents[h].dir);
    let killed = Instant::now();
    agents[h].kill9();
    for pid in qemu {
        kill_pid(pid);
    }
    let to = poll_until(
        "running elsewhere",
        DEADLINE,
        Duration::from_millis(50),
        || {
            let row = row(&agents[observer])?;
            let to = index_of(agents, &row["host"])?;
            if to != h && row["shown_phase"] == "running" {
                Ok(to)
            } else {
                bail!("{row}")
            }
        },
    )?;
    let running = killed.elapsed();
    let console = agents[to].dir.join("data/vms").join(id).join("console.log");
    poll_until("the guest up", DEADLINE, Duration::from_millis(50), || {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if text.contains("HEARTH-GUEST-READY") {
            Ok(())
        } else {
            bail!("not yet")
        }
    })?;
    let up = killed.elapsed();
    agents[h].restart();
    Ok((running, up, h))
}

pub fn run(args: &Args) -> Result<Report> {
    let guest = crate::vm_boot::guest_path(&args.guest)?;
    let (accel, lease) = (args.accel.clone(), args.lease_secs);
    let mut cluster = TestCluster::start_with(&args.common.hearth, 3, |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = format!(
            "[state]\nbootstrap_expect = 3\n[compute]\naccel = \"{accel}\"\nvcpus = 4\nmemory_mib = 4096\ndisk_gib = 50\nlease_secs = {lease}\n"
        );
    });
    let result = deaths(&mut cluster.agents, &guest, args);
    for agent in &cluster.agents {
        for pid in qemu_pids_under(&agent.dir) {
            kill_pid(pid);
        }
        for pid in hearth_testkit::storage_daemon_pids_under(&agent.dir) {
            kill_pid(pid);
        }
    }
    result
}

fn deaths(agents: &mut [TestAgent], guest: &std::path::Path, args: &Args) -> Result<Report> {
    poll_until(
        "three workers",
        DEADLINE,
        Duration::from_millis(100),
        || match agents[0].host_count().map_err(anyhow::Error::msg)? {
            3 => Ok(()),
            n => bail!("{n} hosts"),
        },
    )?;
    agents[0].add_test_guest(guest);
    hearth_testkit::vms::create_tiny(&agents[0], "ha", &["--replicas", "2"]);
    in_sync(agents, None)?;
    let id = row(&agents[0])?["id"].as_str().context("no id")?.to_owned();
    let (mut running, mut up, mut last) = (vec![], vec![], None);
    for run in 0..args.runs {
        let (r, u, host) = one_death(agents, &id, last)?;
        last = Some(host);
        eprintln!(
            "death {}/{} of {}: running elsewhere after {:.1} s, guest up after {:.1} s",
            run + 1,
            args.runs,
            agents[host].spec.name,
            r.as_secs_f64(),
            u.as_secs_f64()
        );
        running.push(r);
        up.push(u);
    }
    let s = |v: &[Duration]| Summary::of(v).context("no runs");
    let (running, up) = (s(&running)?, s(&up)?);
    let text = format!(
        "{} host deaths (kill -9 of agent and QEMU), lease_secs = {}\nkill -> running elsewhere: {}\nkill -> guest up there:    {}\n",
        args.runs,
        args.lease_secs,
        running.line(),
        up.line(),
    );
    Ok(Report {
        bench: "ha-restart",
        text,
        fields: json!({
            "runs": args.runs,
            "lease_secs": args.lease_secs,
            "running_s": running.json(),
            "guest_up_s": up.json(),
        }),
    })
}
