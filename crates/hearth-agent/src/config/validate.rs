//! The checks of everything serde cannot check, and `Resolved`, what they derive: each problem
//! found names its key and says how to fix it, and every problem is reported, not only the
//! first. Pure: what the files the config names hold comes in a `ConfigFiles`, read
//! beforehand.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine;
use hearth_dns::push::{PushSettings, TsigKey};
use hearth_membership::{SECRET_LEN, Secret};

use super::check::{CheckConfig, HttpTarget};
use super::defaults::default_gossip_addr;
use super::files::ConfigFiles;
use super::keys::Config;
use super::sections::{DnsPushConfig, HandlerScope};
use super::smtp::MailSettings;

/// The parts of the config that are derived and checked rather than read as they are.
pub struct Resolved {
    pub keys: ClusterKeys,
    pub advertise: IpAddr,
    pub join: Vec<SocketAddr>,
    pub zone: String,
    /// Where to push the zone (`[dns.push]`), with the key read from `key_file`.
    pub dns_push: Option<PushSettings>,
    /// How to send email (`[smtp]`), with the password read from `password_file`.
    pub smtp: Option<MailSettings>,
    /// Where closed invoices go (`[billing] webhook_url`), with the signing secret.
    pub webhook: Option<Webhook>,
    /// The Ceph cluster for disks on RBD (`[ceph]`).
    pub ceph: Option<hearth_qemu::rbd::Ceph>,
}

/// The invoice webhook: its URL and signing secret.
#[derive(Clone)]
pub struct Webhook {
    pub url: String,
    pub target: HttpTarget,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("secret", &"(hidden)")
            .finish()
    }
}

/// What `secret_file` (or `secret`) holds: cluster secrets, or on a worker that should not
/// hold them, worker keys (`hearth keygen --worker`). The first seals; the rest are accepted
/// during a rotation.
pub enum ClusterKeys {
    Secrets(Secret, Vec<Secret>),
    /// Worker keys, and the worker's identity key (for its own `node_name`).
    WorkerKeys([u8; 32], Vec<[u8; 32]>, (String, [u8; 32])),
}

impl ClusterKeys {
    pub fn keyring(&self, cluster: &str) -> hearth_membership::Keyring {
        match self {
            ClusterKeys::Secrets(primary, accepted) => {
                hearth_membership::Keyring::new(cluster, primary, accepted)
            }
            ClusterKeys::WorkerKeys(primary, accepted, identity) => {
                hearth_membership::Keyring::for_worker(
                    cluster,
                    *primary,
                    accepted,
                    Some(identity.clone()),
                )
            }
        }
    }

    /// How many keys besides the sealing one are accepted.
    pub fn accepted(&self) -> usize {
        match self {
            ClusterKeys::Secrets(_, accepted) => accepted.len(),
            ClusterKeys::WorkerKeys(_, accepted, _) => accepted.len(),
        }
    }
}

impl Config {
    /// Checks everything serde cannot, and reports every problem, each naming its key. Reads
    /// no file: what the files the config names hold comes in `files`.
    pub fn validate_with(&self, files: &ConfigFiles) -> Result<Resolved, Vec<String>> {
        let mut problems = Vec::new();
        check_name("node_name", &self.node_name, &mut problems);
        if self.cluster.trim().is_empty() {
            problems.push("cluster: must not be empty".into());
        }
        let secrets = self.secrets(files).map_err(|p| problems.push(p)).ok();
        let advertise = self.advertise_addr().map_err(|p| problems.push(p)).ok();
        let join = self.join_addrs(&mut problems);
        let zone = self.check_dns(&mut problems);
        let dns_push = self
            .dns
            .push
            .as_ref()
            .and_then(|p| p.settings(files, &mut problems));
        let smtp = self
            .smtp
            .as_ref()
            .and_then(|smtp| MailSettings::from_config(smtp, files, &mut problems));
        self.check_gossip(&mut problems);
        self.check_state(&mut problems);
        self.check_compute(&mut problems);
        let ceph = self.check_ceph(files, &mut problems);
        self.check_billing(&mut problems);
        let webhook = self.webhook(files, &mut problems);
        self.check_services(&mut problems);
        self.check_handlers(&mut problems);
        match (secrets, advertise) {
            (Some(keys), Some(advertise)) if problems.is_empty() => Ok(Resolved {
                keys,
                advertise,
                join,
                zone,
                dns_push,
                smtp,
                webhook,
                ceph,
            }),
            _ => Err(problems),
        }
    }

