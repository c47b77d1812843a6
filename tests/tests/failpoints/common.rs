//! What the crash tests share: a catalog, a component whose finalize actions journal
//! their runs durably, the steps a child reports, and the checks made after a restart.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use layout_core::clock::ManualClock;
use layout_core::finalizer::FAILPOINTS;
use layout_core::state::LayoutState;
use layout_core::storage::VERSION_FILE_NAME;
use layout_core::{
    ActionContext, ActionError, ActionRegistry, FileStorage, LayoutFeature, LayoutStorage,
    LayoutVersionManager, ManagerOptions, StartIntent, UpgradeFinalizer,
};
use layout_testkit::crash::{block_until_killed, report_step};

/// A safety bound for a hung child, far above what any step needs; not a timing
/// assertion.
pub(crate) const BOUND: Duration = Duration::from_secs(120);

/// The environment variable giving a child its test directory.
pub(crate) const ROOT_ENV: &str = "LAYOUT_TEST_ROOT";

/// The operator that finalizes.
pub(crate) const CLIENT: &str = "operator";

/// Every clock shows this time, so the history of a recovered run matches a crash-free
/// run's to the millisecond.
const NOW_MS: u64 = 1_700_000_000_000;

/// A storage component's layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub(crate) enum Store {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "Per-bucket tables")]
    BucketTables,
    #[layout(version = 2, description = "A flag in the header (no finalize action)")]
    HeaderFlag,
    #[layout(version = 3, description = "A secondary index")]
    SecondaryIndex,
    #[layout(version = 4, description = "Records in encoding v2")]
    RecordEncodingV2,
}

/// The features with an `OnFinalize` action; `HeaderFlag` has none.
pub(crate) const WITH_ACTION: [Store; 3] = [
    Store::BucketTables,
    Store::SecondaryIndex,
    Store::RecordEncodingV2,
];

pub(crate) type Finalizer = UpgradeFinalizer<Store, Service>;

/// The failpoints a finalization of the whole catalog passes, in order: the first and
/// the last of `FAILPOINTS` once, the others once per feature.
pub(crate) fn expected_trace() -> Vec<&'static str> {
    let (first, rest) = FAILPOINTS.split_first().unwrap();
    let (last, per_feature) = rest.split_last().unwrap();
    let mut trace = vec![*first];
    for _ in 1..=Store::latest().layout_version() {
        trace.extend_from_slice(per_feature);
    }
    trace.push(*last);
    trace
}

/// The component's layout state lives in `<root>/store`.
fn store_dir(root: &Path) -> PathBuf {
    root.join("store")
}

/// The child's test directory, from [`ROOT_ENV`].
pub(crate) fn child_root() -> PathBuf {
    PathBuf::from(std::env::var_os(ROOT_ENV).expect("the parent passes the test directory"))
}

/// An fsynced journal of completed action runs, `<root>/journal.log`: one line
/// `<feature> <attempt>` per run, appended when the run is done; the attempt is 1 + the
/// lines already there for the feature.
pub(crate) struct Journal {
    path: PathBuf,
}

impl Journal {
    pub(crate) fn at(root: &Path) -> Self {
        Self {
            path: root.join("journal.log"),
        }
    }

    /// Every completed run, oldest first.
    pub(crate) fn entries(&self) -> Vec<(String, u32)> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("read {}: {e}", self.path.display()),
        };
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "torn journal line in {text:?}"
        );
        text.lines()
            .map(|line| {
                let (feature, attempt) = line.split_once(' ').expect("`<feature> <attempt>`");
                (feature.to_owned(), attempt.parse().expect("attempt number"))
            })
            .collect()
    }

    /// The attempt numbers of `feature`'s completed runs.
    pub(crate) fn attempts(&self, feature: Store) -> Vec<u32> {
        self.entries()
            .into_iter()
            .filter(|(name, _)| name == feature.name())
            .map(|(_, attempt)| attempt)
            .collect()
    }

    fn append(&self, feature: Store) -> io::Result<u32> {
        let attempt = u32::try_from(self.attempts(feature).len()).unwrap() + 1;
        let created = !self.path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(format!("{} {attempt}\n", feature.name()).as_bytes())?;
        file.sync_all()?;
        if created {
            // An append-only journal, not a replaced file: the new name is made durable.
            layout_core::durable::sync_directory(self.path.parent().unwrap())
                .map_err(layout_core::durable::Error::into_io_error)?;
        }
        Ok(attempt)
    }
}

