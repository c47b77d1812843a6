//! [`MiniCluster`]: N components of one or more kinds, each in its own directory with its
//! own layout version manager, pinned to an MLV and capped at an SLV, in this process or
//! each in a child process of its own.

mod child;
#[cfg(feature = "coordination")]
mod coordinated;
mod error;
mod node;
mod observed;
#[cfg(feature = "coordination")]
pub mod plan;
mod running;
mod values;
mod wire;

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use layout_core::LayoutFeature;
use tempfile::TempDir;

pub use child::{run_as_child_node, NODE_ROLE};
#[cfg(feature = "coordination")]
pub use coordinated::{
    CoordinatedStatus, CoordinationOptions, CoordinationStore, MemberView, COORDINATOR_ID,
    COORDINATOR_ROLE, DEFAULT_CLUSTER_TOKEN, MEMBER_FINALIZE_FAILPOINT,
};
pub use error::MiniClusterError;
pub use node::Node;
pub use observed::ObservedStore;
pub use values::{
    ClusterNode, FinalizeRun, FinalizeSummary, NodeStatus, RunOutcome, StartOptions, TESTKIT_CLIENT,
};

use crate::component::{PrepareOutcome, TestComponent};
use values::{NodeObject, NodeSpec};

/// Where each node keeps its layout state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum StorageKind {
    /// A `VERSION` file in `<node dir>/layout` ([`layout_core::FileStorage`], real
    /// fsyncs). The default, and the only kind for child-process nodes.
    #[default]
    File,
    /// [`layout_core::MemoryStorage`], one per node, kept across the node's restarts
    /// (in-process only). Faster; the component's own data still lives in its directory.
    Memory,
    /// A `VERSION` file behind an [`UnsyncedStorage`](crate::UnsyncedStorage): every
    /// write is acknowledged before it is durable, a clean stop syncs it and a crash loses
    /// the last one (in-process only). The negative control of the crash matrix: it must
    /// catch this.
    Unsynced,
}

/// The configuration of one kind of node, without its component type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KindConfig {
    pub(crate) name: String,
    pub(crate) nodes: usize,
    pub(crate) initial: Option<u32>,
    pub(crate) slv: Option<u32>,
    pub(crate) upgrade_to: Option<u32>,
    pub(crate) params: BTreeMap<String, String>,
}

/// One kind of node: a component type, how many nodes run it, and which versions.
///
/// ```
/// # use layout_testkit::{Kind, TestComponent};
/// # fn kinds<Kv: TestComponent>() {
/// // Three nodes installed by the old binary (SLV 1, so MLV 1), upgraded to SLV 3.
/// let kind = Kind::<Kv>::new("kv")
///     .nodes(3)
///     .software_layout_version(1)
///     .upgrade_to(3);
/// # }
/// ```
pub struct Kind<C: TestComponent> {
    config: KindConfig,
    component: PhantomData<fn() -> C>,
}

impl<C: TestComponent> Kind<C> {
    /// A kind named `name` (nodes are named `<name>-0`, `<name>-1`, ...): one node,
    /// running the catalog's latest version.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            config: KindConfig {
                name: name.into(),
                nodes: 1,
                initial: None,
                slv: None,
                upgrade_to: None,
                params: BTreeMap::new(),
            },
            component: PhantomData,
        }
    }

    /// How many nodes of this kind.
    #[must_use]
    pub fn nodes(mut self, count: usize) -> Self {
        self.config.nodes = count;
        self
    }

    /// The MLV a fresh node starts at (`initial_layout_version` of the manager).
    /// Default: its SLV.
    #[must_use]
    pub fn initial_layout_version(mut self, version: u32) -> Self {
        self.config.initial = Some(version);
        self
    }

    /// The SLV cap the nodes start with: the "old binary". Default: the catalog's
    /// latest version.
    #[must_use]
    pub fn software_layout_version(mut self, version: u32) -> Self {
        self.config.slv = Some(version);
        self
    }

    /// The SLV an upgrade moves the nodes to: "this version". Default: the catalog's
    /// latest version.
    #[must_use]
    pub fn upgrade_to(mut self, version: u32) -> Self {
        self.config.upgrade_to = Some(version);
        self
    }

    /// A parameter for the component ([`NodeInfo::param`](crate::NodeInfo::param), which
    /// a `NodeContext` derefs to), passed to every node of the kind in either mode.
    #[must_use]
    pub fn param(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.params.insert(key.into(), value.into());
        self
    }
}

