//! The rules that come from the desired state, one test each, through `answer` over the fixture
//! view: drained nodes, and static records with their precedence against services and nodes.

use hearth_types::desired::DesiredState;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, SRV, TXT};
use hickory_proto::rr::{RData, Record, RecordType};

use super::fixture::{
    TTL, a, aaaa, addresses, ask_with, assert_negative, cname, desired, ips, mx, name, query,
    record_set, snapshot_with, srv, txt, view, zone,
};
use crate::{NoneHealthy, Zone, answer};

fn drained(nodes: &[&str]) -> DesiredState {
    desired([], nodes)
}

fn ask_drained_in(zone: &Zone, nodes: &[&str], qname: &str, qtype: RecordType) -> Message {
    let snapshot = snapshot_with(zone, view(), drained(nodes));
    answer(zone, &snapshot, &query(qname, qtype))
}

fn empty_policy() -> Zone {
    Zone {
        none_healthy: NoneHealthy::Empty,
        ..zone()
    }
}

fn data(records: &[Record]) -> Vec<&RData> {
    records.iter().map(|record| &record.data).collect()
}

fn types(records: &[Record]) -> Vec<RecordType> {
    records.iter().map(Record::record_type).collect()
}

fn a_data(address: &str) -> RData {
    RData::A(A(address.parse().unwrap()))
}

fn cname_data(target: &str) -> RData {
    RData::CNAME(CNAME(name(target)))
}

/// Asserts a NOERROR answer holding exactly `expected`, all owned by `owner`.
fn assert_answers(response: &Message, owner: &str, expected: &[RData]) {
    assert_eq!(response.response_code, ResponseCode::NoError);
    assert!(response.authoritative);
    assert_eq!(data(&response.answers), expected.iter().collect::<Vec<_>>());
    assert!(response.answers.iter().all(|r| r.name == name(owner)));
}

#[test]
fn drained_nodes_instances_leave_service_answers() {
    // delta's web instance is the only one left passing, and it is IPv6.
    let response = ask_drained_in(&zone(), &["alpha"], "web.hearth.test.", RecordType::ANY);
    assert_eq!(addresses(&response.answers), ips(&["fd00::1:4"]));
    // db runs only on alpha: the name stays, with nothing to answer.
    let response = ask_drained_in(&zone(), &["alpha"], "db.hearth.test.", RecordType::A);
    assert_negative(&response, ResponseCode::NoError);
}

#[test]
fn none_healthy_all_up_never_falls_back_to_a_drained_node() {
    // cache fails only on bravo; without the drain, all-up would answer it.
    let response = ask_drained_in(&zone(), &["bravo"], "cache.hearth.test.", RecordType::A);
    assert_negative(&response, ResponseCode::NoError);
    // With alpha and delta drained, no web instance passes: all-up answers bravo's failing
    // one, but never alpha's or delta's.
    let drained = ["alpha", "delta"];
    let response = ask_drained_in(&zone(), &drained, "web.hearth.test.", RecordType::ANY);
    assert_eq!(addresses(&response.answers), ips(&["10.0.1.2"]));
}

#[test]
fn none_healthy_empty_with_drained_nodes_is_nodata() {
    let drained = ["alpha", "delta"];
    for qtype in [RecordType::A, RecordType::AAAA] {
        let response = ask_drained_in(&empty_policy(), &drained, "web.hearth.test.", qtype);
        assert_negative(&response, ResponseCode::NoError);
    }
    let response = ask_drained_in(
        &empty_policy(),
        &["alpha"],
        "web.hearth.test.",
        RecordType::A,
    );
    assert_negative(&response, ResponseCode::NoError);
}

#[test]
fn drained_nodes_keep_their_node_names_and_stay_name_servers() {
    let response = ask_drained_in(&zone(), &["alpha"], "alpha.hearth.test.", RecordType::A);
    assert_eq!(addresses(&response.answers), ips(&["10.0.0.1"]));
    let response = ask_drained_in(&zone(), &["delta"], "hearth.test.", RecordType::NS);
    let expected = RData::NS(NS(name("delta.hearth.test.")));
    assert_eq!(data(&response.answers), [&expected]);
    assert_eq!(addresses(&response.additionals), ips(&["fd00::4"]));
}

