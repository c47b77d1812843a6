//! What a pass, a page and the cut-over check report.

use super::Cursor;

/// Why a run stopped before the source was exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The deadline passed.
    Deadline,
    /// [`StopSignal::stop`] was called.
    ///
    /// [`StopSignal::stop`]: super::StopSignal::stop
    Stopped,
}

/// A failed entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityFailure {
    /// The entity.
    pub id: String,
    /// The version that failed.
    pub version: u64,
    /// Why.
    pub reason: String,
}

/// What a pass (or a continuous run) did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SideBySideReport {
    /// Entity versions written to the destination (tombstones not included).
    pub copied: u64,
    /// Tombstones written to the destination (deletes propagated).
    pub deleted: u64,
    /// Entity versions the destination already held at the same or a newer version
    /// (re-read by the overlap window, or newer in the destination): not written.
    pub skipped: u64,
    /// Tombstones left unapplied ([`propagate_deletes(false)`][propagate_deletes]).
    ///
    /// [propagate_deletes]: super::SideBySideBuilder::propagate_deletes
    pub tombstones_ignored: u64,
    /// Entity versions passed through the transform.
    pub transformed: u64,
    /// Entity versions that failed (transform or destination error).
    pub failed: u64,
    /// Entities the filter left out.
    pub filtered: u64,
    /// Replicas (non-authoritative copies) left out.
    pub replicas: u64,
    /// Pages read.
    pub pages: u64,
    /// Passes run.
    pub passes: u64,
    /// The mark the first pass resumed from (loaded from the mark store), if any.
    pub resumed_from: Option<Cursor>,
    /// The high-water mark after the run.
    pub high_water_mark: Option<Cursor>,
    /// Why the run stopped early, if it did.
    pub stopped: Option<StopReason>,
    /// The failures (at most [`MAX_FAILURES_KEPT`]).
    pub failures: Vec<EntityFailure>,
}

/// At most this many failures are kept in a report (the count is exact).
pub const MAX_FAILURES_KEPT: usize = 100;

impl SideBySideReport {
    pub(super) fn absorb(&mut self, other: SideBySideReport) {
        self.copied += other.copied;
        self.deleted += other.deleted;
        self.skipped += other.skipped;
        self.tombstones_ignored += other.tombstones_ignored;
        self.transformed += other.transformed;
        self.failed += other.failed;
        self.filtered += other.filtered;
        self.replicas += other.replicas;
        self.pages += other.pages;
        self.passes += other.passes;
        if self.resumed_from.is_none() && self.passes == other.passes {
            self.resumed_from = other.resumed_from;
        }
        if other.high_water_mark.is_some() {
            self.high_water_mark = other.high_water_mark;
        }
        self.stopped = other.stopped.or(self.stopped);
        self.failure(other.failures);
    }

    pub(super) fn failure(&mut self, failures: Vec<EntityFailure>) {
        for f in failures {
            if self.failures.len() < MAX_FAILURES_KEPT {
                self.failures.push(f);
            }
        }
    }
}

/// Progress after one page, for a progress bar.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PageProgress {
    /// The pass (1-based, within this run).
    pub pass: u64,
    /// Entities listed by this pass so far.
    pub listed: u64,
    /// The pass's report so far.
    pub report: SideBySideReport,
}

/// The cut-over check: does the destination equal the transform of the source?
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CutOverReport {
    /// Live entities in the source (authoritative, kept by the filter).
    pub source_count: u64,
    /// Live entities in the destination.
    pub destination_count: u64,
    /// Source entities absent from the destination.
    pub missing: u64,
    /// Destination entities absent from the source.
    pub extra: u64,
    /// Entities on both sides whose destination data differs from the transformed source.
    pub differing: u64,
    /// Source entities whose transform failed.
    pub transform_failed: u64,
    /// SHA-256 (hex) over the transformed source entities, in id order.
    pub source_digest: String,
    /// SHA-256 (hex) over the destination entities, in id order.
    pub destination_digest: String,
    /// Whether both sides agree: nothing missing, extra, differing or failed, and equal
    /// counts and digests.
    pub agree: bool,
    /// Up to [`MAX_FAILURES_KEPT`] ids that disagree, with how.
    pub examples: Vec<String>,
}
