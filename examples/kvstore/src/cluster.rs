//! Cluster mode: a kvstore node runs the cluster coordinator or is a member of one, with
//! `layout_core::cluster` doing the coordination (see `docs/cluster-upgrade.md`).
//!
//! - The **coordinator node** serves its own data like any node, and also runs a
//!   [`Coordinator`] over a [`ClusterStore`] (the embedded store in a directory by
//!   default; etcd with the `etcd` feature), served to member processes by a
//!   [`CoordinatorServer`] on a loopback port (or, with the node's TLS, on any address,
//!   over TLS, requiring member certificates when the node names a client CA), behind
//!   the **cluster token** ([`ClusterConfig::with_cluster_token`]; a member without it
//!   is refused with 401 and never becomes a member). Its own layout takes part in the
//!   cluster:
//!   it finalizes first. Operators finalize the cluster through the coordinator node's
//!   HTTP API: `GET /cluster/status`, `POST /cluster/finalize`. These routes are guarded
//!   by the node's admin token ([`KvNodeConfig::with_admin`](super::KvNodeConfig::with_admin)):
//!   with one, every `/cluster/...` request needs `Authorization: Bearer <token>` (401
//!   `unauthorized` otherwise, compared as the admin endpoint does); without one,
//!   `POST /cluster/finalize` is refused (403 `forbidden`) and only the read-only
//!   `GET /cluster/status` is served.
//! - A **member node** registers with the coordinator at start-up (through an
//!   [`HttpLink`] presenting the cluster token, over TLS with
//!   [`ClusterConfig::with_link_tls`]) reporting its `(SLV, MLV)`, and heartbeats from a
//!   background thread. When the
//!   coordinator answers "finalize to V", the member finalizes its own node through its
//!   own [`UpgradeFinalizer`] (so its `OnFinalize` actions — the value-index migration —
//!   run), on a thread of its own ([`Member`] runs it in the background): heartbeats go on
//!   during a long migration, so the member stays live, and the node serves meanwhile.
//!
//! **The fence.** A member node enforces the coordinator's refusals itself: while the
//! coordinator refuses it (an old release after the cluster finalized, an excluded
//! member, a second process under its id, a disk ahead of the cluster), it refuses every
//! write (PUT, DELETE, CAS: 503, kind `fenced`, naming the refusal), and reads too with
//! [`FencedReads::Refuse`] (`--fenced-reads refuse`; default: reads are served). `/status`
//! shows the cause (`fenced`), `/metrics` the gauge `kvstore_fenced` (1 while fenced),
//! and the node logs it at error level once. It is checked at every heartbeat: the node
//! recovers by itself as soon as the coordinator accepts it again (logged at info level).
//! A member that cannot reach its coordinator (down, its store down, a partition) is
//! **not** fenced: only the coordinator's decision fences. Such a member starts and
//! serves anyway (with a warning), and registers when the coordinator answers again. A
//! member whose first registration is refused starts too, fenced. Only a member link
//! that can never work (the wrong cluster token: 401; not a coordinator's address) stops
//! the start.
//!
//! In cluster mode a node's own finalizer refuses a local finalization (condition
//! [`CLUSTER_CONDITION`]): finalizing one node alone would put it ahead of the cluster
//! (the coordinator refuses such a member). Only the cluster's instruction passes it, and
//! the condition cannot be overridden (an override naming it is refused, pointing to the
//! coordinator): an operator who must force the cluster past a member excludes it on the
//! coordinator (`Coordinator::exclude`, which records who and why).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use layout_core::cluster::{
    BeyondSoftware, Blocker, ClusterError, ClusterFinalizeOutcome, ClusterStatus, ClusterStore,
    Coordinator, CoordinatorDriver, CoordinatorLink, CoordinatorOptions, CoordinatorServer,
    EmbeddedStore, Exclusion, HeartbeatError, HttpLink, LocalLayout, Member, MemberError,
    MemberFence, MemberRole, MemberStep, MovePhase, MoveReport, MovingStore, StoreError,
};
use layout_core::finalizer::{condition, FinalizeCondition};
use layout_core::http::bearer_credentials;
use layout_core::http::BearerToken;
use layout_core::http::{ClientConfig, ClientTls, EndpointConfig, EndpointError, ServerTls};
use layout_core::BoxError;
use layout_core::{FinalizeRequest, LayoutFeature, LayoutVersionManager, UpgradeFinalizer};
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::KvError;
use super::feature::KvFeature;
use super::store::KvStore;

/// The component kind under which kvstore nodes are kept in the cluster store.
pub const CLUSTER_KIND: &str = "kvstore";

/// The finalize condition every node of a cluster has: a local finalization (the admin
/// endpoint, `layoutctl finalize`) is refused; only the cluster's instruction passes it.
pub const CLUSTER_CONDITION: &str = "kvstore-cluster-finalization";

/// How long a member waits for the coordinator's answer to a registration or heartbeat.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);

/// The file of the embedded cluster store, in [`ClusterStoreConfig::Embedded`]'s `dir`.
pub const CLUSTER_STATE_FILE: &str = "cluster-state";

/// Where the coordinator keeps the cluster state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterStoreConfig {
    /// The embedded store: one file ([`CLUSTER_STATE_FILE`]) in `dir`, locked by the
    /// coordinator's process. Needs no extra tool.
    Embedded {
        /// The directory.
        dir: PathBuf,
    },
    /// etcd (feature `etcd`): the cluster state under `prefix` on `endpoints`.
    #[cfg(feature = "etcd")]
    Etcd {
        /// The etcd client URLs (`http://127.0.0.1:2379`).
        endpoints: Vec<String>,
        /// The key prefix of this cluster (`/kvstore/my-cluster`).
        prefix: String,
    },
}

impl ClusterStoreConfig {
    fn open(&self) -> Result<Arc<dyn ClusterStore>, KvError> {
        match self {
            Self::Embedded { dir } => {
                let store = EmbeddedStore::open(dir.join(CLUSTER_STATE_FILE))
                    .map_err(|e| KvError::ClusterCoordinator(Box::new(e.into())))?;
                Ok(Arc::new(store))
            }
            #[cfg(feature = "etcd")]
            Self::Etcd { endpoints, prefix } => {
                let options =
                    layout_core::etcd::EtcdOptions::new(endpoints.iter().cloned(), prefix);
                let store = layout_core::cluster::EtcdStore::connect(options)
                    .map_err(|e| KvError::ClusterCoordinator(Box::new(e.into())))?;
                Ok(Arc::new(store))
            }
        }
    }
}

