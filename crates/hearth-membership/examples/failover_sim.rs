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

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let trials: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let seed: u64 = std::env::args()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let watch: Option<usize> = std::env::var("WATCH").ok().and_then(|w| w.parse().ok());
    if watch.is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .without_time()
            .with_ansi(false)
            .init();
    }
    let mut sim = Sim::new(n, seed);
    let ms = Duration::from_millis;
    let mut t = ms(0);
    let (mut dead_last, mut shed_last) = (Vec::new(), Vec::new());
    let mut stragglers = 0;
    for trial in 0..trials {
        loop {
            t += ms(100);
            sim.run_until(t);
            if sim.converged().is_ok() {
                break;
            }
        }
        t += ms(2000);
        sim.run_until(t);
        let victim = 1 + trial % (n - 1);
        let name = sim.name(victim).to_owned();
        let kill = t;
        sim.at(kill, Fault::Crash(victim));
        let mut shed = vec![None; n];
        let mut dead = vec![None; n];
        let watching = watch == Some(trial);
        if watching {
            tracing::info!("kill {name}");
        }
        let mut seen = vec![Some(MemberState::Alive); n];
        let end = t + ms(15_000);
        while t < end {
            t += ms(10);
            sim.run_until(t);
            let since = (t - kill).as_secs_f64();
            for i in (0..n).filter(|&i| i != victim) {
                let st = sim
                    .view(i)
                    .and_then(|v| v.members.get(&name))
                    .map(|m| m.state);
                if watching && st != seen[i] {
                    println!("  {since:.3}: n{} sees {name} {st:?}", i + 1);
                    seen[i] = st;
                }
                if st != Some(MemberState::Alive) && shed[i].is_none() {
                    shed[i] = Some(since);
                }
                if st == Some(MemberState::Dead) && dead[i].is_none() {
                    dead[i] = Some(since);
                }
            }
        }
        let d: Vec<f64> = dead.iter().flatten().copied().collect();
        let s: Vec<f64> = shed.iter().flatten().copied().collect();
        let first = d.iter().copied().fold(f64::MAX, f64::min);
        let last = d.iter().copied().fold(0.0, f64::max);
        if last - first >= 1.0 || d.len() < n - 1 {
            stragglers += 1;
        }
        dead_last.push(if d.len() < n - 1 { 99.0 } else { last });
        shed_last.push(s.iter().copied().fold(0.0, f64::max));
        sim.at(t, Fault::Restart(victim));
    }
    let per_node = sim.sent_bytes as f64 / sim.now().as_secs_f64() / n as f64;
    println!(
        "n={n} trials={trials} stragglers={stragglers} bytes/s/node={per_node:.0}: dead p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}; suspect-or-dead p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
        pct(&mut dead_last, 0.5),
        pct(&mut dead_last, 0.9),
        pct(&mut dead_last, 0.99),
        pct(&mut dead_last, 1.0),
        pct(&mut shed_last, 0.5),
        pct(&mut shed_last, 0.9),
        pct(&mut shed_last, 0.99),
        pct(&mut shed_last, 1.0),
    );
}
