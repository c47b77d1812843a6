//! Coordinated clusters (feature `coordination`): the project's own cluster coordination
//! in a [`MiniCluster`](crate::MiniCluster). A dedicated coordinator (in this process, or
//! a child process of its own) runs the real [`Coordinator`], its driver and the member
//! link ([`CoordinatorServer`]) on loopback behind a cluster token, on an embedded store
//! (default) or etcd; every node runs a real [`Member`] that registers over the real link
//! ([`HttpLink`]) as it starts, heartbeats, finalizes in the background when told to,
//! and leaves when stopped cleanly.
//!
//! The coordinator's child-process protocol, one line each way:
//! - parent to child (stdin): `<id> <verb> <field>...`; verbs `status`, `finalize`,
//!   `exclude <member> <reason>`, `arm <failpoint>`, `stop`;
//! - child to parent (steps): `coordinator-ready <port>`, `coordinator-failed <message>`,
//!   `creply <id> ok <field>`, `creply <id> err <message>`, `cpoint <failpoint>` (a
//!   cluster failpoint passed), `ccrash <failpoint>` (the child then blocks until killed).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use layout_core::cluster::{
    ClusterError as CoreClusterError, ClusterStatus, ClusterStore, Coordinator, CoordinatorDriver,
    CoordinatorOptions, CoordinatorServer, EmbeddedStore, HttpLink, LocalLayout, Member,
    MemberRole, CLUSTER_FAILPOINTS,
};
use layout_core::http::BearerToken;
use layout_core::{FileStorage, LayoutFeature, LayoutVersionManager, ManagerOptions, StartIntent};
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use super::error::MiniClusterError;
use super::values::{MemberLink, NodeSpec, TESTKIT_CLIENT};
use super::wire::{decode, encode, next_command, ParentCommand};
use super::{KindInfo, MiniCluster, MiniClusterBuilder, StartOptions};
use crate::crash::{block_until_killed, child_role, report_step, ChildCommand, ChildProcess};
use crate::inject::failpoints_enabled;

/// The role of a child-process coordinator.
pub const COORDINATOR_ROLE: &str = "layout-testkit-coordinator";

/// The cluster token a coordinated cluster uses unless told otherwise.
pub const DEFAULT_CLUSTER_TOKEN: &str = "layout-testkit-cluster-token-0123456789";

/// The id of the kit's coordinator (also its member id in the cluster state).
pub const COORDINATOR_ID: &str = "coordinator";

/// The failpoint of a member's local finalization that a member crash point stops at:
/// the finalizer's first failpoint (its claim is taken, nothing is finalized yet).
pub const MEMBER_FINALIZE_FAILPOINT: &str = "finalize::started";

/// A safety bound for a hung process or a lease that never lapses; never a timing
/// assertion.
pub(crate) const BOUND: Duration = Duration::from_secs(120);

const ENV_TYPE: &str = "LAYOUT_TESTKIT_COORD_TYPE";
const ENV_KIND: &str = "LAYOUT_TESTKIT_COORD_KIND";
const ENV_DIR: &str = "LAYOUT_TESTKIT_COORD_DIR";
const ENV_INITIAL: &str = "LAYOUT_TESTKIT_COORD_INITIAL";
const ENV_SLV: &str = "LAYOUT_TESTKIT_COORD_SLV";
const ENV_PORT: &str = "LAYOUT_TESTKIT_COORD_PORT";
const ENV_STORE: &str = "LAYOUT_TESTKIT_COORD_STORE";
const ENV_LEASE_MS: &str = "LAYOUT_TESTKIT_COORD_LEASE_MS";
const ENV_HEARTBEAT_MS: &str = "LAYOUT_TESTKIT_COORD_HEARTBEAT_MS";
const ENV_TOKEN: &str = "LAYOUT_TESTKIT_COORD_TOKEN";

/// Where a coordinated cluster keeps its cluster state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CoordinationStore {
    /// An [`EmbeddedStore`] file in the coordinator's directory (the default).
    #[default]
    Embedded,
    /// A real etcd (layout-core's `EtcdStore`, feature `etcd`): the endpoint
    /// (`host:port`) and the key prefix of this cluster.
    Etcd {
        /// `host:port` of the etcd server.
        endpoint: String,
        /// The key prefix of this cluster's state.
        prefix: String,
    },
}

/// How a [`MiniCluster`](crate::MiniCluster) runs the project's coordination; see
/// [`MiniClusterBuilder::coordinated`](crate::MiniClusterBuilder::coordinated).
///
/// ```
/// use std::time::Duration;
/// use layout_testkit::cluster::CoordinationOptions;
///
/// let options = CoordinationOptions::default()
///     .with_member_lease(Duration::from_secs(2))
///     .with_heartbeat(Duration::from_millis(100));
/// assert_eq!(options.member_lease(), Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinationOptions {
    pub(crate) store: CoordinationStore,
    pub(crate) member_lease: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) token: String,
    pub(crate) coordinator_in_process: bool,
}

impl Default for CoordinationOptions {
    /// The embedded store, a member lease of 2 s, a heartbeat every 100 ms, the
    /// [`DEFAULT_CLUSTER_TOKEN`].
    fn default() -> Self {
        Self {
            store: CoordinationStore::Embedded,
            member_lease: Duration::from_secs(2),
            heartbeat: Duration::from_millis(100),
            token: DEFAULT_CLUSTER_TOKEN.to_owned(),
            coordinator_in_process: false,
        }
    }
}

impl CoordinationOptions {
    /// The cluster state on a real etcd at `endpoint` (`host:port`), under `prefix`
    /// (unique per cluster: tests share one server). Needs the kit's `etcd` feature.
    #[must_use]
    pub fn with_etcd(mut self, endpoint: impl Into<String>, prefix: impl Into<String>) -> Self {
        self.store = CoordinationStore::Etcd {
            endpoint: endpoint.into(),
            prefix: prefix.into(),
        };
        self
    }

