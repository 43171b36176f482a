//! Disks on Ceph RBD (`docs/rbd.md`), through QEMU's own rbd driver (`qemu-block-extra`) and
//! Ceph's `rbd` and `ceph` tools: each image is imported once into the pool as a protected
//! snapshot, `hearth-base-SHA@base`; a VM's disk is a clone of it, `hearth-ID-gGENERATION`,
//! so a recreated VM never meets its old disk under the new name; the VM's directory holds
//! only a handle (`rbd`, naming the image, and the generation file). Fencing is Ceph's own:
//! the QEMU clients that wrote a disk are put on the OSD blocklist before another worker
//! opens it, and a blocklisted client's writes are refused.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{DiskError, io_error};

/// The handle in a VM's directory: the `POOL/IMAGE` of its disk.
pub const HANDLE: &str = "rbd";
/// The snapshot of an imported image that disks are cloned from.
const BASE_SNAP: &str = "base";
/// The snapshots a stopped VM's backup reads its disk from start with this.
const BACKUP_SNAP: &str = "hearth-backup-";
/// How long a fenced client stays on the blocklist: a year, longer than any host is cut off
/// and comes back with its QEMU still running (its agent stops that QEMU when it returns).
const BLOCKLIST_SECS: &str = "31536000";

/// How this worker reaches the co-op's Ceph cluster (`[ceph]` in its config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ceph {
    /// The cluster's config file (monitors), `ceph.conf`.
    pub conf: PathBuf,
    /// The cephx user, without `client.`.
    pub user: String,
    /// The user's keyring; none: the one `conf` names (or no cephx).
    pub keyring: Option<PathBuf>,
}

/// The backup snapshots in `rbd snap ls --format json`'s `listed`.
pub fn backup_snapshots(listed: &str) -> Vec<String> {
    let snaps: Vec<Value> = serde_json::from_str(listed).unwrap_or_default();
    (snaps.iter())
        .filter_map(|s| s["name"].as_str())
        .filter(|name| name.starts_with(BACKUP_SNAP))
        .map(str::to_owned)
        .collect()
}

/// The name of the VM's disk image of `generation`.
pub fn disk_image(id: &str, generation: u64) -> String {
    format!("hearth-{id}-g{generation}")
}

/// The name of a disk restored from a backup for the VM's disk of `generation`, until the
/// cluster has recorded that generation as the restore's: a name no generation's disk has,
/// so a restore given up never leaves an image another disk could be mistaken for.
pub fn restored_image(id: &str, generation: u64) -> String {
    format!("{}.restored", disk_image(id, generation))
}

/// The name of an image file imported into a pool, by its sha256.
pub fn base_image(sha256: &str) -> String {
    format!("hearth-base-{}", &sha256[..sha256.len().min(32)])
}

