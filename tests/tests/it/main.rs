//! Integration tests of the layout workspace, through the public API.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod actions;
mod architecture;
mod binding;
mod catalogs;
mod cluster;
mod cluster_fence;
mod cluster_identity;
mod cluster_jobs;
mod cluster_link;
mod cluster_move;
mod cluster_store;
mod concurrency;
mod conformance;
mod damaged_file;
mod durable;
mod factory;
mod file_storage;
mod finalizer;
mod finalizer_model;
mod fixtures;
mod gate;
mod manager_model;
mod migration_background;
#[cfg(feature = "redb")]
mod migration_crash;
mod migration_document;
mod migration_side_by_side;
mod migration_table;
mod migration_tuning;
mod prepare;
mod resume_interrupted;
mod seeded;
mod startup;
mod steps;
