//! Writes the gated function: the check, then the user's body unchanged.

use proc_macro2::{Ident, Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{AttrStyle, Type};

use super::{Gate, Manager};

/// The function with the check as its first statement:
///
/// ```text
/// if let Some(closed) = closed(<manager>, F::X) {    // one load and a compare
///     return refuse::<_, Output>("operation", closed); // cold, out of line
/// }
/// <the body>
/// ```
pub(super) fn gated_function(gate: Gate) -> TokenStream {
    let Gate {
        feature,
        manager,
        operation,
        function,
        output,
    } = gate;
    // A local name the user's body cannot see or shadow.
    let closed_var = Ident::new("__layout_gate_closed", Span::mixed_site());

    let manager_expr = match &manager {
        Manager::Receiver(receiver) => {
            let self_token = &receiver.self_token;
            let component = if receiver.reference.is_some() {
                quote_spanned!(self_token.span=> &*#self_token)
            } else if receiver.colon_token.is_none() || is_self(&receiver.ty) {
                quote_spanned!(self_token.span=> &#self_token)
            } else {
                // `self: Box<Self>`, `Arc<Self>`, `Rc<Self>`, `Pin<&mut Self>`, `&Arc<Self>`.
                quote_spanned!(self_token.span=> &*#self_token)
            };
            quote_spanned! {self_token.span=>
                ::layout_core::__private::self_manager(#component)
            }
        }
        Manager::Expr(expr) => quote_spanned! {expr.span()=>
            ::layout_core::__private::manager_of(&(#expr))
        },
    };
    let refusal = if contains_impl_trait(&output) {
        // The return type cannot be named in an expression: inferred from the `return`.
        quote!(::layout_core::__private::refuse(#operation, #closed_var))
    } else {
        quote!(::layout_core::__private::refuse::<_, #output>(#operation, #closed_var))
    };
    let check = quote! {
        if let ::core::option::Option::Some(#closed_var) =
            ::layout_core::__private::closed(#manager_expr, #feature)
        {
            return #refusal;
        }
    };

    let outer = function
        .attrs
        .iter()
        .filter(|attr| matches!(attr.style, AttrStyle::Outer));
    let inner = function
        .attrs
        .iter()
        .filter(|attr| matches!(attr.style, AttrStyle::Inner(_)));
    let doc = gate_doc(&function.attrs, &feature);
    let vis = &function.vis;
    let sig = &function.sig;
    let stmts = &function.block.stmts;
    quote! {
        #(#outer)*
        #doc
        #vis #sig {
            #(#inner)*
            #check
            #(#stmts)*
        }
    }
}

/// A line added to the function's documentation, when it has some (so that an
/// undocumented function stays undocumented and `missing_docs` still sees it).
fn gate_doc(attrs: &[syn::Attribute], feature: &syn::Path) -> TokenStream {
    if !attrs.iter().any(|attr| attr.path().is_ident("doc")) {
        return TokenStream::new();
    }
    let feature = feature.to_token_stream().to_string().replace(' ', "");
    let line = format!(
        " Disallowed until layout feature `{feature}` is finalized: before that, it returns \
         `LayoutError::NotFinalized` (converted into its error type)."
    );
    quote! {
        #[doc = ""]
        #[doc = #line]
    }
}

/// Whether `ty` is `Self`.
fn is_self(ty: &Type) -> bool {
    matches!(ty, Type::Path(path) if path.qself.is_none() && path.path.is_ident("Self"))
}

/// Whether `ty` mentions `impl Trait` (and so cannot be named in an expression).
fn contains_impl_trait(ty: &Type) -> bool {
    fn walk(tokens: TokenStream) -> bool {
        tokens.into_iter().any(|token| match token {
            TokenTree::Ident(ident) => ident == "impl",
            TokenTree::Group(group) => walk(group.stream()),
            TokenTree::Punct(_) | TokenTree::Literal(_) => false,
        })
    }
    walk(ty.to_token_stream())
}
