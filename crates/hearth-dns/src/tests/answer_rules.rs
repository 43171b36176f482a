//! The answer rules, one test each, through `answer` over the fixture view.

use std::sync::Arc;

use hearth_types::desired::{ClusterService, DesiredState, Versioned};
use hearth_types::{CheckStatus, MemberState, Role, View};
use hickory_proto::op::{Edns, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::NS;
use hickory_proto::rr::{DNSClass, RData, RecordType};

use super::fixture::{
    QUERY_ID, SERIAL, TTL, a, addresses, ask, ask_in, assert_negative, desired, ips, member, name,
    query, record_set, snapshot, snapshot_with, soa, view, view_of, zone,
};
use crate::{EDNS_PAYLOAD, NoneHealthy, Zone, ZoneSnapshot, answer};

#[test]
fn service_answers_passing_instances_on_up_nodes_only() {
    let response = ask("web.hearth.test.", RecordType::A);
    assert_eq!(response.response_code, ResponseCode::NoError);
    assert!(response.authoritative);
    // bravo's instance fails its check; charlie's passes but charlie is dead.
    assert_eq!(addresses(&response.answers), ips(&["10.0.1.1"]));
    assert!(response.answers.iter().all(|record| record.ttl == TTL));
    assert!(response.authorities.is_empty());
}

#[test]
fn service_only_on_a_dead_node_is_nodata() {
    assert_negative(
        &ask("old.hearth.test.", RecordType::A),
        ResponseCode::NoError,
    );
}

#[test]
fn service_listed_only_by_a_left_member_still_exists() {
    assert_negative(
        &ask("gone.hearth.test.", RecordType::A),
        ResponseCode::NoError,
    );
}

#[test]
fn none_healthy_all_up_answers_every_instance_on_up_nodes() {
    let response = ask("cache.hearth.test.", RecordType::A);
    assert_eq!(response.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&response.answers), ips(&["10.0.3.2"]));
}

#[test]
fn none_healthy_empty_answers_nodata() {
    let zone = Zone {
        none_healthy: NoneHealthy::Empty,
        ..zone()
    };
    let response = ask_in(&zone, view(), "cache.hearth.test.", RecordType::A);
    assert_negative(&response, ResponseCode::NoError);
}

#[test]
fn aaaa_answers_ipv6_instances() {
    let response = ask("web.hearth.test.", RecordType::AAAA);
    assert_eq!(addresses(&response.answers), ips(&["fd00::1:4"]));
}

#[test]
fn a_query_for_an_ipv6_only_name_is_nodata_and_vice_versa() {
    assert_negative(
        &ask("delta.hearth.test.", RecordType::A),
        ResponseCode::NoError,
    );
    assert_negative(
        &ask("db.hearth.test.", RecordType::AAAA),
        ResponseCode::NoError,
    );
    let response = ask("delta.hearth.test.", RecordType::AAAA);
    assert_eq!(addresses(&response.answers), ips(&["fd00::4"]));
}

#[test]
fn node_names_answer_their_address_unless_left() {
    let alpha = ask("alpha.hearth.test.", RecordType::A);
    assert_eq!(addresses(&alpha.answers), ips(&["10.0.0.1"]));
    let dead = ask("charlie.hearth.test.", RecordType::A);
    assert_eq!(addresses(&dead.answers), ips(&["10.0.0.3"]));
    assert_negative(
        &ask("echo.hearth.test.", RecordType::A),
        ResponseCode::NXDomain,
    );
}

#[test]
fn service_names_take_precedence_over_node_names() {
    let response = ask("bravo.hearth.test.", RecordType::A);
    assert_eq!(addresses(&response.answers), ips(&["10.0.5.4"]));
}

#[test]
fn addresses_are_deduplicated_and_sorted() {
    use CheckStatus::Passing;
    let up = MemberState::Alive;
    let members = [
        member(
            "n1",
            up,
            &[],
            "10.1.0.1",
            &[
                ("multi", "10.0.9.3", Passing),
                ("multi", "10.0.9.1", Passing),
            ],
        ),
        member(
            "n2",
            up,
            &[],
            "10.1.0.2",
            &[
                ("MULTI", "10.0.9.3", Passing),
                ("multi", "10.0.9.2", Passing),
            ],
        ),
    ];
    let response = ask_in(
        &zone(),
        view_of("n1", members),
        "multi.hearth.test.",
        RecordType::A,
    );
    assert_eq!(
        addresses(&response.answers),
        ips(&["10.0.9.1", "10.0.9.2", "10.0.9.3"])
    );
}

