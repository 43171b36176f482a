//! The snapshot of the view and desired state that answers are computed from: the name index,
//! the apex (SOA, name servers, glue) and the serial, for the zone this agent serves.

use std::sync::Arc;

use hearth_types::desired::DesiredState;
use hearth_types::{Role, View};
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData, Record};

use crate::index::{Location, NameIndex, origin_child};
use crate::tracked::Tracked;

/// Re-exported so that the modules answering and publishing the zone name it beside the snapshot.
pub use crate::settings::Zone;

/// Refresh, retry and expire only steer secondaries pulling zone transfers. Hearth has none
/// (every agent answers from its own view); these are values the checks registries run before
/// a delegation accept (Zonemaster: refresh at least 4 hours, retry at least 1 hour and below
/// refresh, expire at least a week).
const SOA_REFRESH: i32 = 14_400;
const SOA_RETRY: i32 = 3_600;
const SOA_EXPIRE: i32 = 1_209_600;

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

/// The data one answer is computed from: the view, the desired state, the zone serial, and an
/// index of every name in the zone. Rebuilt by the server whenever the view, or the static
/// records or drain flags of the desired state, change, so answering never scans either.
#[derive(Debug)]
pub struct ZoneSnapshot {
    view: Arc<View>,
    desired: Arc<DesiredState>,
    serial: u32,
    /// The co-op zone's index, with what it was built from.
    tracked: Tracked,
    apex: Apex,
    /// Members' verified zones, the deepest first.
    members: Vec<MemberPart>,
}

/// A member's verified zone: its own index and apex (the co-op's name servers, its own
/// SOA and serial).
#[derive(Debug)]
struct MemberPart {
    zone: Zone,
    index: NameIndex,
    apex: Apex,
}

/// The zone a query falls in, with what answers it: the co-op's, or a member's.
pub(crate) struct Part<'s> {
    pub(crate) zone: &'s Zone,
    pub(crate) index: &'s NameIndex,
    pub(crate) apex: &'s Apex,
}

impl Part<'_> {
    /// Where `name` falls in this part's zone.
    pub(crate) fn locate(&self, name: &Name) -> Location<'_> {
        self.index.locate(&self.zone.origin, name)
    }
}

impl ZoneSnapshot {
    /// Indexes `view` and the static records and drain flags of `desired` for `zone`, with the
    /// serial its content gives (see [`content_serial`]): servers with the same view serve the
    /// same zone under the same serial, as registries' consistency checks expect, and an
    /// unchanged zone keeps its serial.
    pub fn build(zone: &Zone, view: Arc<View>, desired: Arc<DesiredState>) -> Self {
        let tracked = Tracked::build(zone, &view, &desired);
        Self::with_serial(zone, view, desired, tracked)
    }

    /// As [`ZoneSnapshot::build`] for the same `zone`, from this snapshot: the index follows
    /// only the names the change touches, in time proportional to the change.
    pub fn follow(&self, zone: &Zone, view: Arc<View>, desired: Arc<DesiredState>) -> Self {
        let before = Some((&*self.view, &*self.desired));
        let tracked = self.tracked.follow(before, zone, &view, &desired);
        Self::with_serial(zone, view, desired, tracked)
    }

    fn with_serial(
        zone: &Zone,
        view: Arc<View>,
        desired: Arc<DesiredState>,
        tracked: Tracked,
    ) -> Self {
        let mut snapshot = Self::from_parts(zone, view, desired, tracked, 0);
        let apex = &mut snapshot.apex;
        snapshot.serial = content_serial(&snapshot.tracked.index, &apex.name_servers, &apex.glue);
        apex.soa = soa_record(zone, snapshot.serial, apex.name_servers.first());
        snapshot
    }

    /// As [`ZoneSnapshot::build`], with a serial of the caller's (tests).
    pub fn new(zone: &Zone, view: Arc<View>, desired: Arc<DesiredState>, serial: u32) -> Self {
        let tracked = Tracked::build(zone, &view, &desired);
        Self::from_parts(zone, view, desired, tracked, serial)
    }

    fn from_parts(
        zone: &Zone,
        view: Arc<View>,
        desired: Arc<DesiredState>,
        tracked: Tracked,
        serial: u32,
    ) -> Self {
        let apex = build_apex(zone, &view, serial, &tracked.index);
        let members = member_parts(zone, &apex.name_servers, &desired);
        Self {
            view,
            desired,
            serial,
            tracked,
            apex,
            members,
        }
    }

