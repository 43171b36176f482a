//! A deterministic, single-process simulation of membership and its events. Each simulated
//! node runs what the membership task runs (foca with hearth's identity, config and
//! announcement handling; seeds when alone; re-announcing; our announcement sent straight to
//! new members; `build_view` and `diff_events`), on a virtual clock and a virtual network
//! whose losses, delays, partitions (asymmetric too), crashes, restarts and pauses follow a
//! seeded schedule. The same seed gives the same run, event for event.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec, Timer};
use hearth_types::{EventKind, MemberState, NodeAnnouncement, NodeMeta, Role, View};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::identity::{AnnouncementHandler, Inbox};
use crate::node::{GossipTiming, KIND_ANNOUNCEMENT, KIND_FOCA, swim_config};
use crate::{NodeId, build_view, diff_events};

type Swim = Foca<NodeId, PostcardCodec, StdRng, AnnouncementHandler>;

const TICK: Duration = Duration::from_millis(500);
const REANNOUNCE_EVERY: Duration = Duration::from_secs(15);

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
    Deliver {
        to: usize,
        kind: u8,
        data: Vec<u8>,
    },
    Timer {
        node: usize,
        life: u64,
        timer: Timer<NodeId>,
    },
    Tick {
        node: usize,
        life: u64,
    },
    Fault(Fault),
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
    name: String,
    addr: SocketAddr,
    /// Counts starts; timers of an earlier life are ignored.
    life: u64,
    up: bool,
    paused: bool,
    /// What arrived while paused.
    held: Vec<Happening>,
    swim: Option<Swim>,
    runtime: AccumulatingRuntime<NodeId>,
    inbox: Inbox,
    own: NodeAnnouncement,
    announcements: HashMap<String, NodeAnnouncement>,
    view: View,
    last_reannounce: Duration,
    stale: crate::suspicion::StaleSuspicions,
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
    /// Datagrams sent and lost, for the report.
    pub sent: u64,
    pub lost: u64,
}

fn addr(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (index / 250) as u8, (index % 250) as u8 + 1], 7946))
}

