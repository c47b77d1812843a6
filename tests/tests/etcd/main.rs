//! The cluster against a real etcd (Debian's `etcd-server`) started by the tests on
//! loopback: the member-process scenarios of `cluster_common`, lease expiry, the single
//! finalizer under a race, a coordinator restarted with the same id taking its finalizer
//! claim back, live moves of a cluster's state between stores, and the
//! document-migration race on the etcd document store.
//!
//! Fails (never skips) when `etcd` is missing: `scripts/test` installs it.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "../cluster_common/mod.rs"]
mod cluster_common;
mod documents;
#[path = "../fenced_common/mod.rs"]
mod fenced_common;
mod fenced_documents;
mod moves;
mod restart;
mod server;
mod store;
#[path = "../store_contract/mod.rs"]
mod store_contract;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use layout_core::cluster::{
    ClusterError, ClusterFinalizeOutcome, ClusterStore, Coordinator, CoordinatorOptions,
    EtcdOptions, EtcdStore, LocalError, LocalLayout, MemberReport,
};
use layout_core::{LayoutVersionManager, ManagerOptions, MemoryStorage, StartIntent};
use layout_testkit::crash::child_role;

use cluster_common::{Cluster, DnFeature, KIND, NEW, OLD};

/// Member leases on etcd: short, so a dead member is noticed promptly, yet many
/// heartbeat intervals long, so a live member never lapses on a busy machine.
const LEASE: Duration = Duration::from_secs(2);

fn etcd_cluster(test: &str) -> (tempfile::TempDir, Cluster) {
    let root = tempfile::tempdir().unwrap();
    let options = EtcdOptions::new(
        [server::shared().endpoint().to_owned()],
        server::prefix(test),
    );
    let open: cluster_common::OpenStore = Box::new(move || {
        Arc::new(EtcdStore::connect(options.clone()).unwrap()) as Arc<dyn ClusterStore>
    });
    let options = CoordinatorOptions::default()
        .with_member_lease_ttl(LEASE)
        .with_finalizer_lease_ttl(Duration::from_secs(2));
    let cluster = Cluster::start(test, root.path(), open, options);
    (root, cluster)
}

#[test]
fn five_member_processes_roll_upgrade_finalize_and_catch_up_after_a_sigkill() {
    if child_role().is_some() {
        cluster_common::member_child();
        return;
    }
    let (_root, mut cluster) = etcd_cluster(&layout_testkit::test_name!());
    let expire: cluster_common::ExpireMember = Box::new(cluster_common::wait_until_dead);
    cluster_common::rolling_upgrade_and_finalization(&mut cluster, &expire);
}

#[test]
fn five_member_processes_an_exclusion_survives_a_coordinator_restart() {
    if child_role().is_some() {
        cluster_common::member_child();
        return;
    }
    let (_root, mut cluster) = etcd_cluster(&layout_testkit::test_name!());
    // A real lease: the killed member's key vanishes once its TTL passes.
    let expire: cluster_common::ExpireMember = Box::new(cluster_common::wait_until_dead);
    cluster_common::exclusion_survives_a_coordinator_restart(&mut cluster, &expire);
}

#[test]
fn a_member_lease_expires_on_etcd_when_it_stops_heartbeating_and_its_membership_stays() {
    let store = Arc::new(server::store(&server::prefix("lease-expiry")));
    let coordinator = Arc::new(
        Coordinator::open(
            store.clone(),
            CoordinatorOptions::default().with_member_lease_ttl(LEASE),
        )
        .unwrap(),
    );
    let report = |id: &str| MemberReport::new(KIND, id, NEW, OLD);
    coordinator.register(&report("dn1")).unwrap();
    coordinator.register(&report("dn2")).unwrap();
    assert!(
        coordinator
            .status(KIND)
            .unwrap()
            .member("dn1")
            .unwrap()
            .live
    );
    // dn2 keeps heartbeating in a thread while dn1 is silent.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let heartbeats = {
        let coordinator = Arc::clone(&coordinator);
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                coordinator.heartbeat(&report("dn2")).unwrap();
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    cluster_common::wait_until_dead(&coordinator, "dn1");
    let status = coordinator.status(KIND).unwrap();
    assert!(status.member("dn2").unwrap().live);
    // Dead, but still a member: it still counts for finalization.
    assert_eq!(status.members.len(), 2);
    stop.store(true, Ordering::SeqCst);
    heartbeats.join().unwrap();
    // A heartbeat brings it back to life.
    coordinator.heartbeat(&report("dn1")).unwrap();
    assert!(
        coordinator
            .status(KIND)
            .unwrap()
            .member("dn1")
            .unwrap()
            .live
    );
}

