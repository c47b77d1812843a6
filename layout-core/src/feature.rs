//! Layout features and their catalog.
//!
//! A *layout feature* is one backward-incompatible change to a component's persisted
//! state. A component's features form its *catalog*: an enum whose variants carry dense
//! layout versions `0, 1, 2, ...` in declaration order, version 0 being the initial
//! layout. Derive the trait with `#[derive(LayoutFeature)]`; the derive checks the catalog
//! at compile time.

use std::fmt::Debug;
use std::hash::Hash;

/// One layout feature of a component's catalog.
///
/// Implement it with `#[derive(LayoutFeature)]` on a unit-variant enum:
///
/// ```
/// use layout_core::LayoutFeature;
///
/// #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
/// pub enum OmFeature {
///     #[layout(version = 0, description = "Initial layout")]
///     InitialVersion,
///     #[layout(version = 1, description = "Buckets carry a storage layout")]
///     BucketLayoutSupport,
///     #[layout(version = 2, description = "Multi-tenancy tables")]
///     MultiTenancy,
/// }
///
/// assert_eq!(OmFeature::latest(), OmFeature::MultiTenancy);
/// assert_eq!(OmFeature::MultiTenancy.layout_version(), 2);
/// assert_eq!(OmFeature::from_layout_version(1), Some(OmFeature::BucketLayoutSupport));
/// assert_eq!(OmFeature::BucketLayoutSupport.name(), "BucketLayoutSupport");
/// ```
///
/// The derive rejects, with an error pointing at the offending token: a gap or a
/// duplicate among the versions, a first version other than 0, a declaration order that
/// differs from the version order (so a derived `Ord` agrees with versions), non-unit
/// variants, generics, and a missing or empty description.
///
/// A feature may be marked `deprecated` (`#[layout(version = 3, description = "...",
/// deprecated)]`) but must never be removed or renumbered: a disk finalized to it would
/// no longer open.
///
/// Hand-written implementations must keep the same rules; [`validate_catalog`] checks
/// them at run time and [`LayoutVersionManager::open`](crate::LayoutVersionManager::open)
/// calls it.
pub trait LayoutFeature: Copy + Eq + Ord + Hash + Debug + Send + Sync + 'static {
    /// Every feature of the catalog, ordered by layout version (index == version).
    const ALL: &'static [Self];

    /// The catalog's name: the enum's name. The default component name of a manager.
    const CATALOG_NAME: &'static str;

    /// The feature's layout version.
    fn layout_version(self) -> u32;

    /// The feature's name, as written in the VERSION file and shown to operators.
    fn name(self) -> &'static str;

    /// A one-line description of the change this feature makes.
    fn description(self) -> &'static str;

    /// Whether the feature is marked deprecated (kept only so old disks still open).
    fn is_deprecated(self) -> bool {
        false
    }

    /// The feature with layout version `version`, if the catalog has one.
    fn from_layout_version(version: u32) -> Option<Self> {
        let index = usize::try_from(version).ok()?;
        Self::ALL
            .get(index)
            .copied()
            .filter(|f| f.layout_version() == version)
    }

    /// The feature with the highest layout version.
    ///
    /// # Panics
    ///
    /// Panics only for a hand-written implementation whose `ALL` is empty; the derive
    /// never produces one.
    fn latest() -> Self {
        match Self::ALL.last() {
            Some(feature) => *feature,
            None => panic!("layout catalog {} is empty", Self::CATALOG_NAME),
        }
    }

    /// The feature whose name is `name`, if the catalog has one.
    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|f| f.name() == name)
    }
}

/// A catalog that breaks the rules of [`LayoutFeature`].
///
/// The derive makes these impossible; a hand-written implementation can still produce
/// them, and [`validate_catalog`] reports them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// `ALL` holds no feature.
    #[error("layout catalog {catalog} is empty; it needs at least version 0 (the initial layout)")]
    Empty {
        /// The catalog's name.
        catalog: &'static str,
    },
    /// The feature at position `index` of `ALL` does not carry version `index`.
    #[error(
        "layout catalog {catalog} is not dense: feature {feature} at position {index} has \
         version {version}; versions must be 0, 1, 2, ... in order"
    )]
    NotDense {
        /// The catalog's name.
        catalog: &'static str,
        /// Position in `ALL`.
        index: usize,
        /// The feature found there.
        feature: &'static str,
        /// Its version.
        version: u32,
    },
    /// Two features share a name.
    #[error("layout catalog {catalog} names two features {name}")]
    DuplicateName {
        /// The catalog's name.
        catalog: &'static str,
        /// The repeated name.
        name: &'static str,
    },
    /// The derived `Ord` disagrees with the version order.
    #[error(
        "layout catalog {catalog}: Ord of {earlier} and {later} disagrees with their versions"
    )]
    OrderMismatch {
        /// The catalog's name.
        catalog: &'static str,
        /// The feature with the lower version.
        earlier: &'static str,
        /// The feature with the higher version.
        later: &'static str,
    },
    /// A feature name is empty or holds characters the VERSION file cannot carry.
    #[error("layout catalog {catalog}: feature name {name:?} is not a plain identifier")]
    BadName {
        /// The catalog's name.
        catalog: &'static str,
        /// The offending name.
        name: &'static str,
    },
}

/// Checks at run time what the derive checks at compile time: `ALL` is non-empty, dense
/// from 0 in order, names are unique identifiers, and `Ord` follows versions.
pub fn validate_catalog<F: LayoutFeature>() -> Result<(), CatalogError> {
    let catalog = F::CATALOG_NAME;
    if F::ALL.is_empty() {
        return Err(CatalogError::Empty { catalog });
    }
    for (index, feature) in F::ALL.iter().enumerate() {
        let version = feature.layout_version();
        if usize::try_from(version).ok() != Some(index) {
            return Err(CatalogError::NotDense {
                catalog,
                index,
                feature: feature.name(),
                version,
            });
        }
        let name = feature.name();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(CatalogError::BadName { catalog, name });
        }
        if F::ALL[..index].iter().any(|f| f.name() == name) {
            return Err(CatalogError::DuplicateName { catalog, name });
        }
        if index > 0 && F::ALL[index - 1] >= *feature {
            return Err(CatalogError::OrderMismatch {
                catalog,
                earlier: F::ALL[index - 1].name(),
                later: name,
            });
        }
    }
    Ok(())
}
