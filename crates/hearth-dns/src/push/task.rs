//! The pusher: on the Raft leader only, follows the view and the desired state and keeps the
//! external primary in step, with a full resync on taking over and after any failure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hearth_types::View;
use hearth_types::desired::DesiredState;
use tokio::sync::watch;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::exchange::send_updates;
use super::records::{RrsetMap, resync, rrsets, updates};
use super::tsig::TsigKey;
use crate::metrics::DnsMetrics;
use crate::server::Inputs;
use crate::zone::Zone;

/// How often leadership is re-read: `is_leader` is a plain function that cannot notify.
const LEADER_POLL: Duration = Duration::from_millis(500);

/// Where and how to push. `Debug` never shows the key's secret.
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// The primary's address (TCP).
    pub server: SocketAddr,
    pub key: TsigKey,
    /// Connecting, or one UPDATE and its answer, fails after this long.
    pub timeout: Duration,
    /// Changes arriving within this long of a first one are pushed together.
    pub debounce: Duration,
    /// The first retry after a failure waits this long, each next one twice as long.
    pub min_backoff: Duration,
    /// Retries never wait longer than this.
    pub max_backoff: Duration,
}

impl PushSettings {
    /// Settings with the default timings: 5 s per step, 200 ms debounce, retries from 1 s to
    /// 1 minute.
    pub fn new(server: SocketAddr, key: TsigKey) -> Self {
        Self {
            server,
            key,
            timeout: Duration::from_secs(5),
            debounce: Duration::from_millis(200),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Keeps the primary at `settings.server` holding what this agent's DNS answers for `zone`,
/// while `is_leader()` says this node leads (so one agent pushes at a time), until `shutdown`.
///
/// On taking the lead, and after any failure, it pushes every managed set (a full resync);
/// otherwise only what changed since the last accepted push, at most once per
/// `settings.debounce`. Failures are logged (never with the secret), counted in
/// `metrics.push()`, and retried with exponential backoff.
pub async fn run_pusher(
    settings: PushSettings,
    zone: Zone,
    views: watch::Receiver<Arc<View>>,
    desired: watch::Receiver<Arc<DesiredState>>,
    is_leader: impl Fn() -> bool + Send + 'static,
    metrics: Arc<DnsMetrics>,
    shutdown: CancellationToken,
) {
    let mut pusher = Pusher {
        settings,
        zone,
        metrics,
        pushed: None,
        retry_at: None,
        n_failures: 0,
    };
    let inputs = Inputs::new(views, desired);
    shutdown
        .run_until_cancelled(pusher.run(inputs, is_leader))
        .await;
}

struct Pusher {
    settings: PushSettings,
    zone: Zone,
    metrics: Arc<DnsMetrics>,
    /// What the primary holds as far as this node knows: None until a full resync succeeds
    /// in the current term as leader, and again after any failure.
    pushed: Option<RrsetMap>,
    /// After a failure, no push before this instant.
    retry_at: Option<Instant>,
    n_failures: u32,
}

impl Pusher {
    async fn run(&mut self, mut inputs: Inputs, is_leader: impl Fn() -> bool) {
        let mut inputs_open = true;
        let mut dirty = true;
        loop {
            if is_leader() {
                let due = self.retry_at.is_none_or(|at| Instant::now() >= at);
                if due && (dirty || self.pushed.is_none()) {
                    dirty = false;
                    let (view, desired) = inputs.latest();
                    self.push(&view, &desired).await;
                }
            } else if self.pushed.take().is_some() || self.retry_at.take().is_some() {
                info!("no longer the Raft leader; another node pushes the zone now");
                self.n_failures = 0;
            }
            let wait = self.retry_at.map_or(LEADER_POLL, |at| {
                at.saturating_duration_since(Instant::now())
                    .min(LEADER_POLL)
            });
            tokio::select! {
                changed = inputs.changed(), if inputs_open => {
                    inputs_open = changed;
                    if changed {
                        dirty = true;
                        sleep(self.settings.debounce).await;
                    }
                }
                () = sleep(wait) => {}
            }
        }
    }

    /// One push: the changes since the last accepted push, or everything when there was none.
    async fn push(&mut self, view: &View, desired: &DesiredState) {
        let next = rrsets(&self.zone, view, desired);
        let origin = &self.zone.origin;
        let full = self.pushed.is_none();
        let messages = match &self.pushed {
            Some(previous) => updates(origin, previous, &next),
            None => resync(origin, &next),
        };
        if messages.is_empty() {
            self.pushed = Some(next);
            return;
        }
        let (server, key) = (self.settings.server, &self.settings.key);
        match send_updates(server, key, &messages, self.settings.timeout).await {
            Ok(()) => {
                self.metrics.push().record_accepted(messages.len());
                if full {
                    info!(%server, n_rrsets = next.len(), "pushed the whole zone to the primary");
                } else {
                    debug!(%server, n_updates = messages.len(), "pushed changes to the primary");
                }
                self.pushed = Some(next);
                self.retry_at = None;
                self.n_failures = 0;
            }
            Err(error) => {
                self.metrics.push().record_failure();
                let backoff = self.backoff();
                warn!(%error, retry_in = ?backoff, "pushing the zone to the primary failed");
                // Some messages may have been applied: only a full resync is safe now.
                self.pushed = None;
                self.retry_at = Some(Instant::now() + backoff);
                self.n_failures = self.n_failures.saturating_add(1);
            }
        }
    }

    /// `min_backoff` doubled once per failure in a row, capped at `max_backoff`.
    fn backoff(&self) -> Duration {
        let factor = 1u32.checked_shl(self.n_failures).unwrap_or(u32::MAX);
        self.settings
            .min_backoff
            .saturating_mul(factor)
            .min(self.settings.max_backoff)
    }
}
