//! The upgrade story, step by step, on an embedded default (a temporary directory).
//!
//! Run it with `cargo run --example walkthrough`. No setup needed.
//!
//! 1. The old release (SLV 1) installs an object manager and writes its `VERSION` file.
//! 2. The new release (SLV 3) starts on that disk: pre-finalized, new APIs closed.
//! 3. The old release could still start (downgrade is possible while pre-finalized).
//! 4. The operator finalizes, feature by feature, watching progress; each step runs the
//!    feature's finalize action, then is stored durably, then is visible.
//! 5. The old release is now refused: the disk is newer than its software.

use std::error::Error;
use std::fs;
use std::sync::Arc;
use std::time::Duration;

use layout_core::{
    ActionContext, ActionError, ActionRegistry, FeatureStatus, FileStorage, FinalizationStatus,
    LayoutFeature, LayoutVersionManager, ManagerOptions, StartIntent, UpgradeFinalizer,
};

/// The object manager's layout catalog: one entry per backward-incompatible change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
enum OmFeature {
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
    #[layout(version = 1, description = "Buckets carry a storage layout")]
    BucketLayoutSupport,
    #[layout(version = 2, description = "Multi-tenancy tables")]
    MultiTenancy,
    #[layout(version = 3, description = "Snapshot diff tables")]
    SnapshotDiff,
}

type Manager = LayoutVersionManager<OmFeature>;

/// The object manager itself (a real one would hold its database here).
struct ObjectManager;

/// Multi-tenancy's finalize action: create the tenant tables, in batches, reporting progress.
fn create_tenant_tables(
    _om: &ObjectManager,
    ctx: &ActionContext<'_, OmFeature>,
) -> Result<(), ActionError> {
    const BATCHES: u64 = 4;
    for batch in 1..=BATCHES {
        ctx.check_cancelled()?;
        std::thread::sleep(Duration::from_millis(40)); // the work of one batch
        ctx.report_progress(batch, Some(BATCHES));
    }
    ctx.message("tenant tables created");
    Ok(())
}

/// The upgrade actions of the new release.
fn actions() -> Result<ActionRegistry<OmFeature, ObjectManager>, Box<dyn Error>> {
    Ok(ActionRegistry::builder()
        .validate_in_prefinalize(OmFeature::MultiTenancy, |_om, _ctx| {
            // e.g. check that the configuration names a tenant directory
            Ok(())
        })
        .on_first_upgrade_start(OmFeature::SnapshotDiff, |_om, ctx| {
            ctx.message("created the (still unused) snapshot-diff directory");
            Ok(())
        })
        .on_finalize(OmFeature::MultiTenancy, create_tenant_tables)
        .build()?)
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let om_dir = dir.path().join("om");
    println!("Object manager directory: {}\n", om_dir.display());

    // 1. The old release: it knows features up to version 1.
    let old_release = || ManagerOptions::default().with_software_layout_version(1);
    let old = Manager::open(
        FileStorage::new(&om_dir),
        old_release().with_start_intent(StartIntent::Init),
    )?;
    println!("== 1. The old release (SLV 1) installs the component");
    print_status(&old);
    drop(old);
    println!("The VERSION file it wrote:\n");
    for line in fs::read_to_string(om_dir.join("VERSION"))?.lines() {
        println!("    {line}");
    }

    // 2. The new release starts on the old layout: pre-finalized.
    println!("\n== 2. The new release (SLV 3) starts on the old layout");
    let new = Arc::new(Manager::open(
        FileStorage::new(&om_dir),
        ManagerOptions::default().with_start_intent(StartIntent::Upgrade),
    )?);
    let finalizer = UpgradeFinalizer::new(Arc::clone(&new), actions()?);
    let ran = finalizer.run_prefinalize_actions(&ObjectManager)?;
    println!(
        "start-up actions: validated {:?}, first-upgrade actions ran for {:?}",
        ran.validated, ran.first_upgrade
    );
    print_status(&new);
    print_features(&new);
    match new.check_operation_allowed("CreateTenant", OmFeature::MultiTenancy) {
        Ok(()) => println!("unexpected: CreateTenant was allowed"),
        Err(refused) => println!("CreateTenant is refused:\n    {refused}"),
    }
    drop(finalizer);
    drop(new);

    // 3. While pre-finalized, the old release can still start: a downgrade is possible.
    println!("\n== 3. Downgrade check: the old release still starts");
    let old = Manager::open(FileStorage::new(&om_dir), old_release())?;
    print_status(&old);
    drop(old);

    // 4. The operator finalizes, feature by feature.
    println!("\n== 4. The operator finalizes");
    let new = Arc::new(Manager::open(
        FileStorage::new(&om_dir),
        ManagerOptions::default(),
    )?);
    let finalizer = Arc::new(UpgradeFinalizer::new(Arc::clone(&new), actions()?));
    finalizer.run_prefinalize_actions(&ObjectManager)?;
    let plan = finalizer.dry_run(None, &ObjectManager)?;
    println!(
        "dry run: finalize layout versions {} -> {}:",
        plan.from_version, plan.target_version
    );
    for step in &plan.steps {
        let action = step.action.as_deref().unwrap_or("(no finalize action)");
        println!("    {:<20} {action}", step.feature.name());
    }
    let handle = finalizer.start_finalize(None, "operator".into(), Arc::new(ObjectManager));
    loop {
        let done = handle.is_finished();
        let status = finalizer.report_status(Some("operator"), false)?;
        if let Some(p) = &status.progress {
            let units = p
                .total
                .map_or(String::new(), |t| format!(", {}/{t}", p.done));
            println!(
                "    [{}] feature {}/{}: {}{units}",
                status.status,
                p.feature_index,
                p.feature_count,
                p.feature.name()
            );
        }
        for message in status.messages {
            println!("    message: {message}");
        }
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    let outcome = handle.join()?;
    println!("finalized {:?}", outcome.finalized());
    assert_eq!(
        finalizer.report_status(None, false)?.status,
        FinalizationStatus::FinalizationDone
    );
    print_status(&new);
    print_features(&new);
    new.check_operation_allowed("CreateTenant", OmFeature::MultiTenancy)?;
    println!("CreateTenant is allowed now.");
    drop(finalizer);
    drop(new);

    // 5. The old release is refused: the disk is newer than its software.
    println!("\n== 5. The old release is refused after finalization");
    match Manager::open(FileStorage::new(&om_dir), old_release()) {
        Ok(_) => println!("unexpected: the old release started"),
        Err(refused) => println!("{refused}"),
    }
    Ok(())
}

fn print_status(lvm: &Manager) {
    let state = if lvm.needs_finalization() {
        "pre-finalized (finalization required; downgrade still possible)"
    } else {
        "finalized"
    };
    println!(
        "component {}: MLV {} ({}), SLV {} ({}): {state}",
        lvm.component_name(),
        lvm.metadata_layout_version(),
        lvm.metadata_layout_feature().name(),
        lvm.software_layout_version(),
        lvm.software_layout_feature().name(),
    );
}

fn print_features(lvm: &Manager) {
    println!(
        "\n    {:<8} {:<20} {:<15} description",
        "version", "feature", "status"
    );
    for info in lvm.features() {
        let status = match info.status {
            FeatureStatus::Finalized => "finalized",
            FeatureStatus::NotFinalized => "NOT finalized",
            FeatureStatus::BeyondSoftware => "beyond SLV",
        };
        println!(
            "    {:<8} {:<20} {:<15} {}",
            info.feature.layout_version(),
            info.feature.name(),
            status,
            info.feature.description()
        );
    }
    println!();
}
