//! One node of a mini cluster: a component with its own directory and manager, pinned to
//! an MLV and capped at an SLV, in this process or in a child process.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use layout_core::startup::StartupError;
use layout_core::{
    FeatureStatus, FileStorage, FinalizeOutcome, FinalizeRequest, LayoutFeature,
    LayoutVersionManager, MemoryStorage, StartIntent, UpgradeFinalizer,
};
use parking_lot::Mutex;

use super::child::ChildNode;
use super::error::ClusterError;
use super::StorageKind;
use crate::component::{NodeInfo, PrepareOutcome, TestComponent};
use crate::inject::{install_quiet_panic_hook, Armed, CrashPoint, Exclusive, Injection};
use layout_core::crash_point::SimulatedCrash;

/// The client id the kit finalizes as.
pub const TESTKIT_CLIENT: &str = "layout-testkit";

/// Everything fixed about a node.
#[derive(Debug, Clone)]
pub(crate) struct NodeSpec {
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) index: usize,
    pub(crate) dir: PathBuf,
    /// The MLV a fresh install starts at.
    pub(crate) initial: u32,
    /// The SLV of the node's first start: the "old binary".
    pub(crate) old_slv: u32,
    /// The SLV an upgrade moves to: "this version".
    pub(crate) new_slv: u32,
    pub(crate) params: BTreeMap<String, String>,
    pub(crate) storage: StorageKind,
    /// The exact libtest name to re-run as the node's process (child-process mode).
    pub(crate) child_test: Option<String>,
    /// The coordinator's link, when the cluster is coordinated: the node runs a member.
    #[cfg(feature = "coordination")]
    pub(crate) member: Option<super::coordinated::MemberLink>,
}

impl NodeSpec {
    pub(crate) fn layout_dir(&self) -> PathBuf {
        self.dir.join("layout")
    }
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

/// How to start a node: which SLV ("binary") and which start intent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StartOptions {
    /// The SLV to run (default: the node's current SLV).
    pub software_layout_version: Option<u32>,
    /// The start intent (default: `Init` on the node's first start, `Upgrade` or
    /// `Downgrade` when the SLV changes, else `Normal`).
    pub intent: Option<StartIntent>,
}

impl StartOptions {
    /// Start with this SLV.
    #[must_use]
    pub fn with_software_layout_version(mut self, slv: u32) -> Self {
        self.software_layout_version = Some(slv);
        self
    }

    /// Start with this intent.
    #[must_use]
    pub fn with_intent(mut self, intent: StartIntent) -> Self {
        self.intent = Some(intent);
        self
    }
}

/// A node's layout status.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStatus {
    /// The node.
    pub name: String,
    /// The published MLV.
    pub metadata_layout_version: u32,
    /// The SLV the node runs.
    pub software_layout_version: u32,
    /// The features above the MLV up to the SLV, ascending (refused until finalized).
    pub unfinalized: Vec<String>,
}

impl NodeStatus {
    /// Whether MLV < SLV.
    pub fn is_pre_finalized(&self) -> bool {
        self.metadata_layout_version < self.software_layout_version
    }
}

/// What a finalization of one node did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FinalizeSummary {
    /// The node.
    pub node: String,
    /// The MLV before.
    pub from: u32,
    /// The MLV after.
    pub metadata_layout_version: u32,
    /// The features finalized, in order.
    pub finalized: Vec<String>,
}

/// How a finalization with an [`Injection`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunOutcome {
    /// It ran to its end.
    Finalized(FinalizeSummary),
    /// It crashed at the injected point; the node is stopped.
    Crashed {
        /// Where.
        at: CrashPoint,
        /// The MLV the node had published (what readers saw) when it crashed.
        published_mlv: u32,
    },
}

