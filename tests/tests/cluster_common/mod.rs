//! Cluster scenarios with one coordinator (in the test process) and member processes
//! (children of it, through the crash harness), shared by the `it` binary (embedded store)
//! and the `etcd` binary (a real etcd): the same scenarios, another store.
//!
//! Members reach the coordinator over the member link on loopback (`HttpLink` to a
//! `CoordinatorServer`, with the cluster token [`CLUSTER_TOKEN`]). Each
//! member child opens its own `VERSION` file, registers, heartbeats every
//! [`HEARTBEAT_MS`] ms, finalizes through its `UpgradeFinalizer` when told to, and reports
//! each event as a step.

// Shared by two test binaries, each of which uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use layout_core::cluster::{
    Checkpoint, ClusterError, ClusterFinalizeOutcome, ClusterStatus, ClusterStore, Coordinator,
    CoordinatorOptions, CoordinatorServer, FinalizerLayout, HttpLink, Member, MemberRole,
};
use layout_core::http::{BearerToken, ClientConfig};
use layout_core::{
    ActionContext, ActionError, ActionRegistry, FileStorage, LayoutFeature, LayoutVersionManager,
    ManagerOptions, StartIntent, UpgradeFinalizer,
};
use layout_testkit::crash::{block_until_killed, report_step, ChildCommand, ChildProcess};

/// The component kind of the members.
pub(crate) const KIND: &str = "datanode";
/// A safety bound for a hung child or a lease that never expires; never a timing assert.
pub(crate) const BOUND: Duration = Duration::from_secs(60);
/// How often a member child sends a heartbeat.
pub(crate) const HEARTBEAT_MS: u64 = 100;
/// The old release knows layout versions up to 1, the new one up to 2.
pub(crate) const OLD: u32 = 1;
/// The new release's SLV.
pub(crate) const NEW: u32 = 2;

/// The cluster token of the scenarios' member link.
pub(crate) const CLUSTER_TOKEN: &str = "cluster-scenario-token-0123456789";

/// The cluster token, checked.
pub(crate) fn cluster_token() -> BearerToken {
    BearerToken::new(CLUSTER_TOKEN).unwrap()
}

/// A member's link to the coordinator at `url`.
pub(crate) fn link(url: &str) -> HttpLink {
    HttpLink::new(
        url,
        cluster_token(),
        ClientConfig::new(Duration::from_secs(10)),
    )
    .unwrap()
}

const ADDR_ENV: &str = "LAYOUT_CLUSTER_URL";
const DIR_ENV: &str = "LAYOUT_CLUSTER_MEMBER_DIR";
const ID_ENV: &str = "LAYOUT_CLUSTER_MEMBER_ID";
const SLV_ENV: &str = "LAYOUT_CLUSTER_MEMBER_SLV";
const BLOCK_ENV: &str = "LAYOUT_CLUSTER_BLOCK_IN_FINALIZE";

/// The datanode catalog of the scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub(crate) enum DnFeature {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "Containers in schema v2")]
    ContainerSchemaV2,
    #[layout(version = 2, description = "Per-chunk checksums")]
    ChunkChecksums,
}

/// The member component: it only reports its finalize action.
pub(crate) struct Datanode {
    id: String,
    block: bool,
}

// An action's signature, though this one cannot fail.
#[allow(clippy::unnecessary_wraps)]
fn chunk_checksums(dn: &Datanode, _ctx: &ActionContext<'_, DnFeature>) -> Result<(), ActionError> {
    report_step(format!("in-finalize-action {}", dn.id));
    if dn.block {
        block_until_killed();
    }
    Ok(())
}

/// Opens a datanode's layout at `dir` running software `slv` (a fresh install starts at
/// the cluster's version, [`OLD`]).
pub(crate) fn open_layout(dir: &Path, slv: u32) -> Arc<LayoutVersionManager<DnFeature>> {
    let opts = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(OLD)
        .with_software_layout_version(slv);
    Arc::new(LayoutVersionManager::open(FileStorage::new(dir), opts).unwrap())
}

