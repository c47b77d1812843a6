//! The cluster scenarios of the `it` binary (embedded store) and the `etcd` binary (a
//! real etcd): the same scenarios, another store. They run on the test kit's coordinated
//! [`MiniCluster`]: the project's own `Coordinator` in the test process (its driver and
//! its member link on loopback behind a cluster token), and five member processes of the
//! [`Datanode`] component, each a real `Member` over `HttpLink` that registers as it
//! starts, heartbeats, finalizes through its `UpgradeFinalizer` in the background when
//! told to, and can be `SIGKILLed` inside its finalize action.

// Test scenarios: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use layout_core::action::RegistryError;
use layout_core::cluster::{
    AuditEvent, ClusterError, ClusterFinalizeOutcome, Coordinator, FinalizationCheckpoint,
    MemberRole,
};
use layout_core::{
    ActionContext, ActionError, ActionRegistry, FileStorage, LayoutFeature, LayoutVersionManager,
    ManagerOptions, StartIntent,
};
use layout_testkit::cluster::CoordinationOptions;
use layout_testkit::crash::{block_until_killed, report_step};
use layout_testkit::{
    run_as_child_node, HookResult, Kind, MiniCluster, MiniClusterBuilder, NodeContext,
    StartOptions, TestComponent,
};

/// The component kind of the members.
pub const KIND: &str = "datanode";
/// A safety bound for a hung child or a lease that never expires; never a timing assert.
pub const BOUND: Duration = Duration::from_secs(60);
/// The old release knows layout versions up to 1, the new one up to 2.
pub const OLD: u32 = 1;
/// The new release's SLV.
pub const NEW: u32 = 2;
/// A file in a member's directory that makes its finalize action block (until the test
/// kills it), after reporting the step `in-finalize-action <node>`.
pub const BLOCK_IN_FINALIZE: &str = "block-in-finalize";

/// The datanode catalog of the scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub enum DnFeature {
    /// Version 0.
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    /// Version 1: the old release.
    #[layout(version = 1, description = "Containers in schema v2")]
    ContainerSchemaV2,
    /// Version 2: the new release.
    #[layout(version = 2, description = "Per-chunk checksums")]
    ChunkChecksums,
}

/// Opens a datanode's layout at `dir` running software `slv` (a fresh install starts at
/// the cluster's version, [`OLD`]).
///
/// # Panics
/// When the layout does not open (a failed test).
pub fn open_layout(dir: &Path, slv: u32) -> Arc<LayoutVersionManager<DnFeature>> {
    let opts = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(OLD)
        .with_software_layout_version(slv);
    Arc::new(LayoutVersionManager::open(FileStorage::new(dir), opts).unwrap())
}

/// The member component: it reports its finalize action, and blocks in it while its
/// directory holds [`BLOCK_IN_FINALIZE`].
pub struct Datanode {
    name: String,
    dir: PathBuf,
}

// An action's signature, though this one cannot fail.
#[allow(clippy::unnecessary_wraps)]
fn chunk_checksums(dn: &Datanode, _ctx: &ActionContext<'_, DnFeature>) -> Result<(), ActionError> {
    report_step(format!("in-finalize-action {}", dn.name));
    if dn.dir.join(BLOCK_IN_FINALIZE).exists() {
        block_until_killed();
    }
    Ok(())
}

impl TestComponent for Datanode {
    type Feature = DnFeature;
    fn open(ctx: &NodeContext<DnFeature>) -> HookResult<Self> {
        Ok(Self {
            name: ctx.name().to_owned(),
            dir: ctx.dir().to_owned(),
        })
    }
    fn actions(
        _ctx: &NodeContext<DnFeature>,
    ) -> Result<ActionRegistry<DnFeature, Self>, RegistryError> {
        ActionRegistry::builder()
            .on_finalize(DnFeature::ChunkChecksums, chunk_checksums)
            .build()
    }
}

/// Serves as a member process when this process is one (call it first thing in the
/// test); `true` means: return.
pub fn run_as_member() -> bool {
    run_as_child_node::<Datanode>()
}

