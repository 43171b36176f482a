//! `false-positives`: "dead" verdicts in a healthy hearth cluster, first while a busy loop
//! starves the agents' core, then while one node at a time is paused with SIGSTOP.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hearth_testkit::{TempDir, TestAgent, TestCluster};
use serde_json::{Value, json};

use crate::hearth::{health_changes, pids, start_cluster};
use crate::procs::{ProcessGuard, busy_loop, pin, poll_until, send_signal};
use crate::{Common, Report};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Minutes of CPU starvation.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Minutes of the SIGSTOP variant afterwards (default: as long as --minutes; 0 skips it).
    #[arg(long)]
    stop_minutes: Option<f64>,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The core the busy loop saturates; the agents are pinned to it too (see --unpinned).
    #[arg(long, default_value_t = 1)]
    cpu: usize,
    /// Busy loops on that core (1: the core is saturated once over).
    #[arg(long, default_value_t = 1)]
    hogs: usize,
    /// Run the busy loops at real-time priority (`chrt --fifo 1`): the kernel's RT throttling
    /// then leaves everything else on that core about 50 ms per second, which is starvation
    /// for real rather than a fair share.
    #[arg(long)]
    realtime: bool,
    /// Leave the agents free to run on any core. On a two-core machine they then simply
    /// use the other core, which starves nothing.
    #[arg(long)]
    unpinned: bool,
    /// In the SIGSTOP variant, seconds between two pauses.
    #[arg(long, default_value_t = 20)]
    stop_every_secs: u64,
    /// In the SIGSTOP variant, how long each pause lasts, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    stop_for_ms: u64,
    /// Time between two `/v1/members` polls of each node, in milliseconds.
    #[arg(long, default_value_t = 250)]
    poll_ms: u64,
    #[command(flatten)]
    pub common: Common,
}

/// What the observers saw during one phase.
#[derive(Debug, Default)]
struct Verdicts {
    /// Lines the member-failed handlers wrote.
    handler_lines: Vec<String>,
    /// Times a node's `/v1/members` showed a member `dead` that it did not show dead before.
    api_dead_episodes: usize,
    /// The same for `suspect` (suspicions that were refuted are not false positives).
    api_suspect_episodes: usize,
    polls: usize,
    poll_errors: usize,
    /// Times a node's local health score changed (from its debug log): Lifeguard at work.
    health_changes: usize,
    /// Whether a real SIGKILL at the end was reported by every survivor's handler: proof
    /// that a zero above is not a broken handler.
    handler_self_check: bool,
}

impl Verdicts {
    fn false_deaths(&self) -> usize {
        self.handler_lines.len().max(self.api_dead_episodes)
    }

    fn json(&self) -> Value {
        json!({
            "false_deaths": self.false_deaths(),
            "handler_member_failed": self.handler_lines.len(),
            "api_dead_episodes": self.api_dead_episodes,
            "api_suspect_episodes": self.api_suspect_episodes,
            "polls": self.polls,
            "poll_errors": self.poll_errors,
            "local_health_changes": self.health_changes,
            "handler_lines": self.handler_lines,
            "handler_self_check": self.handler_self_check,
        })
    }

    fn line(&self) -> String {
        format!(
            "false deaths {} (member-failed handler runs {}, dead in /v1/members {}); \
             suspect episodes {}; local-health changes {}; polls {} ({} failed); \
             handler self-check after a real kill: {}",
            self.false_deaths(),
            self.handler_lines.len(),
            self.api_dead_episodes,
            self.api_suspect_episodes,
            self.health_changes,
            self.polls,
            self.poll_errors,
            if self.handler_self_check {
                "ok"
            } else {
                "FAILED"
            }
        )
    }
}

pub fn run(args: &Args) -> Result<Report> {
    let mut text = String::new();
    let mut fields = json!({"nodes": args.nodes, "minutes": args.minutes});
    if args.minutes > 0.0 {
        let verdicts = starvation(args)?;
        text += &format!(
            "CPU starvation, {} min, {} busy loop(s) on cpu {}{}: {}\n",
            args.minutes,
            args.hogs,
            args.cpu,
            if args.unpinned {
                ", agents unpinned"
            } else {
                ", agents pinned to it"
            },
            verdicts.line()
        );
        fields["starvation"] = verdicts.json();
    }
    let stop_minutes = args.stop_minutes.unwrap_or(args.minutes);
    if stop_minutes > 0.0 {
        let (verdicts, pauses) = pauses(args, stop_minutes)?;
        text += &format!(
            "SIGSTOP {} ms every {} s, {stop_minutes} min, {pauses} pauses: {}\n",
            args.stop_for_ms,
            args.stop_every_secs,
            verdicts.line()
        );
        fields["sigstop"] = verdicts.json();
        fields["sigstop"]["pauses"] = json!(pauses);
        fields["stop_minutes"] = json!(stop_minutes);
    }
    Ok(Report {
        bench: "false-positives",
        text,
        fields,
    })
}

fn minutes(m: f64) -> Duration {
    Duration::from_secs_f64(m * 60.0)
}

fn starvation(args: &Args) -> Result<Verdicts> {
    let events = TempDir::new("bench-events");
    let mut cluster = start_cluster(&args.common.hearth, args.nodes, |idx| {
        failed_handler(&events_file(events.path(), idx))
    })?;
    let hogs: Vec<ProcessGuard> = (0..args.hogs)
        .map(|_| busy_loop(Some(args.cpu), args.realtime))
        .collect::<Result<_>>()?;
    if !args.unpinned {
        for pid in pids(&cluster) {
            pin(pid, args.cpu)?;
        }
    }
    eprintln!(
        "starving {} agents for {} min with {} busy loop(s)",
        args.nodes, args.minutes, args.hogs
    );
    let mut verdicts = observe(&cluster, events.path(), args, minutes(args.minutes), |_| {});
    drop(hogs);
    verdicts.handler_self_check = handler_self_check(&mut cluster, events.path());
    Ok(verdicts)
}

