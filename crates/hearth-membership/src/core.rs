//! The sans-IO membership core: foca, the announcements heard, this node's own announcement
//! and its re-announcing, stale suspicions and Lifeguard local health, behind one
//! `handle(now, input) -> outputs`. Datagrams come in sealed and go out sealed; time comes in
//! as an argument. The membership task (`node`) and the simulation (`sim`) drive this same
//! code, one with a socket and the clock, the other with a virtual network and clock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU8;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec};
use hearth_types::{ClusterEvent, NodeAnnouncement, NodeMeta, ServiceInstance, View};
use rand::rngs::StdRng;

use crate::health::LocalHealth;
use crate::identity::{AnnouncementHandler, Inbox, NodeId};
use crate::metrics::GossipMetrics;
use crate::seal::Keyring;
use crate::suspicion::{self, StaleSuspicions};
use crate::timing::{GossipTiming, MAX_DATAGRAM, max_transmissions, swim_config};
use crate::view::{build_view, diff_events};

/// Plaintext kinds inside a sealed datagram.
pub(crate) const KIND_FOCA: u8 = 0;
pub(crate) const KIND_ANNOUNCEMENT: u8 = 1;
/// How often a node re-announces itself even when nothing changed, so that announcements
/// lost to a partition or to packet loss heal without anyone's help.
const REANNOUNCE_EVERY: Duration = Duration::from_secs(15);
/// Worst local-health score: the suspicion timeout grows to (1 + this) times its base.
const MAX_HEALTH_SCORE: u32 = 4;

type Swim = Foca<NodeId, PostcardCodec, StdRng, AnnouncementHandler>;

pub struct MembershipConfig {
    pub cluster: String,
    pub keyring: Keyring,
    pub meta: NodeMeta,
    pub join: Vec<SocketAddr>,
    pub timing: GossipTiming,
    pub services: Vec<ServiceInstance>,
}

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "this node's announcement takes {0} bytes, more than fits in one datagram; use fewer services or tags"
    )]
    AnnouncementTooBig(usize),
}

/// When an input happens, by the driver's two clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time from a fixed origin (the task's start, or virtual time zero). Timers,
    /// local health, stale suspicions and re-announcing run on it.
    pub elapsed: Duration,
    /// Wall-clock microseconds since the Unix epoch. Only announcement versions follow it, so
    /// that a restarted node's announcements supersede those of its previous life.
    pub unix_micros: u64,
}

/// A foca timer and the time (on [`Now::elapsed`]'s clock) it is due at. The driver hands
/// it back in [`Input::Timer`] once that time has come; how late it comes counts against
/// local health.
pub struct Timer {
    at: Duration,
    timer: foca::Timer<NodeId>,
}

impl Timer {
    pub fn at(&self) -> Duration {
        self.at
    }
}

/// What happened to the node.
pub enum Input<'a> {
    /// The node starts: it announces itself and knocks on the seeds. Handed in once, first.
    Start,
    /// A datagram as it arrived from the network, still sealed.
    Datagram(&'a [u8]),
    /// A timer from [`Output::Timer`] whose time has come.
    Timer(Timer),
    /// Once per probe interval: local health recovers, a lone node knocks on the seeds
    /// again, the announcement is refreshed, and stale suspicions are settled.
    Tick,
    /// This node's service instances (and their check states) changed.
    SetServices(Vec<ServiceInstance>),
    /// This node's metadata changed.
    SetMeta(NodeMeta),
    /// One tag of this node's metadata changed (`None`: removed), the rest kept.
    SetTag(String, Option<String>),
    /// The cluster secret was rotated.
    SetKeyring(Keyring),
    /// Leave the cluster gracefully, so that peers record this node as `left`.
    Leave,
}

/// What the driver must do.
pub enum Output {
    /// Send this sealed datagram to `to`.
    Send { to: SocketAddr, datagram: Vec<u8> },
    /// Hand this timer back in [`Input::Timer`] at [`Timer::at`].
    Timer(Timer),
    /// The view changed to `view`; `events` lead from the previous view to it.
    View {
        view: Arc<View>,
        events: Vec<ClusterEvent>,
    },
}

