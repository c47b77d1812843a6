//! The layout of one component as the cluster layer sees it: [`LocalLayout`].

use std::fmt;
use std::sync::Arc;

use crate::error::BoxError;
use crate::feature::LayoutFeature;
use crate::manager::LayoutVersionManager;
use crate::{FinalizeRequest, UpgradeFinalizer};

/// A component's own layout, as the cluster sees it: its SLV and MLV, and a way to
/// finalize it up to a version. Used by members (finalize when instructed) and by the
/// coordinator (its own layout finalizes first).
///
/// Implemented for [`FinalizerLayout`] (an [`UpgradeFinalizer`] and its component: the
/// actions run) and for a bare [`LayoutVersionManager`] (no actions).
///
/// # Overview
///
/// The layout of one component as the cluster layer sees it: [`LocalLayout`], what the
/// coordinator finalizes first and a member finalizes when told to, with its
/// implementations for a [`LayoutVersionManager`] and an [`UpgradeFinalizer`]
/// ([`FinalizerLayout`]). The coordinator and the member both depend on it; it depends on
/// neither.
pub trait LocalLayout: Send + Sync {
    /// The software layout version.
    fn software_layout_version(&self) -> u32;
    /// The metadata layout version, as on disk.
    fn metadata_layout_version(&self) -> u32;
    /// Finalizes up to `version` (a no-op at or above it); returns the MLV after.
    fn finalize_to(&self, version: u32, client_id: &str) -> Result<u32, BoxError>;
}

impl<L: LocalLayout + ?Sized> LocalLayout for Arc<L> {
    fn software_layout_version(&self) -> u32 {
        (**self).software_layout_version()
    }
    fn metadata_layout_version(&self) -> u32 {
        (**self).metadata_layout_version()
    }
    fn finalize_to(&self, version: u32, client_id: &str) -> Result<u32, BoxError> {
        (**self).finalize_to(version, client_id)
    }
}

/// Asked to finalize to a version this software does not have.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot finalize {catalog} to layout version {requested}: this software's layout version \
     is {software_layout_version}"
)]
pub struct BeyondSoftware {
    /// The catalog.
    pub catalog: &'static str,
    /// The version asked for.
    pub requested: u32,
    /// The SLV.
    pub software_layout_version: u32,
}

fn target_feature<F: LayoutFeature>(version: u32, slv: u32) -> Result<F, BoxError> {
    F::from_layout_version(version)
        .filter(|f| f.layout_version() <= slv)
        .ok_or_else(|| {
            Box::new(BeyondSoftware {
                catalog: F::CATALOG_NAME,
                requested: version,
                software_layout_version: slv,
            }) as BoxError
        })
}

impl<F: LayoutFeature> LocalLayout for LayoutVersionManager<F> {
    fn software_layout_version(&self) -> u32 {
        LayoutVersionManager::software_layout_version(self)
    }
    fn metadata_layout_version(&self) -> u32 {
        LayoutVersionManager::metadata_layout_version(self)
    }
    fn finalize_to(&self, version: u32, _client_id: &str) -> Result<u32, BoxError> {
        let slv = LayoutVersionManager::software_layout_version(self);
        target_feature::<F>(version, slv)?;
        for feature in self.unfinalized_features() {
            if feature.layout_version() > version {
                break;
            }
            self.finalize_step(feature)?;
        }
        Ok(LayoutVersionManager::metadata_layout_version(self))
    }
}

/// A component's layout finalized through its [`UpgradeFinalizer`], so the `OnFinalize`
/// actions run. The cluster's finalization takes over any unfinished local one (it is
/// authoritative).
pub struct FinalizerLayout<F: LayoutFeature, C> {
    finalizer: Arc<UpgradeFinalizer<F, C>>,
    component: Arc<C>,
}

impl<F: LayoutFeature, C: 'static> FinalizerLayout<F, C> {
    /// `component`'s layout, finalized by `finalizer`.
    pub fn new(finalizer: Arc<UpgradeFinalizer<F, C>>, component: Arc<C>) -> Self {
        Self {
            finalizer,
            component,
        }
    }
}

impl<F: LayoutFeature, C: Send + Sync + 'static> LocalLayout for FinalizerLayout<F, C> {
    fn software_layout_version(&self) -> u32 {
        self.finalizer.layout_manager().software_layout_version()
    }
    fn metadata_layout_version(&self) -> u32 {
        self.finalizer.layout_manager().metadata_layout_version()
    }
    fn finalize_to(&self, version: u32, client_id: &str) -> Result<u32, BoxError> {
        let lvm = self.finalizer.layout_manager();
        if lvm.metadata_layout_version() >= version {
            return Ok(lvm.metadata_layout_version());
        }
        let target = target_feature::<F>(version, lvm.software_layout_version())?;
        let request = FinalizeRequest::new(client_id)
            .with_target(target)
            .with_takeover(true);
        let outcome = self.finalizer.finalize_with(request, &self.component)?;
        Ok(outcome.metadata_layout_version())
    }
}

impl<F: LayoutFeature, C> fmt::Debug for FinalizerLayout<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FinalizerLayout")
            .field("finalizer", &self.finalizer)
            .finish_non_exhaustive()
    }
}
