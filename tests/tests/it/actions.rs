//! The action registry: builder and `#[upgrade_action]` into one registry, and every
//! wiring problem reported at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use layout_core::action::{ActionOrigin, RegistryProblem};
use layout_core::{
    upgrade_action, ActionContext, ActionError, ActionRegistry, MemoryStorage, Phase,
    UpgradeFinalizer,
};

use crate::catalogs::{init_at, Om, OmFeature, OmFeatureRenamed};

/// A component type whose actions are registered with the attribute.
#[derive(Default)]
struct AttrService {
    tables: AtomicUsize,
}

#[derive(Debug)]
struct TableError;

impl From<TableError> for ActionError {
    fn from(_: TableError) -> Self {
        ActionError::new("table error")
    }
}

#[upgrade_action(OmFeature::MultiTenancy, phase = OnFinalize)]
fn create_tenant_tables(
    svc: &AttrService,
    ctx: &ActionContext<'_, OmFeature>,
) -> Result<(), TableError> {
    assert_eq!(ctx.feature(), OmFeature::MultiTenancy);
    assert_eq!(ctx.phase(), Phase::OnFinalize);
    svc.tables.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[upgrade_action(OmFeature::SnapshotDiff, phase = ValidateInPrefinalize, name = "check-snapshot-dir")]
fn check_snapshot_dir(
    _svc: &AttrService,
    _ctx: &ActionContext<'_, OmFeature>,
) -> Result<(), ActionError> {
    Ok(())
}

/// A component type with an attribute action of the *wrong* catalog: it would never run.
struct MisWired;

#[upgrade_action(OmFeatureRenamed::Tenants, phase = OnFinalize)]
fn miswired(_c: &MisWired, _ctx: &ActionContext<'_, OmFeatureRenamed>) -> Result<(), ActionError> {
    Ok(())
}

type Registry<C> = ActionRegistry<OmFeature, C>;

#[test]
fn attribute_and_builder_actions_end_in_one_registry_and_run() {
    let registry = Registry::<AttrService>::builder()
        .with_registered()
        .on_finalize(OmFeature::SnapshotDiff, |svc: &AttrService, _ctx| {
            svc.tables.fetch_add(10, Ordering::SeqCst);
            Ok(())
        })
        .build()
        .unwrap();
    registry
        .expect(&[
            (OmFeature::MultiTenancy, Phase::OnFinalize),
            (OmFeature::SnapshotDiff, Phase::ValidateInPrefinalize),
            (OmFeature::SnapshotDiff, Phase::OnFinalize),
        ])
        .unwrap();
    let listed: Vec<_> = registry
        .actions()
        .map(|a| (a.feature(), a.phase(), a.name().to_owned()))
        .collect();
    assert_eq!(listed.len(), 3);
    assert!(listed.contains(&(
        OmFeature::SnapshotDiff,
        Phase::ValidateInPrefinalize,
        "check-snapshot-dir".into()
    )));
    let attr = registry
        .get(OmFeature::MultiTenancy, Phase::OnFinalize)
        .unwrap();
    assert_eq!(attr.name(), "create_tenant_tables");
    assert!(
        matches!(attr.origin(), ActionOrigin::Attribute { file, .. } if file.ends_with("actions.rs"))
    );

    let lvm = Arc::new(Om::open(MemoryStorage::new(), init_at(1)).unwrap());
    let finalizer = UpgradeFinalizer::new(lvm, registry);
    let svc = AttrService::default();
    finalizer.finalize("admin", &svc).unwrap();
    assert_eq!(
        svc.tables.load(Ordering::SeqCst),
        11,
        "both the attribute and the builder action ran once"
    );
}

#[test]
fn build_reports_every_problem_at_once() {
    let err = Registry::<AttrService>::builder()
        .with_registered()
        .action(
            OmFeature::MultiTenancy,
            Phase::OnFinalize,
            "second_tables",
            |_s, _c| Ok(()),
        )
        .action(
            OmFeature::InitialVersion,
            Phase::OnFirstUpgradeStart,
            "never_runs",
            |_s, _c| Ok(()),
        )
        .action(OmFeature::SnapshotDiff, Phase::OnFinalize, "a", |_s, _c| {
            Ok(())
        })
        .action(OmFeature::SnapshotDiff, Phase::OnFinalize, "b", |_s, _c| {
            Ok(())
        })
        .build()
        .unwrap_err();
    assert_eq!(err.problems.len(), 3, "{err}");
    assert!(err.problems.iter().any(|p| matches!(p,
        RegistryProblem::Duplicate { feature: "MultiTenancy", phase: Phase::OnFinalize, first, second }
            if first.contains("create_tenant_tables") && second.contains("second_tables"))));
    assert!(err.problems.iter().any(|p| matches!(
        p,
        RegistryProblem::InitialLayout {
            feature: "InitialVersion",
            ..
        }
    )));
    assert!(err.problems.iter().any(|p| matches!(
        p,
        RegistryProblem::Duplicate {
            feature: "SnapshotDiff",
            ..
        }
    )));
    let msg = err.to_string();
    assert!(
        msg.contains("never_runs") && msg.contains("second_tables"),
        "{msg}"
    );
}

#[test]
fn an_attribute_action_of_another_catalog_for_this_component_is_an_error() {
    let err = Registry::<MisWired>::builder()
        .with_registered()
        .build()
        .unwrap_err();
    assert!(
        matches!(&err.problems[..], [RegistryProblem::ForeignCatalog { catalog: "OmFeatureRenamed", expected: "OmFeature", action }]
            if action.contains("miswired")),
        "{err}"
    );
    // With its own catalog, the same action is found.
    let own = ActionRegistry::<OmFeatureRenamed, MisWired>::builder()
        .with_registered()
        .build()
        .unwrap();
    assert_eq!(own.len(), 1);
}

#[test]
fn expect_names_every_missing_action() {
    let registry = Registry::<AttrService>::builder().build().unwrap();
    assert!(registry.is_empty());
    let err = registry
        .expect(&[
            (OmFeature::MultiTenancy, Phase::OnFinalize),
            (OmFeature::SnapshotDiff, Phase::OnFirstUpgradeStart),
        ])
        .unwrap_err();
    assert_eq!(
        err.problems,
        [
            RegistryProblem::Missing {
                feature: "MultiTenancy",
                phase: Phase::OnFinalize
            },
            RegistryProblem::Missing {
                feature: "SnapshotDiff",
                phase: Phase::OnFirstUpgradeStart
            },
        ]
    );
    assert!(err.to_string().contains("with_registered"), "{err}");
}

#[test]
fn without_with_registered_attribute_actions_are_not_taken_in() {
    let registry = Registry::<AttrService>::builder().build().unwrap();
    assert!(registry
        .expect(&[(OmFeature::MultiTenancy, Phase::OnFinalize)])
        .is_err());
}
