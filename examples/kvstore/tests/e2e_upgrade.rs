//! End-to-end: kvstore nodes in child processes go through a whole upgrade while a client
//! workload writes to them, and afterwards every acknowledged write is still there with
//! its value (issue 9).
//!
//! Phases, each with at least [`MIN_ACKS`] acknowledged writes (except where writes must
//! be refused, or where the phase ends at an injected crash):
//!
//! | phase | software | what happens |
//! |---|---|---|
//! | `old version` | SLV 0 | ingest |
//! | `prepared` | before each binary swap | every write is refused (`prepared`), none acknowledged |
//! | `pre-finalized` | SLV 4 (binary swap), MLV 0 | the new APIs are refused |
//! | `downgraded` | SLV 0, MLV 0 | the old software reads everything, then writes |
//! | `upgraded again` | SLV 4, MLV 0 | |
//! | `finalizing (killed before the index migration)` | SLV 4 | SIGKILL at `finalize::before_action` of `ValueIndex` |
//! | `restarted after the first kill` | SLV 4, MLV 1 | |
//! | `finalizing (killed after the index migration)` | SLV 4 | SIGKILL at `finalize::after_action` of `ValueIndex` |
//! | `restarted after the second kill` | SLV 4, MLV 1 | |
//! | `finalizing` | SLV 4 | the finalization resumed and completed |
//! | `finalized` | SLV 4, MLV 4 | the new APIs work, the value index covers every key |
//!
//! then the old software is refused on the finalized disk, and the checker compares the
//! final listing (and a `get` of every key) with the recorded history. Before and after
//! every restart the listing is checked too (the workload paused), so a write lost by
//! one binary is caught at the stage that lost it.
//!
//! # Why the `MiniCluster` is driven directly, not through `UpgradeTest`
//!
//! `UpgradeTest`'s stage 4 prepares, upgrades and finalizes every node in one step, with
//! no callback before the finalization: a kill *while* finalization is in progress cannot
//! be placed there, and once `with_this_version_finalized` runs there is nothing left to
//! finalize. So [`sigkill_during_finalization_loses_no_acknowledged_write`] drives the
//! same stages itself (prepare before each binary swap, the MLV checks, the refusal of
//! the old software after finalization), and adds the kills. A second test,
//! [`upgrade_test_stages_lose_no_acknowledged_write`], runs the workload through
//! `UpgradeTest` itself, stage callbacks and all.
//!
//! # How the kill is deterministic
//!
//! The kill uses the testkit's crash injection (`finalize_injected` with
//! `Injection::Crash`, feature `failpoints`): the child node stops at the chosen
//! failpoint, inside `UpgradeFinalizer::finalize`, after the finalizer set its status to
//! `FinalizationInProgress` for the `ValueIndex` feature and before it stored the new
//! MLV, and the parent SIGKILLs it there. No sleep, no race with the migration: the kill
//! happens at that exact point on every run, while the workload threads keep writing
//! over HTTP (so requests are in flight when the process dies, and their outcome is in
//! doubt). The small `migration_batch` makes the index migration many batches (one redb
//! transaction each) that interleave with the workload's writes.
//!
//! No assertion depends on timing: every wait is for an event (a count of
//! acknowledgements, a thread going idle), bounded by [`BOUND`] only to fail clearly
//! instead of hanging.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvstore::{ClientError, KvClient, KvFeature, KvStore};
use layout_core::LayoutFeature;
use layout_testkit::workload::{CheckReport, Expectations, Recorder};
use layout_testkit::{
    run_as_child_node, test_name, ClusterNode, CrashPoint, HookResult, Injection, Kind,
    MiniCluster, MiniClusterBuilder, RunOutcome, StartOptions, UpgradeTest,
};

/// Acknowledged writes required in each phase that accepts writes.
const MIN_ACKS: usize = 50;
/// Refused writes required while prepared.
const MIN_REFUSALS: usize = 10;
/// Client threads.
const THREADS: usize = 2;
/// Keys per batch of the value-index migration: small, so it takes many batches.
const MIGRATION_BATCH: &str = "8";
/// A safety bound on every wait; never a timing assertion.
const BOUND: Duration = Duration::from_secs(90);
/// Where the workload writes.
const PREFIX: &str = "wl/";

