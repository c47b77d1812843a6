//! One pass: pages from the high-water mark (less the overlap window), each prepared
//! (transformed, filtered), written conditionally, and the mark saved after it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::{
    Cursor, Entity, EntityFailure, PageProgress, PageRequest, PutOutcome, SideBySideError,
    SideBySideMigration, SideBySideReport, StopReason, StopSignal, CRASH_BEFORE_PAGE_WRITES,
    CRASH_MARK_SAVED, CRASH_PAGE_WRITTEN,
};

/// What happened to one listed entity, for the mark.
#[derive(Clone, Copy)]
enum Outcome {
    Done,
    Failed,
    NotRun,
}

impl SideBySideMigration {
    fn deadline_passed(&self) -> bool {
        self.options
            .deadline
            .is_some_and(|d| self.options.clock.now() >= d)
    }

    pub(super) fn pass(
        &self,
        stop: Option<&StopSignal>,
        n: u64,
    ) -> Result<SideBySideReport, SideBySideError> {
        let o = &self.options;
        let saved = o.marks.load()?;
        let window_ms = u64::try_from(o.overlap_window.as_millis()).unwrap_or(u64::MAX);
        let since = saved
            .as_ref()
            .map_or(0, |m| m.updated_ms.saturating_sub(window_ms));
        let mut report = SideBySideReport {
            passes: 1,
            resumed_from: saved.clone(),
            ..SideBySideReport::default()
        };
        let mut listed = 0;
        let mut after: Option<Cursor> = None;
        // The mark advances over a prefix of entities handled without failure, never
        // backwards (the window re-reads below it).
        let mut mark = saved;
        let mut mark_stuck = false;
        loop {
            if stop.is_some_and(StopSignal::is_stopped) {
                report.stopped = Some(StopReason::Stopped);
                break;
            }
            if self.deadline_passed() {
                report.stopped = Some(StopReason::Deadline);
                break;
            }
            let page = o
                .source
                .list(&PageRequest::new(since, after.clone(), o.page_size))?;
            report.pages += 1;
            listed += page.entities.len() as u64;
            crate::crash_point::hit(CRASH_BEFORE_PAGE_WRITES);
            let outcomes = self.copy_page(&page.entities, &mut report);
            crate::crash_point::hit(CRASH_PAGE_WRITTEN);
            let mut candidate = None;
            for (entity, outcome) in page.entities.iter().zip(&outcomes) {
                match outcome {
                    Outcome::Done if !mark_stuck => candidate = Some(entity.cursor()),
                    Outcome::Done => {}
                    Outcome::Failed | Outcome::NotRun => mark_stuck = true,
                }
            }
            if let Some(candidate) = candidate {
                if mark.as_ref().is_none_or(|m| candidate > *m) {
                    o.marks.save(&candidate)?;
                    crate::crash_point::hit(CRASH_MARK_SAVED);
                    mark = Some(candidate);
                }
            }
            report.high_water_mark.clone_from(&mark);
            if let Some(on_page) = &o.on_page {
                on_page(&PageProgress {
                    pass: n,
                    listed,
                    report: report.clone(),
                });
            }
            if outcomes.iter().any(|o| matches!(o, Outcome::NotRun)) {
                report.stopped = Some(StopReason::Deadline);
                break;
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        report.high_water_mark = mark;
        tracing::info!(
            target: "layout_core::migration",
            source = %o.source.location(),
            destination = %o.destination.location(),
            copied = report.copied,
            deleted = report.deleted,
            skipped = report.skipped,
            failed = report.failed,
            high_water_mark = ?report.high_water_mark,
            "side-by-side pass done"
        );
        Ok(report)
    }

    /// Prepares and writes one page; one outcome per listed entity.
    fn copy_page(&self, entities: &[Entity], report: &mut SideBySideReport) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Done; entities.len()];
        let mut writes = self.prepare_page(entities, &mut outcomes, report);
        // Entities whose preparation failed are not written at all.
        writes.retain(|(i, _)| matches!(outcomes[*i], Outcome::Done));
        self.write_page(&writes, &mut outcomes, report);
        outcomes
    }

