//! What `from_registry` cannot accept, and the messages of the factory's list errors.

use std::fmt::{self, Write as _};

use crate::feature::LayoutFeature;

/// Where a registration comes from: the handler type and the attribute's location.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Origin {
    pub(super) type_name: &'static str,
    pub(super) file: &'static str,
    pub(super) line: u32,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}:{})", self.type_name, self.file, self.line)
    }
}

/// A `#[belongs_to_layout_version]` registration that
/// [`LayoutVersionInstanceFactory::from_registry`](crate::LayoutVersionInstanceFactory::from_registry)
/// cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistrationProblem {
    /// Two handlers are registered for the same key and layout version.
    #[error(
        "{key:?} has two handlers for layout feature {feature} (layout version {version}): \
         {first_type} ({first_location}) and {second_type} ({second_location})"
    )]
    Duplicate {
        /// The key.
        key: &'static str,
        /// The feature's name.
        feature: &'static str,
        /// Its layout version.
        version: u32,
        /// The first handler type.
        first_type: &'static str,
        /// Where the first is registered (`file:line`).
        first_location: String,
        /// The second handler type.
        second_type: &'static str,
        /// Where the second is registered (`file:line`).
        second_location: String,
    },
    /// The registration's feature is not in the catalog (a hand-written `LayoutFeature`
    /// implementation whose `ALL` lacks it or gives it another version).
    #[error(
        "{key:?} ({handler_type}, {location}) belongs to layout feature {feature} (layout \
         version {version}), which catalog {catalog} does not list at that version"
    )]
    UnknownFeature {
        /// The key.
        key: &'static str,
        /// The feature's name.
        feature: &'static str,
        /// Its layout version.
        version: u32,
        /// The catalog's name.
        catalog: &'static str,
        /// The handler type.
        handler_type: &'static str,
        /// Where it is registered (`file:line`).
        location: String,
    },
}

/// A registration left out because its feature is above the software layout version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SkippedRegistration<F> {
    /// The key.
    pub key: &'static str,
    /// The feature, above the SLV.
    pub feature: F,
    /// The handler type, as written in the `impl`.
    pub handler_type: &'static str,
    /// The source file of the `#[belongs_to_layout_version]` attribute.
    pub file: &'static str,
    /// Its line.
    pub line: u32,
}

/// The message of [`FactoryError::Registry`].
pub(super) fn problems_message(problems: &[RegistrationProblem]) -> String {
    let mut message = format!(
        "{} problem(s) with the handlers registered by #[belongs_to_layout_version]:",
        problems.len()
    );
    for problem in problems {
        let _ = write!(message, "\n  - {problem}");
    }
    message
}

/// The message of [`FactoryError::Missing`].
pub(super) fn missing_message<F: LayoutFeature, K: fmt::Debug>(missing: &[(K, F)]) -> String {
    let mut message = String::from("expected instances are not registered:");
    for (key, feature) in missing {
        let _ = write!(
            message,
            "\n  - {key:?} for layout feature {} (layout version {})",
            feature.name(),
            feature.layout_version()
        );
    }
    message.push_str(
        "\nIf they are registered with #[belongs_to_layout_version] in another crate, that crate \
         is probably not linked: a crate that nothing references is left out of the binary, \
         with its registrations. Reference it (for example `use the_handlers_crate as _;`, or \
         pass its exported list to `expect`).",
    );
    message
}
