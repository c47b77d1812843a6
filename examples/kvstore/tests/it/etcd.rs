//! Cluster mode with the cluster state on a real etcd (feature `etcd`), started by the
//! test on free loopback ports (Debian's `etcd-server`, as in the layout-core etcd tests).
//! Fails, naming the cause, when `etcd` is missing.

use std::time::Duration;

use kvstore::{ClusterConfig, ClusterStoreConfig, KvClient, KvFeature, KvNode, KvNodeConfig};
use layout_core::{LayoutFeature, StartIntent};
use layout_testkit::etcd::EtcdServer;

use crate::cluster::wait_until;
use crate::support::TOKEN;

#[test]
fn a_cluster_on_etcd_refuses_while_a_member_is_old_then_finalizes_every_node() {
    let etcd = EtcdServer::start().expect("etcd starts");
    let root = tempfile::tempdir().expect("tempdir");
    let new = KvFeature::latest();
    let node = |id: &str, software: KvFeature, intent: StartIntent| {
        KvNodeConfig::new(root.path().join(id))
            .with_software_version(software)
            .with_intent(intent)
            .with_initial_version(KvFeature::Initial)
    };
    let store = ClusterStoreConfig::Etcd {
        endpoints: vec![etcd.endpoint().to_owned()],
        prefix: format!("/kvstore-tests/{}/etcd", std::process::id()),
    };
    let kv0 = KvNode::start(
        node("kv0", new, StartIntent::Normal)
            .with_cluster(
                ClusterConfig::coordinator("kv0", store)
                    .with_cluster_token(crate::cluster::cluster_token()),
            )
            .with_admin("127.0.0.1:0".parse().expect("addr"), TOKEN),
    )
    .expect("the coordinator node starts on etcd");
    let members_at = kv0.coordinator_addr().expect("member address");
    let member = |id: &str, software: KvFeature, intent: StartIntent| {
        KvNode::start(
            node(id, software, intent).with_cluster(
                ClusterConfig::member(id, members_at)
                    .with_cluster_token(crate::cluster::cluster_token())
                    .with_heartbeat_interval(Duration::from_millis(50)),
            ),
        )
        .expect("member starts")
    };
    let kv1 = member("kv1", new, StartIntent::Normal);
    let kv2 = member("kv2", KvFeature::Initial, StartIntent::Normal);
    for (n, id) in [(&kv0, "kv0"), (&kv1, "kv1"), (&kv2, "kv2")] {
        KvClient::new(n.http_addr())
            .put(&format!("{id}-key"), "blue")
            .expect("put");
    }

    let coordinator = KvClient::new(kv0.http_addr()).with_token(TOKEN);
    let e = coordinator
        .cluster_finalize("ops", None)
        .expect_err("kv2 is old");
    assert_eq!(e.kind().as_deref(), Some("blocked"), "{e}");
    assert!(
        e.to_string().contains("kv2") && !e.to_string().contains("kv1"),
        "{e}"
    );

    kv2.shutdown().expect("shutdown");
    let kv2 = member("kv2", new, StartIntent::Upgrade);
    let outcome = coordinator.cluster_finalize("ops", None).expect("finalize");
    assert_eq!(outcome.target, new.layout_version());
    wait_until("the cluster on etcd completes", || {
        coordinator.cluster_status().is_ok_and(|s| s.complete)
    });
    for (n, id) in [(&kv0, "kv0"), (&kv1, "kv1"), (&kv2, "kv2")] {
        assert_eq!(
            n.manager().metadata_layout_version(),
            new.layout_version(),
            "{id}"
        );
        assert_eq!(
            KvClient::new(n.http_addr())
                .find_by_value("blue")
                .expect("the value index answers"),
            vec![format!("{id}-key")]
        );
    }
    for n in [kv2, kv1, kv0] {
        n.shutdown().expect("shutdown");
    }
}

#[test]
fn a_coordinator_node_moves_its_cluster_state_to_etcd_live_and_restarts_on_it() {
    use kvstore::{KvMoveTarget, CLUSTER_KIND};
    use layout_core::cluster::{ClusterStore, EtcdStore};
    use layout_core::etcd::EtcdOptions;

    use crate::cluster_move::{coordinator, member, wait_live};

    let etcd = EtcdServer::start().expect("etcd starts");
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    let kv0 = coordinator(root);
    let kv1 = member(root, "kv1", &kv0);
    let operator = KvClient::new(kv0.http_addr()).with_token(TOKEN);
    wait_live(&operator, "kv1");

    // From the embedded store to etcd, while kv1 heartbeats.
    let prefix = format!("/kvstore-tests/{}/moved", std::process::id());
    let target = KvMoveTarget::etcd(vec![etcd.endpoint().to_owned()], prefix.clone());
    let begun = operator
        .cluster_move_begin("ops", &target)
        .expect("the move begins");
    assert_eq!(begun.phase, "dual-publishing", "{begun:?}");
    wait_live(&operator, "kv1");
    let switched = operator.cluster_move_switch().expect("the switch");
    assert_eq!(switched.phase, "switched", "{switched:?}");
    wait_live(&operator, "kv1");

    // Restarted with its old configuration, the coordinator node serves from etcd.
    kv1.shutdown().expect("kv1 stops");
    kv0.shutdown().expect("kv0 stops");
    let kv0 = coordinator(root);
    let operator = KvClient::new(kv0.http_addr()).with_token(TOKEN);
    assert_eq!(
        operator.cluster_move_status().expect("move status").phase,
        "switched"
    );
    kv0.shutdown().expect("kv0 stops");
    let store = EtcdStore::connect(EtcdOptions::new([etcd.endpoint().to_owned()], prefix))
        .expect("etcd store");
    let state = store.load_state(CLUSTER_KIND).expect("load").expect("kind");
    assert!(state.members.contains_key("kv1"), "{state:?}");
    assert!(
        state
            .audit
            .iter()
            .any(|a| a.event == layout_core::cluster::AuditEvent::StoreMoved),
        "{:?}",
        state.audit
    );
}
