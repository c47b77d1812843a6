//! One run of a background migration: start (or resume) at the checkpoint, copy batch
//! after batch, finish.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::error::printable;
use super::pacing::Interrupt;
use super::{
    BackgroundMigration, BatchCopy, BatchEvent, BatchWrite, MigrationCheckpoint, MigrationError,
    MigrationReport, MigrationState, Reporter, Row, Running, CRASH_BATCH_COMMITTED,
    CRASH_BATCH_REPORTED, CRASH_BEFORE_BATCH, CRASH_BEFORE_FINISH, CRASH_FINISHED,
};

/// Where a run stands: the checkpoint it has reached and what it has measured, kept
/// between its batches.
struct RunState {
    /// The last checkpoint stored.
    checkpoint: MigrationCheckpoint,
    /// The rows in the source, as far as known.
    total: Option<u64>,
    /// When the run started (on the migration's clock).
    run_start: SystemTime,
    /// Rows done when the run started.
    done_at_start: u64,
    /// Batches committed when the run started.
    batches_at_start: u64,
    /// Rows written by this run.
    written: u64,
    /// The last tenth of the total reported to the action's status.
    reported_decile: u64,
    /// The rate ceiling, when it was set, and the rows done then: the ceiling is measured
    /// from when it was last set (or changed).
    rate_window: (Option<u64>, SystemTime, u64),
    /// The wait the latency budget adds before each batch now.
    latency_delay: Duration,
}

/// How a run starts.
enum RunStart {
    /// The copy was already complete: this report, and nothing to do.
    Complete(MigrationReport),
    /// From this checkpoint, stored with the run's start.
    From(MigrationCheckpoint),
}

impl BackgroundMigration {
    pub(super) fn run_inner(
        &self,
        ctx: Option<&dyn Reporter>,
    ) -> Result<MigrationReport, MigrationError> {
        if self.running.swap(true, Ordering::AcqRel) {
            return Err(MigrationError::AlreadyRunning {
                migration: self.name.clone(),
            });
        }
        let _running = Running(&self.running);
        let result = self.copy(ctx);
        let mut progress = self.progress.lock();
        match &result {
            Ok(_) => {
                progress.state = MigrationState::Complete;
                progress.last_error = None;
            }
            Err(e) => {
                progress.state = if self.is_started() {
                    MigrationState::Interrupted
                } else {
                    MigrationState::NotStarted
                };
                progress.last_error = Some(e.to_string());
                if matches!(e, MigrationError::Cancelled { .. }) {
                    // A cancel is consumed by the run it stopped.
                    self.control.inner.flags.lock().cancelled = false;
                }
            }
        }
        result
    }

    fn copy(&self, ctx: Option<&dyn Reporter>) -> Result<MigrationReport, MigrationError> {
        let span = tracing::info_span!(
            target: "layout_core::migration",
            "background_migration",
            migration = %self.name
        );
        let _entered = span.enter();
        let checkpoint = match self.start_run()? {
            RunStart::Complete(report) => return Ok(report),
            RunStart::From(checkpoint) => checkpoint,
        };
        self.note_checkpoint(&checkpoint);
        let total = checkpoint.total;
        let run_start = self.clock.now();
        let mut run = RunState {
            total,
            run_start,
            done_at_start: checkpoint.done,
            batches_at_start: checkpoint.batches,
            written: 0,
            reported_decile: decile(checkpoint.done, total),
            rate_window: (None, run_start, checkpoint.done),
            latency_delay: Duration::ZERO,
            checkpoint,
        };
        self.announce_run(&run, ctx);
        while !run.checkpoint.complete {
            let batch_size = self.pace_next_batch(&mut run, ctx)?;
            let batch_span = tracing::debug_span!(
                target: "layout_core::migration",
                "batch",
                index = run.checkpoint.batches,
                from = run.checkpoint.done
            );
            let _batch = batch_span.enter();
            if self.copy_batch(&mut run, batch_size)? {
                self.report_batch(&mut run, ctx);
            }
        }
        self.finish_run(&run, ctx)
    }

