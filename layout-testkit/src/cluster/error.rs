//! What can go wrong in a mini cluster.

use std::io;
use std::path::PathBuf;

use layout_core::action::RegistryError;
use layout_core::LayoutError;

use crate::component::HookError;
use crate::crash::CrashError;

/// An error of a [`MiniCluster`](crate::MiniCluster) or one of its nodes. Every variant
/// names the node (or the path) it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MiniClusterError {
    /// The node's layout version manager refused to open (in-process): the start-up
    /// rules said no (disk newer than software, not initialized, damaged file, ...).
    #[error("node {node}: the layout version manager refused to open: {source}")]
    Layout {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: Box<LayoutError>,
    },
    /// A component hook failed: `open`, `prepare`, `cancel_prepare` or `call`.
    #[error("node {node}: {operation} failed: {source}")]
    Component {
        /// The node.
        node: String,
        /// The hook (`open`, `prepare`, `call put`, ...).
        operation: String,
        /// Its error.
        #[source]
        source: HookError,
    },
    /// The component's action registry is miswired.
    #[error("node {node}: {source}")]
    Registry {
        /// The node.
        node: String,
        /// The problems.
        #[source]
        source: RegistryError,
    },
    /// The start-up actions refused the start.
    #[error("node {node}: the start-up actions refused the start: {message}")]
    StartupActions {
        /// The node.
        node: String,
        /// The finalizer's error.
        message: String,
    },
    /// Finalization failed (the finalizer's error, as text: its type is generic over the
    /// catalog; in-process, [`Node::finalizer`](crate::Node::finalizer) gives the typed
    /// API).
    #[error("node {node}: finalization failed: {message}")]
    Finalize {
        /// The node.
        node: String,
        /// The finalizer's error.
        message: String,
    },
    /// The coordinator refused the node's member as it registered (an old binary after
    /// finalization, an excluded member back with old software, ...): the refusal's
    /// text. A child-process node reports it as [`MiniClusterError::Remote`] of kind
    /// `MemberRefused`; [`member_refusal`](Self::member_refusal) reads either.
    #[error("node {node}: the coordinator refused its member: {message}")]
    MemberRefused {
        /// The node.
        node: String,
        /// The refusal.
        message: String,
    },
    /// The kit's coordinator failed (to start, to answer, to finalize, to exclude).
    #[error("the coordinator: {operation} failed: {message}")]
    Coordinator {
        /// What was asked.
        operation: String,
        /// Why.
        message: String,
    },
    /// A child-process node reported an error. `kind` names the error's variant
    /// (`DiskNewerThanSoftware`, `Finalize`, `Component`, ...), so tests check it the
    /// same way in both modes (see [`MiniClusterError::layout_error_kind`]).
    #[error("node {node}: {operation} failed in the child process ({kind}): {message}")]
    Remote {
        /// The node.
        node: String,
        /// What was asked.
        operation: String,
        /// The error's variant name.
        kind: String,
        /// Its message.
        message: String,
    },
    /// Running a child-process node failed.
    #[error("node {node}: child process: {source}")]
    Child {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: Box<CrashError>,
    },
    /// A child-process node answered something the kit did not expect.
    #[error("node {node}: unexpected answer from the child process: {answer:?}")]
    Protocol {
        /// The node.
        node: String,
        /// What it said.
        answer: String,
    },
    /// The node is not running.
    #[error("node {node} is not running (stopped, crashed or failed to start)")]
    NotRunning {
        /// The node.
        node: String,
    },
    /// No node has that name.
    #[error("no node named {name}; the nodes are {known:?}")]
    NoSuchNode {
        /// The name asked for.
        name: String,
        /// Every node's name.
        known: Vec<String>,
    },
    /// The node runs another component type.
    #[error("node {name} runs {actual}, not {expected}")]
    WrongType {
        /// The node.
        name: String,
        /// The type asked for.
        expected: &'static str,
        /// The node's type.
        actual: &'static str,
    },
    /// What was asked needs an in-process node (a typed handle to the component or its
    /// manager), or a child-process one.
    #[error("node {node}: {what}")]
    Unsupported {
        /// The node.
        node: String,
        /// What is not supported, and why.
        what: String,
    },
    /// The cluster's configuration is not usable.
    #[error("invalid mini cluster configuration: {0}")]
    InvalidConfig(String),
    /// A file system operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl MiniClusterError {
    /// The name of the [`LayoutError`] variant behind this error, in either mode
    /// (`"DiskNewerThanSoftware"`, `"NotInitialized"`, ...); `None` for other errors.
    pub fn layout_error_kind(&self) -> Option<&str> {
        match self {
            Self::Layout { source, .. } => Some(layout_error_kind(source)),
            Self::Remote { kind, .. } if LAYOUT_KINDS.contains(&kind.as_str()) => {
                Some(kind.as_str())
            }
            _ => None,
        }
    }

    /// Whether this is the refusal to start software older than the disk
    /// ([`LayoutError::DiskNewerThanSoftware`]), in either mode.
    pub fn is_disk_newer_than_software(&self) -> bool {
        self.layout_error_kind() == Some("DiskNewerThanSoftware")
    }

    /// The coordinator's refusal of a node's member (in either mode), if this is one.
    pub fn member_refusal(&self) -> Option<&str> {
        match self {
            Self::MemberRefused { message, .. } => Some(message),
            Self::Remote { kind, message, .. } if kind == "MemberRefused" => Some(message),
            _ => None,
        }
    }

    /// The node the error is about, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            Self::Layout { node, .. }
            | Self::Component { node, .. }
            | Self::Registry { node, .. }
            | Self::StartupActions { node, .. }
            | Self::Finalize { node, .. }
            | Self::Remote { node, .. }
            | Self::Child { node, .. }
            | Self::Protocol { node, .. }
            | Self::NotRunning { node }
            | Self::Unsupported { node, .. }
            | Self::MemberRefused { node, .. } => Some(node),
            Self::NoSuchNode { name, .. } | Self::WrongType { name, .. } => Some(name),
            Self::InvalidConfig(_) | Self::Io { .. } | Self::Coordinator { .. } => None,
        }
    }

    /// The variant name a child process reports for this error.
    pub(crate) fn kind_name(&self) -> &str {
        match self {
            Self::Layout { source, .. } => layout_error_kind(source),
            Self::Remote { kind, .. } => kind,
            Self::Component { .. } => "Component",
            Self::Registry { .. } => "Registry",
            Self::StartupActions { .. } => "StartupActions",
            Self::Finalize { .. } => "Finalize",
            Self::Child { .. } => "Child",
            Self::Protocol { .. } => "Protocol",
            Self::NotRunning { .. } => "NotRunning",
            Self::NoSuchNode { .. } => "NoSuchNode",
            Self::WrongType { .. } => "WrongType",
            Self::Unsupported { .. } => "Unsupported",
            Self::MemberRefused { .. } => "MemberRefused",
            Self::Coordinator { .. } => "Coordinator",
            Self::InvalidConfig(_) => "InvalidConfig",
            Self::Io { .. } => "Io",
        }
    }
}

