//! Post-quantum signatures for issued tokens, one ML-DSA-65 signature per
//! batch (SPEC §6, `pq_mode`); the format is `ron_proto::attestation`.
//!
//! An ML-DSA-65 signature costs about 0.27 ms here and is 3309 bytes: too
//! slow to make per token on the request path and too large to put in one.
//! So each shard keeps an open batch. Issuing a token appends the token's
//! leaf to it and gives the token, at once, a caveat naming its place and a
//! MAC under the root key (this node checks a token's PQ caveat without
//! keeping anything, and nobody without the root key can make one). The
//! shard closes its open batch within `limits::PQ_BATCH_WINDOW` (or at
//! [`BATCH_LEAVES_MAX`] leaves) and hands it to the workers' idle lane
//! (`crate::workers`), where its Merkle tree is built and its root signed
//! off the request path.
//!
//! Signed batches are kept in memory (the newest `limits::PQ_BATCHES_KEPT` per
//! shard) and on disk for as long as a token in them can be valid
//! (`pq_store`), so that third parties can fetch them after a restart.
//! Closed batches the workers had no room for wait in a backlog of at most
//! `limits::PQ_BACKLOG_MAX`; while it is full, issuing a signed token is
//! refused (429).

use super::keys::{KeySet, Keyring};
use super::pq_store::BatchWriter;
use crate::limits::{PQ_BACKLOG_MAX, PQ_BATCHES_KEPT};
use crate::metrics::{CountHistogram, LatencyHistogram};
use crate::workers::{Job, Lane, Workers};
use ron_proto::attestation::{Attestation, BATCH_LEAVES_MAX, batch_message, leaf};
use ron_proto::merkle::Hash;
use ron_proto::token::{SIG_ML_DSA, TokenView};
use ron_shards::accumulator::Accumulator;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn leaf_mac(set: &KeySet, shard: usize, batch: u64, index: u64, leaf: &Hash) -> [u8; 16] {
    let mut message = Vec::with_capacity(64);
    message.extend_from_slice(b"ron1.pq-leaf\0");
    message.extend_from_slice(&set.kid.to_le_bytes());
    message.extend_from_slice(&(shard as u64).to_le_bytes());
    message.extend_from_slice(&batch.to_le_bytes());
    message.extend_from_slice(&index.to_le_bytes());
    message.extend_from_slice(leaf);
    blake3::keyed_hash(set.root(), &message).as_bytes()[..16].try_into().expect("16 bytes")
}

/// Whether `view` carries a PQ caveat this node made (under the caveat's
/// kid, for the token as it was before the caveat).
pub fn attested(view: &TokenView<'_>, keys: &Keyring) -> bool {
    for (before, caveat) in view.caveats().enumerate() {
        let Some(value) = caveat.strip_prefix(SIG_ML_DSA).and_then(|rest| rest.strip_prefix('='))
        else {
            continue;
        };
        let Some(attestation) = Attestation::parse(value) else { return false };
        let Some(set) = keys.set(attestation.kid) else { return false };
        let leaf = leaf(&view.signed_message(before));
        let expected =
            leaf_mac(set, attestation.shard, attestation.batch, attestation.index, &leaf);
        return constant_time_eq(&expected, &attestation.mac);
    }
    false
}

fn constant_time_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A signed batch, for third parties.
#[derive(Clone, Debug)]
pub struct SignedBatch {
    pub kid: u32,
    pub batch: u64,
    pub leaves: Vec<Hash>,
    pub root: Hash,
    pub signature: Vec<u8>,
}

/// What the signing jobs share with their shard.
#[derive(Default)]
struct Signed {
    batches: VecDeque<SignedBatch>,
    sign_latency: LatencyHistogram,
    batch_tokens: CountHistogram,
}

impl Signed {
    fn keep(&mut self, batch: SignedBatch) {
        if self.batches.len() == PQ_BATCHES_KEPT {
            self.batches.pop_front();
        }
        self.batches.push_back(batch);
    }
}

/// A batch to sign: its leaves were MACed under `keys.current()`.
struct Closed {
    keys: Arc<Keyring>,
    batch: u64,
    leaves: Vec<Hash>,
}

/// Why a token got no place in a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backlogged;

/// One shard's open batch and the batches it handed to the workers.
pub struct PqSigner {
    shard: usize,
    open: RefCell<Vec<Hash>>,
    /// The open batch's number, and the keys its leaves were MACed under.
    batch: Cell<u64>,
    open_keys: RefCell<Option<Arc<Keyring>>>,
    /// Closed batches the workers had no room for yet.
    backlog: RefCell<VecDeque<Closed>>,
    /// `None` with `pq_mode = "off"`: nothing is attested.
    workers: Option<Workers>,
    signed: Arc<Mutex<Signed>>,
    /// Where signed batches are written (none with amnesia).
    store: Option<(PathBuf, Arc<Mutex<BatchWriter>>)>,
}

