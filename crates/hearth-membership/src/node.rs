//! The membership task: the I/O around the membership core. It feeds the core what the UDP
//! socket, the timer queue, the probe-interval tick and the handle's commands deliver, and
//! carries out what the core returns: sealed datagrams onto the socket, timers into the
//! queue, views onto the watch channel and events into the event queue.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hearth_types::{ClusterEvent, NodeMeta, ServiceInstance, View};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::core::{Core, Input, MembershipConfig, Now, Output, StartError, Timer};
use crate::metrics::GossipMetrics;
use crate::seal::Keyring;
use crate::timing::MAX_DATAGRAM;

enum Command {
    SetServices(Vec<ServiceInstance>),
    SetKeyring(Keyring),
    SetMeta(NodeMeta),
    SetTag(String, Option<String>),
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

    /// Sets (or with `None` removes) one tag of this node's announcement, keeping the rest.
    pub async fn set_tag(&self, key: &str, value: Option<String>) {
        let _ = self
            .commands
            .send(Command::SetTag(key.to_owned(), value))
            .await;
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

struct TimerEntry {
    at: Instant,
    seq: u64,
    timer: Timer,
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
    core: Core,
    socket: UdpSocket,
    /// When the task started: the origin of the core's monotonic clock.
    started: Instant,
    probe_interval: Duration,
    timers: BinaryHeap<Reverse<TimerEntry>>,
    timer_seq: u64,
    /// What the core asked for during this turn of the loop, carried out at its end.
    pending: Vec<Output>,
    views: watch::Sender<Arc<View>>,
    events: mpsc::Sender<ClusterEvent>,
    metrics: Arc<GossipMetrics>,
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Node {
    fn new(
        config: MembershipConfig,
        socket: UdpSocket,
        events: mpsc::Sender<ClusterEvent>,
    ) -> Result<Node, StartError> {
        let probe_interval = config.timing.probe_interval;
        let metrics = Arc::new(GossipMetrics::default());
        let core = Core::new(config, unix_micros(), rand::make_rng(), metrics.clone())?;
        let (views, _) = watch::channel(core.view().clone());
        Ok(Node {
            core,
            socket,
            started: Instant::now(),
            probe_interval,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            pending: Vec::new(),
            views,
            events,
            metrics,
        })
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        self.step(self.now(Instant::now()), Input::Start);
        self.carry_out().await;
        let mut tick = tokio::time::interval(self.probe_interval);
        // After a stall, one tick, not a burst of the missed ones: each tick lets local health
        // recover a step, and a burst would undo at once the caution the stall just earned.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                        self.step(self.now(Instant::now()), Input::Datagram(&buf[..len]));
                    }
                    self.drain_socket(&mut buf);
                }
                _ = sleep => {}
                _ = tick.tick() => self.step(self.now(Instant::now()), Input::Tick),
            }
            self.fire_due_timers();
            self.carry_out().await;
        }
    }

    /// After a stall, reads everything that queued up before overdue timers fire, so that
    /// replies which did arrive in time are not taken for silence.
    fn drain_socket(&mut self, buf: &mut [u8]) {
        for _ in 0..64 {
            match self.socket.try_recv_from(buf) {
                Ok((len, _)) => self.step(self.now(Instant::now()), Input::Datagram(&buf[..len])),
                Err(_) => break,
            }
        }
    }

    /// `at` on the core's clocks.
    fn now(&self, at: Instant) -> Now {
        Now {
            elapsed: at.saturating_duration_since(self.started),
            unix_micros: unix_micros(),
        }
    }

    /// Hands `input` to the core; what it returns is carried out at the end of the turn.
    fn step(&mut self, now: Now, input: Input<'_>) {
        let outputs = self.core.handle(now, input);
        self.pending.extend(outputs);
    }

    async fn handle_command(&mut self, command: Command) {
        let now = self.now(Instant::now());
        match command {
            Command::SetServices(services) => self.step(now, Input::SetServices(services)),
            Command::SetMeta(meta) => self.step(now, Input::SetMeta(meta)),
            Command::SetTag(key, value) => self.step(now, Input::SetTag(key, value)),
            Command::SetKeyring(keyring) => self.step(now, Input::SetKeyring(keyring)),
            Command::Leave(done) => {
                self.step(now, Input::Leave);
                self.carry_out().await;
                let _ = done.send(());
            }
        }
    }

    fn fire_due_timers(&mut self) {
        let at = Instant::now();
        let now = self.now(at);
        while self
            .timers
            .peek()
            .is_some_and(|Reverse(entry)| entry.at <= at)
        {
            let Some(Reverse(entry)) = self.timers.pop() else {
                break;
            };
            self.step(now, Input::Timer(entry.timer));
        }
    }

    /// Sends the datagrams, queues the timers, and publishes the views the core returned.
    async fn carry_out(&mut self) {
        for output in std::mem::take(&mut self.pending) {
            match output {
                Output::Send { to, datagram } => match self.socket.send_to(&datagram, to).await {
                    Ok(_) => {
                        self.metrics.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => tracing::debug!(%error, %to, "gossip send failed"),
                },
                Output::Timer(timer) => {
                    self.timer_seq += 1;
                    self.timers.push(Reverse(TimerEntry {
                        at: self.started + timer.at(),
                        seq: self.timer_seq,
                        timer,
                    }));
                }
                Output::View { view, events } => self.publish(view, events),
            }
        }
    }

    fn publish(&mut self, view: Arc<View>, events: Vec<ClusterEvent>) {
        for event in events {
            if self.events.try_send(event).is_err() {
                self.metrics.events_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("event queue full; an event was dropped");
            }
        }
        self.views.send_replace(view);
    }
}
