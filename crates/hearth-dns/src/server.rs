//! The UDP and TCP servers around `handle_packet`, and the task that rebuilds the zone
//! snapshot whenever the view or the desired state changes.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hearth_types::View;
use hearth_types::desired::DesiredState;
use hearth_types::limits::{ConnLimit, ConnSlot};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::cache::AnswerCache;
use crate::metrics::DnsMetrics;
use crate::packet::{Transport, count, respond, respond_into};
use crate::udp;
use crate::zone::{Zone, ZoneSnapshot};

/// How long a TCP connection may sit between queries, or take to send or receive one message.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new TCP connection may take to start its first query.
pub(crate) const TCP_FIRST_QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections beyond this are closed as soon as they are accepted.
pub(crate) const MAX_TCP_CONNECTIONS: usize = 256;
/// Connections from one client address beyond this are closed as soon as they are accepted,
/// so one client holding idle connections cannot take every place.
pub(crate) const MAX_TCP_PER_CLIENT: usize = 16;
/// Pause after a failed accept: the usual cause, running out of file descriptors, would
/// otherwise turn the accept loop into a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Runs the UDP and TCP servers until `shutdown` is cancelled, answering from the latest view
/// on `views` and the latest desired state on `desired`. Each change of the view, or of the
/// desired state's static records or drain flags, rebuilds the snapshot once, with the serial
/// its content gives; answering never waits on that. When a sender is dropped
/// (a node holding no replicated state may pass a channel whose sender is already gone), its
/// last value keeps being served.
pub async fn serve(
    zone: Zone,
    udp: UdpSocket,
    tcp: TcpListener,
    views: watch::Receiver<Arc<View>>,
    desired: watch::Receiver<Arc<DesiredState>>,
    metrics: Arc<DnsMetrics>,
    shutdown: CancellationToken,
) {
    let zone = Arc::new(zone);
    let mut inputs = Inputs::new(views, desired);
    let (view, desired) = inputs.latest();
    let first = ZoneSnapshot::build(&zone, view, desired);
    let (publish, snapshots) = watch::channel(Arc::new(first));
    let responder = Responder::new(Arc::clone(&zone), snapshots, metrics);

    let mut tasks = JoinSet::new();
    tasks.spawn(track_inputs(zone, inputs, publish, shutdown.clone()));
    udp::spawn(&mut tasks, responder.clone(), udp, shutdown.clone());
    tasks.spawn(serve_tcp(responder, tcp, shutdown));
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined {
            warn!(%error, "a DNS server task failed");
        }
    }
}

/// The two inputs a snapshot is built from, each followed until its sender goes away.
pub(crate) struct Inputs {
    views: watch::Receiver<Arc<View>>,
    desired: watch::Receiver<Arc<DesiredState>>,
    views_open: bool,
    desired_open: bool,
}

impl Inputs {
    pub(crate) fn new(
        views: watch::Receiver<Arc<View>>,
        desired: watch::Receiver<Arc<DesiredState>>,
    ) -> Self {
        Self {
            views,
            desired,
            views_open: true,
            desired_open: true,
        }
    }

    /// The latest view and desired state, marked seen.
    pub(crate) fn latest(&mut self) -> (Arc<View>, Arc<DesiredState>) {
        let view = Arc::clone(&self.views.borrow_and_update());
        let desired = Arc::clone(&self.desired.borrow_and_update());
        (view, desired)
    }

    /// Waits until either input may have changed; false once both senders are gone. A closed
    /// channel's `changed` is ready at once and forever, so it is no longer polled after it
    /// first reports the close: polling it would turn this wait into a busy loop.
    pub(crate) async fn changed(&mut self) -> bool {
        tokio::select! {
            changed = self.views.changed(), if self.views_open => {
                self.views_open = changed.is_ok();
            }
            changed = self.desired.changed(), if self.desired_open => {
                self.desired_open = changed.is_ok();
            }
            else => return false,
        }
        true
    }
}

