//! Coordinators and their finalizer claims on a real etcd, through crashes:
//! - killed in the middle of a finalization and restarted with the same id, a coordinator
//!   takes its claim back at once, while one with another id is refused (the killed run's
//!   claim is still alive: its lease is far longer than the test, so what the restarted
//!   coordinator shows is the takeover, not an expiry);
//! - with its driver, a restarted coordinator resumes the finalization by itself, another
//!   coordinator takes it over once the dead holder's claim lapses, and a finalization
//!   interrupted by a frozen etcd resumes once etcd answers again; nobody asks twice.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use layout_core::cluster::{
    AuditEvent, ClusterError, ClusterFinalizeOutcome, ClusterStore, Coordinator,
    CoordinatorOptions, EtcdStore, FinalizationCheckpoint, FinalizerClaim, LocalLayout,
};
use layout_core::etcd::EtcdOptions;
use layout_core::BoxError;
use layout_core::LayoutVersionManager;
use layout_testkit::crash::{block_until_killed, child_role, report_step, ChildCommand};
use parking_lot::Mutex;

use crate::server;
use layout_tests::cluster::{self as common, DnFeature, BOUND, KIND, NEW, OLD};

const ENDPOINT_ENV: &str = "LAYOUT_ETCD_RESTART_ENDPOINT";
const PREFIX_ENV: &str = "LAYOUT_ETCD_RESTART_PREFIX";
const DIR_ENV: &str = "LAYOUT_ETCD_RESTART_DIR";
/// The killed run's claim lease in seconds, when not [`CLAIM_TTL`].
const TTL_ENV: &str = "LAYOUT_ETCD_RESTART_CLAIM_TTL";

/// The finalizer claim's lease: far beyond the test, so the killed run's claim is alive
/// throughout (a claim that lapsed would prove nothing).
const CLAIM_TTL: Duration = Duration::from_secs(600);

fn options(id: &str) -> CoordinatorOptions {
    CoordinatorOptions::default()
        .with_coordinator_id(id)
        .with_finalizer_lease_ttl(CLAIM_TTL)
}

/// The coordinator's own layout in the killed run: it reports, then hangs until killed,
/// so the process dies holding the finalizer claim, at checkpoint `started`.
struct HangingLayout(Arc<LayoutVersionManager<DnFeature>>);

impl LocalLayout for HangingLayout {
    fn software_layout_version(&self) -> u32 {
        self.0.software_layout_version()
    }
    fn metadata_layout_version(&self) -> u32 {
        self.0.metadata_layout_version()
    }
    fn finalize_to(&self, _version: u32, _client_id: &str) -> Result<u32, BoxError> {
        report_step("in-local-finalize");
        block_until_killed();
    }
}

/// The restarted coordinator's layout: while it finalizes (holding the claim), it asks
/// the coordinator with another id to finalize too, and keeps the answer.
struct ProbingLayout {
    lvm: Arc<LayoutVersionManager<DnFeature>>,
    other: Arc<Coordinator>,
    answer: Mutex<Option<Result<ClusterFinalizeOutcome, ClusterError>>>,
}

impl LocalLayout for ProbingLayout {
    fn software_layout_version(&self) -> u32 {
        self.lvm.software_layout_version()
    }
    fn metadata_layout_version(&self) -> u32 {
        self.lvm.metadata_layout_version()
    }
    fn finalize_to(&self, version: u32, client_id: &str) -> Result<u32, BoxError> {
        *self.answer.lock() = Some(self.other.finalize(KIND, None, "ops"));
        LocalLayout::finalize_to(&*self.lvm, version, client_id)
    }
}

/// The killed run: coordinator `c1` starts a finalization and hangs in its own layout's.
fn coordinator_child() {
    let env = |name| std::env::var(name).unwrap();
    let store = EtcdStore::connect(EtcdOptions::new([env(ENDPOINT_ENV)], env(PREFIX_ENV))).unwrap();
    let local = HangingLayout(common::open_layout(Path::new(&env(DIR_ENV)), NEW));
    let ttl = std::env::var(TTL_ENV)
        .ok()
        .map_or(CLAIM_TTL, |secs| Duration::from_secs(secs.parse().unwrap()));
    let c1 = Coordinator::open(
        Arc::new(store),
        options("c1")
            .with_finalizer_lease_ttl(ttl)
            .with_local(KIND, Arc::new(local)),
    )
    .unwrap();
    let result = c1.finalize(KIND, Some(NEW), "ops");
    report_step(format!("finalize returned {result:?}"));
}

fn in_progress_holder(result: Result<ClusterFinalizeOutcome, ClusterError>) -> String {
    match result {
        Err(ClusterError::InProgress { holder, .. }) => holder,
        other => panic!("expected InProgress, got {other:?}"),
    }
}

