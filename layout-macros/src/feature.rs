//! `#[derive(LayoutFeature)]`: a layout catalog from an enum of unit variants.
//!
//! Three steps, one module each: [`parse`] reads the enum and its `#[layout(...)]`
//! attributes into a [`Catalog`], [`validate`] checks the rules that span several variants
//! (dense versions from 0, declaration order), and [`codegen`] writes the trait impl. Every
//! step records its errors in one [`Ctxt`], and nothing is generated unless there are none.

mod codegen;
mod parse;
mod validate;

use proc_macro2::{Span, TokenStream};
use syn::{DeriveInput, Ident, LitInt};

use crate::ctxt::Ctxt;

/// Expands `#[derive(LayoutFeature)]` on `input`: the trait impl, or only the
/// `compile_error!`s of every problem found.
pub(crate) fn expand(input: &DeriveInput) -> TokenStream {
    match try_expand(input) {
        Ok(tokens) => tokens,
        Err(errors) => errors.to_compile_error(),
    }
}

fn try_expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut cx = Ctxt::new();
    let catalog = parse::catalog(&mut cx, input);
    if let Some(catalog) = &catalog {
        validate::catalog(&mut cx, catalog);
    }
    cx.check()?;
    let checked = catalog.and_then(Catalog::into_checked).ok_or_else(|| {
        // Unreachable: parsing records an error for every variant it cannot complete.
        syn::Error::new(
            Span::call_site(),
            "internal error in #[derive(LayoutFeature)]: an incomplete catalog passed validation",
        )
    })?;
    Ok(codegen::impl_layout_feature(&checked))
}

/// The enum as parsed, possibly incomplete when the input has errors.
struct Catalog {
    /// The enum's identifier.
    ident: Ident,
    /// One entry per variant, in declaration order.
    features: Vec<Feature>,
}

/// One variant as parsed.
struct Feature {
    /// The variant's identifier (with the user's span).
    ident: Ident,
    /// The variant's name as stored on disk (`r#` stripped).
    name: String,
    /// `None` when missing or invalid (an error was recorded).
    version: Option<Version>,
    /// `None` when missing or invalid (an error was recorded).
    description: Option<String>,
    /// The `deprecated` flag.
    deprecated: bool,
}

/// A layout version and the literal that gave it, for spans.
struct Version {
    value: u32,
    literal: LitInt,
}

/// A catalog without errors, ready for code generation.
struct CheckedCatalog {
    ident: Ident,
    /// Every feature, in version order.
    features: Vec<CheckedFeature>,
}

/// A feature whose version and description are known.
struct CheckedFeature {
    ident: Ident,
    name: String,
    version: u32,
    description: String,
    deprecated: bool,
}

impl Catalog {
    /// The checked catalog, or `None` if some feature lacks a version or a description.
    fn into_checked(self) -> Option<CheckedCatalog> {
        let mut features = self
            .features
            .into_iter()
            .map(|feature| {
                Some(CheckedFeature {
                    version: feature.version?.value,
                    description: feature.description?,
                    ident: feature.ident,
                    name: feature.name,
                    deprecated: feature.deprecated,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        features.sort_by_key(|feature| feature.version);
        Some(CheckedCatalog {
            ident: self.ident,
            features,
        })
    }
}
