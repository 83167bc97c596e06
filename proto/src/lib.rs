//! Wire types, ids, codecs and the passport token format of ron-node.
//!
//! Architecture invariant: nothing in this crate does I/O, reads a clock or
//! spawns anything. Every decoder takes `&[u8]`, checks each length read off
//! the wire against a `*_max` before allocating, and answers with a value,
//! "incomplete" or a typed error.
#![forbid(unsafe_code)]

pub mod attestation;
pub mod error;
pub mod fuzz;
pub mod http;
pub mod index;
pub mod ledger;
pub mod log;
pub mod merkle;
pub mod revocation;
pub mod rewarder;
pub mod routing;
pub mod token;
pub mod wallet;

pub use error::ErrorCode;