const OLD: u32 = 0;

fn new_slv() -> u32 {
    KvFeature::latest().layout_version()
}

fn kv_cluster() -> MiniClusterBuilder {
    MiniCluster::builder().kind(
        Kind::<KvStore>::new("kv")
            .nodes(1)
            .software_layout_version(OLD)
            .param("migration_batch", MIGRATION_BATCH),
    )
}

/// The node's HTTP address: it changes with every start.
fn http_addr(node: &dyn ClusterNode) -> HookResult<SocketAddr> {
    let text = node.call("http_addr", "")?;
    text.parse()
        .map_err(|e| format!("{}: http_addr {text:?} is not an address: {e}", node.name()).into())
}

// ---------------------------------------------------------------------------------------
// The client workload

/// Where the client threads send their requests, and whether they should.
#[derive(Debug, Default)]
struct Target {
    /// `None`: paused (no new request is sent).
    addr: Option<SocketAddr>,
    /// Bumped whenever `addr` changes.
    epoch: u64,
    /// Requests on the wire.
    in_flight: usize,
    stop: bool,
}

#[derive(Debug, Default)]
struct Shared {
    target: Mutex<Target>,
    changed: Condvar,
    /// Errors no phase explains (server errors other than `prepared`): the test fails.
    unexpected: Mutex<Vec<String>>,
    /// Transport errors (the node went away mid-request): their writes are in doubt.
    transport_errors: Mutex<usize>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Target> {
        self.target.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Client threads writing to the node through `KvClient`, recording into a [`Recorder`].
struct Workload {
    recorder: Recorder,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    panicked: Arc<AtomicBool>,
}

impl Workload {
    /// Starts the threads, paused.
    fn start() -> Self {
        let recorder = Recorder::new(PREFIX);
        let shared = Arc::new(Shared::default());
        let panicked = Arc::new(AtomicBool::new(false));
        let threads = (0..THREADS)
            .map(|t| {
                let (recorder, shared, panicked) =
                    (recorder.clone(), Arc::clone(&shared), Arc::clone(&panicked));
                std::thread::spawn(move || {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        client_thread(t, &recorder, &shared);
                    }));
                    if result.is_err() {
                        panicked.store(true, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        Self {
            recorder,
            shared,
            threads,
            panicked,
        }
    }

    /// Sends requests to `addr` from now on, counting them in `phase`.
    fn resume(&self, addr: SocketAddr, phase: &str) {
        self.recorder.set_phase(phase);
        let mut target = self.shared.lock();
        target.addr = Some(addr);
        target.epoch += 1;
        self.shared.changed.notify_all();
    }

    /// Stops sending and waits until no request is on the wire.
    fn pause(&self) -> HookResult {
        let mut target = self.shared.lock();
        target.addr = None;
        target.epoch += 1;
        self.shared.changed.notify_all();
        let deadline = Instant::now() + BOUND;
        while target.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "pausing the workload: {} requests still in flight after {BOUND:?}",
                    target.in_flight
                )
                .into());
            }
            target = self
                .shared
                .changed
                .wait_timeout(target, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    /// Makes `phase` current and waits until it has `acks` acknowledged writes.
    fn phase(&self, phase: &str, acks: usize) -> HookResult {
        self.recorder.set_phase(phase);
        self.wait_for(
            phase,
            |c| c.acknowledged >= acks,
            &format!("{acks} acknowledged writes"),
        )
    }

    /// Makes `phase` current and waits until it has `refusals` refused writes.
    fn refusing_phase(&self, phase: &str, refusals: usize) -> HookResult {
        self.recorder.set_phase(phase);
        self.wait_for(
            phase,
            |c| c.refused >= refusals,
            &format!("{refusals} refused writes"),
        )
    }

    fn wait_for(
        &self,
        phase: &str,
        done: impl Fn(&layout_testkit::workload::PhaseCounts) -> bool,
        what: &str,
    ) -> HookResult {
        let deadline = Instant::now() + BOUND;
        loop {
            let counts = self.recorder.counts(phase);
            if done(&counts) {
                return Ok(());
            }
            self.check_threads()?;
            if Instant::now() > deadline {
                return Err(format!(
                    "phase {phase:?}: waited {BOUND:?} for {what}, have {counts}; unexpected \
                     errors: {:?}",
                    self.unexpected()
                )
                .into());
            }
            // Polling the counts; the deadline above only turns a hang into a failure.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn check_threads(&self) -> HookResult {
        if self.panicked.load(Ordering::SeqCst) {
            return Err("a workload thread panicked".into());
        }
        Ok(())
    }

    fn unexpected(&self) -> Vec<String> {
        self.shared
            .unexpected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops and joins the threads; fails on any error no phase explains.
    fn stop(mut self) -> HookResult<Recorder> {
        {
            let mut target = self.shared.lock();
            target.stop = true;
            target.addr = None;
            self.shared.changed.notify_all();
        }
        for thread in self.threads.drain(..) {
            thread
                .join()
                .map_err(|_| "a workload thread panicked".to_owned())?;
        }
        self.check_threads()?;
        let unexpected = self.unexpected();
        if !unexpected.is_empty() {
            return Err(format!("the workload saw unexpected errors: {unexpected:#?}").into());
        }
        Ok(self.recorder.clone())
    }

    fn transport_errors(&self) -> usize {
        *self
            .shared
            .transport_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let mut target = self.shared.lock();
        target.stop = true;
        self.shared.changed.notify_all();
    }
}

/// One client thread: new keys mostly, sometimes an overwrite or a delete of one of its
/// own earlier keys, every value unique.
fn client_thread(t: usize, recorder: &Recorder, shared: &Shared) {
    let mut client: Option<(u64, KvClient)> = None;
    let mut i: u64 = 0;
    loop {
        let epoch = {
            let mut target = shared.lock();
            loop {
                if target.stop {
                    return;
                }
                if let Some(addr) = target.addr {
                    if client.as_ref().map(|(e, _)| *e) != Some(target.epoch) {
                        client = Some((target.epoch, KvClient::new(addr)));
                    }
                    break;
                }
                target = shared
                    .changed
                    .wait(target)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            target.in_flight += 1;
            target.epoch
        };
        let Some((_, kv)) = client.as_ref() else {
            return;
        };
        i += 1;
        let phase = recorder.phase();
        let result = if i.is_multiple_of(7) && i > 2 {
            let key = format!("{PREFIX}t{t}/k{}", i - 2);
            let pending = recorder.begin_delete(&key);
            let result = kv.delete_with_index(&key).map(|(_, index)| Some(index));
            (pending, result)
        } else {
            let key = if i.is_multiple_of(5) && i > 3 {
                format!("{PREFIX}t{t}/k{}", i - 3)
            } else {
                format!("{PREFIX}t{t}/k{i}")
            };
            let value = format!("t{t}-{i}-{}", phase.replace(' ', "-"));
            let pending = recorder.begin_put(&key, &value);
            let result = kv.put(&key, &value).map(Some);
            (pending, result)
        };
        let transport = matches!(
            result.1,
            Err(ClientError::Transport(_) | ClientError::Unreachable { .. })
        );
        match result {
            (pending, Ok(index)) => pending.acknowledged(index),
            (pending, Err(ClientError::Prepared { message })) => pending.refused(message),
            // The connection was never made: the request was not received, so the
            // write cannot have been applied (the checker fails if its value shows up).
            (pending, Err(e @ ClientError::Unreachable { .. })) => {
                pending.refused(format!("not sent: {e}"));
            }
            (pending, Err(ClientError::Transport(e))) => {
                *shared
                    .transport_errors
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) += 1;
                pending.in_doubt(e);
            }
            (pending, Err(other)) => {
                shared
                    .unexpected
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(format!("phase {phase:?}: {other}"));
                pending.in_doubt(other.to_string());
            }
        }
        let mut target = shared.lock();
        target.in_flight -= 1;
        shared.changed.notify_all();
        if transport && target.epoch == epoch && !target.stop {
            // The node went away: wait for the controller to point us at its successor
            // (a new epoch) rather than spin on a dead address; retry after a short
            // back-off in case it was a passing error.
            let _ = shared
                .changed
                .wait_timeout(target, Duration::from_millis(20))
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Checks

/// The listing under the workload's prefix, checked against the history so far (the
/// workload must be paused: a listing races with writes in flight).
fn check_listing(recorder: &Recorder, addr: SocketAddr, when: &str) -> HookResult<CheckReport> {
    let items = KvClient::new(addr)
        .list(PREFIX)
        .map_err(|e| format!("{when}: listing {PREFIX}: {e}"))?;
    recorder
        .check_listing(&Expectations::new(), items)
        .map_err(|failure| format!("{when}: {failure}").into())
}

/// The per-phase counts the whole run must reach.
fn expectations(phases: &[&str]) -> Expectations {
    let mut expect = Expectations::new()
        .no_acks("prepared")
        .min_refusals("prepared", MIN_REFUSALS);
    for phase in phases {
        expect = expect.min_acks(*phase, MIN_ACKS);
    }
    expect
}

/// Prepares the node (the kit's prepare: the kvstore's `PrepareController`), then records
/// a phase in which every write must be refused with `prepared`.
fn prepare_and_refuse(node: &dyn ClusterNode, workload: &Workload) -> HookResult {
    node.prepare()?;
    workload.refusing_phase("prepared", MIN_REFUSALS)
}

/// A binary swap: pause the workload, check the listing, restart the node with `slv`,
/// point the workload at it in phase `next`.
fn swap_binary(
    node: &dyn ClusterNode,
    workload: &Workload,
    slv: u32,
    when: &str,
    next: &str,
) -> HookResult<SocketAddr> {
    workload.pause()?;
    check_listing(&workload.recorder, http_addr(node)?, when)?;
    node.restart_with_slv(slv)?;
    let addr = http_addr(node)?;
    // The restarted software must read everything acknowledged so far.
    check_listing(&workload.recorder, addr, &format!("after {when}"))?;
    workload.resume(addr, next);
    Ok(addr)
}

/// Finalizes with a crash injected at `point`: the child stops there and the kit
/// SIGKILLs it. Returns the MLV the node had published.
fn finalize_and_kill(node: &dyn ClusterNode, point: CrashPoint) -> HookResult<u32> {
    let run = node.finalize_injected(None, Injection::Crash(point))?;
    match run.outcome {
        RunOutcome::Crashed { at, published_mlv } if at == point => {
            assert!(!node.is_running(), "the node must be dead after the kill");
            Ok(published_mlv)
        }
        other => Err(format!("expected a SIGKILL at {point}, got {other:?}").into()),
    }
}

/// Finalizes while the workload writes (phase `during`), killed with SIGKILL at `point`, during
/// the finalization of `ValueIndex`; restarts the node, checks that it comes back with
/// `ValueIndex` still unfinalized and reads everything, and writes in phase `after`.
fn kill_and_restart(
    node: &dyn ClusterNode,
    workload: &Workload,
    point: CrashPoint,
    during: &str,
    after: &str,
) -> HookResult<String> {
    let unfinalized = KvFeature::ValueIndex.layout_version() - 1;
    workload.recorder.set_phase(during);
    let published = finalize_and_kill(node, point)?;
    assert_eq!(published, unfinalized, "killed while finalizing ValueIndex");
    workload.pause()?;
    node.start(StartOptions::default())?;
    let addr = http_addr(node)?;
    let status = KvClient::new(addr).status()?;
    assert_eq!(
        (status.mlv, status.slv),
        (unfinalized, new_slv()),
        "restarted after the kill at {point}"
    );
    check_listing(
        &workload.recorder,
        addr,
        &format!("after the kill at {point}"),
    )?;
    workload.resume(addr, after);
    workload.phase(after, MIN_ACKS)?;
    Ok(format!(
        "SIGKILL at {point} (published MLV {published}; {} transport errors so far); after \
         the restart: MLV {}, index migration {:?}",
        workload.transport_errors(),
        status.mlv,
        status.index_migration
    ))
}

fn gated_apis_refused(addr: SocketAddr) -> HookResult {
    let kv = KvClient::new(addr);
    match kv.compare_and_swap(&format!("{PREFIX}cas"), None, "x") {
        Err(ClientError::NotFinalized { feature, .. }) => {
            assert_eq!(feature, KvFeature::CompareAndSwap.name());
        }
        other => return Err(format!("compare-and-swap before finalization: {other:?}").into()),
    }
    match kv.find_by_value("x") {
        Err(ClientError::NotFinalized { feature, .. }) => {
            assert_eq!(feature, KvFeature::ValueIndex.name());
        }
        other => return Err(format!("find-by-value before finalization: {other:?}").into()),
    }
    Ok(())
}

/// After finalization: compare-and-swap works, and the value index finds every key by
/// its value (index entries written by the migration, by dual writes while it ran, and
/// by writes since).
fn new_apis_work(addr: SocketAddr, cas_key: &str) -> HookResult {
    let kv = KvClient::new(addr);
    assert!(
        kv.compare_and_swap(cas_key, None, "one")?,
        "CAS on an absent key"
    );
    assert!(
        !kv.compare_and_swap(cas_key, Some("two"), "three")?,
        "CAS with a wrong expectation"
    );
    assert!(kv.compare_and_swap(cas_key, Some("one"), "two")?, "CAS");
    assert_eq!(kv.get(cas_key)?.as_deref(), Some("two"));
    let items = kv.list(PREFIX)?;
    let mut stale = Vec::new();
    for (key, value) in &items {
        let keys = kv.find_by_value(value)?;
        if keys != vec![key.clone()] {
            stale.push(format!("{key:?} = {value:?}: the index says {keys:?}"));
        }
    }
    if stale.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the value index disagrees with table kv for {} of {} keys: {stale:#?}",
            stale.len(),
            items.len()
        )
        .into())
    }
}

// ---------------------------------------------------------------------------------------
// The tests

const PHASES: [&str; 7] = [
    "old version",
    "pre-finalized",
    "downgraded",
    "upgraded again",
    "restarted after the first kill",
    "restarted after the second kill",
    "finalized",
];

#[test]
fn sigkill_during_finalization_loses_no_acknowledged_write() {
    if run_as_child_node::<KvStore>() {
        return;
    }
    if let Err(e) = kill_during_finalization(test_name!()) {
        panic!("{e}");
    }
}

fn kill_during_finalization(test: String) -> HookResult {
    let cluster = kv_cluster().child_processes(test).build()?;
    let node = cluster.node_dyn("kv-0")?;
    let workload = Workload::start();
    let mut log = Vec::new();

    // 1. The old software on a fresh install.
    let addr = http_addr(node)?;
    assert_eq!(node.status()?.software_layout_version, OLD);
    workload.resume(addr, "old version");
    workload.phase("old version", MIN_ACKS)?;

    // 2. Prepare: the write gate is up, every write refused.
    prepare_and_refuse(node, &workload)?;

    // 3. The binary swap to this version: pre-finalized, the new APIs refused.
    let addr = swap_binary(
        node,
        &workload,
        new_slv(),
        "the upgrade to this version",
        "pre-finalized",
    )?;
    let status = node.status()?;
    assert_eq!(
        (
            status.metadata_layout_version,
            status.software_layout_version
        ),
        (OLD, new_slv()),
        "pre-finalized"
    );
    gated_apis_refused(addr)?;
    workload.phase("pre-finalized", MIN_ACKS)?;

    // 4. Downgrade: the old software reads everything (checked in swap_binary), writes.
    prepare_and_refuse(node, &workload)?;
    swap_binary(
        node,
        &workload,
        OLD,
        "the downgrade to the old software",
        "downgraded",
    )?;
    assert_eq!(node.status()?.metadata_layout_version, OLD);
    workload.phase("downgraded", MIN_ACKS)?;

    // 5. Upgrade again.
    prepare_and_refuse(node, &workload)?;
    swap_binary(
        node,
        &workload,
        new_slv(),
        "the second upgrade",
        "upgraded again",
    )?;
    workload.phase("upgraded again", MIN_ACKS)?;

    // 6.-7. Finalize, SIGKILLed while FinalizationInProgress before the ValueIndex
    //    migration: its `finalize::before_action` is the 2nd pass (ExpiringValues is
    //    finalized first); restart, write.
    let before = CrashPoint::new("finalize::before_action", 2).ok_or("no such failpoint")?;
    log.push(kill_and_restart(
        node,
        &workload,
        before,
        "finalizing (killed before the index migration)",
        "restarted after the first kill",
    )?);

    // 8.-9. Finalize again, SIGKILLed after the ValueIndex migration ran (every batch
    //    committed, with the workload's dual writes between them) but before its MLV was
    //    stored: ValueIndex is now the first feature finalized. Restart, write.
    let after = CrashPoint::new("finalize::after_action", 1).ok_or("no such failpoint")?;
    log.push(kill_and_restart(
        node,
        &workload,
        after,
        "finalizing (killed after the index migration)",
        "restarted after the second kill",
    )?);
    let addr = http_addr(node)?;

    // 10. Finalize to the end while the workload writes.
    workload.recorder.set_phase("finalizing");
    let summary = node.finalize()?;
    assert_eq!(summary.metadata_layout_version, new_slv());
    workload.phase("finalized", MIN_ACKS)?;
    workload.pause()?;
    new_apis_work(addr, "cas/finalized")?;

    // 11. The old software is refused on the finalized disk; this version starts again.
    let refused = node
        .restart_with_slv(OLD)
        .expect_err("the old software must be refused after finalization");
    assert!(refused.is_disk_newer_than_software(), "{refused}");
    node.start(StartOptions::default())?;
    let addr = http_addr(node)?;

    // 12. Nothing acknowledged was lost or changed: the listing, and a get of every key.
    let recorder = workload.stop()?;
    let expect = expectations(&PHASES);
    let items = KvClient::new(addr).list(PREFIX)?;
    let report = recorder.check_listing(&expect, items)?;
    let kv = KvClient::new(addr);
    recorder.check_lookup(&expect, |key| kv.get(key).map_err(|e| e.to_string()))?;
    new_apis_work(addr, "cas/restarted")?;
    println!("{}\n{report}", log.join("\n"));
    Ok(())
}

const STAGE_PHASES: [&str; 4] = ["old version", "pre-finalized", "downgraded", "finalized"];

/// The same workload through `UpgradeTest`'s own stages: the kit prepares each node and
/// swaps its binary between the callbacks (so writes in flight then are refused or in
/// doubt), finalizes, and checks the old software is refused afterwards.
#[test]
fn upgrade_test_stages_lose_no_acknowledged_write() {
    if run_as_child_node::<KvStore>() {
        return;
    }
    if let Err(e) = upgrade_test_stages(test_name!()) {
        panic!("{e}");
    }
}

fn upgrade_test_stages(test: String) -> HookResult {
    let workload = Workload::start();
    let stage = |phase: &'static str| {
        let workload = &workload;
        move |cluster: &MiniCluster| -> HookResult {
            let node = cluster.node_dyn("kv-0")?;
            workload.pause()?;
            let addr = http_addr(node)?;
            // Everything acknowledged before the binary changed is there.
            check_listing(&workload.recorder, addr, phase)?;
            if phase == "pre-finalized" {
                gated_apis_refused(addr)?;
            }
            if phase == "finalized" {
                new_apis_work(addr, "cas/finalized")?;
            }
            workload.resume(addr, phase);
            workload.phase(phase, MIN_ACKS)?;
            // Writes go on while the kit prepares and swaps the binary: those sent
            // after the prepare are refused, those cut off by the restart are in doubt.
            workload.recorder.set_phase(format!("after {phase}"));
            Ok(())
        }
    };
    let report = UpgradeTest::new(kv_cluster().child_processes(test))
        .with_old_version(stage("old version"))
        .with_this_version_pre_finalized(stage("pre-finalized"))
        .with_old_version_downgraded(stage("downgraded"))
        .with_this_version_finalized(stage("finalized"))
        .run()?;
    let node = report.cluster.node_dyn("kv-0")?;
    let addr = http_addr(node)?;
    let recorder = workload.stop()?;
    let mut expect = Expectations::new();
    for phase in STAGE_PHASES {
        expect = expect.min_acks(phase, MIN_ACKS);
    }
    let checked = recorder.check_listing(&expect, KvClient::new(addr).list(PREFIX)?)?;
    println!("{}\n{checked}", report.log.join("\n"));
    Ok(())
}
