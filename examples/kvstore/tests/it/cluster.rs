//! Cluster mode: a coordinator node and member nodes in this process, on loopback
//! ephemeral ports, with the embedded cluster store. A rolling upgrade, finalization
//! refused while a member is old, cluster finalization finalizing every node (its
//! value-index migration included), a member that was down catching up, and old software
//! refused after finalization.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvstore::{
    ClientError, ClusterConfig, ClusterStoreConfig, KvClient, KvError, KvFeature, KvNode,
    KvNodeConfig, CLUSTER_CONDITION,
};
use layout_core::cluster::{HeartbeatError, MemberError, Refusal};
use layout_core::http::BearerToken;
use layout_core::{LayoutFeature, StartIntent};

use crate::support::TOKEN;

/// A safety bound on waiting for background heartbeats (never a timing assert).
const BOUND: Duration = Duration::from_secs(60);
/// Heartbeats in tests: frequent, so waits are short.
const HEARTBEAT: Duration = Duration::from_millis(50);
/// The cluster token of the member link (not the admin token).
pub(crate) const CLUSTER_TOKEN: &str = "kvstore-cluster-token-0123456789";

/// [`CLUSTER_TOKEN`], checked.
pub(crate) fn cluster_token() -> BearerToken {
    BearerToken::new(CLUSTER_TOKEN).expect("a valid cluster token")
}

pub(crate) fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "still waiting after {BOUND:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The directories of a 3-node cluster: `kv0` runs the coordinator, `kv1` and `kv2`
/// are members.
struct Dirs {
    _root: tempfile::TempDir,
    root: PathBuf,
}

impl Dirs {
    fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        Self {
            root: root.path().to_owned(),
            _root: root,
        }
    }
    fn node(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }
    fn cluster_store(&self) -> ClusterStoreConfig {
        ClusterStoreConfig::Embedded {
            dir: self.root.join("cluster"),
        }
    }
}

fn config(dir: &Path, software: KvFeature, intent: StartIntent) -> KvNodeConfig {
    KvNodeConfig::new(dir)
        .with_software_version(software)
        .with_intent(intent)
        .with_initial_version(KvFeature::Initial)
}

fn start_coordinator(dirs: &Dirs, software: KvFeature, intent: StartIntent, port: u16) -> KvNode {
    let cluster = ClusterConfig::coordinator("kv0", dirs.cluster_store())
        .with_coordinator_port(port)
        .with_heartbeat_interval(HEARTBEAT)
        .with_cluster_token(cluster_token());
    KvNode::start(
        config(&dirs.node("kv0"), software, intent)
            .with_cluster(cluster)
            .with_admin("127.0.0.1:0".parse().expect("addr"), TOKEN),
    )
    .expect("the coordinator node starts")
}

/// A client of the coordinator node `kv0` presenting its admin token, as the
/// `/cluster/...` routes require.
fn operator(kv0: &KvNode) -> KvClient {
    KvClient::new(kv0.http_addr()).with_token(TOKEN)
}

/// Member `id` of the coordinator at `coordinator`, heartbeating every [`HEARTBEAT`],
/// with the cluster token.
fn member_cluster(id: &str, coordinator: SocketAddr) -> ClusterConfig {
    ClusterConfig::member(id, coordinator)
        .with_heartbeat_interval(HEARTBEAT)
        .with_cluster_token(cluster_token())
}

fn try_start_member(
    dirs: &Dirs,
    id: &str,
    coordinator: SocketAddr,
    software: KvFeature,
    intent: StartIntent,
) -> Result<KvNode, KvError> {
    KvNode::start(
        config(&dirs.node(id), software, intent).with_cluster(member_cluster(id, coordinator)),
    )
}

fn start_member(
    dirs: &Dirs,
    id: &str,
    coordinator: SocketAddr,
    software: KvFeature,
    intent: StartIntent,
) -> KvNode {
    try_start_member(dirs, id, coordinator, software, intent)
        .unwrap_or_else(|e| panic!("member {id} starts: {e}"))
}

/// Writes `n` keys `{id}-{i}` with values `shade-{i % 3}` to `node`.
fn write_data(node: &KvNode, id: &str, from: usize, n: usize) {
    let client = KvClient::new(node.http_addr());
    for i in from..from + n {
        client
            .put(&format!("{id}-{i:03}"), &format!("shade-{}", i % 3))
            .expect("put");
    }
}

/// The keys of `id` holding `shade-{s}` among the first `n`.
fn expected_keys(id: &str, n: usize, s: usize) -> Vec<String> {
    (0..n)
        .filter(|i| i % 3 == s)
        .map(|i| format!("{id}-{i:03}"))
        .collect()
}

