//! Upgrade actions and the registry that holds them.
//!
//! An *upgrade action* is code a layout feature runs at one of three moments
//! ([`Phase`]). Actions are registered with [`ActionRegistry::builder`] or with the
//! `#[upgrade_action(F::X, phase = ...)]` attribute; both end in one registry, and
//! [`ActionRegistryBuilder::build`] reports every wiring problem at once, so an action that
//! silently never runs cannot happen.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::feature::LayoutFeature;

/// When an upgrade action runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// On every start while the feature is not finalized. A failure refuses start-up.
    /// The place to check preconditions and to clean up after a failed finalize.
    ValidateInPrefinalize,
    /// Once, on the first start of a release that knows the feature (tracked by the
    /// persisted first-upgrade marker); rerun on the next start if it failed. Must leave
    /// the disk readable by the old release.
    OnFirstUpgradeStart,
    /// While finalizing the feature, at least once: it must be idempotent. The only
    /// phase allowed to make backward-incompatible changes.
    OnFinalize,
}

impl Phase {
    /// Every phase, in the order they run for one feature.
    pub const ALL: [Phase; 3] = [
        Phase::ValidateInPrefinalize,
        Phase::OnFirstUpgradeStart,
        Phase::OnFinalize,
    ];

    /// The phase's name as written in code (`OnFinalize`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Phase::ValidateInPrefinalize => "ValidateInPrefinalize",
            Phase::OnFirstUpgradeStart => "OnFirstUpgradeStart",
            Phase::OnFinalize => "OnFinalize",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error an upgrade action returns: a [`StepError`](crate::StepError) (a message
/// and, optionally, its cause), the one error every step of upgrade work returns.
///
/// ```
/// use layout_core::ActionError;
///
/// let io = std::io::Error::other("disk full");
/// let err = ActionError::with_source("could not create the tenant table", io);
/// assert_eq!(err.to_string(), "could not create the tenant table: disk full");
/// ```
pub type ActionError = crate::error::StepError;

/// Receives what a running action reports. The finalizer implements it to feed status.
pub trait ProgressSink: Send + Sync {
    /// `done` of `total` units (rows, files, ...) are done.
    fn progress(&self, done: u64, total: Option<u64>);
    /// A message for the operator.
    fn message(&self, message: &str);
    /// The action has been active for `elapsed` in all, over every run and restart (a
    /// figure the action keeps itself, such as a background migration's checkpoint). The
    /// finalizer's status then reports it, rather than the time since the finalization
    /// started, so downtime is not counted. Default: ignored.
    fn elapsed(&self, elapsed: std::time::Duration) {
        let _ = elapsed;
    }
}

struct NoProgress;

impl ProgressSink for NoProgress {
    fn progress(&self, _done: u64, _total: Option<u64>) {}
    fn message(&self, _message: &str) {}
}

/// What an action is told about the moment it runs in, and how it reports back.
pub struct ActionContext<'a, F> {
    feature: F,
    phase: Phase,
    attempt: u32,
    progress: &'a dyn ProgressSink,
    cancel: &'a AtomicBool,
}

impl<'a, F: LayoutFeature> ActionContext<'a, F> {
    /// A context for running an action by hand (tests, tools).
    pub fn new(
        feature: F,
        phase: Phase,
        progress: &'a dyn ProgressSink,
        cancel: &'a AtomicBool,
    ) -> Self {
        Self {
            feature,
            phase,
            attempt: 1,
            progress,
            cancel,
        }
    }

    /// A context that reports nowhere and is never cancelled (tests, tools).
    pub fn detached(feature: F, phase: Phase) -> ActionContext<'static, F> {
        static NEVER: AtomicBool = AtomicBool::new(false);
        ActionContext {
            feature,
            phase,
            attempt: 1,
            progress: &NoProgress,
            cancel: &NEVER,
        }
    }

    pub(crate) fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The feature the action belongs to.
    pub fn feature(&self) -> F {
        self.feature
    }

    /// The phase it runs in.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// How many times this finalizer has started this action in this process (1 on the
    /// first try). Runs before a restart are not counted: actions must be idempotent.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Reports progress: `done` of `total` units.
    pub fn report_progress(&self, done: u64, total: Option<u64>) {
        self.progress.progress(done, total);
    }

