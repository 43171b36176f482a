//! A stand-in for QEMU, for the chaos runner and for trying hearth on a machine without
//! QEMU (`[compute] driver = "fake"`): a "running VM" is a directory under the root holding a
//! `running` file with the agent's pid and a console log. It outlives an agent restart, as a
//! daemonized QEMU does, so reconciliation, adoption, placement and deletion run exactly as
//! with real VMs; only the guest is missing. Like the test guest, its "disk" (`disk.img`)
//! counts the boots on it, and each start appends `HEARTH-GUEST-BOOTS n=N gen=G` to the
//! console, so a start on a blank disk after the first (`n=1` twice) is visible.

use std::io::Write;
use std::path::PathBuf;

use hearth_types::compute::{IoLimits, ObservedVm};

use crate::disk::{check_own, read_generation, write_generation};
use crate::driver::VmSpec;
use crate::error::{ControlError, DiskError, ObserveError, StartError, io_error};
use crate::files::{read_present, remove_vm_dir, valid_id, vm_dirs};

/// The fake disk's file: its content is the number of boots on it.
const DISK: &str = "disk.img";

#[derive(Debug)]
pub struct FakeDriver {
    root: PathBuf,
}

impl FakeDriver {
    pub fn new(root: PathBuf) -> FakeDriver {
        FakeDriver { root }
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn marker(&self, id: &str) -> PathBuf {
        self.dir(id).join("running")
    }

    /// Every VM directory, running when its marker is there. An error means the host could
    /// not look, not that nothing runs.
    pub fn observe(&self) -> Result<Vec<ObservedVm>, ObserveError> {
        let mut seen = Vec::new();
        for (id, path) in vm_dirs(&self.root)? {
            let marker = self.marker(&id);
            let pid = read_present(&marker)
                .map_err(io_error(&marker))?
                .and_then(|text| String::from_utf8_lossy(&text).trim().parse().ok());
            seen.push(ObservedVm {
                guard_altered: false,
                disk_present: path.join(DISK).is_file(),
                generation: read_generation(&path)?,
                id,
                pid,
                foreign: false,
                held: false,
                mirroring: None,
            });
        }
        seen.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(seen)
    }

    /// Makes the VM's disk of `spec.generation` (no boots yet) unless it is here: true when
    /// it made one. A disk of another generation is an error, as with QEMU.
    pub async fn create_disk(&self, spec: &VmSpec) -> Result<bool, DiskError> {
        if !valid_id(&spec.id) {
            return Err(DiskError::BadId(spec.id.clone()));
        }
        let dir = self.dir(&spec.id);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let disk = dir.join(DISK);
        if disk.is_file() {
            return check_own(&spec.id, &dir, DISK, spec.generation).map(|()| false);
        }
        write_generation(&dir, spec.generation)?;
        std::fs::write(&disk, b"0\n").map_err(io_error(&disk))?;
        Ok(true)
    }

    /// "Boots" the VM on its own disk: counts the boot on the disk and says so on the console.
    pub async fn start(&self, spec: &VmSpec) -> Result<u32, StartError> {
        if !valid_id(&spec.id) {
            return Err(StartError::BadId(spec.id.clone()));
        }
        let dir = self.dir(&spec.id);
        let marker = self.marker(&spec.id);
        if let Some(pid) = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return Err(StartError::AlreadyRunning(spec.id.clone(), pid));
        }
        check_own(&spec.id, &dir, DISK, spec.generation)?;
        let disk = dir.join(DISK);
        let boots = std::fs::read_to_string(&disk)
            .map_err(io_error(&disk))?
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
            + 1;
        std::fs::write(&disk, format!("{boots}\n")).map_err(io_error(&disk))?;
        let console = dir.join("console.log");
        let address = spec
            .net
            .addresses
            .first()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let lines = format!(
            "HEARTH-GUEST-UP\nHEARTH-GUEST-BOOTS n={boots} gen={}\nHEARTH-GUEST hostname={} ip={address} keys={}\nHEARTH-GUEST-READY\n",
            spec.generation,
            spec.hostname,
            spec.ssh_keys.len()
        );
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&console)
            .and_then(|mut file| file.write_all(lines.as_bytes()))
            .map_err(io_error(&console))?;
        let pid = std::process::id();
        std::fs::write(&marker, pid.to_string()).map_err(io_error(&marker))?;
        Ok(pid)
    }

    /// Stops the VM; one that is not running is stopped already, as with QEMU.
    pub async fn shutdown(&self, id: &str) -> Result<(), ControlError> {
        let marker = self.marker(id);
        match std::fs::remove_file(&marker) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&marker)(e).into()),
        }
    }

    pub async fn delete(&self, id: &str) -> Result<(), DiskError> {
        if !valid_id(id) {
            return Err(DiskError::BadId(id.to_owned()));
        }
        Ok(remove_vm_dir(&self.dir(id))?)
    }

    /// Moves the VM's files to the archive; refuses while it "runs".
    pub async fn archive(&self, id: &str) -> Result<PathBuf, DiskError> {
        if self.marker(id).is_file() {
            return Err(DiskError::Running(id.to_owned(), std::process::id()));
        }
        crate::disk::archive(&self.root, id)
    }

    pub async fn set_io_limits(&self, id: &str, limits: &IoLimits) -> Result<(), ControlError> {
        if !self.marker(id).is_file() {
            return Err(ControlError::NotRunning(id.to_owned()));
        }
        let path = self.dir(id).join("io");
        Ok(std::fs::write(&path, format!("{limits:?}")).map_err(io_error(&path))?)
    }
}

