//! A failed commit (a full disk, injected through a storage backend that fails its
//! writes while a flag is set) degrades the store: writes are refused with 503
//! `degraded` naming the cause and `/status` shows it; once the disk has room again,
//! writes resume without a restart (the store reopens its database), and every write
//! acknowledged before, during and after is there. The same during the value-index
//! migration of a finalization.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvstore::{
    ClientError, KvClient, KvFeature, KvNode, KvNodeConfig, KvOptions, StorageBackendFactory,
};
use layout_core::migration::BatchEvent;
use layout_core::LayoutFeature;
use redb::backends::FileBackend;
use redb::StorageBackend;

use crate::support::TOKEN;

/// What the injected error says, to find it in the degraded cause.
const INJECTED: &str = "injected: no space left on device";

/// redb's file backend whose writes and syncs fail while `full` is set.
#[derive(Debug)]
struct FullDisk {
    inner: FileBackend,
    full: Arc<AtomicBool>,
}

impl FullDisk {
    fn check(&self) -> io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            Err(io::Error::other(INJECTED))
        } else {
            Ok(())
        }
    }
}

impl StorageBackend for FullDisk {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }
}

fn full_disk(full: &Arc<AtomicBool>) -> StorageBackendFactory {
    let full = Arc::clone(full);
    Arc::new(move |file| {
        Ok(Box::new(FullDisk {
            inner: FileBackend::new(file)?,
            full: Arc::clone(&full),
        }) as Box<dyn StorageBackend>)
    })
}

fn start(dir: &Path, initial: Option<KvFeature>, options: KvOptions) -> KvNode {
    let mut config = KvNodeConfig::new(dir)
        .with_software_version(KvFeature::latest())
        .with_store_options(options)
        .with_admin("127.0.0.1:0".parse().expect("addr"), TOKEN);
    if let Some(initial) = initial {
        config = config.with_initial_version(initial);
    }
    KvNode::start(config).expect("node starts")
}

fn assert_degraded(err: &ClientError) {
    assert!(
        matches!(err, ClientError::Status { code: 503, .. }),
        "a write while degraded is 503: {err}"
    );
    assert_eq!(err.kind().as_deref(), Some("degraded"), "{err}");
    assert!(err.to_string().contains(INJECTED), "names the cause: {err}");
}

/// Every acknowledged write reads back, through the running node and its list.
fn assert_all_present(client: &KvClient, acked: &BTreeMap<String, String>) {
    for (key, value) in acked {
        assert_eq!(
            client.get(key).expect("get").as_deref(),
            Some(value.as_str()),
            "acknowledged write {key}"
        );
    }
    let listed: BTreeMap<String, String> = client.list("").expect("list").into_iter().collect();
    for (key, value) in acked {
        assert_eq!(listed.get(key), Some(value), "listed {key}");
    }
}

/// The node's `/metrics` text (behind its admin token).
fn metrics(node: &KvNode) -> String {
    let client = KvClient::new(node.http_addr()).with_token(TOKEN);
    let (status, text) = client.raw("GET", "/metrics", None).expect("metrics");
    assert_eq!(status, 200, "{text}");
    text
}

