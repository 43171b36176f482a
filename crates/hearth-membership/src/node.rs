//! The membership task: owns foca, the UDP socket and the timer queue, folds announcements
//! into the view, publishes it, and reports the events between successive views.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec, Timer};
use hearth_types::{ClusterEvent, NodeAnnouncement, NodeMeta, ServiceInstance, View};
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::health::LocalHealth;
use crate::identity::{AnnouncementHandler, Inbox, NodeId};
use crate::seal::{Keyring, OVERHEAD, OpenError};
use crate::view::{build_view, diff_events};

/// The largest datagram hearth sends: safely below a 1500-byte MTU.
const MAX_DATAGRAM: usize = 1400;
/// Plaintext kinds inside a sealed datagram.
pub(crate) const KIND_FOCA: u8 = 0;
pub(crate) const KIND_ANNOUNCEMENT: u8 = 1;
/// How often a node re-announces itself even when nothing changed, so that announcements
/// lost to a partition or to packet loss heal without anyone's help.
const REANNOUNCE_EVERY: Duration = Duration::from_secs(15);
/// Worst local-health score: the suspicion timeout grows to (1 + this) times its base.
const MAX_HEALTH_SCORE: u32 = 4;

/// Failure-detector timing. See the README's `[gossip]` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GossipTiming {
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub suspicion_timeout: Duration,
}

impl Default for GossipTiming {
    fn default() -> Self {
        GossipTiming {
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(200),
            suspicion_timeout: Duration::from_millis(1500),
        }
    }
}

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

/// Counters the agent renders at `/metrics`.
#[derive(Debug, Default)]
pub struct GossipMetrics {
    pub received: AtomicU64,
    pub sent: AtomicU64,
    /// Events not delivered to handlers because their queue was full.
    pub events_dropped: AtomicU64,
    dropped: [AtomicU64; 5],
}

impl GossipMetrics {
    const MALFORMED: usize = 4;

    fn drop_index(reason: OpenError) -> usize {
        OpenError::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(Self::MALFORMED)
    }

    fn count_drop(&self, reason: Option<OpenError>) {
        let idx = reason.map_or(Self::MALFORMED, Self::drop_index);
        self.dropped[idx].fetch_add(1, Ordering::Relaxed);
    }

    /// Dropped datagrams by reason label.
    pub fn dropped(&self) -> Vec<(&'static str, u64)> {
        OpenError::ALL
            .iter()
            .map(|r| r.label())
            .chain(["malformed"])
            .zip(self.dropped.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect()
    }
}

enum Command {
    SetServices(Vec<ServiceInstance>),
    SetKeyring(Keyring),
    SetMeta(NodeMeta),
    Leave(oneshot::Sender<()>),
}

/// A handle on the running membership task.
#[derive(Clone)]
pub struct Membership {
    commands: mpsc::Sender<Command>,
    views: watch::Receiver<Arc<View>>,
    pub metrics: Arc<GossipMetrics>,
}

impl Membership {
    /// Starts the task on `socket`. It runs until `shutdown` is cancelled; events go to
    /// `events` in the order they were seen (dropped, and counted by the receiver's owner,
    /// if the receiver lags far behind).
    pub fn start(
        config: MembershipConfig,
        socket: UdpSocket,
        events: mpsc::Sender<ClusterEvent>,
        shutdown: CancellationToken,
    ) -> Result<(Membership, JoinHandle<()>), StartError> {
        let (commands_tx, commands) = mpsc::channel(64);
        let node = Node::new(config, socket, events)?;
        let views = node.views.subscribe();
        let metrics = node.metrics.clone();
        let task = tokio::spawn(node.run(commands, shutdown));
        let handle = Membership {
            commands: commands_tx,
            views,
            metrics,
        };
        Ok((handle, task))
    }

    pub fn views(&self) -> watch::Receiver<Arc<View>> {
        self.views.clone()
    }