/// The driver a worker runs: QEMU, or the stand-in.
#[derive(Debug)]
pub enum VmDriver {
    Qemu(crate::driver::Driver),
    Fake(FakeDriver),
}

impl VmDriver {
    pub fn observe(&self) -> Result<Vec<ObservedVm>, ObserveError> {
        match self {
            VmDriver::Qemu(d) => d.observe(),
            VmDriver::Fake(d) => d.observe(),
        }
    }

    /// The replica copies kept here (the stand-in keeps none).
    pub fn replicas(&self) -> Result<Vec<hearth_types::compute::ObservedReplica>, ObserveError> {
        match self {
            VmDriver::Qemu(d) => d.replicas(),
            VmDriver::Fake(_) => Ok(Vec::new()),
        }
    }

    pub async fn create_disk(&self, spec: &VmSpec) -> Result<bool, DiskError> {
        match self {
            VmDriver::Qemu(d) => d.create_disk(spec).await,
            VmDriver::Fake(d) => d.create_disk(spec).await,
        }
    }

    pub async fn start(&self, spec: &VmSpec) -> Result<u32, StartError> {
        match self {
            VmDriver::Qemu(d) => d.start(spec).await,
            VmDriver::Fake(d) => d.start(spec).await,
        }
    }

    pub async fn archive(&self, id: &str) -> Result<PathBuf, DiskError> {
        match self {
            VmDriver::Qemu(d) => d.archive(id).await,
            VmDriver::Fake(d) => d.archive(id).await,
        }
    }