/// A finalization with an [`Injection`]: how it ended and the crash points it passed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FinalizeRun {
    /// How it ended.
    pub outcome: RunOutcome,
    /// The crash points passed, in order (with [`Injection::Trace`] or
    /// [`Injection::Crash`]; empty otherwise): the finalizer's steps and every point
    /// inside its actions (see [`passed_points`](crate::passed_points)).
    pub trace: Vec<&'static str>,
}

/// A node of a [`MiniCluster`](crate::MiniCluster), without its component type: what
/// every node can do in either mode. [`Node<C>`] implements it and adds typed access.
pub trait ClusterNode: Send + Sync + fmt::Debug {
    /// The node's name (`<kind>-<index>`).
    fn name(&self) -> &str;
    /// The node's kind.
    fn kind(&self) -> &str;
    /// The node's directory.
    fn dir(&self) -> &Path;
    /// The component type's name.
    fn component_type(&self) -> &'static str;
    /// Whether the node is running.
    fn is_running(&self) -> bool;
    /// The SLV the node runs (or last ran).
    fn software_layout_version(&self) -> u32;
    /// The SLV of the node's kind's old binary.
    fn old_software_layout_version(&self) -> u32;
    /// The SLV an upgrade moves the node to.
    fn new_software_layout_version(&self) -> u32;
    /// The layout status (the node must be running).
    fn status(&self) -> Result<NodeStatus, ClusterError>;
    /// The published MLV (the node must be running).
    fn metadata_layout_version(&self) -> Result<u32, ClusterError> {
        self.status().map(|s| s.metadata_layout_version)
    }
    /// Starts the stopped node.
    fn start(&self, options: StartOptions) -> Result<(), ClusterError>;
    /// Stops the node cleanly (a no-op when stopped).
    fn stop(&self) -> Result<(), ClusterError>;
    /// Kills the node: SIGKILL in child-process mode; in-process, everything is dropped
    /// (destructors run, so use child-process mode to show what a real `kill -9`
    /// leaves). A no-op when stopped.
    fn kill(&self) -> Result<(), ClusterError>;
    /// Stops (if running) and starts the node with `options`.
    fn restart_with(&self, options: StartOptions) -> Result<(), ClusterError> {
        self.stop()?;
        self.start(options)
    }
    /// Restarts the node with the same SLV.
    fn restart(&self) -> Result<(), ClusterError> {
        self.restart_with(StartOptions::default())
    }
    /// Restarts the node with another SLV: an upgrade or a downgrade of its binary. The
    /// directory is kept.
    fn restart_with_slv(&self, software_layout_version: u32) -> Result<(), ClusterError> {
        self.restart_with(
            StartOptions::default().with_software_layout_version(software_layout_version),
        )
    }
    /// Prepares the node ([`TestComponent::prepare`]).
    fn prepare(&self) -> Result<PrepareOutcome, ClusterError>;
    /// Cancels a prepare ([`TestComponent::cancel_prepare`]).
    fn cancel_prepare(&self) -> Result<(), ClusterError>;
    /// Prepares the node, then restarts it at its kind's new SLV ("this version").
    fn upgrade(&self) -> Result<PrepareOutcome, ClusterError> {
        let prepared = self.prepare()?;
        self.restart_with_slv(self.new_software_layout_version())?;
        Ok(prepared)
    }
    /// Prepares the node, then restarts it at its kind's old SLV (the old binary).
    fn downgrade(&self) -> Result<PrepareOutcome, ClusterError> {
        let prepared = self.prepare()?;
        self.restart_with_slv(self.old_software_layout_version())?;
        Ok(prepared)
    }
    /// Calls a test operation of the component ([`TestComponent::call`]).
    fn call(&self, operation: &str, argument: &str) -> Result<String, ClusterError>;
    /// Finalizes every feature up to the node's SLV.
    fn finalize(&self) -> Result<FinalizeSummary, ClusterError> {
        self.finalize_to_version(self.software_layout_version())
    }
    /// Finalizes every feature up to layout version `target`.
    fn finalize_to_version(&self, target: u32) -> Result<FinalizeSummary, ClusterError> {
        match self
            .finalize_injected(Some(target), Injection::None)?
            .outcome
        {
            RunOutcome::Finalized(summary) => Ok(summary),
            RunOutcome::Crashed { .. } => Err(ClusterError::Protocol {
                node: self.name().to_owned(),
                answer: "crashed without an injected crash".to_owned(),
            }),
        }
    }
    /// Finalizes up to `target` (default: the SLV) with an injection: a trace of the
    /// crash points passed, or a crash at one of them (see [`crate::inject`]).
    fn finalize_injected(
        &self,
        target: Option<u32>,
        injection: Injection,
    ) -> Result<FinalizeRun, ClusterError>;
}

