//! `#[upgrade_action(F::X, phase = ...)]`: registers a function as an upgrade action.
//!
//! The function keeps its body and signature; next to it, a wrapper converting its error
//! into `ActionError` is submitted to `layout_core`'s action inventory, from which
//! `ActionRegistryBuilder::with_registered` takes it.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, LitStr, Path, Token, Type};

use crate::ctxt::Ctxt;

const PHASES: [&str; 3] = ["ValidateInPrefinalize", "OnFirstUpgradeStart", "OnFinalize"];

/// The attribute's arguments: `F::X, phase = P` and optionally `name = "..."`.
struct Args {
    feature: Path,
    phase: Option<Ident>,
    name: Option<LitStr>,
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.is_empty() {
            return Err(input.error(
                "expected the layout feature and the phase: \
                 #[upgrade_action(Catalog::Feature, phase = OnFinalize)]",
            ));
        }
        let feature: Path = input.parse()?;
        let mut phase = None;
        let mut name = None;
        while !input.is_empty() {
            input.parse::<Token![,]>()?;
            if input.is_empty() {
                break;
            }
            let key: Ident = input.parse()?;
            input.parse::<Token![=]>()?;
            match key.to_string().as_str() {
                "phase" if phase.is_none() => {
                    let path: Path = input.parse()?;
                    let last = path.segments.last().map(|s| s.ident.clone());
                    phase = Some(
                        last.ok_or_else(|| syn::Error::new_spanned(&path, "expected a phase"))?,
                    );
                }
                "name" if name.is_none() => name = Some(input.parse()?),
                "phase" | "name" => {
                    return Err(syn::Error::new_spanned(
                        &key,
                        format!("`{key}` is given twice"),
                    ))
                }
                _ => {
                    return Err(syn::Error::new_spanned(
                        &key,
                        format!("unknown key `{key}`: expected `phase = ..` or `name = \"..\"`"),
                    ))
                }
            }
        }
        Ok(Self {
            feature,
            phase,
            name,
        })
    }
}

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item_tokens = item.clone();
    let Ok(func) = syn::parse2::<ItemFn>(item) else {
        let err = syn::Error::new_spanned(
            &item_tokens,
            "#[upgrade_action] applies to free functions \
             `fn(&Component, &ActionContext<'_, Catalog>) -> Result<(), E>`",
        )
        .to_compile_error();
        return quote!(#err #item_tokens);
    };
    match expand_fn(attr, &func) {
        Ok(tokens) => tokens,
        Err(err) => {
            let err = err.to_compile_error();
            quote!(#func #err)
        }
    }
}

fn expand_fn(attr: TokenStream, func: &ItemFn) -> syn::Result<TokenStream> {
    let args: Args = syn::parse2(attr)?;
    let mut cx = Ctxt::new();

    let phase = match &args.phase {
        None => {
            cx.error_spanned_by(
                &args.feature,
                "missing `phase = ..`: one of ValidateInPrefinalize, OnFirstUpgradeStart, OnFinalize",
            );
            None
        }
        Some(p) if !PHASES.contains(&p.to_string().as_str()) => {
            cx.error_spanned_by(
                p,
                format!("unknown phase `{p}`: expected one of {}", PHASES.join(", ")),
            );
            None
        }
        Some(p) => Some(p.clone()),
    };

    let catalog = if args.feature.segments.len() < 2 {
        cx.error_spanned_by(
            &args.feature,
            "name the feature with its catalog, e.g. `OmFeature::MultiTenancy`",
        );
        None
    } else {
        let mut catalog = args.feature.clone();
        catalog.segments.pop();
        let last = catalog
            .segments
            .pop()
            .map(syn::punctuated::Pair::into_value);
        if let Some(last) = last {
            catalog.segments.push(last);
        }
        Some(catalog)
    };

    let sig = &func.sig;
    if let Some(c) = &sig.constness {
        cx.error_spanned_by(c, "an upgrade action cannot be a `const fn`");
    }
    if let Some(a) = &sig.asyncness {
        cx.error_spanned_by(
            a,
            "an upgrade action cannot be `async`: actions run synchronously",
        );
    }
    if !sig.generics.params.is_empty() {
        cx.error_spanned_by(&sig.generics, "an upgrade action cannot be generic");
    }
    let component = component_type(&sig.inputs, &mut cx, sig.ident.span());
    cx.check()?;
    let (Some(phase), Some(catalog), Some(component)) = (phase, catalog, component) else {
        return Err(syn::Error::new(
            Span::call_site(),
            "invalid #[upgrade_action]",
        ));
    };

    let ident = &sig.ident;
    let name = args.name.map_or_else(|| ident.to_string(), |n| n.value());
    let feature = &args.feature;
    let wrapper = format_ident!("__layout_upgrade_action_{}", ident);
    let ret_span = match &sig.output {
        syn::ReturnType::Default => sig.ident.span(),
        syn::ReturnType::Type(_, ty) => ty.span(),
    };
    let call = quote_spanned! {ret_span=>
        ::layout_core::__private::into_action_result(#ident(component, ctx))
    };
    Ok(quote! {
        // The signature is the one upgrade actions must have, even when the body never fails.
        #[allow(clippy::unnecessary_wraps)]
        #func

        #[doc(hidden)]
        #[allow(non_snake_case)]
        const _: () = {
            fn #wrapper(
                component: &#component,
                ctx: &::layout_core::ActionContext<'_, #catalog>,
            ) -> ::core::result::Result<(), ::layout_core::ActionError> {
                #call
            }
            ::layout_core::__private::inventory::submit! {
                ::layout_core::__private::ActionSubmission::new::<#catalog, #component>(
                    &#feature,
                    <#catalog as ::layout_core::LayoutFeature>::CATALOG_NAME,
                    ::layout_core::Phase::#phase,
                    #name,
                    ::core::module_path!(),
                    ::core::file!(),
                    ::core::line!(),
                    &(#wrapper as ::layout_core::__private::ActionFnPtr<#catalog, #component>),
                )
            }
        };
    })
}

/// The component type `C` of a signature `fn(&C, &ActionContext<'_, F>)`.
fn component_type(
    inputs: &Punctuated<FnArg, Token![,]>,
    cx: &mut Ctxt,
    name_span: Span,
) -> Option<TokenStream> {
    if inputs.len() != 2 {
        cx.syn_error(syn::Error::new(
            if inputs.is_empty() {
                name_span
            } else {
                inputs.span()
            },
            "an upgrade action takes two arguments: \
             (component: &Component, ctx: &ActionContext<'_, Catalog>)",
        ));
        return None;
    }
    match inputs.first() {
        Some(FnArg::Receiver(r)) => {
            cx.error_spanned_by(
                r,
                "an upgrade action is a free function, not a method: take the component as \
                 `component: &Component`",
            );
            None
        }
        Some(FnArg::Typed(pat)) => match &*pat.ty {
            Type::Reference(r) if r.mutability.is_none() => Some(r.elem.to_token_stream()),
            other => {
                cx.error_spanned_by(
                    other,
                    "the first argument of an upgrade action is a shared reference to the \
                     component: `&Component`",
                );
                None
            }
        },
        None => None,
    }
}
