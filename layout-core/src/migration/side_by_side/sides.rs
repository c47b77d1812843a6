//! The two sides of a side-by-side migration: the [`EntitySource`] it lists (and
//! [`MergedSource`], several read as one) and the [`EntityDestination`] it writes.

use std::fmt;
use std::sync::Arc;

use super::{Entity, IdPage, Page, PageRequest, PutOutcome, SideBySideError};

/// The old side: lists entities and tombstones in `(updated_ms, id)` order and live
/// entities in id order.
pub trait EntitySource: Send + Sync {
    /// Where it is, for messages.
    fn location(&self) -> String;

    /// Current versions and tombstones of entities updated (or deleted) at or after
    /// `request.updated_since_ms`, ordered by `(updated_ms, id)`, after `request.after`,
    /// at most `request.limit`, with a [`Page::next`] whenever more follow.
    fn list(&self, request: &PageRequest) -> Result<Page, SideBySideError>;

    /// Live, authoritative entities with an id above `after`, in id order, at most
    /// `limit` (for [`SideBySideMigration::compare`]).
    ///
    /// [`SideBySideMigration::compare`]: super::SideBySideMigration::compare
    fn scan(&self, after: Option<&str>, limit: usize) -> Result<IdPage, SideBySideError>;

    /// Every version of entity `id`, oldest first (for
    /// [`with_history`](super::SideBySideBuilder::with_history)). By default: refused, the
    /// source keeps no history.
    fn history(&self, id: &str) -> Result<Vec<Entity>, SideBySideError> {
        Err(SideBySideError::Source {
            location: self.location(),
            operation: "history",
            reason: format!("this source keeps no history of {id:?}"),
        })
    }
}

/// The new side.
pub trait EntityDestination: Send + Sync {
    /// Where it is, for messages.
    fn location(&self) -> String;

    /// Stores each entity version (a tombstone deletes the entity and is kept) keeping
    /// its version and update time, each only if the destination holds no version of
    /// it at or above the one offered, atomically per entity. Answers one outcome per
    /// entity, in order; an `Err` fails them all.
    fn write(&self, entities: &[Entity]) -> Result<Vec<PutOutcome>, SideBySideError>;

    /// Live entities with an id above `after`, in id order, at most `limit`.
    fn scan(&self, after: Option<&str>, limit: usize) -> Result<IdPage, SideBySideError>;
}

/// Several sources read as one (a sharded blue: each shard one source, keys disjoint):
/// pages merge in `(updated_ms, id)` order, so one mark covers all shards, and shards
/// whose clocks disagree are covered by the overlap window.
pub struct MergedSource {
    sources: Vec<Arc<dyn EntitySource>>,
}

impl MergedSource {
    /// The sources, read as one.
    pub fn new(sources: Vec<Arc<dyn EntitySource>>) -> Self {
        Self { sources }
    }
}

impl fmt::Debug for MergedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MergedSource")
            .field("sources", &self.location())
            .finish()
    }
}

impl EntitySource for MergedSource {
    fn location(&self) -> String {
        let all: Vec<String> = self.sources.iter().map(|s| s.location()).collect();
        all.join("+")
    }

    fn list(&self, request: &PageRequest) -> Result<Page, SideBySideError> {
        let mut all = Vec::new();
        let mut more = false;
        for source in &self.sources {
            let page = source.list(request)?;
            more |= page.next.is_some();
            all.extend(page.entities);
        }
        all.sort_by(|a, b| (a.updated_ms, &a.id).cmp(&(b.updated_ms, &b.id)));
        more |= all.len() > request.limit;
        all.truncate(request.limit);
        // Each source answered its first entities after the cursor, so the first
        // `limit` of the merge are the first `limit` overall.
        let next = if more {
            all.last()
                .map(Entity::cursor)
                .or_else(|| request.after.clone())
        } else {
            None
        };
        Ok(Page {
            entities: all,
            next,
        })
    }

    fn scan(&self, after: Option<&str>, limit: usize) -> Result<IdPage, SideBySideError> {
        let mut all = Vec::new();
        let mut more = false;
        for source in &self.sources {
            let page = source.scan(after, limit)?;
            more |= page.next.is_some();
            all.extend(page.entities);
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        more |= all.len() > limit;
        all.truncate(limit);
        let next = if more {
            all.last()
                .map(|e| e.id.clone())
                .or_else(|| after.map(str::to_owned))
        } else {
            None
        };
        Ok(IdPage {
            entities: all,
            next,
        })
    }

    fn history(&self, id: &str) -> Result<Vec<Entity>, SideBySideError> {
        for source in &self.sources {
            let versions = source.history(id)?;
            if !versions.is_empty() {
                return Ok(versions);
            }
        }
        Ok(Vec::new())
    }
}
