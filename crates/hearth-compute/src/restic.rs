//! Backups in a restic repository, through Debian's `restic` program. A VM's disk goes in as
//! the directory of its copy kept as of its last backup (`ID.last-backup/`: a descriptor
//! and the disk's parts, `hearth_qemu::last_backup`), tagged `vm=ID`; restic reads only the
//! parts whose size or times changed since its parent snapshot (the same host's last of
//! that directory), and its content-defined chunks store only what changed within them.
//! Older snapshots hold the disk as one file read from standard input (`ID.raw`); `dump`
//! writes either kind back out as one raw disk. Snapshots are listed by tag. The
//! repository's password is only ever in its file (`RESTIC_PASSWORD_FILE`), never on a
//! command line or in a log. The answers' JSON is read by the pure `summary`, `snapshots`
//! and `disk_files`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;

/// A restic repository: where it is (a path, `sftp:…`, `rest:…`, `s3:…`) and the file
/// holding its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    pub location: String,
    pub password_file: PathBuf,
    /// restic's local cache of the repository's metadata.
    pub cache_dir: PathBuf,
    /// More environment for restic: a backend's keys, read from the target's `env_file`.
    pub env: Vec<(String, String)>,
}

/// The `KEY=value` lines of an env file (blank lines and `#` comments skipped).
pub fn env_lines(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut env = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: not KEY=value", n + 1));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            // The line is never quoted: it may hold a secret.
            return Err(format!("line {}: not a variable name before =", n + 1));
        }
        env.push((key.to_owned(), value.trim().to_owned()));
    }
    Ok(env)
}

/// What one backup stored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Summary {
    /// The snapshot's short id.
    pub snapshot_id: String,
    /// Bytes read from the copy.
    pub total_bytes_processed: u64,
    /// Bytes new to the repository (after deduplication, before compression).
    pub data_added: u64,
    /// Files read again since the parent snapshot, and files skipped as unchanged.
    #[serde(default)]
    pub files_changed: u64,
    #[serde(default)]
    pub files_unmodified: u64,
}

/// One snapshot as `restic snapshots --json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub short_id: String,
    /// RFC 3339.
    pub time: String,
    pub hostname: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
}

/// The file name a VM's disk has inside its older snapshots, taken from standard input.
pub fn file_name(vm: &str) -> String {
    format!("{vm}.raw")
}

/// One entry of `restic ls --json`.
#[derive(Debug, Deserialize)]
struct Node {
    #[serde(default)]
    struct_type: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    size: u64,
}

/// The files of VM `vm`'s disk in a snapshot, from `restic ls --json`'s output, in disk
/// order, without their leading `/`: its parts, or the one file of an older snapshot. The
/// parts must run from the first with none missing.
pub fn disk_files(vm: &str, listing: &str) -> Result<Vec<(String, u64)>, String> {
    let single = format!("/{}", file_name(vm));
    let files: Vec<Node> = (listing.lines())
        .filter_map(|l| serde_json::from_str::<Node>(l).ok())
        .filter(|n| n.struct_type == "node" && n.kind == "file")
        .collect();
    if let Some(one) = files.iter().find(|n| n.path == single) {
        return Ok(vec![(single[1..].to_owned(), one.size)]);
    }
    let mut parts: Vec<(usize, &Node)> = (files.iter())
        .filter_map(|n| {
            let name = n.path.rsplit('/').next()?;
            Some((hearth_qemu::last_backup::part_index(name)?, n))
        })
        .collect();
    parts.sort_by_key(|(i, _)| *i);
    if parts.is_empty() {
        return Err(format!("the snapshot holds no disk of {vm}"));
    }
    if let Some((i, _)) = parts.iter().enumerate().find(|(n, (i, _))| n != i) {
        return Err(format!("the snapshot's disk of {vm} lacks its part {i}"));
    }
    Ok((parts.into_iter())
        .map(|(_, n)| (n.path.trim_start_matches('/').to_owned(), n.size))
        .collect())
}

/// Writes the contents of `parts` (paths, sizes), in that order, one after another into a
/// new file `target`, from the tar stream `tar` of their directory (other entries skipped).
/// The file is removed if it cannot be written whole.
pub fn write_parts(
    tar: impl std::io::Read,
    parts: &[(String, u64)],
    target: &Path,
) -> Result<(), String> {
    let written = write_parts_into(tar, parts, target);
    if written.is_err() {
        let _ = std::fs::remove_file(target);
    }
    written
}

