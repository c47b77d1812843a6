//! The story itself: seven stages on one kvstore node.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use layout_core::admin::http::AdminClient;
use layout_core::admin::{
    FinalizeParams, FinalizeResponse, PrepareParams, WireFeatureStatus, WireFinalizationStatus,
    WirePrepareState,
};
use layout_core::{LayoutError, LayoutFeature, StartIntent};

use super::finalize::{finalized_feature, watch, Watched};
use super::narrator::{Narrator, Told};
use super::table::{render, StatusRow};
use super::{IndexFigures, Stage, StageReport, WalkthroughOptions, WalkthroughReport};
use kvstore::{
    ClientError as KvClientError, KvClient, KvError, KvFeature, KvNode, KvNodeConfig, KvOptions,
};

/// The operator's client id (recorded in the finalization history).
const OPERATOR: &str = "walkthrough-operator";
/// The admin endpoint's bearer token: loopback only, for the life of the story.
const TOKEN: &str = "walkthrough-demo-token";
/// The old release: it knows only the initial layout.
const OLD: KvFeature = KvFeature::Initial;

/// One running node and its two clients.
struct Running {
    node: KvNode,
    kv: KvClient,
    admin: AdminClient,
    label: &'static str,
}

pub(super) struct Story<'a> {
    n: Narrator<'a>,
    node_dir: PathBuf,
    options: WalkthroughOptions,
    /// What the store must hold: every acknowledged write, by either release.
    model: BTreeMap<String, String>,
    /// The highest applied index an acknowledged write reported.
    last_applied: u64,
    stages: Vec<StageReport>,
    checks: usize,
    prepare_indexes: Vec<u64>,
    index_migration: Option<IndexFigures>,
}

impl<'a> Story<'a> {
    pub(super) fn new(out: &'a mut dyn Write, dir: &Path, options: &WalkthroughOptions) -> Self {
        Self {
            n: Narrator::new(out),
            node_dir: dir.join("kv-1"),
            options: options.clone(),
            model: BTreeMap::new(),
            last_applied: 0,
            stages: Vec::new(),
            checks: 0,
            prepare_indexes: Vec::new(),
            index_migration: None,
        }
    }

    pub(super) fn tell(mut self) -> Told<WalkthroughReport> {
        self.n.say(format_args!(
            "kvstore walkthrough: one node, data in {}",
            self.node_dir.display()
        ))?;
        self.n.say(format_args!(
            "catalog KvFeature: {}",
            KvFeature::ALL
                .iter()
                .map(|f| format!("{} {}", f.layout_version(), f.name()))
                .collect::<Vec<_>>()
                .join(", ")
        ))?;
        self.n.say(format_args!(
            "old release = software layout version {} ({}); new release = {} ({})",
            OLD.layout_version(),
            OLD.name(),
            KvFeature::latest().layout_version(),
            KvFeature::latest().name()
        ))?;

        let old = self.install()?;
        self.prepare(old)?;
        let new = self.upgrade_pre_finalized()?;
        let old = self.downgrade(new)?;
        let new = self.finalize(old)?;
        let new = self.new_apis(new)?;
        self.old_refused(new)?;
        self.summary()?;

        let Some(index_migration) = self.index_migration.take() else {
            return Err(self.n.fail(
                "kvstore reports the index migration's figures",
                "figures",
                "none",
            ));
        };
        Ok(WalkthroughReport {
            stages: self.stages,
            checks: self.checks,
            keys: self.model.len() as u64,
            prepare_indexes: self.prepare_indexes,
            index_migration,
        })
    }

    // ---- the stages --------------------------------------------------------------------

    fn install(&mut self) -> Told<Running> {
        self.n.heading(
            Stage::Install,
            "The old release knows only the initial layout (SLV 0). Its first start creates the \
             VERSION file (start intent Init); then a client writes the data every later \
             release must keep serving.",
        )?;
        let node = self.start(OLD, StartIntent::Init, "kv-1 old")?;
        let (text, version) = self.version_file()?;
        self.n
            .say("the VERSION file it wrote (kv-1/layout/VERSION):")?;
        self.n.quote(text.trim_end())?;
        self.n.check_eq(
            "VERSION records layout version 0 (Initial)",
            &(Some("0"), Some("Initial")),
            &(
                version.get("layout.version").map(String::as_str),
                version.get("layout.feature").map(String::as_str),
            ),
        )?;
        let keys = self.options.initial_keys;
        for i in 0..keys {
            let value = ["plan=free", "plan=pro", "plan=team"][i % 3];
            self.put(&node, &format!("user/{i:04}"), value)?;
        }
        self.n.say(format_args!(
            "wrote {keys} keys user/0000..user/{:04} (values plan=free|pro|team), last applied index {}",
            keys.saturating_sub(1),
            self.last_applied
        ))?;
        self.check_all_served(&node, "the store serves every key written, as written")?;
        self.end_stage(&node, (0, 0), None)?;
        Ok(node)
    }