    /// Reports how long the action has been active in all, over every run and restart
    /// (see [`ProgressSink::elapsed`]).
    pub fn report_elapsed(&self, elapsed: std::time::Duration) {
        self.progress.elapsed(elapsed);
    }

    /// Passes the crash point `name` (see [`crate::crash_point`]): call it wherever the
    /// action has done part of its work durably, so a test kit can crash there and check
    /// that the next start recovers. Costs one atomic load when nothing observes it.
    pub fn crash_point(&self, name: &'static str) {
        crate::crash_point::hit(name);
    }

    /// Sends a message to the operator (shown in the finalization status).
    pub fn message(&self, message: impl AsRef<str>) {
        self.progress.message(message.as_ref());
    }

    /// Whether finalization was cancelled; long actions should check it between batches.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// `Err(ActionError::cancelled())` once finalization was cancelled.
    pub fn check_cancelled(&self) -> Result<(), ActionError> {
        if self.is_cancelled() {
            Err(ActionError::cancelled())
        } else {
            Ok(())
        }
    }
}

impl<F: fmt::Debug> fmt::Debug for ActionContext<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActionContext")
            .field("feature", &self.feature)
            .field("phase", &self.phase)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// An upgrade action for component type `C` and catalog `F`.
pub type Action<F, C> =
    Arc<dyn Fn(&C, &ActionContext<'_, F>) -> Result<(), ActionError> + Send + Sync>;

/// The function-pointer type `#[upgrade_action]` registers. Not public API.
#[doc(hidden)]
pub type ActionFnPtr<F, C> = fn(&C, &ActionContext<'_, F>) -> Result<(), ActionError>;

/// Converts an action's result into the registry's; `#[upgrade_action]` calls it, so its
/// error type only needs `Into<ActionError>`. Not public API.
#[doc(hidden)]
pub fn into_action_result<E: IntoActionError>(result: Result<(), E>) -> Result<(), ActionError> {
    result.map_err(IntoActionError::into_action_error)
}

/// The error types an `#[upgrade_action]` function may return. Not public API.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "an upgrade action must return `Result<(), E>` where `E: Into<ActionError>`; `{Self}` does not convert into `ActionError`",
    label = "this action's error type does not convert into `layout_core::ActionError`",
    note = "implement `From<{Self}> for layout_core::ActionError`, or return `Result<(), ActionError>`"
)]
pub trait IntoActionError {
    /// Converts.
    fn into_action_error(self) -> ActionError;
}

impl<E: Into<ActionError>> IntoActionError for E {
    fn into_action_error(self) -> ActionError {
        self.into()
    }
}

/// Where an action was registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOrigin {
    /// With the builder.
    Builder,
    /// With `#[upgrade_action]`, at this source location.
    Attribute {
        /// `module_path!()` of the function.
        module: &'static str,
        /// `file!()`.
        file: &'static str,
        /// `line!()`.
        line: u32,
    },
}

impl fmt::Display for ActionOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActionOrigin::Builder => f.write_str("registered with the builder"),
            ActionOrigin::Attribute { file, line, .. } => {
                write!(f, "#[upgrade_action] at {file}:{line}")
            }
        }
    }
}

/// One registered action, as listed by [`ActionRegistry::actions`].
pub struct RegisteredAction<F, C> {
    feature: F,
    phase: Phase,
    name: String,
    origin: ActionOrigin,
    action: Action<F, C>,
}

impl<F: LayoutFeature, C> RegisteredAction<F, C> {
    /// The feature.
    pub fn feature(&self) -> F {
        self.feature
    }
    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }
    /// The action's name (the function's name, or the one given to the builder).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Where it was registered.
    pub fn origin(&self) -> &ActionOrigin {
        &self.origin
    }
    /// Runs the action.
    pub fn run(&self, component: &C, ctx: &ActionContext<'_, F>) -> Result<(), ActionError> {
        (self.action)(component, ctx)
    }
}

impl<F: fmt::Debug, C> fmt::Debug for RegisteredAction<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisteredAction")
            .field("feature", &self.feature)
            .field("phase", &self.phase)
            .field("name", &self.name)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// A wiring problem found by [`ActionRegistryBuilder::build`] or
