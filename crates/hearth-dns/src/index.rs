//! The index of every name in the zone and what it holds, built once per snapshot from the view
//! and the desired state, so that answering a query costs one hash lookup.
//!
//! Precedence rules live in `Pending::finish`: a name's A and AAAA come from one source, a
//! service before a static set before a node; other static types sit beside them; a CNAME is
//! kept only on a name with no other data.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use hearth_types::desired::{DesiredState, RecordData, RecordSet};
use hearth_types::{CheckStatus, MemberState, ServiceInstance, View};
use hickory_proto::rr::rdata::{A, AAAA, CAA, CNAME, MX, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::settings::{NoneHealthy, Zone};

/// A name is at most 255 bytes on the wire, and a key is the wire form of part of one.
const MAX_KEY_LEN: usize = 255;
/// A TXT character-string is at most 255 bytes (RFC 1035 §3.3).
const MAX_TXT_STRING: usize = 255;

/// The records of one type at one name, sharing one TTL.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RrSet {
    pub(crate) rtype: RecordType,
    pub(crate) ttl: u32,
    pub(crate) data: Vec<RData>,
}

impl RrSet {
    /// The set as records owned by `owner` (the name as the client spelled it, for answers).
    pub(crate) fn records<'a>(&'a self, owner: &'a Name) -> impl Iterator<Item = Record> + 'a {
        let to_record =
            move |data: &RData| Record::from_rdata(owner.clone(), self.ttl, data.clone());
        self.data.iter().map(to_record)
    }

    pub(crate) fn is_address(&self) -> bool {
        matches!(self.rtype, RecordType::A | RecordType::AAAA)
    }
}

/// What one name holds. No sets at all is an empty non-terminal, or a service or node with
/// nothing to answer right now: the name exists and every query is NODATA.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct NameData {
    /// At most one set per type, in the order ANY lists them. A CNAME set is always alone.
    pub(crate) rrsets: Vec<RrSet>,
    /// The apex also holds the SOA and NS records, which `Apex` keeps.
    pub(crate) is_apex: bool,
    /// A service or node holds this name, so its A and AAAA sets follow the view and may be
    /// empty right now.
    pub(crate) follows_view: bool,
}

impl NameData {
    /// The target when this name is an alias.
    pub(crate) fn cname(&self) -> Option<&Name> {
        match self.rrsets.as_slice() {
            [set] => set.data.iter().find_map(|data| match data {
                RData::CNAME(cname) => Some(&cname.0),
                _ => None,
            }),
            _ => None,
        }
    }

    /// The sets a query of `qtype` asks for.
    pub(crate) fn matching(&self, qtype: RecordType) -> impl Iterator<Item = &RrSet> {
        let wanted = move |set: &&RrSet| qtype == RecordType::ANY || set.rtype == qtype;
        self.rrsets.iter().filter(wanted)
    }

    pub(crate) fn addresses(&self) -> impl Iterator<Item = &RrSet> {
        self.rrsets.iter().filter(|set| set.is_address())
    }
}

/// Where a name falls relative to the zone.
pub(crate) enum Location<'i> {
    Outside,
    /// In the zone, but no such name: NXDOMAIN.
    Missing,
    Found(&'i NameData),
}

/// Every name of the zone, the apex included (its key is empty). A persistent map, so that
/// the next snapshot's index shares every name the change did not touch (see `tracked`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct NameIndex {
    /// Keyed by the labels under the apex, leftmost first, each as a length byte and the
    /// lowercase label: unambiguous even for labels holding dots, and writable from a query
    /// name into a stack buffer.
    names: imbl::HashMap<Box<[u8]>, Arc<NameData>>,
    /// The sum of every name's `name_digest`: equal zones sum equal whatever order built
    /// them, and a change of one name costs that name's digest.
    digest: u64,
}

impl NameIndex {
    /// A digest of every name and its record sets, the same for equal zones.
    pub(crate) fn digest(&self) -> u64 {
        self.digest
    }

