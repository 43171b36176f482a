//! Replicated-state benchmark: write latency and throughput through a 3-server Raft group on
//! loopback (fsync on every commit), and the time from SIGKILL of the leader to the first
//! successful write through a survivor.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hearth_testkit::{TestCluster, eventually};
use serde_json::json;

use crate::stats::Summary;
use crate::{Common, Report};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Sequential writes for the latency figures.
    #[arg(long, default_value_t = 2000)]
    pub writes: usize,
    /// Concurrent clients for the throughput figure.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// How long the throughput run lasts, in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Leader kills for the write-resumption figure.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Record sets written (by 32 clients) before anything is measured, so the figures show
    /// the cost of a write into a state of that size.
    #[arg(long, default_value_t = 0)]
    pub preload: usize,
    /// VMs created (stopped, by 32 clients, for one account and one image) before the record
    /// sets are preloaded, so the state also holds VM definitions. No worker runs them.
    #[arg(long, default_value_t = 0)]
    pub vms: usize,
    /// After the follower restart, start a fourth agent (a worker, so a learner) and time
    /// until it has applied everything the leader had when it started. Once the leader has
    /// removed the start of its log (`snapshot_index` reaching 5 000 plus 1 000 kept), that
    /// takes a snapshot install.
    #[arg(long)]
    pub learner: bool,
    /// Print each distinct refusal seen while waiting for writes to resume.
    #[arg(long)]
    pub verbose: bool,
}

/// One keep-alive HTTP/1.1 connection to an agent's API.
struct Client {
    stream: BufReader<TcpStream>,
    token: String,
}

impl Client {
    fn connect(api: SocketAddr, token: &str) -> Result<Client> {
        let stream = TcpStream::connect_timeout(&api, Duration::from_secs(2))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Client {
            stream: BufReader::new(stream),
            token: token.to_owned(),
        })
    }

    /// PUTs one TXT record set; returns the HTTP status.
    fn put(&mut self, name: &str) -> Result<u16> {
        Ok(self.put_verbose(name)?.0)
    }

    /// PUTs one TXT record set; returns the HTTP status and the body.
    fn put_verbose(&mut self, name: &str) -> Result<(u16, String)> {
        let body = json!({"records": {"name": name, "values": [{"type": "TXT", "text": name}]}})
            .to_string();
        self.send("PUT", "/v1/records", &body)
    }

    /// Sends one JSON request; returns the HTTP status and the body.
    fn send(&mut self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.token,
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes())?;
        let mut status_line = String::new();
        self.stream.read_line(&mut status_line)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

fn leader(cluster: &TestCluster, alive: &[usize]) -> Result<usize, String> {
    let mut names = Vec::new();
    for &idx in alive {
        let state = cluster.agents[idx].state()?;
        names.push(state["leader"].as_str().unwrap_or_default().to_owned());
    }
    names.dedup();
    match names.as_slice() {
        [name] => alive
            .iter()
            .copied()
            .find(|&i| cluster.agents[i].spec.name == *name)
            .ok_or_else(|| format!("leader {name} is not alive")),
        _ => Err(format!("no agreed leader: {names:?}")),
    }
}

fn start(hearth: &Path) -> TestCluster {
    TestCluster::start(hearth, 3, |_| "[state]\nbootstrap_expect = 3\n".into())
}

fn latency(cluster: &TestCluster, leader_idx: usize, writes: usize) -> Result<Vec<Duration>> {
    let agent = &cluster.agents[leader_idx];
    let mut client = Client::connect(agent.api_addr(), &agent.token())?;
    let mut samples = Vec::with_capacity(writes);
    for i in 0..writes {
        let started = Instant::now();
        let status = client.put(&format!("lat{i}"))?;
        if status != 200 {
            bail!("write {i} answered {status}");
        }
        samples.push(started.elapsed());
    }
    Ok(samples)
}

