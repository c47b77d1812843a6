use layout_core::{disallowed_until, LayoutError, LayoutFeature, LayoutVersionManager};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub enum OmFeature {
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
    #[layout(version = 1, description = "Multi-tenancy tables")]
    MultiTenancy,
}

#[disallowed_until(OmFeature::MultiTenancy, manager = lvm)]
pub const fn tenant_limit(lvm: &LayoutVersionManager<OmFeature>) -> Result<u32, LayoutError> {
    Ok(10)
}

fn main() {}