/// [`ActionRegistry::expect`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryProblem {
    /// Two actions for the same feature, phase and component type.
    Duplicate {
        /// The feature.
        feature: &'static str,
        /// The phase.
        phase: Phase,
        /// The first action: name and origin.
        first: String,
        /// The second.
        second: String,
    },
    /// An action for version 0, the initial layout, which is never upgraded to, so the
    /// action would never run.
    InitialLayout {
        /// The feature.
        feature: &'static str,
        /// The phase.
        phase: Phase,
        /// The action.
        action: String,
    },
    /// An `#[upgrade_action]` for this component type names a feature of another catalog.
    ForeignCatalog {
        /// The action.
        action: String,
        /// The catalog it names.
        catalog: &'static str,
        /// The registry's catalog.
        expected: &'static str,
    },
    /// [`ActionRegistry::expect`] named an action that is not registered.
    Missing {
        /// The feature.
        feature: &'static str,
        /// The phase.
        phase: Phase,
    },
}

impl fmt::Display for RegistryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Duplicate {
                feature,
                phase,
                first,
                second,
            } => write!(
                f,
                "two {phase} actions for feature {feature}: {first} and {second}; merge them \
                 into one"
            ),
            Self::InitialLayout {
                feature,
                phase,
                action,
            } => write!(
                f,
                "{phase} action {action} belongs to {feature}, the initial layout (version 0), \
                 which is never upgraded to: it would never run"
            ),
            Self::ForeignCatalog {
                action,
                catalog,
                expected,
            } => write!(
                f,
                "action {action} is registered for this component type with catalog \
                 {catalog}, but the registry's catalog is {expected}: it would never run"
            ),
            Self::Missing { feature, phase } => write!(
                f,
                "no {phase} action is registered for feature {feature}; is the module that \
                 defines it linked, and is with_registered() called?"
            ),
        }
    }
}

/// Every wiring problem of a registry, reported at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upgrade action registry for {catalog}: {}", list(.problems))]
pub struct RegistryError {
    /// The catalog.
    pub catalog: &'static str,
    /// The problems, in registration order.
    pub problems: Vec<RegistryProblem>,
}

fn list(problems: &[RegistryProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The actions of one component type `C` for catalog `F`, at most one per feature and
/// phase.
///
/// ```
/// use layout_core::{ActionContext, ActionError, ActionRegistry, LayoutFeature, Phase};
///
/// #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
/// enum OmFeature {
///     #[layout(version = 0, description = "Initial layout")]
///     Initial,
///     #[layout(version = 1, description = "Multi-tenancy tables")]
///     MultiTenancy,
/// }
///
/// struct Om;
///
/// fn create_tables(_om: &Om, _ctx: &ActionContext<'_, OmFeature>) -> Result<(), ActionError> {
///     Ok(())
/// }
///
/// let registry = ActionRegistry::<OmFeature, Om>::builder()
///     .on_finalize(OmFeature::MultiTenancy, create_tables)
///     .validate_in_prefinalize(OmFeature::MultiTenancy, |_om, _ctx| Ok(()))
///     .build()?;
/// registry.expect(&[(OmFeature::MultiTenancy, Phase::OnFinalize)])?;
/// assert_eq!(registry.len(), 2);
/// # Ok::<(), layout_core::action::RegistryError>(())
/// ```
pub struct ActionRegistry<F, C> {
    actions: BTreeMap<(F, Phase), RegisteredAction<F, C>>,
}

impl<F: LayoutFeature, C: 'static> ActionRegistry<F, C> {
    /// A builder.
    pub fn builder() -> ActionRegistryBuilder<F, C> {
        ActionRegistryBuilder {
            entries: Vec::new(),
            foreign: Vec::new(),
        }
    }

    /// A registry with no actions.
    pub fn empty() -> Self {
        Self {
            actions: BTreeMap::new(),
        }
    }

    /// The action for `feature` in `phase`, if any.
    pub fn get(&self, feature: F, phase: Phase) -> Option<&RegisteredAction<F, C>> {
        self.actions.get(&(feature, phase))
    }

    /// Every action, ordered by feature then phase.
    pub fn actions(&self) -> impl Iterator<Item = &RegisteredAction<F, C>> {
        self.actions.values()
    }

    /// How many actions are registered.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// Whether no action is registered.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// Checks that every `(feature, phase)` listed has an action; call it at start-up to
    /// catch an action that was never wired in. Lists every missing one.
    pub fn expect(&self, expected: &[(F, Phase)]) -> Result<(), RegistryError> {
        let problems: Vec<_> = expected
            .iter()
            .filter(|key| !self.actions.contains_key(key))
            .map(|&(feature, phase)| RegistryProblem::Missing {
                feature: feature.name(),
                phase,
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RegistryError {
                catalog: F::CATALOG_NAME,
                problems,
            })
        }
    }

    /// The same actions (names, origins, phases) for a type `D` that holds the component:
    /// each runs on the `C` that `project` finds in the `D`. A test kit wraps a
    /// component in a type of its own this way and still runs the component's real
    /// registry.
    ///
    /// ```
    /// use layout_core::{ActionRegistry, LayoutFeature};
    ///
    /// #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
    /// enum F {
    ///     #[layout(version = 0, description = "Initial layout")]
    ///     Initial,
    ///     #[layout(version = 1, description = "Index")]
    ///     Index,
    /// }
    /// struct Store;
    /// struct Wrapper(Store);
    ///
    /// let registry = ActionRegistry::<F, Store>::builder()
    ///     .on_finalize(F::Index, |_: &Store, _ctx| Ok(()))
    ///     .build()?;
    /// let wrapped: ActionRegistry<F, Wrapper> = registry.map_component(|w: &Wrapper| &w.0);
    /// assert_eq!(wrapped.len(), 1);
    /// # Ok::<(), layout_core::action::RegistryError>(())
    /// ```
    pub fn map_component<D: 'static>(self, project: fn(&D) -> &C) -> ActionRegistry<F, D> {
        let actions = self
            .actions
            .into_iter()
            .map(|(key, entry)| {
                let action = entry.action;
                let mapped: Action<F, D> =
                    Arc::new(move |component: &D, ctx: &ActionContext<'_, F>| {
                        action(project(component), ctx)
                    });
                (
                    key,
                    RegisteredAction {
                        feature: entry.feature,
                        phase: entry.phase,
                        name: entry.name,
                        origin: entry.origin,
                        action: mapped,
                    },
                )
            })
            .collect();
        ActionRegistry { actions }
    }
}

