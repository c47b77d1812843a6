//! Finalize conditions: operator-stated checks that must pass before the first feature is
//! touched, and the override that gets a stuck one out of the way.

use std::fmt;

/// A check that must pass before finalization starts ("no open containers", "all members
/// reachable"). All conditions are checked; a refusal lists every failing one.
pub trait FinalizeCondition<C>: Send + Sync {
    /// The condition's name (used to override it).
    fn name(&self) -> &str;
    /// `Err(why)` when finalization must not start.
    fn check(&self, component: &C) -> Result<(), FinalizeRefusal>;
    /// `Some(why)` when this condition must not be overridden (an override naming it is
    /// refused with `why`, which should say who may pass it instead); `None`, the
    /// default, when an operator may override it with a reason.
    fn override_refusal(&self) -> Option<String> {
        None
    }
}

/// A condition made of a name and a closure; see [`condition`].
pub struct FnCondition<G> {
    name: String,
    check: G,
    no_override: Option<String>,
}

impl<G> FnCondition<G> {
    /// This condition cannot be overridden: an override naming it is refused with `why`
    /// ([`FinalizeError::NotOverridable`](crate::FinalizeError::NotOverridable)). For a
    /// condition only another authority may pass (a cluster's coordinator), never an
    /// operator of this component alone.
    #[must_use]
    pub fn not_overridable(mut self, why: impl Into<String>) -> Self {
        self.no_override = Some(why.into());
        self
    }
}

impl<G> fmt::Debug for FnCondition<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnCondition")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A condition named `name` that runs `check`. The closure refuses with a
/// [`FinalizeRefusal`]; a `String` or `&str` reason converts into one (`.into()`, or `?`
/// on a `Result<_, String>`).
///
/// ```
/// use layout_core::finalizer::{condition, FinalizeCondition, FinalizeRefusal};
///
/// struct Scm { open_containers: usize }
/// let no_open = condition("no-open-containers", |scm: &Scm| {
///     if scm.open_containers == 0 {
///         Ok(())
///     } else {
///         Err(format!("{} open", scm.open_containers).into())
///     }
/// });
/// assert_eq!(
///     no_open.check(&Scm { open_containers: 2 }),
///     Err(FinalizeRefusal::Reason("2 open".to_owned()))
/// );
/// ```
pub fn condition<C, G>(name: impl Into<String>, check: G) -> FnCondition<G>
where
    G: Fn(&C) -> Result<(), FinalizeRefusal> + Send + Sync,
{
    FnCondition {
        name: name.into(),
        check,
        no_override: None,
    }
}

impl<C, G> FinalizeCondition<C> for FnCondition<G>
where
    G: Fn(&C) -> Result<(), FinalizeRefusal> + Send + Sync,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn check(&self, component: &C) -> Result<(), FinalizeRefusal> {
        (self.check)(component)
    }
    fn override_refusal(&self) -> Option<String> {
        self.no_override.clone()
    }
}

/// An operator's override of a failing condition, with the reason (recorded in the
/// finalization history).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConditionOverride {
    /// The condition's name.
    pub condition: String,
    /// Why it is overridden.
    pub reason: String,
}

impl ConditionOverride {
    /// An override of `condition` for `reason`.
    pub fn new(condition: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            condition: condition.into(),
            reason: reason.into(),
        }
    }
}

/// Something outside the finalizer that can refuse finalization. The prepare controller
/// is one: while its write gate is up, finalize is refused ([`FinalizeRefusal::Prepared`],
/// [`FinalizeRefusal::PrepareRunning`]); it is the one way "prepared" reaches the
/// finalizer. A closure returning `Result<(), FinalizeRefusal>` is a gate too.
pub trait FinalizeGate: Send + Sync {
    /// `Err(why)` to refuse finalization now.
    fn check(&self) -> Result<(), FinalizeRefusal>;
}

impl<G> FinalizeGate for G
where
    G: Fn() -> Result<(), FinalizeRefusal> + Send + Sync,
{
    fn check(&self) -> Result<(), FinalizeRefusal> {
        self()
    }
}

/// Why a finalize condition or gate refuses finalization: the facts, and (its `Display`)
/// a message an operator can act on.
///
/// ```
/// use layout_core::finalizer::FinalizeRefusal;
///
/// assert_eq!(
///     FinalizeRefusal::Prepared { index: 42 }.to_string(),
///     "the component is prepared (prepare index 42)"
/// );
/// let reason: FinalizeRefusal = "3 containers are open".into();
/// assert_eq!(reason.to_string(), "3 containers are open");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FinalizeRefusal {
    /// The component is prepared: its state is snapshotted through `index` and writes
    /// are refused. Cancel prepare first.
    Prepared {
        /// The prepare index.
        index: u64,
    },
    /// The prepare write gate is up: a prepare is running. Wait for it, or cancel it.
    PrepareRunning,
    /// A condition's or gate's own reason, in its words.
    Reason(String),
}

impl FinalizeRefusal {
    /// Whether the refusal comes from prepare (the component is prepared, or a prepare
    /// runs).
    pub fn is_prepare(&self) -> bool {
        matches!(self, Self::Prepared { .. } | Self::PrepareRunning)
    }
}

impl fmt::Display for FinalizeRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Prepared { index } => {
                write!(f, "the component is prepared (prepare index {index})")
            }
            Self::PrepareRunning => {
                f.write_str("the prepare write gate is up (a prepare is running)")
            }
            Self::Reason(reason) => f.write_str(reason),
        }
    }
}

impl From<String> for FinalizeRefusal {
    fn from(reason: String) -> Self {
        Self::Reason(reason)
    }
}

impl From<&str> for FinalizeRefusal {
    fn from(reason: &str) -> Self {
        Self::Reason(reason.to_owned())
    }
}
