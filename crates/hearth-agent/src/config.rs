//! The agent's TOML config: one serde struct with a doc comment per key, named defaults,
//! and `validate()`, which reports every problem with the key it concerns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use hearth_dns::NoneHealthy;
use hearth_dns::push::{PushSettings, TsigKey};
use hearth_membership::{GossipTiming, SECRET_LEN, Secret};
use hearth_types::{EventKind, Role};
use serde::{Deserialize, Deserializer};

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
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub gossip: GossipConfig,
    #[serde(default)]
    pub state: StateSection,
    /// Members' VMs, on workers.
    #[serde(default)]
    pub compute: ComputeSection,
    /// Services this node runs an instance of.
    #[serde(default)]
    pub service: Vec<ServiceConfig>,
    /// Commands run on this node when events happen.
    #[serde(default)]
    pub handler: Vec<HandlerConfig>,
    /// Where announcement emails to members go; none are sent without it.
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
}

/// `[smtp]`: the server that takes the announcement emails this node sends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// `host:port` of the SMTP server: a local MTA (`127.0.0.1:25`) or the provider's
    /// submission port (`mail.example.org:587`).
    pub server: String,
    /// The sender: `address` or `Name <address>`.
    pub from: String,
    /// `none` (plain SMTP, for a local MTA), `starttls` (usually port 587) or `tls` (port
    /// 465). Default: `none` for a loopback server, `starttls` otherwise.
    #[serde(default)]
    pub tls: Option<crate::mail::SmtpTls>,
    /// For SMTP AUTH, with `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the SMTP password. Its content never appears in logs or messages.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// The zone every agent is authoritative for.
    #[serde(default = "default_zone")]
    pub zone: String,
    /// TTL of every answer, and of negative answers, in seconds.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// What a service name answers when none of its instances passes its check:
    /// `all-up` (every instance on a live node) or `empty` (no address).
    #[serde(default)]
    pub none_healthy: NoneHealthy,
    /// Also publish the zone's records to an external primary DNS server; off when absent.
    #[serde(default)]
    pub push: Option<DnsPushConfig>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            zone: default_zone(),
            ttl: default_ttl(),
            none_healthy: NoneHealthy::default(),
            push: None,
        }
    }
}

/// `[dns.push]`: the Raft leader sends the zone's records to an external primary as RFC 2136
/// UPDATE messages signed with TSIG, whenever they change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsPushConfig {
    /// The primary, `IP:port` (port 53 if omitted). Updates go over TCP.
    pub server: String,
    /// The TSIG key's name, as the primary knows it.
    pub key_name: String,
    /// A file holding the TSIG key's secret, base64 (as `tsig-keygen` or `keymgr -t` print
    /// it). Its content never appears in logs or messages.
    pub key_file: PathBuf,
    /// The TSIG algorithm; only `hmac-sha256` for now.
    #[serde(default = "default_push_algorithm")]
    pub algorithm: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GossipConfig {
    /// How often each node probes one random peer.
    #[serde(default = "default_probe_interval", deserialize_with = "duration")]
    pub probe_interval: Duration,
    /// How long to wait for a direct probe's answer before asking others to probe.
    #[serde(default = "default_probe_timeout", deserialize_with = "duration")]
    pub probe_timeout: Duration,
    /// How long a suspected node has to refute before it is declared dead (stretched
    /// automatically while this node itself is slow).
    #[serde(default = "default_suspicion_timeout", deserialize_with = "duration")]
    pub suspicion_timeout: Duration,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            probe_interval: default_probe_interval(),
            probe_timeout: default_probe_timeout(),
            suspicion_timeout: default_suspicion_timeout(),
        }
    }
}

/// Members' VMs on a worker: how QEMU runs them and what the host offers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeSection {
    /// `qemu`, or `fake`: a stand-in that runs no guest (for fault-injection tests and trying
    /// hearth where QEMU is missing); VMs then only pretend to run.
    #[serde(default = "default_driver")]
    pub driver: String,
    /// `auto` (KVM when `/dev/kvm` is usable, else TCG), `kvm` or `tcg`.
    #[serde(default = "default_accel")]
    pub accel: String,
    /// `user` (QEMU's isolated user-mode network: for trying out and tests) or
    /// `bridge:NAME` (a tap on the host bridge NAME, through qemu-bridge-helper).
    #[serde(default = "default_network")]
    pub network: String,
    /// vCPUs offered to VMs; default: the host's CPU count.
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// Memory offered to VMs in MiB; default: the host's memory less 1 GiB.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Disk offered to VMs in GiB.
    #[serde(default = "default_disk_gib")]
    pub disk_gib: u64,
}

