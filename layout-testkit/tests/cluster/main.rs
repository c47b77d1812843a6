//! Coordinated mini clusters: the project's own coordinator and members (real member
//! link, real stores), in process and as child processes; seeded cluster plans that
//! SIGKILL the coordinator or a member at every cluster crash point, and replay.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::path::PathBuf;

use layout_core::action::RegistryError;
use layout_core::cluster::CLUSTER_FAILPOINTS;
use layout_core::{ActionContext, ActionError, ActionRegistry, LayoutFeature};
use layout_testkit::cluster::plan::{
    ClusterCrashPoint, ClusterPlan, ClusterPlanStep, ClusterPlanTest, CLUSTER_CRASH_POINTS,
};
use layout_testkit::cluster::CoordinationOptions;
use layout_testkit::{
    run_as_child_node, HookResult, Kind, MiniCluster, MiniClusterBuilder, NodeContext,
    TestComponent,
};

/// The datanode catalog: the old release knows up to 1, the new one 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
enum DnFeature {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "Containers in schema v2")]
    ContainerSchemaV2,
    #[layout(version = 2, description = "Per-chunk checksums")]
    ChunkChecksums,
}

/// A datanode whose finalization of `ChunkChecksums` writes a file.
struct Datanode {
    data: PathBuf,
}

// An action's signature.
#[allow(clippy::unnecessary_wraps)]
fn write_checksums(dn: &Datanode, _ctx: &ActionContext<'_, DnFeature>) -> Result<(), ActionError> {
    std::fs::write(dn.data.join("checksums"), b"v2")?;
    Ok(())
}

impl TestComponent for Datanode {
    type Feature = DnFeature;
    fn open(ctx: &NodeContext<DnFeature>) -> HookResult<Self> {
        Ok(Self {
            data: ctx.data_dir().to_owned(),
        })
    }
    fn actions(
        _ctx: &NodeContext<DnFeature>,
    ) -> Result<ActionRegistry<DnFeature, Self>, RegistryError> {
        ActionRegistry::builder()
            .on_finalize(DnFeature::ChunkChecksums, write_checksums)
            .build()
    }
    fn call(&self, operation: &str, _argument: &str) -> HookResult<String> {
        match operation {
            "has-checksums" => Ok(self.data.join("checksums").exists().to_string()),
            other => Err(format!("no operation {other}").into()),
        }
    }
}

/// `nodes` datanodes on the old release (SLV 1, MLV 1), upgraded to SLV 2; coordinated
/// on the embedded store.
fn builder(nodes: usize) -> MiniClusterBuilder {
    MiniCluster::builder()
        .kind(
            Kind::<Datanode>::new("dn")
                .nodes(nodes)
                .initial_layout_version(1)
                .software_layout_version(1)
                .upgrade_to(2),
        )
        .coordinated(CoordinationOptions::default())
}

/// The fixed seed of the five-node plan: its finalization SIGKILLs the coordinator.
const FIVE_NODE_SEED: u64 = 3;

#[test]
fn a_five_node_child_process_plan_with_a_coordinator_sigkill_passes_and_replays_from_its_seed() {
    if run_as_child_node::<Datanode>() {
        return;
    }
    // A coordinator process and four member processes.
    let test = ClusterPlanTest::new(builder(4).child_processes(layout_testkit::test_name!()));
    let plan = test.plan(FIVE_NODE_SEED).unwrap();
    println!("{plan}");
    let crash = plan.crash_point().expect("the plan crashes");
    assert!(crash.is_coordinator(), "{plan}");
    let has = |f: &dyn Fn(&ClusterPlanStep) -> bool| plan.steps.iter().any(f);
    assert!(has(&|s| matches!(s, ClusterPlanStep::LateJoiner)), "{plan}");
    assert!(
        has(&|s| matches!(s, ClusterPlanStep::Exclude { .. })),
        "{plan}"
    );
    let upgrades = plan
        .steps
        .iter()
        .filter(|s| {
            matches!(
                s,
                ClusterPlanStep::UpgradeMember { .. }
                    | ClusterPlanStep::CrashAndUpgradeMember { .. }
            )
        })
        .count();
    assert_eq!(upgrades, 3, "{plan}");

    let first = test.run(FIVE_NODE_SEED).unwrap_or_else(|e| panic!("{e}"));
    let replay = test.run(FIVE_NODE_SEED).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.plan, plan);
    assert_eq!(replay.plan, first.plan);
    assert_eq!(replay.outcome, first.outcome);

    let outcome = &first.outcome;
    assert_eq!(outcome.crashed_at, [crash]);
    assert_eq!(outcome.cluster_layout_version, 2);
    assert_eq!(outcome.checkpoint.as_deref(), Some("Complete"));
    // Four members and the late joiner; one excluded, the others at 2 on their disks.
    assert_eq!(outcome.members.len(), 5, "{outcome:?}");
    let excluded: Vec<_> = outcome
        .members
        .iter()
        .filter(|m| m.excluded.is_some())
        .collect();
    assert_eq!(excluded.len(), 1, "{outcome:?}");
    assert_eq!(excluded[0].software_layout_version, 1);
    for member in outcome.members.iter().filter(|m| m.excluded.is_none()) {
        assert_eq!(
            (
                member.software_layout_version,
                member.metadata_layout_version,
                member.local_metadata_layout_version
            ),
            (2, 2, Some(2)),
            "{outcome:?}"
        );
    }
    assert!(outcome.old_binary_refused_as_excluded);
    let started = outcome
        .audit
        .iter()
        .filter(|e| *e == "finalization-started")
        .count();
    assert_eq!(
        started, 1,
        "a resumed finalization starts once: {:?}",
        outcome.audit
    );
}

