//! Cluster-wide finalization: a coordinator and its members agree on the layout.
//!
//! One node finalizing alone is not enough: a cluster must never let an old binary in
//! after the layout moved, must not finalize while a member cannot follow, and must bring
//! late members along. A [`Coordinator`] (think SCM) and its [`Member`]s (datanodes)
//! exchange `(SLV, MLV)` at registration and in heartbeats ([`MemberReport`],
//! [`CoordinatorAnswer`]); the cluster state of each component kind lives in a
//! [`ClusterStore`]: the [`EmbeddedStore`] by default, etcd (feature `etcd`) beyond one
//! machine, and a [`MovingStore`] moves a live cluster from one store to another.
//!
//! Members in the coordinator's process call it directly; member processes reach it over
//! the **member link** (feature `http`): the coordinator serves registrations and
//! heartbeats on the shared HTTP stack (`layout_core::http`) behind a cluster token, on
//! loopback unless TLS is configured (`CoordinatorServer`), and `HttpLink` is the
//! member's end. `ClusterMetrics` exports the coordinator's view to Prometheus. See
//! `link`.
//!
//! ```
//! use std::sync::Arc;
//! use layout_core::cluster::{ClusterError, Coordinator, CoordinatorOptions, EmbeddedStore, MemberReport, Refusal, HeartbeatError};
//!
//! let coordinator = Coordinator::open(Arc::new(EmbeddedStore::in_memory()), CoordinatorOptions::default())?;
//! // Three datanodes on layout 1; dn3 still runs the old release (SLV 1).
//! coordinator.register(&MemberReport::new("datanode", "dn1", 2, 1))?;
//! coordinator.register(&MemberReport::new("datanode", "dn2", 2, 1))?;
//! coordinator.register(&MemberReport::new("datanode", "dn3", 1, 1))?;
//!
//! // Finalizing to 2 is refused, naming the blocker.
//! let err = coordinator.finalize("datanode", Some(2), "ops").unwrap_err();
//! assert!(matches!(&err, ClusterError::Blocked { blockers, .. } if blockers[0].member_id == "dn3"));
//!
//! // Upgrade dn3 (rolling upgrade: accepted while pre-finalized), then finalize.
//! coordinator.register(&MemberReport::new("datanode", "dn3", 2, 1))?;
//! coordinator.finalize("datanode", Some(2), "ops")?;
//!
//! // Members are told to finalize; an old binary is refused from now on.
//! let answer = coordinator.heartbeat(&MemberReport::new("datanode", "dn1", 2, 1))?;
//! assert!(answer.instruction.is_some());
//! let refused = coordinator.register(&MemberReport::new("datanode", "dn4", 1, 1)).unwrap_err();
//! assert!(matches!(refused, HeartbeatError::Refused(Refusal::SoftwareBelowCluster { .. })));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Map
//!
//! | module | holds |
//! |---|---|
//! | `protocol` | [`MemberReport`], [`CoordinatorAnswer`], [`Instruction`], [`Refusal`], [`HeartbeatError`] |
//! | `state` | what a store keeps per component kind, as separate records: [`KindRecord`] (cluster version, [`FinalizationCheckpoint`]s, fencing token), [`MemberRecord`]s (with exclusions, incarnations), audit entries; [`KindState`] is all of it at once |
//! | `coordinator` | [`Coordinator`]: registration, heartbeats, finalization, exclusion, status |
//! | `member` | [`Member`] (its [`MemberFence`], its background finalization) and [`LocalLayout`] (a component's own layout) |
//! | `link` | [`CoordinatorLink`]: in process, or over HTTP (feature `http`): `CoordinatorServer` serves the member link behind a cluster token, `HttpLink` is the member's end |
//! | `metrics` | `ClusterMetrics` (feature `http`): `layout_cluster_members{kind,state}`, `layout_cluster_layout_version{kind}` for Prometheus |
//! | `store` | [`ClusterStore`], [`EmbeddedStore`], `EtcdStore` (feature `etcd`, on an `etcd::EtcdConnection`), [`MovingStore`] |
//!
//! See `docs/cluster-upgrade.md` for the operator's runbook.

mod coordinator;
mod link;
mod local;
mod member;
#[cfg(feature = "http")]
mod metrics;
mod protocol;
mod state;
mod store;

pub use coordinator::{
    Blocker, ClusterError, ClusterFinalizeOutcome, ClusterStatus, Coordinator, CoordinatorDriver,
    CoordinatorOptions, FinalizationJob, MemberStatus, RefusedMember, CLUSTER_FAILPOINTS,
    MAX_DRIVER_BACKOFF,
};
pub use link::CoordinatorLink;
#[cfg(feature = "http")]
pub use link::{
    link_error_format, member_link_routes, CoordinatorServer, HttpLink, LinkError, HEARTBEAT_PATH,
    LEAVE_PATH, REGISTER_PATH,
};
pub use local::{BeyondSoftware, FinalizerLayout, LocalLayout};
pub use member::{FenceCause, Member, MemberError, MemberFence, MemberStep};
#[cfg(feature = "http")]
pub use metrics::ClusterMetrics;
pub use protocol::{
    CoordinatorAnswer, FinalizationProgress, HeartbeatError, Instruction, MemberReport, Refusal,
    PROTOCOL_VERSION,
};
pub use state::{
    AuditEntry, AuditEvent, ClusterFinalization, Exclusion, FinalizationCheckpoint, KindRecord,
    KindState, MemberRecord, MemberRole, MoveRecord, MoveRole, MoveStage, AUDIT_RETENTION,
    CLUSTER_STATE_FORMAT,
};
#[cfg(feature = "etcd")]
pub use store::EtcdStore;
pub use store::{
    ClusterStore, EmbeddedStore, FinalizerClaim, MovePhase, MoveReport, MoveStatus, MovingStore,
    StoreCasOutcome, StoreError, Versioned, DEFAULT_MIRROR_CAPACITY, MOVE_STEPS,
};
