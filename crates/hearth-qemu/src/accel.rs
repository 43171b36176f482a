//! Choosing QEMU's accelerator: KVM when `/dev/kvm` is usable, TCG otherwise.

use std::fmt;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The accelerator to use on this machine, and why.
///
/// `/dev/kvm` must open for reading and writing. `kvm_pvm` (a nested KVM layer some hosting
/// providers use) is refused too: QEMU aborts on it while setting MSRs.
pub fn detect() -> (Accel, String) {
    detect_at(Path::new("/dev/kvm"), Path::new("/sys/module/kvm_pvm"))
}

fn detect_at(kvm: &Path, pvm: &Path) -> (Accel, String) {
    match std::fs::OpenOptions::new().read(true).write(true).open(kvm) {
        Err(error) => (
            Accel::Tcg,
            format!(
                "{} is not usable ({error}); VMs run under TCG, much slower",
                kvm.display()
            ),
        ),
        Ok(_) if pvm.exists() => (
            Accel::Tcg,
            format!(
                "{} is kvm_pvm, on which QEMU cannot run guests; VMs run under TCG, much slower",
                kvm.display()
            ),
        ),
        Ok(_) => (Accel::Kvm, format!("{} is usable", kvm.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_device_means_tcg_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let (accel, why) = detect_at(&dir.path().join("kvm"), &dir.path().join("pvm"));
        assert_eq!(accel, Accel::Tcg);
        assert!(why.contains("not usable"), "{why}");
    }

    #[test]
    fn a_usable_device_means_kvm_unless_it_is_pvm() {
        let dir = tempfile::tempdir().unwrap();
        let kvm = dir.path().join("kvm");
        std::fs::write(&kvm, b"").unwrap();
        assert_eq!(detect_at(&kvm, &dir.path().join("pvm")).0, Accel::Kvm);
        std::fs::create_dir(dir.path().join("pvm")).unwrap();
        let (accel, why) = detect_at(&kvm, &dir.path().join("pvm"));
        assert_eq!(accel, Accel::Tcg);
        assert!(why.contains("kvm_pvm"), "{why}");
    }
}
