//! Pushing over the wire: TSIG signing and verification, `send_updates` against a fake primary
//! on 127.0.0.1 that checks our signature and signs its answers, and `run_pusher` following
//! leadership, changes and failures. Every wait is bounded by `DEADLINE`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hearth_types::desired::DesiredState;
use hearth_types::{CheckStatus, MemberState, View};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use super::fixture::{member, name, view, view_of, zone};
use crate::DnsMetrics;
use crate::push::tsig::{self, FUDGE, TsigFailure};
use crate::push::{PushError, PushSettings, TsigKey, run_pusher, send_updates};

const DEADLINE: Duration = Duration::from_secs(10);
const NOW: u64 = 1_700_000_000;

fn key() -> TsigKey {
    TsigKey::hmac_sha256(
        name("hearth-push"),
        b"0123456789abcdef0123456789abcdef".to_vec(),
    )
}

fn other_secret() -> TsigKey {
    TsigKey::hmac_sha256(name("hearth-push"), b"not the secret".to_vec())
}

fn update() -> Message {
    let mut message = Message::new(0x4242, MessageType::Query, OpCode::Update);
    message.add_zone(hickory_proto::op::Query::query(
        name("hearth.test."),
        RecordType::SOA,
    ));
    message.add_update(Record::from_rdata(
        name("www.hearth.test."),
        30,
        RData::A("192.0.2.1".parse().unwrap()),
    ));
    message
}

#[test]
fn a_signed_message_verifies_and_decodes_with_its_tsig_last() {
    let signed = tsig::sign(&update(), &key(), NOW, None).unwrap();
    assert_eq!(
        tsig::verify(&signed.wire, &key(), NOW, None),
        Ok(signed.mac.clone())
    );
    assert_eq!(signed.mac.len(), 32, "HMAC-SHA256");
    let decoded = Message::from_vec(&signed.wire).unwrap();
    assert_eq!(decoded.updates(), update().updates());
    let last = decoded.additionals.last().unwrap();
    assert_eq!(last.name, name("hearth-push."));
    assert_eq!(last.dns_class, DNSClass::ANY);
    assert!(matches!(&last.data, RData::TSIG(tsig) if tsig.oid == 0x4242 && tsig.fudge == FUDGE));
}

#[test]
fn tampering_another_secret_or_key_name_or_clock_fails_verification() {
    let signed = tsig::sign(&update(), &key(), NOW, None).unwrap();
    let mut tampered = signed.wire.clone();
    // The last byte of the A record's address, inside the signed part.
    let at = tampered
        .windows(4)
        .position(|w| w == [192, 0, 2, 1])
        .unwrap()
        + 3;
    tampered[at] = 2;
    assert_eq!(
        tsig::verify(&tampered, &key(), NOW, None),
        Err(TsigFailure::BadMac)
    );
    assert_eq!(
        tsig::verify(&signed.wire, &other_secret(), NOW, None),
        Err(TsigFailure::BadMac)
    );
    let other_name =
        TsigKey::hmac_sha256(name("other"), b"0123456789abcdef0123456789abcdef".to_vec());
    assert!(matches!(
        tsig::verify(&signed.wire, &other_name, NOW, None),
        Err(TsigFailure::OtherKey(_))
    ));
    let late = NOW + u64::from(FUDGE) + 1;
    assert!(matches!(
        tsig::verify(&signed.wire, &key(), late, None),
        Err(TsigFailure::BadTime { .. })
    ));
    let unsigned = update().to_vec().unwrap();
    assert_eq!(
        tsig::verify(&unsigned, &key(), NOW, None),
        Err(TsigFailure::Unsigned)
    );
}

