//! The persisted layout state of one component.
//!
//! [`LayoutState`] is what a [`LayoutStorage`](crate::LayoutStorage) keeps: the metadata
//! layout version (MLV) and the name of the feature at that version, the first-upgrade
//! marker, the finalization record and its history, the prepare marker, and every key a
//! newer release wrote that this release does not know (kept and written back unchanged),
//! and the [`DataId`] that binds the state to the component's data (see
//! [`binding`](crate::binding)).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

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
    /// The identity of the data this state belongs to: created at
    /// [`StartIntent::Init`](crate::StartIntent::Init) and recorded by the component in
    /// its own store, so a missing, replaced or foreign store is caught at start-up (see
    /// [`binding`](crate::binding)).
    ///
    /// `None` in a file written before data identities existed. It stays `None` until a
    /// component adopts one with [`binding::adopt`](crate::binding::adopt): the id its
    /// store already records, or a new one. Once set it never changes (the manager
    /// refuses any state change that alters it).
    pub data_id: Option<DataId>,
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
            data_id: None,
            extra: BTreeMap::new(),
        }
    }

    /// This state with `data_id` as its data identity.
    #[must_use]
    pub fn with_data_id(mut self, data_id: DataId) -> Self {
        self.data_id = Some(data_id);
        self
    }
}

/// The identity of a component's data: a random 128-bit id, written as 32 lowercase hex
/// digits (`data.id=` in the VERSION file).
///
/// Not a secret and not a checksum: it tells *this* data store from another one (another
/// node's, an older copy made before a re-install), so a component never starts over the
/// wrong data or over no data at all.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DataId(u128);

impl DataId {
    /// A new, random id (from the operating system's random source, mixed with the time,
    /// the process id and a counter, so two ids made anywhere differ with overwhelming
    /// probability).
    pub fn random() -> Self {
        use std::hash::{BuildHasher as _, Hasher as _};
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut bytes = [0_u8; 16];
        let from_os = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
            .is_ok();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        // `RandomState` is keyed from the OS's random source once per thread: a second,
        // independent source, and the only one where /dev/urandom does not exist.
        let mut halves = [0_u64; 2];
        for (i, half) in halves.iter_mut().enumerate() {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(nanos);
            hasher.write_u32(std::process::id());
            hasher.write_u64(count);
            hasher.write_usize(i);
            *half = hasher.finish();
        }
        let mixed = (u128::from(halves[0]) << 64) | u128::from(halves[1]);
        let os = if from_os {
            u128::from_le_bytes(bytes)
        } else {
            0
        };
        Self(os ^ mixed)
    }

    /// The id with this value.
    pub const fn from_u128(value: u128) -> Self {
        Self(value)
    }

    /// The id's value.
    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Display for DataId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for DataId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataId({self})")
    }
}

/// Why a text is not a [`DataId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a data id is 32 lowercase hex digits, not {0:?}")]
pub struct ParseDataIdError(pub String);

impl FromStr for DataId {
    type Err = ParseDataIdError;

    /// Parses exactly 32 lowercase hex digits (one id has one spelling).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let canonical =
            text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !canonical {
            return Err(ParseDataIdError(text.to_owned()));
        }
        u128::from_str_radix(text, 16)
            .map(Self)
            .map_err(|_| ParseDataIdError(text.to_owned()))
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

/// The record of a finalization: started by whom, towards which version, which
/// feature's `OnFinalize` action is running, whether an operator cancelled it, and
/// whether it finished. Persisted, so a finalization resumed after a restart keeps its
/// client, and a component restarted in the middle of an action knows what to resume
/// (see [`UpgradeFinalizer::resume_interrupted`](crate::UpgradeFinalizer::resume_interrupted)).
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
    /// The feature whose `OnFinalize` action was running when this record was last
    /// stored (by name), `None` between actions, after a failed action, and in files
    /// written before this field existed. A record left unfinished with a running
    /// feature means the process stopped (crashed, was killed or restarted) in the
    /// middle of that action.
    pub running_feature: Option<String>,
    /// The name of that feature's `OnFinalize` action.
    pub running_action: Option<String>,
    /// The operator's cancel, if the finalization was cancelled: it is then not resumed
    /// at start-up until an operator finalizes again.
    pub cancelled: Option<CancelRecord>,
    /// How many times the finalization was resumed at start-up without an operator.
    pub resumes: u32,
}

