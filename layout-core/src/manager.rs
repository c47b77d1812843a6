//! The layout version manager: MLV and SLV of one component.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;

use crate::error::LayoutError;
use crate::feature::{validate_catalog, LayoutFeature};
use crate::options::{ManagerOptions, StartIntent};
use crate::state::{DataId, LayoutState};
use crate::LayoutStorage;

/// The failpoint between storing a new MLV and publishing it (see
/// [`FAILPOINTS`](crate::finalizer::FAILPOINTS)).
pub(crate) const FAILPOINT_AFTER_PERSIST: &str = "finalize::after_persist";

/// Knows a component's software layout version (SLV) and the metadata layout version on
/// disk (MLV), gates features on the MLV, and advances the MLV one feature at a time,
/// durably.
///
/// ```
/// use layout_core::{FileStorage, LayoutFeature, LayoutVersionManager, ManagerOptions, StartIntent};
///
/// #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
/// enum OmFeature {
///     #[layout(version = 0, description = "Initial layout")]
///     InitialVersion,
///     #[layout(version = 1, description = "Multi-tenancy tables")]
///     MultiTenancy,
/// }
///
/// let dir = tempfile::tempdir()?;
/// let opts = ManagerOptions::default()
///     .with_start_intent(StartIntent::Init)
///     .with_initial_layout_version(0);
/// let lvm = LayoutVersionManager::<OmFeature>::open(FileStorage::new(dir.path()), opts)?;
/// assert_eq!((lvm.metadata_layout_version(), lvm.software_layout_version()), (0, 1));
/// assert!(lvm.needs_finalization());
/// assert!(!lvm.is_allowed(OmFeature::MultiTenancy));
/// assert!(lvm.check_allowed(OmFeature::MultiTenancy).is_err());
///
/// lvm.finalize_step(OmFeature::MultiTenancy)?; // persisted, then published
/// assert!(lvm.is_allowed(OmFeature::MultiTenancy));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Consistency
///
/// Reads ([`is_allowed`](Self::is_allowed),
/// [`metadata_layout_version`](Self::metadata_layout_version)) are one atomic load and
/// take no lock. Changes are serialized by a mutex and stored durably *before* the new MLV
/// is published, so no reader ever sees an MLV above what is on disk, and the MLV never
/// goes backwards.
pub struct LayoutVersionManager<F: LayoutFeature> {
    mlv: AtomicU32,
    slv: u32,
    minimum_supported: u32,
    component: String,
    intent: StartIntent,
    created: bool,
    storage: Box<dyn LayoutStorage>,
    /// The state as last durably stored; held while storing, so changes are serialized.
    durable: Mutex<LayoutState>,
    catalog: PhantomData<fn() -> F>,
}

/// Whether a feature is finalized, from a manager's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeatureStatus {
    /// Its version is at or below the MLV: its layout is on disk and its APIs are open.
    Finalized,
    /// Known to this software but not finalized yet.
    NotFinalized,
    /// Above this software's (capped) SLV: this binary cannot finalize it.
    BeyondSoftware,
}

/// A catalog feature and its status, as listed by
/// [`LayoutVersionManager::features`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FeatureInfo<F> {
    /// The feature.
    pub feature: F,
    /// Its status.
    pub status: FeatureStatus,
}

impl<F: LayoutFeature> FeatureInfo<F> {
    /// Whether the feature is finalized.
    pub fn is_finalized(&self) -> bool {
        self.status == FeatureStatus::Finalized
    }
}

/// What a finalization step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// The MLV moved from `from` to `to` (`to == from + 1`), durably.
    Finalized {
        /// The MLV before.
        from: u32,
        /// The MLV now.
        to: u32,
    },
    /// The version was already finalized (a replay): nothing changed.
    AlreadyFinalized {
        /// The current MLV.
        metadata_layout_version: u32,
    },
}

