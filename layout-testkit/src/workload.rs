//! A workload recorder and checker for end-to-end upgrade tests: client threads record
//! every write they send and how it ended, and at the end the checker compares what the
//! service returns with what was *acknowledged*.
//!
//! The rules the checker applies, per key:
//!
//! - every acknowledged write is present with exactly its value, unless a later
//!   acknowledged write or delete superseded it;
//! - a write whose outcome is unknown (*in doubt*: the request was sent, no answer came,
//!   e.g. the node was killed with SIGKILL mid-request) may or may not have been applied: either
//!   the value before it or its own value is accepted;
//! - a refused write (the service answered "no", e.g. `prepared`) was not applied;
//! - nothing else may appear: no value that was never written to that key, no key that
//!   was never written, no deleted key coming back.
//!
//! "Later" is real-time order: operation A precedes B when A's outcome was recorded
//! before B was begun. Two overlapping operations on one key may land in either order,
//! and the checker accepts both. Each operation is counted in the *phase* that was
//! current when it began, so a test can require a minimum number of acknowledged writes
//! per phase (and refusals where writes must be refused).
//!
//! ```
//! use layout_testkit::workload::{Expectations, Recorder};
//!
//! let recorder = Recorder::new("wl/");
//! recorder.set_phase("old version");
//! recorder.begin_put("wl/a", "1").acknowledged(Some(1));
//! recorder.begin_put("wl/b", "2").in_doubt("connection reset");
//! recorder.set_phase("prepared");
//! recorder.begin_put("wl/c", "3").refused("prepared");
//!
//! // What the service returns: the in-doubt write was applied, the refused one not.
//! let listing = vec![("wl/a".to_owned(), "1".to_owned()), ("wl/b".to_owned(), "2".to_owned())];
//! let expect = Expectations::new().min_acks("old version", 1).no_acks("prepared");
//! let report = recorder.check_listing(&expect, listing).expect("nothing lost");
//! assert_eq!(report.keys_checked, 3);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// What an operation does to its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Write {
    /// Sets the key to this value.
    Put(String),
    /// Removes the key.
    Delete,
}

impl Write {
    /// The state the key has after this operation: its value, or `None` when deleted.
    pub fn resulting_value(&self) -> Option<&str> {
        match self {
            Write::Put(value) => Some(value),
            Write::Delete => None,
        }
    }
}

impl fmt::Display for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Write::Put(value) => write!(f, "put {value:?}"),
            Write::Delete => f.write_str("delete"),
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Not yet resolved.
    Pending,
    /// The service acknowledged it, at this applied index when it reports one.
    Acknowledged {
        /// The service's applied index of the write.
        applied_index: Option<u64>,
    },
    /// The service refused it: it was not applied.
    Refused {
        /// Why (the error kind or message).
        reason: String,
    },
    /// Nobody knows whether it was applied (sent, no answer).
    InDoubt {
        /// What happened instead of an answer.
        reason: String,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Pending => f.write_str("pending"),
            Outcome::Acknowledged {
                applied_index: Some(i),
            } => write!(f, "acknowledged at index {i}"),
            Outcome::Acknowledged {
                applied_index: None,
            } => f.write_str("acknowledged"),
            Outcome::Refused { reason } => write!(f, "refused ({reason})"),
            Outcome::InDoubt { reason } => write!(f, "in doubt ({reason})"),
        }
    }
}

/// One recorded operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The key.
    pub key: String,
    /// What it does.
    pub write: Write,
    /// The phase that was current when it began.
    pub phase: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Logical time it began (a counter shared by every thread of the recorder).
    pub began: u64,
    /// Logical time its outcome was recorded (`None` while pending).
    pub ended: Option<u64>,
}

impl Operation {
    /// Whether `self` certainly took effect (if at all) before `later` began.
    fn precedes(&self, later: &Operation) -> bool {
        self.ended.is_some_and(|ended| ended < later.began)
    }

    fn is_acknowledged(&self) -> bool {
        matches!(self.outcome, Outcome::Acknowledged { .. })
    }

    /// Acknowledged, in doubt, or still pending: it may have been applied.
    fn may_be_applied(&self) -> bool {
        !matches!(self.outcome, Outcome::Refused { .. })
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {:?} in phase {:?}, {}",
            self.write, self.key, self.phase, self.outcome
        )
    }
}

