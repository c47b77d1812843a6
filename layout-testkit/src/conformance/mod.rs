//! Conformance suites: the contract of every store trait of `layout-core`, one function
//! per trait, to run against any implementation (the workspace's own and yours).
//!
//! | suite | trait | clauses |
//! |---|---|---|
//! | [`layout_storage`] | [`LayoutStorage`](layout_core::LayoutStorage) | [`LAYOUT_STORAGE_CLAUSES`] |
//! | [`cluster_store`] | [`ClusterStore`](layout_core::cluster::ClusterStore) | [`CLUSTER_STORE_CLAUSES`] |
//! | [`document_store`] | [`DocumentStore`](layout_core::migration::DocumentStore) | [`DOCUMENT_STORE_CLAUSES`] |
//! | [`migrating_store`] | [`MigratingStore`](layout_core::migration::MigratingStore) | [`MIGRATING_STORE_CLAUSES`] |
//!
//! Each suite takes a function that makes a fresh, empty store, runs every clause of the
//! contract on a store of its own, and panics naming every clause broken (with the
//! failed assertion). The `check_*` twins return a [`ConformanceReport`] instead, for a
//! test that expects a store to break a clause (a negative control).
//!
//! ```
//! use layout_core::migration::{DocumentCasOutcome, DocumentStore, DocumentStoreError, MemoryDocumentStore, Revision, StoredDocument};
//! use layout_testkit::conformance;
//!
//! conformance::document_store(MemoryDocumentStore::new);
//!
//! /// A store whose compare-and-swap ignores the expected revision.
//! #[derive(Debug, Default)]
//! struct Careless(MemoryDocumentStore);
//! impl DocumentStore for Careless {
//!     fn location(&self) -> String { self.0.location() }
//!     fn load(&self) -> Result<Option<StoredDocument>, DocumentStoreError> { self.0.load() }
//!     fn compare_and_swap(&self, _: Option<Revision>, bytes: &[u8]) -> Result<DocumentCasOutcome, DocumentStoreError> {
//!         let current = self.0.load()?.map(|d| d.revision);
//!         self.0.compare_and_swap(current, bytes)
//!     }
//! }
//! let report = conformance::check_document_store(Careless::default);
//! assert!(report.broken_clauses().contains(&"create_only_if_absent"));
//! ```
//!
//! A clause that panics is broken; the default panic hook prints its message to stderr
//! as it happens, and the report (or the suite's panic) repeats it.
#![allow(clippy::unwrap_used)] // a failed unwrap inside a clause is a broken clause, reported

mod cluster;
mod document;
mod layout;
mod migrating;

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use cluster::{check_cluster_store, cluster_store, CLUSTER_STORE_CLAUSES};
pub use document::{check_document_store, document_store, DOCUMENT_STORE_CLAUSES};
pub use layout::{check_layout_storage, layout_storage, LAYOUT_STORAGE_CLAUSES};
pub use migrating::{check_migrating_store, migrating_store, MIGRATING_STORE_CLAUSES};

/// One clause of a contract: its name and what it requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clause {
    /// The name (a `snake_case` sentence).
    pub name: &'static str,
    /// What the clause requires, in a sentence.
    pub requires: &'static str,
}

/// A clause a store broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenClause {
    /// The clause's name.
    pub clause: &'static str,
    /// What it requires.
    pub requires: &'static str,
    /// The failed assertion (the panic message).
    pub message: String,
}

/// What a suite found: the clauses kept and the clauses broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConformanceReport {
    /// The suite (the trait's name).
    pub suite: &'static str,
    /// Where the store under test lives (its `location()`), for messages.
    pub location: String,
    /// The clauses kept, in the order run.
    pub kept: Vec<&'static str>,
    /// The clauses broken, in the order run.
    pub broken: Vec<BrokenClause>,
}

impl ConformanceReport {
    /// Whether every clause was kept.
    pub fn is_ok(&self) -> bool {
        self.broken.is_empty()
    }

    /// The names of the clauses broken.
    pub fn broken_clauses(&self) -> Vec<&'static str> {
        self.broken.iter().map(|b| b.clause).collect()
    }

    /// Panics naming every clause broken, if any.
    ///
    /// # Panics
    ///
    /// When a clause was broken.
    #[track_caller]
    pub fn assert_ok(&self) {
        assert!(self.is_ok(), "{self}");
    }
}

impl fmt::Display for ConformanceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ok() {
            return write!(
                f,
                "{} at {} keeps the {} contract ({} clauses)",
                self.suite,
                self.location,
                self.suite,
                self.kept.len()
            );
        }
        write!(
            f,
            "the store at {} breaks {} of {} clauses of the {} contract:",
            self.location,
            self.broken.len(),
            self.broken.len() + self.kept.len(),
            self.suite
        )?;
        for b in &self.broken {
            write!(f, "\n- {} ({}): {}", b.clause, b.requires, b.message)?;
        }
        Ok(())
    }
}

/// Runs `clauses` (each with a fresh store from `make`) and reports.
fn run<S: ?Sized>(
    suite: &'static str,
    clauses: &[Clause],
    checks: &[fn(&S)],
    make: &dyn Fn() -> Box<S>,
    location: impl Fn(&S) -> String,
) -> ConformanceReport {
    assert_eq!(
        clauses.len(),
        checks.len(),
        "{suite}: a clause without a check"
    );
    let mut report = ConformanceReport {
        suite,
        location: String::new(),
        kept: Vec::new(),
        broken: Vec::new(),
    };
    for (clause, check) in clauses.iter().zip(checks) {
        let store = make();
        if report.location.is_empty() {
            report.location = location(&*store);
        }
        match catch_unwind(AssertUnwindSafe(|| check(&*store))) {
            Ok(()) => report.kept.push(clause.name),
            Err(payload) => report.broken.push(BrokenClause {
                clause: clause.name,
                requires: clause.requires,
                message: panic_message(payload.as_ref()),
            }),
        }
    }
    report
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
