//! Binding a component's data to its layout state, checked at start-up.
//!
//! The layout state (the `VERSION` file) and the component's data live side by side, and
//! either can go missing or be replaced on its own: a deleted database, a restored backup
//! of one but not the other, another node's data copied in. The manager alone cannot
//! tell; the component's store can, if it records two facts next to its data:
//!
//! - the [`DataId`] of the layout state it belongs to (created at
//!   [`StartIntent::Init`](crate::StartIntent::Init), see [`LayoutState::data_id`](crate::state::LayoutState::data_id));
//! - the MLV it was last written at.
//!
//! That record is a [`DataBinding`]. At start-up, after opening the manager and before
//! serving anything, the component checks what it finds:
//!
//! | the store holds | check | refused with |
//! |---|---|---|
//! | nothing (missing, empty) | [`check_missing_data`] | [`BindingError::DataMissing`], unless this start created the layout state (a fresh install) |
//! | another data id | [`DataBinding::check`] | [`BindingError::ForeignData`] |
//! | data written at an MLV above the state's | [`DataBinding::check`] | [`BindingError::LayoutOlderThanData`] |
//! | no binding (a store from before bindings existed) | — | adopted: see [`adopt`] |
//!
//! Every check only reads: a refused start writes nothing, neither the layout state nor
//! the data. When the checks pass, the component calls [`adopt`] and records the binding
//! it returns in its store: once at creation, and again in every transaction that writes
//! data (or at least whenever the MLV has moved since the last record), so the recorded
//! MLV is never below the layout its data is written in.
//!
//! On redb, `binding::redb::open` (cargo feature `redb`) does the whole recipe in one
//! call and `binding::redb::record_written_at` records the MLV in the component's own
//! transactions; `docs/data-binding.md` has the recipe for other stores.
//!
//! ```
//! use layout_core::binding::{self, DataBinding};
//! use layout_core::{LayoutFeature, LayoutVersionManager, ManagerOptions, MemoryStorage, StartIntent};
//!
//! #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
//! enum Feature {
//!     #[layout(version = 0, description = "Initial layout")]
//!     Initial,
//! }
//!
//! let storage = std::sync::Arc::new(MemoryStorage::new());
//! let opts = ManagerOptions::default().with_start_intent(StartIntent::Init);
//! let lvm = LayoutVersionManager::<Feature>::open(storage.clone(), opts)?;
//! // A fresh install: no data yet, and this start created the layout state.
//! binding::check_missing_data(&lvm, "data/db")?;
//! let record: DataBinding = binding::adopt(&lvm, None)?; // written into the new store
//! drop(lvm);
//!
//! // Next start: the store's record must match the layout state.
//! let lvm = LayoutVersionManager::<Feature>::open(storage, ManagerOptions::default())?;
//! record.check(&lvm, "data/db")?;
//! // The store is gone: refused, not started empty.
//! assert!(binding::check_missing_data(&lvm, "data/db").is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#[cfg(feature = "redb")]
pub mod redb;

use crate::error::LayoutError;
use crate::feature::LayoutFeature;
use crate::manager::LayoutVersionManager;
use crate::state::DataId;

/// What a component's store records about the layout it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataBinding {
    /// The [`DataId`] of the layout state the data belongs to.
    pub data_id: DataId,
    /// The metadata layout version (MLV) the data was last written at.
    pub written_at_mlv: u32,
}

/// Why a component's data does not belong to its layout state. Each names both sides:
/// the layout state's location and what it says, the data's location and what it says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindingError {
    /// The layout state exists (this is not a fresh install) but the data does not, or is
    /// empty. Starting would serve an empty store at a layout version that says otherwise.
    #[error(
        "component {component}: the layout state at {layout_location} (metadata layout \
         version {metadata_layout_version}, data id {data_id}) belongs to existing data, but \
         the data at {data_location} {found}; refusing to start with empty data. Restore the \
         data (or the whole node from one backup); if this is a new installation whose first \
         start failed before it wrote any data, remove the layout state and start again"
    )]
    DataMissing {
        /// The component.
        component: String,
        /// Where the layout state lives.
        layout_location: String,
        /// The MLV the layout state records.
        metadata_layout_version: u32,
        /// The layout state's data id, or `none` for a state written before data ids.
        data_id: String,
        /// Where the data was looked for.
        data_location: String,
        /// What was found: `does not exist`, `is empty`, ...
        found: String,
    },

    /// The data records another data id: it belongs to another layout state (another
    /// node's data, or data of an earlier installation).
    #[error(
        "component {component}: the data at {data_location} belongs to data id \
         {data_data_id}, but the layout state at {layout_location} belongs to data id \
         {layout_data_id}; this is another node's or another installation's data. Put back \
         the data and layout state that belong together"
    )]
    ForeignData {
        /// The component.
        component: String,
        /// Where the layout state lives.
        layout_location: String,
        /// The layout state's data id.
        layout_data_id: DataId,
        /// Where the data lives.
        data_location: String,
        /// The data id the data records.
        data_data_id: DataId,
    },

    /// The data was written at a higher MLV than the layout state records: an older
    /// layout state (a backup from before a finalization) was restored over newer data.
    #[error(
        "component {component}: the layout state at {layout_location} records metadata \
         layout version {metadata_layout_version}, but the data at {data_location} was \
         written at metadata layout version {data_written_at}; the layout state is older than \
         the data (an old VERSION restored over newer data?). Restore the layout state that \
         was in place when the data was written, or restore both from the same backup"
    )]
    LayoutOlderThanData {
        /// The component.
        component: String,
        /// Where the layout state lives.
        layout_location: String,
        /// The MLV the layout state records.
        metadata_layout_version: u32,
        /// Where the data lives.
        data_location: String,
        /// The MLV the data was last written at.
        data_written_at: u32,
    },
}

