//! The cost of the network transport (admin endpoint and member link), against calling
//! the same service in process, in the same run.
//!
//! Two groups:
//! - `admin_status`: `baseline_in_process` calls `AdminService::status` directly;
//!   `http_client` sends `GET /v1/status` through `AdminClient` to the component's admin
//!   endpoint on loopback (one request: connect, send, answer).
//! - `member_heartbeat`: `baseline_in_process` calls `Coordinator::heartbeat` directly;
//!   `link` sends the same heartbeat through the member link, `HttpLink` to the
//!   coordinator's `CoordinatorServer` on loopback, with the cluster token (a kept-alive
//!   connection: send, answer).
//!
//! The ratio is the transport's overhead per request; its inverse is how many
//! heartbeats per second one member thread gets through.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use layout_core::admin::http::{AdminClient, AdminServer, HttpConfig};
use layout_core::admin::AdminService;
use layout_core::cluster::{
    Coordinator, CoordinatorLink, CoordinatorOptions, CoordinatorServer, EmbeddedStore, HttpLink,
    MemberReport,
};
use layout_core::http::{BearerToken, ClientConfig};
use layout_core::{
    ActionRegistry, LayoutFeature, LayoutVersionManager, ManagerOptions, MemoryStorage,
    StartIntent, UpgradeFinalizer,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
enum BenchFeature {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "One")]
    One,
}

const TOKEN: &str = "bench-token-0123456789";
const CLUSTER_TOKEN: &str = "bench-cluster-token-0123456789";

fn admin_status(c: &mut Criterion) {
    let opts = ManagerOptions::default().with_start_intent(StartIntent::Init);
    let lvm = Arc::new(
        LayoutVersionManager::<BenchFeature>::open(MemoryStorage::new(), opts).expect("open"),
    );
    let finalizer = Arc::new(UpgradeFinalizer::new(
        lvm,
        ActionRegistry::<BenchFeature, ()>::empty(),
    ));
    let service = Arc::new(AdminService::new(finalizer, Arc::new(())));
    let config = HttpConfig::new(TOKEN)
        .expect("token")
        .with_bind_addr("127.0.0.1:0".parse().expect("addr"));
    let server = AdminServer::start(Arc::clone(&service), config).expect("admin endpoint");
    let client = AdminClient::new(&server.url(), TOKEN).expect("client");

    let mut group = c.benchmark_group("admin_status");
    group.bench_function("baseline_in_process", |b| {
        b.iter(|| service.status().expect("status"));
    });
    group.bench_function("http_client", |b| {
        b.iter(|| client.status().expect("status"));
    });
    group.finish();
    server.shutdown();
}

fn member_heartbeat(c: &mut Criterion) {
    let coordinator = Arc::new(
        Coordinator::open(
            Arc::new(EmbeddedStore::in_memory()),
            CoordinatorOptions::default(),
        )
        .expect("coordinator"),
    );
    let report = MemberReport::new("datanode", "dn1", 1, 1);
    coordinator.register(&report).expect("register");
    let token = BearerToken::new(CLUSTER_TOKEN).expect("token");
    let server = CoordinatorServer::bind_loopback(Arc::clone(&coordinator), 0, token.clone())
        .expect("member link");
    let link = HttpLink::new(
        &server.url(),
        token,
        ClientConfig::new(Duration::from_secs(10)),
    )
    .expect("link");

    let mut group = c.benchmark_group("member_heartbeat");
    group.bench_function("baseline_in_process", |b| {
        b.iter(|| coordinator.heartbeat(&report).expect("heartbeat"));
    });
    group.bench_function("link", |b| {
        b.iter(|| CoordinatorLink::heartbeat(&link, &report).expect("heartbeat"));
    });
    group.finish();
    server.shutdown();
}

criterion_group!(benches, admin_status, member_heartbeat);
criterion_main!(benches);
