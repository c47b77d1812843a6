//! Reads the derive input and each variant's `#[layout(...)]` attribute into a [`Catalog`].
//!
//! Checks that concern one variant at a time live here (unit variant, no discriminant, one
//! well-formed attribute with a valid version and a non-empty description); checks across
//! variants live in [`super::validate`].

use quote::{quote, ToTokens};
use syn::ext::IdentExt;
use syn::punctuated::Punctuated;
use syn::{
    Attribute, Data, DeriveInput, Expr, ExprLit, Fields, Generics, Lit, Meta, Path, Token, Variant,
};

use super::{Catalog, Feature, Version};
use crate::ctxt::Ctxt;

/// The helper attribute's name.
const ATTR: &str = "layout";

/// The accepted keys, for error messages.
const KEYS: &str = "`version = <integer>`, `description = \"..\"` or `deprecated`";

/// The attribute's expected shape, for error messages.
const SHAPE: &str = "#[layout(version = .., description = \"..\")]";

/// Parses the enum. Returns `None` when the input is not an enum (the error is recorded).
pub(super) fn catalog(cx: &mut Ctxt, input: &DeriveInput) -> Option<Catalog> {
    const NOT_AN_ENUM: &str = "#[derive(LayoutFeature)] works on enums only: a layout catalog \
                               is an enum with one unit variant per layout feature";
    let data = match &input.data {
        Data::Enum(data) => data,
        Data::Struct(data) => {
            cx.error_spanned_by(data.struct_token, NOT_AN_ENUM);
            return None;
        }
        Data::Union(data) => {
            cx.error_spanned_by(data.union_token, NOT_AN_ENUM);
            return None;
        }
    };

    check_generics(cx, &input.ident, &input.generics);
    for attr in input.attrs.iter().filter(|attr| is_layout(attr)) {
        cx.error_spanned_by(
            attr,
            format!(
                "#[layout(...)] goes on each variant of `{}` (one per layout feature), \
                 not on the enum",
                input.ident
            ),
        );
    }
    if data.variants.is_empty() {
        cx.error_spanned_by(
            &input.ident,
            format!(
                "layout catalog `{}` has no features: declare at least the initial layout, \
                 e.g. `#[layout(version = 0, description = \"Initial layout\")] InitialVersion`",
                input.ident
            ),
        );
    }

    let features = data
        .variants
        .iter()
        .map(|variant| feature(cx, variant))
        .collect();
    Some(Catalog {
        ident: input.ident.clone(),
        features,
    })
}

fn check_generics(cx: &mut Ctxt, ident: &syn::Ident, generics: &Generics) {
    if !generics.params.is_empty() {
        cx.error_spanned_by(
            generics,
            format!(
                "layout catalogs cannot be generic: remove the type, lifetime and const \
                 parameters of `{ident}`"
            ),
        );
    } else if let Some(where_clause) = &generics.where_clause {
        cx.error_spanned_by(
            where_clause,
            format!("layout catalogs cannot be generic: remove the where clause of `{ident}`"),
        );
    }
}

fn is_layout(attr: &Attribute) -> bool {
    attr.path().is_ident(ATTR)
}

/// Parses one variant. Errors come in source order: attribute, name, fields, discriminant.
fn feature(cx: &mut Ctxt, variant: &Variant) -> Feature {
    let ident = &variant.ident;
    let name = ident.unraw().to_string();

    let args = layout_args(cx, variant, &name);

    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        cx.error_spanned_by(
            ident,
            format!(
                "layout feature names are written into the VERSION file on disk and must be \
                 ASCII: rename `{name}` using only ASCII letters, digits and `_`"
            ),
        );
    }
    if !matches!(variant.fields, Fields::Unit) {
        cx.error_spanned_by(
            &variant.fields,
            format!("layout features are unit variants; `{name}` carries data"),
        );
    }
    if let Some((eq, discriminant)) = &variant.discriminant {
        cx.error_spanned_by(
            quote!(#eq #discriminant),
            "layout features take their version from #[layout(version = ..)], \
             not a discriminant",
        );
    }

    Feature {
        ident: ident.clone(),
        name,
        version: args.version.into_valid(),
        description: args.description.into_valid(),
        deprecated: args.deprecated.into_valid().unwrap_or(false),
    }
}

