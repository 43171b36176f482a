//! `serve` over real sockets on 127.0.0.1: UDP and TCP answers, garbage, view and desired-state
//! changes, dropped senders, the connection cap, and shutdown. Every wait is bounded by
//! `DEADLINE`; nothing sleeps.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use hearth_types::desired::DesiredState;
use hearth_types::{CheckStatus, MemberState, View};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use super::fixture::{a, addresses, desired, ips, query, record_set, soa, view, zone};
use crate::server::{Inputs, MAX_TCP_CONNECTIONS, MAX_TCP_PER_CLIENT, TCP_FIRST_QUERY_TIMEOUT};
use crate::{DnsMetrics, serve};

const DEADLINE: Duration = Duration::from_secs(10);

struct Running {
    udp: SocketAddr,
    tcp: SocketAddr,
    views: watch::Sender<Arc<View>>,
    /// None when the test holds (or has dropped) the desired-state sender itself.
    desired: Option<watch::Sender<Arc<DesiredState>>>,
    metrics: Arc<DnsMetrics>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

async fn start(view: View) -> Running {
    let (desired, desired_rx) = watch::channel(Arc::new(DesiredState::default()));
    let mut running = start_with(view, desired_rx).await;
    running.desired = Some(desired);
    running
}

async fn start_with(view: View, desired: watch::Receiver<Arc<DesiredState>>) -> Running {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (udp_addr, tcp_addr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    let (views, views_rx) = watch::channel(Arc::new(view));
    let metrics = Arc::new(DnsMetrics::default());
    let shutdown = CancellationToken::new();
    let server = serve(
        zone(),
        udp,
        tcp,
        views_rx,
        desired,
        Arc::clone(&metrics),
        shutdown.clone(),
    );
    Running {
        udp: udp_addr,
        tcp: tcp_addr,
        views,
        desired: None,
        metrics,
        shutdown,
        task: tokio::spawn(server),
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        let ended = timeout(DEADLINE, self.task).await;
        ended
            .expect("serve ends once cancelled")
            .expect("serve does not panic");
    }

    async fn udp_ask(&self, client: &UdpSocket, request: &Message) -> Message {
        client
            .send_to(&request.to_vec().unwrap(), self.udp)
            .await
            .unwrap();
        let mut buf = vec![0u8; 65_535];
        loop {
            let received = timeout(DEADLINE, client.recv_from(&mut buf)).await;
            let (len, _) = received.expect("a UDP answer in time").unwrap();
            let response = Message::from_vec(&buf[..len]).unwrap();
            if response.id == request.id {
                return response;
            }
        }
    }
}

async fn udp_client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

fn frame(request: &Message) -> Vec<u8> {
    let wire = request.to_vec().unwrap();
    let mut framed = u16::try_from(wire.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(&wire);
    framed
}

async fn tcp_read(stream: &mut TcpStream) -> Message {
    let read = async {
        let len = stream.read_u16().await.unwrap();
        let mut wire = vec![0u8; usize::from(len)];
        stream.read_exact(&mut wire).await.unwrap();
        Message::from_vec(&wire).unwrap()
    };
    timeout(DEADLINE, read).await.expect("a TCP answer in time")
}

async fn tcp_ask(stream: &mut TcpStream, request: &Message) -> Message {
    stream.write_all(&frame(request)).await.unwrap();
    tcp_read(stream).await
}

/// True once the server has closed `stream` (EOF or reset), within the deadline.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        timeout(DEADLINE, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn poll_until<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "condition not met within {DEADLINE:?}"
        );
        tokio::task::yield_now().await;
    }
}

fn with_id(mut request: Message, id: u16) -> Message {
    request.metadata.id = id;
    request
}

#[tokio::test]
async fn serves_udp_and_tcp_survives_garbage_and_stops_on_cancel() {
    let server = start(view()).await;
    let client = udp_client().await;
    let web = query("web.hearth.test.", RecordType::A);
    let response = server.udp_ask(&client, &web).await;
    assert_eq!(addresses(&response.answers), ips(&["10.0.1.1"]));

    // Two queries in one write: framing must split them, answers come back in order.
    let mut stream = TcpStream::connect(server.tcp).await.unwrap();
    let missing = with_id(query("nosuch.hearth.test.", RecordType::A), 7);
    stream
        .write_all(&[frame(&web), frame(&missing)].concat())
        .await
        .unwrap();
    let (first, second) = (tcp_read(&mut stream).await, tcp_read(&mut stream).await);
    assert_eq!(addresses(&first.answers), ips(&["10.0.1.1"]));
    assert_eq!(
        (second.id, second.response_code),
        (7, ResponseCode::NXDomain)
    );

    // The UDP loop handles datagrams in order, so the answer proves the garbage was counted.
    client
        .send_to(b"\xff\x00not dns at all", server.udp)
        .await
        .unwrap();
    server.udp_ask(&client, &with_id(web.clone(), 8)).await;
    assert_eq!(server.metrics.dropped_malformed(), 1);
    // A query longer than any real one does not fit its slot: it is dropped, never answered
    // from its first part, and the queries after it are still answered.
    let mut long = web.to_vec().unwrap();
    long.resize(5_000, 0);
    client.send_to(&long, server.udp).await.unwrap();
    server.udp_ask(&client, &with_id(web.clone(), 9)).await;
    assert_eq!(server.metrics.dropped_malformed(), 2);

    stream.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    assert!(
        closed_by_server(&mut stream).await,
        "a bad frame closes the connection"
    );
    assert_eq!(server.metrics.dropped_malformed(), 3);

    let mut fresh = TcpStream::connect(server.tcp).await.unwrap();
    let response = tcp_ask(&mut fresh, &web).await;
    assert_eq!(addresses(&response.answers), ips(&["10.0.1.1"]));
    server.stop().await;
}

