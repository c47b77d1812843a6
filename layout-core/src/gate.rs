//! Gating APIs on layout features: [`LayoutAware`] and the support of `#[disallowed_until]`.

use std::rc::Rc;
use std::sync::Arc;

use crate::error::LayoutError;
use crate::feature::LayoutFeature;
use crate::manager::LayoutVersionManager;

/// Gating APIs on layout features: the [`LayoutAware`] trait and the support of
/// `#[disallowed_until]`.
///
/// An API that exists only in a new on-disk layout must stay closed while the component
/// runs pre-finalized (new binary, old layout), so that a downgrade stays possible.
/// `#[disallowed_until(F::X)]` closes a function until feature `X` is finalized:
///
/// ```
/// use layout_core::{
///     disallowed_until, LayoutAware, LayoutError, LayoutFeature, LayoutVersionManager,
///     ManagerOptions, MemoryStorage, StartIntent,
/// };
///
/// #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
/// enum OmFeature {
///     #[layout(version = 0, description = "Initial layout")]
///     InitialVersion,
///     #[layout(version = 1, description = "Multi-tenancy tables")]
///     MultiTenancy,
/// }
///
/// #[derive(Debug, thiserror::Error)]
/// enum OmError {
///     #[error(transparent)]
///     Layout(LayoutError),
/// }
///
/// impl From<LayoutError> for OmError {
///     fn from(error: LayoutError) -> Self {
///         OmError::Layout(error)
///     }
/// }
///
/// struct OzoneManager {
///     lvm: LayoutVersionManager<OmFeature>,
/// }
///
/// impl LayoutAware<OmFeature> for OzoneManager {
///     fn layout_manager(&self) -> &LayoutVersionManager<OmFeature> {
///         &self.lvm
///     }
/// }
///
/// impl OzoneManager {
///     #[disallowed_until(OmFeature::MultiTenancy)]
///     fn create_tenant(&self, name: &str) -> Result<String, OmError> {
///         Ok(format!("tenant {name}"))
///     }
/// }
///
/// let opts = ManagerOptions::default()
///     .with_start_intent(StartIntent::Init)
///     .with_initial_layout_version(0);
/// let om = OzoneManager {
///     lvm: LayoutVersionManager::open(MemoryStorage::new(), opts)?,
/// };
/// // Pre-finalized: the call is refused, naming the operation, the feature and the MLV.
/// let Err(OmError::Layout(LayoutError::NotFinalized { operation, feature, version, metadata_layout_version })) =
///     om.create_tenant("t1")
/// else {
///     panic!("a pre-finalized component must refuse create_tenant");
/// };
/// assert_eq!((operation, feature, version, metadata_layout_version), (Some("create_tenant"), "MultiTenancy", 1, 0));
///
/// om.lvm.finalize_step(OmFeature::MultiTenancy)?;
/// assert_eq!(om.create_tenant("t1")?, "tenant t1");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// The gate is one atomic load and a compare on the hot path; the refusal is built out of
/// line. There is no fallback: a function whose manager cannot be found does not compile.
///
/// A component that owns (or can reach) the [`LayoutVersionManager`] of catalog `F`.
///
/// `#[disallowed_until(F::X)]` on a method reaches the manager through this trait on
/// `self`. Implement it once per component and catalog:
///
/// ```
/// use layout_core::{LayoutAware, LayoutFeature, LayoutVersionManager};
/// # #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
/// # enum OmFeature {
/// #     #[layout(version = 0, description = "Initial layout")]
/// #     InitialVersion,
/// # }
///
/// struct OzoneManager {
///     lvm: LayoutVersionManager<OmFeature>,
/// }
///
/// impl LayoutAware<OmFeature> for OzoneManager {
///     fn layout_manager(&self) -> &LayoutVersionManager<OmFeature> {
///         &self.lvm
///     }
/// }
/// ```
///
/// The manager itself, and references and smart pointers (`&T`, `&mut T`, `Box<T>`,
/// `Rc<T>`, `Arc<T>`) to anything layout-aware, are layout-aware too, so
/// `#[disallowed_until(F::X, manager = expr)]` accepts any of them as `expr`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not give access to a layout version manager",
    label = "`#[disallowed_until]` looks for the layout version manager here",
    note = "implement `layout_core::LayoutAware<YourCatalog>` for `{Self}`, or name the manager: \
            `#[disallowed_until(YourCatalog::Feature, manager = <expression>)]`"
)]
pub trait LayoutAware<F: LayoutFeature> {
    /// The component's layout version manager.
    fn layout_manager(&self) -> &LayoutVersionManager<F>;
}

impl<F: LayoutFeature> LayoutAware<F> for LayoutVersionManager<F> {
    #[inline]
    fn layout_manager(&self) -> &LayoutVersionManager<F> {
        self
    }
}

impl<F: LayoutFeature, T: LayoutAware<F> + ?Sized> LayoutAware<F> for &T {
    #[inline]
    fn layout_manager(&self) -> &LayoutVersionManager<F> {
        (**self).layout_manager()
    }
}

impl<F: LayoutFeature, T: LayoutAware<F> + ?Sized> LayoutAware<F> for &mut T {
    #[inline]
    fn layout_manager(&self) -> &LayoutVersionManager<F> {
        (**self).layout_manager()
    }
}