impl<F: fmt::Debug, C> fmt::Debug for ActionRegistry<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.actions.values()).finish()
    }
}

/// Builds an [`ActionRegistry`]; see [`ActionRegistry::builder`].
pub struct ActionRegistryBuilder<F, C> {
    entries: Vec<RegisteredAction<F, C>>,
    foreign: Vec<RegistryProblem>,
}

impl<F: LayoutFeature, C: 'static> ActionRegistryBuilder<F, C> {
    /// Registers `action` for `feature` in `phase` under `name`.
    #[must_use]
    pub fn action(
        mut self,
        feature: F,
        phase: Phase,
        name: impl Into<String>,
        action: impl Fn(&C, &ActionContext<'_, F>) -> Result<(), ActionError> + Send + Sync + 'static,
    ) -> Self {
        self.entries.push(RegisteredAction {
            feature,
            phase,
            name: name.into(),
            origin: ActionOrigin::Builder,
            action: Arc::new(action),
        });
        self
    }

    /// Registers an [`Phase::OnFinalize`] action.
    #[must_use]
    pub fn on_finalize(
        self,
        feature: F,
        action: impl Fn(&C, &ActionContext<'_, F>) -> Result<(), ActionError> + Send + Sync + 'static,
    ) -> Self {
        let name = std::any::type_name_of_val(&action).to_owned();
        self.action(feature, Phase::OnFinalize, short_name(&name), action)
    }

    /// Registers a [`Phase::ValidateInPrefinalize`] action.
    #[must_use]
    pub fn validate_in_prefinalize(
        self,
        feature: F,
        action: impl Fn(&C, &ActionContext<'_, F>) -> Result<(), ActionError> + Send + Sync + 'static,
    ) -> Self {
        let name = std::any::type_name_of_val(&action).to_owned();
        self.action(
            feature,
            Phase::ValidateInPrefinalize,
            short_name(&name),
            action,
        )
    }

    /// Registers a [`Phase::OnFirstUpgradeStart`] action.
    #[must_use]
    pub fn on_first_upgrade_start(
        self,
        feature: F,
        action: impl Fn(&C, &ActionContext<'_, F>) -> Result<(), ActionError> + Send + Sync + 'static,
    ) -> Self {
        let name = std::any::type_name_of_val(&action).to_owned();
        self.action(
            feature,
            Phase::OnFirstUpgradeStart,
            short_name(&name),
            action,
        )
    }

    /// Takes in every `#[upgrade_action]` submitted for this component type `C` and
    /// catalog `F`. A submission for `C` that names another catalog is a problem reported
    /// by [`build`](Self::build).
    #[must_use]
    pub fn with_registered(mut self) -> Self {
        for submission in inventory::iter::<ActionSubmission> {
            if let Some(action) = submission.action.downcast_ref::<ActionFnPtr<F, C>>() {
                let Some(feature) = submission.feature.downcast_ref::<F>() else {
                    continue;
                };
                let action = *action;
                self.entries.push(RegisteredAction {
                    feature: *feature,
                    phase: submission.phase,
                    name: submission.name.to_owned(),
                    origin: ActionOrigin::Attribute {
                        module: submission.module,
                        file: submission.file,
                        line: submission.line,
                    },
                    action: Arc::new(action),
                });
            } else if (submission.component)() == std::any::TypeId::of::<C>() {
                self.foreign.push(RegistryProblem::ForeignCatalog {
                    action: format!(
                        "{} ({}:{})",
                        submission.name, submission.file, submission.line
                    ),
                    catalog: submission.catalog,
                    expected: F::CATALOG_NAME,
                });
            }
        }
        self
    }

    /// Builds the registry, or reports every problem at once: duplicates for the same
    /// feature and phase, actions for the initial layout (version 0), and submissions
    /// naming another catalog.
    pub fn build(self) -> Result<ActionRegistry<F, C>, RegistryError> {
        let mut problems = self.foreign;
        let mut actions: BTreeMap<(F, Phase), RegisteredAction<F, C>> = BTreeMap::new();
        for entry in self.entries {
            if entry.feature.layout_version() == 0 {
                problems.push(RegistryProblem::InitialLayout {
                    feature: entry.feature.name(),
                    phase: entry.phase,
                    action: describe(&entry),
                });
                continue;
            }
            let key = (entry.feature, entry.phase);
            if let Some(first) = actions.get(&key) {
                problems.push(RegistryProblem::Duplicate {
                    feature: entry.feature.name(),
                    phase: entry.phase,
                    first: describe(first),
                    second: describe(&entry),
                });
                continue;
            }
            actions.insert(key, entry);
        }
        if problems.is_empty() {
            Ok(ActionRegistry { actions })
        } else {
            Err(RegistryError {
                catalog: F::CATALOG_NAME,
                problems,
            })
        }
    }
}

fn describe<F, C>(action: &RegisteredAction<F, C>) -> String {
    format!("{} ({})", action.name, action.origin)
}

/// `path::to::function` -> `function`; closures keep their path for identification.
fn short_name(type_name: &str) -> String {
    if type_name.contains("{{closure}}") {
        return format!("closure in {}", type_name.trim_end_matches("::{{closure}}"));
    }
    type_name
        .rsplit("::")
        .next()
        .unwrap_or(type_name)
        .to_owned()
}

/// An action submitted by `#[upgrade_action]`. Not public API: the attribute builds it.
#[doc(hidden)]
pub struct ActionSubmission {
    feature: &'static (dyn Any + Send + Sync),
    catalog: &'static str,
    component: fn() -> std::any::TypeId,
    phase: Phase,
    name: &'static str,
    module: &'static str,
    file: &'static str,
    line: u32,
    action: &'static (dyn Any + Send + Sync),
}

impl ActionSubmission {
    /// Used by `#[upgrade_action]`.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub const fn new<F: LayoutFeature, C: 'static>(
        feature: &'static F,
        catalog: &'static str,
        phase: Phase,
        name: &'static str,
        module: &'static str,
        file: &'static str,
        line: u32,
        action: &'static ActionFnPtr<F, C>,
    ) -> Self {
        Self {
            feature,
            catalog,
            component: std::any::TypeId::of::<C>,
            phase,
            name,
            module,
            file,
            line,
            action,
        }
    }
}

inventory::collect!(ActionSubmission);