    /// The member lease (`CoordinatorOptions::with_member_lease_ttl`, also the finalizer
    /// claim's lease): how long a killed member stays live to the coordinator.
    #[must_use]
    pub fn with_member_lease(mut self, lease: Duration) -> Self {
        self.member_lease = lease;
        self
    }

    /// How often members heartbeat (and the coordinator's driver runs).
    #[must_use]
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// The cluster token of the member link (at least 32 characters).
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }

    /// Runs the coordinator in the test's process even when the nodes are child
    /// processes, so a test reaches the real `Coordinator` API
    /// ([`MiniCluster::coordinator_handle`]) while its members are processes it can
    /// SIGKILL. (Crashing the coordinator at a failpoint needs it in a child process.)
    #[must_use]
    pub fn with_coordinator_in_process(mut self, in_process: bool) -> Self {
        self.coordinator_in_process = in_process;
        self
    }

    /// The store.
    pub fn store(&self) -> &CoordinationStore {
        &self.store
    }

    /// The member lease.
    pub fn member_lease(&self) -> Duration {
        self.member_lease
    }

    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    pub(crate) fn check(&self) -> Result<(), MiniClusterError> {
        BearerToken::new(self.token.clone()).map_err(|e| {
            MiniClusterError::InvalidConfig(format!("the cluster token is not usable: {e}"))
        })?;
        if self.heartbeat.is_zero() || self.member_lease <= self.heartbeat * 2 {
            return Err(MiniClusterError::InvalidConfig(format!(
                "the member lease ({:?}) must be more than two heartbeats ({:?}), and a \
                 heartbeat longer than zero",
                self.member_lease, self.heartbeat
            )));
        }
        if matches!(self.store, CoordinationStore::Etcd { .. }) && !cfg!(feature = "etcd") {
            return Err(MiniClusterError::InvalidConfig(
                "an etcd cluster store needs layout-testkit's `etcd` feature".to_owned(),
            ));
        }
        Ok(())
    }

    fn store_field(&self, dir: &Path) -> String {
        match &self.store {
            CoordinationStore::Embedded => format!(
                "embedded {}",
                encode(&dir.join("cluster-state").display().to_string())
            ),
            CoordinationStore::Etcd { endpoint, prefix } => {
                format!("etcd {} {}", encode(endpoint), encode(prefix))
            }
        }
    }
}

/// A member as the coordinator shows it ([`CoordinatedStatus::members`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MemberView {
    /// The member id (the node's name; [`COORDINATOR_ID`] for the coordinator).
    pub id: String,
    /// Whether it is the coordinator.
    pub is_coordinator: bool,
    /// Its SLV, as last reported.
    pub software_layout_version: u32,
    /// Its MLV, as last reported.
    pub metadata_layout_version: u32,
    /// Whether it is live (heartbeats within its lease).
    pub live: bool,
    /// The reason it was excluded, if it is.
    pub excluded: Option<String>,
}

/// The coordinator's view of the cluster's one kind, in either mode: the fields of
/// [`ClusterStatus`] a test checks, with the checkpoint and audit events as their names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CoordinatedStatus {
    /// The cluster MLV.
    pub cluster_layout_version: u32,
    /// The target of the finalization in progress or the last one.
    pub target: Option<u32>,
    /// Its checkpoint (`Started`, `CoordinatorFinalized`, `MembersFinalized`,
    /// `Complete`).
    pub checkpoint: Option<String>,
    /// Every member (the coordinator too), sorted by id.
    pub members: Vec<MemberView>,
    /// The audit trail's events, oldest first (`excluded`, `finalization-started`, ...).
    pub audit: Vec<String>,
}

impl CoordinatedStatus {
    fn from_status(status: &ClusterStatus) -> Self {
        Self {
            cluster_layout_version: status.cluster_layout_version,
            target: status.finalization.as_ref().map(|f| f.target),
            checkpoint: status.checkpoint().map(|c| format!("{c:?}")),
            members: status
                .members
                .iter()
                .map(|m| MemberView {
                    id: m.member_id.clone(),
                    is_coordinator: m.role == MemberRole::Coordinator,
                    software_layout_version: m.software_layout_version,
                    metadata_layout_version: m.metadata_layout_version,
                    live: m.live,
                    excluded: m.excluded.as_ref().map(|e| e.reason.clone()),
                })
                .collect(),
            audit: status.audit.iter().map(|a| a.event.to_string()).collect(),
        }
    }

