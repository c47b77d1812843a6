//! Procedural macros for `layout-core`.
//!
//! Use them through `layout_core`, which re-exports each macro next to the item it serves
//! (as `serde` re-exports `serde_derive`); code they generate names only `::layout_core::...`
//! and `::core::...` paths.
//!
//! | macro | module |
//! |---|---|
//! | `#[derive(LayoutFeature)]` | `feature` |
//! | `#[upgrade_action]` | `upgrade_action` |
//! | `#[disallowed_until]` | `disallowed_until` |
//! | `#[belongs_to_layout_version]` | `belongs_to` |

mod attr_args;
mod belongs_to;
mod ctxt;
mod disallowed_until;
mod feature;
mod upgrade_action;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Derives `layout_core::LayoutFeature` for a catalog: an enum with one unit variant per
/// layout feature.
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
///     #[layout(version = 2, description = "Old thing", deprecated)]
///     Old,
/// }
///
/// assert_eq!(OmFeature::ALL, [OmFeature::InitialVersion, OmFeature::BucketLayoutSupport, OmFeature::Old]);
/// assert_eq!(OmFeature::CATALOG_NAME, "OmFeature");
/// assert_eq!(OmFeature::BucketLayoutSupport.layout_version(), 1);
/// assert_eq!(OmFeature::BucketLayoutSupport.name(), "BucketLayoutSupport");
/// assert!(OmFeature::Old.is_deprecated());
/// ```
///
/// # The `#[layout(...)]` attribute
///
/// Every variant carries exactly one, with these keys in any order:
///
/// - `version = <integer literal>` (required): the feature's layout version, a `u32`.
/// - `description = "<text>"` (required): one line saying what the feature changes in the
///   persisted state; it must not be empty or only whitespace.
/// - `deprecated` (optional flag): the feature is kept only so that old disks still open.
///   A feature may be deprecated, never removed or renumbered.
///
/// Doc comments and other attributes (`#[deprecated]`, `#[allow(..)]`, ...) on the enum and
/// its variants are left alone.
///
/// # Rules
///
/// The derive checks the catalog and reports every violation at once, each pointing at the
/// offending token:
///
/// - versions are dense: `0, 1, 2, ...` with no gap and no duplicate, the first (lowest)
///   being 0, the initial layout;
/// - variants are declared in version order, so that a derived `Ord` follows layout versions;
/// - variants are unit variants without an explicit discriminant (`A = 5`): the version
///   comes from the attribute;
/// - the enum has at least one variant and no generic parameters;
/// - variant names are ASCII (they are written into the VERSION file on disk);
/// - `#[derive(LayoutFeature)]` applies to enums only.
///
/// # Generated code
///
/// One `impl ::layout_core::LayoutFeature for YourEnum`: `ALL` (every feature in version
/// order), `CATALOG_NAME` (the enum's name), `layout_version`, `name` (the variant's name),
/// `description` and `is_deprecated`. The trait's default methods (`latest`,
/// `from_layout_version`, `from_name`) come with it. Nothing else is generated.
#[proc_macro_derive(LayoutFeature, attributes(layout))]
pub fn derive_layout_feature(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    feature::expand(&input).into()
}

/// Registers a function as an upgrade action of a layout feature, for the component type
/// of its first argument.
///
/// ```
/// use layout_core::{upgrade_action, ActionContext, ActionError, ActionRegistry, LayoutFeature, Phase};
///
/// #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
/// enum OmFeature {
///     #[layout(version = 0, description = "Initial layout")]
///     Initial,
///     #[layout(version = 1, description = "Multi-tenancy tables")]
///     MultiTenancy,
/// }
/// struct OzoneManager;
///
/// #[upgrade_action(OmFeature::MultiTenancy, phase = OnFinalize)]
/// fn create_tenant_tables(
///     _om: &OzoneManager,
///     _ctx: &ActionContext<'_, OmFeature>,
/// ) -> Result<(), ActionError> {
///     Ok(())
/// }
///
/// let registry = ActionRegistry::<OmFeature, OzoneManager>::builder().with_registered().build()?;
/// registry.expect(&[(OmFeature::MultiTenancy, Phase::OnFinalize)])?;
/// assert_eq!(registry.get(OmFeature::MultiTenancy, Phase::OnFinalize).unwrap().name(), "create_tenant_tables");
/// # Ok::<(), layout_core::action::RegistryError>(())
/// ```
///
/// Arguments: the feature as `Catalog::Feature`, `phase = ValidateInPrefinalize |
/// OnFirstUpgradeStart | OnFinalize`, and optionally `name = "..."` (default: the
/// function's name). The function takes `(&Component, &ActionContext<'_, Catalog>)` and
/// returns `Result<(), E>` with `E: Into<ActionError>`.
///
/// The action is submitted to an inventory that
/// `ActionRegistryBuilder::with_registered` reads. A module that nothing references may
/// not be linked, and its actions then never reach the registry: call
/// `ActionRegistry::expect` at start-up to catch that.
#[proc_macro_attribute]
pub fn upgrade_action(attr: TokenStream, item: TokenStream) -> TokenStream {
    upgrade_action::expand(attr.into(), item.into()).into()
}