/// The private side of a node: downcasting to the typed handle.
pub(crate) trait NodeObject: ClusterNode {
    fn as_any(&self) -> &dyn Any;
    fn as_cluster_node(&self) -> &dyn ClusterNode;
    /// Arms a crash in the member's next local finalization (child-process nodes).
    #[cfg(feature = "coordination")]
    fn arm_member_crash(&self) -> Result<(), ClusterError>;
    /// Waits until the child reported `step`, then SIGKILLs the node.
    #[cfg(feature = "coordination")]
    fn kill_at_step(&self, step: &str) -> Result<(), ClusterError>;
    /// The member's heartbeat errors so far.
    #[cfg(feature = "coordination")]
    fn member_errors(&self) -> Result<Vec<String>, ClusterError>;
}

/// A running in-process node: the manager, the finalizer and the component.
pub(crate) struct Running<C: TestComponent> {
    pub(crate) lvm: Arc<LayoutVersionManager<C::Feature>>,
    pub(crate) finalizer: Arc<UpgradeFinalizer<C::Feature, C>>,
    pub(crate) component: Arc<C>,
    /// The node's member of a coordinated cluster, heartbeating.
    #[cfg(feature = "coordination")]
    pub(crate) member: Option<Arc<super::coordinated::MemberRunner>>,
}

impl<C: TestComponent> Clone for Running<C> {
    fn clone(&self) -> Self {
        Self {
            lvm: Arc::clone(&self.lvm),
            finalizer: Arc::clone(&self.finalizer),
            component: Arc::clone(&self.component),
            #[cfg(feature = "coordination")]
            member: self.member.clone(),
        }
    }
}