/// The steps a child reports, numbered: `<index> <label> mlv=<published MLV>`. The
/// child blocks at step `stop_at` until the parent's SIGKILL.
pub(crate) struct Steps {
    next: AtomicUsize,
    stop_at: Option<usize>,
    lvm: OnceLock<Arc<LayoutVersionManager<Store>>>,
}

impl Steps {
    pub(crate) fn new(stop_at: Option<usize>) -> Self {
        Self {
            next: AtomicUsize::new(0),
            stop_at,
            lvm: OnceLock::new(),
        }
    }

    /// Reports the published MLV of `lvm` with each step.
    pub(crate) fn watch(&self, lvm: &Arc<LayoutVersionManager<Store>>) {
        assert!(self.lvm.set(Arc::clone(lvm)).is_ok(), "watch once");
    }

    pub(crate) fn step(&self, label: &str) {
        let index = self.next.fetch_add(1, Ordering::SeqCst);
        let mlv = self.lvm.get().map(|lvm| lvm.metadata_layout_version());
        report_step(format!("{index} {label} mlv={}", mlv.unwrap_or_default()));
        if self.stop_at == Some(index) {
            block_until_killed();
        }
    }
}

/// The MLV a step line (`... mlv=N`) reports.
pub(crate) fn reported_mlv(step: &str) -> u32 {
    step.rsplit_once("mlv=")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("no `mlv=` in step {step:?}"))
}

/// The component: its actions journal their runs and, in a child, report steps.
pub(crate) struct Service {
    journal: Journal,
    steps: Option<Arc<Steps>>,
}

impl Service {
    pub(crate) fn new(root: &Path, steps: Option<Arc<Steps>>) -> Self {
        Self {
            journal: Journal::at(root),
            steps,
        }
    }

    fn step(&self, label: &str) {
        if let Some(steps) = &self.steps {
            steps.step(label);
        }
    }
}

/// The `OnFinalize` action of every feature in [`WITH_ACTION`]: idempotent work whose
/// completion is journaled.
fn journaled(service: &Service, ctx: &ActionContext<'_, Store>) -> Result<(), ActionError> {
    let feature = ctx.feature();
    service.step(&format!("action-start {}", feature.name()));
    let attempt = service.journal.append(feature)?;
    service.step(&format!("journal {} attempt={attempt}", feature.name()));
    Ok(())
}

/// Starts the component in `root` as a real one starts: opens the layout state
/// (creating it at version 0 on the first start), builds the finalizer with a fixed
/// clock, and runs the start-up actions.
pub(crate) fn start(root: &Path) -> Finalizer {
    let opts = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(0);
    let lvm = LayoutVersionManager::<Store>::open(FileStorage::new(store_dir(root)), opts)
        .unwrap_or_else(|e| panic!("open {}: {e}", root.display()));
    let registry = WITH_ACTION
        .iter()
        .fold(ActionRegistry::builder(), |builder, &feature| {
            builder.on_finalize(feature, journaled)
        })
        .build()
        .unwrap();
    let finalizer = UpgradeFinalizer::new(Arc::new(lvm), registry)
        .with_clock(Arc::new(ManualClock::at_ms(NOW_MS)));
    finalizer
        .run_prefinalize_actions(&Service::new(root, None))
        .unwrap();
    finalizer
}

