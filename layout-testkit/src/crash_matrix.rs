//! [`CrashMatrix`]: a scenario run once per crash point its finalization passes (and per
//! pass of it), crashing there, restarting, finishing, and checking invariants.
//!
//! The crash points are discovered, not listed: a crash-free run traces every point the
//! finalization passes, the finalizer's own steps ([`FAILPOINTS`]) and every point inside
//! its actions (a background migration's batch boundaries, an action's own
//! [`ActionContext::crash_point`](layout_core::ActionContext::crash_point)s), and the
//! matrix crashes at each pass of each. See [`crate::inject`] for how a crash is made and
//! which threads count.

use std::collections::BTreeSet;
use std::fmt;

use layout_core::finalizer::FAILPOINTS;

use crate::cluster::{MiniCluster, MiniClusterBuilder, MiniClusterError, RunOutcome};
use crate::component::{HookError, HookResult};
use crate::inject::{passed_points, CrashPoint, Exclusive, Injection, PassedPoint};

/// Built-in invariant: the crashed node starts again.
pub const INVARIANT_RESTARTS: &str = "the node restarts after the crash";
/// Built-in invariant: the MLV after the restart is at least the MLV the node had
/// published before the crash (no reader ever saw a version that was then lost).
pub const INVARIANT_MLV_NEVER_GOES_BACKWARDS: &str = "the MLV never goes backwards";
/// Built-in invariant: after the restart, finalization completes on every node (MLV =
/// SLV).
pub const INVARIANT_FINALIZATION_COMPLETES: &str = "finalization completes after the restart";
/// Built-in invariant: the scenario reaches the crash point (it is deterministic).
pub const INVARIANT_CRASH_POINT_REACHED: &str = "the crash point is reached";

/// An invariant a crash broke.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Violation {
    /// The invariant's name (one of the `INVARIANT_*` constants or a user invariant's).
    pub invariant: String,
    /// What was found.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

/// One run of the matrix: a crash at one point.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CrashCase {
    /// Where it crashed.
    pub point: CrashPoint,
    /// How many times a crash-free run passes that crash point.
    pub hits: usize,
    /// Whether the point is inside an upgrade action (see [`PassedPoint::inside_action`]).
    pub inside_action: bool,
    /// The MLV the node had published when it crashed (`None`: it did not crash).
    pub published_mlv: Option<u32>,
    /// The MLV after the restart (`None`: it did not restart).
    pub recovered_mlv: Option<u32>,
    /// The invariants it broke.
    pub violations: Vec<Violation>,
}

impl CrashCase {
    /// Whether no invariant broke.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// What a [`CrashMatrix`] found: every crash point the scenario passes, with its hit
/// count, and one case per pass crashed at.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CrashMatrixReport {
    /// The node that crashed.
    pub node: String,
    /// Whether the nodes were child processes (killed with SIGKILL) or in-process
    /// (a simulated crash at the point, everything dropped).
    pub child_processes: bool,
    /// The crash points a crash-free run passed, in order.
    pub trace: Vec<&'static str>,
    /// Every crash point the crash-free run passed, each once, in the order first
    /// passed, with its hit count and whether it is inside an action.
    pub points: Vec<PassedPoint>,
    /// Every case, in the order of [`points`](Self::points) then hit.
    pub cases: Vec<CrashCase>,
    /// Failpoints of [`FAILPOINTS`] the scenario never passes (no case could crash
    /// there).
    pub not_passed: Vec<&'static str>,
}

impl CrashMatrixReport {
    /// Whether every finalizer step was passed and crashed at, and no invariant broke.
    pub fn is_ok(&self) -> bool {
        self.not_passed.is_empty() && self.cases.iter().all(CrashCase::is_ok)
    }

    /// The crash points crashed at (of the finalizer and inside actions; see
    /// [`points_crashed`](Self::points_crashed), the same set).
    pub fn failpoints_crashed(&self) -> BTreeSet<&'static str> {
        self.points_crashed()
    }

    /// The crash points crashed at.
    pub fn points_crashed(&self) -> BTreeSet<&'static str> {
        self.cases
            .iter()
            .filter(|c| c.published_mlv.is_some())
            .map(|c| c.point.failpoint)
            .collect()
    }

    /// Every broken invariant, with the crash point that broke it.
    pub fn violations(&self) -> impl Iterator<Item = (CrashPoint, &Violation)> + '_ {
        self.cases
            .iter()
            .flat_map(|c| c.violations.iter().map(move |v| (c.point, v)))
    }

    /// The crash points passed inside upgrade actions.
    pub fn points_inside_actions(&self) -> impl Iterator<Item = &PassedPoint> + '_ {
        self.points.iter().filter(|p| p.inside_action)
    }

    /// The names of the invariants that crashes at crash point `failpoint` broke.
    pub fn broken_at(&self, failpoint: &str) -> BTreeSet<&str> {
        self.violations()
            .filter(|(p, _)| p.failpoint == failpoint)
            .map(|(_, v)| v.invariant.as_str())
            .collect()
    }

    /// Panics with the whole report unless [`is_ok`](Self::is_ok).
    ///
    /// # Panics
    ///
    /// When a finalizer step was not crashed at or an invariant broke.
    #[track_caller]
    pub fn assert_ok(&self) {
        assert!(self.is_ok(), "{self}");
    }
}

