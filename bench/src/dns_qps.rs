//! `dns-qps`: DNS queries per second of one hearth agent and of Knot DNS serving the same
//! names, each pinned to one core, measured by dnsperf pinned to the other core.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hearth_testkit::{DNS_PORT, TempDir, ZONE};
use serde_json::{Value, json};

use crate::hearth::{pids, start_cluster, www_address, www_answer};
use crate::procs::{ProcessGuard, cpu_time, ensure_tools, pin, poll_until, thread_times};
use crate::{Common, Report};

/// The hearth cluster's size: enough for three `www` addresses and three NS names.
const N_NODES: usize = 3;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Length of each dnsperf run, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// dnsperf clients (sockets).
    #[arg(long, default_value_t = 10)]
    clients: u32,
    /// Queries dnsperf keeps in flight (-q); too few and its own latency, not the server,
    /// bounds the rate.
    #[arg(long, default_value_t = 100)]
    outstanding: u32,
    /// Cap dnsperf at this many queries per second (-Q); by default it sends as fast as the
    /// server answers, which measures the maximum.
    #[arg(long)]
    max_qps: Option<u64>,
    /// Runs per server, alternating hearth and Knot.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// The core the DNS server under test is pinned to.
    #[arg(long, default_value_t = 1)]
    server_cpu: usize,
    /// The core dnsperf is pinned to.
    #[arg(long, default_value_t = 0)]
    client_cpu: usize,
    #[command(flatten)]
    pub common: Common,
}

/// The figures of one dnsperf run.
#[derive(Debug, Clone)]
struct PerfRun {
    qps: f64,
    lost: String,
    latency: String,
    rcodes: String,
    packet_size: String,
    /// Share of one core the server used during the run (1.0 = saturated).
    server_cpu_share: f64,
    /// Of that share, per thread name: (name, user share, system share), busiest first.
    threads: Vec<(String, f64, f64)>,
}

impl PerfRun {
    /// Queries answered per second of server CPU time: throughput when the server, not
    /// dnsperf, is the bottleneck.
    fn qps_per_core(&self) -> f64 {
        self.qps / self.server_cpu_share.max(0.01)
    }

    fn json(&self) -> Value {
        json!({
            "qps": self.qps.round(),
            "qps_per_core": self.qps_per_core().round(),
            "lost": self.lost,
            "avg_latency_s": self.latency,
            "rcodes": self.rcodes,
            "avg_packet_size": self.packet_size,
            "server_cpu_share": (self.server_cpu_share * 100.0).round() / 100.0,
            "threads": self.threads.iter().map(|(name, user, system)| json!({
                "name": name,
                "user_share": (user * 1000.0).round() / 1000.0,
                "system_share": (system * 1000.0).round() / 1000.0,
            })).collect::<Vec<_>>(),
        })
    }

    fn line(&self) -> String {
        format!(
            "{:.0} qps; latency {} s; lost {}; server used {:.0}% of its core \
             ({:.0} qps per core-second); {}; packet size {}",
            self.qps,
            self.latency,
            self.lost,
            self.server_cpu_share * 100.0,
            self.qps_per_core(),
            self.rcodes,
            self.packet_size
        ) + &self.thread_line()
    }

    /// The busiest threads' shares, user + system, for the text report.
    fn thread_line(&self) -> String {
        let parts: Vec<String> = self
            .threads
            .iter()
            .take(4)
            .map(|(name, user, system)| {
                format!("{name} {:.1}+{:.1}%", user * 100.0, system * 100.0)
            })
            .collect();
        format!("; threads (user+system): {}", parts.join(", "))
    }
}

