//! The log: every durable change of every service, in one order.
//!
//! It carries items tagged by their first byte (the service that wrote
//! them) and knows no service. Its interface is three things, so that a
//! replicated log (SPEC §12) can take its place without touching a service:
//!
//! * **append** a record ([`Append`] through [`LogLink::call`]): items with
//!   the shards that have a part in each, optional unique keys and an
//!   idempotency key; answered once durable;
//! * **learn what is durable** ([`LogShared::durable_seq`], raised before
//!   anyone hears of a record) and how far this shard has applied
//!   ([`Applied`], [`LogLink::caught_up`]);
//! * **read the committed stream**: each shard receives the durable items
//!   it has a part in, in log order ([`Committed`], [`receive`]); at start,
//!   [`segments::recover`] hands the items after the views to the services
//!   once.
//!
//! Parts: `committer` (group commit, tree, roots, proofs, safe mode),
//! `segments` (files, recovery, the writer), `index` (the committer's state
//! on disk: tree nodes, roots, ids, marks, checkpointed by workers),
//! `disk_ring` (the committer's io_uring), `link` (the shard's side), `view`
//! (each shard's LMDB view of the state it owns, written off the request
//! path).

pub mod committer;
pub mod disk_ring;
pub mod index;
pub mod link;
pub mod segments;
pub mod view;

pub use committer::{Append, Batch, Committed, CommitterMetrics, Item, LogAnswer, LogCall};
pub use link::{Applied, LinkError, LogLink, receive};
pub use segments::{IdKey, RootItem, id_key};

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One item of an append that one shard applies once it is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    /// The item's index in its append.
    pub item: u32,
    pub shard: u32,
}

/// What every core may read about the log.
#[derive(Debug, Default)]
pub struct LogShared {
    /// Items whose record is durable. The committer raises it before it
    /// sends anyone a batch, so a read that finds its shard has applied this
    /// much sees every acknowledged write.
    pub durable_seq: AtomicU64,
    /// Set once by the committer; writes answer 503 DEGRADED from then on.
    safe_mode: AtomicBool,
    safe_reason: OnceLock<String>,
}

impl LogShared {
    pub fn new(durable_seq: u64) -> LogShared {
        LogShared { durable_seq: AtomicU64::new(durable_seq), ..LogShared::default() }
    }

    pub fn enter_safe_mode(&self, reason: &str) {
        let _ = self.safe_reason.set(reason.to_owned());
        self.safe_mode.store(true, Ordering::Release);
    }

    pub fn in_safe_mode(&self) -> bool {
        self.safe_mode.load(Ordering::Acquire)
    }

    pub fn safe_mode_reason(&self) -> Option<String> {
        if !self.in_safe_mode() {
            return None;
        }
        self.safe_reason.get().cloned()
    }
}
