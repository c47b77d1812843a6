//! Seeded random mixed-version plans, in the spirit of CockroachDB's mixed-version test
//! framework: a seed picks the start version, the order of node upgrades, restarts and
//! kills, whether to downgrade before finalizing, crashes at failpoints, and when the
//! user's hooks run. The same seed replays the same plan, with the same event log.

use std::collections::BTreeSet;
use std::fmt;

use layout_core::finalizer::FAILPOINTS;

use crate::cluster::{
    ClusterNode, KindInfo, MiniCluster, MiniClusterBuilder, MiniClusterError, RunOutcome,
    StartOptions,
};
use crate::component::{HookError, HookResult};
use crate::inject::{expected_hits, failpoints_enabled, CrashPoint, Exclusive, Injection};
pub use crate::rng::PlanRng;

/// The environment variable that makes [`MixedVersionTest::run_seeds`] run only the seed
/// it names (to replay a failure).
pub const SEED_ENV: &str = "LAYOUT_TESTKIT_SEED";

/// One step of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlanStep {
    /// Prepare the node and restart it with its kind's new SLV.
    Upgrade {
        /// The node.
        node: String,
    },
    /// Prepare the node and restart it with the plan's start version (the old binary).
    Downgrade {
        /// The node.
        node: String,
    },
    /// Stop the node cleanly and start it again.
    Restart {
        /// The node.
        node: String,
    },
    /// Kill the node (SIGKILL in child-process mode) and start it again.
    Kill {
        /// The node.
        node: String,
    },
    /// Run the user's hook of that name.
    Hook {
        /// The hook.
        name: String,
    },
    /// Finalize the node up to `target`, crashing at `crash` when set; after a crash,
    /// restart the node, check that the MLV did not go backwards, and finalize again.
    Finalize {
        /// The node.
        node: String,
        /// The layout version to finalize to.
        target: u32,
        /// Where to crash.
        crash: Option<CrashPoint>,
    },
    /// Check every invariant.
    CheckInvariants,
}

impl fmt::Display for PlanStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Upgrade { node } => write!(f, "upgrade {node}"),
            Self::Downgrade { node } => write!(f, "downgrade {node}"),
            Self::Restart { node } => write!(f, "restart {node}"),
            Self::Kill { node } => write!(f, "kill and start {node}"),
            Self::Hook { name } => write!(f, "hook {name}"),
            Self::Finalize {
                node,
                target,
                crash: None,
            } => write!(f, "finalize {node} to {target}"),
            Self::Finalize {
                node,
                target,
                crash: Some(point),
            } => write!(f, "finalize {node} to {target}, crashing at {point}"),
            Self::CheckInvariants => f.write_str("check invariants"),
        }
    }
}

/// A mixed-version plan: what one seed does, step by step.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Plan {
    /// The seed.
    pub seed: u64,
    /// Per kind: its name, the start version (old binary's SLV and MLV) and the version
    /// upgraded to.
    pub versions: Vec<(String, u32, u32)>,
    /// The steps.
    pub steps: Vec<PlanStep>,
}

impl Plan {
    /// The plan of `seed` for a cluster of `kinds` with hooks named `hooks`. The start
    /// version of each kind is drawn from its old SLV up to one below its new SLV.
    /// `crashes` allows crash points (they need the `failpoints` feature to happen).
    pub fn generate(seed: u64, kinds: &[KindInfo], hooks: &[String], crashes: bool) -> Self {
        let mut rng = PlanRng::new(seed);
        let mut versions = Vec::new();
        let mut nodes = Vec::new();
        for kind in kinds {
            let low = kind.old_software_layout_version;
            let high = kind.new_software_layout_version;
            let start = low + narrow(rng.below(u64::from(high.saturating_sub(low))));
            versions.push((kind.name.clone(), start, high));
            for i in 0..kind.nodes {
                nodes.push((format!("{}-{i}", kind.name), start, high));
            }
        }
        let mut generator = Generator {
            rng,
            nodes,
            hooks,
            crashes,
            steps: Vec::new(),
        };
        generator.rolling_upgrade();
        generator.finalize_node_by_node();
        generator.noise();
        generator.steps.push(PlanStep::CheckInvariants);
        Self {
            seed,
            versions,
            steps: generator.steps,
        }
    }
}

fn narrow(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Generates a plan's steps.
struct Generator<'h> {
    rng: PlanRng,
    /// Each node: name, start version, new SLV.
    nodes: Vec<(String, u32, u32)>,
    hooks: &'h [String],
    crashes: bool,
    steps: Vec<PlanStep>,
}