#[test]
fn apex_answers_soa() {
    let response = ask("hearth.test.", RecordType::SOA);
    assert_eq!(response.response_code, ResponseCode::NoError);
    assert!(response.authoritative);
    let [record] = response.answers.as_slice() else {
        panic!("expected one SOA: {:?}", response.answers);
    };
    assert_eq!(record.ttl, TTL);
    let soa = soa(record);
    assert_eq!(soa.mname, name("delta.hearth.test."));
    assert_eq!(soa.rname, name("hostmaster.hearth.test."));
    assert_eq!((soa.serial, soa.minimum), (SERIAL, TTL));
    assert!(soa.refresh > 0 && soa.retry > 0 && soa.expire > soa.refresh);
}

#[test]
fn apex_answers_up_servers_as_ns_with_glue() {
    let response = ask("hearth.test.", RecordType::NS);
    // charlie is a server too, but dead.
    let expected = RData::NS(NS(name("delta.hearth.test.")));
    let answers: Vec<&RData> = response.answers.iter().map(|record| &record.data).collect();
    assert_eq!(answers, [&expected]);
    let [glue] = response.additionals.as_slice() else {
        panic!("expected one glue record: {:?}", response.additionals);
    };
    assert_eq!(glue.name, name("delta.hearth.test."));
    assert_eq!(addresses(&response.additionals), ips(&["fd00::4"]));
}

#[test]
fn ns_falls_back_to_this_node_when_no_server_is_up() {
    let mut view = view();
    view.members.get_mut("delta").unwrap().state = MemberState::Dead;
    let response = ask_in(&zone(), view.clone(), "hearth.test.", RecordType::NS);
    let expected = RData::NS(NS(name("alpha.hearth.test.")));
    assert_eq!(
        response.answers.first().map(|record| &record.data),
        Some(&expected)
    );
    assert_eq!(addresses(&response.additionals), ips(&["10.0.0.1"]));
    let soa_response = ask_in(&zone(), view, "hearth.test.", RecordType::SOA);
    assert_eq!(
        soa(&soa_response.answers[0]).mname,
        name("alpha.hearth.test.")
    );
}

#[test]
fn apex_other_types_are_nodata() {
    assert_negative(&ask("hearth.test.", RecordType::A), ResponseCode::NoError);
}

#[test]
fn unknown_names_are_nxdomain_with_soa() {
    for qname in [
        "nosuch.hearth.test.",
        "a.b.hearth.test.",
        "x.web.hearth.test.",
    ] {
        assert_negative(&ask(qname, RecordType::A), ResponseCode::NXDomain);
    }
}

#[test]
fn other_types_on_existing_names_are_nodata_with_soa() {
    assert_negative(
        &ask("web.hearth.test.", RecordType::TXT),
        ResponseCode::NoError,
    );
    assert_negative(
        &ask("alpha.hearth.test.", RecordType::MX),
        ResponseCode::NoError,
    );
}

#[test]
fn names_outside_the_zone_are_refused_without_aa() {
    for qname in ["www.example.com.", "test.", "."] {
        let response = ask(qname, RecordType::A);
        assert_eq!(response.response_code, ResponseCode::Refused, "{qname}");
        assert!(!response.authoritative);
        assert!(response.answers.is_empty() && response.authorities.is_empty());
    }
}

#[test]
fn classes_other_than_in_and_any_are_refused() {
    let answer_class = |class| {
        let mut request = query("web.hearth.test.", RecordType::A);
        request.queries[0].set_query_class(class);
        answer(&zone(), &snapshot(&zone(), view()), &request)
    };
    assert_eq!(
        answer_class(DNSClass::CH).response_code,
        ResponseCode::Refused
    );
    assert_eq!(
        answer_class(DNSClass::HS).response_code,
        ResponseCode::Refused
    );
    let any = answer_class(DNSClass::ANY);
    assert_eq!(addresses(&any.answers), ips(&["10.0.1.1"]));
}

