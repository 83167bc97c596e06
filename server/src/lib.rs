//! ron-node: the thread-per-core server of the five RON services.
//!
//! Architecture invariant: this is the only crate that touches glommio,
//! io_uring, sockets, files or LMDB. It turns bytes into shard inputs and shard
//! outputs into bytes, messages and log writes.
//!
//! Layers, each using only those before it: the base (`config`, `limits`,
//! `clock`, `metrics`, `retry`, `workers`, `logging`, `check_host`,
//! `reload`), `log`,
//! `core`, `http`, `service` (the boundary), `services` (one folder each),
//! `node` (start and stop).

pub mod check_host;
pub mod clock;
pub mod config;
pub mod core;
pub mod http;
pub mod limits;
pub mod log;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod reload;
pub mod retry;
pub mod service;
pub mod services;
pub mod wake;
pub mod workers;

#[cfg(test)]
mod layers;
