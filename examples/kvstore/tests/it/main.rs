//! Tests of the kvstore example service, through its public API.

mod basic;
mod cluster;
mod cluster_move;
mod copy;
mod data_binding;
mod degraded;
mod errors;
#[cfg(feature = "etcd")]
mod etcd;
mod features;
mod hostile;
mod index_recovery;
mod layoutctl;
mod lists;
mod metrics;
mod prepare;
mod support;
mod tls;
