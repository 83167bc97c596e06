//! Pure, synchronous, deterministic state machines of ron-node.
//!
//! Architecture invariant: no I/O, no clocks, no randomness, no async. Time and
//! randomness come in as inputs; domain rejections are values, not errors.
#![forbid(unsafe_code)]

/// The hash maps of the hot paths: std's, with foldhash seeded at random
/// per map instead of SipHash (about 3 % of a shard core under writes).
/// Their keys are ids, hashes and account names, and no outcome depends on
/// their order. (The wallet's accounts use hashbrown's map directly, for
/// its raw entries.)
pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type Set<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

pub mod accumulator;
pub mod balances;
pub mod index;
pub mod passport;
pub mod wallet;
