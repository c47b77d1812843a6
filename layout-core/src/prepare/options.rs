//! How prepare is configured: [`PrepareOptions`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::DEFAULT_PREPARE_TIMEOUT;
use crate::clock::{Clock, SystemClock};

/// Options of [`PrepareController::restore`](crate::PrepareController::restore).
///
/// ```
/// use std::time::Duration;
/// use layout_core::prepare::PrepareOptions;
///
/// let opts = PrepareOptions::default()
///     .with_timeout(Duration::from_secs(30))
///     .with_marker_file("/var/lib/om/current/prepareMarker");
/// assert_eq!(opts.timeout(), Duration::from_secs(30));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PrepareOptions {
    pub(super) timeout: Duration,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) marker_file: Option<PathBuf>,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_PREPARE_TIMEOUT,
            clock: Arc::new(SystemClock),
            marker_file: None,
        }
    }
}

impl PrepareOptions {
    /// How long prepare waits for the log to be applied and flushed through the prepare
    /// index (default [`DEFAULT_PREPARE_TIMEOUT`]). Past it, prepare fails and cancels.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The clock the timeout is measured with (default: the system clock).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Also keep Apache Ozone's separate marker file at `path` (conventionally
    /// `<metadata dir>/current/`[`MARKER_FILE_NAME`](super::MARKER_FILE_NAME)), holding the prepare index in
    /// decimal. `VERSION` stays authoritative; restore checks that both agree.
    #[must_use]
    pub fn with_marker_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.marker_file = Some(path.into());
        self
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The marker file, if one is kept.
    pub fn marker_file(&self) -> Option<&Path> {
        self.marker_file.as_deref()
    }
}
