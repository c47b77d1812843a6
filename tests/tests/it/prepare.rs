//! Prepare: the write gate, prepare and cancel-prepare, the marker across restarts.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::thread;
use std::time::Duration;

use layout_core::clock::ManualClock;
use layout_core::finalizer::{FinalizeGate, FinalizeRefusal};
use layout_core::prepare::{
    MarkerProblem, PrepareOptions, PrepareStep, WriteRejected, REQUEST_CANCEL_PREPARE,
    REQUEST_PREPARE,
};
use layout_core::StepError;
use layout_core::{
    ActionRegistry, FileStorage, FinalizeError, LayoutError, ManagerOptions, MemoryStorage,
    Preparable, PrepareController, PrepareError, PrepareState, StartIntent, StorageError,
    UpgradeFinalizer,
};
use parking_lot::{Condvar, Mutex};

use crate::catalogs::{init_at, Om, OmFeature};

/// A replicated component's log, in memory: writes are accepted (appended) and applied,
/// synchronously or by an applier; flush, snapshot and purge can be made to fail.
#[derive(Default)]
struct Node {
    log: Mutex<Log>,
    applied_changed: Condvar,
    fail: Mutex<Option<PrepareStep>>,
    /// Applies writes as they are accepted (otherwise `apply_next` does).
    manual_apply: AtomicBool,
    /// Runs while prepare waits for the log (a test's view of the "gate up" moment).
    on_wait: Mutex<Option<Box<dyn FnMut() + Send>>>,
    recorded_prepare: Mutex<Option<u64>>,
}

#[derive(Default)]
struct Log {
    last: u64,
    applied: u64,
    flushed: u64,
    snapshot: u64,
    /// Indexes still in the log (not purged).
    entries: Vec<u64>,
}

impl Node {
    fn with_manual_apply() -> Self {
        let node = Self::default();
        node.manual_apply.store(true, Ordering::SeqCst);
        node
    }

    /// Accepts a write through the gate and returns its log index.
    fn put(&self, gate: &PrepareController) -> Result<u64, WriteRejected> {
        let _permit = gate.begin_write("PutKey")?;
        let mut log = self.log.lock();
        log.last += 1;
        let index = log.last;
        log.entries.push(index);
        if !self.manual_apply.load(Ordering::SeqCst) {
            log.applied = index;
            self.applied_changed.notify_all();
        }
        Ok(index)
    }

    /// Applies the next accepted entry; false when all are applied.
    fn apply_next(&self) -> bool {
        let mut log = self.log.lock();
        if log.applied == log.last {
            return false;
        }
        log.applied += 1;
        self.applied_changed.notify_all();
        true
    }

    fn fail_at(&self, step: Option<PrepareStep>) {
        *self.fail.lock() = step;
    }

    fn failing(&self, step: PrepareStep) -> Result<(), StepError> {
        if *self.fail.lock() == Some(step) {
            Err(StepError::new(format!("injected {step} failure")))
        } else {
            Ok(())
        }
    }

    fn snapshot_index(&self) -> u64 {
        self.log.lock().snapshot
    }

    fn entries(&self) -> Vec<u64> {
        self.log.lock().entries.clone()
    }
}

impl Preparable for Node {
    fn applied_index(&self) -> u64 {
        self.log.lock().applied
    }
    fn last_log_index(&self) -> u64 {
        self.log.lock().last
    }
    fn flush(&self) -> Result<u64, StepError> {
        self.failing(PrepareStep::Flush)?;
        let mut log = self.log.lock();
        log.flushed = log.applied;
        Ok(log.flushed)
    }
    fn snapshot(&self, _index: u64) -> Result<u64, StepError> {
        self.failing(PrepareStep::Snapshot)?;
        let mut log = self.log.lock();
        log.snapshot = log.flushed;
        Ok(log.snapshot)
    }
    fn last_snapshot_index(&self) -> u64 {
        self.log.lock().snapshot
    }
    fn purge_log(&self, index: u64) -> Result<(), StepError> {
        self.failing(PrepareStep::PurgeLog)?;
        self.log.lock().entries.retain(|&i| i > index);
        Ok(())
    }
    fn recorded_prepare_index(&self) -> Option<u64> {
        *self.recorded_prepare.lock()
    }
    fn wait_for_apply(&self, index: u64, max_wait: Duration) {
        if let Some(hook) = self.on_wait.lock().as_mut() {
            hook();
        }
        let mut log = self.log.lock();
        if log.applied < index {
            let _ = self.applied_changed.wait_for(&mut log, max_wait);
        }
    }
}