impl<F: LayoutFeature> LayoutVersionManager<F> {
    /// Opens the component's layout state and applies the start-up rules.
    ///
    /// - No state stored: with [`StartIntent::Init`], it is created at the SLV (or at the
    ///   pinned initial version); otherwise [`LayoutError::NotInitialized`].
    /// - State of another component: [`LayoutError::ComponentMismatch`].
    /// - MLV above SLV: [`LayoutError::DiskNewerThanSoftware`].
    /// - The feature stored with the MLV differs from the catalog's:
    ///   [`LayoutError::FeatureNameMismatch`].
    /// - MLV below the minimum supported version: [`LayoutError::BelowMinimumSupported`].
    /// - A damaged store: [`LayoutError::Storage`], and the store is left untouched.
    ///
    /// With [`StartIntent::Upgrade`] or [`StartIntent::Downgrade`], a prepare marker is
    /// cleared.
    pub fn open<S: LayoutStorage + 'static>(
        storage: S,
        options: ManagerOptions,
    ) -> Result<Self, LayoutError> {
        let ManagerOptions {
            component_name,
            initial_layout_version,
            software_layout_version,
            start_intent: intent,
            minimum_supported_version,
        } = options;
        validate_catalog::<F>()?;
        let latest = F::latest().layout_version();
        let slv = software_layout_version.unwrap_or(latest);
        if slv > latest {
            return Err(LayoutError::InvalidOptions(format!(
                "software layout version {slv} is beyond the catalog {}, whose latest feature \
                 {} has version {latest}",
                F::CATALOG_NAME,
                F::latest().name()
            )));
        }
        let minimum_supported = minimum_supported_version.unwrap_or(0);
        if minimum_supported > slv {
            return Err(LayoutError::InvalidOptions(format!(
                "minimum supported version {minimum_supported} is above the software layout \
                 version {slv}"
            )));
        }
        let initial = initial_layout_version.unwrap_or(slv);
        if initial > slv || initial < minimum_supported {
            return Err(LayoutError::InvalidOptions(format!(
                "initial layout version {initial} must lie between the minimum supported \
                 version {minimum_supported} and the software layout version {slv}"
            )));
        }
        let component = component_name.unwrap_or_else(|| F::CATALOG_NAME.to_owned());
        if component.is_empty() {
            return Err(LayoutError::InvalidOptions(
                "the component name is empty".to_owned(),
            ));
        }
        let location = storage.location();

        let (mut state, created) = match storage.load()? {
            Some(state) => (state, false),
            None if intent == StartIntent::Init => {
                // The data identity is born with the state: the component records it in
                // its store, so a store that goes missing or is swapped is caught later.
                let state = LayoutState::new(&component, initial, feature_at::<F>(initial).name())
                    .with_data_id(DataId::random());
                storage.store(&state)?;
                tracing::info!(
                    component = %component,
                    location = %location,
                    metadata_layout_version = initial,
                    software_layout_version = slv,
                    "initialized layout state"
                );
                (state, true)
            }
            None => {
                return Err(LayoutError::NotInitialized {
                    component,
                    location,
                })
            }
        };

        check_stored_state::<F>(&state, &component, &location, slv, minimum_supported)?;

        if matches!(intent, StartIntent::Upgrade | StartIntent::Downgrade)
            && state.prepare_index.is_some()
        {
            let mut cleared = state.clone();
            cleared.prepare_index = None;
            storage.store(&cleared)?;
            tracing::info!(component = %component, ?intent, "cleared prepare marker at start-up");
            state = cleared;
        }

        let mlv = state.layout_version;
        tracing::info!(
            component = %component,
            metadata_layout_version = mlv,
            software_layout_version = slv,
            pre_finalized = mlv < slv,
            "opened layout state"
        );
        Ok(Self {
            mlv: AtomicU32::new(mlv),
            slv,
            minimum_supported,
            component,
            intent,
            created,
            storage: Box::new(storage),
            durable: Mutex::new(state),
            catalog: PhantomData,
        })
    }

    /// The metadata layout version (MLV): the highest finalized feature's version.
    #[inline]
    pub fn metadata_layout_version(&self) -> u32 {
        self.mlv.load(Ordering::Acquire)
    }

    /// The software layout version (SLV): the highest version this binary knows, or its
    /// configured cap.
    #[inline]
    pub fn software_layout_version(&self) -> u32 {
        self.slv
    }

    /// The feature at the MLV.
    pub fn metadata_layout_feature(&self) -> F {
        feature_at::<F>(self.metadata_layout_version())
    }

    /// The feature at the SLV.
    pub fn software_layout_feature(&self) -> F {
        feature_at::<F>(self.slv)
    }

    /// Whether `feature` is finalized (its version is at or below the MLV). One atomic
    /// load and a compare.
    #[inline]
    pub fn is_allowed(&self, feature: F) -> bool {
        feature.layout_version() <= self.metadata_layout_version()
    }

    /// `Ok` when `feature` is finalized, else [`LayoutError::NotFinalized`].
    #[inline]
    pub fn check_allowed(&self, feature: F) -> Result<(), LayoutError> {
        self.check(None, feature)
    }

    /// Like [`check_allowed`](Self::check_allowed), naming the operation refused in the
    /// error. `#[disallowed_until]` calls this.
    #[inline]
    pub fn check_operation_allowed(
        &self,
        operation: &'static str,
        feature: F,
    ) -> Result<(), LayoutError> {
        self.check(Some(operation), feature)
    }

    #[inline]
    fn check(&self, operation: Option<&'static str>, feature: F) -> Result<(), LayoutError> {
        let mlv = self.metadata_layout_version();
        if feature.layout_version() <= mlv {
            Ok(())
        } else {
            Err(LayoutError::NotFinalized {
                operation,
                feature: feature.name(),
                version: feature.layout_version(),
                metadata_layout_version: mlv,
            })
        }
    }

    /// Whether MLV < SLV: the component runs pre-finalized and can still be downgraded.
    pub fn needs_finalization(&self) -> bool {
        self.metadata_layout_version() < self.slv
    }

    /// The features above the MLV up to the SLV, ascending: what finalization would do.
    pub fn unfinalized_features(&self) -> Vec<F> {
        let mlv = self.metadata_layout_version();
        F::ALL
            .iter()
            .copied()
            .filter(|f| f.layout_version() > mlv && f.layout_version() <= self.slv)
            .collect()
    }

    /// Every catalog feature with its status, ascending.
    pub fn features(&self) -> Vec<FeatureInfo<F>> {
        let mlv = self.metadata_layout_version();
        F::ALL
            .iter()
            .map(|&feature| {
                let v = feature.layout_version();
                let status = if v <= mlv {
                    FeatureStatus::Finalized
                } else if v <= self.slv {
                    FeatureStatus::NotFinalized
                } else {
                    FeatureStatus::BeyondSoftware
                };
                FeatureInfo { feature, status }
            })
            .collect()
    }

    /// The component's name.
    pub fn component_name(&self) -> &str {
        &self.component
    }

    /// Where the layout state lives.
    pub fn storage_location(&self) -> String {
        self.storage.location()
    }

    /// The intent the component was started with.
    pub fn start_intent(&self) -> StartIntent {
        self.intent
    }

    /// Whether this open created the layout state (a fresh installation).
    pub fn was_created(&self) -> bool {
        self.created
    }

    /// The oldest MLV this release opens.
    pub fn minimum_supported_version(&self) -> u32 {
        self.minimum_supported
    }

    /// The identity of the data this layout state belongs to (see
    /// [`binding`](crate::binding)); `None` for a state written before data identities
    /// existed, until a component adopts one.
    pub fn data_id(&self) -> Option<DataId> {
        self.durable.lock().data_id
    }

    /// A copy of the layout state as last durably stored.
    pub fn state(&self) -> LayoutState {
        self.durable.lock().clone()
    }

    /// Finalizes `feature`: stores MLV = its version durably, then publishes it.
    ///
    /// Accepted when the version is MLV + 1; a no-op ([`StepOutcome::AlreadyFinalized`])
    /// when it is at or below the MLV (a replay); [`LayoutError::VersionSkip`] when above
    /// MLV + 1, and [`LayoutError::BeyondSoftware`] above the SLV. When storing fails, the
    /// MLV in memory stays where it was; a retry of the same step is accepted.
    pub fn finalize_step(&self, feature: F) -> Result<StepOutcome, LayoutError> {
        self.finalize_step_with(feature, |_| {})
    }

    /// Like [`finalize_step`](Self::finalize_step), changing other fields of the state in
    /// the same durable write (a finalization record, a history entry). `update` runs only
    /// when the step moves the MLV; it may not change the MLV, its feature or the
    /// component.
    pub fn finalize_step_with(
        &self,
        feature: F,
        update: impl FnOnce(&mut LayoutState),
    ) -> Result<StepOutcome, LayoutError> {
        let version = feature.layout_version();
        if version > self.slv {
            return Err(LayoutError::BeyondSoftware {
                requested: version,
                software_layout_version: self.slv,
            });
        }
        let mut durable = self.durable.lock();
        let mlv = durable.layout_version;
        if version <= mlv {
            // What is durable may not have been published yet, if a previous step was
            // interrupted between the two (a panic in that window): publish it now.
            self.mlv.fetch_max(mlv, Ordering::Release);
            return Ok(StepOutcome::AlreadyFinalized {
                metadata_layout_version: mlv,
            });
        }
        if version > mlv + 1 {
            return Err(LayoutError::VersionSkip {
                requested: version,
                feature: feature.name(),
                metadata_layout_version: mlv,
                next: mlv + 1,
            });
        }
        let mut next = durable.clone();
        update(&mut next);
        check_update(&durable, &next)?;
        next.layout_version = version;
        feature.name().clone_into(&mut next.layout_feature);
        self.storage.store(&next)?;
        *durable = next;
        // The new MLV is durable and not yet visible: a crash here must recover to it.
        crate::crash_point::step!(FAILPOINT_AFTER_PERSIST);
        self.mlv.store(version, Ordering::Release);
        tracing::info!(
            component = %self.component,
            feature = feature.name(),
            metadata_layout_version = version,
            "finalized layout feature"
        );
        Ok(StepOutcome::Finalized {
            from: mlv,
            to: version,
        })
    }

    /// [`finalize_step`](Self::finalize_step) by raw layout version (as replayed from a
    /// log). A version outside the catalog or above the SLV is
    /// [`LayoutError::BeyondSoftware`].
    pub fn finalize_step_version(&self, version: u32) -> Result<StepOutcome, LayoutError> {
        match F::from_layout_version(version) {
            Some(feature) => self.finalize_step(feature),
            None => Err(LayoutError::BeyondSoftware {
                requested: version,
                software_layout_version: self.slv,
            }),
        }
    }

    /// Changes fields of the persisted state other than the MLV (the first-upgrade
    /// marker, the finalization record and history, the prepare marker, extra keys) and
    /// stores it durably. Changing the MLV, its feature, the component or the format is
    /// refused with [`LayoutError::ForbiddenStateUpdate`]; nothing is stored then. When
    /// storing fails, the in-memory copy keeps the old state.
    pub(crate) fn update_state<R>(
        &self,
        update: impl FnOnce(&mut LayoutState) -> R,
    ) -> Result<R, LayoutError> {
        let mut durable = self.durable.lock();
        let mut next = durable.clone();
        let result = update(&mut next);
        check_update(&durable, &next)?;
        if next.layout_version != durable.layout_version
            || next.layout_feature != durable.layout_feature
        {
            return Err(LayoutError::ForbiddenStateUpdate(
                "the metadata layout version",
            ));
        }
        if next != *durable {
            self.storage.store(&next)?;
            *durable = next;
        }
        Ok(result)
    }
}

