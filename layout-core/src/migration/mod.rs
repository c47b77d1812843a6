//! Migrating state forward: versioned documents, online background migrations,
//! side-by-side copies.
//!
//! | module | holds |
//! |---|---|
//! | `document` | versioned JSON documents: [`DocumentMigrator`] with a checked chain of [`DocumentMigration`]s, the [`DocumentStore`] trait, [`FileDocumentStore`], [`MemoryDocumentStore`], [`SharedDocument`] (fenced against newer releases) |
//! | `background` | [`BackgroundMigration`] over [`MigrationSource`] / [`MigrationSink`]: batches, checkpoints, progress, throttling, pause/resume/cancel, and [`DualWrite`] for the write path |
//! | `table` | [`MigratingTable`]: the contract for requests while a table migrates, over a [`MigratingStore`] |
//! | `memory` | [`MemoryMigrationStore`], an in-memory [`MigratingStore`] |
//! | `EtcdDocumentStore` | the [`DocumentStore`] on etcd (cargo feature `etcd`), on a shared `etcd::EtcdConnection` |
//! | `redb_store` | `RedbMigrationStore`, a [`MigratingStore`] on redb (cargo feature `redb`) |
//! | `side_by_side` | [`SideBySideMigration`]: copy entities from an old deployment to a new one, in pages, idempotent, continuous |
//!
//! The developer's guide is `docs/migrations.md`.

mod background;
mod document;
#[cfg(feature = "etcd")]
mod etcd;
mod memory;
#[cfg(feature = "redb")]
mod redb_store;
mod side_by_side;
mod table;

pub use background::{
    BackgroundMigration, BackgroundMigrationBuilder, BatchCopy, BatchEvent, BatchHook, BatchWrite,
    DualWrite, MigrationCheckpoint, MigrationControl, MigrationError, MigrationProgress,
    MigrationReport, MigrationSink, MigrationSource, MigrationState, MigrationTuning, Row,
    RowTransform, WriteScope, WriteTarget, DEFAULT_BATCH_SIZE, MAX_LATENCY_DELAY,
    MIN_LATENCY_DELAY,
};
pub use document::{
    AppliedStep, ChainError, ChainProblem, DocumentCasOutcome, DocumentChange, DocumentError,
    DocumentMigration, DocumentMigrator, DocumentMigratorBuilder, DocumentStore,
    DocumentStoreError, DocumentWatch, FileDocumentStore, Freshness, LoadOutcome, LoadedDocument,
    MemoryDocumentStore, Migrated, Revision, SharedDocument, StoredDocument, WatchCallback,
    WatchEvent,
};
#[cfg(feature = "etcd")]
pub use etcd::EtcdDocumentStore;
pub use memory::MemoryMigrationStore;
#[cfg(feature = "redb")]
pub use redb_store::RedbMigrationStore;
pub use side_by_side::{
    Cursor, CutOverReport, Entity, EntityDestination, EntityFailure, EntitySource,
    FileHighWaterMark, HighWaterMarkStore, IdPage, MemoryEntityStore, MemoryHighWaterMark,
    MergedSource, Page, PageProgress, PageRequest, PutOutcome, SideBySideBuilder, SideBySideError,
    SideBySideMigration, SideBySideReport, StopReason, StopSignal, DEFAULT_OVERLAP_WINDOW,
    MAX_FAILURES_KEPT,
};
pub use table::{
    ClearTables, KeyView, LiveWrite, MigratingStore, MigratingTable, NewEntry, NotMigratedPolicy,
    ScanView, SearchResult, TableError,
};

/// The crash points of each kind of migration work (see `layout_core::crash_point`): a
/// test kit crashes at each, and so can a test of yours.
pub use background::{
    CheckedTransform, CRASH_BATCH_COMMITTED, CRASH_BATCH_REPORTED, CRASH_BEFORE_BATCH,
    CRASH_BEFORE_FINISH, CRASH_FINISHED, CRASH_POINTS as BACKGROUND_CRASH_POINTS,
};
pub use document::{
    CRASH_BEFORE_STORE, CRASH_POINTS as DOCUMENT_CRASH_POINTS, CRASH_STEP_APPLIED, CRASH_STORED,
};
pub use side_by_side::{
    CRASH_BEFORE_PAGE_WRITES, CRASH_MARK_SAVED, CRASH_PAGE_WRITTEN,
    CRASH_POINTS as SIDE_BY_SIDE_CRASH_POINTS,
};
