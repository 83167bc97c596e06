//! Pure, synchronous, deterministic state machines of ron-node.
//!
//! Architecture invariant: no I/O, no clocks, no randomness, no async. Time and
//! randomness come in as inputs; domain rejections are values, not errors.
#![forbid(unsafe_code)]

pub mod accumulator;
pub mod balances;
pub mod index;
pub mod passport;
pub mod wallet;
