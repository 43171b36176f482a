//! The copy of a VM's disk kept beside it as of its last backup (`ID.last-backup/`), and the
//! dirty bitmap that lets the next backup read only the blocks the guest wrote since.
//!
//! The copy is a VMDK descriptor (`disk.vmdk`) over raw part files (`part-00000.raw`, …; at
//! most 256 of 4 MiB or more), so QEMU writes it as one disk while restic, which skips the
//! files whose size and times have not changed since its parent snapshot, reads only the
//! parts a run wrote. A run adds a fresh bitmap to the disk's node in the same transaction
//! that starts `blockdev-backup`: the first run (or any run whose copy cannot be trusted)
//! copies the whole disk (sync=full); a later one only the blocks the previous run's bitmap
//! marked (sync=bitmap), then drops that bitmap. The copy is trusted only when `state.json`
//! names a bitmap the node still has, recording, consistent and of the same disk size:
//! bitmap names are unique per run, so a disk that was backed up elsewhere meanwhile, made
//! anew (restored, copied to a new file) or whose QEMU died (its persistent bitmap left
//! inconsistent) gets a full copy. A failed run keeps the previous bitmap, which still marks
//! every block written since the copy was last whole, so the next run rewrites them all.
//! A whole copy is taken again every 30 days all the same, so no damage to the copy lasts,
//! and only when the VMs' filesystem has room for the whole disk and 1 GiB more (QEMU writes
//! the copy's zeros out; they are freed after, `dig_holes`).
//!
//! A run holds the copy's directory ([`Hold`], an advisory `flock`) from the copy until its
//! restic has read it, and restic shares the hold: a restic left running by an agent that
//! stopped keeps it until it exits, so the next agent neither rewrites nor removes a copy
//! it is still reading (which would store a torn disk).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::backup::CopyError;
use crate::error::{ControlError, DiskError, io_error};
use crate::qmp::Qmp;

/// The suffix of the directory beside a VM's that holds its copy.
pub const SUFFIX: &str = ".last-backup";
/// The VMDK descriptor naming the parts in order.
pub const DESCRIPTOR: &str = "disk.vmdk";
/// What the copy was last made with.
const STATE: &str = "state.json";
/// The names of hearth's bitmaps start with this.
const PREFIX: &str = "hearth-backup-";
/// QEMU ids of the copy's job and its target node.
const JOB: &str = "hearth-backup";
const NODE: &str = "hearth-backup-target";
/// How long a copy is brought up to date before it is made whole again.
pub const WHOLE_EVERY_MS: u64 = 30 * 24 * 3600 * 1000;
/// Room a whole copy leaves free on the VMs' filesystem.
const SPARE: u64 = 1 << 30;
const MIN_PART: u64 = 4 << 20;
const MAX_PARTS: u64 = 256;
/// How often the job's state is asked for.
const POLL: Duration = Duration::from_millis(100);

/// VM `id`'s copy directory under the VM root `root`.
pub fn dir(root: &Path, id: &str) -> Result<PathBuf, DiskError> {
    if !crate::files::valid_id(id) {
        return Err(DiskError::BadId(id.to_owned()));
    }
    Ok(root.join(format!("{id}{SUFFIX}")))
}

/// The size of each part of a disk of `size` bytes (the last may be shorter): a power of
/// two of at least 4 MiB, so that there are at most 256.
pub fn part_size(size: u64) -> u64 {
    size.div_ceil(MAX_PARTS).next_power_of_two().max(MIN_PART)
}

/// The file name of part `index`.
pub fn part_name(index: usize) -> String {
    format!("part-{index:05}.raw")
}