impl Generator<'_> {
    /// Maybe a hook, maybe a restart or kill of a random node.
    fn noise(&mut self) {
        if !self.hooks.is_empty() && self.rng.chance(1, 2) {
            if let Some(name) = self.rng.pick(self.hooks) {
                self.steps.push(PlanStep::Hook { name: name.clone() });
            }
        }
        if self.rng.chance(1, 5) {
            if let Some((node, _, _)) = self.rng.pick(&self.nodes) {
                let node = node.clone();
                self.steps.push(if self.rng.chance(1, 2) {
                    PlanStep::Restart { node }
                } else {
                    PlanStep::Kill { node }
                });
            }
        }
    }

    fn shuffled(&mut self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        self.rng.shuffle(&mut order);
        order
    }

    /// Every node upgraded in random order; maybe some downgraded and upgraded again.
    fn rolling_upgrade(&mut self) {
        let order = self.shuffled();
        for &i in &order {
            self.noise();
            let node = self.nodes[i].0.clone();
            self.steps.push(PlanStep::Upgrade { node });
        }
        if !self.rng.chance(1, 2) {
            return;
        }
        let mut back: Vec<usize> = order
            .iter()
            .copied()
            .filter(|_| self.rng.chance(1, 2))
            .collect();
        if back.is_empty() {
            back.push(order[0]);
        }
        for &i in &back {
            self.noise();
            let node = self.nodes[i].0.clone();
            self.steps.push(PlanStep::Downgrade { node });
        }
        if self.rng.chance(1, 2) {
            self.steps.push(PlanStep::CheckInvariants);
        }
        self.rng.shuffle(&mut back);
        for &i in &back {
            self.noise();
            let node = self.nodes[i].0.clone();
            self.steps.push(PlanStep::Upgrade { node });
        }
    }

    /// A crash point for a finalization of `features` features, or none.
    fn crash(&mut self, features: u32) -> Option<CrashPoint> {
        if !self.crashes || !self.rng.chance(2, 3) {
            return None;
        }
        let failpoint = *self.rng.pick(FAILPOINTS)?;
        let hits = expected_hits(failpoint, usize::try_from(features).unwrap_or(0));
        CrashPoint::new(failpoint, 1 + self.rng.index(hits))
    }

    /// Every node finalized in random order, maybe in two steps, maybe crashing.
    fn finalize_node_by_node(&mut self) {
        for i in self.shuffled() {
            let (node, start, high) = self.nodes[i].clone();
            self.noise();
            let mut from = start;
            if high - start >= 2 && self.rng.chance(1, 3) {
                let middle = start + 1 + narrow(self.rng.below(u64::from(high - start - 1)));
                let crash = self.crash(middle - start);
                self.steps.push(PlanStep::Finalize {
                    node: node.clone(),
                    target: middle,
                    crash,
                });
                self.noise();
                from = middle;
            }
            let crash = self.crash(high - from);
            self.steps.push(PlanStep::Finalize {
                node,
                target: high,
                crash,
            });
            if self.rng.chance(1, 3) {
                self.steps.push(PlanStep::CheckInvariants);
            }
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "plan of seed {}:", self.seed)?;
        for (kind, start, high) in &self.versions {
            write!(f, " {kind} from {start} to {high};")?;
        }
        writeln!(f)?;
        for (i, step) in self.steps.iter().enumerate() {
            writeln!(f, "  {:>3}. {step}", i + 1)?;
        }
        Ok(())
    }
}

/// What a hook gets: the cluster, a random number generator seeded from the plan (so a
/// hook's choices replay too), and the event log.
pub struct HookContext<'a> {
    cluster: &'a MiniCluster,
    rng: PlanRng,
    log: &'a mut Vec<String>,
    step: usize,
    seed: u64,
}

impl HookContext<'_> {
    /// The cluster.
    pub fn cluster(&self) -> &MiniCluster {
        self.cluster
    }

    /// A generator seeded from the plan's seed and this step.
    pub fn rng(&mut self) -> &mut PlanRng {
        &mut self.rng
    }

    /// Adds a line to the event log (keep it deterministic: no times, no paths).
    pub fn log(&mut self, line: impl Into<String>) {
        self.log.push(format!("    {}", line.into()));
    }

    /// The 1-based number of the plan step running.
    pub fn step(&self) -> usize {
        self.step
    }

    /// The plan's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A random running node.
    pub fn random_running_node(&mut self) -> Option<&dyn ClusterNode> {
        let running: Vec<&dyn ClusterNode> =
            self.cluster.nodes().filter(|n| n.is_running()).collect();
        let i = self.rng.index(running.len());
        running.get(i).copied()
    }
}

