//! The shelf's upgrade stages, run by the kit on the shelf's own start-up.

mod common;

use common::{cluster, read, v2_records, write, Node};
use layout_core::{LayoutError, ManagerOptions, StartIntent};
use layout_outside_user::{start, ShelfFeature, COMPONENT_NAME};
use layout_testkit::{ClusterNode, UpgradeTest};

#[test]
fn the_shelf_passes_the_four_upgrade_stages() -> Result<(), Box<dyn std::error::Error>> {
    let report = UpgradeTest::new(cluster())
        .with_old_version(|c| write(c, "old"))
        .with_this_version_pre_finalized(|c| {
            read(c, &["old"])?;
            for node in c.nodes_of::<Node>() {
                assert!(node
                    .manager()?
                    .check_allowed(ShelfFeature::Lengths)
                    .is_err());
            }
            write(c, "pre")?;
            for node in c.nodes() {
                // The v1 writer still serves: release 1 must read it next.
                assert_eq!(v2_records(node)?, 0, "{}", node.name());
            }
            Ok(())
        })
        .with_old_version_downgraded(|c| read(c, &["old", "pre"]))
        .with_this_version_finalized(|c| {
            read(c, &["old", "pre"])?;
            write(c, "new")?;
            for node in c.nodes() {
                // The OnFinalize action rewrote everything; the v2 writer serves.
                assert_eq!(v2_records(node)?, 3, "{}", node.name());
            }
            Ok(())
        })
        .run()?;
    assert!(!report.log.is_empty());
    Ok(())
}

#[test]
fn the_kit_starts_the_shelf_with_its_own_name_and_registry(
) -> Result<(), Box<dyn std::error::Error>> {
    let cluster = cluster().build()?;
    let node = cluster.node::<Node>("shelf-0")?;
    let manager = node.manager()?;
    // The service's options, not a kit default: the component name is the shelf's.
    assert_eq!(manager.component_name(), COMPONENT_NAME);
    assert_eq!(manager.software_layout_version(), 0);
    // The service's real registry, reached through the adapter.
    let finalizer = node.finalizer()?;
    let names: Vec<&str> = finalizer
        .registry()
        .actions()
        .map(layout_core::action::RegisteredAction::name)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // And the typed component: the adapter dereferences to the shelf.
    node.component()?.put("typed", "typed value")?;
    assert_eq!(
        node.component()?.get("typed")?.as_deref(),
        Some("typed value")
    );
    Ok(())
}

#[test]
fn a_directory_the_kit_upgraded_opens_with_the_services_own_start(
) -> Result<(), Box<dyn std::error::Error>> {
    let cluster = cluster().build()?;
    let node = cluster.node::<Node>("shelf-1")?;
    node.component()?.put("kept", "kept value")?;
    node.upgrade()?;
    node.finalize()?;
    node.stop()?;

    // What `main` runs, on the same directory.
    let started = start(node.dir(), ManagerOptions::default())?;
    assert_eq!(started.manager().metadata_layout_version(), 1);
    assert_eq!(
        started.component().get("kept")?.as_deref(),
        Some("kept value")
    );
    drop(started);

    // Release 1 is refused on it, with the manager's error.
    let refused = start(
        node.dir(),
        ManagerOptions::default().with_software_layout_version(0),
    )
    .expect_err("release 1 must not open a finalized shelf");
    assert!(
        matches!(
            refused,
            layout_core::startup::StartupError::Manager(LayoutError::DiskNewerThanSoftware { .. })
        ),
        "{refused}"
    );
    let fresh = tempfile::tempdir()?;
    let started = start(
        fresh.path(),
        ManagerOptions::default().with_start_intent(StartIntent::Init),
    )?;
    assert_eq!(started.manager().component_name(), COMPONENT_NAME);
    Ok(())
}
