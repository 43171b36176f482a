//! The embedded single-node config behind `hearth agent --dev`.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

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

#[cfg(test)]
mod tests {
    #[test]
    fn dev_config_is_valid() {
        let (config, resolved) = super::dev_config();
        assert_eq!(config.node_name, "dev");
        assert_eq!(resolved.zone, "hearth.test.");
    }
}