/// Counts of one phase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PhaseCounts {
    /// The phase.
    pub phase: String,
    /// Acknowledged operations.
    pub acknowledged: usize,
    /// Refused operations.
    pub refused: usize,
    /// Operations whose outcome is unknown (or that were never resolved).
    pub in_doubt: usize,
}

impl fmt::Display for PhaseCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} acknowledged, {} refused, {} in doubt",
            self.phase, self.acknowledged, self.refused, self.in_doubt
        )
    }
}

#[derive(Debug, Default)]
struct History {
    phase: String,
    /// Phases in the order they were first made current.
    phases: Vec<String>,
    clock: u64,
    operations: Vec<Operation>,
}

impl History {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

/// Records the operations of one or more client threads; cheap to clone (every clone
/// records into the same history).
#[derive(Debug, Clone)]
pub struct Recorder {
    prefix: String,
    history: Arc<Mutex<History>>,
}

impl Recorder {
    /// A recorder of operations on keys starting with `prefix`; when checking a listing,
    /// keys outside the prefix are ignored. The first phase is `"initial"`.
    pub fn new(prefix: impl Into<String>) -> Self {
        let recorder = Self {
            prefix: prefix.into(),
            history: Arc::default(),
        };
        recorder.set_phase("initial");
        recorder
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn lock(&self) -> MutexGuard<'_, History> {
        // A panicking client thread must not hide what the others recorded.
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `phase` current: operations begun from now on count in it.
    pub fn set_phase(&self, phase: impl Into<String>) {
        let phase = phase.into();
        let mut history = self.lock();
        if !history.phases.contains(&phase) {
            history.phases.push(phase.clone());
        }
        history.phase = phase;
    }

    /// The current phase.
    pub fn phase(&self) -> String {
        self.lock().phase.clone()
    }

    fn begin(&self, key: &str, write: Write) -> Pending {
        let mut history = self.lock();
        let began = history.tick();
        let phase = history.phase.clone();
        history.operations.push(Operation {
            key: key.to_owned(),
            write,
            phase,
            outcome: Outcome::Pending,
            began,
            ended: None,
        });
        Pending {
            recorder: self.clone(),
            index: history.operations.len() - 1,
            resolved: false,
        }
    }

    /// Records that a put of `key` = `value` is about to be sent; resolve the returned
    /// [`Pending`] with its outcome.
    pub fn begin_put(&self, key: &str, value: &str) -> Pending {
        self.begin(key, Write::Put(value.to_owned()))
    }

    /// Records that a delete of `key` is about to be sent.
    pub fn begin_delete(&self, key: &str) -> Pending {
        self.begin(key, Write::Delete)
    }

    fn resolve(&self, index: usize, outcome: Outcome) {
        let mut history = self.lock();
        let ended = history.tick();
        if let Some(op) = history.operations.get_mut(index) {
            op.outcome = outcome;
            op.ended = Some(ended);
        }
    }

    /// Every operation recorded so far, in the order begun.
    pub fn operations(&self) -> Vec<Operation> {
        self.lock().operations.clone()
    }

    /// The counts of every phase, in the order the phases were first made current.
    pub fn phase_counts(&self) -> Vec<PhaseCounts> {
        let history = self.lock();
        let mut counts: Vec<PhaseCounts> = history
            .phases
            .iter()
            .map(|phase| PhaseCounts {
                phase: phase.clone(),
                ..PhaseCounts::default()
            })
            .collect();
        for op in &history.operations {
            let Some(c) = counts.iter_mut().find(|c| c.phase == op.phase) else {
                continue;
            };
            match op.outcome {
                Outcome::Acknowledged { .. } => c.acknowledged += 1,
                Outcome::Refused { .. } => c.refused += 1,
                Outcome::InDoubt { .. } | Outcome::Pending => c.in_doubt += 1,
            }
        }
        counts
    }

    /// The counts of `phase` (zero when it never was current).
    pub fn counts(&self, phase: &str) -> PhaseCounts {
        self.phase_counts()
            .into_iter()
            .find(|c| c.phase == phase)
            .unwrap_or_else(|| PhaseCounts {
                phase: phase.to_owned(),
                ..PhaseCounts::default()
            })
    }

    /// Checks a complete listing of the keys under the prefix (what the service returns
    /// for a prefix scan): every recorded key as the rules of the [module](self) say, and
    /// no key that was never written. Keys outside the prefix are ignored.
    pub fn check_listing(
        &self,
        expect: &Expectations,
        listing: impl IntoIterator<Item = (String, String)>,
    ) -> Result<CheckReport, CheckFailure> {
        let mut found = BTreeMap::new();
        let mut discrepancies = Vec::new();
        for (key, value) in listing {
            if !key.starts_with(&self.prefix) {
                continue;
            }
            if let Some(first) = found.insert(key.clone(), value.clone()) {
                discrepancies.push(Discrepancy::DuplicateKey {
                    key,
                    values: vec![first, value],
                });
            }
        }
        let history = self.lock();
        let keys: BTreeSet<&str> = history
            .operations
            .iter()
            .map(|op| op.key.as_str())
            .collect();
        for key in found.keys() {
            if !keys.contains(key.as_str()) {
                discrepancies.push(Discrepancy::UnknownKey {
                    key: key.clone(),
                    found: found[key].clone(),
                });
            }
        }
        drop(history);
        self.check(expect, discrepancies, |key| Ok(found.get(key).cloned()))
    }

    /// Checks every recorded key by looking it up with `get` (the value, `None` when
    /// absent, or an error). Unlike [`check_listing`](Self::check_listing) it cannot see
    /// keys that were never written.
    pub fn check_lookup(
        &self,
        expect: &Expectations,
        get: impl FnMut(&str) -> Result<Option<String>, String>,
    ) -> Result<CheckReport, CheckFailure> {
        self.check(expect, Vec::new(), get)
    }

    fn check(
        &self,
        expect: &Expectations,
        mut discrepancies: Vec<Discrepancy>,
        mut get: impl FnMut(&str) -> Result<Option<String>, String>,
    ) -> Result<CheckReport, CheckFailure> {
        let operations = self.operations();
        let phases = self.phase_counts();
        let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
        for op in &operations {
            by_key.entry(op.key.as_str()).or_default().push(op);
        }
        let mut report = CheckReport {
            phases: phases.clone(),
            keys_checked: by_key.len(),
            in_doubt_applied: 0,
            in_doubt_not_applied: 0,
        };
        for (key, ops) in &by_key {
            match get(key) {
                Ok(found) => {
                    if let Some(d) = check_key(key, ops, found.as_deref(), &mut report) {
                        discrepancies.push(d);
                    }
                }
                Err(error) => discrepancies.push(Discrepancy::ReadFailed {
                    key: (*key).to_owned(),
                    error,
                }),
            }
        }
        discrepancies.extend(expect.check(&phases));
        if discrepancies.is_empty() {
            Ok(report)
        } else {
            Err(CheckFailure {
                discrepancies,
                phases,
            })
        }
    }
}

/// An operation that was begun and not yet resolved. Resolve it with its outcome;
/// dropping it unresolved records it as in doubt.
#[derive(Debug)]
#[must_use = "resolve the operation with its outcome (dropping it records it as in doubt)"]
pub struct Pending {
    recorder: Recorder,
    index: usize,
    resolved: bool,
}

impl Pending {
    fn finish(mut self, outcome: Outcome) {
        self.resolved = true;
        self.recorder.resolve(self.index, outcome);
    }