impl<C: TestComponent> Clone for Kind<C> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            component: PhantomData,
        }
    }
}

impl<C: TestComponent> fmt::Debug for Kind<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kind")
            .field("component", &std::any::type_name::<C>())
            .field("config", &self.config)
            .finish()
    }
}

/// Creates the nodes of a kind: the component type, erased.
pub(crate) trait KindFactory: Send + Sync {
    fn type_name(&self) -> &'static str;
    fn catalog(&self) -> &'static str;
    fn latest(&self) -> u32;
    fn create(&self, spec: NodeSpec) -> Box<dyn NodeObject>;
    /// Opens a coordinator's own layout of this kind's catalog.
    #[cfg(feature = "coordination")]
    fn coordinator_layout(&self) -> coordinated::OpenLayout;
}

struct Factory<C>(PhantomData<fn() -> C>);

impl<C: TestComponent> KindFactory for Factory<C> {
    fn type_name(&self) -> &'static str {
        std::any::type_name::<C>()
    }
    fn catalog(&self) -> &'static str {
        C::Feature::CATALOG_NAME
    }
    fn latest(&self) -> u32 {
        C::Feature::latest().layout_version()
    }
    fn create(&self, spec: NodeSpec) -> Box<dyn NodeObject> {
        Box::new(Node::<C>::new(spec))
    }
    #[cfg(feature = "coordination")]
    fn coordinator_layout(&self) -> coordinated::OpenLayout {
        Arc::new(coordinated::open_coordinator_layout::<C::Feature>)
    }
}

/// A kind with its versions resolved, as built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KindInfo {
    /// The kind's name.
    pub name: String,
    /// The component type.
    pub component_type: &'static str,
    /// The catalog's name.
    pub catalog: &'static str,
    /// How many nodes.
    pub nodes: usize,
    /// The MLV fresh nodes start at.
    pub initial_layout_version: u32,
    /// The old binary's SLV (what nodes start with).
    pub old_software_layout_version: u32,
    /// The SLV an upgrade moves to.
    pub new_software_layout_version: u32,
    /// The catalog's latest version.
    pub latest_layout_version: u32,
}

/// Builds a [`MiniCluster`]; see [`MiniCluster::builder`]. Cloning it is cheap, so one
/// builder can make a fresh cluster per run (the crash matrix and mixed-version plans do).
#[derive(Clone)]
#[must_use]
pub struct MiniClusterBuilder {
    kinds: Vec<(KindConfig, Arc<dyn KindFactory>)>,
    storage: StorageKind,
    child_test: Option<String>,
    root: Option<PathBuf>,
    #[cfg(feature = "coordination")]
    coordination: Option<CoordinationOptions>,
}

impl MiniClusterBuilder {
    /// Runs the project's own cluster coordination (feature `coordination`): a dedicated
    /// coordinator (in this process, or a child process of its own with
    /// [`child_processes`](Self::child_processes)) runs the real `Coordinator`, its
    /// driver and the member link on loopback, on the store `options` names; every node
    /// runs a real `Member` that registers over the link as it starts (a refused one
    /// does not start: [`MiniClusterError::member_refusal`]), heartbeats, finalizes in the
    /// background when the coordinator says so, and leaves when stopped cleanly. The
    /// coordinator runs the kind's new SLV (it is upgraded first) and starts at the
    /// kind's initial MLV. One kind only.
    #[cfg(feature = "coordination")]
    pub fn coordinated(mut self, options: CoordinationOptions) -> Self {
        self.coordination = Some(options);
        self
    }

    /// Adds a kind of node.
    pub fn kind<C: TestComponent>(mut self, kind: Kind<C>) -> Self {
        self.kinds
            .push((kind.config, Arc::new(Factory::<C>(PhantomData))));
        self
    }

    /// Where nodes keep their layout state (default [`StorageKind::File`]).
    pub fn storage(mut self, storage: StorageKind) -> Self {
        self.storage = storage;
        self
    }

    /// Runs every node in a child process of its own: the current test binary re-run
    /// for the test `test` (its exact libtest name, from
    /// [`test_name!`](crate::test_name)), which must call
    /// [`run_as_child_node`] for each component type first thing.
    pub fn child_processes(mut self, test: impl Into<String>) -> Self {
        self.child_test = Some(test.into());
        self
    }