/// Every new API answers on `node`, and its value index holds all `n` keys of `id`.
fn assert_finalized_node(node: &KvNode, id: &str, n: usize) {
    assert_eq!(
        node.manager().metadata_layout_version(),
        KvFeature::latest().layout_version(),
        "{id} is finalized"
    );
    let client = KvClient::new(node.http_addr());
    for s in 0..3 {
        let mut keys = client
            .find_by_value(&format!("shade-{s}"))
            .expect("the value index answers");
        keys.sort();
        assert_eq!(keys, expected_keys(id, n, s), "{id}: index of shade-{s}");
    }
    let figures = node
        .store()
        .index_migration()
        .expect("the value-index migration ran");
    assert_eq!(
        figures.state,
        layout_core::admin::WireMigrationState::Complete,
        "{id}: {figures:?}"
    );
    assert!(figures.rows_done >= n as u64, "{id}: {figures:?}");
    assert!(client
        .compare_and_swap(&format!("{id}-000"), Some("shade-0"), "swapped")
        .expect("compare-and-swap is open"));
    client
        .put_with_ttl("ttl", "v", Duration::from_secs(600))
        .expect("puts with a TTL are open");
    assert!(!client.status().expect("status").pre_finalized);
}

fn assert_blocked_by(client: &KvClient, blockers: &[&str], not: &[&str]) {
    match client.cluster_finalize("ops", None) {
        Err(e @ ClientError::Status { code: 409, .. }) => {
            assert_eq!(e.kind().as_deref(), Some("blocked"), "{e}");
            let ClientError::Status { body, .. } = &e else {
                unreachable!()
            };
            let body: serde_json::Value = serde_json::from_str(body).expect("JSON");
            let named: Vec<&str> = body["error"]["blockers"]
                .as_array()
                .expect("blockers")
                .iter()
                .filter_map(|b| b["member_id"].as_str())
                .collect();
            assert_eq!(named, blockers, "{body}");
            let message = body["error"]["message"].as_str().expect("message");
            for id in blockers {
                assert!(message.contains(id), "{message}");
            }
            for id in not {
                assert!(!message.contains(id), "{message}");
            }
        }
        other => panic!("expected the finalization to be blocked by {blockers:?}, got {other:?}"),
    }
    let dry = client.cluster_dry_run(None).expect("dry run");
    let named: Vec<&str> = dry.blockers.iter().map(|b| b.member_id.as_str()).collect();
    assert_eq!(named, blockers);
}

#[test]
fn rolling_upgrade_then_cluster_finalization_finalizes_every_node() {
    const N: usize = 30;
    let dirs = Dirs::new();
    let old = KvFeature::Initial;
    let new = KvFeature::latest();

    // Three nodes at the old software, data on each.
    let kv0 = start_coordinator(&dirs, old, StartIntent::Normal, 0);
    let members_at = kv0
        .coordinator_addr()
        .expect("the coordinator serves members");
    let kv1 = start_member(&dirs, "kv1", members_at, old, StartIntent::Normal);
    let kv2 = start_member(&dirs, "kv2", members_at, old, StartIntent::Normal);
    for (node, id) in [(&kv0, "kv0"), (&kv1, "kv1"), (&kv2, "kv2")] {
        write_data(node, id, 0, N / 2);
    }
    let status = operator(&kv0).cluster_status().expect("cluster status");
    assert_eq!(status.cluster_layout_version, 0);
    assert_eq!(status.members.len(), 2);
    assert!(status
        .members
        .iter()
        .all(|m| m.software_layout_version == 0));

    // The coordinator first: it restarts with the new software on the same member port.
    kv0.shutdown().expect("shutdown");
    let kv0 = start_coordinator(&dirs, new, StartIntent::Upgrade, members_at.port());
    let coordinator = operator(&kv0);
    assert_blocked_by(&coordinator, &["kv1", "kv2"], &[]);

    // kv1: the older cluster accepts the upgraded member while pre-finalized.
    kv1.shutdown().expect("shutdown");
    let kv1 = start_member(&dirs, "kv1", members_at, new, StartIntent::Upgrade);
    let status = coordinator.cluster_status().expect("cluster status");
    let member = status.member("kv1").expect("kv1 is known");
    assert_eq!(
        (
            member.software_layout_version,
            member.metadata_layout_version
        ),
        (new.layout_version(), 0)
    );
    // Still one old member: refused, naming it (and only it).
    assert_blocked_by(&coordinator, &["kv2"], &["kv1"]);
    // A node of the cluster does not finalize alone.
    let local = kv1
        .finalizer()
        .finalize("ops", kv1.store())
        .expect_err("a member refuses a local finalization");
    assert!(local.to_string().contains(CLUSTER_CONDITION), "{local}");
    assert_eq!(kv1.manager().metadata_layout_version(), 0);

    kv2.shutdown().expect("shutdown");
    let kv2 = start_member(&dirs, "kv2", members_at, new, StartIntent::Upgrade);
    // More writes while pre-finalized on the new software.
    for (node, id) in [(&kv0, "kv0"), (&kv1, "kv1"), (&kv2, "kv2")] {
        write_data(node, id, N / 2, N / 2);
        assert!(KvClient::new(node.http_addr())
            .find_by_value("shade-0")
            .is_err());
    }

    // Every member can follow: the cluster finalizes.
    let outcome = coordinator
        .cluster_finalize("ops", None)
        .expect("cluster finalization");
    assert_eq!(outcome.outcome, "finalized");
    assert_eq!(outcome.target, new.layout_version());
    assert_eq!(
        kv0.manager().metadata_layout_version(),
        new.layout_version()
    );
    // Members finalize on their heartbeats.
    wait_until("every member finalized and the cluster complete", || {
        coordinator.cluster_status().is_ok_and(|s| s.complete)
    });
    let status = coordinator.cluster_status().expect("cluster status");
    assert_eq!(status.cluster_layout_version, new.layout_version());
    assert_eq!(status.checkpoint.as_deref(), Some("complete"));
    for (node, id) in [(&kv0, "kv0"), (&kv1, "kv1"), (&kv2, "kv2")] {
        assert_finalized_node(node, id, N);
    }
    for node in [kv0, kv1, kv2] {
        node.shutdown().expect("shutdown");
    }
}

