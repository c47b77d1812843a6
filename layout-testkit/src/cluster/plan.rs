//! Seeded plans for coordinated clusters (feature `coordination`): a rolling upgrade in a
//! random order (some members crash instead of stopping cleanly), a dead member
//! excluded, a late joiner before or after the finalization, a cluster finalization that
//! crashes at one [`ClusterCrashPoint`] (the coordinator `SIGKILLed` at a checkpoint, or a
//! member `SIGKILLed` inside its local finalization), recovery, and the checks: the
//! finalization completes, every member not excluded is at the new layout (on its own
//! disk too), the excluded member's old binary is refused. A plan is generated from its
//! seed alone and printable; running a seed again replays it exactly (the same steps,
//! the same [`ClusterPlanOutcome`]).
//!
//! ```no_run
//! # use layout_testkit::cluster::plan::{ClusterPlanTest, CLUSTER_CRASH_POINTS};
//! # use layout_testkit::cluster::CoordinationOptions;
//! # use layout_testkit::{Kind, MiniCluster, TestComponent};
//! # fn test<Kv: TestComponent>() -> Result<(), Box<dyn std::error::Error>> {
//! let builder = MiniCluster::builder()
//!     .kind(Kind::<Kv>::new("kv").nodes(4).software_layout_version(1).upgrade_to(2))
//!     .coordinated(CoordinationOptions::default())
//!     .child_processes(layout_testkit::test_name!());
//! let test = ClusterPlanTest::new(builder);
//! println!("{}", test.plan(7)?);
//! let report = test.run(7)?;
//! assert_eq!(report.outcome, test.run(7)?.outcome);
//! # Ok(())
//! # }
//! ```

use std::fmt;

use super::{ClusterNode, MiniCluster, MiniClusterBuilder, MiniClusterError, StartOptions};
use crate::rng::PlanRng;

/// A named point of a cluster finalization where a plan crashes a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ClusterCrashPoint {
    /// The coordinator is `SIGKILLed` once checkpoint `started` is stored, before its own
    /// layout finalizes (failpoint `cluster::started`).
    CoordinatorStarted,
    /// The coordinator is `SIGKILLed` once checkpoint `coordinator finalized` is stored
    /// (failpoint `cluster::coordinator_finalized`).
    CoordinatorFinalized,
    /// The coordinator is `SIGKILLed` once checkpoint `members finalized` is stored, before
    /// `complete` (failpoint `cluster::members_finalized`).
    MembersFinalized,
    /// A member is `SIGKILLed` inside its background local finalization (the finalizer's
    /// `finalize::started`).
    MemberFinalizing,
}

/// Every cluster crash point, in the order a finalization passes them.
pub const CLUSTER_CRASH_POINTS: &[ClusterCrashPoint] = &[
    ClusterCrashPoint::CoordinatorStarted,
    ClusterCrashPoint::CoordinatorFinalized,
    ClusterCrashPoint::MemberFinalizing,
    ClusterCrashPoint::MembersFinalized,
];

impl ClusterCrashPoint {
    /// The failpoint it stops at (in the coordinator, or in the member).
    pub fn failpoint(self) -> &'static str {
        match self {
            Self::CoordinatorStarted => "cluster::started",
            Self::CoordinatorFinalized => "cluster::coordinator_finalized",
            Self::MembersFinalized => "cluster::members_finalized",
            Self::MemberFinalizing => super::MEMBER_FINALIZE_FAILPOINT,
        }
    }

    /// Whether the coordinator (not a member) crashes there.
    pub fn is_coordinator(self) -> bool {
        self != Self::MemberFinalizing
    }
}

impl fmt::Display for ClusterCrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = if self.is_coordinator() {
            "coordinator"
        } else {
            "member"
        };
        write!(f, "{who}@{}", self.failpoint())
    }
}

