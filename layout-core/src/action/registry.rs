//! The registry of upgrade actions, its builder, and the problems it reports.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::feature::LayoutFeature;

use super::context::{Action, ActionContext, ActionError, ActionFnPtr, Phase};

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
