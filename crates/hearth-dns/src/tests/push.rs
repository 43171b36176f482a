//! The pure half of pushing to an external primary: what `rrsets` publishes (checked against
//! `answer` itself), and the UPDATE messages `updates` and `resync` make of it.

use std::collections::BTreeMap;

use hearth_types::desired::DesiredState;
use hickory_proto::op::{Message, OpCode, UpdateMessage};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::fixture::{
    a, cname, desired, mx, name, query, record_set, snapshot_with, srv, txt, view, zone,
};
use crate::answer;
use crate::push::{MAX_UPDATE_BYTES, Rrset, RrsetMap, resync, rrsets, updates};

/// `name/TYPE` → the records' text, for the sets that publish something.
fn published(map: &RrsetMap) -> BTreeMap<String, Vec<String>> {
    let present = map.iter().filter(|(_, set)| !set.data.is_empty());
    let text = |((owner, rtype), set): (&(Name, RecordType), &Rrset)| {
        let data = set.data.iter().map(ToString::to_string).collect();
        (format!("{owner}/{rtype}"), data)
    };
    present.map(text).collect()
}

/// The `name/TYPE` of the sets that must be absent.
fn absent(map: &RrsetMap) -> Vec<String> {
    let empty = map.iter().filter(|(_, set)| set.data.is_empty());
    empty
        .map(|((owner, rtype), _)| format!("{owner}/{rtype}"))
        .collect()
}

fn statics() -> DesiredState {
    desired(
        [
            record_set("mail", Some(60), &[a("192.0.2.25")]),
            record_set("@", None, &[mx(10, "mail")]),
            record_set("_imap._tcp", None, &[srv(0, 1, 143, "mail")]),
            record_set("alias", None, &[cname("web")]),
            record_set("www", None, &[txt("hello")]),
        ],
        &[],
    )
}

