//! The zone this agent serves, and the snapshot of the view that answers are computed from.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hearth_types::{MemberState, Role, View};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{Name, RData, Record};
use serde::{Deserialize, Serialize};

/// Refresh, retry and expire only steer secondaries pulling zone transfers. Hearth has none
/// (every agent answers from its own view), so these are the RFC 1912 recommendations.
const SOA_REFRESH: i32 = 3_600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 1_209_600;

/// A DNS label is at most 63 bytes (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// What to answer for a service when none of its instances passes its check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NoneHealthy {
    /// Fail open: answer every instance on an up (alive or suspect) node, whatever its check
    /// says, on the theory that a check failing everywhere is more likely the check's fault.
    #[default]
    AllUp,
    /// Answer NODATA, so that clients fail fast instead of reaching a broken instance.
    Empty,
}

/// The co-op's zone as this agent serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// The apex, fully qualified and lowercase (`Zone::new` makes it so).
    pub origin: Name,
    /// The TTL of every record served, and the SOA minimum (the negative-caching TTL).
    pub ttl: u32,
    /// What a service answers when none of its instances passes its check.
    pub none_healthy: NoneHealthy,
}

impl Zone {
    /// A zone at `origin`, made fully qualified and lowercase.
    pub fn new(origin: Name, ttl: u32, none_healthy: NoneHealthy) -> Self {
        let mut origin = origin.to_lowercase();
        origin.set_fqdn(true);
        Self {
            origin,
            ttl,
            none_healthy,
        }
    }
}

/// The next SOA serial after `previous`: the wall clock when it is ahead, else one more.
/// Serials wrap as RFC 1982 allows (and the clock only reaches 2^32 in 2106).
pub fn next_serial(previous: u32, unix_seconds: u64) -> u32 {
    (u64::from(previous) + 1).max(unix_seconds) as u32
}

/// The addresses one name below the apex answers with, sorted and deduplicated. Both lists
/// empty means the name exists without an address: NODATA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Addresses {
    pub(crate) v4: Vec<Ipv4Addr>,
    pub(crate) v6: Vec<Ipv6Addr>,
}

impl Addresses {
    fn collect(ips: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut addresses = Self::default();
        for ip in ips {
            match ip {
                IpAddr::V4(v4) => addresses.v4.push(v4),
                IpAddr::V6(v6) => addresses.v6.push(v6),
            }
        }
        addresses.v4.sort_unstable();
        addresses.v4.dedup();
        addresses.v6.sort_unstable();
        addresses.v6.dedup();
        addresses
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub(crate) fn v4_records<'a>(
        &'a self,
        owner: &'a Name,
        ttl: u32,
    ) -> impl Iterator<Item = Record> + 'a {
        let to_record =
            move |ip: &Ipv4Addr| Record::from_rdata(owner.clone(), ttl, RData::A(A(*ip)));
        self.v4.iter().map(to_record)
    }

    pub(crate) fn v6_records<'a>(
        &'a self,
        owner: &'a Name,
        ttl: u32,
    ) -> impl Iterator<Item = Record> + 'a {
        let to_record =
            move |ip: &Ipv6Addr| Record::from_rdata(owner.clone(), ttl, RData::AAAA(AAAA(*ip)));
        self.v6.iter().map(to_record)
    }
}

/// What the apex answers, computed once per snapshot since every negative answer carries the SOA.
#[derive(Debug, Clone)]
pub(crate) struct Apex {
    /// Owned by the origin, with TTL `zone.ttl`.
    pub(crate) soa: Record,
    /// Sorted; the first is the SOA's primary.
    pub(crate) name_servers: Vec<Name>,
    /// A and AAAA records for the name servers, as their names resolve in this zone.
    pub(crate) glue: Vec<Record>,
}

/// The data one answer is computed from: the view, the zone serial, and an index of every name
/// below the apex. Rebuilt by the server whenever the view changes, so answering never scans it.
#[derive(Debug)]
pub struct ZoneSnapshot {
    view: Arc<View>,
    serial: u32,
    /// Keyed by the lowercase label under the apex.
    names: HashMap<Box<[u8]>, Addresses>,
    apex: Apex,
}

impl ZoneSnapshot {
    /// Indexes `view` for `zone`; answer with the same zone.
    pub fn new(zone: &Zone, view: Arc<View>, serial: u32) -> Self {
        let names = index_names(&view, zone.none_healthy);
        let apex = build_apex(zone, &view, serial, &names);
        Self {
            view,
            serial,
            names,
            apex,
        }
    }

