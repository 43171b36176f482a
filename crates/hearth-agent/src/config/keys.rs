//! `Config`, the whole config file as serde reads it: the top-level keys and a field per
//! section, with what follows from them directly (paths, roles, gossip timing).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth_membership::GossipTiming;
use hearth_types::Role;
use serde::Deserialize;

use super::defaults::{
    default_api_addr, default_data_dir, default_dns_addr, default_gossip_addr, default_roles,
    default_rpc_addr, optional_duration,
};
use super::sections::{
    BillingSection, CephSection, ComputeSection, DnsConfig, GossipConfig, HandlerConfig,
    ServiceConfig, StateSection,
};
use super::smtp::SmtpConfig;

/// The whole config file. Unknown keys are errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's name, unique in the cluster; also `<node_name>.<zone>` in DNS.
    pub node_name: String,
    /// Where the agent keeps its state (the API token, later the Raft log).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The cluster's name. Agents of another cluster cannot talk to this one.
    pub cluster: String,
    /// A file holding the cluster secret (base64 of 32 bytes). Further lines hold older or
    /// newer secrets that are accepted but not used to send, for rotation.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The cluster secret inline (base64 of 32 bytes), instead of `secret_file`.
    #[serde(default)]
    pub secret: Option<String>,
    /// What this node does: `server`, `witness`, `worker`.
    #[serde(default = "default_roles")]
    pub roles: Vec<Role>,
    /// Free-form labels carried in the node's metadata.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// UDP address the gossip listens on.
    #[serde(default = "default_gossip_addr")]
    pub gossip_addr: SocketAddr,
    /// The address other nodes reach this one at; required when `gossip_addr` is a wildcard.
    #[serde(default)]
    pub advertise: Option<IpAddr>,
    /// Seeds, `IP:port` (port 7946 if omitted); any one reachable is enough to join.
    #[serde(default)]
    pub join: Vec<String>,
    /// TCP address of the Raft RPC between servers and witnesses (encrypted with the
    /// cluster secret). Unused on nodes that are neither.
    #[serde(default = "default_rpc_addr")]
    pub rpc_addr: SocketAddr,
    /// TCP address of the HTTP API and `/metrics`.
    #[serde(default = "default_api_addr")]
    pub api_addr: SocketAddr,
    /// Address of the authoritative DNS server, UDP and TCP.
    #[serde(default = "default_dns_addr")]
    pub dns_addr: SocketAddr,
    /// The file holding the API token; created with a random token if missing.
    /// Defaults to `<data_dir>/api-token`.
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    /// Reverse proxies in front of `api_addr` whose `X-Forwarded-For` names the client (for
    /// the login rate limit and the audit log); from any other peer the header is ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<IpAddr>,
    /// The longest an API token may live; a token asked for without an expiry, or a longer
    /// one, gets this. Unset: tokens made outside a web session may live until revoked.
    #[serde(default, deserialize_with = "optional_duration")]
    pub max_token_lifetime: Option<Duration>,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub gossip: GossipConfig,
    #[serde(default)]
    pub state: StateSection,
    /// Members' VMs, on workers.
    #[serde(default)]
    pub compute: ComputeSection,
    /// Metering and invoices.
    #[serde(default)]
    pub billing: BillingSection,
    /// Services this node runs an instance of.
    #[serde(default)]
    pub service: Vec<ServiceConfig>,
    /// Commands run on this node when events happen.
    #[serde(default)]
    pub handler: Vec<HandlerConfig>,
    /// Where announcement emails to members go; none are sent without it.
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
    /// The co-op's Ceph cluster, for VMs whose disks are on RBD.
    #[serde(default)]
    pub ceph: Option<CephSection>,
}

impl Config {
    /// The files this config names, whose text the checks need: `secret_file`,
    /// `dns.push.key_file` and `smtp.password_file`, those that are set.
    pub fn named_files(&self) -> Vec<&Path> {
        self.secret_files()
            .into_iter()
            .map(|(_, path)| path)
            .collect()
    }

    /// The same files by the key that names them; each holds a secret.
    pub fn secret_files(&self) -> Vec<(&'static str, &Path)> {
        let named = [
            ("secret_file", self.secret_file.as_deref()),
            (
                "dns.push.key_file",
                self.dns.push.as_ref().map(|push| push.key_file.as_path()),
            ),
            (
                "smtp.password_file",
                self.smtp
                    .as_ref()
                    .and_then(|smtp| smtp.password_file.as_deref()),
            ),
            (
                "billing.webhook_secret_file",
                self.billing.webhook_secret_file.as_deref(),
            ),
            (
                "ceph.keyring",
                self.ceph.as_ref().and_then(|c| c.keyring.as_deref()),
            ),
        ];
        named
            .into_iter()
            .filter_map(|(key, path)| Some((key, path?)))
            .collect()
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|error| error.to_string().trim_end().to_owned())
    }

    pub fn gossip_timing(&self) -> GossipTiming {
        GossipTiming {
            probe_interval: self.gossip.probe_interval,
            probe_timeout: self.gossip.probe_timeout,
            suspicion_timeout: self.gossip.suspicion_timeout,
        }
    }

    pub fn token_path(&self) -> PathBuf {
        self.api_token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("api-token"))
    }

    /// Whether this node takes part in the replicated state.
    /// Servers and witnesses vote in the Raft group; workers follow it as learners, so that
    /// their reconcilers read the desired state locally.
    pub fn holds_state(&self) -> bool {
        !self.roles.is_empty()
    }

    /// Whether this node runs members' VMs.
    pub fn is_worker(&self) -> bool {
        self.roles.contains(&Role::Worker) && !self.roles.contains(&Role::Witness)
    }
}