/// One step of a [`ClusterPlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterPlanStep {
    /// Rolling upgrade: restart the member cleanly on the new SLV.
    UpgradeMember {
        /// The node.
        node: String,
    },
    /// Rolling upgrade of a member that crashes: SIGKILL it, restart it on the new SLV
    /// (it waits out its dead process's lease).
    CrashAndUpgradeMember {
        /// The node.
        node: String,
    },
    /// The member dies for good (SIGKILL), still on the old SLV.
    KillMember {
        /// The node.
        node: String,
    },
    /// The operator excludes the dead member.
    Exclude {
        /// The node.
        node: String,
    },
    /// A new member joins, installed at the cluster's current MLV with the new SLV.
    LateJoiner,
    /// The cluster finalizes through the coordinator; with a crash point, the process
    /// there is `SIGKILLed` and started again, and the finalization resumes.
    Finalize {
        /// Where it crashes.
        crash: Option<ClusterCrashPoint>,
        /// The member that crashes (for [`ClusterCrashPoint::MemberFinalizing`]).
        member: Option<String>,
    },
    /// Wait until the finalization is complete and every member caught up; check it.
    WaitComplete,
    /// The excluded member comes back with its old binary: refused.
    OldBinaryRefused {
        /// The node.
        node: String,
    },
}

impl fmt::Display for ClusterPlanStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UpgradeMember { node } => write!(f, "upgrade {node}"),
            Self::CrashAndUpgradeMember { node } => write!(f, "crash {node}, upgrade it"),
            Self::KillMember { node } => write!(f, "kill {node} for good"),
            Self::Exclude { node } => write!(f, "exclude {node}"),
            Self::LateJoiner => write!(f, "a late joiner"),
            Self::Finalize {
                crash: None,
                member: _,
            } => write!(f, "finalize the cluster"),
            Self::Finalize {
                crash: Some(point),
                member,
            } => match member {
                Some(member) => write!(f, "finalize the cluster, crashing {member} at {point}"),
                None => write!(f, "finalize the cluster, crashing the {point}"),
            },
            Self::WaitComplete => write!(f, "wait for completion"),
            Self::OldBinaryRefused { node } => write!(f, "{node}'s old binary is refused"),
        }
    }
}

/// A seeded cluster plan: its steps, generated from the seed and the members alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPlan {
    /// The seed.
    pub seed: u64,
    /// The steps, in order.
    pub steps: Vec<ClusterPlanStep>,
}

impl ClusterPlan {
    /// Generates the plan of `seed` for `members` (at least two nodes; one of them dies
    /// and is excluded, the others are upgraded in a random order); `crashes` adds a
    /// crash point to the finalization.
    pub fn generate(seed: u64, members: &[String], crashes: bool) -> Self {
        let mut rng = PlanRng::new(seed);
        let mut members = members.to_vec();
        rng.shuffle(&mut members);
        let doomed = members.pop().unwrap_or_default();
        let mut steps = Vec::new();
        let kill_at = rng.index(members.len() + 1);
        for (i, node) in members.iter().enumerate() {
            if i == kill_at {
                steps.push(ClusterPlanStep::KillMember {
                    node: doomed.clone(),
                });
            }
            steps.push(if rng.chance(1, 3) {
                ClusterPlanStep::CrashAndUpgradeMember { node: node.clone() }
            } else {
                ClusterPlanStep::UpgradeMember { node: node.clone() }
            });
        }
        if kill_at == members.len() {
            steps.push(ClusterPlanStep::KillMember {
                node: doomed.clone(),
            });
        }
        let late_before = rng.chance(1, 2);
        if late_before {
            steps.push(ClusterPlanStep::LateJoiner);
        }
        steps.push(ClusterPlanStep::Exclude {
            node: doomed.clone(),
        });
        let crash = crashes
            .then(|| rng.pick(CLUSTER_CRASH_POINTS).copied())
            .flatten();
        let member = match crash {
            Some(ClusterCrashPoint::MemberFinalizing) => rng.pick(&members).cloned(),
            _ => None,
        };
        steps.push(ClusterPlanStep::Finalize { crash, member });
        steps.push(ClusterPlanStep::WaitComplete);
        if !late_before {
            steps.push(ClusterPlanStep::LateJoiner);
            steps.push(ClusterPlanStep::WaitComplete);
        }
        steps.push(ClusterPlanStep::OldBinaryRefused { node: doomed });
        Self { seed, steps }
    }