fn memory_manager() -> Arc<Om> {
    Arc::new(Om::open(MemoryStorage::new(), init_at(1)).unwrap())
}

fn file_manager(dir: &Path, opts: ManagerOptions) -> Arc<Om> {
    Arc::new(Om::open(FileStorage::new(dir), opts).unwrap())
}

fn controller(lvm: &Arc<Om>, node: &Node) -> PrepareController {
    PrepareController::restore(Arc::clone(lvm), node, PrepareOptions::default()).unwrap()
}

#[test]
fn prepare_snapshots_purges_persists_the_marker_and_reports_the_index() {
    let lvm = memory_manager();
    let node = Node::default();
    let gate = controller(&lvm, &node);
    assert_eq!(gate.state(), PrepareState::NotPrepared);
    for _ in 0..5 {
        node.put(&gate).unwrap();
    }
    assert_eq!(gate.prepare(&node).unwrap(), 5);
    assert_eq!(gate.state(), PrepareState::Prepared { index: 5 });
    assert_eq!(lvm.state().prepare_index, Some(5));
    assert_eq!(node.snapshot_index(), 5);
    assert!(
        node.entries().is_empty(),
        "the log is purged through the snapshot"
    );

    // Repeatable: a prepared component prepares again to the same index.
    assert_eq!(gate.prepare(&node).unwrap(), 5);
    assert_eq!(gate.state(), PrepareState::Prepared { index: 5 });
}

#[test]
fn writes_are_rejected_while_prepared_except_prepare_and_cancel_prepare() {
    let lvm = memory_manager();
    let node = Node::default();
    let gate = controller(&lvm, &node);
    node.put(&gate).unwrap();
    gate.prepare(&node).unwrap();

    let refused = node.put(&gate).unwrap_err();
    assert_eq!(refused.request, "PutKey");
    assert_eq!(refused.state, PrepareState::Prepared { index: 1 });
    let message = refused.to_string();
    assert!(
        message.contains("Cannot apply write request PutKey when OmFeature is in prepare mode"),
        "{message}"
    );
    assert_eq!(
        gate.check_write("CreateBucket").unwrap_err().request,
        "CreateBucket"
    );
    assert!(gate.check_write(REQUEST_PREPARE).is_ok());
    assert!(gate.check_write(REQUEST_CANCEL_PREPARE).is_ok());
    assert!(gate.begin_write(REQUEST_CANCEL_PREPARE).is_ok());

    // Cancel from any state, repeatable; writes flow again.
    gate.cancel_prepare().unwrap();
    gate.cancel_prepare().unwrap();
    assert_eq!(gate.state(), PrepareState::NotPrepared);
    assert_eq!(lvm.state().prepare_index, None);
    assert_eq!(node.put(&gate).unwrap(), 2);
}

