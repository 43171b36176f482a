//! The failover benchmark's trials in the deterministic simulation: NODES simulated nodes
//! converge, then for each trial one non-seed node is killed (nodes 2..N in turn), every
//! survivor's view is read every 10 ms of virtual time for 15 s, and the node is restarted.
//! Prints, over the trials, when the last survivor saw the victim dead and when the last one
//! saw it suspect or dead (when DNS leaves it out), the trials with a straggler (a survivor
//! 1 s or more behind the first, or none at all), and the bytes each node sent per second.
//!
//! ```sh
//! cargo run --release -p hearth-membership --example failover_sim -- NODES TRIALS SEED
//! ```
//!
//! `WATCH=TRIAL` prints every survivor's view of that trial's victim as it changes, and logs
//! with `RUST_LOG` (foca's own lines need its `tracing` feature added in the workspace's
//! `Cargo.toml`, e.g. `RUST_LOG=foca=trace,hearth_membership::sim=trace,failover_sim=info`:
//! each line names the simulated node it ran on).
use std::time::Duration;

use hearth_membership::sim::{Fault, Sim};
use hearth_types::MemberState;

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

/// Positional argument `index`, or `default`.
fn arg<T: std::str::FromStr>(index: usize, default: T) -> T {
    std::env::args()
        .nth(index)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// When each survivor first saw the victim suspect or dead, and when dead (seconds after the
/// kill, `None` for never within 15 s).
struct Seen {
    shed: Vec<Option<f64>>,
    dead: Vec<Option<f64>>,
}

/// Runs until every node sees every other as it is.
fn converge(sim: &mut Sim, t: &mut Duration) {
    loop {
        *t += Duration::from_millis(100);
        sim.run_until(*t);
        if sim.converged().is_ok() {
            return;
        }
    }
}

/// Kills `victim` at `t` and reads every survivor's view of it every 10 ms for 15 s,
/// printing each change when `watching`.
fn trial(sim: &mut Sim, t: &mut Duration, victim: usize, watching: bool) -> Seen {
    let n = sim.len();
    let name = sim.name(victim).to_owned();
    let kill = *t;
    sim.at(kill, Fault::Crash(victim));
    if watching {
        tracing::info!("kill {name}");
    }
    let mut seen = Seen {
        shed: vec![None; n],
        dead: vec![None; n],
    };
    let mut last = vec![Some(MemberState::Alive); n];
    let end = kill + Duration::from_secs(15);
    while *t < end {
        *t += Duration::from_millis(10);
        sim.run_until(*t);
        let since = (*t - kill).as_secs_f64();
        for i in (0..n).filter(|&i| i != victim) {
            let state = sim
                .view(i)
                .and_then(|v| v.members.get(&name))
                .map(|m| m.state);
            if watching && state != last[i] {
                println!("  {since:.3}: n{} sees {name} {state:?}", i + 1);
                last[i] = state;
            }
            if state != Some(MemberState::Alive) {
                seen.shed[i].get_or_insert(since);
            }
            if state == Some(MemberState::Dead) {
                seen.dead[i].get_or_insert(since);
            }
        }
    }
    seen
}

fn main() {
    let n: usize = arg(1, 10);
    let trials: usize = arg(2, 100);
    let seed: u64 = arg(3, 1);
    let watch: Option<usize> = std::env::var("WATCH").ok().and_then(|w| w.parse().ok());
    if watch.is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .without_time()
            .with_ansi(false)
            .init();
    }
    let mut sim = Sim::new(n, seed);
    let mut t = Duration::ZERO;
    let (mut dead_last, mut shed_last) = (Vec::new(), Vec::new());
    let mut stragglers = 0;
    for number in 0..trials {
        converge(&mut sim, &mut t);
        t += Duration::from_secs(2);
        sim.run_until(t);
        let victim = 1 + number % (n - 1);
        let seen = trial(&mut sim, &mut t, victim, watch == Some(number));
        let d: Vec<f64> = seen.dead.iter().flatten().copied().collect();
        let first = d.iter().copied().fold(f64::MAX, f64::min);
        let last = d.iter().copied().fold(0.0, f64::max);
        if last - first >= 1.0 || d.len() < n - 1 {
            stragglers += 1;
        }
        dead_last.push(if d.len() < n - 1 { 99.0 } else { last });
        shed_last.push(seen.shed.iter().flatten().copied().fold(0.0, f64::max));
        sim.at(t, Fault::Restart(victim));
    }
    let per_node = sim.sent_bytes as f64 / sim.now().as_secs_f64() / n as f64;
    let figures = |v: &mut Vec<f64>| {
        [0.5, 0.9, 0.99, 1.0]
            .map(|q| format!("{:.2}", pct(v, q)))
            .join(" / ")
    };
    let dead = figures(&mut dead_last);
    let shed = figures(&mut shed_last);
    println!(
        "n={n} trials={trials} stragglers={stragglers} bytes/s/node={per_node:.0}: dead p50/p90/p99/max {dead}; suspect-or-dead {shed}"
    );
}