    /// What `key` holds now, if the name exists.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&NameData> {
        self.names.get(key).map(|data| &**data)
    }

    /// How many names hold the very same data in both indexes, not only equal data: what a
    /// change left untouched.
    #[cfg(test)]
    pub(crate) fn shared_with(&self, other: &Self) -> usize {
        let same = |key: &[u8], data: &Arc<NameData>| {
            other.names.get(key).is_some_and(|o| Arc::ptr_eq(o, data))
        };
        self.names.iter().filter(|(k, d)| same(k, d)).count()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    /// Sets what `key` holds (`None`: the name does not exist).
    pub(crate) fn set(&mut self, key: Box<[u8]>, data: Option<NameData>) {
        if let Some(old) = self.names.remove(&key) {
            self.digest = self.digest.wrapping_sub(name_digest(&key, &old));
        }
        if let Some(data) = data {
            self.digest = self.digest.wrapping_add(name_digest(&key, &data));
            self.names.insert(key, Arc::new(data));
        }
    }

    /// The co-op zone's index, built whole (the server follows changes with `tracked`).
    pub(crate) fn build(zone: &Zone, view: &View, desired: &DesiredState) -> Self {
        crate::tracked::Tracked::build(zone, view, desired).index
    }

    /// The index of a member's zone: its record sets, and the addresses of the owner's VMs
    /// at the names that follow them (nothing, so NODATA, while a VM has none or is gone).
    pub(crate) fn build_member(
        zone: &Zone,
        member: &hearth_types::zones::MemberZone,
        desired: &DesiredState,
    ) -> Self {
        let mut pending: HashMap<Box<[u8]>, Pending> = HashMap::new();
        pending.entry(Box::default()).or_default();
        for record_set in member.records.values() {
            let owner = zone_file_name(&zone.origin, &record_set.name);
            let Some(key) = owner.and_then(|owner| key_in_zone(&zone.origin, &owner)) else {
                continue;
            };
            if let Some(set) = static_set(&zone.origin, record_set, zone.ttl) {
                pending.entry(key).or_default().add_static(set);
            }
        }
        for (name, vm) in &member.follows {
            let owner = zone_file_name(&zone.origin, name);
            let Some(key) = owner.and_then(|owner| key_in_zone(&zone.origin, &owner)) else {
                continue;
            };
            let entry = pending.entry(key).or_default();
            let ips = desired
                .compute
                .vms
                .values()
                .map(|v| &v.value)
                .find(|v| v.request.name == *vm && v.request.owner == member.owner && !v.deleting)
                .map(|v| v.ips.iter().map(|a| a.address).collect::<Vec<_>>())
                .unwrap_or_default();
            for set in address_sets(ips, zone.ttl) {
                entry.add_static(set);
            }
        }
        add_empty_non_terminals(&mut pending);
        let mut index = Self::default();
        for (key, entry) in pending {
            let is_apex = key.is_empty();
            index.set(key, Some(entry.finish(zone.ttl, is_apex)));
        }
        index
    }

    /// Finds `name` without allocating; matching ignores ASCII case. There are no wildcards.
    pub(crate) fn locate(&self, origin: &Name, name: &Name) -> Location<'_> {
        if !origin.zone_of(name) {
            return Location::Outside;
        }
        let n_labels = labels_below(origin, name);
        let mut buf = [0u8; MAX_KEY_LEN];
        let found = write_key(name, n_labels, &mut buf).and_then(|key| self.get(key));
        found.map_or(Location::Missing, Location::Found)
    }

    /// Every name of the zone, fully qualified and lowercase, with what it holds; in no
    /// particular order.
    pub(crate) fn names<'i>(
        &'i self,
        origin: &'i Name,
    ) -> impl Iterator<Item = (Name, &'i NameData)> + 'i {
        let names = self.names.iter();
        names.filter_map(|(key, data)| Some((key_name(origin, key)?, &**data)))
    }
}

/// One name's part of `NameIndex::digest`: the first eight bytes of a SHA-256 over its key
/// and its record sets (the data of a set by wire form, sorted).
fn name_digest(key: &[u8], data: &NameData) -> u64 {
    use hickory_proto::serialize::binary::BinEncodable;
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update((key.len() as u32).to_be_bytes());
    hash.update(key);
    hash.update([u8::from(data.is_apex), u8::from(data.follows_view)]);
    for set in &data.rrsets {
        hash.update(u16::from(set.rtype).to_be_bytes());
        hash.update(set.ttl.to_be_bytes());
        let mut wire: Vec<Vec<u8>> = set.data.iter().filter_map(|d| d.to_bytes().ok()).collect();
        wire.sort();
        hash.update((wire.len() as u32).to_be_bytes());
        for item in wire {
            hash.update((item.len() as u32).to_be_bytes());
            hash.update(item);
        }
    }
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// What is known about one name while the index is built.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Pending {
    /// Set when a service of this name is listed, even with nothing to answer.
    service: Option<Vec<IpAddr>>,
    /// Set when a node of this name has not left.
    node: Option<Vec<IpAddr>>,
    /// Static sets, at most one per type.
    pub(crate) statics: Vec<RrSet>,
}

