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

mod ctxt;
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
/// # Ok::<(), layout_core::RegistryError>(())
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
