//! A small key-value store with three layout features and real upgrade actions: the
//! component the testkit's own tests run.
//!
//! | version | feature | on disk |
//! |---|---|---|
//! | 0 | `Initial` | one file per record, `records/<key>`: `v1\n<value>` |
//! | 1 | `RecordChecksums` | records written as `v2 <crc32>\n<value>`; `OnFinalize` rewrites every v1 record as v2, passing the crash point [`CRASH_RECORD_REWRITTEN`] after each |
//! | 2 | `KeyIndex` | a sorted key index `index`, kept up to date by writes; `OnFinalize` builds it; `ValidateInPrefinalize` removes a half-built `index.tmp` |
//! | 3 | `Tombstones` | deletes append to `tombstones/log`; `OnFirstUpgradeStart` creates `tombstones/` (harmless to the old software), `OnFinalize` writes `tombstones/ENABLED` |
//!
//! The store plays every release: a node whose SLV is below 1 cannot read a v2 record
//! (it refuses it, as the old binary would), and nothing new is written before its
//! feature is finalized. Parameters (`Kind::param`):
//! - `bug = eager-checksums`: writes v2 records as soon as the *software* knows them,
//!   pre-finalized too (the bug the downgraded stage must catch);
//! - `mutation = publish-before-persist`: switches on layout-core's test mutation
//!   (the finalization publishes the MLV before storing it);
//! - `prepare = yes`: supports prepare (a `PREPARED` marker; writes refused while it is
//!   there; an upgrade or downgrade start clears it).
//!
//! Writes are atomic (temp file + rename) but not fsynced: these tests crash processes,
//! not machines.
#![allow(dead_code)] // each test binary uses a part

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use layout_core::{
    ActionContext, ActionError, ActionRegistry, LayoutFeature, LayoutVersionManager, RegistryError,
    StartIntent,
};
use layout_testkit::{
    HookResult, Kind, MiniCluster, MiniClusterBuilder, NodeContext, PrepareOutcome, TestComponent,
};
use parking_lot::Mutex;

/// The store's layout features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub(crate) enum KvFeature {
    #[layout(version = 0, description = "Records stored as plain files (format v1)")]
    Initial,
    #[layout(
        version = 1,
        description = "Records carry a CRC32 checksum (format v2)"
    )]
    RecordChecksums,
    #[layout(version = 2, description = "A sorted key index file")]
    KeyIndex,
    #[layout(version = 3, description = "Deletes are logged as tombstones")]
    Tombstones,
}

/// The key-value store.
pub(crate) struct Kv {
    dir: PathBuf,
    lvm: Arc<LayoutVersionManager<KvFeature>>,
    eager_checksums: bool,
    supports_prepare: bool,
    /// Serializes writes (record + index).
    write: Mutex<()>,
}

type KvResult<T> = Result<T, String>;

