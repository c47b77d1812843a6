//! Where cluster state lives: the [`ClusterStore`] trait, the [`EmbeddedStore`] (the
//! default: in-process, persisted to one file), the etcd backend (feature `etcd`) and the
//! [`MovingStore`] adapter that moves a live cluster from one store to another.

mod embedded;
#[cfg(feature = "etcd")]
mod etcd;
mod moving;

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

pub use embedded::EmbeddedStore;
#[cfg(feature = "etcd")]
pub use etcd::{EtcdDocumentStore, EtcdOptions, EtcdStore};
pub use moving::{MovePhase, MoveReport, MovingStore};

use super::state::KindState;

/// A stored [`KindState`] and its revision (what a compare-and-swap expects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The store's revision of this kind's state; opaque, compared only for equality.
    pub revision: u64,
    /// The state.
    pub state: KindState,
}

/// What a compare-and-swap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// Stored; this is the new revision.
    Swapped {
        /// The new revision.
        revision: u64,
    },
    /// The stored revision was not the expected one: nothing changed. Reload and retry.
    Conflict,
}

/// The answer to [`ClusterStore::claim_finalizer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalizerClaim {
    /// The caller is now the single active finalizer of the kind (until it releases, or,
    /// on a shared store, until its lease lapses because its process died).
    Claimed,
    /// Another coordinator holds it.
    HeldBy {
        /// Its id.
        holder: String,
    },
}

/// The cluster state of every component kind, and the liveness of members. Synchronous:
/// callers need no async runtime.
///
/// Contract:
/// - [`load`](Self::load) returns `Ok(None)` only for a kind never stored.
/// - [`compare_and_swap`](Self::compare_and_swap) stores a kind's state only if its
///   revision is still `expected` (`None`: absent), atomically and durably (one
///   transaction); a checkpoint is one such swap.
/// - Liveness is separate from membership: [`mark_alive`](Self::mark_alive) keeps a
///   member live for `ttl`; a member not marked again within it is no longer in
///   [`live_members`](Self::live_members) (on etcd, a leased key that vanishes).
/// - [`claim_finalizer`](Self::claim_finalizer) elects the single active finalizer of a
///   kind: at most one holder id at a time, across every process sharing the store; the
///   holder's own id, restarted, takes its claim back without waiting for it to lapse.
pub trait ClusterStore: Send + Sync + fmt::Debug {
    /// Where the state lives, for messages (a path, `etcd http://127.0.0.1:2379 /prefix`).
    fn location(&self) -> String;

    /// The component kinds stored, sorted.
    fn kinds(&self) -> Result<Vec<String>, StoreError>;

    /// A kind's state and revision; `Ok(None)` when never stored.
    fn load(&self, kind: &str) -> Result<Option<Versioned>, StoreError>;

    /// Stores `state` for `kind` if its revision is `expected` (`None`: if absent).
    fn compare_and_swap(
        &self,
        kind: &str,
        expected: Option<u64>,
        state: &KindState,
    ) -> Result<CasOutcome, StoreError>;

    /// Stores `state` for `kind` whatever is there (copying into a new store).
    fn overwrite(&self, kind: &str, state: &KindState) -> Result<u64, StoreError>;

    /// Marks `member` of `kind` live for `ttl` from now.
    fn mark_alive(&self, kind: &str, member: &str, ttl: Duration) -> Result<(), StoreError>;

    /// The members of `kind` marked live and not expired.
    fn live_members(&self, kind: &str) -> Result<BTreeSet<String>, StoreError>;

    /// Claims the single active finalizer of `kind` for `holder`. A holder that claims
    /// again keeps it, also after a restart: a claim left by an earlier run of the same
    /// holder id (its process died before releasing it) is taken back at once, while any
    /// other holder is refused until it is released or lapses. On a shared store the
    /// claim is leased for `ttl` and kept alive while the process lives.
    fn claim_finalizer(
        &self,
        kind: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<FinalizerClaim, StoreError>;

    /// Releases the claim of `holder` (no-op when it holds none).
    fn release_finalizer(&self, kind: &str, holder: &str) -> Result<(), StoreError>;
}

macro_rules! forward_store {
    ($ty:ty) => {
        impl<S: ClusterStore + ?Sized> ClusterStore for $ty {
            fn location(&self) -> String {
                (**self).location()
            }
            fn kinds(&self) -> Result<Vec<String>, StoreError> {
                (**self).kinds()
            }
            fn load(&self, kind: &str) -> Result<Option<Versioned>, StoreError> {
                (**self).load(kind)
            }
            fn compare_and_swap(
                &self,
                kind: &str,
                expected: Option<u64>,
                state: &KindState,
            ) -> Result<CasOutcome, StoreError> {
                (**self).compare_and_swap(kind, expected, state)
            }
            fn overwrite(&self, kind: &str, state: &KindState) -> Result<u64, StoreError> {
                (**self).overwrite(kind, state)
            }
            fn mark_alive(
                &self,
                kind: &str,
                member: &str,
                ttl: Duration,
            ) -> Result<(), StoreError> {
                (**self).mark_alive(kind, member, ttl)
            }
            fn live_members(&self, kind: &str) -> Result<BTreeSet<String>, StoreError> {
                (**self).live_members(kind)
            }
            fn claim_finalizer(
                &self,
                kind: &str,
                holder: &str,
                ttl: Duration,
            ) -> Result<FinalizerClaim, StoreError> {
                (**self).claim_finalizer(kind, holder, ttl)
            }
            fn release_finalizer(&self, kind: &str, holder: &str) -> Result<(), StoreError> {
                (**self).release_finalizer(kind, holder)
            }
        }
    };
}

forward_store!(Arc<S>);
forward_store!(Box<S>);

/// A cluster store failed. Every variant names the store's location.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O operation on the embedded store's file failed.
    #[error("cluster store {location}: {operation} failed: {source}")]
    Io {
        /// Where.
        location: String,
        /// What was being done.
        operation: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The stored state is damaged (checksum, syntax). It was left untouched.
    #[error(
        "cluster store {location} is damaged: {problem}. It was left untouched; restore it \
         from a backup"
    )]
    Damaged {
        /// Where.
        location: String,
        /// What is wrong.
        problem: String,
    },
    /// The stored state was written by a newer release in a format this one cannot read.
    #[error(
        "cluster store {location} holds format {found}; this release reads format \
         {supported}; run the release that wrote it"
    )]
    UnsupportedFormat {
        /// Where.
        location: String,
        /// The format found.
        found: u32,
        /// The format this release reads.
        supported: u32,
    },
    /// The embedded store's file is in use by another process.
    #[error(
        "cluster store {location} is locked by another process; the embedded store serves \
         one coordinator process (use the etcd store to share state between processes)"
    )]
    Locked {
        /// Where.
        location: String,
    },
    /// The store could not be reached or answered with an error (etcd).
    #[error("cluster store {location}: {operation} failed: {message}")]
    Backend {
        /// Where.
        location: String,
        /// What was being done.
        operation: &'static str,
        /// The backend's message.
        message: String,
    },
    /// A store move was asked to do something its phase does not allow.
    #[error("cluster store move from {from} to {to}: {message}")]
    Move {
        /// The current store.
        from: String,
        /// The new store.
        to: String,
        /// What is wrong.
        message: String,
    },
}
