//! Cluster mode: a coordinator node and member nodes in this process, on loopback
//! ephemeral ports, with the embedded cluster store. A rolling upgrade, finalization
//! refused while a member is old, cluster finalization finalizing every node (its
//! value-index migration included), a member that was down catching up, and old software
//! refused after finalization.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use layout_core::cluster::{HeartbeatError, MemberError, Refusal};
use layout_core::http::BearerToken;
use layout_core::{LayoutFeature, StartIntent};
use layout_examples::kvstore::{
    ClientError, ClusterConfig, ClusterStoreConfig, KvClient, KvError, KvFeature, KvNode,
    KvNodeConfig, CLUSTER_CONDITION,
};

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

fn try_start_member(
    dirs: &Dirs,
    id: &str,
    coordinator: SocketAddr,
    software: KvFeature,
    intent: StartIntent,
) -> Result<KvNode, KvError> {
    let cluster = ClusterConfig::member(id, coordinator)
        .with_heartbeat_interval(HEARTBEAT)
        .with_cluster_token(cluster_token());
    KvNode::start(config(&dirs.node(id), software, intent).with_cluster(cluster))
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
    assert_eq!(figures.state, "complete", "{id}: {figures:?}");
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

    // It comes back: told to finalize as it registers, it has finalized when it starts.
    let kv2 = start_member(&dirs, "kv2", members_at, new, StartIntent::Normal);
    assert_eq!(
        kv2.manager().metadata_layout_version(),
        new.layout_version()
    );
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
    // coordinator refuses it, saying why.
    let e = try_start_member(
        &dirs,
        "kv3",
        members_at,
        KvFeature::Initial,
        StartIntent::Normal,
    )
    .expect_err("old software is refused");
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
            && message.contains("below the cluster's finalized layout version 4"),
        "{message}"
    );

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
