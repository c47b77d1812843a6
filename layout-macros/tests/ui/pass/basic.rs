use layout_core::LayoutFeature;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub enum OmFeature {
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
    #[layout(version = 1, description = "Buckets carry a storage layout")]
    BucketLayoutSupport,
    #[layout(version = 2, description = "Multi-tenancy tables")]
    MultiTenancy,
}

fn main() {
    use OmFeature::*;

    assert_eq!(
        OmFeature::ALL,
        [InitialVersion, BucketLayoutSupport, MultiTenancy]
    );
    assert_eq!(OmFeature::CATALOG_NAME, "OmFeature");
    assert_eq!(OmFeature::latest(), MultiTenancy);

    assert_eq!(InitialVersion.layout_version(), 0);
    assert_eq!(BucketLayoutSupport.layout_version(), 1);
    assert_eq!(MultiTenancy.layout_version(), 2);

    assert_eq!(OmFeature::from_layout_version(0), Some(InitialVersion));
    assert_eq!(OmFeature::from_layout_version(1), Some(BucketLayoutSupport));
    assert_eq!(OmFeature::from_layout_version(2), Some(MultiTenancy));
    assert_eq!(OmFeature::from_layout_version(3), None);
    assert_eq!(OmFeature::from_layout_version(u32::MAX), None);

    assert_eq!(InitialVersion.name(), "InitialVersion");
    assert_eq!(BucketLayoutSupport.name(), "BucketLayoutSupport");
    assert_eq!(OmFeature::from_name("MultiTenancy"), Some(MultiTenancy));
    assert_eq!(OmFeature::from_name("multitenancy"), None);

    assert_eq!(InitialVersion.description(), "Initial layout");
    assert_eq!(
        BucketLayoutSupport.description(),
        "Buckets carry a storage layout"
    );
    assert_eq!(MultiTenancy.description(), "Multi-tenancy tables");

    assert!(OmFeature::ALL.iter().all(|f| !f.is_deprecated()));

    // The derived `Ord` follows layout versions.
    assert!(InitialVersion < BucketLayoutSupport && BucketLayoutSupport < MultiTenancy);
    assert_eq!(layout_core::validate_catalog::<OmFeature>(), Ok(()));
}
