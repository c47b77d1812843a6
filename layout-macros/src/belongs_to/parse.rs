//! Reads `#[belongs_to_layout_version(...)]`'s arguments and the impl it is on.

use proc_macro2::{TokenStream, TokenTree};
use quote::quote;
use syn::{Item, ItemImpl};

use super::Registration;
use crate::attr_args::{self, Key};
use crate::ctxt::Ctxt;

const MACRO: &str = "belongs_to_layout_version";
const EXAMPLE: &str =
    "#[belongs_to_layout_version(OmFeature::MultiTenancy, key = \"CreateTenant\")]";
const KEYS: &[Key] = &[Key {
    name: "key",
    shape: "\"..\"",
}];

/// Parses and checks the arguments and the impl; `None` when an error was recorded.
pub(super) fn registration(
    cx: &mut Ctxt,
    args: TokenStream,
    item: &TokenStream,
) -> Option<Registration> {
    let args = attr_args::parse(cx, args, MACRO, EXAMPLE, KEYS);
    let key = if let Some(value) = args.value("key") {
        attr_args::non_empty_string(cx, "key", value)
    } else {
        if args.feature.is_some() {
            cx.syn_error(syn::Error::new(
                proc_macro2::Span::call_site(),
                format!("#[{MACRO}] needs the request key the handler serves: `{EXAMPLE}`"),
            ));
        }
        None
    };
    let item = trait_impl(cx, item)?;
    let trait_path = checked_trait(cx, &item)?;
    Some(Registration {
        feature: args.feature?,
        key: key?,
        item,
        trait_path,
    })
}

const USE: &str = "#[belongs_to_layout_version] goes on `impl Handler for Type`, the \
                   implementation of a handler trait for one concrete type";

fn trait_impl(cx: &mut Ctxt, item: &TokenStream) -> Option<ItemImpl> {
    if let Ok(Item::Impl(item)) = syn::parse2::<Item>(item.clone()) {
        Some(item)
    } else {
        cx.error_spanned_by(first_tokens(item), USE);
        None
    }
}

/// The trait of a registrable impl: a positive trait impl without generics.
fn checked_trait(cx: &mut Ctxt, item: &ItemImpl) -> Option<syn::Path> {
    let self_ty = &item.self_ty;
    let Some((negative, path, _)) = &item.trait_ else {
        let impl_token = &item.impl_token;
        cx.error_spanned_by(
            quote!(#impl_token #self_ty),
            format!("{USE}; this is an inherent impl, which implements no trait"),
        );
        return None;
    };
    if let Some(bang) = negative {
        cx.error_spanned_by(bang, "a negative impl registers no handler");
        return None;
    }
    if !item.generics.params.is_empty() {
        cx.error_spanned_by(
            &item.generics,
            "#[belongs_to_layout_version] registers one concrete handler type: remove the \
             impl's generic parameters (register each instantiation with its own impl)",
        );
        return None;
    }
    if let Some(where_clause) = &item.generics.where_clause {
        cx.error_spanned_by(
            where_clause,
            "#[belongs_to_layout_version] registers one concrete handler type: remove the \
             where clause",
        );
        return None;
    }
    Some(path.clone())
}

/// The first two tokens of `tokens` after its attributes, for a short error span.
fn first_tokens(tokens: &TokenStream) -> TokenStream {
    let mut rest = tokens.clone().into_iter().peekable();
    while matches!(rest.peek(), Some(TokenTree::Punct(punct)) if punct.as_char() == '#') {
        rest.next();
        rest.next();
    }
    rest.take(2).collect()
}