    /// A member by id.
    pub fn member(&self, id: &str) -> Option<&MemberView> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Whether the last finalization is complete (its checkpoint, and its
    /// `finalization-complete` audit entry, written just after it) and every member not
    /// excluded reported the cluster MLV.
    pub fn is_complete(&self) -> bool {
        let recorded = match self.audit.iter().rposition(|e| e == "finalization-started") {
            Some(started) => self.audit[started..]
                .iter()
                .any(|e| e == "finalization-complete"),
            None => true,
        };
        self.checkpoint.as_deref().is_none_or(|c| c == "Complete")
            && recorded
            && self.members.iter().all(|m| {
                m.excluded.is_some() || m.metadata_layout_version == self.cluster_layout_version
            })
    }
}

/// A node's real [`Member`]: registered as the node starts, heartbeating on a thread of
/// its own; dropping it stops the thread, waits for a background finalization and leaves
/// (unless [`abandon`](Self::abandon)ed: a kill leaves no word).
pub(crate) struct MemberRunner {
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Mutex<Option<JoinHandle<(Member, HttpLink)>>>,
    abandoned: AtomicBool,
}

impl MemberRunner {
    /// Registers node `node` of `kind` (waiting out an earlier, killed process of it),
    /// then heartbeats. A refusal is an error ([`MiniClusterError::MemberRefused`]); an
    /// unreachable coordinator is not (the member registers once it answers, as the
    /// library's members do).
    pub(crate) fn start(
        node: &str,
        kind: &str,
        link: &MemberLink,
        layout: Arc<dyn LocalLayout>,
    ) -> Result<Self, MiniClusterError> {
        let http = link.link().map_err(MiniClusterError::InvalidConfig)?;
        let mut member = Member::new(kind, node, layout);
        let wait = link.lease * 3 + Duration::from_secs(5);
        if let Err(e) = member.register_waiting(&http, wait, link.heartbeat) {
            if e.refusal().is_some() {
                return Err(MiniClusterError::MemberRefused {
                    node: node.to_owned(),
                    message: e.to_string(),
                });
            }
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopping = Arc::clone(&stop);
        let errors = Arc::new(Mutex::new(Vec::new()));
        let heartbeat_errors = Arc::clone(&errors);
        let every = link.heartbeat;
        let thread = std::thread::Builder::new()
            .name(format!("member-{node}"))
            .spawn(move || {
                loop {
                    {
                        let mut stopped = stopping.0.lock();
                        if !*stopped {
                            stopping.1.wait_for(&mut stopped, every);
                        }
                        if *stopped {
                            break;
                        }
                    }
                    // Refusals and an unreachable coordinator are the member's business:
                    // its fence follows them, the next heartbeat tries again. Recorded.
                    if let Err(e) = member.heartbeat(&http) {
                        heartbeat_errors.lock().push(e.to_string());
                    }
                }
                (member, http)
            })
            .map_err(|source| MiniClusterError::Io {
                operation: "start the heartbeat thread of",
                path: PathBuf::from(node),
                source,
            })?;
        Ok(Self {
            errors,
            stop,
            thread: Mutex::new(Some(thread)),
            abandoned: AtomicBool::new(false),
        })
    }

    /// The heartbeat errors so far.
    pub(crate) fn errors(&self) -> Vec<String> {
        self.errors.lock().clone()
    }

    /// Stops heartbeating without leaving (an in-process kill).
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
    }
}

impl Drop for MemberRunner {
    fn drop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(thread) = self.thread.lock().take() {
            if let Ok((mut member, http)) = thread.join() {
                member.wait_for_finalization(BOUND);
                if !self.abandoned.load(Ordering::SeqCst) {
                    let _ = member.leave(&http);
                }
            }
        }
    }
}

/// Opens a coordinator's own layout: `(directory, initial MLV, SLV)`.
pub(crate) type OpenLayout =
    Arc<dyn Fn(&Path, u32, u32) -> Result<Arc<dyn LocalLayout>, String> + Send + Sync>;

/// The fixed configuration of the kit's coordinator.
#[derive(Clone)]
pub(crate) struct CoordinatorSpec {
    pub(crate) kind: String,
    pub(crate) dir: PathBuf,
    pub(crate) initial: u32,
    pub(crate) slv: u32,
    pub(crate) options: CoordinationOptions,
    pub(crate) child_test: Option<String>,
    pub(crate) type_name: &'static str,
    /// Opens the coordinator's own layout (the kind's catalog) in this process.
    pub(crate) open_layout: OpenLayout,
}

/// Opens the coordinator's own layout: a layout version manager of catalog `F` in
/// `<dir>/layout`, running software `slv`, installed at `initial`.
pub(crate) fn open_coordinator_layout<F: LayoutFeature>(
    dir: &Path,
    initial: u32,
    slv: u32,
) -> Result<Arc<dyn LocalLayout>, String> {
    let options = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(initial.min(slv))
        .with_software_layout_version(slv);
    LayoutVersionManager::<F>::open(FileStorage::new(dir.join("layout")), options)
        .map(|lvm| Arc::new(lvm) as Arc<dyn LocalLayout>)
        .map_err(|e| format!("the coordinator's layout refused to open: {e}"))
}

/// The real coordinator, its member link and its driver, in this process.
struct LocalCoordinator {
    // Dropped in this order: the driver, the server, the coordinator.
    _driver: CoordinatorDriver,
    server: CoordinatorServer,
    coordinator: Arc<Coordinator>,
}

fn open_store(field: &str) -> Result<Arc<dyn ClusterStore>, String> {
    let words: Vec<&str> = field.split(' ').collect();
    match words.as_slice() {
        ["embedded", path] => {
            let path = decode(path).ok_or("a bad store path")?;
            EmbeddedStore::open(path)
                .map(|s| Arc::new(s) as Arc<dyn ClusterStore>)
                .map_err(|e| e.to_string())
        }
        #[cfg(feature = "etcd")]
        ["etcd", endpoint, prefix] => {
            let options = layout_core::etcd::EtcdOptions::new(
                [decode(endpoint).ok_or("a bad etcd endpoint")?],
                decode(prefix).ok_or("a bad etcd prefix")?,
            );
            layout_core::cluster::EtcdStore::connect(options)
                .map(|s| Arc::new(s) as Arc<dyn ClusterStore>)
                .map_err(|e| e.to_string())
        }
        _ => Err(format!("cannot open the cluster store {field:?}")),
    }
}

struct OpenArgs<'a> {
    kind: &'a str,
    store: &'a str,
    lease: Duration,
    heartbeat: Duration,
    token: &'a str,
    port: u16,
}

impl LocalCoordinator {
    fn open(args: &OpenArgs<'_>, layout: Arc<dyn LocalLayout>) -> Result<Self, String> {
        let store = open_store(args.store)?;
        let options = CoordinatorOptions::default()
            .with_coordinator_id(COORDINATOR_ID)
            .with_member_lease_ttl(args.lease)
            .with_finalizer_lease_ttl(args.lease)
            .with_local(args.kind, layout);
        let coordinator = Arc::new(Coordinator::open(store, options).map_err(|e| e.to_string())?);
        let token = BearerToken::new(args.token.to_owned()).map_err(|e| e.to_string())?;
        let server =
            CoordinatorServer::bind_loopback(Arc::clone(&coordinator), args.port, token)
                .map_err(|e| format!("cannot serve the member link on port {}: {e}", args.port))?;
        let driver = coordinator
            .spawn_driver(args.heartbeat)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            _driver: driver,
            server,
            coordinator,
        })
    }

    fn status(&self, kind: &str) -> Result<CoordinatedStatus, String> {
        self.coordinator
            .status(kind)
            .map(|s| CoordinatedStatus::from_status(&s))
            .map_err(|e| e.to_string())
    }

    fn finalize(&self, kind: &str) -> Result<u32, String> {
        self.coordinator
            .start_finalize(kind, None, TESTKIT_CLIENT)
            .map(|job| job.target())
            .map_err(|e| e.to_string())
    }

    fn exclude(&self, kind: &str, member: &str, reason: &str) -> Result<(), ExcludeError> {
        match self
            .coordinator
            .exclude(kind, member, reason, TESTKIT_CLIENT)
        {
            Ok(_) => Ok(()),
            Err(
                CoreClusterError::LivenessNotKnownYet { .. }
                | CoreClusterError::MemberIsLive { .. },
            ) => Err(ExcludeError::NotYet),
            Err(e) => Err(ExcludeError::Refused(e.to_string())),
        }
    }
}