    /// The crash point of the plan's finalization, if any.
    pub fn crash_point(&self) -> Option<ClusterCrashPoint> {
        self.steps.iter().find_map(|s| match s {
            ClusterPlanStep::Finalize { crash, .. } => *crash,
            _ => None,
        })
    }
}

impl fmt::Display for ClusterPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "cluster plan, seed {}:", self.seed)?;
        for (i, step) in self.steps.iter().enumerate() {
            writeln!(f, "  {}. {step}", i + 1)?;
        }
        Ok(())
    }
}

/// A member at the end of a plan, as the coordinator and its own disk say.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberOutcome {
    /// The node.
    pub node: String,
    /// Its SLV, as the coordinator recorded it.
    pub software_layout_version: u32,
    /// Its MLV, as the coordinator recorded it.
    pub metadata_layout_version: u32,
    /// Its MLV on its own disk (`None` when it is not running).
    pub local_metadata_layout_version: Option<u32>,
    /// The reason it was excluded, if it is.
    pub excluded: Option<String>,
}

/// What a plan ended with: everything a replay must reproduce.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterPlanOutcome {
    /// The cluster MLV.
    pub cluster_layout_version: u32,
    /// The last checkpoint.
    pub checkpoint: Option<String>,
    /// Every member but the coordinator, sorted by name.
    pub members: Vec<MemberOutcome>,
    /// The audit trail's events, oldest first. A checkpoint entry a killed coordinator
    /// lost (checkpoint and entry are two writes) is recorded late by the next
    /// coordinator's driver, after the entries written meanwhile.
    pub audit: Vec<String>,
    /// The crash points the plan crashed at.
    pub crashed_at: Vec<ClusterCrashPoint>,
    /// The refusal of the excluded member's old binary named the exclusion.
    pub old_binary_refused_as_excluded: bool,
}

/// A plan that ran to its end and passed its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterPlanReport {
    /// The plan.
    pub plan: ClusterPlan,
    /// What it ended with.
    pub outcome: ClusterPlanOutcome,
}

/// A plan that failed: the seed to replay it, the plan, the step and why.
#[derive(Debug)]
#[non_exhaustive]
pub struct ClusterPlanFailure {
    /// The plan (with its seed).
    pub plan: ClusterPlan,
    /// The 1-based step that failed (0: building the cluster).
    pub step: usize,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for ClusterPlanFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cluster plan seed {} failed at step {}: {}\n{}replay it with ClusterPlanTest::run({})",
            self.plan.seed, self.step, self.message, self.plan, self.plan.seed
        )
    }
}

impl std::error::Error for ClusterPlanFailure {}

/// Runs seeded [`ClusterPlan`]s on fresh coordinated clusters built by one builder.
#[derive(Debug, Clone)]
pub struct ClusterPlanTest {
    builder: MiniClusterBuilder,
    crashes: bool,
}

impl ClusterPlanTest {
    /// Plans on clusters `builder` builds: it must be
    /// [`coordinated`](MiniClusterBuilder::coordinated), with one kind of at least two
    /// nodes whose new SLV is above the old one. Crashes are on: they need
    /// [`child_processes`](MiniClusterBuilder::child_processes) and the kit's
    /// `failpoints` feature.
    pub fn new(builder: MiniClusterBuilder) -> Self {
        Self {
            builder,
            crashes: true,
        }
    }

    /// Whether the finalization crashes at a seeded crash point (default: yes).
    #[must_use]
    pub fn crashes(mut self, crashes: bool) -> Self {
        self.crashes = crashes;
        self
    }

