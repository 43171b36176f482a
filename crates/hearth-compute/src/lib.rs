//! Members' VMs: the leader's placement (`placement`), the per-host reconciler
//! (`reconcile`), the loops that run them and write through Raft (`leader`, `host`), the
//! verified image store (`blobs`, `images`), the files a host serves to its peers
//! (`files`) and a VM's move to another host on the hosts (`moves` cold, `live_moves`
//! live), and backups in restic repositories (`restic`, run by `backup_runs`, restored by
//! `restores`, their interrupted work swept by `leftovers`). QEMU itself is driven through `hearth-qemu`.

pub mod backup_runs;
pub mod blobs;
pub mod console;
pub mod files;
pub mod host;
pub mod images;
pub mod leader;
pub mod lease;
pub mod leftovers;
pub mod live_moves;
pub mod moves;
pub mod placement;
pub mod rbd;
pub mod reconcile;
pub mod recovery;
pub mod replica_plan;
pub mod replicas;
pub mod restic;
pub mod restores;

use std::sync::atomic::AtomicU64;

/// Unix milliseconds by this host's clock.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Counters of this node's host loop, served in `/metrics`.
#[derive(Debug, Default)]
pub struct ComputeMetrics {
    /// Reconciliation passes completed.
    pub passes: AtomicU64,
    /// QEMU processes started.
    pub starts: AtomicU64,
    /// QEMU processes that exited without being asked to.
    pub crashes: AtomicU64,
    /// This worker's lease, as its host loop renews it.
    pub lease: std::sync::Arc<lease::Lease>,
    /// Metering: usage rows the desired state took from this worker.
    pub usage_rows_written: AtomicU64,
    /// Metering: rows of ended periods waiting to be written.
    pub usage_rows_waiting: AtomicU64,
    /// Metering: writes of usage rows that failed and will be tried again.
    pub usage_write_failures: AtomicU64,
    /// Backups this worker stored.
    pub backups_stored: AtomicU64,
    /// Backup attempts that failed here.
    pub backup_failures: AtomicU64,
}
