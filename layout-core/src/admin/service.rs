//! [`AdminService`]: the admin operations of one component, transport-free.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::types::{
    AdminError, CancelFinalizationParams, ConditionView, DryRunView, ErrorCode, FeatureView,
    FeaturesResponse, FinalizationStatusParams, FinalizationStatusResponse, FinalizeParams,
    FinalizeResponse, MigrationSettingsParams, MigrationView, MigrationsResponse, PlannedStepView,
    PrepareParams, PrepareResponse, ProgressView, StatusResponse, VetoView, API_VERSION,
};
use crate::clock::to_ms;
use crate::error::LayoutError;
use crate::feature::LayoutFeature;
use crate::finalizer::FinalizeHandle;
#[cfg(feature = "migration")]
use crate::migration::{MigrationControl, MigrationProgress, MigrationState};
use crate::{FinalizeError, FinalizeOutcome, FinalizeRequest, StatusReport, UpgradeFinalizer};
use crate::{Preparable, PrepareController, PrepareError, PrepareState};

/// How long `finalize` waits for a background finalization to end before it answers
/// `started`, by default.
pub const DEFAULT_FINALIZE_START_WAIT: Duration = Duration::from_secs(2);

/// The longest client id accepted.
const MAX_CLIENT_ID: usize = 256;

/// The layout facts a status needs, catalog-independent.
struct LayoutView {
    component: String,
    catalog: &'static str,
    mlv: u32,
    mlv_feature: &'static str,
    slv: u32,
    slv_feature: &'static str,
    needs_finalization: bool,
    features: Vec<FeatureView>,
}

/// The catalog- and component-typed half of the service, behind a trait object so the
/// service (and the HTTP server and CLI above it) are not generic.
trait Backend: Send + Sync {
    fn layout(&self) -> LayoutView;
    fn finalization_status(
        &self,
        client: Option<&str>,
        takeover: bool,
    ) -> Result<FinalizationStatusResponse, AdminError>;
    fn finalize(
        &self,
        params: &FinalizeParams,
        start_wait: Duration,
    ) -> Result<FinalizeResponse, AdminError>;
    fn join_finalization(&self) -> Option<Result<FinalizeResponse, AdminError>>;
    fn cancel_finalization(&self, client: &str) -> Result<FinalizationStatusResponse, AdminError>;
}

/// A background migration the admin API shows and tunes; see
/// [`AdminService::with_migration`].
#[cfg(feature = "migration")]
struct AdminMigration {
    name: String,
    control: MigrationControl,
    progress: Box<dyn Fn() -> Option<MigrationProgress> + Send + Sync>,
}

#[cfg(feature = "migration")]
impl AdminMigration {
    fn name(&self) -> &str {
        &self.name
    }

    /// Applies the settings `params` changes, from the migration's next batch.
    fn tune(&self, params: &MigrationSettingsParams) -> Result<(), String> {
        let mut tuning = self.control.tuning();
        if let Some(batch) = params.batch_size {
            tuning.batch_size = batch;
        }
        if let Some(rate) = params.max_rows_per_sec {
            tuning.max_rows_per_sec = (rate > 0).then_some(rate);
        }
        if let Some(budget) = params.latency_budget_ms {
            tuning.latency_budget = (budget > 0).then(|| Duration::from_millis(budget));
        }
        self.control.set_tuning(tuning)
    }

    fn view(&self) -> MigrationView {
        let tuning = self.control.tuning();
        let progress = (self.progress)();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        MigrationView {
            name: self.name.clone(),
            state: progress
                .as_ref()
                .map_or(MigrationState::NotStarted, |p| p.state)
                .into(),
            done: progress.as_ref().map_or(0, |p| p.done),
            total: progress.as_ref().and_then(|p| p.total),
            batches: progress.as_ref().map_or(0, |p| p.batches),
            runs: progress.as_ref().map_or(0, |p| p.runs),
            elapsed_ms: progress.as_ref().map_or(0, |p| ms(p.elapsed)),
            batch_size: tuning.batch_size,
            max_rows_per_sec: tuning.max_rows_per_sec,
            latency_budget_ms: tuning.latency_budget.map(ms),
            latency_delay_ms: progress.as_ref().map_or(0, |p| ms(p.latency_delay)),
        }
    }
}

/// Without the `migration` feature no migration can be registered.
#[cfg(not(feature = "migration"))]
enum AdminMigration {}

