//! The chain of a document's migrations: its steps, and the checks that make it a
//! chain (no gap, no overlap, no duplicate) when it is built.

use std::fmt;

use serde_json::Value;

use super::DocumentMigrator;
use crate::error::StepError;

/// The function of one step, forward or back.
type StepFn = Box<dyn Fn(Value) -> Result<Value, StepError> + Send + Sync>;

/// One step of a document's version chain: `from -> to`, and optionally the way back.
///
/// A step receives the whole document and returns it rewritten; the migrator sets the
/// version field to `to` afterwards (and to `from` after the way back), so a step does not
/// touch it. Steps must be deterministic functions of the document: with a shared store,
/// several processes may compute the same step and only one result is stored.
pub struct DocumentMigration {
    pub(super) from: u32,
    pub(super) to: u32,
    pub(super) name: String,
    pub(super) forward: StepFn,
    pub(super) backward: Option<StepFn>,
}

impl DocumentMigration {
    /// A step from version `from` to version `to` (`to > from`; checked by
    /// [`DocumentMigratorBuilder::build`]), named `v{from}->v{to}` unless renamed.
    pub fn new(
        from: u32,
        to: u32,
        forward: impl Fn(Value) -> Result<Value, StepError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            from,
            to,
            name: format!("v{from}->v{to}"),
            forward: Box::new(forward),
            backward: None,
        }
    }

    /// Names the step (used in logs and errors).
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Defines the way back, `to -> from`, used by [`DocumentMigrator::downgrade`].
    #[must_use]
    pub fn with_backward(
        mut self,
        backward: impl Fn(Value) -> Result<Value, StepError> + Send + Sync + 'static,
    ) -> Self {
        self.backward = Some(Box::new(backward));
        self
    }

    /// The version the step starts from.
    pub fn from_version(&self) -> u32 {
        self.from
    }

    /// The version it produces.
    pub fn to_version(&self) -> u32 {
        self.to
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it defines the way back.
    pub fn has_backward(&self) -> bool {
        self.backward.is_some()
    }
}

impl fmt::Debug for DocumentMigration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DocumentMigration")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("name", &self.name)
            .field("backward", &self.backward.is_some())
            .finish_non_exhaustive()
    }
}

/// A problem with a chain of document migrations, found when it is built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainProblem {
    /// A step whose target is not above its start.
    NotForward {
        /// The step.
        step: String,
        /// Its start.
        from: u32,
        /// Its target.
        to: u32,
    },
    /// Two steps start from the same version.
    Duplicate {
        /// The version.
        from: u32,
        /// The first step.
        first: String,
        /// The second.
        second: String,
    },
    /// A step starts below the base version: it could never run.
    BelowBase {
        /// The step.
        step: String,
        /// Its start.
        from: u32,
        /// The base version.
        base: u32,
    },
    /// No step leads from `from` to the next step's start.
    Gap {
        /// The version nothing leaves.
        from: u32,
        /// The next version a step starts from.
        next: u32,
    },
    /// A step starts inside the range an earlier step already covers.
    Overlap {
        /// The step.
        step: String,
        /// Its start.
        from: u32,
        /// The earlier step.
        earlier: String,
        /// The earlier step's target.
        earlier_to: u32,
    },
    /// The version field's name is empty.
    EmptyVersionField,
}

impl fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotForward { step, from, to } => write!(
                f,
                "step {step} goes from version {from} to {to}: a step must go forward"
            ),
            Self::Duplicate {
                from,
                first,
                second,
            } => write!(
                f,
                "two steps start from version {from}: {first} and {second}; merge them"
            ),
            Self::BelowBase { step, from, base } => write!(
                f,
                "step {step} starts from version {from}, below the base version {base}: it \
                 would never run"
            ),
            Self::Gap { from, next } => write!(
                f,
                "gap in the chain: no step leaves version {from} (the next step starts from \
                 {next})"
            ),
            Self::Overlap {
                step,
                from,
                earlier,
                earlier_to,
            } => write!(
                f,
                "step {step} starts from version {from}, which step {earlier} skips (it goes \
                 to {earlier_to})"
            ),
            Self::EmptyVersionField => f.write_str("the version field's name is empty"),
        }
    }
}

