//! `#[disallowed_until]`: gated APIs are refused, with the facts, until their feature is
//! finalized, and open right after, in every form the attribute accepts.

use std::fmt::Display;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use layout_core::{
    disallowed_until, LayoutAware, LayoutError, LayoutVersionManager, MemoryStorage,
};

use crate::catalogs::{init_at, Om, OmFeature};

/// A service's own error type, as gated APIs return it.
#[derive(Debug)]
enum OmError {
    Layout(LayoutError),
}

impl From<LayoutError> for OmError {
    fn from(error: LayoutError) -> Self {
        OmError::Layout(error)
    }
}

/// The alias services use; the gate accepts it.
type OmResult<T> = Result<T, OmError>;

/// An object manager with a gated API.
struct OzoneManager {
    lvm: Om,
    /// How many times a gated body ran.
    bodies_run: AtomicU32,
}

impl LayoutAware<OmFeature> for OzoneManager {
    fn layout_manager(&self) -> &LayoutVersionManager<OmFeature> {
        &self.lvm
    }
}

impl OzoneManager {
    /// A component on a disk at layout version `mlv`, with every feature of the catalog
    /// known (SLV 3).
    fn at(mlv: u32) -> Self {
        Self {
            lvm: Om::open(MemoryStorage::new(), init_at(mlv)).unwrap(),
            bodies_run: AtomicU32::new(0),
        }
    }

    #[disallowed_until(OmFeature::MultiTenancy)]
    fn create_tenant(&self, name: &str) -> OmResult<String> {
        self.bodies_run.fetch_add(1, Ordering::Relaxed);
        Ok(format!("tenant {name}"))
    }

    #[disallowed_until(OmFeature::MultiTenancy, operation = "CreateTenantV2")]
    fn create_tenant_v2(&self, name: &str) -> OmResult<String> {
        Ok(format!("tenant {name}"))
    }

    #[disallowed_until(OmFeature::MultiTenancy)]
    async fn create_tenant_async(&self, name: &str) -> OmResult<String> {
        self.bodies_run.fetch_add(1, Ordering::Relaxed);
        let name = std::future::ready(name).await;
        Ok(format!("tenant {name}"))
    }

    #[disallowed_until(OmFeature::SnapshotDiff)]
    fn snapshot_diff<T: Display + ?Sized>(&self, from: &T, to: &T) -> Result<String, OmError> {
        Ok(format!("diff {from}..{to}"))
    }

    #[disallowed_until(OmFeature::MultiTenancy)]
    fn tenants(self: Arc<Self>) -> OmResult<Vec<String>> {
        Ok(vec!["t1".to_owned()])
    }

    /// An associated function: the manager is named explicitly.
    #[disallowed_until(OmFeature::MultiTenancy, manager = om)]
    fn tenant_count(om: &OzoneManager) -> OmResult<usize> {
        Ok(om.bodies_run.load(Ordering::Relaxed) as usize)
    }
}

/// A trait the service implements; the gate goes on the impl's method.
trait TenantAdmin {
    fn delete_tenant(&self, name: &str) -> OmResult<String>;
}

impl TenantAdmin for OzoneManager {
    #[disallowed_until(OmFeature::MultiTenancy)]
    fn delete_tenant(&self, name: &str) -> OmResult<String> {
        Ok(format!("deleted {name}"))
    }
}

/// A free function gated on a manager passed in (any `LayoutAware`: here `&Om`).
#[disallowed_until(OmFeature::MultiTenancy, manager = lvm)]
fn tenant_quota(lvm: &Om, tenant: &str) -> Result<u64, LayoutError> {
    Ok(tenant.len() as u64)
}

/// A free function gated on a manager held in an `Arc`, reached through an expression.
#[disallowed_until(OmFeature::BucketLayoutSupport, manager = shared.0)]
fn bucket_layout(shared: &(Arc<Om>, u32)) -> Result<u32, LayoutError> {
    Ok(shared.1)
}

/// The `NotFinalized` facts of a refusal: (operation, feature, version, MLV).
fn refusal<T: std::fmt::Debug>(
    result: OmResult<T>,
) -> (Option<&'static str>, &'static str, u32, u32) {
    match result {
        Err(OmError::Layout(LayoutError::NotFinalized {
            operation,
            feature,
            version,
            metadata_layout_version,
        })) => (operation, feature, version, metadata_layout_version),
        other => panic!("expected a NotFinalized refusal, got {other:?}"),
    }
}

/// Drives a future that never waits on anything outside itself.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
    panic!("the future did not complete");
}

#[test]
fn gated_method_is_refused_with_the_facts_until_its_feature_is_finalized() {
    let om = OzoneManager::at(1);

    assert_eq!(
        refusal(om.create_tenant("t1")),
        (Some("create_tenant"), "MultiTenancy", 2, 1)
    );
    assert_eq!(
        om.bodies_run.load(Ordering::Relaxed),
        0,
        "a refused call must not run the body"
    );

    om.lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
    assert_eq!(om.create_tenant("t1").unwrap(), "tenant t1");
    assert_eq!(om.bodies_run.load(Ordering::Relaxed), 1);
}