#[cfg(not(feature = "migration"))]
impl AdminMigration {
    fn name(&self) -> &str {
        match *self {}
    }

    fn tune(&self, _: &MigrationSettingsParams) -> Result<(), String> {
        match *self {}
    }

    fn view(&self) -> MigrationView {
        match *self {}
    }
}

struct Typed<F: LayoutFeature, C> {
    finalizer: Arc<UpgradeFinalizer<F, C>>,
    component: Arc<C>,
    running: Mutex<Option<FinalizeHandle<F>>>,
}

/// Serves the admin API of one component: status, features, finalize (with dry run,
/// target, takeover, overrides), finalization status, prepare and cancel-prepare.
///
/// Transport-free: every operation takes and returns the serde types of
/// [`admin`](super); the `admin-http` endpoint and `layoutctl` sit on top of it, and a
/// service may expose it over its own RPC instead.
///
/// ```
/// use std::sync::Arc;
/// use layout_core::admin::{AdminService, FinalizeParams, FinalizeResponse};
/// use layout_core::*;
///
/// #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
/// enum OmFeature {
///     #[layout(version = 0, description = "Initial layout")]
///     Initial,
///     #[layout(version = 1, description = "Multi-tenancy tables")]
///     MultiTenancy,
/// }
/// struct Om;
///
/// let opts = ManagerOptions::default().with_start_intent(StartIntent::Init).with_initial_layout_version(0);
/// let lvm = Arc::new(LayoutVersionManager::<OmFeature>::open(MemoryStorage::new(), opts)?);
/// let finalizer = Arc::new(UpgradeFinalizer::new(lvm, ActionRegistry::<OmFeature, Om>::empty()));
/// let admin = AdminService::new(finalizer, Arc::new(Om));
///
/// assert_eq!(admin.status()?.metadata_layout_version, 0);
/// let plan = admin.finalize(&FinalizeParams::new("ops").with_dry_run(true))?;
/// assert!(matches!(plan, FinalizeResponse::DryRun { .. }));
/// admin.finalize(&FinalizeParams::new("ops"))?;   // runs in the background
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct AdminService {
    backend: Arc<dyn Backend>,
    prepare: Option<(Arc<PrepareController>, Arc<dyn Preparable>)>,
    start_wait: Duration,
    migrations: Vec<AdminMigration>,
}

impl AdminService {
    /// The admin service of `component`, finalized by `finalizer`.
    pub fn new<F, C>(finalizer: Arc<UpgradeFinalizer<F, C>>, component: Arc<C>) -> Self
    where
        F: LayoutFeature,
        C: Send + Sync + 'static,
    {
        Self {
            backend: Arc::new(Typed {
                finalizer,
                component,
                running: Mutex::new(None),
            }),
            prepare: None,
            start_wait: DEFAULT_FINALIZE_START_WAIT,
            migrations: Vec::new(),
        }
    }

    /// Shows the background migration `name` in `migrations` and lets
    /// `migration-settings` change its batch size and throttle through `control` while
    /// it runs. `progress` reads its progress (`None` while there is none to show).
    #[must_use]
    #[cfg(feature = "migration")]
    pub fn with_migration(
        mut self,
        name: impl Into<String>,
        control: MigrationControl,
        progress: impl Fn() -> Option<MigrationProgress> + Send + Sync + 'static,
    ) -> Self {
        self.migrations.push(AdminMigration {
            name: name.into(),
            control,
            progress: Box::new(progress),
        });
        self
    }

    /// Every registered background migration, its progress and its settings.
    pub fn migrations(&self) -> MigrationsResponse {
        MigrationsResponse {
            api_version: API_VERSION,
            migrations: self.migrations.iter().map(AdminMigration::view).collect(),
        }
    }