#[test]
fn writes_racing_a_prepare_land_before_the_gate_or_are_rejected() {
    const WRITERS: usize = 4;
    const WRITES: usize = 300;
    let lvm = memory_manager();
    let node = Arc::new(Node::default());
    let gate = Arc::new(controller(&lvm, &node));
    let start = Arc::new(Barrier::new(WRITERS + 1));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (node, gate, start) = (Arc::clone(&node), Arc::clone(&gate), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                (0..WRITES).map(|_| node.put(&gate)).collect::<Vec<_>>()
            })
        })
        .collect();
    start.wait();
    let index = gate.prepare(&*node).unwrap();
    let results: Vec<Vec<_>> = writers.into_iter().map(|w| w.join().unwrap()).collect();

    let mut accepted = Vec::new();
    for per_writer in &results {
        let mut rejected = false;
        for result in per_writer {
            match result {
                Ok(i) => {
                    assert!(!rejected, "a write was accepted after the gate closed");
                    accepted.push(*i);
                }
                Err(e) => {
                    assert_eq!(e.request, "PutKey");
                    assert_ne!(e.state, PrepareState::NotPrepared);
                    rejected = true;
                }
            }
        }
    }
    accepted.sort_unstable();
    let expected: Vec<u64> = (1..=index).collect();
    assert_eq!(
        accepted, expected,
        "every accepted write is covered by the prepare, and nothing else was accepted"
    );
    assert_eq!(gate.state(), PrepareState::Prepared { index });
    assert_eq!(node.snapshot_index(), index);
    assert!(node.put(&gate).is_err());
}

#[test]
fn prepare_waits_until_accepted_writes_are_applied_and_flushed() {
    let lvm = memory_manager();
    let node = Arc::new(Node::with_manual_apply());
    let gate = controller(&lvm, &node);
    for _ in 0..3 {
        node.put(&gate).unwrap();
    }
    assert_eq!(node.applied_index(), 0);
    let applier = {
        let node = Arc::clone(&node);
        thread::spawn(move || while node.apply_next() {})
    };
    assert_eq!(gate.prepare(&*node).unwrap(), 3);
    applier.join().unwrap();
    assert_eq!(node.snapshot_index(), 3);
    assert_eq!(gate.state(), PrepareState::Prepared { index: 3 });
}

/// A node whose log never catches up; waiting advances a manual clock instead of time.
fn stuck_node(clock: &Arc<ManualClock>) -> Arc<Node> {
    let node = Arc::new(Node::with_manual_apply());
    let clock = Arc::clone(clock);
    *node.on_wait.lock() = Some(Box::new(move || clock.advance(Duration::from_millis(250))));
    node
}

