//! The data binding: the layout state's data id and the checks a component runs against
//! what its own store records (`layout_core::binding`).

use std::fs;

use layout_core::binding::{self, BindingError, DataBinding};
use layout_core::{
    DataId, FileStorage, LayoutError, LayoutStorage, ManagerOptions, VERSION_FILE_NAME,
};

use crate::catalogs::{init_at, Om, OmFeature};

fn reopen(dir: &std::path::Path) -> Om {
    Om::open(FileStorage::new(dir), ManagerOptions::default()).unwrap()
}

#[test]
fn init_creates_a_data_id_that_survives_restarts_and_never_changes() {
    let dir = tempfile::tempdir().unwrap();
    let lvm = Om::open(FileStorage::new(dir.path()), init_at(0)).unwrap();
    let id = lvm.data_id().expect("Init creates a data id");
    let text = fs::read_to_string(dir.path().join(VERSION_FILE_NAME)).unwrap();
    assert!(text.contains(&format!("data.id={id}\n")), "{text}");
    lvm.finalize_step(OmFeature::BucketLayoutSupport).unwrap();
    let err = lvm
        .update_state(|s| s.data_id = Some(DataId::random()))
        .unwrap_err();
    assert!(
        matches!(err, LayoutError::ForbiddenStateUpdate(_)),
        "{err:?}"
    );
    drop(lvm);
    assert_eq!(reopen(dir.path()).data_id(), Some(id));

    let other = tempfile::tempdir().unwrap();
    let other_lvm = Om::open(FileStorage::new(other.path()), init_at(0)).unwrap();
    assert_ne!(other_lvm.data_id(), Some(id), "each Init makes its own id");
}

#[test]
fn missing_data_is_accepted_only_on_the_start_that_created_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let lvm = Om::open(FileStorage::new(dir.path()), init_at(1)).unwrap();
    binding::check_missing_data(&lvm, "/srv/om/data").unwrap();
    drop(lvm);

    let lvm = reopen(dir.path());
    let err = binding::check_missing_data(&lvm, "/srv/om/data").unwrap_err();
    assert!(matches!(err, BindingError::DataMissing { .. }), "{err:?}");
    let message = err.to_string();
    let id = lvm.data_id().unwrap().to_string();
    for part in [
        "/srv/om/data",
        "does not exist",
        &lvm.storage_location(),
        &id,
        "metadata layout version 1",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

#[test]
fn another_data_id_is_foreign_data() {
    let dir = tempfile::tempdir().unwrap();
    let lvm = Om::open(FileStorage::new(dir.path()), init_at(1)).unwrap();
    let stranger = DataBinding {
        data_id: DataId::from_u128(42),
        written_at_mlv: 1,
    };
    let err = stranger.check(&lvm, "/srv/om/data").unwrap_err();
    assert!(matches!(err, BindingError::ForeignData { .. }), "{err:?}");
    let message = err.to_string();
    for part in [
        "/srv/om/data",
        &DataId::from_u128(42).to_string(),
        &lvm.data_id().unwrap().to_string(),
        &lvm.storage_location(),
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

#[test]
fn data_written_at_a_higher_mlv_refuses_an_older_layout_state() {
    let dir = tempfile::tempdir().unwrap();
    let lvm = Om::open(FileStorage::new(dir.path()), init_at(1)).unwrap();
    let id = lvm.data_id().unwrap();
    let newer = DataBinding {
        data_id: id,
        written_at_mlv: 3,
    };
    let err = newer.check(&lvm, "/srv/om/data").unwrap_err();
    assert!(
        matches!(err, BindingError::LayoutOlderThanData { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    for part in [
        "metadata layout version 1",
        "written at metadata layout version 3",
        "/srv/om/data",
        &lvm.storage_location(),
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    let same = DataBinding {
        data_id: id,
        written_at_mlv: 1,
    };
    same.check(&lvm, "/srv/om/data").unwrap();
    let older = DataBinding {
        data_id: id,
        written_at_mlv: 0,
    };
    older.check(&lvm, "/srv/om/data").unwrap();
}

#[test]
fn checks_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    drop(Om::open(FileStorage::new(dir.path()), init_at(1)).unwrap());
    let before = fs::read(dir.path().join(VERSION_FILE_NAME)).unwrap();
    let lvm = reopen(dir.path());
    let _ = binding::check_missing_data(&lvm, "data");
    let _ = DataBinding {
        data_id: DataId::from_u128(7),
        written_at_mlv: 9,
    }
    .check(&lvm, "data");
    assert_eq!(
        fs::read(dir.path().join(VERSION_FILE_NAME)).unwrap(),
        before
    );
}

/// A VERSION written before data ids existed: the id is adopted on the first bound start.
fn legacy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    drop(Om::open(FileStorage::new(dir.path()), init_at(1)).unwrap());
    let storage = FileStorage::new(dir.path());
    let mut state = storage.load().unwrap().unwrap();
    state.data_id = None;
    storage.store(&state).unwrap();
    let text = fs::read_to_string(dir.path().join(VERSION_FILE_NAME)).unwrap();
    assert!(!text.contains("data.id"), "{text}");
    dir
}

#[test]
fn a_layout_state_without_a_data_id_adopts_the_stores_id() {
    let dir = legacy_dir();
    let lvm = reopen(dir.path());
    assert_eq!(lvm.data_id(), None);
    let found = DataBinding {
        data_id: DataId::from_u128(0xabc),
        written_at_mlv: 1,
    };
    // Without an id of its own the layout state cannot call the data foreign.
    found.check(&lvm, "data").unwrap();
    let bound = binding::adopt(&lvm, Some(&found)).unwrap();
    assert_eq!(bound.data_id, found.data_id);
    assert_eq!(bound.written_at_mlv, 1);
    drop(lvm);
    assert_eq!(reopen(dir.path()).data_id(), Some(found.data_id));
}

#[test]
fn a_layout_state_and_store_without_ids_get_a_new_one() {
    let dir = legacy_dir();
    let lvm = reopen(dir.path());
    let bound = binding::adopt(&lvm, None).unwrap();
    assert_eq!(lvm.data_id(), Some(bound.data_id));
    // Adopting again keeps it.
    assert_eq!(binding::adopt(&lvm, None).unwrap(), bound);
    drop(lvm);
    assert_eq!(reopen(dir.path()).data_id(), Some(bound.data_id));
}

#[test]
fn a_data_id_reads_and_writes_as_32_hex_digits() {
    let id = DataId::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
    assert_eq!(id.to_string(), "0123456789abcdef0011223344556677");
    assert_eq!(id.to_string().parse::<DataId>().unwrap(), id);
    assert!("0123".parse::<DataId>().is_err());
    assert!("0123456789ABCDEF0011223344556677"
        .parse::<DataId>()
        .is_err());
}
