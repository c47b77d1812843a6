//! The admin API's request and response types (serde, JSON on the wire).
//!
//! Requests are strict: unknown fields, wrong types and numbers out of range are
//! refused, and every request body carries [`API_VERSION`]. Responses are lenient for
//! readers (a newer server may add fields) and carry the API version too. Statuses and
//! states are enums ([`WireFinalizationStatus`], [`WirePrepareState`],
//! [`WireFeatureStatus`], [`WireMigrationState`]) whose JSON is one word; a word a newer
//! server sends that this release does not know reads as their `Unknown(word)`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::manager::FeatureStatus;
#[cfg(feature = "migration")]
use crate::migration::MigrationState;
use crate::FinalizationStatus;
use crate::PrepareState;

/// The version of the admin API this release speaks. Request bodies must carry it;
/// responses report it. HTTP paths carry it as `/v1/...`.
pub const API_VERSION: u32 = 1;

/// `POST finalize`: finalize the component, or plan it with `dry_run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FinalizeParams {
    /// Must be [`API_VERSION`].
    pub api_version: u32,
    /// Who finalizes (recorded in the history; binds the status messages).
    pub client_id: String,
    /// Take over an unfinished finalization bound to another client.
    #[serde(default)]
    pub takeover: bool,
    /// Finalize up to this feature (by name); default: the software layout version.
    #[serde(default)]
    pub target: Option<String>,
    /// Only report what would run: the features, their actions, the conditions.
    #[serde(default)]
    pub dry_run: bool,
    /// Failing conditions to override, each with a reason (recorded in the history).
    #[serde(default)]
    pub overrides: Vec<OverrideParams>,
}

impl FinalizeParams {
    /// A request by `client_id` to finalize everything.
    pub fn new(client_id: impl Into<String>) -> Self {
        Self {
            api_version: API_VERSION,
            client_id: client_id.into(),
            takeover: false,
            target: None,
            dry_run: false,
            overrides: Vec::new(),
        }
    }

    /// Stop at the feature named `target`.
    #[must_use]
    pub fn with_target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Take over an unfinished finalization of another client.
    #[must_use]
    pub fn with_takeover(mut self, takeover: bool) -> Self {
        self.takeover = takeover;
        self
    }

    /// Only plan.
    #[must_use]
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Override the failing condition `condition` for `reason`.
    #[must_use]
    pub fn with_override(
        mut self,
        condition: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        self.overrides.push(OverrideParams {
            condition: condition.into(),
            reason: reason.into(),
        });
        self
    }
}

/// An override of a failing finalize condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideParams {
    /// The condition's name.
    pub condition: String,
    /// Why (required, recorded in the history).
    pub reason: String,
}

/// `POST finalization-status`: the status, draining `client_id`'s messages. (`GET
/// finalization-status` is the read-only form and drains nothing.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FinalizationStatusParams {
    /// Must be [`API_VERSION`].
    pub api_version: u32,
    /// The client whose messages to drain; `None` is read-only.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Rebind a finalization bound to another client to this one.
    #[serde(default)]
    pub takeover: bool,
}

impl FinalizationStatusParams {
    /// A status request as `client_id` (draining its messages), or read-only with `None`.
    pub fn new(client_id: Option<String>) -> Self {
        Self {
            api_version: API_VERSION,
            client_id,
            takeover: false,
        }
    }

    /// Rebind the finalization to this client.
    #[must_use]
    pub fn with_takeover(mut self, takeover: bool) -> Self {
        self.takeover = takeover;
        self
    }
}

/// `POST prepare` and `POST cancel-prepare`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PrepareParams {
    /// Must be [`API_VERSION`].
    pub api_version: u32,
    /// Who asks (logged).
    #[serde(default)]
    pub client_id: Option<String>,
}

impl PrepareParams {
    /// A request by `client_id`.
    pub fn new(client_id: Option<String>) -> Self {
        Self {
            api_version: API_VERSION,
            client_id,
        }
    }
}

impl Default for PrepareParams {
    fn default() -> Self {
        Self::new(None)
    }
}