impl Pending {
    pub(crate) fn add_static(&mut self, set: RrSet) {
        let Some(same) = self.statics.iter_mut().find(|s| s.rtype == set.rtype) else {
            self.statics.push(set);
            return;
        };
        // Only `mail` and `mail.<zone>.` written as two sets get here: one set, the lower TTL.
        same.ttl = same.ttl.min(set.ttl);
        for data in set.data {
            if !same.data.contains(&data) {
                same.data.push(data);
            }
        }
    }

    pub(crate) fn finish(self, ttl: u32, is_apex: bool) -> NameData {
        let Pending {
            service,
            node,
            statics,
        } = self;
        let has_static_addresses = statics.iter().any(RrSet::is_address);
        // A service or node counts as data even with no address at the moment, so that an
        // alias beside it does not come and go with health checks.
        let has_other_data = service.is_some()
            || node.is_some()
            || statics.iter().any(|s| s.rtype != RecordType::CNAME);
        let has_service = service.is_some();
        let follows_view = has_service || node.is_some();
        let mut rrsets: Vec<RrSet> = match (service, node) {
            (Some(ips), _) => address_sets(ips, ttl),
            (None, Some(ips)) if !has_static_addresses => address_sets(ips, ttl),
            _ => Vec::new(),
        };
        let served = |set: &RrSet| match set.rtype {
            RecordType::A | RecordType::AAAA => !has_service,
            // RFC 1034 §3.6.2 forbids a CNAME beside other data; the other data wins.
            RecordType::CNAME => !has_other_data && !is_apex,
            _ => true,
        };
        rrsets.extend(statics.into_iter().filter(served));
        rrsets.sort_by_key(|set| type_order(set.rtype));
        if let Some(cname) = rrsets.iter_mut().find(|s| s.rtype == RecordType::CNAME) {
            cname.data.truncate(1);
        }
        NameData {
            rrsets,
            is_apex,
            follows_view,
        }
    }
}

/// The order ANY lists sets in: addresses first, then as `RecordData` lists its types.
fn type_order(rtype: RecordType) -> u8 {
    match rtype {
        RecordType::A => 0,
        RecordType::AAAA => 1,
        RecordType::CNAME => 2,
        RecordType::TXT => 3,
        RecordType::MX => 4,
        RecordType::SRV => 5,
        RecordType::CAA => 6,
        _ => 7,
    }
}

/// The A and AAAA sets of `ips`, each sorted and deduplicated; empty sets left out.
pub(crate) fn address_sets(mut ips: Vec<IpAddr>, ttl: u32) -> Vec<RrSet> {
    ips.sort_unstable();
    ips.dedup();
    let (v4, v6): (Vec<RData>, Vec<RData>) = ips
        .into_iter()
        .map(|ip| match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        })
        .partition(|data| matches!(data, RData::A(_)));
    [(RecordType::A, v4), (RecordType::AAAA, v6)]
        .into_iter()
        .filter(|(_, data)| !data.is_empty())
        .map(|(rtype, data)| RrSet { rtype, ttl, data })
        .collect()
}

/// Nodes that have not left answer at `<node>.<zone>`, drained or not.
pub(crate) fn add_nodes(pending: &mut HashMap<Box<[u8]>, Pending>, zone: &Zone, view: &View) {
    let present = view
        .members
        .values()
        .filter(|m| m.state != MemberState::Left);
    for member in present {
        let Some(key) = child_key(&zone.origin, &member.meta.name) else {
            continue;
        };
        let entry = pending.entry(key).or_default();
        entry.node.get_or_insert_default().push(member.meta.address);
    }
}

pub(crate) fn add_services(
    pending: &mut HashMap<Box<[u8]>, Pending>,
    zone: &Zone,
    view: &View,
    desired: &DesiredState,
) {
    for service in listed_services(view) {
        let Some(key) = child_key(&zone.origin, &service) else {
            continue;
        };
        let ips = service_addresses(view, desired, &service, zone.none_healthy);
        let entry = pending.entry(key).or_default();
        entry.service.get_or_insert_default().extend(ips);
    }
}

/// Services listed by any member in any state: such a name exists even with nothing to answer.
fn listed_services(view: &View) -> Vec<String> {
    let instances = view.members.values().flat_map(|member| &member.services);
    let mut services: Vec<String> = instances
        .map(|instance| instance.service.to_ascii_lowercase())
        .collect();
    services.sort_unstable();
    services.dedup();
    services
}