#[test]
fn zone_transfers_are_refused() {
    for qtype in [RecordType::AXFR, RecordType::IXFR] {
        assert_eq!(
            ask("hearth.test.", qtype).response_code,
            ResponseCode::Refused
        );
    }
}

#[test]
fn matching_ignores_case_and_echoes_the_question_as_asked() {
    let asked = name("WeB.HeArTh.tEsT.");
    let response = ask("WeB.HeArTh.tEsT.", RecordType::A);
    assert!(response.queries[0].name().eq_case(&asked));
    assert_eq!(addresses(&response.answers), ips(&["10.0.1.1"]));
    assert!(response.answers[0].name.eq_case(&asked));
    let apex = ask("HEARTH.test.", RecordType::SOA);
    assert!(apex.answers[0].name.eq_case(&name("HEARTH.test.")));
}

#[test]
fn any_answers_both_families_and_apex_records() {
    let response = ask("web.hearth.test.", RecordType::ANY);
    assert_eq!(
        addresses(&response.answers),
        ips(&["10.0.1.1", "fd00::1:4"])
    );
    let apex = ask("hearth.test.", RecordType::ANY);
    let types: Vec<RecordType> = apex.answers.iter().map(|r| r.record_type()).collect();
    assert_eq!(types, [RecordType::SOA, RecordType::NS]);
    assert_eq!(addresses(&apex.additionals), ips(&["fd00::4"]));
}

#[test]
fn opcodes_other_than_query_are_notimp() {
    for op_code in [
        OpCode::Status,
        OpCode::Notify,
        OpCode::Update,
        OpCode::Unknown(9),
    ] {
        let mut request = query("web.hearth.test.", RecordType::A);
        request.metadata.op_code = op_code;
        let response = answer(&zone(), &snapshot(&zone(), view()), &request);
        assert_eq!(response.response_code, ResponseCode::NotImp);
        assert_eq!(response.op_code, op_code);
        assert!(response.answers.is_empty());
    }
}

#[test]
fn question_counts_other_than_one_are_formerr() {
    let mut none = query("web.hearth.test.", RecordType::A);
    none.queries.clear();
    let mut two = query("web.hearth.test.", RecordType::A);
    two.add_query(Query::query(name("db.hearth.test."), RecordType::A));
    for request in [none, two] {
        let response = answer(&zone(), &snapshot(&zone(), view()), &request);
        assert_eq!(response.response_code, ResponseCode::FormErr);
        assert!(response.answers.is_empty() && response.queries.is_empty());
    }
}

#[test]
fn header_copies_id_and_rd_and_never_offers_recursion() {
    for recursion_desired in [true, false] {
        let mut request = query("web.hearth.test.", RecordType::A);
        request.metadata.recursion_desired = recursion_desired;
        let response = answer(&zone(), &snapshot(&zone(), view()), &request);
        assert_eq!(response.id, QUERY_ID);
        assert_eq!(response.message_type, MessageType::Response);
        assert_eq!(response.recursion_desired, recursion_desired);
        assert!(!response.recursion_available);
    }
}

#[test]
fn edns_requests_get_an_opt_record_back() {
    let plain = ask("web.hearth.test.", RecordType::A);
    assert!(plain.edns.is_none());
    let mut request = query("web.hearth.test.", RecordType::A);
    request.edns = Some(Edns::new());
    let response = answer(&zone(), &snapshot(&zone(), view()), &request);
    let edns = response.edns.as_ref().expect("an OPT record");
    assert_eq!(edns.max_payload(), EDNS_PAYLOAD);
    assert_eq!(edns.version(), 0);
}

#[test]
fn unknown_edns_versions_get_badvers() {
    let mut request = query("web.hearth.test.", RecordType::A);
    let mut edns = Edns::new();
    edns.set_version(1);
    request.edns = Some(edns);
    let response = answer(&zone(), &snapshot(&zone(), view()), &request);
    assert_eq!(response.response_code, ResponseCode::BADVERS);
    assert!(response.edns.is_some());
}

#[test]
fn zone_origin_is_lowercase_and_fully_qualified() {
    let zone = Zone::new(name("Hearth.Test"), TTL, NoneHealthy::AllUp);
    assert!(zone.origin.eq_case(&name("hearth.test.")));
    assert!(zone.origin.is_fqdn());
}

