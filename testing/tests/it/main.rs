//! End-to-end tests against the real `ron-node` binary on loopback.
//! One integration binary, one module per area.

mod access;
mod echo;
mod http;
mod index;
mod index_peers;
mod ledger;
mod lifecycle;
mod load;
mod ops;
mod passport;
mod rewarder;
mod routing;
mod wallet;
mod wallet_batch;
mod wallet_compat;
mod wallet_races;