#[test]
fn a_coordinator_restarted_with_the_same_id_takes_its_claim_back_at_once_another_id_is_refused() {
    if child_role().is_some() {
        coordinator_child();
        return;
    }
    let prefix = server::prefix("restart-same-id");
    let dir = tempfile::tempdir().unwrap();
    let layout_dir = dir.path().join("c1");
    kill_c1_mid_finalization(&layout_testkit::test_name!(), &prefix, &layout_dir, None);

    // c1 died holding the claim, at `started`; its lease has minutes left.
    let other_store: Arc<dyn ClusterStore> = Arc::new(server::store(&prefix));
    let c2 = Arc::new(Coordinator::open(Arc::clone(&other_store), options("c2")).unwrap());
    assert_eq!(in_progress_holder(c2.finalize(KIND, None, "ops")), "c1");
    let status = c2.status(KIND).unwrap();
    let finalization = status.finalization.expect("a finalization in progress");
    assert_eq!(
        (
            finalization.checkpoint,
            finalization.coordinator_id.as_str()
        ),
        (FinalizationCheckpoint::Started, "c1")
    );

    // c1 restarted (a new process would open a new store): it takes its claim back and
    // resumes, while c2, asked in the middle, is still refused.
    let local = Arc::new(ProbingLayout {
        lvm: common::open_layout(&layout_dir, NEW),
        other: Arc::clone(&c2),
        answer: Mutex::new(None),
    });
    let c1 = Coordinator::open(
        Arc::new(server::store(&prefix)),
        options("c1").with_local(KIND, local.clone()),
    )
    .unwrap();
    let outcome = c1.finalize(KIND, None, "ops").unwrap();
    assert!(
        matches!(
            outcome,
            ClusterFinalizeOutcome::Finalized { target: NEW, .. }
        ),
        "{outcome:?}"
    );
    let answer = local.answer.lock().take().expect("c2 was asked");
    assert_eq!(in_progress_holder(answer), "c1");
    let status = c1.status(KIND).unwrap();
    assert_eq!(status.cluster_layout_version, NEW);
    let started = status
        .audit
        .iter()
        .filter(|a| a.event == AuditEvent::FinalizationStarted)
        .count();
    assert_eq!(started, 1, "resumed, not started again: {:?}", status.audit);

    // The restarted run released its claim: another id may claim now.
    assert_eq!(
        other_store.claim_finalizer(KIND, "c2", CLAIM_TTL).unwrap(),
        FinalizerClaim::Claimed
    );
    assert_eq!(
        server::store(&prefix)
            .claim_finalizer(KIND, "c3", CLAIM_TTL)
            .unwrap(),
        FinalizerClaim::HeldBy {
            holder: "c2".to_owned()
        }
    );
    other_store.release_finalizer(KIND, "c2").unwrap();
}

/// Starts the killed run (`c1`, claim lease `ttl_secs` if given) and SIGKILLs it inside
/// its own layout's finalization: the cluster is left at `started`, the claim held.
fn kill_c1_mid_finalization(test: &str, prefix: &str, layout_dir: &Path, ttl_secs: Option<u64>) {
    let mut command = ChildCommand::new(test, "coordinator-c1")
        .env(ENDPOINT_ENV, server::shared().endpoint())
        .env(PREFIX_ENV, prefix)
        .env(DIR_ENV, layout_dir);
    if let Some(secs) = ttl_secs {
        command = command.env(TTL_ENV, secs.to_string());
    }
    let mut child = command.spawn().unwrap();
    child.wait_for_step("in-local-finalize", BOUND).unwrap();
    child.kill().unwrap();
    child.wait(BOUND).unwrap();
}

/// Waits (bounded) until the kind's finalization is complete.
fn wait_complete(store: &dyn ClusterStore) {
    wait_checkpoint(store, FinalizationCheckpoint::Complete);
}

