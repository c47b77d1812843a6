//! [`KvNode`]: a standalone kvstore service — manager, store, finalizer and admin
//! endpoint.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use layout_core::admin::http::{AdminServer, BearerToken, HttpConfig};
use layout_core::admin::AdminService;
use layout_core::{
    FileStorage, LayoutFeature, LayoutVersionManager, ManagerOptions, StartIntent,
    UpgradeFinalizer, VERSION_FILE_NAME,
};

use layout_core::cluster::{ClusterFinalizeOutcome, ClusterStatus, Coordinator, MemberStep};

use super::cluster::{with_cluster_condition, ClusterConfig, ClusterRuntime, CLUSTER_KIND};
use super::error::KvError;
use super::feature::KvFeature;
use super::store::{actions, KvOptions, KvStore, DB_FILE_NAME};

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
}

impl Default for KvNodeConfig {
    fn default() -> Self {
        Self::new(PathBuf::from("kvstore-data"))
    }
}

/// A standalone kvstore service: its layout version manager (`dir/layout/VERSION`), the
/// store (`dir/data`), the finalizer built from [`actions`], and the admin endpoint that
/// `layoutctl` drives.
pub struct KvNode {
    manager: Arc<LayoutVersionManager<KvFeature>>,
    store: Arc<KvStore>,
    finalizer: Arc<UpgradeFinalizer<KvFeature, KvStore>>,
    admin: Option<(Arc<AdminService>, AdminServer)>,
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
        let manager = Arc::new(LayoutVersionManager::<KvFeature>::open(
            FileStorage::new(&layout_dir),
            options,
        )?);
        let store_options = config.store.clone().with_listen(config.listen);
        let store = Arc::new(KvStore::open(
            Arc::clone(&manager),
            &config.dir.join("data"),
            store_options,
        )?);
        let mut finalizer = UpgradeFinalizer::new(Arc::clone(&manager), actions()?)
            .with_gate(Arc::clone(store.prepare_controller()) as _);
        if let Some(cluster) = &config.cluster {
            finalizer = with_cluster_condition(finalizer, &cluster.role);
        }
        let finalizer = Arc::new(finalizer);
        finalizer.run_prefinalize_actions(&store)?;
        let cluster = match &config.cluster {
            Some(cluster) => {
                match ClusterRuntime::start(cluster, &finalizer, &store, admin_token.as_ref()) {
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
        let admin = match Self::start_admin(&config, &finalizer, &store) {
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
        tracing::info!(
            dir = %config.dir.display(),
            slv = manager.software_layout_version(),
            mlv = manager.metadata_layout_version(),
            http = %store.http_addr(),
            "kvstore node started"
        );
        Ok(KvNode {
            manager,
            store,
            finalizer,
            admin,
            cluster,
            cluster_id: config.cluster.map(|c| c.node_id),
            dir: config.dir,
        })
    }

    fn start_admin(
        config: &KvNodeConfig,
        finalizer: &Arc<UpgradeFinalizer<KvFeature, KvStore>>,
        store: &Arc<KvStore>,
    ) -> Result<Option<(Arc<AdminService>, AdminServer)>, KvError> {
        Ok(match &config.admin {
            Some(admin) => {
                let service = Arc::new(
                    AdminService::new(Arc::clone(finalizer), Arc::clone(store))
                        .with_prepare(Arc::clone(store.prepare_controller()), store.preparable()),
                );
                let http = HttpConfig::new(admin.token.clone())?.with_bind_addr(admin.listen);
                let server = AdminServer::start(Arc::clone(&service), http)?;
                Some((service, server))
            }
            None => None,
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<KvStore> {
        &self.store
    }

    /// The layout version manager.
    pub fn manager(&self) -> &Arc<LayoutVersionManager<KvFeature>> {
        &self.manager
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
        self.admin.as_ref().map(|(_, s)| s.local_addr())
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

    /// A member's heartbeat, now, following the answer (finalizing when told to), as
    /// the background heartbeat does every interval. `Ok(None)` on a node that is not a
    /// member.
    pub fn cluster_heartbeat(&self) -> Result<Option<MemberStep>, KvError> {
        self.cluster
            .as_ref()
            .and_then(ClusterRuntime::heartbeat)
            .transpose()
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
        if let Some(cluster) = self.cluster.take() {
            cluster.stop();
        }
        self.store.clear_cluster_routes();
        if let Some((service, server)) = self.admin.take() {
            server.shutdown();
            if let Some(Err(e)) = service.join_finalization() {
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

impl fmt::Debug for KvNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvNode")
            .field("dir", &self.dir)
            .field("http_addr", &self.http_addr())
            .field("admin_addr", &self.admin_addr())
            .finish_non_exhaustive()
    }
}
