//! [`UpgradeTest`]: the seed's acceptance stages of an upgrade, in order, with the user's
//! callback at each.

use std::fmt;

use crate::cluster::{ClusterError, ClusterNode, MiniCluster, MiniClusterBuilder, StartOptions};
use crate::component::{HookError, HookResult};
use layout_core::StartIntent;

/// A stage of an [`UpgradeTest`], in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Every node runs the old binary (its kind's old SLV) on a fresh install.
    OldVersion,
    /// Every node was upgraded to this version's binary and runs pre-finalized: MLV <
    /// SLV, the new features refused.
    ThisVersionPreFinalized,
    /// Every node was downgraded back to the old binary, which must read everything,
    /// including what was written while pre-finalized.
    OldVersionDowngraded,
    /// Every node was upgraded again and finalized: MLV == SLV, the new features work.
    ThisVersionFinalized,
    /// The old binary must refuse to start on the finalized disk.
    DowngradeRefused,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 5] = [
        Stage::OldVersion,
        Stage::ThisVersionPreFinalized,
        Stage::OldVersionDowngraded,
        Stage::ThisVersionFinalized,
        Stage::DowngradeRefused,
    ];

    /// The stage's name: the name of its callback setter.
    pub fn name(self) -> &'static str {
        match self {
            Stage::OldVersion => "with_old_version",
            Stage::ThisVersionPreFinalized => "with_this_version_pre_finalized",
            Stage::OldVersionDowngraded => "with_old_version_downgraded",
            Stage::ThisVersionFinalized => "with_this_version_finalized",
            Stage::DowngradeRefused => "downgrade_after_finalize_refused",
        }
    }

    /// What the stage is about, in a few words.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::OldVersion => "the old software on a fresh install",
            Stage::ThisVersionPreFinalized => "this version, pre-finalized",
            Stage::OldVersionDowngraded => {
                "the old software reading what this version wrote pre-finalized"
            }
            Stage::ThisVersionFinalized => "this version, finalized",
            Stage::DowngradeRefused => "the old software refused on the finalized disk",
        }
    }

    fn hook_index(self) -> Option<usize> {
        match self {
            Stage::OldVersion => Some(0),
            Stage::ThisVersionPreFinalized => Some(1),
            Stage::OldVersionDowngraded => Some(2),
            Stage::ThisVersionFinalized => Some(3),
            Stage::DowngradeRefused => None,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What failed in a stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StageFailure {
    /// The user's callback returned an error.
    #[error("the callback failed: {0}")]
    Callback(#[source] HookError),
    /// A node operation of the stage failed (a start, a restart, a finalization).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A check of the kit failed.
    #[error("{0}")]
    Check(String),
}

/// Why an [`UpgradeTest`] failed: the stage, the step within it, and the cause.
#[derive(Debug, thiserror::Error)]
#[error("upgrade test failed in stage {stage} ({}), {step}: {failure}", stage.describe())]
#[non_exhaustive]
pub struct UpgradeTestError {
    /// The stage.
    pub stage: Stage,
    /// The step within it (`upgrading kv-1 to SLV 3`, `the callback`, ...).
    pub step: String,
    /// What failed.
    #[source]
    pub failure: Box<StageFailure>,
}

/// What a passed [`UpgradeTest`] did; the cluster is left running, finalized.
#[derive(Debug)]
#[non_exhaustive]
pub struct UpgradeReport {
    /// The cluster, finalized and running this version.
    pub cluster: MiniCluster,
    /// What happened, one line per event.
    pub log: Vec<String>,
}

type StageHook<'a> = Box<dyn FnMut(&MiniCluster) -> HookResult + 'a>;

/// Runs the seed's upgrade stages on a [`MiniCluster`], calling the user's callback at
/// each, and checks what the kit can check itself between them:
///
/// 1. [`with_old_version`](Self::with_old_version): every node runs its kind's old SLV on
///    a fresh install (MLV = its kind's initial version). Ingest data here.
/// 2. Every node is prepared (when its component supports it) and restarted with this
///    version's SLV: pre-finalized (MLV unchanged, below the SLV).
///    [`with_this_version_pre_finalized`](Self::with_this_version_pre_finalized):
///    verify, check that the new features are refused, write more.
/// 3. Every node is prepared and restarted with the old SLV (a downgrade), which must
///    succeed. [`with_old_version_downgraded`](Self::with_old_version_downgraded): the
///    old software must read everything, including what was written pre-finalized.
/// 4. Every node is prepared, restarted with this version's SLV and finalized (MLV =
///    SLV). [`with_this_version_finalized`](Self::with_this_version_finalized): verify;
///    the new features work.
/// 5. Every node is stopped and started with the old SLV, which must be refused
///    (`DiskNewerThanSoftware`); then started again with this version.
///
/// ```
/// use layout_core::{LayoutFeature};
/// use layout_testkit::{HookResult, Kind, MiniCluster, NodeContext, TestComponent, UpgradeTest};
///
/// #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
/// enum Feature {
///     #[layout(version = 0, description = "Initial layout")]
///     Initial,
///     #[layout(version = 1, description = "A new table")]
///     NewTable,
/// }
/// struct Service;
/// impl TestComponent for Service {
///     type Feature = Feature;
///     fn open(_ctx: &NodeContext<Feature>) -> HookResult<Self> {
///         Ok(Service)
///     }
/// }
///
/// let report = UpgradeTest::new(
///     MiniCluster::builder().kind(Kind::<Service>::new("svc").nodes(3).software_layout_version(0)),
/// )
/// .with_old_version(|_cluster| Ok(()))
/// .with_this_version_finalized(|cluster| {
///     for node in cluster.nodes_of::<Service>() {
///         assert!(node.manager()?.is_allowed(Feature::NewTable));
///     }
///     Ok(())
/// })
/// .run()?;
/// assert!(report.log.iter().any(|l| l.contains("refused")));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct UpgradeTest<'a> {
    builder: MiniClusterBuilder,
    hooks: [Option<StageHook<'a>>; 4],
}

impl<'a> UpgradeTest<'a> {
    /// An upgrade test of the cluster `builder` describes. Each kind's
    /// [`software_layout_version`](crate::Kind::software_layout_version) is the old
    /// binary; its [`upgrade_to`](crate::Kind::upgrade_to) (default: the latest) is this
    /// version.
    pub fn new(builder: MiniClusterBuilder) -> Self {
        Self {
            builder,
            hooks: [None, None, None, None],
        }
    }

    fn hook(mut self, stage: Stage, hook: impl FnMut(&MiniCluster) -> HookResult + 'a) -> Self {
        if let Some(i) = stage.hook_index() {
            self.hooks[i] = Some(Box::new(hook));
        }
        self
    }

    /// The callback of stage 1: the old software; ingest data.
    #[must_use]
    pub fn with_old_version(self, hook: impl FnMut(&MiniCluster) -> HookResult + 'a) -> Self {
        self.hook(Stage::OldVersion, hook)
    }

    /// The callback of stage 2: this version, pre-finalized; verify, check the new
    /// features are refused.
    #[must_use]
    pub fn with_this_version_pre_finalized(
        self,
        hook: impl FnMut(&MiniCluster) -> HookResult + 'a,
    ) -> Self {
        self.hook(Stage::ThisVersionPreFinalized, hook)
    }

    /// The callback of stage 3: the old software again; it must read everything.
    #[must_use]
    pub fn with_old_version_downgraded(
        self,
        hook: impl FnMut(&MiniCluster) -> HookResult + 'a,
    ) -> Self {
        self.hook(Stage::OldVersionDowngraded, hook)
    }

    /// The callback of stage 4: this version, finalized; verify, the new features work.
    #[must_use]
    pub fn with_this_version_finalized(
        self,
        hook: impl FnMut(&MiniCluster) -> HookResult + 'a,
    ) -> Self {
        self.hook(Stage::ThisVersionFinalized, hook)
    }

    /// Runs every stage; the first failure stops the test and says where.
    pub fn run(mut self) -> Result<UpgradeReport, UpgradeTestError> {
        let mut log = Vec::new();
        let cluster = self.start_old_version(&mut log)?;
        let pinned: Vec<u32> = cluster
            .nodes()
            .map(ClusterNode::metadata_layout_version)
            .collect::<Result<_, _>>()
            .map_err(|e| fail(Stage::OldVersion, "reading the MLVs", e))?;
        self.call(Stage::OldVersion, &cluster, &mut log)?;
        Self::change_binaries(Stage::ThisVersionPreFinalized, &cluster, &pinned, &mut log)?;
        self.call(Stage::ThisVersionPreFinalized, &cluster, &mut log)?;
        Self::change_binaries(Stage::OldVersionDowngraded, &cluster, &pinned, &mut log)?;
        self.call(Stage::OldVersionDowngraded, &cluster, &mut log)?;
        Self::finalize(&cluster, &mut log)?;
        self.call(Stage::ThisVersionFinalized, &cluster, &mut log)?;
        Self::refuse_old_version(&cluster, &mut log)?;
        Ok(UpgradeReport { cluster, log })
    }

    /// Stage 1: checks the kinds, builds the cluster, checks every node runs the old SLV.
    fn start_old_version(&self, log: &mut Vec<String>) -> Result<MiniCluster, UpgradeTestError> {
        let stage = Stage::OldVersion;
        for kind in self
            .builder
            .kinds()
            .map_err(|e| fail(stage, "checking the cluster", e))?
        {
            if kind.old_software_layout_version >= kind.new_software_layout_version {
                return Err(check(
                    stage,
                    "checking the cluster",
                    format!(
                        "kind {} has nothing to upgrade: its old SLV {} is not below this \
                         version's {}; set Kind::software_layout_version to the old binary's",
                        kind.name,
                        kind.old_software_layout_version,
                        kind.new_software_layout_version
                    ),
                ));
            }
        }
        let cluster = self
            .builder
            .clone()
            .build()
            .map_err(|e| fail(stage, "starting the old version", e))?;
        for node in cluster.nodes() {
            let status = node.status().map_err(|e| fail(stage, node.name(), e))?;
            log.push(format!(
                "{stage}: {} started at MLV {} SLV {}",
                node.name(),
                status.metadata_layout_version,
                status.software_layout_version
            ));
            if status.software_layout_version != node.old_software_layout_version() {
                return Err(check(
                    stage,
                    node.name(),
                    format!(
                        "{} runs SLV {}, not the old {}",
                        node.name(),
                        status.software_layout_version,
                        node.old_software_layout_version()
                    ),
                ));
            }
        }
        Ok(cluster)
    }

    /// Stages 2 and 3: prepare and restart every node with this version (pre-finalized)
    /// or the old one (downgraded); the MLV must not move.
    fn change_binaries(
        stage: Stage,
        cluster: &MiniCluster,
        pinned: &[u32],
        log: &mut Vec<String>,
    ) -> Result<(), UpgradeTestError> {
        let upgrade = stage == Stage::ThisVersionPreFinalized;
        for (node, &mlv) in cluster.nodes().zip(pinned) {
            let (verb, slv) = if upgrade {
                ("upgrading", node.new_software_layout_version())
            } else {
                ("downgrading", node.old_software_layout_version())
            };
            let step = format!("{verb} {} to SLV {slv}", node.name());
            let prepared = if upgrade {
                node.upgrade()
            } else {
                node.downgrade()
            }
            .map_err(|e| fail(stage, &step, e))?;
            let status = node.status().map_err(|e| fail(stage, &step, e))?;
            log.push(format!(
                "{stage}: {} {verb} ({prepared}): SLV {}, MLV {}, refusing {:?}",
                node.name(),
                status.software_layout_version,
                status.metadata_layout_version,
                status.unfinalized
            ));
            if status.metadata_layout_version != mlv {
                return Err(check(
                    stage,
                    &step,
                    format!(
                        "{}: the MLV moved without a finalization: {mlv} -> {}",
                        node.name(),
                        status.metadata_layout_version
                    ),
                ));
            }
            if upgrade && !status.is_pre_finalized() {
                return Err(check(
                    stage,
                    &step,
                    format!(
                        "{} is not pre-finalized after the upgrade: MLV {}, SLV {}",
                        node.name(),
                        status.metadata_layout_version,
                        status.software_layout_version
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Stage 4: prepare, restart with this version, finalize, every node.
    fn finalize(cluster: &MiniCluster, log: &mut Vec<String>) -> Result<(), UpgradeTestError> {
        let stage = Stage::ThisVersionFinalized;
        for node in cluster.nodes() {
            let step = format!(
                "upgrading {} to SLV {} and finalizing",
                node.name(),
                node.new_software_layout_version()
            );
            let prepared = node.upgrade().map_err(|e| fail(stage, &step, e))?;
            let summary = node.finalize().map_err(|e| fail(stage, &step, e))?;
            let status = node.status().map_err(|e| fail(stage, &step, e))?;
            log.push(format!(
                "{stage}: {} upgraded ({prepared}) and finalized {:?}: MLV {} -> {}",
                node.name(),
                summary.finalized,
                summary.from,
                summary.metadata_layout_version
            ));
            if status.is_pre_finalized() {
                return Err(check(
                    stage,
                    &step,
                    format!(
                        "{} is still pre-finalized after finalizing: MLV {} SLV {}",
                        node.name(),
                        status.metadata_layout_version,
                        status.software_layout_version
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Stage 5: the old binary must be refused on every node; then this version again.
    /// No prepare here: the start is refused before anything runs, and a prepare marker
    /// would outlive the `Normal` start that follows.
    fn refuse_old_version(
        cluster: &MiniCluster,
        log: &mut Vec<String>,
    ) -> Result<(), UpgradeTestError> {
        let stage = Stage::DowngradeRefused;
        for node in cluster.nodes() {
            let old = node.old_software_layout_version();
            let step = format!("starting {} with the old SLV {old}", node.name());
            node.stop().map_err(|e| fail(stage, &step, e))?;
            let attempt = node.start(
                StartOptions::default()
                    .with_software_layout_version(old)
                    .with_intent(StartIntent::Downgrade),
            );
            match attempt {
                Err(e) if e.is_disk_newer_than_software() => log.push(format!(
                    "{stage}: {} refused the old SLV {old}: DiskNewerThanSoftware",
                    node.name()
                )),
                Err(e) => {
                    return Err(check(
                        stage,
                        &step,
                        format!(
                            "the old software was refused, but not because the disk is newer: \
                             {e}"
                        ),
                    ))
                }
                Ok(()) => {
                    return Err(check(
                        stage,
                        &step,
                        format!(
                            "the old software (SLV {old}) started on a disk finalized to MLV {}",
                            node.new_software_layout_version()
                        ),
                    ))
                }
            }
            node.start(StartOptions::default())
                .map_err(|e| fail(stage, "starting this version again", e))?;
        }
        Ok(())
    }

    fn call(
        &mut self,
        stage: Stage,
        cluster: &MiniCluster,
        log: &mut Vec<String>,
    ) -> Result<(), UpgradeTestError> {
        let hook = stage.hook_index().and_then(|i| self.hooks[i].as_mut());
        if let Some(hook) = hook {
            hook(cluster).map_err(|e| UpgradeTestError {
                stage,
                step: "the callback".to_owned(),
                failure: Box::new(StageFailure::Callback(e)),
            })?;
            log.push(format!("{stage}: callback passed"));
        }
        Ok(())
    }
}

fn fail(stage: Stage, step: &str, error: ClusterError) -> UpgradeTestError {
    UpgradeTestError {
        stage,
        step: step.to_owned(),
        failure: Box::new(StageFailure::Cluster(error)),
    }
}

fn check(stage: Stage, step: &str, what: String) -> UpgradeTestError {
    UpgradeTestError {
        stage,
        step: step.to_owned(),
        failure: Box::new(StageFailure::Check(what)),
    }
}

impl fmt::Debug for UpgradeTest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpgradeTest")
            .field("builder", &self.builder)
            .field(
                "callbacks",
                &Stage::ALL
                    .iter()
                    .filter(|s| s.hook_index().is_some_and(|i| self.hooks[i].is_some()))
                    .map(|s| s.name())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}
