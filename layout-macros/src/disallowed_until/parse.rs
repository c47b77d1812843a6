//! Reads `#[disallowed_until(...)]`'s arguments and the function it is on.

use proc_macro2::{TokenStream, TokenTree};
use quote::{quote, ToTokens};
use syn::ext::IdentExt;
use syn::{Item, ItemFn, LitStr, ReturnType, TraitItemFn};

use super::{Gate, Manager};
use crate::attr_args::{self, Key};
use crate::ctxt::Ctxt;

const MACRO: &str = "disallowed_until";
const EXAMPLE: &str = "#[disallowed_until(OmFeature::MultiTenancy)]";
const KEYS: &[Key] = &[
    Key {
        name: "manager",
        shape: "<expression>",
    },
    Key {
        name: "operation",
        shape: "\"..\"",
    },
];

/// Parses and checks the arguments and the function; `None` when an error was recorded.
pub(super) fn gate(cx: &mut Ctxt, args: TokenStream, item: &TokenStream) -> Option<Gate> {
    let args = attr_args::parse(cx, args, MACRO, EXAMPLE, KEYS);
    let operation = args
        .value("operation")
        .and_then(|value| attr_args::non_empty_string(cx, "operation", value));
    let function = function(cx, item)?;
    let sig = &function.sig;

    if let Some(constness) = &sig.constness {
        cx.error_spanned_by(
            constness,
            "#[disallowed_until] cannot gate a `const fn`: the check reads the metadata layout \
             version at run time; remove `const`",
        );
    }
    let output = match &sig.output {
        ReturnType::Type(_, ty) => Some((**ty).clone()),
        ReturnType::Default => {
            cx.error_spanned_by(
                &sig.ident,
                format!(
                    "#[disallowed_until] gates functions that return a `Result` (the refusal \
                     is returned as its error), but `{}` returns `()`; return \
                     `Result<(), E>` with `E: From<layout_core::LayoutError>`",
                    sig.ident.unraw()
                ),
            );
            None
        }
    };
    let manager = match (args.value("manager"), sig.receiver()) {
        (Some(expr), _) => Some(Manager::Expr(expr.clone())),
        (None, Some(receiver)) => Some(Manager::Receiver(receiver.clone())),
        (None, None) => {
            cx.error_spanned_by(
                &sig.ident,
                format!(
                    "`{}` has no `self` to reach the layout version manager through \
                     (`LayoutAware`); name the manager: \
                     `#[disallowed_until(OmFeature::MultiTenancy, manager = <expression>)]`",
                    sig.ident.unraw()
                ),
            );
            None
        }
    };
    let operation =
        operation.unwrap_or_else(|| LitStr::new(&sig.ident.unraw().to_string(), sig.ident.span()));

    Some(Gate {
        feature: args.feature?,
        manager: manager?,
        operation,
        output: output?,
        function,
    })
}

/// The function the attribute is on, or an error spanning what it is on instead.
fn function(cx: &mut Ctxt, item: &TokenStream) -> Option<ItemFn> {
    const NOT_A_FUNCTION: &str = "#[disallowed_until] goes on a function or a method \
                                  (`fn`, `async fn`) that returns a `Result`";
    match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Fn(function)) => return Some(function),
        Ok(Item::Verbatim(tokens)) => {
            if let Ok(declaration) = syn::parse2::<TraitItemFn>(tokens.clone()) {
                if declaration.default.is_none() {
                    cx.error_spanned_by(
                        &declaration.sig.ident,
                        format!(
                            "#[disallowed_until] needs a function body to insert the check \
                             into, and `{}` is a declaration; put the attribute on the method \
                             in each impl (or give the declaration a default body)",
                            declaration.sig.ident.unraw()
                        ),
                    );
                    return None;
                }
            }
            cx.error_spanned_by(first_tokens(&tokens), NOT_A_FUNCTION);
        }
        Ok(other) => cx.error_spanned_by(kind_tokens(&other), NOT_A_FUNCTION),
        Err(_) => cx.error_spanned_by(first_tokens(item), NOT_A_FUNCTION),
    }
    None
}

/// The keyword and name of an item that is not a function: `struct Service`.
fn kind_tokens(item: &Item) -> TokenStream {
    match item {
        Item::Struct(item) => {
            let (keyword, ident) = (&item.struct_token, &item.ident);
            quote!(#keyword #ident)
        }
        Item::Enum(item) => {
            let (keyword, ident) = (&item.enum_token, &item.ident);
            quote!(#keyword #ident)
        }
        Item::Trait(item) => {
            let (keyword, ident) = (&item.trait_token, &item.ident);
            quote!(#keyword #ident)
        }
        Item::Impl(item) => {
            let (keyword, ty) = (&item.impl_token, &item.self_ty);
            quote!(#keyword #ty)
        }
        Item::Mod(item) => {
            let (keyword, ident) = (&item.mod_token, &item.ident);
            quote!(#keyword #ident)
        }
        Item::Const(item) => {
            let (keyword, ident) = (&item.const_token, &item.ident);
            quote!(#keyword #ident)
        }
        Item::Static(item) => {
            let (keyword, ident) = (&item.static_token, &item.ident);
            quote!(#keyword #ident)
        }
        Item::Type(item) => {
            let (keyword, ident) = (&item.type_token, &item.ident);
            quote!(#keyword #ident)
        }
        other => first_tokens(&other.to_token_stream()),
    }
}

/// The first two tokens of `tokens` after its attributes, for a short error span.
fn first_tokens(tokens: &TokenStream) -> TokenStream {
    let mut rest = tokens.clone().into_iter().peekable();
    // Skip outer attributes: `#` followed by a bracketed group.
    while matches!(rest.peek(), Some(TokenTree::Punct(punct)) if punct.as_char() == '#') {
        rest.next();
        rest.next();
    }
    rest.take(2).collect()
}
