//! The deterministic simulation (`hearth_membership::sim`) over many seeds: quiet clusters
//! never declare anyone dead; after every random schedule of partitions (one-way too), loss,
//! crashes, restarts and pauses, the cluster converges within a stated bound once healed, and
//! each node's last event about each member agrees with the truth; a crash is noticed by
//! everyone; a seed replays exactly. A failure prints its seed:
//! `HEARTH_SIM_SEED=<seed> cargo test -p hearth-membership --test sim` replays it alone;
//! `HEARTH_SIM_SEEDS=5000` runs more seeds.

use std::time::Duration;

use hearth_membership::sim::{Fault, Sim, random_schedule};
use hearth_types::EventKind;

/// After the last fault is healed, the cluster agrees within this long. The parts: up to
/// 5 s until a node knocks on a member it believes dead, a probe round trip, suspicion of
/// a restarted node's old incarnation (1.5 s, up to 5x with local health), and gossip.
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Seeds to run: `HEARTH_SIM_SEED` alone, or `count` (`HEARTH_SIM_SEEDS` when set) seeds
/// from `HEARTH_SIM_SEEDS_FROM` (0).
fn seeds(count: u64) -> Vec<u64> {
    let count = std::env::var("HEARTH_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(count);
    if let Some(seed) = std::env::var("HEARTH_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let from = std::env::var("HEARTH_SIM_SEEDS_FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (from..from + count).collect()
}

fn size(seed: u64) -> usize {
    if seed.is_multiple_of(2) { 3 } else { 5 }
}

/// Runs in 250 ms steps until converged; the time it took after `from`, or the reason.
fn converge(sim: &mut Sim, from: Duration, within: Duration) -> Result<Duration, String> {
    let mut last = String::new();
    sim.run_until(from.max(sim.now()));
    while sim.now() < from + within {
        sim.run_until(sim.now() + Duration::from_millis(250));
        match sim.converged() {
            Ok(()) => return Ok(sim.now().saturating_sub(from)),
            Err(why) => last = why,
        }
    }
    Err(last)
}

#[test]
fn quiet_clusters_form_and_declare_nobody_dead() {
    for seed in seeds(20) {
        let n = size(seed);
        let mut sim = Sim::new(n, seed);
        let took = converge(&mut sim, Duration::ZERO, secs(10))
            .unwrap_or_else(|why| panic!("seed {seed}: no convergence: {why}"));
        assert!(took <= secs(10));
        sim.run_until(secs(60));
        sim.converged()
            .unwrap_or_else(|why| panic!("seed {seed}: {why}"));
        let deaths: Vec<_> = sim
            .trace
            .iter()
            .filter(|e| e.kind == EventKind::MemberFailed)
            .collect();
        assert!(deaths.is_empty(), "seed {seed}: false deaths {deaths:?}");
        let joins = sim
            .trace
            .iter()
            .filter(|e| e.kind == EventKind::MemberJoin && sim.name(e.observer) != e.member)
            .count();
        assert_eq!(
            joins,
            n * (n - 1),
            "seed {seed}: each node saw each other join once"
        );
    }
}

#[test]
fn every_fault_schedule_converges_once_healed_and_events_agree() {
    let mut slowest = Duration::ZERO;
    for seed in seeds(60) {
        let n = size(seed);
        let mut sim = Sim::new(n, seed);
        let heal = secs(45);
        let plan = random_schedule(&mut sim, seed, secs(5), heal);
        sim.run_until(heal);
        let took = converge(&mut sim, heal, CONVERGE_WITHIN).unwrap_or_else(|why| {
            panic!(
                "seed {seed} (n = {n}): not converged {CONVERGE_WITHIN:?} after healing: {why}\nplan: {plan:?}"
            )
        });
        slowest = slowest.max(took);
        // Each node's last event about each member says what is true.
        for observer in 0..n {
            for member in (0..n).filter(|&m| m != observer) {
                let name = sim.name(member).to_owned();
                let last = sim
                    .trace
                    .iter()
                    .rev()
                    .find(|e| e.observer == observer && e.member == name)
                    .map(|e| e.kind);
                assert!(
                    !matches!(
                        last,
                        Some(EventKind::MemberFailed | EventKind::MemberLeave) | None
                    ),
                    "seed {seed}: {} last saw {name} as {last:?}, but it is up",
                    sim.name(observer)
                );
            }
        }
    }
    eprintln!("slowest convergence after healing: {slowest:?} (bound {CONVERGE_WITHIN:?})");
}

/// Found by this simulation (seed 6 of the schedule test): n2 was paused long enough to be
/// declared dead, suspected n1 while n1's answers were cut off, then renewed its identity,
/// which made foca drop the timer that would settle the suspicion: n2 showed n1 as
/// `suspect` for 36 s after everything was healed. Stale suspicions are now declared down
/// after `suspicion::limit`, and the live member rejoins.
#[test]
fn a_suspicion_is_settled_after_its_holder_was_declared_dead_and_rejoined() {
    let mut sim = Sim::new(3, 6);
    random_schedule(&mut sim, 6, secs(5), secs(45));
    sim.run_until(secs(45));
    converge(&mut sim, secs(45), CONVERGE_WITHIN).unwrap_or_else(|why| panic!("{why}"));
}

/// Found by this simulation once it ran the same core as the membership task (seed 1480 of
/// the schedule test; seeds 5090, 5390, 6506, 7294 and 8314 had failed the same way before):
/// a node that renews its identity on being told it is dead (foca's `TurnUndead`) stops
/// probing but keeps the members it knew, and waits for a message addressed to its new
/// identity. Nobody sent one (the others had renewed theirs too, or had restarted and never
/// heard of it), and since the node was not alone it did not knock on its seeds: it stayed
/// apart for good after healing. A node now knocks on its seeds whenever foca is not probing.
#[test]
fn a_node_that_renewed_its_identity_finds_the_cluster_again() {
    for seed in [1480, 5090, 6506, 7294] {
        let mut sim = Sim::new(size(seed), seed);
        random_schedule(&mut sim, seed, secs(5), secs(45));
        sim.run_until(secs(45));
        converge(&mut sim, secs(45), CONVERGE_WITHIN)
            .unwrap_or_else(|why| panic!("seed {seed}: {why}"));
    }
}

#[test]
fn a_crash_is_noticed_by_everyone_despite_loss() {
    for seed in seeds(10) {
        let n = size(seed);
        let mut sim = Sim::new(n, seed);
        sim.run_until(secs(1));
        sim.at(secs(1), Fault::Loss(10));
        let crashed = n - 1;
        sim.at(secs(15), Fault::Crash(crashed));
        converge(&mut sim, secs(15), CONVERGE_WITHIN)
            .unwrap_or_else(|why| panic!("seed {seed}: {why}"));
        let name = sim.name(crashed).to_owned();
        for observer in (0..n).filter(|&o| o != crashed) {
            // Its last event there says failed. (Under 10 % loss a live node is sometimes
            // declared dead and rejoins; seed 28 declares n3 dead just before it crashes.)
            let last = sim
                .trace
                .iter()
                .rev()
                .find(|e| e.observer == observer && e.member == name)
                .map(|e| e.kind);
            assert_eq!(
                last,
                Some(EventKind::MemberFailed),
                "seed {seed}: {} did not end with {name} failed",
                sim.name(observer)
            );
        }
        // It comes back as a new incarnation and everyone sees it alive again.
        let back = sim.now() + secs(1);
        sim.at(back, Fault::Restart(crashed));
        converge(&mut sim, back, CONVERGE_WITHIN)
            .unwrap_or_else(|why| panic!("seed {seed}: after restart: {why}"));
        assert!(sim.is_up(crashed));
    }
}

#[test]
fn a_seed_replays_exactly() {
    let run = |seed| {
        let mut sim = Sim::new(5, seed);
        random_schedule(&mut sim, seed, secs(2), secs(30));
        sim.run_until(secs(50));
        (sim.trace.clone(), sim.sent, sim.lost)
    };
    let (trace, sent, lost) = run(7);
    assert!(sent > 1000 && lost > 0, "{sent} sent, {lost} lost");
    assert_eq!(run(7), (trace.clone(), sent, lost));
    assert_ne!(run(8).0, trace, "another seed, another run");
}
