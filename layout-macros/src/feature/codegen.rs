//! Writes `impl ::layout_core::LayoutFeature` for a checked catalog.

use proc_macro2::{Literal, TokenStream};
use quote::quote;
use syn::ext::IdentExt;

use super::CheckedCatalog;

/// The trait impl. Paths are absolute so that nothing depends on the user's imports.
pub(super) fn impl_layout_feature(catalog: &CheckedCatalog) -> TokenStream {
    let ident = &catalog.ident;
    let catalog_name = ident.unraw().to_string();
    let variants: Vec<_> = catalog.features.iter().map(|f| &f.ident).collect();
    let versions = catalog
        .features
        .iter()
        .map(|f| Literal::u32_suffixed(f.version));
    let names = catalog.features.iter().map(|f| &f.name);
    let descriptions = catalog.features.iter().map(|f| &f.description);
    let deprecated = catalog.features.iter().map(|f| f.deprecated);

    quote! {
        #[automatically_derived]
        // `deprecated`: variants may carry Rust's own `#[deprecated]`. Arms of the matches
        // below may share a body (several `false`s), which is no concern of the user's.
        #[allow(deprecated, clippy::match_same_arms)]
        impl ::layout_core::LayoutFeature for #ident {
            const ALL: &'static [Self] = &[#(Self::#variants),*];

            const CATALOG_NAME: &'static ::core::primitive::str = #catalog_name;

            #[inline]
            fn layout_version(self) -> ::core::primitive::u32 {
                match self {
                    #(Self::#variants => #versions,)*
                }
            }

            #[inline]
            fn name(self) -> &'static ::core::primitive::str {
                match self {
                    #(Self::#variants => #names,)*
                }
            }

            #[inline]
            fn description(self) -> &'static ::core::primitive::str {
                match self {
                    #(Self::#variants => #descriptions,)*
                }
            }

            #[inline]
            fn is_deprecated(self) -> ::core::primitive::bool {
                match self {
                    #(Self::#variants => #deprecated,)*
                }
            }
        }
    }
}
