//! `layoutctl` drives a `KvNode` through its admin endpoint: status, prepare,
//! cancel-prepare, finalize --watch.
//!
//! Needs the `layoutctl` binary in the target directory, next to this test's `deps/`:
//! `cargo build -p layout-core --features cli --bin layoutctl`.

use std::process::{Command, Output};

use kvstore::{ClientError, KvClient, KvFeature};
use layout_core::LayoutFeature;

use crate::support::{fresh_prefinalized, TOKEN};

fn run(endpoint: &str, args: &[&str]) -> Output {
    Command::new(crate::support::layoutctl_bin())
        .args(["--endpoint", endpoint, "--token", TOKEN])
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

#[test]
fn layoutctl_reads_status_prepares_and_finalizes_a_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = fresh_prefinalized(dir.path(), KvFeature::latest());
    let endpoint = format!("http://{}", node.admin_addr().expect("admin endpoint"));
    let client = KvClient::new(node.http_addr());
    client.put("k", "v").expect("put");

    let status = json(&run(&endpoint, &["--json", "status"]));
    assert_eq!(status["metadata_layout_version"], 0, "{status}");
    assert_eq!(status["software_layout_version"], 4, "{status}");

    let prepared = run(&endpoint, &["--json", "prepare"]);
    let prepared = json(&prepared);
    assert!(prepared.to_string().contains('1'), "{prepared}");
    assert!(matches!(
        client.put("k2", "v"),
        Err(ClientError::Prepared { .. })
    ));
    // Finalization is refused while prepared.
    let refused = run(&endpoint, &["finalize", "--watch"]);
    assert!(
        !refused.status.success(),
        "finalize while prepared must fail"
    );
    json(&run(&endpoint, &["--json", "cancel-prepare"]));
    client.put("k2", "v").expect("writes again");

    let finalized = run(&endpoint, &["finalize", "--watch"]);
    assert!(
        finalized.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&finalized.stdout),
        String::from_utf8_lossy(&finalized.stderr)
    );
    assert_eq!(
        node.manager().metadata_layout_version(),
        KvFeature::latest().layout_version()
    );
    let status = json(&run(&endpoint, &["--json", "status"]));
    assert_eq!(status["metadata_layout_version"], 4, "{status}");
    assert_eq!(client.find_by_value("v").expect("by value"), ["k", "k2"]);
    node.shutdown().expect("shutdown");
}
