//! A measurement, not a test: the peak resident memory of a kvstore node while 64
//! clients page through 100 values of 1 MiB each at once, against one client, in the
//! same run (before lists were paginated, 16 lists over such values reached 4.9 GB). Exits 1 if the
//! 64-client peak exceeds the bound. Figures in BENCHMARKS.md ("kvstore lists: bounded
//! memory").
//!
//! ```text
//! cargo run --release -p kvstore --example list_memory
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::thread;

use kvstore::{KvClient, KvFeature, KvNode, KvNodeConfig, KvOptions};
use layout_core::LayoutFeature;

const MIB: usize = 1 << 20;
const VALUES: usize = 100;
const CLIENTS: usize = 64;
const BOUND: usize = 1024 * MIB;

/// Peak resident memory of this process (`VmHWM`), in bytes.
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

/// Resets `VmHWM` to the current resident size (Linux `clear_refs` 5).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
}

/// Pages through `big/` with `clients` concurrent clients, each dropping a page once
/// read; the peak RSS of the process meanwhile.
fn peak_while_listing(addr: SocketAddr, clients: usize) -> usize {
    reset_peak_rss();
    thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(move || {
                let client = KvClient::new(addr);
                let mut after: Option<String> = None;
                let mut seen = 0;
                loop {
                    let page = client
                        .list_page("big/", after.as_deref(), None)
                        .expect("list page");
                    seen += page.items.len();
                    match page.next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                assert_eq!(seen, VALUES);
            });
        }
    });
    peak_rss()
}

fn main() -> ExitCode {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = KvNode::start(
        KvNodeConfig::new(dir.path())
            .with_software_version(KvFeature::latest())
            .with_initial_version(KvFeature::latest())
            .with_store_options(KvOptions::default().with_max_body_bytes(2 * MIB)),
    )
    .expect("node starts");
    let client = KvClient::new(node.http_addr());
    let value = "x".repeat(MIB);
    for i in 0..VALUES {
        client
            .put(&format!("big/{i:03}"), &value)
            .expect("put 1 MiB");
    }
    drop(value);
    reset_peak_rss();
    let loaded = peak_rss();
    let one = peak_while_listing(node.http_addr(), 1);
    let many = peak_while_listing(node.http_addr(), CLIENTS);
    #[allow(clippy::cast_precision_loss)] // a ratio for a report
    let ratio = many as f64 / one as f64;
    println!(
        "kvstore lists: {VALUES} values of 1 MiB; peak RSS (VmHWM) after loading {} MiB, \
         1 client {} MiB, {CLIENTS} concurrent clients {} MiB ({ratio:.2}x of 1 client); \
         bound {} MiB",
        loaded / MIB,
        one / MIB,
        many / MIB,
        BOUND / MIB
    );
    node.shutdown().expect("shutdown");
    if many < BOUND {
        ExitCode::SUCCESS
    } else {
        eprintln!("list_memory: the peak exceeds the bound");
        ExitCode::FAILURE
    }
}
