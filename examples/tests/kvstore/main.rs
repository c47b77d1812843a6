//! Tests of the kvstore example service, through its public API.

mod basic;
mod cluster;
mod errors;
#[cfg(feature = "etcd")]
mod etcd;
mod features;
mod hostile;
mod index_recovery;
mod layoutctl;
mod metrics;
mod prepare;
mod support;
mod tls;
