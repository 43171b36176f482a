//! A small view and helpers shared by the tests: five members covering every member state,
//! check status and role that the answer rules tell apart, and builders of desired states.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use hearth_types::desired::{DesiredState, RecordData, RecordSet, Versioned};
use hearth_types::{CheckStatus, Member, MemberState, NodeMeta, Role, ServiceInstance, View};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::{NoneHealthy, Zone, ZoneSnapshot, answer};

pub(crate) const SERIAL: u32 = 42;
pub(crate) const TTL: u32 = 30;
pub(crate) const QUERY_ID: u16 = 0x1234;

pub(crate) fn zone() -> Zone {
    Zone::new(name("Hearth.Test."), TTL, NoneHealthy::AllUp)
}

pub(crate) fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

/// - alpha: alive worker (this node); web passing, db passing.
/// - bravo: suspect worker; web failing, cache failing (cache has no healthy instance).
/// - charlie: dead server; web passing, old passing (old lives only on a dead node).
/// - delta: alive server on IPv6; web passing on IPv6, and a service named like bravo's node.
/// - echo: left; gone passing (gone is listed only by a member that left).
pub(crate) fn view() -> View {
    use CheckStatus::{Failing, Passing};
    let members = [
        member(
            "alpha",
            MemberState::Alive,
            &[Role::Worker],
            "10.0.0.1",
            &[("web", "10.0.1.1", Passing), ("db", "10.0.2.1", Passing)],
        ),
        member(
            "bravo",
            MemberState::Suspect,
            &[Role::Worker],
            "10.0.0.2",
            &[("web", "10.0.1.2", Failing), ("cache", "10.0.3.2", Failing)],
        ),
        member(
            "charlie",
            MemberState::Dead,
            &[Role::Server, Role::Worker],
            "10.0.0.3",
            &[("web", "10.0.1.3", Passing), ("old", "10.0.4.3", Passing)],
        ),
        member(
            "delta",
            MemberState::Alive,
            &[Role::Server],
            "fd00::4",
            &[
                ("web", "fd00::1:4", Passing),
                ("bravo", "10.0.5.4", Passing),
            ],
        ),
        member(
            "echo",
            MemberState::Left,
            &[Role::Worker],
            "10.0.0.5",
            &[("gone", "10.0.6.5", Passing)],
        ),
    ];
    view_of("alpha", members)
}

pub(crate) fn view_of(self_name: &str, members: impl IntoIterator<Item = Member>) -> View {
    let members: BTreeMap<String, Member> = members
        .into_iter()
        .map(|member| (member.meta.name.clone(), member))
        .collect();
    View {
        self_name: self_name.to_owned(),
        members,
    }
}

pub(crate) fn member(
    name: &str,
    state: MemberState,
    roles: &[Role],
    address: &str,
    services: &[(&str, &str, CheckStatus)],
) -> Member {
    let services = services
        .iter()
        .map(|&(service, address, status)| ServiceInstance {
            service: service.to_owned(),
            address: address.parse().unwrap(),
            status,
        })
        .collect();
    let meta = NodeMeta {
        name: name.to_owned(),
        gossip_addr: "127.0.0.1:7946".parse().unwrap(),
        address: address.parse().unwrap(),
        roles: roles.to_vec(),
        tags: BTreeMap::new(),
        rpc_addr: None,
        in_group: false,
    };
    Member {
        meta,
        state,
        services,
    }
}

pub(crate) fn snapshot(zone: &Zone, view: View) -> ZoneSnapshot {
    snapshot_with(zone, view, DesiredState::default())
}

pub(crate) fn snapshot_with(zone: &Zone, view: View, desired: DesiredState) -> ZoneSnapshot {
    ZoneSnapshot::new(zone, Arc::new(view), Arc::new(desired), SERIAL)
}

/// A desired state holding `records` (stored under their keys, as the state machine does) and
/// drain flags set on `drained`.
pub(crate) fn desired(
    records: impl IntoIterator<Item = RecordSet>,
    drained: &[&str],
) -> DesiredState {
    let records = records
        .into_iter()
        .map(|set| (set.key().unwrap(), versioned(set)))
        .collect();
    let drained = drained
        .iter()
        .map(|node| ((*node).to_owned(), versioned(true)))
        .collect();
    DesiredState {
        records,
        drained,
        ..DesiredState::default()
    }
}

