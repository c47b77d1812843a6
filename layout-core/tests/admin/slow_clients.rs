//! Slow clients cannot keep an operator or a member out: 64 connections that each send
//! one byte per second to the admin endpoint, and 64 more to the coordinator's member
//! link, while `layoutctl status` and member heartbeats go through within their normal
//! timeouts. Both endpoints are capped at 16 connections, so this also shows that at the
//! cap a connection that never presented a token makes room.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use layout_core::cluster::{CoordinatorLink, CoordinatorServer, HttpLink, MemberReport};
use layout_core::http::{BearerToken, ClientConfig, EndpointConfig};

use crate::support::{assert_exit, json, Fixture, Start};

const CLUSTER_TOKEN: &str = "cluster-token-0123456789";
const SLOW: usize = 64;

/// Opens `SLOW` connections to `addr` and sends one byte of a request head on each, per
/// second, until `stop`.
fn trickle(addr: SocketAddr, stop: Arc<AtomicBool>) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let head = b"GET /v1/status HTTP/1.1\r\nHost: slow\r\nX-Slow: ";
        let mut streams: Vec<(TcpStream, usize)> = Vec::new();
        let mut sent = 0;
        while !stop.load(Ordering::SeqCst) {
            // Keep SLOW connections open: reopen the ones the endpoint closed.
            streams.retain(|(s, _)| s.peer_addr().is_ok());
            while streams.len() < SLOW {
                match TcpStream::connect(addr) {
                    Ok(s) => streams.push((s, 0)),
                    Err(_) => break,
                }
            }
            streams.retain_mut(|(s, at)| {
                let byte = head.get(*at).copied().unwrap_or(b'x');
                *at += 1;
                let ok = s.write_all(&[byte]).is_ok();
                sent += usize::from(ok);
                ok
            });
            // The pace of the slow clients (one byte per second), not a wait for an event.
            thread::sleep(Duration::from_secs(1));
        }
        sent
    })
}

#[test]
fn slow_connections_never_keep_layoutctl_or_a_heartbeat_out() {
    let fx = Fixture::start_with(&Start {
        max_connections: 16,
        request_timeout: Duration::from_secs(5),
        ..Start::default()
    });
    let coordinator = crate::support::coordinator();
    let token = BearerToken::new(CLUSTER_TOKEN).unwrap();
    let server = CoordinatorServer::start(
        Arc::clone(&coordinator),
        token.clone(),
        EndpointConfig::loopback(0).with_max_connections(16),
    )
    .unwrap();
    let link = HttpLink::new(
        &server.url(),
        token,
        ClientConfig::new(Duration::from_secs(10)),
    )
    .unwrap();
    let report = MemberReport::new("datanode", "dn1", 2, 1);
    link.register(&report).unwrap();
    let before = fx.version_bytes();

    let stop = Arc::new(AtomicBool::new(false));
    let slow_admin = trickle(fx.addr, Arc::clone(&stop));
    let slow_link = trickle(server.local_addr(), Arc::clone(&stop));

    // While the slow clients hold (and refill) every connection slot, for longer than
    // the 5 s header timeout: the operator and the member get through, each call
    // within its normal timeout (layoutctl: 10 s here; the link: 10 s).
    for round in 0..8 {
        let out = fx.layoutctl(&["--timeout", "10", "status", "--json"]);
        assert_exit(&out, 0);
        assert_eq!(json(&out)["metadata_layout_version"], 1, "round {round}");
        let answer = link.heartbeat(&report).unwrap();
        assert_eq!(answer.cluster_layout_version, 1, "round {round}");
        thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, Ordering::SeqCst);
    let sent = slow_admin.join().unwrap() + slow_link.join().unwrap();
    assert!(sent >= SLOW * 2, "the slow clients sent {sent} bytes");
    assert_eq!(fx.version_bytes(), before, "VERSION changed");
}