#[tokio::test]
async fn view_changes_are_served_with_a_new_serial() {
    let server = start(view()).await;
    let client = udp_client().await;
    let apex = query("hearth.test.", RecordType::SOA);
    let before = serial(&server.udp_ask(&client, &apex).await);

    server
        .views
        .send_replace(Arc::new(view_with_bravo_passing()));
    let web = query("web.hearth.test.", RecordType::A);
    poll_until(|| async {
        let response = server.udp_ask(&client, &web).await;
        addresses(&response.answers) == ips(&["10.0.1.1", "10.0.1.2"])
    })
    .await;
    let after = serial(&server.udp_ask(&client, &apex).await);
    // The serial is a digest of the content (not monotonic: no secondary compares them).
    assert_ne!(after, before, "a changed zone has a new serial");
    server.stop().await;
}

/// A TCP connection from the local address `source`.
async fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("any 127/8 address is local");
    socket.connect(to).await.unwrap()
}

/// Regression: 300 idle connections from one client stopped every TCP answer. Now one
/// client gets `MAX_TCP_PER_CLIENT`, everyone together `MAX_TCP_CONNECTIONS`, and a
/// connection that asks nothing is closed after `TCP_FIRST_QUERY_TIMEOUT`.
#[tokio::test]
async fn tcp_connections_beyond_the_caps_are_closed() {
    let server = start(view()).await;
    let web = query("web.hearth.test.", RecordType::A);
    // One greedy client: its connections beyond its share are closed; others still ask.
    let mut open = Vec::new();
    for _ in 0..MAX_TCP_PER_CLIENT {
        // Asking on each connection proves the server holds a slot for it.
        let mut stream = connect_from([127, 0, 0, 1], server.tcp).await;
        tcp_ask(&mut stream, &web).await;
        open.push(stream);
    }
    let mut refused = connect_from([127, 0, 0, 1], server.tcp).await;
    assert!(closed_by_server(&mut refused).await);
    let mut other = connect_from([127, 0, 0, 2], server.tcp).await;
    tcp_ask(&mut other, &web).await;
    drop(other);

    // Many clients together: the total holds.
    let mut source = 10u8;
    while open.len() < MAX_TCP_CONNECTIONS {
        let mut stream = connect_from([127, 0, 1, source], server.tcp).await;
        if open.len() % MAX_TCP_PER_CLIENT == 0 {
            source += 1;
        }
        tcp_ask(&mut stream, &web).await;
        open.push(stream);
    }
    let mut refused = connect_from([127, 0, 2, 1], server.tcp).await;
    assert!(closed_by_server(&mut refused).await);
    tcp_ask(&mut open[0], &web).await;
    assert!(server.metrics.tcp_refused() >= 2);

    // A slot frees once a connection ends.
    drop(open.pop());
    poll_until(|| async {
        let mut stream = connect_from([127, 0, 2, 2], server.tcp).await;
        stream.write_all(&frame(&web)).await.unwrap();
        let mut len = [0u8; 2];
        matches!(
            timeout(DEADLINE, stream.read_exact(&mut len)).await,
            Ok(Ok(_))
        )
    })
    .await;
    drop(open);

    // A connection that never asks is closed, well before the idle timeout of one that did.
    let mut silent = connect_from([127, 0, 3, 1], server.tcp).await;
    let opened = Instant::now();
    assert!(closed_by_server(&mut silent).await);
    assert!(opened.elapsed() >= TCP_FIRST_QUERY_TIMEOUT);
    server.stop().await;
}

fn serial(response: &Message) -> u32 {
    soa(&response.answers[0]).serial
}

fn mail_at(address: &str) -> DesiredState {
    desired([record_set("mail", None, &[a(address)])], &[])
}

/// The fixture view with bravo's web instance passing, so that web answers two addresses.
fn view_with_bravo_passing() -> View {
    let mut changed = view();
    let bravo = changed.members.get_mut("bravo").unwrap();
    // A suspect node's instance is left out while a trusted one passes: bravo is back, too.
    bravo.state = MemberState::Alive;
    bravo.services[0].status = CheckStatus::Passing;
    changed
}

