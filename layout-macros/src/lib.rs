//! Procedural macros for `layout-core`.
//!
//! Use them through `layout_core`, which re-exports each macro next to the item it serves
//! (as `serde` re-exports `serde_derive`); code they generate names only `::layout_core::...`
//! and `::core::...` paths.
//!
//! | macro | module |
//! |---|---|
//! | `#[derive(LayoutFeature)]` | `feature` |

mod ctxt;
mod feature;

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
