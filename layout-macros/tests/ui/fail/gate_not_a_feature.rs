use layout_core::{disallowed_until, LayoutAware, LayoutError, LayoutFeature, LayoutVersionManager};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub enum OmFeature {
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
    #[layout(version = 1, description = "Multi-tenancy tables")]
    MultiTenancy,
}

/// An enum that is not a layout catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Color {
    Red,
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
    #[disallowed_until(Color::Red)]
    pub fn paint(&self) -> Result<(), LayoutError> {
        Ok(())
    }
}

fn main() {}