#[test]
fn an_answer_verifies_only_against_the_request_it_answers() {
    let request = tsig::sign(&update(), &key(), NOW, None).unwrap();
    let answer = tsig::sign(
        &answer_to(&update(), ResponseCode::NoError),
        &key(),
        NOW,
        Some(&request.mac),
    )
    .unwrap();
    assert!(tsig::verify(&answer.wire, &key(), NOW, Some(&request.mac)).is_ok());
    let other_request = [0u8; 32];
    assert_eq!(
        tsig::verify(&answer.wire, &key(), NOW, Some(&other_request)),
        Err(TsigFailure::BadMac)
    );
}

#[test]
fn the_key_debug_never_shows_the_secret() {
    let shown = format!(
        "{:?}",
        PushSettings::new("127.0.0.1:53".parse().unwrap(), key())
    );
    assert!(shown.contains("hearth-push"), "{shown}");
    assert!(!shown.contains("0123456789abcdef"), "{shown}");
}

fn answer_to(request: &Message, rcode: ResponseCode) -> Message {
    let mut answer = Message::new(request.metadata.id, MessageType::Response, OpCode::Update);
    answer.metadata.response_code = rcode;
    answer.queries = request.queries.clone();
    answer
}

/// How the fake primary answers each UPDATE.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Verifies with its key and signs a NOERROR answer.
    Accept,
    /// Answers NOTAUTH with TSIG error BADSIG, unsigned, as real primaries do.
    BadSig,
    /// Accepts, but signs the answer with another secret.
    SignWrongly,
    /// Reads the UPDATE and never answers.
    Silent,
}

struct FakePrimary {
    addr: SocketAddr,
    /// Every UPDATE received, decoded, whether accepted or not.
    received: mpsc::UnboundedReceiver<Message>,
    behaviour: watch::Sender<Behaviour>,
}

async fn fake_primary(behaviour: Behaviour) -> FakePrimary {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (received_tx, received) = mpsc::unbounded_channel();
    let (behaviour_tx, behaviour_rx) = watch::channel(behaviour);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_updates(
                stream,
                received_tx.clone(),
                behaviour_rx.clone(),
            ));
        }
    });
    FakePrimary {
        addr,
        received,
        behaviour: behaviour_tx,
    }
}

async fn serve_updates(
    mut stream: TcpStream,
    received: mpsc::UnboundedSender<Message>,
    behaviour: watch::Receiver<Behaviour>,
) {
    loop {
        let mut prefix = [0u8; 2];
        if stream.read_exact(&mut prefix).await.is_err() {
            return;
        }
        let mut wire = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        stream.read_exact(&mut wire).await.unwrap();
        let now = unix_now();
        let request_mac = tsig::verify(&wire, &key(), now, None).expect("the request verifies");
        let request = Message::from_vec(&wire).unwrap();
        let _ = received.send(request.clone());
        let answer = match *behaviour.borrow() {
            Behaviour::Accept => {
                let answer = answer_to(&request, ResponseCode::NoError);
                tsig::sign(&answer, &key(), now, Some(&request_mac))
                    .unwrap()
                    .wire
            }
            Behaviour::SignWrongly => {
                let answer = answer_to(&request, ResponseCode::NoError);
                tsig::sign(&answer, &other_secret(), now, Some(&request_mac))
                    .unwrap()
                    .wire
            }
            Behaviour::BadSig => bad_sig_answer(&request, now),
            Behaviour::Silent => continue,
        };
        let mut framed = u16::try_from(answer.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(&answer);
        stream.write_all(&framed).await.unwrap();
    }
}

/// NOTAUTH with a TSIG record carrying BADSIG and no MAC (RFC 8945 §5.3.2).
fn bad_sig_answer(request: &Message, now: u64) -> Vec<u8> {
    use hickory_proto::rr::rdata::tsig::{TSIG, TsigAlgorithm, make_tsig_record};
    let mut answer = answer_to(request, ResponseCode::NotAuth);
    let tsig = TSIG::new(
        TsigAlgorithm::HmacSha256,
        now,
        FUDGE,
        Vec::new(),
        request.metadata.id,
        Some(TsigError::BadSig),
        Vec::new(),
    );
    answer.signature = Some(Box::new(make_tsig_record(name("hearth-push."), tsig)));
    answer.to_vec().unwrap()
}

fn unix_now() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.unwrap().as_secs()
}

