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

impl Om {
    #[disallowed_until(OmFeature::MultiTenancy)]
    pub fn create_tenant(&self, name: &str) {
        let _ = name;
    }
}

fn main() {}
