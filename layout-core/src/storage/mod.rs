//! Where the layout state lives.
//!
//! [`LayoutStorage`] is the trait; [`FileStorage`] keeps a human-readable, checksummed
//! `VERSION` file in the component's directory and replaces it atomically;
//! [`MemoryStorage`] keeps it in memory for tests and can inject failures. Components
//! that keep their own replicated database may implement the trait over it.
//!
//! [`LayoutStorage`]: crate::LayoutStorage
//! [`FileStorage`]: crate::FileStorage
//! [`MemoryStorage`]: crate::MemoryStorage

// The main path (`LayoutStorage`, `StorageError`, `FileStorage`, `MemoryStorage`) is
// re-exported at the crate root, and only there; this module holds the rest.
pub(crate) mod contract;
pub(crate) mod file;
pub mod format;
pub(crate) mod memory;

pub use contract::VersionFileChange;
pub use file::VERSION_FILE_NAME;
pub use memory::InjectedFailure;
