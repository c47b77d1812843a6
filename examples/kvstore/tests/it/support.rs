//! Shared helpers.

use layout_core::StartIntent;
use layout_examples::kvstore::{KvFeature, KvNode, KvNodeConfig};

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

/// The `kvstore` example binary next to this test binary (`target/<profile>/examples`),
/// built with the tests.
pub(crate) fn kvstore_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    let path = profile.join(format!("examples/kvstore{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} not found: build it with `cargo build --workspace --all-targets --all-features`",
        path.display()
    );
    path
}
