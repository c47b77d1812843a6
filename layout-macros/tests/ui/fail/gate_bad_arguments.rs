use layout_core::{disallowed_until, LayoutAware, LayoutError, LayoutFeature, LayoutVersionManager};

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
    #[disallowed_until]
    pub fn no_arguments(&self) -> Result<(), LayoutError> {
        Ok(())
    }

    #[disallowed_until("MultiTenancy")]
    pub fn feature_as_string(&self) -> Result<(), LayoutError> {
        Ok(())
    }

    #[disallowed_until(manager = self.lvm)]
    pub fn no_feature(&self) -> Result<(), LayoutError> {
        Ok(())
    }

    #[disallowed_until(OmFeature::MultiTenancy, version = 2)]
    pub fn unknown_key(&self) -> Result<(), LayoutError> {
        Ok(())
    }

    #[disallowed_until(OmFeature::MultiTenancy, operation = "A", operation = "B")]
    pub fn repeated_key(&self) -> Result<(), LayoutError> {
        Ok(())
    }

    #[disallowed_until(OmFeature::MultiTenancy, operation = CreateTenant)]
    pub fn operation_not_a_string(&self) -> Result<(), LayoutError> {
        Ok(())
    }

    #[disallowed_until(OmFeature::MultiTenancy, operation = "")]
    pub fn empty_operation(&self) -> Result<(), LayoutError> {
        Ok(())
    }

    #[disallowed_until(OmFeature::MultiTenancy, OmFeature::InitialVersion)]
    pub fn two_features(&self) -> Result<(), LayoutError> {
        Ok(())
    }

    #[disallowed_until(OmFeature::MultiTenancy manager = self.lvm)]
    pub fn missing_comma(&self) -> Result<(), LayoutError> {
        Ok(())
    }
}

fn main() {}