/// The index of the part named `name`, if it is one.
pub fn part_index(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("part-")?.strip_suffix(".raw")?;
    (digits.len() == 5 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The parts of a disk of `size` bytes: (file name, length), in order.
pub fn parts(size: u64) -> Vec<(String, u64)> {
    let each = part_size(size);
    (0..size.div_ceil(each))
        .map(|i| (part_name(i as usize), each.min(size - i * each)))
        .collect()
}

/// The VMDK descriptor of a disk of `size` bytes (a multiple of 512) over its parts. No
/// blank line may come right before the first extent: QEMU 10 then reads that extent twice.
pub fn descriptor(size: u64) -> String {
    let mut text = String::from(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentFlat\"\n\n# Extent description\n",
    );
    for (name, len) in parts(size) {
        text.push_str(&format!("RW {} FLAT \"{name}\" 0\n", len / 512));
    }
    text.push_str(
        "\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\n",
    );
    text
}

/// What the copy in a directory was last made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// The bitmap marking every block written since the copy was made.
    pub bitmap: String,
    /// The disk's size.
    pub size: u64,
    /// When the copy was last made whole (Unix ms).
    #[serde(default)]
    pub whole_ms: u64,
}

/// One dirty bitmap of a block node, as `query-named-block-nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Bitmap {
    pub name: String,
    #[serde(default)]
    pub recording: bool,
    #[serde(default)]
    pub busy: bool,
    #[serde(default)]
    pub inconsistent: bool,
}

/// Node `node` in `query-named-block-nodes`' answer: its driver, its size (none if it has
/// no image) and its dirty bitmaps.
pub fn node_info(nodes: &Value, node: &str) -> Option<(String, Option<u64>, Vec<Bitmap>)> {
    let found = (nodes.as_array().into_iter().flatten()).find(|n| n["node-name"] == node)?;
    let bitmaps = found
        .get("dirty-bitmaps")
        .and_then(|b| serde_json::from_value(b.clone()).ok())
        .unwrap_or_default();
    let size = found["image"]["virtual-size"].as_u64();
    Some((
        found["drv"].as_str().unwrap_or("").to_owned(),
        size,
        bitmaps,
    ))
}

/// The bitmap a run at `now_ms` may copy only the marked blocks of, or `None` for a whole
/// copy: the one the copy was made with, if the node still has it whole and the disk kept
/// its size, the copy's files are all there, and it was made whole less than
/// [`WHOLE_EVERY_MS`] ago.
pub fn base(
    kept: Option<&Kept>,
    size: u64,
    bitmaps: &[Bitmap],
    files_whole: bool,
    now_ms: u64,
) -> Option<String> {
    let fresh = |k: &&Kept| now_ms.saturating_sub(k.whole_ms) < WHOLE_EVERY_MS;
    let kept = kept
        .filter(|k| k.size == size && files_whole)
        .filter(fresh)?;
    bitmaps
        .iter()
        .find(|b| b.name == kept.bitmap)
        .filter(|b| b.recording && !b.busy && !b.inconsistent)
        .map(|b| b.name.clone())
}

/// What a copy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// The disk's size.
    pub size: u64,
    /// The bytes the copy read from the disk.
    pub read: u64,
    /// Whether only the blocks written since the last copy were read.
    pub incremental: bool,
}

fn read_kept(dir: &Path) -> Option<Kept> {
    let text = std::fs::read(dir.join(STATE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Whether the descriptor and every part of a disk of `size` bytes are in `dir`, whole.
fn files_whole(dir: &Path, size: u64) -> bool {
    dir.join(DESCRIPTOR).is_file()
        && parts(size).iter().all(|(name, len)| {
            std::fs::metadata(dir.join(name)).is_ok_and(|m| m.is_file() && m.len() == *len)
        })
}

/// Makes `dir` hold an empty copy of a disk of `size` bytes: its descriptor, and sparse
/// parts of zeros. The state is removed first: a copy cut short is never trusted.
pub(crate) fn make_empty(dir: &Path, size: u64) -> Result<(), ControlError> {
    let remove = |path: &Path| match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(path)(e)),
        _ => Ok(()),
    };
    remove(&dir.join(STATE))?;
    if !size.is_multiple_of(512) {
        return Err(ControlError::Unexpected(format!(
            "a disk of {size} bytes is not whole 512-byte sectors"
        )));
    }
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))?.flatten() {
        if part_index(&entry.file_name().to_string_lossy()).is_some() {
            remove(&entry.path())?;
        }
    }
    let path = dir.join(DESCRIPTOR);
    std::fs::write(&path, descriptor(size)).map_err(io_error(&path))?;
    for (name, len) in parts(size) {
        let path = dir.join(name);
        let file = std::fs::File::create(&path).map_err(io_error(&path))?;
        file.set_len(len).map_err(io_error(&path))?;
    }
    Ok(())
}

