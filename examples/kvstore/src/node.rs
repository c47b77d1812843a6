//! [`KvNode`]: a standalone kvstore service — manager, store, finalizer, admin
//! endpoint, and the HTTP API's TLS and `/metrics`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use layout_core::admin::http::{AdminServer, HttpConfig};
use layout_core::admin::AdminMetrics;
use layout_core::admin::AdminService;
use layout_core::finalizer::FinalizeHandle;
use layout_core::http::BearerToken;
use layout_core::http::{Registry, ServerTls};
use layout_core::startup::{ComponentStartup, PrepareParts, StartedComponent};
use layout_core::storage::VERSION_FILE_NAME;
use layout_core::{
    FileStorage, LayoutFeature, LayoutVersionManager, ManagerOptions, StartIntent, UpgradeFinalizer,
};

use layout_core::cluster::{ClusterFinalizeOutcome, ClusterStatus, Coordinator, MemberStep};

use super::cluster::{cluster_condition, ClusterConfig, ClusterRuntime, CLUSTER_KIND};
use super::error::KvError;
use super::feature::KvFeature;
use super::http::{DataApiSettings, MetricsSlot};
use super::store::{actions, KvOptions, KvStore, DB_FILE_NAME};

/// The name the value-index migration has on the admin API (`GET /v1/migrations`,
/// `POST /v1/migration-settings`, `layoutctl migrations`).
pub const INDEX_MIGRATION: &str = super::index::MIGRATION_NAME;

/// The admin endpoint of a node.
#[derive(Clone)]
pub struct AdminConfig {
    /// Where it listens (loopback unless told otherwise).
    pub listen: SocketAddr,
    /// The bearer token clients (`layoutctl --token`) present; on a coordinator node it
    /// also guards the `/cluster/...` routes of the HTTP API.
    pub token: String,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

/// How to start a [`KvNode`].
#[derive(Debug, Clone)]
pub struct KvNodeConfig {
    /// The node's directory: the layout state in `dir/layout`, the data in `dir/data`.
    pub dir: PathBuf,
    /// The software layout version: the binary this node plays (SLV cap).
    pub software_version: KvFeature,
    /// Why the node starts. A first start in an empty directory is an `Init` whatever
    /// this says; a missing `VERSION` next to existing data is refused.
    pub intent: StartIntent,
    /// Where the HTTP API listens.
    pub listen: SocketAddr,
    /// The admin endpoint, if any. A coordinator node needs it: its token guards
    /// `/cluster/...`, and without it `POST /cluster/finalize` is refused (403).
    pub admin: Option<AdminConfig>,
    /// The layout version a fresh install starts at (default: the software version).
    pub initial_version: Option<KvFeature>,
    /// Store options (its `listen` is replaced by [`listen`](Self::listen)).
    pub store: KvOptions,
    /// Cluster mode: this node runs the coordinator or is a member (default `None`: a
    /// single node). See [`ClusterConfig`].
    pub cluster: Option<ClusterConfig>,
    /// Serve the HTTP API and the admin endpoint over TLS with this certificate (and,
    /// if it names a client CA, only to clients presenting a certificate it signed).
    /// Default `None`: plain HTTP.
    pub tls: Option<ServerTls>,
}

impl KvNodeConfig {
    /// A node in `dir` running the latest software, normal start, HTTP on an ephemeral
    /// loopback port, no admin endpoint.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            software_version: KvFeature::latest(),
            intent: StartIntent::Normal,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            initial_version: None,
            store: KvOptions::default(),
            cluster: None,
            tls: None,
        }
    }

    /// Sets the software version (SLV cap).
    #[must_use]
    pub fn with_software_version(mut self, version: KvFeature) -> Self {
        self.software_version = version;
        self
    }

    /// Sets the start intent.
    #[must_use]
    pub fn with_intent(mut self, intent: StartIntent) -> Self {
        self.intent = intent;
        self
    }

    /// Sets where the HTTP API listens.
    #[must_use]
    pub fn with_listen(mut self, listen: SocketAddr) -> Self {
        self.listen = listen;
        self
    }

    /// Serves the admin endpoint on `listen` with `token`.
    #[must_use]
    pub fn with_admin(mut self, listen: SocketAddr, token: impl Into<String>) -> Self {
        self.admin = Some(AdminConfig {
            listen,
            token: token.into(),
        });
        self
    }

    /// Pins a fresh install to `version` (as after installing an old release).
    #[must_use]
    pub fn with_initial_version(mut self, version: KvFeature) -> Self {
        self.initial_version = Some(version);
        self
    }

    /// Sets the store options.
    #[must_use]
    pub fn with_store_options(mut self, options: KvOptions) -> Self {
        self.store = options;
        self
    }

    /// Runs the node in a cluster: as its coordinator or as a member.
    #[must_use]
    pub fn with_cluster(mut self, cluster: ClusterConfig) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Serves the HTTP API and the admin endpoint over TLS (see [`tls`](Self::tls)).
    #[must_use]
    pub fn with_tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }
}

