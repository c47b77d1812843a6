//! A finalization request: who asks, up to which feature, and with which overrides.

use super::condition::ConditionOverride;

/// A finalization request: who asks, up to which feature, and with which overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FinalizeRequest<F> {
    /// Who asks (recorded in the history; binds the status messages).
    pub client_id: String,
    /// Finalize up to this feature (default: the SLV).
    pub target: Option<F>,
    /// Take over an unfinished finalization bound to another client.
    pub takeover: bool,
    /// Failing conditions to override, each with a reason.
    pub overrides: Vec<ConditionOverride>,
    /// Set by
    /// [`UpgradeFinalizer::resume_interrupted`](crate::UpgradeFinalizer::resume_interrupted):
    /// the run resumes an interrupted finalization at start-up, without an operator.
    pub(super) at_startup: bool,
}

impl<F> FinalizeRequest<F> {
    /// A request by `client_id` to finalize everything.
    pub fn new(client_id: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            target: None,
            takeover: false,
            overrides: Vec::new(),
            at_startup: false,
        }
    }

    /// Stop at `target`.
    #[must_use]
    pub fn with_target(mut self, target: F) -> Self {
        self.target = Some(target);
        self
    }

    /// Take over an unfinished finalization of another client.
    #[must_use]
    pub fn with_takeover(mut self, takeover: bool) -> Self {
        self.takeover = takeover;
        self
    }

    /// Override the failing condition `condition`, for `reason`.
    #[must_use]
    pub fn with_override(
        mut self,
        condition: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        self.overrides
            .push(ConditionOverride::new(condition, reason));
        self
    }
}
