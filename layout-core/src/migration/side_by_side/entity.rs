//! What a side-by-side migration moves: entities (and tombstones), the cursor it lists
//! them by, pages, and what a conditional write did.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One version of an entity, or its tombstone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Entity {
    /// Its identity.
    pub id: String,
    /// Its version: increases with every update (and with its deletion), comparable
    /// between the source and the destination.
    pub version: u64,
    /// When this version was written (ms since the epoch, on the writer's clock).
    pub updated_ms: u64,
    /// Its content (`null` for a tombstone).
    pub data: Value,
    /// Whether this is the authoritative copy (a source holding replicas lists the
    /// others too; they are not copied).
    pub authoritative: bool,
    /// Whether this is a tombstone: the entity was deleted at `updated_ms`.
    #[serde(default)]
    pub deleted: bool,
}

impl Entity {
    /// An authoritative, live entity version.
    pub fn new(id: impl Into<String>, version: u64, updated_ms: u64, data: Value) -> Self {
        Self {
            id: id.into(),
            version,
            updated_ms,
            data,
            authoritative: true,
            deleted: false,
        }
    }

    /// The tombstone of entity `id`, deleted at `updated_ms` as version `version`.
    pub fn tombstone(id: impl Into<String>, version: u64, updated_ms: u64) -> Self {
        Self {
            deleted: true,
            ..Self::new(id, version, updated_ms, Value::Null)
        }
    }

    /// The same entity marked as a replica (not authoritative).
    #[must_use]
    pub fn replica(mut self) -> Self {
        self.authoritative = false;
        self
    }

    /// Its position in `(updated_ms, id)` order.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            updated_ms: self.updated_ms,
            id: self.id.clone(),
        }
    }
}

/// A position in `(updated_ms, id)` order: a page starts after it; the high-water mark
/// is one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cursor {
    /// An update time (ms).
    pub updated_ms: u64,
    /// An id.
    pub id: String,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms/{:?}", self.updated_ms, self.id)
    }
}

/// A request for one page of entities.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PageRequest {
    /// Only entities updated (or deleted) at or after this time (inclusive).
    pub updated_since_ms: u64,
    /// Only entities after this one in `(updated_ms, id)` order.
    pub after: Option<Cursor>,
    /// At most this many.
    pub limit: usize,
}

impl PageRequest {
    /// A request; see the fields.
    pub fn new(updated_since_ms: u64, after: Option<Cursor>, limit: usize) -> Self {
        Self {
            updated_since_ms,
            after,
            limit,
        }
    }

    /// Whether `entity` belongs after this request's start.
    pub fn admits(&self, entity: &Entity) -> bool {
        entity.updated_ms >= self.updated_since_ms
            && self.after.as_ref().is_none_or(|c| {
                (entity.updated_ms, entity.id.as_str()) > (c.updated_ms, c.id.as_str())
            })
    }
}

/// One page of entities, ordered by `(updated_ms, id)`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    /// The entities (their current version or tombstone; replicas included, if the
    /// source has any).
    pub entities: Vec<Entity>,
    /// Where the next page starts; `None` on the last page. A source must never stop
    /// early without it: a page shorter than asked with a `next` is fine, a missing
    /// `next` says the listing is complete.
    pub next: Option<Cursor>,
}

/// One page of live entities in id order (the cut-over comparison).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IdPage {
    /// Live entities (no tombstones, no replicas), in id order.
    pub entities: Vec<Entity>,
    /// The id to list after for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// What a conditional write did to one entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// The version (or tombstone) was stored.
    Written,
    /// The destination holds this version, at or above the one offered: nothing written.
    NotNewer {
        /// The version held.
        held_version: u64,
    },
    /// This entity's write failed (the others of the call may have succeeded).
    Failed(String),
}
