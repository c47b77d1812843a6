//! The member side: a component that registers with the coordinator, heartbeats, and
//! finalizes its own layout when told to.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use super::link::CoordinatorLink;
use super::protocol::{CoordinatorAnswer, HeartbeatError, Instruction, MemberReport, Refusal};
use crate::feature::LayoutFeature;
use crate::finalizer::{FinalizeRequest, UpgradeFinalizer};
use crate::manager::LayoutVersionManager;

/// The error a [`LocalLayout`] returns when finalizing fails.
pub type LocalError = Box<dyn StdError + Send + Sync + 'static>;

/// A component's own layout, as the cluster sees it: its SLV and MLV, and a way to
/// finalize it up to a version. Used by members (finalize when instructed) and by the
/// coordinator (its own layout finalizes first).
///
/// Implemented for [`FinalizerLayout`] (an [`UpgradeFinalizer`] and its component: the
/// actions run) and for a bare [`LayoutVersionManager`] (no actions).
pub trait LocalLayout: Send + Sync {
    /// The software layout version.
    fn software_layout_version(&self) -> u32;
    /// The metadata layout version, as on disk.
    fn metadata_layout_version(&self) -> u32;
    /// Finalizes up to `version` (a no-op at or above it); returns the MLV after.
    fn finalize_to(&self, version: u32, client_id: &str) -> Result<u32, LocalError>;
}

impl<L: LocalLayout + ?Sized> LocalLayout for Arc<L> {
    fn software_layout_version(&self) -> u32 {
        (**self).software_layout_version()
    }
    fn metadata_layout_version(&self) -> u32 {
        (**self).metadata_layout_version()
    }
    fn finalize_to(&self, version: u32, client_id: &str) -> Result<u32, LocalError> {
        (**self).finalize_to(version, client_id)
    }
}

/// Asked to finalize to a version this software does not have.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot finalize {catalog} to layout version {requested}: this software's layout version \
     is {software_layout_version}"
)]
pub struct BeyondSoftware {
    /// The catalog.
    pub catalog: &'static str,
    /// The version asked for.
    pub requested: u32,
    /// The SLV.
    pub software_layout_version: u32,
}

fn target_feature<F: LayoutFeature>(version: u32, slv: u32) -> Result<F, LocalError> {
    F::from_layout_version(version)
        .filter(|f| f.layout_version() <= slv)
        .ok_or_else(|| {
            Box::new(BeyondSoftware {
                catalog: F::CATALOG_NAME,
                requested: version,
                software_layout_version: slv,
            }) as LocalError
        })
}

impl<F: LayoutFeature> LocalLayout for LayoutVersionManager<F> {
    fn software_layout_version(&self) -> u32 {
        LayoutVersionManager::software_layout_version(self)
    }
    fn metadata_layout_version(&self) -> u32 {
        LayoutVersionManager::metadata_layout_version(self)
    }
    fn finalize_to(&self, version: u32, _client_id: &str) -> Result<u32, LocalError> {
        let slv = LayoutVersionManager::software_layout_version(self);
        target_feature::<F>(version, slv)?;
        for feature in self.unfinalized_features() {
            if feature.layout_version() > version {
                break;
            }
            self.finalize_step(feature)?;
        }
        Ok(LayoutVersionManager::metadata_layout_version(self))
    }
}

/// A component's layout finalized through its [`UpgradeFinalizer`], so the `OnFinalize`
/// actions run. The cluster's finalization takes over any unfinished local one (it is
/// authoritative).
pub struct FinalizerLayout<F: LayoutFeature, C> {
    finalizer: Arc<UpgradeFinalizer<F, C>>,
    component: Arc<C>,
}

impl<F: LayoutFeature, C: 'static> FinalizerLayout<F, C> {
    /// `component`'s layout, finalized by `finalizer`.
    pub fn new(finalizer: Arc<UpgradeFinalizer<F, C>>, component: Arc<C>) -> Self {
        Self {
            finalizer,
            component,
        }
    }
}