    fn prepare(&mut self, old: Running) -> Told {
        self.n.heading(
            Stage::Prepare,
            "Before a binary swap the operator prepares (layoutctl prepare): the write gate \
             closes, everything accepted is applied, flushed and snapshotted, and the log is \
             purged, so the old and the new binary never replay the same log differently.",
        )?;
        let index = self.prepare_node(&old)?;
        let refused = old.kv.put("user/9999", "written while prepared");
        self.expect_prepared("a write while prepared is refused", refused)?;
        self.end_stage(&old, (0, 0), Some(index))?;
        self.stop(old)
    }

    fn upgrade_pre_finalized(&mut self) -> Told<Running> {
        self.n.heading(
            Stage::UpgradePreFinalized,
            "The new release (SLV 4) starts on the old layout with the Upgrade intent, which \
             clears the prepare marker. It runs PRE-FINALIZED: it writes nothing the old \
             release cannot read, so a downgrade is still possible, and the APIs of features \
             not yet finalized stay closed.",
        )?;
        let new = self.start(KvFeature::latest(), StartIntent::Upgrade, "kv-1 new")?;
        self.check_all_served(&new, "all data the old release wrote is served")?;
        self.check_expiry_table(&new, "ExpiringValues' first-upgrade action created table kv_expiry (backward compatible: the old release ignores it)")?;
        self.check_encoding(&new, "v0-json", "puts still write the old value encoding: the instance factory picks the v0 handlers until CompactEncoding is finalized")?;

        let cas = new
            .kv
            .compare_and_swap("user/0001", Some("plan=pro"), "plan=team");
        self.expect_not_finalized("compare-and-swap", KvFeature::CompareAndSwap, cas)?;
        let by_value = new.kv.find_by_value("plan=team");
        self.expect_not_finalized("lookup by value", KvFeature::ValueIndex, by_value)?;
        let ttl = new
            .kv
            .put_with_ttl("session/a", "user/0001", Duration::from_secs(3600));
        self.expect_not_finalized("put with a TTL", KvFeature::ExpiringValues, ttl)?;

        for i in 0..100 {
            let value = ["status=open", "status=shipped"][i % 2];
            self.put(&new, &format!("order/{i:04}"), value)?;
        }
        for i in (0..self.options.initial_keys).step_by(30) {
            self.put(&new, &format!("user/{i:04}"), "plan=enterprise")?;
        }
        let mut deleted = 0;
        for i in 0..5 {
            let key = format!("order/{:04}", 95 + i);
            self.delete(&new, &key)?;
            deleted += 1;
        }
        self.n.say(format_args!(
            "the new release wrote 100 orders, moved every 30th user to plan=enterprise and \
             deleted {deleted} orders"
        ))?;
        self.check_all_served(
            &new,
            "the store serves both releases' writes, and the refused calls changed nothing",
        )?;
        self.end_stage(&new, (4, 0), None)?;
        Ok(new)
    }

    fn downgrade(&mut self, new: Running) -> Told<Running> {
        self.n.heading(
            Stage::Downgrade,
            "Something looks wrong in production: roll back. The operator prepares the new \
             release, stops it and starts the old one with the Downgrade intent. Nothing \
             incompatible was written, so the old release reads everything, including what \
             the new release wrote.",
        )?;
        self.prepare_node(&new)?;
        self.stop(new)?;
        let old = self.start(OLD, StartIntent::Downgrade, "kv-1 old")?;
        self.check_expiry_table(
            &old,
            "table kv_expiry is still there; the old release just ignores it",
        )?;
        self.check_all_served(
            &old,
            "the old release serves every key, including those the new release wrote",
        )?;
        for i in 0..50 {
            let value = ["invoice=due", "invoice=paid"][i % 2];
            self.put(&old, &format!("invoice/{i:04}"), value)?;
        }
        for i in 1..=5 {
            self.put(&old, &format!("user/{:04}", i * 7), "plan=enterprise")?;
        }
        self.n
            .say("the old release wrote 50 invoices and moved 5 more users to plan=enterprise")?;
        self.check_all_served(&old, "the store serves all of it")?;
        self.end_stage(&old, (0, 0), None)?;
        Ok(old)
    }