    /// The service acknowledged it (at `applied_index` when it reports one).
    pub fn acknowledged(self, applied_index: Option<u64>) {
        self.finish(Outcome::Acknowledged { applied_index });
    }

    /// The service refused it: it was not applied.
    pub fn refused(self, reason: impl Into<String>) {
        self.finish(Outcome::Refused {
            reason: reason.into(),
        });
    }

    /// No answer came: it may or may not have been applied.
    pub fn in_doubt(self, reason: impl Into<String>) {
        self.finish(Outcome::InDoubt {
            reason: reason.into(),
        });
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.resolved {
            self.recorder.resolve(
                self.index,
                Outcome::InDoubt {
                    reason: "never resolved".to_owned(),
                },
            );
        }
    }
}

/// A state a key may be in after the recorded operations.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Expected {
    /// The value, or `None` for absent.
    pub value: Option<String>,
    /// The operation that leaves it (`None`: the key's state before any operation).
    pub by: Option<Operation>,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.value, &self.by) {
            (Some(v), Some(op)) => write!(f, "{v:?} ({op})"),
            (None, Some(op)) => write!(f, "absent ({op})"),
            (value, None) => write!(f, "{value:?} (never written)"),
        }
    }
}

/// The states `key` may be in, given its operations: the result of every operation that
/// may have been applied and that no acknowledged operation certainly followed; and
/// absent when no acknowledged operation certainly happened.
fn acceptable(ops: &[&Operation]) -> Vec<Expected> {
    let mut states = Vec::new();
    let superseded = |op: &Operation| {
        ops.iter()
            .any(|later| later.is_acknowledged() && op.precedes(later))
    };
    for op in ops.iter().filter(|op| op.may_be_applied()) {
        if !superseded(op) {
            states.push(Expected {
                value: op.write.resulting_value().map(str::to_owned),
                by: Some((*op).clone()),
            });
        }
    }
    if !ops.iter().any(|op| op.is_acknowledged()) {
        states.push(Expected {
            value: None,
            by: None,
        });
    }
    states
}