    /// Keeps the node directories under `root` (which must not exist yet, or be empty)
    /// instead of a temporary directory removed with the cluster.
    pub fn root_dir(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// The kinds, with their versions resolved and checked.
    pub fn kinds(&self) -> Result<Vec<KindInfo>, MiniClusterError> {
        self.kinds
            .iter()
            .map(|(config, factory)| resolve(config, factory.as_ref()))
            .collect()
    }

    /// Whether the nodes run in child processes.
    pub fn is_child_processes(&self) -> bool {
        self.child_test.is_some()
    }

    /// Changes the versions of kind `name` (the mixed-version plans pick them).
    pub(crate) fn set_versions(
        &mut self,
        name: &str,
        initial: u32,
        slv: u32,
    ) -> Result<(), MiniClusterError> {
        let (config, _) = self
            .kinds
            .iter_mut()
            .find(|(c, _)| c.name == name)
            .ok_or_else(|| MiniClusterError::InvalidConfig(format!("no kind named {name}")))?;
        config.initial = Some(initial);
        config.slv = Some(slv);
        Ok(())
    }

    /// Creates the directories and starts every node (kinds in the order added, nodes in
    /// index order), pinned to their kind's initial MLV and old SLV.
    pub fn build(self) -> Result<MiniCluster, MiniClusterError> {
        if self.kinds.is_empty() {
            return Err(MiniClusterError::InvalidConfig(
                "a mini cluster needs at least one kind of node".to_owned(),
            ));
        }
        if self.child_test.is_some() && child::is_node_process() {
            return Err(MiniClusterError::InvalidConfig(
                "this child-process node reached the test's parent half: call \
                 run_as_child_node::<C>() for every component type the cluster runs, first \
                 thing in the test"
                    .to_owned(),
            ));
        }
        let infos = self.kinds()?;
        let mut names = std::collections::BTreeSet::new();
        for info in &infos {
            if !names.insert(info.name.clone()) {
                return Err(MiniClusterError::InvalidConfig(format!(
                    "two kinds are named {}",
                    info.name
                )));
            }
            if info.name.is_empty() || info.name.contains(char::is_whitespace) {
                return Err(MiniClusterError::InvalidConfig(format!(
                    "kind name {:?} must be non-empty without spaces",
                    info.name
                )));
            }
        }
        let root = match &self.root {
            Some(path) => {
                std::fs::create_dir_all(path).map_err(|source| MiniClusterError::Io {
                    operation: "create",
                    path: path.clone(),
                    source,
                })?;
                Root::Kept(path.clone())
            }
            None => Root::Temp(
                tempfile::Builder::new()
                    .prefix("mini-cluster-")
                    .tempdir()
                    .map_err(|source| MiniClusterError::Io {
                        operation: "create a temporary directory for",
                        path: std::env::temp_dir(),
                        source,
                    })?,
            ),
        };
        #[cfg(feature = "coordination")]
        let (coordinator, member) = coordinated::start_coordinator(&self, &infos, root.path())?;
        let mut nodes: Vec<Box<dyn NodeObject>> = Vec::new();
        for ((config, factory), info) in self.kinds.iter().zip(&infos) {
            for index in 0..config.nodes {
                let name = format!("{}-{index}", config.name);
                let dir = root.path().join(&name);
                std::fs::create_dir_all(&dir).map_err(|source| MiniClusterError::Io {
                    operation: "create",
                    path: dir.clone(),
                    source,
                })?;
                nodes.push(factory.create(NodeSpec {
                    name,
                    kind: config.name.clone(),
                    index,
                    dir,
                    initial: info.initial_layout_version,
                    old_slv: info.old_software_layout_version,
                    new_slv: info.new_software_layout_version,
                    params: config.params.clone(),
                    storage: self.storage,
                    child_test: self.child_test.clone(),
                    #[cfg(feature = "coordination")]
                    member: member.clone(),
                }));
            }
        }
        let cluster = MiniCluster {
            nodes,
            kinds: infos,
            child_processes: self.child_test.is_some(),
            template: self.clone(),
            #[cfg(feature = "coordination")]
            coordinator,
            #[cfg(feature = "coordination")]
            member,
            root,
        };
        for node in &cluster.nodes {
            node.start(StartOptions::default())?;
        }
        Ok(cluster)
    }
}

impl fmt::Debug for MiniClusterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("MiniClusterBuilder");
        debug
            .field(
                "kinds",
                &self
                    .kinds
                    .iter()
                    .map(|(c, factory)| (c, factory.type_name()))
                    .collect::<Vec<_>>(),
            )
            .field("storage", &self.storage)
            .field("child_test", &self.child_test)
            .field("root", &self.root);
        #[cfg(feature = "coordination")]
        debug.field("coordination", &self.coordination);
        debug.finish()
    }
}