/// A hold on a copy's directory: while any process has it, no run writes or removes the
/// copy. A `flock` on the directory, whose open file is passed to the restic that reads the
/// copy as its standard input ([`Hold::for_child`]): the lock belongs to the open file, so
/// it lasts until this handle is dropped and every child given it has exited.
#[derive(Debug)]
pub struct Hold(std::fs::File);

impl Hold {
    /// Holds the directory `dir` (which must be there), or `None` when another process has
    /// it: a run of an earlier agent, or the restic that run left behind.
    pub fn try_take(dir: &Path) -> std::io::Result<Option<Hold>> {
        let file = std::fs::File::open(dir)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Hold(file))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(error)) => Err(error),
        }
    }

    /// The hold, as a child process's standard input: the child shares it until it exits.
    pub fn for_child(&self) -> std::io::Result<std::process::Stdio> {
        Ok(std::process::Stdio::from(self.0.try_clone()?))
    }
}

/// Whether the filesystem of `dir` has room for a whole copy of a disk of `size` bytes with
/// [`SPARE`] left over, counting what the copy there now takes (a whole copy frees it
/// first). An error says what is missing.
pub(crate) fn room_for(dir: &Path, size: u64) -> Result<(), ControlError> {
    use std::os::unix::fs::MetadataExt;
    let at = match dir.is_dir() {
        true => dir,
        false => dir.parent().unwrap_or(dir),
    };
    let stat = nix::sys::statvfs::statvfs(at).map_err(|e| io_error(at)(std::io::Error::from(e)))?;
    let free = (stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64);
    let held: u64 = (std::fs::read_dir(dir).into_iter().flatten().flatten())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum();
    let need = size.saturating_add(SPARE);
    match free.saturating_add(held) >= need {
        true => Ok(()),
        false => Err(ControlError::Unexpected(format!(
            "no room for a whole copy of the disk beside the VMs ({} MiB needed with 1 GiB to spare, {} MiB free); free some space on {}",
            need >> 20,
            free.saturating_add(held) >> 20,
            at.display()
        ))),
    }
}

