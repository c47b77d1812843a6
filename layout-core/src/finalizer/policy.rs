//! When finalization happens: by an operator, or automatically after a soak period
//! unless a veto is in force (see `auto`).

use std::time::Duration;

/// When finalization happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FinalizePolicy {
    /// Only when an operator asks (the default).
    #[default]
    Manual,
    /// Automatically, once the component has run pre-finalized for `soak`, unless a veto
    /// is in force. [`UpgradeFinalizer::tick`](crate::UpgradeFinalizer::tick) checks and starts it.
    Auto {
        /// How long to run pre-finalized first.
        soak: Duration,
    },
}
