//! `deprecated`, doc comments and other attributes on the enum and its variants.
#![deny(warnings)]

use layout_core::LayoutFeature;

/// The data node's catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
#[non_exhaustive]
#[repr(u8)]
pub enum DnFeature {
    /// The layout of the first release.
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
    /// Superseded by `SchemaV3`, kept so that old disks still open.
    #[deprecated(note = "superseded by SchemaV3")]
    #[layout(deprecated, description = "Schema v2 container layout", version = 1)]
    SchemaV2,
    #[doc = "Written as an attribute."]
    #[cfg_attr(all(), allow(unused))]
    #[layout(
        version = 2u32,
        description = r#"Containers in one "schema v3" RocksDB"#
    )]
    SchemaV3,
    // A raw identifier: the stored name is the plain one.
    #[allow(non_camel_case_types)]
    #[layout(version = 0x3, description = "Data moves to the new layout")]
    r#move,
}

#[allow(deprecated)]
fn main() {
    use DnFeature::*;

    assert_eq!(DnFeature::ALL, [InitialVersion, SchemaV2, SchemaV3, r#move]);
    assert_eq!(DnFeature::latest(), r#move);
    assert_eq!(DnFeature::from_layout_version(1), Some(SchemaV2));
    assert_eq!(DnFeature::from_layout_version(4), None);

    assert!(!InitialVersion.is_deprecated());
    assert!(SchemaV2.is_deprecated());
    assert!(!SchemaV3.is_deprecated());
    assert!(!r#move.is_deprecated());

    assert_eq!(SchemaV2.name(), "SchemaV2");
    assert_eq!(SchemaV2.description(), "Schema v2 container layout");
    assert_eq!(SchemaV3.layout_version(), 2);
    assert_eq!(
        SchemaV3.description(),
        "Containers in one \"schema v3\" RocksDB"
    );
    assert_eq!(r#move.name(), "move");
    assert_eq!(r#move.layout_version(), 3);
    assert_eq!(DnFeature::from_name("move"), Some(r#move));

    assert_eq!(layout_core::validate_catalog::<DnFeature>(), Ok(()));
}