#[test]
fn prepare_times_out_and_cancels_when_the_log_does_not_catch_up() {
    let lvm = memory_manager();
    let clock = Arc::new(ManualClock::at_ms(1_000));
    let node = stuck_node(&clock);
    let options = PrepareOptions::default()
        .with_timeout(Duration::from_secs(2))
        .with_clock(clock.clone());
    let gate = PrepareController::restore(Arc::clone(&lvm), &*node, options).unwrap();
    node.put(&gate).unwrap();
    node.put(&gate).unwrap();

    let err = gate.prepare(&*node).unwrap_err();
    assert!(
        matches!(
            err,
            PrepareError::Timeout {
                index: 2,
                applied: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.step(), Some(PrepareStep::WaitForApply));
    assert!(err.to_string().contains("wait for apply"), "{err}");
    assert_eq!(gate.state(), PrepareState::NotPrepared);
    assert_eq!(lvm.state().prepare_index, None);
    node.put(&gate).unwrap();
}

#[test]
fn the_gate_refuses_finalize_while_a_prepare_waits_and_cancel_stops_it() {
    let lvm = memory_manager();
    let node = Arc::new(Node::with_manual_apply());
    let gate: Arc<OnceLock<Arc<PrepareController>>> = Arc::new(OnceLock::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    {
        let (gate, seen) = (Arc::clone(&gate), Arc::clone(&seen));
        *node.on_wait.lock() = Some(Box::new(move || {
            let gate = gate.get().unwrap();
            seen.lock()
                .push((gate.state(), FinalizeGate::check(&**gate)));
            gate.cancel_prepare().unwrap();
        }));
    }
    let controller = Arc::new(controller(&lvm, &node));
    gate.set(Arc::clone(&controller)).unwrap();
    node.put(&controller).unwrap();

    let err = controller.prepare(&*node).unwrap_err();
    assert!(
        matches!(err, PrepareError::Cancelled { index: 1 }),
        "{err:?}"
    );
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, PrepareState::GateEnabled);
    assert_eq!(seen[0].1, Err(FinalizeRefusal::PrepareRunning));
    assert!(seen[0]
        .1
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("write gate is up"));
    assert_eq!(controller.state(), PrepareState::NotPrepared);
    assert_eq!(lvm.state().prepare_index, None);
}

#[test]
fn a_failing_step_cancels_prepare_names_the_step_and_leaves_the_component_writable() {
    for step in [
        PrepareStep::Flush,
        PrepareStep::Snapshot,
        PrepareStep::PurgeLog,
    ] {
        let lvm = memory_manager();
        let node = Node::default();
        let gate = controller(&lvm, &node);
        node.put(&gate).unwrap();
        node.fail_at(Some(step));

        let err = gate.prepare(&node).unwrap_err();
        assert_eq!(err.step(), Some(step), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(&format!("prepare failed at step {step}")),
            "{message}"
        );
        assert!(
            message.contains(&format!("injected {step} failure")),
            "{message}"
        );
        assert_eq!(gate.state(), PrepareState::NotPrepared, "{step}");
        assert_eq!(lvm.state().prepare_index, None, "{step}");
        assert!(FinalizeGate::check(&gate).is_ok());
        assert_eq!(node.put(&gate).unwrap(), 2, "{step}: writable again");

        // Once the cause is gone, prepare works.
        node.fail_at(None);
        assert_eq!(gate.prepare(&node).unwrap(), 2);
    }
}

#[test]
fn a_failure_to_persist_the_marker_cancels_prepare() {
    let storage = Arc::new(MemoryStorage::new());
    let lvm = Arc::new(Om::open(Arc::clone(&storage), init_at(1)).unwrap());
    let node = Node::default();
    let gate = controller(&lvm, &node);
    node.put(&gate).unwrap();
    storage.fail_next_store(layout_core::storage::InjectedFailure::BeforeWrite);
    let err = gate.prepare(&node).unwrap_err();
    assert_eq!(err.step(), Some(PrepareStep::PersistMarker), "{err:?}");
    assert_eq!(gate.state(), PrepareState::NotPrepared);
    assert_eq!(storage.snapshot().unwrap().prepare_index, None);
}

#[test]
fn finalize_is_refused_while_prepared() {
    let lvm = memory_manager();
    let node = Node::default();
    let gate = Arc::new(controller(&lvm, &node));
    let finalizer =
        UpgradeFinalizer::new(Arc::clone(&lvm), ActionRegistry::<OmFeature, ()>::empty())
            .with_gate(gate.clone());
    gate.prepare(&node).unwrap();

    let err = finalizer.finalize("ops", &()).unwrap_err();
    assert!(
        matches!(
            err,
            FinalizeError::Prepared {
                reason: FinalizeRefusal::Prepared { index: 0 }
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("prepare index 0"), "{err}");
    let dry = finalizer.dry_run(None, &()).unwrap();
    assert!(dry.blocked_by.is_some());

    gate.cancel_prepare().unwrap();
    let outcome = finalizer.finalize("ops", &()).unwrap();
    assert_eq!(outcome.metadata_layout_version(), 3);
}

#[test]
fn the_marker_survives_a_restart_and_keeps_the_gate_up() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir
        .path()
        .join("current")
        .join(layout_core::prepare::MARKER_FILE_NAME);
    let options = || PrepareOptions::default().with_marker_file(&marker);
    let node = Node::default();
    {
        let lvm = file_manager(dir.path(), init_at(1));
        let gate = PrepareController::restore(Arc::clone(&lvm), &node, options()).unwrap();
        for _ in 0..4 {
            node.put(&gate).unwrap();
        }
        assert_eq!(gate.prepare(&node).unwrap(), 4);
    }
    assert_eq!(fs::read_to_string(&marker).unwrap(), "4");

    // Restart with the same binary: still prepared, writes and finalize refused.
    let lvm = file_manager(dir.path(), ManagerOptions::default());
    let gate = Arc::new(PrepareController::restore(Arc::clone(&lvm), &node, options()).unwrap());
    assert_eq!(gate.state(), PrepareState::Prepared { index: 4 });
    assert!(node.put(&gate).is_err());
    let finalizer =
        UpgradeFinalizer::new(Arc::clone(&lvm), ActionRegistry::<OmFeature, ()>::empty())
            .with_gate(gate.clone());
    assert!(matches!(
        finalizer.finalize("ops", &()),
        Err(FinalizeError::Prepared { .. })
    ));

    gate.cancel_prepare().unwrap();
    assert!(!marker.exists(), "cancel removes the marker file");
    assert_eq!(lvm.state().prepare_index, None);
}

#[test]
fn starting_with_upgrade_or_downgrade_intent_cancels_prepare_locally() {
    for intent in [StartIntent::Upgrade, StartIntent::Downgrade] {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("prepareMarker");
        let node = Node::default();
        {
            let lvm = file_manager(dir.path(), init_at(1));
            let gate = PrepareController::restore(
                Arc::clone(&lvm),
                &node,
                PrepareOptions::default().with_marker_file(&marker),
            )
            .unwrap();
            node.put(&gate).unwrap();
            gate.prepare(&node).unwrap();
        }
        let lvm = file_manager(
            dir.path(),
            ManagerOptions::default().with_start_intent(intent),
        );
        let gate = PrepareController::restore(
            Arc::clone(&lvm),
            &node,
            PrepareOptions::default().with_marker_file(&marker),
        )
        .unwrap();
        assert_eq!(gate.state(), PrepareState::NotPrepared, "{intent:?}");
        assert_eq!(lvm.state().prepare_index, None, "{intent:?}");
        assert!(!marker.exists(), "{intent:?}");
        node.put(&gate).unwrap();
    }
}

/// A directory prepared at index 3 (marker file kept), and the node that prepared it.
fn prepared_dir() -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::default();
    let lvm = file_manager(dir.path(), init_at(1));
    let gate = PrepareController::restore(
        Arc::clone(&lvm),
        &node,
        PrepareOptions::default().with_marker_file(dir.path().join("prepareMarker")),
    )
    .unwrap();
    for _ in 0..3 {
        node.put(&gate).unwrap();
    }
    gate.prepare(&node).unwrap();
    (dir, node)
}

/// Restores from `dir` and expects a marker problem; checks that nothing on disk changed.
fn restore_fails(dir: &Path, node: &Node, marker_file: bool) -> MarkerProblem {
    let version = fs::read(dir.join("VERSION")).unwrap();
    let marker = fs::read(dir.join("prepareMarker")).ok();
    let lvm = file_manager(dir, ManagerOptions::default());
    let mut options = PrepareOptions::default();
    if marker_file {
        options = options.with_marker_file(dir.join("prepareMarker"));
    }
    let err = PrepareController::restore(lvm, node, options).unwrap_err();
    assert!(err.to_string().contains("Nothing was changed"), "{err}");
    assert_eq!(
        fs::read(dir.join("VERSION")).unwrap(),
        version,
        "VERSION changed"
    );
    assert_eq!(
        fs::read(dir.join("prepareMarker")).ok(),
        marker,
        "the marker file changed"
    );
    match err {
        PrepareError::Marker { problem, .. } => problem,
        other => panic!("expected a marker problem, got {other:?}"),
    }
}

#[test]
fn a_missing_marker_file_is_reported() {
    let (dir, node) = prepared_dir();
    fs::remove_file(dir.path().join("prepareMarker")).unwrap();
    let problem = restore_fails(dir.path(), &node, true);
    assert!(
        matches!(problem, MarkerProblem::Missing { index: 3, .. }),
        "{problem:?}"
    );
}

#[test]
fn a_marker_the_component_expects_but_version_lacks_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::default();
    drop(file_manager(dir.path(), init_at(1)));
    *node.recorded_prepare.lock() = Some(9);
    let problem = restore_fails(dir.path(), &node, false);
    assert!(
        matches!(&problem, MarkerProblem::Missing { index: 9, expected_by, .. } if expected_by.contains("component")),
        "{problem:?}"
    );
}

#[test]
fn an_empty_marker_file_is_reported() {
    let (dir, node) = prepared_dir();
    fs::write(dir.path().join("prepareMarker"), b"").unwrap();
    let problem = restore_fails(dir.path(), &node, true);
    assert!(
        matches!(problem, MarkerProblem::Empty { .. }),
        "{problem:?}"
    );
}

#[test]
fn a_garbage_marker_file_is_reported() {
    for garbage in [
        &b"three"[..],
        b"-3",
        b"3.0",
        b"\xff\xfe",
        b"99999999999999999999999",
    ] {
        let (dir, node) = prepared_dir();
        fs::write(dir.path().join("prepareMarker"), garbage).unwrap();
        let problem = restore_fails(dir.path(), &node, true);
        assert!(
            matches!(problem, MarkerProblem::Garbage { .. }),
            "{garbage:?}: {problem:?}"
        );
    }
}

#[test]
fn a_marker_file_that_disagrees_with_version_is_reported() {
    let (dir, node) = prepared_dir();
    fs::write(dir.path().join("prepareMarker"), b"2").unwrap();
    let problem = restore_fails(dir.path(), &node, true);
    assert!(
        matches!(
            problem,
            MarkerProblem::Mismatch {
                marker: 3,
                other: 2,
                ..
            }
        ),
        "{problem:?}"
    );
}

#[test]
fn a_marker_file_without_a_prepare_in_version_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::default();
    drop(file_manager(dir.path(), init_at(1)));
    fs::write(dir.path().join("prepareMarker"), b"5").unwrap();
    let problem = restore_fails(dir.path(), &node, true);
    assert!(
        matches!(problem, MarkerProblem::Orphaned { index: 5, .. }),
        "{problem:?}"
    );
}

