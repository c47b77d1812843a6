//! How members reach the coordinator.
//!
//! The protocol is transport-free: [`Coordinator::register`] and
//! [`Coordinator::heartbeat`] are plain method calls taking and returning serde types.
//! [`CoordinatorLink`] is what a [`Member`](crate::cluster::Member) talks to; two wirings
//! are provided:
//!
//! - **in process**: a [`Coordinator`] (or an `Arc` of one) *is* a link; members in the
//!   same process (an in-process mini cluster, the example service's threads) call it
//!   directly, with no serialization and no channel to drain;
//! - **between processes**: [`CoordinatorServer`] serves a coordinator on a loopback TCP
//!   port, one JSON line per request and per answer, and [`TcpLink`] is the member's end.
//!   The child-process tests and the example service use it. It binds 127.0.0.1 only:
//!   it has no authentication, and across machines the admin endpoint (with a bearer
//!   token) is the way in.

use std::io::{self, BufRead, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::coordinator::Coordinator;
use super::protocol::{CoordinatorAnswer, HeartbeatError, MemberReport};

/// The longest request or answer line accepted, in bytes.
const MAX_LINE: u64 = 64 * 1024;

/// How long a connection may stay silent before the server drops it, and how long the
/// member's end waits for an answer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A member's way to the coordinator. Synchronous: the member's thread waits for the
/// answer.
pub trait CoordinatorLink: Send + Sync {
    /// Registers the member (at start-up).
    fn register(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError>;
    /// Sends a heartbeat.
    fn heartbeat(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError>;
}

impl CoordinatorLink for Coordinator {
    fn register(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        Coordinator::register(self, report)
    }
    fn heartbeat(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        Coordinator::heartbeat(self, report)
    }
}

impl<L: CoordinatorLink + ?Sized> CoordinatorLink for Arc<L> {
    fn register(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        (**self).register(report)
    }
    fn heartbeat(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        (**self).heartbeat(report)
    }
}

/// One request line.
#[derive(Debug, Serialize, Deserialize)]
enum WireRequest {
    Register(MemberReport),
    Heartbeat(MemberReport),
}

type WireAnswer = Result<CoordinatorAnswer, HeartbeatError>;

/// Serves a [`Coordinator`] to member processes on a loopback TCP port: one JSON line per
/// request (`{"Register": report}` or `{"Heartbeat": report}`), one JSON line per answer
/// (`{"Ok": answer}` or `{"Err": error}`). A thread accepts connections and one thread
/// serves each. Dropping the server stops accepting, closes every connection and waits
/// for their threads (so the coordinator is released).
///
/// ```
/// use std::sync::Arc;
/// use layout_core::cluster::{
///     Coordinator, CoordinatorLink, CoordinatorOptions, CoordinatorServer, EmbeddedStore,
///     MemberReport, TcpLink,
/// };
///
/// let coordinator = Arc::new(Coordinator::open(
///     Arc::new(EmbeddedStore::in_memory()),
///     CoordinatorOptions::default(),
/// )?);
/// let server = CoordinatorServer::bind_loopback(coordinator, 0)?;
/// let link = TcpLink::new(server.local_addr());
/// let answer = link.register(&MemberReport::new("datanode", "dn1", 2, 1))?;
/// assert_eq!(answer.cluster_layout_version, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct CoordinatorServer {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<Connection>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl CoordinatorServer {
    /// Serves `coordinator` on 127.0.0.1:`port` (0: any free port; see
    /// [`local_addr`](Self::local_addr)).
    pub fn bind_loopback(coordinator: Arc<Coordinator>, port: u16) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let stopping = Arc::clone(&stopping);
            let connections = Arc::clone(&connections);
            thread::Builder::new()
                .name("layout-coordinator-accept".to_owned())
                .spawn(move || accept_loop(&listener, &coordinator, &stopping, &connections))?
        };
        tracing::info!(%addr, "coordinator serving members");
        Ok(Self {
            addr,
            stopping,
            connections,
            acceptor: Some(acceptor),
        })
    }

    /// The address members connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A member connection: its socket (to shut it down) and the thread serving it.
struct Connection {
    stream: TcpStream,
    thread: JoinHandle<()>,
}

fn accept_loop(
    listener: &TcpListener,
    coordinator: &Arc<Coordinator>,
    stopping: &AtomicBool,
    connections: &Mutex<Vec<Connection>>,
) {
    for stream in listener.incoming() {
        if stopping.load(Ordering::Acquire) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let Ok(handle) = stream.try_clone() else {
            continue;
        };
        let coordinator = Arc::clone(coordinator);
        let spawned = thread::Builder::new()
            .name("layout-coordinator-conn".to_owned())
            .spawn(move || {
                if let Err(e) = serve_connection(&stream, &coordinator) {
                    tracing::debug!(error = %e, "member connection closed");
                }
                // Closed for the member too, although the server still holds a handle.
                let _ = stream.shutdown(Shutdown::Both);
            });
        match spawned {
            Ok(thread) => {
                let mut connections = connections.lock();
                connections.retain(|c| !c.thread.is_finished());
                connections.push(Connection {
                    stream: handle,
                    thread,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not start a thread for a member connection");
            }
        }
    }
}

fn serve_connection(stream: &TcpStream, coordinator: &Coordinator) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut writer = stream;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(line) = read_line(&mut reader)? else {
            return Ok(());
        };
        let answer: WireAnswer = match serde_json::from_str::<WireRequest>(&line) {
            Ok(WireRequest::Register(report)) => coordinator.register(&report),
            Ok(WireRequest::Heartbeat(report)) => coordinator.heartbeat(&report),
            Err(e) => Err(HeartbeatError::Unavailable {
                reason: format!("malformed request: {e}"),
            }),
        };
        let mut out = serde_json::to_vec(&answer).map_err(io::Error::other)?;
        out.push(b'\n');
        writer.write_all(&out)?;
        writer.flush()?;
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes; `None` at end of stream.
fn read_line(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = reader
        .by_ref()
        .take(MAX_LINE + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("line longer than {MAX_LINE} bytes or cut short"),
        ));
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

impl Drop for CoordinatorServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        // Wake the acceptor with a connection of our own, then close every connection.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // Close every connection and wait for its thread, so no thread of this server
        // (nor its hold on the coordinator) outlives it.
        let connections: Vec<Connection> = self.connections.lock().drain(..).collect();
        for connection in &connections {
            let _ = connection.stream.shutdown(Shutdown::Both);
        }
        for connection in connections {
            let _ = connection.thread.join();
        }
    }
}

impl std::fmt::Debug for CoordinatorServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The member's end of a [`CoordinatorServer`]: connects on first use, reconnects after
/// a failure (a coordinator restarted on the same port is found again). A failure to
/// reach the coordinator is [`HeartbeatError::Unavailable`].
#[derive(Debug)]
pub struct TcpLink {
    addr: SocketAddr,
    connection: Mutex<Option<BufReader<TcpStream>>>,
}

impl TcpLink {
    /// A link to the coordinator served at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            connection: Mutex::new(None),
        }
    }

    /// The coordinator's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn call(&self, request: &WireRequest) -> Result<CoordinatorAnswer, HeartbeatError> {
        let mut connection = self.connection.lock();
        let reused = connection.is_some();
        let mut result = self.exchange(&mut connection, request);
        if result.is_err() && reused {
            // The connection went stale (a restarted coordinator): one retry on a new
            // one. Registrations and heartbeats are idempotent.
            *connection = None;
            result = self.exchange(&mut connection, request);
        }
        match result {
            Ok(answer) => answer,
            Err(e) => {
                *connection = None;
                Err(HeartbeatError::Unavailable {
                    reason: format!("coordinator at {}: {e}", self.addr),
                })
            }
        }
    }

    fn exchange(
        &self,
        connection: &mut Option<BufReader<TcpStream>>,
        request: &WireRequest,
    ) -> io::Result<WireAnswer> {
        if connection.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.set_write_timeout(Some(IO_TIMEOUT))?;
            stream.set_nodelay(true)?;
            *connection = Some(BufReader::new(stream));
        }
        let Some(reader) = connection.as_mut() else {
            return Err(io::Error::other("not connected"));
        };
        let mut out = serde_json::to_vec(request).map_err(io::Error::other)?;
        out.push(b'\n');
        reader.get_mut().write_all(&out)?;
        let line = read_line(reader)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the coordinator closed the connection",
            )
        })?;
        serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