impl Default for ComputeSection {
    fn default() -> Self {
        ComputeSection {
            driver: default_driver(),
            accel: default_accel(),
            network: default_network(),
            vcpus: None,
            memory_mib: None,
            disk_gib: default_disk_gib(),
        }
    }
}

fn default_driver() -> String {
    "qemu".into()
}

fn default_accel() -> String {
    "auto".into()
}
fn default_network() -> String {
    "user".into()
}
fn default_disk_gib() -> u64 {
    100
}

/// The replicated desired state (Raft) on servers and witnesses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// The group forms once this many servers and witnesses are alive. Set it to the number
    /// of servers you start with, so that a partition at first boot cannot form two groups.
    #[serde(default = "default_bootstrap_expect")]
    pub bootstrap_expect: usize,
    /// A voter dead this long is replaced by a live server.
    #[serde(default = "default_replace_voter_after", deserialize_with = "duration")]
    pub replace_voter_after: Duration,
    /// A write not committed within this long fails with the reason.
    #[serde(default = "default_write_timeout", deserialize_with = "duration")]
    pub write_timeout: Duration,
    /// How often the leader sends heartbeats.
    #[serde(default = "default_heartbeat", deserialize_with = "duration")]
    pub heartbeat: Duration,
    /// A follower that hears no heartbeat for between this and twice this calls an election.
    #[serde(default = "default_election_timeout", deserialize_with = "duration")]
    pub election_timeout: Duration,
}

impl Default for StateSection {
    fn default() -> Self {
        StateSection {
            bootstrap_expect: default_bootstrap_expect(),
            replace_voter_after: default_replace_voter_after(),
            write_timeout: default_write_timeout(),
            heartbeat: default_heartbeat(),
            election_timeout: default_election_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The service's name; `<name>.<zone>` answers with its healthy instances.
    pub name: String,
    /// What DNS hands out for this node's instance. Defaults to the node's address.
    #[serde(default)]
    pub address: Option<IpAddr>,
    /// Without a check the instance always counts as passing.
    #[serde(default)]
    pub check: Option<CheckConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// Passes on an HTTP 2xx answer to a GET of this `http://` URL.
    #[serde(default)]
    pub http: Option<String>,
    /// Passes when a TCP connection to this `IP:port` opens.
    #[serde(default)]
    pub tcp: Option<String>,
    /// Passes when this command (program and arguments) exits 0.
    #[serde(default)]
    pub exec: Option<Vec<String>>,
    #[serde(default = "default_check_interval", deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(default = "default_check_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Passes in a row before a failing (or new) instance counts as passing.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Failures in a row before a passing instance counts as failing.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// `node` (default): runs on every node that sees the event. `cluster`: runs once per
    /// event in the whole cluster, on the Raft leader; needs a `name`, and the same handler
    /// should be configured on every server.
    #[serde(default)]
    pub scope: HandlerScope,
    /// Names a cluster handler; its deliveries are recorded under this name.
    #[serde(default)]
    pub name: Option<String>,
    /// The events that run this handler.
    pub events: Vec<EventKind>,
    /// Program and arguments. The event arrives as `HEARTH_*` variables and JSON on stdin.
    pub command: Vec<String>,
    /// The handler is killed after this long.
    #[serde(default = "default_handler_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlerScope {
    #[default]
    Node,
    Cluster,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/hearth")
}
fn default_roles() -> Vec<Role> {
    vec![Role::Server]
}
fn default_gossip_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 7946))
}
fn default_rpc_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 7947))
}
fn default_bootstrap_expect() -> usize {
    1
}
fn default_replace_voter_after() -> Duration {
    Duration::from_secs(600)
}
fn default_write_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_heartbeat() -> Duration {
    Duration::from_millis(100)
}
/// openraft makes voters refuse an election for twice this after the leader's last heartbeat
/// (its leader lease is the timeout's upper bound), so a dead leader is replaced after 2-4x
/// this; 300 ms keeps that under the 2 s a writer should wait.
fn default_election_timeout() -> Duration {
    Duration::from_millis(300)
}
fn default_api_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 7480))
}
fn default_dns_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 53))
}
fn default_zone() -> String {
    "hearth.internal.".into()
}
fn default_ttl() -> u32 {
    5
}
fn default_push_algorithm() -> String {
    "hmac-sha256".into()
}
fn default_probe_interval() -> Duration {
    GossipTiming::default().probe_interval
}
fn default_probe_timeout() -> Duration {
    GossipTiming::default().probe_timeout
}
fn default_suspicion_timeout() -> Duration {
    GossipTiming::default().suspicion_timeout
}
fn default_check_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_check_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    2
}
fn default_handler_timeout() -> Duration {
    Duration::from_secs(30)
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|error| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration ({error}); write e.g. \"500ms\" or \"2s\""
        ))
    })
}

