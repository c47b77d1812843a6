//! The etcd of this test binary: `layout_testkit::etcd::EtcdServer`, shared by the tests
//! of this process (one per test under cargo-nextest, which runs each test in a process
//! of its own), and a key prefix per test.

use std::sync::OnceLock;

use layout_core::cluster::EtcdStore;
pub(crate) use layout_testkit::etcd::EtcdServer;

/// The etcd shared by the tests of this process. Panics, naming the cause, when `etcd` is
/// missing or never starts.
pub(crate) fn shared() -> &'static EtcdServer {
    static SERVER: OnceLock<EtcdServer> = OnceLock::new();
    SERVER.get_or_init(|| EtcdServer::start().unwrap_or_else(|e| panic!("{e}")))
}

/// A store on the shared server under `prefix`.
pub(crate) fn store(prefix: &str) -> EtcdStore {
    shared().store(prefix).unwrap()
}

/// A key prefix of its own for each test.
pub(crate) fn prefix(test: &str) -> String {
    format!("/layout-tests/{}/{test}", std::process::id())
}
