//! ron-node: the thread-per-core server of the five RON services.
//!
//! Architecture invariant: this is the only crate that touches glommio,
//! io_uring, sockets, files or LMDB. It turns bytes into shard inputs and shard
//! outputs into bytes, messages and log writes.

pub mod access;
pub mod check_host;
pub mod committer;
pub mod config;
pub mod disk_ring;
pub mod front;
pub mod keys;
pub mod ledger;
pub mod limits;
pub mod log;
pub mod logging;
pub mod mesh;
pub mod metering;
pub mod metrics;
pub mod node;
pub mod ops;
pub mod passport;
pub mod pq;
pub mod reply;
pub mod routes;
pub mod shard;
pub mod socket_ring;
pub mod verifier;
pub mod view;
pub mod wallet;