fn check_key(
    key: &str,
    ops: &[&Operation],
    found: Option<&str>,
    report: &mut CheckReport,
) -> Option<Discrepancy> {
    let states = acceptable(ops);
    let in_doubt = |s: &Expected| s.by.as_ref().is_some_and(|op| !op.is_acknowledged());
    let matching: Vec<&Expected> = states
        .iter()
        .filter(|s| s.value.as_deref() == found)
        .collect();
    if !matching.is_empty() {
        // Applied only when nothing but an in-doubt operation explains what was found.
        if matching.iter().all(|s| in_doubt(s)) {
            report.in_doubt_applied += 1;
        } else if states.iter().any(in_doubt) {
            report.in_doubt_not_applied += 1;
        }
        return None;
    }
    let key = key.to_owned();
    let expected = states.clone();
    let Some(found) = found else {
        return Some(Discrepancy::Lost { key, expected });
    };
    let writer = ops
        .iter()
        .rev()
        .find(|op| op.write.resulting_value() == Some(found));
    Some(match writer {
        None => Discrepancy::NeverWritten {
            key,
            found: found.to_owned(),
            expected,
        },
        Some(op) if !op.may_be_applied() => Discrepancy::RefusedApplied {
            key,
            found: found.to_owned(),
            refused: (*op).clone(),
        },
        Some(op) if expected.iter().all(|s| s.value.is_none()) => Discrepancy::Reappeared {
            key,
            found: found.to_owned(),
            written: (*op).clone(),
            deleted: expected.into_iter().filter_map(|s| s.by).collect(),
        },
        Some(op) => Discrepancy::Superseded {
            key,
            found: found.to_owned(),
            written: (*op).clone(),
            expected,
        },
    })
}

/// What the per-phase counts must be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Expectations {
    min_acks: BTreeMap<String, usize>,
    min_refusals: BTreeMap<String, usize>,
    no_acks: BTreeSet<String>,
}

impl Expectations {
    /// No expectations.
    pub fn new() -> Self {
        Self::default()
    }

    /// At least `count` acknowledged operations in `phase`.
    pub fn min_acks(mut self, phase: impl Into<String>, count: usize) -> Self {
        self.min_acks.insert(phase.into(), count);
        self
    }

    /// At least `count` refused operations in `phase`.
    pub fn min_refusals(mut self, phase: impl Into<String>, count: usize) -> Self {
        self.min_refusals.insert(phase.into(), count);
        self
    }

    /// No acknowledged operation in `phase` (writes there must all be refused).
    pub fn no_acks(mut self, phase: impl Into<String>) -> Self {
        self.no_acks.insert(phase.into());
        self
    }

    fn check(&self, phases: &[PhaseCounts]) -> Vec<Discrepancy> {
        let counts = |phase: &str| {
            phases
                .iter()
                .find(|c| c.phase == phase)
                .cloned()
                .unwrap_or_else(|| PhaseCounts {
                    phase: phase.to_owned(),
                    ..PhaseCounts::default()
                })
        };
        let mut out = Vec::new();
        for (phase, &required) in &self.min_acks {
            let c = counts(phase);
            if c.acknowledged < required {
                out.push(Discrepancy::TooFewAcks {
                    phase: phase.clone(),
                    acknowledged: c.acknowledged,
                    required,
                });
            }
        }
        for (phase, &required) in &self.min_refusals {
            let c = counts(phase);
            if c.refused < required {
                out.push(Discrepancy::TooFewRefusals {
                    phase: phase.clone(),
                    refused: c.refused,
                    required,
                });
            }
        }
        for phase in &self.no_acks {
            let c = counts(phase);
            if c.acknowledged > 0 {
                out.push(Discrepancy::UnexpectedAcks {
                    phase: phase.clone(),
                    acknowledged: c.acknowledged,
                });
            }
        }
        out
    }
}

