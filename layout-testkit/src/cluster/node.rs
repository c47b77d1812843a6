//! One node of a mini cluster: a component with its own directory and manager, pinned to
//! an MLV and capped at an SLV, in this process or in a child process.

use std::any::Any;
use std::fmt;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use layout_core::{
    LayoutFeature, LayoutVersionManager, MemoryStorage, StartIntent, UpgradeFinalizer,
};
use parking_lot::Mutex;

use super::child::ChildNode;
use super::error::MiniClusterError;
use super::StorageKind;
use crate::component::{PrepareOutcome, TestComponent};
use crate::inject::{install_quiet_panic_hook, Armed, Exclusive, Injection};
use layout_core::crash_point::SimulatedCrash;

use super::running::Running;
use super::values::{
    ClusterNode, FinalizeRun, FinalizeSummary, NodeObject, NodeSpec, NodeStatus, RunOutcome,
    StartOptions,
};

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

    fn running(&self) -> Result<Running<C>, MiniClusterError> {
        match &self.state.lock().backend {
            Backend::Local(running) => Ok(running.clone()),
            Backend::Child(_) => Err(MiniClusterError::Unsupported {
                node: self.spec.name.clone(),
                what: "the node runs in a child process: use call(), status() and finalize(), \
                       or an in-process cluster for typed access"
                    .to_owned(),
            }),
            Backend::Stopped => Err(MiniClusterError::NotRunning {
                node: self.spec.name.clone(),
            }),
        }
    }

    /// The running component (in-process only).
    pub fn component(&self) -> Result<Arc<C>, MiniClusterError> {
        self.running().map(|r| r.component)
    }

    /// The running node's layout version manager (in-process only).
    pub fn manager(&self) -> Result<Arc<LayoutVersionManager<C::Feature>>, MiniClusterError> {
        self.running().map(|r| r.lvm)
    }

    /// The running node's finalizer (in-process only).
    pub fn finalizer(&self) -> Result<Arc<UpgradeFinalizer<C::Feature, C>>, MiniClusterError> {
        self.running().map(|r| r.finalizer)
    }

    /// Finalizes up to `target`.
    pub fn finalize_to(&self, target: C::Feature) -> Result<FinalizeSummary, MiniClusterError> {
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
        local: impl FnOnce(&Running<C>) -> Result<T, MiniClusterError>,
        child: impl FnOnce(&mut ChildNode) -> Result<T, MiniClusterError>,
    ) -> Result<T, MiniClusterError> {
        let mut state = self.state.lock();
        match &mut state.backend {
            Backend::Local(running) => {
                let running = running.clone();
                drop(state);
                local(&running)
            }
            Backend::Child(process) => child(process),
            Backend::Stopped => Err(MiniClusterError::NotRunning {
                node: self.spec.name.clone(),
            }),
        }
    }

    fn finalize_local(
        &self,
        running: &Running<C>,
        target: Option<u32>,
        injection: Injection,
    ) -> Result<FinalizeRun, MiniClusterError> {
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
        .map_err(|what| MiniClusterError::Unsupported {
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

    fn status(&self) -> Result<NodeStatus, MiniClusterError> {
        self.with_running(|r| Ok(r.status(&self.spec.name)), ChildNode::status)
    }

    fn start(&self, options: StartOptions) -> Result<(), MiniClusterError> {
        let mut state = self.state.lock();
        if !matches!(state.backend, Backend::Stopped) {
            return Err(MiniClusterError::InvalidConfig(format!(
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

    fn stop(&self) -> Result<(), MiniClusterError> {
        let backend = std::mem::replace(&mut self.state.lock().backend, Backend::Stopped);
        match backend {
            Backend::Child(child) => child.stop(),
            Backend::Local(running) => {
                // A clean stop makes what was acknowledged durable.
                if let Some(unsynced) = &running.unsynced {
                    unsynced.sync().map_err(|source| MiniClusterError::Layout {
                        node: self.spec.name.clone(),
                        source: Box::new(source.into()),
                    })?;
                }
                drop(running);
                Ok(())
            }
            Backend::Stopped => Ok(()),
        }
    }

    fn kill(&self) -> Result<(), MiniClusterError> {
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

    fn prepare(&self) -> Result<PrepareOutcome, MiniClusterError> {
        self.with_running(|r| r.prepare(&self.spec.name), ChildNode::prepare)
    }

    fn cancel_prepare(&self) -> Result<(), MiniClusterError> {
        self.with_running(
            |r| r.cancel_prepare(&self.spec.name),
            ChildNode::cancel_prepare,
        )
    }

    fn call(&self, operation: &str, argument: &str) -> Result<String, MiniClusterError> {
        self.with_running(
            |r| r.call(&self.spec.name, operation, argument),
            |child| child.call(operation, argument),
        )
    }

    fn finalize_injected(
        &self,
        target: Option<u32>,
        injection: Injection,
    ) -> Result<FinalizeRun, MiniClusterError> {
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
            Backend::Stopped => Err(MiniClusterError::NotRunning {
                node: self.spec.name.clone(),
            }),
        }
    }
}

impl<C: TestComponent> NodeObject for Node<C> {
    #[cfg(feature = "coordination")]
    fn arm_member_crash(&self) -> Result<(), MiniClusterError> {
        self.with_running(
            |_| {
                Err(MiniClusterError::Unsupported {
                    node: self.spec.name.clone(),
                    what: "crashing a member in its finalization needs a child-process cluster"
                        .to_owned(),
                })
            },
            ChildNode::arm_member_crash,
        )
    }

    #[cfg(feature = "coordination")]
    fn member_errors(&self) -> Result<Vec<String>, MiniClusterError> {
        self.with_running(
            |r| Ok(r.member.as_ref().map(|m| m.errors()).unwrap_or_default()),
            ChildNode::member_errors,
        )
    }

    #[cfg(feature = "coordination")]
    fn kill_at_step(&self, step: &str) -> Result<(), MiniClusterError> {
        let mut state = self.state.lock();
        let Backend::Child(child) = &mut state.backend else {
            return Err(MiniClusterError::Unsupported {
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