/// The keys of the variant's `#[layout(...)]`, with an error for each missing attribute,
/// extra attribute, and missing key.
fn layout_args(cx: &mut Ctxt, variant: &Variant, name: &str) -> Args {
    let attrs: Vec<&Attribute> = variant
        .attrs
        .iter()
        .filter(|attr| is_layout(attr))
        .collect();
    let Some((first, extra)) = attrs.split_first() else {
        cx.error_spanned_by(
            &variant.ident,
            format!(
                "missing {SHAPE} on `{name}`: every layout feature needs a version and a \
                 description"
            ),
        );
        return Args::default();
    };

    // Keys repeated across attributes are covered by this error: the first one wins.
    let mut args = parse_attr(cx, first);
    for attr in extra {
        cx.error_spanned_by(
            attr,
            format!(
                "`{name}` has more than one #[layout(...)] attribute: write `version`, \
                 `description` and `deprecated` in one"
            ),
        );
        args.merge(parse_attr(cx, attr));
    }

    if !args.malformed {
        let missing = match (args.version.is_missing(), args.description.is_missing()) {
            (true, true) => "`version = <integer>` and `description = \"..\"`",
            (true, false) => "`version = <integer>`",
            (false, true) => "`description = \"..\"`",
            (false, false) => "",
        };
        if !missing.is_empty() {
            cx.error_spanned_by(
                first.path(),
                format!("missing {missing} in #[layout(...)] on `{name}`"),
            );
        }
    }
    args
}

/// One key's value: absent, present but invalid (error recorded), or valid.
#[derive(Default)]
enum Arg<T> {
    #[default]
    Missing,
    Invalid,
    Valid(T),
}

impl<T> Arg<T> {
    fn is_missing(&self) -> bool {
        matches!(self, Arg::Missing)
    }

    fn into_valid(self) -> Option<T> {
        match self {
            Arg::Valid(value) => Some(value),
            Arg::Missing | Arg::Invalid => None,
        }
    }

    /// Sets a missing value; `false` (and no change) if the key was already given.
    fn fill(&mut self, value: Self) -> bool {
        let missing = self.is_missing();
        if missing {
            *self = value;
        }
        missing
    }

    /// Keeps `self` unless it is missing.
    fn or(self, other: Self) -> Self {
        match self {
            Arg::Missing => other,
            given => given,
        }
    }
}

/// The keys of one or more `#[layout(...)]` attributes.
#[derive(Default)]
struct Args {
    version: Arg<Version>,
    description: Arg<String>,
    deprecated: Arg<bool>,
    /// The attribute did not parse; missing keys are not reported on top of that.
    malformed: bool,
}

impl Args {
    fn merge(&mut self, other: Args) {
        self.version = std::mem::take(&mut self.version).or(other.version);
        self.description = std::mem::take(&mut self.description).or(other.description);
        self.deprecated = std::mem::take(&mut self.deprecated).or(other.deprecated);
        self.malformed |= other.malformed;
    }
}

/// Parses one `#[layout(...)]`, recording an error for each bad or repeated key.
fn parse_attr(cx: &mut Ctxt, attr: &Attribute) -> Args {
    let mut args = Args::default();
    let Meta::List(list) = &attr.meta else {
        cx.error_spanned_by(attr, format!("expected {SHAPE}"));
        args.malformed = true;
        return args;
    };
    let metas = match list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) {
        Ok(metas) => metas,
        Err(error) => {
            cx.syn_error(error);
            args.malformed = true;
            return args;
        }
    };

    let mut near_misses = Vec::new();
    for meta in &metas {
        let key = meta.path();
        let first_time = if key.is_ident("version") {
            let value = parse_version(cx, meta);
            args.version.fill(value)
        } else if key.is_ident("description") {
            let value = parse_description(cx, meta);
            args.description.fill(value)
        } else if key.is_ident("deprecated") {
            let value = parse_flag(cx, meta, "deprecated");
            args.deprecated.fill(value)
        } else {
            near_misses.extend(unknown_key(cx, key));
            true
        };
        if !first_time {
            cx.error_spanned_by(
                key,
                format!(
                    "`{}` is given more than once in this #[layout(...)]",
                    key.to_token_stream()
                ),
            );
        }
    }
    // A misspelt key counts as given (invalid), so that it is not also reported missing.
    for known in near_misses {
        match known {
            "version" => _ = args.version.fill(Arg::Invalid),
            "description" => _ = args.description.fill(Arg::Invalid),
            _ => {}
        }
    }
    args
}

