//! The pure answer function: one decoded request and a zone snapshot in, one response out.

use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::NS;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::zone::{Addresses, Zone, ZoneSnapshot};

/// The UDP payload size offered to EDNS clients: the DNS Flag Day 2020 value, which keeps
/// responses clear of IP fragmentation.
pub const EDNS_PAYLOAD: u16 = 1232;

/// Computes the response to one decoded request. No I/O, no locks, never waits.
///
/// `snapshot` must have been built for `zone`. The response is not yet fitted to a transport;
/// `handle_packet` truncates it for UDP.
pub fn answer(zone: &Zone, snapshot: &ZoneSnapshot, request: &Message) -> Message {
    let mut response = response_skeleton(request);
    if request.op_code != OpCode::Query {
        return with_rcode(response, ResponseCode::NotImp);
    }
    let [query] = request.queries.as_slice() else {
        return with_rcode(response, ResponseCode::FormErr);
    };
    if request.edns.as_ref().is_some_and(|edns| edns.version() > 0) {
        return with_rcode(response, ResponseCode::BADVERS);
    }
    if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
        return with_rcode(response, ResponseCode::Refused);
    }
    // Every agent answers from its own view; there is no zone to hand to a secondary.
    if matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR) {
        return with_rcode(response, ResponseCode::Refused);
    }
    answer_query(&mut response, zone, snapshot, query);
    response
}

/// Id, opcode, RD and CD copied; RA clear; the question echoed as asked; an OPT record if the
/// request had one (RFC 6891 §6.1.1).
fn response_skeleton(request: &Message) -> Message {
    let mut response = Message::response(request.id, request.op_code);
    response.metadata.recursion_desired = request.recursion_desired;
    response.metadata.checking_disabled = request.checking_disabled;
    if let [query] = request.queries.as_slice() {
        response.queries.push(query.clone());
    }
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        response.edns = Some(edns);
    }
    response
}

fn with_rcode(mut response: Message, rcode: ResponseCode) -> Message {
    response.metadata.response_code = rcode;
    response
}

/// Where a query name falls relative to the zone.
enum Target<'s> {
    Outside,
    Apex,
    Name(&'s Addresses),
    Missing,
}

fn answer_query(response: &mut Message, zone: &Zone, snapshot: &ZoneSnapshot, query: &Query) {
    let target = locate(zone, snapshot, query.name());
    response.metadata.authoritative = !matches!(target, Target::Outside);
    match target {
        Target::Outside => response.metadata.response_code = ResponseCode::Refused,
        Target::Apex => answer_apex(response, zone, snapshot, query),
        Target::Name(addresses) => answer_addresses(response, zone, snapshot, query, addresses),
        Target::Missing => {
            response.metadata.response_code = ResponseCode::NXDomain;
            add_soa_authority(response, snapshot);
        }
    }
}

/// Only the apex and single labels under it exist: there are no wildcards and no deeper names.
fn locate<'s>(zone: &Zone, snapshot: &'s ZoneSnapshot, name: &Name) -> Target<'s> {
    if !zone.origin.zone_of(name) {
        return Target::Outside;
    }
    let mut labels = name.iter();
    match labels.len().saturating_sub(zone.origin.iter().len()) {
        0 => Target::Apex,
        1 => labels
            .next()
            .and_then(|label| snapshot.addresses(label))
            .map_or(Target::Missing, Target::Name),
        _ => Target::Missing,
    }
}

fn answer_addresses(
    response: &mut Message,
    zone: &Zone,
    snapshot: &ZoneSnapshot,
    query: &Query,
    addresses: &Addresses,
) {
    let (owner, qtype) = (query.name(), query.query_type());
    if matches!(qtype, RecordType::A | RecordType::ANY) {
        response
            .answers
            .extend(addresses.v4_records(owner, zone.ttl));
    }
    if matches!(qtype, RecordType::AAAA | RecordType::ANY) {
        response
            .answers
            .extend(addresses.v6_records(owner, zone.ttl));
    }
    if response.answers.is_empty() {
        add_soa_authority(response, snapshot);
    }
}

fn answer_apex(response: &mut Message, zone: &Zone, snapshot: &ZoneSnapshot, query: &Query) {
    let (owner, qtype) = (query.name(), query.query_type());
    let apex = snapshot.apex();
    if matches!(qtype, RecordType::SOA | RecordType::ANY) {
        let mut soa = apex.soa.clone();
        soa.name = owner.clone();
        response.answers.push(soa);
    }
    if matches!(qtype, RecordType::NS | RecordType::ANY) {
        let to_record =
            |ns: &Name| Record::from_rdata(owner.clone(), zone.ttl, RData::NS(NS(ns.clone())));
        response
            .answers
            .extend(apex.name_servers.iter().map(to_record));
        response.additionals.extend(apex.glue.iter().cloned());
    }
    if response.answers.is_empty() {
        add_soa_authority(response, snapshot);
    }
}

/// NXDOMAIN and NODATA carry the SOA so resolvers can cache the negative answer (RFC 2308).
fn add_soa_authority(response: &mut Message, snapshot: &ZoneSnapshot) {
    response.authorities.push(snapshot.apex().soa.clone());
}