#[test]
fn static_sets_answer_each_type() {
    let state = desired(
        [
            record_set("mail", None, &[a("192.0.2.7")]),
            record_set("mail", None, &[aaaa("2001:db8::7")]),
            record_set("mail", None, &[txt("v=spf1 -all")]),
            record_set("mail", None, &[mx(10, "mx1.example.org."), mx(20, "mx2")]),
            record_set("sip", None, &[srv(1, 5, 5060, "pbx.example.org.")]),
            record_set("www", None, &[cname("www.example.org.")]),
        ],
        &[],
    );
    let ask = |qname, qtype| ask_with(&state, qname, qtype);
    let owner = "mail.hearth.test.";
    let addr = RData::AAAA(AAAA("2001:db8::7".parse().unwrap()));
    assert_answers(&ask(owner, RecordType::A), owner, &[a_data("192.0.2.7")]);
    assert_answers(&ask(owner, RecordType::AAAA), owner, &[addr]);
    let text = RData::TXT(TXT::new(vec!["v=spf1 -all".into()]));
    assert_answers(&ask(owner, RecordType::TXT), owner, &[text]);
    let exchanges = [
        RData::MX(MX::new(10, name("mx1.example.org."))),
        RData::MX(MX::new(20, name("mx2.hearth.test."))),
    ];
    assert_answers(&ask(owner, RecordType::MX), owner, &exchanges);
    let service = RData::SRV(SRV::new(1, 5, 5060, name("pbx.example.org.")));
    let owner = "sip.hearth.test.";
    assert_answers(&ask(owner, RecordType::SRV), owner, &[service]);
    let owner = "www.hearth.test.";
    let alias = cname_data("www.example.org.");
    assert_answers(&ask(owner, RecordType::CNAME), owner, &[alias]);
}

#[test]
fn ttl_is_the_sets_or_the_zones() {
    let state = desired(
        [
            record_set("mail", Some(300), &[a("192.0.2.7")]),
            record_set("mail", None, &[txt("hello")]),
        ],
        &[],
    );
    let ttls = |qtype| {
        let response = ask_with(&state, "mail.hearth.test.", qtype);
        response.answers.iter().map(|r| r.ttl).collect::<Vec<_>>()
    };
    assert_eq!(ttls(RecordType::A), [300]);
    assert_eq!(ttls(RecordType::TXT), [TTL]);
}

#[test]
fn apex_static_sets_add_to_soa_and_ns() {
    let state = desired(
        [
            record_set("@", None, &[mx(10, "mail")]),
            record_set("@", None, &[txt("v=spf1 mx -all")]),
            record_set("@", None, &[a("192.0.2.1")]),
        ],
        &[],
    );
    let apex = "hearth.test.";
    let exchange = RData::MX(MX::new(10, name("mail.hearth.test.")));
    assert_answers(&ask_with(&state, apex, RecordType::MX), apex, &[exchange]);
    let response = ask_with(&state, apex, RecordType::TXT);
    assert_eq!(types(&response.answers), [RecordType::TXT]);
    assert_answers(
        &ask_with(&state, apex, RecordType::A),
        apex,
        &[a_data("192.0.2.1")],
    );
    let soa = ask_with(&state, apex, RecordType::SOA);
    assert_eq!(types(&soa.answers), [RecordType::SOA]);
    let ns = ask_with(&state, apex, RecordType::NS);
    assert_eq!(types(&ns.answers), [RecordType::NS]);
    let any = ask_with(&state, apex, RecordType::ANY);
    let expected = [
        RecordType::SOA,
        RecordType::NS,
        RecordType::A,
        RecordType::TXT,
        RecordType::MX,
    ];
    assert_eq!(types(&any.answers), expected);
}

#[test]
fn apex_cname_is_ignored() {
    let state = desired([record_set("@", None, &[cname("example.org.")])], &[]);
    for qtype in [RecordType::A, RecordType::CNAME] {
        let response = ask_with(&state, "hearth.test.", qtype);
        assert_negative(&response, ResponseCode::NoError);
    }
    let soa = ask_with(&state, "hearth.test.", RecordType::SOA);
    assert_eq!(types(&soa.answers), [RecordType::SOA]);
}