impl DataBinding {
    /// Checks this record, read from the component's store at `data_location`, against
    /// the layout state of `manager`. Reads only.
    ///
    /// - The data ids differ: [`BindingError::ForeignData`]. A layout state without a data
    ///   id (written before data ids existed) cannot tell and accepts any id; [`adopt`]
    ///   then records this one in it.
    /// - The data was written at an MLV above the manager's:
    ///   [`BindingError::LayoutOlderThanData`].
    pub fn check<F: LayoutFeature>(
        &self,
        manager: &LayoutVersionManager<F>,
        data_location: &str,
    ) -> Result<(), BindingError> {
        if let Some(layout_data_id) = manager.data_id() {
            if layout_data_id != self.data_id {
                return Err(BindingError::ForeignData {
                    component: manager.component_name().to_owned(),
                    layout_location: manager.storage_location(),
                    layout_data_id,
                    data_location: data_location.to_owned(),
                    data_data_id: self.data_id,
                });
            }
        }
        let mlv = manager.metadata_layout_version();
        if self.written_at_mlv > mlv {
            return Err(BindingError::LayoutOlderThanData {
                component: manager.component_name().to_owned(),
                layout_location: manager.storage_location(),
                metadata_layout_version: mlv,
                data_location: data_location.to_owned(),
                data_written_at: self.written_at_mlv,
            });
        }
        Ok(())
    }
}

/// Checks that the component may start although its data at `data_location` is missing
/// or empty: only when this start created the layout state
/// ([`LayoutVersionManager::was_created`]: a fresh install). Otherwise
/// [`BindingError::DataMissing`] (`found`: "does not exist"). Reads only.
pub fn check_missing_data<F: LayoutFeature>(
    manager: &LayoutVersionManager<F>,
    data_location: &str,
) -> Result<(), BindingError> {
    check_data_found(manager, data_location, "does not exist")
}

/// Like [`check_missing_data`], saying what was found instead of the data (`"is
/// empty"`, `"has no database file"`).
pub fn check_data_found<F: LayoutFeature>(
    manager: &LayoutVersionManager<F>,
    data_location: &str,
    found: &str,
) -> Result<(), BindingError> {
    if manager.was_created() {
        return Ok(());
    }
    Err(BindingError::DataMissing {
        component: manager.component_name().to_owned(),
        layout_location: manager.storage_location(),
        metadata_layout_version: manager.metadata_layout_version(),
        data_id: manager
            .data_id()
            .map_or_else(|| "none".to_owned(), |id| id.to_string()),
        data_location: data_location.to_owned(),
        found: found.to_owned(),
    })
}

/// The binding the component records in its store now, after its checks passed: the
/// layout state's data id and its current MLV.
///
/// A layout state written before data ids existed has none: it adopts the id the store
/// already records (`found`), or a new random one when the store has none either (a
/// store from before bindings existed), and stores it durably before returning, so the
/// layout state always knows the id before the store does. This is the one write, and it
/// happens only after the checks passed.
pub fn adopt<F: LayoutFeature>(
    manager: &LayoutVersionManager<F>,
    found: Option<&DataBinding>,
) -> Result<DataBinding, LayoutError> {
    let data_id = if let Some(id) = manager.data_id() {
        id
    } else {
        let id = found.map_or_else(DataId::random, |b| b.data_id);
        manager.update_state(|state| *state.data_id.get_or_insert(id))?
    };
    Ok(DataBinding {
        data_id,
        written_at_mlv: manager.metadata_layout_version(),
    })
}