/// How many seeds run together. Each plan builds a five-process cluster and waits out
/// two to four member leases (a crash-upgraded member, the excluded one, a member
/// crashed in its finalization). With four crash points drawn uniformly, 50 seeds miss
/// one with a probability below 1e-5 (and the seeds are fixed: the test is
/// deterministic).
const SEEDS: u64 = 50;

#[test]
fn fifty_seeds_together_crash_at_every_cluster_crash_point() {
    if run_as_child_node::<Datanode>() {
        return;
    }
    let test = ClusterPlanTest::new(builder(4).child_processes(layout_testkit::test_name!()));
    let mut hit = BTreeSet::new();
    for seed in 0..SEEDS {
        let report = test.run(seed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.outcome.checkpoint.as_deref(), Some("Complete"));
        hit.extend(report.outcome.crashed_at.iter().copied());
    }
    let every: BTreeSet<ClusterCrashPoint> = CLUSTER_CRASH_POINTS.iter().copied().collect();
    assert_eq!(hit, every);
    // Every failpoint the coordinator has is one of them.
    for failpoint in CLUSTER_FAILPOINTS {
        assert!(
            CLUSTER_CRASH_POINTS
                .iter()
                .any(|p| p.failpoint() == *failpoint),
            "{failpoint} is not a cluster crash point"
        );
    }
}

#[test]
fn a_plan_is_generated_from_its_seed_alone_and_printable() {
    let members: Vec<String> = (0..4).map(|i| format!("dn-{i}")).collect();
    let a = ClusterPlan::generate(11, &members, true);
    assert_eq!(a, ClusterPlan::generate(11, &members, true));
    let text = a.to_string();
    assert!(text.starts_with("cluster plan, seed 11:"), "{text}");
    assert_eq!(text.lines().count(), a.steps.len() + 1, "{text}");
    // Seeds differ in their plans, and every plan has every kind of step.
    let plans: Vec<ClusterPlan> = (0..20)
        .map(|seed| ClusterPlan::generate(seed, &members, true))
        .collect();
    let distinct: BTreeSet<String> = plans.iter().map(|p| format!("{:?}", p.steps)).collect();
    assert!(distinct.len() > 10, "{distinct:?}");
    for plan in &plans {
        let count = |f: fn(&ClusterPlanStep) -> bool| plan.steps.iter().filter(|s| f(s)).count();
        assert_eq!(
            count(|s| matches!(s, ClusterPlanStep::KillMember { .. })),
            1
        );
        assert_eq!(count(|s| matches!(s, ClusterPlanStep::Exclude { .. })), 1);
        assert_eq!(count(|s| matches!(s, ClusterPlanStep::LateJoiner)), 1);
        assert_eq!(count(|s| matches!(s, ClusterPlanStep::Finalize { .. })), 1);
        assert!(plan.crash_point().is_some());
    }
    // Without crashes, the finalization crashes nowhere.
    assert!(ClusterPlan::generate(11, &members, false)
        .crash_point()
        .is_none());
}

#[test]
fn a_cluster_plan_refuses_a_cluster_it_cannot_run() {
    let uncoordinated = MiniCluster::builder().kind(
        Kind::<Datanode>::new("dn")
            .nodes(3)
            .software_layout_version(1)
            .upgrade_to(2),
    );
    let err = ClusterPlanTest::new(uncoordinated).plan(1).unwrap_err();
    assert!(err.to_string().contains("coordinated"), "{err}");
    let err = ClusterPlanTest::new(builder(1)).plan(1).unwrap_err();
    assert!(err.to_string().contains("at least two nodes"), "{err}");
    let failure = ClusterPlanTest::new(builder(1)).run(1).unwrap_err();
    assert_eq!(failure.step, 0);
    // An unusable token is refused before anything starts.
    let err = builder(2)
        .coordinated(CoordinationOptions::default().with_token("short"))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("cluster token"), "{err}");
}

