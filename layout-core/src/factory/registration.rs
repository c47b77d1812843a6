//! Handlers registered with `#[belongs_to_layout_version]`, collected with `inventory`.
//!
//! The attribute submits one [`HandlerRegistration`] per `impl Handler for T`. `inventory`
//! collects a single concrete type, so the record is not generic: it names the catalog and
//! the handler trait by `TypeId` (through function pointers, since `TypeId::of` is not
//! usable in a `static` on every supported toolchain) and builds the handler through a
//! constructor returning `Box<dyn Any>`. [`LayoutVersionInstanceFactory::from_registry`]
//! keeps the records of its catalog and instance type and downcasts them.

use std::any::{Any, TypeId};
use std::collections::BTreeMap;

use super::problems::{Origin, RegistrationProblem, SkippedRegistration};
use crate::feature::LayoutFeature;
use crate::gate::support::AnyFeature;
use crate::manager::LayoutVersionManager;
use crate::{FactoryError, LayoutVersionInstanceFactory};

/// A layout feature without its type: what a registration knows of the feature it
/// belongs to.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct FeatureRef {
    catalog: TypeId,
    catalog_name: &'static str,
    name: &'static str,
    version: u32,
}

impl FeatureRef {
    /// The type-erased form of `feature`.
    pub fn of<F: AnyFeature>(feature: F) -> Self {
        Self {
            catalog: TypeId::of::<F>(),
            catalog_name: F::CATALOG_NAME,
            name: feature.name(),
            version: feature.layout_version(),
        }
    }
}

/// One `#[belongs_to_layout_version]` submission. Built by the generated code only.
#[doc(hidden)]
pub struct HandlerRegistration {
    key: &'static str,
    feature: fn() -> FeatureRef,
    /// `TypeId` of the instance type, `Box<dyn Handler>`.
    instance_type: fn() -> TypeId,
    construct: fn() -> Box<dyn Any>,
    type_name: &'static str,
    trait_name: &'static str,
    file: &'static str,
    line: u32,
}

impl HandlerRegistration {
    /// A registration record (used in the `static` that `inventory::submit!` builds).
    #[allow(clippy::too_many_arguments)] // generated code fills it, field by field
    pub const fn new(
        key: &'static str,
        feature: fn() -> FeatureRef,
        instance_type: fn() -> TypeId,
        construct: fn() -> Box<dyn Any>,
        type_name: &'static str,
        trait_name: &'static str,
        file: &'static str,
        line: u32,
    ) -> Self {
        Self {
            key,
            feature,
            instance_type,
            construct,
            type_name,
            trait_name,
            file,
            line,
        }
    }

    fn origin(&self) -> Origin {
        Origin {
            type_name: self.type_name,
            file: self.file,
            line: self.line,
        }
    }
}

inventory::collect!(HandlerRegistration);

/// A handler type `#[belongs_to_layout_version]` can register: built with `Default`.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` needs `Default` to be registered with `#[belongs_to_layout_version]`",
    label = "the factory builds this handler with `Default::default()`",
    note = "derive or implement `Default` for `{Self}`"
)]
pub trait RegistrableHandler: Default {}

#[diagnostic::do_not_recommend]
impl<T: Default> RegistrableHandler for T {}

/// Builds a handler for a registration's constructor.
#[doc(hidden)]
pub fn construct_handler<T: RegistrableHandler>() -> T {
    T::default()
}