/// One way the service's state or the workload's counts differ from what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Discrepancy {
    /// The key is absent, but an acknowledged write must be there.
    Lost {
        /// The key.
        key: String,
        /// The states it may be in.
        expected: Vec<Expected>,
    },
    /// The key holds a value an acknowledged later operation replaced (a lost update).
    Superseded {
        /// The key.
        key: String,
        /// The value found.
        found: String,
        /// The operation that wrote it.
        written: Operation,
        /// The states it may be in.
        expected: Vec<Expected>,
    },
    /// The key holds a value that was never written to it (altered or corrupted).
    NeverWritten {
        /// The key.
        key: String,
        /// The value found.
        found: String,
        /// The states it may be in.
        expected: Vec<Expected>,
    },
    /// The key holds the value of a write the service refused.
    RefusedApplied {
        /// The key.
        key: String,
        /// The value found.
        found: String,
        /// The refused operation.
        refused: Operation,
    },
    /// An acknowledged delete removed the key, but it is back.
    Reappeared {
        /// The key.
        key: String,
        /// The value found.
        found: String,
        /// The operation that wrote it.
        written: Operation,
        /// The deletes that leave it absent.
        deleted: Vec<Operation>,
    },
    /// The listing holds a key no operation wrote.
    UnknownKey {
        /// The key.
        key: String,
        /// Its value.
        found: String,
    },
    /// The listing holds a key twice.
    DuplicateKey {
        /// The key.
        key: String,
        /// Its values.
        values: Vec<String>,
    },
    /// Reading the key failed.
    ReadFailed {
        /// The key.
        key: String,
        /// The error.
        error: String,
    },
    /// A phase has fewer acknowledged operations than required.
    TooFewAcks {
        /// The phase.
        phase: String,
        /// How many.
        acknowledged: usize,
        /// How many were required.
        required: usize,
    },
    /// A phase has fewer refused operations than required.
    TooFewRefusals {
        /// The phase.
        phase: String,
        /// How many.
        refused: usize,
        /// How many were required.
        required: usize,
    },
    /// A phase where every write must be refused has acknowledged ones.
    UnexpectedAcks {
        /// The phase.
        phase: String,
        /// How many.
        acknowledged: usize,
    },
}

fn list(states: &[Expected]) -> String {
    states
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

impl fmt::Display for Discrepancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lost { key, expected } => write!(
                f,
                "key {key:?}: acknowledged write lost: found nothing, expected {}",
                list(expected)
            ),
            Self::Superseded {
                key,
                found,
                written,
                expected,
            } => write!(
                f,
                "key {key:?}: found {found:?} from the superseded {written}; expected {}",
                list(expected)
            ),
            Self::NeverWritten {
                key,
                found,
                expected,
            } => write!(
                f,
                "key {key:?}: found {found:?}, which was never written to it; expected {}",
                list(expected)
            ),
            Self::RefusedApplied {
                key,
                found,
                refused,
            } => write!(
                f,
                "key {key:?}: found {found:?}, written by a refused operation: {refused}"
            ),
            Self::Reappeared {
                key,
                found,
                written,
                deleted,
            } => write!(
                f,
                "key {key:?}: deleted key reappeared with {found:?} (from the {written}); \
                 deleted by {}",
                deleted
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            Self::UnknownKey { key, found } => {
                write!(f, "key {key:?}: never written, but found with {found:?}")
            }
            Self::DuplicateKey { key, values } => {
                write!(f, "key {key:?}: listed more than once, with {values:?}")
            }
            Self::ReadFailed { key, error } => write!(f, "key {key:?}: reading failed: {error}"),
            Self::TooFewAcks {
                phase,
                acknowledged,
                required,
            } => write!(
                f,
                "phase {phase:?}: {acknowledged} acknowledged operations, at least {required} \
                 required"
            ),
            Self::TooFewRefusals {
                phase,
                refused,
                required,
            } => write!(
                f,
                "phase {phase:?}: {refused} refused operations, at least {required} required"
            ),
            Self::UnexpectedAcks {
                phase,
                acknowledged,
            } => write!(
                f,
                "phase {phase:?}: {acknowledged} operations acknowledged where every write must \
                 be refused"
            ),
        }
    }
}