    fn finalize(&mut self, old: Running) -> Told<Running> {
        self.n.heading(
            Stage::Finalize,
            "The problem is fixed: prepare, swap to the new release again (Upgrade intent), \
             and this time FINALIZE (layoutctl finalize --watch). Each feature's finalize \
             action runs, then its layout version is stored durably, then published; \
             ValueIndex's action is a background migration that fills the by-value index, \
             batch by batch. From the first finalized feature on, no downgrade.",
        )?;
        self.prepare_node(&old)?;
        self.stop(old)?;
        let new = self.start(KvFeature::latest(), StartIntent::Upgrade, "kv-1 new")?;
        self.check_all_served(&new, "the new release serves everything")?;
        self.show_status(&new, (4, 0), None)?;

        let plan = new
            .admin
            .finalize(&FinalizeParams::new(OPERATOR).with_dry_run(true))
            .map_err(self.n.failed("finalize --dry-run"))?;
        let FinalizeResponse::DryRun { plan, .. } = plan else {
            return Err(self.n.fail(
                "the dry run answers with a plan",
                "a plan",
                format_args!("{plan:?}"),
            ));
        };
        self.n.say(format_args!(
            "dry run: would finalize layout versions {} -> {}:",
            plan.from_version, plan.target_version
        ))?;
        for step in &plan.steps {
            self.n.say(format_args!(
                "  {:>2}  {:<16} action: {}",
                step.version,
                step.feature,
                step.action.as_deref().unwrap_or("none")
            ))?;
        }
        let planned: Vec<&str> = plan.steps.iter().map(|s| s.feature.as_str()).collect();
        self.n.check_eq(
            "the plan finalizes every new feature, in catalog order",
            &new_feature_names(),
            &planned.iter().map(|s| (*s).to_owned()).collect(),
        )?;
        let index_action = plan
            .steps
            .iter()
            .find(|s| s.feature == KvFeature::ValueIndex.name())
            .and_then(|s| s.action.clone());
        self.n.check(
            "ValueIndex has a finalize action (the index migration)",
            index_action.is_some(),
            "an action",
            "none",
        )?;

        let answer = new
            .admin
            .finalize(&FinalizeParams::new(OPERATOR))
            .map_err(self.n.failed("finalize"))?;
        self.n.say(format_args!(
            "finalize (the admin call `layoutctl finalize --watch` makes, then follows): {}",
            finalize_answer(&answer)
        ))?;
        let Watched { last, messages } = watch(
            &mut self.n,
            &new.admin,
            OPERATOR,
            plan.steps.len(),
            self.options.progress,
            self.options.finalize_timeout,
        )?;
        self.n.check(
            "the finalization ended without an error",
            last.last_error.is_none(),
            "no error",
            last.last_error.as_deref().unwrap_or(""),
        )?;
        let finalized: Vec<String> = messages
            .iter()
            .filter_map(|m| finalized_feature(m))
            .map(str::to_owned)
            .collect();
        self.n.check_eq(
            "the finalizer reported each feature finalized, one by one, in order",
            &new_feature_names(),
            &finalized,
        )?;
        self.n.check_eq(
            "finalization status is FINALIZATION_DONE",
            &WireFinalizationStatus::FinalizationDone,
            &last.status,
        )?;
        self.end_stage(&new, (4, 4), None)?;
        Ok(new)
    }

