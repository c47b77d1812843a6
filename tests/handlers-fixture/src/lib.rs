//! Test fixture: request handlers registered with `#[belongs_to_layout_version]`, in a
//! crate of their own, as a service would keep them.
//!
//! Nothing here needs to be called: the handlers reach
//! `LayoutVersionInstanceFactory::from_registry` through `inventory`. But a crate that
//! nothing references is not linked, so a user of this crate checks, at start-up or in a
//! test, `factory.expect(layout_handlers_fixture::REGISTERED)?`: that one line links the
//! crate and fails, listing what is missing, if the registrations did not arrive.

use layout_core::belongs_to_layout_version;
use layout_handlers_api::{DemoFeature, RequestHandler};

/// Every (key, feature) this crate registers.
pub const REGISTERED: &[(&str, DemoFeature)] = &[
    ("CreateKey", DemoFeature::Initial),
    ("CreateKey", DemoFeature::MultiTenancy),
    ("CreateTenant", DemoFeature::MultiTenancy),
];

/// `CreateKey` in the initial layout.
#[derive(Debug, Default)]
pub struct CreateKeyV0;

#[belongs_to_layout_version(DemoFeature::Initial, key = "CreateKey")]
impl RequestHandler for CreateKeyV0 {
    fn layout_version(&self) -> u32 {
        0
    }

    fn handle(&self, request: &str) -> String {
        format!("key {request}")
    }
}

/// `CreateKey` once keys belong to tenants.
#[derive(Debug, Default)]
pub struct CreateKeyV2;

#[belongs_to_layout_version(DemoFeature::MultiTenancy, key = "CreateKey")]
impl RequestHandler for CreateKeyV2 {
    fn layout_version(&self) -> u32 {
        2
    }

    fn handle(&self, request: &str) -> String {
        format!("tenant key {request}")
    }
}

/// `CreateTenant`, which exists only with multi-tenancy.
#[derive(Debug, Default)]
pub struct CreateTenant;

#[belongs_to_layout_version(DemoFeature::MultiTenancy, key = "CreateTenant")]
impl RequestHandler for CreateTenant {
    fn layout_version(&self) -> u32 {
        2
    }

    fn handle(&self, request: &str) -> String {
        format!("tenant {request}")
    }
}
