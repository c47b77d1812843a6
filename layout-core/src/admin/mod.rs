//! The admin API (feature `admin`): what an operator asks of a component, transport-free.
//!
//! | operation | request | response |
//! |---|---|---|
//! | status | none | [`StatusResponse`]: MLV, SLV, finalization status and progress, prepare state, features |
//! | features | none | [`FeaturesResponse`] |
//! | finalize | [`FinalizeParams`]: client id, takeover, target feature, dry run, overrides with reasons | [`FinalizeResponse`] |
//! | finalization status | none (read-only), or [`FinalizationStatusParams`] (drains a client's messages) | [`FinalizationStatusResponse`] |
//! | prepare | [`PrepareParams`] | [`PrepareResponse`] |
//! | cancel-prepare | [`PrepareParams`] | [`PrepareResponse`] |
//! | cancel-finalization | [`CancelFinalizationParams`] | [`FinalizationStatusResponse`] |
//! | migrations | none | [`MigrationsResponse`]: each background migration's progress and settings |
//! | migration-settings | [`MigrationSettingsParams`]: batch size, rate ceiling, latency budget | [`MigrationView`] |
//!
//! [`AdminService`] serves them for one component. Errors are [`AdminError`]s: a
//! machine-readable [`ErrorCode`] (with its HTTP status) and a message. Every request
//! body carries [`API_VERSION`].
//!
//! With the `admin-http` feature, [`http`] serves the service over HTTP/JSON on
//! loopback with a bearer token, and [`http::AdminClient`] calls it; the `cli` feature
//! builds `layoutctl` on that client.

#[cfg(feature = "http")]
mod metrics;
mod service;
mod types;

#[cfg(feature = "admin-http")]
pub mod http;

#[cfg(feature = "http")]
pub use metrics::AdminMetrics;
pub use service::{AdminService, DEFAULT_FINALIZE_START_WAIT};
pub use types::{
    AdminError, CancelFinalizationParams, ConditionView, DryRunView, ErrorBody, ErrorCode,
    ErrorResponse, FeatureView, FeaturesResponse, FinalizationStatusParams,
    FinalizationStatusResponse, FinalizeParams, FinalizeResponse, MigrationSettingsParams,
    MigrationView, MigrationsResponse, OverrideParams, PlannedStepView, PrepareParams,
    PrepareResponse, ProgressView, StatusResponse, VetoView, WireFeatureStatus,
    WireFinalizationStatus, WireMigrationState, WirePrepareState, API_VERSION,
};