    /// The name of a VM's disk file in its directory.
    pub fn disk_name(&self) -> &'static str {
        match self {
            VmDriver::Qemu(_) => "disk.qcow2",
            VmDriver::Fake(_) => DISK,
        }
    }

    /// The QEMU driver, which alone can move a running VM (the fake cannot).
    pub fn qemu(&self) -> Option<&crate::driver::Driver> {
        match self {
            VmDriver::Qemu(d) => Some(d),
            VmDriver::Fake(_) => None,
        }
    }

    /// The pid of what runs VM `id` here, if anything does.
    pub fn running(&self, id: &str) -> Option<u32> {
        match self {
            VmDriver::Qemu(d) => d.pid(id),
            VmDriver::Fake(d) => read_present(&d.marker(id))
                .ok()
                .flatten()
                .map(|text| String::from_utf8_lossy(&text).trim().parse().unwrap_or(0)),
        }
    }

    /// The path of VM `id`'s own disk of `generation` while nothing runs on it: the only
    /// disk file a peer may copy (see [`crate::moving`]).
    pub fn disk_at_rest(&self, id: &str, generation: u64) -> Result<PathBuf, DiskError> {
        if !valid_id(id) {
            return Err(DiskError::BadId(id.to_owned()));
        }
        if let Some(pid) = self.running(id) {
            return Err(DiskError::Running(id.to_owned(), pid));
        }
        crate::moving::disk_of(self.root(), id, self.disk_name(), generation)
    }

    /// Makes the copy built in VM `id`'s incoming directory its disk of `generation` here
    /// (see [`crate::moving::adopt`]); a qcow2 overlay is pointed at `base` first.
    pub async fn adopt_incoming(
        &self,
        id: &str,
        generation: u64,
        base: (&std::path::Path, &str),
    ) -> Result<PathBuf, DiskError> {
        let base = matches!(self, VmDriver::Qemu(_)).then_some(base);
        crate::moving::adopt(self.root(), id, self.disk_name(), generation, base).await
    }

    /// The directory VM directories live in.
    pub fn root(&self) -> &std::path::Path {
        match self {
            VmDriver::Qemu(d) => d.root(),
            VmDriver::Fake(d) => &d.root,
        }
    }

    pub async fn shutdown(&self, id: &str, grace: std::time::Duration) -> Result<(), ControlError> {
        match self {
            VmDriver::Qemu(d) => d.shutdown(id, grace).await,
            VmDriver::Fake(d) => d.shutdown(id).await,
        }
    }

    /// Stops the VM at once, without asking the guest.
    pub async fn kill(&self, id: &str) -> Result<(), ControlError> {
        match self {
            VmDriver::Qemu(d) => d.kill(id).await,
            VmDriver::Fake(d) => d.shutdown(id).await,
        }
    }

    /// Kills the VM's process with SIGKILL, asking it nothing: for a self-fence.
    pub async fn kill_now(&self, id: &str) -> Result<(), ControlError> {
        match self {
            VmDriver::Qemu(d) => d.kill_now(id).await,
            VmDriver::Fake(d) => d.shutdown(id).await,
        }
    }

    pub async fn delete(&self, id: &str) -> Result<(), DiskError> {
        match self {
            VmDriver::Qemu(d) => d.delete(id).await,
            VmDriver::Fake(d) => d.delete(id).await,
        }
    }

    /// Puts a bridged VM's tap rules back (the fake driver has no network).
    pub fn guard(&self, spec: &crate::driver::VmSpec) -> Result<(), String> {
        match self {
            VmDriver::Qemu(d) => d.guard(spec),
            VmDriver::Fake(_) => Ok(()),
        }
    }

    pub async fn set_io_limits(&self, id: &str, limits: &IoLimits) -> Result<(), ControlError> {
        match self {
            VmDriver::Qemu(d) => d.set_io_limits(id, limits).await,
            VmDriver::Fake(d) => d.set_io_limits(id, limits).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::NetConfig;
    use hearth_types::compute::Arch;

    #[tokio::test]
    async fn a_fake_vm_starts_once_stops_and_is_deleted() {
        let root = std::env::temp_dir().join(format!("hearth-fake-{}", std::process::id()));
        let driver = FakeDriver::new(root.clone());
        let spec = VmSpec {
            id: "vm-7".into(),
            hostname: "web1".into(),
            arch: Arch::X86_64,
            vcpus: 1,
            memory_mib: 64,
            disk_bytes: 1,
            base_image: PathBuf::from("/nonexistent"),
            base_format: "qcow2".into(),
            kernel: None,
            initrd: None,
            append: None,
            ssh_keys: vec![],
            net: NetConfig::default(),
            io: IoLimits::default(),
            generation: 1,
            disk: crate::driver::DiskSpec::Local,
        };
        assert!(
            matches!(
                driver.start(&spec).await,
                Err(StartError::Disk(DiskError::NoDisk(_)))
            ),
            "a start never makes a disk"
        );
        assert!(driver.create_disk(&spec).await.unwrap());
        assert!(!driver.create_disk(&spec).await.unwrap(), "made once");
        driver.start(&spec).await.unwrap();
        assert!(matches!(
            driver.start(&spec).await,
            Err(StartError::AlreadyRunning(..))
        ));
        let seen = driver.observe().unwrap();
        assert_eq!(seen.len(), 1);
        assert!(seen[0].pid.is_some() && seen[0].disk_present);
        driver.shutdown("vm-7").await.unwrap();
        assert_eq!(driver.observe().unwrap()[0].pid, None);
        // The boots are counted on the disk.
        driver.start(&spec).await.unwrap();
        driver.shutdown("vm-7").await.unwrap();
        let console = std::fs::read_to_string(root.join("vm-7/console.log")).unwrap();
        assert!(
            console.contains("HEARTH-GUEST-BOOTS n=1 gen=1"),
            "{console}"
        );
        assert!(
            console.contains("HEARTH-GUEST-BOOTS n=2 gen=1"),
            "{console}"
        );
        let other = VmSpec {
            generation: 2,
            ..spec.clone()
        };
        assert!(matches!(
            driver.start(&other).await,
            Err(StartError::Disk(DiskError::WrongGeneration { .. }))
        ));
        driver.delete("vm-7").await.unwrap();
        assert!(driver.observe().unwrap().is_empty());
        // Review finding: a failed look is an error, never "nothing runs" (which would make
        // a host restart or forget its running VMs).
        std::fs::create_dir_all(root.join("vm-8").join("running")).unwrap();
        assert!(matches!(driver.observe(), Err(ObserveError::Io(_))));
        let _ = std::fs::remove_dir_all(root);
    }
}