impl Default for KvNodeConfig {
    fn default() -> Self {
        Self::new(PathBuf::from("kvstore-data"))
    }
}

/// A standalone kvstore service: its layout version manager (`dir/layout/VERSION`), the
/// store (`dir/data`), the finalizer built from [`actions`], the admin endpoint that
/// `layoutctl` drives, and `GET /metrics` on the HTTP API (the node's layout metrics,
/// behind the admin token when there is one).
pub struct KvNode {
    manager: Arc<LayoutVersionManager<KvFeature>>,
    store: Arc<KvStore>,
    /// The finalization resumed at start-up, if one was.
    resumed: parking_lot::Mutex<Option<FinalizeHandle<KvFeature>>>,
    finalizer: Arc<UpgradeFinalizer<KvFeature, KvStore>>,
    /// The admin service: served by the admin endpoint when configured, and the source
    /// of the layout metrics either way.
    service: Arc<AdminService>,
    admin: Option<AdminServer>,
    /// What the HTTP API's `/metrics` serves.
    metrics: Arc<MetricsSlot>,
    cluster: Option<ClusterRuntime>,
    cluster_id: Option<String>,
    dir: PathBuf,
}

fn is_fresh(dir: &Path) -> bool {
    !dir.join("layout").join(VERSION_FILE_NAME).exists()
        && std::fs::symlink_metadata(dir.join("layout").join(VERSION_FILE_NAME)).is_err()
        && !dir.join("data").join(DB_FILE_NAME).exists()
}