/// The file, in the coordinator node's directory, that keeps the new store of a store
/// move under way ([`KvMoveTarget`] as JSON), so a restarted coordinator resumes the move.
pub const CLUSTER_MOVE_FILE: &str = "cluster-move.json";

/// The new store of a store move, as `POST /cluster/move/begin` names it: an embedded
/// store's directory, or etcd endpoints and a key prefix (feature `etcd`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvMoveTarget {
    /// The embedded store's directory (the store is its [`CLUSTER_STATE_FILE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded_dir: Option<PathBuf>,
    /// The etcd client URLs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_endpoints: Vec<String>,
    /// The etcd key prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_prefix: Option<String>,
}

impl KvMoveTarget {
    /// An embedded store in `dir`.
    pub fn embedded(dir: impl Into<PathBuf>) -> Self {
        Self {
            embedded_dir: Some(dir.into()),
            ..Self::default()
        }
    }

    /// A store on etcd `endpoints` under `prefix`.
    pub fn etcd(endpoints: Vec<String>, prefix: impl Into<String>) -> Self {
        Self {
            etcd_endpoints: endpoints,
            etcd_prefix: Some(prefix.into()),
            ..Self::default()
        }
    }

    /// The store configuration it names; a message when it names none or two.
    pub fn config(&self) -> Result<ClusterStoreConfig, String> {
        match (
            &self.embedded_dir,
            &self.etcd_prefix,
            self.etcd_endpoints.is_empty(),
        ) {
            (Some(dir), None, true) => Ok(ClusterStoreConfig::Embedded { dir: dir.clone() }),
            #[cfg(feature = "etcd")]
            (None, Some(prefix), false) => Ok(ClusterStoreConfig::Etcd {
                endpoints: self.etcd_endpoints.clone(),
                prefix: prefix.clone(),
            }),
            #[cfg(not(feature = "etcd"))]
            (None, Some(_), false) => {
                Err("this kvstore was built without the etcd feature".to_owned())
            }
            _ => Err(
                "name the new store: either embedded_dir, or etcd_endpoints and etcd_prefix"
                    .to_owned(),
            ),
        }
    }
}

/// The part a node plays in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterRole {
    /// This node runs the coordinator, keeping the cluster state in `store` and serving
    /// members on [`ClusterConfig::link_host`]:`port` (0: any free port; see
    /// [`KvNode::coordinator_addr`](super::KvNode::coordinator_addr)).
    Coordinator {
        /// Where the cluster state lives.
        store: ClusterStoreConfig,
        /// The port members connect to.
        port: u16,
    },
    /// This node is a member of the cluster whose coordinator serves members at
    /// `coordinator`.
    Member {
        /// The coordinator's member address (`127.0.0.1:PORT`).
        coordinator: SocketAddr,
    },
}

/// What a fenced member node does with reads ([`ClusterConfig::with_fenced_reads`],
/// `--fenced-reads allow|refuse`). Writes are always refused while fenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FencedReads {
    /// Serve reads (GET, lists, by-value): the data is what this node had when it was
    /// fenced. The default.
    #[default]
    Allow,
    /// Refuse reads too (503 `fenced`), as writes.
    Refuse,
}

/// A member node's fence, as its store checks it: the member's [`MemberFence`], its id,
/// and what to do with reads.
#[derive(Debug, Clone)]
pub(crate) struct NodeFence {
    pub(crate) member_id: String,
    pub(crate) fence: MemberFence,
    pub(crate) reads: FencedReads,
}

impl NodeFence {
    /// `Err(KvError::Fenced)` while fenced.
    pub(crate) fn check(&self) -> Result<(), KvError> {
        if !self.fence.is_fenced() {
            return Ok(());
        }
        match self.fence.cause() {
            Some(cause) => Err(KvError::Fenced {
                member_id: self.member_id.clone(),
                refusal: Box::new(cause.refusal),
            }),
            None => Ok(()),
        }
    }

    /// The refusal's message while fenced.
    pub(crate) fn cause(&self) -> Option<String> {
        self.fence.cause().map(|c| c.refusal.to_string())
    }
}

/// A node's cluster configuration ([`KvNodeConfig::cluster`](super::KvNodeConfig::cluster)).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Coordinator or member.
    pub role: ClusterRole,
    /// This node's id, stable across restarts: its member id, or the coordinator's id.
    pub node_id: String,
    /// How often a member heartbeats. Default: 2 s.
    pub heartbeat_interval: Duration,
    /// How long a member stays live after a heartbeat (the coordinator's setting).
    /// Default: 10 s.
    pub member_lease_ttl: Duration,
    /// The cluster token: the coordinator serves the member link behind it, members
    /// present it. Separate from the admin token. Required: a node without one does not
    /// start in cluster mode. Default `None`.
    pub cluster_token: Option<BearerToken>,
    /// The address the coordinator serves the member link on (the port is the role's).
    /// Default 127.0.0.1; anything else needs the node's TLS
    /// ([`KvNodeConfig::with_tls`](super::KvNodeConfig::with_tls)), which the link is
    /// then served with (client certificates required when it names a client CA).
    pub link_host: std::net::IpAddr,
    /// A member's TLS for the link: the CA that signed the coordinator's certificate
    /// and, for a coordinator that requires one, the member's certificate. Without it
    /// a member speaks plain HTTP to the coordinator.
    pub link_tls: Option<ClientTls>,
    /// What a member does with reads while fenced. Default [`FencedReads::Allow`].
    pub fenced_reads: FencedReads,
}

impl ClusterConfig {
    /// This node, `node_id`, runs the coordinator with its state in `store`, serving
    /// members on an ephemeral loopback port (see [`with_link_host`](Self::with_link_host)).
    pub fn coordinator(node_id: impl Into<String>, store: ClusterStoreConfig) -> Self {
        Self {
            role: ClusterRole::Coordinator { store, port: 0 },
            node_id: node_id.into(),
            heartbeat_interval: Duration::from_secs(2),
            member_lease_ttl: Duration::from_secs(10),
            cluster_token: None,
            link_host: std::net::IpAddr::from([127, 0, 0, 1]),
            link_tls: None,
            fenced_reads: FencedReads::Allow,
        }
    }

    /// This node, `node_id`, is a member of the cluster whose coordinator serves members
    /// at `coordinator`.
    pub fn member(node_id: impl Into<String>, coordinator: SocketAddr) -> Self {
        Self {
            role: ClusterRole::Member { coordinator },
            node_id: node_id.into(),
            heartbeat_interval: Duration::from_secs(2),
            member_lease_ttl: Duration::from_secs(10),
            cluster_token: None,
            link_host: std::net::IpAddr::from([127, 0, 0, 1]),
            link_tls: None,
            fenced_reads: FencedReads::Allow,
        }
    }