#[test]
fn a_marker_above_the_components_own_record_is_reported() {
    let (dir, _) = prepared_dir();
    // The component restarted from an older snapshot than the one prepare took.
    let older = Node::default();
    {
        let mut log = older.log.lock();
        (log.last, log.applied, log.flushed, log.snapshot) = (2, 2, 2, 2);
    }
    let problem = restore_fails(dir.path(), &older, true);
    assert!(
        matches!(
            problem,
            MarkerProblem::TooHigh {
                marker: 3,
                last_snapshot_index: 2,
                applied_index: 2
            }
        ),
        "{problem:?}"
    );
}

#[test]
fn a_garbage_marker_in_the_version_file_is_reported_as_damage() {
    let (dir, _) = prepared_dir();
    let path = dir.path().join("VERSION");
    let text = fs::read_to_string(&path).unwrap();
    // A hand edit that even fixes up the checksum: the value is still not an index.
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("checksum="))
        .map(|l| {
            if l.starts_with("prepare.index=") {
                "prepare.index=three\n".to_owned()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let edited = format!(
        "{body}checksum=crc32:{:08x}\n",
        crc32fast_hash(body.as_bytes())
    );
    fs::write(&path, &edited).unwrap();
    let err = Om::open(FileStorage::new(dir.path()), ManagerOptions::default()).unwrap_err();
    assert!(
        matches!(
            &err,
            LayoutError::Storage(StorageError::Damaged { damage: layout_core::storage::format::Damage::BadValue { key, .. }, .. })
                if key == "prepare.index"
        ),
        "{err:?}"
    );
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        edited,
        "never overwritten"
    );
}

/// CRC-32 (IEEE), bitwise: the checksum the VERSION file uses.
fn crc32fast_hash(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A node whose snapshot fails the way a full disk makes it fail.
struct DiskFullOnSnapshot(Node);

impl Preparable for DiskFullOnSnapshot {
    fn applied_index(&self) -> u64 {
        self.0.applied_index()
    }
    fn last_log_index(&self) -> u64 {
        self.0.last_log_index()
    }
    fn flush(&self) -> Result<u64, StepError> {
        self.0.flush()
    }
    fn snapshot(&self, _index: u64) -> Result<u64, StepError> {
        Err(StepError::with_source(
            "cannot write the snapshot",
            std::io::Error::from_raw_os_error(28),
        ))
    }
    fn last_snapshot_index(&self) -> u64 {
        self.0.last_snapshot_index()
    }
    fn purge_log(&self, index: u64) -> Result<(), StepError> {
        self.0.purge_log(index)
    }
}

#[test]
fn a_failed_step_names_its_cause_in_the_error_and_in_the_admin_answer() {
    use layout_core::admin::{AdminService, ErrorCode, PrepareParams};

    let lvm = memory_manager();
    let node = Arc::new(DiskFullOnSnapshot(Node::default()));
    let gate = Arc::new(
        PrepareController::restore(Arc::clone(&lvm), &*node, PrepareOptions::default()).unwrap(),
    );
    node.0.put(&gate).unwrap();
    let cause = std::io::Error::from_raw_os_error(28).to_string();
    assert!(cause.contains("No space left on device"), "{cause}");

    let err = gate.prepare(&*node).unwrap_err();
    assert!(
        matches!(
            err,
            PrepareError::StepFailed {
                step: PrepareStep::Snapshot,
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("cannot write the snapshot"), "{message}");
    assert!(message.contains(&cause), "the cause was dropped: {message}");
    assert_eq!(gate.last_failure().as_deref(), Some(message.as_str()));
    assert_eq!(gate.state(), PrepareState::NotPrepared);

    let finalizer = UpgradeFinalizer::new(lvm, ActionRegistry::<OmFeature, ()>::empty());
    let admin =
        AdminService::new(Arc::new(finalizer), Arc::new(())).with_prepare(Arc::clone(&gate), node);
    let err = admin.prepare(&PrepareParams::default()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::PrepareFailed);
    assert!(
        err.message().contains(&cause),
        "prepare-failed dropped the cause: {}",
        err.message()
    );
    assert!(err.message().contains("snapshot"), "{}", err.message());
    // And the status keeps saying why, until a prepare succeeds.
    let status = admin.status().unwrap();
    let failure = status
        .prepare
        .last_failure
        .expect("the last failure in the status");
    assert!(failure.contains(&cause), "{failure}");
}

#[test]
fn a_leftover_temporary_marker_file_is_removed_at_restore() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::default();
    let marker = dir.path().join("prepareMarker");
    let temp = dir.path().join("prepareMarker.tmp");
    // A prepare killed while it wrote the marker file.
    fs::write(&temp, b"4").unwrap();
    let lvm = file_manager(dir.path(), init_at(1));
    let gate = PrepareController::restore(
        Arc::clone(&lvm),
        &node,
        PrepareOptions::default().with_marker_file(&marker),
    )
    .unwrap();
    assert!(fs::symlink_metadata(&temp).is_err(), "the leftover stayed");
    assert_eq!(gate.state(), PrepareState::NotPrepared);
    assert!(!marker.exists());
}

#[test]
fn a_symlink_planted_at_the_marker_temporary_file_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    fs::write(&victim, b"precious\n").unwrap();
    let node = Node::default();
    let marker = dir.path().join("prepareMarker");
    let lvm = file_manager(dir.path(), init_at(1));
    let gate = PrepareController::restore(
        Arc::clone(&lvm),
        &node,
        PrepareOptions::default().with_marker_file(&marker),
    )
    .unwrap();
    node.put(&gate).unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("prepareMarker.tmp")).unwrap();

    let index = gate.prepare(&node).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
    assert_eq!(fs::read_to_string(&marker).unwrap(), index.to_string());
    assert!(!fs::symlink_metadata(&marker)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::symlink_metadata(dir.path().join("prepareMarker.tmp")).is_err());
}
