//! The embedded single-node config behind `hearth agent --dev`, and the dev agent's rule that
//! trying hearth leaves nothing behind: its VMs stop with it and start again with the next
//! dev agent, which says so.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;

use crate::config::{Config, Resolved};

/// API address of the dev agent; also the CLI's default.
pub const DEV_API_ADDR: &str = "127.0.0.1:7480";
/// DNS address of the dev agent (an unprivileged port, so no root is needed).
pub const DEV_DNS_ADDR: &str = "127.0.0.1:8053";

/// The dev agent's data dir: per user, under the temporary directory.
pub fn dev_data_dir() -> PathBuf {
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    std::env::temp_dir().join(format!("hearth-dev-{uid}"))
}

/// A one-node cluster on loopback with a demo service `www` whose check (a TCP connect to
/// the agent's own API) passes while the agent runs.
pub fn dev_config() -> (Config, Resolved) {
    let mut secret = [0u8; 32];
    rand::fill(&mut secret[..]);
    let secret = base64::engine::general_purpose::STANDARD.encode(secret);
    let text = format!(
        r#"
node_name   = "dev"
data_dir    = "{data_dir}"
cluster     = "dev"
secret      = "{secret}"
roles       = ["server", "worker"]
gossip_addr = "127.0.0.1:7946"
rpc_addr    = "127.0.0.1:7947"
api_addr    = "{DEV_API_ADDR}"
dns_addr    = "{DEV_DNS_ADDR}"

[dns]
zone = "hearth.test."
ttl  = 5

[[service]]
name    = "www"
address = "127.0.0.1"
[service.check]
tcp      = "{DEV_API_ADDR}"
interval = "1s"
timeout  = "500ms"
rise     = 1
"#,
        data_dir = dev_data_dir().display(),
    );
    let config = Config::parse(&text).expect("the embedded dev config parses");
    let resolved = config.validate().expect("the embedded dev config is valid");
    (config, resolved)
}

/// The file in the dev data dir naming the VMs the last dev agent stopped, one per line.
const STOPPED_FILE: &str = "dev-stopped-vms";
/// How long a dev VM has to power off after the ACPI button before it is stopped hard.
const DEV_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Shuts down every VM running under the dev data dir (its host loop must have stopped), and
/// notes their names for the next dev agent. Returns "NAME (ID)" of each VM stopped.
pub async fn stop_vms(data_dir: &Path, names: &BTreeMap<String, String>) -> Vec<String> {
    use hearth_qemu::accel::Accel;
    use hearth_qemu::driver::{Driver, Network};
    let driver = Driver::new(data_dir.join("vms"), Accel::Tcg, Network::User);
    let running = match driver.observe() {
        Ok(seen) => seen,
        Err(error) => {
            tracing::warn!(%error, "cannot look at the dev agent's VMs to stop them");
            return Vec::new();
        }
    };
    let mut stopped = Vec::new();
    for vm in running.iter().filter(|vm| vm.pid.is_some() && !vm.foreign) {
        let name = names.get(&vm.id).cloned().unwrap_or_else(|| vm.id.clone());
        match driver.shutdown(&vm.id, DEV_SHUTDOWN_GRACE).await {
            Ok(()) => stopped.push(format!("{name} ({})", vm.id)),
            Err(error) => tracing::warn!(vm = %vm.id, %error, "cannot stop a dev VM"),
        }
    }
    let note: String = stopped.iter().map(|s| format!("{s}\n")).collect();
    if !stopped.is_empty()
        && let Err(error) = std::fs::write(data_dir.join(STOPPED_FILE), note)
    {
        tracing::warn!(%error, "cannot note the stopped dev VMs");
    }
    stopped
}

/// The VMs the last dev agent stopped (they start again now), forgetting the note.
pub fn take_stopped_vms(data_dir: &Path) -> Vec<String> {
    let path = data_dir.join(STOPPED_FILE);
    let names = std::fs::read_to_string(&path)
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default();
    let _ = std::fs::remove_file(path);
    names
}

#[cfg(test)]
mod tests {
    #[test]
    fn dev_config_is_valid() {
        let (config, resolved) = super::dev_config();
        assert_eq!(config.node_name, "dev");
        assert_eq!(resolved.zone, "hearth.test.");
    }
}