/// One node's membership state machine.
pub struct Core {
    swim: Swim,
    /// foca's configuration before local health stretches the suspicion timeout and the
    /// cluster's size sets how often an update is sent.
    base_config: foca::Config,
    /// How often an update is sent now (`timing::max_transmissions` of the cluster's size).
    max_tx: NonZeroU8,
    runtime: AccumulatingRuntime<NodeId>,
    keyring: Keyring,
    inbox: Inbox,
    announcements: HashMap<String, NodeAnnouncement>,
    own: NodeAnnouncement,
    join: Vec<SocketAddr>,
    timing: GossipTiming,
    health: LocalHealth,
    late_this_interval: bool,
    last_reannounce: Duration,
    stale: StaleSuspicions,
    /// Whether foca probes its members: it says so with `Active`, and stops after `Idle`
    /// (no member left), `Defunct`, or `Rejoin` (a renewed identity).
    connected: bool,
    view: Arc<View>,
    /// What `view` was built from besides the announcements: each member's identity and
    /// state as foca listed them, and our own announcement. A datagram that changes neither
    /// (most of them) costs a comparison, not a new view.
    view_inputs: (Vec<(NodeId, foca::State)>, Option<NodeAnnouncement>),
    metrics: Arc<GossipMetrics>,
    left: bool,
}

impl Core {
    /// A node that has not started yet. `bump` makes its identity newer than any earlier life
    /// of it (the real node takes the wall clock in microseconds); `rng` drives foca's
    /// choices; received and dropped datagrams are counted in `metrics`.
    pub fn new(
        config: MembershipConfig,
        bump: u64,
        rng: StdRng,
        metrics: Arc<GossipMetrics>,
    ) -> Result<Core, StartError> {
        let own = NodeAnnouncement {
            meta: config.meta,
            version: bump,
            services: config.services,
            leaving: false,
        };
        let encoded = postcard::to_allocvec(&own).map_or(usize::MAX, |b| b.len());
        if encoded > MAX_DATAGRAM / 2 {
            return Err(StartError::AnnouncementTooBig(encoded));
        }
        let id = NodeId {
            name: own.meta.name.clone(),
            addr: own.meta.gossip_addr,
            bump,
        };
        let inbox = Inbox::new(Mutex::new(Vec::new()));
        let base_config = swim_config(&config.timing, 1);
        let max_tx = base_config.max_transmissions;
        let handler = AnnouncementHandler::new(inbox.clone());
        let swim =
            Foca::with_custom_broadcast(id, base_config.clone(), rng, PostcardCodec, handler);
        let timing = config.timing;
        Ok(Core {
            swim,
            base_config,
            max_tx,
            runtime: AccumulatingRuntime::new(),
            keyring: config.keyring,
            inbox,
            announcements: HashMap::new(),
            own,
            join: config.join,
            timing,
            health: LocalHealth::new(
                timing.probe_interval,
                timing.probe_timeout,
                MAX_HEALTH_SCORE,
            ),
            late_this_interval: false,
            last_reannounce: Duration::ZERO,
            stale: StaleSuspicions::default(),
            connected: false,
            view: Arc::new(View::default()),
            view_inputs: (Vec::new(), None),
            metrics,
            left: false,
        })
    }

    /// The view as of the last output.
    pub fn view(&self) -> &Arc<View> {
        &self.view
    }

