//! `#[belongs_to_layout_version]` on handler impls of several shapes; `from_registry`
//! collects them for the right catalog and instance type.
use layout_core::{
    belongs_to_layout_version, LayoutFeature, LayoutVersionInstanceFactory, LayoutVersionManager,
    ManagerOptions, MemoryStorage, StartIntent,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub enum OmFeature {
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
    #[layout(version = 1, description = "Multi-tenancy tables")]
    MultiTenancy,
}

mod handlers {
    pub trait Handler<Request>: Send + Sync {
        fn handle(&self, request: Request) -> String;
    }
}

#[derive(Default)]
pub struct CreateKey;

#[belongs_to_layout_version(OmFeature::InitialVersion, key = "CreateKey")]
impl handlers::Handler<u32> for CreateKey {
    fn handle(&self, request: u32) -> String {
        format!("v0 {request}")
    }
}

#[derive(Default)]
pub struct Wrapper<T>(T);

#[belongs_to_layout_version(OmFeature::MultiTenancy, key = "CreateKey")]
impl handlers::Handler<u32> for Wrapper<u8> {
    fn handle(&self, request: u32) -> String {
        format!("v1 {request} {}", self.0)
    }
}

/// Another trait, same key: kept apart by the instance type.
pub trait Audit {
    fn audit(&self) -> &'static str;
}

#[derive(Default)]
pub struct AuditCreateKey;

#[belongs_to_layout_version(OmFeature::InitialVersion, key = "CreateKey")]
impl Audit for AuditCreateKey {
    fn audit(&self) -> &'static str {
        "audited"
    }
}

fn main() {
    let opts = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(0);
    let lvm = LayoutVersionManager::<OmFeature>::open(MemoryStorage::new(), opts).unwrap();
    let handlers =
        LayoutVersionInstanceFactory::<_, _, Box<dyn handlers::Handler<u32>>>::from_registry(&lvm)
            .unwrap();
    handlers
        .expect(&[("CreateKey", OmFeature::InitialVersion), ("CreateKey", OmFeature::MultiTenancy)])
        .unwrap();
    assert_eq!(handlers.get(&lvm, &"CreateKey").unwrap().handle(1), "v0 1");
    lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
    assert_eq!(handlers.get(&lvm, &"CreateKey").unwrap().handle(1), "v1 1 0");

    let audits =
        LayoutVersionInstanceFactory::<_, _, Box<dyn Audit>>::from_registry(&lvm).unwrap();
    assert_eq!(audits.len(), 1);
    assert_eq!(audits.get(&lvm, &"CreateKey").unwrap().audit(), "audited");
}