    /// Starts (or resumes) a run: persists it, with writers switched to dual-write
    /// first. A complete copy only finishes the sink.
    fn start_run(&self) -> Result<RunStart, MigrationError> {
        loop {
            let current = self.sink.load_checkpoint()?;
            if let Some(cp) = current.as_ref().filter(|cp| cp.complete) {
                return self.already_complete(cp).map(RunStart::Complete);
            }
            {
                // Writes in flight that were decided "old only" finish first.
                let mut started = self.fence.started.write();
                *started = true;
            }
            // The total is counted before the run's start is stored, so it is known (and
            // persisted) before the first batch; the downtime before this run is not
            // counted: the active time resumes from now.
            let counted = self.source.total_rows()?;
            let now_ms = self.clock.now_ms();
            let mut next = current.clone().unwrap_or_else(|| MigrationCheckpoint {
                started_ms: now_ms,
                ..MigrationCheckpoint::default()
            });
            next.runs += 1;
            next.updated_ms = now_ms;
            next.total = counted.map(|t| t.max(next.done));
            match self.sink.write_batch(current.as_ref(), &[], &next)? {
                BatchWrite::Written { .. } => return Ok(RunStart::From(next)),
                BatchWrite::Conflict { .. } => {}
            }
        }
    }

    /// A run over a complete copy: finishes the sink (again) and reports.
    fn already_complete(
        &self,
        cp: &MigrationCheckpoint,
    ) -> Result<MigrationReport, MigrationError> {
        self.mark_complete();
        self.sink.finish()?;
        self.note_checkpoint(cp);
        let mut progress = self.progress.lock();
        progress.done = cp.done;
        progress.total = Some(cp.total.unwrap_or(cp.done).max(cp.done));
        progress.batches = cp.batches;
        progress.runs = cp.runs;
        progress.eta = Some(Duration::ZERO);
        Ok(MigrationReport {
            done: cp.done,
            written: 0,
            batches: cp.batches,
            batches_this_run: 0,
            runs: cp.runs,
            was_complete: true,
        })
    }

    /// Reports the run's start: progress, log, the action's status, the batch hook.
    fn announce_run(&self, run: &RunState, ctx: Option<&dyn Reporter>) {
        let checkpoint = &run.checkpoint;
        let total = run.total;
        {
            let mut progress = self.progress.lock();
            progress.state = MigrationState::Running;
            progress.total = total;
            progress.done = checkpoint.done;
            progress.batches = checkpoint.batches;
            progress.runs = checkpoint.runs;
            progress.last_key.clone_from(&checkpoint.last_key);
            progress.rows_per_sec = None;
            progress.eta = None;
        }
        let resumed = checkpoint.runs > 1;
        tracing::info!(
            target: "layout_core::migration",
            migration = %self.name,
            done = checkpoint.done,
            total = ?total,
            run = checkpoint.runs,
            "background migration {}",
            if resumed { "resumed" } else { "started" }
        );
        if let Some(ctx) = ctx {
            ctx.message(format!(
                "Background migration {} {} at {} of {} rows.",
                self.name,
                if resumed { "resumed" } else { "started" },
                checkpoint.done,
                total.map_or_else(|| "?".to_owned(), |t| t.to_string())
            ));
            ctx.progress(checkpoint.done, total);
        }
        self.emit(&BatchEvent::RunStarted {
            checkpoint: checkpoint.clone(),
        });
        if let Some(ctx) = ctx {
            ctx.elapsed(checkpoint.active_elapsed(0, false));
        }
    }

    /// Before a batch: waits while paused (`Err` when cancelled), then keeps to the rate
    /// ceiling and the latency budget in force now. Returns the batch size in force.
    fn pace_next_batch(
        &self,
        run: &mut RunState,
        ctx: Option<&dyn Reporter>,
    ) -> Result<usize, MigrationError> {
        if let Err(Interrupt::Cancelled) = self.wait_while_paused(ctx) {
            tracing::info!(target: "layout_core::migration", migration = %self.name, done = run.checkpoint.done, "background migration cancelled");
            return Err(MigrationError::Cancelled {
                migration: self.name.clone(),
                done: run.checkpoint.done,
            });
        }
        let tuning = self.control.tuning();
        if run.rate_window.0 != tuning.max_rows_per_sec {
            run.rate_window = (
                tuning.max_rows_per_sec,
                self.clock.now(),
                run.checkpoint.done,
            );
        }
        self.throttle(&run.rate_window, run.checkpoint.done);
        run.latency_delay = self.latency_wait(tuning.latency_budget, run.latency_delay);
        Ok(tuning.batch_size)
    }

