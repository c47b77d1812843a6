//! The testkit's own tests, through its public API: mini clusters, the upgrade stages
//! (and their negative control), child-process nodes, the catalog lock.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod catalog_lock;
mod cluster;
mod stages;