    /// Serves members on `port` (coordinator only; a member ignores it).
    #[must_use]
    pub fn with_coordinator_port(mut self, port: u16) -> Self {
        if let ClusterRole::Coordinator { port: p, .. } = &mut self.role {
            *p = port;
        }
        self
    }

    /// Sets how often a member heartbeats.
    #[must_use]
    pub fn with_heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Sets how long a member stays live after a heartbeat (coordinator).
    #[must_use]
    pub fn with_member_lease_ttl(mut self, ttl: Duration) -> Self {
        self.member_lease_ttl = ttl;
        self
    }

    /// Serves the member link on `host` (coordinator; beyond loopback only with TLS).
    #[must_use]
    pub fn with_link_host(mut self, host: std::net::IpAddr) -> Self {
        self.link_host = host;
        self
    }

    /// Speaks TLS to the coordinator (member).
    #[must_use]
    pub fn with_link_tls(mut self, tls: ClientTls) -> Self {
        self.link_tls = Some(tls);
        self
    }

    /// Sets what a member does with reads while fenced (writes are always refused).
    #[must_use]
    pub fn with_fenced_reads(mut self, reads: FencedReads) -> Self {
        self.fenced_reads = reads;
        self
    }

    /// Sets the cluster token (the same on the coordinator and every member).
    #[must_use]
    pub fn with_cluster_token(mut self, token: BearerToken) -> Self {
        self.cluster_token = Some(token);
        self
    }
}

/// What a node in cluster mode without a cluster token is told.
const NO_CLUSTER_TOKEN: &str = "cluster mode needs a cluster token, the same on the \
     coordinator and every member (--cluster-token-file, --cluster-token or \
     $KVSTORE_CLUSTER_TOKEN; in Rust ClusterConfig::with_cluster_token): the coordinator \
     admits only members presenting it";

