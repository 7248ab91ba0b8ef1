//! Fault injection: a FIFO queue of canned failures that tests push with `Sandbox::inject`, and
//! the listener plumbing that lets a handler drop its own connection mid-request.
//!
//! Dropping a connection cleanly is not something an HTTP framework offers, so every accepted
//! socket is wrapped in a [`KillableStream`]. A handler that wants the client to see a dead
//! connection flips the stream's kill switch (reached through [`ConnHandle`] in the request's
//! connect info); hyper's next write then fails and it closes the socket before a single byte of
//! the response went out.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::path_matches;

/// A canned failure for the next `times` requests whose path starts with `path_prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Matched against the request path, with or without the `/api/3` prefix
    /// (`"/import/bulk_import"` and `"/api/3/import/bulk_import"` both match a bulk import).
    pub path_prefix: String,
    /// How many matching requests this fault answers before it is used up.
    pub times: u32,
    /// What the matching requests get instead of normal processing.
    pub action: FaultAction,
}

/// What a faulted request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// Answer with this status, optional `Retry-After` seconds and raw (JSON) body; the request
    /// is not processed.
    Status {
        status: u16,
        retry_after: Option<u64>,
        body: String,
    },
    /// The connection drops without a complete response; the request is not processed.
    Drop,
    /// The response is delayed by this long (to provoke client timeouts); the request is then
    /// processed normally, as a slow server would.
    Delay(Duration),
}

/// Faults waiting to be applied, in the order they were injected.
#[derive(Debug, Default)]
pub(crate) struct FaultQueue {
    pending: VecDeque<Fault>,
}

impl FaultQueue {
    /// Queues a fault; a fault with `times == 0` would never fire, so it is ignored.
    pub(crate) fn push(&mut self, fault: Fault) {
        if fault.times > 0 {
            self.pending.push_back(fault);
        }
    }

    /// The action for a request to `path`: the first queued fault whose prefix matches, which
    /// uses up one of its `times`.
    pub(crate) fn take(&mut self, path: &str) -> Option<FaultAction> {
        if self.pending.is_empty() {
            return None;
        }
        let index = self
            .pending
            .iter()
            .position(|fault| path_matches(path, &fault.path_prefix))?;
        let fault = &mut self.pending[index];
        fault.times -= 1;
        let action = fault.action.clone();
        if fault.times == 0 {
            self.pending.remove(index);
        }
        Some(action)
    }
}

/// The kill switch of one accepted connection, handed to handlers as connect info.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnHandle {
    killed: Arc<AtomicBool>,
}

impl ConnHandle {
    /// Makes every further write on the connection fail, so hyper closes it without answering.
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
    }
}

impl Connected<IncomingStream<'_, KillableListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        stream.io().handle.clone()
    }
}

/// A TCP listener whose connections can be killed by their handlers.
pub(crate) struct KillableListener {
    inner: TcpListener,
}

impl KillableListener {
    pub(crate) fn new(inner: TcpListener) -> Self {
        Self { inner }
    }
}

/// How long to pause after a failed `accept` (e.g. out of file descriptors) before trying again,
/// so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

impl Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Small JSON answers must not wait for Nagle's algorithm.
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "Could not set TCP_NODELAY on a sandbox connection");
                    }
                    let io = KillableStream {
                        inner: stream,
                        handle: ConnHandle::default(),
                    };
                    return (io, addr);
                }
                Err(error) => {
                    tracing::warn!(%error, "Sandbox failed to accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A TCP stream that refuses to write once its [`ConnHandle`] was killed.
pub(crate) struct KillableStream {
    inner: TcpStream,
    handle: ConnHandle,
}

impl KillableStream {
    fn is_killed(&self) -> bool {
        self.handle.killed.load(Ordering::Relaxed)
    }
}

fn killed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "sandbox fault injection dropped the connection",
    )
}

impl AsyncRead for KillableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_killed() {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_killed() {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_killed() {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_fault(prefix: &str, times: u32, status: u16) -> Fault {
        Fault {
            path_prefix: prefix.to_owned(),
            times,
            action: FaultAction::Status {
                status,
                retry_after: None,
                body: "{}".to_owned(),
            },
        }
    }

    fn status_of(action: Option<FaultAction>) -> Option<u16> {
        match action {
            Some(FaultAction::Status { status, .. }) => Some(status),
            _ => None,
        }
    }

    #[test]
    fn a_fault_fires_exactly_its_number_of_times() {
        let mut queue = FaultQueue::default();
        queue.push(status_fault("/api/3/lists", 2, 500));

        assert_eq!(status_of(queue.take("/api/3/lists")), Some(500));
        assert_eq!(status_of(queue.take("/api/3/lists/1")), Some(500));
        assert_eq!(queue.take("/api/3/lists"), None);
    }

    #[test]
    fn faults_matching_the_same_path_fire_in_injection_order() {
        let mut queue = FaultQueue::default();
        queue.push(status_fault("/api/3", 1, 502));
        queue.push(status_fault("/api/3", 1, 503));

        assert_eq!(status_of(queue.take("/api/3/users/me")), Some(502));
        assert_eq!(status_of(queue.take("/api/3/users/me")), Some(503));
    }

    #[test]
    fn a_prefix_without_the_api_root_matches_the_full_path() {
        let mut queue = FaultQueue::default();
        queue.push(status_fault("/import/bulk_import", 1, 500));

        assert_eq!(queue.take("/api/3/import/info"), None);
        assert_eq!(
            status_of(queue.take("/api/3/import/bulk_import")),
            Some(500)
        );
    }
}
