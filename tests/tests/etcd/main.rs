//! The cluster against a real etcd (Debian's `etcd-server`) started by the tests on
//! loopback: the member-process scenarios of `layout_tests::cluster`, lease expiry, the single
//! finalizer under a race, a coordinator restarted with the same id taking its finalizer
//! claim back, live moves of a cluster's state between stores, and the
//! document-migration race on the etcd document store.
//!
//! Fails (never skips) when `etcd` is missing: `scripts/test` installs it.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod documents;
mod fenced_documents;
mod moves;
mod restart;
mod server;
mod store;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use layout_core::cluster::{
    AuditEvent, ClusterError, ClusterFinalizeOutcome, Coordinator, CoordinatorOptions, LocalLayout,
    MemberReport,
};
use layout_core::BoxError;
use layout_core::{LayoutVersionManager, ManagerOptions, MemoryStorage, StartIntent};
use layout_testkit::cluster::CoordinationOptions;
use layout_testkit::MiniCluster;

use layout_tests::cluster::{self as scenarios, DnFeature, KIND, NEW, OLD};

/// Member leases on etcd: short, so a dead member is noticed promptly, yet many
/// heartbeat intervals long, so a live member never lapses on a busy machine.
const LEASE: Duration = Duration::from_secs(2);

/// Five member processes on the shared etcd, under a prefix of the test's own.
fn etcd_cluster(test: &str) -> MiniCluster {
    let options = CoordinationOptions::default()
        .with_etcd(server::shared().endpoint(), server::prefix(test))
        .with_member_lease(LEASE);
    scenarios::five_members(test, options).build().unwrap()
}

#[test]
fn five_member_processes_roll_upgrade_finalize_and_catch_up_after_a_sigkill() {
    if scenarios::run_as_member() {
        return;
    }
    let mut cluster = etcd_cluster(&layout_testkit::test_name!());
    scenarios::rolling_upgrade_and_finalization(&mut cluster);
}

#[test]
fn five_member_processes_an_exclusion_survives_a_coordinator_restart() {
    if scenarios::run_as_member() {
        return;
    }
    // A real lease: the killed member's key vanishes once its TTL passes.
    let mut cluster = etcd_cluster(&layout_testkit::test_name!());
    scenarios::exclusion_survives_a_coordinator_restart(&mut cluster);
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
    scenarios::wait_until_dead(&coordinator, "dn1");
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
    fn finalize_to(&self, version: u32, client_id: &str) -> Result<u32, BoxError> {
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
            .filter(|a| a.event == AuditEvent::FinalizationStarted)
            .count();
        assert_eq!(started, 1, "round {round}: {:?}", status.audit);
    }
}
