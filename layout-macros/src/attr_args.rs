//! The argument list shared by `#[disallowed_until]` and `#[belongs_to_layout_version]`:
//! a layout feature path, then `name = value` pairs, comma-separated:
//! `(OmFeature::MultiTenancy, manager = &self.lvm, operation = "CreateTenant")`.
//!
//! Parsing is lenient (every item is read as an expression) so that each mistake gets its
//! own error, pointing at the offending token, and the other arguments are still checked.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprAssign, ExprPath, Ident, Lit, LitStr, Path, Token};

use crate::ctxt::Ctxt;

/// One accepted `name = value` key of a macro.
pub(crate) struct Key {
    /// The key's name.
    pub(crate) name: &'static str,
    /// What the value looks like, for error messages (`"<expression>"`, `"\"..\""`).
    pub(crate) shape: &'static str,
}

/// The arguments as written.
pub(crate) struct AttrArgs {
    /// The layout feature path (`Catalog::Feature`), when given.
    pub(crate) feature: Option<Path>,
    /// The `name = value` pairs, in order, each key at most once.
    pub(crate) named: Vec<(Ident, Expr)>,
}

impl AttrArgs {
    /// The value of key `name`, if given.
    pub(crate) fn value(&self, name: &str) -> Option<&Expr> {
        self.named
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }
}

/// Parses `args` of macro `macro_name`, recording an error for each malformed item, each
/// unknown or repeated key, and a missing feature path. `example` is a correct use, quoted
/// in the messages.
pub(crate) fn parse(
    cx: &mut Ctxt,
    args: TokenStream,
    macro_name: &str,
    example: &str,
    keys: &[Key],
) -> AttrArgs {
    let mut parsed = AttrArgs {
        feature: None,
        named: Vec::new(),
    };
    // Whether the first argument tried to be the feature (an error is recorded if it is not
    // a path); a missing feature is then not reported on top.
    let mut feature_attempted = false;
    let items = match Punctuated::<Expr, Token![,]>::parse_terminated.parse2(args) {
        Ok(items) => items,
        Err(error) => {
            cx.syn_error(syn::Error::new(
                error.span(),
                format!(
                    "{error}: the arguments are the layout feature, then `key = value` pairs, \
                     separated by commas: `{example}`"
                ),
            ));
            return parsed;
        }
    };

    for (position, item) in items.into_iter().enumerate() {
        feature_attempted |= position == 0 && !matches!(item, Expr::Assign(_));
        match item {
            Expr::Assign(ExprAssign { left, right, .. }) => match ident_of(&left) {
                Some(name) => named(cx, &mut parsed, name, *right, macro_name, keys),
                None => cx.error_spanned_by(
                    &left,
                    format!("expected a key name before `=`, one of {}", key_list(keys)),
                ),
            },
            Expr::Path(ExprPath {
                qself: None, path, ..
            }) if position == 0 => parsed.feature = Some(path),
            Expr::Lit(literal) if position == 0 && matches!(literal.lit, Lit::Str(_)) => {
                cx.error_spanned_by(
                    &literal,
                    format!("name the layout feature as a path, not a string: `{example}`"),
                );
            }
            other if position == 0 => cx.error_spanned_by(
                &other,
                format!("expected a layout feature such as `OmFeature::MultiTenancy`: `{example}`"),
            ),
            other => cx.error_spanned_by(
                &other,
                format!(
                    "expected `key = value` after the layout feature, with a key among {}",
                    key_list(keys)
                ),
            ),
        }
    }
    if parsed.feature.is_none() && !feature_attempted {
        cx.syn_error(syn::Error::new(
            Span::call_site(),
            format!("#[{macro_name}] needs the layout feature first, as a path: `{example}`"),
        ));
    }
    parsed
}

fn named(
    cx: &mut Ctxt,
    parsed: &mut AttrArgs,
    name: Ident,
    value: Expr,
    macro_name: &str,
    keys: &[Key],
) {
    if !keys.iter().any(|key| name == key.name) {
        cx.error_spanned_by(
            &name,
            format!(
                "unknown key `{name}` in #[{macro_name}(...)]: expected {}",
                key_list(keys)
            ),
        );
    } else if parsed.named.iter().any(|(given, _)| *given == name) {
        cx.error_spanned_by(
            &name,
            format!("`{name}` is given more than once in #[{macro_name}(...)]"),
        );
    } else {
        parsed.named.push((name, value));
    }
}

/// The single identifier `expr` is, if it is one.
fn ident_of(expr: &Expr) -> Option<Ident> {
    match expr {
        Expr::Path(ExprPath {
            qself: None, path, ..
        }) => path.get_ident().cloned(),
        _ => None,
    }
}

/// A non-empty string literal, or an error on `value`.
pub(crate) fn non_empty_string(cx: &mut Ctxt, key: &str, value: &Expr) -> Option<LitStr> {
    match value {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Str(literal),
            ..
        }) if !literal.value().trim().is_empty() => Some(literal.clone()),
        Expr::Lit(syn::ExprLit {
            lit: Lit::Str(literal),
            ..
        }) => {
            cx.error_spanned_by(literal, format!("`{key}` must not be empty"));
            None
        }
        other => {
            cx.error_spanned_by(
                other,
                format!("`{key}` takes a string literal, e.g. `{key} = \"CreateTenant\"`"),
            );
            None
        }
    }
}

fn key_list(keys: &[Key]) -> String {
    keys.iter()
        .map(|key| format!("`{} = {}`", key.name, key.shape))
        .collect::<Vec<_>>()
        .join(", ")
}