/// A config that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path}:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// The parts of the config that are derived and checked rather than read as they are.
pub struct Resolved {
    pub primary_secret: Secret,
    pub accepted_secrets: Vec<Secret>,
    pub advertise: IpAddr,
    pub join: Vec<SocketAddr>,
    pub zone: String,
    /// Where to push the zone (`[dns.push]`), with the key read from `key_file`.
    pub dns_push: Option<PushSettings>,
    /// How to send email (`[smtp]`), with the password read from `password_file`.
    pub smtp: Option<crate::mail::MailSettings>,
}

impl Config {
    pub fn load(path: &Path) -> Result<(Config, Resolved), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|message| ConfigError::Syntax {
            path: path.to_owned(),
            message,
        })?;
        let resolved = config.validate().map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })?;
        Ok((config, resolved))
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

    /// Checks everything serde cannot, and reports every problem, each naming its key.
    pub fn validate(&self) -> Result<Resolved, Vec<String>> {
        let mut problems = Vec::new();
        check_name("node_name", &self.node_name, &mut problems);
        if self.cluster.trim().is_empty() {
            problems.push("cluster: must not be empty".into());
        }
        let secrets = self.secrets().map_err(|p| problems.push(p)).ok();
        let advertise = self.advertise_addr().map_err(|p| problems.push(p)).ok();
        let join = self.join_addrs(&mut problems);
        let zone = self.check_dns(&mut problems);
        let dns_push = self
            .dns
            .push
            .as_ref()
            .and_then(|p| p.settings(&mut problems));
        let smtp = self
            .smtp
            .as_ref()
            .and_then(|smtp| crate::mail::MailSettings::from_config(smtp, &mut problems));
        self.check_gossip(&mut problems);
        self.check_state(&mut problems);
        self.check_compute(&mut problems);
        self.check_services(&mut problems);
        self.check_handlers(&mut problems);
        match (secrets, advertise) {
            (Some((primary_secret, accepted_secrets)), Some(advertise)) if problems.is_empty() => {
                Ok(Resolved {
                    primary_secret,
                    accepted_secrets,
                    advertise,
                    join,
                    zone,
                    dns_push,
                    smtp,
                })
            }
            _ => Err(problems),
        }
    }

    fn secrets(&self) -> Result<(Secret, Vec<Secret>), String> {
        let (key, text) = match (&self.secret, &self.secret_file) {
            (Some(_), Some(_)) => {
                return Err("secret, secret_file: set only one of them".into());
            }
            (Some(inline), None) => ("secret", inline.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    format!("secret_file: cannot read {}: {error}", path.display())
                })?;
                ("secret_file", text)
            }
            (None, None) => {
                return Err("secret_file: no cluster secret is set; create one with \
                     `hearth keygen > /etc/hearth/secret` and copy it to every node"
                    .into());
            }
        };
        let mut secrets = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .enumerate()
            .map(|(idx, line)| decode_secret(key, idx, line));
        let primary = secrets
            .next()
            .unwrap_or_else(|| Err(format!("{key}: is empty; put `hearth keygen` output in it")))?;
        let accepted = secrets.collect::<Result<Vec<_>, _>>()?;
        Ok((primary, accepted))
    }

    fn advertise_addr(&self) -> Result<IpAddr, String> {
        match self.advertise {
            Some(ip) if ip.is_unspecified() => Err(format!(
                "advertise: {ip} is a wildcard; give this node's own address"
            )),
            Some(ip) => Ok(ip),
            None if self.gossip_addr.ip().is_unspecified() => Err(format!(
                "advertise: gossip_addr {} listens on every address, so set advertise to \
                 the address other nodes reach this one at",
                self.gossip_addr
            )),
            None => Ok(self.gossip_addr.ip()),
        }
    }

    fn join_addrs(&self, problems: &mut Vec<String>) -> Vec<SocketAddr> {
        let mut addrs = Vec::new();
        for (idx, seed) in self.join.iter().enumerate() {
            let parsed = seed.parse::<SocketAddr>().or_else(|_| {
                seed.parse::<IpAddr>()
                    .map(|ip| SocketAddr::new(ip, default_gossip_addr().port()))
            });
            match parsed {
                Ok(addr) => addrs.push(addr),
                Err(_) => problems.push(format!(
                    "join[{idx}]: `{seed}` is not an address; write IP:port, e.g. \"203.0.113.11:7946\""
                )),
            }
        }
        addrs
    }

    fn check_dns(&self, problems: &mut Vec<String>) -> String {
        let mut zone = self.dns.zone.trim().to_ascii_lowercase();
        if !zone.ends_with('.') {
            zone.push('.');
        }
        let labels: Vec<&str> = zone.trim_end_matches('.').split('.').collect();
        if zone == "." || labels.iter().any(|l| !valid_label(l)) {
            problems.push(format!(
                "dns.zone: `{}` is not a domain name; write e.g. \"coop.example.\"",
                self.dns.zone
            ));
        }
        if self.dns.ttl > 86_400 {
            problems.push("dns.ttl: at most 86400 seconds".into());
        }
        zone
    }

    fn check_gossip(&self, problems: &mut Vec<String>) {
        let g = &self.gossip;
        if g.probe_timeout.is_zero() || g.probe_timeout >= g.probe_interval {
            problems.push(
                "gossip.probe_timeout: must be above zero and below gossip.probe_interval".into(),
            );
        }
        if g.suspicion_timeout < g.probe_interval {
            problems
                .push("gossip.suspicion_timeout: must be at least gossip.probe_interval".into());
        }
    }

    fn check_compute(&self, problems: &mut Vec<String>) {
        let c = &self.compute;
        if !matches!(c.driver.as_str(), "qemu" | "fake") {
            problems.push(format!(
                "compute.driver: `{}` is not qemu or fake",
                c.driver
            ));
        }
        if !matches!(c.accel.as_str(), "auto" | "kvm" | "tcg") {
            problems.push(format!(
                "compute.accel: `{}` is not auto, kvm or tcg",
                c.accel
            ));
        }
        let bridge_ok = c
            .network
            .strip_prefix("bridge:")
            .is_some_and(|name| !name.is_empty() && name.len() <= 15);
        if c.network != "user" && !bridge_ok {
            problems.push(format!(
                "compute.network: `{}` is not `user` or `bridge:NAME`",
                c.network
            ));
        }
        if c.vcpus == Some(0) || c.memory_mib == Some(0) || c.disk_gib == 0 {
            problems.push("compute: vcpus, memory_mib and disk_gib must be above zero".into());
        }
    }

    fn check_state(&self, problems: &mut Vec<String>) {
        let s = &self.state;
        if s.bootstrap_expect == 0 {
            problems.push("state.bootstrap_expect: at least 1".into());
        }
        if s.heartbeat.is_zero() || s.heartbeat * 3 > s.election_timeout {
            problems.push(
                "state.heartbeat: above zero and at most a third of state.election_timeout".into(),
            );
        }
        if s.write_timeout < s.election_timeout {
            problems.push("state.write_timeout: at least state.election_timeout".into());
        }
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

    fn check_services(&self, problems: &mut Vec<String>) {
        let mut seen = BTreeSet::new();
        for (idx, service) in self.service.iter().enumerate() {
            let key = format!("service[{idx}]");
            check_name(&format!("{key}.name"), &service.name, problems);
            if !seen.insert(service.name.to_ascii_lowercase()) {
                problems.push(format!(
                    "{key}.name: `{}` is declared twice; service names must be unique",
                    service.name
                ));
            }
            if let Some(check) = &service.check {
                check_check(&format!("{key}.check"), check, problems);
            }
        }
        if self.service.len() > 32 {
            problems.push("service: at most 32 services per node".into());
        }
    }

    fn check_handlers(&self, problems: &mut Vec<String>) {
        let mut names = BTreeSet::new();
        for (idx, handler) in self.handler.iter().enumerate() {
            if handler.events.is_empty() {
                problems.push(format!("handler[{idx}].events: list at least one event"));
            }
            if handler.command.first().is_none_or(|p| p.is_empty()) {
                problems.push(format!(
                    "handler[{idx}].command: give the program and its arguments, e.g. [\"/usr/local/bin/notify\", \"--quiet\"]"
                ));
            }
            if handler.timeout.is_zero() {
                problems.push(format!("handler[{idx}].timeout: must be above zero"));
            }
            if handler.scope == HandlerScope::Cluster {
                match &handler.name {
                    None => problems.push(format!(
                        "handler[{idx}].name: a cluster handler needs a name, e.g. name = \"pager\""
                    )),
                    Some(name) if !names.insert(name.clone()) => problems.push(format!(
                        "handler[{idx}].name: `{name}` is used twice; cluster handler names must be unique"
                    )),
                    Some(_) => {}
                }
            }
        }
    }
}