thread_local! {
    /// Set while this thread runs the cluster's finalization of a node
    /// ([`NodeLayout::finalize_to`]): the one thing that passes [`CLUSTER_CONDITION`].
    static CLUSTER_FINALIZING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread as running the cluster's finalization until dropped.
struct ClusterPass;

impl ClusterPass {
    fn enter() -> Self {
        CLUSTER_FINALIZING.with(|f| f.set(true));
        Self
    }
}

impl Drop for ClusterPass {
    fn drop(&mut self) {
        CLUSTER_FINALIZING.with(|f| f.set(false));
    }
}

/// A kvstore node's layout as the cluster sees it: finalized through the node's own
/// [`UpgradeFinalizer`] (its actions run); [`CLUSTER_CONDITION`] passes because the
/// cluster asks (the condition cannot be overridden).
struct NodeLayout {
    finalizer: Arc<UpgradeFinalizer<KvFeature, KvStore>>,
    store: Arc<KvStore>,
}

impl LocalLayout for NodeLayout {
    fn software_layout_version(&self) -> u32 {
        self.finalizer.layout_manager().software_layout_version()
    }

    fn metadata_layout_version(&self) -> u32 {
        self.finalizer.layout_manager().metadata_layout_version()
    }

    fn finalize_to(&self, version: u32, client_id: &str) -> Result<u32, BoxError> {
        let manager = self.finalizer.layout_manager();
        if manager.metadata_layout_version() >= version {
            return Ok(manager.metadata_layout_version());
        }
        let slv = manager.software_layout_version();
        let target = KvFeature::from_layout_version(version)
            .filter(|f| f.layout_version() <= slv)
            .ok_or_else(|| {
                Box::new(BeyondSoftware {
                    catalog: KvFeature::CATALOG_NAME,
                    requested: version,
                    software_layout_version: slv,
                }) as BoxError
            })?;
        let request = FinalizeRequest::new(client_id)
            .with_target(target)
            .with_takeover(true);
        let _pass = ClusterPass::enter();
        let outcome = self.finalizer.finalize_with(request, &self.store)?;
        Ok(outcome.metadata_layout_version())
    }
}

/// [`CLUSTER_CONDITION`] of a cluster node's finalizer: it fails unless the cluster's
/// coordinator is finalizing this node, and an override of it is refused.
pub(crate) fn cluster_condition(role: &ClusterRole) -> impl FinalizeCondition<KvStore> {
    let reason = match role {
        ClusterRole::Coordinator { .. } => "this node runs the kvstore cluster's coordinator: \
             finalize the whole cluster with POST /cluster/finalize on this node's HTTP API, \
             with this node's admin token (it finalizes this node first, then every member)"
            .to_owned(),
        ClusterRole::Member { coordinator } => format!(
            "this node is a member of the kvstore cluster coordinated at {coordinator}: \
             finalize the whole cluster with POST /cluster/finalize on the coordinator node's \
             HTTP API, with its admin token; this node finalizes when the coordinator tells it to"
        ),
    };
    let no_override = format!(
        "{reason}. The cluster-finalization condition is never overridden on a node: an \
         operator who needs to force the cluster past a member excludes that member on the \
         coordinator, which records who and why"
    );
    condition(CLUSTER_CONDITION, move |_: &KvStore| {
        if CLUSTER_FINALIZING.with(std::cell::Cell::get) {
            Ok(())
        } else {
            Err(reason.clone().into())
        }
    })
    .not_overridable(no_override)
}

/// A node's running cluster part.
pub(crate) enum ClusterRuntime {
    Coordinator {
        coordinator: Arc<Coordinator>,
        server: CoordinatorServer,
        /// Resumes an unfinished finalization and advances checkpoints on its own.
        driver: CoordinatorDriver,
    },
    Member(MemberRuntime),
}

pub(crate) struct MemberRuntime {
    member: Arc<Mutex<Member>>,
    link: Arc<HttpLink>,
    /// The coordinator's member address.
    coordinator: SocketAddr,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl ClusterRuntime {
    /// Starts the node's cluster part: opens the coordinator (catching its own layout
    /// up with the cluster) and serves it, or registers the member (following the
    /// answer: a late member starts finalizing in the background), guards the store
    /// with its fence, and starts its heartbeats. A member whose coordinator is
    /// unreachable, or refuses it, starts anyway (see the module docs).
    ///
    /// `admin_token` guards the coordinator node's `/cluster/...` routes (see the module
    /// docs); without it, `POST /cluster/finalize` is refused. A coordinator serves the
    /// member link with `tls` when the node has it.
    /// `dir` is the node's directory: a coordinator keeps the new store of a store move
    /// under way there ([`CLUSTER_MOVE_FILE`]) and resumes the move when it starts.
    pub(crate) fn start(
        config: &ClusterConfig,
        finalizer: &Arc<UpgradeFinalizer<KvFeature, KvStore>>,
        store: &Arc<KvStore>,
        admin_token: Option<&BearerToken>,
        tls: Option<&ServerTls>,
        dir: &Path,
    ) -> Result<Self, KvError> {
        let token = config
            .cluster_token
            .clone()
            .ok_or_else(|| KvError::Cluster(NO_CLUSTER_TOKEN.to_owned()))?;
        let layout: Arc<dyn LocalLayout> = Arc::new(NodeLayout {
            finalizer: Arc::clone(finalizer),
            store: Arc::clone(store),
        });
        match &config.role {
            ClusterRole::Coordinator {
                store: store_config,
                port,
            } => {
                let options = CoordinatorOptions::default()
                    .with_coordinator_id(config.node_id.clone())
                    .with_member_lease_ttl(config.member_lease_ttl)
                    .with_local(CLUSTER_KIND, layout);
                let mover = Arc::new(StoreMover::open(store_config, dir.join(CLUSTER_MOVE_FILE))?);
                let coordinator = Arc::new(
                    Coordinator::open(Arc::clone(&mover.moving) as Arc<dyn ClusterStore>, options)
                        .map_err(|e| KvError::ClusterCoordinator(Box::new(e)))?,
                );
                let addr = SocketAddr::new(config.link_host, *port);
                let mut link_config = EndpointConfig::new(addr);
                if let Some(tls) = tls {
                    link_config = link_config.with_tls(tls.clone());
                }
                let server = CoordinatorServer::start(Arc::clone(&coordinator), token, link_config)
                    .map_err(|e| match e {
                        EndpointError::Bind { addr, source } => KvError::Listen { addr, source },
                        other => KvError::Cluster(format!(
                            "cannot serve the member link on {addr}: {other}"
                        )),
                    })?;
                if admin_token.is_none() {
                    tracing::warn!(
                        id = %config.node_id,
                        "this coordinator node has no admin token: POST /cluster/finalize is refused (403); configure an admin token to finalize the cluster"
                    );
                }
                store.set_cluster_routes(Arc::new(CoordinatorRoutes {
                    coordinator: Arc::clone(&coordinator),
                    manager: Arc::clone(store.manager()),
                    admin_token: admin_token.cloned(),
                    mover,
                }));
                let driver = coordinator
                    .spawn_driver(config.heartbeat_interval)
                    .map_err(|e| {
                        KvError::Cluster(format!("cannot start the coordinator's driver: {e}"))
                    })?;
                tracing::info!(id = %config.node_id, members = %server.local_addr(), "kvstore cluster coordinator started");
                Ok(Self::Coordinator {
                    coordinator,
                    server,
                    driver,
                })
            }
            ClusterRole::Member { coordinator } => {
                let mut link_config = ClientConfig::new(LINK_TIMEOUT);
                if let Some(tls) = &config.link_tls {
                    link_config = link_config.with_tls(tls.clone());
                }
                let link = HttpLink::new(&coordinator.to_string(), token, link_config)
                    .map_err(|e| KvError::Cluster(e.to_string()))?;
                let link = Arc::new(link);
                let mut member = Member::new(CLUSTER_KIND, config.node_id.clone(), layout);
                store.set_fence(NodeFence {
                    member_id: config.node_id.clone(),
                    fence: member.fence(),
                    reads: config.fenced_reads,
                });
                register_at_start(&mut member, &*link, config, *coordinator)?;
                let member = Arc::new(Mutex::new(member));
                let stop = Arc::new((Mutex::new(false), Condvar::new()));
                let thread = {
                    let member = Arc::clone(&member);
                    let link = Arc::clone(&link);
                    let stop = Arc::clone(&stop);
                    let interval = config.heartbeat_interval;
                    std::thread::Builder::new()
                        .name(format!("kvstore-heartbeat-{}", config.node_id))
                        .spawn(move || heartbeat_loop(&member, &link, &stop, interval))
                        .map_err(|e| {
                            KvError::Cluster(format!("cannot start the heartbeat thread: {e}"))
                        })?
                };
                Ok(Self::Member(MemberRuntime {
                    member,
                    link,
                    coordinator: *coordinator,
                    stop,
                    thread: Some(thread),
                }))
            }
        }
    }

    pub(crate) fn coordinator(&self) -> Option<&Arc<Coordinator>> {
        match self {
            Self::Coordinator { coordinator, .. } => Some(coordinator),
            Self::Member(_) => None,
        }
    }

    pub(crate) fn coordinator_addr(&self) -> SocketAddr {
        match self {
            Self::Coordinator { server, .. } => server.local_addr(),
            Self::Member(m) => m.coordinator,
        }
    }

    /// A member's heartbeat, now (following the answer). When it starts a local
    /// finalization, waits for it (without holding up the heartbeat thread), then
    /// heartbeats again to report it: the step returned has `finalized_to`.
    pub(crate) fn heartbeat(&self) -> Option<Result<MemberStep, KvError>> {
        let Self::Member(m) = self else { return None };
        let beat = || {
            let mut member = m.member.lock();
            let id = member.member_id().to_owned();
            member
                .heartbeat(&*m.link)
                .map_err(|e| member_error(&id, m.coordinator, e))
        };
        match beat() {
            Ok(step) if step.finalizing.is_some() => {}
            other => return Some(other),
        }
        while m.member.lock().finalizing().is_some() {
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(beat())
    }

    /// A member's fence (`None` on a coordinator).
    pub(crate) fn fence(&self) -> Option<MemberFence> {
        match self {
            Self::Member(m) => Some(m.member.lock().fence()),
            Self::Coordinator { .. } => None,
        }
    }

    /// Stops the heartbeats (waiting for one in flight, and a finalization it runs), or
    /// stops serving members.
    pub(crate) fn stop(self) {
        match self {
            Self::Coordinator { server, driver, .. } => {
                drop(driver);
                drop(server);
            }
            Self::Member(mut m) => {
                *m.stop.0.lock() = true;
                m.stop.1.notify_all();
                if let Some(thread) = m.thread.take() {
                    let _ = thread.join();
                }
                let mut member = m.member.lock();
                // A local finalization still running holds the store: let it finish.
                if let Some(version) = member.finalizing() {
                    tracing::info!(id = %member.member_id(), version, "stopping: waiting for the local finalization to finish");
                    while !member.wait_for_finalization(Duration::from_secs(60)) {
                        tracing::info!(id = %member.member_id(), version, "stopping: still waiting for the local finalization");
                    }
                }
                // A clean shutdown: the next process under this id is accepted at once.
                if let Err(e) = member.leave(&*m.link) {
                    tracing::warn!(id = %member.member_id(), error = %e, "could not tell the coordinator this member is leaving; a restart within the member lease waits for it to lapse");
                }
            }
        }
    }
}

/// A member's first registration: started registered, fenced (refused: the member logged
/// it), or neither (the coordinator is unreachable: the heartbeats register it later).
/// Only a link that can never work (401, 400) stops the start.
fn register_at_start(
    member: &mut Member,
    link: &dyn CoordinatorLink,
    config: &ClusterConfig,
    coordinator: SocketAddr,
) -> Result<(), KvError> {
    match member.register_waiting(link, config.member_lease_ttl * 2, config.heartbeat_interval) {
        Ok(registered) => tracing::info!(
            id = %config.node_id,
            coordinator = %coordinator,
            cluster_layout_version = registered.answer.cluster_layout_version,
            finalizing = ?registered.finalizing,
            "kvstore member registered"
        ),
        Err(MemberError::Heartbeat(HeartbeatError::Refused(refusal))) => {
            tracing::error!(id = %config.node_id, coordinator = %coordinator, %refusal, "kvstore member starts fenced: the coordinator refused it; it refuses writes until the coordinator accepts it");
        }
        Err(MemberError::Heartbeat(HeartbeatError::Unavailable { reason })) => {
            tracing::warn!(id = %config.node_id, coordinator = %coordinator, %reason, "kvstore member starts without its coordinator (unreachable or without its store): it serves, not fenced, and registers when the coordinator answers");
        }
        Err(e) => return Err(member_error(&config.node_id, coordinator, e)),
    }
    Ok(())
}

fn member_error(member_id: &str, coordinator: SocketAddr, e: MemberError) -> KvError {
    KvError::ClusterMember {
        member_id: member_id.to_owned(),
        coordinator,
        source: Box::new(e),
    }
}

fn heartbeat_loop(
    member: &Mutex<Member>,
    link: &HttpLink,
    stop: &(Mutex<bool>, Condvar),
    interval: Duration,
) {
    loop {
        {
            let mut stopped = stop.0.lock();
            if !*stopped {
                let _ = stop.1.wait_for(&mut stopped, interval);
            }
            if *stopped {
                return;
            }
        }
        // A heartbeat never waits for a finalization (it runs on the member's own
        // thread): the member stays live through a long migration.
        let mut member = member.lock();
        match member.heartbeat(link) {
            Ok(beat) => {
                if let Some(mlv) = beat.finalized_to {
                    tracing::info!(
                        member = member.member_id(),
                        mlv,
                        "finalized as the coordinator instructed"
                    );
                }
            }
            // The member logged the fence (once, at error level); no warning per beat.
            Err(e) if e.refusal().is_some() => {
                tracing::debug!(member = member.member_id(), error = %e, "refused by the coordinator: fenced");
            }
            Err(e @ MemberError::LocalFinalize { .. }) => {
                tracing::error!(member = member.member_id(), error = %e, "the local finalization the coordinator asked for failed; it is retried at its next instruction");
            }
            Err(e) => {
                tracing::warn!(member = member.member_id(), error = %e, "kvstore heartbeat failed; retrying at the next interval");
            }
        }
    }
}

impl fmt::Debug for ClusterRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Coordinator { server, .. } => f
                .debug_struct("Coordinator")
                .field("members", &server.local_addr())
                .finish_non_exhaustive(),
            Self::Member(m) => f
                .debug_struct("Member")
                .field("coordinator", &m.link.endpoint())
                .finish_non_exhaustive(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The coordinator node's HTTP routes and their JSON.

/// A member in [`KvClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvClusterMember {
    /// The member's id.
    pub member_id: String,
    /// Its SLV, as last reported.
    pub software_layout_version: u32,
    /// Its MLV, as last reported.
    pub metadata_layout_version: u32,
    /// Whether its lease is current.
    pub live: bool,
    /// The operator's exclusion reason, if excluded.
    pub excluded: Option<String>,
    /// The whole exclusion (who, when, the SLV it needs to rejoin), if excluded.
    #[serde(default)]
    pub exclusion: Option<KvClusterExclusion>,
}

/// A member's exclusion: `POST /cluster/exclude`'s answer, and in [`KvClusterMember`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvClusterExclusion {
    /// The member.
    pub member_id: String,
    /// The operator's reason.
    pub reason: String,
    /// Who excluded it (the request's `client_id`).
    pub excluded_by: String,
    /// When (Unix milliseconds).
    pub at_ms: u64,
    /// The member's SLV when excluded.
    pub software_layout_version: u32,
    /// The SLV it needs to rejoin.
    pub required_software_layout_version: u32,
}

impl KvClusterExclusion {
    fn of(member_id: &str, x: &Exclusion) -> Self {
        Self {
            member_id: member_id.to_owned(),
            reason: x.reason.clone(),
            excluded_by: x.excluded_by.clone(),
            at_ms: x.at_ms,
            software_layout_version: x.software_layout_version,
            required_software_layout_version: x.required_software_layout_version,
        }
    }
}

/// `GET /cluster/move` (and the answer of every `POST /cluster/move/...`): where the
/// coordinator's store move stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvClusterMove {
    /// `current` (no move), `dual-publishing` or `switched`.
    pub phase: String,
    /// The move's id, once begun.
    pub id: Option<String>,
    /// The store the coordinator was started on.
    pub from: String,
    /// The new store, once begun.
    pub to: Option<String>,
    /// The persisted stage (`copying`, `dual-publishing`, `switched`, `rolled-back`).
    pub stage: Option<String>,
    /// Who began it.
    pub by: Option<String>,
    /// When it began (Unix milliseconds).
    pub started_at_ms: Option<u64>,
    /// The mirror fell behind: the switch (or catch-up) recopies.
    pub behind: bool,
    /// Mirrored writes queued for the new store.
    pub pending: u64,
    /// The differences found by a verify, catch-up or switch (empty: caught up).
    #[serde(default)]
    pub differences: Vec<String>,
}

/// `GET /cluster/status` on the coordinator node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvClusterStatus {
    /// The component kind ([`CLUSTER_KIND`]).
    pub kind: String,
    /// The coordinator's id.
    pub coordinator_id: String,
    /// The cluster's finalized layout version (the cluster MLV).
    pub cluster_layout_version: u32,
    /// The coordinator node's own SLV.
    pub coordinator_software_layout_version: u32,
    /// The coordinator node's own MLV.
    pub coordinator_metadata_layout_version: u32,
    /// The target of the finalization in progress or the last one.
    pub target: Option<u32>,
    /// Its checkpoint (`started`, `coordinator finalized`, `members finalized`,
    /// `complete`).
    pub checkpoint: Option<String>,
    /// Whether the last finalization is complete (or none ever ran).
    pub complete: bool,
    /// Every member node, sorted by id (the coordinator, also in the cluster's membership,
    /// is described by the fields above).
    pub members: Vec<KvClusterMember>,
}