/// Every name [`layout_error_kind`] returns.
const LAYOUT_KINDS: &[&str] = &[
    "NotInitialized",
    "DiskNewerThanSoftware",
    "BelowMinimumSupported",
    "FeatureNameMismatch",
    "ComponentMismatch",
    "NotFinalized",
    "VersionSkip",
    "BeyondSoftware",
    "InvalidOptions",
    "ForbiddenStateUpdate",
    "InvalidCatalog",
    "Storage",
    "Layout",
];

/// The variant name of a [`LayoutError`].
pub(crate) fn layout_error_kind(error: &LayoutError) -> &'static str {
    match error {
        LayoutError::NotInitialized { .. } => "NotInitialized",
        LayoutError::DiskNewerThanSoftware { .. } => "DiskNewerThanSoftware",
        LayoutError::BelowMinimumSupported { .. } => "BelowMinimumSupported",
        LayoutError::FeatureNameMismatch { .. } => "FeatureNameMismatch",
        LayoutError::ComponentMismatch { .. } => "ComponentMismatch",
        LayoutError::NotFinalized { .. } => "NotFinalized",
        LayoutError::VersionSkip { .. } => "VersionSkip",
        LayoutError::BeyondSoftware { .. } => "BeyondSoftware",
        LayoutError::InvalidOptions(_) => "InvalidOptions",
        LayoutError::ForbiddenStateUpdate(_) => "ForbiddenStateUpdate",
        LayoutError::InvalidCatalog(_) => "InvalidCatalog",
        LayoutError::Storage(_) => "Storage",
        _ => "Layout",
    }
}
