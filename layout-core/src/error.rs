//! Errors of the layout version manager.

use crate::feature::CatalogError;
use crate::StorageError;

/// An error of the [`LayoutVersionManager`](crate::LayoutVersionManager).
///
/// Not generic over the catalog, so a service's own error type can implement
/// `From<LayoutError>` once. Features are named by their name and layout version.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// No layout state is stored and the component was not started with
    /// [`StartIntent::Init`](crate::StartIntent::Init).
    #[error(
        "component {component} is not initialized: no layout state at {location}. If this is a \
         new installation, start it with the Init intent; if it is an existing one, the \
         VERSION file is missing: restore it (a missing file is never taken for a fresh install)"
    )]
    NotInitialized {
        /// The component.
        component: String,
        /// Where the state was looked for.
        location: String,
    },

    /// The disk was finalized by newer software than this binary.
    #[error(
        "component {component}: metadata layout version {metadata_layout_version} (feature \
         {feature_on_disk}) at {location} is newer than this software's layout version \
         {software_layout_version} ({software_feature}); the disk was finalized by a newer \
         release: run that release or a newer one"
    )]
    DiskNewerThanSoftware {
        /// The component.
        component: String,
        /// Where the state lives.
        location: String,
        /// MLV on disk.
        metadata_layout_version: u32,
        /// The feature name stored with the MLV.
        feature_on_disk: String,
        /// This binary's SLV (possibly capped).
        software_layout_version: u32,
        /// The name of the feature at SLV.
        software_feature: &'static str,
    },

    /// The disk is older than the oldest layout this release can upgrade from.
    #[error(
        "component {component}: metadata layout version {metadata_layout_version} (feature \
         {feature_on_disk}) at {location} is below the minimum version {minimum_supported} \
         ({minimum_feature}) this release upgrades from; upgrade through an intermediate \
         release first"
    )]
    BelowMinimumSupported {
        /// The component.
        component: String,
        /// Where the state lives.
        location: String,
        /// MLV on disk.
        metadata_layout_version: u32,
        /// The feature name stored with the MLV.
        feature_on_disk: String,
        /// The minimum supported layout version.
        minimum_supported: u32,
        /// The feature at that version.
        minimum_feature: &'static str,
    },

    /// The feature stored with the MLV is not the catalog's feature at that version: a
    /// feature was removed, renamed or renumbered since the disk was finalized.
    #[error(
        "component {component}: the disk at {location} was finalized to layout version \
         {metadata_layout_version} as feature {feature_on_disk}, but this software's catalog \
         has {feature_in_catalog} at that version; a layout feature was removed, renamed or \
         renumbered. Features may be deprecated but never removed or renumbered: restore the \
         catalog entry"
    )]
    FeatureNameMismatch {
        /// The component.
        component: String,
        /// Where the state lives.
        location: String,
        /// MLV on disk.
        metadata_layout_version: u32,
        /// The feature name stored on disk.
        feature_on_disk: String,
        /// The catalog's feature at that version.
        feature_in_catalog: &'static str,
    },

    /// The stored state belongs to another component.
    #[error(
        "the layout state at {location} belongs to component {found}, not {expected}; check \
         the component's directory"
    )]
    ComponentMismatch {
        /// Where the state lives.
        location: String,
        /// The component that opened it.
        expected: String,
        /// The component recorded in it.
        found: String,
    },

    /// A gated feature (or an operation belonging to it) is not finalized yet.
    #[error("{}", not_finalized_message(*operation, feature, *version, *metadata_layout_version))]
    NotFinalized {
        /// The operation refused, when the check was made for one.
        operation: Option<&'static str>,
        /// The feature.
        feature: &'static str,
        /// Its layout version.
        version: u32,
        /// The current MLV.
        metadata_layout_version: u32,
    },

    /// Finalizing this version would skip an unfinalized one.
    #[error(
        "cannot finalize layout version {requested} ({feature}): the metadata layout version \
         is {metadata_layout_version}, so version {next} must be finalized first"
    )]
    VersionSkip {
        /// The requested version.
        requested: u32,
        /// Its feature.
        feature: &'static str,
        /// The current MLV.
        metadata_layout_version: u32,
        /// The version that must come next.
        next: u32,
    },

    /// The requested version is above what this software knows (or is capped to).
    #[error(
        "layout version {requested} is beyond this software's layout version \
         {software_layout_version}"
    )]
    BeyondSoftware {
        /// The requested version.
        requested: u32,
        /// The SLV.
        software_layout_version: u32,
    },

    /// Manager options that contradict each other or the catalog.
    #[error("invalid layout manager options: {0}")]
    InvalidOptions(String),

    /// A state update tried to change what only finalization may change.
    #[error("a layout state update may not change {0}; use the finalization step instead")]
    ForbiddenStateUpdate(&'static str),

    /// The catalog breaks the catalog rules (only possible for hand-written impls).
    #[error(transparent)]
    InvalidCatalog(#[from] CatalogError),

    /// Reading or writing the layout state failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn not_finalized_message(operation: Option<&str>, feature: &str, version: u32, mlv: u32) -> String {
    match operation {
        Some(op) => format!(
            "operation {op} cannot be invoked before finalization: it belongs to layout feature \
             {feature}, whose layout version is {version}; the current metadata layout version \
             is {mlv}. Finalize the upgrade to use it"
        ),
        None => format!(
            "layout feature {feature} (layout version {version}) is not finalized; the current \
             metadata layout version is {mlv}. Finalize the upgrade to use it"
        ),
    }
}

/// Any error, boxed: the cause a [`StepError`] carries, and what the hooks of a component
/// (opening its layout, finalizing a cluster member's layout) return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failed step of upgrade work, as the code that ran it reports it: a message for the
/// operator and, optionally, its cause. Upgrade actions ([`ActionError`](crate::ActionError)
/// is this type), prepare steps ([`Preparable`](crate::Preparable)) and document migration
/// steps (feature `migration`) all return it.
///
/// Its text names the causes too: `with_source("cannot snapshot", e)` displays as
/// `cannot snapshot: <e>: <e's cause>...` (a cause whose text is already in the message is
/// not repeated), so the cause reaches the operator wherever the error is shown as text.
/// [`source`](std::error::Error::source) still returns it.
///
/// ```
/// use layout_core::StepError;
///
/// let io = std::io::Error::other("disk full");
/// let err = StepError::with_source("could not create the tenant table", io);
/// assert_eq!(err.to_string(), "could not create the tenant table: disk full");
/// assert_eq!(err.message(), "could not create the tenant table");
/// ```
#[derive(Debug)]
pub struct StepError {
    message: String,
    source: Option<BoxError>,
    cancelled: bool,
}

impl StepError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
            cancelled: false,
        }
    }

    /// An error with a message and its cause.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(Box::new(source)),
            cancelled: false,
        }
    }

    /// The work stopped because finalization was cancelled.
    pub fn cancelled() -> Self {
        Self {
            message: "cancelled".to_owned(),
            source: None,
            cancelled: true,
        }
    }

    /// Whether the work stopped because it was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// The message, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = self.message.clone();
        let mut cause = self
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static));
        while let Some(err) = cause {
            let part = err.to_string();
            if !part.is_empty() && !text.contains(&part) {
                if !text.is_empty() {
                    text.push_str(": ");
                }
                text.push_str(&part);
            }
            cause = err.source();
        }
        f.write_str(&text)
    }
}

impl std::error::Error for StepError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for StepError {
    fn from(e: std::io::Error) -> Self {
        Self::with_source("I/O error", e)
    }
}

impl From<LayoutError> for StepError {
    fn from(e: LayoutError) -> Self {
        Self::with_source("layout error", e)
    }
}

impl From<String> for StepError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for StepError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

#[cfg(any(feature = "migration", feature = "admin"))]
impl From<serde_json::Error> for StepError {
    fn from(e: serde_json::Error) -> Self {
        Self::with_source("invalid document", e)
    }
}