impl PqSigner {
    /// A shard's signer; `store`: the directory its signed batches are
    /// written to, and how long they are kept there.
    pub fn new(
        shard: usize,
        workers: Option<Workers>,
        store: Option<(PathBuf, Duration)>,
    ) -> anyhow::Result<PqSigner> {
        // Batch numbers start at random, so a restart does not reuse them.
        let mut start = [0u8; 8];
        getrandom::getrandom(&mut start).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        Ok(PqSigner {
            shard,
            open: RefCell::new(Vec::new()),
            batch: Cell::new(u64::from_le_bytes(start) >> 1),
            open_keys: RefCell::new(None),
            backlog: RefCell::new(VecDeque::new()),
            workers,
            signed: Arc::new(Mutex::new(Signed::default())),
            store: store.map(|(dir, keep)| {
                let writer = BatchWriter::new(dir.clone(), shard, keep);
                (dir, Arc::new(Mutex::new(writer)))
            }),
        })
    }

    /// The directory this shard's signed batches are written to.
    pub fn store_dir(&self) -> Option<&PathBuf> {
        self.store.as_ref().map(|(dir, _)| dir)
    }

    /// A signed batch, if this shard still has it.
    pub fn batch(&self, batch: u64) -> Option<SignedBatch> {
        let signed = self.signed.lock().expect("not poisoned");
        signed.batches.iter().rev().find(|b| b.batch == batch).cloned()
    }

    /// (sign latency, tokens per batch) so far.
    pub fn stats(&self) -> (LatencyHistogram, CountHistogram) {
        let signed = self.signed.lock().expect("not poisoned");
        (signed.sign_latency.clone(), signed.batch_tokens.clone())
    }

    /// Closes the open batch (if any) and hands what waits to the workers.
    /// Returns whether anything is still open or waiting.
    pub fn close(&self) -> bool {
        let leaves = std::mem::take(&mut *self.open.borrow_mut());
        let keys = self.open_keys.borrow_mut().take();
        if let (Some(keys), false) = (keys, leaves.is_empty()) {
            let batch = self.batch.get();
            self.batch.set(batch + 1);
            self.backlog.borrow_mut().push_back(Closed { keys, batch, leaves });
        }
        let workers = self.workers.as_ref().expect("attested only with pq_mode on");
        let mut backlog = self.backlog.borrow_mut();
        while let Some(closed) = backlog.pop_front() {
            let (shard, signed) = (self.shard, self.signed.clone());
            let writer = self.store.as_ref().map(|(_, writer)| writer.clone());
            let closed = Arc::new(Mutex::new(Some(closed)));
            let job = {
                let closed = closed.clone();
                Job::new(move || {
                    let closed = closed.lock().expect("not poisoned").take().expect("signed once");
                    sign(shard, closed, &signed, writer.as_deref());
                })
            };
            if workers.submit(Lane::Idle, job).is_err() {
                let closed = closed.lock().expect("not poisoned").take().expect("not run");
                backlog.push_front(closed);
                break;
            }
        }
        !backlog.is_empty() || !self.open.borrow().is_empty()
    }

    /// Puts `leaf` in the open batch, MACed under `keys`; a full batch, or
    /// one under an older key (a rotation), is closed first. Refused while
    /// the backlog is full.
    pub fn add(&self, keys: Arc<Keyring>, leaf: Hash) -> Result<Attestation, Backlogged> {
        if self.backlog.borrow().len() >= PQ_BACKLOG_MAX {
            return Err(Backlogged);
        }
        let rotated =
            self.open_keys.borrow().as_ref().is_some_and(|k| k.current().kid != keys.current().kid);
        if rotated || self.open.borrow().len() == BATCH_LEAVES_MAX {
            self.close();
        }
        let set = keys.current();
        let index = {
            let mut open = self.open.borrow_mut();
            open.push(leaf);
            open.len() as u64 - 1
        };
        let batch = self.batch.get();
        let mac = leaf_mac(set, self.shard, batch, index, &leaf);
        let attestation = Attestation { kid: set.kid, shard: self.shard, batch, index, mac };
        self.open_keys.borrow_mut().get_or_insert(keys);
        Ok(attestation)
    }
}