impl fmt::Display for CrashMatrixReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let broken = self.cases.iter().filter(|c| !c.is_ok()).count();
        let inside = self.points_inside_actions().count();
        writeln!(
            f,
            "crash matrix on node {} ({}): {} crashes over {} crash points ({inside} inside \
             actions); {broken} broke an invariant",
            self.node,
            if self.child_processes {
                "child processes, SIGKILL"
            } else {
                "in-process, simulated crash and drop"
            },
            self.cases.len(),
            self.points.len(),
        )?;
        writeln!(f, "crash points passed by the crash-free run:")?;
        for point in &self.points {
            writeln!(
                f,
                "  {:<40} {:>3} hit(s)  {}",
                point.name,
                point.hits,
                if point.inside_action {
                    "inside an action"
                } else {
                    "finalizer"
                }
            )?;
        }
        writeln!(f, "crashes:")?;
        for case in &self.cases {
            let at = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
            write!(
                f,
                "  {:<40} hit {}/{}  published MLV {:>2}, recovered MLV {:>2}  ",
                case.point.failpoint,
                case.point.hit,
                case.hits,
                at(case.published_mlv),
                at(case.recovered_mlv)
            )?;
            if case.is_ok() {
                writeln!(f, "ok")?;
            } else {
                let list: Vec<String> = case.violations.iter().map(ToString::to_string).collect();
                writeln!(f, "BROKEN: {}", list.join("; "))?;
            }
        }
        for failpoint in &self.not_passed {
            writeln!(
                f,
                "  {failpoint:<40} NOT PASSED by this scenario: no crash there"
            )?;
        }
        Ok(())
    }
}

/// Why a crash matrix could not run (as opposed to an invariant it found broken).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrashMatrixError {
    /// The failpoints are compiled out. Not returned any more: crash points need no
    /// cargo feature. Kept so that code matching it still compiles.
    #[error(
        "the crash matrix needs the failpoints compiled in: enable layout-testkit's \
         `failpoints` feature"
    )]
    FailpointsDisabled,
    /// Building or driving the cluster failed outside the crash.
    #[error("crash matrix, {case}: {source}")]
    Cluster {
        /// Which run (`the crash-free run`, `crash at X hit n`).
        case: String,
        /// Why.
        #[source]
        source: MiniClusterError,
    },
    /// A scenario callback failed outside the crash.
    #[error("crash matrix, {case}: the {hook} callback failed: {source}")]
    Hook {
        /// Which run.
        case: String,
        /// Which callback (`setup`, `pre_finalized`).
        hook: &'static str,
        /// Its error.
        #[source]
        source: HookError,
    },
    /// The crash node had nothing to finalize, so no crash point is passed.
    #[error(
        "crash matrix: node {node} has nothing to finalize (MLV = SLV after the upgrade); pin \
         its kind to an older version"
    )]
    NothingToFinalize {
        /// The node.
        node: String,
    },
    /// The crash-free run already breaks invariants: the scenario or the checker is wrong.
    #[error("crash matrix: the crash-free run breaks invariants: {}", list(.violations))]
    CrashFreeRunBroken {
        /// What broke.
        violations: Vec<Violation>,
    },
}

