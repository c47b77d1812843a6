//! How a coordinator is configured: [`CoordinatorOptions`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::cluster::local::LocalLayout;

/// How a [`Coordinator`](super::Coordinator) is set up.
#[derive(Clone)]
#[non_exhaustive]
pub struct CoordinatorOptions {
    /// This coordinator's id (recorded in checkpoints and the audit trail, and the holder
    /// name of the finalizer claim). Keep it across restarts and unique per coordinator:
    /// a coordinator restarted with the same id takes back a finalizer claim its previous
    /// run left behind at once, while other ids wait for it to lapse. Default:
    /// `coordinator`.
    pub coordinator_id: String,
    /// How long a member stays live after a heartbeat. Default: 10 s.
    pub member_lease_ttl: Duration,
    /// The lease of the finalizer claim on a shared store (kept alive while the
    /// coordinator's process lives). Default: 10 s.
    pub finalizer_lease_ttl: Duration,
    /// The clock for timestamps and member liveness. Default: the system clock.
    pub clock: Arc<dyn Clock>,
    /// How long a kind record read from the store serves heartbeats before it is read
    /// again (a heartbeat that changes nothing reads nothing else). Changes this
    /// coordinator makes are seen at once; another coordinator's within this time.
    /// Default: 500 ms.
    pub state_refresh: Duration,
    /// The coordinator's own layout, per component kind: it finalizes first, and the
    /// cluster's version of a new kind starts at its MLV.
    pub locals: BTreeMap<String, Arc<dyn LocalLayout>>,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        Self {
            coordinator_id: "coordinator".to_owned(),
            member_lease_ttl: Duration::from_secs(10),
            finalizer_lease_ttl: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
            state_refresh: Duration::from_millis(500),
            locals: BTreeMap::new(),
        }
    }
}

impl CoordinatorOptions {
    /// Sets the coordinator's id.
    #[must_use]
    pub fn with_coordinator_id(mut self, id: impl Into<String>) -> Self {
        self.coordinator_id = id.into();
        self
    }

    /// Sets how long a member stays live after a heartbeat.
    #[must_use]
    pub fn with_member_lease_ttl(mut self, ttl: Duration) -> Self {
        self.member_lease_ttl = ttl;
        self
    }

    /// Sets the lease of the finalizer claim.
    #[must_use]
    pub fn with_finalizer_lease_ttl(mut self, ttl: Duration) -> Self {
        self.finalizer_lease_ttl = ttl;
        self
    }

    /// Sets how long a kind record read from the store serves heartbeats.
    #[must_use]
    pub fn with_state_refresh(mut self, refresh: Duration) -> Self {
        self.state_refresh = refresh;
        self
    }

    /// Sets the clock.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The coordinator's own layout takes part in `kind`: it is finalized first.
    #[must_use]
    pub fn with_local(mut self, kind: impl Into<String>, layout: Arc<dyn LocalLayout>) -> Self {
        self.locals.insert(kind.into(), layout);
        self
    }
}

impl fmt::Debug for CoordinatorOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoordinatorOptions")
            .field("coordinator_id", &self.coordinator_id)
            .field("member_lease_ttl", &self.member_lease_ttl)
            .field("finalizer_lease_ttl", &self.finalizer_lease_ttl)
            .field("locals", &self.locals.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}