fn resolve(config: &KindConfig, factory: &dyn KindFactory) -> Result<KindInfo, MiniClusterError> {
    let latest = factory.latest();
    let slv = config.slv.unwrap_or(latest);
    let initial = config.initial.unwrap_or(slv);
    let upgrade_to = config.upgrade_to.unwrap_or(latest);
    let invalid = |what: String| {
        Err(MiniClusterError::InvalidConfig(format!(
            "kind {} ({}): {what}",
            config.name,
            factory.catalog()
        )))
    };
    if slv > latest {
        return invalid(format!(
            "software layout version {slv} is beyond the catalog's latest {latest}"
        ));
    }
    if upgrade_to > latest {
        return invalid(format!(
            "upgrade target {upgrade_to} is beyond the catalog's latest {latest}"
        ));
    }
    if initial > slv {
        return invalid(format!(
            "initial layout version {initial} is above the software layout version {slv}"
        ));
    }
    if upgrade_to < slv {
        return invalid(format!(
            "upgrade target {upgrade_to} is below the software layout version {slv}"
        ));
    }
    if config.nodes == 0 {
        return invalid("no nodes".to_owned());
    }
    Ok(KindInfo {
        name: config.name.clone(),
        component_type: factory.type_name(),
        catalog: factory.catalog(),
        nodes: config.nodes,
        initial_layout_version: initial,
        old_software_layout_version: slv,
        new_software_layout_version: upgrade_to,
        latest_layout_version: latest,
    })
}

enum Root {
    Temp(TempDir),
    Kept(PathBuf),
}

impl Root {
    fn path(&self) -> &Path {
        match self {
            Root::Temp(dir) => dir.path(),
            Root::Kept(path) => path,
        }
    }
}

/// N components of one or more kinds, each in its own directory with its own layout
/// version manager, pinned to an MLV and capped at an SLV ("the binary it runs").
///
/// ```
/// use layout_core::{LayoutFeature};
/// use layout_testkit::{ClusterNode, HookResult, Kind, MiniCluster, NodeContext, TestComponent};
///
/// #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
/// enum Feature {
///     #[layout(version = 0, description = "Initial layout")]
///     Initial,
///     #[layout(version = 1, description = "A new table")]
///     NewTable,
/// }
///
/// struct Service;
/// impl TestComponent for Service {
///     type Feature = Feature;
///     fn open(_ctx: &NodeContext<Feature>) -> HookResult<Self> {
///         Ok(Service)
///     }
/// }
///
/// // Three nodes of the old binary (SLV 0).
/// let cluster = MiniCluster::builder()
///     .kind(Kind::<Service>::new("svc").nodes(3).software_layout_version(0))
///     .build()?;
/// // Upgrade every binary: pre-finalized, MLV 0 < SLV 1.
/// cluster.upgrade_all()?;
/// assert!(cluster.node_dyn("svc-1")?.status()?.is_pre_finalized());
/// cluster.finalize_all()?;
/// assert_eq!(cluster.node::<Service>("svc-2")?.manager()?.metadata_layout_version(), 1);
/// // The old binary no longer starts.
/// let node = cluster.node_dyn("svc-0")?;
/// let refused = node.restart_with_slv(0).unwrap_err();
/// assert!(refused.is_disk_newer_than_software(), "{refused}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MiniCluster {
    nodes: Vec<Box<dyn NodeObject>>,
    kinds: Vec<KindInfo>,
    child_processes: bool,
    /// The builder, for nodes added later.
    template: MiniClusterBuilder,
    #[cfg(feature = "coordination")]
    coordinator: Option<parking_lot::Mutex<coordinated::CoordinatorNode>>,
    #[cfg(feature = "coordination")]
    member: Option<values::MemberLink>,
    // Declared last: the nodes stop before their directories are removed.
    root: Root,
}

impl MiniCluster {
    /// A builder with no kinds, file storage, in-process nodes.
    pub fn builder() -> MiniClusterBuilder {
        MiniClusterBuilder {
            kinds: Vec::new(),
            storage: StorageKind::File,
            child_test: None,
            root: None,
            #[cfg(feature = "coordination")]
            coordination: None,
        }
    }

