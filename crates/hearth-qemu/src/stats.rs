//! What a running VM's QEMU says about its disk for `/metrics`: bytes and operations read and
//! written, from QMP `query-blockstats`, asked with a short deadline so a busy monitor never
//! holds up a scrape.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::qmp::Qmp;

/// How long a scrape waits for one VM's monitor (another client may hold it for a moment).
const DEADLINE: Duration = Duration::from_secs(1);

/// The guest's IO on its disk since QEMU started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskIo {
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub reads: u64,
    pub writes: u64,
}

/// Asks the QEMU of VM directory `dir`; `None` when it does not answer within [`DEADLINE`].
pub async fn disk_io(dir: &Path) -> Option<DiskIo> {
    let answer = tokio::time::timeout(DEADLINE, async {
        let mut qmp = Qmp::connect(&dir.join("qmp.sock")).await.ok()?;
        qmp.execute("query-blockstats", None).await.ok()
    })
    .await
    .ok()??;
    parse_blockstats(&answer)
}

/// The disk's figures from the answer to `query-blockstats`: the entry of the drive the
/// driver names `disk0`.
pub fn parse_blockstats(answer: &Value) -> Option<DiskIo> {
    let entries = answer.as_array()?;
    let disk = entries.iter().find(|e| e["device"] == "disk0")?;
    let stats = &disk["stats"];
    let field = |name: &str| stats[name].as_u64();
    Some(DiskIo {
        read_bytes: field("rd_bytes")?,
        written_bytes: field("wr_bytes")?,
        reads: field("rd_operations")?,
        writes: field("wr_operations")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape QEMU 10 answers with: the NoCloud seed drive has its own entry, skipped.
    #[test]
    fn the_disk_entry_is_read_and_the_others_skipped() {
        let answer = serde_json::json!([
            {"device": "disk0", "qdev": "/machine/peripheral-anon/device[0]/virtio-backend",
             "stats": {"rd_bytes": 4096, "wr_bytes": 8192, "rd_operations": 3,
                       "wr_operations": 5, "flush_operations": 1}},
            {"device": "seed0", "stats": {"rd_bytes": 1, "wr_bytes": 0,
                       "rd_operations": 1, "wr_operations": 0}}
        ]);
        assert_eq!(
            parse_blockstats(&answer),
            Some(DiskIo {
                read_bytes: 4096,
                written_bytes: 8192,
                reads: 3,
                writes: 5
            })
        );
        assert_eq!(parse_blockstats(&serde_json::json!([])), None);
        assert_eq!(parse_blockstats(&serde_json::json!({"x": 1})), None);
    }
}