#[test]
fn the_refusal_message_names_operation_feature_version_and_mlv() {
    let om = OzoneManager::at(0);
    let Err(OmError::Layout(error)) = om.create_tenant("t1") else {
        panic!("create_tenant must be refused at MLV 0");
    };
    let message = error.to_string();
    for fact in [
        "operation create_tenant",
        "layout feature MultiTenancy",
        "layout version is 2",
        "metadata layout version is 0",
    ] {
        assert!(message.contains(fact), "{message:?} lacks {fact:?}");
    }
}

#[test]
fn a_feature_finalized_before_start_up_is_open_at_once() {
    let om = OzoneManager::at(2);
    assert_eq!(om.create_tenant("t1").unwrap(), "tenant t1");
    // And one above it is still closed.
    assert_eq!(
        refusal(om.snapshot_diff("a", "b")),
        (Some("snapshot_diff"), "SnapshotDiff", 3, 2)
    );
}

#[test]
fn operation_names_the_refused_operation() {
    let om = OzoneManager::at(1);
    assert_eq!(refusal(om.create_tenant_v2("t1")).0, Some("CreateTenantV2"));
}

#[test]
fn async_method_is_gated_on_its_first_poll() {
    let om = OzoneManager::at(1);
    let refused = block_on(om.create_tenant_async("t1"));
    assert_eq!(
        refusal(refused),
        (Some("create_tenant_async"), "MultiTenancy", 2, 1)
    );
    assert_eq!(om.bodies_run.load(Ordering::Relaxed), 0);

    om.lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
    assert_eq!(block_on(om.create_tenant_async("t1")).unwrap(), "tenant t1");
    assert_eq!(om.bodies_run.load(Ordering::Relaxed), 1);
}

#[test]
fn the_check_reads_the_mlv_at_each_call_not_when_the_future_is_created() {
    let om = OzoneManager::at(1);
    // Created while pre-finalized, first polled after the finalization: allowed.
    let call = om.create_tenant_async("t1");
    om.lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
    assert_eq!(block_on(call).unwrap(), "tenant t1");
}

#[test]
fn trait_impl_method_is_gated() {
    let om = OzoneManager::at(1);
    assert_eq!(
        refusal(om.delete_tenant("t1")),
        (Some("delete_tenant"), "MultiTenancy", 2, 1)
    );
    om.lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
    assert_eq!(om.delete_tenant("t1").unwrap(), "deleted t1");
}

#[test]
fn generic_method_is_gated() {
    let om = OzoneManager::at(2);
    assert_eq!(
        refusal(om.snapshot_diff(&1, &2)),
        (Some("snapshot_diff"), "SnapshotDiff", 3, 2)
    );
    om.lvm.finalize_step(OmFeature::SnapshotDiff).unwrap();
    assert_eq!(om.snapshot_diff(&1, &2).unwrap(), "diff 1..2");
    assert_eq!(om.snapshot_diff("a", "b").unwrap(), "diff a..b");
}

#[test]
fn method_taking_an_arc_self_is_gated() {
    let om = Arc::new(OzoneManager::at(1));
    assert_eq!(
        refusal(Arc::clone(&om).tenants()),
        (Some("tenants"), "MultiTenancy", 2, 1)
    );
    om.lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
    assert_eq!(om.tenants().unwrap(), ["t1"]);
}

#[test]
fn associated_function_is_gated_on_the_named_manager() {
    let om = OzoneManager::at(1);
    assert_eq!(
        refusal(OzoneManager::tenant_count(&om)),
        (Some("tenant_count"), "MultiTenancy", 2, 1)
    );
    om.lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
    assert_eq!(OzoneManager::tenant_count(&om).unwrap(), 0);
}

#[test]
fn free_function_is_gated_on_the_named_manager() {
    let lvm = Om::open(MemoryStorage::new(), init_at(1)).unwrap();
    let Err(LayoutError::NotFinalized {
        operation,
        feature,
        version,
        metadata_layout_version,
    }) = tenant_quota(&lvm, "t1")
    else {
        panic!("tenant_quota must be refused at MLV 1");
    };
    assert_eq!(
        (operation, feature, version, metadata_layout_version),
        (Some("tenant_quota"), "MultiTenancy", 2, 1)
    );
    lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
    assert_eq!(tenant_quota(&lvm, "t1").unwrap(), 2);
}

#[test]
fn the_named_manager_may_be_any_layout_aware_expression() {
    let shared = (
        Arc::new(Om::open(MemoryStorage::new(), init_at(0)).unwrap()),
        7,
    );
    assert!(matches!(
        bucket_layout(&shared),
        Err(LayoutError::NotFinalized {
            feature: "BucketLayoutSupport",
            metadata_layout_version: 0,
            ..
        })
    ));
    shared
        .0
        .finalize_step(OmFeature::BucketLayoutSupport)
        .unwrap();
    assert_eq!(bucket_layout(&shared).unwrap(), 7);
}