/// The member child: register, then heartbeat until killed (or orphaned).
pub(crate) fn member_child() {
    // Exit when the parent goes away.
    thread::spawn(|| block_until_killed());
    let env = |name| std::env::var(name).unwrap();
    let id = env(ID_ENV);
    let slv: u32 = env(SLV_ENV).parse().unwrap();
    let lvm = open_layout(Path::new(&env(DIR_ENV)), slv);
    let registry = ActionRegistry::<DnFeature, Datanode>::builder()
        .on_finalize(DnFeature::ChunkChecksums, chunk_checksums)
        .build()
        .unwrap();
    let finalizer = Arc::new(UpgradeFinalizer::new(lvm, registry));
    let component = Arc::new(Datanode {
        id: id.clone(),
        block: std::env::var_os(BLOCK_ENV).is_some(),
    });
    finalizer.run_prefinalize_actions(&component).unwrap();
    let mut member = Member::new(
        KIND,
        &id,
        Arc::new(FinalizerLayout::new(finalizer, component)),
    );
    let link = link(&env(ADDR_ENV));
    // A restart soon after a kill: the earlier process is live to the coordinator until
    // its lease lapses; wait for that, as a real member does (bounded).
    let registered = member.register_waiting(&link, BOUND, Duration::from_millis(HEARTBEAT_MS));
    match registered {
        Ok(step) => {
            let report = member.report();
            report_step(format!(
                "registered {id} slv={} cluster={}",
                report.software_layout_version, step.answer.cluster_layout_version
            ));
            if let Some(mlv) = step.finalized_to {
                report_step(format!("finalized {id} {mlv}"));
            }
        }
        Err(e) => {
            report_step(format!("refusal {id} {e}"));
            report_step(format!("refused {id}"));
            return;
        }
    }
    loop {
        thread::sleep(Duration::from_millis(HEARTBEAT_MS));
        match member.heartbeat(&link) {
            Ok(step) => {
                if let Some(mlv) = step.finalized_to {
                    report_step(format!("finalized {id} {mlv}"));
                }
            }
            Err(e) => report_step(format!("heartbeat-error {id} {e}")),
        }
    }
}

/// Opens the store of a scenario (again, at a coordinator restart).
pub(crate) type OpenStore = Box<dyn Fn() -> Arc<dyn ClusterStore>>;

/// Makes a killed member's lease lapse (the embedded store advances its clock; etcd
/// waits for the lease to expire).
pub(crate) type ExpireMember = Box<dyn Fn(&Coordinator, &str)>;

/// A coordinator in this process, its own layout, and member children.
pub(crate) struct Cluster {
    test: String,
    root: PathBuf,
    open_store: OpenStore,
    options: CoordinatorOptions,
    coordinator: Option<Arc<Coordinator>>,
    server: Option<CoordinatorServer>,
    port: u16,
    /// How many features the coordinator's own layout finalized.
    local_finalized: Arc<AtomicUsize>,
    members: BTreeMap<String, ChildProcess>,
}

/// The coordinator's own layout (SLV [`NEW`]: the runbook upgrades it first), counting
/// its finalizations.
struct CountingLayout {
    lvm: Arc<LayoutVersionManager<DnFeature>>,
    finalized: Arc<AtomicUsize>,
}

impl layout_core::cluster::LocalLayout for CountingLayout {
    fn software_layout_version(&self) -> u32 {
        self.lvm.software_layout_version()
    }
    fn metadata_layout_version(&self) -> u32 {
        self.lvm.metadata_layout_version()
    }
    fn finalize_to(
        &self,
        version: u32,
        client_id: &str,
    ) -> Result<u32, layout_core::cluster::LocalError> {
        let before = self.lvm.metadata_layout_version();
        let after = layout_core::cluster::LocalLayout::finalize_to(&*self.lvm, version, client_id)?;
        self.finalized
            .fetch_add((after - before) as usize, Ordering::SeqCst);
        Ok(after)
    }
}

impl Cluster {
    /// Starts the coordinator (its layout under `root`) on the store `open_store` opens.
    pub(crate) fn start(
        test: &str,
        root: &Path,
        open_store: OpenStore,
        options: CoordinatorOptions,
    ) -> Self {
        let mut cluster = Self {
            test: test.to_owned(),
            root: root.to_owned(),
            open_store,
            options,
            coordinator: None,
            server: None,
            port: 0,
            local_finalized: Arc::new(AtomicUsize::new(0)),
            members: BTreeMap::new(),
        };
        cluster.start_coordinator();
        cluster
    }

