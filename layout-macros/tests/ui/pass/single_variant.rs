//! A catalog holding only the initial layout.

use layout_core::LayoutFeature;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
enum ScmFeature {
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
}

fn main() {
    assert_eq!(ScmFeature::ALL, [ScmFeature::InitialVersion]);
    assert_eq!(ScmFeature::CATALOG_NAME, "ScmFeature");
    assert_eq!(ScmFeature::latest(), ScmFeature::InitialVersion);
    assert_eq!(
        ScmFeature::from_layout_version(0),
        Some(ScmFeature::InitialVersion)
    );
    assert_eq!(ScmFeature::from_layout_version(1), None);
    assert_eq!(ScmFeature::InitialVersion.layout_version(), 0);
    assert_eq!(ScmFeature::InitialVersion.name(), "InitialVersion");
    assert_eq!(ScmFeature::InitialVersion.description(), "Initial layout");
    assert!(!ScmFeature::InitialVersion.is_deprecated());
    assert_eq!(layout_core::validate_catalog::<ScmFeature>(), Ok(()));
}