impl KvClusterStatus {
    /// A member by id.
    pub fn member(&self, member_id: &str) -> Option<&KvClusterMember> {
        self.members.iter().find(|m| m.member_id == member_id)
    }

    fn of(status: &ClusterStatus, coordinator: &Coordinator, local: (u32, u32)) -> Self {
        Self {
            kind: status.kind.clone(),
            coordinator_id: coordinator.coordinator_id().to_owned(),
            cluster_layout_version: status.cluster_layout_version,
            coordinator_software_layout_version: local.0,
            coordinator_metadata_layout_version: local.1,
            target: status.finalization.as_ref().map(|f| f.target),
            checkpoint: status.checkpoint().map(|c| c.to_string()),
            complete: status.is_complete(),
            members: status
                .members
                .iter()
                .filter(|m| m.role == MemberRole::Member)
                .map(|m| KvClusterMember {
                    member_id: m.member_id.clone(),
                    software_layout_version: m.software_layout_version,
                    metadata_layout_version: m.metadata_layout_version,
                    live: m.live,
                    excluded: m.excluded.as_ref().map(|x| x.reason.clone()),
                    exclusion: m
                        .excluded
                        .as_ref()
                        .map(|x| KvClusterExclusion::of(&m.member_id, x)),
                })
                .collect(),
        }
    }
}