#[test]
fn services_and_nodes_publish_what_dns_answers() {
    let map = rrsets(&zone(), &view(), &DesiredState::default());
    let expected: BTreeMap<String, Vec<String>> = [
        ("alpha.hearth.test./A", vec!["10.0.0.1"]),
        // bravo's service (on delta) wins over the node bravo.
        ("bravo.hearth.test./A", vec!["10.0.5.4"]),
        // No cache instance passes: all-up answers bravo's.
        ("cache.hearth.test./A", vec!["10.0.3.2"]),
        // A dead node keeps its name; only a node that left loses it.
        ("charlie.hearth.test./A", vec!["10.0.0.3"]),
        ("db.hearth.test./A", vec!["10.0.2.1"]),
        ("delta.hearth.test./AAAA", vec!["fd00::4"]),
        ("web.hearth.test./A", vec!["10.0.1.1"]),
        ("web.hearth.test./AAAA", vec!["fd00::1:4"]),
    ]
    .into_iter()
    .map(|(key, data)| (key.to_owned(), data.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(published(&map), expected);
    // Names with nothing to answer now keep their address sets, as absent ones, so that a
    // resync deletes them.
    for key in [
        "old.hearth.test./A",
        "gone.hearth.test./AAAA",
        "alpha.hearth.test./AAAA",
    ] {
        assert!(absent(&map).contains(&key.to_owned()), "{key}: {map:?}");
    }
    // Never the SOA or NS: they belong to the primary.
    assert!(
        map.keys()
            .all(|(_, rtype)| !matches!(rtype, RecordType::SOA | RecordType::NS))
    );
}

#[test]
fn static_sets_are_published_with_their_ttl_and_precedence() {
    let map = rrsets(&zone(), &view(), &statics());
    let set = |owner: &str, rtype| map.get(&(name(owner), rtype)).cloned();
    let mail = set("mail.hearth.test.", RecordType::A).unwrap();
    assert_eq!(mail.ttl, 60);
    assert_eq!(published(&map)["hearth.test./MX"], ["10 mail.hearth.test."]);
    assert!(set("_imap._tcp.hearth.test.", RecordType::SRV).is_some());
    assert!(set("alias.hearth.test.", RecordType::CNAME).is_some());
    // Beside a service, a static address set loses, and other static types stay.
    assert!(set("www.hearth.test.", RecordType::TXT).is_some());
    // The empty non-terminal `_tcp` publishes nothing.
    assert!(
        map.keys()
            .all(|(owner, _)| *owner != name("_tcp.hearth.test."))
    );
}

#[test]
fn drained_nodes_leave_the_published_service_sets() {
    let map = rrsets(&zone(), &view(), &desired([], &["alpha"]));
    assert!(
        map[&(name("web.hearth.test."), RecordType::A)]
            .data
            .is_empty()
    );
    assert!(
        map[&(name("db.hearth.test."), RecordType::A)]
            .data
            .is_empty()
    );
    // The node name itself still answers.
    assert!(
        !map[&(name("alpha.hearth.test."), RecordType::A)]
            .data
            .is_empty()
    );
}

#[test]
fn every_published_set_is_what_answer_says() {
    let zone = zone();
    let desired = statics();
    let map = rrsets(&zone, &view(), &desired);
    let snapshot = snapshot_with(&zone, view(), desired);
    for ((owner, rtype), set) in &map {
        let response = answer(&zone, &snapshot, &query(&owner.to_string(), *rtype));
        let answered: Vec<&RData> = response
            .answers
            .iter()
            .filter(|record| record.name == *owner && record.record_type() == *rtype)
            .map(|record| &record.data)
            .collect();
        assert_eq!(
            answered,
            set.data.iter().collect::<Vec<_>>(),
            "{owner} {rtype}"
        );
    }
}

fn one_set(owner: &str, ttl: u32, texts: &[&str]) -> RrsetMap {
    let data = texts.iter().map(|text| txt_data(text)).collect();
    RrsetMap::from([((name(owner), RecordType::TXT), Rrset { ttl, data })])
}

fn txt_data(text: &str) -> RData {
    RData::TXT(TXT::new(vec![text.to_owned()]))
}

fn origin() -> Name {
    name("hearth.test.")
}

fn is_delete(record: &Record, owner: &str, rtype: RecordType) -> bool {
    record.name == name(owner)
        && record.dns_class == DNSClass::ANY
        && record.ttl == 0
        && record.data == RData::Update0(rtype)
}

fn assert_update_for_zone(message: &Message) {
    assert_eq!(message.metadata.op_code, OpCode::Update);
    let [zone] = message.queries.as_slice() else {
        panic!("one zone: {:?}", message.queries);
    };
    assert_eq!(zone.name(), &origin());
    assert_eq!(zone.query_type(), RecordType::SOA);
    assert_eq!(zone.query_class(), DNSClass::IN);
    assert!(message.answers.is_empty(), "no prerequisites");
}

#[test]
fn nothing_changed_sends_nothing() {
    let map = rrsets(&zone(), &view(), &statics());
    assert!(updates(&origin(), &map, &map).is_empty());
}

#[test]
fn a_changed_set_is_deleted_then_added_in_one_message() {
    let previous = one_set("t.hearth.test.", 30, &["old"]);
    let next = one_set("t.hearth.test.", 30, &["new", "newer"]);
    let [message] = updates(&origin(), &previous, &next).try_into().unwrap();
    assert_update_for_zone(&message);
    let [delete, first, second] = message.updates() else {
        panic!("{:?}", message.updates());
    };
    assert!(
        is_delete(delete, "t.hearth.test.", RecordType::TXT),
        "{delete:?}"
    );
    for (record, text) in [(first, "new"), (second, "newer")] {
        assert_eq!(record.dns_class, DNSClass::IN);
        assert_eq!(record.ttl, 30);
        assert_eq!(record.data, txt_data(text));
    }
    // A TTL change alone is a change too.
    let retimed = one_set("t.hearth.test.", 60, &["old"]);
    assert_eq!(updates(&origin(), &previous, &retimed).len(), 1);
}

#[test]
fn vanished_and_emptied_sets_are_deleted() {
    let previous = one_set("t.hearth.test.", 30, &["old"]);
    let [message] = updates(&origin(), &previous, &RrsetMap::new())
        .try_into()
        .unwrap();
    let [delete] = message.updates() else {
        panic!("{:?}", message.updates());
    };
    assert!(is_delete(delete, "t.hearth.test.", RecordType::TXT));
    let emptied = one_set("t.hearth.test.", 30, &[]);
    let [message] = updates(&origin(), &previous, &emptied).try_into().unwrap();
    assert!(
        matches!(message.updates(), [delete] if is_delete(delete, "t.hearth.test.", RecordType::TXT))
    );
    // An empty set that was missing before changes nothing on the primary.
    assert!(updates(&origin(), &RrsetMap::new(), &emptied).is_empty());
}

#[test]
fn resync_replaces_every_managed_set_and_deletes_the_empty_ones() {
    let map = rrsets(&zone(), &view(), &DesiredState::default());
    let messages = resync(&origin(), &map);
    let records: Vec<&Record> = messages.iter().flat_map(|m| m.updates()).collect();
    let n_deletes = records
        .iter()
        .filter(|r| r.dns_class == DNSClass::ANY)
        .count();
    assert_eq!(n_deletes, map.len());
    let old = records
        .iter()
        .filter(|record| record.name == name("old.hearth.test."))
        .count();
    assert_eq!(old, 2, "old's A and AAAA are deleted, nothing added");
}

#[test]
fn large_changes_are_batched_without_splitting_a_set() {
    let long_text = "x".repeat(200);
    let next: RrsetMap = (0..2_000)
        .map(|idx| {
            let owner = name(&format!("host-{idx}.hearth.test."));
            let data = vec![txt_data(&long_text), txt_data(&format!("{idx}"))];
            ((owner, RecordType::TXT), Rrset { ttl: 30, data })
        })
        .collect();
    let messages = resync(&origin(), &next);
    assert!(messages.len() > 1, "{} messages", messages.len());
    let mut n_records = 0;
    for message in &messages {
        assert_update_for_zone(message);
        let len = message.to_vec().unwrap().len();
        assert!(len <= MAX_UPDATE_BYTES, "{len} bytes");
        // Each set's delete and adds travel together: three records per set, in order.
        for change in message.updates().chunks(3) {
            assert!(is_delete(
                &change[0],
                &change[0].name.to_string(),
                RecordType::TXT
            ));
            assert!(change[1..].iter().all(|r| r.name == change[0].name));
        }
        n_records += message.updates().len();
    }
    assert_eq!(n_records, 3 * next.len());
}
