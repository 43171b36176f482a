//! Live migration: a running test guest moved back and forth between two server+worker
//! agents with `POST /v1/vms/NAME/migrate`. For each move: the whole move (request → the VM
//! running on the target, as the API shows it), QEMU's own downtime (its last stop-and-copy),
//! and the pause the guest sees: from QEMU's stop on the source until the target's `cont`,
//! taken from the two agents' logs (same clock): the source logs how long the guest has been
//! paused when the cluster records the completed migration, the target logs its `cont`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hearth_testkit::{TestAgent, TestCluster, kill_pid, qemu_pids_under};
use serde_json::{Value, json};

use crate::Report;
use crate::procs::poll_until;
use crate::stats::Summary;

pub use crate::vm_boot::Args;

const DEADLINE: Duration = Duration::from_secs(180);

/// Seconds since midnight of a log line's RFC 3339 timestamp (`...THH:MM:SS.ffffffZ`).
fn log_time(line: &str) -> Option<f64> {
    let time = line.split('T').nth(1)?.split('Z').next()?;
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The value of `key=N` in a log line.
fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split(' ').next()?.parse().ok()
}

/// The `nth` (0-based) line of `agent`'s log that contains `marker`.
fn log_line(agent: &TestAgent, marker: &str, nth: usize) -> Result<String> {
    let log = std::fs::read_to_string(agent.dir.join("agent.log")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains(marker))
        .nth(nth)
        .map(str::to_owned)
        .with_context(|| format!("{}: no line {nth} with {marker:?}", agent.spec.name))
}

/// One live move of `name` to `to`; returns (whole move, QEMU downtime, guest pause).
fn one_move(
    agents: &[TestAgent],
    name: &str,
    from: usize,
    to: usize,
    nth: usize,
) -> Result<(Duration, Duration, Duration)> {
    let target = agents[to].spec.name.clone();
    let body = json!({ "to": target });
    let started = Instant::now();
    let (status, text) = agents[0]
        .http_send(
            "POST",
            &format!("/v1/vms/{name}/migrate"),
            &body.to_string(),
        )
        .map_err(anyhow::Error::msg)?;
    if !(200..300).contains(&status) {
        bail!("migrate answered {status}: {text}");
    }
    poll_until(
        "the VM running on the target",
        DEADLINE,
        Duration::from_millis(20),
        || {
            let row: Value = agents[0]
                .api_json(&format!("/v1/vms/{name}"))
                .map_err(anyhow::Error::msg)?;
            if row["host"] == target.as_str()
                && row.get("migration").is_none()
                && row["shown_phase"] == "running"
            {
                Ok(())
            } else if row.get("migration").is_none() && row["host"] != target.as_str() {
                bail!("the move was given up: {}", row["move_given_up"])
            } else {
                bail!("{row}")
            }
        },
    )?;
    let whole = started.elapsed();
    let paused = "VM moved live; paused here until the switch";
    let running = "VM moved here live and running";
    let (source, target_line) = poll_until(
        "both log lines",
        DEADLINE,
        Duration::from_millis(50),
        || {
            Ok((
                log_line(&agents[from], paused, nth / 2)?,
                log_line(&agents[to], running, nth / 2)?,
            ))
        },
    )?;
    let downtime = field(&source, "qemu_downtime_ms").context("no qemu_downtime_ms")?;
    let so_far = field(&source, "paused_ms").context("no paused_ms")?;
    let gap = log_time(&target_line).context("time")? - log_time(&source).context("time")?;
    let pause = Duration::from_millis(so_far) + Duration::from_secs_f64(gap.max(0.0));
    Ok((whole, Duration::from_millis(downtime), pause))
}