    /// Copies one batch and moves the run to the checkpoint stored after it. `Ok(true)`
    /// when the batch was committed; `Ok(false)` when the stored checkpoint changed under
    /// the run (everything was deleted meanwhile), which continues from what is stored.
    fn copy_batch(&self, run: &mut RunState, batch_size: usize) -> Result<bool, MigrationError> {
        self.emit(&BatchEvent::BatchStarted {
            index: run.checkpoint.batches,
        });
        crate::crash_point::hit(CRASH_BEFORE_BATCH);
        let outcome = match self.copy_in_store(&run.checkpoint, batch_size)? {
            Some(outcome) => outcome,
            None => self.copy_through_source(&run.checkpoint, batch_size)?,
        };
        match outcome {
            BatchCopy::Copied {
                next,
                written: rows,
            } => {
                crate::crash_point::hit(CRASH_BATCH_COMMITTED);
                run.written += rows;
                run.checkpoint = next;
                self.note_checkpoint(&run.checkpoint);
                Ok(true)
            }
            BatchCopy::Conflict { current } => {
                // Everything was deleted meanwhile (or the migration was reset):
                // continue from what is stored.
                match current {
                    Some(current) => {
                        tracing::info!(target: "layout_core::migration", migration = %self.name, "checkpoint changed under the migration; continuing from it");
                        run.checkpoint = current;
                        self.note_checkpoint(&run.checkpoint);
                        Ok(false)
                    }
                    None => Err(MigrationError::Reset {
                        migration: self.name.clone(),
                    }),
                }
            }
        }
    }

    /// Reports a committed batch: progress (rate, ETA), log, the action's status (a
    /// message each tenth of the total), the batch hook.
    fn report_batch(&self, run: &mut RunState, ctx: Option<&dyn Reporter>) {
        let checkpoint = &run.checkpoint;
        let (rate, eta) = self.rate_and_eta(
            run.run_start,
            checkpoint.done - run.done_at_start,
            checkpoint.done,
            run.total,
        );
        run.total = checkpoint
            .total
            .or(run.total)
            .map(|t| t.max(checkpoint.done));
        let total = run.total;
        {
            let mut progress = self.progress.lock();
            progress.done = checkpoint.done;
            progress.total = total;
            progress.latency_delay = run.latency_delay;
            progress.batches = checkpoint.batches;
            progress.written = run.written;
            progress.last_key.clone_from(&checkpoint.last_key);
            progress.rows_per_sec = rate;
            progress.eta = eta;
        }
        tracing::debug!(
            target: "layout_core::migration",
            migration = %self.name,
            batch = checkpoint.batches,
            done = checkpoint.done,
            "batch committed"
        );
        if let Some(ctx) = ctx {
            ctx.progress(checkpoint.done, total);
            ctx.elapsed(checkpoint.active_elapsed(0, false));
            let now_decile = decile(checkpoint.done, total);
            if now_decile > run.reported_decile && !checkpoint.complete {
                run.reported_decile = now_decile;
                ctx.message(format!(
                    "Background migration {}: {} of {} rows{}{}.",
                    self.name,
                    checkpoint.done,
                    total.map_or_else(|| "?".to_owned(), |t| t.to_string()),
                    rate.map_or_else(String::new, |r| format!(", {r:.0} rows/s")),
                    eta.map_or_else(String::new, |e| format!(", about {}s left", e.as_secs())),
                ));
            }
        }
        self.emit(&BatchEvent::BatchCommitted {
            index: checkpoint.batches - 1,
            done: checkpoint.done,
        });
        crate::crash_point::hit(CRASH_BATCH_REPORTED);
    }

