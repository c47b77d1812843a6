//! Shared helpers of the cross-crate integration tests (`tests/tests/*`): every test
//! binary of this package takes them from here.
//!
//! - [`cluster`]: the cluster scenarios, run on the embedded store and on a real etcd;
//! - [`shared_document`]: the shared-document story with processes of two releases;
//! - [`store_contract`]: records and snapshots for the cluster-store tests.

pub mod cluster;
pub mod shared_document;
pub mod store_contract;