/// The instances a service answers with: those passing their check on an up node that is not
/// drained, leaving out the ones on a suspect node while another passes on a node not under
/// suspicion; when none passes and the policy is `AllUp`, every instance on such a node. A
/// drained node's instances are never answered, as if their checks failed.
///
/// A suspect node missed its probes and is about to be declared dead unless it answers: at 10
/// nodes that is about 1.5 s sooner than its death, and a node that was only slow comes back
/// at its next refutation, with nothing lost but a few answers without it.
fn service_addresses(
    view: &View,
    desired: &DesiredState,
    service: &str,
    policy: NoneHealthy,
) -> Vec<IpAddr> {
    let serving_nodes = view
        .members
        .values()
        .filter(|m| m.state.is_up() && !desired.is_drained(&m.meta.name));
    let instances: Vec<(&ServiceInstance, MemberState)> = serving_nodes
        .flat_map(|member| member.services.iter().map(|s| (s, member.state)))
        .filter(|(instance, _)| instance.service.eq_ignore_ascii_case(service))
        .collect();
    let passing = || {
        instances
            .iter()
            .filter(|(instance, _)| instance.status == CheckStatus::Passing)
    };
    let trusted: Vec<IpAddr> = passing()
        .filter(|(_, state)| *state == MemberState::Alive)
        .map(|(instance, _)| instance.address)
        .collect();
    if !trusted.is_empty() {
        return trusted;
    }
    let passing: Vec<IpAddr> = passing().map(|(instance, _)| instance.address).collect();
    if !passing.is_empty() || policy == NoneHealthy::Empty {
        return passing;
    }
    instances
        .iter()
        .map(|(instance, _)| instance.address)
        .collect()
}

/// The addresses of each VM (`<name>.vm.<zone>`), as the VMs not being deleted hold them.
/// Only what this gives reaches DNS from the VMs, so a snapshot is rebuilt when it changes.
pub(crate) fn vm_addresses(desired: &DesiredState) -> Vec<(&str, Vec<IpAddr>)> {
    desired
        .compute
        .vms
        .values()
        .map(|vm| &vm.value)
        .filter(|vm| !vm.deleting && !vm.ips.is_empty())
        .map(|vm| {
            let ips = vm.ips.iter().map(|a| a.address).collect();
            (vm.request.name.as_str(), ips)
        })
        .collect()
}

/// Each VM with addresses answers A and AAAA at `<name>.vm.<zone>` (a VM's name is unique
/// in the cluster; of names equal but for case, the first), unless a static set written at
/// the same name gives it addresses: the VM addresses of each name.
pub(crate) fn vm_names(zone: &Zone, desired: &DesiredState) -> HashMap<Box<[u8]>, Vec<IpAddr>> {
    let mut names = HashMap::new();
    let Some(under) = origin_child(&zone.origin, "vm") else {
        return names;
    };
    for (name, ips) in vm_addresses(desired) {
        let owner = origin_child(&under, name);
        let Some(key) = owner.and_then(|owner| key_in_zone(&zone.origin, &owner)) else {
            continue;
        };
        names.entry(key).or_insert(ips);
    }
    names
}

/// The key of the name a static record set is written at; None when the name cannot be read
/// or lies outside the zone, and then the set is left out rather than fail the zone.
pub(crate) fn record_key_in_zone(zone: &Zone, record_set: &RecordSet) -> Option<Box<[u8]>> {
    let owner = zone_file_name(&zone.origin, &record_set.name)?;
    key_in_zone(&zone.origin, &owner)
}

pub(crate) fn static_set(origin: &Name, record_set: &RecordSet, zone_ttl: u32) -> Option<RrSet> {
    let first_type = record_set.values.first()?.type_name();
    let mut values: Vec<&RecordData> = record_set
        .values
        .iter()
        .filter(|value| value.type_name() == first_type)
        .collect();
    values.sort_unstable();
    values.dedup();
    let data: Vec<RData> = values
        .into_iter()
        .filter_map(|value| static_rdata(origin, value))
        .collect();
    Some(RrSet {
        rtype: data.first()?.record_type(),
        ttl: record_set.ttl.unwrap_or(zone_ttl),
        data,
    })
}

