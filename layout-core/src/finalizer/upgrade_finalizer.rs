//! The finalizer itself: what it holds, and how it is built.

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use parking_lot::Mutex;

use super::run_state::RunState;
use super::{FinalizeCondition, FinalizeGate};
use crate::clock::{Clock, SystemClock};
use crate::feature::LayoutFeature;
use crate::manager::LayoutVersionManager;
use crate::ActionRegistry;
use crate::{FinalizationStatus, FinalizePolicy};

/// Runs a component's upgrade actions and finalizes its layout features.
///
/// ```
/// use std::sync::Arc;
/// use layout_core::*;
///
/// #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
/// enum OmFeature {
///     #[layout(version = 0, description = "Initial layout")]
///     Initial,
///     #[layout(version = 1, description = "Multi-tenancy tables")]
///     MultiTenancy,
/// }
/// struct Om;
///
/// let opts = ManagerOptions::default().with_start_intent(StartIntent::Init).with_initial_layout_version(0);
/// let lvm = Arc::new(LayoutVersionManager::<OmFeature>::open(MemoryStorage::new(), opts)?);
/// let registry = ActionRegistry::<OmFeature, Om>::builder()
///     .on_finalize(OmFeature::MultiTenancy, |_om, ctx| { ctx.message("tables created"); Ok(()) })
///     .build()?;
/// let finalizer = UpgradeFinalizer::new(Arc::clone(&lvm), registry);
/// finalizer.run_prefinalize_actions(&Om)?;
///
/// let outcome = finalizer.finalize("admin", &Om)?;
/// assert_eq!(outcome.finalized(), [OmFeature::MultiTenancy]);
/// let status = finalizer.report_status(Some("admin"), false)?;
/// assert_eq!(status.status, FinalizationStatus::FinalizationDone);
/// assert!(status.messages.iter().any(|m| m == "Finalization is done."));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct UpgradeFinalizer<F: LayoutFeature, C> {
    pub(super) lvm: Arc<LayoutVersionManager<F>>,
    pub(super) registry: ActionRegistry<F, C>,
    pub(super) conditions: Vec<Box<dyn FinalizeCondition<C>>>,
    pub(super) gates: Vec<Arc<dyn FinalizeGate>>,
    pub(super) policy: FinalizePolicy,
    pub(super) clock: Arc<dyn Clock>,
    /// Asks the running finalization (and its action) to stop; outside the lock, because
    /// an action polls it through
    /// [`ActionContext::is_cancelled`](crate::ActionContext::is_cancelled).
    pub(super) cancel: AtomicBool,
    /// Everything else about the current and last run, behind one lock.
    pub(super) run: Mutex<RunState<F>>,
}

impl<F: LayoutFeature, C: 'static> UpgradeFinalizer<F, C> {
    /// A finalizer for the component whose layout `lvm` manages, running the actions of
    /// `registry`. Manual policy, system clock, no conditions.
    pub fn new(lvm: Arc<LayoutVersionManager<F>>, registry: ActionRegistry<F, C>) -> Self {
        let status = if lvm.needs_finalization() {
            FinalizationStatus::FinalizationRequired
        } else {
            FinalizationStatus::AlreadyFinalized
        };
        // An unfinished finalization keeps its client across restarts.
        let unfinished = lvm
            .state()
            .finalization
            .filter(|r| r.finished_at_ms.is_none() && lvm.needs_finalization());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        Self {
            run: Mutex::new(RunState::new(status, unfinished, clock.now())),
            clock,
            registry,
            conditions: Vec::new(),
            gates: Vec::new(),
            policy: FinalizePolicy::Manual,
            cancel: AtomicBool::new(false),
            lvm,
        }
    }

    /// Adds a condition that must pass before finalization starts.
    #[must_use]
    pub fn with_condition(mut self, condition: impl FinalizeCondition<C> + 'static) -> Self {
        self.conditions.push(Box::new(condition));
        self
    }

    /// Adds a gate that can refuse finalization (the prepare controller's write gate: the
    /// one way "prepared" refuses finalization).
    #[must_use]
    pub fn with_gate(mut self, gate: Arc<dyn FinalizeGate>) -> Self {
        self.gates.push(gate);
        self
    }

    /// Sets the policy (default [`FinalizePolicy::Manual`]).
    #[must_use]
    pub fn with_policy(mut self, policy: FinalizePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the clock (default: the system clock). The soak period starts at this
    /// clock's now.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.run.get_mut().soak_started = clock.now();
        self.clock = clock;
        self
    }

    /// The layout version manager.
    pub fn layout_manager(&self) -> &Arc<LayoutVersionManager<F>> {
        &self.lvm
    }

    /// The action registry.
    pub fn registry(&self) -> &ActionRegistry<F, C> {
        &self.registry
    }
}

impl<F: LayoutFeature, C> fmt::Debug for UpgradeFinalizer<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpgradeFinalizer")
            .field("manager", &self.lvm)
            .field("policy", &self.policy)
            .field(
                "conditions",
                &self.conditions.iter().map(|c| c.name()).collect::<Vec<_>>(),
            )
            .field("status", &self.run.lock().status)
            .finish_non_exhaustive()
    }
}