/// Puts every part of the copy on disk, then records `kept` (written aside and renamed).
fn commit(dir: &Path, kept: &Kept) -> std::io::Result<()> {
    for (name, _) in parts(kept.size) {
        std::fs::File::open(dir.join(name))?.sync_data()?;
    }
    let aside = dir.join("state.json.new");
    std::fs::write(&aside, serde_json::to_vec(kept).unwrap_or_default())?;
    std::fs::File::open(&aside)?.sync_all()?;
    std::fs::rename(&aside, dir.join(STATE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Frees the blocks of zeros in each part (a whole copy writes the disk's unused space as
/// zeros), so the copy takes about what the disk holds.
fn dig_holes(dir: &Path, size: u64) -> std::io::Result<()> {
    use std::io::Read;
    const BLOCK: usize = 64 << 10;
    let mut block = vec![0u8; BLOCK];
    for (name, len) in parts(size) {
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, &file);
        let mut offset = 0u64;
        while offset < len {
            let n = (len - offset).min(BLOCK as u64) as usize;
            reader.read_exact(&mut block[..n])?;
            if block[..n].iter().all(|b| *b == 0) {
                let flags = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
                nix::fcntl::fallocate(&file, flags, offset as i64, n as i64)
                    .map_err(std::io::Error::from)?;
            }
            offset += n as u64;
        }
    }
    Ok(())
}

/// The copy job's status, error and bytes to copy, if QEMU has the job.
async fn job(qmp: &mut Qmp) -> Result<Option<(String, Option<String>, u64)>, ControlError> {
    let jobs = qmp.execute("query-jobs", None).await?;
    Ok((jobs.as_array().into_iter().flatten())
        .find(|j| j["id"] == JOB)
        .map(|j: &Value| {
            (
                j["status"].as_str().unwrap_or("").to_owned(),
                j["error"].as_str().map(str::to_owned),
                j["total-progress"].as_u64().unwrap_or(0),
            )
        }))
}

/// Runs a clean-up command whose failure only means there is nothing to clean.
async fn quietly(qmp: &mut Qmp, command: &str, args: Value) {
    if let Err(error) = qmp.execute(command, Some(args)).await {
        tracing::debug!(command, %error, "nothing to clean up");
    }
}

/// Ends the copy's job, if there is one (cancelled if it still runs), and removes its
/// target node: after a copy, and before one in case an interrupted one left them.
async fn clear(qmp: &mut Qmp) {
    if let Ok(Some((status, _, _))) = job(qmp).await
        && status != "concluded"
    {
        quietly(qmp, "job-cancel", json!({ "id": JOB })).await;
        for _ in 0..100 {
            match job(qmp).await {
                Ok(Some((status, _, _))) if status != "concluded" => {
                    tokio::time::sleep(POLL).await;
                }
                _ => break,
            }
        }
    }
    quietly(qmp, "job-dismiss", json!({ "id": JOB })).await;
    quietly(qmp, "blockdev-del", json!({ "node-name": NODE })).await;
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A bitmap name no other run has used.
fn fresh_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{PREFIX}{nanos:x}-{:x}", std::process::id())
}

/// Brings the copy in `dir` up to date with node `node` of the QEMU or
/// `qemu-storage-daemon` whose QMP socket is `socket` (which no other client holds) as the
/// node is now; what a worker does for a VM's disk or its replica.
pub async fn copy(socket: &Path, id: &str, node: &str, dir: &Path) -> Result<Copied, CopyError> {
    let mut qmp = Qmp::connect(socket).await.map_err(ControlError::from)?;
    copy_node(&mut qmp, id, node, dir).await
}

/// Brings the copy in `dir` up to date with node `node` (VM `id`'s disk, or its replica) as
/// it is now, through `blockdev-backup` while the node stays in use.
pub(crate) async fn copy_node(
    qmp: &mut Qmp,
    id: &str,
    node: &str,
    dir: &Path,
) -> Result<Copied, CopyError> {
    clear(qmp).await;
    let nodes = (qmp.execute("query-named-block-nodes", Some(json!({ "flat": true })))).await;
    let nodes = nodes.map_err(ControlError::from)?;
    let Some((driver, Some(size), bitmaps)) = node_info(&nodes, node) else {
        return Err(ControlError::Unexpected(format!("no block node {node} with a size")).into());
    };
    let kept = read_kept(dir);
    let now_ms = unix_ms();
    let from = base(
        kept.as_ref(),
        size,
        &bitmaps,
        files_whole(dir, size),
        now_ms,
    );
    if from.is_none() {
        room_for(dir, size)?;
        make_empty(dir, size)?;
    }
    let next = fresh_name();
    let read = run_job(qmp, id, node, &driver, &next, from.as_deref(), dir).await;
    let read = match read {
        Ok(read) => read,
        Err(error) => {
            let args = json!({ "node": node, "name": next });
            quietly(qmp, "block-dirty-bitmap-remove", args).await;
            return Err(error);
        }
    };
    let whole_ms = match (&from, &kept) {
        (Some(_), Some(kept)) => kept.whole_ms,
        _ => now_ms,
    };
    let kept = Kept {
        bitmap: next.clone(),
        size,
        whole_ms,
    };
    let (at, whole) = (dir.to_owned(), from.is_none());
    let committed = tokio::task::spawn_blocking(move || {
        if whole {
            dig_holes(&at, kept.size)?;
        }
        commit(&at, &kept)
    })
    .await
    .map_err(|e| ControlError::Unexpected(format!("keeping the copy: {e}")))?;
    committed
        .map_err(io_error(dir))
        .map_err(ControlError::from)?;
    // The previous run's bitmap, and any a crash left behind: only `next` counts now.
    for old in bitmaps
        .iter()
        .filter(|b| b.name.starts_with(PREFIX) && b.name != next)
    {
        let args = json!({ "node": node, "name": old.name });
        quietly(qmp, "block-dirty-bitmap-remove", args).await;
    }
    Ok(Copied {
        size,
        read,
        incremental: !whole,
    })
}

/// Adds bitmap `next` to `node` (persistent where its driver can store it) and starts the
/// copy into `dir` in one transaction: of the blocks bitmap `from` marks, or of the whole
/// node. Waits for it to end; returns the bytes it read.
async fn run_job(
    qmp: &mut Qmp,
    id: &str,
    node: &str,
    driver: &str,
    next: &str,
    from: Option<&str>,
    dir: &Path,
) -> Result<u64, CopyError> {
    let filename = dir.join(DESCRIPTOR).display().to_string();
    let target = json!({
        "driver": "vmdk", "node-name": NODE,
        "file": { "driver": "file", "filename": filename },
    });
    qmp.execute("blockdev-add", Some(target))
        .await
        .map_err(ControlError::from)?;
    let mut backup = json!({
        "job-id": JOB, "device": node, "target": NODE, "sync": "full", "auto-dismiss": false,
    });
    if let Some(from) = from {
        backup["sync"] = json!("bitmap");
        backup["bitmap"] = json!(from);
        backup["bitmap-mode"] = json!("never");
    }
    let add = json!({ "node": node, "name": next, "persistent": driver == "qcow2" });
    let actions = json!({ "actions": [
        { "type": "block-dirty-bitmap-add", "data": add },
        { "type": "blockdev-backup", "data": backup },
    ]});
    if let Err(error) = qmp.execute("transaction", Some(actions)).await {
        clear(qmp).await;
        return Err(ControlError::from(error).into());
    }
    let outcome = loop {
        match job(qmp).await {
            Ok(Some((status, error, total))) if status == "concluded" => break (error, total),
            Ok(Some(_)) => tokio::time::sleep(POLL).await,
            Ok(None) => break (Some("QEMU dropped the job".to_owned()), 0),
            Err(error) => {
                clear(qmp).await;
                return Err(error.into());
            }
        }
    };
    clear(qmp).await;
    match outcome {
        (None, read) => Ok(read),
        (Some(message), _) => Err(CopyError::Job {
            id: id.to_owned(),
            message,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_is_one_process_at_a_time_and_a_child_keeps_it_after_its_parent_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let hold = Hold::try_take(dir.path()).unwrap().expect("free at first");
        // Another open of the directory (another agent's run) cannot take it.
        assert!(Hold::try_take(dir.path()).unwrap().is_none());
        // A child given the hold keeps it once the parent's handle is gone (an agent that
        // stopped while its restic ran), and lets go when it exits.
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .stdin(hold.for_child().unwrap())
            .spawn()
            .unwrap();
        drop(hold);
        let while_child_runs = Hold::try_take(dir.path()).unwrap().is_none();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(while_child_runs, "the child keeps the hold");
        assert!(Hold::try_take(dir.path()).unwrap().is_some(), "free again");
        assert!(Hold::try_take(Path::new("/nonexistent-hearth-dir")).is_err());
    }

    #[test]
    fn parts_cover_the_disk_in_at_most_256_files_of_4_mib_or_more() {
        assert_eq!(part_size(1 << 30), 4 << 20);
        assert_eq!(parts(1 << 30).len(), 256);
        assert_eq!(part_size(100 << 30), 512 << 20);
        assert_eq!(parts(100 << 30).len(), 200);
        let odd = (10 << 20) + 512;
        let list = parts(odd);
        assert_eq!(
            list,
            [
                ("part-00000.raw".to_owned(), 4 << 20),
                ("part-00001.raw".to_owned(), 4 << 20),
                ("part-00002.raw".to_owned(), (2 << 20) + 512),
            ]
        );
        assert_eq!(list.iter().map(|p| p.1).sum::<u64>(), odd);
        assert!(parts(0).is_empty());
        assert_eq!(part_index("part-00002.raw"), Some(2));
        assert_eq!(part_index("part-2.raw"), None);
        assert_eq!(part_index("state.json"), None);
        let text = descriptor(odd);
        assert!(
            text.contains("# Extent description\nRW 8192 FLAT \"part-00000.raw\" 0\n"),
            "{text}"
        );
        assert!(
            text.contains("RW 4097 FLAT \"part-00002.raw\" 0\n"),
            "{text}"
        );
    }

    fn bitmap(name: &str) -> Bitmap {
        Bitmap {
            name: name.into(),
            recording: true,
            busy: false,
            inconsistent: false,
        }
    }

    #[test]
    fn only_the_bitmap_the_copy_was_made_with_lets_a_run_copy_less() {
        let kept = Kept {
            bitmap: "hearth-backup-1".into(),
            size: 1 << 30,
            whole_ms: 1_000,
        };
        let now = 2_000;
        let ours = [bitmap("other"), bitmap("hearth-backup-1")];
        assert_eq!(
            base(Some(&kept), 1 << 30, &ours, true, now).as_deref(),
            Some("hearth-backup-1")
        );
        // No record, files missing, another size, another run's bitmap: a whole copy.
        assert_eq!(base(None, 1 << 30, &ours, true, now), None);
        assert_eq!(base(Some(&kept), 1 << 30, &ours, false, now), None);
        assert_eq!(base(Some(&kept), 2 << 30, &ours, true, now), None);
        let theirs = [bitmap("hearth-backup-2")];
        assert_eq!(base(Some(&kept), 1 << 30, &theirs, true, now), None);
        // And once in a while all the same.
        let later = 1_000 + WHOLE_EVERY_MS;
        assert_eq!(base(Some(&kept), 1 << 30, &ours, true, later), None);
        // A bitmap QEMU could not keep (its process died), stopped or in use: the same.
        for spoil in [
            |b: &mut Bitmap| b.inconsistent = true,
            |b: &mut Bitmap| b.recording = false,
            |b: &mut Bitmap| b.busy = true,
        ] {
            let mut b = bitmap("hearth-backup-1");
            spoil(&mut b);
            assert_eq!(base(Some(&kept), 1 << 30, &[b], true, now), None);
        }
    }

    #[test]
    fn a_nodes_size_and_bitmaps_are_read_from_query_named_block_nodes() {
        let nodes = serde_json::json!([
            {"node-name": "f", "drv": "file"},
            {"node-name": "d", "drv": "qcow2", "image": {"virtual-size": 1073741824}, "dirty-bitmaps": [
                {"name": "hearth-backup-1", "recording": true, "persistent": true, "busy": false, "granularity": 65536, "count": 0},
                {"name": "x", "recording": false, "busy": false, "inconsistent": true, "granularity": 65536, "count": 0}
            ]}
        ]);
        let (driver, size, bitmaps) = node_info(&nodes, "d").unwrap();
        assert_eq!((driver.as_str(), size), ("qcow2", Some(1 << 30)));
        assert_eq!(bitmaps.len(), 2);
        assert!(bitmaps[1].inconsistent && !bitmaps[1].recording);
        assert_eq!(node_info(&nodes, "f").unwrap().2, vec![]);
        assert!(node_info(&nodes, "nope").is_none());
    }

    #[test]
    fn an_empty_copy_has_its_descriptor_and_sparse_parts_and_no_state() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("vm-1.last-backup");
        std::fs::create_dir_all(&at).unwrap();
        std::fs::write(at.join(STATE), b"{}").unwrap();
        std::fs::write(at.join("part-00009.raw"), b"old").unwrap();
        make_empty(&at, 9 << 20).unwrap();
        assert!(!at.join(STATE).exists());
        assert!(!at.join("part-00009.raw").exists());
        assert!(files_whole(&at, 9 << 20));
        assert!(!files_whole(&at, 10 << 20));
        let kept = Kept {
            bitmap: "hearth-backup-1".into(),
            size: 9 << 20,
            whole_ms: 1,
        };
        commit(&at, &kept).unwrap();
        assert_eq!(read_kept(&at), Some(kept));
        // QEMU reads it as a disk of that size, its parts in order.
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(at.join(DESCRIPTOR))
            .output()
            .unwrap();
        let info: Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["virtual-size"], 9 << 20, "{info}");
        let extents = info["format-specific"]["data"]["extents"]
            .as_array()
            .unwrap();
        let names: Vec<&str> = (extents.iter())
            .map(|e| e["filename"].as_str().unwrap().rsplit('/').next().unwrap())
            .collect();
        assert_eq!(
            names,
            ["part-00000.raw", "part-00001.raw", "part-00002.raw"]
        );
        assert!(make_empty(&at, 1000).is_err());
        // Room: a small disk fits; one larger than any filesystem here does not, and the
        // error says so.
        room_for(&at, 9 << 20).unwrap();
        let error = room_for(&at, u64::MAX / 2).unwrap_err().to_string();
        assert!(error.contains("no room for a whole copy"), "{error}");
    }
}
