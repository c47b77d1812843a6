//! One start-up path for a component: [`ComponentStartup`].
//!
//! A service starts in a fixed order, and every step has to be there: open the layout
//! version manager (refusing a disk newer than the software), open the component on it,
//! build its [`UpgradeFinalizer`] from its [`ActionRegistry`] (with the prepare
//! controller's write gate and the component's conditions), run the start-up actions
//! (refusing start-up when one fails), optionally resume a finalization a crash
//! interrupted, and optionally serve the admin endpoint. [`ComponentStartup`] is that
//! order, written once: production code starts with it, and the test kit
//! (`layout-testkit`) drives the same builder with the node's start intent, SLV cap and
//! directory, so what the kit tests is what the service runs.
//!
//! ```
//! use std::sync::Arc;
//! use layout_core::startup::ComponentStartup;
//! use layout_core::{ActionRegistry, FileStorage, LayoutFeature, ManagerOptions, StartIntent};
//!
//! #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
//! enum NoteFeature {
//!     #[layout(version = 0, description = "Initial layout")]
//!     Initial,
//!     #[layout(version = 1, description = "Notes carry their length")]
//!     Lengths,
//! }
//!
//! struct Notes {
//!     dir: std::path::PathBuf,
//! }
//!
//! let dir = tempfile::tempdir()?;
//! let data = dir.path().join("data");
//! std::fs::create_dir_all(&data)?;
//! let started = ComponentStartup::<NoteFeature, Notes>::new("notes")
//!     .options(
//!         ManagerOptions::default()
//!             .with_start_intent(StartIntent::Init)
//!             .with_initial_layout_version(0),
//!     )
//!     .storage(FileStorage::new(dir.path().join("layout")))
//!     .open(move |_manager| Ok::<_, std::io::Error>(Notes { dir: data }))
//!     .actions(|_manager| {
//!         ActionRegistry::builder()
//!             .on_finalize(NoteFeature::Lengths, |n: &Notes, _ctx| {
//!                 Ok(std::fs::write(n.dir.join("lengths"), b"")?)
//!             })
//!             .build()
//!     })
//!     .start()?;
//! assert_eq!(started.manager().component_name(), "notes");
//! assert!(started.manager().needs_finalization());
//! started.finalizer().finalize("ops", started.component())?;
//! assert!(started.component().dir.join("lengths").exists());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use crate::action::RegistryError;
use crate::clock::Clock;
use crate::error::{BoxError, LayoutError};
use crate::feature::LayoutFeature;
use crate::finalizer::{
    FinalizeCondition, FinalizeGate, FinalizeHandle, FinalizeRefusal, PrefinalizeError,
    PrefinalizeReport,
};
use crate::manager::LayoutVersionManager;
use crate::options::ManagerOptions;
use crate::ActionRegistry;
use crate::LayoutStorage;
use crate::{FinalizePolicy, UpgradeFinalizer};
use crate::{Preparable, PrepareController};

type OpenFn<F, C> = Box<dyn FnOnce(&Arc<LayoutVersionManager<F>>) -> Result<C, BoxError>>;
type ActionsFn<F, C> =
    Box<dyn FnOnce(&Arc<LayoutVersionManager<F>>) -> Result<ActionRegistry<F, C>, RegistryError>>;
type PrepareFn<C> = Box<dyn FnOnce(&C) -> PrepareParts>;
type HookFn<F, C> = Box<dyn FnOnce(UpgradeFinalizer<F, C>, &C) -> UpgradeFinalizer<F, C>>;

/// A component's prepare controller (DESIGN section 7) and the component as the
/// [`Preparable`] it prepares; see [`ComponentStartup::prepare`].
pub struct PrepareParts {
    controller: Arc<PrepareController>,
    preparable: Arc<dyn Preparable>,
}

impl PrepareParts {
    /// `controller`, preparing `preparable` (usually the component itself).
    pub fn new(controller: Arc<PrepareController>, preparable: Arc<dyn Preparable>) -> Self {
        Self {
            controller,
            preparable,
        }
    }