pub fn run(args: &Args) -> Result<Report> {
    ensure_tools(&[
        ("dnsperf", "dnsperf"),
        ("knotd", "knot"),
        ("dig", "dnsutils"),
        ("taskset", "util-linux"),
    ])?;
    let hearth = start_cluster(&args.common.hearth, N_NODES, |_| String::new())?;
    for pid in pids(&hearth) {
        pin(pid, args.server_cpu)?;
    }
    let node_ips: Vec<Ipv4Addr> = hearth.agents.iter().map(|a| a.spec.ip).collect();
    let hearth_server = hearth.agents[0].dns_addr();
    let hearth_pid = hearth.agents[0].pid().context("hearth n1 is not running")?;

    let dir = TempDir::new("bench-knot");
    let [_, a, b, _] = node_ips[0].octets();
    let knot_server = SocketAddr::from((Ipv4Addr::new(127, a, b, 200), DNS_PORT));
    let knot = start_knot(dir.path(), knot_server, &node_ips, args.server_cpu)?;
    let queries = dir.path().join("queries.txt");
    std::fs::write(&queries, query_file())?;

    let (mut hearth_runs, mut knot_runs) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        eprintln!("round {}: hearth at {hearth_server}", round + 1);
        hearth_runs.push(dnsperf(args, &queries, hearth_server, hearth_pid)?);
        eprintln!("round {}: knot at {knot_server}", round + 1);
        knot_runs.push(dnsperf(args, &queries, knot_server, knot.pid())?);
    }
    let mean = |runs: &[PerfRun]| runs.iter().map(|r| r.qps).sum::<f64>() / runs.len() as f64;
    let (hearth_qps, knot_qps) = (mean(&hearth_runs), mean(&knot_runs));
    let ratio = hearth_qps / knot_qps;
    let per_core =
        |runs: &[PerfRun]| runs.iter().map(PerfRun::qps_per_core).sum::<f64>() / runs.len() as f64;
    let per_core_ratio = per_core(&hearth_runs) / per_core(&knot_runs);
    let mut text = String::new();
    for run in &hearth_runs {
        text += &format!("hearth: {}\n", run.line());
    }
    for run in &knot_runs {
        text += &format!("knot:   {}\n", run.line());
    }
    text += &format!(
        "hearth/knot = {ratio:.2} (target >= 0.50: {}); per core-second of server CPU: \
         {per_core_ratio:.2}\n",
        if ratio >= 0.5 { "met" } else { "missed" }
    );
    if args.max_qps.is_some() {
        text += "note: both servers got the same capped load (-Q), so compare their CPU shares \
                 (the per-core ratio), not their qps\n";
    } else if knot_runs.iter().any(|r| r.server_cpu_share < 0.9) {
        text += "note: Knot did not saturate its core: dnsperf (one core) was the bottleneck, \
                 so the qps ratio flatters hearth; the per-core ratio does not\n";
    }
    let fields = json!({
        "seconds": args.seconds,
        "clients": args.clients,
        "outstanding": args.outstanding,
        "max_qps": args.max_qps,
        "hearth": hearth_runs.iter().map(PerfRun::json).collect::<Vec<_>>(),
        "knot": knot_runs.iter().map(PerfRun::json).collect::<Vec<_>>(),
        "hearth_qps": hearth_qps.round(),
        "knot_qps": knot_qps.round(),
        "ratio": (ratio * 100.0).round() / 100.0,
        "per_core_ratio": (per_core_ratio * 100.0).round() / 100.0,
        "target_met": ratio >= 0.5,
    });
    Ok(Report {
        bench: "dns-qps",
        text,
        fields,
    })
}

/// The query mix, which dnsperf cycles through: service, node, NXDOMAIN and apex SOA.
fn query_file() -> String {
    let lines = [
        "www.coop.test. A",
        "n1.coop.test. A",
        "www.coop.test. A",
        "missing.coop.test. A",
        "n2.coop.test. A",
        "coop.test. SOA",
        "www.coop.test. A",
        "n3.coop.test. A",
        "nothing-here.coop.test. A",
        "coop.test. SOA",
    ];
    lines.join("\n") + "\n"
}

/// The zone hearth serves for the cluster, as a Knot zone file (TTL 1, as the testkit sets).
fn zone_file(node_ips: &[Ipv4Addr]) -> String {
    let mut text =
        format!("$ORIGIN {ZONE}\n$TTL 1\n@ SOA n1.{ZONE} hostmaster.{ZONE} 1 3600 600 1209600 1\n");
    for idx in 0..node_ips.len() {
        text += &format!("@ NS n{}.{ZONE}\n", idx + 1);
    }
    for (idx, ip) in node_ips.iter().enumerate() {
        text += &format!("n{} A {ip}\nwww A {}\n", idx + 1, www_address(idx));
    }
    text
}

