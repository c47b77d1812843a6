//! The cluster state of one component kind, as kept in a cluster store.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The version of the cluster state's encoding ([`KindRecord`], [`MemberRecord`] and the
/// [`KindState`] document). A store holding a newer one is refused. Format 1 kept a
/// kind's whole state in one document; format 2 splits it into records.
pub const CLUSTER_STATE_FORMAT: u32 = 2;

/// How many audit entries a store keeps per kind; appending beyond it drops the oldest.
pub const AUDIT_RETENTION: usize = 1_000;

/// How far a cluster finalization has come. Each checkpoint is stored (one transaction)
/// before the next step starts, so a coordinator that restarts resumes from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FinalizationCheckpoint {
    /// Every member could follow; the target is fenced (members below it are refused);
    /// the coordinator is finalizing its own layout.
    Started,
    /// The coordinator finalized: the cluster's finalized version is the target, and
    /// members are told to finalize.
    CoordinatorFinalized,
    /// Every member (but excluded ones) reported an MLV at the target.
    MembersFinalized,
    /// Done: recorded in the history, the finalizer released.
    Complete,
}

impl fmt::Display for FinalizationCheckpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Started => "started",
            Self::CoordinatorFinalized => "coordinator finalized",
            Self::MembersFinalized => "members finalized",
            Self::Complete => "complete",
        })
    }
}

/// A cluster finalization: started by a client, driven by one coordinator at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFinalization {
    /// The version being finalized to.
    pub target: u32,
    /// Where it stands.
    pub checkpoint: FinalizationCheckpoint,
    /// The client (operator, tool) that asked for it.
    pub client_id: String,
    /// The coordinator that started it.
    pub coordinator_id: String,
    /// When it started (ms since the Unix epoch).
    pub started_at_ms: u64,
    /// When it completed, once [`FinalizationCheckpoint::Complete`].
    pub completed_at_ms: Option<u64>,
}

/// An operator's exclusion of a member: it no longer blocks finalization, and may rejoin
/// only with software at least `required_software_layout_version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exclusion {
    /// Why (recorded, shown in status and refusals).
    pub reason: String,
    /// Who excluded it.
    pub excluded_by: String,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// The member's SLV when it was excluded.
    pub software_layout_version: u32,
    /// The SLV it needs to rejoin: the newest version the cluster could finalize to when
    /// it was excluded (or the finalized version, if higher).
    pub required_software_layout_version: u32,
}

/// What a member of the cluster is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemberRole {
    /// A member (a datanode).
    #[default]
    Member,
    /// A coordinator: registered in the membership with its own software layout version,
    /// so an old-release coordinator on the same store blocks finalization like any
    /// member; no member may take its id.
    Coordinator,
}

impl fmt::Display for MemberRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Member => "member",
            Self::Coordinator => "coordinator",
        })
    }
}

/// A member, as remembered by the cluster. Membership is persistent: a member stays
/// known (and blocks finalization while its software is too old) until an operator
/// excludes it; liveness is separate (kept by the coordinator, from heartbeats).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Member or coordinator.
    #[serde(default)]
    pub role: MemberRole,
    /// The incarnation of the process that registered last (new at every process start):
    /// a second live process with the same member id is refused.
    #[serde(default)]
    pub incarnation: String,
    /// Its SLV, as last reported.
    pub software_layout_version: u32,
    /// Its MLV, as last reported.
    pub metadata_layout_version: u32,
    /// When it first registered (ms since the Unix epoch).
    pub first_registered_at_ms: u64,
    /// When it last registered.
    pub last_registered_at_ms: u64,
    /// The operator's exclusion, if any.
    pub excluded: Option<Exclusion>,
}