impl KvNode {
    /// Starts the node: opens the manager (refusing a disk newer than the software),
    /// the store, runs the start-up actions, serves HTTP and the admin endpoint.
    ///
    /// The store's data must belong to `dir/layout/VERSION`: missing, empty or foreign
    /// data, a `VERSION` older than the data and a damaged database are refused before
    /// anything is written (see [`KvStore::open`] and `docs/data-binding.md`).
    pub fn start(config: KvNodeConfig) -> Result<KvNode, KvError> {
        // Checked before anything starts: a bad token must not leave a half-started node.
        let admin_token = config
            .admin
            .as_ref()
            .map(|admin| BearerToken::new(admin.token.clone()))
            .transpose()?;
        let layout_dir = config.dir.join("layout");
        std::fs::create_dir_all(&layout_dir).map_err(|source| KvError::Io {
            context: "cannot create the layout directory",
            path: layout_dir.clone(),
            source,
        })?;
        let intent = if is_fresh(&config.dir) {
            StartIntent::Init
        } else {
            config.intent
        };
        let mut options = ManagerOptions::default()
            .with_software_layout_version(config.software_version.layout_version())
            .with_start_intent(intent);
        if let Some(initial) = config.initial_version {
            options = options.with_initial_layout_version(initial.layout_version());
        }
        let store_options = config.store.clone().with_listen(config.listen);
        let api = DataApiSettings {
            tls: config.tls.clone(),
            metrics: Arc::new(MetricsSlot::new(admin_token.clone())),
        };
        let metrics = Arc::clone(&api.metrics);
        let data_dir = config.dir.join("data");
        let mut startup = ComponentStartup::<KvFeature, KvStore>::new(KvFeature::CATALOG_NAME)
            .options(options)
            .storage(FileStorage::new(&layout_dir))
            .open(move |manager| {
                KvStore::open_with(Arc::clone(manager), &data_dir, store_options, &api)
            })
            .actions(|_| actions())
            .prepare(|store: &KvStore| {
                PrepareParts::new(Arc::clone(store.prepare_controller()), store.preparable())
            });
        if let Some(cluster) = &config.cluster {
            startup = startup.condition(cluster_condition(&cluster.role));
        }
        let mut started = startup.start()?;
        let manager = Arc::clone(started.manager());
        let store = Arc::clone(started.component());
        let finalizer = Arc::clone(started.finalizer());
        let cluster = match &config.cluster {
            Some(cluster) => {
                match ClusterRuntime::start(
                    cluster,
                    &finalizer,
                    &store,
                    admin_token.as_ref(),
                    config.tls.as_ref(),
                    &config.dir,
                ) {
                    Ok(runtime) => Some(runtime),
                    Err(e) => {
                        store.clear_cluster_routes();
                        store.stop_http();
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        let service = Arc::new(with_index_migration(started.admin_service(), &store));
        let admin = match Self::start_admin(&config, &service, &mut started) {
            Ok(admin) => admin,
            Err(e) => {
                if let Some(cluster) = cluster {
                    cluster.stop();
                }
                store.clear_cluster_routes();
                store.stop_http();
                return Err(e);
            }
        };
        metrics.serve(node_metrics(&service, &store, cluster.as_ref()));
        let resumed = resume_at_startup(&config, &finalizer, &store);
        tracing::info!(
            dir = %config.dir.display(),
            slv = manager.software_layout_version(),
            mlv = manager.metadata_layout_version(),
            http = %store.http_addr(),
            tls = config.tls.is_some(),
            "kvstore node started"
        );
        Ok(KvNode {
            manager,
            store,
            resumed: parking_lot::Mutex::new(resumed),
            finalizer,
            service,
            admin,
            metrics,
            cluster,
            cluster_id: config.cluster.map(|c| c.node_id),
            dir: config.dir,
        })
    }

    fn start_admin(
        config: &KvNodeConfig,
        service: &Arc<AdminService>,
        started: &mut StartedComponent<KvFeature, KvStore>,
    ) -> Result<Option<AdminServer>, KvError> {
        let Some(admin) = &config.admin else {
            return Ok(None);
        };
        let mut http = HttpConfig::new(admin.token.clone())?.with_bind_addr(admin.listen);
        if let Some(tls) = &config.tls {
            http = http.with_tls(tls.clone());
        }
        started.serve_admin_with(Arc::clone(service), http)?;
        Ok(started.take_admin_server())
    }

    /// The store.
    pub fn store(&self) -> &Arc<KvStore> {
        &self.store
    }

    /// The layout version manager.
    pub fn manager(&self) -> &Arc<LayoutVersionManager<KvFeature>> {
        &self.manager
    }

    /// Waits for the finalization this node resumed at start-up (see
    /// `UpgradeFinalizer::resume_interrupted`), if it resumed one, and returns its
    /// outcome; `None` when it resumed none (or it was already waited for).
    pub fn wait_for_resumed_finalization(
        &self,
    ) -> Option<
        Result<layout_core::FinalizeOutcome<KvFeature>, layout_core::FinalizeError<KvFeature>>,
    > {
        let handle = self.resumed.lock().take()?;
        Some(handle.join())
    }

    /// The finalizer.
    pub fn finalizer(&self) -> &Arc<UpgradeFinalizer<KvFeature, KvStore>> {
        &self.finalizer
    }

    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.store.http_addr()
    }

    /// Where the admin endpoint listens, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// The node's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Prepares the store; returns the prepare index.
    pub fn prepare(&self) -> Result<u64, KvError> {
        self.store.prepare()
    }

    /// The coordinator, when this node runs it.
    pub fn coordinator(&self) -> Option<&Arc<Coordinator>> {
        self.cluster.as_ref().and_then(ClusterRuntime::coordinator)
    }

    /// The coordinator's member address: the one this node serves (coordinator) or the
    /// one it joined (member); `None` for a single node.
    pub fn coordinator_addr(&self) -> Option<SocketAddr> {
        self.cluster.as_ref().map(ClusterRuntime::coordinator_addr)
    }

    /// This node's id in the cluster, if it is in one.
    pub fn cluster_node_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// A member's heartbeat, now, following the answer, as the background heartbeat
    /// does every interval; when told to finalize, it waits for the local finalization
    /// and heartbeats again to report it (the step's `finalized_to`). `Ok(None)` on a node
    /// that is not a member.
    pub fn cluster_heartbeat(&self) -> Result<Option<MemberStep>, KvError> {
        self.cluster
            .as_ref()
            .and_then(ClusterRuntime::heartbeat)
            .transpose()
    }

    /// Why this member node is fenced (the coordinator's refusal), if it is: it refuses
    /// writes meanwhile. `None` on a node that is not a member.
    pub fn fence_cause(&self) -> Option<layout_core::cluster::FenceCause> {
        self.cluster
            .as_ref()
            .and_then(ClusterRuntime::fence)
            .and_then(|f| f.cause())
    }

    /// The cluster's state (coordinator node only).
    pub fn cluster_status(&self) -> Result<ClusterStatus, KvError> {
        self.require_coordinator("cluster status")?
            .status(CLUSTER_KIND)
            .map_err(|e| KvError::ClusterCoordinator(Box::new(e)))
    }

    /// Finalizes the cluster to `target` (default: this node's software version) for
    /// `client_id` (coordinator node only): refused, listing the blockers, while a member
    /// runs older software; otherwise this node finalizes, the cluster's version moves,
    /// and members finalize on their next heartbeat.
    pub fn cluster_finalize(
        &self,
        target: Option<KvFeature>,
        client_id: &str,
    ) -> Result<ClusterFinalizeOutcome, KvError> {
        self.require_coordinator("cluster finalize")?
            .finalize(
                CLUSTER_KIND,
                target.map(LayoutFeature::layout_version),
                client_id,
            )
            .map_err(|e| KvError::ClusterCoordinator(Box::new(e)))
    }

    fn require_coordinator(&self, operation: &'static str) -> Result<&Arc<Coordinator>, KvError> {
        match &self.cluster {
            Some(ClusterRuntime::Coordinator { coordinator, .. }) => Ok(coordinator),
            Some(runtime) => Err(KvError::NotCoordinator {
                operation,
                role: format!(
                    "member {} of the cluster coordinated at {}",
                    self.cluster_id.as_deref().unwrap_or_default(),
                    runtime.coordinator_addr()
                ),
            }),
            None => Err(KvError::NotCoordinator {
                operation,
                role: "a single node".to_owned(),
            }),
        }
    }

    /// Stops the cluster part (a member's heartbeats, waiting for a finalization they
    /// run; the coordinator's member server), the admin endpoint and the HTTP server,
    /// waits for a finalization started through the admin endpoint, and closes the store.
    pub fn shutdown(mut self) -> Result<(), KvError> {
        self.stop();
        Ok(())
    }

    fn stop(&mut self) {
        // The metrics hold the admin service (and so the store) and, on a coordinator
        // node, the coordinator: let go of them first.
        self.metrics.clear();
        if let Some(cluster) = self.cluster.take() {
            cluster.stop();
        }
        self.store.clear_cluster_routes();
        if let Some(handle) = self.resumed.lock().take() {
            // A stop is a restart, not an operator's cancel: the migration stops between
            // batches (nothing stored says cancelled) and the next start resumes it.
            if !handle.is_finished() {
                if let Some(control) = self.store.index_migration_control() {
                    control.cancel();
                }
            }
            match handle.join() {
                Ok(outcome) => tracing::info!(
                    mlv = outcome.metadata_layout_version(),
                    "the finalization resumed at start-up is done"
                ),
                Err(e) => {
                    tracing::info!(error = %e, "the finalization resumed at start-up stopped");
                }
            }
        }
        if let Some(server) = self.admin.take() {
            server.shutdown();
            if let Some(Err(e)) = self.service.join_finalization() {
                tracing::warn!(error = %e, "the finalization started by the admin endpoint failed");
            }
        }
        self.store.stop_http();
    }
}

impl Drop for KvNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A single node killed or restarted in the middle of its index migration resumes it at
/// start-up, in the background, as the client that started it, unless an operator
/// cancelled it. (In a cluster the coordinator drives each node's finalization.)
fn resume_at_startup(
    config: &KvNodeConfig,
    finalizer: &Arc<UpgradeFinalizer<KvFeature, KvStore>>,
    store: &Arc<KvStore>,
) -> Option<FinalizeHandle<KvFeature>> {
    if config.cluster.is_some() {
        return None;
    }
    finalizer.start_resume_interrupted(Arc::clone(store))
}

/// The node's admin service (finalization and prepare, from the start-up) with the
/// value-index migration's progress and settings (`GET /v1/migrations`,
/// `POST /v1/migration-settings`).
fn with_index_migration(service: AdminService, store: &Arc<KvStore>) -> AdminService {
    match store.index_migration_control() {
        Some(control) => {
            let progress_of = Arc::clone(store);
            service.with_migration(INDEX_MIGRATION, control, move || {
                progress_of.index_migration_progress()
            })
        }
        None => service,
    }
}

/// What `GET /metrics` on the node's HTTP API serves: the layout metrics of `service`
/// ([`AdminMetrics`]), the store's own (`kvstore_degraded`) and, on a coordinator node,
/// the cluster's.
fn node_metrics(
    service: &Arc<AdminService>,
    store: &Arc<KvStore>,
    cluster: Option<&ClusterRuntime>,
) -> Registry {
    let mut registry = Registry::default();
    AdminMetrics::register(service, &mut registry);
    registry.register_collector(Box::new(StoreMetrics(Arc::clone(store))));
    if let Some(coordinator) = cluster.and_then(ClusterRuntime::coordinator) {
        register_cluster_metrics(coordinator, &mut registry);
    }
    registry
}

/// `kvstore_degraded`: 1 while the database refuses writes after a failed write to its
/// file (see `KvStatus::degraded`), 0 otherwise; `kvstore_fenced`: 1 while this member
/// node is fenced (see `KvStatus::fenced`), 0 otherwise.
struct StoreMetrics(Arc<KvStore>);

impl fmt::Debug for StoreMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreMetrics")
    }
}

impl prometheus_client::collector::Collector for StoreMetrics {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> fmt::Result {
        use prometheus_client::encoding::EncodeMetric as _;
        let status = self.0.status().ok();
        let degraded = status.as_ref().is_some_and(|s| s.degraded.is_some());
        let gauge = prometheus_client::metrics::gauge::ConstGauge::new(i64::from(degraded));
        let metric = encoder.encode_descriptor(
            "kvstore_degraded",
            "1 while the database refuses writes after a failed write to its file",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)?;
        let fenced = status.as_ref().is_some_and(|s| s.fenced.is_some());
        let gauge = prometheus_client::metrics::gauge::ConstGauge::new(i64::from(fenced));
        let metric = encoder.encode_descriptor(
            "kvstore_fenced",
            "1 while this member node is fenced: its coordinator refuses it, and it refuses writes",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// The cluster's metrics on a coordinator node (`layout_cluster_members{kind,state}`,
/// `layout_cluster_layout_version{kind}`).
fn register_cluster_metrics(coordinator: &Arc<Coordinator>, registry: &mut Registry) {
    layout_core::cluster::ClusterMetrics::register(coordinator, [CLUSTER_KIND], registry);
}

impl fmt::Debug for KvNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvNode")
            .field("dir", &self.dir)
            .field("http_addr", &self.http_addr())
            .field("admin_addr", &self.admin_addr())
            .finish_non_exhaustive()
    }
}
