//! The kvstore's errors.

use std::io;
use std::path::PathBuf;

use layout_core::action::RegistryError;
use layout_core::binding::redb::RedbBindingError;
use layout_core::binding::BindingError;
use layout_core::cluster::{ClusterError, MemberError, Refusal};
use layout_core::finalizer::PrefinalizeError;
use layout_core::http::EndpointError;
use layout_core::migration::MigrationError;
use layout_core::prepare::WriteRejected;
use layout_core::startup::StartupError;
use layout_core::{LayoutError, PrepareError};

use super::feature::KvFeature;

/// An error of the kvstore engine, its HTTP server or its node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// A layout error: most often an API or option whose feature is not finalized yet.
    #[error(transparent)]
    Layout(#[from] LayoutError),

    /// A write refused because the store is prepared (its write gate is up).
    #[error(transparent)]
    Prepared(#[from] WriteRejected),

    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),

    /// A record in table `kv` could not be decoded.
    #[error("key {key:?}: cannot decode its value record: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },

    /// The redb database failed.
    #[error("database {path}: {context}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: Box<redb::Error>,
    },

    /// The database is degraded: a write to its file failed (a full disk, an I/O
    /// error), and redb refuses every later operation until the database is reopened.
    /// Writes are refused (HTTP 503, kind `degraded`) until a reopen succeeds; the next
    /// request retries it, so writes resume once the disk is fixed. Every acknowledged
    /// write is kept.
    #[error(
        "database {path} is degraded: {cause}; writes are refused until it can be reopened \
         (each request retries; free disk space or fix the disk)"
    )]
    Degraded {
        /// The database file.
        path: PathBuf,
        /// The error that degraded it.
        cause: String,
    },

    /// The data does not belong to the layout state: missing or empty next to an
    /// existing `VERSION`, another node's data, or a `VERSION` older than the data. The
    /// node refuses to start and writes nothing.
    #[error(transparent)]
    Binding(Box<BindingError>),

    /// The database file cannot be read at start-up: truncated, overwritten, or not a
    /// redb database. The node refuses to start; nothing is written to it.
    #[error(
        "database {path} is damaged: {reason}. Restore the data directory from a backup \
         taken together with the layout state"
    )]
    DataDamaged {
        /// The database file.
        path: PathBuf,
        /// What redb reported.
        reason: String,
    },

    /// The database could not be opened for another reason (see
    /// [`RedbBindingError`]); the node refuses to start.
    #[error(transparent)]
    OpenDatabase(Box<RedbBindingError>),

    /// A file operation failed.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The value-index migration failed.
    #[error(transparent)]
    Migration(Box<MigrationError>),

    /// Prepare or cancel-prepare failed, or the prepare marker found at start-up is bad.
    #[error(transparent)]
    Prepare(Box<PrepareError>),

    /// The upgrade actions could not be registered.
    #[error(transparent)]
    Registry(Box<RegistryError>),

    /// A start-up action failed; the node refuses to start.
    #[error(transparent)]
    Prefinalize(Box<PrefinalizeError<KvFeature>>),

    /// The admin endpoint could not start.
    #[error("admin endpoint: {0}")]
    Admin(Box<EndpointError>),

    /// The cluster coordinator or membership failed.
    #[error("cluster: {0}")]
    Cluster(String),

    /// This member's registration or heartbeat failed: the coordinator refused it (see
    /// [`KvError::cluster_refusal`]), could not be reached, or the finalization it asked
    /// for failed.
    #[error("kvstore member {member_id} (coordinator at {coordinator}): {source}")]
    ClusterMember {
        /// This node's member id.
        member_id: String,
        /// The coordinator's member address.
        coordinator: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: Box<MemberError>,
    },

    /// A request refused because this member node is fenced: the cluster's coordinator
    /// refused it (an old release after the cluster finalized, an excluded member, a
    /// second process under its id, a disk ahead of the cluster). Writes are refused
    /// (HTTP 503, kind `fenced`), reads too with `--fenced-reads refuse`, until the
    /// coordinator accepts the member again (checked at every heartbeat).
    #[error(
        "kvstore member {member_id} is fenced: {refusal}; it refuses writes until the \
         coordinator accepts it again"
    )]
    Fenced {
        /// This node's member id.
        member_id: String,
        /// The coordinator's refusal.
        refusal: Box<Refusal>,
    },

    /// The coordinator this node runs refused or failed: it could not open its store,
    /// its software is too old for the cluster, a finalization is blocked.
    #[error("kvstore cluster coordinator: {0}")]
    ClusterCoordinator(Box<ClusterError>),

    /// A cluster operation on a node that does not run the coordinator.
    #[error("{operation}: this node does not run the cluster coordinator ({role}); ask the coordinator node")]
    NotCoordinator {
        /// What was asked.
        operation: &'static str,
        /// What this node is (`a single node`, `member ... of the cluster at ...`).
        role: String,
    },

    /// The HTTP API's endpoint could not start (other than binding its address).
    #[error("HTTP API: {0}")]
    HttpApi(Box<EndpointError>),

    /// The component start-up itself was misconfigured (a part missing from the
    /// `ComponentStartup`, a resume that failed).
    #[error(transparent)]
    Startup(Box<StartupError<KvFeature>>),
    /// The HTTP server could not start.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl KvError {
    /// The coordinator's refusal of this node, when that is what this is.
    pub fn cluster_refusal(&self) -> Option<&Refusal> {
        match self {
            Self::ClusterMember { source, .. } => source.refusal(),
            Self::Fenced { refusal, .. } => Some(refusal),
            _ => None,
        }
    }

    /// The coordinator's error, when that is what this is.
    pub fn cluster_error(&self) -> Option<&ClusterError> {
        match self {
            Self::ClusterCoordinator(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn db<'a, E: Into<redb::Error>>(
        path: &'a std::path::Path,
        context: &'static str,
    ) -> impl FnOnce(E) -> KvError + 'a {
        move |e| KvError::Database {
            path: path.to_owned(),
            context,
            source: Box::new(e.into()),
        }
    }

    /// The name of the layout feature that refused the request, when it was refused
    /// because that feature is not finalized.
    pub fn not_finalized_feature(&self) -> Option<&'static str> {
        match self {
            Self::Layout(LayoutError::NotFinalized { feature, .. }) => Some(feature),
            _ => None,
        }
    }

    /// The error kind sent over HTTP (`not_finalized`, `prepared`, `bad_request`,
    /// `corrupt`, `degraded`, `fenced`, `internal`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Layout(LayoutError::NotFinalized { .. }) => "not_finalized",
            Self::Prepared(_) => "prepared",
            Self::BadRequest(_) => "bad_request",
            Self::Corrupt { .. } => "corrupt",
            Self::Degraded { .. } => "degraded",
            Self::Fenced { .. } => "fenced",
            _ => "internal",
        }
    }

    /// The HTTP status for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Layout(LayoutError::NotFinalized { .. }) => 403,
            Self::Prepared(_) | Self::Degraded { .. } | Self::Fenced { .. } => 503,
            Self::BadRequest(_) => 400,
            _ => 500,
        }
    }
}