    fn start_coordinator(&mut self) {
        let local = CountingLayout {
            lvm: open_layout(&self.root.join("coordinator"), NEW),
            finalized: Arc::clone(&self.local_finalized),
        };
        let options = self.options.clone().with_local(KIND, Arc::new(local));
        let coordinator = Arc::new(Coordinator::open((self.open_store)(), options).unwrap());
        let server =
            CoordinatorServer::bind_loopback(Arc::clone(&coordinator), self.port, cluster_token())
                .unwrap();
        self.port = server.local_addr().port();
        self.coordinator = Some(coordinator);
        self.server = Some(server);
    }

    /// Stops the coordinator (its server, its store handle, its layout) and starts it
    /// again on the same port, from what the store kept.
    pub(crate) fn restart_coordinator(&mut self) {
        self.server = None;
        self.coordinator = None;
        self.start_coordinator();
    }

    /// The coordinator.
    pub(crate) fn coordinator(&self) -> &Coordinator {
        self.coordinator.as_ref().unwrap()
    }

    /// How many features the coordinator's own layout finalized.
    pub(crate) fn local_finalized(&self) -> usize {
        self.local_finalized.load(Ordering::SeqCst)
    }

    /// The status of [`KIND`].
    pub(crate) fn status(&self) -> ClusterStatus {
        self.coordinator().status(KIND).unwrap()
    }

    /// Starts member `id` running software `slv` (killing a previous process of it), and
    /// returns it; its data directory is kept across restarts.
    pub(crate) fn spawn(
        &mut self,
        id: &str,
        slv: u32,
        block_in_finalize: bool,
    ) -> &mut ChildProcess {
        self.kill(id);
        let mut command = ChildCommand::new(&self.test, format!("member-{id}"))
            .env(ADDR_ENV, self.server.as_ref().unwrap().url())
            .env(DIR_ENV, self.root.join(id))
            .env(ID_ENV, id)
            .env(SLV_ENV, slv.to_string());
        if block_in_finalize {
            command = command.env(BLOCK_ENV, "1");
        }
        self.members.insert(id.to_owned(), command.spawn().unwrap());
        self.members.get_mut(id).unwrap()
    }

    /// Starts member `id` and waits until it registered.
    pub(crate) fn start_member(&mut self, id: &str, slv: u32, block_in_finalize: bool) {
        let cluster_version = self.status().cluster_layout_version;
        self.spawn(id, slv, block_in_finalize)
            .wait_for_step(
                &format!("registered {id} slv={slv} cluster={cluster_version}"),
                BOUND,
            )
            .unwrap();
    }

    /// Starts member `id`, expecting a refusal; returns its text.
    pub(crate) fn start_refused_member(&mut self, id: &str, slv: u32) -> String {
        let child = self.spawn(id, slv, false);
        child
            .wait_for_step(&format!("refused {id}"), BOUND)
            .unwrap();
        let prefix = format!("refusal {id} ");
        let steps = child.steps_seen();
        let refusal = steps
            .iter()
            .find_map(|s| s.strip_prefix(&prefix))
            .unwrap()
            .to_owned();
        child.wait(BOUND).unwrap();
        refusal
    }

    /// The member's process.
    pub(crate) fn member(&mut self, id: &str) -> &mut ChildProcess {
        self.members.get_mut(id).unwrap()
    }

    /// SIGKILLs member `id` (if running) and reaps it.
    pub(crate) fn kill(&mut self, id: &str) {
        if let Some(mut child) = self.members.remove(id) {
            child.kill().unwrap();
            child.wait(BOUND).unwrap();
        }
    }

