//! A worker's lease (`docs/replicas.md`): renewed through the Raft group every quarter of
//! its timeout; valid until the timeout after the moment the last renewal that committed
//! was sent. While it is not valid, the worker kills the QEMU of its VMs that ask for two
//! copies and starts none of them, so that the replica host, which waits the timeout and a
//! margin after the last renewal it saw, may restart them from their replica without the VM
//! ever running twice.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hearth_qemu::fake::VmDriver;
use hearth_state::model::{Command, ComputeCommand, Outcome};
use hearth_state::node::StateNode;
use tokio_util::sync::CancellationToken;

/// How long after a home's last renewal its replica host waits, beyond the lease timeout,
/// before it restarts the VM: covers clock rates and the kill itself.
pub fn margin(timeout: Duration) -> Duration {
    (timeout / 2).max(Duration::from_secs(2))
}

/// The lease as this worker knows it.
#[derive(Debug, Default)]
pub struct Lease {
    valid_until: Mutex<Option<Instant>>,
}

impl Lease {
    /// Whether the lease holds at `now`.
    pub fn valid(&self, now: Instant) -> bool {
        self.valid_until
            .lock()
            .expect("lease lock")
            .is_some_and(|until| now < until)
    }

    fn renewed(&self, until: Instant) {
        let mut valid = self.valid_until.lock().expect("lease lock");
        if valid.is_none_or(|v| v < until) {
            *valid = Some(until);
        }
    }
}

/// An opt-in hardware watchdog (`[compute] watchdog`, such as `/dev/watchdog` from
/// `softdog`), petted only while the lease is valid, as Proxmox does: if the agent itself is
/// wedged or dead, nothing pets it and the machine resets, taking its QEMU with it.
#[derive(Debug)]
pub struct Watchdog {
    device: std::fs::File,
}

impl Watchdog {
    /// Opens (and so arms) the watchdog device at `path`.
    pub fn open(path: &std::path::Path) -> std::io::Result<Watchdog> {
        let device = std::fs::OpenOptions::new().write(true).open(path)?;
        Ok(Watchdog { device })
    }

    /// Pets the watchdog if the lease is valid; does nothing otherwise.
    pub fn pet(&mut self, lease_valid: bool) -> std::io::Result<()> {
        if lease_valid {
            std::io::Write::write_all(&mut self.device, b"\0")?;
        }
        Ok(())
    }

    /// Disarms it for a clean stop of the agent (the magic close `V`).
    pub fn disarm(mut self) -> std::io::Result<()> {
        std::io::Write::write_all(&mut self.device, b"V")
    }
}

/// Renews the lease of host `name` and kills its replicated VMs' QEMU whenever it lapses;
/// pets `watchdog`, if any, only while the lease holds.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    name: String,
    state: StateNode,
    driver: std::sync::Arc<VmDriver>,
    lease: std::sync::Arc<Lease>,
    timeout: Duration,
    mut watchdog: Option<Watchdog>,
    shutdown: CancellationToken,
) {
    let every = timeout / 4;
    let mut next_renewal = Instant::now();
    let mut fenced = false;
    loop {
        let now = Instant::now();
        if now >= next_renewal {
            next_renewal = now + every;
            let command = ComputeCommand::RenewLease { host: name.clone() };
            let renewal = state.submit(Command::Compute { command });
            match tokio::time::timeout(every, renewal).await {
                Ok(Ok(written)) if matches!(written.outcome, Outcome::Applied { .. }) => {
                    lease.renewed(now + timeout);
                    if fenced {
                        tracing::info!("lease renewed again: VMs with replicas may start here");
                        fenced = false;
                    }
                }
                Ok(Ok(written)) => tracing::debug!(outcome = ?written.outcome, "lease not renewed"),
                Ok(Err(error)) => tracing::debug!(%error, "lease not renewed"),
                Err(_) => tracing::debug!("lease renewal timed out"),
            }
        }
        if !lease.valid(Instant::now()) {
            let killed = fence(&name, &state, &driver).await;
            if !fenced || killed > 0 {
                tracing::warn!(
                    killed,
                    "lease lapsed: killed the QEMU of this host's VMs with replicas; they start again here once it is renewed, or on their replica host"
                );
            }
            fenced = true;
        }
        if let Some(dog) = watchdog.as_mut()
            && let Err(error) = dog.pet(lease.valid(Instant::now()))
        {
            tracing::warn!(%error, "petting the watchdog");
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                if let Some(dog) = watchdog.take()
                    && let Err(error) = dog.disarm()
                {
                    tracing::warn!(%error, "disarming the watchdog");
                }
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Kills the QEMU of every VM asking for two copies that runs here; returns how many.
async fn fence(name: &str, state: &StateNode, driver: &VmDriver) -> usize {
    let desired = state.reader().current();
    let Ok(seen) = driver.observe() else {
        return 0;
    };
    let mut killed = 0;
    for s in seen.iter().filter(|s| s.pid.is_some() && !s.foreign) {
        let replicated = desired
            .compute
            .vms
            .get(&s.id)
            .is_some_and(|vm| vm.value.request.replicas > 1);
        if replicated && driver.kill_now(&s.id).await.is_ok() {
            tracing::warn!(vm = %s.id, host = name, "killed: the lease lapsed");
            killed += 1;
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_petted_only_while_the_lease_holds_and_disarmed_at_a_clean_stop() {
        // A plain file stands in for the device: every write lands in it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watchdog");
        std::fs::write(&path, b"").unwrap();
        let mut dog = Watchdog::open(&path).unwrap();
        dog.pet(true).unwrap();
        dog.pet(false).unwrap();
        dog.pet(true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0");
        dog.disarm().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0V");
        assert!(Watchdog::open(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_lease_holds_until_its_end_and_only_moves_forward() {
        let lease = Lease::default();
        let now = Instant::now();
        assert!(!lease.valid(now), "none before the first renewal");
        lease.renewed(now + Duration::from_secs(10));
        assert!(lease.valid(now + Duration::from_secs(9)));
        assert!(!lease.valid(now + Duration::from_secs(10)));
        // A late answer to an older renewal does not shorten it.
        lease.renewed(now + Duration::from_secs(5));
        assert!(lease.valid(now + Duration::from_secs(9)));
        assert_eq!(margin(Duration::from_secs(15)), Duration::from_millis(7500));
        assert_eq!(margin(Duration::from_secs(2)), Duration::from_secs(2));
    }
}