enum ExcludeError {
    /// The member is live, or the coordinator cannot tell yet: try again.
    NotYet,
    Refused(String),
}

/// The parent's handle on a child-process coordinator.
struct ChildCoordinator {
    process: ChildProcess,
    cursor: usize,
    next_id: u64,
}

impl ChildCoordinator {
    fn request(
        &mut self,
        verb: &str,
        fields: &[String],
    ) -> Result<Result<String, String>, MiniClusterError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = format!("{id} {verb}");
        for field in fields {
            line.push(' ');
            line.push_str(field);
        }
        self.process.send_line(&line).map_err(coordinator_child)?;
        let prefix = format!("creply {id} ");
        loop {
            let step = self
                .process
                .next_step(self.cursor, BOUND)
                .map_err(coordinator_child)?;
            self.cursor += 1;
            if let Some(rest) = step.strip_prefix(&prefix) {
                let words: Vec<&str> = rest.split(' ').collect();
                return match words.as_slice() {
                    ["ok", value] => Ok(Ok(decode(value).unwrap_or_default())),
                    ["err", message] => Ok(Err(decode(message).unwrap_or_default())),
                    _ => Err(protocol(&step)),
                };
            }
        }
    }
}

fn coordinator_child(source: crate::crash::CrashError) -> MiniClusterError {
    MiniClusterError::Child {
        node: COORDINATOR_ID.to_owned(),
        source: Box::new(source),
    }
}

fn protocol(answer: &str) -> MiniClusterError {
    MiniClusterError::Protocol {
        node: COORDINATOR_ID.to_owned(),
        answer: answer.to_owned(),
    }
}

fn coordinator_error(operation: &str, message: String) -> MiniClusterError {
    MiniClusterError::Coordinator {
        operation: operation.to_owned(),
        message,
    }
}

enum Backend {
    Stopped,
    Local(LocalCoordinator),
    Child(ChildCoordinator),
}

/// The kit's coordinator: its spec, its port (kept across restarts: members keep their
/// link), and the cluster failpoints its processes passed.
pub(crate) struct CoordinatorNode {
    spec: CoordinatorSpec,
    port: u16,
    backend: Backend,
    /// Cluster failpoints passed by earlier (killed or stopped) child processes.
    passed: Vec<String>,
    /// Cluster failpoints a child process was killed at.
    crashed: Vec<String>,
    /// The target of the last finalization this cluster started.
    target: Option<u32>,
}