/// Every string under an `address` key anywhere in `json` (the shapes of `rbd status` and
/// `rbd lock ls` differ between Ceph releases).
pub fn addresses(json: &str) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match v {
                        Value::String(s) if key == "address" && !s.is_empty() => {
                            out.push(s.clone())
                        }
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(value) = serde_json::from_str::<Value>(json) {
        walk(&value, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

/// Reads the handle in `dir`: the disk's `(pool, image)`, if there is one.
pub fn read_handle(dir: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(dir.join(HANDLE)).ok()?;
    let (pool, image) = text.trim().split_once('/')?;
    Some((pool.to_owned(), image.to_owned()))
}

impl Ceph {
    /// QEMU's file name of `pool/image` (`rbd:` with this worker's user, config and keyring).
    /// The config check refuses `:` and `,` in the paths.
    pub fn qemu_file(&self, pool: &str, image: &str) -> String {
        let mut file = format!(
            "rbd:{pool}/{image}:id={}:conf={}",
            self.user,
            self.conf.display()
        );
        if let Some(keyring) = &self.keyring {
            file.push_str(&format!(":keyring={}", keyring.display()));
        }
        file
    }

    fn tool(&self, tool: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(tool);
        command.arg("-c").arg(&self.conf).args(["--id", &self.user]);
        if let Some(keyring) = &self.keyring {
            command.arg("--keyring").arg(keyring);
        }
        if tool == "ceph" {
            command.args(["--connect-timeout", "20"]);
        }
        command.stdin(std::process::Stdio::null());
        command
    }

    /// Runs `tool ARGS`: its output, or why not.
    async fn run(&self, tool: &str, args: &[&str]) -> Result<String, DiskError> {
        let output = self.tool(tool).args(args).output().await.map_err(|e| {
            DiskError::Ceph(format!(
                "cannot run {tool} (apt-get install ceph-common): {e}"
            ))
        })?;
        match output.status.success() {
            true => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
            false => Err(DiskError::Ceph(format!(
                "{tool} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ))),
        }
    }

    /// Whether `pool/image` exists; an error when Ceph could not say.
    pub async fn exists(&self, pool: &str, image: &str) -> Result<bool, DiskError> {
        let spec = format!("{pool}/{image}");
        match self.run("rbd", &["info", &spec]).await {
            Ok(_) => Ok(true),
            Err(DiskError::Ceph(why)) if why.contains("No such file") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The size of `pool/image` in bytes.
    async fn size(&self, pool: &str, image: &str) -> Result<u64, DiskError> {
        let spec = format!("{pool}/{image}");
        let json = self
            .run("rbd", &["info", "--format", "json", &spec])
            .await?;
        serde_json::from_str::<Value>(&json)
            .ok()
            .and_then(|v| v.get("size")?.as_u64())
            .ok_or_else(|| DiskError::Ceph(format!("rbd info {spec}: no size in {json}")))
    }

    /// Imports the image file at `path` (of `format`) into `pool` as `base`, with its protected
    /// snapshot, unless it is there already. Made under a name of its own and renamed when
    /// whole, so a worker never clones a half-imported image, and two workers importing at
    /// once end with one.
    pub async fn import(
        &self,
        pool: &str,
        base: &str,
        path: &Path,
        format: &str,
    ) -> Result<(), DiskError> {
        if self.exists(pool, base).await? {
            return Ok(());
        }
        let partial = format!("{base}.partial-{}", std::process::id());
        let _ = self.remove_with_base(pool, &partial).await;
        let target = self.qemu_file(pool, &partial);
        let args: [&std::ffi::OsStr; 7] = [
            "convert".as_ref(),
            "-f".as_ref(),
            format.as_ref(),
            "-O".as_ref(),
            "raw".as_ref(),
            path.as_os_str(),
            target.as_ref(),
        ];
        let made = async {
            crate::disk::qemu_img("convert", &args).await?;
            let snap = format!("{pool}/{partial}@{BASE_SNAP}");
            self.run("rbd", &["snap", "create", &snap]).await?;
            self.run("rbd", &["snap", "protect", &snap]).await?;
            let (from, to) = (format!("{pool}/{partial}"), format!("{pool}/{base}"));
            self.run("rbd", &["rename", &from, &to]).await.map(|_| ())
        }
        .await;
        match made {
            Ok(()) => Ok(()),
            Err(error) => {
                let _ = self.remove_with_base(pool, &partial).await;
                match self.exists(pool, base).await {
                    // Another worker imported it meanwhile.
                    Ok(true) => Ok(()),
                    _ => Err(error),
                }
            }
        }
    }

    /// Removes a half-imported image and its snapshot.
    async fn remove_with_base(&self, pool: &str, image: &str) -> Result<(), DiskError> {
        let snap = format!("{pool}/{image}@{BASE_SNAP}");
        let _ = self.run("rbd", &["snap", "unprotect", &snap]).await;
        let _ = self.run("rbd", &["snap", "rm", &snap]).await;
        self.run("rbd", &["rm", &format!("{pool}/{image}")])
            .await
            .map(|_| ())
    }

    /// Makes `pool/image` a clone of `base`'s snapshot of at least `bytes`, unless it is
    /// there already (made for this generation before, never run: the caller's rule): true
    /// when it made one.
    pub async fn clone_disk(
        &self,
        pool: &str,
        base: &str,
        image: &str,
        bytes: u64,
    ) -> Result<bool, DiskError> {
        if self.exists(pool, image).await? {
            return Ok(false);
        }
        let parent = format!("{pool}/{base}@{BASE_SNAP}");
        let child = format!("{pool}/{image}");
        self.run("rbd", &["clone", &parent, &child]).await?;
        if self.size(pool, image).await? < bytes {
            let size = format!("{}M", bytes.div_ceil(1 << 20));
            self.run("rbd", &["resize", "--size", &size, &child])
                .await?;
        }
        Ok(true)
    }

    /// Writes the raw disk image at `path` into `pool` as `image`, a new image (one of that
    /// name there before, left by an attempt that stopped, is replaced). Only for a
    /// restored disk's own name ([`restored_image`]), never a VM's disk.
    pub async fn import_raw(&self, pool: &str, image: &str, path: &Path) -> Result<(), DiskError> {
        self.remove(pool, image).await?;
        let target = self.qemu_file(pool, image);
        let args: [&std::ffi::OsStr; 8] = [
            "convert".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "raw".as_ref(),
            "-O".as_ref(),
            "raw".as_ref(),
            path.as_os_str(),
            target.as_ref(),
        ];
        crate::disk::qemu_img("convert", &args).await.map(drop)
    }

    /// Renames `pool/from` to `pool/to`.
    pub async fn rename(&self, pool: &str, from: &str, to: &str) -> Result<(), DiskError> {
        let (from, to) = (format!("{pool}/{from}"), format!("{pool}/{to}"));
        self.run("rbd", &["rename", &from, &to]).await.map(|_| ())
    }

    /// Removes `pool/image` for good (a VM deleted by its owner or an admin), with any
    /// snapshot a backup cut short left on it (Ceph removes no image that has one).
    pub async fn remove(&self, pool: &str, image: &str) -> Result<(), DiskError> {
        if !self.exists(pool, image).await? {
            return Ok(());
        }
        self.drop_backup_snapshots(pool, image).await?;
        self.run("rbd", &["rm", "--no-progress", &format!("{pool}/{image}")])
            .await
            .map(|_| ())
    }

    /// Takes a fresh snapshot of `pool/image` for a backup to read a stopped VM's disk from,
    /// which nothing writes however the VM is started meanwhile, here or on another worker
    /// (RBD has no file locks to refuse that); first drops those runs cut short left. Its
    /// name; [`Ceph::drop_backup_snapshots`] removes it.
    pub async fn backup_snapshot(&self, pool: &str, image: &str) -> Result<String, DiskError> {
        self.drop_backup_snapshots(pool, image).await?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("{BACKUP_SNAP}{nanos}-{}", std::process::id());
        let snap = format!("{pool}/{image}@{name}");
        self.run("rbd", &["snap", "create", &snap]).await?;
        Ok(name)
    }

    /// Removes every backup snapshot of `pool/image`.
    pub async fn drop_backup_snapshots(&self, pool: &str, image: &str) -> Result<(), DiskError> {
        let spec = format!("{pool}/{image}");
        let listed = self
            .run("rbd", &["snap", "ls", "--format", "json", &spec])
            .await?;
        for name in backup_snapshots(&listed) {
            let snap = format!("{spec}@{name}");
            self.run("rbd", &["snap", "rm", &snap]).await?;
        }
        Ok(())
    }

    /// The client addresses that watch `pool/image` or hold its lock: the QEMU processes
    /// that have it open.
    pub async fn clients(&self, pool: &str, image: &str) -> Result<Vec<String>, DiskError> {
        let spec = format!("{pool}/{image}");
        let status = self
            .run("rbd", &["status", "--format", "json", &spec])
            .await?;
        let locks = self
            .run("rbd", &["lock", "ls", "--format", "json", &spec])
            .await?;
        let mut found = addresses(&status);
        found.extend(addresses(&locks));
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// Puts client `address` on the OSD blocklist: from now on Ceph refuses its every
    /// operation.
    pub async fn blocklist(&self, address: &str) -> Result<(), DiskError> {
        self.run(
            "ceph",
            &["osd", "blocklist", "add", address, BLOCKLIST_SECS],
        )
        .await
        .map(|_| ())
    }
}

/// Writes the handle of `pool/image` at `generation` into `dir`: the generation first, so a
/// handle always has one.
pub fn write_handle(dir: &Path, pool: &str, image: &str, generation: u64) -> Result<(), DiskError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    crate::disk::write_generation(dir, generation)?;
    let path = dir.join(HANDLE);
    let partial = dir.join("rbd.partial");
    std::fs::write(&partial, format!("{pool}/{image}\n")).map_err(io_error(&partial))?;
    std::fs::rename(&partial, &path).map_err(io_error(&path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_backup_snapshots_are_listed_for_removal() {
        let listed = r#"[{"id":4,"name":"base","size":1048576,"protected":"true"},
            {"id":9,"name":"hearth-backup-1764000000000000000-77","size":1048576,"protected":"false"},
            {"id":10,"name":"admins-own","size":1048576,"protected":"false"}]"#;
        assert_eq!(
            backup_snapshots(listed),
            ["hearth-backup-1764000000000000000-77"]
        );
        assert!(backup_snapshots("[]").is_empty());
        assert!(backup_snapshots("not json").is_empty());
    }

    #[test]
    fn addresses_are_found_in_status_and_lock_listings() {
        let status = r#"{"watchers":[{"address":"127.0.0.1:0/3012","client":4157,"cookie":1}]}"#;
        assert_eq!(addresses(status), ["127.0.0.1:0/3012"]);
        let locks = r#"[{"id":"auto 1","locker":"client.4157","address":"127.0.0.1:0/3012"},{"address":"10.0.0.2:0/9"}]"#;
        assert_eq!(addresses(locks), ["10.0.0.2:0/9", "127.0.0.1:0/3012"]);
        assert!(addresses("not json").is_empty());
        assert!(addresses(r#"{"watchers":[]}"#).is_empty());
    }

    #[test]
    fn names_and_qemu_files() {
        assert_eq!(disk_image("vm-12", 3), "hearth-vm-12-g3");
        assert_eq!(
            base_image(&"ab".repeat(32)),
            format!("hearth-base-{}", "ab".repeat(16))
        );
        let ceph = Ceph {
            conf: "/etc/ceph/ceph.conf".into(),
            user: "hearth".into(),
            keyring: Some("/etc/ceph/k".into()),
        };
        assert_eq!(
            ceph.qemu_file("rbd", "hearth-vm-1-g1"),
            "rbd:rbd/hearth-vm-1-g1:id=hearth:conf=/etc/ceph/ceph.conf:keyring=/etc/ceph/k"
        );
        let dir = tempfile::tempdir().unwrap();
        write_handle(dir.path(), "rbd", "hearth-vm-1-g2", 2).unwrap();
        assert_eq!(
            read_handle(dir.path()),
            Some(("rbd".into(), "hearth-vm-1-g2".into()))
        );
        assert_eq!(crate::disk::read_generation(dir.path()).unwrap(), 2);
    }
}