impl<F, V> LayoutVersionInstanceFactory<F, &'static str, V>
where
    F: LayoutFeature,
    V: 'static,
{
    /// A factory holding every handler registered with `#[belongs_to_layout_version]` for
    /// catalog `F` and instance type `V` (`Box<dyn Handler>`, for the `Handler` of
    /// `impl Handler for T`).
    ///
    /// Registrations above the manager's software layout version (a capped SLV) are left
    /// out and listed by [`skipped`](LayoutVersionInstanceFactory::skipped). Two handlers
    /// for the same key and version, and a feature the catalog does not list, are refused
    /// with [`FactoryError::Registry`], which lists every problem at once.
    ///
    /// ```
    /// use layout_core::{
    ///     belongs_to_layout_version, LayoutFeature, LayoutVersionInstanceFactory,
    ///     LayoutVersionManager, ManagerOptions, MemoryStorage, StartIntent,
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
    /// trait RequestHandler: Send + Sync {
    ///     fn handle(&self, request: &str) -> String;
    /// }
    ///
    /// #[derive(Default)]
    /// struct CreateVolume;
    ///
    /// #[belongs_to_layout_version(OmFeature::InitialVersion, key = "CreateVolume")]
    /// impl RequestHandler for CreateVolume {
    ///     fn handle(&self, request: &str) -> String {
    ///         format!("volume {request}")
    ///     }
    /// }
    ///
    /// #[derive(Default)]
    /// struct CreateVolumeInTenant;
    ///
    /// #[belongs_to_layout_version(OmFeature::MultiTenancy, key = "CreateVolume")]
    /// impl RequestHandler for CreateVolumeInTenant {
    ///     fn handle(&self, request: &str) -> String {
    ///         format!("tenant volume {request}")
    ///     }
    /// }
    ///
    /// let opts = ManagerOptions::default()
    ///     .with_start_intent(StartIntent::Init)
    ///     .with_initial_layout_version(0);
    /// let lvm = LayoutVersionManager::<OmFeature>::open(MemoryStorage::new(), opts)?;
    /// let handlers =
    ///     LayoutVersionInstanceFactory::<_, _, Box<dyn RequestHandler>>::from_registry(&lvm)?;
    /// handlers.expect(&[("CreateVolume", OmFeature::InitialVersion), ("CreateVolume", OmFeature::MultiTenancy)])?;
    ///
    /// assert_eq!(handlers.get(&lvm, &"CreateVolume")?.handle("v1"), "volume v1");
    /// lvm.finalize_step(OmFeature::MultiTenancy)?;
    /// assert_eq!(handlers.get(&lvm, &"CreateVolume")?.handle("v1"), "tenant volume v1");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # The linking pitfall
    ///
    /// Registrations live in the binary only if the crate that holds them is linked, and a
    /// crate that nothing references is not: if the handlers sit in their own crate
    /// (`om-handlers`) and the server only lists it in `Cargo.toml`, its registrations
    /// silently vanish and every request of those keys fails. Reference the crate, and
    /// check the wiring at start-up or in a test with one line:
    ///
    /// ```text
    /// // In om-handlers: the (key, feature) pairs it registers.
    /// pub const HANDLERS: &[(&str, OmFeature)] = &[("CreateVolume", OmFeature::MultiTenancy)];
    ///
    /// // In the server: links om-handlers, and fails listing the missing pairs if they did not arrive.
    /// handlers.expect(om_handlers::HANDLERS)?;
    /// ```
    ///
    /// [`expect`](LayoutVersionInstanceFactory::expect) has a compiled example.
    ///
    /// (`use om_handlers as _;` links a crate too, but checks nothing.)
    pub fn from_registry(
        manager: &LayoutVersionManager<F>,
    ) -> Result<Self, FactoryError<F, &'static str>> {
        let catalog = TypeId::of::<F>();
        let instance_type = TypeId::of::<V>();
        let mut mine: Vec<(&HandlerRegistration, FeatureRef)> =
            inventory::iter::<HandlerRegistration>
                .into_iter()
                .filter(|registration| (registration.instance_type)() == instance_type)
                .map(|registration| (registration, (registration.feature)()))
                .filter(|(_, feature)| feature.catalog == catalog)
                .collect();
        // inventory's order depends on linking; sort for stable reports and registration.
        mine.sort_by_key(|(registration, feature)| {
            (registration.key, feature.version, registration.origin())
        });

        let mut problems = Vec::new();
        let mut accepted: BTreeMap<(&'static str, u32), (&HandlerRegistration, F)> =
            BTreeMap::new();
        for (registration, feature_ref) in mine {
            let Some(feature) = F::from_layout_version(feature_ref.version)
                .filter(|feature| feature.name() == feature_ref.name)
            else {
                problems.push(RegistrationProblem::UnknownFeature {
                    key: registration.key,
                    feature: feature_ref.name,
                    version: feature_ref.version,
                    catalog: feature_ref.catalog_name,
                    handler_type: registration.type_name,
                    location: location(registration),
                });
                continue;
            };
            match accepted.entry((registration.key, feature_ref.version)) {
                std::collections::btree_map::Entry::Occupied(first) => {
                    let (first, _) = *first.get();
                    problems.push(RegistrationProblem::Duplicate {
                        key: registration.key,
                        feature: feature_ref.name,
                        version: feature_ref.version,
                        first_type: first.type_name,
                        first_location: location(first),
                        second_type: registration.type_name,
                        second_location: location(registration),
                    });
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert((registration, feature));
                }
            }
        }
        if !problems.is_empty() {
            return Err(FactoryError::Registry { problems });
        }

        let mut factory = Self::new(manager);
        for ((key, version), (registration, feature)) in accepted {
            if version > factory.software_layout_version {
                factory.skipped.push(SkippedRegistration {
                    key,
                    feature,
                    handler_type: registration.type_name,
                    file: registration.file,
                    line: registration.line,
                });
                continue;
            }
            let instance = (registration.construct)();
            let Ok(instance) = instance.downcast::<V>() else {
                // Unreachable: the constructor and `instance_type` come from one expansion.
                return Err(FactoryError::Registry {
                    problems: vec![RegistrationProblem::UnknownFeature {
                        key,
                        feature: feature.name(),
                        version,
                        catalog: F::CATALOG_NAME,
                        handler_type: registration.type_name,
                        location: format!(
                            "{} (its constructor built another type than `dyn {}`)",
                            location(registration),
                            registration.trait_name
                        ),
                    }],
                });
            };
            factory.register(key, feature, *instance)?;
        }
        if !factory.skipped.is_empty() {
            tracing::info!(
                catalog = F::CATALOG_NAME,
                software_layout_version = factory.software_layout_version,
                skipped = factory.skipped.len(),
                "left out handlers above the software layout version"
            );
        }
        Ok(factory)
    }
}

fn location(registration: &HandlerRegistration) -> String {
    format!("{}:{}", registration.file, registration.line)
}