impl CoordinatorNode {
    pub(crate) fn new(spec: CoordinatorSpec) -> Self {
        Self {
            spec,
            port: 0,
            backend: Backend::Stopped,
            passed: Vec::new(),
            crashed: Vec::new(),
            target: None,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn handle(&self) -> Option<Arc<Coordinator>> {
        match &self.backend {
            Backend::Local(local) => Some(Arc::clone(&local.coordinator)),
            _ => None,
        }
    }

    pub(crate) fn is_running(&self) -> bool {
        !matches!(self.backend, Backend::Stopped)
    }

    /// Starts the stopped coordinator (on its earlier port after the first start).
    pub(crate) fn start(&mut self) -> Result<(), MiniClusterError> {
        if self.is_running() {
            return Ok(());
        }
        let spec = &self.spec;
        let store = spec.options.store_field(&spec.dir);
        self.backend = match &spec.child_test {
            None => {
                let layout = (spec.open_layout)(&spec.dir, spec.initial, spec.slv)
                    .map_err(|m| coordinator_error("start", m))?;
                let local = LocalCoordinator::open(
                    &OpenArgs {
                        kind: &spec.kind,
                        store: &store,
                        lease: spec.options.member_lease,
                        heartbeat: spec.options.heartbeat,
                        token: &spec.options.token,
                        port: self.port,
                    },
                    layout,
                )
                .map_err(|m| coordinator_error("start", m))?;
                self.port = local.server.local_addr().port();
                Backend::Local(local)
            }
            Some(test) => {
                let mut process = ChildCommand::new(test, COORDINATOR_ROLE)
                    .env(ENV_TYPE, spec.type_name)
                    .env(ENV_KIND, &spec.kind)
                    .env(ENV_DIR, &spec.dir)
                    .env(ENV_INITIAL, spec.initial.to_string())
                    .env(ENV_SLV, spec.slv.to_string())
                    .env(ENV_PORT, self.port.to_string())
                    .env(ENV_STORE, store)
                    .env(
                        ENV_LEASE_MS,
                        spec.options.member_lease.as_millis().to_string(),
                    )
                    .env(
                        ENV_HEARTBEAT_MS,
                        spec.options.heartbeat.as_millis().to_string(),
                    )
                    .env(ENV_TOKEN, &spec.options.token)
                    .spawn()
                    .map_err(coordinator_child)?;
                let first = process.next_step(0, BOUND).map_err(coordinator_child)?;
                let words: Vec<&str> = first.split(' ').collect();
                match words.as_slice() {
                    ["coordinator-ready", port] => {
                        self.port = port.parse().map_err(|_| protocol(&first))?;
                    }
                    ["coordinator-failed", message] => {
                        let _ = process.wait(BOUND);
                        return Err(coordinator_error(
                            "start",
                            decode(message).unwrap_or_default(),
                        ));
                    }
                    _ => return Err(protocol(&first)),
                }
                Backend::Child(ChildCoordinator {
                    process,
                    cursor: 1,
                    next_id: 1,
                })
            }
        };
        Ok(())
    }

    fn collect(&mut self, process: &ChildProcess) {
        for step in process.steps_seen() {
            if let Some(name) = step.strip_prefix("cpoint ") {
                self.passed.push(name.to_owned());
            } else if let Some(name) = step.strip_prefix("ccrash ") {
                self.crashed.push(name.to_owned());
            }
        }
    }

    /// Stops the coordinator cleanly.
    pub(crate) fn stop(&mut self) -> Result<(), MiniClusterError> {
        match std::mem::replace(&mut self.backend, Backend::Stopped) {
            Backend::Stopped | Backend::Local(_) => Ok(()),
            Backend::Child(mut child) => {
                let stopped = child.request("stop", &[]);
                let output = child.process.wait(BOUND).map_err(coordinator_child);
                self.collect(&child.process);
                stopped?.map_err(|m| coordinator_error("stop", m))?;
                let output = output?;
                if output.success() {
                    Ok(())
                } else {
                    Err(protocol(&format!(
                        "the coordinator exited with {}",
                        output.status
                    )))
                }
            }
        }
    }

    /// Kills the coordinator: SIGKILL in child-process mode; in process, everything is
    /// dropped (the embedded store's claim with it).
    pub(crate) fn kill(&mut self) -> Result<(), MiniClusterError> {
        match std::mem::replace(&mut self.backend, Backend::Stopped) {
            Backend::Stopped | Backend::Local(_) => Ok(()),
            Backend::Child(mut child) => {
                child.process.kill().map_err(coordinator_child)?;
                child.process.wait(BOUND).map_err(coordinator_child)?;
                self.collect(&child.process);
                Ok(())
            }
        }
    }

    fn not_running() -> MiniClusterError {
        MiniClusterError::NotRunning {
            node: COORDINATOR_ID.to_owned(),
        }
    }

    pub(crate) fn status(&mut self) -> Result<CoordinatedStatus, MiniClusterError> {
        let kind = self.spec.kind.clone();
        match &mut self.backend {
            Backend::Stopped => Err(Self::not_running()),
            Backend::Local(local) => local
                .status(&kind)
                .map_err(|m| coordinator_error("status", m)),
            Backend::Child(child) => {
                let json = child
                    .request("status", &[])?
                    .map_err(|m| coordinator_error("status", m))?;
                serde_json::from_str(&json).map_err(|_| protocol(&json))
            }
        }
    }

    /// Starts the cluster's finalization (the coordinator's own part runs on a thread of
    /// its own); returns the target.
    pub(crate) fn start_finalize(&mut self) -> Result<u32, MiniClusterError> {
        let kind = self.spec.kind.clone();
        let target = match &mut self.backend {
            Backend::Stopped => Err(Self::not_running()),
            Backend::Local(local) => local
                .finalize(&kind)
                .map_err(|m| coordinator_error("finalize", m)),
            Backend::Child(child) => {
                let target = child
                    .request("finalize", &[])?
                    .map_err(|m| coordinator_error("finalize", m))?;
                target.parse().map_err(|_| protocol(&target))
            }
        }?;
        self.target = Some(target);
        Ok(target)
    }

    /// Excludes `member`, retrying while the coordinator still takes it for live or
    /// cannot tell yet (bounded).
    pub(crate) fn exclude(&mut self, member: &str, reason: &str) -> Result<(), MiniClusterError> {
        let kind = self.spec.kind.clone();
        let deadline = Instant::now() + BOUND;
        loop {
            let result = match &mut self.backend {
                Backend::Stopped => return Err(Self::not_running()),
                Backend::Local(local) => local.exclude(&kind, member, reason),
                Backend::Child(child) => {
                    match child.request("exclude", &[encode(member), encode(reason)])? {
                        Ok(_) => Ok(()),
                        Err(m) if m.starts_with("not-yet") => Err(ExcludeError::NotYet),
                        Err(m) => Err(ExcludeError::Refused(m)),
                    }
                }
            };
            match result {
                Ok(()) => return Ok(()),
                Err(ExcludeError::Refused(m)) => return Err(coordinator_error("exclude", m)),
                Err(ExcludeError::NotYet) if Instant::now() < deadline => {
                    std::thread::sleep(self.spec.options.heartbeat);
                }
                Err(ExcludeError::NotYet) => {
                    return Err(coordinator_error(
                        "exclude",
                        format!("{member} was still live (or liveness unknown) after {BOUND:?}"),
                    ))
                }
            }
        }
    }

    /// Arms a crash at cluster failpoint `failpoint` in the child-process coordinator.
    pub(crate) fn arm_crash(&mut self, failpoint: &str) -> Result<(), MiniClusterError> {
        match &mut self.backend {
            Backend::Child(child) => child
                .request("arm", &[encode(failpoint)])?
                .map(drop)
                .map_err(|m| coordinator_error("arm a crash", m)),
            Backend::Stopped => Err(Self::not_running()),
            Backend::Local(_) => Err(MiniClusterError::Unsupported {
                node: COORDINATOR_ID.to_owned(),
                what: "crashing the coordinator at a failpoint needs a child-process cluster"
                    .to_owned(),
            }),
        }
    }

    /// Waits until the child-process coordinator reached its armed crash point, then
    /// SIGKILLs it there.
    pub(crate) fn kill_at_crash(&mut self, failpoint: &str) -> Result<(), MiniClusterError> {
        match &mut self.backend {
            Backend::Child(child) => {
                child
                    .process
                    .wait_for_step(&format!("ccrash {failpoint}"), BOUND)
                    .map_err(coordinator_child)?;
                self.kill()
            }
            _ => Err(Self::not_running()),
        }
    }

    /// The cluster failpoints every child-process coordinator passed so far, in order
    /// (the running one's included), and those one was killed at.
    pub(crate) fn failpoints(&self) -> (Vec<String>, Vec<String>) {
        let mut passed = self.passed.clone();
        let mut crashed = self.crashed.clone();
        if let Backend::Child(child) = &self.backend {
            for step in child.process.steps_seen() {
                if let Some(name) = step.strip_prefix("cpoint ") {
                    passed.push(name.to_owned());
                } else if let Some(name) = step.strip_prefix("ccrash ") {
                    crashed.push(name.to_owned());
                }
            }
        }
        (passed, crashed)
    }
}

/// Serves as the child-process coordinator of a coordinated cluster whose kind runs
/// catalog `F`, when this process was started as one: returns `true` once told to stop.
pub(crate) fn run_as_child_coordinator<F: LayoutFeature>(type_name: &str) -> bool {
    if child_role().as_deref() != Some(COORDINATOR_ROLE) {
        return false;
    }
    if std::env::var(ENV_TYPE).ok().as_deref() != Some(type_name) {
        return false;
    }
    serve_coordinator::<F>();
    true
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("the environment variable {name} is not set"))
}

fn env_number<T: std::str::FromStr>(name: &str) -> Result<T, String> {
    let text = env(name)?;
    text.parse()
        .map_err(|_| format!("{name}={text} is not a number"))
}

fn reply(id: &str, result: Result<String, String>) {
    match result {
        Ok(value) => report_step(format!("creply {id} ok {}", encode(&value))),
        Err(message) => report_step(format!("creply {id} err {}", encode(&message))),
    }
}

/// Arms every cluster failpoint: each pass is reported; at the armed one, the process
/// reports the crash and blocks until killed.
fn arm_cluster_failpoints(target: &Arc<Mutex<Option<String>>>) -> Result<(), String> {
    if !failpoints_enabled() {
        return Ok(());
    }
    for &name in CLUSTER_FAILPOINTS {
        let target = Arc::clone(target);
        fail::cfg_callback(name, move || {
            report_step(format!("cpoint {name}"));
            if target.lock().as_deref() == Some(name) {
                report_step(format!("ccrash {name}"));
                block_until_killed();
            }
        })
        .map_err(|e| format!("could not arm failpoint {name}: {e}"))?;
    }
    Ok(())
}

fn serve_coordinator<F: LayoutFeature>() {
    let target = Arc::new(Mutex::new(None::<String>));
    let opened = (|| -> Result<(LocalCoordinator, String), String> {
        arm_cluster_failpoints(&target)?;
        let kind = env(ENV_KIND)?;
        let dir = PathBuf::from(env(ENV_DIR)?);
        let layout =
            open_coordinator_layout::<F>(&dir, env_number(ENV_INITIAL)?, env_number(ENV_SLV)?)?;
        let store = env(ENV_STORE)?;
        let token = env(ENV_TOKEN)?;
        let local = LocalCoordinator::open(
            &OpenArgs {
                kind: &kind,
                store: &store,
                lease: Duration::from_millis(env_number(ENV_LEASE_MS)?),
                heartbeat: Duration::from_millis(env_number(ENV_HEARTBEAT_MS)?),
                token: &token,
                port: env_number(ENV_PORT)?,
            },
            layout,
        )?;
        Ok((local, kind))
    })();
    let (local, kind) = match opened {
        Ok(opened) => opened,
        Err(message) => {
            report_step(format!("coordinator-failed {}", encode(&message)));
            return;
        }
    };
    report_step(format!(
        "coordinator-ready {}",
        local.server.local_addr().port()
    ));
    loop {
        let ParentCommand {
            id,
            word,
            args,
            line,
        } = next_command();
        let id = id.as_str();
        let result = match (word.as_deref(), args.as_slice()) {
            (Some("status"), []) => local
                .status(&kind)
                .and_then(|s| serde_json::to_string(&s).map_err(|e| e.to_string())),
            (Some("finalize"), []) => local.finalize(&kind).map(|t| t.to_string()),
            (Some("exclude"), [member, reason]) => match local.exclude(&kind, member, reason) {
                Ok(()) => Ok(String::new()),
                Err(ExcludeError::NotYet) => Err("not-yet".to_owned()),
                Err(ExcludeError::Refused(m)) => Err(m),
            },
            (Some("arm"), [failpoint]) => {
                if !failpoints_enabled() {
                    Err("crash injection needs the failpoints compiled in: enable \
                         layout-testkit's `failpoints` feature"
                        .to_owned())
                } else if CLUSTER_FAILPOINTS.contains(&failpoint.as_str()) {
                    *target.lock() = Some(failpoint.clone());
                    Ok(String::new())
                } else {
                    Err(format!(
                        "{failpoint} is not a cluster failpoint (one of {CLUSTER_FAILPOINTS:?})"
                    ))
                }
            }
            (Some("stop"), []) => {
                reply(id, Ok(String::new()));
                drop(local);
                return;
            }
            _ => Err(format!("not a coordinator command: {}", line.trim())),
        };
        reply(id, result);
    }
}

/// Coordinated clusters (built with
/// [`MiniClusterBuilder::coordinated`](crate::MiniClusterBuilder::coordinated)).
impl MiniCluster {
    fn coordinator(
        &self,
    ) -> Result<parking_lot::MutexGuard<'_, CoordinatorNode>, MiniClusterError> {
        self.coordinator.as_ref().map(Mutex::lock).ok_or_else(|| {
            MiniClusterError::InvalidConfig(
                "the cluster is not coordinated: build it with .coordinated(..)".to_owned(),
            )
        })
    }