/// What a passed check saw.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckReport {
    /// The counts per phase, in the order the phases were first made current.
    pub phases: Vec<PhaseCounts>,
    /// How many distinct keys were checked.
    pub keys_checked: usize,
    /// Keys whose final state is the result of an in-doubt operation (it was applied).
    pub in_doubt_applied: usize,
    /// Keys with an in-doubt operation whose result is not what was found (it was not
    /// applied, or an earlier state won).
    pub in_doubt_not_applied: usize,
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} keys checked, nothing lost or changed; in-doubt writes: {} applied, {} not",
            self.keys_checked, self.in_doubt_applied, self.in_doubt_not_applied
        )?;
        for phase in &self.phases {
            writeln!(f, "  {phase}")?;
        }
        Ok(())
    }
}

/// A failed check: every discrepancy, and the counts per phase.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckFailure {
    /// Every discrepancy found.
    pub discrepancies: Vec<Discrepancy>,
    /// The counts per phase.
    pub phases: Vec<PhaseCounts>,
}

impl CheckFailure {
    /// Whether some discrepancy satisfies `predicate`.
    pub fn has(&self, predicate: impl Fn(&Discrepancy) -> bool) -> bool {
        self.discrepancies.iter().any(predicate)
    }
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the workload check found {} discrepancies:",
            self.discrepancies.len()
        )?;
        for d in &self.discrepancies {
            writeln!(f, "  - {d}")?;
        }
        writeln!(f, "counts per phase:")?;
        for phase in &self.phases {
            writeln!(f, "  {phase}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CheckFailure {}

#[cfg(test)]
mod tests {
    use crate::workload::{CheckFailure, Discrepancy, Expectations, Recorder};

    fn listing(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Two phases: `k1` written twice, `k2` written then deleted, `k3` written once.
    fn history() -> Recorder {
        let r = Recorder::new("t/");
        r.set_phase("old");
        r.begin_put("t/k1", "a").acknowledged(Some(1));
        r.begin_put("t/k2", "b").acknowledged(Some(2));
        r.set_phase("new");
        r.begin_put("t/k1", "c").acknowledged(Some(3));
        r.begin_delete("t/k2").acknowledged(Some(4));
        r.begin_put("t/k3", "d").acknowledged(Some(5));
        r
    }

    fn fails(r: &Recorder, items: &[(&str, &str)]) -> CheckFailure {
        r.check_listing(&Expectations::new(), listing(items))
            .expect_err("the check must fail")
    }

    #[test]
    fn passes_when_every_acknowledged_write_is_present_with_its_latest_value() {
        let report = history()
            .check_listing(
                &Expectations::new().min_acks("old", 2).min_acks("new", 3),
                listing(&[("t/k1", "c"), ("t/k3", "d"), ("other/x", "ignored")]),
            )
            .unwrap();
        assert_eq!(report.keys_checked, 3);
        assert_eq!(report.phases.len(), 3, "{report}"); // initial, old, new
        assert_eq!(report.phases[1].acknowledged, 2);
        assert_eq!(report.phases[2].acknowledged, 3);
    }

    #[test]
    fn fails_when_an_acknowledged_write_is_dropped() {
        let failure = fails(&history(), &[("t/k1", "c")]);
        assert_eq!(failure.discrepancies.len(), 1, "{failure}");
        let Discrepancy::Lost { key, expected } = &failure.discrepancies[0] else {
            panic!("{failure}");
        };
        assert_eq!(key, "t/k3");
        assert_eq!(expected.len(), 1);
        assert_eq!(expected[0].value.as_deref(), Some("d"));
        let by = expected[0].by.as_ref().unwrap();
        assert_eq!(by.phase, "new");
        let text = failure.to_string();
        assert!(
            text.contains("t/k3") && text.contains("\"d\"") && text.contains("new"),
            "{text}"
        );
    }

    #[test]
    fn fails_when_a_value_is_altered() {
        let failure = fails(&history(), &[("t/k1", "c"), ("t/k3", "D")]);
        assert!(
            failure.has(|d| matches!(d, Discrepancy::NeverWritten { key, found, .. }
                if key == "t/k3" && found == "D")),
            "{failure}"
        );
    }

    #[test]
    fn fails_when_a_superseded_value_comes_back() {
        let failure = fails(&history(), &[("t/k1", "a"), ("t/k3", "d")]);
        assert!(
            failure.has(
                |d| matches!(d, Discrepancy::Superseded { key, found, written, .. }
                if key == "t/k1" && found == "a" && written.phase == "old")
            ),
            "{failure}"
        );
    }

    #[test]
    fn fails_when_a_deleted_key_reappears() {
        let failure = fails(&history(), &[("t/k1", "c"), ("t/k2", "b"), ("t/k3", "d")]);
        assert!(
            failure.has(
                |d| matches!(d, Discrepancy::Reappeared { key, found, deleted, .. }
                if key == "t/k2" && found == "b" && deleted[0].phase == "new")
            ),
            "{failure}"
        );
        assert!(failure.to_string().contains("deleted key reappeared"));
    }

    #[test]
    fn fails_when_a_key_was_never_written() {
        let failure = fails(&history(), &[("t/k1", "c"), ("t/k3", "d"), ("t/zz", "x")]);
        assert!(
            failure.has(|d| matches!(d, Discrepancy::UnknownKey { key, .. } if key == "t/zz")),
            "{failure}"
        );
    }

    #[test]
    fn fails_when_a_phase_has_too_few_acks() {
        let failure = history()
            .check_listing(
                &Expectations::new()
                    .min_acks("old", 3)
                    .min_acks("missing", 1),
                listing(&[("t/k1", "c"), ("t/k3", "d")]),
            )
            .unwrap_err();
        assert_eq!(
            failure.discrepancies,
            vec![
                Discrepancy::TooFewAcks {
                    phase: "missing".to_owned(),
                    acknowledged: 0,
                    required: 1
                },
                Discrepancy::TooFewAcks {
                    phase: "old".to_owned(),
                    acknowledged: 2,
                    required: 3
                },
            ]
        );
    }

    #[test]
    fn refused_writes_count_apart_and_must_not_be_applied() {
        let r = history();
        r.set_phase("prepared");
        r.begin_put("t/k4", "refused").refused("prepared");
        r.begin_put("t/k1", "refused too").refused("prepared");
        let expect = Expectations::new()
            .no_acks("prepared")
            .min_refusals("prepared", 2);
        let ok = listing(&[("t/k1", "c"), ("t/k3", "d")]);
        r.check_listing(&expect, ok).unwrap();

        let failure = fails(&r, &[("t/k1", "c"), ("t/k3", "d"), ("t/k4", "refused")]);
        assert!(
            failure.has(|d| matches!(d, Discrepancy::RefusedApplied { key, .. } if key == "t/k4")),
            "{failure}"
        );
        let failure = r
            .check_listing(
                &Expectations::new()
                    .min_refusals("prepared", 3)
                    .no_acks("new"),
                listing(&[("t/k1", "c"), ("t/k3", "d")]),
            )
            .unwrap_err();
        assert!(failure.has(|d| matches!(d, Discrepancy::TooFewRefusals { refused: 2, .. })));
        assert!(failure.has(|d| matches!(
            d,
            Discrepancy::UnexpectedAcks {
                acknowledged: 3,
                ..
            }
        )));
    }

    #[test]
    fn an_in_doubt_write_passes_resolved_either_way() {
        let r = history();
        r.set_phase("crash");
        r.begin_put("t/k1", "e").in_doubt("node killed");
        r.begin_put("t/k5", "f").in_doubt("node killed");
        r.begin_delete("t/k3").in_doubt("node killed");
        // Nothing of the in-doubt writes applied.
        let report = r
            .check_listing(
                &Expectations::new(),
                listing(&[("t/k1", "c"), ("t/k3", "d")]),
            )
            .unwrap();
        assert_eq!(
            (report.in_doubt_applied, report.in_doubt_not_applied),
            (0, 3)
        );
        // All of them applied.
        let report = r
            .check_listing(
                &Expectations::new(),
                listing(&[("t/k1", "e"), ("t/k5", "f")]),
            )
            .unwrap();
        assert_eq!(
            (report.in_doubt_applied, report.in_doubt_not_applied),
            (3, 0)
        );
        assert_eq!(r.counts("crash").in_doubt, 3);
        // But not something else, and not the state before the last acknowledged write.
        let failure = fails(&r, &[("t/k1", "a"), ("t/k3", "d")]);
        assert!(failure.has(|d| matches!(d, Discrepancy::Superseded { key, .. } if key == "t/k1")));
    }

    #[test]
    fn an_in_doubt_write_counts_as_applied_only_when_nothing_else_explains_the_state() {
        let r = Recorder::new("");
        r.begin_put("k", "maybe").in_doubt("timeout");
        r.begin_delete("k").in_doubt("timeout");
        // Absent: the put may never have happened, so nothing in doubt is known applied.
        let report = r.check_listing(&Expectations::new(), listing(&[])).unwrap();
        assert_eq!(
            (report.in_doubt_applied, report.in_doubt_not_applied),
            (0, 1)
        );
        let report = r
            .check_listing(&Expectations::new(), listing(&[("k", "maybe")]))
            .unwrap();
        assert_eq!(
            (report.in_doubt_applied, report.in_doubt_not_applied),
            (1, 0)
        );
    }

    #[test]
    fn an_acknowledged_write_after_an_in_doubt_one_must_win() {
        let r = Recorder::new("");
        r.begin_put("k", "maybe").in_doubt("timeout");
        r.begin_put("k", "sure").acknowledged(None);
        r.check_listing(&Expectations::new(), listing(&[("k", "sure")]))
            .unwrap();
        let failure = fails(&r, &[("k", "maybe")]);
        assert!(
            failure.has(|d| matches!(d, Discrepancy::Superseded { .. })),
            "{failure}"
        );
    }

    #[test]
    fn overlapping_writes_of_one_key_may_land_in_either_order() {
        let r = Recorder::new("");
        let first = r.begin_put("k", "1");
        let second = r.begin_put("k", "2");
        second.acknowledged(Some(8));
        first.acknowledged(Some(7));
        for value in ["1", "2"] {
            r.check_listing(&Expectations::new(), listing(&[("k", value)]))
                .unwrap();
        }
        assert!(fails(&r, &[]).has(|d| matches!(d, Discrepancy::Lost { .. })));
    }

    #[test]
    fn an_unresolved_operation_is_in_doubt() {
        let r = Recorder::new("");
        drop(r.begin_put("k", "v"));
        assert_eq!(r.counts("initial").in_doubt, 1);
        r.check_listing(&Expectations::new(), listing(&[])).unwrap();
        r.check_listing(&Expectations::new(), listing(&[("k", "v")]))
            .unwrap();
    }

    #[test]
    fn a_lookup_check_reports_read_failures_with_the_key() {
        let r = history();
        let failure = r
            .check_lookup(&Expectations::new(), |key| match key {
                "t/k1" => Ok(Some("c".to_owned())),
                "t/k2" => Ok(None),
                _ => Err("connection refused".to_owned()),
            })
            .unwrap_err();
        assert_eq!(
            failure.discrepancies,
            vec![Discrepancy::ReadFailed {
                key: "t/k3".to_owned(),
                error: "connection refused".to_owned()
            }]
        );
    }

    #[test]
    fn threads_record_concurrently_without_losing_operations() {
        let r = Recorder::new("c/");
        r.set_phase("busy");
        std::thread::scope(|s| {
            for t in 0..4 {
                let r = r.clone();
                s.spawn(move || {
                    for i in 0..250 {
                        let key = format!("c/{t}-{}", i % 10);
                        r.begin_put(&key, &format!("{t}-{i}")).acknowledged(Some(i));
                    }
                });
            }
        });
        assert_eq!(r.counts("busy").acknowledged, 1000);
        let last: Vec<(String, String)> = (0..4)
            .flat_map(|t| {
                (240..250).map(move |i| (format!("c/{t}-{}", i % 10), format!("{t}-{i}")))
            })
            .collect();
        let report = r
            .check_listing(&Expectations::new().min_acks("busy", 1000), last)
            .unwrap();
        assert_eq!(report.keys_checked, 40);
    }
}