    fn new_apis(&mut self, new: Running) -> Told<Running> {
        self.n.heading(
            Stage::NewApis,
            "With every feature finalized the new APIs open: compare-and-swap, lookup by \
             value (served from the index the migration built), and puts with a TTL.",
        )?;
        self.show_index_migration(&new)?;

        let enterprise = self.keys_with_value("plan=enterprise");
        let found = new
            .kv
            .find_by_value("plan=enterprise")
            .map_err(self.n.failed("lookup by value"))?;
        self.n.say(format_args!(
            "find_by_value(plan=enterprise) -> {} keys: {} ...",
            found.len(),
            found.iter().take(4).cloned().collect::<Vec<_>>().join(", ")
        ))?;
        self.n.check_eq(
            "lookup by value finds exactly the keys both releases set to plan=enterprise",
            &enterprise,
            &sorted(found),
        )?;

        let swapped = new
            .kv
            .compare_and_swap("order/0000", Some("status=open"), "status=shipped")
            .map_err(self.n.failed("compare-and-swap"))?;
        self.n.check_eq(
            "compare_and_swap(order/0000, open -> shipped) swaps",
            &true,
            &swapped,
        )?;
        self.model
            .insert("order/0000".to_owned(), "status=shipped".to_owned());
        let stale = new
            .kv
            .compare_and_swap("order/0000", Some("status=open"), "status=cancelled")
            .map_err(self.n.failed("compare-and-swap"))?;
        self.n.check_eq(
            "the same swap again does not (the value is no longer open)",
            &false,
            &stale,
        )?;
        let created = new
            .kv
            .compare_and_swap("order/0100", None, "status=open")
            .map_err(self.n.failed("compare-and-swap"))?;
        self.n.check_eq(
            "compare_and_swap(order/0100, absent -> open) creates it",
            &true,
            &created,
        )?;
        self.model
            .insert("order/0100".to_owned(), "status=open".to_owned());

        new.kv
            .put_with_ttl("session/a", "user/0001", Duration::from_secs(3600))
            .map_err(self.n.failed("put with a TTL"))?;
        self.model
            .insert("session/a".to_owned(), "user/0001".to_owned());
        let session = new
            .kv
            .get("session/a")
            .map_err(self.n.failed("get session/a"))?;
        self.n.check_eq(
            "a put with a 1-hour TTL is accepted and served",
            &Some("user/0001".to_owned()),
            &session,
        )?;

        self.check_encoding(
            &new,
            "v3-compact",
            "puts now write the compact encoding (the v3 handlers); older records stay readable",
        )?;
        self.put(&new, "user/0002", "plan=enterprise")?;
        let found = new
            .kv
            .find_by_value("plan=enterprise")
            .map_err(self.n.failed("lookup by value"))?;
        self.n.check_eq(
            "a write after finalization is in the index at once",
            &self.keys_with_value("plan=enterprise"),
            &sorted(found),
        )?;
        self.check_all_served(&new, "the store serves every acknowledged write")?;
        self.end_stage(&new, (4, 4), None)?;
        Ok(new)
    }

    /// The value-index migration's figures: printed, checked, kept for the report.
    fn show_index_migration(&mut self, running: &Running) -> Told {
        let figures = self.index_figures(running)?;
        self.n.say(format_args!(
            "index migration: {}/{} rows in {} batches of up to {} rows, {:.1?}",
            figures.rows_done,
            figures.rows_total,
            figures.batches,
            self.options.migration_batch,
            figures.elapsed
        ))?;
        let rows = self.model.len() as u64;
        self.n.check_eq(
            "the migration indexed every row in the store (done, total, complete)",
            &(rows, rows, true),
            &(figures.rows_done, figures.rows_total, figures.complete),
        )?;
        let batch = self.options.migration_batch.max(1) as u64;
        let expected_batches = rows.div_ceil(batch);
        self.n.check(
            format_args!("it worked in batches of at most {batch} rows"),
            figures.batches >= expected_batches,
            format_args!("at least {expected_batches} batches"),
            figures.batches,
        )?;
        self.index_migration = Some(figures);
        Ok(())
    }