    /// The real coordinator, when it runs in this process (an in-process cluster, or
    /// [`CoordinationOptions::with_coordinator_in_process`]): the whole `Coordinator`
    /// API (a synchronous `finalize`, `exclude` with its exact errors, the full
    /// `status`). Do not keep it across
    /// [`restart_coordinator`](Self::restart_coordinator): the embedded store stays
    /// locked while any handle lives.
    pub fn coordinator_handle(&self) -> Result<Arc<Coordinator>, MiniClusterError> {
        let coordinator = self.coordinator()?;
        coordinator
            .handle()
            .ok_or_else(|| MiniClusterError::Unsupported {
                node: COORDINATOR_ID.to_owned(),
                what: if coordinator.is_running() {
                    "the coordinator runs in a child process: use \
                 CoordinationOptions::with_coordinator_in_process(true)"
                        .to_owned()
                } else {
                    "the coordinator is not running".to_owned()
                },
            })
    }

    /// Whether the cluster runs the project's coordination.
    pub fn is_coordinated(&self) -> bool {
        self.coordinator.is_some()
    }

    /// The coordinator's view of the cluster.
    pub fn coordinator_status(&self) -> Result<CoordinatedStatus, MiniClusterError> {
        self.coordinator()?.status()
    }

    /// Asks the coordinator to finalize the cluster (to every member's and its own
    /// SLV): its own part runs on a thread of its own, members follow in the background
    /// as they are told on their heartbeats. Returns the target. Refusals
    /// (`Blocked` naming the members below it, ...) are errors, at once.
    pub fn start_cluster_finalization(&self) -> Result<u32, MiniClusterError> {
        self.coordinator()?.start_finalize()
    }

