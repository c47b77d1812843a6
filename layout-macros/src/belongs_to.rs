//! `#[belongs_to_layout_version(F::X, key = "..")]`: registers `impl Handler for T` as the
//! handler of a request key from layout feature `X` on.
//!
//! [`parse`] checks the arguments and the impl (a trait impl for one concrete type);
//! [`codegen`] keeps the impl and submits a registration to `inventory` through
//! `layout_core::__private`, so users never depend on `inventory` themselves.

mod codegen;
mod parse;

use proc_macro2::TokenStream;
use syn::{ItemImpl, LitStr, Path};

use crate::ctxt::Ctxt;

/// Expands the attribute: the impl plus its registration, or the impl unchanged plus the
/// `compile_error!`s of every problem found.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut cx = Ctxt::new();
    let registration = parse::registration(&mut cx, args, &item);
    match (cx.check(), registration) {
        (Ok(()), Some(registration)) => codegen::registered_impl(&registration),
        (Err(errors), _) => {
            let mut tokens = item;
            tokens.extend(errors.to_compile_error());
            tokens
        }
        (Ok(()), None) => {
            let mut tokens = item;
            tokens.extend(
                syn::Error::new(
                    proc_macro2::Span::call_site(),
                    "internal error in #[belongs_to_layout_version]: an incomplete input \
                     passed the checks",
                )
                .to_compile_error(),
            );
            tokens
        }
    }
}

/// A handler impl to register, checked.
struct Registration {
    /// The layout feature path, as written.
    feature: Path,
    /// The request key.
    key: LitStr,
    /// The impl, kept as written.
    item: ItemImpl,
    /// The handler trait's path (`RequestHandler`, `handlers::Handler<Req>`).
    trait_path: Path,
}