    fn old_refused(&mut self, new: Running) -> Told {
        self.n.heading(
            Stage::OldRefused,
            "The disk now holds layout version 4, which the old release cannot read. If an \
             operator starts it anyway, the framework refuses at start-up, naming both \
             versions, before the store is opened, and changes nothing. The new release \
             restarts normally.",
        )?;
        self.stop(new)?;
        let (before, _) = self.version_file()?;
        match KvNode::start(self.config(OLD, StartIntent::Normal)) {
            Ok(node) => {
                let _ = node.shutdown();
                return Err(self.n.fail(
                    "the old release refuses to start",
                    "a start-up error: disk newer than software",
                    "it started",
                ));
            }
            Err(refused) => {
                self.n.say("starting the old release fails with:")?;
                self.n.quote(&refused)?;
                let layout = match &refused {
                    KvError::Layout(e) => Some(e),
                    other => layout_error(other),
                };
                let found = layout.map(|e| match e {
                    LayoutError::DiskNewerThanSoftware {
                        metadata_layout_version,
                        software_layout_version,
                        ..
                    } => format!(
                        "DiskNewerThanSoftware (disk {metadata_layout_version}, software {software_layout_version})"
                    ),
                    other => format!("{other:?}"),
                });
                self.n.check_eq(
                    "the old release refuses: the disk (MLV 4) is newer than its software (SLV 0)",
                    &Some("DiskNewerThanSoftware (disk 4, software 0)".to_owned()),
                    &found,
                )?;
            }
        }
        let (after, _) = self.version_file()?;
        self.n.check(
            "the refused start changed nothing: VERSION is the same, byte for byte",
            before == after,
            format_args!("{} bytes, unchanged", before.len()),
            format_args!("{} bytes, changed", after.len()),
        )?;
        self.show_history()?;
        let new = self.start(KvFeature::latest(), StartIntent::Normal, "kv-1 new")?;
        self.check_all_served(
            &new,
            "the new release restarts finalized and serves everything",
        )?;
        self.end_stage(&new, (4, 4), None)?;
        self.stop(new)
    }

    fn summary(&mut self) -> Told {
        self.n.raw("")?;
        self.n
            .raw("== The story in one table (the node's status at the end of each step)")?;
        self.n.raw("")?;
        let labels: Vec<String> = self
            .stages
            .iter()
            .map(|s| format!("{}", s.stage.number()))
            .collect();
        let rows: Vec<StatusRow> = self.stages.iter().map(|s| s.status.clone()).collect();
        for line in render(Some(("step", &labels)), &rows) {
            self.n.raw(line)?;
        }
        self.n.raw("")?;
        self.n.raw(format_args!(
            "walkthrough: all {} checks held; {} keys; exit 0",
            self.checks,
            self.model.len()
        ))?;
        Ok(())
    }

    // ---- nodes ---------------------------------------------------------------------------

    fn config(&self, software: KvFeature, intent: StartIntent) -> KvNodeConfig {
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        KvNodeConfig::new(&self.node_dir)
            .with_software_version(software)
            .with_intent(intent)
            .with_listen(loopback)
            .with_admin(loopback, TOKEN)
            .with_store_options(
                KvOptions::default().with_migration_batch(self.options.migration_batch),
            )
    }

    fn start(
        &mut self,
        software: KvFeature,
        intent: StartIntent,
        label: &'static str,
    ) -> Told<Running> {
        let node = KvNode::start(self.config(software, intent))
            .map_err(self.n.failed(format_args!("starting {label}")))?;
        let Some(admin_addr) = node.admin_addr() else {
            return Err(self
                .n
                .fail("the node serves the admin endpoint", "an address", "none"));
        };
        let admin = AdminClient::new(&admin_addr.to_string(), TOKEN)
            .map_err(self.n.failed("connecting to the admin endpoint"))?
            .with_timeout(Duration::from_secs(30));
        let kv = KvClient::new(node.http_addr());
        self.n.say(format_args!(
            "started {label}: software layout version {} ({}), intent {intent:?}, HTTP {}, admin {}",
            software.layout_version(),
            software.name(),
            node.http_addr(),
            admin_addr
        ))?;
        Ok(Running {
            node,
            kv,
            admin,
            label,
        })
    }

    fn stop(&mut self, running: Running) -> Told {
        let label = running.label;
        running
            .node
            .shutdown()
            .map_err(self.n.failed(format_args!("stopping {label}")))?;
        self.n.say(format_args!("stopped {label}"))
    }

    /// `layoutctl prepare`: prepares the node, checks the index covers every acknowledged
    /// write, records it.
    fn prepare_node(&mut self, running: &Running) -> Told<u64> {
        let applied = running
            .kv
            .status()
            .map_err(self.n.failed("GET /status"))?
            .applied_index;
        let state = running
            .admin
            .prepare(&PrepareParams::new(Some(OPERATOR.to_owned())))
            .map_err(self.n.failed("prepare"))?;
        self.n.say(format_args!(
            "prepare on {} (the admin call `layoutctl prepare` makes): {} at index {}",
            running.label,
            state.state,
            state
                .index
                .map_or_else(|| "-".to_owned(), |i| i.to_string())
        ))?;
        let index = state.index.unwrap_or(0);
        self.n.check(
            format_args!(
                "prepared (PREPARE_COMPLETED) at index {index}: it covers every write the store \
                 applied ({applied}), so every acknowledged one ({})",
                self.last_applied
            ),
            state.state == WirePrepareState::Prepared
                && index >= applied
                && applied >= self.last_applied,
            format_args!(
                "PREPARE_COMPLETED at an index >= {applied} >= {}",
                self.last_applied
            ),
            format_args!(
                "{} at {:?}, store applied {applied}",
                state.state, state.index
            ),
        )?;
        self.prepare_indexes.push(index);
        Ok(index)
    }

