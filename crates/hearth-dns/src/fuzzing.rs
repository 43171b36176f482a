//! Entry point for the DNS fuzz target (`fuzz/`) and its regression tests: arbitrary bytes as
//! a UDP and a TCP request to a small zone, through the same `handle_packet` the servers use.

use std::collections::BTreeMap;
use std::sync::Arc;

use hearth_types::desired::{DesiredState, RecordData, RecordSet, Versioned};
use hearth_types::{CheckStatus, Member, MemberState, NodeMeta, Role, ServiceInstance, View};
use hickory_proto::op::{Message, MessageType};

use crate::server::Responder;
use crate::{DnsMetrics, Name, NoneHealthy, Transport, Zone, ZoneSnapshot, handle_packet};

fn member(name: &str, state: MemberState, address: &str, status: CheckStatus) -> Member {
    Member {
        meta: NodeMeta {
            name: name.to_owned(),
            gossip_addr: "127.0.0.1:7946".parse().expect("address"),
            address: address.parse().expect("address"),
            roles: vec![Role::Server, Role::Worker],
            tags: BTreeMap::new(),
            rpc_addr: None,
            in_group: false,
        },
        state,
        services: vec![ServiceInstance {
            service: "www".into(),
            address: address.parse().expect("address"),
            status,
        }],
    }
}

/// Two members (one alive and passing, one suspect on IPv6 and failing) and static records of
/// several types, so decoded queries reach every kind of answer.
fn snapshot(zone: &Zone) -> ZoneSnapshot {
    let members = [
        member("n1", MemberState::Alive, "192.0.2.1", CheckStatus::Passing),
        member(
            "n2",
            MemberState::Suspect,
            "2001:db8::2",
            CheckStatus::Failing,
        ),
    ];
    let view = View {
        self_name: "n1".into(),
        members: members
            .into_iter()
            .map(|m| (m.meta.name.clone(), m))
            .collect(),
    };
    let mut desired = DesiredState::default();
    for (name, value) in [
        (
            "mail",
            RecordData::A {
                address: "192.0.2.25".parse().expect("address"),
            },
        ),
        (
            "alias",
            RecordData::Cname {
                target: "www.coop.test.".into(),
            },
        ),
        (
            "@",
            RecordData::Txt {
                text: "v=spf1 -all".into(),
            },
        ),
    ] {
        let set = RecordSet {
            name: name.into(),
            ttl: None,
            values: vec![value],
        };
        if let Some(key) = set.key() {
            desired.records.insert(
                key,
                Versioned {
                    version: 1,
                    value: set,
                },
            );
        }
    }
    ZoneSnapshot::new(zone, Arc::new(view), Arc::new(desired), 1)
}

/// Answers `data` over UDP and TCP. Any answer must decode as a DNS response with the
/// request's id, and a UDP answer must fit the size the request allows.
pub fn dns_request(data: &[u8]) {
    let zone = Zone::new(
        Name::from_ascii("coop.test.").expect("a name"),
        5,
        NoneHealthy::AllUp,
    );
    let snapshot = snapshot(&zone);
    let metrics = DnsMetrics::default();
    for transport in [Transport::Udp, Transport::Tcp] {
        let udp = matches!(transport, Transport::Udp);
        let Some(answer) = handle_packet(&zone, &snapshot, data, transport, &metrics) else {
            continue;
        };
        let response = Message::from_vec(&answer).expect("our answers decode");
        let request = Message::from_vec(data).expect("only decodable requests are answered");
        assert_eq!(response.id, request.id);
        assert_eq!(response.metadata.message_type, MessageType::Response);
        if udp {
            let limit = request.edns.as_ref().map_or(512, |edns| {
                usize::from(edns.max_payload().clamp(512, crate::EDNS_PAYLOAD))
            });
            assert!(answer.len() <= limit, "{} > {limit}", answer.len());
        }
    }
    same_through_the_cache(zone, snapshot, data);
}

/// The UDP server's cache: asked three times, with three IDs, the cached path answers exactly
/// what `handle_packet` answers to the same bytes.
fn same_through_the_cache(zone: Zone, snapshot: ZoneSnapshot, data: &[u8]) {
    let zone = Arc::new(zone);
    let snapshot = Arc::new(snapshot);
    let (_publish, snapshots) = tokio::sync::watch::channel(Arc::clone(&snapshot));
    let mut responder = Responder::new(Arc::clone(&zone), snapshots, Arc::default());
    let mut packet = data.to_vec();
    let mut out = Vec::new();
    for id in [None, Some(0x1234u16), Some(0x4321)] {
        if let (Some(id), Some(bytes)) = (id, packet.get_mut(..2)) {
            bytes.copy_from_slice(&id.to_be_bytes());
        }
        let metrics = DnsMetrics::default();
        let direct = handle_packet(&zone, &snapshot, &packet, Transport::Udp, &metrics);
        let sent = responder.respond_udp(&packet, &mut out);
        assert_eq!(sent.then(|| out.clone()), direct);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::RecordType;

    #[test]
    fn real_queries_and_garbage_go_through() {
        dns_request(b"");
        dns_request(&[0xff; 40]);
        for (name, kind) in [
            ("www.coop.test.", RecordType::A),
            ("alias.coop.test.", RecordType::AAAA),
            ("coop.test.", RecordType::TXT),
            ("nope.coop.test.", RecordType::MX),
        ] {
            let mut query = Message::new(7, MessageType::Query, hickory_proto::op::OpCode::Query);
            query.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
            dns_request(&query.to_vec().unwrap());
        }
    }
}
