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
        let request = format!(
            "PUT /v1/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
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
    eprintln!("raft: {} sequential writes", args.writes);
    let lat = Summary::of(&latency(&cluster, leader_idx, args.writes)?).context("no samples")?;
    eprintln!(
        "raft: throughput with {} clients for {} s",
        args.clients, args.seconds
    );
    let writes_per_s = throughput(&cluster, leader_idx, args.clients, args.seconds)?;
    eprintln!("raft: {} leader kills", args.kills);
    let resume =
        Summary::of(&resumption(&mut cluster, args.kills, args.verbose)?).context("no samples")?;
    let text = format!(
        "write latency (sequential, one client): {}\nthroughput ({} clients): {writes_per_s:.0} writes/s\nleader SIGKILL to first successful write: {}\n",
        lat.line(),
        args.clients,
        resume.line()
    );
    Ok(Report {
        bench: "raft",
        text,
        fields: json!({
            "write_latency": lat.json(),
            "writes_per_s": writes_per_s.round(),
            "clients": args.clients,
            "resume_after_leader_kill": resume.json(),
        }),
    })
}