    /// The directory that holds every node's directory.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Whether the nodes run in child processes.
    pub fn is_child_processes(&self) -> bool {
        self.child_processes
    }

    /// The kinds, as built.
    pub fn kinds(&self) -> &[KindInfo] {
        &self.kinds
    }

    /// Every node's name, in build order.
    pub fn node_names(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.name()).collect()
    }

    /// Every node, in build order.
    pub fn nodes(&self) -> impl Iterator<Item = &dyn ClusterNode> + '_ {
        self.nodes.iter().map(|n| n.as_cluster_node())
    }

    /// The node named `name`.
    pub fn node_dyn(&self, name: &str) -> Result<&dyn ClusterNode, MiniClusterError> {
        self.find(name).map(NodeObject::as_cluster_node)
    }

    /// The node named `name`, typed: it must run component type `C`.
    pub fn node<C: TestComponent>(&self, name: &str) -> Result<&Node<C>, MiniClusterError> {
        let node = self.find(name)?;
        let any: &dyn Any = node.as_any();
        any.downcast_ref::<Node<C>>()
            .ok_or_else(|| MiniClusterError::WrongType {
                name: name.to_owned(),
                expected: std::any::type_name::<C>(),
                actual: node.component_type(),
            })
    }

    /// Every node running component type `C`, in build order.
    pub fn nodes_of<C: TestComponent>(&self) -> Vec<&Node<C>> {
        self.nodes
            .iter()
            .filter_map(|n| n.as_any().downcast_ref::<Node<C>>())
            .collect()
    }

    fn find(&self, name: &str) -> Result<&dyn NodeObject, MiniClusterError> {
        self.nodes
            .iter()
            .find(|n| n.name() == name)
            .map(AsRef::as_ref)
            .ok_or_else(|| MiniClusterError::NoSuchNode {
                name: name.to_owned(),
                known: self.nodes.iter().map(|n| n.name().to_owned()).collect(),
            })
    }

    /// Finalizes every node up to its SLV, in build order.
    pub fn finalize_all(&self) -> Result<Vec<FinalizeSummary>, MiniClusterError> {
        self.nodes().map(ClusterNode::finalize).collect()
    }

    /// Prepares and restarts every node at its kind's new SLV, in build order.
    pub fn upgrade_all(&self) -> Result<Vec<PrepareOutcome>, MiniClusterError> {
        self.nodes().map(ClusterNode::upgrade).collect()
    }

    /// Prepares and restarts every node at its kind's old SLV, in build order.
    pub fn downgrade_all(&self) -> Result<Vec<PrepareOutcome>, MiniClusterError> {
        self.nodes().map(ClusterNode::downgrade).collect()
    }

    /// Restarts every node with its current SLV.
    pub fn restart_all(&self) -> Result<(), MiniClusterError> {
        self.nodes().try_for_each(ClusterNode::restart)
    }

    /// Starts every stopped node with its current SLV.
    pub fn start_stopped(&self) -> Result<(), MiniClusterError> {
        self.nodes()
            .filter(|n| !n.is_running())
            .try_for_each(|n| n.start(StartOptions::default()))
    }

    /// Stops every node cleanly.
    pub fn stop_all(&self) -> Result<(), MiniClusterError> {
        self.nodes().try_for_each(ClusterNode::stop)
    }

    /// Every running node's status, in build order.
    pub fn statuses(&self) -> Result<Vec<NodeStatus>, MiniClusterError> {
        self.nodes()
            .filter(|n| n.is_running())
            .map(ClusterNode::status)
            .collect()
    }
}

impl Drop for MiniCluster {
    fn drop(&mut self) {
        // Child processes are killed by their handles; in-process nodes are dropped.
        for node in &self.nodes {
            let _ = node.kill();
        }
    }
}

impl fmt::Debug for MiniCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("MiniCluster");
        debug
            .field("root", &self.root.path())
            .field("child_processes", &self.child_processes)
            .field("kinds", &self.kinds)
            .field(
                "nodes",
                &self
                    .nodes
                    .iter()
                    .map(|n| n.as_cluster_node())
                    .collect::<Vec<_>>(),
            )
            .field("template", &self.template);
        #[cfg(feature = "coordination")]
        debug
            .field("coordinated", &self.coordinator.is_some())
            .field("member_link", &self.member);
        debug.finish()
    }
}
