//! [`UpgradeTest`]: the stages an upgrade must pass, in order, with the user's
//! callback at each, and, opted in, the finalization interrupted at every crash point
//! ([`InterruptedFinalization`]).

use std::fmt;

use crate::cluster::{
    ClusterNode, MiniCluster, MiniClusterBuilder, MiniClusterError, RunOutcome, StartOptions,
};
use crate::component::{HookError, HookResult};
use crate::inject::{passed_points, CrashPoint, Exclusive, Injection};
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
    /// Opted in with [`UpgradeTest::with_interrupted_finalization`]: on fresh clusters,
    /// the finalization is interrupted at each crash point it passes (the finalizer's
    /// steps and every point inside its actions), then (a) the new release restarts and
    /// finishes, and (b) the operator downgrades to the old release, which must read and
    /// write everything, then upgrades again and finishes; the user's callbacks check the
    /// data after each.
    InterruptedFinalization,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 6] = [
        Stage::OldVersion,
        Stage::ThisVersionPreFinalized,
        Stage::OldVersionDowngraded,
        Stage::ThisVersionFinalized,
        Stage::DowngradeRefused,
        Stage::InterruptedFinalization,
    ];

    /// The stage's name: the name of its callback setter.
    pub fn name(self) -> &'static str {
        match self {
            Stage::OldVersion => "with_old_version",
            Stage::ThisVersionPreFinalized => "with_this_version_pre_finalized",
            Stage::OldVersionDowngraded => "with_old_version_downgraded",
            Stage::ThisVersionFinalized => "with_this_version_finalized",
            Stage::DowngradeRefused => "downgrade_after_finalize_refused",
            Stage::InterruptedFinalization => "with_interrupted_finalization",
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
            Stage::InterruptedFinalization => {
                "finalization interrupted at a crash point, then the new release restarted, \
                 or the old release run, and the finalization finished"
            }
        }
    }

    fn hook_index(self) -> Option<usize> {
        match self {
            Stage::OldVersion => Some(0),
            Stage::ThisVersionPreFinalized => Some(1),
            Stage::OldVersionDowngraded => Some(2),
            Stage::ThisVersionFinalized => Some(3),
            Stage::DowngradeRefused | Stage::InterruptedFinalization => None,
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
    Cluster(#[from] MiniClusterError),
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
    /// The step within it (`upgrading kv-1 to SLV 3`, `the callback`, ...). In the
    /// interrupted-finalization stage: the crash point, the path after it and the step
    /// or callback that failed.
    pub step: String,
    /// In the interrupted-finalization stage: where the finalization was interrupted.
    pub crash_point: Option<CrashPoint>,
    /// When a user callback failed: the stage whose callback it is (in the
    /// interrupted-finalization stage, the callback run again there).
    pub callback: Option<Stage>,
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
    /// The crashes of the interrupted-finalization stage, in order (empty when it was
    /// not opted in).
    pub interrupted: Vec<InterruptedCase>,
}

/// Which crashes the interrupted-finalization stage makes; see
/// [`UpgradeTest::with_interrupted_finalization`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InterruptedFinalization {
    /// Crash at every pass of each crash point, or only at its first (the default).
    pub every_hit: bool,
    /// The node whose finalization is interrupted (default: the first node built).
    pub crash_node: Option<String>,
}

impl Default for InterruptedFinalization {
    fn default() -> Self {
        Self::first_hit()
    }
}

impl InterruptedFinalization {
    /// One crash per crash point, at its first pass: two fresh clusters per point
    /// (restart, downgrade). Each batch boundary of a migration is one point whose first
    /// pass already leaves the migration half done.
    pub fn first_hit() -> Self {
        Self {
            every_hit: false,
            crash_node: None,
        }
    }

    /// One crash per pass of each crash point (a migration of n batches: n crashes per
    /// batch boundary): thorough, and two fresh clusters per pass.
    pub fn every_hit() -> Self {
        Self {
            every_hit: true,
            crash_node: None,
        }
    }

    /// The node whose finalization is interrupted (default: the first node built).
    #[must_use]
    pub fn crash_node(mut self, name: impl Into<String>) -> Self {
        self.crash_node = Some(name.into());
        self
    }
}

/// One crash of the interrupted-finalization stage, which both paths after it passed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InterruptedCase {
    /// Where the finalization was interrupted.
    pub point: CrashPoint,
    /// Whether the point is inside an upgrade action.
    pub inside_action: bool,
    /// The MLV the crashed node had published when it crashed.
    pub published_mlv: u32,
    /// Whether the old release ran after the crash (path b); `false` when it was
    /// refused because the crash came after a feature's new MLV was stored.
    pub downgraded: bool,
}

