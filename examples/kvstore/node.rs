//! [`KvNode`]: a standalone kvstore service — manager, store, finalizer and admin
//! endpoint.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use layout_core::admin::http::{AdminServer, HttpConfig};
use layout_core::admin::AdminService;
use layout_core::{
    FileStorage, LayoutFeature, LayoutVersionManager, ManagerOptions, StartIntent,
    UpgradeFinalizer, VERSION_FILE_NAME,
};

use super::error::KvError;
use super::feature::KvFeature;
use super::store::{actions, KvOptions, KvStore, DB_FILE_NAME};

/// The admin endpoint of a node.
#[derive(Clone)]
pub struct AdminConfig {
    /// Where it listens (loopback unless told otherwise).
    pub listen: SocketAddr,
    /// The bearer token clients (`layoutctl --token`) present.
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
    /// The admin endpoint, if any.
    pub admin: Option<AdminConfig>,
    /// The layout version a fresh install starts at (default: the software version).
    pub initial_version: Option<KvFeature>,
    /// Store options (its `listen` is replaced by [`listen`](Self::listen)).
    pub store: KvOptions,
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
        let finalizer = Arc::new(
            UpgradeFinalizer::new(Arc::clone(&manager), actions()?)
                .with_gate(Arc::clone(store.prepare_controller()) as _),
        );
        finalizer.run_prefinalize_actions(&store)?;
        let admin = match &config.admin {
            Some(admin) => {
                let service = Arc::new(
                    AdminService::new(Arc::clone(&finalizer), Arc::clone(&store))
                        .with_prepare(Arc::clone(store.prepare_controller()), store.preparable()),
                );
                let http = HttpConfig::new(admin.token.clone())?.with_bind_addr(admin.listen);
                let server = AdminServer::start(Arc::clone(&service), http)?;
                Some((service, server))
            }
            None => None,
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
            dir: config.dir,
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

    /// Stops the admin endpoint and the HTTP server, waits for a finalization started
    /// through the admin endpoint, and closes the store.
    pub fn shutdown(self) -> Result<(), KvError> {
        if let Some((service, server)) = self.admin {
            server.shutdown();
            if let Some(Err(e)) = service.join_finalization() {
                tracing::warn!(error = %e, "the finalization started by the admin endpoint failed");
            }
        }
        self.store.stop_http();
        Ok(())
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