    /// Changes a background migration's settings while it runs (from its next batch);
    /// answers the migration as it is then. Refused with `invalid-argument` for a batch
    /// size of 0, with `not-found` for an unknown migration (or no name when there are
    /// several), with `not-supported` when none is registered.
    pub fn set_migration_settings(
        &self,
        params: &MigrationSettingsParams,
    ) -> Result<MigrationView, AdminError> {
        check_api_version(params.api_version)?;
        let migration = match (&params.name, self.migrations.as_slice()) {
            (_, []) => {
                return Err(AdminError::new(
                    ErrorCode::NotSupported,
                    format!(
                        "component {} has no background migration to tune",
                        self.component_name()
                    ),
                ))
            }
            (None, [only]) => only,
            (name, all) => {
                let names: Vec<&str> = all.iter().map(AdminMigration::name).collect();
                let found = name
                    .as_deref()
                    .and_then(|n| all.iter().find(|m| m.name() == n));
                found.ok_or_else(|| {
                    AdminError::new(
                        ErrorCode::NotFound,
                        format!(
                            "no background migration {}; this component has: {}",
                            name.as_deref().map_or_else(
                                || "named (give a name)".to_owned(),
                                |n| format!("{n:?}")
                            ),
                            names.join(", ")
                        ),
                    )
                })?
            }
        };
        migration.tune(params).map_err(|reason| {
            AdminError::new(
                ErrorCode::InvalidArgument,
                format!("migration {}: {reason}", migration.name()),
            )
        })?;
        tracing::info!(
            client = params.client_id.as_deref().unwrap_or("-"),
            migration = %migration.name(),
            "admin: migration settings changed"
        );
        Ok(migration.view())
    }

    /// Cancels the finalization for `client_id`: a running one stops before its next
    /// feature (a background migration between batches), and the cancel is stored, so
    /// the component does not resume it at its next start (see
    /// [`UpgradeFinalizer::cancel_by`]). Answers the finalization status.
    pub fn cancel_finalization(
        &self,
        params: &CancelFinalizationParams,
    ) -> Result<FinalizationStatusResponse, AdminError> {
        check_api_version(params.api_version)?;
        check_client_id(&params.client_id)?;
        tracing::info!(client = %params.client_id, "admin: cancel finalization");
        self.backend.cancel_finalization(&params.client_id)
    }

    /// Serves prepare and cancel-prepare with `controller`, preparing `component`.
    /// Without it those answer [`ErrorCode::NotSupported`]. The controller must also be
    /// a gate of the finalizer ([`UpgradeFinalizer::with_gate`], as
    /// [`ComponentStartup`](crate::startup::ComponentStartup) does): that gate is what
    /// refuses finalize while prepared.
    #[must_use]
    pub fn with_prepare(
        mut self,
        controller: Arc<PrepareController>,
        component: Arc<dyn Preparable>,
    ) -> Self {
        self.prepare = Some((controller, component));
        self
    }

    /// How long `finalize` waits for the background finalization to end before it
    /// answers [`FinalizeResponse::Started`]: a refusal, a failure or a finalization that
    /// ends within it is answered exactly. Default [`DEFAULT_FINALIZE_START_WAIT`].
    #[must_use]
    pub fn with_finalize_start_wait(mut self, wait: Duration) -> Self {
        self.start_wait = wait;
        self
    }

    /// The component's name.
    pub fn component_name(&self) -> String {
        self.backend.layout().component
    }

    /// The status: MLV, SLV, finalization status and progress, prepare state, features.
    pub fn status(&self) -> Result<StatusResponse, AdminError> {
        let layout = self.backend.layout();
        Ok(StatusResponse {
            api_version: API_VERSION,
            component: layout.component,
            catalog: layout.catalog.to_owned(),
            metadata_layout_version: layout.mlv,
            metadata_layout_feature: layout.mlv_feature.to_owned(),
            software_layout_version: layout.slv,
            software_layout_feature: layout.slv_feature.to_owned(),
            needs_finalization: layout.needs_finalization,
            finalization: self.backend.finalization_status(None, false)?,
            prepare: self.prepare_state(),
            features: layout.features,
        })
    }

    /// Every catalog feature and its status.
    pub fn features(&self) -> FeaturesResponse {
        let layout = self.backend.layout();
        FeaturesResponse {
            api_version: API_VERSION,
            metadata_layout_version: layout.mlv,
            software_layout_version: layout.slv,
            features: layout.features,
        }
    }

    /// The finalization status. `None` (or no client id) is read-only; with a client id
    /// it drains that client's messages, and `takeover` rebinds the finalization to it.
    pub fn finalization_status(
        &self,
        params: Option<&FinalizationStatusParams>,
    ) -> Result<FinalizationStatusResponse, AdminError> {
        let Some(params) = params else {
            return self.backend.finalization_status(None, false);
        };
        check_api_version(params.api_version)?;
        if let Some(client) = &params.client_id {
            check_client_id(client)?;
        }
        self.backend
            .finalization_status(params.client_id.as_deref(), params.takeover)
    }

