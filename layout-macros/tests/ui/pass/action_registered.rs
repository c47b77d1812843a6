//! `#[upgrade_action]` in its accepted forms: every phase, a custom name, an error type
//! that converts into `ActionError`, the catalog named through a module path.

use layout_core::{upgrade_action, ActionContext, ActionError, ActionRegistry, Phase};

mod catalog {
    use layout_core::LayoutFeature;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
    pub enum OmFeature {
        #[layout(version = 0, description = "Initial layout")]
        Initial,
        #[layout(version = 1, description = "Multi-tenancy tables")]
        MultiTenancy,
    }
}

use catalog::OmFeature;

pub struct Om;

#[derive(Debug)]
pub struct TableError;

impl From<TableError> for ActionError {
    fn from(_: TableError) -> Self {
        ActionError::new("table error")
    }
}

#[upgrade_action(catalog::OmFeature::MultiTenancy, phase = OnFinalize)]
fn create_tables(_om: &Om, _ctx: &ActionContext<'_, OmFeature>) -> Result<(), TableError> {
    Err(TableError)
}

#[upgrade_action(OmFeature::MultiTenancy, phase = Phase::ValidateInPrefinalize, name = "check-config")]
fn check(_om: &Om, _ctx: &ActionContext<'_, OmFeature>) -> Result<(), ActionError> {
    Ok(())
}

#[upgrade_action(OmFeature::MultiTenancy, phase = OnFirstUpgradeStart,)]
pub(crate) fn prepare_dirs(_om: &Om, ctx: &ActionContext<'_, OmFeature>) -> Result<(), ActionError> {
    ctx.message("dirs");
    Ok(())
}

fn main() {
    let registry = ActionRegistry::<OmFeature, Om>::builder()
        .with_registered()
        .build()
        .expect("no wiring problem");
    registry
        .expect(&[
            (OmFeature::MultiTenancy, Phase::OnFinalize),
            (OmFeature::MultiTenancy, Phase::ValidateInPrefinalize),
            (OmFeature::MultiTenancy, Phase::OnFirstUpgradeStart),
        ])
        .expect("all three registered");
    let action = registry.get(OmFeature::MultiTenancy, Phase::OnFinalize).expect("registered");
    let ctx = ActionContext::detached(OmFeature::MultiTenancy, Phase::OnFinalize);
    let err = action.run(&Om, &ctx).expect_err("the action fails");
    assert_eq!(err.to_string(), "table error");
    assert_eq!(
        registry.get(OmFeature::MultiTenancy, Phase::ValidateInPrefinalize).expect("registered").name(),
        "check-config"
    );
    // Direct calls still work: the function is unchanged.
    assert!(prepare_dirs(&Om, &ctx).is_ok());
    assert!(check(&Om, &ctx).is_ok());
}
