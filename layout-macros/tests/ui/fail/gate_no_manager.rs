use layout_core::{disallowed_until, LayoutError, LayoutFeature};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub enum OmFeature {
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
    #[layout(version = 1, description = "Multi-tenancy tables")]
    MultiTenancy,
}

// No `self`, no `manager =`: there is no manager to check against, and no fallback.
#[disallowed_until(OmFeature::MultiTenancy)]
pub fn create_tenant(name: &str) -> Result<String, LayoutError> {
    Ok(name.to_owned())
}

pub struct Om;

impl Om {
    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn new_tenant() -> Result<(), LayoutError> {
        Ok(())
    }
}

fn main() {}