#[test]
fn a_member_down_during_finalization_finalizes_when_it_comes_back() {
    const N: usize = 12;
    let dirs = Dirs::new();
    let new = KvFeature::latest();
    let kv0 = start_coordinator(&dirs, new, StartIntent::Normal, 0);
    let members_at = kv0.coordinator_addr().expect("member address");
    let kv1 = start_member(&dirs, "kv1", members_at, new, StartIntent::Normal);
    let kv2 = start_member(&dirs, "kv2", members_at, new, StartIntent::Normal);
    for (node, id) in [(&kv0, "kv0"), (&kv1, "kv1"), (&kv2, "kv2")] {
        write_data(node, id, 0, N);
    }

    // kv2 is down; its software is new, so it does not block.
    kv2.shutdown().expect("shutdown");
    let outcome = kv0
        .cluster_finalize(None, "ops")
        .expect("cluster finalization");
    assert!(
        matches!(
            &outcome,
            layout_core::cluster::ClusterFinalizeOutcome::Finalized { pending_members, .. }
                if pending_members.iter().any(|m| m == "kv2")
        ),
        "{outcome:?}"
    );
    wait_until("kv1 finalized", || {
        kv1.manager().metadata_layout_version() == new.layout_version()
    });
    let status = kv0.cluster_status().expect("status");
    assert!(!status.is_complete(), "kv2 has not finalized: {status:?}");
    let kv2_status = status.member("kv2").expect("kv2 is known");
    assert_eq!(kv2_status.metadata_layout_version, 0);

    // It comes back: told to finalize as it registers, it finalizes in the background
    // (serving meanwhile).
    let kv2 = start_member(&dirs, "kv2", members_at, new, StartIntent::Normal);
    wait_until("kv2 finalized after its start", || {
        kv2.manager().metadata_layout_version() == new.layout_version()
    });
    wait_until("the cluster finalization completes", || {
        kv0.cluster_status().is_ok_and(|s| s.is_complete())
    });
    for (node, id) in [(&kv0, "kv0"), (&kv1, "kv1"), (&kv2, "kv2")] {
        assert_finalized_node(node, id, N);
    }
    for node in [kv0, kv1, kv2] {
        node.shutdown().expect("shutdown");
    }
}

#[test]
fn after_finalization_old_software_is_refused_by_the_coordinator_and_by_its_own_manager() {
    let dirs = Dirs::new();
    let new = KvFeature::latest();
    let kv0 = start_coordinator(&dirs, new, StartIntent::Normal, 0);
    let members_at = kv0.coordinator_addr().expect("member address");
    let kv1 = start_member(&dirs, "kv1", members_at, new, StartIntent::Normal);
    kv0.cluster_finalize(None, "ops").expect("finalize");
    kv1.cluster_heartbeat()
        .expect("heartbeat")
        .expect("kv1 is a member");
    assert_eq!(
        kv1.manager().metadata_layout_version(),
        new.layout_version()
    );

    // A new node with the old software: its own disk is fresh (layout 0), but the
    // coordinator refuses it, saying why. It starts fenced: writes refused, naming the
    // refusal; reads served (the default).
    let kv3 = start_member(
        &dirs,
        "kv3",
        members_at,
        KvFeature::Initial,
        StartIntent::Normal,
    );
    let cause = kv3.fence_cause().expect("kv3 is fenced");
    assert!(matches!(
        cause.refusal,
        Refusal::SoftwareBelowCluster { .. }
    ));
    let e = kv3
        .store()
        .put("k", "v")
        .expect_err("a fenced member refuses writes");
    assert_eq!((e.kind(), e.http_status()), ("fenced", 503), "{e}");
    assert!(kv3.store().get("k").expect("reads are served").is_none());
    let status = kv3.store().status().expect("status");
    assert!(
        status
            .fenced
            .as_deref()
            .is_some_and(|c| c.contains("below the cluster's")),
        "{status:?}"
    );
    match e.cluster_refusal() {
        Some(Refusal::SoftwareBelowCluster {
            member_id,
            software_layout_version: 0,
            cluster_layout_version,
            ..
        }) => {
            assert_eq!(member_id, "kv3");
            assert_eq!(*cluster_layout_version, new.layout_version());
        }
        other => panic!("expected SoftwareBelowCluster, got {other:?} ({e})"),
    }
    let message = e.to_string();
    assert!(
        message.contains("kv3")
            && message.contains("fenced")
            && message.contains("below the cluster's finalized layout version 4"),
        "{message}"
    );
    kv3.shutdown().expect("shutdown");

    // kv1 downgraded to the old software: its own manager refuses its finalized disk.
    kv1.shutdown().expect("shutdown");
    let e = try_start_member(
        &dirs,
        "kv1",
        members_at,
        KvFeature::Initial,
        StartIntent::Downgrade,
    )
    .expect_err("its own manager refuses");
    assert!(matches!(e, KvError::Layout(_)), "{e}");
    assert!(e.cluster_refusal().is_none());
    // With the new software it is welcome again.
    let kv1 = start_member(&dirs, "kv1", members_at, new, StartIntent::Normal);
    kv1.shutdown().expect("shutdown");
    kv0.shutdown().expect("shutdown");
}

