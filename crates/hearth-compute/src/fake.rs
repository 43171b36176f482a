//! A stand-in for QEMU, for the chaos runner and for trying hearth on a machine without
//! QEMU (`[compute] driver = "fake"`): a "running VM" is a directory under the root holding a
//! `running` file with the agent's pid and a console log. It outlives an agent restart, as a
//! daemonized QEMU does, so reconciliation, adoption, placement and deletion run exactly as
//! with real VMs; only the guest is missing.

use std::path::PathBuf;

use crate::driver::{
    DriverError, IoLimits, ObservedVm, VmSpec, io_error, read_present, remove_vm_dir, valid_id,
    vm_dirs,
};

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
    pub fn observe(&self) -> Result<Vec<ObservedVm>, DriverError> {
        let mut seen = Vec::new();
        for (id, path) in vm_dirs(&self.root)? {
            let marker = self.marker(&id);
            let pid = read_present(&marker)
                .map_err(io_error(&marker))?
                .and_then(|text| String::from_utf8_lossy(&text).trim().parse().ok());
            seen.push(ObservedVm {
                disk_present: path.join("disk.img").is_file(),
                id,
                pid,
                foreign: false,
            });
        }
        seen.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(seen)
    }

    pub async fn start(&self, spec: &VmSpec) -> Result<u32, DriverError> {
        if !valid_id(&spec.id) {
            return Err(DriverError::BadId(spec.id.clone()));
        }
        let dir = self.dir(&spec.id);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let marker = self.marker(&spec.id);
        if let Some(pid) = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return Err(DriverError::AlreadyRunning(spec.id.clone(), pid));
        }
        let disk = dir.join("disk.img");
        if !disk.is_file() {
            std::fs::write(&disk, b"").map_err(io_error(&disk))?;
        }
        let console = dir.join("console.log");
        let address = spec
            .net
            .addresses
            .first()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let line = format!(
            "HEARTH-GUEST-UP\nHEARTH-GUEST hostname={} ip={address} keys={}\nHEARTH-GUEST-READY\n",
            spec.hostname,
            spec.ssh_keys.len()
        );
        std::fs::write(&console, line).map_err(io_error(&console))?;
        let pid = std::process::id();
        std::fs::write(&marker, pid.to_string()).map_err(io_error(&marker))?;
        Ok(pid)
    }

    /// Stops the VM; one that is not running is stopped already, as with QEMU.
    pub async fn shutdown(&self, id: &str) -> Result<(), DriverError> {
        let marker = self.marker(id);
        match std::fs::remove_file(&marker) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&marker)(e)),
        }
    }

    pub async fn delete(&self, id: &str) -> Result<(), DriverError> {
        if !valid_id(id) {
            return Err(DriverError::BadId(id.to_owned()));
        }
        remove_vm_dir(&self.dir(id))
    }

    pub async fn set_io_limits(&self, id: &str, limits: &IoLimits) -> Result<(), DriverError> {
        if !self.marker(id).is_file() {
            return Err(DriverError::NotRunning(id.to_owned()));
        }
        let path = self.dir(id).join("io");
        std::fs::write(&path, format!("{limits:?}")).map_err(io_error(&path))
    }
}

/// The driver a worker runs: QEMU, or the stand-in.
#[derive(Debug)]
pub enum VmDriver {
    Qemu(crate::driver::Driver),
    Fake(FakeDriver),
}

impl VmDriver {
    pub fn observe(&self) -> Result<Vec<ObservedVm>, DriverError> {
        match self {
            VmDriver::Qemu(d) => d.observe(),
            VmDriver::Fake(d) => d.observe(),
        }
    }

    pub async fn start(&self, spec: &VmSpec) -> Result<u32, DriverError> {
        match self {
            VmDriver::Qemu(d) => d.start(spec).await,
            VmDriver::Fake(d) => d.start(spec).await,
        }
    }

    pub async fn shutdown(&self, id: &str, grace: std::time::Duration) -> Result<(), DriverError> {
        match self {
            VmDriver::Qemu(d) => d.shutdown(id, grace).await,
            VmDriver::Fake(d) => d.shutdown(id).await,
        }
    }

    pub async fn delete(&self, id: &str) -> Result<(), DriverError> {
        match self {
            VmDriver::Qemu(d) => d.delete(id).await,
            VmDriver::Fake(d) => d.delete(id).await,
        }
    }

    pub async fn set_io_limits(&self, id: &str, limits: &IoLimits) -> Result<(), DriverError> {
        match self {
            VmDriver::Qemu(d) => d.set_io_limits(id, limits).await,
            VmDriver::Fake(d) => d.set_io_limits(id, limits).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{Arch, NetConfig};

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
        };
        driver.start(&spec).await.unwrap();
        assert!(matches!(
            driver.start(&spec).await,
            Err(DriverError::AlreadyRunning(..))
        ));
        let seen = driver.observe().unwrap();
        assert_eq!(seen.len(), 1);
        assert!(seen[0].pid.is_some() && seen[0].disk_present);
        driver.shutdown("vm-7").await.unwrap();
        assert_eq!(driver.observe().unwrap()[0].pid, None);
        driver.delete("vm-7").await.unwrap();
        assert!(driver.observe().unwrap().is_empty());
        // Review finding: a failed look is an error, never "nothing runs" (which would make
        // a host restart or forget its running VMs).
        std::fs::create_dir_all(root.join("vm-8").join("running")).unwrap();
        assert!(matches!(driver.observe(), Err(DriverError::Io { .. })));
        let _ = std::fs::remove_dir_all(root);
    }
}
