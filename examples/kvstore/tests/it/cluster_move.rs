//! The coordinator node's store move and exclusion routes, through `KvClient` and
//! `layoutctl cluster ...`: a live move from the embedded store to another one (members
//! heartbeating throughout), refused begins, a restart that resumes the switched move,
//! and an exclusion with who, when and the required SLV in the status.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kvstore::{
    ClientError, ClusterConfig, ClusterStoreConfig, KvClient, KvFeature, KvMoveTarget, KvNode,
    KvNodeConfig, CLUSTER_KIND, CLUSTER_STATE_FILE,
};
use layout_core::cluster::{ClusterStore, EmbeddedStore, KindRecord, MoveStage};
use layout_core::{LayoutFeature, StartIntent};

use crate::cluster::{cluster_token, wait_until};
use crate::support::TOKEN;

const HEARTBEAT: Duration = Duration::from_millis(50);

fn layoutctl_run(node: &KvNode, args: &[&str]) -> Output {
    Command::new(crate::support::layoutctl_bin())
        .args([
            "--endpoint",
            &format!("http://{}", node.http_addr()),
            "--token",
            TOKEN,
            "--client-id",
            "ops-alice",
            "--json",
        ])
        .args(args)
        .output()
        .expect("run layoutctl")
}

fn json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "layoutctl failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

fn config(dir: &Path) -> KvNodeConfig {
    KvNodeConfig::new(dir)
        .with_software_version(KvFeature::latest())
        .with_intent(StartIntent::Normal)
        .with_initial_version(KvFeature::Initial)
}

pub(crate) fn coordinator(root: &Path) -> KvNode {
    let cluster = ClusterConfig::coordinator(
        "kv0",
        ClusterStoreConfig::Embedded {
            dir: root.join("cluster"),
        },
    )
    .with_heartbeat_interval(HEARTBEAT)
    .with_member_lease_ttl(Duration::from_millis(500))
    .with_cluster_token(cluster_token());
    KvNode::start(
        config(&root.join("kv0"))
            .with_cluster(cluster)
            .with_admin("127.0.0.1:0".parse().expect("addr"), TOKEN),
    )
    .expect("the coordinator node starts")
}

pub(crate) fn member(root: &Path, id: &str, coordinator: &KvNode) -> KvNode {
    let cluster = ClusterConfig::member(id, coordinator.coordinator_addr().expect("addr"))
        .with_heartbeat_interval(HEARTBEAT)
        .with_cluster_token(cluster_token());
    KvNode::start(config(&root.join(id)).with_cluster(cluster)).expect("member starts")
}

/// Waits until `kv1`'s heartbeat is answered by the coordinator (live in its status).
pub(crate) fn wait_live(client: &KvClient, id: &str) {
    let since = Instant::now();
    wait_until(&format!("{id} live"), || {
        client
            .cluster_status()
            .is_ok_and(|s| s.member(id).is_some_and(|m| m.live))
            || since.elapsed() > Duration::from_secs(60)
    });
}