pub fn run(args: &Args) -> Result<Report> {
    let guest = crate::vm_boot::guest_path(&args.guest)?;
    let accel = args.accel.clone();
    let cluster = TestCluster::start_with(&args.common.hearth, 2, |spec| {
        spec.roles = "[\"server\", \"worker\"]".into();
        spec.extra = format!(
            "[state]\nbootstrap_expect = 2\n[compute]\naccel = \"{accel}\"\nvcpus = 4\nmemory_mib = 4096\ndisk_gib = 50\n"
        );
    });
    let agents = &cluster.agents;
    poll_until(
        "both workers",
        DEADLINE,
        Duration::from_millis(100),
        || match agents[0].host_count().map_err(anyhow::Error::msg)? {
            2 => Ok(()),
            n => bail!("{n} hosts"),
        },
    )?;
    agents[0].add_test_guest(&guest);
    let result = moves(agents, args);
    for agent in agents {
        for pid in qemu_pids_under(&agent.dir) {
            kill_pid(pid);
        }
    }
    result
}

/// Creates the guest that moves and waits until it ticks; returns the index of its host.
fn running_guest(agents: &[TestAgent]) -> Result<usize> {
    hearth_testkit::vms::create_tiny(&agents[0], "mover", &[]);
    let from = poll_until(
        "the VM running",
        DEADLINE,
        Duration::from_millis(100),
        || {
            let row: Value = agents[0]
                .api_json("/v1/vms/mover")
                .map_err(anyhow::Error::msg)?;
            match (row["shown_phase"].as_str(), row["host"].as_str()) {
                (Some("running"), Some(host)) => agents
                    .iter()
                    .position(|a| a.spec.name == host)
                    .context("unknown host"),
                _ => bail!("{row}"),
            }
        },
    )?;
    let id = agents[0]
        .api_json("/v1/vms/mover")
        .map_err(anyhow::Error::msg)?["id"]
        .as_str()
        .context("no id")?
        .to_owned();
    let console = agents[from]
        .dir
        .join("data/vms")
        .join(&id)
        .join("console.log");
    poll_until(
        "the guest ticking",
        DEADLINE,
        Duration::from_millis(100),
        || {
            let text = std::fs::read_to_string(&console).unwrap_or_default();
            if text.contains("HEARTH-GUEST-TICK") {
                Ok(())
            } else {
                bail!("not yet")
            }
        },
    )?;
    Ok(from)
}

fn moves(agents: &[TestAgent], args: &Args) -> Result<Report> {
    let mut from = running_guest(agents)?;
    let (mut whole, mut downtime, mut pause) = (vec![], vec![], vec![]);
    for run in 0..args.runs {
        let to = 1 - from;
        let (w, d, p) = one_move(agents, "mover", from, to, run)?;
        eprintln!(
            "move {}/{}: whole {:.2} s, QEMU downtime {} ms, guest pause {} ms",
            run + 1,
            args.runs,
            w.as_secs_f64(),
            d.as_millis(),
            p.as_millis()
        );
        whole.push(w);
        downtime.push(d);
        pause.push(p);
        // The next move starts from the QEMU that just came in: a guest moves live back and
        // forth, with no reboot in between.
        from = to;
    }
    let s = |v: &[Duration]| Summary::of(v).context("no runs");
    let (whole, downtime, pause) = (s(&whole)?, s(&downtime)?, s(&pause)?);
    let text = format!(
        "{} live moves of a running 256 MiB guest\nwhole move (API -> running there): {}\nQEMU downtime:                     {}\nguest pause (stop -> cont):        {}\n",
        args.runs,
        whole.line(),
        downtime.line_ms(),
        pause.line_ms(),
    );
    Ok(Report {
        bench: "live-move",
        text,
        fields: json!({
            "runs": args.runs,
            "whole_s": whole.json(),
            "qemu_downtime_s": downtime.json(),
            "pause_s": pause.json(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_give_their_time_and_fields() {
        let line = "2026-12-03T10:09:55.466069Z  INFO hearth_compute::live_moves: VM moved live; paused here until the switch vm=vm-18 to=n3 qemu_downtime_ms=51 paused_ms=73";
        assert!((log_time(line).unwrap() - (10.0 * 3600.0 + 9.0 * 60.0 + 55.466069)).abs() < 1e-6);
        assert_eq!(field(line, "qemu_downtime_ms"), Some(51));
        assert_eq!(field(line, "paused_ms"), Some(73));
        assert_eq!(field(line, "missing"), None);
    }
}