impl fmt::Debug for HookContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookContext")
            .field("seed", &self.seed)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

/// What a passed plan did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlanReport {
    /// The plan.
    pub plan: Plan,
    /// The event log: each step with what it observed (versions, crash points reached),
    /// and the hooks' lines. Deterministic: the same seed gives the same log.
    pub log: Vec<String>,
    /// The crash points that crashed a node.
    pub crashes: Vec<CrashPoint>,
}

/// Why a plan failed: the seed (to replay it), the step, the cause, and the log so far.
#[derive(Debug, thiserror::Error)]
#[error(
    "mixed-version plan failed: seed {seed} (replay with {SEED_ENV}={seed}), step {step} \
     `{step_text}`: {cause}\n{plan}event log:\n{}",
    log.join("\n")
)]
#[non_exhaustive]
pub struct PlanFailure {
    /// The seed.
    pub seed: u64,
    /// The 1-based step that failed (0: before the first step).
    pub step: usize,
    /// The step, as text.
    pub step_text: String,
    /// Why.
    pub cause: String,
    /// The plan.
    pub plan: Box<Plan>,
    /// The event log up to the failure.
    pub log: Vec<String>,
}

type PlanHook<'a> = Box<dyn FnMut(&mut HookContext<'_>) -> HookResult + 'a>;
type Invariant<'a> = Box<dyn FnMut(&MiniCluster) -> HookResult + 'a>;