    /// Handles `input`, which happened at `now`, and returns what to do about it: timers to
    /// set, sealed datagrams to send, and the view if it changed. The order is deterministic,
    /// so a seeded simulation replays exactly.
    pub fn handle(&mut self, now: Now, input: Input<'_>) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Start => {
                self.announce_self(now);
                self.join_seeds();
            }
            Input::Datagram(datagram) => self.receive(datagram),
            Input::Timer(timer) => self.fire(now, timer),
            Input::Tick => self.housekeeping(now),
            Input::SetServices(services) => {
                if services != self.own.services {
                    self.own.services = services;
                    self.announce_self(now);
                }
            }
            Input::SetMeta(meta) => {
                if meta != self.own.meta {
                    self.own.meta = meta;
                    self.announce_self(now);
                }
            }
            Input::SetTag(key, value) => {
                let tags = &mut self.own.meta.tags;
                let changed = match value {
                    Some(value) => tags.insert(key, value.clone()).as_ref() != Some(&value),
                    None => tags.remove(&key).is_some(),
                };
                if changed {
                    self.announce_self(now);
                }
            }
            Input::SetKeyring(keyring) => {
                tracing::info!(keys = keyring.len(), "keyring replaced");
                self.keyring = keyring;
            }
            Input::Leave => self.leave(now, &mut out),
        }
        self.flush(now, &mut out);
        out
    }

    fn own_announcement_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.own).unwrap_or_default()
    }

    /// Bumps our announcement's version and hands it to foca for dissemination.
    fn announce_self(&mut self, now: Now) {
        self.own.version = self.own.version.max(now.unix_micros) + 1;
        self.last_reannounce = now.elapsed;
        let bytes = self.own_announcement_bytes();
        if let Err(error) = self.swim.add_broadcast(&bytes) {
            tracing::warn!(%error, "queueing our announcement");
        }
    }

    fn join_seeds(&mut self) {
        for &seed in &self.join {
            if seed == self.own.meta.gossip_addr {
                continue;
            }
            if let Err(error) = self.swim.announce(NodeId::seed(seed), &mut self.runtime) {
                tracing::debug!(%error, %seed, "announcing to seed");
            }
        }
    }

    /// Announces that we are leaving, to every member directly as well as by gossip: a
    /// leave that rides only on gossip can be lost with the last packets before the process
    /// exits.
    fn leave(&mut self, now: Now, out: &mut Vec<Output>) {
        if self.left {
            return;
        }
        self.own.leaving = true;
        self.announce_self(now);
        let payload = self.own_announcement_bytes();
        for member in self.swim.iter_members() {
            out.push(self.sealed(member.id().addr, KIND_ANNOUNCEMENT, &payload));
        }
        if let Err(error) = self.swim.leave_cluster(&mut self.runtime) {
            tracing::warn!(%error, "leaving the cluster");
        }
        self.left = true;
    }

    fn housekeeping(&mut self, now: Now) {
        let members = self.swim.iter_members().count() + 1;
        let max_tx = max_transmissions(members);
        let resized = max_tx != self.max_tx;
        self.max_tx = max_tx;
        let recovered = !self.late_this_interval && self.health.decay();
        if recovered || resized {
            self.apply_config(recovered);
        }
        self.late_this_interval = false;
        if self.left {
            return;
        }
        if !self.connected {
            // Alone, or not probing since renewing our identity (foca then keeps the members
            // it knew but waits for a message addressed to the new identity, which nobody
            // sends if every member renewed too, or none knows us): keep knocking on the
            // seeds until one answers.
            self.join_seeds();
        }
        if now.elapsed.saturating_sub(self.last_reannounce) >= REANNOUNCE_EVERY {
            self.announce_self(now);
        }
        self.settle_stale_suspicions(now);
    }

    fn settle_stale_suspicions(&mut self, now: Now) {
        let stale = self.stale.check(
            self.swim.iter_membership_state(),
            now.elapsed,
            suspicion::limit(&self.timing),
        );
        if stale.is_empty() {
            return;
        }
        tracing::info!(members = ?stale.iter().map(|m| m.id()).collect::<Vec<_>>(), "declaring down members suspect for too long");
        if let Err(error) = self
            .swim
            .apply_many(stale.into_iter(), true, &mut self.runtime)
        {
            tracing::warn!(%error, "declaring stale suspects down");
        }
    }

    /// Hands foca the configuration for this node's local health and the cluster's size.
    /// `health_changed` says which moved (the benchmarks count "local health changed").
    fn apply_config(&mut self, health_changed: bool) {
        let mut config = self.base_config.clone();
        config.suspect_to_down_after = self.health.suspicion_timeout(self.timing.suspicion_timeout);
        config.max_transmissions = self.max_tx;
        let (score, max_transmissions) = (self.health.score(), self.max_tx.get());
        if health_changed {
            tracing::debug!(score, max_transmissions, "local health changed");
        } else {
            tracing::debug!(score, max_transmissions, "cluster size changed");
        }
        if let Err(error) = self.swim.set_config(config) {
            tracing::warn!(%error, "applying local health and cluster size");
        }
    }

    fn fire(&mut self, now: Now, timer: Timer) {
        if self
            .health
            .observe_lateness(now.elapsed.saturating_sub(timer.at))
        {
            self.late_this_interval = true;
            self.apply_config(true);
        }
        if let Err(error) = self.swim.handle_timer(timer.timer, &mut self.runtime) {
            tracing::debug!(%error, "gossip timer");
        }
    }

    /// Opens a datagram and hands its plaintext to foca or to the announcement decoder;
    /// counts it, and counts it dropped when it does not open or is not understood.
    fn receive(&mut self, datagram: &[u8]) {
        self.metrics.received.fetch_add(1, Ordering::Relaxed);
        let plaintext = match self.keyring.open(datagram) {
            Ok(plaintext) => plaintext,
            Err(reason) => {
                self.metrics.count_drop(Some(reason));
                return;
            }
        };
        let result = match plaintext.split_first() {
            Some((&KIND_FOCA, body)) => self.swim.handle_data(body, &mut self.runtime),
            Some((&KIND_ANNOUNCEMENT, body)) => self.swim.add_broadcast(body).map(|_| ()),
            _ => {
                self.metrics.count_drop(None);
                return;
            }
        };
        if let Err(error) = result {
            // Authenticated but not understood (a peer running another version, most
            // likely); foca rejects stale or self-addressed data the same way.
            tracing::debug!(%error, "dropped gossip data");
            self.metrics.count_drop(None);
        }
    }

    /// Turns what foca queued into outputs (timers, then datagrams), and adds the view if it
    /// changed.
    fn flush(&mut self, now: Now, out: &mut Vec<Output>) {
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let at = now.elapsed + after;
            out.push(Output::Timer(Timer { at, timer }));
        }
        let mut new_peers = Vec::new();
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => new_peers.push(id.addr),
                OwnedNotification::Active => self.connected = true,
                OwnedNotification::Idle => self.connected = false,
                OwnedNotification::Defunct => {
                    self.connected = false;
                    tracing::warn!("declared dead by the cluster");
                }
                OwnedNotification::Rejoin(id) => {
                    self.connected = false;
                    tracing::info!(?id, "rejoined the cluster");
                }
                _ => {}
            }
        }
        while let Some((to, data)) = self.runtime.to_send() {
            out.push(self.sealed(to.addr, KIND_FOCA, &data));
        }
        // A newcomer may have missed our last announcement's dissemination; give it ours
        // directly (it answers with its own the same way).
        if !self.left && !new_peers.is_empty() {
            let payload = self.own_announcement_bytes();
            for peer in new_peers {
                out.push(self.sealed(peer, KIND_ANNOUNCEMENT, &payload));
            }
        }
        self.refresh_view(out);
    }

    fn sealed(&self, to: SocketAddr, kind: u8, data: &[u8]) -> Output {
        let mut plaintext = Vec::with_capacity(data.len() + 1);
        plaintext.push(kind);
        plaintext.extend_from_slice(data);
        let datagram = self.keyring.seal(&plaintext);
        Output::Send { to, datagram }
    }

    fn refresh_view(&mut self, out: &mut Vec<Output>) {
        let received: Vec<NodeAnnouncement> = {
            let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *inbox)
        };
        // Announcements are sent again and again; only a different one can change the view.
        let mut announced = false;
        for announcement in received {
            let name = &announcement.meta.name;
            if *name == self.own.meta.name || self.announcements.get(name) == Some(&announcement) {
                continue;
            }
            announced = true;
            self.announcements.insert(name.clone(), announcement);
        }
        if !announced && self.view_inputs_unchanged() {
            return;
        }
        let members: Vec<(NodeId, foca::State)> = self
            .swim
            .iter_membership_state()
            .map(|member| (member.id().clone(), member.state()))
            .collect();
        let view = build_view(
            &self.own,
            members.iter().map(|(id, state)| (id, *state)),
            &self.announcements,
        );
        self.view_inputs = (members, Some(self.own.clone()));
        if view == *self.view {
            return;
        }
        let events = diff_events(&self.view, &view);
        self.view = Arc::new(view);
        let view = self.view.clone();
        out.push(Output::View { view, events });
    }

    /// Whether foca lists the same members in the same states, and our announcement is the
    /// same, as when the view was last built.
    fn view_inputs_unchanged(&self) -> bool {
        let (members, own) = &self.view_inputs;
        if own.as_ref() != Some(&self.own) {
            return false;
        }
        let mut before = members.iter();
        let same = self.swim.iter_membership_state().all(|member| {
            before
                .next()
                .is_some_and(|(id, state)| id == member.id() && *state == member.state())
        });
        same && before.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::Secret;
    use hearth_types::{MemberState, Role};
    use rand::SeedableRng;

    fn secret(byte: u8) -> Secret {
        Secret::new([byte; crate::SECRET_LEN])
    }

    fn core(index: u8, join: Vec<SocketAddr>, secret_byte: u8) -> Core {
        let addr = SocketAddr::from(([127, 0, 0, index], 7946));
        let meta = NodeMeta {
            name: format!("n{index}"),
            gossip_addr: addr,
            address: addr.ip(),
            roles: vec![Role::Server],
            tags: Default::default(),
            rpc_addr: None,
            in_group: false,
        };
        let config = MembershipConfig {
            cluster: "test".into(),
            keyring: Keyring::new("test", &secret(secret_byte), &[]),
            meta,
            join,
            timing: GossipTiming::default(),
            services: Vec::new(),
        };
        let rng = StdRng::seed_from_u64(index.into());
        Core::new(config, index.into(), rng, Arc::default()).unwrap()
    }

    fn at(millis: u64) -> Now {
        Now {
            elapsed: Duration::from_millis(millis),
            unix_micros: millis * 1000,
        }
    }

    fn sends(outputs: Vec<Output>) -> Vec<(SocketAddr, Vec<u8>)> {
        outputs
            .into_iter()
            .filter_map(|output| match output {
                Output::Send { to, datagram } => Some((to, datagram)),
                _ => None,
            })
            .collect()
    }

    fn dropped(core: &Core) -> Vec<(&'static str, u64)> {
        let mut dropped = core.metrics.dropped();
        dropped.retain(|(_, count)| *count > 0);
        dropped
    }

    #[test]
    fn two_cores_meet_through_sealed_datagrams() {
        let mut a = core(1, Vec::new(), 1);
        let mut b = core(2, vec![a.own.meta.gossip_addr], 1);
        a.handle(at(0), Input::Start);
        let mut in_flight = sends(b.handle(at(0), Input::Start));
        assert_eq!(in_flight.len(), 1, "b knocks on its seed");
        assert_ne!(in_flight[0].1.first(), Some(&KIND_FOCA), "sealed");
        for _ in 0..10 {
            let mut next = Vec::new();
            for (to, datagram) in in_flight {
                let target = if to == a.own.meta.gossip_addr {
                    &mut a
                } else {
                    &mut b
                };
                next.extend(sends(target.handle(at(1), Input::Datagram(&datagram))));
            }
            in_flight = next;
        }
        for core in [&a, &b] {
            let states: Vec<_> = core.view().members.values().map(|m| m.state).collect();
            assert_eq!(states, [MemberState::Alive, MemberState::Alive]);
            assert!(dropped(core).is_empty());
        }
    }

    #[test]
    fn bad_datagrams_are_dropped_and_counted_by_reason() {
        let mut a = core(1, Vec::new(), 1);
        let stranger = core(2, Vec::new(), 2);
        let ours = Keyring::new("test", &secret(1), &[]);
        a.handle(at(0), Input::Datagram(b"hello"));
        a.handle(at(0), Input::Datagram(&stranger.keyring.seal(&[KIND_FOCA])));
        a.handle(at(0), Input::Datagram(&ours.seal(&[9, 9])));
        a.handle(at(0), Input::Datagram(&ours.seal(&[KIND_FOCA, 1, 2, 3])));
        assert_eq!(
            dropped(&a),
            [("not_hearth", 1), ("unknown_key", 1), ("malformed", 2)]
        );
        assert_eq!(a.metrics.received.load(Ordering::Relaxed), 4);
    }
}
