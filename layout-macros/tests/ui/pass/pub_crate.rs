//! A `pub(crate)` catalog in a module, used from outside it.

mod recon {
    #[derive(
        Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, layout_core::LayoutFeature,
    )]
    pub(crate) enum ReconFeature {
        #[layout(version = 0, description = "Initial layout")]
        InitialVersion,
        #[layout(
            version = 1,
            description = "Container health in its own table",
            deprecated
        )]
        ContainerHealthTable,
    }
}

use layout_core::LayoutFeature;
use recon::ReconFeature;

fn main() {
    assert_eq!(
        ReconFeature::ALL,
        [
            ReconFeature::InitialVersion,
            ReconFeature::ContainerHealthTable
        ]
    );
    assert_eq!(ReconFeature::CATALOG_NAME, "ReconFeature");
    assert_eq!(ReconFeature::latest(), ReconFeature::ContainerHealthTable);
    assert_eq!(
        ReconFeature::from_layout_version(1),
        Some(ReconFeature::ContainerHealthTable)
    );
    assert_eq!(
        ReconFeature::ContainerHealthTable.name(),
        "ContainerHealthTable"
    );
    assert_eq!(
        ReconFeature::ContainerHealthTable.description(),
        "Container health in its own table"
    );
    assert!(ReconFeature::ContainerHealthTable.is_deprecated());
    assert!(!ReconFeature::InitialVersion.is_deprecated());
    assert_eq!(layout_core::validate_catalog::<ReconFeature>(), Ok(()));
}
