//! What both node backends (in this process, [`super::running`]; in a child process,
//! [`super::child`]) share: a node's spec, start options, status, finalization results,
//! and the [`ClusterNode`] interface every node offers.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use layout_core::StartIntent;

use super::error::MiniClusterError;
#[cfg(feature = "coordination")]
use super::wire::{decode, encode};
use super::StorageKind;
use crate::component::PrepareOutcome;
use crate::inject::{CrashPoint, Injection};
#[cfg(feature = "coordination")]
use std::time::Duration;

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
    pub(crate) member: Option<MemberLink>,
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
/// every node can do in either mode. [`Node<C>`](super::Node) implements it and adds typed access.
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
    fn status(&self) -> Result<NodeStatus, MiniClusterError>;
    /// The published MLV (the node must be running).
    fn metadata_layout_version(&self) -> Result<u32, MiniClusterError> {
        self.status().map(|s| s.metadata_layout_version)
    }
    /// Starts the stopped node.
    fn start(&self, options: StartOptions) -> Result<(), MiniClusterError>;
    /// Stops the node cleanly (a no-op when stopped).
    fn stop(&self) -> Result<(), MiniClusterError>;
    /// Kills the node: SIGKILL in child-process mode; in-process, everything is dropped
    /// (destructors run, so use child-process mode to show what a real `kill -9`
    /// leaves). A no-op when stopped.
    fn kill(&self) -> Result<(), MiniClusterError>;
    /// Stops (if running) and starts the node with `options`.
    fn restart_with(&self, options: StartOptions) -> Result<(), MiniClusterError> {
        self.stop()?;
        self.start(options)
    }
    /// Restarts the node with the same SLV.
    fn restart(&self) -> Result<(), MiniClusterError> {
        self.restart_with(StartOptions::default())
    }
    /// Restarts the node with another SLV: an upgrade or a downgrade of its binary. The
    /// directory is kept.
    fn restart_with_slv(&self, software_layout_version: u32) -> Result<(), MiniClusterError> {
        self.restart_with(
            StartOptions::default().with_software_layout_version(software_layout_version),
        )
    }
    /// Prepares the node ([`TestComponent::prepare`](crate::TestComponent::prepare)).
    fn prepare(&self) -> Result<PrepareOutcome, MiniClusterError>;
    /// Cancels a prepare ([`TestComponent::cancel_prepare`](crate::TestComponent::cancel_prepare)).
    fn cancel_prepare(&self) -> Result<(), MiniClusterError>;
    /// Prepares the node, then restarts it at its kind's new SLV ("this version").
    fn upgrade(&self) -> Result<PrepareOutcome, MiniClusterError> {
        let prepared = self.prepare()?;
        self.restart_with_slv(self.new_software_layout_version())?;
        Ok(prepared)
    }
    /// Prepares the node, then restarts it at its kind's old SLV (the old binary).
    fn downgrade(&self) -> Result<PrepareOutcome, MiniClusterError> {
        let prepared = self.prepare()?;
        self.restart_with_slv(self.old_software_layout_version())?;
        Ok(prepared)
    }
    /// Calls a test operation of the component ([`TestComponent::call`](crate::TestComponent::call)).
    fn call(&self, operation: &str, argument: &str) -> Result<String, MiniClusterError>;
    /// Finalizes every feature up to the node's SLV.
    fn finalize(&self) -> Result<FinalizeSummary, MiniClusterError> {
        self.finalize_to_version(self.software_layout_version())
    }
    /// Finalizes every feature up to layout version `target`.
    fn finalize_to_version(&self, target: u32) -> Result<FinalizeSummary, MiniClusterError> {
        match self
            .finalize_injected(Some(target), Injection::None)?
            .outcome
        {
            RunOutcome::Finalized(summary) => Ok(summary),
            RunOutcome::Crashed { .. } => Err(MiniClusterError::Protocol {
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
    ) -> Result<FinalizeRun, MiniClusterError>;
}

/// The private side of a node: downcasting to the typed handle.
pub(crate) trait NodeObject: ClusterNode {
    fn as_any(&self) -> &dyn Any;
    fn as_cluster_node(&self) -> &dyn ClusterNode;
    /// Arms a crash in the member's next local finalization (child-process nodes).
    #[cfg(feature = "coordination")]
    fn arm_member_crash(&self) -> Result<(), MiniClusterError>;
    /// Waits until the child reported `step`, then SIGKILLs the node.
    #[cfg(feature = "coordination")]
    fn kill_at_step(&self, step: &str) -> Result<(), MiniClusterError>;
    /// The member's heartbeat errors so far.
    #[cfg(feature = "coordination")]
    fn member_errors(&self) -> Result<Vec<String>, MiniClusterError>;
}

#[cfg(feature = "coordination")]
/// What a node needs to join the coordination: the coordinator's link and the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberLink {
    pub(crate) url: String,
    pub(crate) token: String,
    pub(crate) heartbeat: Duration,
    pub(crate) lease: Duration,
}

#[cfg(feature = "coordination")]
impl MemberLink {
    pub(crate) fn env(&self) -> String {
        format!(
            "{} {} {} {}",
            encode(&self.url),
            encode(&self.token),
            self.heartbeat.as_millis(),
            self.lease.as_millis()
        )
    }

    pub(crate) fn from_env(text: &str) -> Option<Self> {
        let words: Vec<&str> = text.split(' ').collect();
        let [url, token, heartbeat, lease] = words.as_slice() else {
            return None;
        };
        Some(Self {
            url: decode(url)?,
            token: decode(token)?,
            heartbeat: Duration::from_millis(heartbeat.parse().ok()?),
            lease: Duration::from_millis(lease.parse().ok()?),
        })
    }

    pub(crate) fn link(&self) -> Result<layout_core::cluster::HttpLink, String> {
        use layout_core::http::{BearerToken, ClientConfig};
        let token = BearerToken::new(self.token.clone()).map_err(|e| e.to_string())?;
        layout_core::cluster::HttpLink::new(
            &self.url,
            token,
            ClientConfig::new(Duration::from_secs(10)),
        )
        .map_err(|e| e.to_string())
    }
}