/// In process: the runbook, step by step, through the kit's coordinated cluster.
#[test]
fn in_process_members_roll_upgrade_finalize_through_the_coordinator_exclude_and_take_a_late_joiner()
{
    let mut cluster = builder(3).build().unwrap();
    let status = cluster.coordinator_status().unwrap();
    assert_eq!(status.cluster_layout_version, 1);
    for node in ["dn-0", "dn-1", "dn-2"] {
        let member = status.member(node).unwrap();
        assert!(member.live, "{status:?}");
        assert_eq!(
            (
                member.software_layout_version,
                member.metadata_layout_version
            ),
            (1, 1)
        );
    }

    // Rolling upgrade of two members; dn-2 stays old and blocks the finalization.
    cluster.upgrade_member("dn-0").unwrap();
    cluster.crash_and_upgrade_member("dn-1").unwrap();
    let blocked = cluster.start_cluster_finalization().unwrap_err();
    assert!(
        blocked
            .to_string()
            .contains("dn-2 (software layout version 1, live)"),
        "{blocked}"
    );
    // Pre-finalized: the members are on SLV 2, still at MLV 1.
    let status = cluster.coordinator_status().unwrap();
    assert_eq!(status.cluster_layout_version, 1);
    assert_eq!(status.member("dn-0").unwrap().metadata_layout_version, 1);

    // A live member cannot be excluded... (bounded: the kit retries while it is live)
    // so dn-2 dies first, then is excluded.
    cluster.node_dyn("dn-2").unwrap().kill().unwrap();
    cluster.exclude("dn-2", "disk lost").unwrap();
    let status = cluster.coordinator_status().unwrap();
    assert_eq!(
        status.member("dn-2").unwrap().excluded.as_deref(),
        Some("disk lost")
    );

    // A late joiner before the finalization, at the cluster's MLV.
    let joiner = cluster.add_late_joiner("dn").unwrap();
    assert_eq!(joiner, "dn-3");

    assert_eq!(cluster.start_cluster_finalization().unwrap(), 2);
    let status = cluster.wait_for_cluster_complete().unwrap();
    assert_eq!(status.cluster_layout_version, 2);
    assert_eq!(status.checkpoint.as_deref(), Some("Complete"));
    // Members finalized in the background, through their finalizers (the action ran).
    for node in ["dn-0", "dn-1", "dn-3"] {
        let node = cluster.node_dyn(node).unwrap();
        assert_eq!(node.metadata_layout_version().unwrap(), 2);
        assert_eq!(node.call("has-checksums", "").unwrap(), "true");
    }

    // A late joiner after the finalization joins at 2.
    let late = cluster.add_late_joiner("dn").unwrap();
    assert_eq!(
        cluster
            .node_dyn(&late)
            .unwrap()
            .metadata_layout_version()
            .unwrap(),
        2
    );

    // The excluded member's old binary is refused, naming the exclusion.
    let refused = cluster
        .node_dyn("dn-2")
        .unwrap()
        .restart_with_slv(1)
        .unwrap_err();
    let refusal = refused.member_refusal().expect("a refusal");
    assert!(refusal.contains("was excluded by"), "{refusal}");

    // A coordinator restart keeps the cluster's state; members stay registered.
    cluster.restart_coordinator().unwrap();
    let status = cluster.wait_for_member("dn-0", 2).unwrap();
    assert_eq!(status.cluster_layout_version, 2);
    assert!(status.member("dn-2").unwrap().excluded.is_some());
}

#[test]
fn in_process_plans_without_crashes_pass_and_replay() {
    let test = ClusterPlanTest::new(builder(3)).crashes(false);
    for seed in [1, 2] {
        let first = test.run(seed).unwrap_or_else(|e| panic!("{e}"));
        let again = test.run(seed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first, again);
        assert!(first.outcome.crashed_at.is_empty());
        assert_eq!(first.outcome.cluster_layout_version, 2);
    }
}

#[test]
fn in_process_a_crash_point_is_refused_with_a_clear_error() {
    let test = ClusterPlanTest::new(builder(3));
    let seed = (0..100)
        .find(|s| test.plan(*s).unwrap().crash_point().is_some())
        .unwrap();
    let failure = test.run(seed).unwrap_err();
    assert!(
        failure.message.contains("needs a child-process cluster"),
        "{failure}"
    );
    assert!(
        failure.to_string().contains(&format!("seed {seed}")),
        "{failure}"
    );
}

#[test]
fn every_cluster_crash_point_names_a_failpoint() {
    let names: Vec<String> = CLUSTER_CRASH_POINTS
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        names,
        [
            "coordinator@cluster::started",
            "coordinator@cluster::coordinator_finalized",
            "member@finalize::started",
            "coordinator@cluster::members_finalized",
        ]
    );
    assert!(DnFeature::latest().layout_version() == 2);
}
