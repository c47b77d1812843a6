//! Where the authoritative prepare marker lives: the layout state, through the manager.

use crate::error::LayoutError;
use crate::feature::LayoutFeature;
use crate::manager::LayoutVersionManager;
use crate::options::StartIntent;

/// Where the authoritative marker lives: the layout state, through the manager.
pub(super) trait MarkerRecord: Send + Sync {
    fn component(&self) -> &str;
    fn location(&self) -> String;
    fn intent(&self) -> StartIntent;
    fn prepare_index(&self) -> Option<u64>;
    fn store_prepare_index(&self, index: Option<u64>) -> Result<(), LayoutError>;
}

impl<F: LayoutFeature> MarkerRecord for LayoutVersionManager<F> {
    fn component(&self) -> &str {
        self.component_name()
    }
    fn location(&self) -> String {
        self.storage_location()
    }
    fn intent(&self) -> StartIntent {
        self.start_intent()
    }
    fn prepare_index(&self) -> Option<u64> {
        self.state().prepare_index
    }
    fn store_prepare_index(&self, index: Option<u64>) -> Result<(), LayoutError> {
        self.update_state(|s| s.prepare_index = index)
    }
}
