//! A component's metrics (feature `http`): [`AdminMetrics`], served at `GET /metrics`
//! by [`metrics_router`](crate::http::metrics_router).
//!
//! Values are read when scraped, from the same sources as the admin status, so a scrape
//! never disagrees with `layoutctl status`:
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `layout_metadata_layout_version` | gauge | MLV |
//! | `layout_software_layout_version` | gauge | SLV |
//! | `layout_pre_finalized` | gauge | 1 while MLV < SLV |
//! | `layout_features_finalized` | gauge | catalog features at or below MLV (the initial layout included) |
//! | `layout_features` | gauge | catalog features |
//! | `layout_finalization_status{status}` | gauge | 1 for the current status, 0 for the others |
//! | `layout_finalization_running` | gauge | 1 while a finalization holds the finalizer |
//! | `layout_finalization_feature_index` / `_feature_count` | gauge | feature i of n of the running finalization |
//! | `layout_finalization_action_done` / `_action_total` | gauge | units (rows) done / in all of the running action (a background migration) |
//! | `layout_finalization_action_rate` | gauge | units per second of the running action |
//! | `layout_finalization_failures` | counter | finalization runs that ended in an error |
//! | `layout_prepare_state{state}` | gauge | 1 for the prepare state (`NOT_PREPARED`, `PREPARE_GATE_ENABLED`, `PREPARE_COMPLETED`) |
//! | `layout_prepare_index` | gauge | the prepare index, when prepared |
//!
//! Each series carries the label `component`. A coordinator adds
//! `layout_cluster_members{kind,state}` and `layout_cluster_layout_version{kind}`.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use super::{
    AdminService, FinalizationStatusResponse, PrepareResponse, StatusResponse,
    WireFinalizationStatus, WirePrepareState,
};
use crate::http::metrics::{counter, gauge, gauge_family};

/// The metrics of a component's layout, read from its [`AdminService`] at each scrape.
///
/// ```
/// use std::sync::Arc;
/// use layout_core::admin::AdminService;
/// use layout_core::admin::AdminMetrics;
/// use layout_core::http::Registry;
/// use layout_core::*;
///
/// #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
/// enum OmFeature {
///     #[layout(version = 0, description = "Initial layout")]
///     Initial,
/// }
/// let opts = ManagerOptions::default().with_start_intent(StartIntent::Init);
/// let lvm = Arc::new(LayoutVersionManager::<OmFeature>::open(MemoryStorage::new(), opts)?);
/// let finalizer = Arc::new(UpgradeFinalizer::new(lvm, ActionRegistry::<OmFeature, ()>::empty()));
/// let service = Arc::new(AdminService::new(finalizer, Arc::new(())));
///
/// let mut registry = Registry::default();
/// AdminMetrics::register(&service, &mut registry);
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry)?;
/// assert!(text.contains("layout_metadata_layout_version{component=\"OmFeature\"} 0"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct AdminMetrics {
    service: Arc<AdminService>,
}

impl AdminMetrics {
    /// Registers the layout metrics of `service` in `registry`, labelled with the
    /// component's name.
    pub fn register(service: &Arc<AdminService>, registry: &mut Registry) {
        let component = service.component_name();
        registry
            .sub_registry_with_label(("component".into(), component.into()))
            .register_collector(Box::new(Self {
                service: Arc::clone(service),
            }));
    }
}

impl fmt::Debug for AdminMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminMetrics")
            .field("component", &self.service.component_name())
            .finish()
    }
}

