//! The catalog rules that span several variants: unique versions, declaration order, and
//! dense versions starting at 0.

use std::collections::HashMap;

use super::{Catalog, Feature, Version};
use crate::ctxt::Ctxt;

/// Records an error for every broken rule. Each error points at the version literal of the
/// feature that breaks it.
pub(super) fn catalog(cx: &mut Ctxt, catalog: &Catalog) {
    let versioned: Vec<(&Feature, &Version)> = catalog
        .features
        .iter()
        .filter_map(|feature| Some((feature, feature.version.as_ref()?)))
        .collect();

    // Unique versions: report every occurrence after the first.
    let mut first_with: HashMap<u32, &Feature> = HashMap::new();
    let mut unique = Vec::with_capacity(versioned.len());
    for &(feature, version) in &versioned {
        if let Some(first) = first_with.get(&version.value) {
            cx.error_spanned_by(
                &version.literal,
                format!(
                    "duplicate layout version {}: already used by `{}`",
                    version.value, first.name
                ),
            );
        } else {
            first_with.insert(version.value, feature);
            unique.push((feature, version));
        }
    }

    // Declaration order == version order: report each feature declared after a higher one.
    let mut highest: Option<(&Feature, &Version)> = None;
    for &(feature, version) in &unique {
        match highest {
            Some((above, above_version)) if above_version.value > version.value => {
                cx.error_spanned_by(
                    &version.literal,
                    format!(
                        "`{}` (version {}) is declared after `{}` (version {}): declare layout \
                         features in version order, so that the derived `Ord` follows layout \
                         versions",
                        feature.name, version.value, above.name, above_version.value
                    ),
                );
            }
            _ => highest = Some((feature, version)),
        }
    }

    // Density needs every version: with one missing, a "gap" may be that feature's place.
    if versioned.len() != catalog.features.len() {
        return;
    }
    unique.sort_by_key(|(_, version)| version.value);
    if let Some((_, lowest)) = unique.first() {
        if lowest.value != 0 {
            cx.error_spanned_by(
                &lowest.literal,
                format!(
                    "the first layout feature must have version 0 (the initial layout), \
                     found {}",
                    lowest.value
                ),
            );
        }
    }
    for pair in unique.windows(2) {
        let [(_, below), (_, above)] = pair else {
            continue;
        };
        let (missing_from, missing_to) = (below.value + 1, above.value - 1);
        if missing_from > missing_to {
            continue;
        }
        let skipped = if missing_from == missing_to {
            format!("version {missing_from}")
        } else {
            format!("versions {missing_from} to {missing_to}")
        };
        cx.error_spanned_by(
            &above.literal,
            format!(
                "layout version {} skips {skipped}: layout versions must be dense (0, 1, 2, ...)",
                above.value
            ),
        );
    }
}