fn throughput(
    cluster: &TestCluster,
    leader_idx: usize,
    clients: usize,
    seconds: u64,
) -> Result<f64> {
    let agent = &cluster.agents[leader_idx];
    let (api, token) = (agent.api_addr(), agent.token());
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|worker| {
            let (done, stop, token) = (done.clone(), stop.clone(), token.clone());
            std::thread::spawn(move || -> Result<()> {
                let mut client = Client::connect(api, &token)?;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if client.put(&format!("tp{worker}-{}", i % 64))? == 200 {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow!("a client thread panicked"))??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Writes `count` distinct record sets through the leader from 32 clients, with a progress
/// line every 1 000.
fn preload(cluster: &TestCluster, leader_idx: usize, count: usize) -> Result<()> {
    in_parallel(cluster, leader_idx, count, "record sets", |client, i| {
        client.put_verbose(&format!("pre{i}"))
    })
}

/// The account and image the preloaded VMs belong to.
const VM_OWNER: &str = "bench";
const VM_IMAGE: &str = "bench-image";

/// Creates `count` stopped VMs through the leader from 32 clients, with a progress line
/// every 1 000.
fn preload_vms(cluster: &TestCluster, leader_idx: usize, count: usize) -> Result<()> {
    let agent = &cluster.agents[leader_idx];
    agent.ensure_account(VM_OWNER);
    agent.add_fake_image(VM_IMAGE);
    in_parallel(cluster, leader_idx, count, "VMs", |client, i| {
        let body = json!({
            "name": format!("vm{i}"),
            "owner": VM_OWNER,
            "image": VM_IMAGE,
            "vcpus": 1,
            "memory_mib": 64,
            "disk_gib": 1,
            "power": "stopped",
        });
        client.send("POST", "/v1/vms", &body.to_string())
    })
}

/// Runs `write(client, i)` for every i below `count` from 32 clients of the leader's API;
/// fails at the first answer that is not a success.
fn in_parallel(
    cluster: &TestCluster,
    leader_idx: usize,
    count: usize,
    what: &'static str,
    write: impl Fn(&mut Client, usize) -> Result<(u16, String)> + Send + Sync + 'static,
) -> Result<()> {
    let agent = &cluster.agents[leader_idx];
    let (api, token) = (agent.api_addr(), agent.token());
    let next = Arc::new(AtomicU64::new(0));
    let write = Arc::new(write);
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (next, token, write) = (next.clone(), token.clone(), write.clone());
            std::thread::spawn(move || -> Result<()> {
                let mut client = Client::connect(api, &token)?;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= count {
                        return Ok(());
                    }
                    let (status, body) = write(&mut client, i)?;
                    if !(200..300).contains(&status) {
                        bail!("preload of {what}: write {i} answered {status} {body}");
                    }
                    if (i + 1).is_multiple_of(1000) {
                        eprintln!("raft: preloaded {}/{count} {what}", i + 1);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow!("a preload thread panicked"))??;
    }
    Ok(())
}

/// How a new learner caught up: the time from its start until it had applied what the leader
/// had then, and the log positions that say whether that took a snapshot.
struct LearnerCatchUp {
    took: Duration,
    target_index: u64,
    leader_purged_index: u64,
    learner_snapshot_index: u64,
}

impl LearnerCatchUp {
    fn line(&self) -> String {
        format!(
            "{:.3} s to index {} (leader's log purged to {}; the learner's snapshot at {}: {})",
            self.took.as_secs_f64(),
            self.target_index,
            self.leader_purged_index,
            self.learner_snapshot_index,
            if self.leader_purged_index > 0 && self.learner_snapshot_index > 0 {
                "sent the snapshot"
            } else {
                "the log alone may have sufficed"
            }
        )
    }
}

/// Starts a fourth agent, a worker (which the leader adds as a learner), and times until its
/// own `/v1/state` reports everything the leader had applied when it started.
fn learner_catch_up(cluster: &mut TestCluster, leader_idx: usize) -> Result<LearnerCatchUp> {
    let leader = &cluster.agents[leader_idx];
    let at_start = leader.state().map_err(|e| anyhow!(e))?;
    let target_index = at_start["applied_index"].as_u64().unwrap_or(0);
    let leader_purged_index = at_start["purged_index"].as_u64().unwrap_or(0);
    let mut spec = cluster.spec(3, "[compute]\ndriver = \"fake\"\n".into());
    spec.roles = "[\"worker\"]".into();
    let started = Instant::now();
    let learner = cluster.add(spec);
    loop {
        let local = learner.state().ok();
        let applied = local.as_ref().and_then(|s| s["applied_index"].as_u64());
        if let (Some(local), Some(applied)) = (&local, applied)
            && applied >= target_index
        {
            return Ok(LearnerCatchUp {
                took: started.elapsed(),
                target_index,
                leader_purged_index,
                learner_snapshot_index: local["snapshot_index"].as_u64().unwrap_or(0),
            });
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the learner was not at index {target_index} within 120 s (it says {applied:?})");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Each live agent's (VmRSS, RssAnon) in KiB, from `/proc/PID/status`.
fn rss(cluster: &TestCluster) -> Result<Vec<(u64, u64)>> {
    cluster
        .agents
        .iter()
        .filter_map(|agent| agent.pid())
        .map(|pid| {
            Ok((
                crate::procs::status_kib(pid, "VmRSS")?,
                crate::procs::status_kib(pid, "RssAnon")?,
            ))
        })
        .collect()
}

fn rss_line(rss: &[(u64, u64)]) -> String {
    rss.iter()
        .map(|(all, anon)| {
            format!(
                "{:.1} MiB ({:.1} anonymous)",
                *all as f64 / 1024.0,
                *anon as f64 / 1024.0
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A node's own applied index, as `agent` reports it in `/v1/state`.
fn applied(agent: &hearth_testkit::TestAgent, name: &str) -> Result<u64, String> {
    let state = agent.state()?;
    state["nodes"][name]["applied_index"]
        .as_u64()
        .ok_or_else(|| format!("no applied index for {name}: {state}"))
}

/// SIGKILLs a follower, starts it again, and times until it answers with everything the
/// leader had applied at the kill: the process start, opening (and checking) the store,
/// reading the state and replaying the log after it, and catching up.
fn restart_to_ready(cluster: &mut TestCluster, leader_idx: usize) -> Result<Duration> {
    let leader = &cluster.agents[leader_idx];
    let target = applied(leader, &leader.spec.name.clone()).map_err(|e| anyhow!(e))?;
    let follower = (leader_idx + 1) % 3;
    let name = cluster.agents[follower].spec.name.clone();
    cluster.agents[follower].kill9();
    let started = Instant::now();
    cluster.agents[follower].restart();
    loop {
        match applied(&cluster.agents[follower], &name) {
            Ok(index) if index >= target => return Ok(started.elapsed()),
            _ if started.elapsed() > Duration::from_secs(60) => {
                bail!("{name} not back at index {target} within 60 s of its restart")
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Kills the leader, then writes through a survivor every 5 ms until one succeeds.
fn resumption(cluster: &mut TestCluster, kills: usize, verbose: bool) -> Result<Vec<Duration>> {
    let mut samples = Vec::new();
    for trial in 0..kills {
        let old = eventually("a leader", Duration::from_secs(60), || {
            leader(cluster, &[0, 1, 2])
        });
        let survivor = (old + 1) % 3;
        let (api, token) = (
            cluster.agents[survivor].api_addr(),
            cluster.agents[survivor].token(),
        );
        let mut client = Client::connect(api, &token)?;
        let killed_at = Instant::now();
        cluster.agents[old].kill9();
        let mut last_answer = String::new();
        loop {
            match client.put_verbose(&format!("resume{trial}")) {
                Ok((200, _)) => {
                    samples.push(killed_at.elapsed());
                    break;
                }
                Ok((status, body)) => {
                    let answer = format!("{status} {body}");
                    if verbose && answer != last_answer {
                        eprintln!(
                            "raft:   {:.3} s: {answer}",
                            killed_at.elapsed().as_secs_f64()
                        );
                        last_answer = answer;
                    }
                }
                // The agent closed the connection; open another.
                Err(_) => client = Client::connect(api, &token)?,
            }
            if killed_at.elapsed() > Duration::from_secs(60) {
                bail!("trial {trial}: no write within 60 s of the leader's death");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!(
            "raft: trial {}/{kills}: {:.3} s",
            trial + 1,
            samples[trial].as_secs_f64()
        );
        cluster.agents[old].restart();
        // The next trial starts from a steady group: every member has applied everything.
        eventually(
            "the group whole and caught up again",
            Duration::from_secs(60),
            || {
                let state = cluster.agents[old].state()?;
                let voters = state["voters"].as_array().map_or(0, Vec::len);
                let applied: Vec<u64> = state["nodes"]
                    .as_object()
                    .map(|nodes| {
                        nodes
                            .values()
                            .filter_map(|n| n["applied_index"].as_u64())
                            .collect()
                    })
                    .unwrap_or_default();
                let caught_up = state["leader"].is_string()
                    && voters == 3
                    && applied.len() == 3
                    && applied.iter().all(|&a| a == applied[0]);
                if caught_up {
                    Ok(())
                } else {
                    Err(state.to_string())
                }
            },
        );
    }
    Ok(samples)
}

pub fn run(args: &Args) -> Result<Report> {
    let mut cluster = start(&args.common.hearth);
    let leader_idx = eventually("a leader", Duration::from_secs(60), || {
        leader(&cluster, &[0, 1, 2])
    });
    if args.vms > 0 {
        eprintln!("raft: preloading {} VMs", args.vms);
        preload_vms(&cluster, leader_idx, args.vms)?;
    }
    if args.preload > 0 {
        eprintln!("raft: preloading {} record sets", args.preload);
        preload(&cluster, leader_idx, args.preload)?;
    }
    let rss_preloaded = rss(&cluster)?;
    eprintln!("raft: {} sequential writes", args.writes);
    let lat = Summary::of(&latency(&cluster, leader_idx, args.writes)?).context("no samples")?;
    eprintln!(
        "raft: throughput with {} clients for {} s",
        args.clients, args.seconds
    );
    let writes_per_s = throughput(&cluster, leader_idx, args.clients, args.seconds)?;
    let rss_written = rss(&cluster)?;
    eprintln!("raft: restart of a follower");
    let restart = restart_to_ready(&mut cluster, leader_idx)?;
    let learner = if args.learner {
        eprintln!("raft: a new learner");
        Some(learner_catch_up(&mut cluster, leader_idx)?)
    } else {
        None
    };
    let learner_line = learner.as_ref().map_or_else(
        || "not measured (without --learner)".to_owned(),
        LearnerCatchUp::line,
    );
    eprintln!("raft: {} leader kills", args.kills);
    let resume = Summary::of(&resumption(&mut cluster, args.kills, args.verbose)?);
    let text = format!(
        "preloaded VMs: {}\npreloaded record sets: {}\nRSS per agent after the preload: {}\nRSS per agent after the throughput run: {}\nfollower SIGKILL, restart, caught up: {:.3} s\nnew learner, start to caught up: {learner_line}\nwrite latency (sequential, one client): {}\nthroughput ({} clients): {writes_per_s:.0} writes/s\nleader SIGKILL to first successful write: {}\n",
        args.vms,
        args.preload,
        rss_line(&rss_preloaded),
        rss_line(&rss_written),
        restart.as_secs_f64(),
        lat.line(),
        args.clients,
        resume
            .as_ref()
            .map_or("not measured (--kills 0)".into(), Summary::line)
    );
    Ok(Report {
        bench: "raft",
        text,
        fields: json!({
            "write_latency": lat.json(),
            "writes_per_s": writes_per_s.round(),
            "clients": args.clients,
            "preload": args.preload,
            "vms": args.vms,
            "learner": learner.as_ref().map(|l| json!({
                "catch_up_s": l.took.as_secs_f64(),
                "target_index": l.target_index,
                "leader_purged_index": l.leader_purged_index,
                "learner_snapshot_index": l.learner_snapshot_index,
            })),
            "rss_kib_after_preload": rss_preloaded,
            "rss_kib_after_throughput": rss_written,
            "restart_to_caught_up_s": restart.as_secs_f64(),
            "resume_after_leader_kill": resume.as_ref().map(Summary::json),
        }),
    })
}