impl Running {
    async fn answers_to(&self, client: &UdpSocket, qname: &str) -> Vec<std::net::IpAddr> {
        let response = self.udp_ask(client, &query(qname, RecordType::A)).await;
        addresses(&response.answers)
    }
}

#[tokio::test]
async fn desired_state_changes_are_served_with_a_new_serial() {
    let server = start(view()).await;
    let client = udp_client().await;
    let apex = query("hearth.test.", RecordType::SOA);
    let before = serial(&server.udp_ask(&client, &apex).await);
    let mail = query("mail.hearth.test.", RecordType::A);
    let missing = server.udp_ask(&client, &mail).await;
    assert_eq!(missing.response_code, ResponseCode::NXDomain);

    let sender = server.desired.as_ref().unwrap();
    sender.send_replace(Arc::new(mail_at("192.0.2.7")));
    poll_until(|| async {
        server.answers_to(&client, "mail.hearth.test.").await == ips(&["192.0.2.7"])
    })
    .await;
    let after = serial(&server.udp_ask(&client, &apex).await);
    // The serial is a digest of the content (not monotonic: no secondary compares them).
    assert_ne!(after, before, "a changed zone has a new serial");

    // A drain flag is a desired-state change too: db runs only on alpha.
    sender.send_replace(Arc::new(desired([], &["alpha"])));
    poll_until(|| async {
        server
            .answers_to(&client, "db.hearth.test.")
            .await
            .is_empty()
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_desired_sender_gone_before_serve_starts_leaves_its_last_state_served() {
    let (sender, receiver) = watch::channel(Arc::new(mail_at("192.0.2.7")));
    drop(sender);
    let server = start_with(view(), receiver).await;
    let client = udp_client().await;
    let mail = server.answers_to(&client, "mail.hearth.test.").await;
    assert_eq!(mail, ips(&["192.0.2.7"]));

    // The tracking task is still alive: view changes are served.
    server
        .views
        .send_replace(Arc::new(view_with_bravo_passing()));
    poll_until(|| async {
        server.answers_to(&client, "web.hearth.test.").await == ips(&["10.0.1.1", "10.0.1.2"])
    })
    .await;
    let mail = server.answers_to(&client, "mail.hearth.test.").await;
    assert_eq!(mail, ips(&["192.0.2.7"]));
    server.stop().await;
}

#[tokio::test]
async fn a_desired_sender_dropped_while_serving_leaves_its_last_state_served() {
    let mut server = start(view()).await;
    let client = udp_client().await;
    let sender = server.desired.take().unwrap();
    // The last value sent before the drop still counts.
    sender.send_replace(Arc::new(mail_at("192.0.2.8")));
    drop(sender);
    poll_until(|| async {
        server.answers_to(&client, "mail.hearth.test.").await == ips(&["192.0.2.8"])
    })
    .await;

    server
        .views
        .send_replace(Arc::new(view_with_bravo_passing()));
    poll_until(|| async {
        server.answers_to(&client, "web.hearth.test.").await == ips(&["10.0.1.1", "10.0.1.2"])
    })
    .await;
    let mail = server.answers_to(&client, "mail.hearth.test.").await;
    assert_eq!(mail, ips(&["192.0.2.8"]));
    server.stop().await;
}

/// Polls `future` once: whether it would have to wait.
fn is_pending<F: Future>(future: F) -> bool {
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    future.as_mut().poll(&mut context).is_pending()
}

#[tokio::test]
async fn a_closed_input_is_reported_once_then_never_polled_again() {
    let (views, views_rx) = watch::channel(Arc::new(view()));
    let (desired, desired_rx) = watch::channel(Arc::new(DesiredState::default()));
    let mut inputs = Inputs::new(views_rx, desired_rx);
    inputs.latest();
    assert!(is_pending(inputs.changed()));

    drop(desired);
    assert!(inputs.changed().await, "the close is reported once");
    // A closed receiver's `changed` is ready forever; waiting on it again would spin.
    assert!(is_pending(inputs.changed()));
    views.send_replace(Arc::new(View::default()));
    assert!(inputs.changed().await);
    assert_eq!(*inputs.latest().0, View::default());

    drop(views);
    assert!(inputs.changed().await);
    assert!(
        !inputs.changed().await,
        "nothing can change once both senders are gone"
    );
}

#[test]
fn a_slow_build_waits_longer_before_the_next_so_rebuilds_stay_a_fraction_of_a_core() {
    use crate::server::rebuild_gap;
    assert_eq!(rebuild_gap(Duration::ZERO), Duration::from_millis(50));
    assert_eq!(
        rebuild_gap(Duration::from_millis(5)),
        Duration::from_millis(50)
    );
    assert_eq!(
        rebuild_gap(Duration::from_millis(40)),
        Duration::from_millis(160)
    );
    // Building takes at most a fifth of the time under a steady burst.
    let took = Duration::from_millis(300);
    let share = took.as_secs_f64() / (took + rebuild_gap(took)).as_secs_f64();
    assert!(share <= 0.2 + 1e-9, "{share}");
}