    pub fn view(&self) -> &Arc<View> {
        &self.view
    }

    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Whether a rebuild from these inputs would serve the same zone, so that bumping the serial
    /// for it would be noise. Only the static records, the drain flags and the VMs' addresses
    /// of the desired state reach DNS; the rest of it (cluster-wide services, recorded events and their deliveries)
    /// changes often without touching the zone.
    pub(crate) fn is_built_from(&self, view: &View, desired: &DesiredState) -> bool {
        *self.view == *view
            && self.desired.records == desired.records
            && self.desired.drained == desired.drained
            && (self.desired.compute.vms.ptr_eq(&desired.compute.vms)
                || crate::index::vm_addresses(&self.desired) == crate::index::vm_addresses(desired))
            && self.desired.zones == desired.zones
    }

    /// The zone `name` falls in: the co-op's, else the deepest verified member zone holding
    /// it; `None` for a name nobody here answers for (REFUSED).
    pub(crate) fn part<'s>(&'s self, zone: &'s Zone, name: &Name) -> Option<Part<'s>> {
        if zone.origin.zone_of(name) {
            return Some(Part {
                zone,
                index: &self.tracked.index,
                apex: &self.apex,
            });
        }
        let member = self.members.iter().find(|m| m.zone.origin.zone_of(name))?;
        Some(Part {
            zone: &member.zone,
            index: &member.index,
            apex: &member.apex,
        })
    }
}

/// The verified member zones of `desired`, answered with the co-op's name servers; one
/// that overlaps the co-op's zone (a claim made through a node with another `[dns] zone`)
/// is left out rather than shadow any of it.
fn member_parts(co_op: &Zone, name_servers: &[Name], desired: &DesiredState) -> Vec<MemberPart> {
    let mut parts: Vec<MemberPart> = desired
        .zones
        .values()
        .map(|z| &z.value)
        .filter(|z| z.verified)
        .filter_map(|member| {
            let origin = Name::from_ascii(&member.apex).ok()?;
            let zone = Zone::new(origin, co_op.ttl, co_op.none_healthy);
            if co_op.origin.zone_of(&zone.origin) || zone.origin.zone_of(&co_op.origin) {
                return None;
            }
            let index = NameIndex::build_member(&zone, member, desired);
            let serial = content_serial(&index, name_servers, &[]);
            let apex = Apex {
                soa: soa_record(&zone, serial, name_servers.first()),
                name_servers: name_servers.to_vec(),
                glue: Vec::new(),
            };
            Some(MemberPart { zone, index, apex })
        })
        .collect();
    parts.sort_by_key(|part| std::cmp::Reverse(part.zone.origin.num_labels()));
    parts
}

fn build_apex(zone: &Zone, view: &View, serial: u32, index: &NameIndex) -> Apex {
    let name_servers = name_servers(zone, view);
    let glue = name_servers
        .iter()
        .flat_map(|ns| glue_records(zone, ns, index))
        .collect();
    Apex {
        soa: soa_record(zone, serial, name_servers.first()),
        name_servers,
        glue,
    }
}

/// `<name>.<zone>` of every up server, or of this node when no server is up (it answers anyway).
/// A drained server stays a name server: drain takes its service instances out of DNS, but it
/// still answers DNS itself.
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

/// The A and AAAA records a name server's name answers with in this zone.
fn glue_records(zone: &Zone, ns: &Name, index: &NameIndex) -> Vec<Record> {
    let Location::Found(data) = index.locate(&zone.origin, ns) else {
        return Vec::new();
    };
    data.addresses().flat_map(|set| set.records(ns)).collect()
}

/// The SOA serial of a zone's content: the first four bytes of a SHA-256 over the index's
/// digest of every name with its record sets, the name servers and their glue. Not
/// monotonic: hearth serves no zone transfers, so no secondary compares serials; what
/// resolvers and registries see is that equal content has an equal serial.
pub(crate) fn content_serial(index: &NameIndex, name_servers: &[Name], glue: &[Record]) -> u32 {
    use hickory_proto::serialize::binary::BinEncodable;
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(index.digest().to_be_bytes());
    for ns in name_servers {
        hash.update(ns.to_bytes().unwrap_or_default());
    }
    let mut glue: Vec<Vec<u8>> = glue.iter().filter_map(|r| r.to_bytes().ok()).collect();
    glue.sort();
    for record in glue {
        hash.update(record);
    }
    let digest = hash.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
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