/// Five member processes on the old release (SLV and MLV [`OLD`], upgraded to [`NEW`]),
/// coordinated by a coordinator in this process (SLV [`NEW`]: the runbook upgrades it
/// first) on the store `options` names, each member re-running `test`.
pub fn five_members(test: &str, options: CoordinationOptions) -> MiniClusterBuilder {
    MiniCluster::builder()
        .kind(
            Kind::<Datanode>::new(KIND)
                .nodes(5)
                .initial_layout_version(OLD)
                .software_layout_version(OLD)
                .upgrade_to(NEW),
        )
        .coordinated(options.with_coordinator_in_process(true))
        .child_processes(test)
}

/// Polls until `member`'s lease has expired (a bounded wait on a real lease).
///
/// # Panics
/// When the member is unknown or its lease does not lapse within [`BOUND`].
pub fn wait_until_dead(coordinator: &Coordinator, member: &str) {
    let deadline = Instant::now() + BOUND;
    while coordinator
        .status(KIND)
        .unwrap()
        .member(member)
        .unwrap()
        .live
    {
        assert!(
            Instant::now() < deadline,
            "the lease of {member} did not lapse within {BOUND:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ids(cluster: &MiniCluster) -> Vec<String> {
    cluster
        .node_names()
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// Waits until the coordinator recorded `member` at MLV `mlv`.
fn wait_for_mlv(cluster: &MiniCluster, member: &str, mlv: u32) {
    cluster
        .wait_for_coordinator(&format!("{member} at MLV {mlv}"), |s| {
            s.member(member)
                .is_some_and(|m| m.metadata_layout_version == mlv)
        })
        .unwrap();
}

/// The coordinator's own MLV, as it records itself in the membership.
fn coordinator_mlv(coordinator: &Coordinator) -> u32 {
    let status = coordinator.status(KIND).unwrap();
    status
        .members
        .iter()
        .find(|m| m.role == MemberRole::Coordinator)
        .map(|m| m.metadata_layout_version)
        .unwrap()
}

fn block_in_finalize(cluster: &MiniCluster, node: &str, block: bool) {
    let marker = cluster
        .node_dyn(node)
        .unwrap()
        .dir()
        .join(BLOCK_IN_FINALIZE);
    if block {
        std::fs::write(marker, b"").unwrap();
    } else {
        std::fs::remove_file(marker).unwrap();
    }
}

/// Five members on the old release; a rolling upgrade one member at a time while
/// pre-finalized (each `SIGKILLed`, restarted on the new release once its lease lapsed,
/// and accepted); finalization refused while one is old, naming it; a member
/// `SIGKILLed` inside its finalize action; an old binary refused after finalization (a
/// new member and the killed one); the killed member restarted on the new release
/// catches up, and the finalization completes.
// One scenario, told in order.
#[allow(clippy::too_many_lines)]
///
/// # Panics
/// When the scenario fails (a failed test).
pub fn rolling_upgrade_and_finalization(cluster: &mut MiniCluster) {
    let ids = ids(cluster);
    let coordinator = cluster.coordinator_handle().unwrap();
    let status = coordinator.status(KIND).unwrap();
    assert_eq!(status.cluster_layout_version, OLD);
    let members = status
        .members
        .iter()
        .filter(|m| m.role == MemberRole::Member)
        .count();
    assert_eq!(members, 5, "{status:?}");

    // Rolling upgrade, one at a time, while pre-finalized: every new binary is accepted.
    // (A killed member's restart waits out its dead process's lease, as members do.)
    let blocked = &ids[2];
    for id in &ids[..4] {
        if id == blocked {
            block_in_finalize(cluster, id, true);
        }
        cluster.crash_and_upgrade_member(id).unwrap();
        let member = coordinator
            .status(KIND)
            .unwrap()
            .member(id)
            .unwrap()
            .clone();
        assert_eq!(
            (
                member.software_layout_version,
                member.metadata_layout_version
            ),
            (NEW, OLD)
        );
    }

    // The last member still runs the old release: refused, and named (once it has been
    // heard from).
    let old = &ids[4];
    cluster.wait_for_member(old, OLD).unwrap();
    let err = coordinator.finalize(KIND, Some(NEW), "ops").unwrap_err();
    match &err {
        ClusterError::Blocked {
            blockers, target, ..
        } => {
            assert_eq!(*target, NEW);
            assert_eq!(blockers.len(), 1, "{err}");
            assert_eq!(&blockers[0].member_id, old);
            assert_eq!(blockers[0].software_layout_version, OLD);
            assert!(blockers[0].live);
        }
        other => panic!("expected Blocked, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains(&format!("{old} (software layout version 1, live)")),
        "{err}"
    );
    assert_eq!(
        coordinator.status(KIND).unwrap().cluster_layout_version,
        OLD
    );
    // The coordinator's own layout did not move.
    assert_eq!(coordinator_mlv(&coordinator), OLD);

    cluster.crash_and_upgrade_member(old).unwrap();
    let outcome = coordinator.finalize(KIND, None, "ops").unwrap();
    assert!(
        matches!(
            &outcome,
            ClusterFinalizeOutcome::Finalized {
                target: NEW,
                checkpoint: FinalizationCheckpoint::CoordinatorFinalized,
                ..
            }
        ),
        "{outcome:?}"
    );
    // The coordinator's own layout finalized its one feature.
    assert_eq!(coordinator_mlv(&coordinator), NEW);

    // Members are told on their next heartbeat; one is SIGKILLed inside its action.
    cluster
        .kill_node_at_step(blocked, &format!("in-finalize-action {blocked}"))
        .unwrap();
    block_in_finalize(cluster, blocked, false);
    for id in ids.iter().filter(|id| *id != blocked) {
        wait_for_mlv(cluster, id, NEW);
        assert_eq!(
            cluster
                .node_dyn(id)
                .unwrap()
                .metadata_layout_version()
                .unwrap(),
            NEW
        );
    }
    let status = coordinator.status(KIND).unwrap();
    assert_eq!(status.cluster_layout_version, NEW);
    assert_eq!(
        status.checkpoint(),
        Some(FinalizationCheckpoint::CoordinatorFinalized)
    );
    assert_eq!(status.member(blocked).unwrap().metadata_layout_version, OLD);

    // Old binaries are refused now: a new member, and the killed one on the old release.
    let refused = cluster.add_node(KIND, OLD).unwrap_err();
    let newcomer = refused.node().unwrap().to_owned();
    let refusal = refused.member_refusal().expect("a refusal");
    assert!(
        refusal.contains(&format!("member {newcomer} refused: its software layout version 1 is below the cluster's finalized layout version 2")),
        "{refusal}"
    );
    let refused = cluster
        .node_dyn(blocked)
        .unwrap()
        .start(StartOptions::default().with_software_layout_version(OLD))
        .unwrap_err();
    let refusal = refused.member_refusal().expect("a refusal");
    assert!(
        refusal.contains(&format!("member {blocked} refused: its software layout version 1 is below the cluster's finalized layout version 2")),
        "{refusal}"
    );
    assert!(coordinator
        .status(KIND)
        .unwrap()
        .member(&newcomer)
        .is_none());

    // Restarted on the new release, it is told to finalize when it registers.
    cluster
        .node_dyn(blocked)
        .unwrap()
        .start(StartOptions::default().with_software_layout_version(NEW))
        .unwrap();
    wait_for_mlv(cluster, blocked, NEW);
    let status = cluster.wait_for_cluster_complete().unwrap();
    assert!(
        status
            .members
            .iter()
            .all(|m| m.metadata_layout_version == NEW),
        "{status:?}"
    );
    let status = coordinator.status(KIND).unwrap();
    let events: Vec<&str> = status.audit.iter().map(|a| a.event.as_str()).collect();
    assert_eq!(
        events,
        [
            "finalization-started",
            "coordinator-finalized",
            "members-finalized",
            "finalization-complete"
        ]
    );
    // A finalized layout on its disk, as on the others'.
    assert_eq!(
        cluster
            .node_dyn(blocked)
            .unwrap()
            .metadata_layout_version()
            .unwrap(),
        NEW
    );
    for id in &ids {
        let errors = cluster.member_errors(id).unwrap();
        assert!(errors.is_empty(), "{id}: {errors:?}");
    }
}

/// A dead old member blocks finalization until an operator excludes it with a reason;
/// the exclusion survives a coordinator restart (shown in status and the audit trail);
/// the excluded member cannot rejoin with its old binary, and rejoins with the new one.
// One scenario, told in order.
#[allow(clippy::too_many_lines)]
///
/// # Panics
/// When the scenario fails (a failed test).
pub fn exclusion_survives_a_coordinator_restart(cluster: &mut MiniCluster) {
    let ids = ids(cluster);
    for id in &ids[..4] {
        cluster.upgrade_member(id).unwrap();
    }
    let old = ids[4].clone();
    let coordinator = cluster.coordinator_handle().unwrap();
    // Only a dead member may be excluded.
    let err = coordinator
        .exclude(KIND, &old, "testing", "ops@alice")
        .unwrap_err();
    assert!(matches!(err, ClusterError::MemberIsLive { .. }), "{err:?}");
    cluster.node_dyn(&old).unwrap().kill().unwrap();
    wait_until_dead(&coordinator, &old);

    let err = coordinator.finalize(KIND, Some(NEW), "ops").unwrap_err();
    assert!(
        matches!(&err, ClusterError::Blocked { blockers, .. } if blockers.len() == 1 && blockers[0].member_id == old && !blockers[0].live),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&format!("{old} (software layout version 1, not live)")),
        "{err}"
    );

    // A reason is required.
    assert!(matches!(
        coordinator.exclude(KIND, &old, " ", "ops@alice"),
        Err(ClusterError::ExclusionNeedsReason { .. })
    ));
    let reason = "host lost its disks, ticket OPS-7";
    let exclusion = coordinator
        .exclude(KIND, &old, reason, "ops@alice")
        .unwrap();
    assert_eq!(exclusion.required_software_layout_version, NEW);

    drop(coordinator);
    cluster.restart_coordinator().unwrap();
    let coordinator = cluster.coordinator_handle().unwrap();
    let status = coordinator.status(KIND).unwrap();
    let shown = status
        .member(&old)
        .unwrap()
        .excluded
        .as_ref()
        .expect("the exclusion survived the restart");
    assert_eq!(
        (shown.reason.as_str(), shown.excluded_by.as_str()),
        (reason, "ops@alice")
    );
    let audit = status
        .audit
        .iter()
        .find(|a| a.event == AuditEvent::Excluded)
        .unwrap();
    assert_eq!(
        (
            audit.member_id.as_deref(),
            audit.detail.as_str(),
            audit.actor.as_str()
        ),
        (Some(old.as_str()), reason, "ops@alice")
    );

    // The exclusion lets the finalization through, after the restart.
    let outcome = coordinator.finalize(KIND, None, "ops").unwrap();
    assert!(
        matches!(
            outcome,
            ClusterFinalizeOutcome::Finalized { target: NEW, .. }
        ),
        "{outcome:?}"
    );
    for id in &ids[..4] {
        wait_for_mlv(cluster, id, NEW);
    }
    let status = cluster.wait_for_cluster_complete().unwrap();
    assert_eq!(status.checkpoint.as_deref(), Some("Complete"));

    // It comes back with its old binary: refused, with the recorded reason.
    let node = cluster.node_dyn(&old).unwrap();
    let refused = node
        .start(StartOptions::default().with_software_layout_version(OLD))
        .unwrap_err();
    let refusal = refused.member_refusal().expect("a refusal");
    assert!(
        refusal.contains("was excluded by ops@alice (host lost its disks, ticket OPS-7)"),
        "{refusal}"
    );
    assert!(
        refusal.contains("may rejoin only with software layout version >= 2"),
        "{refusal}"
    );

    // With the new binary it is readmitted and told to finalize.
    node.start(StartOptions::default().with_software_layout_version(NEW))
        .unwrap();
    wait_for_mlv(cluster, &old, NEW);
    let status = coordinator.status(KIND).unwrap();
    assert!(status.member(&old).unwrap().excluded.is_none());
    let events: Vec<&str> = status.audit.iter().map(|a| a.event.as_str()).collect();
    assert!(
        events.contains(&"excluded") && events.contains(&"readmitted"),
        "{events:?}"
    );
}