/// The shortest time between two snapshot builds. A build costs time linear in the zone, and
/// a write burst through Raft changes the desired state hundreds of times a second.
const MIN_REBUILD_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Under a burst, the gap after a build is also at least this many times the build's own
/// time, so rebuilding a large zone takes at most a fifth of a core however fast it changes.
const REBUILD_GAP_FACTOR: u32 = 4;

/// The time to wait after a build that took `took` before the next one.
pub(crate) fn rebuild_gap(took: std::time::Duration) -> std::time::Duration {
    MIN_REBUILD_INTERVAL.max(took * REBUILD_GAP_FACTOR)
}

/// Publishes a new snapshot for each change that reaches DNS (see `is_built_from`). When both
/// senders go away, the last snapshot keeps being served until shutdown.
async fn track_inputs(
    zone: Arc<Zone>,
    mut inputs: Inputs,
    publish: watch::Sender<Arc<ZoneSnapshot>>,
    shutdown: CancellationToken,
) {
    let track = async {
        let mut next_build: Option<tokio::time::Instant> = None;
        while inputs.changed().await {
            // Under a burst of writes, rebuild at most every `rebuild_gap`: the first change
            // after a quiet spell is served at once, later ones together.
            if let Some(at) = next_build {
                tokio::time::sleep_until(at).await;
            }
            let (view, desired) = inputs.latest();
            let current = publish.borrow().clone();
            // Senders may republish equal values: nothing to rebuild for them.
            if !current.is_built_from(&view, &desired) {
                let started = tokio::time::Instant::now();
                // A large zone takes milliseconds to index: not on a worker the API and Raft
                // share.
                let inputs = (zone.clone(), view, desired);
                let built = tokio::task::spawn_blocking(move || {
                    current.follow(&inputs.0, inputs.1, inputs.2)
                });
                match built.await {
                    Ok(snapshot) => {
                        publish.send_replace(Arc::new(snapshot));
                    }
                    Err(error) => tracing::error!(%error, "building the zone failed"),
                }
                let done = tokio::time::Instant::now();
                next_build = Some(done + rebuild_gap(done - started));
            }
        }
        std::future::pending::<()>().await;
    };
    shutdown.run_until_cancelled(track).await;
}

/// What every server loop answers with: the zone, and the latest snapshot, re-read only when a
/// new one has been published (a cheap version check per packet). The UDP loop also
/// remembers its answers for the current snapshot.
#[derive(Clone)]
pub(crate) struct Responder {
    zone: Arc<Zone>,
    snapshots: watch::Receiver<Arc<ZoneSnapshot>>,
    current: Arc<ZoneSnapshot>,
    metrics: Arc<DnsMetrics>,
    cache: AnswerCache,
}

impl Responder {
    pub(crate) fn new(
        zone: Arc<Zone>,
        snapshots: watch::Receiver<Arc<ZoneSnapshot>>,
        metrics: Arc<DnsMetrics>,
    ) -> Self {
        let current = Arc::clone(&snapshots.borrow());
        Self {
            zone,
            snapshots,
            current,
            metrics,
            cache: AnswerCache::default(),
        }
    }

    /// Takes the latest snapshot if a new one was published; true if it did.
    fn refresh(&mut self) -> bool {
        let changed = self.snapshots.has_changed().unwrap_or(false);
        if changed {
            self.current = Arc::clone(&self.snapshots.borrow_and_update());
        }
        changed
    }

    /// Writes the response to `packet` into `out`; false when there is nothing to send.
    fn respond(&mut self, packet: &[u8], transport: Transport, out: &mut Vec<u8>) -> bool {
        self.refresh();
        let (zone, snapshot) = (&self.zone, &self.current);
        respond_into(zone, snapshot, packet, transport, &self.metrics, out)
    }

