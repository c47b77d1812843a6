//! The kit's conformance suites (`layout_testkit::conformance`) against every store of
//! the workspace that needs no server (the etcd ones run in the `etcd` binary), and the
//! negative controls: for each trait, a deliberately broken store the suite must fail,
//! naming the clause it breaks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use layout_core::cluster::{
    AuditEntry, ClusterStore, EmbeddedStore, FinalizerClaim, KindRecord, KindState, MemberRecord,
    MoveRecord, MovingStore, StoreCasOutcome, StoreError, Versioned,
};
use layout_core::migration::{
    BatchWrite, ClearTables, DocumentCasOutcome as DocumentCas, DocumentStore, DocumentStoreError,
    FileDocumentStore, KeyView, LiveWrite, MemoryDocumentStore, MemoryMigrationStore,
    MigratingStore, MigrationCheckpoint, MigrationError, MigrationSink, MigrationSource, Revision,
    Row, ScanView, StoredDocument,
};
use layout_core::state::LayoutState;
use layout_core::{FileStorage, LayoutStorage, MemoryStorage, StorageError};
use layout_testkit::conformance;

/// Fresh paths under one temporary directory.
struct Paths {
    dir: tempfile::TempDir,
    next: AtomicUsize,
}

impl Paths {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            next: AtomicUsize::new(0),
        }
    }

    fn fresh(&self, name: &str) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join(format!("{name}-{n}"))
    }
}

// ---- LayoutStorage ----

#[test]
fn layout_storage_conformance_in_memory_and_in_a_version_file() {
    conformance::layout_storage(MemoryStorage::new);
    let paths = Paths::new();
    conformance::layout_storage(|| FileStorage::new(paths.fresh("component")));
}

/// Keeps the first state stored and acknowledges the later ones without storing them.
#[derive(Debug, Default)]
struct KeepsTheFirstState(MemoryStorage);

impl LayoutStorage for KeepsTheFirstState {
    fn location(&self) -> String {
        self.0.location()
    }
    fn load(&self) -> Result<Option<LayoutState>, StorageError> {
        self.0.load()
    }
    fn store(&self, state: &LayoutState) -> Result<(), StorageError> {
        if self.0.load()?.is_none() {
            self.0.store(state)?;
        }
        Ok(())
    }
}

#[test]
fn the_layout_storage_suite_fails_a_store_that_drops_later_writes() {
    let report = conformance::check_layout_storage(KeepsTheFirstState::default);
    assert!(!report.is_ok());
    assert_eq!(
        report.broken_clauses(),
        ["store_replaces_the_previous_state", "load_is_repeatable"],
        "{report}"
    );
    assert!(report
        .to_string()
        .contains("store_replaces_the_previous_state"));
}

// ---- ClusterStore ----

#[test]
fn cluster_store_conformance_embedded_in_memory_and_on_a_file() {
    conformance::cluster_store(EmbeddedStore::in_memory);
    let paths = Paths::new();
    conformance::cluster_store(|| EmbeddedStore::open(paths.fresh("state")).unwrap());
}

#[test]
fn cluster_store_conformance_through_the_kits_observed_store() {
    conformance::cluster_store(|| {
        layout_testkit::cluster::ObservedStore::new(EmbeddedStore::in_memory())
    });
}

#[test]
fn cluster_store_conformance_through_a_moving_store_before_during_and_after_a_move() {
    conformance::cluster_store(|| MovingStore::new(Arc::new(EmbeddedStore::in_memory())));
    conformance::cluster_store(|| {
        let moving = MovingStore::new(Arc::new(EmbeddedStore::in_memory()));
        moving.begin(Arc::new(EmbeddedStore::in_memory())).unwrap();
        moving
    });
    conformance::cluster_store(|| {
        let moving = MovingStore::new(Arc::new(EmbeddedStore::in_memory()));
        moving.begin(Arc::new(EmbeddedStore::in_memory())).unwrap();
        moving.switch().unwrap();
        moving
    });
}

/// How a [`BrokenCluster`] breaks the contract.
#[derive(Debug, Clone, Copy)]
enum ClusterBreak {
    /// `swap_kind` swaps at whatever revision is stored, ignoring the expected one.
    KindSwapIgnoresTheRevision,
    /// `swap_member` passes the current kind revision, dropping the kind guard.
    MemberSwapDropsTheKindGuard,
}

#[derive(Debug)]
struct BrokenCluster {
    inner: EmbeddedStore,
    breaks: ClusterBreak,
}