/// `POST cancel-finalization`: stops a running finalization before its next feature (a
/// background migration between batches) and stores the cancel, so the component does
/// not resume it by itself at its next start; the next `finalize` continues it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CancelFinalizationParams {
    /// Must be [`API_VERSION`].
    pub api_version: u32,
    /// Who cancels (stored with the cancel, shown in the VERSION file).
    pub client_id: String,
}

impl CancelFinalizationParams {
    /// A cancel by `client_id`.
    pub fn new(client_id: impl Into<String>) -> Self {
        Self {
            api_version: API_VERSION,
            client_id: client_id.into(),
        }
    }
}

/// One background migration of the component, its progress and its settings, as
/// `GET migrations` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MigrationView {
    /// Its name.
    pub name: String,
    /// `not started`, `running`, `paused`, `interrupted` or `complete`.
    pub state: WireMigrationState,
    /// Rows done over all runs.
    pub done: u64,
    /// Rows in all, when known (persisted with the run's start, so known at once after
    /// a restart).
    pub total: Option<u64>,
    /// Batches committed over all runs.
    pub batches: u64,
    /// Runs started (1 + resumes).
    pub runs: u32,
    /// How long it has run over all runs, in ms (downtime excluded).
    pub elapsed_ms: u64,
    /// Keys per batch now.
    pub batch_size: usize,
    /// The rate ceiling now, if any.
    pub max_rows_per_sec: Option<u64>,
    /// The foreground-latency budget now, in ms, if any.
    pub latency_budget_ms: Option<u64>,
    /// The wait the latency budget adds before each batch now, in ms.
    pub latency_delay_ms: u64,
}

/// `GET migrations`: the component's background migrations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MigrationsResponse {
    /// [`API_VERSION`].
    pub api_version: u32,
    /// Every migration the component registered.
    pub migrations: Vec<MigrationView>,
}

/// `POST migration-settings`: changes a background migration's batch size and throttle
/// while it runs (from its next batch). Absent fields stay as they are; `0` for
/// `max_rows_per_sec` or `latency_budget_ms` removes that limit; a batch size of `0` is
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MigrationSettingsParams {
    /// Must be [`API_VERSION`].
    pub api_version: u32,
    /// Who asks (logged).
    #[serde(default)]
    pub client_id: Option<String>,
    /// The migration; may be left out when the component has exactly one.
    #[serde(default)]
    pub name: Option<String>,
    /// Keys per batch.
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// The rate ceiling in rows per second (`0`: none).
    #[serde(default)]
    pub max_rows_per_sec: Option<u64>,
    /// The foreground-latency budget in ms (`0`: none).
    #[serde(default)]
    pub latency_budget_ms: Option<u64>,
}

impl MigrationSettingsParams {
    /// A request that changes nothing yet, for the component's only migration.
    pub fn new() -> Self {
        Self {
            api_version: API_VERSION,
            client_id: None,
            name: None,
            batch_size: None,
            max_rows_per_sec: None,
            latency_budget_ms: None,
        }
    }

    /// For the migration `name`.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// By `client_id` (logged).
    #[must_use]
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// Sets the batch size.
    #[must_use]
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = Some(batch_size);
        self
    }

    /// Sets the rate ceiling (`0`: none).
    #[must_use]
    pub fn with_max_rows_per_sec(mut self, rows_per_sec: u64) -> Self {
        self.max_rows_per_sec = Some(rows_per_sec);
        self
    }

    /// Sets the latency budget in ms (`0`: none).
    #[must_use]
    pub fn with_latency_budget_ms(mut self, budget_ms: u64) -> Self {
        self.latency_budget_ms = Some(budget_ms);
        self
    }
}

impl Default for MigrationSettingsParams {
    fn default() -> Self {
        Self::new()
    }
}

/// `GET status`: everything about the component's layout at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StatusResponse {
    /// [`API_VERSION`].
    pub api_version: u32,
    /// The component.
    pub component: String,
    /// The catalog's name.
    pub catalog: String,
    /// MLV.
    pub metadata_layout_version: u32,
    /// The feature at the MLV.
    pub metadata_layout_feature: String,
    /// SLV.
    pub software_layout_version: u32,
    /// The feature at the SLV.
    pub software_layout_feature: String,
    /// MLV < SLV.
    pub needs_finalization: bool,
    /// The finalization status and progress.
    pub finalization: FinalizationStatusResponse,
    /// The prepare state.
    pub prepare: PrepareResponse,
    /// Every catalog feature and its status.
    pub features: Vec<FeatureView>,
}