    /// `respond` for a UDP datagram, through the cache of answers to the current snapshot.
    pub(crate) fn respond_udp(&mut self, packet: &[u8], out: &mut Vec<u8>) -> bool {
        if self.refresh() {
            self.cache.clear();
        }
        if let Some(rcode) = self.cache.answer(packet, out) {
            return count(&self.metrics, Some(rcode));
        }
        let (zone, snapshot) = (&self.zone, &self.current);
        let rcode = respond(zone, snapshot, packet, Transport::Udp, out);
        if let Some(rcode) = rcode {
            self.cache.remember(packet, out, rcode);
        }
        count(&self.metrics, rcode)
    }

    pub(crate) fn metrics(&self) -> &DnsMetrics {
        &self.metrics
    }

    /// How many answers the UDP cache holds.
    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        self.cache.len()
    }
}

async fn serve_tcp(responder: Responder, listener: TcpListener, shutdown: CancellationToken) {
    let slots = ConnLimit::new(MAX_TCP_CONNECTIONS, MAX_TCP_PER_CLIENT);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = slots.admit(peer.ip()) else {
                        // Dropping the stream closes it: that is the refusal.
                        responder.metrics.record_tcp_refused();
                        continue;
                    };
                    let connection = serve_connection(stream, responder.clone(), shutdown.clone(), slot);
                    connections.spawn(connection);
                }
                Err(error) => {
                    debug!(%error, "DNS TCP accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    // Every connection watches `shutdown` too, so this ends promptly.
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(
    stream: TcpStream,
    mut responder: Responder,
    shutdown: CancellationToken,
    _slot: ConnSlot,
) {
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%error, "cannot disable Nagle on a DNS TCP connection");
    }
    let mut stream = BufReader::new(stream);
    shutdown
        .run_until_cancelled(connection_loop(&mut stream, &mut responder))
        .await;
}

/// Answers framed queries in order until the peer closes, idles, or sends a bad frame.
async fn connection_loop<S>(stream: &mut S, responder: &mut Responder)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut frame, mut out, mut framed) = (Vec::new(), Vec::new(), Vec::new());
    let mut wait = TCP_FIRST_QUERY_TIMEOUT;
    loop {
        let read = timeout(wait, read_frame(stream, &mut frame)).await;
        wait = TCP_IDLE_TIMEOUT;
        match read {
            Ok(Ok(Frame::Ready)) => {}
            Ok(Ok(Frame::Bad)) => {
                responder.metrics.record_dropped();
                return;
            }
            Ok(Ok(Frame::Closed) | Err(_)) | Err(_) => return,
        }
        // Undecodable frames are counted by `respond`; the stream can't be trusted after one.
        if !responder.respond(&frame, Transport::Tcp, &mut out) {
            return;
        }
        if !write_frame(stream, &out, &mut framed).await {
            return;
        }
    }
}

/// What reading one length-prefixed message (RFC 1035 §4.2.2) produced.
enum Frame {
    Ready,
    /// The peer closed the connection between messages.
    Closed,
    /// A zero length, or the peer closed part-way through a message.
    Bad,
}

async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    frame: &mut Vec<u8>,
) -> io::Result<Frame> {
    let mut prefix = [0u8; 2];
    if stream.read(&mut prefix[..1]).await? == 0 {
        return Ok(Frame::Closed);
    }
    if !read_all(stream, &mut prefix[1..]).await? {
        return Ok(Frame::Bad);
    }
    let len = usize::from(u16::from_be_bytes(prefix));
    frame.resize(len, 0);
    if len == 0 || !read_all(stream, frame).await? {
        return Ok(Frame::Bad);
    }
    Ok(Frame::Ready)
}

/// Fills `buf`; false when the peer closed before it was full.
async fn read_all<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut [u8]) -> io::Result<bool> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(error) => Err(error),
    }
}

/// Sends `message` behind its length in one write, so that it leaves as one segment.
async fn write_frame<S>(stream: &mut S, message: &[u8], framed: &mut Vec<u8>) -> bool
where
    S: AsyncWrite + Unpin,
{
    let Ok(len) = u16::try_from(message.len()) else {
        return false;
    };
    framed.clear();
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    let written = timeout(TCP_IDLE_TIMEOUT, stream.write_all(framed)).await;
    matches!(written, Ok(Ok(())))
}
