//! The UDP answer cache behind `Responder::respond_udp`: a remembered answer is byte for byte
//! what `handle_packet` computes, with the query's own ID; a new snapshot, or a full cache,
//! makes it forget.

use std::sync::Arc;

use hickory_proto::op::{Edns, Message};
use hickory_proto::rr::RecordType;
use tokio::sync::watch;

use super::fixture::{SplitMix64, addresses, garbage, ips, query, snapshot, view, zone};
use crate::server::Responder;
use crate::{DnsMetrics, Transport, Zone, ZoneSnapshot, handle_packet};

fn responder(snapshot: ZoneSnapshot) -> (Responder, watch::Sender<Arc<ZoneSnapshot>>) {
    let (publish, snapshots) = watch::channel(Arc::new(snapshot));
    let responder = Responder::new(Arc::new(zone()), snapshots, Arc::default());
    (responder, publish)
}

/// What `handle_packet` answers to `packet` over UDP.
fn uncached(zone: &Zone, snapshot: &ZoneSnapshot, packet: &[u8]) -> Option<Vec<u8>> {
    handle_packet(
        zone,
        snapshot,
        packet,
        Transport::Udp,
        &DnsMetrics::default(),
    )
}

fn wire(message: &Message) -> Vec<u8> {
    message.to_vec().unwrap()
}

/// Queries reaching every kind of answer, with and without EDNS (a small and a large payload,
/// and a version nobody speaks), RD and CD in every combination, a name in mixed case, and
/// seeded garbage made from them.
fn queries() -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    for (name, rtype) in [
        ("web.hearth.test.", RecordType::A),
        ("WeB.HeArTh.TeSt.", RecordType::A),
        ("hearth.test.", RecordType::SOA),
        ("hearth.test.", RecordType::NS),
        ("hearth.test.", RecordType::ANY),
        ("nosuch.hearth.test.", RecordType::A),
        ("example.com.", RecordType::A),
        ("web.hearth.test.", RecordType::AXFR),
    ] {
        for (rd, cd) in [(false, false), (true, false), (false, true), (true, true)] {
            for edns in [None, Some((512, 0)), Some((4096, 0)), Some((1232, 1))] {
                let mut message = query(name, rtype);
                message.metadata.recursion_desired = rd;
                message.metadata.checking_disabled = cd;
                message.edns = edns.map(|(payload, version)| {
                    let mut edns = Edns::new();
                    edns.set_max_payload(payload);
                    edns.set_version(version);
                    edns
                });
                messages.push(wire(&message));
            }
        }
    }
    let mut rng = SplitMix64(0xCAC4E);
    let noise: Vec<Vec<u8>> = (0..2_000).map(|_| garbage(&mut rng, &messages)).collect();
    messages.extend(noise);
    messages
}

#[test]
fn remembered_answers_are_what_handle_packet_computes_with_the_querys_id() {
    let zone = zone();
    let snapshot = snapshot(&zone, view());
    let direct_metrics = DnsMetrics::default();
    let (mut responder, _publish) = responder(super::fixture::snapshot(&zone, view()));
    let mut out = Vec::new();
    for mut packet in queries() {
        // The first ID fills the cache, the others must be answered from it.
        for id in [0x0101u16, 0xBEEF, 0] {
            if let Some(bytes) = packet.get_mut(..2) {
                bytes.copy_from_slice(&id.to_be_bytes());
            }
            let direct = handle_packet(&zone, &snapshot, &packet, Transport::Udp, &direct_metrics);
            let sent = responder.respond_udp(&packet, &mut out);
            assert_eq!(sent.then(|| out.clone()), direct, "query {packet:02x?}");
        }
    }
    assert!(responder.cached() > 0, "answers were remembered");
    assert_eq!(
        responder.metrics().answered_by_rcode(),
        direct_metrics.answered_by_rcode(),
        "a remembered answer is counted as one computed"
    );
    assert_eq!(
        responder.metrics().dropped_malformed(),
        direct_metrics.dropped_malformed()
    );
}

#[test]
fn a_new_snapshot_is_answered_from_at_once() {
    let zone: Zone = zone();
    let (mut responder, publish) = responder(snapshot(&zone, view()));
    let web = wire(&query("web.hearth.test.", RecordType::A));
    let mut out = Vec::new();
    let mut ask = |responder: &mut Responder| {
        assert!(responder.respond_udp(&web, &mut out));
        addresses(&Message::from_vec(&out).unwrap().answers)
    };
    assert_eq!(ask(&mut responder), ips(&["10.0.1.1"]));
    assert_eq!(ask(&mut responder), ips(&["10.0.1.1"]));
    assert_eq!(responder.cached(), 1);

    let mut bravo_passing = view();
    for member in bravo_passing.members.values_mut() {
        if member.state == hearth_types::MemberState::Suspect {
            member.state = hearth_types::MemberState::Alive;
        }
        for instance in &mut member.services {
            instance.status = hearth_types::CheckStatus::Passing;
        }
    }
    publish.send_replace(Arc::new(snapshot(&zone, bravo_passing)));
    assert_eq!(ask(&mut responder), ips(&["10.0.1.1", "10.0.1.2"]));
}

#[test]
fn a_flood_of_distinct_queries_never_grows_the_cache_past_its_bound() {
    let zone = zone();
    let snapshot = snapshot(&zone, view());
    let (mut responder, _publish) = responder(super::fixture::snapshot(&zone, view()));
    let (mut out, mut most) = (Vec::new(), 0);
    for n in 0..2_000 {
        let packet = wire(&query(&format!("n{n}.hearth.test."), RecordType::A));
        let sent = responder.respond_udp(&packet, &mut out);
        assert!(sent);
        assert_eq!(Some(out.clone()), uncached(&zone, &snapshot, &packet));
        most = most.max(responder.cached());
    }
    assert!((1..=512).contains(&most), "the cache held {most} answers");
}

/// A name compressed with a pointer into the ID reads differently under another ID, so such a
/// query is answered afresh every time, never from the cache.
#[test]
fn a_query_whose_name_points_into_its_id_is_never_remembered() {
    let zone = zone();
    let snapshot = snapshot(&zone, view());
    let (mut responder, _publish) = responder(super::fixture::snapshot(&zone, view()));
    // The seed the DNS fuzzer found: its question's name is a pointer to offset 1.
    let mut pointer = wire(&query("web.hearth.test.", RecordType::A));
    pointer.truncate(12);
    pointer.extend_from_slice(&[0xC0, 0x01, 0, 1, 0, 1]);
    let plain = wire(&query("web.hearth.test.", RecordType::A));
    let mut out = Vec::new();
    for packet in [&pointer, &plain] {
        for id in [0x0003u16, 0x0100, 0x0377] {
            let mut packet = packet.clone();
            packet[..2].copy_from_slice(&id.to_be_bytes());
            let sent = responder.respond_udp(&packet, &mut out);
            let direct = uncached(&zone, &snapshot, &packet);
            assert_eq!(sent.then(|| out.clone()), direct, "id {id:#06x}");
        }
    }
    assert_eq!(responder.cached(), 1, "only the plain query is remembered");
}