/// A member that blocks a cluster finalization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvClusterBlocker {
    /// The member.
    pub member_id: String,
    /// Its SLV (below the target).
    pub software_layout_version: u32,
    /// Whether it is live.
    pub live: bool,
}

impl From<&Blocker> for KvClusterBlocker {
    fn from(b: &Blocker) -> Self {
        Self {
            member_id: b.member_id.clone(),
            software_layout_version: b.software_layout_version,
            live: b.live,
        }
    }
}

/// `POST /cluster/finalize` on the coordinator node: what the finalization did (or, for
/// a dry run, would meet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvClusterFinalize {
    /// Whether this was a dry run (nothing changed).
    pub dry_run: bool,
    /// `finalized` (this call finalized the coordinator and raised the cluster's
    /// version), `already_finalized`, `dry_run`, or `in_progress` (HTTP 202: the
    /// finalization runs on; it did not end within the request's wait; follow
    /// `GET /cluster/status`).
    pub outcome: String,
    /// The target.
    pub target: u32,
    /// The cluster's finalized version after the call.
    pub cluster_layout_version: u32,
    /// The checkpoint reached.
    pub checkpoint: Option<String>,
    /// Members still to finalize (they do on their next heartbeat, or when they start).
    pub pending_members: Vec<String>,
    /// Dry run: the members that would block the target (empty: it would go ahead).
    pub blockers: Vec<KvClusterBlocker>,
}

/// The body of `POST /cluster/finalize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FinalizeBody {
    client_id: String,
    #[serde(default)]
    target: Option<u32>,
    #[serde(default)]
    dry_run: bool,
}

/// The `/cluster/...` routes of a node's HTTP API.
pub(crate) trait ClusterRoutes: Send + Sync {
    /// Answers `method` on `/cluster/{path}`, sent with the `Authorization` header values
    /// `authorization` (every one, in order): status and JSON body.
    fn route(
        &self,
        method: &str,
        path: &str,
        authorization: &[String],
        body: &[u8],
    ) -> (u16, Value);
}

struct CoordinatorRoutes {
    coordinator: Arc<Coordinator>,
    manager: Arc<LayoutVersionManager<KvFeature>>,
    /// The node's admin token: required on every `/cluster/...` request when set; when
    /// `None`, every `POST /cluster/...` is refused.
    admin_token: Option<BearerToken>,
    /// The coordinator's store and its moves.
    mover: Arc<StoreMover>,
}

/// The coordinator node's store: a [`MovingStore`] on the configured store, and the new
/// store of a move under way (kept in [`CLUSTER_MOVE_FILE`] to resume it after a
/// restart).
struct StoreMover {
    moving: Arc<MovingStore>,
    configured: ClusterStoreConfig,
    file: PathBuf,
    target: Mutex<Option<(KvMoveTarget, Arc<dyn ClusterStore>)>>,
}

fn store_error(e: StoreError) -> KvError {
    KvError::ClusterCoordinator(Box::new(e.into()))
}

impl StoreMover {
    /// Opens the configured store and resumes the move [`CLUSTER_MOVE_FILE`] names.
    fn open(configured: &ClusterStoreConfig, file: PathBuf) -> Result<Self, KvError> {
        let current = configured.open()?;
        let mut target = None;
        let saved: Option<KvMoveTarget> =
            match std::fs::read(&file) {
                Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                    KvError::Cluster(format!("{} is unreadable: {e}", file.display()))
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => {
                    return Err(KvError::Io {
                        context: "cannot read the store move file",
                        path: file,
                        source,
                    })
                }
            };
        let moving = match saved {
            Some(saved) => {
                let config = saved.config().map_err(KvError::Cluster)?;
                if config == *configured {
                    // The operator pointed the coordinator at the new store: done.
                    let _ = std::fs::remove_file(&file);
                    MovingStore::open(current, None).map_err(store_error)?
                } else {
                    let next = config.open()?;
                    let moving =
                        MovingStore::open(current, Some(Arc::clone(&next))).map_err(store_error)?;
                    if moving.phase() == MovePhase::Current {
                        let _ = std::fs::remove_file(&file);
                    } else {
                        if moving.phase() == MovePhase::Switched {
                            tracing::warn!(to = %next.location(), "the cluster state was moved: point this coordinator's configuration at the new store");
                        }
                        target = Some((saved, next));
                    }
                    moving
                }
            }
            None => MovingStore::open(current, None).map_err(store_error)?,
        };
        Ok(Self {
            moving: Arc::new(moving),
            configured: configured.clone(),
            file,
            target: Mutex::new(target),
        })
    }