/// What an [`AuditEntry`] records. Stored (and shown in JSON) as the word each variant
/// names; a word this release does not know (written by a newer one) reads as
/// [`Other`](Self::Other) and is written back unchanged.
///
/// ```
/// use layout_core::cluster::AuditEvent;
///
/// assert_eq!(AuditEvent::from_word("store-moved"), AuditEvent::StoreMoved);
/// assert_eq!(AuditEvent::FinalizationStarted.as_str(), "finalization-started");
/// let newer: AuditEvent = serde_json::from_str("\"members-rolled-back\"")?;
/// assert_eq!(newer, AuditEvent::Other("members-rolled-back".to_owned()));
/// assert_eq!(serde_json::to_string(&newer)?, "\"members-rolled-back\"");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
#[non_exhaustive]
pub enum AuditEvent {
    /// An operator excluded a member (`excluded`); the detail is the reason.
    Excluded,
    /// An excluded member was admitted again (`readmitted`).
    Readmitted,
    /// A cluster finalization started (`finalization-started`).
    FinalizationStarted,
    /// The coordinator finalized its own layout (`coordinator-finalized`).
    CoordinatorFinalized,
    /// Every member reported the target version (`members-finalized`).
    MembersFinalized,
    /// The cluster finalization is complete (`finalization-complete`).
    FinalizationComplete,
    /// The cluster state moved to another store (`store-moved`).
    StoreMoved,
    /// A first-release key was turned into a tombstone pointing at the format-2 records
    /// (`state-format-2`).
    StateFormat2,
    /// A word this release does not know, kept as it was read.
    Other(String),
}

impl AuditEvent {
    /// The event for a stored word; an unknown word is [`Other`](Self::Other).
    pub fn from_word(word: &str) -> Self {
        match word {
            "excluded" => Self::Excluded,
            "readmitted" => Self::Readmitted,
            "finalization-started" => Self::FinalizationStarted,
            "coordinator-finalized" => Self::CoordinatorFinalized,
            "members-finalized" => Self::MembersFinalized,
            "finalization-complete" => Self::FinalizationComplete,
            "store-moved" => Self::StoreMoved,
            "state-format-2" => Self::StateFormat2,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The stored word.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Excluded => "excluded",
            Self::Readmitted => "readmitted",
            Self::FinalizationStarted => "finalization-started",
            Self::CoordinatorFinalized => "coordinator-finalized",
            Self::MembersFinalized => "members-finalized",
            Self::FinalizationComplete => "finalization-complete",
            Self::StoreMoved => "store-moved",
            Self::StateFormat2 => "state-format-2",
            Self::Other(word) => word,
        }
    }
}

impl From<String> for AuditEvent {
    fn from(word: String) -> Self {
        match Self::from_word(&word) {
            Self::Other(_) => Self::Other(word),
            known => known,
        }
    }
}

impl From<AuditEvent> for String {
    fn from(event: AuditEvent) -> Self {
        match event {
            AuditEvent::Other(word) => word,
            known => known.as_str().to_owned(),
        }
    }
}

impl fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One entry of the audit trail: exclusions, readmissions, finalization checkpoints,
/// store moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// Who: an operator's client id, or a coordinator's id.
    pub actor: String,
    /// What happened; stored as its word (`excluded`, `finalization-started`, ...).
    pub event: AuditEvent,
    /// The member concerned, if any.
    pub member_id: Option<String>,
    /// The layout version concerned, if any.
    pub version: Option<u32>,
    /// Details (an exclusion's reason).
    pub detail: String,
}

