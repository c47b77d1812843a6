//! What a component under test implements so the kit can start, stop, upgrade, downgrade
//! and finalize it: [`TestComponent`].
//!
//! The kit starts a node with the component's [`ComponentStartup`]
//! ([`TestComponent::startup`]), the same builder a real service starts with: it opens
//! the manager (pinned to the node's MLV and capped at the node's SLV, the "binary" the
//! node runs), opens the component from that manager and its directory
//! ([`TestComponent::open`]), builds the component's [`UpgradeFinalizer`] from its
//! [`ActionRegistry`] ([`TestComponent::actions`]) and runs the start-up actions. The
//! kit only sets what belongs to the node (start intent, SLV cap, initial version,
//! storage) on top of the service's own options (its component name included).
//!
//! A component type that lives in another crate than the test (the usual case: the
//! service's library crate, tested from its `tests/` folder) cannot implement
//! [`TestComponent`] there (E0117, the orphan rule). It is adapted instead:
//! [`Adapted`](crate::Adapted) over a [`Service`](crate::Service) implemented on a
//! marker type of the test crate, reusing the service's own start-up and registry.
//!
//! One code base plays every release: a node whose SLV is capped at an older version
//! *is* the old binary. So the component must decide every format question through the
//! manager: write a new format only when its feature
//! [`is_allowed`](layout_core::LayoutVersionManager::is_allowed), and read only what
//! its [`software_layout_version`](layout_core::LayoutVersionManager::software_layout_version)
//! knows.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use layout_core::action::RegistryError;
use layout_core::startup::ComponentStartup;
use layout_core::{
    ActionRegistry, LayoutFeature, LayoutVersionManager, StartIntent, UpgradeFinalizer,
};

/// The error a component's hooks and the user's test callbacks return: anything that is
/// an error (`?` works on every `std::error::Error`, on `String` and on `&str`).
pub type HookError = Box<dyn StdError + Send + Sync + 'static>;

/// What a component's hooks and the user's test callbacks return.
pub type HookResult<T = ()> = Result<T, HookError>;

/// What [`TestComponent::prepare`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrepareOutcome {
    /// The component does not support prepare (the default): the kit changes binaries
    /// without it.
    Unsupported,
    /// The component is prepared (its write gate is up, its log flushed, snapshotted and
    /// purged), at this prepare index if it has one.
    Prepared {
        /// The prepare index.
        index: Option<u64>,
    },
}

impl fmt::Display for PrepareOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported => f.write_str("prepare unsupported"),
            Self::Prepared { index: Some(i) } => write!(f, "prepared at index {i}"),
            Self::Prepared { index: None } => f.write_str("prepared"),
        }
    }
}

