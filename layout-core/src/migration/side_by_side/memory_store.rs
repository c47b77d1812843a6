//! [`MemoryEntityStore`]: entities in memory, a source and a destination.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use super::{
    Entity, EntityDestination, EntitySource, IdPage, Page, PageRequest, PutOutcome, SideBySideError,
};

/// Entities in memory, with their history and tombstones: a source (listing replicas
/// too, if added) and a destination. For tests and examples.
#[derive(Debug, Default)]
pub struct MemoryEntityStore {
    inner: Mutex<EntityInner>,
}

#[derive(Debug, Default)]
struct EntityInner {
    /// id -> versions, oldest first (the last may be a tombstone).
    entities: BTreeMap<String, Vec<Entity>>,
    replicas: Vec<Entity>,
    writes: u64,
}

impl MemoryEntityStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a version of an entity (its history grows), unconditionally.
    pub fn upsert(&self, entity: Entity) {
        self.inner
            .lock()
            .entities
            .entry(entity.id.clone())
            .or_default()
            .push(entity);
    }

    /// Deletes `id`: its tombstone becomes its current version.
    pub fn delete(&self, id: &str, version: u64, updated_ms: u64) {
        self.upsert(Entity::tombstone(id, version, updated_ms));
    }

    /// Adds a replica copy, listed by the source but not authoritative.
    pub fn add_replica(&self, entity: Entity) {
        self.inner.lock().replicas.push(entity.replica());
    }

    /// The current live version of `id` (`None` if absent or deleted).
    pub fn get(&self, id: &str) -> Option<Entity> {
        self.inner
            .lock()
            .entities
            .get(id)
            .and_then(|v| v.last().cloned())
            .filter(|e| !e.deleted)
    }

    /// Every version of `id`, oldest first (tombstones included).
    pub fn versions(&self, id: &str) -> Vec<Entity> {
        self.inner
            .lock()
            .entities
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// The current version of every live entity, by id.
    pub fn current_entities(&self) -> BTreeMap<String, Entity> {
        self.inner
            .lock()
            .entities
            .iter()
            .filter_map(|(id, v)| {
                v.last()
                    .filter(|e| !e.deleted)
                    .map(|e| (id.clone(), e.clone()))
            })
            .collect()
    }

    /// How many versions it stored as a destination.
    pub fn writes(&self) -> u64 {
        self.inner.lock().writes
    }
}

impl EntitySource for MemoryEntityStore {
    fn location(&self) -> String {
        "memory".to_owned()
    }

    fn list(&self, request: &PageRequest) -> Result<Page, SideBySideError> {
        let inner = self.inner.lock();
        let mut all: Vec<&Entity> = inner
            .entities
            .values()
            .filter_map(|v| v.last())
            .chain(inner.replicas.iter())
            .filter(|e| request.admits(e))
            .collect();
        // Replicas sort after the authoritative copy with the same position.
        all.sort_by(|a, b| {
            (a.updated_ms, &a.id, !a.authoritative).cmp(&(b.updated_ms, &b.id, !b.authoritative))
        });
        let more = all.len() > request.limit;
        all.truncate(request.limit);
        let next = if more {
            all.last().map(|e| e.cursor())
        } else {
            None
        };
        Ok(Page {
            entities: all.into_iter().cloned().collect(),
            next,
        })
    }

    fn scan(&self, after: Option<&str>, limit: usize) -> Result<IdPage, SideBySideError> {
        let inner = self.inner.lock();
        let start = after.map_or(std::ops::Bound::Unbounded, |a| {
            std::ops::Bound::Excluded(a.to_owned())
        });
        let mut page = IdPage::default();
        for (id, versions) in inner.entities.range((start, std::ops::Bound::Unbounded)) {
            let Some(current) = versions.last().filter(|e| !e.deleted) else {
                continue;
            };
            if page.entities.len() == limit {
                page.next = page.entities.last().map(|e| e.id.clone());
                break;
            }
            debug_assert_eq!(id, &current.id);
            page.entities.push(current.clone());
        }
        Ok(page)
    }

    fn history(&self, id: &str) -> Result<Vec<Entity>, SideBySideError> {
        Ok(self.versions(id))
    }
}

impl EntityDestination for MemoryEntityStore {
    fn location(&self) -> String {
        "memory".to_owned()
    }

    fn write(&self, entities: &[Entity]) -> Result<Vec<PutOutcome>, SideBySideError> {
        let mut inner = self.inner.lock();
        Ok(entities
            .iter()
            .map(|entity| {
                let versions = inner.entities.entry(entity.id.clone()).or_default();
                match versions.last() {
                    Some(held) if held.version >= entity.version => PutOutcome::NotNewer {
                        held_version: held.version,
                    },
                    _ => {
                        versions.push(entity.clone());
                        inner.writes += 1;
                        PutOutcome::Written
                    }
                }
            })
            .collect())
    }

    fn scan(&self, after: Option<&str>, limit: usize) -> Result<IdPage, SideBySideError> {
        EntitySource::scan(self, after, limit)
    }
}