    fn status(&self, report: Option<MoveReport>) -> (u16, Value) {
        match self.moving.status() {
            Ok(status) => {
                let record = status.record.as_ref();
                answer(&KvClusterMove {
                    phase: match status.phase {
                        MovePhase::Current => "current",
                        MovePhase::DualPublishing => "dual-publishing",
                        MovePhase::Switched => "switched",
                    }
                    .to_owned(),
                    id: status.id.clone().or_else(|| record.map(|r| r.id.clone())),
                    from: status.from.clone(),
                    to: status.to.clone(),
                    stage: record.map(|r| r.stage.to_string()),
                    by: record.map(|r| r.by.clone()),
                    started_at_ms: record.map(|r| r.started_at_ms),
                    behind: report.as_ref().map_or(status.behind, |r| r.behind),
                    pending: status.pending,
                    differences: report.map(|r| r.differences).unwrap_or_default(),
                })
            }
            Err(e) => move_error(&e),
        }
    }

    fn begin(&self, body: &[u8]) -> (u16, Value) {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Begin {
            client_id: String,
            to: KvMoveTarget,
        }
        let body: Begin = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => return error(400, "bad_request", &format!("malformed JSON body: {e}")),
        };
        if body.client_id.trim().is_empty() {
            return error(400, "bad_request", "client_id must not be empty");
        }
        let config = match body.to.config() {
            Ok(c) => c,
            Err(e) => return error(400, "bad_request", &e),
        };
        if config == self.configured {
            return error(
                400,
                "bad_request",
                "the new store is the store this coordinator runs on",
            );
        }
        let mut target = self.target.lock();
        let next = match &*target {
            Some((saved, next)) if *saved == body.to => Arc::clone(next),
            Some((saved, _)) => {
                return error(
                    409,
                    "move_refused",
                    &format!(
                        "a move to another store ({saved:?}) is under way: switch or roll it                          back first"
                    ),
                )
            }
            None => match config.open() {
                Ok(next) => next,
                Err(e) => return error(503, "store_unavailable", &e.to_string()),
            },
        };
        if let Err(e) = write_atomically(&self.file, &body.to) {
            return error(500, "internal", &e);
        }
        *target = Some((body.to.clone(), Arc::clone(&next)));
        match self.moving.begin_as(next, &body.client_id) {
            Ok(()) => {
                drop(target);
                self.status(None)
            }
            Err(e) => {
                if self.moving.phase() == MovePhase::Current {
                    *target = None;
                    let _ = std::fs::remove_file(&self.file);
                }
                move_error(&e)
            }
        }
    }

    fn switch(&self) -> (u16, Value) {
        match self.moving.switch() {
            Ok(report) => self.status(Some(report)),
            Err(e) => move_error(&e),
        }
    }

    fn catch_up(&self) -> (u16, Value) {
        match self.moving.catch_up() {
            Ok(report) => self.status(Some(report)),
            Err(e) => move_error(&e),
        }
    }

    fn verify(&self) -> (u16, Value) {
        match self.moving.verify() {
            Ok(report) => self.status(Some(report)),
            Err(e) => move_error(&e),
        }
    }

    fn rollback(&self) -> (u16, Value) {
        match self.moving.rollback() {
            Ok(()) => {
                *self.target.lock() = None;
                let _ = std::fs::remove_file(&self.file);
                self.status(None)
            }
            Err(e) => move_error(&e),
        }
    }
}

/// Writes `value` as JSON to `path` durably ([`layout_core::durable::replace`]).
fn write_atomically(path: &Path, value: &impl Serialize) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| e.to_string())?;
    layout_core::durable::replace(path, &bytes)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn move_error(e: &StoreError) -> (u16, Value) {
    match e {
        StoreError::Move { .. } => error(409, "move_refused", &e.to_string()),
        _ => error(503, "store_unavailable", &e.to_string()),
    }
}

/// The body of `POST /cluster/exclude`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExcludeBody {
    client_id: String,
    member: String,
    reason: String,
}

/// How long `POST /cluster/finalize` waits for the finalization (running on a thread of
/// its own) before it answers `in_progress` (202).
const FINALIZE_ANSWER_WAIT: Duration = Duration::from_secs(10);

/// The answer to `POST /cluster/finalize` on a coordinator node without an admin token.
const NO_ADMIN_TOKEN: &str = "this coordinator node has no admin token, so it does not \
     finalize the cluster over HTTP (anyone reaching the data port could otherwise make \
     downgrade impossible): restart it with an admin token (--admin-listen with \
     --admin-token-file, --admin-token or $KVSTORE_ADMIN_TOKEN; in Rust \
     KvNodeConfig::with_admin) and send Authorization: Bearer <token>";

/// Checks the `Authorization` header values of a `/cluster/...` request against the
/// node's admin token, as the admin endpoint does: exactly one header, the Bearer scheme,
/// the token compared in constant time ([`BearerToken::matches`]). Anything else is 401
/// `unauthorized`.
fn authorize(token: &BearerToken, authorization: &[String]) -> Result<(), (u16, Value)> {
    let unauthorized = |message: &str| error(401, "unauthorized", message);
    let value =
        match authorization {
            [value] => value,
            [] => return Err(unauthorized(
                "a bearer token is required: send Authorization: Bearer <the node's admin token>",
            )),
            _ => {
                return Err(unauthorized(
                    "send exactly one Authorization header, not several",
                ))
            }
        };
    let Some(presented) = bearer_credentials(value) else {
        return Err(unauthorized(
            "the Authorization header must use the Bearer scheme",
        ));
    };
    if token.matches(presented) {
        Ok(())
    } else {
        Err(unauthorized("the bearer token is wrong"))
    }
}

fn error(status: u16, kind: &str, message: &str) -> (u16, Value) {
    (status, json!({"error": {"kind": kind, "message": message}}))
}

fn cluster_error(e: &ClusterError) -> (u16, Value) {
    let message = e.to_string();
    match e {
        ClusterError::Blocked { blockers, .. } => {
            let blockers: Vec<KvClusterBlocker> = blockers.iter().map(Into::into).collect();
            (
                409,
                json!({"error": {"kind": "blocked", "message": message, "blockers": blockers}}),
            )
        }
        ClusterError::InProgress { .. } | ClusterError::DifferentTargetInProgress { .. } => {
            error(409, "in_progress", &message)
        }
        ClusterError::CoordinatorSoftwareTooOld { .. } => {
            error(409, "coordinator_software_too_old", &message)
        }
        ClusterError::LocalFinalize { .. } => error(500, "local_finalize", &message),
        ClusterError::ExclusionNeedsReason { .. } => error(400, "bad_request", &message),
        ClusterError::UnknownMember { .. } | ClusterError::UnknownKind { .. } => {
            error(404, "unknown_member", &message)
        }
        ClusterError::MemberIsLive { .. } => error(409, "member_is_live", &message),
        ClusterError::LivenessNotKnownYet { .. } => error(409, "liveness_not_known_yet", &message),
        _ => {
            tracing::warn!(error = %message, "cluster request failed");
            error(500, "cluster", &message)
        }
    }
}

