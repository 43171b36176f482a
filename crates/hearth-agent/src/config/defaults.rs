//! The config's named defaults, one function per key that has one, and the humantime
//! deserializer of its durations.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hearth_membership::GossipTiming;
use hearth_types::Role;
use serde::{Deserialize, Deserializer};

pub(super) fn default_driver() -> String {
    "qemu".into()
}

pub(super) fn default_accel() -> String {
    "auto".into()
}
pub(super) fn default_network() -> String {
    "user".into()
}
pub(super) fn default_disk_gib() -> u64 {
    100
}
pub(super) fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/hearth")
}
pub(super) fn default_roles() -> Vec<Role> {
    vec![Role::Server]
}
pub(super) fn default_gossip_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 7946))
}
pub(super) fn default_rpc_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 7947))
}
pub(super) fn default_bootstrap_expect() -> usize {
    1
}
pub(super) fn default_replace_voter_after() -> Duration {
    Duration::from_secs(600)
}
pub(super) fn default_state_backup_interval() -> Duration {
    Duration::from_secs(3600)
}
pub(super) fn default_snapshot_every() -> u64 {
    5_000
}
pub(super) fn default_uptime_interval() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_write_timeout() -> Duration {
    Duration::from_secs(5)
}
pub(super) fn default_heartbeat() -> Duration {
    Duration::from_millis(100)
}
/// openraft makes voters refuse an election for twice this after the leader's last heartbeat
/// (its leader lease is the timeout's upper bound), so a dead leader is replaced after 2-4x
/// this; 300 ms keeps that under the 2 s a writer should wait.
pub(super) fn default_election_timeout() -> Duration {
    Duration::from_millis(300)
}
pub(super) fn default_api_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 7480))
}
pub(super) fn default_dns_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 53))
}
pub(super) fn default_zone() -> String {
    "hearth.internal.".into()
}
pub(super) fn default_ttl() -> u32 {
    5
}
pub(super) fn default_push_algorithm() -> String {
    "hmac-sha256".into()
}
pub(super) fn default_probe_interval() -> Duration {
    GossipTiming::default().probe_interval
}
pub(super) fn default_probe_timeout() -> Duration {
    GossipTiming::default().probe_timeout
}
pub(super) fn default_suspicion_timeout() -> Duration {
    GossipTiming::default().suspicion_timeout
}
pub(super) fn default_check_interval() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn default_check_timeout() -> Duration {
    Duration::from_millis(500)
}
pub(super) fn default_rise() -> u32 {
    2
}
pub(super) fn default_fall() -> u32 {
    2
}
pub(super) fn default_handler_timeout() -> Duration {
    Duration::from_secs(30)
}

pub(super) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|error| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration ({error}); write e.g. \"500ms\" or \"2s\""
        ))
    })
}

/// `duration`, for a key that may be left out.
pub(super) fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}