#[tokio::test]
async fn send_updates_checks_each_answer() {
    let primary = fake_primary(Behaviour::Accept).await;
    let messages = [update(), update()];
    send_updates(primary.addr, &key(), &messages, DEADLINE)
        .await
        .unwrap();

    primary.behaviour.send_replace(Behaviour::BadSig);
    let error = send_updates(primary.addr, &key(), &messages, DEADLINE)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            PushError::Refused {
                rcode: ResponseCode::NotAuth,
                tsig_error: Some(TsigError::BadSig),
                ..
            }
        ),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("NOTAUTH (BADSIG)") && text.contains("dns.push.key_file"),
        "{text}"
    );

    primary.behaviour.send_replace(Behaviour::SignWrongly);
    let error = send_updates(primary.addr, &key(), &messages, DEADLINE)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            PushError::Unverified {
                failure: TsigFailure::BadMac,
                ..
            }
        ),
        "{error:?}"
    );

    primary.behaviour.send_replace(Behaviour::Silent);
    let short = Duration::from_millis(200);
    let error = send_updates(primary.addr, &key(), &messages, short)
        .await
        .unwrap_err();
    assert!(matches!(error, PushError::Timeout { .. }), "{error:?}");
}

#[tokio::test]
async fn send_updates_reports_a_closed_port() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let error = send_updates(addr, &key(), &[update()], DEADLINE)
        .await
        .unwrap_err();
    assert!(matches!(error, PushError::Connect { .. }), "{error:?}");
}

struct Pusher {
    views: watch::Sender<Arc<View>>,
    _desired: watch::Sender<Arc<DesiredState>>,
    leader: Arc<AtomicBool>,
    /// How often the pusher asked whether it leads.
    n_leader_checks: Arc<AtomicUsize>,
    metrics: Arc<DnsMetrics>,
    shutdown: CancellationToken,
}

impl Pusher {
    /// Waits until the pusher has asked twice more whether it leads, so that it has gone once
    /// through its loop with the current answer.
    async fn settle(&self) {
        let seen = self.n_leader_checks.load(Ordering::SeqCst);
        until("two more leadership checks", || {
            self.n_leader_checks.load(Ordering::SeqCst) >= seen + 2
        })
        .await;
    }
}

