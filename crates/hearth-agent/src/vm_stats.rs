//! On a worker: every `[compute] stats_interval`, samples each running VM's counters (its
//! QEMU's CPU time from `/proc`, its disk bytes over QMP, a bridged VM's tap's bytes) and
//! adds them to the VM's history in its directory (`stats.json`, written whole and renamed
//! into place), for the member panel's day and week charts.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hearth_types::vmstats::{Counters, VmHistory, record};
use tokio_util::sync::CancellationToken;

/// Runs until `shutdown`.
pub async fn sample(vms_dir: std::path::PathBuf, every: Duration, shutdown: CancellationToken) {
    let mut ticks = crate::ticks::Ticks::new(every, shutdown);
    while ticks.next().await {
        let Ok(entries) = std::fs::read_dir(&vms_dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if let Err(error) = sample_one(&vms_dir, &id).await {
                tracing::debug!(vm = %id, %error, "sampling a VM's load");
            }
        }
    }
}

/// Adds one sample of VM `id` to its history, if its QEMU runs here.
async fn sample_one(vms_dir: &Path, id: &str) -> std::io::Result<()> {
    let Some(path) = hearth_qemu::driver::stats_file(vms_dir, id) else {
        return Ok(());
    };
    let dir = vms_dir.join(id);
    let Some(counters) = counters(&dir).await else {
        return Ok(());
    };
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // A history that cannot be read (cut short by a crash) starts over.
    let mut history: VmHistory = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    if !record(&mut history, at_ms, counters) {
        return Ok(());
    }
    let temporary = dir.join("stats.json.new");
    std::fs::write(&temporary, serde_json::to_vec(&history)?)?;
    std::fs::rename(&temporary, &path)
}

/// The counters of the QEMU running in `dir`; `None` when none runs or it does not answer.
async fn counters(dir: &Path) -> Option<Counters> {
    let pid = hearth_qemu::driver::running_pid(dir)?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = crate::host_metrics::process_ticks(&stat)?;
    let io = hearth_qemu::stats::disk_io(dir).await?;
    let id = dir.file_name()?.to_str()?;
    Some(Counters {
        cpu_ms: ticks * 1000 / crate::host_metrics::USER_HZ,
        read_bytes: io.read_bytes,
        written_bytes: io.written_bytes,
        net: hearth_qemu::tap::counters(id)
            .map(|(rx_bytes, tx_bytes)| hearth_types::vmstats::Net { rx_bytes, tx_bytes }),
    })
}