    /// Replaces this node's service instances (and their check states) in its announcement.
    pub async fn set_services(&self, services: Vec<ServiceInstance>) {
        let _ = self.commands.send(Command::SetServices(services)).await;
    }

    /// Replaces this node's metadata in its announcement.
    pub async fn set_meta(&self, meta: NodeMeta) {
        let _ = self.commands.send(Command::SetMeta(meta)).await;
    }

    /// Replaces the keyring, for rotating the cluster secret without a restart.
    pub async fn set_keyring(&self, keyring: Keyring) {
        let _ = self.commands.send(Command::SetKeyring(keyring)).await;
    }

    /// Leaves the cluster gracefully: peers record this node as `left`, not `dead`.
    pub async fn leave(&self) {
        let (done_tx, done) = oneshot::channel();
        if self.commands.send(Command::Leave(done_tx)).await.is_ok() {
            let _ = done.await;
        }
    }
}

type Swim = Foca<NodeId, PostcardCodec, StdRng, AnnouncementHandler>;

struct TimerEntry {
    at: Instant,
    seq: u64,
    timer: Timer<NodeId>,
}

impl PartialEq for TimerEntry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerEntry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Node {
    swim: Swim,
    base_config: foca::Config,
    runtime: AccumulatingRuntime<NodeId>,
    socket: UdpSocket,
    keyring: Keyring,
    timers: BinaryHeap<Reverse<TimerEntry>>,
    timer_seq: u64,
    inbox: Inbox,
    announcements: HashMap<String, NodeAnnouncement>,
    own: NodeAnnouncement,
    join: Vec<SocketAddr>,
    timing: GossipTiming,
    health: LocalHealth,
    late_this_interval: bool,
    last_reannounce: Instant,
    /// When the task started: the origin of `stale`'s clock.
    started: Instant,
    stale: crate::suspicion::StaleSuspicions,
    view: Arc<View>,
    views: watch::Sender<Arc<View>>,
    events: mpsc::Sender<ClusterEvent>,
    metrics: Arc<GossipMetrics>,
    left: bool,
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub(crate) fn swim_config(timing: &GossipTiming) -> foca::Config {
    let mut config = foca::Config::new_lan(NonZeroU32::new(16).expect("16 is not zero"));
    config.probe_period = timing.probe_interval;
    config.probe_rtt = timing.probe_timeout;
    config.suspect_to_down_after = timing.suspicion_timeout;
    config.max_packet_size =
        NonZeroUsize::new(MAX_DATAGRAM - OVERHEAD - 1).expect("datagram is larger than overhead");
    config.remove_down_after = Some(Duration::from_secs(24 * 3600));
    // Knock on members believed dead often, so the two sides of a healed partition find
    // each other again within seconds rather than a minute.
    config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(5),
        num_members: NonZeroUsize::new(2).expect("2 is not zero"),
    });
    config
}