fn knot_config(dir: &Path, listen: SocketAddr) -> String {
    let dir = dir.display();
    format!(
        r#"server:
    rundir: "{dir}"
    listen: {ip}@{port}
    # One worker per core it may use, as Knot sizes itself by default.
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
control:
    listen: "{dir}/knot.sock"
log:
  - target: stderr
    any: warning
database:
    storage: "{dir}/db"
template:
  - id: default
    storage: "{dir}"
zone:
  - domain: {ZONE}
    file: "zone.txt"
"#,
        ip = listen.ip(),
        port = listen.port(),
    )
}

/// Starts knotd pinned to `cpu` and waits until it answers `www` with every address.
fn start_knot(
    dir: &Path,
    listen: SocketAddr,
    node_ips: &[Ipv4Addr],
    cpu: usize,
) -> Result<ProcessGuard> {
    std::fs::write(dir.join("zone.txt"), zone_file(node_ips))?;
    let config = dir.join("knot.conf");
    std::fs::write(&config, knot_config(dir, listen))?;
    let mut command = Command::new("taskset");
    command
        .args(["-c", &cpu.to_string(), "knotd", "-c"])
        .arg(&config);
    let mut knot = ProcessGuard::spawn("knotd", command, Some(&dir.join("knotd.log")))?;
    let want: Vec<Ipv4Addr> = (0..node_ips.len()).map(www_address).collect();
    poll_until(
        "knotd to serve www",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            knot.check_running()?;
            let got = www_answer(listen)?;
            if got == want {
                Ok(())
            } else {
                bail!("www answers {got:?}")
            }
        },
    )
    .with_context(|| std::fs::read_to_string(dir.join("knotd.log")).unwrap_or_default())?;
    Ok(knot)
}

fn dnsperf(args: &Args, queries: &Path, server: SocketAddr, server_pid: u32) -> Result<PerfRun> {
    let mut command = Command::new("taskset");
    command
        .args(["-c", &args.client_cpu.to_string(), "dnsperf"])
        .args(["-s", &server.ip().to_string()])
        .args(["-p", &server.port().to_string()])
        .arg("-d")
        .arg(queries)
        .args(["-l", &args.seconds.to_string()])
        .args(["-c", &args.clients.to_string()])
        .args(["-q", &args.outstanding.to_string()]);
    if let Some(max_qps) = args.max_qps {
        command.args(["-Q", &max_qps.to_string()]);
    }
    let cpu_before = cpu_time(server_pid)?;
    let threads_before = thread_times(server_pid)?;
    let started = Instant::now();
    let output = command.output().context("run dnsperf")?;
    let wall = started.elapsed();
    let cpu_used = cpu_time(server_pid)?.saturating_sub(cpu_before);
    let threads = thread_shares(&threads_before, &thread_times(server_pid)?, wall);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "dnsperf failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let field = |label: &str| -> Result<String> {
        stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .map(|rest| rest.trim().to_owned())
            .with_context(|| format!("no {label:?} in dnsperf output:\n{stdout}"))
    };
    Ok(PerfRun {
        qps: field("Queries per second:")?.parse()?,
        lost: field("Queries lost:")?,
        latency: field("Average Latency (s):")?,
        rcodes: field("Response codes:")?,
        packet_size: field("Average packet size:")?,
        server_cpu_share: cpu_used.as_secs_f64() / wall.as_secs_f64(),
        threads,
    })
}

/// Per thread name, the share of one core spent in user and in system mode between two
/// readings `wall` apart, busiest first; idle names left out.
fn thread_shares(
    before: &BTreeMap<String, (Duration, Duration)>,
    after: &BTreeMap<String, (Duration, Duration)>,
    wall: Duration,
) -> Vec<(String, f64, f64)> {
    let share = |used: Duration| used.as_secs_f64() / wall.as_secs_f64();
    let mut shares: Vec<(String, f64, f64)> = after
        .iter()
        .map(|(name, &(user, system))| {
            let (user_before, system_before) = before.get(name).copied().unwrap_or_default();
            (
                name.clone(),
                share(user.saturating_sub(user_before)),
                share(system.saturating_sub(system_before)),
            )
        })
        .filter(|(_, user, system)| user + system > 0.0)
        .collect();
    shares.sort_by(|a, b| (b.1 + b.2).total_cmp(&(a.1 + a.2)));
    shares
}