/// `GET features`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FeaturesResponse {
    /// [`API_VERSION`].
    pub api_version: u32,
    /// MLV.
    pub metadata_layout_version: u32,
    /// SLV.
    pub software_layout_version: u32,
    /// Every catalog feature, ascending.
    pub features: Vec<FeatureView>,
}

/// One catalog feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FeatureView {
    /// Its name.
    pub name: String,
    /// Its layout version.
    pub version: u32,
    /// Its description.
    pub description: String,
    /// `finalized`, `not-finalized` or `beyond-software`.
    pub status: WireFeatureStatus,
    /// Whether it is deprecated.
    pub deprecated: bool,
}

/// The finalization status (`GET`/`POST finalization-status`, and inside status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FinalizationStatusResponse {
    /// [`API_VERSION`].
    pub api_version: u32,
    /// `ALREADY_FINALIZED`, `FINALIZATION_REQUIRED`, `STARTING_FINALIZATION`,
    /// `FINALIZATION_IN_PROGRESS` or `FINALIZATION_DONE`.
    pub status: WireFinalizationStatus,
    /// Whether a finalization is running.
    pub running: bool,
    /// MLV.
    pub metadata_layout_version: u32,
    /// SLV.
    pub software_layout_version: u32,
    /// The version the current or last finalization aims at.
    pub target_version: Option<u32>,
    /// The client the finalization is bound to.
    pub client_id: Option<String>,
    /// Where a running finalization is.
    pub progress: Option<ProgressView>,
    /// Why the last finalization failed, if it did.
    pub last_error: Option<String>,
    /// How many finalization runs ended in an error since the component started.
    #[serde(default)]
    pub failures: u64,
    /// Messages for the asking client, each delivered once (empty when read-only).
    pub messages: Vec<String>,
    /// The veto on automatic finalization, if set.
    pub veto: Option<VetoView>,
    /// Whether the veto is in force.
    pub veto_active: bool,
    /// When automatic finalization will run (ms since the Unix epoch), if scheduled.
    pub auto_finalize_at_ms: Option<u64>,
    /// Whether the current (or last) run resumed an interrupted finalization at
    /// start-up, without an operator; `client_id` is who started it.
    #[serde(default)]
    pub resumed_at_startup: bool,
    /// How many times the finalization was resumed at start-up (stored in its record).
    #[serde(default)]
    pub resumes: u32,
    /// Who cancelled the unfinished finalization, if an operator did (it is then not
    /// resumed at start-up until an operator finalizes again).
    #[serde(default)]
    pub cancelled_by: Option<String>,
}

/// Where a running finalization is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProgressView {
    /// 1-based position of the feature being finalized.
    pub feature_index: usize,
    /// How many features this run finalizes.
    pub feature_count: usize,
    /// The feature being finalized.
    pub feature: String,
    /// Its layout version.
    pub feature_version: u32,
    /// The action running, if the feature has one.
    pub action: Option<String>,
    /// Units done, as last reported by the action.
    pub done: u64,
    /// Units in all, if known.
    pub total: Option<u64>,
    /// How long the run has taken, in milliseconds.
    pub elapsed_ms: u64,
}

/// An operator's veto on automatic finalization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VetoView {
    /// Why.
    pub reason: String,
    /// Who.
    pub client_id: String,
    /// When it was set (ms since the Unix epoch).
    pub set_at_ms: u64,
    /// When it lapses (ms since the Unix epoch), if ever.
    pub expires_at_ms: Option<u64>,
}

