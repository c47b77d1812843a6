//! The data binding: the layout state's data id and the checks a component runs against
//! what its own store records (`layout_core::binding`).

use std::fs;

use layout_core::binding::{self, BindingError, DataBinding};
use layout_core::state::DataId;
use layout_core::storage::VERSION_FILE_NAME;
use layout_core::{FileStorage, LayoutError, LayoutStorage, ManagerOptions};

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
    let err = lvm
        .finalize_step_with(OmFeature::BucketLayoutSupport, |s| {
            s.data_id = Some(DataId::random());
        })
        .unwrap_err();
    assert!(
        matches!(err, LayoutError::ForbiddenStateUpdate(_)),
        "{err:?}"
    );
    assert_eq!(lvm.metadata_layout_version(), 0);
    lvm.finalize_step(OmFeature::BucketLayoutSupport).unwrap();
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

/// `layout_core::binding::redb`: the recipe done by the library on a redb database.
#[cfg(feature = "redb")]
mod on_redb {
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use layout_core::binding::redb::{self as bound_redb, OpenOptions, RedbBindingError};
    use layout_core::binding::{BindingError, DataBinding};
    use layout_core::redb::{self, ReadableDatabase, TableDefinition};
    use layout_core::storage::VERSION_FILE_NAME;
    use layout_core::{FileStorage, ManagerOptions};

    use crate::catalogs::{init_at, Om, OmFeature};

    const USERS: TableDefinition<'static, &str, &str> = TableDefinition::new("users");

    struct Node {
        dir: tempfile::TempDir,
    }

    impl Node {
        fn layout(&self) -> PathBuf {
            self.dir.path().join("layout")
        }
        fn data(&self) -> PathBuf {
            self.dir.path().join("data")
        }
        fn db(&self) -> PathBuf {
            self.data().join("om.redb")
        }
        fn version(&self) -> PathBuf {
            self.layout().join(VERSION_FILE_NAME)
        }
        fn manager(&self) -> Om {
            Om::open(FileStorage::new(self.layout()), ManagerOptions::default()).unwrap()
        }
        fn open(&self, lvm: &Om) -> Result<(redb::Database, DataBinding), RedbBindingError> {
            bound_redb::open(lvm, self.db(), &OpenOptions::default())
        }
    }

    fn put(db: &redb::Database, lvm: &Om, key: &str) {
        let txn = db.begin_write().unwrap();
        txn.open_table(USERS).unwrap().insert(key, "v").unwrap();
        bound_redb::record_written_at(&txn, lvm).unwrap();
        txn.commit().unwrap();
    }

    /// A node that started once at MLV 1 (fresh install), wrote a row and stopped.
    fn seeded() -> Node {
        let node = Node {
            dir: tempfile::tempdir().unwrap(),
        };
        let lvm = Om::open(FileStorage::new(node.layout()), init_at(1)).unwrap();
        let (db, _) = node.open(&lvm).unwrap();
        put(&db, &lvm, "alice");
        node
    }

    /// `open` fails with a binding refusal matching `expected`, and leaves `VERSION` and
    /// the database (or its absence) byte-for-byte as they were.
    fn assert_refused(node: &Node, expected: fn(&BindingError) -> bool, parts: &[&str]) {
        let version = fs::read(node.version()).unwrap();
        let data = fs::read(node.db()).ok();
        let data_dir_existed = node.data().exists();
        let lvm = node.manager();
        let err = node.open(&lvm).unwrap_err();
        let refusal = err.binding_error().unwrap_or_else(|| panic!("{err:?}"));
        assert!(expected(refusal), "{refusal:?}");
        let message = err.to_string();
        for part in parts {
            assert!(message.contains(part), "{part:?} missing from: {message}");
        }
        drop(lvm);
        assert_eq!(
            fs::read(node.version()).unwrap(),
            version,
            "VERSION written"
        );
        assert_eq!(
            fs::read(node.db()).ok(),
            data,
            "database created or written"
        );
        assert_eq!(
            node.data().exists(),
            data_dir_existed,
            "data directory created"
        );
    }

    fn shown(path: &Path) -> String {
        path.display().to_string()
    }

    #[test]
    fn redb_a_fresh_install_creates_the_database_and_a_restart_accepts_it() {
        let node = Node {
            dir: tempfile::tempdir().unwrap(),
        };
        let lvm = Om::open(FileStorage::new(node.layout()), init_at(1)).unwrap();
        let (db, bound) = node.open(&lvm).unwrap();
        assert_eq!(Some(bound.data_id), lvm.data_id());
        assert_eq!(bound.written_at_mlv, 1);
        assert!(node.db().is_file(), "created with its directory");
        assert_eq!(
            bound_redb::read_binding(&db, &node.db()).unwrap(),
            Some(bound)
        );
        put(&db, &lvm, "alice");
        drop((db, lvm));

        let lvm = node.manager();
        let (db, again) = node.open(&lvm).unwrap();
        assert_eq!(again, bound);
        let txn = db.begin_read().unwrap();
        let users = txn.open_table(USERS).unwrap();
        assert_eq!(users.get("alice").unwrap().unwrap().value(), "v");
    }

    #[test]
    fn redb_a_deleted_database_file_is_refused_and_not_recreated() {
        let node = seeded();
        fs::remove_file(node.db()).unwrap();
        assert_refused(
            &node,
            |e| matches!(e, BindingError::DataMissing { .. }),
            &[&shown(&node.db()), &shown(&node.layout()), "does not exist"],
        );
        assert!(!node.db().exists());
    }