    fn members(&self) -> Result<Vec<String>, MiniClusterError> {
        let kinds = self.builder.kinds()?;
        let [kind] = kinds.as_slice() else {
            return Err(MiniClusterError::InvalidConfig(
                "a cluster plan runs one kind of node".to_owned(),
            ));
        };
        if self.builder.coordination.is_none() {
            return Err(MiniClusterError::InvalidConfig(
                "a cluster plan needs a coordinated cluster: .coordinated(..)".to_owned(),
            ));
        }
        if kind.nodes < 2 {
            return Err(MiniClusterError::InvalidConfig(
                "a cluster plan needs at least two nodes (one is excluded)".to_owned(),
            ));
        }
        if kind.new_software_layout_version <= kind.old_software_layout_version {
            return Err(MiniClusterError::InvalidConfig(format!(
                "a cluster plan upgrades: the new SLV ({}) must be above the old one ({})",
                kind.new_software_layout_version, kind.old_software_layout_version
            )));
        }
        Ok((0..kind.nodes)
            .map(|i| format!("{}-{i}", kind.name))
            .collect())
    }

    /// The plan of `seed`.
    pub fn plan(&self, seed: u64) -> Result<ClusterPlan, MiniClusterError> {
        Ok(ClusterPlan::generate(seed, &self.members()?, self.crashes))
    }

    /// Runs the plan of `seed` on a fresh cluster.
    pub fn run(&self, seed: u64) -> Result<ClusterPlanReport, ClusterPlanFailure> {
        let plan = self.plan(seed).map_err(|e| ClusterPlanFailure {
            plan: ClusterPlan {
                seed,
                steps: Vec::new(),
            },
            step: 0,
            message: e.to_string(),
        })?;
        let fail = |step: usize, message: String| ClusterPlanFailure {
            plan: plan.clone(),
            step,
            message,
        };
        let mut cluster = self
            .builder
            .clone()
            .build()
            .map_err(|e| fail(0, e.to_string()))?;
        let mut run = Run {
            crashed_at: Vec::new(),
            refused_as_excluded: false,
        };
        for (i, step) in plan.steps.iter().enumerate() {
            run.step(&mut cluster, step)
                .map_err(|message| fail(i + 1, format!("{step}: {message}")))?;
        }
        let outcome = run
            .outcome(&cluster)
            .map_err(|message| fail(plan.steps.len(), message))?;
        Ok(ClusterPlanReport { plan, outcome })
    }
}

struct Run {
    crashed_at: Vec<ClusterCrashPoint>,
    refused_as_excluded: bool,
}

// A `map_err` adapter: it gets the error by value.
#[allow(clippy::needless_pass_by_value)]
fn text(e: MiniClusterError) -> String {
    e.to_string()
}

impl Run {
    fn step(&mut self, cluster: &mut MiniCluster, step: &ClusterPlanStep) -> Result<(), String> {
        let kind = cluster.kinds()[0].clone();
        match step {
            ClusterPlanStep::UpgradeMember { node } => cluster.upgrade_member(node).map_err(text),
            ClusterPlanStep::CrashAndUpgradeMember { node } => {
                cluster.crash_and_upgrade_member(node).map_err(text)
            }
            ClusterPlanStep::KillMember { node } => cluster
                .node_dyn(node)
                .and_then(ClusterNode::kill)
                .map_err(text),
            ClusterPlanStep::Exclude { node } => cluster
                .exclude(node, "cluster plan: the host is gone")
                .map_err(text),
            ClusterPlanStep::LateJoiner => {
                cluster.add_late_joiner(&kind.name).map(drop).map_err(text)
            }
            ClusterPlanStep::Finalize { crash, member } => {
                self.finalize(cluster, *crash, member.as_deref())
            }
            ClusterPlanStep::WaitComplete => {
                let target = kind.new_software_layout_version;
                // A coordinator SIGKILLed between a checkpoint and its audit entry
                // (two writes) loses the entry; the restarted coordinator's driver
                // records it late, so completion includes the audit entry every time.
                let status = cluster.wait_for_cluster_complete().map_err(text)?;
                if status.cluster_layout_version != target {
                    return Err(format!(
                        "the cluster MLV is {}, not the new SLV {target}",
                        status.cluster_layout_version
                    ));
                }
                for node in cluster.nodes().filter(|n| n.is_running()) {
                    let mlv = node.metadata_layout_version().map_err(text)?;
                    if mlv != target {
                        return Err(format!(
                            "{} is at MLV {mlv} on its disk, the cluster at {target}",
                            node.name()
                        ));
                    }
                }
                let wanted = [
                    "excluded",
                    "finalization-started",
                    "coordinator-finalized",
                    "members-finalized",
                    "finalization-complete",
                ];
                let mut events = status.audit.iter();
                for event in wanted {
                    if !events.any(|e| e == event) {
                        return Err(format!(
                            "the audit trail lacks {event} (in order): {:?}",
                            status.audit
                        ));
                    }
                }
                Ok(())
            }
            ClusterPlanStep::OldBinaryRefused { node } => {
                let n = cluster.node_dyn(node).map_err(text)?;
                let started = n.start(
                    StartOptions::default()
                        .with_software_layout_version(n.old_software_layout_version()),
                );
                match started {
                    Ok(()) => Err(format!("{node}'s old binary was accepted")),
                    Err(e) => match e.member_refusal() {
                        Some(refusal) => {
                            self.refused_as_excluded = refusal.contains("was excluded by");
                            if self.refused_as_excluded {
                                Ok(())
                            } else {
                                Err(format!("refused, but not as excluded: {refusal}"))
                            }
                        }
                        None => Err(format!("expected a refusal by the coordinator, got: {e}")),
                    },
                }
            }
        }
    }