#[test]
fn a_member_joins_only_with_the_cluster_token() {
    let dirs = Dirs::new();
    let new = KvFeature::latest();
    let kv0 = start_coordinator(&dirs, new, StartIntent::Normal, 0);
    let members_at = kv0.coordinator_addr().expect("member address");
    let kv1_config = || config(&dirs.node("kv1"), new, StartIntent::Normal);

    // Cluster mode without a cluster token does not start.
    let e = KvNode::start(kv1_config().with_cluster(ClusterConfig::member("kv1", members_at)))
        .expect_err("no cluster token");
    assert!(
        matches!(&e, KvError::Cluster(m) if m.contains("cluster token")),
        "{e}"
    );
    // Another token (the admin token is not the cluster token) is refused with 401.
    for wrong in ["not-the-cluster-token-0123456789", TOKEN] {
        let cluster = ClusterConfig::member("kv1", members_at)
            .with_cluster_token(BearerToken::new(wrong).expect("token"));
        let e = KvNode::start(kv1_config().with_cluster(cluster)).expect_err("wrong token");
        match &e {
            KvError::ClusterMember { source, .. } => assert!(
                matches!(
                    &**source,
                    MemberError::Heartbeat(HeartbeatError::Unauthorized { .. })
                ),
                "{e}"
            ),
            other => panic!("expected a refused member, got {other}"),
        }
        assert!(
            e.to_string().contains("refused the member's credentials"),
            "{e}"
        );
        assert!(e.cluster_refusal().is_none(), "{e}");
    }
    let status = kv0.cluster_status().expect("status");
    assert!(status.member("kv1").is_none(), "{status:?}");

    let kv1 = start_member(&dirs, "kv1", members_at, new, StartIntent::Normal);
    assert!(kv0
        .cluster_status()
        .expect("status")
        .member("kv1")
        .is_some());
    kv1.shutdown().expect("shutdown");
    kv0.shutdown().expect("shutdown");
}

#[test]
fn cluster_operations_need_the_coordinator_node() {
    let dirs = Dirs::new();
    let kv0 = start_coordinator(&dirs, KvFeature::latest(), StartIntent::Normal, 0);
    let members_at = kv0.coordinator_addr().expect("member address");
    let kv1 = start_member(
        &dirs,
        "kv1",
        members_at,
        KvFeature::latest(),
        StartIntent::Normal,
    );

    let e = KvClient::new(kv1.http_addr())
        .cluster_status()
        .expect_err("a member has no /cluster/status");
    assert_eq!(e.kind().as_deref(), Some("not_coordinator"), "{e}");
    let e = kv1.cluster_status().expect_err("not the coordinator");
    assert!(matches!(e, KvError::NotCoordinator { .. }), "{e}");
    assert!(e.to_string().contains("kv1"), "{e}");

    let single_dir = dirs.node("single");
    let single = KvNode::start(KvNodeConfig::new(&single_dir)).expect("single node");
    assert!(single.coordinator_addr().is_none());
    assert!(single.cluster_heartbeat().expect("no-op").is_none());
    assert!(matches!(
        single.cluster_finalize(None, "ops"),
        Err(KvError::NotCoordinator { .. })
    ));
    // A single node finalizes alone, as before.
    single
        .finalizer()
        .finalize("ops", single.store())
        .expect("a single node finalizes");

    // Malformed cluster requests on the coordinator.
    let client = operator(&kv0);
    let (code, body) = client
        .raw("POST", "/cluster/finalize", Some(b"{\"nope\": 1}"))
        .expect("answer");
    assert_eq!(code, 400, "{body}");
    let (code, body) = client
        .raw("POST", "/cluster/finalize", Some(b"{\"client_id\": \" \"}"))
        .expect("answer");
    assert_eq!(code, 400, "{body}");
    let (code, _) = client
        .raw("GET", "/cluster/finalize", None)
        .expect("answer");
    assert_eq!(code, 405);
    let (code, _) = client.raw("GET", "/cluster/other", None).expect("answer");
    assert_eq!(code, 404);
    for node in [single, kv1, kv0] {
        node.shutdown().expect("shutdown");
    }
}