/// The small, versioned record of one component kind: everything but the members and
/// the audit trail. Every checkpoint of a finalization is one compare-and-swap of it.
///
/// # Overview
///
/// The cluster state of one component kind, as kept in a
/// [`ClusterStore`](crate::cluster::ClusterStore), in separate records so that no change
/// rewrites more than it changes:
///
/// - one small [`KindRecord`]: the cluster's finalized version, the finalization in
///   progress and its checkpoint, the finalizer's fencing token, the move mark;
/// - one [`MemberRecord`] per member (with its exclusion);
/// - the audit trail, one [`AuditEntry`] per record, append-only and bounded
///   ([`AUDIT_RETENTION`]).
///
/// [`KindState`] is all of it at once: a snapshot for status and store moves, and the
/// document the first release stored whole (format 1), migrated forward on open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindRecord {
    /// [`CLUSTER_STATE_FORMAT`] of the release that wrote it.
    pub format: u32,
    /// The component kind.
    pub kind: String,
    /// The cluster's finalized layout version (the cluster MLV): the fence below which no
    /// member's software may run.
    pub cluster_layout_version: u32,
    /// The finalization in progress or the last one.
    pub finalization: Option<ClusterFinalization>,
    /// The finalizer's fencing token: raised by every coordinator that takes the
    /// finalizer claim, and checked on every checkpoint it writes, so a coordinator that
    /// lost its claim (its lease lapsed) can never write a checkpoint again.
    #[serde(default)]
    pub claim_generation: u64,
    /// The coordinator that took the claim of [`claim_generation`](Self::claim_generation).
    #[serde(default)]
    pub claimed_by: Option<String>,
    /// Set in the old store when the cluster state moved to another store: a coordinator
    /// still pointed at this one refuses to use it.
    pub moved_to: Option<String>,
}

impl KindRecord {
    /// A new kind at `cluster_layout_version`.
    pub fn new(kind: impl Into<String>, cluster_layout_version: u32) -> Self {
        Self {
            format: CLUSTER_STATE_FORMAT,
            kind: kind.into(),
            cluster_layout_version,
            finalization: None,
            claim_generation: 0,
            claimed_by: None,
            moved_to: None,
        }
    }

    /// The finalization in progress (started and not complete).
    pub fn finalization_in_progress(&self) -> Option<&ClusterFinalization> {
        self.finalization
            .as_ref()
            .filter(|f| f.checkpoint != FinalizationCheckpoint::Complete)
    }
}

/// The whole cluster state of one component kind: its [`KindRecord`], every member and
/// the audit trail. A snapshot (status, store moves); stores keep the parts as separate
/// records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindState {
    /// [`CLUSTER_STATE_FORMAT`] of the release that wrote it.
    pub format: u32,
    /// The component kind.
    pub kind: String,
    /// The cluster's finalized layout version (the cluster MLV).
    pub cluster_layout_version: u32,
    /// The finalization in progress or the last one.
    pub finalization: Option<ClusterFinalization>,
    /// See [`KindRecord::claim_generation`].
    #[serde(default)]
    pub claim_generation: u64,
    /// See [`KindRecord::claimed_by`].
    #[serde(default)]
    pub claimed_by: Option<String>,
    /// Every member ever registered and not forgotten.
    pub members: BTreeMap<String, MemberRecord>,
    /// The audit trail, oldest first.
    pub audit: Vec<AuditEntry>,
    /// See [`KindRecord::moved_to`].
    pub moved_to: Option<String>,
}

impl KindState {
    /// A new kind at `cluster_layout_version`, with no members.
    pub fn new(kind: impl Into<String>, cluster_layout_version: u32) -> Self {
        Self::from_parts(
            KindRecord::new(kind, cluster_layout_version),
            BTreeMap::new(),
            Vec::new(),
        )
    }

    /// The state made of its records.
    pub fn from_parts(
        record: KindRecord,
        members: BTreeMap<String, MemberRecord>,
        audit: Vec<AuditEntry>,
    ) -> Self {
        Self {
            format: record.format,
            kind: record.kind,
            cluster_layout_version: record.cluster_layout_version,
            finalization: record.finalization,
            claim_generation: record.claim_generation,
            claimed_by: record.claimed_by,
            members,
            audit,
            moved_to: record.moved_to,
        }
    }

    /// Its kind record.
    pub fn record(&self) -> KindRecord {
        KindRecord {
            format: self.format,
            kind: self.kind.clone(),
            cluster_layout_version: self.cluster_layout_version,
            finalization: self.finalization.clone(),
            claim_generation: self.claim_generation,
            claimed_by: self.claimed_by.clone(),
            moved_to: self.moved_to.clone(),
        }
    }