fn write_parts_into(
    tar: impl std::io::Read,
    parts: &[(String, u64)],
    target: &Path,
) -> Result<(), String> {
    let at = |e: std::io::Error| format!("{}: {e}", target.display());
    let mut out = std::fs::File::create(target).map_err(at)?;
    let mut next = parts.iter().peekable();
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(|e| format!("restic dump: {e}"))? {
        let mut entry = entry.map_err(|e| format!("restic dump: {e}"))?;
        let path = entry.path().map_err(|e| format!("restic dump: {e}"))?;
        let name = path.to_string_lossy().trim_start_matches('/').to_owned();
        // The stream is read to its end: restic fails when its reader goes away early.
        let Some((want, size)) = next.peek() else {
            continue;
        };
        if name != *want {
            continue;
        }
        let copied = std::io::copy(&mut entry, &mut out).map_err(at)?;
        if copied != *size {
            return Err(format!(
                "restic dump: {name} held {copied} bytes, not {size}"
            ));
        }
        next.next();
    }
    // Whatever follows the archive's end, so that restic never writes into a closed pipe.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink())
        .map_err(|e| format!("restic dump: {e}"))?;
    if let Some((missing, _)) = next.next() {
        return Err(format!(
            "restic dump: no {missing} in the snapshot's stream, or out of order"
        ));
    }
    out.sync_all().map_err(at)
}

/// The tag of a VM's snapshots.
pub fn tag(vm: &str) -> String {
    format!("vm={vm}")
}

/// The summary line of `restic backup --json`'s output.
pub fn summary(output: &str) -> Result<Summary, String> {
    output
        .lines()
        .rev()
        .filter(|l| l.contains("\"message_type\":\"summary\""))
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| format!("restic backup printed no summary: {}", tail(output)))
}

/// `restic snapshots --json`'s list, oldest first.
pub fn snapshots(output: &str) -> Result<Vec<Snapshot>, String> {
    let mut list: Vec<Snapshot> = serde_json::from_str(output.trim())
        .map_err(|e| format!("restic snapshots: {e}: {}", tail(output)))?;
    list.sort_by(|a, b| a.time.cmp(&b.time));
    Ok(list)
}

/// One group of `restic forget --json`'s output: the snapshots it removed.
#[derive(Debug, Deserialize)]
struct ForgetGroup {
    #[serde(default)]
    remove: Option<Vec<Snapshot>>,
}

/// The short ids of the snapshots `restic forget --json` removed, in its output's order.
pub fn forgotten(output: &str) -> Result<Vec<String>, String> {
    // With --prune, prune's report and progress (`[0:00] 100.00% …`) follow the JSON line.
    let parsed = (output.lines()).find_map(|l| serde_json::from_str::<Vec<ForgetGroup>>(l).ok());
    let groups = match parsed {
        Some(groups) => groups,
        None if !output.contains("[{") => Vec::new(),
        None => return Err(format!("restic forget printed no list: {}", tail(output))),
    };
    Ok(groups
        .into_iter()
        .flat_map(|g| g.remove.unwrap_or_default())
        .map(|s| s.short_id)
        .collect())
}

/// How long a run waits for another's lock on the repository.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `attempt` until the repository is not locked by another run (a forget or prune
/// locks it whole), for up to [`LOCK_WAIT`]: what restic 0.16's `--retry-lock` does, which
/// Debian bookworm's 0.14 lacks.
async fn waiting_out_locks<T, F, Fut>(attempt: F) -> Result<T, String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match attempt().await {
            Err(error) if locked(&error) && std::time::Instant::now() < deadline => {
                tracing::debug!(%error, "the repository is locked; trying again");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            done => return done,
        }
    }
}

/// Whether restic failed because another run holds a lock it needs.
fn locked(error: &str) -> bool {
    error.contains("repository is already locked")
}

/// The last few hundred bytes of `text`, for an error message.
fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(400);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].trim()
}