// ---------------------------------------------------------------------------------------
// The coordinator node's `/cluster/...` routes are guarded by its admin token.

/// Sends one raw HTTP request to `addr` (`head_lines`: extra header lines, each ending
/// in CRLF) and returns the status, the head and the JSON body: for headers `KvClient`
/// never sends.
fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    head_lines: &[u8],
    body: &[u8],
) -> (u16, String, serde_json::Value) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(head_lines);
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    stream.write_all(&request).expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    let answer = String::from_utf8(answer).expect("UTF-8 answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    (status, head.to_owned(), body)
}

/// Every node of `nodes` still at layout version 0, and the cluster's version 0.
fn assert_nothing_finalized(nodes: &[&KvNode]) {
    for node in nodes {
        assert_eq!(
            node.manager().metadata_layout_version(),
            0,
            "{:?} finalized",
            node.cluster_node_id()
        );
    }
    let status = nodes[0].cluster_status().expect("cluster status");
    assert_eq!(status.cluster_layout_version, 0);
    assert!(status.finalization.is_none(), "{status:?}");
}

fn assert_unauthorized<T: std::fmt::Debug>(result: Result<T, ClientError>, what: &str) {
    match result {
        Err(e @ ClientError::Status { code: 401, .. }) => {
            assert_eq!(e.kind().as_deref(), Some("unauthorized"), "{what}: {e}");
        }
        other => panic!("{what}: expected 401 unauthorized, got {other:?}"),
    }
}

#[test]
fn cluster_finalization_needs_the_coordinator_nodes_admin_token() {
    let dirs = Dirs::new();
    let new = KvFeature::latest();
    let kv0 = start_coordinator(&dirs, new, StartIntent::Normal, 0);
    let members_at = kv0.coordinator_addr().expect("member address");
    let kv1 = start_member(&dirs, "kv1", members_at, new, StartIntent::Normal);
    let at = kv0.http_addr();

    // No token, a wrong token of the same length, shorter, longer: 401, nothing done.
    let same_length = format!("{}X", &TOKEN[..TOKEN.len() - 1]);
    assert_eq!(same_length.len(), TOKEN.len());
    assert_ne!(same_length, TOKEN);
    let wrong = [
        None,
        Some(same_length),
        Some(TOKEN[..TOKEN.len() - 1].to_owned()),
        Some(format!("{TOKEN}0")),
        Some("short".to_owned()),
    ];
    for token in wrong {
        let client = match &token {
            Some(t) => KvClient::new(at).with_token(t.clone()),
            None => KvClient::new(at),
        };
        let what = format!("token {token:?}");
        assert_unauthorized(client.cluster_finalize("intruder", None), &what);
        assert_unauthorized(client.cluster_dry_run(None), &what);
        assert_unauthorized(client.cluster_status(), &what);
        assert_nothing_finalized(&[&kv0, &kv1]);
    }
    // The 401 asks for a bearer token, like the admin endpoint's.
    let (code, head, body) = raw_request(
        at,
        "POST",
        "/cluster/finalize",
        b"",
        br#"{"client_id": "intruder"}"#,
    );
    assert_eq!(code, 401, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{head}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Bearer")),
        "{body}"
    );
    // The data API needs no token.
    KvClient::new(at)
        .put("k", "v")
        .expect("data without a token");
    assert_nothing_finalized(&[&kv0, &kv1]);

    // The right token finalizes the cluster.
    let operator = operator(&kv0);
    assert_eq!(
        operator.cluster_dry_run(None).expect("dry run").target,
        new.layout_version()
    );
    let outcome = operator
        .cluster_finalize("ops", None)
        .expect("the operator finalizes");
    assert_eq!(outcome.outcome, "finalized");
    assert_eq!(
        kv0.manager().metadata_layout_version(),
        new.layout_version()
    );
    wait_until("kv1 finalized on its heartbeat", || {
        operator.cluster_status().is_ok_and(|s| s.complete)
    });
    assert_eq!(
        kv1.manager().metadata_layout_version(),
        new.layout_version()
    );
    for node in [kv1, kv0] {
        node.shutdown().expect("shutdown");
    }
}