/// A component the kit can run as a node of a [`MiniCluster`](crate::MiniCluster).
///
/// ```
/// use layout_core::{ActionRegistry, LayoutFeature};
/// use layout_core::action::RegistryError;
/// use layout_testkit::{HookResult, NodeContext, TestComponent};
///
/// #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
/// enum KvFeature {
///     #[layout(version = 0, description = "Initial layout")]
///     Initial,
///     #[layout(version = 1, description = "Values carry a checksum")]
///     Checksums,
/// }
///
/// struct Kv {
///     dir: std::path::PathBuf,
/// }
///
/// impl TestComponent for Kv {
///     type Feature = KvFeature;
///
///     fn open(ctx: &NodeContext<KvFeature>) -> HookResult<Self> {
///         Ok(Kv { dir: ctx.data_dir().to_owned() })
///     }
///
///     fn actions(_ctx: &NodeContext<KvFeature>) -> Result<ActionRegistry<KvFeature, Self>, RegistryError> {
///         ActionRegistry::builder()
///             .on_finalize(KvFeature::Checksums, |kv: &Kv, _ctx| {
///                 std::fs::write(kv.dir.join("checksums-enabled"), b"")?;
///                 Ok(())
///             })
///             .build()
///     }
/// }
/// ```
pub trait TestComponent: Sized + Send + Sync + 'static {
    /// The component's layout catalog.
    type Feature: LayoutFeature;

    /// Opens (starts) the component: its manager is open (the MLV and SLV are known),
    /// its directory exists. The start-up actions run right after, with the value
    /// returned. An error refuses the start, as a real service refuses to start.
    fn open(ctx: &NodeContext<Self::Feature>) -> HookResult<Self>;

    /// The component's start-up for `node`: the [`ComponentStartup`] the kit starts the
    /// node with, after setting the node's start intent, SLV cap, initial version and
    /// storage on it. Default: named after the catalog, opened with
    /// [`open`](Self::open), the registry of [`actions`](Self::actions), finalizer
    /// changed by [`configure_finalizer`](Self::configure_finalizer). A service that
    /// has its own start-up returns it here (or is [adapted](crate::Adapted)).
    fn startup(node: &NodeInfo) -> HookResult<ComponentStartup<Self::Feature, Self>> {
        let (for_open, for_actions, for_hook) = (node.clone(), node.clone(), node.clone());
        Ok(ComponentStartup::new(Self::Feature::CATALOG_NAME)
            .open(move |manager| Self::open(&for_open.context(manager)))
            .actions(move |manager| Self::actions(&for_actions.context(manager)))
            .configure_finalizer(move |finalizer, _| {
                let ctx = for_hook.context(finalizer.layout_manager());
                Self::configure_finalizer(finalizer, &ctx)
            }))
    }

    /// The component's upgrade actions. Default: none.
    fn actions(
        ctx: &NodeContext<Self::Feature>,
    ) -> Result<ActionRegistry<Self::Feature, Self>, RegistryError> {
        let _ = ctx;
        Ok(ActionRegistry::empty())
    }

    /// Adds conditions, gates, a clock or a policy to the finalizer the kit built.
    /// Default: as built (manual policy, system clock).
    fn configure_finalizer(
        finalizer: UpgradeFinalizer<Self::Feature, Self>,
        ctx: &NodeContext<Self::Feature>,
    ) -> UpgradeFinalizer<Self::Feature, Self> {
        let _ = ctx;
        finalizer
    }

    /// Prepares the component for a change of binary (`docs/prepare.md`): close the write
    /// gate, flush, snapshot, purge the log, persist the marker. The kit calls it before
    /// every upgrade and downgrade of a node in an [`UpgradeTest`](crate::UpgradeTest),
    /// a crash matrix or a mixed-version plan, then restarts the node with the
    /// `Upgrade` or `Downgrade` start intent, which clears the marker.
    ///
    /// Default: [`PrepareOutcome::Unsupported`]. A component with a
    /// `PrepareController` calls its `prepare` here.
    fn prepare(&self) -> HookResult<PrepareOutcome> {
        Ok(PrepareOutcome::Unsupported)
    }

    /// Cancels a prepare (the gate opens again). Default: nothing to cancel.
    fn cancel_prepare(&self) -> HookResult {
        Ok(())
    }

    /// Serves a test operation by name with one string argument and a string result:
    /// how test callbacks talk to a node in either mode (in a child process, this is the
    /// only way in). Default: every operation is unknown.
    fn call(&self, operation: &str, argument: &str) -> HookResult<String> {
        let _ = argument;
        Err(format!(
            "operation `{operation}` is not supported by {}",
            std::any::type_name::<Self>()
        )
        .into())
    }
}

/// Who a node is, where it lives and why it starts: what
/// [`TestComponent::startup`] and [`Service::startup`](crate::Service::startup) build a
/// start-up from (the manager is not open yet).
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) index: usize,
    pub(crate) dir: PathBuf,
    pub(crate) data_dir: PathBuf,
    pub(crate) intent: StartIntent,
    pub(crate) params: BTreeMap<String, String>,
}

impl NodeInfo {
    /// The node's name (`<kind>-<index>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The node's index among the nodes of its kind (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The node's own directory; it survives restarts, upgrades and crashes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/data`, created: where the component keeps its data (the kit keeps the
    /// layout state in `<dir>/layout`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Why the node is starting: `Init` on its first start, `Upgrade` or `Downgrade`
    /// when its SLV changed, else `Normal`.
    pub fn start_intent(&self) -> StartIntent {
        self.intent
    }

    /// A parameter set on the node's [`Kind`](crate::Kind) with
    /// [`param`](crate::Kind::param).
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// Every parameter.
    pub fn params(&self) -> &BTreeMap<String, String> {
        &self.params
    }

    /// The context a component opens with, once `manager` is open.
    pub fn context<F: LayoutFeature>(
        &self,
        manager: &Arc<LayoutVersionManager<F>>,
    ) -> NodeContext<F> {
        NodeContext {
            info: self.clone(),
            manager: Arc::clone(manager),
        }
    }
}

/// What a component is told when it opens: who it is, where it lives, its manager.
pub struct NodeContext<F: LayoutFeature> {
    pub(crate) info: NodeInfo,
    pub(crate) manager: Arc<LayoutVersionManager<F>>,
}

impl<F: LayoutFeature> std::ops::Deref for NodeContext<F> {
    type Target = NodeInfo;

    /// Who the node is, where it lives and why it starts: `ctx.name()`, `ctx.data_dir()`,
    /// `ctx.start_intent()`, `ctx.param(..)` and the rest of [`NodeInfo`].
    fn deref(&self) -> &NodeInfo {
        &self.info
    }
}

impl<F: LayoutFeature> NodeContext<F> {
    /// The node's layout version manager.
    pub fn manager(&self) -> &Arc<LayoutVersionManager<F>> {
        &self.manager
    }
}

impl<F: LayoutFeature> fmt::Debug for NodeContext<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeContext")
            .field("info", &self.info)
            .field("manager", &self.manager)
            .finish()
    }
}