impl Sim {
    /// `nodes` nodes that all know node 0 as their seed, started 0–100 ms apart.
    pub fn new(nodes: usize, seed: u64) -> Sim {
        let mut sim = Sim {
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            blocked: HashSet::new(),
            loss: 0,
            rng: StdRng::seed_from_u64(seed),
            timing: GossipTiming::default(),
            trace: Vec::new(),
            sent: 0,
            lost: 0,
        };
        for index in 0..nodes {
            let name = format!("n{}", index + 1);
            let meta = NodeMeta {
                name: name.clone(),
                gossip_addr: addr(index),
                address: addr(index).ip(),
                roles: vec![Role::Server],
                tags: Default::default(),
                rpc_addr: None,
                in_group: false,
            };
            sim.nodes.push(SimNode {
                name,
                addr: addr(index),
                life: 0,
                up: false,
                paused: false,
                held: Vec::new(),
                swim: None,
                runtime: AccumulatingRuntime::new(),
                inbox: Arc::new(Mutex::new(Vec::new())),
                own: NodeAnnouncement {
                    meta,
                    version: 0,
                    services: vec![],
                    leaving: false,
                },
                announcements: HashMap::new(),
                view: View::default(),
                last_reannounce: Duration::ZERO,
                stale: Default::default(),
            });
        }
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
        let node = match &what {
            Happening::Deliver { to, .. } => Some(*to),
            Happening::Timer { node, .. } | Happening::Tick { node, .. } => Some(*node),
            Happening::Fault(_) => None,
        };
        if let Some(index) = node {
            let target = &mut self.nodes[index];
            if !target.up {
                return;
            }
            if target.paused {
                target.held.push(what);
                return;
            }
        }
        match what {
            Happening::Deliver { to, kind, data } => {
                let node = &mut self.nodes[to];
                let Some(swim) = node.swim.as_mut() else {
                    return;
                };
                let _ = if kind == KIND_FOCA {
                    swim.handle_data(&data, &mut node.runtime)
                } else {
                    swim.add_broadcast(&data).map(|_| ())
                };
                self.flush(to);
            }
            Happening::Timer { node, life, timer } => {
                if self.nodes[node].life != life {
                    return;
                }
                let target = &mut self.nodes[node];
                if let Some(swim) = target.swim.as_mut() {
                    let _ = swim.handle_timer(timer, &mut target.runtime);
                }
                self.flush(node);
            }
            Happening::Tick { node, life } => {
                if self.nodes[node].life != life {
                    return;
                }
                self.housekeeping(node);
                self.schedule(TICK, Happening::Tick { node, life });
            }
            Happening::Fault(fault) => self.apply(fault),
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
                node.up = false;
                node.paused = false;
                node.held.clear();
                node.swim = None;
                node.runtime = AccumulatingRuntime::new();
                node.inbox = Arc::new(Mutex::new(Vec::new()));
                node.announcements.clear();
                node.view = View::default();
                node.stale = Default::default();
            }
            Fault::Restart(index) => {
                if self.nodes[index].up {
                    return;
                }
                let now = self.now;
                let timing = &self.timing;
                let seed = self.rng.random::<u64>();
                let node = &mut self.nodes[index];
                node.life += 1;
                node.up = true;
                // Like the wall clock the real node starts from: newer than any earlier life.
                let bump = now.as_micros() as u64 + node.life;
                node.own.version = bump;
                node.inbox = Arc::new(Mutex::new(Vec::new()));
                node.swim = Some(Foca::with_custom_broadcast(
                    NodeId {
                        name: node.name.clone(),
                        addr: node.addr,
                        bump,
                    },
                    swim_config(timing),
                    StdRng::seed_from_u64(seed),
                    PostcardCodec,
                    AnnouncementHandler::new(node.inbox.clone()),
                ));
                node.last_reannounce = now;
                let bytes = postcard::to_allocvec(&node.own).unwrap_or_default();
                if let Some(swim) = node.swim.as_mut() {
                    let _ = swim.add_broadcast(&bytes);
                }
                let life = node.life;
                self.join_seeds(index);
                self.flush(index);
                self.schedule(TICK, Happening::Tick { node: index, life });
            }
            Fault::Pause(index) => {
                if self.nodes[index].up {
                    self.nodes[index].paused = true;
                }
            }
            Fault::Resume(index) => {
                let node = &mut self.nodes[index];
                if !node.paused {
                    return;
                }
                node.paused = false;
                let held = std::mem::take(&mut node.held);
                for what in held {
                    self.happen(what);
                }
            }
        }
    }

    fn join_seeds(&mut self, index: usize) {
        if index == 0 && self.nodes.len() > 1 {
            // The seed itself knocks on the second node, as an operator would list two.
            self.announce_to(index, 1);
        } else if index != 0 {
            self.announce_to(index, 0);
        }
    }

    fn announce_to(&mut self, index: usize, seed: usize) {
        let seed_addr = self.nodes[seed].addr;
        let node = &mut self.nodes[index];
        if let Some(swim) = node.swim.as_mut() {
            let _ = swim.announce(NodeId::seed(seed_addr), &mut node.runtime);
        }
    }

    fn housekeeping(&mut self, index: usize) {
        let alone = self.nodes[index]
            .swim
            .as_ref()
            .is_some_and(|swim| swim.num_members() == 0);
        if alone {
            self.join_seeds(index);
        }
        if self.now.saturating_sub(self.nodes[index].last_reannounce) >= REANNOUNCE_EVERY {
            let now = self.now;
            let node = &mut self.nodes[index];
            node.own.version += 1;
            node.last_reannounce = now;
            let bytes = postcard::to_allocvec(&node.own).unwrap_or_default();
            if let Some(swim) = node.swim.as_mut() {
                let _ = swim.add_broadcast(&bytes);
            }
        }
        let limit = crate::suspicion::limit(&self.timing);
        let now = self.now;
        let node = &mut self.nodes[index];
        if let Some(swim) = node.swim.as_mut() {
            let stale = node.stale.check(swim.iter_membership_state(), now, limit);
            if !stale.is_empty() {
                let _ = swim.apply_many(stale.into_iter(), true, &mut node.runtime);
            }
        }
        self.flush(index);
    }

    fn send(&mut self, from: usize, to_addr: SocketAddr, kind: u8, data: Vec<u8>) {
        let Some(to) = self.nodes.iter().position(|n| n.addr == to_addr) else {
            return;
        };
        self.sent += 1;
        if self.blocked.contains(&(from, to)) || self.rng.random_range(0..100u8) < self.loss {
            self.lost += 1;
            return;
        }
        let delay = Duration::from_micros(self.rng.random_range(200..5_000));
        self.schedule(delay, Happening::Deliver { to, kind, data });
    }

    /// What the real node's `flush` does: timers, notifications, sends, then the view.
    fn flush(&mut self, index: usize) {
        let life = self.nodes[index].life;
        let mut timers = Vec::new();
        let mut sends = Vec::new();
        let mut new_peers = Vec::new();
        {
            let node = &mut self.nodes[index];
            while let Some((after, timer)) = node.runtime.to_schedule() {
                timers.push((after, timer));
            }
            while let Some(notification) = node.runtime.to_notify() {
                if let OwnedNotification::MemberUp(id) = notification {
                    new_peers.push(id.addr);
                }
            }
            while let Some((to, data)) = node.runtime.to_send() {
                sends.push((to.addr, data.to_vec()));
            }
        }
        for (after, timer) in timers {
            self.schedule(
                after,
                Happening::Timer {
                    node: index,
                    life,
                    timer,
                },
            );
        }
        for (to, data) in sends {
            self.send(index, to, KIND_FOCA, data);
        }
        if !new_peers.is_empty() {
            let own = postcard::to_allocvec(&self.nodes[index].own).unwrap_or_default();
            for peer in new_peers {
                self.send(index, peer, KIND_ANNOUNCEMENT, own.clone());
            }
        }
        self.refresh_view(index);
    }

    fn refresh_view(&mut self, index: usize) {
        let now = self.now;
        let node = &mut self.nodes[index];
        let received = std::mem::take(&mut *node.inbox.lock().unwrap_or_else(|e| e.into_inner()));
        for announcement in received {
            if announcement.meta.name != node.name {
                node.announcements
                    .insert(announcement.meta.name.clone(), announcement);
            }
        }
        let Some(swim) = node.swim.as_ref() else {
            return;
        };
        let members = swim
            .iter_membership_state()
            .map(|member| (member.id(), member.state()));
        let view = build_view(&node.own, members, &node.announcements);
        if view == node.view {
            return;
        }
        for event in diff_events(&node.view, &view) {
            self.trace.push(Observed {
                at: now,
                observer: index,
                kind: event.kind,
                member: event.member.name,
            });
        }
        node.view = view;
    }

    /// The view of node `index`, if it runs.
    pub fn view(&self, index: usize) -> Option<&View> {
        let node = &self.nodes[index];
        node.up.then_some(&node.view)
    }

    pub fn is_up(&self, index: usize) -> bool {
        self.nodes[index].up
    }

    pub fn name(&self, index: usize) -> &str {
        &self.nodes[index].name
    }

    /// Every running node sees every running node alive and every crashed one dead (or
    /// never met); the reason when not.
    pub fn converged(&self) -> Result<(), String> {
        for (a, observer) in self.nodes.iter().enumerate() {
            if !observer.up || observer.paused {
                continue;
            }
            for (b, other) in self.nodes.iter().enumerate() {
                if a == b {
                    continue;
                }
                let state = observer.view.members.get(&other.name).map(|m| m.state);
                let fine = if other.up {
                    state == Some(MemberState::Alive)
                } else {
                    matches!(state, None | Some(MemberState::Dead))
                };
                if !fine {
                    return Err(format!(
                        "at {:?}: {} sees {} as {state:?} (it is {})",
                        self.now,
                        observer.name,
                        other.name,
                        if other.up { "up" } else { "down" }
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
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let n = sim.len();
    let mut plan = Vec::new();
    let mut at = start;
    let mut down: HashSet<usize> = HashSet::new();
    let mut paused: HashSet<usize> = HashSet::new();
    while at < end {
        at += Duration::from_millis(rng.random_range(500..4_000));
        if at >= end {
            break;
        }
        let node = rng.random_range(0..n);
        let other = (node + rng.random_range(1..n)) % n;
        let fault = match rng.random_range(0..9) {
            0 => Fault::Block {
                from: node,
                to: other,
            },
            1 => {
                plan.push((
                    at,
                    Fault::Block {
                        from: other,
                        to: node,
                    },
                ));
                Fault::Block {
                    from: node,
                    to: other,
                }
            }
            2 => {
                // Cut `node` off from everyone, both ways.
                for peer in (0..n).filter(|&p| p != node) {
                    plan.push((
                        at,
                        Fault::Block {
                            from: node,
                            to: peer,
                        },
                    ));
                }
                for peer in (0..n).filter(|&p| p != node) {
                    plan.push((
                        at,
                        Fault::Block {
                            from: peer,
                            to: node,
                        },
                    ));
                }
                continue;
            }
            3 => Fault::HealAll,
            4 if down.len() + 1 < n.div_ceil(2) && !down.contains(&node) => {
                down.insert(node);
                paused.remove(&node);
                Fault::Crash(node)
            }
            5 if down.contains(&node) => {
                down.remove(&node);
                Fault::Restart(node)
            }
            6 if !down.contains(&node) && !paused.contains(&node) => {
                paused.insert(node);
                let pause = Duration::from_millis(rng.random_range(200..3_000));
                plan.push((at, Fault::Pause(node)));
                paused.remove(&node);
                Fault::Resume(node).at_later(&mut plan, at + pause);
                continue;
            }
            7 => Fault::Loss(rng.random_range(0..=25)),
            _ => continue,
        };
        plan.push((at, fault));
    }
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

impl Fault {
    fn at_later(self, plan: &mut Vec<(Duration, Fault)>, at: Duration) {
        plan.push((at, self));
    }
}