    /// The controller.
    pub fn controller(&self) -> &Arc<PrepareController> {
        &self.controller
    }

    /// What it prepares.
    pub fn preparable(&self) -> &Arc<dyn Preparable> {
        &self.preparable
    }
}

impl fmt::Debug for PrepareParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrepareParts")
            .field("controller", &self.controller)
            .finish_non_exhaustive()
    }
}

/// Why [`ComponentStartup::start`] refused to start the component. Nothing after the
/// failed step ran.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError<F: LayoutFeature> {
    /// The builder was not given a required part.
    #[error("start-up of component {component}: no {missing} was given (call `{call}` on the ComponentStartup)")]
    Incomplete {
        /// The component's name.
        component: String,
        /// What is missing.
        missing: &'static str,
        /// The builder method that gives it.
        call: &'static str,
    },
    /// The layout version manager refused to open (a disk newer than the software, a
    /// missing or damaged `VERSION`, another component's state, ...).
    #[error(transparent)]
    Manager(LayoutError),
    /// The component's constructor failed.
    #[error("start-up of component {component}: the component did not open: {source}")]
    Open {
        /// The component's name.
        component: String,
        /// What the constructor returned.
        source: BoxError,
    },
    /// The action registry could not be built (a wiring mistake).
    #[error(transparent)]
    Registry(RegistryError),
    /// A start-up action failed: the component must not serve.
    #[error(transparent)]
    StartupActions(PrefinalizeError<F>),
    /// [`ComponentStartup::map_component`] was called after
    /// [`configure_finalizer`](ComponentStartup::configure_finalizer): that hook is
    /// typed on the component and cannot follow it into another type.
    #[error("start-up of component {component}: a configure_finalizer hook is typed on the component and cannot be mapped to another type; use condition(), gate(), policy() or clock() instead")]
    NotMappable {
        /// The component's name.
        component: String,
    },
    /// The admin endpoint did not start.
    #[cfg(feature = "admin-http")]
    #[error("start-up of component {component}: the admin endpoint did not start: {source}")]
    Admin {
        /// The component's name.
        component: String,
        /// Why.
        source: crate::http::EndpointError,
    },
}

impl<F: LayoutFeature> StartupError<F> {
    /// The component constructor's error, as its own type `E`, when that is what failed.
    /// A service whose constructor returns its own error type gets it back unchanged.
    pub fn into_open_error<E: StdError + 'static>(self) -> Result<E, Self> {
        match self {
            Self::Open { component, source } => match source.downcast::<E>() {
                Ok(e) => Ok(*e),
                Err(source) => Err(Self::Open { component, source }),
            },
            other => Err(other),
        }
    }
}

/// Starts one component, the same way in production and under the test kit; see the
/// [module docs](self).
///
/// The order is fixed: open the manager with [`options`](Self::options) (the component
/// name included) on [`storage`](Self::storage); open the component
/// ([`open`](Self::open)); build the registry ([`actions`](Self::actions)); build the
/// finalizer with the prepare controller's gate ([`prepare`](Self::prepare)),
/// [`gate`](Self::gate)s, [`condition`](Self::condition)s, [`policy`](Self::policy),
/// [`clock`](Self::clock) and [`configure_finalizer`](Self::configure_finalizer) hooks;
/// run the start-up actions; resume an interrupted finalization when asked
/// ([`resume_interrupted`](Self::resume_interrupted)); serve the admin endpoint when
/// asked (feature `admin-http`, `admin`).
pub struct ComponentStartup<F: LayoutFeature, C> {
    name: String,
    options: ManagerOptions,
    storage: Option<Box<dyn LayoutStorage>>,
    open: Option<OpenFn<F, C>>,
    actions: Option<ActionsFn<F, C>>,
    prepare: Option<PrepareFn<C>>,
    gates: Vec<Arc<dyn FinalizeGate>>,
    conditions: Vec<Box<dyn FinalizeCondition<C>>>,
    policy: Option<FinalizePolicy>,
    clock: Option<Arc<dyn Clock>>,
    hooks: Vec<HookFn<F, C>>,
    resume_interrupted: bool,
    #[cfg(feature = "admin-http")]
    admin: Option<crate::admin::http::HttpConfig>,
}

