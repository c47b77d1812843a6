//! `#[disallowed_until(F::X)]`: closes a function until layout feature `X` is finalized.
//!
//! [`parse`] reads the arguments and the function and checks what can be checked on the
//! syntax (a function with a body, not `const`, returning something, with a way to reach
//! the manager); [`codegen`] inserts the check as the function's first statement. What
//! only the type checker knows (the feature is a catalog variant, the return type is a
//! `Result` whose error converts from `LayoutError`, `self` is `LayoutAware`) is checked by
//! helper traits of `layout_core::__private` whose `#[diagnostic::on_unimplemented]`
//! messages point at the user's tokens.

mod codegen;
mod parse;

use proc_macro2::TokenStream;
use syn::{Expr, ItemFn, LitStr, Path, Receiver, Type};

use crate::ctxt::Ctxt;

/// Expands the attribute: the gated function, or the function unchanged plus the
/// `compile_error!`s of every problem found (so the IDE keeps working on the rest).
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut cx = Ctxt::new();
    let gate = parse::gate(&mut cx, args, &item);
    match (cx.check(), gate) {
        (Ok(()), Some(gate)) => codegen::gated_function(gate),
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
                    "internal error in #[disallowed_until]: an incomplete input passed the checks",
                )
                .to_compile_error(),
            );
            tokens
        }
    }
}

/// A function to gate, checked.
struct Gate {
    /// The layout feature path, as written.
    feature: Path,
    /// How the check reaches the manager.
    manager: Manager,
    /// The operation named in the refusal.
    operation: LitStr,
    /// The function.
    function: ItemFn,
    /// Its return type (never `()`).
    output: Type,
}

/// Where the layout version manager comes from.
enum Manager {
    /// `LayoutAware` on the method's receiver.
    Receiver(Receiver),
    /// `manager = expr`.
    Expr(Expr),
}
