//! Integration tests of the layout workspace, through the public API.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod actions;
mod catalogs;
mod concurrency;
mod damaged_file;
mod factory;
mod finalizer;
mod fixtures;
mod gate;
mod manager_model;
mod prepare;
mod startup;
mod steps;
