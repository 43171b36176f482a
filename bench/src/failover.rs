//! `failover`: how long after a node is SIGKILLed every survivor stops handing out its
//! address (hearth, over DNS), against how long until every survivor reports it `failed`
//! (Serf, over `serf members`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use hearth_testkit::TestCluster;
use serde_json::{Value, json};

use crate::dns::DnsPoller;
use crate::hearth::{health_changes, start_cluster, wait_converged, www_address, www_name};
use crate::serf::{SerfCluster, parse_members};
use crate::stats::{Summary, round_ms};
use crate::{Common, Report};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Nodes in each cluster (at least 2; node 1 is the seed and is never killed).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Kills to measure per system. The cluster is reused: the killed node is restarted and
    /// the whole cluster is waited on to converge again before the next trial.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Which systems to measure.
    #[arg(long, value_enum, default_value_t = Systems::Both)]
    systems: Systems,
    /// Time between polls of the survivors, in milliseconds.
    #[arg(long, default_value_t = 10)]
    poll_ms: u64,
    /// Idle time after convergence before each kill, in seconds.
    #[arg(long, default_value_t = 2)]
    settle_secs: u64,
    /// A trial in which detection takes longer than this many seconds counts as a timeout.
    #[arg(long, default_value_t = 60)]
    trial_timeout_secs: u64,
    /// Copy every hearth agent's log (membership at debug level) into this directory at the
    /// end, to see why a slow trial was slow.
    #[arg(long)]
    keep_logs: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Systems {
    Both,
    Hearth,
    Serf,
}

/// The figures of one system.
struct Outcome {
    samples: Vec<Duration>,
    /// Per trial: the victim, when the first and the last survivor noticed, and (hearth
    /// only) how often the survivors' local health changed meanwhile.
    trials: Vec<Value>,
    timeouts: usize,
    /// Mean duration of one poll round over the survivors: the measurement's granularity.
    mean_round: Duration,
}

impl Outcome {
    fn json(&self) -> Value {
        json!({
            "summary": Summary::of(&self.samples).map(|s| s.json()),
            "timeouts": self.timeouts,
            "mean_poll_round_ms": (self.mean_round.as_secs_f64() * 10_000.0).round() / 10.0,
            "samples_s": self.samples.iter().map(|d| round_ms(d.as_secs_f64())).collect::<Vec<_>>(),
            "trials": self.trials,
        })
    }

    fn line(&self) -> String {
        let summary = Summary::of(&self.samples).map_or("no samples".into(), |s| s.line());
        format!(
            "{summary}; timeouts {}; poll round {:.1} ms",
            self.timeouts,
            self.mean_round.as_secs_f64() * 1000.0
        )
    }
}

/// Mean of the recorded poll rounds.
#[derive(Default)]
struct Rounds {
    total: Duration,
    count: u32,
}

impl Rounds {
    fn add(&mut self, round: Duration) {
        self.total += round;
        self.count += 1;
    }
    fn mean(&self) -> Duration {
        self.total.checked_div(self.count).unwrap_or_default()
    }
}

pub fn run(args: &Args) -> Result<Report> {
    if args.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    let (mut text, mut fields) = (String::new(), json!({}));
    let hearth = if args.systems != Systems::Serf {
        let outcome = hearth_trials(args)?;
        text += &format!(
            "hearth (www gone from every survivor's DNS): {}\n",
            outcome.line()
        );
        fields["hearth"] = outcome.json();
        Some(outcome)
    } else {
        None
    };
    let serf = if args.systems != Systems::Hearth {
        crate::procs::ensure_tools(&[("serf", "serf")])?;
        let outcome = serf_trials(args)?;
        text += &format!(
            "serf   (failed on every survivor):           {}\n",
            outcome.line()
        );
        fields["serf"] = outcome.json();
        Some(outcome)
    } else {
        None
    };
    let summaries = hearth
        .zip(serf)
        .and_then(|(h, s)| Summary::of(&h.samples).zip(Summary::of(&s.samples)));
    if let Some((h, s)) = summaries {
        let target_met = h.p99 <= s.p50 / 2.0;
        text += &format!(
            "ratio hearth/serf: p50 {:.2}, p99 {:.2}; hearth p99 / serf p50 = {:.2} \
             (target <= 0.50: {})\n",
            h.p50 / s.p50,
            h.p99 / s.p99,
            h.p99 / s.p50,
            if target_met { "met" } else { "missed" }
        );
        fields["ratio_p50"] = json!(round_ms(h.p50 / s.p50));
        fields["ratio_p99"] = json!(round_ms(h.p99 / s.p99));
        fields["hearth_p99_over_serf_p50"] = json!(round_ms(h.p99 / s.p50));
        fields["target_met"] = json!(target_met);
    }
    fields["nodes"] = json!(args.nodes);
    fields["trials"] = json!(args.trials);
    fields["poll_ms"] = json!(args.poll_ms);
    Ok(Report {
        bench: "failover",
        text,
        fields,
    })
}