    /// Finalizes (in a background thread), or plans with `dry_run`. A refusal (in
    /// progress, another client's, prepared, failing conditions, beyond the software) is
    /// answered at once with its code; a finalization that ends within the start wait
    /// (see [`with_finalize_start_wait`](Self::with_finalize_start_wait)) with its
    /// outcome or error; one still running with [`FinalizeResponse::Started`] (follow it
    /// with [`finalization_status`](Self::finalization_status)).
    pub fn finalize(&self, params: &FinalizeParams) -> Result<FinalizeResponse, AdminError> {
        check_api_version(params.api_version)?;
        check_client_id(&params.client_id)?;
        // A prepared component is refused by the finalizer itself: the prepare
        // controller is one of its gates (see `with_prepare`).
        self.backend.finalize(params, self.start_wait)
    }

    /// Prepares the component (see [`PrepareController::prepare`]); refused while a
    /// finalization runs.
    pub fn prepare(&self, params: &PrepareParams) -> Result<PrepareResponse, AdminError> {
        check_api_version(params.api_version)?;
        let (controller, component) = self.prepare_parts()?;
        if self.backend.finalization_status(None, false)?.running {
            return Err(AdminError::new(
                ErrorCode::FinalizationInProgress,
                "prepare refused: a finalization is running; wait for it to finish",
            ));
        }
        tracing::info!(
            client = params.client_id.as_deref().unwrap_or("-"),
            "admin: prepare"
        );
        controller
            .prepare(&**component)
            .map_err(|e| prepare_error(&e))?;
        Ok(self.prepare_state())
    }

    /// Cancels prepare (see [`PrepareController::cancel_prepare`]).
    pub fn cancel_prepare(&self, params: &PrepareParams) -> Result<PrepareResponse, AdminError> {
        check_api_version(params.api_version)?;
        let (controller, _) = self.prepare_parts()?;
        tracing::info!(
            client = params.client_id.as_deref().unwrap_or("-"),
            "admin: cancel prepare"
        );
        controller.cancel_prepare().map_err(|e| prepare_error(&e))?;
        Ok(self.prepare_state())
    }

    /// Waits for a finalization this service started in the background (one that
    /// `finalize` answered with [`FinalizeResponse::Started`]) and returns its result;
    /// `None` when there is none. For an orderly shutdown of the component.
    pub fn join_finalization(&self) -> Option<Result<FinalizeResponse, AdminError>> {
        self.backend.join_finalization()
    }

    fn prepare_parts(&self) -> Result<&(Arc<PrepareController>, Arc<dyn Preparable>), AdminError> {
        self.prepare.as_ref().ok_or_else(|| {
            AdminError::new(
                ErrorCode::NotSupported,
                format!(
                    "component {} does not support prepare (no prepare controller)",
                    self.component_name()
                ),
            )
        })
    }

    fn prepare_state(&self) -> PrepareResponse {
        let state = self
            .prepare
            .as_ref()
            .map_or(PrepareState::NotPrepared, |(c, _)| c.state());
        PrepareResponse {
            api_version: API_VERSION,
            supported: self.prepare.is_some(),
            state: state.into(),
            index: state.index(),
            last_failure: self.prepare.as_ref().and_then(|(c, _)| c.last_failure()),
        }
    }
}

impl fmt::Debug for AdminService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminService")
            .field("component", &self.component_name())
            .field("prepare", &self.prepare.as_ref().map(|(c, _)| c.state()))
            .finish_non_exhaustive()
    }
}

fn check_api_version(version: u32) -> Result<(), AdminError> {
    if version == API_VERSION {
        Ok(())
    } else {
        Err(AdminError::new(
            ErrorCode::UnsupportedApiVersion,
            format!("api_version {version} is not supported; this server speaks {API_VERSION}"),
        ))
    }
}

fn check_client_id(client: &str) -> Result<(), AdminError> {
    if client.trim().is_empty() {
        return Err(AdminError::new(
            ErrorCode::InvalidArgument,
            "client_id is required (a name for who finalizes, recorded in the history)",
        ));
    }
    if client.len() > MAX_CLIENT_ID || client.chars().any(char::is_control) {
        return Err(AdminError::new(
            ErrorCode::InvalidArgument,
            format!("client_id must be at most {MAX_CLIENT_ID} bytes without control characters"),
        ));
    }
    Ok(())
}