/// The message of `e` and of every source under it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[test]
fn writes_resume_without_a_restart_after_a_failed_commit_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = Arc::new(AtomicBool::new(false));
    let node = start(
        dir.path(),
        None,
        KvOptions::default().with_storage_backend(full_disk(&full)),
    );
    let client = KvClient::new(node.http_addr());
    let mut acked = BTreeMap::new();
    let mut put = |key: String, value: String| -> Result<(), ClientError> {
        client.put(&key, &value)?;
        acked.insert(key, value);
        Ok(())
    };
    for i in 0..20 {
        put(format!("before-{i:02}"), format!("v{i}")).expect("put before");
    }

    full.store(true, Ordering::SeqCst);
    let err = put("during-00".into(), "v".into()).expect_err("the disk is full");
    assert!(
        matches!(
            err,
            ClientError::Status {
                code: 500 | 503,
                ..
            }
        ),
        "{err}"
    );
    for i in 1..5 {
        let err = put(format!("during-{i:02}"), "v".into()).expect_err("still full");
        assert_degraded(&err);
    }
    let status = client.status().expect("status answers while degraded");
    let cause = status.degraded.expect("status shows degraded");
    assert!(cause.contains(INJECTED), "{cause}");
    assert!(
        metrics(&node).contains("kvstore_degraded 1"),
        "metrics show degraded"
    );

    full.store(false, Ordering::SeqCst);
    // Bounded: the first write after the disk has room reopens the database.
    let mut resumed = false;
    for attempt in 0..20 {
        if put(format!("after-{attempt:02}"), "first".into()).is_ok() {
            resumed = true;
            break;
        }
    }
    assert!(resumed, "writes resume once the disk has room");
    for i in 0..20 {
        put(format!("after-more-{i:02}"), format!("w{i}")).expect("put after");
    }
    assert_eq!(client.status().expect("status").degraded, None);
    assert!(
        metrics(&node).contains("kvstore_degraded 0"),
        "metrics show healthy"
    );
    assert_all_present(&client, &acked);
    drop(client);

    // And durably: a restart (without the injected backend) finds them all.
    node.shutdown().expect("shutdown");
    let node = start(dir.path(), None, KvOptions::default());
    assert_all_present(&KvClient::new(node.http_addr()), &acked);
    node.shutdown().expect("shutdown");
}

#[test]
fn a_finalization_whose_index_batch_fails_on_a_full_disk_succeeds_when_run_again() {
    const BATCH: usize = 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let full = Arc::new(AtomicBool::new(false));
    let arm = Arc::new(AtomicBool::new(false));
    let hook = {
        let (full, arm) = (Arc::clone(&full), Arc::clone(&arm));
        Arc::new(move |event: &BatchEvent| {
            // The disk fills after the first batch of the armed run commits.
            if let BatchEvent::BatchCommitted { .. } = event {
                if arm.swap(false, Ordering::SeqCst) {
                    full.store(true, Ordering::SeqCst);
                }
            }
        })
    };
    let options = KvOptions::default()
        .with_migration_batch(BATCH)
        .with_index_batch_hook(hook)
        .with_storage_backend(full_disk(&full));
    let node = start(dir.path(), Some(KvFeature::Initial), options);
    let client = KvClient::new(node.http_addr());
    let mut acked = BTreeMap::new();
    for i in 0..(BATCH * 5) {
        let (key, value) = (format!("k{i:03}"), if i % 2 == 0 { "even" } else { "odd" });
        client.put(&key, value).expect("put");
        acked.insert(key, value.to_owned());
    }
    // The hook fires only in the value-index migration (`ValueIndex`'s finalize action).
    arm.store(true, Ordering::SeqCst);
    let err = node
        .finalizer()
        .finalize("test", node.store())
        .expect_err("the index batch cannot commit on a full disk");
    let text = chain(&err);
    assert!(
        text.contains(INJECTED),
        "the failure names the cause: {text}"
    );
    assert!(
        node.manager().metadata_layout_version() < KvFeature::ValueIndex.layout_version(),
        "{text}"
    );
    let cause = client.status().expect("status").degraded;
    assert!(cause.is_some_and(|c| c.contains(INJECTED)), "{text}");
    assert_degraded(&client.put("refused", "v").expect_err("degraded"));

    full.store(false, Ordering::SeqCst);
    node.finalizer()
        .finalize("test", node.store())
        .expect("finalize again succeeds once the disk has room");
    assert_eq!(
        node.manager().metadata_layout_version(),
        KvFeature::latest().layout_version()
    );
    let figures = node.store().index_migration().expect("figures");
    assert!(figures.complete, "{figures:?}");
    assert_eq!(client.status().expect("status").degraded, None);
    client.put("after", "even").expect("writes resume");
    acked.insert("after".into(), "even".into());
    assert_all_present(&client, &acked);
    let evens: Vec<String> = acked
        .iter()
        .filter(|(_, v)| *v == "even")
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(client.find_by_value("even").expect("by value"), evens);
    drop(client);
    node.shutdown().expect("shutdown");
}