/// The non-seed node killed in `trial`: nodes 2..=N in turn.
fn victim_of(trial: usize, n_nodes: usize) -> usize {
    1 + trial % (n_nodes - 1)
}

fn hearth_trials(args: &Args) -> Result<Outcome> {
    let mut cluster = start_cluster(&args.common.hearth, args.nodes, |_| String::new())?;
    let mut poller = DnsPoller::new(&www_name())?;
    let mut outcome = Outcome {
        samples: Vec::new(),
        trials: Vec::new(),
        timeouts: 0,
        mean_round: Duration::ZERO,
    };
    let mut rounds = Rounds::default();
    for trial in 0..args.trials {
        std::thread::sleep(Duration::from_secs(args.settle_secs));
        let victim = victim_of(trial, args.nodes);
        let survivors: Vec<SocketAddr> = (0..args.nodes)
            .filter(|&idx| idx != victim)
            .map(|idx| cluster.agents[idx].dns_addr())
            .collect();
        let health_before = survivors_health(&cluster, victim);
        let killed_at = Instant::now();
        cluster.agents[victim].kill9();
        let detected = hearth_wait_gone(
            &mut poller,
            &survivors,
            www_address(victim),
            killed_at,
            args,
            &mut rounds,
        )?
        .map(|(first, last, server)| Detection {
            first,
            last,
            last_survivor: cluster
                .agents
                .iter()
                .find(|agent| agent.dns_addr() == server)
                .map_or_else(|| server.to_string(), |agent| agent.spec.name.clone()),
        });
        let health = survivors_health(&cluster, victim).saturating_sub(health_before);
        record(&mut outcome, "hearth", trial, args, detected, Some(health));
        cluster.agents[victim].restart();
        wait_converged(&cluster, Duration::from_secs(60))
            .context("hearth did not converge after restarting the killed node")?;
    }
    outcome.mean_round = rounds.mean();
    if let Some(dir) = &args.keep_logs {
        std::fs::create_dir_all(dir)?;
        for agent in &cluster.agents {
            let to = dir.join(format!("{}.log", agent.spec.name));
            std::fs::copy(agent.log_path(), &to)
                .with_context(|| format!("copy a log to {}", to.display()))?;
        }
    }
    Ok(outcome)
}

/// `HH:MM:SS.mmm` UTC, the clock of the agents' log lines.
fn utc_clock(at: SystemTime) -> String {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        since_epoch.subsec_millis()
    )
}

/// Local-health changes logged so far by every node but `victim`.
fn survivors_health(cluster: &TestCluster, victim: usize) -> usize {
    let agents = cluster.agents.iter().enumerate();
    agents
        .filter(|&(idx, _)| idx != victim)
        .map(|(_, agent)| health_changes(agent))
        .sum()
}

/// When the first and the last survivor noticed the kill, and which survivor was last.
struct Detection {
    first: Duration,
    last: Duration,
    last_survivor: String,
}

fn record(
    outcome: &mut Outcome,
    system: &str,
    trial: usize,
    args: &Args,
    detected: Option<Detection>,
    health_changes: Option<usize>,
) {
    let victim = victim_of(trial, args.nodes) + 1;
    match detected {
        Some(Detection {
            first,
            last,
            last_survivor,
        }) => {
            let health = health_changes
                .map(|n| format!("; survivors' local-health changes {n}"))
                .unwrap_or_default();
            eprintln!(
                "{system} n={} trial {}/{} at {}: killed n{victim}, detected everywhere after \
                 {:.3} s (first survivor {:.3} s, last {last_survivor}){health}",
                args.nodes,
                trial + 1,
                args.trials,
                utc_clock(SystemTime::now() - last),
                last.as_secs_f64(),
                first.as_secs_f64()
            );
            outcome.samples.push(last);
            outcome.trials.push(json!({
                "victim": format!("n{victim}"),
                "first_s": round_ms(first.as_secs_f64()),
                "last_s": round_ms(last.as_secs_f64()),
                "last_survivor": last_survivor,
                "local_health_changes": health_changes,
            }));
        }
        None => {
            eprintln!("{system} trial {}: killed n{victim}, timed out", trial + 1);
            outcome.timeouts += 1;
        }
    }
}