    /// Polls the coordinator until `done` holds (bounded; a failed poll while the
    /// coordinator is down is retried). `what` names the wait in the error.
    pub fn wait_for_coordinator(
        &self,
        what: &str,
        mut done: impl FnMut(&CoordinatedStatus) -> bool,
    ) -> Result<CoordinatedStatus, MiniClusterError> {
        let deadline = Instant::now() + BOUND;
        let mut last: String;
        loop {
            match self.coordinator_status() {
                Ok(status) if done(&status) => return Ok(status),
                Ok(status) => last = format!("{status:?}"),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(coordinator_error(
                    "wait",
                    format!("{what} did not happen within {BOUND:?}; last seen: {last}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the last finalization is complete and every member not excluded
    /// reported the cluster MLV.
    /// That is, once the cluster MLV reached the target of the last finalization
    /// [`start_cluster_finalization`](Self::start_cluster_finalization) started.
    pub fn wait_for_cluster_complete(&self) -> Result<CoordinatedStatus, MiniClusterError> {
        let target = self.coordinator()?.target.unwrap_or(0);
        self.wait_for_coordinator("the cluster finalization completing", |s| {
            s.cluster_layout_version >= target && s.is_complete()
        })
    }

    /// Waits until member `node` is live to the coordinator with SLV `slv`.
    pub fn wait_for_member(
        &self,
        node: &str,
        slv: u32,
    ) -> Result<CoordinatedStatus, MiniClusterError> {
        self.wait_for_coordinator(&format!("{node} live with SLV {slv}"), |s| {
            s.member(node)
                .is_some_and(|m| m.live && m.software_layout_version == slv)
        })
    }

    /// Excludes node `node`'s member with `reason`: it must be dead (killed or stopped);
    /// waits (bounded) until the coordinator no longer takes it for live.
    pub fn exclude(&self, node: &str, reason: &str) -> Result<(), MiniClusterError> {
        self.node_dyn(node)?;
        self.coordinator()?.exclude(node, reason)
    }

    /// Upgrades one member of a rolling upgrade: prepares it, restarts it cleanly on its
    /// kind's new SLV (its member leaves, and the new process registers at once), and
    /// waits until the coordinator sees it live with that SLV.
    pub fn upgrade_member(&self, node: &str) -> Result<(), MiniClusterError> {
        let n = self.node_dyn(node)?;
        n.upgrade()?;
        self.wait_for_member(node, n.new_software_layout_version())
            .map(drop)
    }

    /// Upgrades a member that crashed: SIGKILLs it (in process: drops it without a
    /// word), restarts it on the new SLV (it waits out its killed process's lease, as
    /// the library's members do) and waits until it is live with that SLV.
    pub fn crash_and_upgrade_member(&self, node: &str) -> Result<(), MiniClusterError> {
        let n = self.node_dyn(node)?;
        n.kill()?;
        n.start(
            StartOptions::default().with_software_layout_version(n.new_software_layout_version()),
        )?;
        self.wait_for_member(node, n.new_software_layout_version())
            .map(drop)
    }

    /// A rolling upgrade: [`upgrade_member`](Self::upgrade_member) for every running
    /// node, in build order.
    pub fn rolling_upgrade(&self) -> Result<(), MiniClusterError> {
        let names: Vec<String> = self
            .nodes()
            .filter(|n| n.is_running())
            .map(|n| n.name().to_owned())
            .collect();
        names.iter().try_for_each(|n| self.upgrade_member(n))
    }

    /// Adds a late joiner to kind `kind` (named `<kind>-<next index>`): a fresh install
    /// of the kind's new release, pinned to the cluster's current MLV (as the runbook
    /// says new members must be), started, registered. Returns its name.
    pub fn add_late_joiner(&mut self, kind: &str) -> Result<String, MiniClusterError> {
        let slv = self
            .kinds
            .iter()
            .find(|k| k.name == kind)
            .map(|k| k.new_software_layout_version)
            .ok_or_else(|| MiniClusterError::InvalidConfig(format!("no kind named {kind}")))?;
        self.add_node(kind, slv)
    }

    /// Adds a node to kind `kind` running software `slv` (named `<kind>-<next index>`),
    /// a fresh install pinned to the cluster's current MLV (or `slv` if lower), and
    /// starts it: its member registers. Returns its name. A refused member (an old
    /// binary after finalization) is an error ([`MiniClusterError::member_refusal`]); the
    /// node is kept, stopped.
    pub fn add_node(&mut self, kind: &str, slv: u32) -> Result<String, MiniClusterError> {
        let cluster_version = self.coordinator_status()?.cluster_layout_version;
        let (config, factory) = self
            .template
            .kinds
            .iter()
            .find(|(c, _)| c.name == kind)
            .cloned()
            .ok_or_else(|| MiniClusterError::InvalidConfig(format!("no kind named {kind}")))?;
        let info = self
            .kinds
            .iter()
            .find(|k| k.name == kind)
            .cloned()
            .ok_or_else(|| MiniClusterError::InvalidConfig(format!("no kind named {kind}")))?;
        let index = self.nodes.iter().filter(|n| n.kind() == kind).count();
        let name = format!("{kind}-{index}");
        let dir = self.root().join(&name);
        std::fs::create_dir_all(&dir).map_err(|source| MiniClusterError::Io {
            operation: "create",
            path: dir.clone(),
            source,
        })?;
        let node = factory.create(NodeSpec {
            name: name.clone(),
            kind: kind.to_owned(),
            index,
            dir,
            initial: cluster_version.min(slv),
            old_slv: slv,
            new_slv: info.new_software_layout_version.max(slv),
            params: config.params.clone(),
            storage: self.template.storage,
            child_test: self.template.child_test.clone(),
            member: self.member.clone(),
        });
        let started = node.start(StartOptions::default());
        self.nodes.push(node);
        started?;
        self.wait_for_member(&name, slv)?;
        Ok(name)
    }

    /// SIGKILLs the coordinator (in process: drops it).
    pub fn kill_coordinator(&self) -> Result<(), MiniClusterError> {
        self.coordinator()?.kill()
    }

    /// Starts the stopped coordinator again, on the same port and store: it resumes an
    /// unfinished finalization by its driver.
    pub fn start_coordinator(&self) -> Result<(), MiniClusterError> {
        self.coordinator()?.start()
    }

    /// Stops the coordinator cleanly and starts it again.
    pub fn restart_coordinator(&self) -> Result<(), MiniClusterError> {
        let mut coordinator = self.coordinator()?;
        coordinator.stop()?;
        coordinator.start()
    }

    /// Arms a crash of the child-process coordinator at `failpoint` (one of
    /// `layout_core::cluster::CLUSTER_FAILPOINTS`; needs the kit's `failpoints`
    /// feature): the next time its finalization passes it, it stops there until
    /// [`kill_coordinator_at_crash`](Self::kill_coordinator_at_crash) SIGKILLs it.
    pub fn arm_coordinator_crash(&self, failpoint: &str) -> Result<(), MiniClusterError> {
        self.coordinator()?.arm_crash(failpoint)
    }

    /// Waits until the coordinator stopped at its armed crash point and SIGKILLs it.
    pub fn kill_coordinator_at_crash(&self, failpoint: &str) -> Result<(), MiniClusterError> {
        self.coordinator()?.kill_at_crash(failpoint)
    }

    /// Arms a crash of child-process member `node` in its next local finalization, at
    /// [`MEMBER_FINALIZE_FAILPOINT`] (needs the kit's `failpoints` feature).
    pub fn arm_member_crash(&self, node: &str) -> Result<(), MiniClusterError> {
        self.find(node)?.arm_member_crash()
    }

    /// Waits until member `node` stopped at its armed crash point and SIGKILLs it.
    pub fn kill_member_at_crash(&self, node: &str) -> Result<(), MiniClusterError> {
        self.find(node)?.kill_at_step("member-crashpoint")
    }

    /// Waits until child-process node `node` reported step `step`
    /// ([`report_step`], e.g. from inside one of its actions, which
    /// may then [`block_until_killed`]) and SIGKILLs it.
    pub fn kill_node_at_step(&self, node: &str, step: &str) -> Result<(), MiniClusterError> {
        self.find(node)?.kill_at_step(step)
    }

    /// The errors node `node`'s member got from its heartbeats so far (this process of
    /// it), in order: refusals, an unreachable coordinator.
    pub fn member_errors(&self, node: &str) -> Result<Vec<String>, MiniClusterError> {
        self.find(node)?.member_errors()
    }

    /// The cluster failpoints the child-process coordinators passed, in order, and
    /// those one was killed at (empty in process).
    pub fn coordinator_failpoints(&self) -> Result<(Vec<String>, Vec<String>), MiniClusterError> {
        Ok(self.coordinator()?.failpoints())
    }
}

/// Starts the coordinator of a coordinated cluster `builder` builds (its directory under
/// `root`) and returns it with the link its members use; `(None, None)` when the
/// cluster is not coordinated.
pub(crate) fn start_coordinator(
    builder: &MiniClusterBuilder,
    infos: &[KindInfo],
    root: &Path,
) -> Result<(Option<Mutex<CoordinatorNode>>, Option<MemberLink>), MiniClusterError> {
    if let Some(options) = &builder.coordination {
        options.check()?;
        if infos.len() != 1 {
            return Err(MiniClusterError::InvalidConfig(format!(
                "a coordinated cluster runs one kind of node, not {}",
                infos.len()
            )));
        }
    }
    let (Some(options), Some((config, factory)), Some(info)) = (
        builder.coordination.as_ref(),
        builder.kinds.first(),
        infos.first(),
    ) else {
        return Ok((None, None));
    };
    let dir = root.join(COORDINATOR_ID);
    std::fs::create_dir_all(&dir).map_err(|source| MiniClusterError::Io {
        operation: "create",
        path: dir.clone(),
        source,
    })?;
    let mut coordinator = CoordinatorNode::new(CoordinatorSpec {
        kind: config.name.clone(),
        dir,
        initial: info.initial_layout_version,
        slv: info.new_software_layout_version,
        options: options.clone(),
        child_test: if options.coordinator_in_process {
            None
        } else {
            builder.child_test.clone()
        },
        type_name: factory.type_name(),
        open_layout: factory.coordinator_layout(),
    });
    coordinator.start()?;
    let member = MemberLink {
        url: coordinator.url(),
        token: options.token.clone(),
        heartbeat: options.heartbeat,
        lease: options.member_lease,
    };
    Ok((Some(Mutex::new(coordinator)), Some(member)))
}
