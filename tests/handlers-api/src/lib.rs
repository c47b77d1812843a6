//! Test fixture: the catalog and the handler trait that `layout-handlers-fixture` registers
//! handlers for.
//!
//! They live apart from the handlers so that a test can name them without referencing the
//! handlers' crate: only then does the linking pitfall of `#[belongs_to_layout_version]`
//! show (a crate that nothing references is not linked, and its registrations vanish).

use layout_core::LayoutFeature;

/// A small component's catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub enum DemoFeature {
    /// The initial layout.
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    /// Keys are stored compacted.
    #[layout(version = 1, description = "Compacted key records")]
    CompactKeys,
    /// Tenants get their own tables.
    #[layout(version = 2, description = "Multi-tenancy tables")]
    MultiTenancy,
}

/// A request handler, one implementation per layout version.
pub trait RequestHandler: Send + Sync {
    /// The layout version this implementation was written for.
    fn layout_version(&self) -> u32;

    /// Handles a request.
    fn handle(&self, request: &str) -> String;
}