/// Every problem of a chain of document migrations, reported at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document migrations of {document}: {}", list(.problems))]
pub struct ChainError {
    /// The document kind.
    pub document: String,
    /// The problems.
    pub problems: Vec<ChainProblem>,
}

fn list(problems: &[ChainProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Builds a [`DocumentMigrator`]; see [`DocumentMigrator::builder`].
#[derive(Debug)]
pub struct DocumentMigratorBuilder {
    pub(super) document: String,
    pub(super) version_field: String,
    pub(super) base_version: u32,
    pub(super) steps: Vec<DocumentMigration>,
}

impl DocumentMigratorBuilder {
    /// The name of the version field (default `version`).
    #[must_use]
    pub fn version_field(mut self, field: impl Into<String>) -> Self {
        self.version_field = field.into();
        self
    }

    /// The version of a document without a version field, and the oldest the chain
    /// migrates from (default 0).
    #[must_use]
    pub fn base_version(mut self, version: u32) -> Self {
        self.base_version = version;
        self
    }

    /// Adds a step. Steps may be added in any order; [`build`](Self::build) orders and
    /// checks them.
    #[must_use]
    pub fn step(mut self, step: DocumentMigration) -> Self {
        self.steps.push(step);
        self
    }

    /// Adds a forward-only step `from -> to`.
    #[must_use]
    pub fn migration(
        self,
        from: u32,
        to: u32,
        forward: impl Fn(Value) -> Result<Value, StepError> + Send + Sync + 'static,
    ) -> Self {
        self.step(DocumentMigration::new(from, to, forward))
    }

    /// Checks the chain: every step goes forward, no two start from the same version,
    /// none starts below the base, and the steps link from the base version without a gap
    /// or an overlap. Reports every problem at once.
    pub fn build(self) -> Result<DocumentMigrator, ChainError> {
        let Self {
            document,
            version_field,
            base_version,
            mut steps,
        } = self;
        let mut problems = Vec::new();
        if version_field.is_empty() {
            problems.push(ChainProblem::EmptyVersionField);
        }
        for s in &steps {
            if s.to <= s.from {
                problems.push(ChainProblem::NotForward {
                    step: s.name.clone(),
                    from: s.from,
                    to: s.to,
                });
            }
            if s.from < base_version {
                problems.push(ChainProblem::BelowBase {
                    step: s.name.clone(),
                    from: s.from,
                    base: base_version,
                });
            }
        }
        steps.sort_by_key(|s| s.from);
        for pair in steps.windows(2) {
            if pair[0].from == pair[1].from {
                problems.push(ChainProblem::Duplicate {
                    from: pair[0].from,
                    first: pair[0].name.clone(),
                    second: pair[1].name.clone(),
                });
            }
        }
        if problems.is_empty() {
            let mut expected = base_version;
            let mut previous: Option<&DocumentMigration> = None;
            for s in &steps {
                if s.from > expected {
                    problems.push(ChainProblem::Gap {
                        from: expected,
                        next: s.from,
                    });
                } else if s.from < expected {
                    if let Some(p) = previous {
                        problems.push(ChainProblem::Overlap {
                            step: s.name.clone(),
                            from: s.from,
                            earlier: p.name.clone(),
                            earlier_to: p.to,
                        });
                    }
                }
                expected = expected.max(s.to);
                previous = Some(s);
            }
        }
        if !problems.is_empty() {
            return Err(ChainError { document, problems });
        }
        let current_version = steps.last().map_or(base_version, |s| s.to);
        Ok(DocumentMigrator {
            document,
            version_field,
            base_version,
            current_version,
            steps,
        })
    }
}
