//! Where cluster state lives: the [`ClusterStore`] trait, the [`EmbeddedStore`] (the
//! default: in-process, persisted to one file), the etcd backend (feature `etcd`) and the
//! [`MovingStore`] adapter that moves a live cluster from one store to another.

mod embedded;
#[cfg(feature = "etcd")]
mod etcd;
mod moving;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

pub use embedded::EmbeddedStore;
#[cfg(feature = "etcd")]
pub use etcd::EtcdStore;
pub use moving::{
    MovePhase, MoveReport, MoveStatus, MovingStore, DEFAULT_MIRROR_CAPACITY, MOVE_STEPS,
};

use super::state::{AuditEntry, KindRecord, KindState, MemberRecord, MoveRecord};

/// A stored record and its revision (what a compare-and-swap expects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The store's revision of this record; opaque, compared only for equality.
    pub revision: u64,
    /// The record.
    pub value: T,
}

/// What a compare-and-swap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreCasOutcome {
    /// Stored; this is the new revision.
    Swapped {
        /// The new revision.
        revision: u64,
    },
    /// A stored revision was not the expected one: nothing changed. Reload and retry.
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

/// The cluster state of every component kind, kept as separate records so that a change
/// writes only what it changes: per kind a small [`KindRecord`], one [`MemberRecord`]
/// per member and an append-only, bounded audit trail (see [`KindRecord`](crate::cluster::KindRecord)).
/// Synchronous: callers need no async runtime. Liveness is not stored: the coordinator
/// keeps it in memory, from heartbeats.
///
/// Contract:
/// - [`load_kind`](Self::load_kind) returns `Ok(None)` only for a kind never stored.
/// - [`swap_kind`](Self::swap_kind) stores a kind record only if its revision is still
///   `expected` (`None`: absent), atomically and durably; a checkpoint is one such swap.
/// - [`swap_member`](Self::swap_member) stores a member record only if the member's
///   revision is still `expected` *and* the kind record's revision is still
///   `kind_revision`, in one transaction: a member's registration decided on a kind
///   record that has since moved (a finalization started) is a conflict, never stored.
///   Member revisions are independent of each other: two members never conflict.
/// - [`append_audit`](Self::append_audit) keeps the newest [`AUDIT_RETENTION`](crate::cluster::state::AUDIT_RETENTION) entries of
///   a kind, in the order appended.
/// - [`claim_finalizer`](Self::claim_finalizer) elects the single active finalizer of a
///   kind: at most one holder id at a time, across every process sharing the store; the
///   holder's own id, restarted, takes its claim back without waiting for it to lapse.
/// - [`load_move`](Self::load_move) / [`swap_move`](Self::swap_move) keep one store-wide
///   [`MoveRecord`] (a store move's persisted stage), compare-and-swap like a kind record.
/// - [`remove_kind`](Self::remove_kind) deletes everything stored for a kind (a move's
///   `catch_up` removes from the destination the kinds the source does not have).
/// - A state written by the first release (format 1: one document per kind) is migrated
///   forward when the store opens (the first release's document migrated forward).
pub trait ClusterStore: Send + Sync + fmt::Debug {
    /// Where the state lives, for messages (a path, `etcd http://127.0.0.1:2379 /prefix`).
    fn location(&self) -> String;

    /// The component kinds stored, sorted.
    fn kinds(&self) -> Result<Vec<String>, StoreError>;

    /// A kind's record and revision; `Ok(None)` when never stored.
    fn load_kind(&self, kind: &str) -> Result<Option<Versioned<KindRecord>>, StoreError>;

    /// Stores `record` for `kind` if its revision is `expected` (`None`: if absent).
    fn swap_kind(
        &self,
        kind: &str,
        expected: Option<u64>,
        record: &KindRecord,
    ) -> Result<StoreCasOutcome, StoreError>;

    /// One member's record and revision; `Ok(None)` when never stored.
    fn load_member(
        &self,
        kind: &str,
        member: &str,
    ) -> Result<Option<Versioned<MemberRecord>>, StoreError>;

    /// Every member of `kind` with its record and revision, sorted by id.
    fn members(&self, kind: &str) -> Result<Vec<(String, Versioned<MemberRecord>)>, StoreError>;