fn prepare_error(err: &PrepareError) -> AdminError {
    let code = match err {
        PrepareError::Timeout { .. } => ErrorCode::PrepareTimeout,
        _ => ErrorCode::PrepareFailed,
    };
    AdminError::new(code, err.to_string())
}

fn finalize_error<F: LayoutFeature>(err: &FinalizeError<F>) -> AdminError {
    let code = match err {
        FinalizeError::InProgress { .. } => ErrorCode::FinalizationInProgress,
        FinalizeError::OwnedByAnotherClient { .. } | FinalizeError::NotTheClient { .. } => {
            ErrorCode::OwnedByAnotherClient
        }
        FinalizeError::Prepared { .. } => ErrorCode::Prepared,
        FinalizeError::ConditionsFailed { .. } | FinalizeError::NotOverridable { .. } => {
            ErrorCode::ConditionsFailed
        }
        FinalizeError::UnknownCondition { .. }
        | FinalizeError::OverrideWithoutReason { .. }
        | FinalizeError::MissingClientId => ErrorCode::InvalidArgument,
        FinalizeError::Layout {
            source: LayoutError::BeyondSoftware { .. },
        } => ErrorCode::BeyondSoftware,
        FinalizeError::ActionFailed { .. }
        | FinalizeError::Cancelled { .. }
        | FinalizeError::Thread { .. } => ErrorCode::FinalizationFailed,
        _ => ErrorCode::Internal,
    };
    AdminError::new(code, err.to_string())
}

fn status_view<F: LayoutFeature>(report: StatusReport<F>) -> FinalizationStatusResponse {
    FinalizationStatusResponse {
        api_version: API_VERSION,
        status: report.status.into(),
        // The run, not the status: a finalization answered `Started` is still checking its
        // conditions before the status says so, and a watcher must not stop there.
        running: report.running,
        metadata_layout_version: report.metadata_layout_version,
        software_layout_version: report.software_layout_version,
        target_version: report.target_version,
        client_id: report.client_id,
        progress: report.progress.map(|p| ProgressView {
            feature_index: p.feature_index,
            feature_count: p.feature_count,
            feature: p.feature.name().to_owned(),
            feature_version: p.feature.layout_version(),
            action: p.action,
            done: p.done,
            total: p.total,
            elapsed_ms: u64::try_from(p.elapsed.as_millis()).unwrap_or(u64::MAX),
        }),
        last_error: report.last_error,
        failures: report.failures,
        messages: report.messages,
        veto: report.veto.map(|v| VetoView {
            reason: v.reason,
            client_id: v.client_id,
            set_at_ms: v.set_at_ms,
            expires_at_ms: v.expires_at_ms,
        }),
        veto_active: report.veto_active,
        auto_finalize_at_ms: report.auto_finalize_at.map(to_ms),
        resumed_at_startup: report.resumed_at_startup,
        resumes: report.resumes,
        cancelled_by: report.cancelled_by,
    }
}

