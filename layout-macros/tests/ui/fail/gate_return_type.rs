use layout_core::{disallowed_until, LayoutAware, LayoutFeature, LayoutVersionManager};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub enum OmFeature {
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
    #[layout(version = 1, description = "Multi-tenancy tables")]
    MultiTenancy,
}

pub struct Om {
    lvm: LayoutVersionManager<OmFeature>,
}

impl LayoutAware<OmFeature> for Om {
    fn layout_manager(&self) -> &LayoutVersionManager<OmFeature> {
        &self.lvm
    }
}

pub type OmResult<T> = Result<T, String>;

impl Om {
    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn count(&self) -> u32 {
        1
    }

    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn find(&self) -> Option<u32> {
        Some(1)
    }

    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn error_without_from(&self) -> Result<u32, String> {
        Ok(1)
    }

    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn alias_without_from(&self) -> OmResult<u32> {
        Ok(1)
    }
}

fn main() {}
