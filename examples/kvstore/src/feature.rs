//! The kvstore's layout catalog.

use layout_core::LayoutFeature;

/// The layout features of the kvstore, in layout-version order; see the
/// [module docs](super) for what each one changes on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub enum KvFeature {
    /// Table `kv`: key -> value record, JSON-encoded ("v0" encoding); the op log and
    /// the applied index.
    #[layout(
        version = 0,
        description = "Initial layout: table kv with JSON value records"
    )]
    Initial,
    /// Table `kv_expiry` (key -> expires-at ms), created by the first start of a release
    /// that knows it; puts with a TTL only once finalized.
    #[layout(
        version = 1,
        description = "Expiring values: table kv_expiry, puts with a TTL"
    )]
    ExpiringValues,
    /// Secondary index `kv_by_value` (value -> keys), filled by a background migration
    /// while finalizing.
    #[layout(
        version = 2,
        description = "Secondary index kv_by_value, filled by a background migration"
    )]
    ValueIndex,
    /// A compact binary value encoding ("v3"), written once finalized.
    #[layout(version = 3, description = "Compact binary value encoding")]
    CompactEncoding,
    /// `POST /cas/{key}`: compare-and-swap of a value, open once finalized.
    #[layout(version = 4, description = "Compare-and-swap API: POST /cas/{key}")]
    CompareAndSwap,
}