/// What `POST finalize` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum FinalizeResponse {
    /// Finalization runs in the background; follow it with finalization-status.
    Started {
        /// [`API_VERSION`].
        api_version: u32,
        /// The client it is bound to.
        client_id: String,
        /// The version it moves towards.
        target_version: u32,
    },
    /// Nothing to do: the MLV is at (or above) the target.
    AlreadyFinalized {
        /// [`API_VERSION`].
        api_version: u32,
        /// MLV.
        metadata_layout_version: u32,
    },
    /// Finalization completed before the answer was sent.
    Done {
        /// [`API_VERSION`].
        api_version: u32,
        /// The features finalized, in order.
        finalized: Vec<String>,
        /// MLV now.
        metadata_layout_version: u32,
    },
    /// The plan (dry run); nothing was changed.
    DryRun {
        /// [`API_VERSION`].
        api_version: u32,
        /// What would run.
        plan: DryRunView,
    },
}

/// What a finalization would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DryRunView {
    /// MLV now.
    pub from_version: u32,
    /// The version it would finalize to.
    pub target_version: u32,
    /// The features, in order, with their actions.
    pub steps: Vec<PlannedStepView>,
    /// Every finalize condition and its result now.
    pub conditions: Vec<ConditionView>,
    /// Why a finalization would be refused now regardless of conditions, if it would.
    pub blocked_by: Option<String>,
}

/// One feature a finalization would finalize.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PlannedStepView {
    /// The feature.
    pub feature: String,
    /// Its layout version.
    pub version: u32,
    /// Its `OnFinalize` action, if any.
    pub action: Option<String>,
}

/// One finalize condition's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ConditionView {
    /// The condition.
    pub name: String,
    /// Whether it passes.
    pub passed: bool,
    /// Why it fails.
    pub reason: Option<String>,
}

/// The prepare state (`POST prepare`, `POST cancel-prepare`, and inside status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PrepareResponse {
    /// [`API_VERSION`].
    pub api_version: u32,
    /// Whether the component supports prepare at all.
    pub supported: bool,
    /// `NOT_PREPARED`, `PREPARE_GATE_ENABLED` or `PREPARE_COMPLETED`.
    pub state: WirePrepareState,
    /// The prepare index, when prepared.
    pub index: Option<u64>,
    /// Why the last prepare failed, with its cause (e.g. "No space left on device"),
    /// until a prepare succeeds.
    #[serde(default)]
    pub last_failure: Option<String>,
}

/// An error answer: a machine-readable code and an operator-readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ErrorResponse {
    /// [`API_VERSION`].
    pub api_version: u32,
    /// The error.
    pub error: ErrorBody,
}

/// The body of an [`ErrorResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ErrorBody {
    /// What kind of error, for programs.
    pub code: ErrorCode,
    /// What happened and what to do, for people.
    pub message: String,
}