#[test]
fn multi_label_names_answer_and_their_parents_are_empty_non_terminals() {
    let service = srv(0, 5, 993, "mail.example.org.");
    let state = desired(
        [
            record_set("_imap._tcp", None, &[service]),
            record_set("c.b.a", None, &[txt("deep")]),
        ],
        &[],
    );
    let response = ask_with(&state, "_IMAP._tcp.Hearth.test.", RecordType::SRV);
    assert_eq!(types(&response.answers), [RecordType::SRV]);
    let response = ask_with(&state, "c.b.a.hearth.test.", RecordType::TXT);
    assert_eq!(types(&response.answers), [RecordType::TXT]);
    // RFC 8020: a name with descendants exists, so asking for it is NODATA, not NXDOMAIN.
    for qname in ["_tcp.hearth.test.", "b.a.hearth.test.", "a.hearth.test."] {
        for qtype in [RecordType::A, RecordType::SRV, RecordType::ANY] {
            let response = ask_with(&state, qname, qtype);
            assert_negative(&response, ResponseCode::NoError);
        }
    }
    for qname in [
        "_udp.hearth.test.",
        "x._tcp.hearth.test.",
        "d.c.b.a.hearth.test.",
    ] {
        let response = ask_with(&state, qname, RecordType::A);
        assert_negative(&response, ResponseCode::NXDomain);
    }
}

#[test]
fn cname_in_the_zone_is_followed_one_step() {
    let state = desired(
        [
            record_set("www", None, &[cname("web")]),
            record_set("home", None, &[cname("hearth.test.")]),
            record_set("@", None, &[mx(10, "mail.example.org.")]),
        ],
        &[],
    );
    let response = ask_with(&state, "www.hearth.test.", RecordType::A);
    assert_eq!(response.response_code, ResponseCode::NoError);
    assert_eq!(types(&response.answers), [RecordType::CNAME, RecordType::A]);
    assert_eq!(response.answers[0].data, cname_data("web.hearth.test."));
    assert_eq!(response.answers[1].name, name("web.hearth.test."));
    assert_eq!(addresses(&response.answers), ips(&["10.0.1.1"]));
    assert!(response.authorities.is_empty());
    let response = ask_with(&state, "www.hearth.test.", RecordType::AAAA);
    assert_eq!(addresses(&response.answers), ips(&["fd00::1:4"]));
    // The requested type, whatever it is, and into the apex too.
    let response = ask_with(&state, "home.hearth.test.", RecordType::MX);
    assert_eq!(
        types(&response.answers),
        [RecordType::CNAME, RecordType::MX]
    );
    let soa = ask_with(&state, "home.hearth.test.", RecordType::SOA);
    assert_eq!(types(&soa.answers), [RecordType::CNAME, RecordType::SOA]);
    // CNAME and ANY queries get the alias alone.
    for qtype in [RecordType::CNAME, RecordType::ANY] {
        let response = ask_with(&state, "www.hearth.test.", qtype);
        assert_eq!(types(&response.answers), [RecordType::CNAME]);
    }
}

#[test]
fn cname_targets_without_data_answer_like_the_target() {
    let state = desired(
        [
            record_set("ext", None, &[cname("www.example.org.")]),
            record_set("dangling", None, &[cname("nosuch")]),
            record_set("to-db", None, &[cname("db")]),
            record_set("first", None, &[cname("second")]),
            record_set("second", None, &[cname("first")]),
        ],
        &[],
    );
    // Outside the zone: the alias alone, for the resolver to follow.
    let response = ask_with(&state, "ext.hearth.test.", RecordType::A);
    assert_answers(
        &response,
        "ext.hearth.test.",
        &[cname_data("www.example.org.")],
    );
    assert!(response.authorities.is_empty());
    // RFC 6604: the rcode and the SOA are the target's.
    let response = ask_with(&state, "dangling.hearth.test.", RecordType::A);
    assert_eq!(response.response_code, ResponseCode::NXDomain);
    assert_eq!(types(&response.answers), [RecordType::CNAME]);
    assert_eq!(types(&response.authorities), [RecordType::SOA]);
    let response = ask_with(&state, "to-db.hearth.test.", RecordType::AAAA);
    assert_eq!(response.response_code, ResponseCode::NoError);
    assert_eq!(types(&response.answers), [RecordType::CNAME]);
    assert_eq!(types(&response.authorities), [RecordType::SOA]);
    // A loop ends after one step.
    let response = ask_with(&state, "first.hearth.test.", RecordType::A);
    assert_answers(
        &response,
        "first.hearth.test.",
        &[cname_data("second.hearth.test.")],
    );
    assert!(response.authorities.is_empty());
}