impl<F: LayoutFeature, C: Send + Sync + 'static> LocalLayout for FinalizerLayout<F, C> {
    fn software_layout_version(&self) -> u32 {
        self.finalizer.layout_manager().software_layout_version()
    }
    fn metadata_layout_version(&self) -> u32 {
        self.finalizer.layout_manager().metadata_layout_version()
    }
    fn finalize_to(&self, version: u32, client_id: &str) -> Result<u32, LocalError> {
        let lvm = self.finalizer.layout_manager();
        if lvm.metadata_layout_version() >= version {
            return Ok(lvm.metadata_layout_version());
        }
        let target = target_feature::<F>(version, lvm.software_layout_version())?;
        let request = FinalizeRequest::new(client_id)
            .with_target(target)
            .with_takeover(true);
        let outcome = self.finalizer.finalize_with(request, &self.component)?;
        Ok(outcome.metadata_layout_version())
    }
}

impl<F: LayoutFeature, C> fmt::Debug for FinalizerLayout<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FinalizerLayout")
            .field("finalizer", &self.finalizer)
            .finish_non_exhaustive()
    }
}

/// What a member's registration or heartbeat did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStep {
    /// The coordinator's last answer (after a local finalization, the answer to the
    /// heartbeat that reported it).
    pub answer: CoordinatorAnswer,
    /// The MLV the member finalized to in this step, when it was told to.
    pub finalized_to: Option<u32>,
}

/// A member's registration or heartbeat failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemberError {
    /// The coordinator refused or could not answer.
    #[error(transparent)]
    Heartbeat(#[from] HeartbeatError),
    /// Told to finalize, the member's own finalization failed. It stays pre-finalized and
    /// is told again on its next heartbeat.
    #[error(
        "{kind} member {member_id}: finalizing the local layout to version {version}, as the \
         coordinator instructed, failed: {source}"
    )]
    LocalFinalize {
        /// The component kind.
        kind: String,
        /// The member.
        member_id: String,
        /// The version it was told to finalize to.
        version: u32,
        /// The cause.
        #[source]
        source: LocalError,
    },
}

impl MemberError {
    /// The coordinator's refusal, if that is what this is.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Heartbeat(HeartbeatError::Refused(refusal)) => Some(refusal),
            _ => None,
        }
    }
}

/// The member side of the protocol, transport-free: it builds [`MemberReport`]s from its
/// [`LocalLayout`], sends them through a [`CoordinatorLink`], and follows the answer's
/// instruction (finalizing its own layout, in the caller's thread).
///
/// The caller owns the schedule: call [`register`](Self::register) at start-up and
/// [`heartbeat`](Self::heartbeat) periodically (the coordinator's member lease TTL must
/// be a few heartbeat intervals).
///
/// ```
/// use std::sync::Arc;
/// use layout_core::cluster::{Coordinator, CoordinatorOptions, EmbeddedStore, Member};
/// use layout_core::{LayoutFeature, LayoutVersionManager, ManagerOptions, MemoryStorage, StartIntent};
///
/// #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
/// enum DnFeature {
///     #[layout(version = 0, description = "Initial layout")]
///     Initial,
///     #[layout(version = 1, description = "Schema v2 containers")]
///     SchemaV2,
/// }
///
/// let coordinator = Arc::new(Coordinator::open(
///     Arc::new(EmbeddedStore::in_memory()),
///     CoordinatorOptions::default(),
/// )?);
/// let open = || LayoutVersionManager::<DnFeature>::open(
///     MemoryStorage::new(),
///     ManagerOptions::default().with_start_intent(StartIntent::Init).with_initial_layout_version(0),
/// );
/// let mut dn1 = Member::new("datanode", "dn1", Arc::new(open()?));
/// let mut dn2 = Member::new("datanode", "dn2", Arc::new(open()?));
/// dn1.register(&coordinator)?;
/// dn2.register(&coordinator)?;
///
/// coordinator.finalize("datanode", None, "ops")?;
/// assert_eq!(dn1.heartbeat(&coordinator)?.finalized_to, Some(1));
/// assert_eq!(dn2.heartbeat(&coordinator)?.finalized_to, Some(1));
/// assert!(coordinator.status("datanode")?.is_complete());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Member {
    kind: String,
    id: String,
    layout: Arc<dyn LocalLayout>,
    incarnation: String,
    registered: bool,
}