type StageHook<'a> = Box<dyn FnMut(&MiniCluster) -> HookResult + 'a>;

/// Runs the stages of an upgrade on a [`MiniCluster`], calling the user's callback at
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
/// 6. Opted in with [`with_interrupted_finalization`](Self::with_interrupted_finalization):
///    the finalization interrupted at every crash point, each followed by a restart and
///    by a downgrade, on fresh clusters (see there).
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
    interrupted: Option<InterruptedFinalization>,
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
            interrupted: None,
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

    /// Opts in to the interrupted-finalization stage ([`Stage::InterruptedFinalization`]),
    /// which runs after the other stages, each case on a fresh cluster:
    ///
    /// 1. A crash-free run finds the crash points: the old version and its callback,
    ///    the upgrade and the pre-finalized callback, the crash node's finalization
    ///    traced, every node finalized, the finalized callback.
    /// 2. For each crash point passed (its first pass, or every pass with
    ///    [`InterruptedFinalization::every_hit`]), twice, on a fresh cluster: the old
    ///    version and its callback, the upgrade and the pre-finalized callback, then the
    ///    crash node's finalization crashed there (in process: a simulated crash and
    ///    everything of the node dropped; child processes: SIGKILL). Then:
    ///    - (a) the crashed node restarts with this version (`Normal`); when every node
    ///      is still pre-finalized (no feature was finalized before the crash), the
    ///      pre-finalized callback runs again (reads and writes while a migration is
    ///      half done); every node finalizes; the finalized callback checks the data;
    ///    - (b) the operator downgrades: the crashed node starts with the old SLV, every
    ///      other node is prepared and restarted with it; the downgraded callback runs
    ///      (the old release reads everything and writes); every node is upgraded again,
    ///      the pre-finalized callback runs, every node finalizes, and the finalized
    ///      callback checks the data. When the crash came after a new MLV was stored, the
    ///      old release is refused (`DiskNewerThanSoftware`, as it must be) and (b)
    ///      continues like (a).
    ///
    /// A failure is an [`UpgradeTestError`] of this stage whose
    /// [`crash_point`](UpgradeTestError::crash_point) is the point, whose
    /// [`callback`](UpgradeTestError::callback) is the broken check (when a callback
    /// failed), and whose message names both and the path.
    ///
    /// It is opt-in because it asks more of the callbacks: they run on several fresh
    /// clusters, and the pre-finalized one runs again on a cluster that already ran it.
    /// Write them against a model of the data that the old-version callback (the first
    /// of every fresh cluster) resets, and check the data against the model rather than
    /// against a fixed list. And it costs two cluster runs per crash point.
    #[must_use]
    pub fn with_interrupted_finalization(mut self, crashes: InterruptedFinalization) -> Self {
        self.interrupted = Some(crashes);
        self
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
        let interrupted = if let Some(crashes) = self.interrupted.clone() {
            let _exclusive = Exclusive::take(!cluster.is_child_processes());
            self.interrupt_finalization(&crashes, &mut log)?
        } else {
            log.push(format!(
                "{}: not run (opt in with UpgradeTest::with_interrupted_finalization)",
                Stage::InterruptedFinalization
            ));
            Vec::new()
        };
        Ok(UpgradeReport {
            cluster,
            log,
            interrupted,
        })
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
            finalized_or_refused(stage, &step, node.name(), &status)?;
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
                crash_point: None,
                callback: Some(stage),
                failure: Box::new(StageFailure::Callback(e)),
            })?;
            log.push(format!("{stage}: callback passed"));
        }
        Ok(())
    }
}

