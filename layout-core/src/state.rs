//! The persisted layout state of one component.
//!
//! [`LayoutState`] is what a [`LayoutStorage`](crate::LayoutStorage) keeps: the metadata
//! layout version (MLV) and the name of the feature at that version, the first-upgrade
//! marker, the finalization record and its history, the prepare marker, and every key a
//! newer release wrote that this release does not know (kept and written back unchanged).

use std::collections::BTreeMap;

/// The VERSION format version this release writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The persisted layout state of one component.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayoutState {
    /// Version of the file format ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// The component this state belongs to (guards against pointing a component at
    /// another component's directory).
    pub component: String,
    /// The metadata layout version (MLV): the highest finalized feature.
    pub layout_version: u32,
    /// The name of the catalog's feature at [`layout_version`](Self::layout_version).
    /// Checked at open, so a feature that was removed, renamed or renumbered is caught.
    pub layout_feature: String,
    /// The highest layout version whose first-upgrade actions have all run.
    pub first_upgrade_version: u32,
    /// The finalization in progress, or the last one.
    pub finalization: Option<FinalizationRecord>,
    /// Who finalized what, and when, oldest first.
    pub history: Vec<HistoryEntry>,
    /// The log index of the last completed prepare, while the component is prepared.
    pub prepare_index: Option<u64>,
    /// An operator's veto on automatic finalization ("preserve downgrade").
    pub veto: Option<VetoRecord>,
    /// Keys this release does not know (written by a newer release), preserved verbatim.
    pub extra: BTreeMap<String, String>,
}

impl LayoutState {
    /// A fresh state at `layout_version`, whose feature is named `layout_feature`.
    ///
    /// The first-upgrade marker starts at the same version: a fresh install runs the
    /// first-upgrade actions of exactly the features above it.
    pub fn new(
        component: impl Into<String>,
        layout_version: u32,
        layout_feature: impl Into<String>,
    ) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            component: component.into(),
            layout_version,
            layout_feature: layout_feature.into(),
            first_upgrade_version: layout_version,
            finalization: None,
            history: Vec::new(),
            prepare_index: None,
            veto: None,
            extra: BTreeMap::new(),
        }
    }
}

/// An operator's veto on automatic finalization: keeps the component pre-finalized (and
/// so downgradable) until it is lifted or expires.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VetoRecord {
    /// Why (shown in status).
    pub reason: String,
    /// Who set it.
    pub client_id: String,
    /// When it was set, in milliseconds since the Unix epoch.
    pub set_at_ms: u64,
    /// When it lapses by itself, if ever.
    pub expires_at_ms: Option<u64>,
}

impl VetoRecord {
    /// A veto.
    pub fn new(
        reason: impl Into<String>,
        client_id: impl Into<String>,
        set_at_ms: u64,
        expires_at_ms: Option<u64>,
    ) -> Self {
        Self {
            reason: reason.into(),
            client_id: client_id.into(),
            set_at_ms,
            expires_at_ms,
        }
    }

    /// Whether the veto is in force at `now_ms`.
    pub fn is_active_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|expiry| now_ms < expiry)
    }
}

/// The record of a finalization: started by whom, towards which version, and whether it
/// finished. Persisted, so a finalization resumed after a restart keeps its client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FinalizationRecord {
    /// The client that started (or took over) the finalization.
    pub client_id: String,
    /// The layout version the finalization moves towards.
    pub target_version: u32,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// When it finished, if it did.
    pub finished_at_ms: Option<u64>,
}

impl FinalizationRecord {
    /// A record of a finalization started by `client_id` towards `target_version`.
    pub fn new(client_id: impl Into<String>, target_version: u32, started_at_ms: u64) -> Self {
        Self {
            client_id: client_id.into(),
            target_version,
            started_at_ms,
            finished_at_ms: None,
        }
    }
}

/// One line of the finalization history.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryEntry {
    /// When it happened, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Who did it (a client id).
    pub client_id: String,
    /// What happened, one word: `finalized`, `override`, `takeover`, ...
    pub event: String,
    /// The MLV before.
    pub from_version: u32,
    /// The MLV after.
    pub to_version: u32,
    /// Free text: an override's reason, the features finalized, ...
    pub detail: String,
}

impl HistoryEntry {
    /// A history entry.
    pub fn new(
        at_ms: u64,
        client_id: impl Into<String>,
        event: impl Into<String>,
        from_version: u32,
        to_version: u32,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            at_ms,
            client_id: client_id.into(),
            event: event.into(),
            from_version,
            to_version,
            detail: detail.into(),
        }
    }
}