impl Member {
    /// Member `member_id` of `kind`, whose own layout is `layout`, with a new random
    /// incarnation (one per process start: make one `Member` per process).
    pub fn new(
        kind: impl Into<String>,
        member_id: impl Into<String>,
        layout: Arc<dyn LocalLayout>,
    ) -> Self {
        Self {
            kind: kind.into(),
            id: member_id.into(),
            layout,
            incarnation: crate::state::DataId::random().to_string(),
            registered: false,
        }
    }

    /// This process's incarnation, sent in every report.
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// The component kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The member's id.
    pub fn member_id(&self) -> &str {
        &self.id
    }

    /// Whether the last registration was accepted.
    pub fn is_registered(&self) -> bool {
        self.registered
    }

    /// What the member reports now.
    pub fn report(&self) -> MemberReport {
        MemberReport::new(
            &self.kind,
            &self.id,
            self.layout.software_layout_version(),
            self.layout.metadata_layout_version(),
        )
        .with_incarnation(&self.incarnation)
    }

    /// Registers (at start-up), then follows the answer.
    pub fn register(&mut self, link: &dyn CoordinatorLink) -> Result<MemberStep, MemberError> {
        self.registered = false;
        let answer = link.register(&self.report())?;
        self.registered = true;
        self.follow(link, answer)
    }

    /// Sends a heartbeat (registering first when not registered, or when the coordinator
    /// lost the registration), then follows the answer.
    pub fn heartbeat(&mut self, link: &dyn CoordinatorLink) -> Result<MemberStep, MemberError> {
        if !self.registered {
            return self.register(link);
        }
        match link.heartbeat(&self.report()) {
            Ok(answer) => self.follow(link, answer),
            Err(HeartbeatError::Refused(Refusal::NotRegistered { .. })) => self.register(link),
            Err(e) => {
                if matches!(e, HeartbeatError::Refused(_)) {
                    self.registered = false;
                }
                Err(e.into())
            }
        }
    }

    /// Says this process is stopping (call it on a clean shutdown, after the last
    /// heartbeat): the coordinator no longer takes it for live, so the member's next
    /// process is accepted at once. Without it, a restart within the member lease is
    /// refused ([`Refusal::DuplicateIncarnation`])
    /// until the lease lapses.
    pub fn leave(&mut self, link: &dyn CoordinatorLink) -> Result<(), MemberError> {
        self.registered = false;
        link.leave(&self.report())?;
        Ok(())
    }

    fn follow(
        &mut self,
        link: &dyn CoordinatorLink,
        answer: CoordinatorAnswer,
    ) -> Result<MemberStep, MemberError> {
        let Some(Instruction::FinalizeTo { version }) = answer.instruction else {
            return Ok(MemberStep {
                answer,
                finalized_to: None,
            });
        };
        if self.layout.metadata_layout_version() >= version {
            return Ok(MemberStep {
                answer,
                finalized_to: None,
            });
        }
        let client = format!("cluster:{}", answer.coordinator_id);
        tracing::info!(kind = %self.kind, member = %self.id, version, "finalizing as instructed by the coordinator");
        let mlv = self
            .layout
            .finalize_to(version, &client)
            .map_err(|source| MemberError::LocalFinalize {
                kind: self.kind.clone(),
                member_id: self.id.clone(),
                version,
                source,
            })?;
        // Tell the coordinator at once, so it can track the finalization.
        let answer = link.heartbeat(&self.report())?;
        Ok(MemberStep {
            answer,
            finalized_to: Some(mlv),
        })
    }
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("kind", &self.kind)
            .field("member_id", &self.id)
            .field("registered", &self.registered)
            .finish_non_exhaustive()
    }
}