/// The coordinator's layout, shared by both coordinators of the race (as a replicated
/// coordinator's state would be), counting the features it finalized.
struct Shared {
    lvm: LayoutVersionManager<DnFeature>,
    finalized: AtomicUsize,
}

impl LocalLayout for Shared {
    fn software_layout_version(&self) -> u32 {
        self.lvm.software_layout_version()
    }
    fn metadata_layout_version(&self) -> u32 {
        self.lvm.metadata_layout_version()
    }
    fn finalize_to(&self, version: u32, client_id: &str) -> Result<u32, LocalError> {
        let before = self.lvm.metadata_layout_version();
        let after = LocalLayout::finalize_to(&self.lvm, version, client_id)?;
        self.finalized
            .fetch_add((after - before) as usize, Ordering::SeqCst);
        Ok(after)
    }
}

#[test]
fn two_coordinators_released_together_exactly_one_finalizes_twenty_times() {
    for round in 0..20 {
        let prefix = server::prefix(&format!("race-{round}"));
        let local = Arc::new(Shared {
            lvm: LayoutVersionManager::open(
                MemoryStorage::new(),
                ManagerOptions::default()
                    .with_start_intent(StartIntent::Init)
                    .with_initial_layout_version(OLD),
            )
            .unwrap(),
            finalized: AtomicUsize::new(0),
        });
        let coordinators: Vec<Arc<Coordinator>> = ["c1", "c2"]
            .into_iter()
            .map(|id| {
                let store = Arc::new(server::store(&prefix));
                let options = CoordinatorOptions::default()
                    .with_coordinator_id(id)
                    .with_local(KIND, local.clone());
                Arc::new(Coordinator::open(store, options).unwrap())
            })
            .collect();
        for id in ["dn1", "dn2"] {
            coordinators[0]
                .register(&MemberReport::new(KIND, id, NEW, OLD))
                .unwrap();
        }
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = coordinators
            .iter()
            .map(|c| {
                let (c, barrier) = (Arc::clone(c), Arc::clone(&barrier));
                thread::spawn(move || {
                    barrier.wait();
                    c.finalize(KIND, Some(NEW), "ops")
                })
            })
            .collect();
        let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        let finalized = results
            .iter()
            .filter(|r| matches!(r, Ok(ClusterFinalizeOutcome::Finalized { .. })))
            .count();
        assert_eq!(finalized, 1, "round {round}: {results:?}");
        for result in &results {
            assert!(
                matches!(
                    result,
                    Ok(ClusterFinalizeOutcome::Finalized { .. }
                        | ClusterFinalizeOutcome::AlreadyFinalized { .. })
                        | Err(ClusterError::InProgress { .. })
                ),
                "round {round}: {result:?}"
            );
        }
        assert_eq!(local.finalized.load(Ordering::SeqCst), 1, "round {round}");
        let status = coordinators[1].status(KIND).unwrap();
        assert_eq!(status.cluster_layout_version, NEW);
        let started = status
            .audit
            .iter()
            .filter(|a| a.event == "finalization-started")
            .count();
        assert_eq!(started, 1, "round {round}: {:?}", status.audit);
    }
}