    pub fn view(&self) -> &Arc<View> {
        &self.view
    }

    pub fn serial(&self) -> u32 {
        self.serial
    }

    pub(crate) fn apex(&self) -> &Apex {
        &self.apex
    }

    /// The addresses of the name `<label>.<zone>`, matched case-insensitively without allocating.
    pub(crate) fn addresses(&self, label: &[u8]) -> Option<&Addresses> {
        let mut lowered = [0u8; MAX_LABEL_LEN];
        let key = lowered.get_mut(..label.len())?;
        key.copy_from_slice(label);
        key.make_ascii_lowercase();
        self.names.get(&*key)
    }
}

/// Every name below the apex: nodes that have not left, then services, so that a service
/// replaces a node of the same name.
fn index_names(view: &View, policy: NoneHealthy) -> HashMap<Box<[u8]>, Addresses> {
    let mut names = HashMap::new();
    let present = view
        .members
        .values()
        .filter(|m| m.state != MemberState::Left);
    for member in present {
        let addresses = Addresses::collect([member.meta.address]);
        names.insert(name_key(&member.meta.name), addresses);
    }
    for service in listed_services(view) {
        let addresses = service_addresses(view, &service, policy);
        names.insert(name_key(&service), addresses);
    }
    names
}

/// Services listed by any member in any state: such a name exists even with nothing to answer.
fn listed_services(view: &View) -> BTreeSet<String> {
    let instances = view.members.values().flat_map(|member| &member.services);
    instances
        .map(|instance| instance.service.to_ascii_lowercase())
        .collect()
}

fn service_addresses(view: &View, service: &str, policy: NoneHealthy) -> Addresses {
    let healthy = Addresses::collect(view.healthy_instances(service));
    if !healthy.is_empty() || policy == NoneHealthy::Empty {
        return healthy;
    }
    let up = view.instances_on_up_nodes(service);
    Addresses::collect(up.map(|instance| instance.address))
}

fn name_key(name: &str) -> Box<[u8]> {
    name.to_ascii_lowercase().into_bytes().into_boxed_slice()
}

fn build_apex(
    zone: &Zone,
    view: &View,
    serial: u32,
    names: &HashMap<Box<[u8]>, Addresses>,
) -> Apex {
    let name_servers = name_servers(zone, view);
    let glue = name_servers
        .iter()
        .flat_map(|ns| glue_records(zone, ns, names))
        .collect();
    Apex {
        soa: soa_record(zone, serial, name_servers.first()),
        name_servers,
        glue,
    }
}

/// `<name>.<zone>` of every up server, or of this node when no server is up (it answers anyway).
fn name_servers(zone: &Zone, view: &View) -> Vec<Name> {
    let mut hosts: Vec<&str> = view
        .members
        .values()
        .filter(|m| m.state.is_up() && m.meta.roles.contains(&Role::Server))
        .map(|m| m.meta.name.as_str())
        .collect();
    if hosts.is_empty() {
        hosts.push(&view.self_name);
    }
    let mut names: Vec<Name> = hosts
        .into_iter()
        .filter_map(|host| origin_child(&zone.origin, host))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// `<host>.<origin>` in lowercase, or None when `host` cannot be a label.
fn origin_child(origin: &Name, host: &str) -> Option<Name> {
    origin
        .prepend_label(host.to_ascii_lowercase().as_bytes())
        .ok()
}

fn glue_records(zone: &Zone, ns: &Name, names: &HashMap<Box<[u8]>, Addresses>) -> Vec<Record> {
    let Some(addresses) = ns.iter().next().and_then(|label| names.get(label)) else {
        return Vec::new();
    };
    let v4 = addresses.v4_records(ns, zone.ttl);
    v4.chain(addresses.v6_records(ns, zone.ttl)).collect()
}

fn soa_record(zone: &Zone, serial: u32, primary: Option<&Name>) -> Record {
    let origin = &zone.origin;
    let mname = primary.unwrap_or(origin).clone();
    let rname = origin
        .prepend_label("hostmaster")
        .unwrap_or_else(|_| origin.clone());
    let soa = SOA::new(
        mname,
        rname,
        serial,
        SOA_REFRESH,
        SOA_RETRY,
        SOA_EXPIRE,
        zone.ttl,
    );
    Record::from_rdata(origin.clone(), zone.ttl, RData::SOA(soa))
}
