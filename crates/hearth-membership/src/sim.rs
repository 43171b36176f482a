//! A deterministic, single-process simulation of membership and its events. Each simulated
//! node is the membership core the real task runs (foca with hearth's identity, config and
//! announcement handling, sealing, local health, stale suspicions, seeds when alone,
//! re-announcing), driven by a virtual clock and a virtual network whose losses, delays,
//! partitions (asymmetric too), crashes, restarts and pauses follow a seeded schedule. The
//! same seed gives the same run, event for event.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hearth_types::{EventKind, MemberState, NodeMeta, Role, View};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::core::{Core, Input, MembershipConfig, Now, Output, Timer};
use crate::{GossipMetrics, GossipTiming, Keyring, SECRET_LEN, Secret};

const CLUSTER: &str = "sim";

/// One fault of a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Datagrams from `from` to `to` are lost (one direction only).
    Block { from: usize, to: usize },
    /// Every block is lifted.
    HealAll,
    /// The process dies (`kill -9`): state and timers are gone.
    Crash(usize),
    /// A crashed node starts again, as a newer incarnation.
    Restart(usize),
    /// SIGSTOP: nothing runs; what arrives waits in the socket.
    Pause(usize),
    /// SIGCONT: what waited is handled at once.
    Resume(usize),
    /// This percentage of datagrams is lost, in every direction.
    Loss(u8),
}

/// An event a node's membership produced: at, observer, kind, about whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub at: Duration,
    pub observer: usize,
    pub kind: EventKind,
    pub member: String,
}

enum Happening {
    /// A sealed datagram arrives.
    Deliver {
        to: usize,
        datagram: Vec<u8>,
    },
    Timer {
        node: usize,
        life: u64,
        timer: Timer,
    },
    Tick {
        node: usize,
        life: u64,
    },
    Fault(Fault),
}

impl Happening {
    /// The node this happens on; `None` for a fault.
    fn node(&self) -> Option<usize> {
        match self {
            Happening::Deliver { to, .. } => Some(*to),
            Happening::Timer { node, .. } | Happening::Tick { node, .. } => Some(*node),
            Happening::Fault(_) => None,
        }
    }
}

struct Scheduled {
    at: Duration,
    seq: u64,
    what: Happening,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct SimNode {
    meta: NodeMeta,
    /// The seeds it knocks on.
    join: Vec<SocketAddr>,
    /// Counts starts; timers and ticks of an earlier life are ignored.
    life: u64,
    paused: bool,
    /// What arrived while paused.
    held: Vec<Happening>,
    /// The running node; `None` while it is down.
    core: Option<Core>,
}

/// The simulated cluster.
pub struct Sim {
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<SimNode>,
    blocked: HashSet<(usize, usize)>,
    loss: u8,
    rng: StdRng,
    timing: GossipTiming,
    /// Every event every node produced, in order.
    pub trace: Vec<Observed>,
    /// Datagrams sent and lost, and the bytes sent (sealed), for the report.
    pub sent: u64,
    pub lost: u64,
    pub sent_bytes: u64,
}

fn addr(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (index / 250) as u8, (index % 250) as u8 + 1], 7946))
}

fn sim_node(index: usize, nodes: usize) -> SimNode {
    let meta = NodeMeta {
        name: format!("n{}", index + 1),
        gossip_addr: addr(index),
        address: addr(index).ip(),
        roles: vec![Role::Server],
        tags: Default::default(),
        rpc_addr: None,
        in_group: false,
    };
    // Everyone knows node 0; node 0 knocks on node 1, as an operator would list two seeds.
    let join = match index {
        0 if nodes > 1 => vec![addr(1)],
        0 => Vec::new(),
        _ => vec![addr(0)],
    };
    SimNode {
        meta,
        join,
        life: 0,
        paused: false,
        held: Vec::new(),
        core: None,
    }
}

/// Every simulated node holds the same cluster secret.
fn keyring() -> Keyring {
    Keyring::new(CLUSTER, &Secret::new([5; SECRET_LEN]), &[])
}

impl Sim {
    /// `nodes` nodes that all know node 0 as their seed, started 0–100 ms apart.
    pub fn new(nodes: usize, seed: u64) -> Sim {
        let mut sim = Sim {
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: (0..nodes).map(|index| sim_node(index, nodes)).collect(),
            blocked: HashSet::new(),
            loss: 0,
            rng: StdRng::seed_from_u64(seed),
            timing: GossipTiming::default(),
            trace: Vec::new(),
            sent: 0,
            lost: 0,
            sent_bytes: 0,
        };
        for index in 0..nodes {
            let delay = Duration::from_millis(sim.rng.random_range(0..100));
            sim.schedule(delay, Happening::Fault(Fault::Restart(index)));
        }
        sim
    }

