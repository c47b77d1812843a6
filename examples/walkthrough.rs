//! The upgrade story, step by step, on an embedded default (a temporary directory).
//!
//! Run it with `cargo run --example walkthrough`. No setup needed.
//!
//! 1. The old release (SLV 1) installs an object manager and writes its `VERSION` file.
//! 2. The new release (SLV 3) starts on that disk: pre-finalized, new APIs closed.
//! 3. The old release could still start (downgrade is possible while pre-finalized).
//! 4. The operator finalizes, feature by feature; each step is durable before it is seen.
//! 5. The old release is now refused: the disk is newer than its software.

use std::error::Error;
use std::fs;

use layout_core::{
    FeatureStatus, FileStorage, LayoutFeature, LayoutVersionManager, ManagerOptions, StartIntent,
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
    let new = Manager::open(FileStorage::new(&om_dir), ManagerOptions::default())?;
    print_status(&new);
    print_features(&new);
    match new.check_operation_allowed("CreateTenant", OmFeature::MultiTenancy) {
        Ok(()) => println!("unexpected: CreateTenant was allowed"),
        Err(refused) => println!("CreateTenant is refused:\n    {refused}"),
    }
    drop(new);

    // 3. While pre-finalized, the old release can still start: a downgrade is possible.
    println!("\n== 3. Downgrade check: the old release still starts");
    let old = Manager::open(FileStorage::new(&om_dir), old_release())?;
    print_status(&old);
    drop(old);

    // 4. The operator finalizes, feature by feature.
    println!("\n== 4. The operator finalizes");
    let new = Manager::open(FileStorage::new(&om_dir), ManagerOptions::default())?;
    for feature in new.unfinalized_features() {
        new.finalize_step(feature)?;
        println!(
            "finalized {:<20} MLV is now {}",
            feature.name(),
            new.metadata_layout_version()
        );
    }
    print_status(&new);
    print_features(&new);
    new.check_operation_allowed("CreateTenant", OmFeature::MultiTenancy)?;
    println!("CreateTenant is allowed now.");
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