#[test]
fn cname_beside_other_data_is_ignored() {
    let state = desired(
        [
            record_set("web", None, &[cname("example.org.")]),
            record_set("alpha", None, &[cname("example.org.")]),
            record_set("notes", None, &[cname("example.org.")]),
            record_set("notes", None, &[txt("kept")]),
        ],
        &[],
    );
    let response = ask_with(&state, "web.hearth.test.", RecordType::A);
    assert_eq!(addresses(&response.answers), ips(&["10.0.1.1"]));
    let response = ask_with(&state, "alpha.hearth.test.", RecordType::A);
    assert_eq!(addresses(&response.answers), ips(&["10.0.0.1"]));
    let response = ask_with(&state, "notes.hearth.test.", RecordType::TXT);
    assert_eq!(types(&response.answers), [RecordType::TXT]);
    for qname in ["web.hearth.test.", "notes.hearth.test."] {
        let response = ask_with(&state, qname, RecordType::CNAME);
        assert_negative(&response, ResponseCode::NoError);
    }
    let response = ask_with(&state, "notes.hearth.test.", RecordType::A);
    assert_negative(&response, ResponseCode::NoError);
}

#[test]
fn addresses_come_from_the_service_then_the_static_set_then_the_node() {
    let state = desired(
        [
            record_set("web", None, &[a("192.0.2.1")]),
            record_set("web", None, &[txt("beside the service")]),
            record_set("alpha", None, &[a("192.0.2.2")]),
            record_set("alpha", None, &[mx(10, "mail.example.org.")]),
            record_set("delta", None, &[a("192.0.2.3")]),
        ],
        &[],
    );
    let response = ask_with(&state, "web.hearth.test.", RecordType::ANY);
    let expected = [RecordType::A, RecordType::AAAA, RecordType::TXT];
    assert_eq!(types(&response.answers), expected);
    assert_eq!(
        addresses(&response.answers),
        ips(&["10.0.1.1", "fd00::1:4"])
    );
    let response = ask_with(&state, "alpha.hearth.test.", RecordType::A);
    assert_eq!(addresses(&response.answers), ips(&["192.0.2.2"]));
    let response = ask_with(&state, "alpha.hearth.test.", RecordType::MX);
    assert_eq!(types(&response.answers), [RecordType::MX]);
    // One source answers both families: delta's static A hides its node's IPv6 address.
    let response = ask_with(&state, "delta.hearth.test.", RecordType::A);
    assert_eq!(addresses(&response.answers), ips(&["192.0.2.3"]));
    let response = ask_with(&state, "delta.hearth.test.", RecordType::AAAA);
    assert_negative(&response, ResponseCode::NoError);
}

#[test]
fn mx_and_srv_answers_carry_addresses_of_in_zone_hosts() {
    let state = desired(
        [
            record_set("mail", None, &[a("192.0.2.7")]),
            record_set("mail", None, &[aaaa("2001:db8::7")]),
            record_set("@", None, &[mx(10, "mail"), mx(20, "mx.example.org.")]),
            record_set(
                "_imap._tcp",
                None,
                &[srv(0, 5, 993, "mail"), srv(0, 5, 993, "web")],
            ),
        ],
        &[],
    );
    let response = ask_with(&state, "hearth.test.", RecordType::MX);
    assert_eq!(response.answers.len(), 2);
    assert!(
        response
            .additionals
            .iter()
            .all(|r| r.name == name("mail.hearth.test."))
    );
    assert_eq!(
        addresses(&response.additionals),
        ips(&["192.0.2.7", "2001:db8::7"])
    );
    let response = ask_with(&state, "_imap._tcp.hearth.test.", RecordType::SRV);
    let expected = ["192.0.2.7", "2001:db8::7", "10.0.1.1", "fd00::1:4"];
    assert_eq!(addresses(&response.additionals), ips(&expected));
}