fn start_pusher(primary: &FakePrimary, leader: bool) -> Pusher {
    let (views, views_rx) = watch::channel(Arc::new(view()));
    let (desired, desired_rx) = watch::channel(Arc::new(DesiredState::default()));
    let settings = PushSettings {
        timeout: DEADLINE,
        debounce: Duration::from_millis(10),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..PushSettings::new(primary.addr, key())
    };
    let leader = Arc::new(AtomicBool::new(leader));
    let n_leader_checks = Arc::new(AtomicUsize::new(0));
    let is_leader = {
        let (leader, n_leader_checks) = (Arc::clone(&leader), Arc::clone(&n_leader_checks));
        move || {
            n_leader_checks.fetch_add(1, Ordering::SeqCst);
            leader.load(Ordering::SeqCst)
        }
    };
    let metrics = Arc::new(DnsMetrics::default());
    let shutdown = CancellationToken::new();
    tokio::spawn(run_pusher(
        settings,
        zone(),
        views_rx,
        desired_rx,
        is_leader,
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    Pusher {
        views,
        _desired: desired,
        leader,
        n_leader_checks,
        metrics,
        shutdown,
    }
}

/// Polls `condition` until it holds, failing the test after `DEADLINE`.
async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn next_update(primary: &mut FakePrimary) -> Message {
    let received = timeout(DEADLINE, primary.received.recv()).await;
    received
        .expect("an UPDATE in time")
        .expect("the fake primary runs")
}

/// Records of the update section owned by `owner`, as (class, type, data) text.
fn touching(message: &Message, owner: &str) -> Vec<String> {
    let owned = message.updates().iter().filter(|r| r.name == name(owner));
    owned
        .map(|r| format!("{} {} {}", r.dns_class, r.record_type(), r.data))
        .collect()
}

/// What a full resync of the fixture view does to alpha's node name with `address`.
fn alpha_resynced(address: &str) -> Vec<String> {
    let added = format!("IN A {address}");
    vec!["ANY A UPDATE".into(), added, "ANY AAAA UPDATE".into()]
}

#[tokio::test]
async fn a_follower_pushes_nothing_and_a_new_leader_resyncs() {
    let mut primary = fake_primary(Behaviour::Accept).await;
    let pusher = start_pusher(&primary, false);
    pusher.settle().await;
    assert!(primary.received.try_recv().is_err(), "a follower pushed");
    pusher.leader.store(true, Ordering::SeqCst);
    let first = next_update(&mut primary).await;
    assert_eq!(
        touching(&first, "alpha.hearth.test."),
        alpha_resynced("10.0.0.1")
    );
    until("the resync to be counted", || {
        pusher.metrics.push().updates_accepted() >= 1
    })
    .await;
    pusher.shutdown.cancel();
}

#[tokio::test]
async fn the_leader_pushes_only_changes_until_it_loses_the_lead() {
    let mut primary = fake_primary(Behaviour::Accept).await;
    let pusher = start_pusher(&primary, true);
    let first = next_update(&mut primary).await;
    assert_eq!(
        touching(&first, "alpha.hearth.test."),
        alpha_resynced("10.0.0.1")
    );

    // alpha's web instance fails: web's A set goes (delta's AAAA stays), and nothing else.
    let mut changed = view();
    let alpha = changed.members.get_mut("alpha").unwrap();
    alpha.services[0].status = CheckStatus::Failing;
    pusher.views.send_replace(Arc::new(changed));
    let update = next_update(&mut primary).await;
    assert_eq!(update.updates().len(), 1, "{:?}", update.updates());
    assert_eq!(touching(&update, "web.hearth.test."), ["ANY A UPDATE"]);

    // After losing the lead and taking it again, what the primary holds is unknown: resync.
    pusher.leader.store(false, Ordering::SeqCst);
    pusher.settle().await;
    let moved = member("alpha", MemberState::Alive, &[], "10.0.0.9", &[]);
    pusher
        .views
        .send_replace(Arc::new(view_of("alpha", [moved])));
    pusher.settle().await;
    assert!(primary.received.try_recv().is_err(), "a follower pushed");
    pusher.leader.store(true, Ordering::SeqCst);
    let resync = next_update(&mut primary).await;
    assert_eq!(
        touching(&resync, "alpha.hearth.test."),
        alpha_resynced("10.0.0.9")
    );
    pusher.shutdown.cancel();
}

#[tokio::test]
async fn failures_are_counted_and_retried_as_a_full_resync() {
    let mut primary = fake_primary(Behaviour::BadSig).await;
    let pusher = start_pusher(&primary, true);
    let refused = next_update(&mut primary).await;
    assert_eq!(
        touching(&refused, "alpha.hearth.test."),
        alpha_resynced("10.0.0.1")
    );
    until("a failure to be counted", || {
        pusher.metrics.push().failures() >= 1
    })
    .await;
    primary.behaviour.send_replace(Behaviour::Accept);
    until("a retry to be accepted", || {
        pusher.metrics.push().updates_accepted() >= 1
    })
    .await;
    // The accepted retry was a full resync again.
    let mut last = None;
    while let Ok(message) = primary.received.try_recv() {
        last = Some(message);
    }
    let last = last.expect("at least one retry");
    assert_eq!(
        touching(&last, "alpha.hearth.test."),
        alpha_resynced("10.0.0.1")
    );
    pusher.shutdown.cancel();
}