/// Closes a function until a layout feature is finalized: before that, it returns
/// `Err(LayoutError::NotFinalized { .. })` converted into its error type.
///
/// ```
/// use layout_core::{disallowed_until, LayoutAware, LayoutError, LayoutFeature, LayoutVersionManager};
///
/// #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
/// enum OmFeature {
///     #[layout(version = 0, description = "Initial layout")]
///     InitialVersion,
///     #[layout(version = 1, description = "Multi-tenancy tables")]
///     MultiTenancy,
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
///     pub fn create_tenant(&self, name: &str) -> Result<String, LayoutError> {
///         Ok(name.to_owned())
///     }
///
///     #[disallowed_until(OmFeature::MultiTenancy, manager = lvm, operation = "CreateTenant")]
///     pub fn create_tenant_with(lvm: &LayoutVersionManager<OmFeature>, name: &str) -> Result<String, LayoutError> {
///         Ok(name.to_owned())
///     }
/// }
/// ```
///
/// # Arguments
///
/// - the layout feature, as a path to a catalog variant (`OmFeature::MultiTenancy`);
/// - `manager = <expression>` (optional): the manager to check against, evaluated at the
///   start of each call, in the function's scope (so it may use the arguments). Anything
///   `LayoutAware` works: the manager, a reference, an `Arc`, a component. Required for
///   functions without `self`; for methods, the default is `LayoutAware` on `self`;
/// - `operation = "Name"` (optional): the operation named in the refusal; default: the
///   function's name.
///
/// # What it generates
///
/// The check becomes the function's first statement: one atomic load of the metadata
/// layout version and a compare; the refusal is built out of line. On `async fn`, it runs
/// on the future's first poll. The body is left untouched. There is no fallback: a
/// function whose manager cannot be found does not compile.
///
/// # Compile errors
///
/// Each points at your token: a return type other than a `Result` whose error implements
/// `From<LayoutError>` (aliases such as `OmResult<T>` are fine), a function without `self`
/// and without `manager =`, a feature that is not a variant of a layout catalog, a
/// `const fn`, a declaration without a body, an item that is not a function, and unknown,
/// repeated or malformed arguments.
#[proc_macro_attribute]
pub fn disallowed_until(attr: TokenStream, item: TokenStream) -> TokenStream {
    disallowed_until::expand(attr.into(), item.into()).into()
}

/// Registers `impl Handler for T` as the handler of a request key from a layout feature on,
/// for `LayoutVersionInstanceFactory::from_registry`.
///
/// ```
/// use layout_core::{belongs_to_layout_version, LayoutFeature};
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
///     fn handle(&self) -> u32;
/// }
///
/// #[derive(Default)]
/// struct CreateTenant;
///
/// #[belongs_to_layout_version(OmFeature::MultiTenancy, key = "CreateTenant")]
/// impl RequestHandler for CreateTenant {
///     fn handle(&self) -> u32 {
///         1
///     }
/// }
/// ```
///
/// Arguments: the layout feature (a catalog variant) and `key = "..."`, the request key.
/// The impl must implement a dyn-compatible trait for one concrete type (no generics) that
/// implements `Default`; the factory's instance type is then `Box<dyn Handler>`. The
/// registration goes through `inventory`: a crate that nothing references is not linked
/// and its registrations vanish, so check them at start-up with
/// `LayoutVersionInstanceFactory::expect`.
#[proc_macro_attribute]
pub fn belongs_to_layout_version(attr: TokenStream, item: TokenStream) -> TokenStream {
    belongs_to::expand(attr.into(), item.into()).into()
}
