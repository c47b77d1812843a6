//! Error collection shared by every macro of the crate.
//!
//! A macro reports *all* the problems of its input at once, as serde's derive does: each
//! check pushes its error into a [`Ctxt`] and carries on, and the macro turns the collected
//! errors into `compile_error!`s at the end.

use std::fmt::Display;

use quote::ToTokens;

/// The errors found so far in one macro input.
#[derive(Default)]
pub(crate) struct Ctxt {
    errors: Vec<syn::Error>,
}

impl Ctxt {
    /// An empty context.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Records an error spanning the user's `tokens`.
    pub(crate) fn error_spanned_by<T: ToTokens, M: Display>(&mut self, tokens: T, message: M) {
        self.errors.push(syn::Error::new_spanned(tokens, message));
    }

    /// Records an error produced by `syn` (for example a failed attribute parse).
    pub(crate) fn syn_error(&mut self, error: syn::Error) {
        self.errors.push(error);
    }

    /// `Ok` when nothing was recorded, otherwise every recorded error combined into one.
    pub(crate) fn check(self) -> syn::Result<()> {
        let mut errors = self.errors.into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for error in errors {
            combined.combine(error);
        }
        Err(combined)
    }
}