impl CoordinatorLink for TcpLink {
    fn register(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        self.call(&WireRequest::Register(report.clone()))
    }
    fn heartbeat(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        self.call(&WireRequest::Heartbeat(report.clone()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::cluster::{CoordinatorOptions, EmbeddedStore, Refusal};

    fn served() -> CoordinatorServer {
        let coordinator = Coordinator::open(
            Arc::new(EmbeddedStore::in_memory()),
            CoordinatorOptions::default(),
        )
        .unwrap();
        CoordinatorServer::bind_loopback(Arc::new(coordinator), 0).unwrap()
    }

    #[test]
    fn the_server_binds_loopback_and_answers_refusals_and_garbage_in_kind() {
        let server = served();
        assert!(server.local_addr().ip().is_loopback());
        let link = TcpLink::new(server.local_addr());
        link.register(&MemberReport::new("dn", "a", 2, 2)).unwrap();
        let refused = link
            .register(&MemberReport::new("dn", "b", 1, 1))
            .unwrap_err();
        assert!(matches!(
            refused,
            HeartbeatError::Refused(Refusal::SoftwareBelowCluster { .. })
        ));

        // A malformed line is answered, and the connection stays usable.
        let mut raw = TcpStream::connect(server.local_addr()).unwrap();
        raw.write_all(b"not json\n").unwrap();
        let mut reader = BufReader::new(raw.try_clone().unwrap());
        let answer: WireAnswer =
            serde_json::from_str(&read_line(&mut reader).unwrap().unwrap()).unwrap();
        assert!(
            matches!(answer, Err(HeartbeatError::Unavailable { .. })),
            "{answer:?}"
        );
        // An oversized line closes the connection.
        raw.write_all(&vec![b'x'; usize::try_from(MAX_LINE).unwrap() + 2])
            .unwrap();
        raw.write_all(b"\n").unwrap();
        assert!(read_line(&mut reader).map_or(true, |line| line.is_none()));
    }

    #[test]
    fn a_link_finds_a_coordinator_restarted_on_the_same_port() {
        let server = served();
        let addr = server.local_addr();
        let link = TcpLink::new(addr);
        link.register(&MemberReport::new("dn", "a", 2, 2)).unwrap();
        drop(server);
        assert!(matches!(
            link.heartbeat(&MemberReport::new("dn", "a", 2, 2)),
            Err(HeartbeatError::Unavailable { .. })
        ));
        let coordinator = Coordinator::open(
            Arc::new(EmbeddedStore::in_memory()),
            CoordinatorOptions::default(),
        )
        .unwrap();
        let _server = CoordinatorServer::bind_loopback(Arc::new(coordinator), addr.port()).unwrap();
        // The new coordinator lost the registration (in-memory store): registering again
        // through the same link works.
        link.register(&MemberReport::new("dn", "a", 2, 2)).unwrap();
    }
}