impl DnsPushConfig {
    /// The checked settings, or None with each problem (naming its `dns.push.` key) recorded.
    fn settings(&self, problems: &mut Vec<String>) -> Option<PushSettings> {
        let server = self.server.parse::<SocketAddr>().or_else(|_| {
            let ip = self.server.parse::<IpAddr>()?;
            Ok::<_, std::net::AddrParseError>(SocketAddr::new(ip, 53))
        });
        let server = server
            .map_err(|_| {
                problems.push(format!(
                    "dns.push.server: `{}` is not an address; write IP:port, e.g. \"192.0.2.53:53\"",
                    self.server
                ))
            })
            .ok();
        let key_name = hearth_dns::Name::from_ascii(&self.key_name)
            .ok()
            .filter(|name| !self.key_name.is_empty() && !name.is_root());
        if key_name.is_none() {
            problems.push(format!(
                "dns.push.key_name: `{}` is not a key name; write the name the primary knows \
                 the key by, e.g. \"hearth-update\"",
                self.key_name
            ));
        }
        if !self.algorithm.eq_ignore_ascii_case("hmac-sha256") {
            problems.push(format!(
                "dns.push.algorithm: `{}` is not supported; use \"hmac-sha256\"",
                self.algorithm
            ));
        }
        let secret = self.read_key().map_err(|p| problems.push(p)).ok();
        let key = TsigKey::hmac_sha256(key_name?, secret?);
        Some(PushSettings::new(server?, key))
    }