    #[test]
    fn redb_an_empty_database_file_is_refused() {
        let node = seeded();
        fs::File::create(node.db()).unwrap();
        assert_refused(
            &node,
            |e| matches!(e, BindingError::DataMissing { .. }),
            &[&shown(&node.db()), "is empty"],
        );
        assert_eq!(fs::metadata(node.db()).unwrap().len(), 0);
    }

    #[test]
    fn redb_a_missing_data_directory_is_refused_and_not_created() {
        let node = seeded();
        fs::remove_dir_all(node.data()).unwrap();
        assert_refused(
            &node,
            |e| matches!(e, BindingError::DataMissing { .. }),
            &[
                &shown(&node.db()),
                "does not exist (nor does its data directory)",
            ],
        );
        assert!(!node.data().exists());
    }

    #[test]
    fn redb_another_installations_database_is_foreign_data() {
        let node = seeded();
        let other = seeded();
        fs::copy(other.db(), node.db()).unwrap();
        let ours = node.manager().data_id().unwrap().to_string();
        let theirs = other.manager().data_id().unwrap().to_string();
        assert_refused(
            &node,
            |e| matches!(e, BindingError::ForeignData { .. }),
            &[&shown(&node.db()), &ours, &theirs],
        );
    }

    #[test]
    fn redb_a_version_restored_from_before_a_finalization_is_older_than_the_data() {
        let node = seeded();
        let old_version = fs::read(node.version()).unwrap();
        let lvm = node.manager();
        lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
        let (db, bound) = node.open(&lvm).unwrap();
        assert_eq!(bound.written_at_mlv, 2);
        put(&db, &lvm, "bob");
        drop((db, lvm));
        fs::write(node.version(), &old_version).unwrap();
        assert_refused(
            &node,
            |e| matches!(e, BindingError::LayoutOlderThanData { .. }),
            &[
                &shown(&node.db()),
                "records metadata layout version 1",
                "written at metadata layout version 2",
            ],
        );
    }

    #[test]
    fn redb_the_mlv_is_recorded_in_the_callers_transaction_only_when_it_commits() {
        let node = seeded();
        let lvm = node.manager();
        let (db, _) = node.open(&lvm).unwrap();
        lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
        let txn = db.begin_write().unwrap();
        bound_redb::record_written_at(&txn, &lvm).unwrap();
        txn.abort().unwrap();
        let read = |db: &redb::Database| bound_redb::read_binding(db, &node.db()).unwrap();
        assert_eq!(
            read(&db).unwrap().written_at_mlv,
            1,
            "aborted with the data"
        );
        put(&db, &lvm, "carol");
        assert_eq!(read(&db).unwrap().written_at_mlv, 2);
    }

    #[test]
    fn redb_a_truncated_database_is_an_error_naming_the_path_not_a_panic() {
        let node = seeded();
        let len = fs::metadata(node.db()).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(node.db())
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let before = fs::read(node.db()).unwrap();
        let lvm = node.manager();
        let err = node.open(&lvm).unwrap_err();
        assert!(matches!(err, RedbBindingError::Damaged { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&shown(&node.db())), "{message}");
        assert!(message.contains("is damaged"), "{message}");
        assert_eq!(fs::read(node.db()).unwrap(), before, "nothing written");
    }

    #[test]
    fn redb_garbage_in_the_database_file_is_damage() {
        let node = seeded();
        fs::write(node.db(), vec![0xab_u8; 8192]).unwrap();
        let lvm = node.manager();
        let err = node.open(&lvm).unwrap_err();
        assert!(matches!(err, RedbBindingError::Damaged { .. }), "{err:?}");
        assert!(err.to_string().contains(&shown(&node.db())), "{err}");
        assert_eq!(fs::read(node.db()).unwrap(), vec![0xab_u8; 8192]);
    }

    #[test]
    fn redb_a_database_from_before_bindings_is_adopted() {
        let node = seeded();
        {
            let db = redb::Database::open(node.db()).unwrap();
            let txn = db.begin_write().unwrap();
            let table: TableDefinition<'_, &str, &str> =
                TableDefinition::new(bound_redb::TABLE_NAME);
            assert!(txn.delete_table(table).unwrap());
            txn.commit().unwrap();
            assert_eq!(bound_redb::read_binding(&db, &node.db()).unwrap(), None);
        }
        let lvm = node.manager();
        let (db, bound) = node.open(&lvm).unwrap();
        assert_eq!(Some(bound.data_id), lvm.data_id());
        assert_eq!(
            bound_redb::read_binding(&db, &node.db()).unwrap(),
            Some(bound)
        );
        let txn = db.begin_read().unwrap();
        assert!(txn
            .open_table(USERS)
            .unwrap()
            .get("alice")
            .unwrap()
            .is_some());
    }

    #[test]
    fn redb_the_read_write_open_runs_on_the_given_backend() {
        let node = seeded();
        let made = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&made);
        let options = OpenOptions::new().with_backend(Arc::new(move |file| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(redb::backends::FileBackend::new(file)?))
        }));
        let lvm = node.manager();
        let (db, _) = bound_redb::open(&lvm, node.db(), &options).unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 1);
        put(&db, &lvm, "dave");
    }
}