impl<C: TestComponent> Running<C> {
    /// Starts the component as the real service starts: with its `ComponentStartup`
    /// ([`TestComponent::startup`]), on which the kit sets only the node's start intent,
    /// SLV cap, initial version and storage.
    pub(crate) fn open(
        spec: &NodeSpec,
        slv: u32,
        intent: StartIntent,
        memory: Option<&Arc<MemoryStorage>>,
    ) -> Result<Self, ClusterError> {
        let node = || spec.name.clone();
        let data_dir = spec.data_dir();
        std::fs::create_dir_all(&data_dir).map_err(|source| ClusterError::Io {
            operation: "create",
            path: data_dir.clone(),
            source,
        })?;
        let info = NodeInfo {
            name: spec.name.clone(),
            kind: spec.kind.clone(),
            index: spec.index,
            dir: spec.dir.clone(),
            data_dir,
            intent,
            params: spec.params.clone(),
        };
        let initial = (intent == StartIntent::Init).then(|| spec.initial.min(slv));
        let startup = C::startup(&info)
            .map_err(|source| ClusterError::Component {
                node: node(),
                operation: "startup".to_owned(),
                source,
            })?
            .map_options(|options| {
                let options = options
                    .with_start_intent(intent)
                    .with_software_layout_version(slv);
                match initial {
                    Some(version) => options.with_initial_layout_version(version),
                    None => options,
                }
            });
        let startup = match (spec.storage, memory) {
            (StorageKind::Memory, Some(memory)) => startup.storage(Arc::clone(memory)),
            _ => startup.storage(FileStorage::new(spec.layout_dir())),
        };
        let mut started = startup.start().map_err(|e| match e {
            StartupError::Manager(source) => ClusterError::Layout {
                node: node(),
                source: Box::new(source),
            },
            StartupError::Open { source, .. } => ClusterError::Component {
                node: node(),
                operation: "open".to_owned(),
                source,
            },
            StartupError::Registry(source) => ClusterError::Registry {
                node: node(),
                source,
            },
            StartupError::StartupActions(e) => ClusterError::StartupActions {
                node: node(),
                message: e.to_string(),
            },
            other => ClusterError::Component {
                node: node(),
                operation: "startup".to_owned(),
                source: Box::new(other),
            },
        })?;
        // A service that resumes an interrupted finalization at start-up does so here
        // too; the kit waits for it, so what follows (a finalization, a check) never
        // races it. Its outcome is the finalizer's status, as in the service.
        if let Some(resumed) = started.take_resumed() {
            if let Err(e) = resumed.join() {
                eprintln!(
                    "layout-testkit: node {}: the finalization resumed at start-up failed: {e}",
                    spec.name
                );
            }
        }
        let finalizer = Arc::clone(started.finalizer());
        let component = Arc::clone(started.component());
        #[cfg(feature = "coordination")]
        let member = match &spec.member {
            Some(link) => Some(Arc::new(super::coordinated::MemberRunner::start(
                &spec.name,
                &spec.kind,
                link,
                Arc::new(layout_core::cluster::FinalizerLayout::new(
                    Arc::clone(&finalizer),
                    Arc::clone(&component),
                )),
            )?)),
            None => None,
        };
        Ok(Self {
            lvm: Arc::clone(started.manager()),
            finalizer,
            component,
            #[cfg(feature = "coordination")]
            member,
        })
    }

    pub(crate) fn status(&self, name: &str) -> NodeStatus {
        NodeStatus {
            name: name.to_owned(),
            metadata_layout_version: self.lvm.metadata_layout_version(),
            software_layout_version: self.lvm.software_layout_version(),
            unfinalized: self
                .lvm
                .features()
                .into_iter()
                .filter(|f| f.status == FeatureStatus::NotFinalized)
                .map(|f| f.feature.name().to_owned())
                .collect(),
        }
    }

    /// Finalizes up to `target` (default: the SLV) as the kit's client.
    pub(crate) fn finalize(
        &self,
        name: &str,
        target: Option<u32>,
    ) -> Result<FinalizeSummary, ClusterError> {
        let from = self.lvm.metadata_layout_version();
        let mut request = FinalizeRequest::new(TESTKIT_CLIENT).with_takeover(true);
        if let Some(version) = target {
            let feature =
                C::Feature::from_layout_version(version).ok_or_else(|| ClusterError::Finalize {
                    node: name.to_owned(),
                    message: format!(
                        "layout version {version} is not in catalog {}",
                        C::Feature::CATALOG_NAME
                    ),
                })?;
            request = request.with_target(feature);
        }
        let outcome = self
            .finalizer
            .finalize_with(request, &self.component)
            .map_err(|e| ClusterError::Finalize {
                node: name.to_owned(),
                message: e.to_string(),
            })?;
        Ok(FinalizeSummary {
            node: name.to_owned(),
            from,
            metadata_layout_version: outcome.metadata_layout_version(),
            finalized: match outcome {
                FinalizeOutcome::FinalizationDone { finalized, .. } => {
                    finalized.iter().map(|f| f.name().to_owned()).collect()
                }
                FinalizeOutcome::AlreadyFinalized { .. } => Vec::new(),
            },
        })
    }

    pub(crate) fn call(
        &self,
        name: &str,
        operation: &str,
        argument: &str,
    ) -> Result<String, ClusterError> {
        self.component
            .call(operation, argument)
            .map_err(|source| ClusterError::Component {
                node: name.to_owned(),
                operation: format!("call {operation}"),
                source,
            })
    }

