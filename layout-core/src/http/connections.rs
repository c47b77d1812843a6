//! The open connections of an endpoint: a cap, and eviction of the oldest connection
//! that has not yet presented a valid token when the cap is reached, so connections that
//! never authenticate (a slow client that never finishes its request head, say) can
//! never keep an operator or a member out.

use std::collections::BTreeMap;
use std::future::{ready, Ready};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use axum_server::accept::Accept;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The table of open connections, oldest first.
pub(crate) struct Connections {
    max: usize,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: BTreeMap<u64, Arc<ConnState>>,
}

/// One connection's state, shared by its stream and (as a request extension) by the
/// requests it carries.
#[derive(Default)]
pub(crate) struct ConnState {
    authenticated: AtomicBool,
    evicted: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// Put into every request's extensions: lets the authentication layer mark the
/// connection as one that presented a valid token.
#[derive(Clone)]
pub(crate) struct ConnMark(Arc<ConnState>);

impl ConnMark {
    pub(crate) fn authenticated(&self) {
        self.0.authenticated.store(true, Ordering::Release);
    }
}

impl Connections {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            table: Mutex::new(Table::default()),
        })
    }

    pub(crate) fn open(&self) -> usize {
        self.table.lock().open.len()
    }

    /// Admits a new connection: evicts the oldest unauthenticated one if the table is
    /// full, or refuses the new one when every open connection has authenticated.
    fn admit(self: &Arc<Self>) -> io::Result<(u64, Arc<ConnState>)> {
        let mut table = self.table.lock();
        if table.open.len() >= self.max {
            let victim = table
                .open
                .iter()
                .find(|(_, c)| !c.authenticated.load(Ordering::Acquire))
                .map(|(id, _)| *id);
            let Some(state) = victim.and_then(|id| table.open.remove(&id)) else {
                tracing::warn!(
                    limit = self.max,
                    "connection limit reached and every connection has authenticated: refusing a new one"
                );
                return Err(io::Error::other("connection limit reached"));
            };
            tracing::debug!(
                "connection limit reached: closing the oldest connection that has not authenticated"
            );
            state.evict();
        }
        let id = table.next_id;
        table.next_id += 1;
        let state = Arc::new(ConnState::default());
        table.open.insert(id, Arc::clone(&state));
        Ok((id, state))
    }

    fn close(&self, id: u64) {
        self.table.lock().open.remove(&id);
    }
}

impl ConnState {
    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        if let Some(waker) = self.waker.lock().take() {
            waker.wake();
        }
    }

    fn check(&self, cx: &Context<'_>) -> io::Result<()> {
        if self.evicted.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room for another connection",
            ));
        }
        let mut waker = self.waker.lock();
        match &*waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *waker = Some(cx.waker().clone()),
        }
        Ok(())
    }
}

/// The acceptor: admits each connection into the table and tags its requests.
#[derive(Clone)]
pub(crate) struct TrackingAcceptor {
    pub(crate) connections: Arc<Connections>,
}

impl<I, S> Accept<I, S> for TrackingAcceptor {
    type Stream = Tracked<I>;
    type Service = axum::middleware::AddExtension<S, ConnMark>;
    type Future = Ready<io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        ready(self.connections.admit().map(|(id, state)| {
            let mark = ConnMark(Arc::clone(&state));
            let stream = Tracked {
                inner: stream,
                state,
                id,
                connections: Arc::clone(&self.connections),
            };
            let service = tower::Layer::layer(&axum::Extension(mark), service);
            (stream, service)
        }))
    }
}

/// A stream that leaves the table when dropped, and fails once evicted.
pub(crate) struct Tracked<I> {
    inner: I,
    state: Arc<ConnState>,
    id: u64,
    connections: Arc<Connections>,
}

impl<I> Drop for Tracked<I> {
    fn drop(&mut self) {
        self.connections.close(self.id);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.state.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.state.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.state.check(cx)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
