//! The config's sections other than the checks and `[smtp]`: `[dns]` and `[dns.push]`,
//! `[gossip]`, `[compute]`, `[state]`, `[[service]]` and `[[handler]]`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use hearth_dns::NoneHealthy;
use hearth_types::EventKind;
use serde::Deserialize;

use super::check::CheckConfig;
use super::defaults::{
    default_accel, default_bootstrap_expect, default_disk_gib, default_driver,
    default_election_timeout, default_handler_timeout, default_heartbeat, default_network,
    default_probe_interval, default_probe_timeout, default_push_algorithm,
    default_replace_voter_after, default_snapshot_every, default_state_backup_interval,
    default_suspicion_timeout, default_ttl, default_uptime_interval, default_write_timeout,
    default_zone, duration,
};

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
    /// The resolver (`IP:port`) asked for the TXT record that proves a member owns a
    /// domain (`hearth zone verify`); default: the first `nameserver` of
    /// /etc/resolv.conf, port 53.
    #[serde(default)]
    pub verify_resolver: Option<std::net::SocketAddr>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            zone: default_zone(),
            ttl: default_ttl(),
            none_healthy: NoneHealthy::default(),
            push: None,
            verify_resolver: None,
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
    /// `bridge:NAME` (a tap per VM on the host bridge NAME, made by the agent).
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
    /// The most MiB/s a live move may use for its disk mirror and for its RAM; default: no
    /// limit. Keeps a move from filling the link the VMs serve on.
    #[serde(default)]
    pub migration_mib_per_sec: Option<u64>,
    /// Seconds a worker may run its VMs with replicas without renewing its lease through the
    /// Raft group: past it, it kills their QEMU, and their replica host restarts them after
    /// this and a margin (half of it, at least 2 s).
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// A watchdog device (for example `/dev/watchdog` from the `softdog` module) the agent
    /// pets only while its lease holds: a wedged or dead agent then resets the machine,
    /// taking its VMs with it, before their replica host restarts them. Off by default.
    #[serde(default)]
    pub watchdog: Option<std::path::PathBuf>,
    /// How often a worker samples each running VM's CPU, disk and network counters for the
    /// member panel's day and week charts.
    #[serde(default = "default_stats_interval", deserialize_with = "duration")]
    pub stats_interval: Duration,
}

fn default_stats_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_lease_secs() -> u64 {
    15
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
            migration_mib_per_sec: None,
            lease_secs: default_lease_secs(),
            watchdog: None,
            stats_interval: default_stats_interval(),
        }
    }
}

/// How a worker reaches the co-op's Ceph cluster, for VMs whose disks are on RBD
/// (`docs/rbd.md`). A worker without it never runs such VMs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CephSection {
    /// The cluster's config file, naming its monitors (`/etc/ceph/ceph.conf`).
    pub conf: std::path::PathBuf,
    /// The cephx user hearth connects as, without `client.`; it needs `profile rbd` on the
    /// monitors (which lets it blocklist a fenced client) and on the pools hearth uses.
    #[serde(default = "default_ceph_user")]
    pub user: String,
    /// That user's keyring (mode 600); default: the one `conf` names, or none without cephx.
    #[serde(default)]
    pub keyring: Option<std::path::PathBuf>,
}

fn default_ceph_user() -> String {
    "admin".into()
}

/// Metering and invoices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingSection {
    /// Usage is recorded per VM per period of this length, aligned to UTC; it must divide
    /// an hour evenly.
    #[serde(default = "default_meter_period", deserialize_with = "duration")]
    pub meter_period: Duration,
    /// How often a worker looks at its VMs for metering.
    #[serde(default = "default_meter_interval", deserialize_with = "duration")]
    pub meter_interval: Duration,
    /// How long after a month ends the leader closes its invoices; usage sent later goes
    /// on the next month's.
    #[serde(default = "default_close_after", deserialize_with = "duration")]
    pub close_after: Duration,
    /// Where the leader POSTs each invoice when its month closes (`http://` only: a local
    /// relay to the co-op's payment system), signed with HMAC-SHA256.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// The file holding the webhook's signing secret (at least 16 characters).
    #[serde(default)]
    pub webhook_secret_file: Option<std::path::PathBuf>,
}

fn default_meter_period() -> Duration {
    Duration::from_secs(3600)
}

fn default_meter_interval() -> Duration {
    Duration::from_secs(15)
}

fn default_close_after() -> Duration {
    Duration::from_secs(3600)
}

impl Default for BillingSection {
    fn default() -> Self {
        BillingSection {
            meter_period: default_meter_period(),
            meter_interval: default_meter_interval(),
            close_after: default_close_after(),
            webhook_url: None,
            webhook_secret_file: None,
        }
    }
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
    /// How often the leader samples each service's availability for the status page's
    /// daily uptime bars (one small write each time).
    #[serde(default = "default_uptime_interval", deserialize_with = "duration")]
    pub uptime_interval: Duration,
    /// How often the leader backs the desired state up into each backup target, for
    /// disaster recovery.
    #[serde(
        default = "default_state_backup_interval",
        deserialize_with = "duration"
    )]
    pub backup_interval: Duration,
    /// Log entries between two snapshots of the state. A node too far behind to be sent
    /// the entries it lacks (a new server or worker, say) is sent the snapshot instead.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
}

impl Default for StateSection {
    fn default() -> Self {
        StateSection {
            bootstrap_expect: default_bootstrap_expect(),
            replace_voter_after: default_replace_voter_after(),
            write_timeout: default_write_timeout(),
            heartbeat: default_heartbeat(),
            election_timeout: default_election_timeout(),
            uptime_interval: default_uptime_interval(),
            backup_interval: default_state_backup_interval(),
            snapshot_every: default_snapshot_every(),
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
