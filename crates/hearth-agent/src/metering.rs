//! Metering and closing months. On a worker: every `[billing] meter_interval`, the VMs whose
//! disk lives here are sampled into the meter (`hearth_types::metering::Meter`, kept in
//! `<data_dir>/metering.json`, written whole and renamed into place at each sample), and
//! the rows of ended periods are written through the log until the state has them; a row
//! sent twice counts once, so a timeout, a leader change or a restart never counts an hour
//! twice, and a row not yet written waits in the file. On the Raft leader: each month is
//! closed `[billing] close_after` after it ends.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::unix_ms;

use hearth_state::model::Command;
use hearth_state::node::StateNode;
use hearth_types::desired::DesiredState;
use hearth_types::metering::{Held, MAX_ROWS_PER_WRITE, Meter, UsageRow};
use tokio_util::sync::CancellationToken;

/// The state level that reads the billing commands.
const BILLING_LEVEL: u32 = 4;
/// The longest time between two samples that still counts (an agent restart, a slow
/// host); a longer gap counts for nothing: the member is not billed for what nobody saw.
pub const MAX_GAP: Duration = Duration::from_secs(600);

/// A worker's metering.
pub struct Metering {
    pub host: String,
    pub vms_dir: PathBuf,
    /// The meter's file.
    pub file: PathBuf,
    pub state: StateNode,
    pub period: Duration,
    pub every: Duration,
    pub metrics: Arc<hearth_compute::ComputeMetrics>,
}

/// What this host holds: each VM whose disk lives here and is not being deleted, running
/// when its QEMU runs here.
pub fn held(desired: &DesiredState, host: &str, vms_dir: &Path) -> Vec<Held> {
    desired
        .compute
        .vms
        .values()
        .map(|vm| &vm.value)
        .filter(|vm| vm.disk.host.as_deref() == Some(host) && !vm.deleting)
        .map(|vm| Held {
            vm: vm.id.clone(),
            name: vm.request.name.clone(),
            owner: vm.request.owner.clone(),
            run: run_id(&vms_dir.join(&vm.id)),
            vcpus: vm.request.vcpus,
            memory_mib: vm.request.memory_mib,
            disk_gib: vm.request.disk_gib,
            addresses: vm.ips.len() as u32,
        })
        .collect()
}

/// The QEMU process running the VM in `dir`, as `PID:START` (its start time in clock ticks
/// since boot), so that a new process under a reused pid is not taken for the old one.
fn run_id(dir: &Path) -> Option<String> {
    let pid = hearth_qemu::driver::running_pid(dir)?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // After ")": state is field 3, so starttime (field 22) is index 19.
    Some(format!("{pid}:{}", fields.get(19)?))
}

/// The meter in `file`; a new one when there is none. One that cannot be read (cut short
/// by a crash: it is written by rename, so only a disk fault does that) starts over.
fn load(file: &Path) -> Meter {
    match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            tracing::warn!(file = %file.display(), %error, "the meter cannot be read; starting over");
            Meter::default()
        }),
        Err(_) => Meter::default(),
    }
}

fn save(file: &Path, meter: &Meter) -> std::io::Result<()> {
    let temporary = file.with_extension("json.new");
    std::fs::write(&temporary, serde_json::to_vec(meter)?)?;
    std::fs::rename(&temporary, file)
}

/// Runs until `shutdown`.
pub async fn run(metering: Metering, shutdown: CancellationToken) {
    let mut meter = load(&metering.file);
    let period_s = metering.period.as_secs().max(1) as u32;
    let mut ticks = crate::ticks::Ticks::new(metering.every, shutdown);
    while ticks.next().await {
        // Until the local copy of the state is back where the last sample saw it (a restart
        // replays the log), it may lack VMs held here: sampling it would break their runs.
        let index = metering.state.reader().applied_index();
        if index == 0 || index < meter.index {
            continue;
        }
        meter.index = index;
        let desired = metering.state.reader().current();
        let held = held(&desired, &metering.host, &metering.vms_dir);
        let now: std::collections::BTreeSet<&str> = held.iter().map(|h| h.vm.as_str()).collect();
        let before: std::collections::BTreeSet<&str> =
            meter.held.keys().map(String::as_str).collect();
        if now != before {
            let came: Vec<&&str> = now.difference(&before).collect();
            let went: Vec<&&str> = before.difference(&now).collect();
            tracing::debug!(?came, ?went, index, "metering: VMs held here changed");
        }
        let max_gap = MAX_GAP.max(metering.every * 3).as_millis() as u64;
        meter.sample(&metering.host, period_s, unix_ms(), max_gap, &held);
        if metering.state.cluster_level() >= BILLING_LEVEL {
            write(&metering, &mut meter).await;
        }
        let waiting = meter.closed.len() as u64;
        metering
            .metrics
            .usage_rows_waiting
            .store(waiting, Ordering::Relaxed);
        if let Err(error) = save(&metering.file, &meter) {
            tracing::warn!(file = %metering.file.display(), %error, "saving the meter");
        }
    }
}

/// Writes the meter's closed rows, oldest first, until one write fails.
async fn write(metering: &Metering, meter: &mut Meter) {
    while !meter.closed.is_empty() {
        let rows: Vec<UsageRow> = meter
            .closed
            .iter()
            .take(MAX_ROWS_PER_WRITE)
            .cloned()
            .collect();
        let command = Command::RecordUsage {
            host: metering.host.clone(),
            rows: rows.clone(),
        };
        match metering.state.submit(command).await {
            Ok(result) => {
                if let hearth_state::model::Outcome::Invalid { message } = &result.outcome {
                    tracing::warn!(%message, "usage rows refused; dropped");
                }
                let keys: Vec<String> = rows.iter().map(UsageRow::key).collect();
                meter.written(&keys);
                let count = rows.len() as u64;
                metering
                    .metrics
                    .usage_rows_written
                    .fetch_add(count, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::debug!(%error, "writing usage rows; kept for the next sample");
                metering
                    .metrics
                    .usage_write_failures
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// On the leader: closes each month `grace` after it ends (checked every `every`).
pub async fn close_months(
    state: StateNode,
    grace: Duration,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = crate::ticks::Ticks::new(every, shutdown);
    while ticks.next().await {
        if !state.is_leader() || state.cluster_level() < BILLING_LEVEL {
            continue;
        }
        let now_ms = unix_ms();
        let desired = state.reader().current();
        let Some(month) =
            hearth_types::invoice::due(&desired.billing, now_ms / 1000, grace.as_secs())
        else {
            continue;
        };
        match state
            .submit(Command::CloseMonth {
                month: month.clone(),
                at_ms: now_ms,
            })
            .await
        {
            Ok(_) => tracing::info!(%month, "closed the month's invoices"),
            Err(error) => tracing::debug!(%month, %error, "closing a month"),
        }
    }
}