#[test]
fn malformed_authorization_headers_are_refused_with_401_not_an_error() {
    let dirs = Dirs::new();
    let kv0 = start_coordinator(&dirs, KvFeature::latest(), StartIntent::Normal, 0);
    let members_at = kv0.coordinator_addr().expect("member address");
    let kv1 = start_member(
        &dirs,
        "kv1",
        members_at,
        KvFeature::latest(),
        StartIntent::Normal,
    );
    let right = format!("Authorization: Bearer {TOKEN}\r\n");
    let long = format!("Authorization: Bearer {}\r\n", "t".repeat(10_000));
    let malformed: Vec<Vec<u8>> = vec![
        b"Authorization:\r\n".to_vec(),
        b"Authorization: Bearer\r\n".to_vec(),
        b"Authorization: Bearer \r\n".to_vec(),
        format!("Authorization: {TOKEN}\r\n").into_bytes(),
        format!("Authorization: Basic {TOKEN}\r\n").into_bytes(),
        format!("Authorization: Bearer {TOKEN} {TOKEN}\r\n").into_bytes(),
        format!("Authorization: Bearer {TOKEN}\u{e9}\r\n").into_bytes(),
        "Authorization: Bearer t\u{f6}k\u{e9}n-\u{1f511}-0123456789\r\n"
            .as_bytes()
            .to_vec(),
        long.into_bytes(),
        // Two headers, even both right, are ambiguous.
        format!("{right}{right}").into_bytes(),
    ];
    for header in &malformed {
        let what = String::from_utf8_lossy(header);
        for (method, path) in [("POST", "/cluster/finalize"), ("GET", "/cluster/status")] {
            let (code, _, body) = raw_request(
                kv0.http_addr(),
                method,
                path,
                header,
                br#"{"client_id": "intruder"}"#,
            );
            assert_eq!(code, 401, "{method} {path} with {what:?}: {body}");
            assert_eq!(body["error"]["kind"], "unauthorized", "{what:?}: {body}");
        }
    }
    // A header value that is not UTF-8 (obs-text, which HTTP allows) is refused: a bad
    // request to a strict parser, a token that cannot match to the others.
    let (code, _, body) = raw_request(
        kv0.http_addr(),
        "POST",
        "/cluster/finalize",
        b"Authorization: Bearer \xff\xfe\r\n",
        br#"{"client_id": "intruder"}"#,
    );
    assert!(code == 400 || code == 401, "{code}: {body}");
    assert_nothing_finalized(&[&kv0, &kv1]);
    // The scheme's case does not matter; the right token passes.
    let (code, _, body) = raw_request(
        kv0.http_addr(),
        "POST",
        "/cluster/finalize",
        format!("authorization: bearer {TOKEN}\r\n").as_bytes(),
        br#"{"client_id": "ops", "dry_run": true}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["outcome"], "dry_run", "{body}");
    for node in [kv1, kv0] {
        node.shutdown().expect("shutdown");
    }
}

#[test]
fn a_coordinator_without_an_admin_token_refuses_to_finalize_the_cluster_over_http() {
    let dirs = Dirs::new();
    let new = KvFeature::latest();
    let cluster = ClusterConfig::coordinator("kv0", dirs.cluster_store())
        .with_heartbeat_interval(HEARTBEAT)
        .with_cluster_token(cluster_token());
    let kv0 =
        KvNode::start(config(&dirs.node("kv0"), new, StartIntent::Normal).with_cluster(cluster))
            .expect("a coordinator node without an admin token starts");
    let members_at = kv0.coordinator_addr().expect("member address");
    let kv1 = start_member(&dirs, "kv1", members_at, new, StartIntent::Normal);

    for client in [
        KvClient::new(kv0.http_addr()),
        KvClient::new(kv0.http_addr()).with_token(TOKEN),
    ] {
        for result in [
            client.cluster_finalize("ops", None),
            client.cluster_dry_run(None),
        ] {
            let e = result.expect_err("no admin token: no cluster finalization over HTTP");
            assert!(matches!(e, ClientError::Status { code: 403, .. }), "{e}");
            assert_eq!(e.kind().as_deref(), Some("forbidden"), "{e}");
            assert!(e.to_string().contains("admin token"), "{e}");
        }
        assert_nothing_finalized(&[&kv0, &kv1]);
        // The read-only status stays open: there is no token to check it against.
        let status = client.cluster_status().expect("status without a token");
        assert_eq!(status.cluster_layout_version, 0);
        assert!(status.member("kv1").is_some());
    }
    assert_nothing_finalized(&[&kv0, &kv1]);
    assert_eq!(kv1.manager().metadata_layout_version(), 0);

    // The in-process API (the code that started the node) still finalizes.
    kv0.cluster_finalize(None, "ops")
        .expect("the embedding program finalizes");
    wait_until("kv1 finalized on its heartbeat", || {
        kv0.cluster_status().is_ok_and(|s| s.is_complete())
    });
    assert_eq!(
        kv1.manager().metadata_layout_version(),
        new.layout_version()
    );
    for node in [kv1, kv0] {
        node.shutdown().expect("shutdown");
    }
}

// ---------------------------------------------------------------------------------------
// The member's fence.

/// `kvstore_fenced` in the node's `/metrics` (no admin token on members).
fn fenced_gauge(node: &KvNode) -> i64 {
    let (status, text) = KvClient::new(node.http_addr())
        .raw("GET", "/metrics", None)
        .expect("metrics");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("kvstore_fenced "))
        .unwrap_or_else(|| panic!("no kvstore_fenced in {text}"))
        .trim()
        .parse()
        .expect("a number")
}