impl Node {
    fn new(
        config: MembershipConfig,
        socket: UdpSocket,
        events: mpsc::Sender<ClusterEvent>,
    ) -> Result<Node, StartError> {
        let bump = unix_micros();
        let id = NodeId {
            name: config.meta.name.clone(),
            addr: config.meta.gossip_addr,
            bump,
        };
        let inbox = Inbox::new(Mutex::new(Vec::new()));
        let base_config = swim_config(&config.timing);
        let rng: StdRng = rand::make_rng();
        let swim = Foca::with_custom_broadcast(
            id,
            base_config.clone(),
            rng,
            PostcardCodec,
            AnnouncementHandler::new(inbox.clone()),
        );
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
        let view = Arc::new(View::default());
        let (views, _) = watch::channel(view.clone());
        Ok(Node {
            swim,
            base_config,
            runtime: AccumulatingRuntime::new(),
            socket,
            keyring: config.keyring,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            inbox,
            announcements: HashMap::new(),
            own,
            join: config.join,
            timing: config.timing,
            health: LocalHealth::new(
                config.timing.probe_interval,
                config.timing.probe_timeout,
                MAX_HEALTH_SCORE,
            ),
            late_this_interval: false,
            last_reannounce: Instant::now(),
            started: Instant::now(),
            stale: Default::default(),
            view,
            views,
            events,
            metrics: Arc::new(GossipMetrics::default()),
            left: false,
        })
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        self.announce_self();
        self.join_seeds();
        self.flush().await;
        let mut tick = tokio::time::interval(self.timing.probe_interval);
        let mut buf = vec![0u8; 2 * MAX_DATAGRAM];
        loop {
            let next_timer = self.timers.peek().map(|Reverse(entry)| entry.at);
            let sleep = tokio::time::sleep_until(
                next_timer.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
            );
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                command = commands.recv() => match command {
                    Some(command) => self.handle_command(command).await,
                    None => break,
                },
                received = self.socket.recv_from(&mut buf) => {
                    if let Ok((len, _from)) = received {
                        self.handle_datagram(&buf[..len]);
                    }
                    // After a stall, read everything that queued up before firing overdue
                    // timers, so that replies which did arrive in time are not taken for
                    // silence.
                    for _ in 0..64 {
                        match self.socket.try_recv_from(&mut buf) {
                            Ok((len, _)) => self.handle_datagram(&buf[..len]),
                            Err(_) => break,
                        }
                    }
                }
                _ = sleep => {}
                _ = tick.tick() => self.housekeeping(),
            }
            self.fire_due_timers();
            self.flush().await;
        }
    }

    async fn handle_command(&mut self, command: Command) {
        match command {
            Command::SetServices(services) => {
                if services != self.own.services {
                    self.own.services = services;
                    self.announce_self();
                }
            }
            Command::SetMeta(meta) => {
                if meta != self.own.meta {
                    self.own.meta = meta;
                    self.announce_self();
                }
            }
            Command::SetKeyring(keyring) => {
                tracing::info!(keys = keyring.len(), "keyring replaced");
                self.keyring = keyring;
            }
            Command::Leave(done) => {
                self.leave().await;
                let _ = done.send(());
            }
        }
    }

    async fn leave(&mut self) {
        if self.left {
            return;
        }
        self.own.leaving = true;
        self.announce_self();
        // Tell every member directly as well: a leave that rides only on gossip can be lost
        // with the last packets before the process exits.
        let payload = self.own_announcement_bytes();
        let peers: Vec<SocketAddr> = self.swim.iter_members().map(|m| m.id().addr).collect();
        for peer in peers {
            self.send_plain(peer, KIND_ANNOUNCEMENT, &payload).await;
        }
        if let Err(error) = self.swim.leave_cluster(&mut self.runtime) {
            tracing::warn!(%error, "leaving the cluster");
        }
        self.left = true;
        self.flush().await;
    }

    fn own_announcement_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.own).unwrap_or_default()
    }

    /// Bumps our announcement's version and hands it to foca for dissemination.
    fn announce_self(&mut self) {
        self.own.version = self.own.version.max(unix_micros()) + 1;
        self.last_reannounce = Instant::now();
        let bytes = self.own_announcement_bytes();
        if let Err(error) = self.swim.add_broadcast(&bytes) {
            tracing::warn!(%error, "queueing our announcement");
        }
    }

    fn join_seeds(&mut self) {
        for seed in self.join.clone() {
            if seed == self.own.meta.gossip_addr {
                continue;
            }
            if let Err(error) = self.swim.announce(NodeId::seed(seed), &mut self.runtime) {
                tracing::debug!(%error, %seed, "announcing to seed");
            }
        }
    }

    fn housekeeping(&mut self) {
        if !self.late_this_interval && self.health.decay() {
            self.apply_health();
        }
        self.late_this_interval = false;
        if self.left {
            return;
        }
        if self.swim.num_members() == 0 {
            // Alone: keep knocking on the seeds until one answers.
            self.join_seeds();
        }
        if self.last_reannounce.elapsed() >= REANNOUNCE_EVERY {
            self.announce_self();
        }
        let stale = self.stale.check(
            self.swim.iter_membership_state(),
            self.started.elapsed(),
            crate::suspicion::limit(&self.timing),
        );
        if !stale.is_empty() {
            tracing::info!(members = ?stale.iter().map(|m| m.id()).collect::<Vec<_>>(), "declaring down members suspect for too long");
            if let Err(error) = self
                .swim
                .apply_many(stale.into_iter(), true, &mut self.runtime)
            {
                tracing::warn!(%error, "declaring stale suspects down");
            }
        }
    }

    fn apply_health(&mut self) {
        let mut config = self.base_config.clone();
        config.suspect_to_down_after = self.health.suspicion_timeout(self.timing.suspicion_timeout);
        tracing::debug!(score = self.health.score(), "local health changed");
        if let Err(error) = self.swim.set_config(config) {
            tracing::warn!(%error, "applying local health");
        }
    }

    fn handle_datagram(&mut self, datagram: &[u8]) {
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

    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse(entry)) = self.timers.peek() {
            if entry.at > now {
                break;
            }
            let Some(Reverse(entry)) = self.timers.pop() else {
                break;
            };
            if self.health.observe_lateness(now - entry.at) {
                self.late_this_interval = true;
                self.apply_health();
            }
            if let Err(error) = self.swim.handle_timer(entry.timer, &mut self.runtime) {
                tracing::debug!(%error, "gossip timer");
            }
        }
    }

    /// Sends what foca queued, schedules its timers, and refreshes the view.
    async fn flush(&mut self) {
        let now = Instant::now();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timer_seq += 1;
            self.timers.push(Reverse(TimerEntry {
                at: now + after,
                seq: self.timer_seq,
                timer,
            }));
        }
        let mut new_peers = Vec::new();
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => new_peers.push(id.addr),
                OwnedNotification::Defunct => tracing::warn!("declared dead by the cluster"),
                OwnedNotification::Rejoin(id) => tracing::info!(?id, "rejoined the cluster"),
                _ => {}
            }
        }
        while let Some((to, data)) = self.runtime.to_send() {
            self.send_plain(to.addr, KIND_FOCA, &data).await;
        }
        // A newcomer may have missed our last announcement's dissemination; give it ours
        // directly (it answers with its own the same way).
        if !self.left && !new_peers.is_empty() {
            let payload = self.own_announcement_bytes();
            for peer in new_peers {
                self.send_plain(peer, KIND_ANNOUNCEMENT, &payload).await;
            }
        }
        self.refresh_view();
    }

    async fn send_plain(&self, to: SocketAddr, kind: u8, data: &[u8]) {
        let mut plaintext = Vec::with_capacity(data.len() + 1);
        plaintext.push(kind);
        plaintext.extend_from_slice(data);
        let sealed = self.keyring.seal(&plaintext);
        match self.socket.send_to(&sealed, to).await {
            Ok(_) => {
                self.metrics.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => tracing::debug!(%error, %to, "gossip send failed"),
        }
    }

    fn refresh_view(&mut self) {
        let received: Vec<NodeAnnouncement> = {
            let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *inbox)
        };
        for announcement in received {
            if announcement.meta.name != self.own.meta.name {
                self.announcements
                    .insert(announcement.meta.name.clone(), announcement);
            }
        }
        let members = self
            .swim
            .iter_membership_state()
            .map(|member| (member.id(), member.state()));
        let view = build_view(&self.own, members, &self.announcements);
        if view == *self.view {
            return;
        }
        for event in diff_events(&self.view, &view) {
            if self.events.try_send(event).is_err() {
                self.metrics.events_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("event queue full; an event was dropped");
            }
        }
        self.view = Arc::new(view);
        self.views.send_replace(self.view.clone());
    }
}
