use layout_core::{upgrade_action, ActionContext, ActionError, LayoutFeature};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
enum OmFeature {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "Multi-tenancy tables")]
    MultiTenancy,
}

struct Om;

#[upgrade_action(OmFeature::MultiTenancy)]
fn create(_om: &Om, _ctx: &ActionContext<'_, OmFeature>) -> Result<(), ActionError> {
    Ok(())
}

fn main() {}