impl<F: LayoutFeature, C: Send + Sync + 'static> ComponentStartup<F, C> {
    /// The start-up of component `name` (recorded in and checked against the stored
    /// layout state; it overrides a name set in [`options`](Self::options)).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            options: ManagerOptions::default(),
            storage: None,
            open: None,
            actions: None,
            prepare: None,
            gates: Vec::new(),
            conditions: Vec::new(),
            policy: None,
            clock: None,
            hooks: Vec::new(),
            resume_interrupted: false,
            #[cfg(feature = "admin-http")]
            admin: None,
        }
    }

    /// The component's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The manager's options: SLV cap, start intent, initial layout version, minimum
    /// supported version. Default: [`ManagerOptions::default`].
    #[must_use]
    pub fn options(mut self, options: ManagerOptions) -> Self {
        self.options = options;
        self
    }

    /// Changes the manager's options in place (the test kit sets the node's start
    /// intent and SLV cap on top of the service's options this way).
    #[must_use]
    pub fn map_options(mut self, change: impl FnOnce(ManagerOptions) -> ManagerOptions) -> Self {
        self.options = change(self.options);
        self
    }

    /// The manager's options as configured (the component name is applied at start).
    pub fn manager_options(&self) -> &ManagerOptions {
        &self.options
    }

    /// Where the layout state lives (required): a [`FileStorage`](crate::FileStorage)
    /// on the component's layout directory in production. A later call replaces it.
    #[must_use]
    pub fn storage(mut self, storage: impl LayoutStorage + 'static) -> Self {
        self.storage = Some(Box::new(storage));
        self
    }

    /// The component's constructor (required): called once the manager is open, with
    /// it. Its error refuses the start ([`StartupError::Open`]).
    #[must_use]
    pub fn open<E>(
        mut self,
        open: impl FnOnce(&Arc<LayoutVersionManager<F>>) -> Result<C, E> + 'static,
    ) -> Self
    where
        E: Into<BoxError>,
    {
        self.open = Some(Box::new(move |manager| open(manager).map_err(Into::into)));
        self
    }

    /// The component's action registry, built once the manager is open. Default: no
    /// actions.
    #[must_use]
    pub fn actions(
        mut self,
        actions: impl FnOnce(&Arc<LayoutVersionManager<F>>) -> Result<ActionRegistry<F, C>, RegistryError>
            + 'static,
    ) -> Self {
        self.actions = Some(Box::new(actions));
        self
    }

    /// The component's prepare controller, taken from the open component (a component
    /// restores it from its marker when it opens, before serving writes). Its write
    /// gate becomes a gate of the finalizer, and the admin endpoint serves prepare and
    /// cancel-prepare with it.
    #[must_use]
    pub fn prepare(mut self, prepare: impl FnOnce(&C) -> PrepareParts + 'static) -> Self {
        self.prepare = Some(Box::new(prepare));
        self
    }

    /// Adds a gate that can refuse finalization.
    #[must_use]
    pub fn gate(mut self, gate: Arc<dyn FinalizeGate>) -> Self {
        self.gates.push(gate);
        self
    }

    /// Adds a condition that must pass before finalization starts.
    #[must_use]
    pub fn condition(mut self, condition: impl FinalizeCondition<C> + 'static) -> Self {
        self.conditions.push(Box::new(condition));
        self
    }

    /// Sets the finalization policy (default [`FinalizePolicy::Manual`]).
    #[must_use]
    pub fn policy(mut self, policy: FinalizePolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Sets the finalizer's clock (default: the system clock).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// A hook that changes the finalizer before the start-up actions run, with the open
    /// component. Prefer [`condition`](Self::condition) and friends: a start-up with a
    /// hook cannot be [mapped](Self::map_component).
    #[must_use]
    pub fn configure_finalizer(
        mut self,
        hook: impl FnOnce(UpgradeFinalizer<F, C>, &C) -> UpgradeFinalizer<F, C> + 'static,
    ) -> Self {
        self.hooks.push(Box::new(hook));
        self
    }

    /// Resume, at start-up and without an operator, a finalization that a crash, a kill
    /// or a restart interrupted in the middle of an `OnFinalize` action (default: off: a
    /// cluster member leaves that to its coordinator).
    ///
    /// The one place start-up resumes a finalization: right after the start-up actions,
    /// [`UpgradeFinalizer::start_resume_interrupted`] runs it in a background thread, as
    /// the client that started it and towards its target, so the component serves while
    /// the interrupted action (an online migration) finishes; its handle is
    /// [`StartedComponent::take_resumed`]. A finalization an operator cancelled is not
    /// resumed, nor one that stopped on a failed action or between features (those wait
    /// for an operator); the decision is logged.
    #[must_use]
    pub fn resume_interrupted(mut self, resume: bool) -> Self {
        self.resume_interrupted = resume;
        self
    }

    /// Serves the admin endpoint with `config` once the component started (feature
    /// `admin-http`). Or serve it later with [`StartedComponent::serve_admin`].
    #[cfg(feature = "admin-http")]
    #[must_use]
    pub fn admin(mut self, config: crate::admin::http::HttpConfig) -> Self {
        self.admin = Some(config);
        self
    }

    /// The same start-up for a type `D` that wraps the component: `wrap` makes a `D` of
    /// the opened component, `project` finds the component in a `D`. The registry
    /// ([`ActionRegistry::map_component`]), conditions and prepare controller follow;
    /// a [`configure_finalizer`](Self::configure_finalizer) hook cannot
    /// ([`StartupError::NotMappable`]).
    ///
    /// A test kit uses it to run a service's own start-up as a component type the kit
    /// owns.
    pub fn map_component<D: Send + Sync + 'static>(
        self,
        wrap: impl FnOnce(C) -> D + 'static,
        project: fn(&D) -> &C,
    ) -> Result<ComponentStartup<F, D>, StartupError<F>> {
        if !self.hooks.is_empty() {
            return Err(StartupError::NotMappable {
                component: self.name,
            });
        }
        let open = self
            .open
            .map(|open| -> OpenFn<F, D> { Box::new(move |manager| open(manager).map(wrap)) });
        let actions = self.actions.map(|actions| -> ActionsFn<F, D> {
            Box::new(move |manager| actions(manager).map(|r| r.map_component(project)))
        });
        let prepare = self
            .prepare
            .map(|prepare| -> PrepareFn<D> { Box::new(move |d: &D| prepare(project(d))) });
        let conditions = self
            .conditions
            .into_iter()
            .map(|inner| -> Box<dyn FinalizeCondition<D>> {
                Box::new(Projected { inner, project })
            })
            .collect();
        Ok(ComponentStartup {
            name: self.name,
            options: self.options,
            storage: self.storage,
            open,
            actions,
            prepare,
            gates: self.gates,
            conditions,
            policy: self.policy,
            clock: self.clock,
            hooks: Vec::new(),
            resume_interrupted: self.resume_interrupted,
            #[cfg(feature = "admin-http")]
            admin: self.admin,
        })
    }

    /// Starts the component; see the type's docs for the order.
    pub fn start(self) -> Result<StartedComponent<F, C>, StartupError<F>> {
        let name = self.name;
        let incomplete = |missing, call| StartupError::Incomplete {
            component: name.clone(),
            missing,
            call,
        };
        let storage = self
            .storage
            .ok_or_else(|| incomplete("layout storage", "storage"))?;
        let open = self
            .open
            .ok_or_else(|| incomplete("component constructor", "open"))?;
        let options = self.options.with_component_name(name.clone());
        let manager = Arc::new(
            LayoutVersionManager::<F>::open(storage, options).map_err(StartupError::Manager)?,
        );
        let component = open(&manager).map_err(|source| StartupError::Open {
            component: name.clone(),
            source,
        })?;
        let registry = match self.actions {
            Some(actions) => actions(&manager).map_err(StartupError::Registry)?,
            None => ActionRegistry::empty(),
        };
        let prepare = self.prepare.map(|prepare| prepare(&component));
        let mut finalizer = UpgradeFinalizer::new(Arc::clone(&manager), registry);
        if let Some(prepare) = &prepare {
            finalizer = finalizer.with_gate(Arc::clone(&prepare.controller) as _);
        }
        for gate in self.gates {
            finalizer = finalizer.with_gate(gate);
        }
        for condition in self.conditions {
            finalizer = finalizer.with_condition(BoxedCondition(condition));
        }
        if let Some(policy) = self.policy {
            finalizer = finalizer.with_policy(policy);
        }
        if let Some(clock) = self.clock {
            finalizer = finalizer.with_clock(clock);
        }
        for hook in self.hooks {
            finalizer = hook(finalizer, &component);
        }
        let report = finalizer
            .run_prefinalize_actions(&component)
            .map_err(StartupError::StartupActions)?;
        let component = Arc::new(component);
        let finalizer = Arc::new(finalizer);
        // The resume step: the one place start-up resumes an interrupted finalization.
        let resumed = if self.resume_interrupted {
            finalizer.start_resume_interrupted(Arc::clone(&component))
        } else {
            None
        };
        #[allow(unused_mut)] // `mut` only with the admin endpoint
        let mut started = StartedComponent {
            name,
            manager,
            component,
            finalizer,
            prepare,
            report,
            resumed,
            #[cfg(feature = "admin-http")]
            admin: None,
        };
        #[cfg(feature = "admin-http")]
        if let Some(config) = self.admin {
            started.serve_admin(config)?;
        }
        tracing::info!(
            component = %started.name,
            slv = started.manager.software_layout_version(),
            mlv = started.manager.metadata_layout_version(),
            "component started"
        );
        Ok(started)
    }
}