fn list(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

type ClusterHook<'a> = Box<dyn FnMut(&MiniCluster) -> HookResult + 'a>;

/// Runs a scenario once per crash point its finalization passes (and, by default, once
/// per pass of each), crashing one node there, and reports which crash broke which
/// invariant. The points are discovered by a crash-free run: the finalizer's steps
/// ([`FAILPOINTS`]) and every point inside its actions, such as each batch boundary of a
/// background migration; no list to keep, no knob in the component.
///
/// Each run, on a fresh cluster from the builder:
/// 1. build the cluster (nodes at their kind's initial MLV and old SLV);
/// 2. the [`setup`](Self::setup) callback (ingest data with the old version);
/// 3. upgrade every node below its kind's new SLV (prepare, restart);
/// 4. the [`pre_finalized`](Self::pre_finalized) callback (write while pre-finalized);
/// 5. finalize the [`crash node`](Self::crash_node) with the crash injected: in-process,
///    a simulated crash (an unwind the finalizer lets through) at the point, and the
///    node's manager, finalizer and component are dropped; in child-process mode, a
///    SIGKILL while the child is stopped there;
/// 6. restart the crashed node and check the built-in invariants
///    ([`INVARIANT_RESTARTS`], [`INVARIANT_MLV_NEVER_GOES_BACKWARDS`]);
/// 7. finalize every node ([`INVARIANT_FINALIZATION_COMPLETES`]);
/// 8. every [`invariant`](Self::invariant) callback.
///
/// A crash-free run first lists the crash points passed; it must break no invariant.
///
/// Crash points are process-global: in-process runs hold the kit's injection lock, and
/// any other work of the process that passes a crash point meanwhile counts (see
/// [`crate::inject`]). Put tests that use it in a test binary of their own, or run them
/// with cargo-nextest (one process per test).
pub struct CrashMatrix<'a> {
    builder: MiniClusterBuilder,
    setup: Option<ClusterHook<'a>>,
    pre_finalized: Option<ClusterHook<'a>>,
    invariants: Vec<(String, ClusterHook<'a>)>,
    crash_node: Option<String>,
    every_hit: bool,
}

impl<'a> CrashMatrix<'a> {
    /// A crash matrix over clusters built by `builder`.
    pub fn new(builder: MiniClusterBuilder) -> Self {
        Self {
            builder,
            setup: None,
            pre_finalized: None,
            invariants: Vec::new(),
            crash_node: None,
            every_hit: true,
        }
    }

    /// Called on each fresh cluster, before the upgrade.
    #[must_use]
    pub fn setup(mut self, hook: impl FnMut(&MiniCluster) -> HookResult + 'a) -> Self {
        self.setup = Some(Box::new(hook));
        self
    }

    /// Called after the upgrade, before the finalization that crashes.
    #[must_use]
    pub fn pre_finalized(mut self, hook: impl FnMut(&MiniCluster) -> HookResult + 'a) -> Self {
        self.pre_finalized = Some(Box::new(hook));
        self
    }

    /// An invariant checked after every run (crash, restart, finish); an error is a
    /// violation reported under `name`.
    #[must_use]
    pub fn invariant(
        mut self,
        name: impl Into<String>,
        check: impl FnMut(&MiniCluster) -> HookResult + 'a,
    ) -> Self {
        self.invariants.push((name.into(), Box::new(check)));
        self
    }

    /// The node that crashes (default: the first node built).
    #[must_use]
    pub fn crash_node(mut self, name: impl Into<String>) -> Self {
        self.crash_node = Some(name.into());
        self
    }

    /// Crash at every pass of each crash point (the default), or only at its first (a
    /// migration of many batches passes its points once per batch).
    #[must_use]
    pub fn every_hit(mut self, every_hit: bool) -> Self {
        self.every_hit = every_hit;
        self
    }

    /// Runs the matrix. `Err` when it could not run; broken invariants are in the
    /// report ([`CrashMatrixReport::is_ok`]).
    pub fn run(mut self) -> Result<CrashMatrixReport, CrashMatrixError> {
        let child_processes = self.builder.is_child_processes();
        let _exclusive = Exclusive::take(!child_processes);

        let reference = self.run_case(Injection::Trace, "the crash-free run")?;
        if !reference.violations.is_empty() {
            return Err(CrashMatrixError::CrashFreeRunBroken {
                violations: reference.violations,
            });
        }
        if reference.trace.is_empty() {
            return Err(CrashMatrixError::NothingToFinalize {
                node: reference.node,
            });
        }
        let points = passed_points(&reference.trace);
        let not_passed: Vec<&'static str> = FAILPOINTS
            .iter()
            .copied()
            .filter(|f| !reference.trace.contains(f))
            .collect();
        let mut cases = Vec::new();
        for passed in &points {
            let last = if self.every_hit { passed.hits } else { 1 };
            for hit in 1..=last {
                let point = CrashPoint {
                    failpoint: passed.name,
                    hit,
                };
                let run = self.run_case(Injection::Crash(point), &format!("crash at {point}"))?;
                cases.push(CrashCase {
                    point,
                    hits: passed.hits,
                    inside_action: passed.inside_action,
                    published_mlv: run.published_mlv,
                    recovered_mlv: run.recovered_mlv,
                    violations: run.violations,
                });
            }
        }
        Ok(CrashMatrixReport {
            node: reference.node,
            child_processes,
            trace: reference.trace,
            points,
            cases,
            not_passed,
        })
    }

    fn run_case(&mut self, injection: Injection, case: &str) -> Result<CaseRun, CrashMatrixError> {
        let cluster_err = |source| CrashMatrixError::Cluster {
            case: case.to_owned(),
            source,
        };
        let hook_err = |hook, source| CrashMatrixError::Hook {
            case: case.to_owned(),
            hook,
            source,
        };
        let cluster = self.builder.clone().build().map_err(cluster_err)?;
        if let Some(setup) = self.setup.as_mut() {
            setup(&cluster).map_err(|e| hook_err("setup", e))?;
        }
        for node in cluster.nodes() {
            if node.software_layout_version() < node.new_software_layout_version() {
                node.upgrade().map_err(cluster_err)?;
            }
        }
        if let Some(hook) = self.pre_finalized.as_mut() {
            hook(&cluster).map_err(|e| hook_err("pre_finalized", e))?;
        }
        let node = match &self.crash_node {
            Some(name) => cluster.node_dyn(name).map_err(cluster_err)?,
            None => cluster.nodes().next().ok_or_else(|| {
                cluster_err(MiniClusterError::InvalidConfig(
                    "the cluster has no node".to_owned(),
                ))
            })?,
        };
        let mut run = CaseRun {
            node: node.name().to_owned(),
            trace: Vec::new(),
            published_mlv: None,
            recovered_mlv: None,
            violations: Vec::new(),
        };
        crash_and_restart(node, injection, &mut run).map_err(cluster_err)?;
        let mut violation = |invariant: &str, detail: String| {
            run.violations.push(Violation {
                invariant: invariant.to_owned(),
                detail,
            });
        };
        for node in cluster.nodes().filter(|n| n.is_running()) {
            match node.finalize() {
                Ok(summary)
                    if summary.metadata_layout_version == node.software_layout_version() => {}
                Ok(summary) => violation(
                    INVARIANT_FINALIZATION_COMPLETES,
                    format!(
                        "{} finalized to MLV {}, below its SLV {}",
                        node.name(),
                        summary.metadata_layout_version,
                        node.software_layout_version()
                    ),
                ),
                Err(e) => violation(INVARIANT_FINALIZATION_COMPLETES, e.to_string()),
            }
        }
        for (name, check) in &mut self.invariants {
            if let Err(e) = check(&cluster) {
                run.violations.push(Violation {
                    invariant: name.clone(),
                    detail: e.to_string(),
                });
            }
        }
        Ok(run)
    }
}

/// Finalizes `node` with `injection`; after a crash, restarts it and checks the MLV.
fn crash_and_restart(
    node: &dyn crate::ClusterNode,
    injection: Injection,
    run: &mut CaseRun,
) -> Result<(), MiniClusterError> {
    let mut violation = |invariant: &str, detail: String| {
        run.violations.push(Violation {
            invariant: invariant.to_owned(),
            detail,
        });
    };
    let finalize = match node.finalize_injected(None, injection) {
        Ok(finalize) => finalize,
        Err(e) => {
            violation(
                INVARIANT_FINALIZATION_COMPLETES,
                format!("the finalization failed before any crash: {e}"),
            );
            return Ok(());
        }
    };
    run.trace = finalize.trace;
    match finalize.outcome {
        RunOutcome::Crashed { published_mlv, .. } => {
            run.published_mlv = Some(published_mlv);
            if let Err(e) = node.start(crate::StartOptions::default()) {
                violation(INVARIANT_RESTARTS, e.to_string());
                return Ok(());
            }
            let recovered = node.metadata_layout_version()?;
            run.recovered_mlv = Some(recovered);
            if recovered < published_mlv {
                violation(
                    INVARIANT_MLV_NEVER_GOES_BACKWARDS,
                    format!(
                        "MLV {published_mlv} was published before the crash, the restarted \
                         node has MLV {recovered}"
                    ),
                );
            }
        }
        RunOutcome::Finalized(_) => {
            if let Injection::Crash(point) = injection {
                violation(
                    INVARIANT_CRASH_POINT_REACHED,
                    format!("the finalization ended without passing {point}"),
                );
            }
        }
    }
    Ok(())
}

struct CaseRun {
    node: String,
    trace: Vec<&'static str>,
    published_mlv: Option<u32>,
    recovered_mlv: Option<u32>,
    violations: Vec<Violation>,
}

impl fmt::Debug for CrashMatrix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrashMatrix")
            .field("builder", &self.builder)
            .field("crash_node", &self.crash_node)
            .field("every_hit", &self.every_hit)
            .field(
                "invariants",
                &self.invariants.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}