#[test]
fn any_answers_every_set_at_the_name() {
    let state = desired(
        [
            record_set("mail", None, &[a("192.0.2.7")]),
            record_set("mail", None, &[aaaa("2001:db8::7")]),
            record_set("mail", None, &[txt("hello")]),
            record_set("mail", None, &[mx(10, "mail")]),
            record_set("mail", None, &[srv(0, 0, 25, "mail")]),
        ],
        &[],
    );
    let response = ask_with(&state, "mail.hearth.test.", RecordType::ANY);
    let expected = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::TXT,
        RecordType::MX,
        RecordType::SRV,
    ];
    assert_eq!(types(&response.answers), expected);
}

#[test]
fn names_read_like_a_zone_file() {
    let state = desired(
        [
            record_set("abs.hearth.test.", None, &[a("192.0.2.8")]),
            record_set("elsewhere.example.org.", None, &[a("192.0.2.9")]),
            record_set("Mixed.Case", None, &[a("192.0.2.10")]),
        ],
        &[],
    );
    let response = ask_with(&state, "abs.hearth.test.", RecordType::A);
    assert_eq!(addresses(&response.answers), ips(&["192.0.2.8"]));
    let response = ask_with(&state, "mixed.case.hearth.test.", RecordType::A);
    assert_eq!(addresses(&response.answers), ips(&["192.0.2.10"]));
    let response = ask_with(&state, "elsewhere.example.org.hearth.test.", RecordType::A);
    assert_negative(&response, ResponseCode::NXDomain);
}

#[test]
fn long_txt_values_are_split_into_strings() {
    let long = "x".repeat(300);
    let state = desired([record_set("long", None, &[txt(&long)])], &[]);
    let response = ask_with(&state, "long.hearth.test.", RecordType::TXT);
    let RData::TXT(text) = &response.answers[0].data else {
        panic!("expected a TXT: {:?}", response.answers);
    };
    let lengths: Vec<usize> = text.txt_data.iter().map(|s| s.len()).collect();
    assert_eq!(lengths, [255, 45]);
}

#[test]
fn vms_answer_their_addresses_under_vm() {
    let vm = |name: &str, deleting: bool| -> hearth_types::compute::Vm {
        serde_json::from_value(serde_json::json!({
            "id": format!("vm-{name}"), "name": name, "owner": "alice", "vcpus": 1,
            "memory_mib": 64, "disk_gib": 1, "image": "tiny", "host": null,
            "phase": "running", "deleting": deleting,
            "ips": [
                {"pool": "v4", "address": "192.0.2.7", "prefix": 24},
                {"pool": "v6", "address": "2001:db8:1:5::1", "prefix": 64, "routed": true},
            ],
        }))
        .unwrap()
    };
    let mut desired = desired([], &[]);
    for (name, deleting) in [("web1", false), ("gone", true)] {
        let vm = vm(name, deleting);
        let entry = hearth_types::desired::Versioned {
            version: 1,
            value: vm,
        };
        desired.compute.vms.insert(entry.value.id.clone(), entry);
    }
    let response = ask_with(&desired, "web1.vm.hearth.test.", RecordType::AAAA);
    assert_answers(
        &response,
        "web1.vm.hearth.test.",
        &[RData::AAAA(AAAA("2001:db8:1:5::1".parse().unwrap()))],
    );
    let response = ask_with(&desired, "WEB1.vm.hearth.test.", RecordType::A);
    assert_eq!(addresses(&response.answers), ips(&["192.0.2.7"]));
    // A VM being deleted answers nothing; `vm` itself is an empty non-terminal.
    let response = ask_with(&desired, "gone.vm.hearth.test.", RecordType::A);
    assert_negative(&response, ResponseCode::NXDomain);
    let response = ask_with(&desired, "vm.hearth.test.", RecordType::A);
    assert_negative(&response, ResponseCode::NoError);
    // A static set at the same name is served instead.
    desired.records.insert(
        "web1.vm".into(),
        hearth_types::desired::Versioned {
            version: 2,
            value: record_set("web1.vm", None, &[a("198.51.100.1")]),
        },
    );
    let response = ask_with(&desired, "web1.vm.hearth.test.", RecordType::A);
    assert_eq!(addresses(&response.answers), ips(&["198.51.100.1"]));
    let response = ask_with(&desired, "web1.vm.hearth.test.", RecordType::AAAA);
    assert_negative(&response, ResponseCode::NoError);
}