/// Machine-readable error codes, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: the request is malformed (not JSON, wrong types, unknown fields, bad HTTP).
    BadRequest,
    /// 400: the request carries another API version.
    UnsupportedApiVersion,
    /// 400: a field's value is not acceptable (unknown feature or condition, empty
    /// client id, override without a reason).
    InvalidArgument,
    /// 401: the bearer token is missing or wrong.
    Unauthorized,
    /// 404: no such endpoint.
    NotFound,
    /// 405: the endpoint does not take this method.
    MethodNotAllowed,
    /// 408: the request did not arrive in time.
    RequestTimeout,
    /// 409: a finalization is already running.
    FinalizationInProgress,
    /// 409: an unfinished finalization belongs to another client (use takeover).
    OwnedByAnotherClient,
    /// 409: the component is prepared (or preparing): cancel prepare first.
    Prepared,
    /// 409: finalize conditions fail (override them with a reason).
    ConditionsFailed,
    /// 409: the target is beyond this software's layout version.
    BeyondSoftware,
    /// 413: the request body is too large.
    PayloadTooLarge,
    /// 431: the request head is too large.
    HeadersTooLarge,
    /// 500: a finalization failed.
    FinalizationFailed,
    /// 500: prepare failed at a step and was cancelled.
    PrepareFailed,
    /// 501: the component does not support this (prepare without a controller).
    NotSupported,
    /// 503: prepare timed out waiting for the log, and was cancelled.
    PrepareTimeout,
    /// 503: the endpoint is at its connection limit; retry.
    Busy,
    /// 500: anything else (storage failures, ...).
    Internal,
    /// A code this release does not know (sent by a newer server).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The HTTP status for this code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest | Self::UnsupportedApiVersion | Self::InvalidArgument => 400,
            Self::Unauthorized => 401,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::FinalizationInProgress
            | Self::OwnedByAnotherClient
            | Self::Prepared
            | Self::ConditionsFailed
            | Self::BeyondSoftware => 409,
            Self::PayloadTooLarge => 413,
            Self::HeadersTooLarge => 431,
            Self::NotSupported => 501,
            Self::PrepareTimeout | Self::Busy => 503,
            Self::FinalizationFailed | Self::PrepareFailed | Self::Internal | Self::Unknown => 500,
        }
    }

    /// The code as on the wire (`finalization-in-progress`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::UnsupportedApiVersion => "unsupported-api-version",
            Self::InvalidArgument => "invalid-argument",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::RequestTimeout => "request-timeout",
            Self::FinalizationInProgress => "finalization-in-progress",
            Self::OwnedByAnotherClient => "owned-by-another-client",
            Self::Prepared => "prepared",
            Self::ConditionsFailed => "conditions-failed",
            Self::BeyondSoftware => "beyond-software",
            Self::PayloadTooLarge => "payload-too-large",
            Self::HeadersTooLarge => "headers-too-large",
            Self::FinalizationFailed => "finalization-failed",
            Self::PrepareFailed => "prepare-failed",
            Self::NotSupported => "not-supported",
            Self::PrepareTimeout => "prepare-timeout",
            Self::Busy => "busy",
            Self::Internal => "internal",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An admin request refused or failed: a code (with its HTTP status) and a message.
/// Shown as `code: message`, or the message alone when the code is one this release
/// does not know ([`ErrorCode::Unknown`]: a newer server's, or another service's error
/// body, whose message then carries its own kind).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.shown())]
pub struct AdminError {
    code: ErrorCode,
    message: String,
}

impl AdminError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    fn shown(&self) -> String {
        match self.code {
            ErrorCode::Unknown => self.message.clone(),
            code => format!("{code}: {}", self.message),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status for it.
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }

    /// The error as a response body.
    pub fn to_response(&self) -> ErrorResponse {
        ErrorResponse {
            api_version: API_VERSION,
            error: ErrorBody {
                code: self.code,
                message: self.message.clone(),
            },
        }
    }
}

impl From<ErrorResponse> for AdminError {
    fn from(response: ErrorResponse) -> Self {
        Self::new(response.error.code, response.error.message)
    }
}

