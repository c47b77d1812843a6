//! A coordinator's metrics for Prometheus (feature `http`): [`ClusterMetrics`].

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use super::coordinator::{ClusterError, ClusterStatus, Coordinator};
use crate::http::metrics::gauge_family;

/// The states of `layout_cluster_members{state}`, in the order they are decided.
const STATES: [&str; 4] = ["refused", "excluded", "pending", "finalized"];

/// The cluster metrics of a [`Coordinator`], read at each scrape from the same sources as
/// [`Coordinator::status`] and [`Coordinator::refused_members`]:
///
/// | metric | type | meaning |
/// |---|---|---|
/// | `layout_cluster_members{kind,state}` | gauge | members of `kind` in each `state` (below) |
/// | `layout_cluster_layout_version{kind}` | gauge | the cluster's finalized layout version of `kind` (the cluster MLV) |
///
/// Each member counts in one state, the first that applies:
///
/// | state | the member |
/// |---|---|
/// | `refused` | its last registration or heartbeat, within the member lease TTL, was refused (an old binary after finalization, an excluded member back with its old binary...); it may never have been admitted |
/// | `excluded` | an operator excluded it |
/// | `pending` | its MLV is below the cluster's: it was told to finalize and has not reported it yet |
/// | `finalized` | its MLV has reached the cluster's |
///
/// A kind whose state cannot be read (the store failed) exports nothing at that scrape
/// rather than numbers that are not true.
///
/// ```
/// use std::sync::Arc;
/// use layout_core::cluster::{ClusterMetrics, Coordinator, CoordinatorOptions, EmbeddedStore, MemberReport};
/// use layout_core::http::Registry;
///
/// let coordinator = Arc::new(Coordinator::open(
///     Arc::new(EmbeddedStore::in_memory()),
///     CoordinatorOptions::default(),
/// )?);
/// coordinator.register(&MemberReport::new("datanode", "dn1", 2, 1))?;
/// let mut registry = Registry::default();
/// ClusterMetrics::register(&coordinator, ["datanode"], &mut registry);
///
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry)?;
/// assert!(text.contains(r#"layout_cluster_members{kind="datanode",state="finalized"} 1"#));
/// assert!(text.contains(r#"layout_cluster_layout_version{kind="datanode"} 1"#));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ClusterMetrics {
    coordinator: Arc<Coordinator>,
    /// The kinds to export; `None`: every kind in the store, at each scrape.
    kinds: Option<Vec<String>>,
}

impl ClusterMetrics {
    /// Registers the metrics of `coordinator` for `kinds` in `registry`.
    pub fn register<K: Into<String>>(
        coordinator: &Arc<Coordinator>,
        kinds: impl IntoIterator<Item = K>,
        registry: &mut Registry,
    ) {
        registry.register_collector(Box::new(Self {
            coordinator: Arc::clone(coordinator),
            kinds: Some(kinds.into_iter().map(Into::into).collect()),
        }));
    }

    /// Registers the metrics of `coordinator` for every kind its store knows at each
    /// scrape (one more read of the store per scrape).
    pub fn register_all_kinds(coordinator: &Arc<Coordinator>, registry: &mut Registry) {
        registry.register_collector(Box::new(Self {
            coordinator: Arc::clone(coordinator),
            kinds: None,
        }));
    }

    /// The count of each of [`STATES`] for `kind`, and its cluster version if known.
    fn count(&self, kind: &str) -> Option<([i64; 4], Option<u32>)> {
        let refused: Vec<String> = self
            .coordinator
            .refused_members(kind)
            .into_iter()
            .map(|m| m.member_id)
            .collect();
        let status = match self.coordinator.status(kind) {
            Ok(status) => Some(status),
            // No member of it ever admitted: only refusals to count.
            Err(ClusterError::UnknownKind { .. }) => None,
            Err(e) => {
                tracing::debug!(kind, error = %e, "cluster metrics: the state cannot be read");
                return None;
            }
        };
        let mut counts = [0_i64; 4];
        counts[0] = i64::try_from(refused.len()).unwrap_or(i64::MAX);
        let version = status.as_ref().map(|s| s.cluster_layout_version);
        if let Some(ClusterStatus {
            cluster_layout_version,
            members,
            ..
        }) = &status
        {
            for member in members {
                if refused.contains(&member.member_id) {
                    continue;
                }
                let state = if member.excluded.is_some() {
                    1
                } else if member.metadata_layout_version < *cluster_layout_version {
                    2
                } else {
                    3
                };
                counts[state] += 1;
            }
        }
        Some((counts, version))
    }
}

impl fmt::Debug for ClusterMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterMetrics")
            .field("coordinator", &self.coordinator.coordinator_id())
            .field("kinds", &self.kinds)
            .finish()
    }
}

impl Collector for ClusterMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let kinds = match &self.kinds {
            Some(kinds) => kinds.clone(),
            None => match self.coordinator.kinds() {
                Ok(kinds) => kinds,
                Err(e) => {
                    tracing::debug!(error = %e, "cluster metrics: the kinds cannot be read");
                    return Ok(());
                }
            },
        };
        let mut members = Vec::new();
        let mut versions = Vec::new();
        for kind in kinds {
            let Some((counts, version)) = self.count(&kind) else {
                continue;
            };
            for (state, count) in STATES.iter().zip(counts) {
                members.push((
                    vec![("kind", kind.clone()), ("state", (*state).to_owned())],
                    count,
                ));
            }
            if let Some(version) = version {
                versions.push((vec![("kind", kind.clone())], i64::from(version)));
            }
        }
        gauge_family(
            &mut encoder,
            "layout_cluster_members",
            "Members of a component kind by state: refused, excluded, pending (told to finalize), finalized",
            &members,
        )?;
        gauge_family(
            &mut encoder,
            "layout_cluster_layout_version",
            "The cluster's finalized layout version of a component kind (the cluster MLV)",
            &versions,
        )
    }
}