/// Asserts `node` is fenced by `what`: a write is refused with 503 `fenced` naming the
/// refusal, reads are served, `/status` and `/metrics` say so.
fn assert_fenced(node: &KvNode, what: &str) {
    let client = KvClient::new(node.http_addr());
    let (status, body) = client
        .raw(
            "PUT",
            "/kv/fenced-write",
            Some(br#"{"value":"v"}"#.as_slice()),
        )
        .expect("PUT");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("\"fenced\"") && body.contains(what),
        "the refusal is named: {body}"
    );
    let (status, body) = client
        .raw("DELETE", "/kv/fenced-write", None)
        .expect("DELETE");
    assert_eq!(status, 503, "{body}");
    assert!(client
        .get("fenced-write")
        .expect("reads are served")
        .is_none());
    let fenced = client.status().expect("status").fenced;
    assert!(
        fenced.as_deref().is_some_and(|c| c.contains(what)),
        "{fenced:?}"
    );
    assert_eq!(fenced_gauge(node), 1);
}

/// Asserts `node` is not fenced: it takes writes.
fn assert_not_fenced(node: &KvNode) {
    let client = KvClient::new(node.http_addr());
    client.put("open-write", "v").expect("a write is accepted");
    assert!(client.status().expect("status").fenced.is_none());
    assert_eq!(fenced_gauge(node), 0);
    assert!(node.fence_cause().is_none());
}

/// The layout of the other process under kv1's id: its SLV, MLV 0.
struct Layout(u32);
impl layout_core::cluster::LocalLayout for Layout {
    fn software_layout_version(&self) -> u32 {
        self.0
    }
    fn metadata_layout_version(&self) -> u32 {
        0
    }
    fn finalize_to(&self, _: u32, _: &str) -> Result<u32, layout_core::BoxError> {
        Err("not in this test".into())
    }
}

#[test]
fn a_member_superseded_by_another_process_refuses_writes_after_one_heartbeat_and_recovers() {
    use kvstore::CLUSTER_KIND;
    use layout_core::cluster::Member;

    let dirs = Dirs::new();
    let new = KvFeature::latest();
    // A short member lease, and kv1's heartbeats driven by hand (its own are an hour
    // apart): kv1 is not live a moment after each heartbeat, so another process may take
    // its registration over.
    let cluster = ClusterConfig::coordinator("kv0", dirs.cluster_store())
        .with_member_lease_ttl(Duration::from_millis(100))
        .with_cluster_token(cluster_token());
    let kv0 = KvNode::start(
        config(&dirs.node("kv0"), new, StartIntent::Normal)
            .with_cluster(cluster)
            .with_admin("127.0.0.1:0".parse().expect("addr"), TOKEN),
    )
    .expect("the coordinator node starts");
    let coordinator = kv0.coordinator().expect("coordinator").clone();
    let members_at = kv0.coordinator_addr().expect("member address");
    let kv1 = KvNode::start(
        config(&dirs.node("kv1"), new, StartIntent::Normal).with_cluster(
            ClusterConfig::member("kv1", members_at)
                .with_heartbeat_interval(Duration::from_secs(3600))
                .with_cluster_token(cluster_token()),
        ),
    )
    .expect("kv1 starts");
    assert_not_fenced(&kv1);

    // Another process registers as kv1 once kv1's lease lapsed.
    let mut impostor = Member::new(
        CLUSTER_KIND,
        "kv1",
        std::sync::Arc::new(Layout(new.layout_version())),
    );
    wait_until("the other process registers as kv1", || {
        impostor.register(&*coordinator).is_ok()
    });

    // kv1's next heartbeat is refused: from then on it refuses writes.
    let e = kv1.cluster_heartbeat().expect_err("superseded");
    assert!(
        matches!(e.cluster_refusal(), Some(Refusal::Superseded { .. })),
        "{e}"
    );
    assert_fenced(&kv1, "taken over by another process");
    let cause = kv1.fence_cause().expect("fenced");
    assert!(matches!(cause.refusal, Refusal::Superseded { .. }));

    // The other process stops: kv1's next heartbeat registers it again, and it recovers.
    impostor.leave(&*coordinator).expect("leave");
    kv1.cluster_heartbeat()
        .expect("registered again")
        .expect("kv1 is a member");
    assert_not_fenced(&kv1);
    for node in [kv1, kv0] {
        node.shutdown().expect("shutdown");
    }
}

