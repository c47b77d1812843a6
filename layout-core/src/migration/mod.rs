//! Migrating state forward: versioned documents, online background migrations,
//! side-by-side copies.
//!
//! | module | holds |
//! |---|---|
//! | [`document`] | versioned JSON documents: [`DocumentMigrator`] with a checked chain of [`DocumentMigration`]s, the [`DocumentStore`] trait, [`FileDocumentStore`], [`MemoryDocumentStore`], [`SharedDocument`] (fenced against newer releases) |
//! | [`background`] | [`BackgroundMigration`] over [`MigrationSource`] / [`MigrationSink`]: batches, checkpoints, progress, throttling, pause/resume/cancel, and [`DualWrite`] for the write path |
//! | [`table`] | [`MigratingTable`]: the contract for requests while a table migrates, over a [`MigratingStore`] |
//! | [`memory`] | [`MemoryMigrationStore`], an in-memory [`MigratingStore`] |
//! | `EtcdDocumentStore` | the [`DocumentStore`] on etcd (cargo feature `etcd`), on a shared `etcd::EtcdConnection` |
//! | `redb_store` | `RedbMigrationStore`, a [`MigratingStore`] on redb (cargo feature `redb`) |
//! | [`side_by_side`] | [`SideBySideMigration`]: copy entities from an old deployment to a new one, in pages, idempotent, continuous |
//!
//! The developer's guide is `docs/migrations.md`.

pub mod background;
pub mod document;
#[cfg(feature = "etcd")]
mod etcd;
pub mod memory;
#[cfg(feature = "redb")]
pub mod redb_store;
pub mod side_by_side;
pub mod table;

pub use background::{
    BackgroundMigration, BackgroundMigrationBuilder, BatchCopy, BatchEvent, BatchHook, BatchWrite,
    Checkpoint, ClockSleeper, DualWrite, MigrationControl, MigrationError, MigrationProgress,
    MigrationReport, MigrationSink, MigrationSource, MigrationState, MigrationTuning, Row,
    RowTransform, Sleeper, ThreadSleeper, WriteScope, WriteTarget, DEFAULT_BATCH_SIZE,
    MAX_LATENCY_DELAY, MIN_LATENCY_DELAY,
};
pub use document::{
    AppliedStep, CasOutcome, ChainError, ChainProblem, DocumentChange, DocumentError,
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