    pub(crate) fn prepare(&self, name: &str) -> Result<PrepareOutcome, ClusterError> {
        self.component
            .prepare()
            .map_err(|source| ClusterError::Component {
                node: name.to_owned(),
                operation: "prepare".to_owned(),
                source,
            })
    }

    pub(crate) fn cancel_prepare(&self, name: &str) -> Result<(), ClusterError> {
        self.component
            .cancel_prepare()
            .map_err(|source| ClusterError::Component {
                node: name.to_owned(),
                operation: "cancel_prepare".to_owned(),
                source,
            })
    }
}

enum Backend<C: TestComponent> {
    Stopped,
    Local(Running<C>),
    Child(ChildNode),
}

struct NodeState<C: TestComponent> {
    /// The SLV of the last successful start (the initial one before the first).
    slv: u32,
    /// Whether the node ever started (later starts are not `Init`).
    started: bool,
    backend: Backend<C>,
}

/// A node running component type `C`; see [`ClusterNode`] for what every node does.
/// In-process, [`component`](Self::component), [`manager`](Self::manager) and
/// [`finalizer`](Self::finalizer) give the typed objects of the running instance (a
/// restart replaces them: do not keep them across one).
pub struct Node<C: TestComponent> {
    spec: NodeSpec,
    memory: Option<Arc<MemoryStorage>>,
    state: Mutex<NodeState<C>>,
}

impl<C: TestComponent> Node<C> {
    pub(crate) fn new(spec: NodeSpec) -> Self {
        let memory = (spec.storage == StorageKind::Memory).then(|| Arc::new(MemoryStorage::new()));
        Self {
            state: Mutex::new(NodeState {
                slv: spec.old_slv,
                started: false,
                backend: Backend::Stopped,
            }),
            memory,
            spec,
        }
    }

    fn running(&self) -> Result<Running<C>, ClusterError> {
        match &self.state.lock().backend {
            Backend::Local(running) => Ok(running.clone()),
            Backend::Child(_) => Err(ClusterError::Unsupported {
                node: self.spec.name.clone(),
                what: "the node runs in a child process: use call(), status() and finalize(), \
                       or an in-process cluster for typed access"
                    .to_owned(),
            }),
            Backend::Stopped => Err(ClusterError::NotRunning {
                node: self.spec.name.clone(),
            }),
        }
    }

    /// The running component (in-process only).
    pub fn component(&self) -> Result<Arc<C>, ClusterError> {
        self.running().map(|r| r.component)
    }

    /// The running node's layout version manager (in-process only).
    pub fn manager(&self) -> Result<Arc<LayoutVersionManager<C::Feature>>, ClusterError> {
        self.running().map(|r| r.lvm)
    }

    /// The running node's finalizer (in-process only).
    pub fn finalizer(&self) -> Result<Arc<UpgradeFinalizer<C::Feature, C>>, ClusterError> {
        self.running().map(|r| r.finalizer)
    }

    /// Finalizes up to `target`.
    pub fn finalize_to(&self, target: C::Feature) -> Result<FinalizeSummary, ClusterError> {
        self.finalize_to_version(target.layout_version())
    }

    /// The node's index among the nodes of its kind.
    pub fn index(&self) -> usize {
        self.spec.index
    }