    /// Every step of every member reported so far, for checks across members.
    pub(crate) fn all_steps(&self) -> Vec<String> {
        self.members
            .values()
            .flat_map(ChildProcess::steps_seen)
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Children first (their handles kill them), then the server.
        self.members.clear();
        self.server = None;
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {BOUND:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Polls until `member`'s lease has expired (a bounded wait on a real lease).
pub(crate) fn wait_until_dead(coordinator: &Coordinator, member: &str) {
    wait_until(&format!("the lease of {member} expiring"), || {
        !coordinator
            .status(KIND)
            .unwrap()
            .member(member)
            .unwrap()
            .live
    });
}

fn ids() -> Vec<String> {
    (1..=5).map(|i| format!("dn{i}")).collect()
}

/// Five members on the old release (`expire` makes a killed member's lease lapse before
/// it restarts); a rolling upgrade one member at a time while
/// pre-finalized (each accepted); finalization refused while one is old, naming it; a
/// member `SIGKILLed` inside its finalize action; an old binary refused after
/// finalization; the killed member restarted catches up, and the finalization completes.
// One scenario, told in order.
#[allow(clippy::too_many_lines)]
pub(crate) fn rolling_upgrade_and_finalization(cluster: &mut Cluster, expire: &ExpireMember) {
    for id in ids() {
        cluster.start_member(&id, OLD, false);
    }
    let status = cluster.status();
    assert_eq!(status.cluster_layout_version, OLD);
    let members = status
        .members
        .iter()
        .filter(|m| m.role == MemberRole::Member)
        .count();
    assert_eq!(members, 5, "{status:?}");

    // Rolling upgrade, one at a time, while pre-finalized: every new binary is accepted.
    for id in &ids()[..4] {
        cluster.kill(id);
        // A restart within the old process's lease would be taken for a second live
        // process (refused until the lease lapses): let it lapse first.
        expire(cluster.coordinator(), id);
        cluster.start_member(id, NEW, id == "dn3");
        let member = cluster.status().member(id).unwrap().clone();
        assert_eq!(
            (
                member.software_layout_version,
                member.metadata_layout_version
            ),
            (NEW, OLD)
        );
    }

    // dn5 still runs the old release: refused, and named (once it has been heard from
    // since the leases above lapsed).
    wait_until("dn5 heartbeating", || {
        cluster.status().member("dn5").is_some_and(|m| m.live)
    });
    let err = cluster
        .coordinator()
        .finalize(KIND, Some(NEW), "ops")
        .unwrap_err();
    match &err {
        ClusterError::Blocked {
            blockers, target, ..
        } => {
            assert_eq!(*target, NEW);
            assert_eq!(blockers.len(), 1, "{err}");
            assert_eq!(blockers[0].member_id, "dn5");
            assert_eq!(blockers[0].software_layout_version, OLD);
            assert!(blockers[0].live);
        }
        other => panic!("expected Blocked, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("dn5 (software layout version 1, live)"),
        "{err}"
    );
    assert_eq!(cluster.status().cluster_layout_version, OLD);
    assert_eq!(cluster.local_finalized(), 0);

    cluster.kill("dn5");
    // A restart within the old process's lease would be taken for a second live
    // process (refused until the lease lapses): let it lapse first.
    expire(cluster.coordinator(), "dn5");
    cluster.start_member("dn5", NEW, false);
    let outcome = cluster.coordinator().finalize(KIND, None, "ops").unwrap();
    assert!(
        matches!(
            &outcome,
            ClusterFinalizeOutcome::Finalized {
                target: NEW,
                checkpoint: Checkpoint::CoordinatorFinalized,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(cluster.local_finalized(), 1);

    // Members are told on their next heartbeat; dn3 is SIGKILLed inside its action.
    cluster
        .member("dn3")
        .wait_for_step("in-finalize-action dn3", BOUND)
        .unwrap();
    cluster.kill("dn3");
    // A restart within the old process's lease would be taken for a second live
    // process (refused until the lease lapses): let it lapse first.
    expire(cluster.coordinator(), "dn3");
    for id in ["dn1", "dn2", "dn4", "dn5"] {
        cluster
            .member(id)
            .wait_for_step(&format!("finalized {id} {NEW}"), BOUND)
            .unwrap();
    }
    let status = cluster.status();
    assert_eq!(status.cluster_layout_version, NEW);
    assert_eq!(status.checkpoint(), Some(Checkpoint::CoordinatorFinalized));
    assert_eq!(status.member("dn3").unwrap().metadata_layout_version, OLD);

    // Old binaries are refused now: a new member, and dn3 restarted on the old release.
    for id in ["dn6", "dn3"] {
        let refusal = cluster.start_refused_member(id, OLD);
        assert!(
            refusal.contains(&format!("member {id} refused: its software layout version 1 is below the cluster's finalized layout version 2")),
            "{refusal}"
        );
    }
    assert!(cluster.status().member("dn6").is_none());

    // dn3 restarted on the new release is told to finalize when it registers.
    cluster.spawn("dn3", NEW, false);
    cluster
        .member("dn3")
        .wait_for_step(&format!("finalized dn3 {NEW}"), BOUND)
        .unwrap();
    let status = cluster.status();
    assert_eq!(status.checkpoint(), Some(Checkpoint::Complete));
    assert!(
        status
            .members
            .iter()
            .all(|m| m.metadata_layout_version == NEW),
        "{status:?}"
    );
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
    // A finalized layout on dn3's disk, as on the others'.
    assert_eq!(
        open_layout(&cluster.root.join("dn3"), NEW).metadata_layout_version(),
        NEW
    );
    assert!(
        !cluster
            .all_steps()
            .iter()
            .any(|s| s.starts_with("heartbeat-error")),
        "{:?}",
        cluster.all_steps()
    );
}

/// A dead old member blocks finalization until an operator excludes it with a reason;
/// the exclusion survives a coordinator restart (shown in status and the audit trail);
/// the excluded member cannot rejoin with its old binary, and rejoins with the new one.
pub(crate) fn exclusion_survives_a_coordinator_restart(
    cluster: &mut Cluster,
    expire: &ExpireMember,
) {
    for id in &ids()[..4] {
        cluster.start_member(id, NEW, false);
    }
    cluster.start_member("dn5", OLD, false);
    // Only a dead member may be excluded.
    let err = cluster
        .coordinator()
        .exclude(KIND, "dn5", "testing", "ops@alice")
        .unwrap_err();
    assert!(matches!(err, ClusterError::MemberIsLive { .. }), "{err:?}");
    cluster.kill("dn5");
    expire(cluster.coordinator(), "dn5");

    let err = cluster
        .coordinator()
        .finalize(KIND, Some(NEW), "ops")
        .unwrap_err();
    assert!(
        matches!(&err, ClusterError::Blocked { blockers, .. } if blockers.len() == 1 && blockers[0].member_id == "dn5" && !blockers[0].live),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("dn5 (software layout version 1, not live)"),
        "{err}"
    );

    // A reason is required.
    assert!(matches!(
        cluster.coordinator().exclude(KIND, "dn5", " ", "ops@alice"),
        Err(ClusterError::ExclusionNeedsReason { .. })
    ));
    let reason = "host lost its disks, ticket OPS-7";
    let exclusion = cluster
        .coordinator()
        .exclude(KIND, "dn5", reason, "ops@alice")
        .unwrap();
    assert_eq!(exclusion.required_software_layout_version, NEW);

    cluster.restart_coordinator();
    let status = cluster.status();
    let dn5 = status.member("dn5").unwrap();
    let shown = dn5
        .excluded
        .as_ref()
        .expect("the exclusion survived the restart");
    assert_eq!(
        (shown.reason.as_str(), shown.excluded_by.as_str()),
        (reason, "ops@alice")
    );
    let audit = status.audit.iter().find(|a| a.event == "excluded").unwrap();
    assert_eq!(
        (
            audit.member_id.as_deref(),
            audit.detail.as_str(),
            audit.actor.as_str()
        ),
        (Some("dn5"), reason, "ops@alice")
    );

    // The exclusion lets the finalization through, after the restart.
    let outcome = cluster.coordinator().finalize(KIND, None, "ops").unwrap();
    assert!(
        matches!(
            outcome,
            ClusterFinalizeOutcome::Finalized { target: NEW, .. }
        ),
        "{outcome:?}"
    );
    for id in &ids()[..4] {
        cluster
            .member(id)
            .wait_for_step(&format!("finalized {id} {NEW}"), BOUND)
            .unwrap();
    }
    assert_eq!(cluster.status().checkpoint(), Some(Checkpoint::Complete));

    // dn5 comes back with its old binary: refused, with the recorded reason.
    let refusal = cluster.start_refused_member("dn5", OLD);
    assert!(
        refusal.contains("was excluded by ops@alice (host lost its disks, ticket OPS-7)"),
        "{refusal}"
    );
    assert!(
        refusal.contains("may rejoin only with software layout version >= 2"),
        "{refusal}"
    );

    // With the new binary it is readmitted and told to finalize.
    cluster.spawn("dn5", NEW, false);
    cluster
        .member("dn5")
        .wait_for_step(&format!("finalized dn5 {NEW}"), BOUND)
        .unwrap();
    let status = cluster.status();
    assert!(status.member("dn5").unwrap().excluded.is_none());
    let events: Vec<&str> = status.audit.iter().map(|a| a.event.as_str()).collect();
    assert!(
        events.contains(&"excluded") && events.contains(&"readmitted"),
        "{events:?}"
    );
}