    // ---- data ------------------------------------------------------------------------------

    fn put(&mut self, running: &Running, key: &str, value: &str) -> Told {
        let index = running
            .kv
            .put(key, value)
            .map_err(self.n.failed(format_args!("put {key}")))?;
        self.last_applied = self.last_applied.max(index);
        self.model.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    fn delete(&mut self, running: &Running, key: &str) -> Told {
        let (deleted, index) = running
            .kv
            .delete_with_index(key)
            .map_err(self.n.failed(format_args!("delete {key}")))?;
        self.last_applied = self.last_applied.max(index);
        let existed = self.model.remove(key).is_some();
        if deleted != existed {
            self.n.check_eq(
                format_args!("delete {key} reports whether it existed"),
                &existed,
                &deleted,
            )?;
        }
        Ok(())
    }

    /// Checks that the store holds exactly the model (every acknowledged write, nothing
    /// else), by listing everything.
    fn check_all_served(&mut self, running: &Running, claim: &str) -> Told {
        let items = running.kv.list("").map_err(self.n.failed("list"))?;
        let seen: BTreeMap<String, String> = items.into_iter().collect();
        let claim = format!("{claim} ({} keys)", self.model.len());
        match difference(&self.model, &seen) {
            None => self.n.check(claim, true, "", ""),
            Some(diff) => self.n.check(
                claim,
                false,
                format_args!("{} keys, as acknowledged", self.model.len()),
                format_args!("{} keys: {diff}", seen.len()),
            ),
        }
    }

    fn check_expiry_table(&mut self, running: &Running, claim: &str) -> Told {
        let present = running
            .node
            .store()
            .has_table("kv_expiry")
            .map_err(self.n.failed("looking for table kv_expiry"))?;
        self.n.check_eq(claim, &true, &present)
    }

    fn check_encoding(&mut self, running: &Running, expected: &str, claim: &str) -> Told {
        let status = running.kv.status().map_err(self.n.failed("GET /status"))?;
        self.n.check_eq(
            format_args!("{claim} ({expected})"),
            &expected,
            &status.encoding.as_str(),
        )
    }

    /// The finalization history in the `VERSION` file, printed and checked.
    fn show_history(&mut self) -> Told {
        let (_, version) = self.version_file()?;
        let history: Vec<String> = (0..)
            .map_while(|i| {
                let field = |name: &str| version.get(&format!("history.{i}.{name}")).cloned();
                Some(format!(
                    "{} {} (layout version {} -> {}) by {}",
                    field("event")?,
                    field("detail").unwrap_or_default(),
                    field("from")?,
                    field("to")?,
                    field("client")?
                ))
            })
            .collect();
        self.n.say(format_args!(
            "the VERSION file says layout.version={}, layout.feature={}, with this history:",
            version.get("layout.version").map_or("?", String::as_str),
            version.get("layout.feature").map_or("?", String::as_str),
        ))?;
        self.n.quote(history.join("\n"))?;
        let expected: Vec<String> = KvFeature::ALL
            .iter()
            .filter(|f| f.layout_version() > 0)
            .map(|f| {
                format!(
                    "finalized {} (layout version {} -> {}) by {OPERATOR}",
                    f.name(),
                    f.layout_version() - 1,
                    f.layout_version()
                )
            })
            .collect();
        self.n.check_eq(
            "the history records who finalized each feature, one step at a time",
            &expected,
            &history,
        )
    }

    /// The node's `VERSION` file: its text and its `key=value` lines.
    fn version_file(&self) -> Told<(String, BTreeMap<String, String>)> {
        let path = self
            .node_dir
            .join("layout")
            .join(layout_core::storage::VERSION_FILE_NAME);
        let text = std::fs::read_to_string(&path)
            .map_err(self.n.failed(format_args!("reading {}", path.display())))?;
        let fields = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok((text, fields))
    }

    fn keys_with_value(&self, value: &str) -> Vec<String> {
        self.model
            .iter()
            .filter(|(_, v)| v.as_str() == value)
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn index_figures(&mut self, running: &Running) -> Told<IndexFigures> {
        let Some(figures) = running.node.store().index_migration() else {
            return Err(self.n.fail(
                "kvstore reports the index migration's figures",
                "figures",
                "none",
            ));
        };
        Ok(IndexFigures {
            rows_done: figures.rows_done,
            rows_total: figures.rows_total.unwrap_or(figures.rows_done),
            batches: figures.batches,
            elapsed: figures.elapsed(),
            complete: figures.complete,
        })
    }

    // ---- expectations ------------------------------------------------------------------------

    fn expect_not_finalized<T: Debug>(
        &mut self,
        api: &str,
        feature: KvFeature,
        result: Result<T, KvClientError>,
    ) -> Told {
        let claim = format!("{api} is refused: {} is not finalized", feature.name());
        let expected = format!("NotFinalized naming {}", feature.name());
        match result {
            Err(KvClientError::NotFinalized {
                feature: named,
                message,
            }) => {
                self.n.say(format_args!("{api} answers:"))?;
                self.n.quote(&message)?;
                self.n.check(
                    claim,
                    named == feature.name() && message.contains(feature.name()),
                    expected,
                    format_args!("NotFinalized naming {named}: {message}"),
                )
            }
            Err(other) => self.n.check(claim, false, expected, other),
            Ok(answer) => {
                self.n
                    .check(claim, false, expected, format_args!("accepted: {answer:?}"))
            }
        }
    }

    fn expect_prepared<T: Debug>(&mut self, claim: &str, result: Result<T, KvClientError>) -> Told {
        match result {
            Err(KvClientError::Prepared { message }) => {
                self.n.say("the write answers:")?;
                self.n.quote(&message)?;
                self.n.check(claim, true, "", "")
            }
            Err(other) => self.n.check(claim, false, "a Prepared refusal", other),
            Ok(answer) => self.n.check(
                claim,
                false,
                "a Prepared refusal",
                format_args!("accepted: {answer:?}"),
            ),
        }
    }

    // ---- status ---------------------------------------------------------------------------

    fn status(&mut self, running: &Running) -> Told<StatusRow> {
        let kv = running.kv.status().map_err(self.n.failed("GET /status"))?;
        let admin = running
            .admin
            .status()
            .map_err(self.n.failed("layoutctl status"))?;
        let finalized: Vec<String> = admin
            .features
            .iter()
            .filter(|f| f.version > 0 && f.status == WireFeatureStatus::Finalized)
            .map(|f| f.name.clone())
            .collect();
        let row = StatusRow {
            node: running.label.to_owned(),
            slv: admin.software_layout_version,
            mlv: admin.metadata_layout_version,
            pre_finalized: admin.needs_finalization,
            prepared: admin
                .prepare
                .index
                .filter(|_| admin.prepare.state != WirePrepareState::NotPrepared),
            keys: kv.keys,
            finalized,
            catalog_features: KvFeature::ALL.len() - 1,
        };
        // The service's own status and the admin endpoint describe the same node.
        let agree = (kv.slv, kv.mlv, kv.pre_finalized, kv.prepared)
            == (row.slv, row.mlv, row.pre_finalized, row.prepared.is_some());
        if !agree {
            return Err(self.n.fail(
                "kvstore's /status agrees with the admin endpoint",
                format_args!(
                    "SLV {}, MLV {}, pre-finalized {}, prepared {}",
                    row.slv,
                    row.mlv,
                    row.pre_finalized,
                    row.prepared.is_some()
                ),
                format_args!(
                    "SLV {}, MLV {}, pre-finalized {}, prepared {}",
                    kv.slv, kv.mlv, kv.pre_finalized, kv.prepared
                ),
            ));
        }
        Ok(row)
    }

    fn table(&mut self, running: &Running) -> Told<StatusRow> {
        let row = self.status(running)?;
        self.n.raw("")?;
        for line in render(None, std::slice::from_ref(&row)) {
            self.n.raw(line)?;
        }
        self.n.raw("")?;
        Ok(row)
    }

    /// Prints the status table, checks it shows `(slv, mlv)`, the prepare state and every
    /// key, and closes the stage.
    /// Prints the status table and checks it shows `(slv, mlv)`, the prepare state,
    /// every key, and the features finalized up to the MLV.
    fn show_status(
        &mut self,
        running: &Running,
        (slv, mlv): (u32, u32),
        prepared: Option<u64>,
    ) -> Told<StatusRow> {
        let row = self.table(running)?;
        let expected_finalized: Vec<String> = KvFeature::ALL
            .iter()
            .filter(|f| f.layout_version() > 0 && f.layout_version() <= mlv)
            .map(|f| f.name().to_owned())
            .collect();
        let describe = |slv: u32, mlv: u32, prepared: Option<u64>, keys: u64| {
            let layout = if mlv < slv {
                "pre-finalized"
            } else {
                "finalized"
            };
            let prepared =
                prepared.map_or_else(|| "not prepared".to_owned(), |i| format!("prepared at {i}"));
            format!("SLV {slv}, MLV {mlv} ({layout}), {prepared}, {keys} keys")
        };
        let expected = describe(slv, mlv, prepared, self.model.len() as u64);
        let seen = describe(row.slv, row.mlv, row.prepared, row.keys);
        self.n.check(
            format_args!("status: {expected}"),
            expected == seen && row.finalized == expected_finalized,
            format_args!("{expected}; finalized {expected_finalized:?}"),
            format_args!("{seen}; finalized {:?}", row.finalized),
        )?;
        Ok(row)
    }

    /// Shows and checks the status (see [`show_status`](Self::show_status)) and closes
    /// the stage.
    fn end_stage(
        &mut self,
        running: &Running,
        versions: (u32, u32),
        prepared: Option<u64>,
    ) -> Told {
        let row = self.show_status(running, versions, prepared)?;
        let checks = self.n.take_checks();
        self.checks += checks;
        self.stages.push(StageReport {
            stage: self.n.stage(),
            checks,
            status: row,
        });
        Ok(())
    }
}

/// The features the new release adds, in catalog order.
fn new_feature_names() -> Vec<String> {
    KvFeature::ALL
        .iter()
        .filter(|f| f.layout_version() > 0)
        .map(|f| f.name().to_owned())
        .collect()
}

fn finalize_answer(answer: &FinalizeResponse) -> String {
    match answer {
        FinalizeResponse::Started { target_version, .. } => {
            format!("started, towards layout version {target_version}")
        }
        FinalizeResponse::Done {
            finalized,
            metadata_layout_version,
            ..
        } => format!(
            "done: finalized {}; MLV {metadata_layout_version}",
            finalized.join(", ")
        ),
        FinalizeResponse::AlreadyFinalized {
            metadata_layout_version,
            ..
        } => format!("already finalized at {metadata_layout_version}"),
        other => format!("{other:?}"),
    }
}

fn sorted(mut keys: Vec<String>) -> Vec<String> {
    keys.sort();
    keys
}

/// How `seen` differs from `expected`: counts and the first example of each kind.
fn difference(
    expected: &BTreeMap<String, String>,
    seen: &BTreeMap<String, String>,
) -> Option<String> {
    let missing: Vec<&String> = expected.keys().filter(|k| !seen.contains_key(*k)).collect();
    let extra: Vec<&String> = seen.keys().filter(|k| !expected.contains_key(*k)).collect();
    let changed: Vec<(&String, &String, &String)> = expected
        .iter()
        .filter_map(|(k, v)| seen.get(k).filter(|s| *s != v).map(|s| (k, v, s)))
        .collect();
    let mut parts = Vec::new();
    if let Some(first) = missing.first() {
        parts.push(format!("{} missing (e.g. {first})", missing.len()));
    }
    if let Some(first) = extra.first() {
        parts.push(format!("{} never acknowledged (e.g. {first})", extra.len()));
    }
    if let Some((k, v, s)) = changed.first() {
        parts.push(format!(
            "{} changed (e.g. {k}: {v:?} became {s:?})",
            changed.len()
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The layout error behind a start-up failure, if there is one.
fn layout_error<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e LayoutError> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(layout) = e.downcast_ref::<LayoutError>() {
            return Some(layout);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn difference_names_missing_extra_and_changed_keys() {
        let expected = map(&[("a", "1"), ("b", "2"), ("c", "3")]);
        assert_eq!(difference(&expected, &expected), None);
        let seen = map(&[("a", "1"), ("b", "20"), ("d", "4")]);
        assert_eq!(
            difference(&expected, &seen).as_deref(),
            Some("1 missing (e.g. c); 1 never acknowledged (e.g. d); 1 changed (e.g. b: \"2\" became \"20\")")
        );
    }
}