impl<F: LayoutFeature, C: Send + Sync + 'static> Typed<F, C> {
    fn resolve_target(name: Option<&str>) -> Result<Option<F>, AdminError> {
        let Some(name) = name else { return Ok(None) };
        F::from_name(name).map(Some).ok_or_else(|| {
            AdminError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "unknown layout feature {name:?}; the catalog {} has: {}",
                    F::CATALOG_NAME,
                    F::ALL
                        .iter()
                        .map(|f| f.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }

    fn dry_run(&self, request: &FinalizeRequest<F>) -> Result<FinalizeResponse, AdminError> {
        let plan = self
            .finalizer
            .dry_run_with(request, &self.component)
            .map_err(|e| finalize_error(&e))?;
        Ok(FinalizeResponse::DryRun {
            api_version: API_VERSION,
            plan: DryRunView {
                from_version: plan.from_version,
                target_version: plan.target_version,
                steps: plan
                    .steps
                    .into_iter()
                    .map(|s| PlannedStepView {
                        feature: s.feature.name().to_owned(),
                        version: s.feature.layout_version(),
                        action: s.action,
                    })
                    .collect(),
                conditions: plan
                    .conditions
                    .into_iter()
                    .map(|c| ConditionView {
                        name: c.name,
                        passed: c.result.is_ok(),
                        reason: c.result.err().map(|r| r.to_string()),
                    })
                    .collect(),
                blocked_by: plan.blocked_by,
            },
        })
    }

    fn outcome(
        result: Result<FinalizeOutcome<F>, FinalizeError<F>>,
    ) -> Result<FinalizeResponse, AdminError> {
        match result {
            Ok(FinalizeOutcome::AlreadyFinalized {
                metadata_layout_version,
            }) => Ok(FinalizeResponse::AlreadyFinalized {
                api_version: API_VERSION,
                metadata_layout_version,
            }),
            Ok(FinalizeOutcome::FinalizationDone {
                finalized,
                metadata_layout_version,
            }) => Ok(FinalizeResponse::Done {
                api_version: API_VERSION,
                finalized: finalized.iter().map(|f| f.name().to_owned()).collect(),
                metadata_layout_version,
            }),
            Err(e) => Err(finalize_error(&e)),
        }
    }
}

impl<F: LayoutFeature, C: Send + Sync + 'static> Backend for Typed<F, C> {
    fn layout(&self) -> LayoutView {
        let lvm = self.finalizer.layout_manager();
        LayoutView {
            component: lvm.component_name().to_owned(),
            catalog: F::CATALOG_NAME,
            mlv: lvm.metadata_layout_version(),
            mlv_feature: lvm.metadata_layout_feature().name(),
            slv: lvm.software_layout_version(),
            slv_feature: lvm.software_layout_feature().name(),
            needs_finalization: lvm.needs_finalization(),
            features: lvm
                .features()
                .into_iter()
                .map(|info| FeatureView {
                    name: info.feature.name().to_owned(),
                    version: info.feature.layout_version(),
                    description: info.feature.description().to_owned(),
                    status: info.status.into(),
                    deprecated: info.feature.is_deprecated(),
                })
                .collect(),
        }
    }

    fn join_finalization(&self) -> Option<Result<FinalizeResponse, AdminError>> {
        let handle = self.running.lock().take()?;
        Some(Self::outcome(handle.join()))
    }

    fn cancel_finalization(&self, client: &str) -> Result<FinalizationStatusResponse, AdminError> {
        self.finalizer
            .cancel_by(client)
            .map_err(|e| finalize_error(&e))?;
        self.finalization_status(None, false)
    }

    fn finalization_status(
        &self,
        client: Option<&str>,
        takeover: bool,
    ) -> Result<FinalizationStatusResponse, AdminError> {
        self.finalizer
            .report_status(client, takeover)
            .map(status_view)
            .map_err(|e| finalize_error(&e))
    }

    fn finalize(
        &self,
        params: &FinalizeParams,
        start_wait: Duration,
    ) -> Result<FinalizeResponse, AdminError> {
        let target = Self::resolve_target(params.target.as_deref())?;
        let mut request =
            FinalizeRequest::new(params.client_id.clone()).with_takeover(params.takeover);
        request.target = target;
        for o in &params.overrides {
            request = request.with_override(o.condition.clone(), o.reason.clone());
        }
        if params.dry_run {
            return self.dry_run(&request);
        }
        let mut running = self.running.lock();
        self.finalizer
            .contention()
            .map_err(|e| finalize_error(&e))?;
        if running.as_ref().is_some_and(|h| !h.is_finished()) {
            // The thread of the last run has not ended yet: the same contention error.
            let holder = self
                .finalizer
                .report_status(None, false)
                .ok()
                .and_then(|s| s.client_id)
                .unwrap_or_default();
            return Err(finalize_error(&FinalizeError::<F>::InProgress { holder }));
        }
        if let Some(done) = running.take() {
            // Its result is in the status (last error); reap the thread.
            let _ = done.join();
        }
        let lvm = self.finalizer.layout_manager();
        let target_version =
            target.map_or(lvm.software_layout_version(), LayoutFeature::layout_version);
        let handle = self
            .finalizer
            .start_finalize_with(request, Arc::clone(&self.component));
        let deadline = Instant::now() + start_wait;
        let mut pause = Duration::from_millis(1);
        loop {
            if handle.is_finished() {
                return Self::outcome(handle.join());
            }
            if Instant::now() >= deadline {
                *running = Some(handle);
                return Ok(FinalizeResponse::Started {
                    api_version: API_VERSION,
                    client_id: params.client_id.clone(),
                    target_version,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}
