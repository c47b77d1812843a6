use layout_core::{disallowed_until, LayoutError, LayoutFeature};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub enum OmFeature {
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
    #[layout(version = 1, description = "Multi-tenancy tables")]
    MultiTenancy,
}

/// Has a manager somewhere, but does not say so with `LayoutAware`.
pub struct Om;

impl Om {
    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn create_tenant(&self) -> Result<(), LayoutError> {
        Ok(())
    }
}

fn main() {}