fn versioned<T>(value: T) -> Versioned<T> {
    Versioned { version: 1, value }
}

pub(crate) fn record_set(name: &str, ttl: Option<u32>, values: &[RecordData]) -> RecordSet {
    RecordSet {
        name: name.to_owned(),
        ttl,
        values: values.to_vec(),
    }
}

pub(crate) fn a(address: &str) -> RecordData {
    RecordData::A {
        address: address.parse().unwrap(),
    }
}

pub(crate) fn aaaa(address: &str) -> RecordData {
    RecordData::Aaaa {
        address: address.parse().unwrap(),
    }
}

pub(crate) fn cname(target: &str) -> RecordData {
    RecordData::Cname {
        target: target.to_owned(),
    }
}

pub(crate) fn txt(text: &str) -> RecordData {
    RecordData::Txt {
        text: text.to_owned(),
    }
}

pub(crate) fn mx(preference: u16, exchange: &str) -> RecordData {
    RecordData::Mx {
        preference,
        exchange: exchange.to_owned(),
    }
}

pub(crate) fn srv(priority: u16, weight: u16, port: u16, target: &str) -> RecordData {
    RecordData::Srv {
        priority,
        weight,
        port,
        target: target.to_owned(),
    }
}

/// A recursion-desired IN query, as a stub resolver sends it.
pub(crate) fn query(qname: &str, qtype: RecordType) -> Message {
    let mut message = Message::new(QUERY_ID, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name(qname), qtype));
    message
}

pub(crate) fn ask_in(zone: &Zone, view: View, qname: &str, qtype: RecordType) -> Message {
    answer(zone, &snapshot(zone, view), &query(qname, qtype))
}

pub(crate) fn ask(qname: &str, qtype: RecordType) -> Message {
    ask_in(&zone(), view(), qname, qtype)
}

/// Asks the fixture view in the fixture zone, with `desired` as the desired state.
pub(crate) fn ask_with(desired: &DesiredState, qname: &str, qtype: RecordType) -> Message {
    let zone = zone();
    let snapshot = snapshot_with(&zone, view(), desired.clone());
    answer(&zone, &snapshot, &query(qname, qtype))
}

/// The A and AAAA data of `records`, in order.
pub(crate) fn addresses(records: &[Record]) -> Vec<IpAddr> {
    records
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

pub(crate) fn ips(texts: &[&str]) -> Vec<IpAddr> {
    texts.iter().map(|text| text.parse().unwrap()).collect()
}

pub(crate) fn soa(record: &Record) -> &SOA {
    match &record.data {
        RData::SOA(soa) => soa,
        other => panic!("expected an SOA, got {other:?}"),
    }
}

/// Asserts an authoritative negative answer: `rcode`, no answers, the zone's SOA in authority.
pub(crate) fn assert_negative(response: &Message, rcode: ResponseCode) {
    assert_eq!(response.response_code, rcode);
    assert!(response.authoritative);
    assert!(response.answers.is_empty(), "{:?}", response.answers);
    let [authority] = response.authorities.as_slice() else {
        panic!("expected one SOA in authority: {:?}", response.authorities);
    };
    assert_eq!(authority.name, name("hearth.test."));
    assert_eq!(authority.ttl, TTL);
    assert_eq!(soa(authority).serial, SERIAL);
}

/// SplitMix64: a few lines of seeded, reproducible randomness without a dependency.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// Pure noise, and valid queries with a few bytes flipped or cut short, which get much further
/// into the decoder.
pub(crate) fn garbage(rng: &mut SplitMix64, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.below(2) == 0 {
        let len = rng.below(600);
        return (0..len).map(|_| rng.next() as u8).collect();
    }
    let mut packet = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(4) {
        let at = rng.below(packet.len());
        packet[at] = rng.next() as u8;
    }
    if rng.below(4) == 0 {
        packet.truncate(rng.below(packet.len() + 1));
    }
    packet
}
