use layout_core::{disallowed_until, LayoutError, LayoutFeature};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub enum OmFeature {
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
    #[layout(version = 1, description = "Multi-tenancy tables")]
    MultiTenancy,
}

#[disallowed_until(OmFeature::MultiTenancy)]
pub struct Tenant;

#[disallowed_until(OmFeature::MultiTenancy)]
pub const TENANTS: u32 = 1;

pub trait TenantAdmin {
    // A declaration has no body to insert the check into.
    #[disallowed_until(OmFeature::MultiTenancy)]
    fn create_tenant(&self) -> Result<(), LayoutError>;
}

fn main() {}