    /// `<dir>/data`: the component's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.spec.data_dir()
    }

    fn with_running<T>(
        &self,
        local: impl FnOnce(&Running<C>) -> Result<T, ClusterError>,
        child: impl FnOnce(&mut ChildNode) -> Result<T, ClusterError>,
    ) -> Result<T, ClusterError> {
        let mut state = self.state.lock();
        match &mut state.backend {
            Backend::Local(running) => {
                let running = running.clone();
                drop(state);
                local(&running)
            }
            Backend::Child(process) => child(process),
            Backend::Stopped => Err(ClusterError::NotRunning {
                node: self.spec.name.clone(),
            }),
        }
    }

    fn finalize_local(
        &self,
        running: &Running<C>,
        target: Option<u32>,
        injection: Injection,
    ) -> Result<FinalizeRun, ClusterError> {
        let name = &self.spec.name;
        let _exclusive = Exclusive::take(true);
        install_quiet_panic_hook();
        // The MLV readers saw when the crash happened (on whichever thread).
        let published = Arc::new(Mutex::new(None));
        let at_crash = Arc::clone(&published);
        let lvm = Arc::clone(&running.lvm);
        let armed = Armed::arm(
            injection,
            |_| {},
            move |point, first| {
                if first {
                    *at_crash.lock() = Some(lvm.metadata_layout_version());
                }
                SimulatedCrash {
                    point: point.failpoint,
                    hit: point.hit,
                }
                .raise()
            },
        )
        .map_err(|what| ClusterError::Unsupported {
            node: name.clone(),
            what,
        })?;
        let result = catch_unwind(AssertUnwindSafe(|| running.finalize(name, target)));
        let trace = armed.trace();
        let crashed = armed.crashed();
        drop(armed);
        match (result, crashed) {
            (Err(payload), _) if !SimulatedCrash::is_payload(&*payload) => resume_unwind(payload),
            // The crash, here or on another thread of the node's work (which may have
            // made the finalization fail or let it return): everything of the running
            // instance is dropped.
            (_, Some(at)) => {
                let published_mlv = published
                    .lock()
                    .unwrap_or_else(|| running.lvm.metadata_layout_version());
                self.state.lock().backend = Backend::Stopped;
                Ok(FinalizeRun {
                    outcome: RunOutcome::Crashed { at, published_mlv },
                    trace,
                })
            }
            (Ok(summary), None) => Ok(FinalizeRun {
                outcome: RunOutcome::Finalized(summary?),
                trace,
            }),
            (Err(payload), None) => resume_unwind(payload),
        }
    }
}

impl<C: TestComponent> ClusterNode for Node<C> {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn kind(&self) -> &str {
        &self.spec.kind
    }

    fn dir(&self) -> &Path {
        &self.spec.dir
    }