/// Builds a closed batch's tree, signs its root and writes the signed
/// batch to disk (on a worker).
fn sign(shard: usize, closed: Closed, signed: &Mutex<Signed>, writer: Option<&Mutex<BatchWriter>>) {
    let started = Instant::now();
    let mut tree = Accumulator::new();
    for leaf in &closed.leaves {
        tree.push(*leaf);
    }
    let root = tree.root();
    let size = closed.leaves.len() as u64;
    let set = closed.keys.current();
    let signature = set.sign_ml_dsa(&batch_message(set.kid, shard, closed.batch, size, &root));
    let (kid, batch, leaves) = (set.kid, closed.batch, closed.leaves);
    let batch = SignedBatch { kid, batch, leaves, root, signature };
    if let Some(writer) = writer
        && let Err(error) = writer.lock().expect("not poisoned").append(&batch)
    {
        tracing::warn!(shard, batch = batch.batch, %error, "a signed PQ batch was not written");
    }
    let mut signed = signed.lock().expect("not poisoned");
    signed.sign_latency.record(started.elapsed());
    signed.batch_tokens.record(size);
    signed.keep(batch);
}

/// Places a token in a batch of its own outside any shard (the admin token
/// at start). Nobody can fetch that batch, so it is not signed: the node
/// checks the caveat by its MAC alone.
pub fn attest_alone(set: &KeySet, message: &[u8]) -> anyhow::Result<Attestation> {
    let mut number = [0u8; 8];
    getrandom::getrandom(&mut number).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let batch = u64::from_le_bytes(number) >> 1;
    let mac = leaf_mac(set, 0, batch, 0, &leaf(message));
    Ok(Attestation { kid: set.kid, shard: 0, batch, index: 0, mac })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workers::WorkersLayout;
    use std::time::Duration;

    fn workers(queue_max: usize) -> crate::workers::WorkerThreads {
        let layout = WorkersLayout {
            normal_threads: 1,
            idle_threads: 1,
            batch_threads: 1,
            queue_max,
            cores: Vec::new(),
            normal_nice: 0,
        };
        Workers::start(&layout).unwrap()
    }

    #[test]
    fn batches_close_at_their_bound_and_are_signed_off_the_caller() {
        let keys = Arc::new(super::super::keys::KeyStore::new(None).load(0).unwrap());
        let threads = workers(16);
        let signer = PqSigner::new(3, Some(threads.workers().clone()), None).unwrap();
        let first = signer.batch.get();
        let placed: Vec<Attestation> = (0..=BATCH_LEAVES_MAX)
            .map(|i| signer.add(keys.clone(), leaf(&i.to_le_bytes())).unwrap())
            .collect();
        assert!(placed[..BATCH_LEAVES_MAX].iter().all(|a| a.batch == first));
        assert_eq!(placed[BATCH_LEAVES_MAX - 1].index, BATCH_LEAVES_MAX as u64 - 1);
        assert_eq!((placed[BATCH_LEAVES_MAX].batch, placed[BATCH_LEAVES_MAX].index), (first + 1, 0));
        // The full batch went to the workers when the next leaf came.
        let deadline = Instant::now() + Duration::from_secs(30);
        let signed = loop {
            if let Some(signed) = signer.batch(first) {
                break signed;
            }
            assert!(Instant::now() < deadline, "the workers sign the closed batch");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(signed.leaves.len(), BATCH_LEAVES_MAX);
        let set = keys.current();
        let message = batch_message(set.kid, 3, first, BATCH_LEAVES_MAX as u64, &signed.root);
        assert!(set.verify_ml_dsa(&message, &signed.signature));
        assert!(signer.batch(first + 1).is_none(), "still open");
        threads.stop();
    }

    #[test]
    fn a_full_backlog_refuses_new_tokens_and_drains_when_workers_have_room() {
        let keys = Arc::new(super::super::keys::KeyStore::new(None).load(0).unwrap());
        // Workers that have stopped take nothing: every closed batch waits.
        let threads = workers(1);
        let workers = threads.workers().clone();
        threads.stop();
        let signer = PqSigner::new(0, Some(workers), None).unwrap();
        for i in 0..PQ_BACKLOG_MAX {
            signer.add(keys.clone(), leaf(&i.to_le_bytes())).unwrap();
            assert!(signer.close(), "the batch waits");
        }
        assert_eq!(signer.backlog.borrow().len(), PQ_BACKLOG_MAX);
        assert_eq!(signer.add(keys.clone(), leaf(b"one more")), Err(Backlogged));
        // With room again, the backlog drains in order.
        let threads = super::tests::workers(2 * PQ_BACKLOG_MAX);
        let signer = PqSigner { workers: Some(threads.workers().clone()), ..signer };
        assert!(!signer.close(), "nothing waits once the workers took it");
        assert!(signer.add(keys, leaf(b"one more")).is_ok());
        threads.stop();
    }

    #[test]
    fn a_shard_keeps_its_newest_batches() {
        let mut signed = Signed::default();
        for batch in 0..=PQ_BATCHES_KEPT as u64 {
            let signature = Vec::new();
            signed.keep(SignedBatch { kid: 1, batch, leaves: Vec::new(), root: [0; 32], signature });
        }
        assert_eq!(signed.batches.len(), PQ_BATCHES_KEPT);
        assert_eq!(signed.batches.front().map(|b| b.batch), Some(1));
    }
}