impl FinalizationRecord {
    /// A record of a finalization started by `client_id` towards `target_version`.
    pub fn new(client_id: impl Into<String>, target_version: u32, started_at_ms: u64) -> Self {
        Self {
            client_id: client_id.into(),
            target_version,
            started_at_ms,
            finished_at_ms: None,
            running_feature: None,
            running_action: None,
            cancelled: None,
            resumes: 0,
        }
    }

    /// Whether the finalization is unfinished and was stopped by a crash or a restart
    /// in the middle of an `OnFinalize` action, not by an operator's cancel: what
    /// [`UpgradeFinalizer::resume_interrupted`](crate::UpgradeFinalizer::resume_interrupted)
    /// resumes.
    pub fn is_interrupted(&self) -> bool {
        self.finished_at_ms.is_none() && self.running_feature.is_some() && self.cancelled.is_none()
    }
}

/// An operator's cancel of a finalization (`finalization.cancelled.*` in the VERSION
/// file).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CancelRecord {
    /// Who cancelled (a client id; `operator` when the caller did not say).
    pub client_id: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl CancelRecord {
    /// A cancel by `client_id` at `at_ms`.
    pub fn new(client_id: impl Into<String>, at_ms: u64) -> Self {
        Self {
            client_id: client_id.into(),
            at_ms,
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
    /// What happened.
    pub event: HistoryEvent,
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
        event: HistoryEvent,
        from_version: u32,
        to_version: u32,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            at_ms,
            client_id: client_id.into(),
            event,
            from_version,
            to_version,
            detail: detail.into(),
        }
    }
}

/// What a [`HistoryEntry`] records. `VERSION` stores it as one word (`finalized`,
/// `override`, `takeover`, `veto`, `veto-lifted`).
///
/// A word this release does not know (a newer release wrote it, and a downgraded binary
/// reads the file) is kept as [`Other`](Self::Other) and written back unchanged.
///
/// ```
/// use layout_core::state::HistoryEvent;
///
/// assert_eq!(HistoryEvent::from_word("veto-lifted"), HistoryEvent::VetoLifted);
/// assert_eq!(HistoryEvent::VetoLifted.as_str(), "veto-lifted");
/// let newer = HistoryEvent::from_word("rolled-back");
/// assert_eq!(newer, HistoryEvent::Other("rolled-back".to_owned()));
/// assert_eq!(newer.as_str(), "rolled-back");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HistoryEvent {
    /// A feature was finalized (`finalized`); the entry's detail names it.
    Finalized,
    /// A failing finalize condition was overridden (`override`); the detail says which,
    /// why, and how it failed.
    Override,
    /// A client took over an unfinished finalization (`takeover`); the detail names the
    /// client it was taken from.
    Takeover,
    /// Automatic finalization was vetoed (`veto`); the detail is the reason.
    Veto,
    /// The veto was lifted (`veto-lifted`).
    VetoLifted,
    /// A word this release does not know, kept as it was read.
    Other(String),
}

impl HistoryEvent {
    /// The event for the word `VERSION` stores; an unknown word is
    /// [`Other`](Self::Other).
    pub fn from_word(word: &str) -> Self {
        match word {
            "finalized" => Self::Finalized,
            "override" => Self::Override,
            "takeover" => Self::Takeover,
            "veto" => Self::Veto,
            "veto-lifted" => Self::VetoLifted,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The word `VERSION` stores.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Finalized => "finalized",
            Self::Override => "override",
            Self::Takeover => "takeover",
            Self::Veto => "veto",
            Self::VetoLifted => "veto-lifted",
            Self::Other(word) => word,
        }
    }
}

impl fmt::Display for HistoryEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}