fn check_update(before: &LayoutState, after: &LayoutState) -> Result<(), LayoutError> {
    if after.component != before.component {
        return Err(LayoutError::ForbiddenStateUpdate("the component name"));
    }
    if after.format_version != before.format_version {
        return Err(LayoutError::ForbiddenStateUpdate("the format version"));
    }
    // Set once (at Init, or adopted by a state written before data ids existed), never
    // changed: a changed id would disown the component's data.
    if before.data_id.is_some() && after.data_id != before.data_id {
        return Err(LayoutError::ForbiddenStateUpdate("the data id"));
    }
    if let Some(key) = after
        .extra
        .keys()
        .find(|k| !crate::storage::format::is_valid_key(k))
    {
        return Err(LayoutError::InvalidOptions(format!(
            "extra key {key:?} may hold only ASCII letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// The catalog's feature at `version`. Callers pass versions at or below the SLV, which
/// `open` checked against the (validated, dense) catalog.
fn feature_at<F: LayoutFeature>(version: u32) -> F {
    F::from_layout_version(version).unwrap_or_else(F::latest)
}

fn check_stored_state<F: LayoutFeature>(
    state: &LayoutState,
    component: &str,
    location: &str,
    slv: u32,
    minimum_supported: u32,
) -> Result<(), LayoutError> {
    if state.component != component {
        return Err(LayoutError::ComponentMismatch {
            location: location.to_owned(),
            expected: component.to_owned(),
            found: state.component.clone(),
        });
    }
    let mlv = state.layout_version;
    if mlv > slv {
        return Err(LayoutError::DiskNewerThanSoftware {
            component: component.to_owned(),
            location: location.to_owned(),
            metadata_layout_version: mlv,
            feature_on_disk: state.layout_feature.clone(),
            software_layout_version: slv,
            software_feature: feature_at::<F>(slv).name(),
        });
    }
    let in_catalog = feature_at::<F>(mlv).name();
    if state.layout_feature != in_catalog {
        return Err(LayoutError::FeatureNameMismatch {
            component: component.to_owned(),
            location: location.to_owned(),
            metadata_layout_version: mlv,
            feature_on_disk: state.layout_feature.clone(),
            feature_in_catalog: in_catalog,
        });
    }
    if mlv < minimum_supported {
        return Err(LayoutError::BelowMinimumSupported {
            component: component.to_owned(),
            location: location.to_owned(),
            metadata_layout_version: mlv,
            feature_on_disk: state.layout_feature.clone(),
            minimum_supported,
            minimum_feature: feature_at::<F>(minimum_supported).name(),
        });
    }
    Ok(())
}

impl<F: LayoutFeature> fmt::Debug for LayoutVersionManager<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayoutVersionManager")
            .field("catalog", &F::CATALOG_NAME)
            .field("component", &self.component)
            .field("metadata_layout_version", &self.metadata_layout_version())
            .field("software_layout_version", &self.slv)
            .field("storage", &self.storage.location())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::{LayoutError, LayoutFeature, LayoutVersionManager, ManagerOptions, MemoryStorage};

    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
    enum Feature {
        #[layout(version = 0, description = "Initial layout")]
        Initial,
        #[layout(version = 1, description = "One")]
        One,
    }

    #[test]
    fn state_updates_may_not_move_the_mlv_or_rename_the_component() {
        let storage = Arc::new(MemoryStorage::new());
        let options = ManagerOptions::default()
            .with_start_intent(crate::StartIntent::Init)
            .with_initial_layout_version(0);
        let lvm = LayoutVersionManager::<Feature>::open(Arc::clone(&storage), options).unwrap();
        let before = storage.snapshot();
        let err = lvm.update_state(|s| s.layout_version = 1).unwrap_err();
        assert!(
            matches!(err, LayoutError::ForbiddenStateUpdate(_)),
            "{err:?}"
        );
        let err = lvm
            .update_state(|s| s.component = "other".into())
            .unwrap_err();
        assert!(
            matches!(err, LayoutError::ForbiddenStateUpdate(_)),
            "{err:?}"
        );
        assert_eq!(storage.snapshot(), before);
        assert_eq!(lvm.metadata_layout_version(), 0);
        lvm.update_state(|s| s.first_upgrade_version = 1).unwrap();
        assert_eq!(storage.snapshot().unwrap().first_upgrade_version, 1);
        assert!(!lvm.is_allowed(Feature::One));
    }
}
