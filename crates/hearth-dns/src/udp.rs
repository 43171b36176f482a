//! The UDP server: one thread that takes every query waiting on the socket in one system call
//! (`recvmmsg`), answers them, and sends the answers in one more (`sendmmsg`), so a busy
//! server pays neither a wake-up nor two system calls per datagram.

use std::io::{IoSlice, IoSliceMut};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, Shutdown, SockaddrStorage, recvmmsg, sendmmsg,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::answer::EDNS_PAYLOAD;
use crate::server::Responder;

/// Datagrams taken and answered per system call, at most.
const BATCH: usize = 32;
/// Room for one query. Real queries are a few dozen bytes; a longer datagram is cut short by
/// the kernel, then dropped and counted as malformed, never answered from its first part.
const MAX_QUERY: usize = 4096;
/// Serves DNS over `socket` on a thread of the blocking pool, joined through `tasks`, until
/// `shutdown` is cancelled. The thread sleeps in the kernel while no query comes (no timer, so
/// no wake-up of its own); the cancellation reaches it by shutting the socket's receiving side
/// down, which wakes a blocked receive on Linux.
pub(crate) fn spawn(
    tasks: &mut JoinSet<()>,
    responder: Responder,
    socket: tokio::net::UdpSocket,
    shutdown: CancellationToken,
) {
    let opened = socket.into_std().and_then(|socket| {
        socket.set_nonblocking(false)?;
        let waker = socket.try_clone()?;
        Ok((socket, waker))
    });
    let (socket, waker) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            warn!(%error, "cannot serve DNS over UDP");
            return;
        }
    };
    let waker = Waker {
        socket: waker,
        shutdown: shutdown.clone(),
    };
    tasks.spawn(async move {
        waker.shutdown.cancelled().await;
        drop(waker);
    });
    tasks.spawn_blocking(move || serve(responder, &socket, &shutdown));
}

/// Stops the serving thread when dropped: when the shutdown is cancelled, and also when the
/// runtime drops its task unpolled (a runtime that ends without cancelling, say after a
/// panic, would otherwise wait forever for the thread blocked in its receive).
struct Waker {
    socket: UdpSocket,
    shutdown: CancellationToken,
}

impl Drop for Waker {
    fn drop(&mut self) {
        self.shutdown.cancel();
        // A socket with no peer answers ENOTCONN, but its receivers are woken all the same.
        let _ = nix::sys::socket::shutdown(self.socket.as_raw_fd(), Shutdown::Read);
    }
}

/// Answers the queries arriving on `socket` until `shutdown` is cancelled and the socket's
/// receiving side shut down. Blocks: run it on a thread of its own.
fn serve(mut responder: Responder, socket: &UdpSocket, shutdown: &CancellationToken) {
    let mut batch = Batch::new();
    loop {
        let received = batch.receive(socket);
        if shutdown.is_cancelled() {
            return;
        }
        match received {
            Ok(()) => {
                batch.answer(&mut responder);
                batch.send(socket);
            }
            Err(Errno::EINTR) => {}
            Err(error) => debug!(%error, "DNS UDP receive failed"),
        }
    }
}

/// The buffers of one round: queries in, answers out, reused from round to round.
struct Batch {
    queries: Vec<u8>,
    /// Per query received: its length, sender, and whether the kernel cut it short.
    received: Vec<(usize, Option<SockaddrStorage>, bool)>,
    answers: Vec<Vec<u8>>,
    receive_headers: MultiHeaders<SockaddrStorage>,
    send_headers: MultiHeaders<SockaddrStorage>,
}

impl Batch {
    fn new() -> Self {
        Self {
            queries: vec![0; BATCH * MAX_QUERY],
            received: Vec::with_capacity(BATCH),
            answers: (0..BATCH)
                .map(|_| Vec::with_capacity(usize::from(EDNS_PAYLOAD)))
                .collect(),
            receive_headers: MultiHeaders::preallocate(BATCH, None),
            send_headers: MultiHeaders::preallocate(BATCH, None),
        }
    }

    /// Waits for at least one datagram (until the socket's read timeout), then takes every
    /// one already waiting, up to `BATCH`.
    fn receive(&mut self, socket: &UdpSocket) -> Result<(), Errno> {
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
            .queries
            .chunks_mut(MAX_QUERY)
            .map(|slot| [IoSliceMut::new(slot)])
            .collect();
        let flags = MsgFlags::MSG_WAITFORONE;
        let results = recvmmsg(
            socket.as_raw_fd(),
            &mut self.receive_headers,
            slices.iter_mut(),
            flags,
            None,
        )?;
        self.received.clear();
        for message in results {
            let cut = message.flags.contains(MsgFlags::MSG_TRUNC);
            self.received.push((message.bytes, message.address, cut));
        }
        Ok(())
    }

    /// Computes the answer to each query received; an empty answer is not sent.
    fn answer(&mut self, responder: &mut Responder) {
        let slots = self.queries.chunks(MAX_QUERY);
        for ((&(len, _, cut), slot), out) in self.received.iter().zip(slots).zip(&mut self.answers)
        {
            out.clear();
            match slot.get(..len) {
                Some(query) if !cut => {
                    responder.respond_udp(query, out);
                }
                _ => responder.metrics().record_dropped(),
            }
        }
    }

    /// Sends every non-empty answer to the sender of its query. A datagram the kernel
    /// refuses (an unreachable sender, say) is skipped; the rest still go.
    fn send(&mut self, socket: &UdpSocket) {
        let mut slices = Vec::with_capacity(self.received.len());
        let mut peers = Vec::with_capacity(self.received.len());
        for (&(_, peer, _), answer) in self.received.iter().zip(&self.answers) {
            if peer.is_some() && !answer.is_empty() {
                slices.push([IoSlice::new(answer)]);
                peers.push(peer);
            }
        }
        let no_control: [ControlMessage<'_>; 0] = [];
        let mut sent = 0;
        while sent < slices.len() {
            let round = sendmmsg(
                socket.as_raw_fd(),
                &mut self.send_headers,
                &slices[sent..],
                &peers[sent..],
                no_control,
                MsgFlags::empty(),
            );
            match round {
                Ok(results) => sent += results.count().max(1),
                Err(Errno::EINTR) => {}
                Err(error) => {
                    debug!(%error, peer = ?peers[sent], "DNS UDP send failed");
                    sent += 1;
                }
            }
        }
    }
}