    fn component_type(&self) -> &'static str {
        std::any::type_name::<C>()
    }

    fn is_running(&self) -> bool {
        !matches!(self.state.lock().backend, Backend::Stopped)
    }

    fn software_layout_version(&self) -> u32 {
        self.state.lock().slv
    }

    fn old_software_layout_version(&self) -> u32 {
        self.spec.old_slv
    }

    fn new_software_layout_version(&self) -> u32 {
        self.spec.new_slv
    }

    fn status(&self) -> Result<NodeStatus, ClusterError> {
        self.with_running(|r| Ok(r.status(&self.spec.name)), ChildNode::status)
    }

    fn start(&self, options: StartOptions) -> Result<(), ClusterError> {
        let mut state = self.state.lock();
        if !matches!(state.backend, Backend::Stopped) {
            return Err(ClusterError::InvalidConfig(format!(
                "node {} is already running; stop it first (or use restart)",
                self.spec.name
            )));
        }
        let slv = options.software_layout_version.unwrap_or(state.slv);
        let intent = options.intent.unwrap_or(if !state.started {
            StartIntent::Init
        } else if slv > state.slv {
            StartIntent::Upgrade
        } else if slv < state.slv {
            StartIntent::Downgrade
        } else {
            StartIntent::Normal
        });
        let backend = match &self.spec.child_test {
            None => Backend::Local(Running::open(
                &self.spec,
                slv,
                intent,
                self.memory.as_ref(),
            )?),
            Some(test) => Backend::Child(ChildNode::spawn(
                &self.spec,
                test,
                std::any::type_name::<C>(),
                slv,
                intent,
            )?),
        };
        state.backend = backend;
        state.slv = slv;
        state.started = true;
        Ok(())
    }

    fn stop(&self) -> Result<(), ClusterError> {
        let backend = std::mem::replace(&mut self.state.lock().backend, Backend::Stopped);
        match backend {
            Backend::Child(child) => child.stop(),
            Backend::Local(running) => {
                drop(running);
                Ok(())
            }
            Backend::Stopped => Ok(()),
        }
    }

    fn kill(&self) -> Result<(), ClusterError> {
        let backend = std::mem::replace(&mut self.state.lock().backend, Backend::Stopped);
        match backend {
            Backend::Child(child) => child.kill(),
            Backend::Local(running) => {
                // A kill leaves no word: the member's lease lapses.
                #[cfg(feature = "coordination")]
                if let Some(member) = &running.member {
                    member.abandon();
                }
                drop(running);
                Ok(())
            }
            Backend::Stopped => Ok(()),
        }
    }

    fn prepare(&self) -> Result<PrepareOutcome, ClusterError> {
        self.with_running(|r| r.prepare(&self.spec.name), ChildNode::prepare)
    }

    fn cancel_prepare(&self) -> Result<(), ClusterError> {
        self.with_running(
            |r| r.cancel_prepare(&self.spec.name),
            ChildNode::cancel_prepare,
        )
    }

    fn call(&self, operation: &str, argument: &str) -> Result<String, ClusterError> {
        self.with_running(
            |r| r.call(&self.spec.name, operation, argument),
            |child| child.call(operation, argument),
        )
    }

    fn finalize_injected(
        &self,
        target: Option<u32>,
        injection: Injection,
    ) -> Result<FinalizeRun, ClusterError> {
        let mut state = self.state.lock();
        match &mut state.backend {
            Backend::Local(running) => {
                let running = running.clone();
                drop(state);
                self.finalize_local(&running, target, injection)
            }
            Backend::Child(child) => {
                let run = child.finalize(target, injection)?;
                if matches!(run.outcome, RunOutcome::Crashed { .. }) {
                    state.backend = Backend::Stopped;
                }
                Ok(run)
            }
            Backend::Stopped => Err(ClusterError::NotRunning {
                node: self.spec.name.clone(),
            }),
        }
    }
}

impl<C: TestComponent> NodeObject for Node<C> {
    #[cfg(feature = "coordination")]
    fn arm_member_crash(&self) -> Result<(), ClusterError> {
        self.with_running(
            |_| {
                Err(ClusterError::Unsupported {
                    node: self.spec.name.clone(),
                    what: "crashing a member in its finalization needs a child-process cluster"
                        .to_owned(),
                })
            },
            ChildNode::arm_member_crash,
        )
    }

    #[cfg(feature = "coordination")]
    fn member_errors(&self) -> Result<Vec<String>, ClusterError> {
        self.with_running(
            |r| Ok(r.member.as_ref().map(|m| m.errors()).unwrap_or_default()),
            ChildNode::member_errors,
        )
    }

    #[cfg(feature = "coordination")]
    fn kill_at_step(&self, step: &str) -> Result<(), ClusterError> {
        let mut state = self.state.lock();
        let Backend::Child(child) = &mut state.backend else {
            return Err(ClusterError::Unsupported {
                node: self.spec.name.clone(),
                what: "killing a node at a step needs a running child-process node".to_owned(),
            });
        };
        child.wait_for_step(step)?;
        match std::mem::replace(&mut state.backend, Backend::Stopped) {
            Backend::Child(child) => child.kill(),
            _ => Ok(()),
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_cluster_node(&self) -> &dyn ClusterNode {
        self
    }
}

impl<C: TestComponent> fmt::Debug for Node<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("Node")
            .field("name", &self.spec.name)
            .field("component", &std::any::type_name::<C>())
            .field("dir", &self.spec.dir)
            .field("software_layout_version", &state.slv)
            .field(
                "backend",
                &match state.backend {
                    Backend::Stopped => "stopped",
                    Backend::Local(_) => "in-process",
                    Backend::Child(_) => "child process",
                },
            )
            .finish_non_exhaustive()
    }
}