    fn finalize(
        &mut self,
        cluster: &MiniCluster,
        crash: Option<ClusterCrashPoint>,
        member: Option<&str>,
    ) -> Result<(), String> {
        match (crash, member) {
            (None, _) => cluster.start_cluster_finalization().map(drop).map_err(text),
            (Some(ClusterCrashPoint::MemberFinalizing), Some(member)) => {
                cluster.arm_member_crash(member).map_err(text)?;
                cluster.start_cluster_finalization().map_err(text)?;
                cluster.kill_member_at_crash(member).map_err(text)?;
                self.crashed_at.push(ClusterCrashPoint::MemberFinalizing);
                // Restarted on the same (new) binary: it waits out its killed process's
                // lease, registers, is told to finalize, and does.
                cluster
                    .node_dyn(member)
                    .and_then(|n| n.start(StartOptions::default()))
                    .map_err(text)
            }
            (Some(point), _) if point.is_coordinator() => {
                cluster
                    .arm_coordinator_crash(point.failpoint())
                    .map_err(text)?;
                cluster.start_cluster_finalization().map_err(text)?;
                cluster
                    .kill_coordinator_at_crash(point.failpoint())
                    .map_err(text)?;
                self.crashed_at.push(point);
                // Its driver resumes from the stored checkpoint.
                cluster.start_coordinator().map_err(text)
            }
            (Some(point), None) => Err(format!("crash point {point} names no member")),
            (Some(point), Some(_)) => Err(format!("crash point {point} is not supported")),
        }
    }

    fn outcome(self, cluster: &MiniCluster) -> Result<ClusterPlanOutcome, String> {
        let status = cluster.coordinator_status().map_err(text)?;
        let mut members = Vec::new();
        for m in status.members.iter().filter(|m| !m.is_coordinator) {
            let node = cluster.node_dyn(&m.id).map_err(text)?;
            let local = if node.is_running() {
                Some(node.metadata_layout_version().map_err(text)?)
            } else {
                None
            };
            members.push(MemberOutcome {
                node: m.id.clone(),
                software_layout_version: m.software_layout_version,
                metadata_layout_version: m.metadata_layout_version,
                local_metadata_layout_version: local,
                excluded: m.excluded.clone(),
            });
        }
        Ok(ClusterPlanOutcome {
            cluster_layout_version: status.cluster_layout_version,
            checkpoint: status.checkpoint,
            members,
            audit: status.audit,
            crashed_at: self.crashed_at,
            old_binary_refused_as_excluded: self.refused_as_excluded,
        })
    }
}