/// The serial is the zone's content: every server with the same view (whatever its own
/// name) serves the same serial, and any change to what the zone answers changes it.
#[test]
fn the_serial_is_a_function_of_the_zones_content() {
    let serial = |view: View, desired: DesiredState| {
        let snapshot = ZoneSnapshot::build(&zone(), Arc::new(view), Arc::new(desired));
        let soa = answer(&zone(), &snapshot, &query("hearth.test.", RecordType::SOA));
        match &soa.answers[0].data {
            RData::SOA(soa) => assert_eq!(soa.serial, snapshot.serial()),
            other => panic!("{other:?}"),
        }
        snapshot.serial()
    };
    let base = serial(view(), DesiredState::default());
    let mut from_delta = view();
    from_delta.self_name = "delta".into();
    assert_eq!(serial(from_delta, DesiredState::default()), base);
    assert_eq!(serial(view(), DesiredState::default()), base);
    let with_record = desired([record_set("mail", None, &[a("192.0.2.7")])], &[]);
    let recorded = serial(view(), with_record);
    assert_ne!(recorded, base);
    let other_address = desired([record_set("mail", None, &[a("192.0.2.8")])], &[]);
    assert_ne!(serial(view(), other_address), recorded);
    let mut failing = view();
    failing.members.get_mut("alpha").unwrap().services[0].status = CheckStatus::Failing;
    assert_ne!(serial(failing, DesiredState::default()), base);
    // A drain of a node with no effect on answers (the view has no "zulu") changes nothing.
    assert_eq!(serial(view(), desired([], &["zulu"])), base);
}

#[test]
fn snapshot_exposes_its_view_and_serial_and_knows_its_inputs() {
    let view = view_of(
        "solo",
        [member(
            "solo",
            MemberState::Alive,
            &[Role::Server],
            "10.9.9.9",
            &[],
        )],
    );
    let drained = desired([], &["solo"]);
    let snapshot = snapshot_with(&zone(), view.clone(), drained.clone());
    assert_eq!(**snapshot.view(), view);
    assert_eq!(snapshot.serial(), SERIAL);
    assert!(snapshot.is_built_from(&view, &drained));
    assert!(!snapshot.is_built_from(&view, &DesiredState::default()));
    assert!(!snapshot.is_built_from(&View::default(), &drained));
    let with_record = desired([record_set("mail", None, &[a("192.0.2.7")])], &["solo"]);
    assert!(!snapshot.is_built_from(&view, &with_record));
}

#[test]
fn desired_state_outside_records_and_drains_does_not_change_the_zone() {
    let view = view();
    let snapshot = snapshot_with(&zone(), view.clone(), DesiredState::default());
    let service = ClusterService {
        name: "web".into(),
        nodes: Vec::new(),
        check: None,
    };
    let mut with_service = DesiredState::default();
    let versioned = Versioned {
        version: 7,
        value: service,
    };
    with_service.services.insert("web".into(), versioned);
    assert!(snapshot.is_built_from(&view, &with_service));
}

#[test]
fn an_instance_on_a_suspect_node_is_left_out_only_while_one_on_a_trusted_node_passes() {
    use CheckStatus::{Failing, Passing};
    let cluster = |alpha_web| {
        view_of(
            "alpha",
            [
                member(
                    "alpha",
                    MemberState::Alive,
                    &[Role::Worker],
                    "10.0.0.1",
                    &[("web", "10.0.1.1", alpha_web)],
                ),
                member(
                    "bravo",
                    MemberState::Suspect,
                    &[Role::Worker],
                    "10.0.0.2",
                    &[("web", "10.0.1.2", Passing)],
                ),
            ],
        )
    };
    let zone = zone();
    let response = ask_in(&zone, cluster(Passing), "web.hearth.test.", RecordType::A);
    assert_eq!(addresses(&response.answers), ips(&["10.0.1.1"]));
    // With the trusted node's instance failing, the suspect's passing one is all there is.
    let response = ask_in(&zone, cluster(Failing), "web.hearth.test.", RecordType::A);
    assert_eq!(addresses(&response.answers), ips(&["10.0.1.2"]));
}