/// The layout state stored in `root`; it must load (present, checksum intact). Without
/// its data id: that is random per installation, and states of different runs (each in
/// its own directory) are compared.
pub(crate) fn stored_state(root: &Path) -> LayoutState {
    let mut state = FileStorage::new(store_dir(root))
        .load()
        .unwrap_or_else(|e| panic!("the VERSION file in {} is not intact: {e}", root.display()))
        .expect("a VERSION file");
    state.data_id = None;
    state
}

/// The state a crash-free finalization of the whole catalog stores.
pub(crate) fn crash_free_state() -> LayoutState {
    let dir = tempfile::tempdir().unwrap();
    let finalizer = start(dir.path());
    finalizer
        .finalize(CLIENT, &Service::new(dir.path(), None))
        .unwrap();
    let journal = Journal::at(dir.path());
    for feature in WITH_ACTION {
        assert_eq!(journal.attempts(feature), [1], "{feature:?} ran once");
    }
    stored_state(dir.path())
}

/// The component directory holds the VERSION file and nothing else (no temp file).
fn assert_only_version_file(root: &Path, context: &str) {
    let names: BTreeSet<String> = fs::read_dir(store_dir(root))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([VERSION_FILE_NAME.to_owned()]),
        "{context}: files left next to VERSION"
    );
}

/// Every feature at or below `mlv` whose action exists has a completed run journaled.
fn assert_actions_done_up_to(mlv: u32, journal: &Journal, context: &str) {
    for feature in WITH_ACTION {
        if feature.layout_version() <= mlv {
            assert!(
                !journal.attempts(feature).is_empty(),
                "{context}: {feature:?} is finalized (MLV {mlv}) but its action never completed"
            );
        }
    }
}

/// Restarts the component from what a crash left in `root` and checks it: the VERSION
/// file is intact and alone, the MLV is at least `published` (what the crashed process
/// had published: the MLV never goes backwards), and no feature the manager reports
/// finalized lacks a completed action. Then finishes the finalization (resuming the
/// stored one, or starting anew when none was stored), and checks that the stored state
/// equals `reference` and that exactly the actions that completed but were not persisted
/// ran again. Returns those features.
pub(crate) fn restart_and_finish(
    root: &Path,
    published: u32,
    context: &str,
    reference: &LayoutState,
) -> Vec<Store> {
    assert_only_version_file(root, context);
    let on_disk = stored_state(root).layout_version;
    assert!(
        on_disk >= published,
        "{context}: the MLV went backwards: {published} was published before the crash, \
         {on_disk} is stored"
    );
    let journal = Journal::at(root);
    assert_actions_done_up_to(on_disk, &journal, context);

    let service = Service::new(root, None);
    let finalizer = start(root);
    let lvm = Arc::clone(finalizer.layout_manager());
    assert_eq!(
        lvm.metadata_layout_version(),
        on_disk,
        "{context}: MLV after reopening"
    );
    for info in lvm.features() {
        if info.is_finalized() && WITH_ACTION.contains(&info.feature) {
            assert!(
                !journal.attempts(info.feature).is_empty(),
                "{context}: the manager reports {:?} finalized, but its action never completed",
                info.feature
            );
        }
    }
    // An action that completed for a feature whose MLV was not stored runs again.
    let rerun: Vec<Store> = WITH_ACTION
        .into_iter()
        .filter(|f| f.layout_version() > on_disk && !journal.attempts(*f).is_empty())
        .collect();

    finalizer
        .resume(&service)
        .unwrap_or_else(|| finalizer.finalize(CLIENT, &service))
        .unwrap_or_else(|e| panic!("{context}: finalizing after the restart failed: {e}"));
    assert!(!lvm.needs_finalization(), "{context}: not finalized");
    for feature in WITH_ACTION {
        let expected: &[u32] = if rerun.contains(&feature) {
            &[1, 2]
        } else {
            &[1]
        };
        assert_eq!(
            journal.attempts(feature),
            expected,
            "{context}: completed runs of {feature:?}'s action"
        );
    }
    assert_eq!(
        &stored_state(root),
        reference,
        "{context}: the recovered state differs from a crash-free run's"
    );
    assert_only_version_file(root, context);
    rerun
}