    pub fn now(&self) -> Duration {
        self.now
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn schedule(&mut self, after: Duration, what: Happening) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + after,
            seq: self.seq,
            what,
        }));
    }

    /// Applies `fault` at virtual time `at` (from the start).
    pub fn at(&mut self, at: Duration, fault: Fault) {
        let after = at.saturating_sub(self.now);
        self.schedule(after, Happening::Fault(fault));
    }

    /// Runs everything scheduled up to `until`.
    pub fn run_until(&mut self, until: Duration) {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > until {
                break;
            }
            let Some(Reverse(next)) = self.queue.pop() else {
                break;
            };
            self.now = next.at;
            self.happen(next.what);
        }
        self.now = until;
    }

    fn happen(&mut self, what: Happening) {
        let Some(index) = what.node() else {
            if let Happening::Fault(fault) = what {
                self.apply(fault);
            }
            return;
        };
        let node = &self.nodes[index];
        if node.core.is_none() {
            return;
        }
        match what {
            Happening::Tick { life, .. } if life == node.life => {
                self.hold_or_run(index, what);
                // Like the task's interval, the next tick comes one period later even when
                // this one was held by a pause: held ticks fire in a burst on resume.
                let tick = Happening::Tick { node: index, life };
                self.schedule(self.timing.probe_interval, tick);
            }
            Happening::Tick { .. } => {}
            _ => self.hold_or_run(index, what),
        }
    }

    /// A paused node holds what reaches it; a running one handles it.
    fn hold_or_run(&mut self, index: usize, what: Happening) {
        let node = &mut self.nodes[index];
        if node.paused {
            node.held.push(what);
        } else {
            self.run(index, what);
        }
    }

    /// `what` reaches the running node `index`.
    fn run(&mut self, index: usize, what: Happening) {
        match what {
            Happening::Deliver { datagram, .. } => self.drive(index, Input::Datagram(&datagram)),
            Happening::Timer { life, timer, .. } if life == self.nodes[index].life => {
                self.drive(index, Input::Timer(timer));
            }
            Happening::Tick { .. } => self.drive(index, Input::Tick),
            Happening::Timer { .. } | Happening::Fault(_) => {}
        }
    }

    /// Hands `input` to node `index`'s core and carries out what it returns.
    fn drive(&mut self, index: usize, input: Input<'_>) {
        let now = Now {
            elapsed: self.now,
            unix_micros: self.now.as_micros() as u64,
        };
        let life = self.nodes[index].life;
        let _node = tracing::trace_span!("node", n = index + 1).entered();
        let Some(core) = self.nodes[index].core.as_mut() else {
            return;
        };
        for output in core.handle(now, input) {
            match output {
                Output::Send { to, datagram } => self.send(index, to, datagram),
                Output::Timer(timer) => {
                    let after = timer.at().saturating_sub(self.now);
                    let node = index;
                    self.schedule(after, Happening::Timer { node, life, timer });
                }
                Output::View { events, .. } => {
                    self.trace.extend(events.into_iter().map(|event| Observed {
                        at: now.elapsed,
                        observer: index,
                        kind: event.kind,
                        member: event.member.name,
                    }));
                }
            }
        }
    }

    fn apply(&mut self, fault: Fault) {
        match fault {
            Fault::Block { from, to } => {
                self.blocked.insert((from, to));
            }
            Fault::HealAll => self.blocked.clear(),
            Fault::Loss(percent) => self.loss = percent.min(100),
            Fault::Crash(index) => {
                let node = &mut self.nodes[index];
                node.core = None;
                node.paused = false;
                node.held.clear();
            }
            Fault::Restart(index) => self.start(index),
            Fault::Pause(index) => {
                let node = &mut self.nodes[index];
                if node.core.is_some() {
                    node.paused = true;
                }
            }
            Fault::Resume(index) => {
                let node = &mut self.nodes[index];
                if !node.paused {
                    return;
                }
                node.paused = false;
                for what in std::mem::take(&mut node.held) {
                    self.run(index, what);
                }
            }
        }
    }

    /// Starts node `index` as a new incarnation, unless it runs.
    fn start(&mut self, index: usize) {
        if self.nodes[index].core.is_some() {
            return;
        }
        let seed = self.rng.random::<u64>();
        let node = &mut self.nodes[index];
        node.life += 1;
        // Like the wall clock the real node starts from: newer than any earlier life.
        let bump = self.now.as_micros() as u64 + node.life;
        let config = MembershipConfig {
            cluster: CLUSTER.into(),
            keyring: keyring(),
            meta: node.meta.clone(),
            join: node.join.clone(),
            timing: self.timing,
            services: Vec::new(),
        };
        let metrics = Arc::new(GossipMetrics::default());
        let core = Core::new(config, bump, StdRng::seed_from_u64(seed), metrics)
            .expect("a simulated node's announcement fits in a datagram");
        node.core = Some(core);
        let life = node.life;
        self.drive(index, Input::Start);
        self.schedule(
            self.timing.probe_interval,
            Happening::Tick { node: index, life },
        );
    }

    fn send(&mut self, from: usize, to_addr: SocketAddr, datagram: Vec<u8>) {
        let Some(to) = self
            .nodes
            .iter()
            .position(|n| n.meta.gossip_addr == to_addr)
        else {
            return;
        };
        self.sent += 1;
        self.sent_bytes += datagram.len() as u64;
        if self.blocked.contains(&(from, to)) || self.rng.random_range(0..100u8) < self.loss {
            self.lost += 1;
            return;
        }
        let delay = Duration::from_micros(self.rng.random_range(200..5_000));
        self.schedule(delay, Happening::Deliver { to, datagram });
    }

    /// The view of node `index`, if it runs.
    pub fn view(&self, index: usize) -> Option<&View> {
        let core = self.nodes[index].core.as_ref()?;
        Some(core.view())
    }

    pub fn is_up(&self, index: usize) -> bool {
        self.nodes[index].core.is_some()
    }

    pub fn name(&self, index: usize) -> &str {
        &self.nodes[index].meta.name
    }

    /// Every running node sees every running node alive and every crashed one dead (or
    /// never met); the reason when not.
    pub fn converged(&self) -> Result<(), String> {
        for observer in &self.nodes {
            let Some(core) = observer.core.as_ref().filter(|_| !observer.paused) else {
                continue;
            };
            for other in &self.nodes {
                if other.meta.name == observer.meta.name {
                    continue;
                }
                let state = core.view().members.get(&other.meta.name).map(|m| m.state);
                let up = other.core.is_some();
                let fine = if up {
                    state == Some(MemberState::Alive)
                } else {
                    matches!(state, None | Some(MemberState::Dead))
                };
                if !fine {
                    return Err(format!(
                        "at {:?}: {} sees {} as {state:?} (it is {})",
                        self.now,
                        observer.meta.name,
                        other.meta.name,
                        if up { "up" } else { "down" }
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A random schedule for `sim` between `start` and `end` (virtual time): blocks (symmetric,
/// one-way, and cutting a node off), heals, crashes and restarts (never the majority down
/// at once), pauses, and loss; then, at `end`, everything healed and restarted.
pub fn random_schedule(
    sim: &mut Sim,
    seed: u64,
    start: Duration,
    end: Duration,
) -> Vec<(Duration, Fault)> {
    let n = sim.len();
    let mut planner = Planner {
        rng: StdRng::seed_from_u64(seed ^ 0x5eed),
        n,
        down: HashSet::new(),
        plan: Vec::new(),
    };
    let mut at = start;
    while at < end {
        at += Duration::from_millis(planner.rng.random_range(500..4_000));
        if at >= end {
            break;
        }
        planner.step(at);
    }
    let mut plan = planner.plan;
    plan.push((end, Fault::HealAll));
    plan.push((end, Fault::Loss(0)));
    for node in 0..n {
        plan.push((end, Fault::Resume(node)));
        plan.push((end, Fault::Restart(node)));
    }
    for (at, fault) in &plan {
        sim.at(*at, fault.clone());
    }
    plan
}

/// Draws the faults of a random schedule.
struct Planner {
    rng: StdRng,
    n: usize,
    /// Nodes crashed and not restarted yet.
    down: HashSet<usize>,
    plan: Vec<(Duration, Fault)>,
}

impl Planner {
    /// Adds the faults of one random step, at `at`.
    fn step(&mut self, at: Duration) {
        let n = self.n;
        let node = self.rng.random_range(0..n);
        let other = (node + self.rng.random_range(1..n)) % n;
        let block = |from, to| Fault::Block { from, to };
        match self.rng.random_range(0..9) {
            0 => self.plan.push((at, block(node, other))),
            1 => {
                self.plan.push((at, block(other, node)));
                self.plan.push((at, block(node, other)));
            }
            2 => {
                // Cut `node` off from everyone, both ways.
                let peers = (0..n).filter(|&p| p != node);
                self.plan
                    .extend(peers.clone().map(|peer| (at, block(node, peer))));
                self.plan.extend(peers.map(|peer| (at, block(peer, node))));
            }
            3 => self.plan.push((at, Fault::HealAll)),
            4 if self.down.len() + 1 < n.div_ceil(2) && !self.down.contains(&node) => {
                self.down.insert(node);
                self.plan.push((at, Fault::Crash(node)));
            }
            5 if self.down.contains(&node) => {
                self.down.remove(&node);
                self.plan.push((at, Fault::Restart(node)));
            }
            6 if !self.down.contains(&node) => {
                let pause = Duration::from_millis(self.rng.random_range(200..3_000));
                self.plan.push((at, Fault::Pause(node)));
                self.plan.push((at + pause, Fault::Resume(node)));
            }
            7 => {
                let percent = self.rng.random_range(0..=25);
                self.plan.push((at, Fault::Loss(percent)));
            }
            _ => {}
        }
    }
}
