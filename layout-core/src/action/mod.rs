//! Upgrade actions and the registry that holds them.
//!
//! An *upgrade action* is code a layout feature runs at one of three moments
//! ([`Phase`]). Actions are registered with [`ActionRegistry::builder`] or with the
//! `#[upgrade_action(F::X, phase = ...)]` attribute; both end in one registry, and
//! [`ActionRegistryBuilder::build`] reports every wiring problem at once, so an action that
//! silently never runs cannot happen.
//!
//! [`Phase`]: crate::Phase
//! [`ActionRegistry::builder`]: crate::ActionRegistry::builder

// The main path (`Action`, `ActionContext`, `ActionError`, `ActionRegistry`, `Phase`) is
// re-exported at the crate root, and only there; this module holds the rest.
pub(crate) mod context;
pub(crate) mod registry;

pub use context::ProgressSink;
pub use registry::{
    ActionOrigin, ActionRegistryBuilder, RegisteredAction, RegistryError, RegistryProblem,
};