/// Records an unknown key; returns the known key it is a near miss of (`descripton`).
fn unknown_key(cx: &mut Ctxt, key: &Path) -> Option<&'static str> {
    let written = key.to_token_stream().to_string().replace(' ', "");
    let near_miss = ["version", "description", "deprecated"]
        .into_iter()
        .find(|known| edit_distance(&written, known) <= 2);
    let message = match near_miss {
        Some(known) => {
            format!("unknown key `{written}` in #[layout(...)]: did you mean `{known}`?")
        }
        None => format!("unknown key `{written}` in #[layout(...)]: expected {KEYS}"),
    };
    cx.error_spanned_by(key, message);
    near_miss
}

/// Levenshtein distance between two short strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// `version = <u32 integer literal>`.
fn parse_version(cx: &mut Ctxt, meta: &Meta) -> Arg<Version> {
    let Meta::NameValue(name_value) = meta else {
        cx.error_spanned_by(meta, "expected `version = <integer>`, e.g. `version = 1`");
        return Arg::Invalid;
    };
    let Some(Lit::Int(literal)) = literal(&name_value.value) else {
        cx.error_spanned_by(
            &name_value.value,
            "layout version must be an unsigned integer literal, e.g. `version = 1`",
        );
        return Arg::Invalid;
    };
    if !matches!(literal.suffix(), "" | "u32") {
        cx.error_spanned_by(
            literal,
            format!(
                "layout version is a `u32`: write `{}` without the `{}` suffix",
                literal.base10_digits(),
                literal.suffix()
            ),
        );
        return Arg::Invalid;
    }
    let Ok(value) = literal.base10_parse::<u32>() else {
        cx.error_spanned_by(
            literal,
            format!(
                "layout version {} does not fit in a u32 (at most {})",
                literal.base10_digits(),
                u32::MAX
            ),
        );
        return Arg::Invalid;
    };
    Arg::Valid(Version {
        value,
        literal: literal.clone(),
    })
}

/// `description = "<non-empty string literal>"`.
fn parse_description(cx: &mut Ctxt, meta: &Meta) -> Arg<String> {
    let Meta::NameValue(name_value) = meta else {
        cx.error_spanned_by(meta, "expected `description = \"..\"`");
        return Arg::Invalid;
    };
    let Some(Lit::Str(literal)) = literal(&name_value.value) else {
        cx.error_spanned_by(
            &name_value.value,
            "layout feature description must be a string literal, e.g. \
             `description = \"Buckets carry a storage layout\"`",
        );
        return Arg::Invalid;
    };
    let description = literal.value();
    if description.trim().is_empty() {
        cx.error_spanned_by(
            literal,
            "layout feature description is empty: say in one line what this feature changes \
             in the persisted state",
        );
        return Arg::Invalid;
    }
    Arg::Valid(description)
}

/// A flag key written alone, such as `deprecated`.
fn parse_flag(cx: &mut Ctxt, meta: &Meta, key: &str) -> Arg<bool> {
    if let Meta::Path(_) = meta {
        Arg::Valid(true)
    } else {
        cx.error_spanned_by(
            meta,
            format!("`{key}` is a flag: write `{key}` alone, without a value"),
        );
        Arg::Invalid
    }
}

/// The literal `expr` is, looking through invisible groups (from `macro_rules!`).
fn literal(expr: &Expr) -> Option<&Lit> {
    match expr {
        Expr::Lit(ExprLit { lit, attrs }) if attrs.is_empty() => Some(lit),
        Expr::Group(group) => literal(&group.expr),
        _ => None,
    }
}