    /// What to write for each entity of a page: `(index in the page, version)`, in order.
    fn prepare_page(
        &self,
        entities: &[Entity],
        outcomes: &mut [Outcome],
        report: &mut SideBySideReport,
    ) -> Vec<(usize, Entity)> {
        let o = &self.options;
        // (index in the page, version to write)
        let mut writes: Vec<(usize, Entity)> = Vec::new();
        for (i, entity) in entities.iter().enumerate() {
            if self.deadline_passed() {
                outcomes[i] = Outcome::NotRun;
                continue;
            }
            if !entity.authoritative {
                report.replicas += 1;
                continue;
            }
            if !entity.deleted && o.filter.as_ref().is_some_and(|f| !f(entity)) {
                report.filtered += 1;
                continue;
            }
            if entity.deleted {
                if o.propagate_deletes {
                    writes.push((i, entity.clone()));
                } else {
                    report.tombstones_ignored += 1;
                }
                continue;
            }
            let versions = if o.history {
                match o.source.history(&entity.id) {
                    Ok(versions) => versions,
                    Err(e) => {
                        Self::fail(report, entity, entity.version, e.to_string());
                        outcomes[i] = Outcome::Failed;
                        continue;
                    }
                }
            } else {
                vec![entity.clone()]
            };
            for version in versions {
                if version.deleted {
                    writes.push((i, version));
                    continue;
                }
                match self.transformed(version, report) {
                    Ok(v) => writes.push((i, v)),
                    Err((number, reason)) => {
                        Self::fail(report, entity, number, reason);
                        outcomes[i] = Outcome::Failed;
                    }
                }
            }
        }
        writes
    }

    /// Writes a page's versions, in at most `max_concurrent` calls at once.
    fn write_page(
        &self,
        writes: &[(usize, Entity)],
        outcomes: &mut [Outcome],
        report: &mut SideBySideReport,
    ) {
        let o = &self.options;
        let chunks = o.max_concurrent.min(writes.len()).max(1);
        let chunk_len = writes.len().div_ceil(chunks).max(1);
        let results: Mutex<BTreeMap<usize, Result<Vec<PutOutcome>, String>>> =
            Mutex::new(BTreeMap::new());
        let slices: Vec<&[(usize, Entity)]> = writes.chunks(chunk_len).collect();
        let next = AtomicUsize::new(0);
        let work = || loop {
            let c = next.fetch_add(1, Ordering::SeqCst);
            let Some(slice) = slices.get(c) else { break };
            let batch: Vec<Entity> = slice.iter().map(|(_, e)| e.clone()).collect();
            let result = match o.destination.write(&batch) {
                Ok(out) if out.len() == batch.len() => Ok(out),
                Ok(out) => Err(format!(
                    "the destination answered {} outcomes for {} entities",
                    out.len(),
                    batch.len()
                )),
                Err(e) => Err(e.to_string()),
            };
            results.lock().insert(c, result);
        };
        if slices.len() <= 1 {
            work();
        } else {
            std::thread::scope(|scope| {
                for _ in 0..slices.len() {
                    scope.spawn(work);
                }
            });
        }
        for (c, result) in results.into_inner() {
            let slice = slices[c];
            match result {
                Ok(out) => {
                    for ((i, entity), outcome) in slice.iter().zip(out) {
                        match outcome {
                            PutOutcome::Written if entity.deleted => report.deleted += 1,
                            PutOutcome::Written => report.copied += 1,
                            PutOutcome::NotNewer { .. } => report.skipped += 1,
                            PutOutcome::Failed(reason) => {
                                Self::fail(report, entity, entity.version, reason);
                                outcomes[*i] = Outcome::Failed;
                            }
                        }
                    }
                }
                Err(reason) => {
                    for (i, entity) in slice {
                        Self::fail(report, entity, entity.version, reason.clone());
                        outcomes[*i] = Outcome::Failed;
                    }
                }
            }
        }
    }

    fn fail(report: &mut SideBySideReport, entity: &Entity, version: u64, reason: String) {
        report.failed += 1;
        report.failure(vec![EntityFailure {
            id: entity.id.clone(),
            version,
            reason,
        }]);
    }
}
