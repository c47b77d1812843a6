//! Finalize conditions: operator-stated checks that must pass before the first feature is
//! touched, and the override that gets a stuck one out of the way.

use std::fmt;

/// A check that must pass before finalization starts ("no open containers", "all members
/// reachable"). All conditions are checked; a refusal lists every failing one.
pub trait FinalizeCondition<C>: Send + Sync {
    /// The condition's name (used to override it).
    fn name(&self) -> &str;
    /// `Err(reason)` when finalization must not start.
    fn check(&self, component: &C) -> Result<(), String>;
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

/// A condition named `name` that runs `check`.
///
/// ```
/// use layout_core::{condition, FinalizeCondition};
///
/// struct Scm { open_containers: usize }
/// let no_open = condition("no-open-containers", |scm: &Scm| {
///     if scm.open_containers == 0 { Ok(()) } else { Err(format!("{} open", scm.open_containers)) }
/// });
/// assert_eq!(no_open.check(&Scm { open_containers: 2 }), Err("2 open".to_string()));
/// ```
pub fn condition<C, G>(name: impl Into<String>, check: G) -> FnCondition<G>
where
    G: Fn(&C) -> Result<(), String> + Send + Sync,
{
    FnCondition {
        name: name.into(),
        check,
        no_override: None,
    }
}

impl<C, G> FinalizeCondition<C> for FnCondition<G>
where
    G: Fn(&C) -> Result<(), String> + Send + Sync,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn check(&self, component: &C) -> Result<(), String> {
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

/// Something outside the finalizer that can refuse finalization (the prepare controller
/// uses it: while its write gate is up, finalize is refused).
pub trait FinalizeGate: Send + Sync {
    /// `Err(reason)` to refuse finalization now.
    fn check(&self) -> Result<(), String>;
}

impl<G: Fn() -> Result<(), String> + Send + Sync> FinalizeGate for G {
    fn check(&self) -> Result<(), String> {
        self()
    }
}
