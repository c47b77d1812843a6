//! A component running in this process (the in-process node backend, and the node inside
//! a child process): its manager, finalizer and component, started as the service starts.

use std::sync::Arc;

use layout_core::startup::StartupError;
use layout_core::{
    FeatureStatus, FileStorage, FinalizeOutcome, FinalizeRequest, LayoutFeature,
    LayoutVersionManager, MemoryStorage, StartIntent, UpgradeFinalizer,
};

use super::error::MiniClusterError;
use super::StorageKind;
use crate::component::{NodeInfo, PrepareOutcome, TestComponent};

use super::values::{FinalizeSummary, NodeSpec, NodeStatus, TESTKIT_CLIENT};
use crate::unsynced::UnsyncedStorage;

/// A running in-process node: the manager, the finalizer and the component.
pub(crate) struct Running<C: TestComponent> {
    pub(crate) lvm: Arc<LayoutVersionManager<C::Feature>>,
    pub(crate) finalizer: Arc<UpgradeFinalizer<C::Feature, C>>,
    pub(crate) component: Arc<C>,
    /// The node's member of a coordinated cluster, heartbeating.
    #[cfg(feature = "coordination")]
    pub(crate) member: Option<Arc<super::coordinated::MemberRunner>>,
    /// The storage that acknowledges before it is durable ([`StorageKind::Unsynced`]),
    /// synced by a clean stop.
    pub(crate) unsynced: Option<Arc<UnsyncedStorage<FileStorage>>>,
}

impl<C: TestComponent> Clone for Running<C> {
    fn clone(&self) -> Self {
        Self {
            lvm: Arc::clone(&self.lvm),
            finalizer: Arc::clone(&self.finalizer),
            component: Arc::clone(&self.component),
            #[cfg(feature = "coordination")]
            member: self.member.clone(),
            unsynced: self.unsynced.clone(),
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
    ) -> Result<Self, MiniClusterError> {
        let node = || spec.name.clone();
        let data_dir = spec.data_dir();
        std::fs::create_dir_all(&data_dir).map_err(|source| MiniClusterError::Io {
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
            .map_err(|source| MiniClusterError::Component {
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
        let mut unsynced = None;
        let startup = match (spec.storage, memory) {
            (StorageKind::Memory, Some(memory)) => startup.storage(Arc::clone(memory)),
            (StorageKind::Unsynced, _) => {
                let storage = Arc::new(UnsyncedStorage::new(FileStorage::new(spec.layout_dir())));
                unsynced = Some(Arc::clone(&storage));
                startup.storage(storage)
            }
            _ => startup.storage(FileStorage::new(spec.layout_dir())),
        };
        let mut started = startup.start().map_err(|e| match e {
            StartupError::Manager(source) => MiniClusterError::Layout {
                node: node(),
                source: Box::new(source),
            },
            StartupError::Open { source, .. } => MiniClusterError::Component {
                node: node(),
                operation: "open".to_owned(),
                source,
            },
            StartupError::Registry(source) => MiniClusterError::Registry {
                node: node(),
                source,
            },
            StartupError::StartupActions(e) => MiniClusterError::StartupActions {
                node: node(),
                message: e.to_string(),
            },
            other => MiniClusterError::Component {
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
            unsynced,
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
    ) -> Result<FinalizeSummary, MiniClusterError> {
        let from = self.lvm.metadata_layout_version();
        let mut request = FinalizeRequest::new(TESTKIT_CLIENT).with_takeover(true);
        if let Some(version) = target {
            let feature = C::Feature::from_layout_version(version).ok_or_else(|| {
                MiniClusterError::Finalize {
                    node: name.to_owned(),
                    message: format!(
                        "layout version {version} is not in catalog {}",
                        C::Feature::CATALOG_NAME
                    ),
                }
            })?;
            request = request.with_target(feature);
        }
        let outcome = self
            .finalizer
            .finalize_with(request, &self.component)
            .map_err(|e| MiniClusterError::Finalize {
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
    ) -> Result<String, MiniClusterError> {
        self.component
            .call(operation, argument)
            .map_err(|source| MiniClusterError::Component {
                node: name.to_owned(),
                operation: format!("call {operation}"),
                source,
            })
    }

    pub(crate) fn prepare(&self, name: &str) -> Result<PrepareOutcome, MiniClusterError> {
        self.component
            .prepare()
            .map_err(|source| MiniClusterError::Component {
                node: name.to_owned(),
                operation: "prepare".to_owned(),
                source,
            })
    }

    pub(crate) fn cancel_prepare(&self, name: &str) -> Result<(), MiniClusterError> {
        self.component
            .cancel_prepare()
            .map_err(|source| MiniClusterError::Component {
                node: name.to_owned(),
                operation: "cancel_prepare".to_owned(),
                source,
            })
    }
}