impl Collector for AdminMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let Ok(status) = self.service.status() else {
            // The status cannot be read (storage failure): export nothing rather than
            // numbers that are not true.
            return Ok(());
        };
        // One metric after the other, in the order of the table above.
        encode_layout(&mut encoder, &status)?;
        encode_finalization(&mut encoder, &status.finalization)?;
        encode_prepare(&mut encoder, &status.prepare)
    }
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The layout: MLV, SLV, pre-finalized, features.
fn encode_layout(e: &mut DescriptorEncoder<'_>, status: &StatusResponse) -> fmt::Result {
    gauge(
        e,
        "layout_metadata_layout_version",
        "The metadata layout version (MLV) on disk",
        i64::from(status.metadata_layout_version),
    )?;
    gauge(
        e,
        "layout_software_layout_version",
        "The software layout version (SLV) of this binary",
        i64::from(status.software_layout_version),
    )?;
    gauge(
        e,
        "layout_pre_finalized",
        "1 while the layout is below the software's (MLV < SLV)",
        i64::from(status.needs_finalization),
    )?;
    let finalized = status
        .features
        .iter()
        .filter(|f| f.version <= status.metadata_layout_version)
        .count();
    gauge(
        e,
        "layout_features_finalized",
        "Catalog features at or below the MLV, the initial layout included",
        i64::try_from(finalized).unwrap_or(i64::MAX),
    )?;
    gauge(
        e,
        "layout_features",
        "Catalog features",
        i64::try_from(status.features.len()).unwrap_or(i64::MAX),
    )?;
    Ok(())
}

/// The finalization: status, running, progress of the running feature, failures.
fn encode_finalization(
    e: &mut DescriptorEncoder<'_>,
    fin: &FinalizationStatusResponse,
) -> fmt::Result {
    // One series per status this release knows, in the order of the documentation.
    let series: Vec<_> = WireFinalizationStatus::KNOWN
        .iter()
        .map(|s| {
            (
                vec![("status", s.as_str().to_owned())],
                i64::from(fin.status == *s),
            )
        })
        .collect();
    gauge_family(
        e,
        "layout_finalization_status",
        "1 for the current finalization status",
        &series,
    )?;
    gauge(
        e,
        "layout_finalization_running",
        "1 while a finalization holds the finalizer",
        i64::from(fin.running),
    )?;
    let progress = fin.progress.as_ref();
    gauge(
        e,
        "layout_finalization_feature_index",
        "The feature the running finalization is at (1-based; 0 when none runs)",
        progress.map_or(0, |p| i64::try_from(p.feature_index).unwrap_or(i64::MAX)),
    )?;
    gauge(
        e,
        "layout_finalization_feature_count",
        "Features the running finalization finalizes (0 when none runs)",
        progress.map_or(0, |p| i64::try_from(p.feature_count).unwrap_or(i64::MAX)),
    )?;
    gauge(
        e,
        "layout_finalization_action_done",
        "Units (rows) the running finalize action has done",
        progress.map_or(0, |p| as_i64(p.done)),
    )?;
    gauge(
        e,
        "layout_finalization_action_total",
        "Units (rows) the running finalize action has in all, if known (0 otherwise)",
        progress.and_then(|p| p.total).map_or(0, as_i64),
    )?;
    #[allow(clippy::cast_precision_loss)] // a rate for a dashboard
    let rate = progress.map_or(0.0, |p| {
        if p.elapsed_ms == 0 {
            0.0
        } else {
            p.done as f64 * 1000.0 / p.elapsed_ms as f64
        }
    });
    gauge(
        e,
        "layout_finalization_action_rate",
        "Units (rows) per second of the running finalize action",
        rate,
    )?;
    counter(
        e,
        "layout_finalization_failures",
        "Finalization runs that ended in an error since the component started",
        fin.failures,
    )?;
    Ok(())
}

/// Prepare: the state and the index.
fn encode_prepare(e: &mut DescriptorEncoder<'_>, prepare: &PrepareResponse) -> fmt::Result {
    let series: Vec<_> = WirePrepareState::KNOWN
        .iter()
        .map(|s| {
            (
                vec![("state", s.as_str().to_owned())],
                i64::from(prepare.state == *s),
            )
        })
        .collect();
    gauge_family(
        e,
        "layout_prepare_state",
        "1 for the prepare state",
        &series,
    )?;
    gauge(
        e,
        "layout_prepare_index",
        "The log index the component is prepared at (0 when not prepared)",
        prepare.index.map_or(0, as_i64),
    )?;
    Ok(())
}