fn io_err(what: &str, path: &Path, e: &io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

/// Writes `bytes` to `path` atomically (temp file + rename; no fsync).
fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

fn encode_v2(value: &str) -> String {
    format!("v2 {:08x}\n{value}", crc32fast::hash(value.as_bytes()))
}

impl Kv {
    fn records(&self) -> PathBuf {
        self.dir.join("records")
    }
    fn index_path(&self) -> PathBuf {
        self.dir.join("index")
    }
    fn tombstones(&self) -> PathBuf {
        self.dir.join("tombstones")
    }
    fn prepared_path(&self) -> PathBuf {
        self.dir.join("PREPARED")
    }

    /// Decodes a record as this software (its SLV) reads it.
    fn decode(&self, key: &str, text: &str) -> KvResult<(u8, String)> {
        let (header, value) = text
            .split_once('\n')
            .ok_or_else(|| format!("record {key} has no header: {text:?}"))?;
        if header == "v1" {
            return Ok((1, value.to_owned()));
        }
        if let Some(crc) = header.strip_prefix("v2 ") {
            let slv = self.lvm.software_layout_version();
            if slv < KvFeature::RecordChecksums.layout_version() {
                return Err(format!(
                    "record {key} is in format v2, which this software (SLV {slv}) cannot read"
                ));
            }
            let expected = format!("{:08x}", crc32fast::hash(value.as_bytes()));
            if crc != expected {
                return Err(format!("record {key}: checksum {crc}, expected {expected}"));
            }
            return Ok((2, value.to_owned()));
        }
        Err(format!("record {key} has an unknown header {header:?}"))
    }

    fn keys(&self) -> KvResult<Vec<String>> {
        let dir = self.records();
        let mut keys = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io_err("list", &dir, &e))? {
            let entry = entry.map_err(|e| io_err("list", &dir, &e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if Path::new(&name).extension().is_none_or(|e| e != "tmp") {
                keys.push(name);
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn read(&self, key: &str) -> KvResult<(u8, String)> {
        let path = self.records().join(key);
        let text = fs::read_to_string(&path).map_err(|e| io_err("read", &path, &e))?;
        self.decode(key, &text)
    }

    /// Every record, decoded: `key -> (format, value)`.
    fn scan(&self) -> KvResult<BTreeMap<String, (u8, String)>> {
        self.keys()?
            .into_iter()
            .map(|k| self.read(&k).map(|r| (k, r)))
            .collect()
    }

    fn write_index(&self, path: &Path) -> KvResult<()> {
        let mut text = String::new();
        for key in self.keys()? {
            text.push_str(&key);
            text.push('\n');
        }
        replace(path, text.as_bytes()).map_err(|e| io_err("write", path, &e))
    }

    fn put(&self, key: &str, value: &str) -> KvResult<()> {
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!("bad key {key:?}"));
        }
        if self.prepared_path().exists() {
            return Err(format!("write {key} rejected: the store is prepared"));
        }
        let _write = self.write.lock();
        let v2 = if self.eager_checksums {
            self.lvm.software_layout_version() >= KvFeature::RecordChecksums.layout_version()
        } else {
            self.lvm.is_allowed(KvFeature::RecordChecksums)
        };
        let text = if v2 {
            encode_v2(value)
        } else {
            format!("v1\n{value}")
        };
        let path = self.records().join(key);
        replace(&path, text.as_bytes()).map_err(|e| io_err("write", &path, &e))?;
        if self.lvm.is_allowed(KvFeature::KeyIndex) {
            self.write_index(&self.index_path())?;
        }
        Ok(())
    }

    fn delete(&self, key: &str) -> KvResult<()> {
        let _write = self.write.lock();
        let path = self.records().join(key);
        if self.lvm.is_allowed(KvFeature::Tombstones) {
            let log = self.tombstones().join("log");
            let mut text = fs::read_to_string(&log).unwrap_or_default();
            text.push_str(key);
            text.push('\n');
            replace(&log, text.as_bytes()).map_err(|e| io_err("write", &log, &e))?;
        }
        fs::remove_file(&path).map_err(|e| io_err("delete", &path, &e))?;
        if self.lvm.is_allowed(KvFeature::KeyIndex) {
            self.write_index(&self.index_path())?;
        }
        Ok(())
    }

    /// The store's own invariants, against its MLV.
    fn check(&self) -> KvResult<()> {
        let mlv = self.lvm.metadata_layout_version();
        let records = self.scan()?;
        if mlv < KvFeature::RecordChecksums.layout_version() {
            if let Some((key, _)) = records.iter().find(|(_, (format, _))| *format == 2) {
                return Err(format!(
                    "record {key} is in format v2 while RecordChecksums is not finalized (MLV {mlv})"
                ));
            }
        } else if let Some((key, _)) = records.iter().find(|(_, (format, _))| *format == 1) {
            return Err(format!("record {key} is still v1 at MLV {mlv}"));
        }
        let index = self.index_path();
        if mlv >= KvFeature::KeyIndex.layout_version() {
            let text = fs::read_to_string(&index).map_err(|e| io_err("read", &index, &e))?;
            let indexed: Vec<&str> = text.lines().collect();
            let keys: Vec<&str> = records.keys().map(String::as_str).collect();
            if indexed != keys {
                return Err(format!(
                    "the index lists {indexed:?}, the records are {keys:?}"
                ));
            }
        } else if index.exists() {
            return Err(format!("an index exists at MLV {mlv}, before KeyIndex"));
        }
        let enabled = self.tombstones().join("ENABLED");
        if (mlv >= KvFeature::Tombstones.layout_version()) != enabled.exists() {
            return Err(format!(
                "tombstones/ENABLED exists: {}, at MLV {mlv}",
                enabled.exists()
            ));
        }
        Ok(())
    }
}

/// The crash point `RecordChecksums`' action passes after each record it rewrote.
pub(crate) const CRASH_RECORD_REWRITTEN: &str = "kv::record_rewritten";

/// `RecordChecksums`: rewrites every v1 record as v2, a crash point after each.
/// Idempotent.
fn rewrite_records(kv: &Kv, ctx: &ActionContext<'_, KvFeature>) -> Result<(), ActionError> {
    let keys = kv.keys()?;
    let total = keys.len() as u64;
    for (done, key) in keys.iter().enumerate() {
        let path = kv.records().join(key);
        let text = fs::read_to_string(&path)?;
        if let Some(value) = text.strip_prefix("v1\n") {
            replace(&path, encode_v2(value).as_bytes())?;
            ctx.crash_point(CRASH_RECORD_REWRITTEN);
        }
        ctx.report_progress(done as u64 + 1, Some(total));
    }
    Ok(())
}

/// `KeyIndex`: builds the index through a temp file. Idempotent.
fn build_index(kv: &Kv, _ctx: &ActionContext<'_, KvFeature>) -> Result<(), ActionError> {
    kv.write_index(&kv.index_path())?;
    Ok(())
}

/// `KeyIndex`, on every pre-finalized start: a half-built index is removed.
fn remove_partial_index(kv: &Kv, _ctx: &ActionContext<'_, KvFeature>) -> Result<(), ActionError> {
    match fs::remove_file(kv.dir.join("index.tmp")) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// `Tombstones`, first start of a release that knows it: the (empty) directory.
fn create_tombstone_dir(kv: &Kv, _ctx: &ActionContext<'_, KvFeature>) -> Result<(), ActionError> {
    fs::create_dir_all(kv.tombstones())?;
    Ok(())
}

/// `Tombstones`: switches them on.
fn enable_tombstones(kv: &Kv, _ctx: &ActionContext<'_, KvFeature>) -> Result<(), ActionError> {
    fs::create_dir_all(kv.tombstones())?;
    replace(&kv.tombstones().join("ENABLED"), b"")?;
    Ok(())
}

/// A `String` error as a `std::error::Error`.
#[derive(Debug)]
pub(crate) struct ErrorText(pub(crate) String);

impl std::fmt::Display for ErrorText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ErrorText {}

impl TestComponent for Kv {
    type Feature = KvFeature;

    fn open(ctx: &NodeContext<KvFeature>) -> HookResult<Self> {
        let dir = ctx.data_dir().to_owned();
        fs::create_dir_all(dir.join("records"))?;
        if ctx.param("mutation") == Some("publish-before-persist") {
            ctx.manager().__set_publish_before_persist(true);
        }
        let kv = Kv {
            dir,
            lvm: Arc::clone(ctx.manager()),
            eager_checksums: ctx.param("bug") == Some("eager-checksums"),
            supports_prepare: ctx.param("prepare") == Some("yes"),
            write: Mutex::new(()),
        };
        if ctx.manager().was_created() {
            // A fresh install lays out everything its MLV includes: no action runs
            // for the features it starts with.
            if kv.lvm.is_allowed(KvFeature::KeyIndex) {
                kv.write_index(&kv.index_path())?;
            }
            if kv.lvm.is_allowed(KvFeature::Tombstones) {
                enable_tombstones(
                    &kv,
                    &ActionContext::detached(KvFeature::Tombstones, layout_core::Phase::OnFinalize),
                )?;
            }
        }
        if matches!(
            ctx.start_intent(),
            StartIntent::Upgrade | StartIntent::Downgrade
        ) {
            // A new binary starts: the prepare is over.
            match fs::remove_file(kv.prepared_path()) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(kv)
    }

    fn actions(
        _ctx: &NodeContext<KvFeature>,
    ) -> Result<ActionRegistry<KvFeature, Self>, RegistryError> {
        ActionRegistry::builder()
            .on_finalize(KvFeature::RecordChecksums, rewrite_records)
            .on_finalize(KvFeature::KeyIndex, build_index)
            .validate_in_prefinalize(KvFeature::KeyIndex, remove_partial_index)
            .on_first_upgrade_start(KvFeature::Tombstones, create_tombstone_dir)
            .on_finalize(KvFeature::Tombstones, enable_tombstones)
            .build()
    }

    fn prepare(&self) -> HookResult<PrepareOutcome> {
        if !self.supports_prepare {
            return Ok(PrepareOutcome::Unsupported);
        }
        let _write = self.write.lock();
        let index = self.keys().map_err(ErrorText)?.len() as u64;
        replace(&self.prepared_path(), index.to_string().as_bytes())?;
        Ok(PrepareOutcome::Prepared { index: Some(index) })
    }

    fn cancel_prepare(&self) -> HookResult {
        match fs::remove_file(self.prepared_path()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn call(&self, operation: &str, argument: &str) -> HookResult<String> {
        let result = match operation {
            "put" => {
                let (key, value) = argument
                    .split_once('=')
                    .ok_or_else(|| format!("put wants key=value, got {argument:?}"))?;
                self.put(key, value).map(|()| "ok".to_owned())
            }
            "get" => self.read(argument).map(|(_, v)| v),
            "delete" => self.delete(argument).map(|()| "ok".to_owned()),
            "scan" => self.scan().map(|records| {
                records
                    .into_iter()
                    .map(|(k, (_, v))| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            "lookup" => self
                .lvm
                .check_operation_allowed("lookup", KvFeature::KeyIndex)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    let index = fs::read_to_string(self.index_path())
                        .map_err(|e| io_err("read", &self.index_path(), &e))?;
                    Ok(index.lines().any(|k| k == argument).to_string())
                }),
            "check" => self.check().map(|()| "ok".to_owned()),
            other => Err(format!("unknown operation {other}")),
        };
        result.map_err(|e| ErrorText(e).into())
    }
}

/// Parses a `scan` answer.
pub(crate) fn parse_scan(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `count` records `<prefix>-<i> = <prefix> value <i>` through every node.
pub(crate) fn ingest(cluster: &MiniCluster, prefix: &str, count: usize) -> HookResult {
    for node in cluster.nodes() {
        for i in 0..count {
            node.call("put", &format!("{prefix}-{i}={prefix}-value-{i}"))?;
        }
    }
    Ok(())
}

/// Every node holds exactly the records `prefixes` wrote (`count` each) and passes its
/// own check.
pub(crate) fn verify(cluster: &MiniCluster, prefixes: &[&str], count: usize) -> HookResult {
    let mut expected = BTreeMap::new();
    for prefix in prefixes {
        for i in 0..count {
            expected.insert(format!("{prefix}-{i}"), format!("{prefix}-value-{i}"));
        }
    }
    for node in cluster.nodes() {
        let found = parse_scan(&node.call("scan", "")?);
        if found != expected {
            return Err(format!("{} holds {found:?}, expected {expected:?}", node.name()).into());
        }
        node.call("check", "")?;
    }
    Ok(())
}

/// A cluster of `nodes` stores installed by the old binary at `old` (MLV = SLV = old),
/// upgraded to the latest version.
pub(crate) fn kv_cluster(nodes: usize, old: KvFeature) -> MiniClusterBuilder {
    MiniCluster::builder().kind(kv_kind(nodes, old))
}

/// The kind of [`kv_cluster`].
pub(crate) fn kv_kind(nodes: usize, old: KvFeature) -> Kind<Kv> {
    Kind::<Kv>::new("kv")
        .nodes(nodes)
        .software_layout_version(old.layout_version())
}

/// Every node's own check passes (an invariant for the crash matrix and the plans).
pub(crate) fn every_node_checks(cluster: &MiniCluster) -> HookResult {
    for node in cluster.nodes() {
        node.call("check", "")?;
    }
    Ok(())
}