impl ClusterStore for BrokenCluster {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn kinds(&self) -> Result<Vec<String>, StoreError> {
        self.inner.kinds()
    }
    fn load_kind(&self, kind: &str) -> Result<Option<Versioned<KindRecord>>, StoreError> {
        self.inner.load_kind(kind)
    }
    fn swap_kind(
        &self,
        kind: &str,
        expected: Option<u64>,
        record: &KindRecord,
    ) -> Result<StoreCasOutcome, StoreError> {
        let expected = match self.breaks {
            ClusterBreak::KindSwapIgnoresTheRevision => {
                self.inner.load_kind(kind)?.map(|k| k.revision)
            }
            ClusterBreak::MemberSwapDropsTheKindGuard => expected,
        };
        self.inner.swap_kind(kind, expected, record)
    }
    fn load_member(
        &self,
        kind: &str,
        member: &str,
    ) -> Result<Option<Versioned<MemberRecord>>, StoreError> {
        self.inner.load_member(kind, member)
    }
    fn members(&self, kind: &str) -> Result<Vec<(String, Versioned<MemberRecord>)>, StoreError> {
        self.inner.members(kind)
    }
    fn swap_member(
        &self,
        kind: &str,
        member: &str,
        expected: Option<u64>,
        kind_revision: u64,
        record: &MemberRecord,
    ) -> Result<StoreCasOutcome, StoreError> {
        let kind_revision = match self.breaks {
            ClusterBreak::MemberSwapDropsTheKindGuard => self
                .inner
                .load_kind(kind)?
                .map_or(kind_revision, |k| k.revision),
            ClusterBreak::KindSwapIgnoresTheRevision => kind_revision,
        };
        self.inner
            .swap_member(kind, member, expected, kind_revision, record)
    }
    fn append_audit(&self, kind: &str, entry: &AuditEntry) -> Result<(), StoreError> {
        self.inner.append_audit(kind, entry)
    }
    fn audit(&self, kind: &str) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.audit(kind)
    }
    fn import(&self, kind: &str, state: &KindState) -> Result<(), StoreError> {
        self.inner.import(kind, state)
    }
    fn claim_finalizer(
        &self,
        kind: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<FinalizerClaim, StoreError> {
        self.inner.claim_finalizer(kind, holder, ttl)
    }
    fn release_finalizer(&self, kind: &str, holder: &str) -> Result<(), StoreError> {
        self.inner.release_finalizer(kind, holder)
    }
    fn remove_kind(&self, kind: &str) -> Result<(), StoreError> {
        self.inner.remove_kind(kind)
    }
    fn load_move(&self) -> Result<Option<Versioned<MoveRecord>>, StoreError> {
        self.inner.load_move()
    }
    fn swap_move(
        &self,
        expected: Option<u64>,
        record: &MoveRecord,
    ) -> Result<StoreCasOutcome, StoreError> {
        self.inner.swap_move(expected, record)
    }
}

#[test]
fn the_cluster_store_suite_fails_a_kind_swap_that_ignores_the_expected_revision() {
    let report = conformance::check_cluster_store(|| BrokenCluster {
        inner: EmbeddedStore::in_memory(),
        breaks: ClusterBreak::KindSwapIgnoresTheRevision,
    });
    let broken = report.broken_clauses();
    assert!(
        broken.contains(&"kind_is_created_only_if_absent")
            && broken.contains(&"kind_swap_with_a_stale_revision_conflicts_and_changes_nothing"),
        "{report}"
    );
    assert!(!broken.contains(&"member_swap_conflicts_on_a_stale_member_revision"));
}

#[test]
fn the_cluster_store_suite_fails_a_member_swap_without_the_kind_revision_guard() {
    let report = conformance::check_cluster_store(|| BrokenCluster {
        inner: EmbeddedStore::in_memory(),
        breaks: ClusterBreak::MemberSwapDropsTheKindGuard,
    });
    assert_eq!(
        report.broken_clauses(),
        ["member_swap_conflicts_on_a_stale_kind_revision"],
        "{report}"
    );
    let panic = std::panic::catch_unwind(|| report.assert_ok()).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("member_swap_conflicts_on_a_stale_kind_revision"),
        "{message}"
    );
}

// ---- DocumentStore ----

#[test]
fn document_store_conformance_in_memory_and_in_a_file() {
    conformance::document_store(MemoryDocumentStore::new);
    let paths = Paths::new();
    conformance::document_store(|| FileDocumentStore::new(paths.fresh("doc").join("state.json")));
}

/// A compare-and-swap that swaps at whatever revision is stored.
#[derive(Debug, Default)]
struct CasIgnoresTheRevision(MemoryDocumentStore);

impl DocumentStore for CasIgnoresTheRevision {
    fn location(&self) -> String {
        self.0.location()
    }
    fn load(&self) -> Result<Option<StoredDocument>, DocumentStoreError> {
        self.0.load()
    }
    fn compare_and_swap(
        &self,
        _expected: Option<Revision>,
        bytes: &[u8],
    ) -> Result<DocumentCas, DocumentStoreError> {
        let current = self.0.load()?.map(|d| d.revision);
        self.0.compare_and_swap(current, bytes)
    }
}