impl<F: LayoutFeature, T: LayoutAware<F> + ?Sized> LayoutAware<F> for Box<T> {
    #[inline]
    fn layout_manager(&self) -> &LayoutVersionManager<F> {
        (**self).layout_manager()
    }
}

impl<F: LayoutFeature, T: LayoutAware<F> + ?Sized> LayoutAware<F> for Rc<T> {
    #[inline]
    fn layout_manager(&self) -> &LayoutVersionManager<F> {
        (**self).layout_manager()
    }
}

impl<F: LayoutFeature, T: LayoutAware<F> + ?Sized> LayoutAware<F> for Arc<T> {
    #[inline]
    fn layout_manager(&self) -> &LayoutVersionManager<F> {
        (**self).layout_manager()
    }
}

/// What the code generated by `#[disallowed_until]` calls. Re-exported, hidden, from
/// `layout_core::__private`; not public API.
pub(crate) mod support {
    use super::{LayoutAware, LayoutError, LayoutFeature, LayoutVersionManager};

    /// A layout feature of catalog `F`, as the argument of `#[disallowed_until]`.
    ///
    /// Exists for its compile error: a path that is not a variant of the manager's catalog
    /// gets this message instead of a bare "trait bound not satisfied" or a type mismatch.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not a layout feature of catalog `{F}`",
        label = "expected a variant of `{F}`, the catalog of the layout version manager",
        note = "`#[disallowed_until]` takes a variant of the catalog (the enum deriving \
                `LayoutFeature`) whose manager the check reads"
    )]
    pub trait FeatureOf<F: LayoutFeature>: Copy {
        /// The feature, as its catalog's type.
        fn into_feature(self) -> F;
    }

    #[diagnostic::do_not_recommend]
    impl<F: LayoutFeature> FeatureOf<F> for F {
        #[inline]
        fn into_feature(self) -> F {
            self
        }
    }

    /// A layout feature of any catalog, as the argument of `#[belongs_to_layout_version]`.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not a layout feature",
        label = "expected a variant of a layout catalog, such as `OmFeature::MultiTenancy`",
        note = "a layout catalog is an enum deriving `LayoutFeature`; name one of its variants"
    )]
    pub trait AnyFeature: LayoutFeature {}

    #[diagnostic::do_not_recommend]
    impl<F: LayoutFeature> AnyFeature for F {}

    /// The return type of a gated function: a `Result` whose error converts from
    /// [`LayoutError`]. Type aliases such as `OmResult<T>` qualify.
    #[diagnostic::on_unimplemented(
        message = "`#[disallowed_until]` needs the function to return `Result<_, E>` with \
                   `E: From<LayoutError>`, not `{Self}`",
        label = "the refusal (a `layout_core::LayoutError`) cannot be returned as this type",
        note = "return a `Result` whose error type implements `From<layout_core::LayoutError>`"
    )]
    pub trait GatedReturn {
        /// The refusal, converted into the function's return type.
        fn refused(error: LayoutError) -> Self;
    }

    #[diagnostic::do_not_recommend]
    impl<T, E: From<LayoutError>> GatedReturn for Result<T, E> {
        #[inline]
        fn refused(error: LayoutError) -> Self {
            Err(E::from(error))
        }
    }

    /// The manager of catalog `F` reached through `self` (`LayoutAware` on the receiver).
    #[inline]
    pub fn self_manager<F: LayoutFeature, S: LayoutAware<F> + ?Sized>(
        component: &S,
    ) -> &LayoutVersionManager<F> {
        component.layout_manager()
    }

    /// The manager of catalog `F` named by `manager = expr`.
    #[inline]
    pub fn manager_of<F: LayoutFeature, M: LayoutAware<F> + ?Sized>(
        manager: &M,
    ) -> &LayoutVersionManager<F> {
        manager.layout_manager()
    }

    /// A closed gate: the feature and the MLV read. Small, so the hot path stays in
    /// registers.
    #[derive(Clone, Copy)]
    pub struct Closed<F> {
        feature: F,
        metadata_layout_version: u32,
    }

    /// The gate: one atomic load and a compare. `None` when the feature is finalized.
    #[inline]
    pub fn closed<F: LayoutFeature, X: FeatureOf<F>>(
        manager: &LayoutVersionManager<F>,
        feature: X,
    ) -> Option<Closed<F>> {
        let feature = feature.into_feature();
        let metadata_layout_version = manager.metadata_layout_version();
        if feature.layout_version() <= metadata_layout_version {
            None
        } else {
            Some(Closed {
                feature,
                metadata_layout_version,
            })
        }
    }

    /// The refusal, as the gated function's return type `R`: built out of line, on the
    /// cold path only.
    #[cold]
    #[inline(never)]
    pub fn refuse<F: LayoutFeature, R: GatedReturn>(
        operation: &'static str,
        closed: Closed<F>,
    ) -> R {
        R::refused(not_finalized(
            operation,
            closed.feature,
            closed.metadata_layout_version,
        ))
    }

    #[cold]
    #[inline(never)]
    fn not_finalized<F: LayoutFeature>(
        operation: &'static str,
        feature: F,
        metadata_layout_version: u32,
    ) -> LayoutError {
        LayoutError::NotFinalized {
            operation: Some(operation),
            feature: feature.name(),
            version: feature.layout_version(),
            metadata_layout_version,
        }
    }
}
