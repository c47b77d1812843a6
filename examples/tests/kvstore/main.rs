//! Tests of the kvstore example service, through its public API.

mod basic;
mod features;
mod support;