impl Repo {
    fn command(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("restic");
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RESTIC_REPOSITORY", &self.location)
            .env("RESTIC_PASSWORD_FILE", &self.password_file)
            .env("RESTIC_CACHE_DIR", &self.cache_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs restic with `args` (and `stdin` from a file); its standard output, or why not.
    async fn run(&self, args: &[&str], stdin: Option<&Path>) -> Result<String, String> {
        let what = args.first().unwrap_or(&"");
        self.retrying_lock(what, || {
            let mut command = self.command();
            command.args(args);
            if let Some(path) = stdin {
                let file =
                    std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
                command.stdin(file);
            }
            Ok(command)
        })
        .await
    }

    /// Runs the command `make` gives (restic `what`), waiting out another run's lock.
    async fn retrying_lock(
        &self,
        what: &str,
        make: impl Fn() -> Result<tokio::process::Command, String>,
    ) -> Result<String, String> {
        waiting_out_locks(|| async { Self::output(make()?, what).await }).await
    }

    /// Runs `command` (restic `what`); its standard output, or why not.
    async fn output(mut command: tokio::process::Command, what: &str) -> Result<String, String> {
        let output = command
            .output()
            .await
            .map_err(|e| format!("cannot run restic (apt-get install restic): {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        match output.status.success() {
            true => Ok(stdout),
            false => Err(format!(
                "restic {what} failed: {}",
                tail(&String::from_utf8_lossy(&output.stderr))
            )),
        }
    }

    /// Makes the repository unless it is there already. One at a time in this process: a
    /// run that read a repository another was still making would find it damaged.
    pub async fn ensure(&self) -> Result<(), String> {
        static MAKING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one = MAKING.lock().await;
        if self.run(&["cat", "config"], None).await.is_ok() {
            return Ok(());
        }
        match self.run(&["init"], None).await {
            // Made meanwhile by another node: it is there.
            Err(error) if error.contains("already exists") => {
                self.run(&["cat", "config"], None).await.map(|_| ())
            }
            done => done.map(|_| ()),
        }
    }

    /// Stores VM `vm`'s copy kept in directory `dir` as its snapshot, made by `host`. restic
    /// rereads only the files whose size or times changed since snapshot `since`; with none,
    /// every file (restic's own choice of parent could be a snapshot nobody recorded, read
    /// while a run cut short still wrote the copy).
    pub async fn backup(
        &self,
        vm: &str,
        host: &str,
        (dir, hold): (&Path, &hearth_qemu::last_backup::Hold),
        since: Option<&str>,
    ) -> Result<Summary, String> {
        let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
            return Err(format!("{} is not a directory's path", dir.display()));
        };
        let tag = tag(vm);
        let mut args = vec!["backup", "--json", "--tag", &tag, "--host", host];
        match since {
            Some(snapshot) => args.extend(["--parent", snapshot]),
            None => args.push("--force"),
        }
        let output = self
            .retrying_lock("backup", || {
                let mut command = self.command();
                // From beside it, so that the snapshot holds `/ID.last-backup/…`.
                command.current_dir(parent).args(&args).arg(name);
                // restic shares the hold on the copy: an agent that stops meanwhile leaves
                // it with restic, so the next one rewrites the copy only once it is read.
                let stdin = hold
                    .for_child()
                    .map_err(|e| format!("holding the copy: {e}"))?;
                command.stdin(stdin);
                Ok(command)
            })
            .await?;
        summary(&output)
    }

    /// Stores the file at `path` as a snapshot holding `name`, tagged `tag`, made by `host`.
    pub async fn store(
        &self,
        name: &str,
        tag: &str,
        host: &str,
        path: &Path,
    ) -> Result<Summary, String> {
        let args = [
            "backup",
            "--json",
            "--stdin",
            "--stdin-filename",
            name,
            "--tag",
            tag,
            "--host",
            host,
        ];
        summary(&self.run(&args, Some(path)).await?)
    }

    /// Forgets VM `vm`'s snapshots that `keep` does not keep, its days counted in time
    /// zone `time_zone`, and prunes the data no snapshot uses any more: the short ids of
    /// the snapshots forgotten.
    pub async fn forget(
        &self,
        vm: &str,
        keep: &hearth_types::backup::Keep,
        time_zone: &str,
    ) -> Result<Vec<String>, String> {
        let keep = [
            ("--keep-daily", keep.daily),
            ("--keep-weekly", keep.weekly),
            ("--keep-monthly", keep.monthly),
        ];
        self.forget_tagged(&tag(vm), &keep, time_zone, true).await
    }

    /// Forgets the snapshots tagged `tag` that no `keep` flag (`--keep-last`, …, and how
    /// many) keeps, days counted in `time_zone`, and with `prune` removes the data no
    /// snapshot uses any more: the short ids of the snapshots forgotten.
    pub async fn forget_tagged(
        &self,
        tag: &str,
        keep: &[(&str, u32)],
        time_zone: &str,
        prune: bool,
    ) -> Result<Vec<String>, String> {
        let mut args: Vec<String> = ["forget", "--json", "--tag", tag, "--group-by", "tags"]
            .map(str::to_owned)
            .to_vec();
        if prune {
            args.push("--prune".into());
        }
        for (flag, n) in keep {
            args.extend([flag.to_string(), n.to_string()]);
        }
        let output = self
            .retrying_lock("forget", || {
                let mut command = self.command();
                command.env("TZ", time_zone).args(&args);
                Ok(command)
            })
            .await?;
        forgotten(&output)
    }

    /// Writes the file `name` of snapshot `id` to standard output, as bytes.
    pub async fn dump_bytes(&self, id: &str, name: &str) -> Result<Vec<u8>, String> {
        waiting_out_locks(|| self.dump_bytes_once(id, name)).await
    }

    async fn dump_bytes_once(&self, id: &str, name: &str) -> Result<Vec<u8>, String> {
        let mut command = self.command();
        command.args(["dump", id, &format!("/{name}")]);
        let output = command
            .output()
            .await
            .map_err(|e| format!("cannot run restic (apt-get install restic): {e}"))?;
        match output.status.success() {
            true => Ok(output.stdout),
            false => Err(format!(
                "restic dump failed: {}",
                tail(&String::from_utf8_lossy(&output.stderr))
            )),
        }
    }

    /// Every snapshot in the repository, oldest first.
    pub async fn snapshots(&self) -> Result<Vec<Snapshot>, String> {
        snapshots(&self.run(&["snapshots", "--json"], None).await?)
    }

    /// Writes the file `name` of snapshot `id` to `target` (replaced if there).
    pub async fn dump_file(&self, id: &str, name: &str, target: &Path) -> Result<(), String> {
        waiting_out_locks(|| self.dump_file_once(id, name, target, false)).await
    }

    /// Writes the `parts` of snapshot `id` (all in one directory) one after another into
    /// `target`, from one `restic dump` of their directory (a tar stream): one run, not one
    /// per part.
    async fn dump_parts_once(
        &self,
        id: &str,
        parts: &[(String, u64)],
        target: &Path,
    ) -> Result<(), String> {
        let dir = (parts.first())
            .and_then(|(name, _)| name.rsplit_once('/'))
            .map_or("", |(dir, _)| dir);
        let mut command = self.command();
        command
            .args(["dump", id, &format!("/{dir}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot run restic (apt-get install restic): {e}"))?;
        let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err("restic dump: no pipes".into());
        };
        let said = tokio::spawn(async move {
            let mut text = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
            text
        });
        let stdout = std::fs::File::from(
            stdout
                .into_owned_fd()
                .map_err(|e| format!("restic dump: {e}"))?,
        );
        let (names, at) = (parts.to_vec(), target.to_owned());
        let written = tokio::task::spawn_blocking(move || write_parts(stdout, &names, &at))
            .await
            .map_err(|e| format!("restic dump: {e}"))?;
        let status = child
            .wait()
            .await
            .map_err(|e| format!("restic dump: {e}"))?;
        let said = said.await.unwrap_or_default();
        match (status.success(), written) {
            (true, Ok(())) => Ok(()),
            (true, Err(error)) => Err(error),
            (false, _) => {
                let _ = std::fs::remove_file(target);
                Err(format!("restic dump failed: {}", tail(&said)))
            }
        }
    }

    /// Writes the file `name` of snapshot `id` to `target`: replacing it, or after its end.
    async fn dump_file_once(
        &self,
        id: &str,
        name: &str,
        target: &Path,
        append: bool,
    ) -> Result<(), String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(target)
            .map_err(|e| format!("{}: {e}", target.display()))?;
        let path = format!("/{name}");
        let mut command = self.command();
        // Not `output()`, which would pipe standard output away from the file.
        command
            .args(["dump", id, &path])
            .stdout(file)
            .stderr(Stdio::piped());
        let output = command
            .spawn()
            .map_err(|e| format!("cannot run restic (apt-get install restic): {e}"))?
            .wait_with_output()
            .await
            .map_err(|e| format!("restic dump: {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        let _ = std::fs::remove_file(target);
        Err(format!(
            "restic dump failed: {}",
            tail(&String::from_utf8_lossy(&output.stderr))
        ))
    }

    /// VM `vm`'s snapshots, oldest first.
    pub async fn list(&self, vm: &str) -> Result<Vec<Snapshot>, String> {
        let tag = tag(vm);
        snapshots(
            &self
                .run(&["snapshots", "--json", "--tag", &tag], None)
                .await?,
        )
    }

    /// Writes VM `vm`'s disk of snapshot `id` to `target` (replaced if there) as one raw
    /// disk; checks its size.
    pub async fn dump(&self, vm: &str, id: &str, target: &Path) -> Result<(), String> {
        let listing = self.run(&["ls", "--json", id], None).await?;
        let files = disk_files(vm, &listing)?;
        match files.as_slice() {
            [(one, _)] if one == &file_name(vm) => {
                waiting_out_locks(|| self.dump_file_once(id, one, target, false)).await?;
            }
            _ => waiting_out_locks(|| self.dump_parts_once(id, &files, target)).await?,
        }
        let size: u64 = files.iter().map(|f| f.1).sum();
        let written = std::fs::metadata(target).map_or(0, |m| m.len());
        if written != size {
            let _ = std::fs::remove_file(target);
            return Err(format!(
                "restic dump wrote {written} bytes of {vm}'s disk of {size}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_the_last_summary_line() {
        let output = "{\"message_type\":\"status\",\"percent_done\":0.5}\n{\"message_type\":\"summary\",\"files_new\":1,\"data_added\":3000357,\"total_bytes_processed\":3000000,\"snapshot_id\":\"3ebeda0d\"}\n";
        assert_eq!(
            summary(output).unwrap(),
            Summary {
                snapshot_id: "3ebeda0d".into(),
                total_bytes_processed: 3_000_000,
                data_added: 3_000_357,
                files_changed: 0,
                files_unmodified: 0,
            }
        );
        assert!(
            summary("Fatal: wrong password")
                .unwrap_err()
                .contains("wrong password")
        );
    }

    #[test]
    fn a_disk_dumps_from_its_parts_in_order_or_from_its_one_file() {
        let listing = r#"{"time":"2026-12-06T12:11:24Z","paths":["/v/vm-1.last-backup"],"struct_type":"snapshot"}
{"name":"vm-1.last-backup","type":"dir","path":"/vm-1.last-backup","struct_type":"node"}
{"name":"part-00001.raw","type":"file","path":"/vm-1.last-backup/part-00001.raw","size":512,"struct_type":"node"}
{"name":"disk.vmdk","type":"file","path":"/vm-1.last-backup/disk.vmdk","size":300,"struct_type":"node"}
{"name":"part-00000.raw","type":"file","path":"/vm-1.last-backup/part-00000.raw","size":4194304,"struct_type":"node"}"#;
        assert_eq!(
            disk_files("vm-1", listing).unwrap(),
            [
                ("vm-1.last-backup/part-00000.raw".to_owned(), 4_194_304),
                ("vm-1.last-backup/part-00001.raw".to_owned(), 512),
            ]
        );
        let old = r#"{"name":"vm-1.raw","type":"file","path":"/vm-1.raw","size":1073741824,"struct_type":"node"}"#;
        assert_eq!(
            disk_files("vm-1", old).unwrap(),
            [("vm-1.raw".to_owned(), 1 << 30)]
        );
        let gap = listing.replace("part-00001", "part-00002");
        assert!(disk_files("vm-1", &gap).unwrap_err().contains("part 1"));
        assert!(disk_files("vm-2", "").unwrap_err().contains("no disk"));
    }

    #[test]
    fn parts_are_written_in_order_from_a_tar_stream_and_a_missing_one_fails() {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("vm-1.last-backup/disk.vmdk", b"descriptor".as_slice()),
            ("vm-1.last-backup/part-00000.raw", b"first"),
            ("vm-1.last-backup/part-00001.raw", b"second"),
            ("vm-1.last-backup/state.json", b"{}"),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, data).unwrap();
        }
        let stream = builder.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.raw");
        let parts = [
            ("vm-1.last-backup/part-00000.raw".to_owned(), 5),
            ("vm-1.last-backup/part-00001.raw".to_owned(), 6),
        ];
        write_parts(stream.as_slice(), &parts, &target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"firstsecond");
        let more = [
            parts[0].clone(),
            parts[1].clone(),
            ("vm-1.last-backup/part-00002.raw".to_owned(), 1),
        ];
        assert!(
            write_parts(stream.as_slice(), &more, &target)
                .unwrap_err()
                .contains("part-00002")
        );
        assert!(!target.exists());
        let wrong = [("vm-1.last-backup/part-00000.raw".to_owned(), 4)];
        assert!(write_parts(stream.as_slice(), &wrong, &target).is_err());
        assert!(!target.exists());
    }

    #[test]
    fn env_files_hold_key_value_lines() {
        let env =
            env_lines("# keys\nAWS_ACCESS_KEY_ID=ab\n\nAWS_SECRET_ACCESS_KEY = c=d\n").unwrap();
        assert_eq!(
            env,
            vec![
                ("AWS_ACCESS_KEY_ID".to_owned(), "ab".to_owned()),
                ("AWS_SECRET_ACCESS_KEY".to_owned(), "c=d".to_owned())
            ]
        );
        assert!(env_lines("export X").unwrap_err().starts_with("line 1"));
        assert!(env_lines("A B=1").is_err());
    }

    #[test]
    fn forget_names_the_snapshots_it_removed() {
        let output = r#"[{"tags":["vm=a"],"host":"","paths":null,"keep":[{"time":"2026-12-05T00:04:26Z","hostname":"h3","id":"bc1f","short_id":"bc"}],"remove":[{"time":"2026-12-05T00:04:25Z","hostname":"h2","id":"8860","short_id":"88"},{"time":"2026-12-05T00:04:24Z","hostname":"h1","id":"3087","short_id":"30"}]}]"#;
        assert_eq!(forgotten(output).unwrap(), ["88", "30"]);
        let none = r#"[{"tags":["vm=a"],"keep":[{"time":"2026-12-05T00:04:26Z","hostname":"h3","id":"bc1f","short_id":"bc"}],"remove":null}]"#;
        assert!(forgotten(none).unwrap().is_empty());
        assert!(forgotten("").unwrap().is_empty());
        assert!(forgotten("[{nonsense").is_err());
        // Prune's report follows.
        let pruned =
            format!("{output}\nloading indexes...\n[0:00] 100.00%  1 / 1 snapshots\ndone\n");
        assert_eq!(forgotten(&pruned).unwrap(), ["88", "30"]);
    }

    #[test]
    fn another_runs_lock_is_told_apart() {
        let error = "restic backup failed: unable to create lock in backend: repository is already locked exclusively by PID 3211 on vm by root (UID 0, GID 0)\nlock was created at 2026-12-05 04:47:05 (62.321088ms ago)";
        assert!(locked(error));
        assert!(!locked(
            "restic backup failed: Fatal: wrong password or no key found"
        ));
    }

    #[test]
    fn snapshots_come_oldest_first() {
        let output = r#"[{"time":"2026-12-04T20:31:00Z","hostname":"n1","tags":["vm=vm-1"],"paths":["/vm-1.raw"],"id":"bb","short_id":"b"},
{"time":"2026-12-04T20:30:00Z","hostname":"n1","tags":["vm=vm-1"],"paths":["/vm-1.raw"],"id":"aa","short_id":"a"}]"#;
        let list = snapshots(output).unwrap();
        assert_eq!(
            list.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["aa", "bb"]
        );
        assert_eq!(snapshots("[]").unwrap(), vec![]);
        assert!(snapshots("nonsense").is_err());
    }
}