/// The interrupted-finalization stage.
impl UpgradeTest<'_> {
    fn interrupt_finalization(
        &mut self,
        crashes: &InterruptedFinalization,
        log: &mut Vec<String>,
    ) -> Result<Vec<InterruptedCase>, UpgradeTestError> {
        let stage = Stage::InterruptedFinalization;
        let what = "the crash-free run".to_owned();
        let re = reframe(&what, None);
        let (cluster, _) = self.fresh_pre_finalized().map_err(&re)?;
        let node =
            crash_node(&cluster, crashes).map_err(|e| re(fail(stage, "the crash node", e)))?;
        let node_name = node.name().to_owned();
        let step = format!("finalizing {node_name}, tracing its crash points");
        let run = node
            .finalize_injected(None, Injection::Trace)
            .map_err(|e| re(fail(stage, &step, e)))?;
        if !matches!(run.outcome, RunOutcome::Finalized(_)) {
            return Err(re(check(
                stage,
                &step,
                "the crash-free finalization crashed".to_owned(),
            )));
        }
        Self::finish_all(&cluster).map_err(&re)?;
        self.call(Stage::ThisVersionFinalized, &cluster, &mut Vec::new())
            .map_err(&re)?;
        drop(cluster);
        let points = passed_points(&run.trace);
        if points.is_empty() {
            return Err(re(check(
                stage,
                &step,
                format!("{node_name} passed no crash point: it had nothing to finalize"),
            )));
        }
        log.push(format!(
            "{stage}: the finalization of {node_name} passes {} crash points: {}",
            points.len(),
            points
                .iter()
                .map(|p| format!(
                    "{} x{}{}",
                    p.name,
                    p.hits,
                    if p.inside_action {
                        " (inside an action)"
                    } else {
                        ""
                    }
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let mut cases = Vec::new();
        for passed in &points {
            let last = if crashes.every_hit { passed.hits } else { 1 };
            for hit in 1..=last {
                let point = CrashPoint {
                    failpoint: passed.name,
                    hit,
                };
                let at = format!(
                    "crash at {point}{} on {node_name}",
                    if passed.inside_action {
                        " (inside an action)"
                    } else {
                        ""
                    }
                );
                let published_mlv = self.restart_after_crash(point, &at, crashes, log)?;
                let downgraded = self.downgrade_after_crash(point, &at, crashes, log)?;
                cases.push(InterruptedCase {
                    point,
                    inside_action: passed.inside_action,
                    published_mlv,
                    downgraded,
                });
            }
        }
        Ok(cases)
    }

    /// A fresh cluster through the old version and the upgrade, with their callbacks:
    /// every node pre-finalized. Also returns the MLVs the old version started at.
    fn fresh_pre_finalized(&mut self) -> Result<(MiniCluster, Vec<u32>), UpgradeTestError> {
        // Their steps are logged once, by the main stages.
        let mut quiet = Vec::new();
        let cluster = self.start_old_version(&mut quiet)?;
        let pinned = mlvs(&cluster).map_err(|e| fail(Stage::OldVersion, "reading the MLVs", e))?;
        self.call(Stage::OldVersion, &cluster, &mut quiet)?;
        Self::change_binaries(
            Stage::ThisVersionPreFinalized,
            &cluster,
            &pinned,
            &mut quiet,
        )?;
        self.call(Stage::ThisVersionPreFinalized, &cluster, &mut quiet)?;
        Ok((cluster, pinned))
    }

    /// A fresh pre-finalized cluster whose crash node's finalization crashed at `point`.
    fn crashed_at(
        &mut self,
        point: CrashPoint,
        crashes: &InterruptedFinalization,
    ) -> Result<(MiniCluster, Vec<u32>, String, u32), UpgradeTestError> {
        let stage = Stage::InterruptedFinalization;
        let (cluster, pinned) = self.fresh_pre_finalized()?;
        let node = crash_node(&cluster, crashes).map_err(|e| fail(stage, "the crash node", e))?;
        let step = format!("finalizing {}, crashing at {point}", node.name());
        let run = node
            .finalize_injected(None, Injection::Crash(point))
            .map_err(|e| fail(stage, &step, e))?;
        let RunOutcome::Crashed { published_mlv, .. } = run.outcome else {
            return Err(check(
                stage,
                &step,
                format!(
                    "the finalization ended without passing {point}, which the crash-free run \
                     passed: the scenario is not deterministic"
                ),
            ));
        };
        let name = node.name().to_owned();
        Ok((cluster, pinned, name, published_mlv))
    }

    /// (a): the crashed node restarts with this version; every node finishes.
    fn restart_after_crash(
        &mut self,
        point: CrashPoint,
        at: &str,
        crashes: &InterruptedFinalization,
        log: &mut Vec<String>,
    ) -> Result<u32, UpgradeTestError> {
        let stage = Stage::InterruptedFinalization;
        let what = format!("{at}, then (a) this version restarted and finished");
        let re = reframe(&what, Some(point));
        let (cluster, pinned, name, published) = self.crashed_at(point, crashes).map_err(&re)?;
        let node = cluster
            .node_dyn(&name)
            .map_err(|e| re(fail(stage, "the crash node", e)))?;
        node.start(StartOptions::default())
            .map_err(|e| re(fail(stage, &format!("restarting {name}"), e)))?;
        let again = self.pre_finalized_again(&cluster, &pinned).map_err(&re)?;
        Self::finish_all(&cluster).map_err(&re)?;
        self.call(Stage::ThisVersionFinalized, &cluster, &mut Vec::new())
            .map_err(&re)?;
        log.push(format!(
            "{stage}: {at} (published MLV {published}): (a) restarted{}, finished, checked",
            if again {
                ", pre-finalized callback again"
            } else {
                ""
            }
        ));
        Ok(published)
    }

    /// (b): the old release on every node, its checks, this version again, finished.
    /// `false` when the old release is refused because a new MLV was stored before the
    /// crash.
    fn downgrade_after_crash(
        &mut self,
        point: CrashPoint,
        at: &str,
        crashes: &InterruptedFinalization,
        log: &mut Vec<String>,
    ) -> Result<bool, UpgradeTestError> {
        let stage = Stage::InterruptedFinalization;
        let what =
            format!("{at}, then (b) downgraded to the old release, upgraded again and finished");
        let re = reframe(&what, Some(point));
        let (cluster, pinned, name, _) = self.crashed_at(point, crashes).map_err(&re)?;
        let node = cluster
            .node_dyn(&name)
            .map_err(|e| re(fail(stage, "the crash node", e)))?;
        let old = node.old_software_layout_version();
        let step = format!("starting {name} with the old SLV {old}");
        let downgraded = match node.start(StartOptions::default().with_software_layout_version(old))
        {
            Ok(()) => {
                for other in cluster.nodes().filter(|n| n.name() != name) {
                    let step = format!(
                        "downgrading {} to SLV {}",
                        other.name(),
                        other.old_software_layout_version()
                    );
                    other.downgrade().map_err(|e| re(fail(stage, &step, e)))?;
                }
                let now = mlvs(&cluster).map_err(|e| re(fail(stage, "reading the MLVs", e)))?;
                self.call(Stage::OldVersionDowngraded, &cluster, &mut Vec::new())
                    .map_err(&re)?;
                Self::change_binaries(
                    Stage::ThisVersionPreFinalized,
                    &cluster,
                    &now,
                    &mut Vec::new(),
                )
                .map_err(&re)?;
                true
            }
            Err(e) if e.is_disk_newer_than_software() => {
                log.push(format!(
                    "{stage}: {at}: the old release is refused (a new MLV was stored before \
                     the crash): DiskNewerThanSoftware"
                ));
                node.start(StartOptions::default())
                    .map_err(|e| re(fail(stage, &format!("restarting {name}"), e)))?;
                false
            }
            Err(e) => return Err(re(fail(stage, &step, e))),
        };
        self.pre_finalized_again(&cluster, &pinned).map_err(&re)?;
        Self::finish_all(&cluster).map_err(&re)?;
        self.call(Stage::ThisVersionFinalized, &cluster, &mut Vec::new())
            .map_err(&re)?;
        log.push(format!(
            "{stage}: {at}: (b) {}, upgraded again, finished, checked",
            if downgraded {
                "the old release ran its checks"
            } else {
                "the old release refused"
            }
        ));
        Ok(downgraded)
    }

    /// The pre-finalized callback again, when every node is still at the MLV it started
    /// at (nothing finalized before the crash: this version runs pre-finalized). Whether
    /// it ran.
    fn pre_finalized_again(
        &mut self,
        cluster: &MiniCluster,
        pinned: &[u32],
    ) -> Result<bool, UpgradeTestError> {
        let stage = Stage::ThisVersionPreFinalized;
        let now = mlvs(cluster).map_err(|e| fail(stage, "reading the MLVs", e))?;
        if now == pinned {
            self.call(stage, cluster, &mut Vec::new())?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Every node at this version's SLV, finalized (a running node at it is not
    /// restarted: no prepare marker may outlive a `Normal` start).
    fn finish_all(cluster: &MiniCluster) -> Result<(), UpgradeTestError> {
        let stage = Stage::ThisVersionFinalized;
        for node in cluster.nodes() {
            let new = node.new_software_layout_version();
            let step = format!("finishing the finalization of {} at SLV {new}", node.name());
            if !node.is_running() {
                node.start(StartOptions::default().with_software_layout_version(new))
                    .map_err(|e| fail(stage, &step, e))?;
            } else if node.software_layout_version() != new {
                node.upgrade().map_err(|e| fail(stage, &step, e))?;
            }
            node.finalize().map_err(|e| fail(stage, &step, e))?;
            let status = node.status().map_err(|e| fail(stage, &step, e))?;
            finalized_or_refused(stage, &step, node.name(), &status)?;
        }
        Ok(())
    }
}

/// Every node's MLV, in order.
fn mlvs(cluster: &MiniCluster) -> Result<Vec<u32>, MiniClusterError> {
    cluster
        .nodes()
        .map(ClusterNode::metadata_layout_version)
        .collect()
}

/// The node whose finalization the stage interrupts.
fn crash_node<'c>(
    cluster: &'c MiniCluster,
    crashes: &InterruptedFinalization,
) -> Result<&'c dyn ClusterNode, MiniClusterError> {
    match &crashes.crash_node {
        Some(name) => cluster.node_dyn(name),
        None => cluster
            .nodes()
            .next()
            .ok_or_else(|| MiniClusterError::InvalidConfig("the cluster has no node".to_owned())),
    }
}

/// Re-frames an error of a step of the interrupted-finalization stage: the stage, the
/// crash point, and `what` led there in front of the failed step or callback.
fn reframe(
    what: &str,
    point: Option<CrashPoint>,
) -> impl Fn(UpgradeTestError) -> UpgradeTestError + '_ {
    move |e| {
        let inner = match e.callback {
            Some(callback) => format!("the {callback} callback"),
            None if e.stage == Stage::InterruptedFinalization => e.step,
            None => format!("{} ({})", e.step, e.stage),
        };
        UpgradeTestError {
            stage: Stage::InterruptedFinalization,
            step: format!("{what}: {inner}"),
            crash_point: point.or(e.crash_point),
            callback: e.callback,
            failure: e.failure,
        }
    }
}

fn fail(stage: Stage, step: &str, error: MiniClusterError) -> UpgradeTestError {
    UpgradeTestError {
        stage,
        step: step.to_owned(),
        crash_point: None,
        callback: None,
        failure: Box::new(StageFailure::Cluster(error)),
    }
}

/// A node still pre-finalized after finalizing fails the stage.
fn finalized_or_refused(
    stage: Stage,
    step: &str,
    node: &str,
    status: &crate::NodeStatus,
) -> Result<(), UpgradeTestError> {
    if status.is_pre_finalized() {
        return Err(check(
            stage,
            step,
            format!(
                "{node} is still pre-finalized after finalizing: MLV {} SLV {}",
                status.metadata_layout_version, status.software_layout_version
            ),
        ));
    }
    Ok(())
}

fn check(stage: Stage, step: &str, what: String) -> UpgradeTestError {
    UpgradeTestError {
        stage,
        step: step.to_owned(),
        crash_point: None,
        callback: None,
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
            .field("interrupted_finalization", &self.interrupted)
            .finish()
    }
}