/// A wire enum: each variant is one word in the JSON, and a word this release does not
/// know reads as `Unknown(word)` (so a client keeps working against a newer server) and
/// is written back as the same word.
macro_rules! wire_words {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $word:literal, )+
        }
    ) => {
        $(#[$meta])*
        ///
        /// A word this release does not know (a newer server sent it) reads as
        /// `Unknown(word)`, so parsing never fails on it; it is written back unchanged.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A word this release does not know, as the server sent it.
            Unknown(String),
        }

        impl $name {
            /// Every variant this release knows, in the order of the documentation.
            pub const KNOWN: &'static [Self] = &[$(Self::$variant),+];

            /// The variant for `word`; [`Unknown`](Self::Unknown) for a word this
            /// release does not know.
            pub fn from_word(word: &str) -> Self {
                match word {
                    $( $word => Self::$variant, )+
                    other => Self::Unknown(other.to_owned()),
                }
            }

            /// The word on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $word, )+
                    Self::Unknown(word) => word,
                }
            }
        }

        impl From<String> for $name {
            fn from(word: String) -> Self {
                match Self::from_word(&word) {
                    Self::Unknown(_) => Self::Unknown(word),
                    known => known,
                }
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                match value {
                    $name::Unknown(word) => word,
                    known => known.as_str().to_owned(),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

wire_words! {
    /// [`FeatureView::status`]: a catalog feature's [`FeatureStatus`], in its wire words.
    WireFeatureStatus {
        /// `finalized`: at or below the MLV.
        Finalized = "finalized",
        /// `not-finalized`: known to the software, not finalized yet.
        NotFinalized = "not-finalized",
        /// `beyond-software`: above the software layout version.
        BeyondSoftware = "beyond-software",
    }
}

impl From<FeatureStatus> for WireFeatureStatus {
    fn from(status: FeatureStatus) -> Self {
        match status {
            FeatureStatus::Finalized => Self::Finalized,
            FeatureStatus::NotFinalized => Self::NotFinalized,
            FeatureStatus::BeyondSoftware => Self::BeyondSoftware,
        }
    }
}

wire_words! {
    /// [`FinalizationStatusResponse::status`]: the [`FinalizationStatus`], in its wire
    /// words (Apache Ozone's).
    WireFinalizationStatus {
        /// `ALREADY_FINALIZED`: nothing to finalize when the component started.
        AlreadyFinalized = "ALREADY_FINALIZED",
        /// `FINALIZATION_REQUIRED`: MLV < SLV and no finalization running.
        FinalizationRequired = "FINALIZATION_REQUIRED",
        /// `STARTING_FINALIZATION`: accepted, preflight passed, no feature finalized yet.
        StartingFinalization = "STARTING_FINALIZATION",
        /// `FINALIZATION_IN_PROGRESS`: features are being finalized.
        FinalizationInProgress = "FINALIZATION_IN_PROGRESS",
        /// `FINALIZATION_DONE`: a finalization brought MLV to SLV.
        FinalizationDone = "FINALIZATION_DONE",
    }
}

impl WireFinalizationStatus {
    /// Whether the status says a finalization is running (starting or in progress).
    pub fn is_running(&self) -> bool {
        matches!(
            self,
            Self::StartingFinalization | Self::FinalizationInProgress
        )
    }
}

impl From<FinalizationStatus> for WireFinalizationStatus {
    fn from(status: FinalizationStatus) -> Self {
        match status {
            FinalizationStatus::AlreadyFinalized => Self::AlreadyFinalized,
            FinalizationStatus::FinalizationRequired => Self::FinalizationRequired,
            FinalizationStatus::StartingFinalization => Self::StartingFinalization,
            FinalizationStatus::FinalizationInProgress => Self::FinalizationInProgress,
            FinalizationStatus::FinalizationDone => Self::FinalizationDone,
        }
    }
}

wire_words! {
    /// [`PrepareResponse::state`]: the [`PrepareState`] without its index (which is
    /// [`PrepareResponse::index`]), in its wire words (Apache Ozone's).
    WirePrepareState {
        /// `NOT_PREPARED`: writes are accepted.
        NotPrepared = "NOT_PREPARED",
        /// `PREPARE_GATE_ENABLED`: the write gate is up, a prepare is running.
        GateEnabled = "PREPARE_GATE_ENABLED",
        /// `PREPARE_COMPLETED`: prepared.
        Prepared = "PREPARE_COMPLETED",
    }
}

impl From<PrepareState> for WirePrepareState {
    fn from(state: PrepareState) -> Self {
        match state {
            PrepareState::NotPrepared => Self::NotPrepared,
            PrepareState::GateEnabled => Self::GateEnabled,
            PrepareState::Prepared { .. } => Self::Prepared,
        }
    }
}

wire_words! {
    /// [`MigrationView::state`]: a background migration's state
    /// (`migration::MigrationState`, feature `migration`), in its wire words.
    WireMigrationState {
        /// `not started`: no checkpoint yet.
        NotStarted = "not started",
        /// `running`: copying.
        Running = "running",
        /// `paused`: paused between batches.
        Paused = "paused",
        /// `interrupted`: started, not running now; the next run resumes.
        Interrupted = "interrupted",
        /// `complete`: done.
        Complete = "complete",
    }
}

#[cfg(feature = "migration")]
impl From<MigrationState> for WireMigrationState {
    fn from(state: MigrationState) -> Self {
        match state {
            MigrationState::NotStarted => Self::NotStarted,
            MigrationState::Running => Self::Running,
            MigrationState::Paused => Self::Paused,
            MigrationState::Interrupted => Self::Interrupted,
            MigrationState::Complete => Self::Complete,
        }
    }
}
