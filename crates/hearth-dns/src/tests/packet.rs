//! `handle_packet`: wire round trips, UDP truncation, dropping responses, and seeded garbage.

use hearth_types::{CheckStatus, MemberState};
use hickory_proto::op::{Edns, Message, MessageType};
use hickory_proto::rr::RecordType;

use super::fixture::{
    SplitMix64, addresses, garbage, member, query, snapshot, view, view_of, zone,
};
use crate::{DnsMetrics, EDNS_PAYLOAD, Transport, Zone, ZoneSnapshot, handle_packet};

fn exchange(
    snapshot: &ZoneSnapshot,
    request: &Message,
    transport: Transport,
) -> (Vec<u8>, Message) {
    let metrics = DnsMetrics::default();
    let wire = handle_packet(
        &zone(),
        snapshot,
        &request.to_vec().unwrap(),
        transport,
        &metrics,
    )
    .expect("a response");
    let response = Message::from_vec(&wire).unwrap();
    (wire, response)
}

/// One alive node running 100 passing instances of `big`.
fn big_snapshot(zone: &Zone) -> ZoneSnapshot {
    let instances: Vec<(String, CheckStatus)> = (0..100)
        .map(|i| {
            (
                format!("10.2.{}.{}", i / 200, i % 200 + 1),
                CheckStatus::Passing,
            )
        })
        .collect();
    let services: Vec<(&str, &str, CheckStatus)> = instances
        .iter()
        .map(|(address, status)| ("big", address.as_str(), *status))
        .collect();
    let node = member("n1", MemberState::Alive, &[], "10.1.0.1", &services);
    snapshot(zone, view_of("n1", [node]))
}

#[test]
fn answers_a_wire_query() {
    let request = query("web.hearth.test.", RecordType::A);
    let (_, response) = exchange(&snapshot(&zone(), view()), &request, Transport::Udp);
    assert_eq!(response.id, request.id);
    assert_eq!(
        addresses(&response.answers),
        super::fixture::ips(&["10.0.1.1"])
    );
}

#[test]
fn big_udp_answers_are_truncated_with_tc() {
    let snapshot = big_snapshot(&zone());
    let request = query("big.hearth.test.", RecordType::A);
    let (wire, response) = exchange(&snapshot, &request, Transport::Udp);
    assert!(response.truncation);
    assert!(wire.len() <= 512);
    assert!(response.answers.is_empty());
    assert_eq!(response.queries, request.queries);

    let mut with_edns = request.clone();
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    with_edns.edns = Some(edns);
    let (wire, response) = exchange(&snapshot, &with_edns, Transport::Udp);
    assert!(response.truncation && response.edns.is_some());
    assert!(wire.len() <= usize::from(EDNS_PAYLOAD));
}

#[test]
fn big_tcp_answers_are_whole() {
    let snapshot = big_snapshot(&zone());
    let request = query("big.hearth.test.", RecordType::A);
    let (_, response) = exchange(&snapshot, &request, Transport::Tcp);
    assert!(!response.truncation);
    assert_eq!(response.answers.len(), 100);
}

#[test]
fn answers_that_fit_are_not_truncated() {
    let request = query("hearth.test.", RecordType::ANY);
    let (_, response) = exchange(&snapshot(&zone(), view()), &request, Transport::Udp);
    assert!(!response.truncation);
    assert_eq!(response.answers.len(), 2);
}

#[test]
fn responses_are_dropped_and_counted() {
    let metrics = DnsMetrics::default();
    let mut stray = query("web.hearth.test.", RecordType::A);
    stray.metadata.message_type = MessageType::Response;
    let packet = stray.to_vec().unwrap();
    let snapshot = snapshot(&zone(), view());
    assert!(handle_packet(&zone(), &snapshot, &packet, Transport::Udp, &metrics).is_none());
    assert_eq!(metrics.dropped_malformed(), 1);
}

#[test]
fn headers_claiming_more_questions_than_fit_are_dropped() {
    let metrics = DnsMetrics::default();
    let mut packet = query("web.hearth.test.", RecordType::A).to_vec().unwrap();
    packet[4..6].copy_from_slice(&u16::MAX.to_be_bytes());
    let snapshot = snapshot(&zone(), view());
    assert!(handle_packet(&zone(), &snapshot, &packet, Transport::Udp, &metrics).is_none());
    assert!(handle_packet(&zone(), &snapshot, &packet[..5], Transport::Udp, &metrics).is_none());
    assert_eq!(metrics.dropped_malformed(), 2);
}

#[test]
fn answers_are_counted_by_rcode() {
    let metrics = DnsMetrics::default();
    let snapshot = snapshot(&zone(), view());
    for qname in [
        "web.hearth.test.",
        "nosuch.hearth.test.",
        "example.com.",
        "web.hearth.test.",
    ] {
        let packet = query(qname, RecordType::A).to_vec().unwrap();
        handle_packet(&zone(), &snapshot, &packet, Transport::Udp, &metrics).unwrap();
    }
    let counts = metrics.answered_by_rcode();
    let count = |label| counts.iter().find(|(l, _)| *l == label).map(|(_, n)| *n);
    assert_eq!(count("noerror"), Some(2));
    assert_eq!(count("nxdomain"), Some(1));
    assert_eq!(count("refused"), Some(1));
    assert_eq!(count("servfail"), Some(0));
    assert_eq!(metrics.dropped_malformed(), 0);
}

#[test]
fn garbage_never_panics_and_is_counted() {
    let mut with_edns = query("web.hearth.test.", RecordType::ANY);
    with_edns.edns = Some(Edns::new());
    let seeds: Vec<Vec<u8>> = [
        query("web.hearth.test.", RecordType::A),
        query("hearth.test.", RecordType::NS),
        with_edns,
    ]
    .iter()
    .map(|message| message.to_vec().unwrap())
    .collect();
    let zone = zone();
    let snapshot = snapshot(&zone, view());
    let metrics = DnsMetrics::default();
    let mut rng = SplitMix64(0x5EED);
    let inputs = 5_000;
    for _ in 0..inputs {
        let packet = garbage(&mut rng, &seeds);
        if let Some(wire) = handle_packet(&zone, &snapshot, &packet, Transport::Udp, &metrics) {
            assert!(wire.len() <= usize::from(EDNS_PAYLOAD));
            Message::from_vec(&wire).expect("responses decode");
        }
    }
    let answered: u64 = metrics.answered_by_rcode().iter().map(|(_, n)| n).sum();
    assert_eq!(answered + metrics.dropped_malformed(), inputs);
    assert!(
        metrics.dropped_malformed() > inputs / 4,
        "most noise must be dropped"
    );
}