fn checkpoint_of(coordinator: &Coordinator) -> Option<String> {
    coordinator
        .status(CLUSTER_KIND)
        .ok()
        .and_then(|s| s.checkpoint())
        .map(|c| c.to_string())
}

impl CoordinatorRoutes {
    fn local(&self) -> (u32, u32) {
        (
            self.manager.software_layout_version(),
            self.manager.metadata_layout_version(),
        )
    }

    fn finalize(&self, body: &[u8]) -> (u16, Value) {
        let body: FinalizeBody = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => return error(400, "bad_request", &format!("malformed JSON body: {e}")),
        };
        if body.client_id.trim().is_empty() {
            return error(400, "bad_request", "client_id must not be empty");
        }
        let c = &self.coordinator;
        if body.dry_run {
            return match c.dry_run(CLUSTER_KIND, body.target) {
                Ok((target, blockers)) => {
                    let cluster = c
                        .status(CLUSTER_KIND)
                        .map_or(0, |s| s.cluster_layout_version);
                    answer(&KvClusterFinalize {
                        dry_run: true,
                        outcome: "dry_run".to_owned(),
                        target,
                        cluster_layout_version: cluster,
                        checkpoint: checkpoint_of(c),
                        pending_members: Vec::new(),
                        blockers: blockers.iter().map(Into::into).collect(),
                    })
                }
                Err(e) => cluster_error(&e),
            };
        }
        // The finalization runs on a thread of its own; the request waits for it a bounded
        // time and answers `in_progress` (202) beyond it (follow `GET /cluster/status`).
        let job = match c.start_finalize(CLUSTER_KIND, body.target, &body.client_id) {
            Ok(job) => job,
            Err(e) => return cluster_error(&e),
        };
        let Some(outcome) = job.wait(FINALIZE_ANSWER_WAIT) else {
            let cluster = c
                .status(CLUSTER_KIND)
                .map_or(0, |s| s.cluster_layout_version);
            let (status, body) = answer(&KvClusterFinalize {
                dry_run: false,
                outcome: "in_progress".to_owned(),
                target: job.target(),
                cluster_layout_version: cluster,
                checkpoint: checkpoint_of(c),
                pending_members: Vec::new(),
                blockers: Vec::new(),
            });
            return (if status == 200 { 202 } else { status }, body);
        };
        match outcome {
            Ok(ClusterFinalizeOutcome::Finalized {
                target,
                checkpoint,
                pending_members,
            }) => answer(&KvClusterFinalize {
                dry_run: false,
                outcome: "finalized".to_owned(),
                target,
                cluster_layout_version: target,
                checkpoint: Some(checkpoint.to_string()),
                pending_members,
                blockers: Vec::new(),
            }),
            Ok(ClusterFinalizeOutcome::AlreadyFinalized {
                cluster_layout_version,
            }) => answer(&KvClusterFinalize {
                dry_run: false,
                outcome: "already_finalized".to_owned(),
                target: cluster_layout_version,
                cluster_layout_version,
                checkpoint: checkpoint_of(c),
                pending_members: c
                    .status(CLUSTER_KIND)
                    .map(|s| {
                        s.members
                            .iter()
                            .filter(|m| {
                                m.excluded.is_none()
                                    && m.metadata_layout_version < cluster_layout_version
                            })
                            .map(|m| m.member_id.clone())
                            .collect()
                    })
                    .unwrap_or_default(),
                blockers: Vec::new(),
            }),
            Err(e) => cluster_error(&e),
        }
    }
}

impl CoordinatorRoutes {
    fn exclude(&self, body: &[u8]) -> (u16, Value) {
        let body: ExcludeBody = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => return error(400, "bad_request", &format!("malformed JSON body: {e}")),
        };
        if body.client_id.trim().is_empty() {
            return error(400, "bad_request", "client_id must not be empty");
        }
        match self
            .coordinator
            .exclude(CLUSTER_KIND, &body.member, &body.reason, &body.client_id)
        {
            Ok(exclusion) => answer(&KvClusterExclusion::of(&body.member, &exclusion)),
            Err(e) => cluster_error(&e),
        }
    }
}

fn answer<T: Serialize>(value: &T) -> (u16, Value) {
    match serde_json::to_value(value) {
        Ok(v) => (200, v),
        Err(e) => error(500, "internal", &format!("cannot encode the answer: {e}")),
    }
}

impl ClusterRoutes for CoordinatorRoutes {
    fn route(
        &self,
        method: &str,
        path: &str,
        authorization: &[String],
        body: &[u8],
    ) -> (u16, Value) {
        if let Some(token) = &self.admin_token {
            if let Err(refused) = authorize(token, authorization) {
                return refused;
            }
        }
        match (method, path) {
            ("GET", "status") => match self.coordinator.status(CLUSTER_KIND) {
                Ok(status) => answer(&KvClusterStatus::of(
                    &status,
                    &self.coordinator,
                    self.local(),
                )),
                Err(e) => cluster_error(&e),
            },
            ("GET", "move") => self.mover.status(None),
            ("POST", _) if self.admin_token.is_none() => error(403, "forbidden", NO_ADMIN_TOKEN),
            ("POST", "finalize") => self.finalize(body),
            ("POST", "exclude") => self.exclude(body),
            ("POST", "move/begin") => self.mover.begin(body),
            ("POST", "move/verify") => self.mover.verify(),
            ("POST", "move/catch-up") => self.mover.catch_up(),
            ("POST", "move/switch") => self.mover.switch(),
            ("POST", "move/rollback") => self.mover.rollback(),
            (
                _,
                "status" | "finalize" | "exclude" | "move" | "move/begin" | "move/verify"
                | "move/catch-up" | "move/switch" | "move/rollback",
            ) => error(
                405,
                "method_not_allowed",
                &format!("{method} is not allowed on \"/cluster/{path}\""),
            ),
            _ => error(
                404,
                "not_found",
                &format!("no such path \"/cluster/{path}\""),
            ),
        }
    }
}