#[test]
fn a_member_ahead_of_the_cluster_starts_fenced_and_recovers_when_the_cluster_finalizes() {
    let dirs = Dirs::new();
    let new = KvFeature::latest();
    let kv0 = start_coordinator(&dirs, new, StartIntent::Normal, 0);
    let members_at = kv0.coordinator_addr().expect("member address");
    // A fresh install of the new release not pinned to the cluster's version.
    let kv1 = KvNode::start(
        KvNodeConfig::new(dirs.node("kv1"))
            .with_software_version(new)
            .with_cluster(member_cluster("kv1", members_at)),
    )
    .expect("a refused member starts, fenced");
    assert_fenced(&kv1, "above the cluster's finalized layout version");

    // The cause goes away (the cluster finalizes to kv1's version): kv1 recovers by
    // itself, on its heartbeat.
    kv0.cluster_finalize(None, "ops").expect("finalize");
    wait_until("kv1 is no longer fenced", || kv1.fence_cause().is_none());
    assert_not_fenced(&kv1);
    wait_until("kv1 is a member", || {
        kv0.cluster_status()
            .is_ok_and(|s| s.member("kv1").is_some_and(|m| m.live))
    });
    for node in [kv1, kv0] {
        node.shutdown().expect("shutdown");
    }
}

#[test]
fn fenced_reads_can_be_refused_too() {
    use kvstore::FencedReads;

    let dirs = Dirs::new();
    let new = KvFeature::latest();
    let kv0 = start_coordinator(&dirs, new, StartIntent::Normal, 0);
    let members_at = kv0.coordinator_addr().expect("member address");
    let kv1 = KvNode::start(
        KvNodeConfig::new(dirs.node("kv1"))
            .with_software_version(new)
            .with_cluster(member_cluster("kv1", members_at).with_fenced_reads(FencedReads::Refuse)),
    )
    .expect("a refused member starts, fenced");
    let client = KvClient::new(kv1.http_addr());
    for path in ["/kv/k", "/kv?prefix=k", "/status"] {
        let (status, body) = client.raw("GET", path, None).expect("GET");
        if path == "/status" {
            assert_eq!(status, 200, "/status is always served: {body}");
        } else {
            assert_eq!(status, 503, "{path}: {body}");
            assert!(body.contains("\"fenced\""), "{body}");
        }
    }
    for node in [kv1, kv0] {
        node.shutdown().expect("shutdown");
    }
}

#[test]
fn a_member_starts_and_serves_while_its_coordinator_is_down_and_registers_when_it_returns() {
    let dirs = Dirs::new();
    let new = KvFeature::latest();
    let kv0 = start_coordinator(&dirs, new, StartIntent::Normal, 0);
    let members_at = kv0.coordinator_addr().expect("member address");
    kv0.shutdown().expect("shutdown");

    // The coordinator is down: kv1 starts anyway, not fenced (only a refusal fences).
    let kv1 = start_member(&dirs, "kv1", members_at, new, StartIntent::Normal);
    assert!(kv1.cluster_heartbeat().is_err(), "the coordinator is down");
    assert_not_fenced(&kv1);
    write_data(&kv1, "kv1", 0, 3);

    // It comes back on the same address: kv1 registers on its heartbeat.
    let kv0 = start_coordinator(&dirs, new, StartIntent::Normal, members_at.port());
    wait_until("kv1 registered with the coordinator that came back", || {
        kv0.cluster_status()
            .is_ok_and(|s| s.member("kv1").is_some_and(|m| m.live))
    });
    assert_not_fenced(&kv1);
    for node in [kv1, kv0] {
        node.shutdown().expect("shutdown");
    }
}

#[test]
fn a_members_local_finalization_cannot_override_the_cluster_condition() {
    use layout_core::{FinalizeError, FinalizeRequest};

    let dirs = Dirs::new();
    let new = KvFeature::latest();
    let kv0 = start_coordinator(&dirs, new, StartIntent::Normal, 0);
    let members_at = kv0.coordinator_addr().expect("member address");
    let kv1 = start_member(&dirs, "kv1", members_at, new, StartIntent::Normal);
    let request = FinalizeRequest::new("ops").with_override(CLUSTER_CONDITION, "I know best");
    let e = kv1
        .finalizer()
        .finalize_with(request, kv1.store())
        .expect_err("the cluster condition cannot be overridden");
    assert!(
        matches!(&e, FinalizeError::NotOverridable { condition, .. } if condition == CLUSTER_CONDITION),
        "{e}"
    );
    let message = e.to_string();
    assert!(
        message.contains("cannot be overridden")
            && message.contains("/cluster/finalize")
            && message.contains("excludes that member on the coordinator"),
        "{message}"
    );
    assert_eq!(kv1.manager().metadata_layout_version(), 0);
    // The coordinator node's own finalizer refuses it too; the cluster still finalizes.
    let request = FinalizeRequest::new("ops").with_override(CLUSTER_CONDITION, "I know best");
    assert!(kv0.finalizer().finalize_with(request, kv0.store()).is_err());
    kv0.cluster_finalize(None, "ops")
        .expect("the cluster finalizes");
    wait_until("kv1 finalized", || {
        kv1.manager().metadata_layout_version() == new.layout_version()
    });
    for node in [kv1, kv0] {
        node.shutdown().expect("shutdown");
    }
}