    /// `[ceph]`: paths QEMU's `rbd:` file name can carry (absolute, no `:` or `,`), a user
    /// name, a readable keyring, and the QEMU driver.
    fn check_ceph(
        &self,
        files: &ConfigFiles,
        problems: &mut Vec<String>,
    ) -> Option<hearth_qemu::rbd::Ceph> {
        let c = self.ceph.as_ref()?;
        let before = problems.len();
        let path_ok = |key: &str, path: &std::path::Path, problems: &mut Vec<String>| {
            let text = path.display().to_string();
            if !path.is_absolute() || text.contains([':', ',']) {
                problems.push(format!(
                    "ceph.{key}: {text} must be an absolute path without `:` or `,` (QEMU's rbd file name cannot carry them)"
                ));
            }
        };
        path_ok("conf", &c.conf, problems);
        if let Some(keyring) = &c.keyring {
            path_ok("keyring", keyring, problems);
            if let Err(error) = files.text(keyring) {
                problems.push(format!(
                    "ceph.keyring: cannot read {}: {error}",
                    keyring.display()
                ));
            }
        }
        let user_ok = (1..=64).contains(&c.user.len())
            && c.user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !user_ok || c.user.starts_with("client.") {
            problems.push(format!(
                "ceph.user: `{}` is not a cephx user name; give it without `client.` (letters, digits, `_`, `.`, `-`), such as hearth",
                c.user
            ));
        }
        if self.compute.driver != "qemu" {
            problems.push(format!(
                "ceph: only a worker whose compute.driver is qemu runs disks on RBD (it is {}); remove [ceph] or set compute.driver = \"qemu\"",
                self.compute.driver
            ));
        }
        (problems.len() == before).then(|| hearth_qemu::rbd::Ceph {
            conf: c.conf.clone(),
            user: c.user.clone(),
            keyring: c.keyring.clone(),
        })
    }

    fn check_billing(&self, problems: &mut Vec<String>) {
        let b = &self.billing;
        let period = b.meter_period;
        if period.subsec_nanos() != 0 || period.as_secs() == 0 || 3600 % period.as_secs() != 0 {
            problems.push(format!(
                "billing.meter_period: {period:?} does not divide an hour; give whole seconds that do, such as 1h (the default), 15m or 1m"
            ));
        }
        if b.meter_interval < Duration::from_millis(100)
            || b.meter_interval > Duration::from_secs(600)
            || b.meter_interval > period
        {
            problems.push(
                "billing.meter_interval: give 100ms to 10m, no longer than billing.meter_period (default 15s)".into(),
            );
        }
        if b.close_after > Duration::from_secs(28 * 86_400) {
            problems.push("billing.close_after: give at most 28 days (default 1h)".into());
        }
    }

    fn webhook(&self, files: &ConfigFiles, problems: &mut Vec<String>) -> Option<Webhook> {
        let b = &self.billing;
        match (&b.webhook_url, &b.webhook_secret_file) {
            (None, None) => None,
            (Some(url), Some(path)) => {
                let Some(target) = HttpTarget::parse(url) else {
                    problems.push(format!(
                        "billing.webhook_url: `{url}` is not an http:// URL; give one such as http://127.0.0.1:9000/invoices (a local relay to the payment system)"
                    ));
                    return None;
                };
                match files.text(path) {
                    Ok(text) if text.trim().chars().count() >= 16 => Some(Webhook {
                        url: url.clone(),
                        target,
                        secret: text.trim().as_bytes().to_vec(),
                    }),
                    Ok(_) => {
                        problems.push(format!(
                            "billing.webhook_secret_file: {} holds fewer than 16 characters; write a long random secret (openssl rand -hex 32)",
                            path.display()
                        ));
                        None
                    }
                    Err(error) => {
                        problems.push(format!(
                            "billing.webhook_secret_file: cannot read {}: {error}",
                            path.display()
                        ));
                        None
                    }
                }
            }
            _ => {
                problems.push(
                    "billing.webhook_url, billing.webhook_secret_file: give both, or neither"
                        .into(),
                );
                None
            }
        }
    }