impl<F: LayoutFeature, C> fmt::Debug for ComponentStartup<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComponentStartup")
            .field("name", &self.name)
            .field("options", &self.options)
            .field("storage", &self.storage)
            .field("open", &self.open.is_some())
            .field("actions", &self.actions.is_some())
            .field("prepare", &self.prepare.is_some())
            .field("conditions", &self.conditions.len())
            .field("resume_interrupted", &self.resume_interrupted)
            .finish_non_exhaustive()
    }
}

/// A condition on `C` checked on the `C` inside a `D`.
struct Projected<C, D> {
    inner: Box<dyn FinalizeCondition<C>>,
    project: fn(&D) -> &C,
}

impl<C, D> FinalizeCondition<D> for Projected<C, D> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn check(&self, component: &D) -> Result<(), FinalizeRefusal> {
        self.inner.check((self.project)(component))
    }
    fn override_refusal(&self) -> Option<String> {
        self.inner.override_refusal()
    }
}

/// A boxed condition, as a condition.
struct BoxedCondition<C>(Box<dyn FinalizeCondition<C>>);

impl<C> FinalizeCondition<C> for BoxedCondition<C> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn check(&self, component: &C) -> Result<(), FinalizeRefusal> {
        self.0.check(component)
    }
    fn override_refusal(&self) -> Option<String> {
        self.0.override_refusal()
    }
}

