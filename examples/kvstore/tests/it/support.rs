//! Shared helpers.

use kvstore::{KvFeature, KvNode, KvNodeConfig};
use layout_core::StartIntent;

pub(crate) const TOKEN: &str = "kvstore-test-token-0123456789";

/// Starts a node in `dir` playing `software` with `intent`, admin endpoint on.
pub(crate) fn node(dir: &std::path::Path, software: KvFeature, intent: StartIntent) -> KvNode {
    KvNode::start(
        KvNodeConfig::new(dir)
            .with_software_version(software)
            .with_intent(intent)
            .with_admin("127.0.0.1:0".parse().expect("addr"), TOKEN),
    )
    .expect("node starts")
}

/// A fresh node pinned to layout version 0 running `software`.
#[allow(dead_code)]
pub(crate) fn fresh_prefinalized(dir: &std::path::Path, software: KvFeature) -> KvNode {
    KvNode::start(
        KvNodeConfig::new(dir)
            .with_software_version(software)
            .with_initial_version(KvFeature::Initial)
            .with_admin("127.0.0.1:0".parse().expect("addr"), TOKEN),
    )
    .expect("node starts")
}

/// The `kvstore` binary of this package (cargo builds it for the integration tests).
pub(crate) fn kvstore_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_kvstore"))
}

/// `layoutctl` in the target directory this test runs from (`target/<profile>/layoutctl`,
/// beside `target/<profile>/deps/` that holds the test binary). A missing binary fails the
/// test, naming the command that builds it.
pub(crate) fn layoutctl_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    let path = profile_dir.join(format!("layoutctl{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "layoutctl not found at {}: build it first with \
         `cargo build -p layout-core --features cli --bin layoutctl` (same target directory)",
        path.display()
    );
    path
}