    fn secrets(&self, files: &ConfigFiles) -> Result<ClusterKeys, String> {
        let (key, text) = match (&self.secret, &self.secret_file) {
            (Some(_), Some(_)) => {
                return Err("secret, secret_file: set only one of them".into());
            }
            (Some(inline), None) => ("secret", inline.as_str()),
            (None, Some(path)) => {
                let text = files.text(path).map_err(|error| {
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
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect();
        let workers = lines
            .iter()
            .filter(|l| {
                l.starts_with(hearth_membership::WORKER_KEY_PREFIX)
                    || l.starts_with(hearth_membership::WORKER_IDENTITY_PREFIX)
            })
            .count();
        if workers > 0 {
            return self.worker_keys(key, &lines, workers);
        }
        let mut secrets = lines
            .iter()
            .enumerate()
            .map(|(idx, line)| decode_secret(key, idx, line));
        let primary = secrets
            .next()
            .unwrap_or_else(|| Err(format!("{key}: is empty; put `hearth keygen` output in it")))?;
        let accepted = secrets.collect::<Result<Vec<_>, _>>()?;
        Ok(ClusterKeys::Secrets(primary, accepted))
    }

    /// Worker keys, for a node that is a worker and nothing else.
    fn worker_keys(
        &self,
        key: &str,
        lines: &[&str],
        workers: usize,
    ) -> Result<ClusterKeys, String> {
        if workers != lines.len() {
            return Err(format!(
                "{key}: mixes cluster secrets and worker keys; hold one kind only"
            ));
        }
        if self.roles != [hearth_types::Role::Worker] {
            return Err(format!(
                "{key}: holds a worker key, which only a node with roles = [\"worker\"] may use; \
                 give servers and witnesses the cluster secret itself"
            ));
        }
        let fix = format!(
            "make them on a server with `hearth keygen --worker --name {}`",
            self.node_name
        );
        let (identities, keys): (Vec<&str>, Vec<&str>) = lines
            .iter()
            .partition(|l| l.starts_with(hearth_membership::WORKER_IDENTITY_PREFIX));
        let identity = match identities.as_slice() {
            [line] => line[hearth_membership::WORKER_IDENTITY_PREFIX.len()..]
                .rsplit_once(':')
                .and_then(|(name, hex)| Some((name.to_owned(), key_bytes(hex)?)))
                .filter(|(name, _)| *name == self.node_name)
                .ok_or_else(|| {
                    format!(
                        "{key}: the worker identity is not one for node_name {}; {fix}",
                        self.node_name
                    )
                })?,
            _ => {
                return Err(format!(
                    "{key}: a worker needs one worker identity line; {fix}"
                ));
            }
        };
        let mut keys = keys.iter().map(|line| {
            key_bytes(&line[hearth_membership::WORKER_KEY_PREFIX.len()..]).ok_or_else(|| {
                format!(
                    "{key}: a worker key is {} and 64 hex digits; {fix}",
                    hearth_membership::WORKER_KEY_PREFIX
                )
            })
        });
        let primary = keys
            .next()
            .unwrap_or_else(|| Err(format!("{key}: no worker key; {fix}")))?;
        let accepted = keys.collect::<Result<Vec<_>, _>>()?;
        Ok(ClusterKeys::WorkerKeys(primary, accepted, identity))
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
        let every = c.stats_interval;
        if every < std::time::Duration::from_millis(100)
            || every.as_millis() > u128::from(hearth_types::vmstats::MAX_GAP_MS)
        {
            problems.push(
                "compute.stats_interval: give 100ms to 10m (a longer gap is left blank)".into(),
            );
        }
        if !(2..=600).contains(&c.lease_secs) {
            problems.push(format!(
                "compute.lease_secs: {} is out of range; give 2 to 600 (default 15)",
                c.lease_secs
            ));
        }
        if c.migration_mib_per_sec == Some(0) {
            problems.push(
                "compute.migration_mib_per_sec: must be above zero; leave it out for no limit"
                    .into(),
            );
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
        let interval = s.uptime_interval;
        if interval < std::time::Duration::from_millis(100)
            || interval.as_millis() > u128::from(hearth_types::uptime::MAX_GAP_MS)
        {
            problems.push(
                "state.uptime_interval: give 100ms to 5m (a longer gap counts as unknown)".into(),
            );
        }
        let backups = s.backup_interval;
        if backups < std::time::Duration::from_secs(10)
            || backups > std::time::Duration::from_secs(7 * 24 * 3600)
        {
            problems.push("state.backup_interval: give 10s to 7d".into());
        }
        if !(10..=1_000_000).contains(&s.snapshot_every) {
            problems.push("state.snapshot_every: give 10 to 1000000 log entries".into());
        }
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
            let cluster_only: Vec<&str> = handler
                .events
                .iter()
                .filter(|e| e.cluster_only())
                .map(|e| e.as_str())
                .collect();
            if handler.scope == HandlerScope::Node && !cluster_only.is_empty() {
                problems.push(format!(
                    "handler[{idx}].events: {} events reach only cluster handlers; set scope = \"cluster\" and a name",
                    cluster_only.join(", ")
                ));
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
    fn settings(&self, files: &ConfigFiles, problems: &mut Vec<String>) -> Option<PushSettings> {
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
        let secret = self.key_secret(files).map_err(|p| problems.push(p)).ok();
        let key = TsigKey::hmac_sha256(key_name?, secret?);
        Some(PushSettings::new(server?, key))
    }

    /// The secret from `key_file`. Like the cluster secret, its text never goes into a message.
    fn key_secret(&self, files: &ConfigFiles) -> Result<Vec<u8>, String> {
        let path = self.key_file.display();
        let text = files
            .text(&self.key_file)
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

/// 32 bytes from 64 hex digits.
fn key_bytes(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect();
    bytes?.try_into().ok()
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
        && HttpTarget::parse(url).is_none()
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