/// A started component: what [`ComponentStartup::start`] returns.
pub struct StartedComponent<F: LayoutFeature, C> {
    name: String,
    manager: Arc<LayoutVersionManager<F>>,
    component: Arc<C>,
    finalizer: Arc<UpgradeFinalizer<F, C>>,
    prepare: Option<PrepareParts>,
    report: PrefinalizeReport<F>,
    resumed: Option<FinalizeHandle<F>>,
    #[cfg(feature = "admin-http")]
    admin: Option<crate::admin::http::AdminServer>,
}

impl<F: LayoutFeature, C: Send + Sync + 'static> StartedComponent<F, C> {
    /// The component's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The layout version manager.
    pub fn manager(&self) -> &Arc<LayoutVersionManager<F>> {
        &self.manager
    }

    /// The component.
    pub fn component(&self) -> &Arc<C> {
        &self.component
    }

    /// The finalizer.
    pub fn finalizer(&self) -> &Arc<UpgradeFinalizer<F, C>> {
        &self.finalizer
    }

    /// The prepare controller, if one was given.
    pub fn prepare_controller(&self) -> Option<&Arc<PrepareController>> {
        self.prepare.as_ref().map(PrepareParts::controller)
    }

    /// What the start-up actions did.
    pub fn startup_report(&self) -> &PrefinalizeReport<F> {
        &self.report
    }

    /// The finalization resumed at start-up, running in the background, if
    /// [`resume_interrupted`](ComponentStartup::resume_interrupted) was on and one was
    /// interrupted (taken once): [`FinalizeHandle::join`] waits for its outcome,
    /// [`FinalizeHandle::cancel`] stops it.
    pub fn take_resumed(&mut self) -> Option<FinalizeHandle<F>> {
        self.resumed.take()
    }

    /// Whether a finalization was resumed at start-up (and its handle not yet taken).
    pub fn is_resuming(&self) -> bool {
        self.resumed.is_some()
    }

    /// The admin service of this component: its finalizer, and prepare when a prepare
    /// controller was given (feature `admin`).
    #[cfg(feature = "admin")]
    pub fn admin_service(&self) -> crate::admin::AdminService {
        let service = crate::admin::AdminService::new(
            Arc::clone(&self.finalizer),
            Arc::clone(&self.component),
        );
        match &self.prepare {
            Some(parts) => {
                service.with_prepare(Arc::clone(&parts.controller), Arc::clone(&parts.preparable))
            }
            None => service,
        }
    }

    /// Serves [`admin_service`](Self::admin_service) on the admin endpoint with
    /// `config`; returns the address it listens on. A second call replaces (and shuts
    /// down) the first endpoint.
    #[cfg(feature = "admin-http")]
    pub fn serve_admin(
        &mut self,
        config: crate::admin::http::HttpConfig,
    ) -> Result<std::net::SocketAddr, StartupError<F>> {
        self.serve_admin_with(Arc::new(self.admin_service()), config)
    }

    /// Serves `service` (built from [`admin_service`](Self::admin_service), perhaps
    /// with more options) on the admin endpoint with `config`.
    #[cfg(feature = "admin-http")]
    pub fn serve_admin_with(
        &mut self,
        service: Arc<crate::admin::AdminService>,
        config: crate::admin::http::HttpConfig,
    ) -> Result<std::net::SocketAddr, StartupError<F>> {
        let server = crate::admin::http::AdminServer::start(service, config).map_err(|source| {
            StartupError::Admin {
                component: self.name.clone(),
                source,
            }
        })?;
        let addr = server.local_addr();
        if let Some(old) = self.admin.replace(server) {
            old.shutdown();
        }
        Ok(addr)
    }

    /// The admin endpoint, if it runs.
    #[cfg(feature = "admin-http")]
    pub fn admin_server(&self) -> Option<&crate::admin::http::AdminServer> {
        self.admin.as_ref()
    }

    /// Takes the admin endpoint out (to shut it down in a service's own order).
    #[cfg(feature = "admin-http")]
    pub fn take_admin_server(&mut self) -> Option<crate::admin::http::AdminServer> {
        self.admin.take()
    }
}

impl<F: LayoutFeature, C> fmt::Debug for StartedComponent<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartedComponent")
            .field("name", &self.name)
            .field("manager", &self.manager)
            .field("prepare", &self.prepare)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}
