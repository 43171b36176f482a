//! What to publish and how: the RRsets the primary should hold for the zone, computed from
//! the same name index the agent answers from, and the UPDATE messages that take the primary
//! from one state of them to the next (or resync it), packed under a size limit.

use std::collections::BTreeMap;
use std::mem;

use hearth_types::View;
use hearth_types::desired::DesiredState;
use hickory_proto::op::{Message, MessageType, OpCode, Query, UpdateMessage};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;

use crate::index::NameIndex;
use crate::zone::Zone;

/// Each UPDATE stays under this many bytes (before its TSIG), far below the 64 KiB a DNS
/// message over TCP can hold, so that no primary meets an oversized message and a failure
/// costs one small batch.
pub const MAX_UPDATE_BYTES: usize = 16 * 1024;
/// The header and the zone section, counted before any record.
const UPDATE_OVERHEAD: usize = 12 + 255 + 4;

/// One RRset hearth manages on the primary: its TTL and records. No records means the set
/// must be absent (an address set of a service or node with nothing to answer right now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rrset {
    pub ttl: u32,
    pub data: Vec<RData>,
}

impl Rrset {
    fn is_absent(&self) -> bool {
        self.data.is_empty()
    }
}

/// Every RRset hearth manages, by owner (fully qualified, lowercase) and type.
pub type RrsetMap = BTreeMap<(Name, RecordType), Rrset>;

/// What the primary should hold for `zone`, as this agent would answer from `view` and
/// `desired`. The A and AAAA sets of every service and node name are in the map even when
/// empty, so that a resync removes addresses that went away.
pub fn rrsets(zone: &Zone, view: &View, desired: &DesiredState) -> RrsetMap {
    let index = NameIndex::build(zone, view, desired);
    let mut map = RrsetMap::new();
    for (name, data) in index.names(&zone.origin) {
        if data.follows_view {
            for rtype in [RecordType::A, RecordType::AAAA] {
                let absent = Rrset {
                    ttl: zone.ttl,
                    data: Vec::new(),
                };
                map.insert((name.clone(), rtype), absent);
            }
        }
        for set in &data.rrsets {
            let rrset = Rrset {
                ttl: set.ttl,
                data: set.data.clone(),
            };
            map.insert((name.clone(), set.rtype), rrset);
        }
    }
    map
}

/// The UPDATE messages that take a primary holding `previous` to `next`: for each changed set,
/// delete it and add the new records (in one message, so the primary applies both or neither);
/// for each vanished set, delete it. Empty when nothing changed. Ids are zero; the sender sets
/// them.
pub fn updates(origin: &Name, previous: &RrsetMap, next: &RrsetMap) -> Vec<Message> {
    let changed = next
        .iter()
        .filter(|(key, set)| !same(previous.get(*key), Some(set)))
        .map(|((name, rtype), set)| replace(name, *rtype, set));
    let vanished = previous
        .iter()
        .filter(|(key, set)| !set.is_absent() && !next.contains_key(*key))
        .map(|((name, rtype), _)| vec![delete_rrset(name, *rtype)]);
    batch(origin, changed.chain(vanished))
}

/// The UPDATE messages that make a primary hold `next` whatever it held before, as far as the
/// sets in `next` go: every set is deleted, then its records added. Sets that hearth published
/// once but that are in no map now (a static record removed while no push succeeded) are not
/// touched; see the README.
pub fn resync(origin: &Name, next: &RrsetMap) -> Vec<Message> {
    let all = next
        .iter()
        .map(|((name, rtype), set)| replace(name, *rtype, set));
    batch(origin, all)
}

/// Whether two states of a set publish the same thing; a missing set and an empty one do.
fn same(a: Option<&Rrset>, b: Option<&Rrset>) -> bool {
    published(a) == published(b)
}

fn published(set: Option<&Rrset>) -> Option<&Rrset> {
    set.filter(|set| !set.is_absent())
}

/// Delete the set `name`/`rtype`, then add `set`'s records.
fn replace(name: &Name, rtype: RecordType, set: &Rrset) -> Vec<Record> {
    let add = |data: &RData| Record::from_rdata(name.clone(), set.ttl, data.clone());
    let mut records = vec![delete_rrset(name, rtype)];
    records.extend(set.data.iter().map(add));
    records
}

/// RFC 2136 §2.5.2: class ANY, TTL 0, no RDATA.
fn delete_rrset(name: &Name, rtype: RecordType) -> Record {
    let mut record = Record::update0(name.clone(), 0, rtype);
    record.dns_class = DNSClass::ANY;
    record
}

/// Packs changes into messages under `MAX_UPDATE_BYTES`, never splitting one change. A single
/// change larger than that gets a message of its own.
fn batch(origin: &Name, changes: impl Iterator<Item = Vec<Record>>) -> Vec<Message> {
    let mut messages = Vec::new();
    let mut pending: Vec<Record> = Vec::new();
    let mut size = UPDATE_OVERHEAD;
    for change in changes {
        let change_size: usize = change.iter().map(encoded_len).sum();
        if !pending.is_empty() && size + change_size > MAX_UPDATE_BYTES {
            messages.push(update_message(origin, mem::take(&mut pending)));
            size = UPDATE_OVERHEAD;
        }
        size += change_size;
        pending.extend(change);
    }
    if !pending.is_empty() {
        messages.push(update_message(origin, pending));
    }
    messages
}

/// The record's uncompressed size, which bounds its size in the message from above.
fn encoded_len(record: &Record) -> usize {
    record
        .to_bytes()
        .map_or(MAX_UPDATE_BYTES, |bytes| bytes.len())
}

/// An UPDATE for the zone at `origin` (its zone section names the origin, class IN, type SOA).
fn update_message(origin: &Name, records: Vec<Record>) -> Message {
    let mut message = Message::new(0, MessageType::Query, OpCode::Update);
    message.add_zone(Query::query(origin.clone(), RecordType::SOA));
    message.add_updates(records);
    message
}
