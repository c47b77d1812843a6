//! The admin API, its HTTP endpoint and `layoutctl`, around a real component: an
//! in-memory replicated log with a real `VERSION` file, finalizer and prepare controller.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod cli;
mod hostile;
mod http;
mod metrics;
mod service;
mod slow_clients;
mod support;
mod tls;
mod wire;