    /// Stores `record` for `member` of `kind` if the member's revision is `expected`
    /// (`None`: if absent) and the kind record's revision is `kind_revision`.
    fn swap_member(
        &self,
        kind: &str,
        member: &str,
        expected: Option<u64>,
        kind_revision: u64,
        record: &MemberRecord,
    ) -> Result<StoreCasOutcome, StoreError>;

    /// Appends an entry to `kind`'s audit trail, dropping the oldest beyond
    /// [`AUDIT_RETENTION`](crate::cluster::state::AUDIT_RETENTION).
    fn append_audit(&self, kind: &str, entry: &AuditEntry) -> Result<(), StoreError>;

    /// `kind`'s audit trail, oldest first.
    fn audit(&self, kind: &str) -> Result<Vec<AuditEntry>, StoreError>;

    /// Replaces everything stored for `kind` (record, members, audit) with `state`, in
    /// one transaction where the store can (copying into a new store during a move).
    fn import(&self, kind: &str, state: &KindState) -> Result<(), StoreError>;

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

    /// Deletes everything stored for `kind` (record, members, audit), in one transaction
    /// where the store can; a no-op for a kind never stored.
    fn remove_kind(&self, kind: &str) -> Result<(), StoreError>;

    /// The store's move record and its revision; `Ok(None)` when no move ever involved it.
    fn load_move(&self) -> Result<Option<Versioned<MoveRecord>>, StoreError>;

    /// Stores the move record if its revision is `expected` (`None`: if absent),
    /// atomically and durably.
    fn swap_move(
        &self,
        expected: Option<u64>,
        record: &MoveRecord,
    ) -> Result<StoreCasOutcome, StoreError>;

    /// The whole state of `kind` (record, members, audit) as one snapshot; `Ok(None)` when
    /// never stored. Not one transaction: each part is read as it is then.
    fn load_state(&self, kind: &str) -> Result<Option<KindState>, StoreError> {
        let Some(record) = self.load_kind(kind)? else {
            return Ok(None);
        };
        let members = self
            .members(kind)?
            .into_iter()
            .map(|(id, m)| (id, m.value))
            .collect();
        Ok(Some(KindState::from_parts(
            record.value,
            members,
            self.audit(kind)?,
        )))
    }
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
            fn load_kind(&self, kind: &str) -> Result<Option<Versioned<KindRecord>>, StoreError> {
                (**self).load_kind(kind)
            }
            fn swap_kind(
                &self,
                kind: &str,
                expected: Option<u64>,
                record: &KindRecord,
            ) -> Result<StoreCasOutcome, StoreError> {
                (**self).swap_kind(kind, expected, record)
            }
            fn load_member(
                &self,
                kind: &str,
                member: &str,
            ) -> Result<Option<Versioned<MemberRecord>>, StoreError> {
                (**self).load_member(kind, member)
            }
            fn members(
                &self,
                kind: &str,
            ) -> Result<Vec<(String, Versioned<MemberRecord>)>, StoreError> {
                (**self).members(kind)
            }
            fn swap_member(
                &self,
                kind: &str,
                member: &str,
                expected: Option<u64>,
                kind_revision: u64,
                record: &MemberRecord,
            ) -> Result<StoreCasOutcome, StoreError> {
                (**self).swap_member(kind, member, expected, kind_revision, record)
            }
            fn append_audit(&self, kind: &str, entry: &AuditEntry) -> Result<(), StoreError> {
                (**self).append_audit(kind, entry)
            }
            fn audit(&self, kind: &str) -> Result<Vec<AuditEntry>, StoreError> {
                (**self).audit(kind)
            }
            fn import(&self, kind: &str, state: &KindState) -> Result<(), StoreError> {
                (**self).import(kind, state)
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
            fn load_state(&self, kind: &str) -> Result<Option<KindState>, StoreError> {
                (**self).load_state(kind)
            }
            fn remove_kind(&self, kind: &str) -> Result<(), StoreError> {
                (**self).remove_kind(kind)
            }
            fn load_move(&self) -> Result<Option<Versioned<MoveRecord>>, StoreError> {
                (**self).load_move()
            }
            fn swap_move(
                &self,
                expected: Option<u64>,
                record: &MoveRecord,
            ) -> Result<StoreCasOutcome, StoreError> {
                (**self).swap_move(expected, record)
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