fn static_rdata(origin: &Name, value: &RecordData) -> Option<RData> {
    let target = |text: &str| zone_file_name(origin, text);
    let data = match value {
        RecordData::A { address } => RData::A(A(*address)),
        RecordData::Aaaa { address } => RData::AAAA(AAAA(*address)),
        RecordData::Cname { target: name } => RData::CNAME(CNAME(target(name)?)),
        RecordData::Txt { text } => RData::TXT(txt(text)),
        RecordData::Mx {
            preference,
            exchange,
        } => RData::MX(MX::new(*preference, target(exchange)?)),
        RecordData::Srv {
            priority,
            weight,
            port,
            target: name,
        } => RData::SRV(SRV::new(*priority, *weight, *port, target(name)?)),
        RecordData::Caa { flags, tag, value } => {
            // Any property, its value as written (the struct has no general constructor).
            let mut caa = CAA::new_issue(flags & 0x80 != 0, None, Vec::new());
            caa.reserved_flags = flags & 0x7f;
            caa.tag = tag.to_ascii_lowercase();
            caa.value = value.as_bytes().to_vec();
            RData::CAA(caa)
        }
    };
    Some(data)
}

/// One TXT record; text over 255 bytes (which validation refuses, but the state may predate
/// it) is split into several strings rather than make the whole answer fail to encode.
fn txt(text: &str) -> TXT {
    let mut strings: Vec<&[u8]> = text.as_bytes().chunks(MAX_TXT_STRING).collect();
    if strings.is_empty() {
        strings.push(b"");
    }
    TXT::from_bytes(strings)
}

/// A name as a zone file reads it: absolute with a trailing dot, else relative to the zone;
/// `@` is the apex. Lowercase, so that answers spell it one way.
fn zone_file_name(origin: &Name, text: &str) -> Option<Name> {
    if text == "@" {
        return Some(origin.clone());
    }
    let name = Name::from_ascii(text).ok()?;
    let name = if name.is_fqdn() {
        name
    } else {
        name.append_domain(origin).ok()?
    };
    Some(name.to_lowercase())
}

/// `<label>.<origin>` in lowercase, or None when `label` cannot be a label.
pub(crate) fn origin_child(origin: &Name, label: &str) -> Option<Name> {
    origin
        .prepend_label(label.to_ascii_lowercase().as_bytes())
        .ok()
}

fn child_key(origin: &Name, label: &str) -> Option<Box<[u8]>> {
    key_in_zone(origin, &origin_child(origin, label)?)
}

fn key_in_zone(origin: &Name, name: &Name) -> Option<Box<[u8]>> {
    if !origin.zone_of(name) {
        return None;
    }
    let mut buf = [0u8; MAX_KEY_LEN];
    write_key(name, labels_below(origin, name), &mut buf).map(Box::from)
}

/// The name a key stands for (see `NameIndex::names`): its labels prepended to `origin`.
fn key_name(origin: &Name, key: &[u8]) -> Option<Name> {
    let mut labels = Vec::new();
    let mut rest = key;
    while let Some((&len, tail)) = rest.split_first() {
        let (label, tail) = tail.split_at_checked(usize::from(len))?;
        labels.push(label);
        rest = tail;
    }
    let prepend = |name: Name, label: &&[u8]| name.prepend_label(*label).ok();
    labels.iter().rev().try_fold(origin.clone(), prepend)
}

fn labels_below(origin: &Name, name: &Name) -> usize {
    name.iter().len().saturating_sub(origin.iter().len())
}

/// Writes the key of the `n_labels` leftmost labels of `name` into `buf` (see `NameIndex::names`).
fn write_key<'b>(name: &Name, n_labels: usize, buf: &'b mut [u8; MAX_KEY_LEN]) -> Option<&'b [u8]> {
    let mut len = 0;
    for label in name.iter().take(n_labels) {
        let end = len + 1 + label.len();
        let (prefix, lowered) = buf.get_mut(len..end)?.split_first_mut()?;
        *prefix = u8::try_from(label.len()).ok()?;
        lowered.copy_from_slice(label);
        lowered.make_ascii_lowercase();
        len = end;
    }
    buf.get(..len)
}

/// Makes every name between a deeper name and the apex exist, without data, so that it is
/// NODATA rather than NXDOMAIN (RFC 8020): `_tcp` when `_imap._tcp` has records.
fn add_empty_non_terminals(pending: &mut HashMap<Box<[u8]>, Pending>) {
    let ancestors: Vec<Box<[u8]>> = pending
        .keys()
        .flat_map(|key| proper_ancestors(key))
        .map(Box::from)
        .collect();
    for ancestor in ancestors {
        pending.entry(ancestor).or_default();
    }
}

/// The keys of the names strictly between `key`'s name and the apex, nearest first.
pub(crate) fn proper_ancestors(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = key;
    std::iter::from_fn(move || {
        let (&len, _) = rest.split_first()?;
        rest = rest.get(1 + usize::from(len)..)?;
        (!rest.is_empty()).then_some(rest)
    })
}