/// Waits (bounded) until the kind's finalization reaches `checkpoint`.
fn wait_checkpoint(store: &dyn ClusterStore, checkpoint: FinalizationCheckpoint) {
    let deadline = std::time::Instant::now() + BOUND;
    loop {
        let record = store.load_kind(KIND).unwrap().unwrap().value;
        if record
            .finalization
            .as_ref()
            .is_some_and(|f| f.checkpoint == checkpoint)
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not at {checkpoint} within {BOUND:?}: {record:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_coordinator_killed_mid_finalization_resumes_it_by_itself_when_it_restarts() {
    if child_role().is_some() {
        coordinator_child();
        return;
    }
    let prefix = server::prefix("restart-resumes");
    let dir = tempfile::tempdir().unwrap();
    let layout_dir = dir.path().join("c1");
    kill_c1_mid_finalization(&layout_testkit::test_name!(), &prefix, &layout_dir, None);

    // Restarted with its driver; nobody asks for the finalization again.
    let store: Arc<dyn ClusterStore> = Arc::new(server::store(&prefix));
    let lvm = common::open_layout(&layout_dir, NEW);
    assert_eq!(lvm.metadata_layout_version(), OLD);
    let c1 = Arc::new(
        Coordinator::open(
            Arc::clone(&store),
            options("c1").with_local(KIND, Arc::clone(&lvm) as Arc<dyn LocalLayout>),
        )
        .unwrap(),
    );
    let _driver = c1.spawn_driver(Duration::from_millis(100)).unwrap();
    wait_complete(&*store);
    assert_eq!(lvm.metadata_layout_version(), NEW);
    let status = c1.status(KIND).unwrap();
    assert_eq!(status.cluster_layout_version, NEW);
    let started = status
        .audit
        .iter()
        .filter(|a| a.event == AuditEvent::FinalizationStarted)
        .count();
    assert_eq!(started, 1, "resumed, not started again: {:?}", status.audit);
}

#[test]
fn another_coordinator_takes_over_a_finalization_once_the_dead_holders_claim_lapses() {
    if child_role().is_some() {
        coordinator_child();
        return;
    }
    let prefix = server::prefix("takeover-after-lapse");
    let dir = tempfile::tempdir().unwrap();
    kill_c1_mid_finalization(
        &layout_testkit::test_name!(),
        &prefix,
        &dir.path().join("c1"),
        Some(2),
    );

    // c2, another coordinator with a driver, is refused while c1's claim lives, then
    // takes over once it lapses (2 s), and finishes c1's part: the cluster moves.
    let store: Arc<dyn ClusterStore> = Arc::new(server::store(&prefix));
    let c2 = Arc::new(Coordinator::open(Arc::clone(&store), options("c2")).unwrap());
    let _driver = c2.spawn_driver(Duration::from_millis(100)).unwrap();
    wait_checkpoint(&*store, FinalizationCheckpoint::CoordinatorFinalized);
    let record = store.load_kind(KIND).unwrap().unwrap().value;
    assert_eq!(record.cluster_layout_version, NEW);
    assert_eq!(record.claimed_by.as_deref(), Some("c2"));
    assert!(record.claim_generation >= 2, "{record:?}");
    // c1, in the membership as a coordinator, has not finalized its own layout: the
    // finalization waits for it, as for any member.
    let c1_status = c2.status(KIND).unwrap();
    assert_eq!(c1_status.member("c1").unwrap().metadata_layout_version, OLD);

    // c1 comes back: it catches up with the cluster as it opens, and c2's driver completes.
    let lvm = common::open_layout(&dir.path().join("c1"), NEW);
    let _c1 = Coordinator::open(
        Arc::new(server::store(&prefix)),
        options("c1").with_local(KIND, Arc::clone(&lvm) as Arc<dyn LocalLayout>),
    )
    .unwrap();
    assert_eq!(lvm.metadata_layout_version(), NEW);
    wait_checkpoint(&*store, FinalizationCheckpoint::Complete);
}

/// The coordinator's own layout: it finalizes, then runs a hook (the store goes away).
struct ThenLayout {
    lvm: Arc<LayoutVersionManager<DnFeature>>,
    then: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl LocalLayout for ThenLayout {
    fn software_layout_version(&self) -> u32 {
        self.lvm.software_layout_version()
    }
    fn metadata_layout_version(&self) -> u32 {
        self.lvm.metadata_layout_version()
    }
    fn finalize_to(&self, version: u32, client_id: &str) -> Result<u32, BoxError> {
        let mlv = LocalLayout::finalize_to(&*self.lvm, version, client_id)?;
        if let Some(then) = self.then.lock().take() {
            then();
        }
        Ok(mlv)
    }
}

#[test]
fn a_finalization_interrupted_by_a_frozen_etcd_resumes_by_itself_once_etcd_answers_again() {
    // A server of its own: freezing it must not stall other tests.
    let etcd = Arc::new(layout_testkit::etcd::EtcdServer::start().unwrap());
    let prefix = "/frozen-store";
    let connect = || {
        EtcdStore::connect(
            EtcdOptions::new([etcd.endpoint().to_owned()], prefix)
                .with_timeout(Duration::from_secs(1)),
        )
        .unwrap()
    };
    let store: Arc<dyn ClusterStore> = Arc::new(connect());
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(ThenLayout {
        lvm: common::open_layout(&dir.path().join("c1"), NEW),
        then: Mutex::new(None),
    });
    {
        // etcd stops answering right after the coordinator's own layout finalized.
        let etcd = Arc::clone(&etcd);
        *local.then.lock() = Some(Box::new(move || etcd.freeze().unwrap()));
    }
    let c1 = Arc::new(
        Coordinator::open(
            Arc::clone(&store),
            options("c1").with_local(KIND, local.clone() as Arc<dyn LocalLayout>),
        )
        .unwrap(),
    );
    let _driver = c1.spawn_driver(Duration::from_millis(100)).unwrap();
    let err = c1.finalize(KIND, Some(NEW), "ops").unwrap_err();
    assert!(matches!(err, ClusterError::Store(_)), "{err}");
    etcd.thaw().unwrap();

    // Nobody asks again: the driver resumes once etcd answers.
    wait_complete(&*store);
    assert_eq!(local.lvm.metadata_layout_version(), NEW);
    let status = c1.status(KIND).unwrap();
    assert_eq!(status.cluster_layout_version, NEW);
}
