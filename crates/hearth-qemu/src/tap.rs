//! A VM's tap on the host bridge, made by the agent itself (with `ip`, which needs
//! `CAP_NET_ADMIN`) rather than by QEMU's setuid `qemu-bridge-helper`: a persistent tap
//! owned by the user QEMU runs as, enslaved to the bridge and up, which QEMU opens by name
//! with no scripts. It lives while the VM's files do on this host, and its counters are the
//! VM's network bytes.

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

/// The tap's name for VM `id`: `h` and the id when that fits Linux's 15 characters, else `h`
/// and 14 hex digits of the id's sha256.
pub fn tap_name(id: &str) -> String {
    if id.len() <= 14 {
        format!("h{id}")
    } else {
        let digest = Sha256::digest(id.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("h{}", &hex[..14])
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run_tool("ip", args)
}

/// Runs `program` (`ip` or `tc`, both from iproute2) to its end; its stderr is the error.
pub(crate) fn run_tool(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program} (apt-get install iproute2): {e}"))?;
    match output.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

/// Makes VM `id`'s tap if it is not there, owned by this process's user, on `bridge` and up.
pub fn ensure(id: &str, bridge: &str) -> Result<String, String> {
    let name = tap_name(id);
    if !Path::new("/sys/class/net").join(&name).exists() {
        // /proc/self belongs to the process's effective user: the one QEMU runs as.
        let uid = std::os::unix::fs::MetadataExt::uid(
            &std::fs::metadata("/proc/self").map_err(|e| format!("/proc/self: {e}"))?,
        )
        .to_string();
        ip(&["tuntap", "add", "dev", &name, "mode", "tap", "user", &uid])
            .map_err(|e| format!("{e} (the agent needs CAP_NET_ADMIN for bridged VMs)"))?;
    }
    ip(&["link", "set", "dev", &name, "master", bridge])?;
    ip(&["link", "set", "dev", &name, "up"])?;
    Ok(name)
}

/// Removes VM `id`'s tap, if there is one.
pub fn remove(id: &str) -> Result<(), String> {
    let name = tap_name(id);
    match Path::new("/sys/class/net").join(&name).exists() {
        true => ip(&["link", "delete", "dev", &name]),
        false => Ok(()),
    }
}

/// The bytes through VM `id`'s tap, as the guest sees them: (received, sent); `None`
/// without a tap.
pub fn counters(id: &str) -> Option<(u64, u64)> {
    let stats = Path::new("/sys/class/net")
        .join(tap_name(id))
        .join("statistics");
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(stats.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    // The host's tx is what the guest received, and its rx what the guest sent.
    Some((read("tx_bytes")?, read("rx_bytes")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_and_stay_apart() {
        assert_eq!(tap_name("vm-53"), "hvm-53");
        let long = tap_name("a-very-long-vm-identifier-of-forty");
        assert_eq!(long.len(), 15);
        assert_ne!(long, tap_name("a-very-long-vm-identifier-of-fortx"));
        assert!(tap_name("vm-12345678901").len() <= 15);
    }
}