    /// The secret from `key_file`. Like the cluster secret, its text never goes into a message.
    fn read_key(&self) -> Result<Vec<u8>, String> {
        let path = self.key_file.display();
        let text = std::fs::read_to_string(&self.key_file)
            .map_err(|error| format!("dns.push.key_file: cannot read {path}: {error}"))?;
        let secret = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| format!("dns.push.key_file: {path} does not hold a base64 secret"))?;
        if secret.is_empty() {
            return Err(format!("dns.push.key_file: {path} is empty"));
        }
        Ok(secret)
    }
}

fn decode_secret(key: &str, idx: usize, line: &str) -> Result<Secret, String> {
    let which = if idx == 0 {
        key.to_owned()
    } else {
        format!("{key} (line {} of accepted secrets)", idx + 1)
    };
    // The secret's text never goes into the message: only its length.
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line)
        .map_err(|_| format!("{which}: is not base64; generate a secret with `hearth keygen`"))?;
    let array: [u8; SECRET_LEN] = bytes.as_slice().try_into().map_err(|_| {
        format!(
            "{which}: decodes to {} bytes but must be {SECRET_LEN}; generate a secret with `hearth keygen`",
            bytes.len()
        )
    })?;
    Ok(Secret::new(array))
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn check_name(key: &str, name: &str, problems: &mut Vec<String>) {
    if !valid_label(name) || name.starts_with('-') {
        problems.push(format!(
            "{key}: `{name}` must be one DNS label: letters, digits and '-', at most 63 characters"
        ));
    }
}

fn check_check(key: &str, check: &CheckConfig, problems: &mut Vec<String>) {
    let kinds = [
        check.http.is_some(),
        check.tcp.is_some(),
        check.exec.is_some(),
    ];
    if kinds.iter().filter(|&&k| k).count() != 1 {
        problems.push(format!("{key}: set exactly one of http, tcp, exec"));
    }
    if let Some(url) = &check.http
        && crate::checks::HttpTarget::parse(url).is_none()
    {
        problems.push(format!(
            "{key}.http: `{url}` is not a plain http:// URL with an IP or host and port, e.g. \"http://127.0.0.1:8080/healthz\""
        ));
    }
    if let Some(addr) = &check.tcp
        && addr.parse::<SocketAddr>().is_err()
    {
        problems.push(format!(
            "{key}.tcp: `{addr}` is not IP:port, e.g. \"127.0.0.1:80\""
        ));
    }
    if let Some(exec) = &check.exec
        && exec.first().is_none_or(|p| p.is_empty())
    {
        problems.push(format!("{key}.exec: give the program and its arguments"));
    }
    if check.timeout.is_zero() || check.timeout > check.interval {
        problems.push(format!(
            "{key}.timeout: must be above zero and at most the interval"
        ));
    }
    if check.rise == 0 || check.fall == 0 {
        problems.push(format!("{key}.rise, {key}.fall: must be at least 1"));
    }
}
