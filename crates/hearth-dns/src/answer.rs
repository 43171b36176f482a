//! The pure answer function: one decoded request and a zone snapshot in, one response out.

use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::NS;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::index::{Location, NameData, RrSet};
use crate::zone::{Part, Zone, ZoneSnapshot};

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

fn answer_query(response: &mut Message, zone: &Zone, snapshot: &ZoneSnapshot, query: &Query) {
    let (qname, qtype) = (query.name(), query.query_type());
    let Some(part) = snapshot.part(zone, qname) else {
        response.metadata.response_code = ResponseCode::Refused;
        return;
    };
    response.metadata.authoritative = true;
    match part.locate(qname) {
        Location::Outside => response.metadata.response_code = ResponseCode::Refused,
        Location::Missing => answer_nxdomain(response, &part),
        Location::Found(data) => match data.cname() {
            Some(target) if !matches!(qtype, RecordType::CNAME | RecordType::ANY) => {
                answer_alias(response, &part, qname, data, target, qtype);
            }
            _ => {
                add_data(response, &part, qname, data, qtype);
                if response.answers.is_empty() {
                    add_soa_authority(response, &part);
                }
            }
        },
    }
}

/// An alias answers its CNAME, then, when the target is in the same zone, what the target
/// holds for the query. One step only: a target that is itself an alias is left to the
/// resolver, which also makes loops impossible. The rcode and any SOA are the target's
/// (RFC 6604 §3).
fn answer_alias(
    response: &mut Message,
    part: &Part<'_>,
    alias: &Name,
    alias_data: &NameData,
    target: &Name,
    qtype: RecordType,
) {
    for set in alias_data.matching(RecordType::CNAME) {
        response.answers.extend(set.records(alias));
    }
    match part.locate(target) {
        Location::Outside => {}
        Location::Missing => answer_nxdomain(response, part),
        Location::Found(data) if data.cname().is_some() => {}
        Location::Found(data) => {
            let n_answers = response.answers.len();
            add_data(response, part, target, data, qtype);
            if response.answers.len() == n_answers {
                add_soa_authority(response, part);
            }
        }
    }
}

/// Adds what `owner` holds for `qtype` to the answers, and to the additionals the addresses of
/// in-zone hosts its NS, MX and SRV records name.
fn add_data(
    response: &mut Message,
    part: &Part<'_>,
    owner: &Name,
    data: &NameData,
    qtype: RecordType,
) {
    if data.is_apex {
        add_apex_records(response, part, owner, qtype);
    }
    for set in data.matching(qtype) {
        response.answers.extend(set.records(owner));
        if matches!(set.rtype, RecordType::MX | RecordType::SRV) {
            add_host_addresses(response, part, set);
        }
    }
}

/// The SOA and NS records, which no static set can replace.
fn add_apex_records(response: &mut Message, part: &Part<'_>, owner: &Name, qtype: RecordType) {
    let apex = part.apex;
    if matches!(qtype, RecordType::SOA | RecordType::ANY) {
        let mut soa = apex.soa.clone();
        soa.name = owner.clone();
        response.answers.push(soa);
    }
    if matches!(qtype, RecordType::NS | RecordType::ANY) {
        let ttl = part.zone.ttl;
        let to_record =
            |ns: &Name| Record::from_rdata(owner.clone(), ttl, RData::NS(NS(ns.clone())));
        response
            .answers
            .extend(apex.name_servers.iter().map(to_record));
        response.additionals.extend(apex.glue.iter().cloned());
    }
}

/// The A and AAAA records of the in-zone hosts an MX or SRV set names, so that the client need
/// not ask for them (RFC 1035 §3.3.9, RFC 2782).
fn add_host_addresses(response: &mut Message, part: &Part<'_>, set: &RrSet) {
    for data in &set.data {
        let host = match data {
            RData::MX(mx) => &mx.exchange,
            RData::SRV(srv) => &srv.target,
            _ => continue,
        };
        if response
            .additionals
            .iter()
            .any(|record| record.name == *host)
        {
            continue;
        }
        if let Location::Found(host_data) = part.locate(host) {
            for addresses in host_data.addresses() {
                response.additionals.extend(addresses.records(host));
            }
        }
    }
}

fn answer_nxdomain(response: &mut Message, part: &Part<'_>) {
    response.metadata.response_code = ResponseCode::NXDomain;
    add_soa_authority(response, part);
}

/// NXDOMAIN and NODATA carry the SOA so resolvers can cache the negative answer (RFC 2308).
fn add_soa_authority(response: &mut Message, part: &Part<'_>) {
    response.authorities.push(part.apex.soa.clone());
}
