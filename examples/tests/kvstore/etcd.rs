//! Cluster mode with the cluster state on a real etcd (feature `etcd`), started by the
//! test on free loopback ports (Debian's `etcd-server`, as in the layout-core etcd tests).
//! Fails, naming the cause, when `etcd` is missing.

use std::io::Read as _;
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use layout_core::cluster::{ClusterStore, EtcdOptions, EtcdStore};
use layout_core::{LayoutFeature, StartIntent};
use layout_examples::kvstore::{
    ClusterConfig, ClusterStoreConfig, KvClient, KvFeature, KvNode, KvNodeConfig,
};

use crate::cluster::wait_until;
use crate::support::TOKEN;

/// Attempts with fresh ports when a port was taken between choosing and binding it.
const ATTEMPTS: usize = 5;

/// A single-member etcd; killed when its shell's stdin closes (on drop, or when this
/// process dies), so it never outlives the test.
struct Etcd {
    shell: Child,
    stdin: Option<ChildStdin>,
    endpoint: String,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Etcd {
    fn start() -> Self {
        let version = Command::new("etcd").arg("--version").output();
        assert!(
            version.as_ref().is_ok_and(|o| o.status.success()),
            "this test needs the `etcd` binary (Debian's etcd-server): {version:?}"
        );
        let mut last_log = String::new();
        for _ in 0..ATTEMPTS {
            let dir = tempfile::tempdir().expect("tempdir");
            let client = format!("http://127.0.0.1:{}", free_port());
            let peer = format!("http://127.0.0.1:{}", free_port());
            let mut shell = Command::new("sh")
                .arg("-c")
                .arg(r#"log="$1"; shift; etcd "$@" >"$log" 2>&1 & pid=$!; read -r _; kill -9 "$pid"; wait "$pid""#)
                .arg("sh")
                .arg(dir.path().join("etcd.log"))
                .args(["--name", "kvstore-test"])
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("kvstore-test={peer}")])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("sh starts");
            let stdin = shell.stdin.take();
            let mut etcd = Self {
                shell,
                stdin,
                endpoint: client,
                dir,
            };
            if etcd.wait_ready() {
                return etcd;
            }
            last_log = etcd.log();
        }
        panic!("etcd did not start after {ATTEMPTS} attempts; its last log:\n{last_log}");
    }

    /// Waits (bounded) until etcd answers; `false` if it exited (a port was taken).
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = self.shell.try_wait() {
                return false;
            }
            let options = EtcdOptions::new([self.endpoint.clone()], "/kvstore-probe")
                .with_timeout(Duration::from_secs(2));
            if EtcdStore::connect(options).and_then(|s| s.kinds()).is_ok() {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "etcd at {} did not answer; its log:\n{}",
                self.endpoint,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("etcd.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.shell.wait();
    }
}

#[test]
fn a_cluster_on_etcd_refuses_while_a_member_is_old_then_finalizes_every_node() {
    let etcd = Etcd::start();
    let root = tempfile::tempdir().expect("tempdir");
    let new = KvFeature::latest();
    let node = |id: &str, software: KvFeature, intent: StartIntent| {
        KvNodeConfig::new(root.path().join(id))
            .with_software_version(software)
            .with_intent(intent)
            .with_initial_version(KvFeature::Initial)
    };
    let store = ClusterStoreConfig::Etcd {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: format!("/kvstore-tests/{}/etcd", std::process::id()),
    };
    let kv0 = KvNode::start(
        node("kv0", new, StartIntent::Normal)
            .with_cluster(ClusterConfig::coordinator("kv0", store))
            .with_admin("127.0.0.1:0".parse().expect("addr"), TOKEN),
    )
    .expect("the coordinator node starts on etcd");
    let members_at = kv0.coordinator_addr().expect("member address");
    let member = |id: &str, software: KvFeature, intent: StartIntent| {
        KvNode::start(
            node(id, software, intent).with_cluster(
                ClusterConfig::member(id, members_at)
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