/// Pauses node after node, `stop_for_ms` every `stop_every_secs`. Returns the pause count.
fn pauses(args: &Args, stop_minutes: f64) -> Result<(Verdicts, usize)> {
    let events = TempDir::new("bench-events");
    let mut cluster = start_cluster(&args.common.hearth, args.nodes, |idx| {
        failed_handler(&events_file(events.path(), idx))
    })?;
    let agent_pids = pids(&cluster);
    let mut n_pauses = 0;
    let mut next_pause = Instant::now() + Duration::from_secs(args.stop_every_secs);
    eprintln!(
        "pausing one of {} agents for {} ms every {} s, for {stop_minutes} min",
        args.nodes, args.stop_for_ms, args.stop_every_secs
    );
    let verdicts = observe(
        &cluster,
        events.path(),
        args,
        minutes(stop_minutes),
        |left| {
            if Instant::now() < next_pause || left < Duration::from_secs(args.stop_every_secs) / 2 {
                return;
            }
            let pid = agent_pids[n_pauses % agent_pids.len()];
            if send_signal(pid, "STOP").is_ok() {
                std::thread::sleep(Duration::from_millis(args.stop_for_ms));
                let _ = send_signal(pid, "CONT");
                n_pauses += 1;
            }
            next_pause += Duration::from_secs(args.stop_every_secs);
        },
    );
    let mut verdicts = verdicts;
    verdicts.handler_self_check = handler_self_check(&mut cluster, events.path());
    Ok((verdicts, n_pauses))
}

/// Kills the last node for real and waits until every survivor's member-failed handler has
/// reported it.
fn handler_self_check(cluster: &mut TestCluster, events_dir: &Path) -> bool {
    let Some(victim) = cluster.agents.len().checked_sub(1) else {
        return false;
    };
    let victim_name = format!(" saw {} ", cluster.agents[victim].spec.name);
    cluster.agents[victim].kill9();
    poll_until(
        "member-failed handlers to report a real kill",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let reported = (0..victim).all(|idx| {
                std::fs::read_to_string(events_file(events_dir, idx))
                    .is_ok_and(|lines| lines.contains(&victim_name))
            });
            if reported { Ok(()) } else { bail!("not yet") }
        },
    )
    .is_ok()
}

fn events_file(dir: &Path, idx: usize) -> PathBuf {
    dir.join(format!("n{}.member-failed.log", idx + 1))
}

/// A handler that appends one line per member-failed event to `file`.
fn failed_handler(file: &Path) -> String {
    let script = format!(
        "echo \\\"$(date +%T.%N) $HEARTH_SELF saw $HEARTH_MEMBER_NAME $HEARTH_EVENT\\\" >> '{}'",
        file.display()
    );
    format!(
        "\n[[handler]]\nevents = [\"member-failed\"]\ncommand = [\"sh\", \"-c\", \"{script}\"]\n"
    )
}

/// Polls every agent's `/v1/members` from its own thread for `duration`, calling `disturb`
/// (with the time left) from this thread every 50 ms, then collects the handler lines.
fn observe(
    cluster: &TestCluster,
    events_dir: &Path,
    args: &Args,
    duration: Duration,
    mut disturb: impl FnMut(Duration),
) -> Verdicts {
    let health_before: Vec<usize> = cluster.agents.iter().map(health_changes).collect();
    let verdicts = Mutex::new(Verdicts::default());
    let done = AtomicBool::new(false);
    let end = Instant::now() + duration;
    std::thread::scope(|scope| {
        for agent in &cluster.agents {
            let (verdicts, done) = (&verdicts, &done);
            scope.spawn(move || poll_members(agent, args.poll_ms, verdicts, done));
        }
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            disturb(left);
            std::thread::sleep(Duration::from_millis(50).min(left));
        }
        done.store(true, Ordering::Relaxed);
    });
    let mut verdicts = verdicts.into_inner().unwrap_or_else(|e| e.into_inner());
    for (idx, agent) in cluster.agents.iter().enumerate() {
        verdicts.health_changes += health_changes(agent).saturating_sub(health_before[idx]);
        let lines = std::fs::read_to_string(events_file(events_dir, idx)).unwrap_or_default();
        verdicts
            .handler_lines
            .extend(lines.lines().map(str::to_owned));
    }
    verdicts
}

fn poll_members(agent: &TestAgent, poll_ms: u64, verdicts: &Mutex<Verdicts>, done: &AtomicBool) {
    let (mut dead, mut suspect) = (BTreeSet::new(), BTreeSet::new());
    while !done.load(Ordering::Relaxed) {
        let states = agent.member_states();
        let mut v = verdicts.lock().unwrap_or_else(|e| e.into_inner());
        v.polls += 1;
        match states {
            Ok(states) => {
                for (name, state) in states {
                    let (now_dead, now_suspect) = (state == "dead", state == "suspect");
                    if now_dead && dead.insert(name.clone()) {
                        eprintln!("{} sees {name} dead", agent.spec.name);
                        v.api_dead_episodes += 1;
                    } else if !now_dead {
                        dead.remove(&name);
                    }
                    if now_suspect && suspect.insert(name.clone()) {
                        v.api_suspect_episodes += 1;
                    } else if !now_suspect {
                        suspect.remove(&name);
                    }
                }
            }
            Err(_) => v.poll_errors += 1,
        }
        drop(v);
        std::thread::sleep(Duration::from_millis(poll_ms));
    }
}