/// Seeded random mixed-version plans over a [`MiniCluster`].
///
/// Each seed runs on a fresh cluster; [`setup`](Self::setup) runs first. A seed
/// generates a [`Plan`]: per kind, a start version between its old SLV and one
/// below its new SLV (the cluster is installed there); a rolling upgrade in random order;
/// maybe a downgrade of some nodes and their upgrade again; finalization node by node,
/// maybe in two steps, maybe crashing at a random failpoint and pass (then restart,
/// check that the MLV did not go backwards, finalize again); restarts, kills, the user's
/// hooks and invariant checks at random moments; every invariant at the end, and every
/// node finalized. The event log is deterministic, so two runs of one seed compare
/// equal; a failure prints the seed, and [`SEED_ENV`] replays it.
///
/// Crash points need the `failpoints` feature (without it, plans have none). Hooks must
/// be deterministic for the log to be.
pub struct MixedVersionTest<'a> {
    builder: MiniClusterBuilder,
    setup: Option<Invariant<'a>>,
    hooks: Vec<(String, PlanHook<'a>)>,
    invariants: Vec<(String, Invariant<'a>)>,
    crashes: bool,
}

impl<'a> MixedVersionTest<'a> {
    /// Plans over clusters built by `builder`.
    pub fn new(builder: MiniClusterBuilder) -> Self {
        Self {
            builder,
            setup: None,
            hooks: Vec::new(),
            invariants: Vec::new(),
            crashes: true,
        }
    }

    /// Called on each plan's fresh cluster, before the first step (ingest data, reset
    /// the test's model of it).
    #[must_use]
    pub fn setup(mut self, setup: impl FnMut(&MiniCluster) -> HookResult + 'a) -> Self {
        self.setup = Some(Box::new(setup));
        self
    }

    /// A hook the plans call at random moments (write data, read it back, ...).
    #[must_use]
    pub fn hook(
        mut self,
        name: impl Into<String>,
        hook: impl FnMut(&mut HookContext<'_>) -> HookResult + 'a,
    ) -> Self {
        self.hooks.push((name.into(), Box::new(hook)));
        self
    }

    /// An invariant checked at the plans' check steps and at the end.
    #[must_use]
    pub fn invariant(
        mut self,
        name: impl Into<String>,
        check: impl FnMut(&MiniCluster) -> HookResult + 'a,
    ) -> Self {
        self.invariants.push((name.into(), Box::new(check)));
        self
    }

    /// Whether plans crash nodes at failpoints (default: when the `failpoints` feature is
    /// on).
    #[must_use]
    pub fn crashes(mut self, crashes: bool) -> Self {
        self.crashes = crashes;
        self
    }

    /// The plan `seed` would run.
    pub fn plan(&self, seed: u64) -> Result<Plan, MiniClusterError> {
        let kinds = self.builder.kinds()?;
        for kind in &kinds {
            if kind.old_software_layout_version >= kind.new_software_layout_version {
                return Err(MiniClusterError::InvalidConfig(format!(
                    "kind {} has nothing to upgrade (old SLV {} >= new {}); set \
                     Kind::software_layout_version to the oldest start version",
                    kind.name, kind.old_software_layout_version, kind.new_software_layout_version
                )));
            }
        }
        let names: Vec<String> = self.hooks.iter().map(|(n, _)| n.clone()).collect();
        Ok(Plan::generate(
            seed,
            &kinds,
            &names,
            self.crashes && failpoints_enabled(),
        ))
    }

    /// Runs the plan of each seed in turn, stopping at the first failure; only the seed
    /// in [`SEED_ENV`] when it is set.
    pub fn run_seeds(
        &mut self,
        seeds: impl IntoIterator<Item = u64>,
    ) -> Result<Vec<PlanReport>, PlanFailure> {
        let replay = std::env::var(SEED_ENV)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let seeds: Vec<u64> = match replay {
            Some(seed) => vec![seed],
            None => seeds.into_iter().collect(),
        };
        seeds.into_iter().map(|seed| self.run(seed)).collect()
    }

    /// Runs the plan of `seed`.
    pub fn run(&mut self, seed: u64) -> Result<PlanReport, PlanFailure> {
        let failure =
            |plan: &Plan, step: usize, step_text: String, cause: String, log: &[String]| {
                PlanFailure {
                    seed,
                    step,
                    step_text,
                    cause,
                    plan: Box::new(plan.clone()),
                    log: log.to_vec(),
                }
            };
        let plan = match self.plan(seed) {
            Ok(plan) => plan,
            Err(e) => {
                let empty = Plan {
                    seed,
                    versions: Vec::new(),
                    steps: Vec::new(),
                };
                return Err(failure(&empty, 0, "plan".to_owned(), e.to_string(), &[]));
            }
        };
        let _exclusive = Exclusive::take(!self.builder.is_child_processes());
        let mut log = vec![format!(
            "seed {seed}: {}",
            plan.versions
                .iter()
                .map(|(k, s, h)| format!("{k} from {s} to {h}"))
                .collect::<Vec<_>>()
                .join(", ")
        )];
        let mut builder = self.builder.clone();
        for (kind, start, _) in &plan.versions {
            if let Err(e) = builder.set_versions(kind, *start, *start) {
                return Err(failure(&plan, 0, "install".to_owned(), e.to_string(), &log));
            }
        }
        let cluster = match builder.build() {
            Ok(cluster) => cluster,
            Err(e) => return Err(failure(&plan, 0, "install".to_owned(), e.to_string(), &log)),
        };
        if let Some(setup) = self.setup.as_mut() {
            if let Err(e) = setup(&cluster) {
                return Err(failure(&plan, 0, "setup".to_owned(), e.to_string(), &log));
            }
        }
        let mut crashes = Vec::new();
        for (i, step) in plan.steps.iter().enumerate() {
            let number = i + 1;
            log.push(format!("{number}. {step}"));
            if let Err(cause) = self.execute(&cluster, step, number, seed, &mut log, &mut crashes) {
                return Err(failure(&plan, number, step.to_string(), cause, &log));
            }
        }
        for node in cluster.nodes() {
            let check = node.status().map_err(|e| e.to_string()).and_then(|s| {
                if s.software_layout_version == node.new_software_layout_version()
                    && !s.is_pre_finalized()
                {
                    Ok(())
                } else {
                    Err(format!(
                        "{} ends at MLV {} SLV {}, not finalized at {}",
                        node.name(),
                        s.metadata_layout_version,
                        s.software_layout_version,
                        node.new_software_layout_version()
                    ))
                }
            });
            if let Err(cause) = check {
                return Err(failure(
                    &plan,
                    plan.steps.len(),
                    "the end".to_owned(),
                    cause,
                    &log,
                ));
            }
        }
        log.push("end: every node finalized".to_owned());
        Ok(PlanReport { plan, log, crashes })
    }

    fn execute(
        &mut self,
        cluster: &MiniCluster,
        step: &PlanStep,
        number: usize,
        seed: u64,
        log: &mut Vec<String>,
        crashes: &mut Vec<CrashPoint>,
    ) -> Result<(), String> {
        let text = |e: MiniClusterError| e.to_string();
        let status_line = |node: &dyn ClusterNode| -> Result<String, String> {
            let s = node.status().map_err(text)?;
            Ok(format!(
                "    {}: MLV {} SLV {}",
                node.name(),
                s.metadata_layout_version,
                s.software_layout_version
            ))
        };
        match step {
            PlanStep::Upgrade { node } => {
                let node = cluster.node_dyn(node).map_err(text)?;
                node.upgrade().map_err(text)?;
                log.push(status_line(node)?);
            }
            PlanStep::Downgrade { node } => {
                let node = cluster.node_dyn(node).map_err(text)?;
                node.downgrade().map_err(text)?;
                log.push(status_line(node)?);
            }
            PlanStep::Restart { node } => {
                let node = cluster.node_dyn(node).map_err(text)?;
                node.restart().map_err(text)?;
                log.push(status_line(node)?);
            }
            PlanStep::Kill { node } => {
                let node = cluster.node_dyn(node).map_err(text)?;
                node.kill().map_err(text)?;
                node.start(StartOptions::default()).map_err(text)?;
                log.push(status_line(node)?);
            }
            PlanStep::Hook { name } => {
                let (_, hook) = self
                    .hooks
                    .iter_mut()
                    .find(|(n, _)| n == name)
                    .ok_or_else(|| format!("no hook named {name}"))?;
                let mut ctx = HookContext {
                    cluster,
                    rng: PlanRng::new(
                        seed ^ (u64::try_from(number).unwrap_or(0))
                            .wrapping_mul(0xA24B_AED4_963E_E407),
                    ),
                    log,
                    step: number,
                    seed,
                };
                hook(&mut ctx).map_err(|e: HookError| format!("hook {name} failed: {e}"))?;
            }
            PlanStep::Finalize {
                node,
                target,
                crash,
            } => {
                let node = cluster.node_dyn(node).map_err(text)?;
                finalize_step(node, *target, *crash, log, crashes)?;
            }
            PlanStep::CheckInvariants => {
                for (name, check) in &mut self.invariants {
                    check(cluster).map_err(|e| format!("invariant `{name}` broken: {e}"))?;
                }
                log.push(format!("    {} invariants hold", self.invariants.len()));
            }
        }
        Ok(())
    }
}

/// Finalizes `node` to `target`, crashing at `crash`; after a crash, restarts the node,
/// checks that the MLV did not go backwards, and finalizes again.
fn finalize_step(
    node: &dyn ClusterNode,
    target: u32,
    crash: Option<CrashPoint>,
    log: &mut Vec<String>,
    crashes: &mut Vec<CrashPoint>,
) -> Result<(), String> {
    let text = |e: MiniClusterError| e.to_string();
    let injection = crash.map_or(Injection::None, Injection::Crash);
    let run = node
        .finalize_injected(Some(target), injection)
        .map_err(text)?;
    let summary = match run.outcome {
        RunOutcome::Finalized(summary) => {
            if let Some(point) = crash {
                log.push(format!("    crash point {point} not reached"));
            }
            summary
        }
        RunOutcome::Crashed { at, published_mlv } => {
            crashes.push(at);
            log.push(format!(
                "    {}: crashed at {at} with MLV {published_mlv} published",
                node.name()
            ));
            node.start(StartOptions::default())
                .map_err(|e| format!("restart after the crash: {e}"))?;
            let recovered = node.metadata_layout_version().map_err(text)?;
            log.push(format!("    {}: restarted at MLV {recovered}", node.name()));
            if recovered < published_mlv {
                return Err(format!(
                    "the MLV went backwards: {published_mlv} was published before the crash at \
                     {at}, {recovered} after the restart"
                ));
            }
            node.finalize_to_version(target).map_err(text)?
        }
    };
    log.push(format!(
        "    {}: MLV {} -> {}, finalized {:?}",
        summary.node, summary.from, summary.metadata_layout_version, summary.finalized
    ));
    Ok(())
}

/// The failpoints crashed at by any of `reports`.
pub fn failpoints_crashed(reports: &[PlanReport]) -> BTreeSet<&'static str> {
    reports
        .iter()
        .flat_map(|r| r.crashes.iter().map(|c| c.failpoint))
        .collect()
}

impl fmt::Debug for MixedVersionTest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MixedVersionTest")
            .field("builder", &self.builder)
            .field(
                "hooks",
                &self.hooks.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field(
                "invariants",
                &self.invariants.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("crashes", &self.crashes)
            .finish()
    }
}