/// Polls every survivor until none answers `www` with `victim`. A survivor's detection time
/// is when the first query that got an answer without `victim` was sent; returns the earliest
/// and the latest of those (the trial's figure). None on timeout.
fn hearth_wait_gone(
    poller: &mut DnsPoller,
    survivors: &[SocketAddr],
    victim: Ipv4Addr,
    killed_at: Instant,
    args: &Args,
    rounds: &mut Rounds,
) -> Result<Option<(Duration, Duration, SocketAddr)>> {
    let mut pending = survivors.to_vec();
    let (mut earliest, mut latest) = (Duration::MAX, Duration::ZERO);
    let mut last_server = survivors[0];
    let poll_every = Duration::from_millis(args.poll_ms);
    while !pending.is_empty() {
        if killed_at.elapsed() > Duration::from_secs(args.trial_timeout_secs) {
            return Ok(None);
        }
        let round_start = Instant::now();
        let answers = poller.poll(&pending, Duration::from_millis(250))?;
        rounds.add(round_start.elapsed());
        pending.retain(|server| {
            let Some(answer) = answers.get(server) else {
                return true;
            };
            match &answer.addresses {
                Some(addresses) if !addresses.contains(&victim) => {
                    let noticed = answer.sent_at - killed_at;
                    earliest = earliest.min(noticed);
                    if noticed >= latest {
                        (latest, last_server) = (noticed, *server);
                    }
                    false
                }
                _ => true,
            }
        });
        std::thread::sleep(poll_every.saturating_sub(round_start.elapsed()));
    }
    Ok(Some((earliest, latest, last_server)))
}

fn serf_trials(args: &Args) -> Result<Outcome> {
    let mut cluster = SerfCluster::start(args.nodes)?;
    cluster.wait_all_alive(Duration::from_secs(60))?;
    let mut outcome = Outcome {
        samples: Vec::new(),
        trials: Vec::new(),
        timeouts: 0,
        mean_round: Duration::ZERO,
    };
    let mut rounds = Rounds::default();
    for trial in 0..args.trials {
        std::thread::sleep(Duration::from_secs(args.settle_secs));
        let victim = victim_of(trial, args.nodes);
        let killed_at = cluster.kill9(victim);
        let detected = serf_wait_failed(&cluster, victim, killed_at, args, &mut rounds)?;
        record(&mut outcome, "serf", trial, args, detected, None);
        cluster.spawn(victim)?;
        cluster
            .wait_all_alive(Duration::from_secs(60))
            .context("serf did not converge after restarting the killed node")?;
    }
    outcome.mean_round = rounds.mean();
    Ok(outcome)
}

/// Polls `serf members` on every survivor (all at once) until each reports the victim
/// `failed`. A survivor's detection time is when the first `serf members` that showed it was
/// started; returns the earliest and the latest of those. None on timeout.
fn serf_wait_failed(
    cluster: &SerfCluster,
    victim: usize,
    killed_at: Instant,
    args: &Args,
    rounds: &mut Rounds,
) -> Result<Option<Detection>> {
    let victim_name = cluster.name(victim).to_owned();
    let mut pending: Vec<usize> = (0..cluster.n_nodes()).filter(|&i| i != victim).collect();
    let (mut earliest, mut latest) = (Duration::MAX, Duration::ZERO);
    let mut last_idx = pending[0];
    let poll_every = Duration::from_millis(args.poll_ms);
    while !pending.is_empty() {
        if killed_at.elapsed() > Duration::from_secs(args.trial_timeout_secs) {
            return Ok(None);
        }
        let round_start = Instant::now();
        let mut polls = Vec::new();
        for &idx in &pending {
            polls.push((idx, Instant::now(), cluster.spawn_members(idx)?));
        }
        let mut detected = Vec::new();
        for (idx, started_at, child) in polls {
            let output = child.wait_with_output()?;
            let failed = parse_members(&output.stdout).is_ok_and(|members| {
                members
                    .iter()
                    .any(|(name, status)| *name == victim_name && status == "failed")
            });
            if failed {
                let noticed = started_at - killed_at;
                earliest = earliest.min(noticed);
                if noticed >= latest {
                    (latest, last_idx) = (noticed, idx);
                }
                detected.push(idx);
            }
        }
        rounds.add(round_start.elapsed());
        pending.retain(|idx| !detected.contains(idx));
        std::thread::sleep(poll_every.saturating_sub(round_start.elapsed()));
    }
    Ok(Some(Detection {
        first: earliest,
        last: latest,
        last_survivor: cluster.name(last_idx).to_owned(),
    }))
}