impl From<BindingError> for KvError {
    fn from(e: BindingError) -> Self {
        Self::Binding(Box::new(e))
    }
}

/// The binding's open, in kvstore's words: a refusal is [`KvError::Binding`], damage
/// [`KvError::DataDamaged`], redb's and the file system's errors [`KvError::Database`] and
/// [`KvError::Io`].
impl From<RedbBindingError> for KvError {
    fn from(e: RedbBindingError) -> Self {
        match e {
            RedbBindingError::Binding(e) => Self::Binding(e),
            RedbBindingError::Damaged { path, reason } => Self::DataDamaged { path, reason },
            RedbBindingError::Database {
                path,
                context,
                source,
            } => Self::Database {
                path,
                context,
                source,
            },
            RedbBindingError::Io {
                context,
                path,
                source,
            } => Self::Io {
                context,
                path,
                source,
            },
            RedbBindingError::Layout(e) => Self::Layout(*e),
            e => Self::OpenDatabase(Box::new(e)),
        }
    }
}

impl From<MigrationError> for KvError {
    fn from(e: MigrationError) -> Self {
        Self::Migration(Box::new(e))
    }
}

impl From<PrepareError> for KvError {
    fn from(e: PrepareError) -> Self {
        Self::Prepare(Box::new(e))
    }
}

impl From<RegistryError> for KvError {
    fn from(e: RegistryError) -> Self {
        Self::Registry(Box::new(e))
    }
}

impl From<PrefinalizeError<KvFeature>> for KvError {
    fn from(e: PrefinalizeError<KvFeature>) -> Self {
        Self::Prefinalize(Box::new(e))
    }
}

impl From<EndpointError> for KvError {
    fn from(e: EndpointError) -> Self {
        Self::Admin(Box::new(e))
    }
}

/// Each step of the one start-up path keeps the error it always had: the manager's
/// [`LayoutError`], the store's own [`KvError`], the registry's, the start-up actions'
/// and the admin endpoint's.
impl From<StartupError<KvFeature>> for KvError {
    fn from(e: StartupError<KvFeature>) -> Self {
        match e.into_open_error::<KvError>() {
            Ok(e) => e,
            Err(StartupError::Manager(e)) => Self::Layout(e),
            Err(StartupError::Registry(e)) => Self::Registry(Box::new(e)),
            Err(StartupError::StartupActions(e)) => Self::Prefinalize(Box::new(e)),
            Err(StartupError::Admin { source, .. }) => Self::Admin(Box::new(source)),
            Err(other) => Self::Startup(Box::new(other)),
        }
    }
}