#[test]
fn cluster_move_through_the_kvstore_routes_and_layoutctl() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    let kv0 = coordinator(root);
    let kv1 = member(root, "kv1", &kv0);
    let operator = KvClient::new(kv0.http_addr()).with_token(TOKEN);
    wait_live(&operator, "kv1");

    // Without the token: 401, nothing begun.
    let e = KvClient::new(kv0.http_addr())
        .cluster_move_begin("x", &KvMoveTarget::embedded(root.join("new")))
        .expect_err("no token");
    assert!(matches!(e, ClientError::Status { code: 401, .. }), "{e}");

    // A destination that is not empty: refused (exit code 1), left as it was.
    let used_dir = root.join("used");
    std::fs::create_dir_all(&used_dir).expect("dir");
    {
        let used = EmbeddedStore::open(used_dir.join(CLUSTER_STATE_FILE)).expect("open");
        used.swap_kind("other", None, &KindRecord::new("other", 1))
            .expect("write");
    }
    let out = layoutctl_run(
        &kv0,
        &[
            "cluster",
            "move",
            "begin",
            "--embedded-dir",
            used_dir.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // With --json the failure is JSON on stdout.
    let failure: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON failure");
    assert_eq!(failure["http_status"], 409, "{failure}");
    assert!(
        failure["error"]
            .as_str()
            .is_some_and(|e| e.contains("not empty")),
        "{failure}"
    );
    let status = json(&layoutctl_run(&kv0, &["cluster", "move", "status"]));
    assert_eq!(status["phase"], "current", "{status}");

    // The move: begin, status, switch; the member heartbeats throughout.
    let new_dir = root.join("new-cluster");
    std::fs::create_dir_all(&new_dir).expect("dir");
    let begun = json(&layoutctl_run(
        &kv0,
        &[
            "cluster",
            "move",
            "begin",
            "--embedded-dir",
            new_dir.to_str().expect("utf-8"),
        ],
    ));
    assert_eq!(begun["phase"], "dual-publishing", "{begun}");
    assert_eq!(begun["by"], "ops-alice", "{begun}");
    // Again: the same move resumes.
    let again = json(&layoutctl_run(
        &kv0,
        &[
            "cluster",
            "move",
            "begin",
            "--embedded-dir",
            new_dir.to_str().expect("utf-8"),
        ],
    ));
    assert_eq!(again["id"], begun["id"], "{again}");
    wait_live(&operator, "kv1");
    let switched = json(&layoutctl_run(&kv0, &["cluster", "move", "switch"]));
    assert_eq!(switched["phase"], "switched", "{switched}");
    assert_eq!(switched["stage"], "switched", "{switched}");
    let status = operator.cluster_move_status().expect("move status");
    assert_eq!(status.phase, "switched");
    wait_live(&operator, "kv1");
    // No rollback after the switch; no second move from the old store.
    let out = layoutctl_run(&kv0, &["cluster", "move", "rollback"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // Restarted: the coordinator resumes on the new store.
    kv1.shutdown().expect("kv1 stops");
    kv0.shutdown().expect("kv0 stops");
    let kv0 = coordinator(root);
    let operator = KvClient::new(kv0.http_addr()).with_token(TOKEN);
    let status = operator.cluster_move_status().expect("move status");
    assert_eq!(status.phase, "switched", "{status:?}");
    assert_eq!(
        status.stage.as_deref(),
        Some(&*MoveStage::Switched.to_string())
    );
    assert!(operator
        .cluster_status()
        .expect("status")
        .member("kv1")
        .is_some());
    kv0.shutdown().expect("kv0 stops");
    // The new store holds the cluster, with the move in its audit trail.
    let new = EmbeddedStore::open(new_dir.join(CLUSTER_STATE_FILE)).expect("open");
    let state = new.load_state(CLUSTER_KIND).expect("load").expect("kind");
    assert!(state.members.contains_key("kv1"));
    assert!(state
        .audit
        .iter()
        .any(|a| a.event == layout_core::cluster::AuditEvent::StoreMoved));
}

#[test]
fn cluster_exclude_through_layoutctl_records_who_when_and_the_required_slv() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    let kv0 = coordinator(root);
    let kv1 = member(root, "kv1", &kv0);
    let operator = KvClient::new(kv0.http_addr()).with_token(TOKEN);
    wait_live(&operator, "kv1");
    // A live member: refused.
    let out = layoutctl_run(
        &kv0,
        &["cluster", "exclude", "kv1", "--reason", "disk died"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // An unknown member is named as such (a usage error, exit 2), even before the
    // coordinator knows liveness, with kvstore's own error kind (no code of the admin API
    // in front of it).
    let out = layoutctl_run(&kv0, &["cluster", "exclude", "kv9", "--reason", "typo"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let failure: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON failure");
    assert_eq!(failure["http_status"], 404, "{failure}");
    assert!(
        failure["error"].as_str().is_some_and(
            |e| e.ends_with("(HTTP 404): unknown_member: kvstore member kv9 is unknown")
        ),
        "{failure}"
    );
    kv1.shutdown().expect("kv1 stops");
    // Once its lease lapses (and the coordinator knows liveness): excluded.
    let mut answer = None;
    wait_until("kv1 excluded", || {
        let out = layoutctl_run(
            &kv0,
            &["cluster", "exclude", "kv1", "--reason", "disk died"],
        );
        if out.status.success() {
            answer = Some(json(&out));
        }
        answer.is_some()
    });
    let answer = answer.expect("excluded");
    assert_eq!(answer["excluded_by"], "ops-alice", "{answer}");
    assert_eq!(answer["reason"], "disk died", "{answer}");
    assert_eq!(
        answer["required_software_layout_version"],
        KvFeature::latest().layout_version(),
        "{answer}"
    );
    let status = json(&layoutctl_run(&kv0, &["cluster", "status"]));
    let kv1 = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["member_id"] == "kv1")
        .expect("kv1")
        .clone();
    assert_eq!(kv1["exclusion"]["excluded_by"], "ops-alice", "{status}");
    assert!(kv1["exclusion"]["at_ms"].as_u64().is_some_and(|t| t > 0));
    // Text output too.
    let out = Command::new(crate::support::layoutctl_bin())
        .args([
            "--endpoint",
            &format!("http://{}", kv0.http_addr()),
            "--token",
            TOKEN,
            "cluster",
            "status",
        ])
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("excluded by ops-alice"),
        "{out:?}"
    );
    kv0.shutdown().expect("kv0 stops");
}