/// A watch that reports nothing (a store claiming to watch but never calling back).
#[derive(Debug, Default)]
struct DeafWatch(MemoryDocumentStore);

impl DocumentStore for DeafWatch {
    fn location(&self) -> String {
        self.0.location()
    }
    fn load(&self) -> Result<Option<StoredDocument>, DocumentStoreError> {
        self.0.load()
    }
    fn compare_and_swap(
        &self,
        expected: Option<Revision>,
        bytes: &[u8],
    ) -> Result<DocumentCas, DocumentStoreError> {
        self.0.compare_and_swap(expected, bytes)
    }
    fn watch(
        &self,
        after: Revision,
        _on_event: layout_core::migration::WatchCallback,
    ) -> Result<Option<layout_core::migration::DocumentWatch>, DocumentStoreError> {
        self.0.watch(after, Box::new(|_| {}))
    }
}

#[test]
fn the_document_store_suite_fails_a_compare_and_swap_that_ignores_the_revision() {
    let report = conformance::check_document_store(CasIgnoresTheRevision::default);
    assert_eq!(
        report.broken_clauses(),
        [
            "create_only_if_absent",
            "a_stale_swap_conflicts_and_changes_nothing"
        ],
        "{report}"
    );
}

#[test]
fn the_document_store_suite_fails_a_watch_that_reports_nothing() {
    let report = conformance::check_document_store(DeafWatch::default);
    assert_eq!(
        report.broken_clauses(),
        ["a_watch_reports_every_later_change"],
        "{report}"
    );
}

// ---- MigratingStore ----

#[test]
fn migrating_store_conformance_in_memory() {
    conformance::migrating_store(MemoryMigrationStore::new);
}

#[cfg(feature = "redb")]
#[test]
fn migrating_store_conformance_on_redb() {
    use layout_core::migration::RedbMigrationStore;
    use layout_core::redb;
    let paths = Paths::new();
    conformance::migrating_store(|| {
        let db = Arc::new(redb::Database::create(paths.fresh("rows.redb")).unwrap());
        RedbMigrationStore::new(db, "rows-v2", "rows", "rows_v2")
    });
}

/// Writes every batch but never keeps its checkpoint.
#[derive(Debug, Default)]
struct LosesTheCheckpoint(MemoryMigrationStore);

impl MigrationSource for LosesTheCheckpoint {
    fn source_location(&self) -> String {
        self.0.source_location()
    }
    fn total_rows(&self) -> Result<Option<u64>, MigrationError> {
        self.0.total_rows()
    }
    fn read_batch(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<Row>, MigrationError> {
        self.0.read_batch(after, limit)
    }
}

impl MigrationSink for LosesTheCheckpoint {
    fn sink_location(&self) -> String {
        self.0.sink_location()
    }
    fn load_checkpoint(&self) -> Result<Option<MigrationCheckpoint>, MigrationError> {
        Ok(None)
    }
    fn write_batch(
        &self,
        _expected: Option<&MigrationCheckpoint>,
        rows: &[Row],
        next: &MigrationCheckpoint,
    ) -> Result<BatchWrite, MigrationError> {
        let stored = self.0.load_checkpoint()?;
        self.0.write_batch(stored.as_ref(), rows, next)
    }
    fn finish(&self) -> Result<(), MigrationError> {
        self.0.finish()
    }
    fn reset(&self) -> Result<(), MigrationError> {
        self.0.reset()
    }
}

impl MigratingStore for LosesTheCheckpoint {
    fn view(&self, key: &[u8]) -> Result<KeyView, MigrationError> {
        let mut view = self.0.view(key)?;
        view.checkpoint = None;
        Ok(view)
    }
    fn scan(&self, prefix: &[u8]) -> Result<ScanView, MigrationError> {
        let mut scan = self.0.scan(prefix)?;
        scan.checkpoint = None;
        Ok(scan)
    }
    fn apply(&self, write: &LiveWrite) -> Result<(), MigrationError> {
        self.0.apply(write)
    }
    fn apply_if_unchanged(
        &self,
        key: &[u8],
        expected: &KeyView,
        write: &LiveWrite,
    ) -> Result<bool, MigrationError> {
        self.0.apply_if_unchanged(key, expected, write)
    }
    fn clear(&self, tables: ClearTables) -> Result<(), MigrationError> {
        self.0.clear(tables)
    }
}

#[test]
fn the_migrating_store_suite_fails_a_store_that_loses_its_checkpoint() {
    let report = conformance::check_migrating_store(LosesTheCheckpoint::default);
    let broken = report.broken_clauses();
    assert!(
        broken.contains(&"a_batch_stores_its_rows_and_its_checkpoint")
            && broken.contains(&"a_batch_at_a_stale_checkpoint_writes_nothing"),
        "{report}"
    );
    assert!(
        !broken.contains(&"the_source_pages_in_key_order"),
        "{report}"
    );
}