    /// Ends a run whose copy is complete: stops new tombstones, finishes the sink,
    /// reports.
    fn finish_run(
        &self,
        run: &RunState,
        ctx: Option<&dyn Reporter>,
    ) -> Result<MigrationReport, MigrationError> {
        let checkpoint = &run.checkpoint;
        let total = run.total;
        self.mark_complete();
        crate::crash_point::hit(CRASH_BEFORE_FINISH);
        self.sink.finish()?;
        crate::crash_point::hit(CRASH_FINISHED);
        {
            let mut progress = self.progress.lock();
            progress.eta = Some(Duration::ZERO);
            progress.total = Some(progress.total.unwrap_or(0).max(checkpoint.done));
            progress.latency_delay = Duration::ZERO;
        }
        self.emit(&BatchEvent::Completed {
            done: checkpoint.done,
        });
        tracing::info!(
            target: "layout_core::migration",
            migration = %self.name,
            done = checkpoint.done,
            batches = checkpoint.batches,
            "background migration complete"
        );
        if let Some(ctx) = ctx {
            ctx.progress(
                checkpoint.done,
                Some(checkpoint.done.max(total.unwrap_or(0))),
            );
            ctx.message(format!(
                "Background migration {} complete: {} rows in {} batches.",
                self.name, checkpoint.done, checkpoint.batches
            ));
        }
        Ok(MigrationReport {
            done: checkpoint.done,
            written: run.written,
            batches: checkpoint.batches,
            batches_this_run: checkpoint.batches - run.batches_at_start,
            runs: checkpoint.runs,
            was_complete: false,
        })
    }

    /// One batch through the sink's own copy, when the source and the sink are one store
    /// and it supports that.
    fn copy_in_store(
        &self,
        checkpoint: &MigrationCheckpoint,
        batch_size: usize,
    ) -> Result<Option<BatchCopy>, MigrationError> {
        if !self.in_store {
            return Ok(None);
        }
        let transform = |row: Row| self.transform_row(row);
        let transform: Option<&dyn Fn(Row) -> Result<Option<Row>, MigrationError>> =
            self.transform.as_ref().map(|_| &transform as _);
        self.sink
            .copy_next_batch(checkpoint, batch_size, transform, self.clock.now_ms())
    }

    /// One batch: read from the source, transform, write to the sink.
    fn copy_through_source(
        &self,
        checkpoint: &MigrationCheckpoint,
        batch_size: usize,
    ) -> Result<BatchCopy, MigrationError> {
        let rows = self
            .source
            .read_batch(checkpoint.last_key.as_deref(), batch_size)?;
        let next = checkpoint.after_batch(
            rows.len(),
            rows.last().map(|r| r.key.as_slice()),
            batch_size,
            self.clock.now_ms(),
        );
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.extend(self.transform_row(row)?);
        }
        Ok(
            match self.sink.write_batch(Some(checkpoint), &out, &next)? {
                BatchWrite::Written { rows } => BatchCopy::Copied {
                    next,
                    written: rows,
                },
                BatchWrite::Conflict { current } => BatchCopy::Conflict { current },
            },
        )
    }

    /// Stops new tombstones: writes in flight (which may have decided to leave one) finish
    /// first, so [`MigrationSink::finish`] drops every tombstone.
    fn mark_complete(&self) {
        let _fence = self.fence.started.write();
        self.completed.store(true, Ordering::Release);
    }

    /// The transform of one row, checked: `Ok(None)` drops it.
    fn transform_row(&self, row: Row) -> Result<Option<Row>, MigrationError> {
        let Some(transform) = &self.transform else {
            return Ok(Some(row));
        };
        let key = row.key.clone();
        match transform(row) {
            Ok(Some(new)) if new.key == key => Ok(Some(new)),
            Ok(Some(new)) => Err(MigrationError::TransformChangedKey {
                migration: self.name.clone(),
                from: printable(&key),
                to: printable(&new.key),
            }),
            Ok(None) => Ok(None),
            Err(source) => Err(MigrationError::Transform {
                migration: self.name.clone(),
                key: printable(&key),
                source,
            }),
        }
    }
}

fn decile(done: u64, total: Option<u64>) -> u64 {
    match total {
        Some(t) if t > 0 => done.saturating_mul(10) / t,
        _ => 0,
    }
}
