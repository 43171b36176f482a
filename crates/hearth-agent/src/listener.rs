//! The HTTP API's listener: at most so many connections in all and per client address (trusted
//! proxies meet only the total), and each closed when it stays silent: no first byte within
//! `FIRST_BYTE`, or neither a byte read nor written for `IDLE`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hearth_types::limits::{ConnLimit, ConnSlot};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// API connections one node holds at once, in all and from one client address.
pub const MAX_CONNECTIONS: usize = 1024;
pub const MAX_PER_CLIENT: usize = 64;
/// A new connection must send its first byte within this.
pub const FIRST_BYTE: Duration = Duration::from_secs(10);
/// A connection neither reading nor writing for this long is closed (an idle keep-alive).
pub const IDLE: Duration = Duration::from_secs(120);

/// `TcpListener` with the caps of `limit`; refused connections are closed at once.
pub struct LimitedListener {
    inner: TcpListener,
    limit: Arc<ConnLimit>,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, limit: Arc<ConnLimit>) -> LimitedListener {
        LimitedListener { inner, limit }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (LimitedIo, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    if let Some(slot) = self.limit.admit(peer.ip()) {
                        return (LimitedIo::new(stream, slot), peer);
                    }
                    tracing::debug!(%peer, "API connection refused: over the cap");
                }
                // Out of descriptors, usually: wait rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// One admitted connection: its stream, its place under the caps, and its silence deadline.
pub struct LimitedIo {
    stream: TcpStream,
    _slot: ConnSlot,
    deadline: Pin<Box<Sleep>>,
}

impl LimitedIo {
    fn new(stream: TcpStream, slot: ConnSlot) -> LimitedIo {
        LimitedIo {
            stream,
            _slot: slot,
            deadline: Box::pin(tokio::time::sleep(FIRST_BYTE)),
        }
    }

    /// Bytes moved: the connection is not silent.
    fn moved(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + IDLE);
    }

    /// While waiting on the peer: the error once it has been silent too long.
    fn expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stayed silent",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for LimitedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => self.expired(cx),
        }
    }
}

impl AsyncWrite for LimitedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => self.expired(cx).map(|r| r.map(|()| 0)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