    /// The finalization in progress (started and not complete).
    pub fn finalization_in_progress(&self) -> Option<&ClusterFinalization> {
        self.finalization
            .as_ref()
            .filter(|f| f.checkpoint != FinalizationCheckpoint::Complete)
    }

    /// Members that are not excluded.
    pub fn active_members(&self) -> impl Iterator<Item = (&String, &MemberRecord)> {
        self.members.iter().filter(|(_, m)| m.excluded.is_none())
    }
}

/// Reads a [`KindState`] document of any format up to [`CLUSTER_STATE_FORMAT`]:
/// format 1 (the first release kept a kind's whole state in one document) is migrated
/// forward with the project's document-migration machinery
/// ([`DocumentMigrator`](crate::migration::DocumentMigrator), version field `format`):
/// members become [`MemberRole::Member`] with no incarnation, the claim generation
/// starts at 0, and the audit trail keeps its newest [`AUDIT_RETENTION`] entries. A
/// newer format is refused (the error names both).
pub(crate) fn upgrade_kind_document(document: serde_json::Value) -> Result<KindState, String> {
    let migrator = crate::migration::DocumentMigrator::builder("cluster kind state")
        .version_field("format")
        .base_version(1)
        .step(
            crate::migration::DocumentMigration::new(1, 2, |mut doc| {
                if let Some(members) = doc
                    .get_mut("members")
                    .and_then(serde_json::Value::as_object_mut)
                {
                    for member in members.values_mut() {
                        if let Some(member) = member.as_object_mut() {
                            member.insert("role".into(), "member".into());
                            member.insert("incarnation".into(), "".into());
                        }
                    }
                }
                if let Some(object) = doc.as_object_mut() {
                    object.insert("claim_generation".into(), 0.into());
                    object.insert("claimed_by".into(), serde_json::Value::Null);
                }
                if let Some(audit) = doc
                    .get_mut("audit")
                    .and_then(serde_json::Value::as_array_mut)
                {
                    let excess = audit.len().saturating_sub(AUDIT_RETENTION);
                    audit.drain(..excess);
                }
                Ok(doc)
            })
            .named("split the kind state into records"),
        )
        .build()
        .map_err(|e| e.to_string())?;
    let migrated = migrator.upgrade(document).map_err(|e| e.to_string())?;
    serde_json::from_value(migrated.document).map_err(|e| e.to_string())
}

/// Which end of a store move a [`MoveRecord`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MoveRole {
    /// The store the state moves away from ("moving to `to`").
    Source,
    /// The store the state moves into ("receiving from `from`").
    Destination,
}

/// The persisted stage of a store move (see
/// [`MovingStore`](crate::cluster::MovingStore)): what a restarted coordinator resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MoveStage {
    /// `begin` recorded the move and is copying the state into the destination.
    Copying,
    /// The copy is complete; writes are mirrored to the destination.
    DualPublishing,
    /// The move is committed: the destination alone holds the cluster state.
    Switched,
    /// The move was abandoned before its switch; the destination's copy is stale.
    RolledBack,
}

impl fmt::Display for MoveStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Copying => "copying",
            Self::DualPublishing => "dual-publishing",
            Self::Switched => "switched",
            Self::RolledBack => "rolled-back",
        })
    }
}

/// A store move as one store records it ([`ClusterStore::load_move`](crate::cluster::ClusterStore::load_move)):
/// both ends of a move hold a record with the same `id`, the source's saying where the
/// state goes, the destination's where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRecord {
    /// The move's id, the same in both stores; a repeated `begin` of the same move keeps it.
    pub id: String,
    /// Which end of the move this store is.
    pub role: MoveRole,
    /// The source store's location.
    pub from: String,
    /// The destination store's location.
    pub to: String,
    /// Where the move stands.
    pub stage: MoveStage,
    /// When the move began (Unix milliseconds).
    pub started_at_ms: u64,
    /// When the stage was last changed (Unix milliseconds).
    #[serde(default)]
    pub updated_at_ms: u64,
    /// Who began it (an operator's client id, or `store-move`).
    pub by: String,
}
