//! Post-quantum signatures for issued tokens, one ML-DSA-65 signature per
//! batch (SPEC §6, `pq_mode`).
//!
//! An ML-DSA-65 signature costs about 0.27 ms here and is 3309 bytes: too
//! slow to make per token on the request path and too large to put in one.
//! So each shard keeps an open batch. Issuing a token appends the token's
//! leaf (a hash of its signed message) to it and gives the token, at once, a
//! caveat naming its place:
//!
//! ```text
//! sig.ml-dsa-65=<kid>.<shard>.<batch>.<index>.<mac>
//! ```
//!
//! `mac` (16 bytes, base64url) is the root key's keyed hash of (kid, shard,
//! batch, index, leaf): this node checks a token's PQ caveat without keeping
//! anything (`enforce`), and nobody without the root key can make one. The
//! shard closes its open batch within [`BATCH_WINDOW`] (or at
//! [`BATCH_MAX`] leaves) and hands it to its signer thread, which builds the
//! batch's Merkle tree (`ron_proto::merkle`) and signs the root message
//! ([`batch_message`]) off the request path. A third party fetches
//! `GET /v1/passport/pq/{shard}.{batch}` (the leaves, root and signature,
//! a few milliseconds after issuance) and checks the token's leaf, the root
//! and the signature with the ML-DSA key of `kid` from `/v1/keys`.
//!
//! Signed batches are kept in memory (the newest [`BATCHES_KEPT`] per
//! shard): after a restart, earlier batches cannot be fetched, though this
//! node still accepts their tokens.

use crate::keys::{KeySet, Keyring};
use crate::metrics::{CountHistogram, LatencyHistogram};
use crate::shard::Shard;
use ron_proto::merkle::{self, Hash};
use ron_proto::token::{SIG_ML_DSA, Token, TokenView, from_base64url, to_base64url};
use ron_shards::accumulator::Accumulator;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Leaves per batch, at most.
pub const BATCH_MAX: usize = 1024;
/// How long a batch stays open after its first leaf.
pub const BATCH_WINDOW: Duration = Duration::from_millis(1);
/// Signed batches a shard keeps for `/v1/passport/pq`.
const BATCHES_KEPT: usize = 4096;

/// A token's place in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attestation {
    pub kid: u32,
    pub shard: usize,
    pub batch: u64,
    pub index: u64,
    pub mac: [u8; 16],
}

impl Attestation {
    /// Gives `token` its `sig.ml-dsa-65` caveat.
    pub fn attach(&self, token: &mut Token) {
        token.attach_signature(SIG_ML_DSA, &self.caveat_value());
    }

    /// The caveat's value.
    pub fn caveat_value(&self) -> String {
        format!(
            "{}.{}.{}.{}.{}",
            self.kid,
            self.shard,
            self.batch,
            self.index,
            to_base64url(&self.mac)
        )
    }

    pub fn parse(value: &str) -> Option<Attestation> {
        let mut parts = value.split('.');
        let mut number = || parts.next()?.parse::<u64>().ok();
        let kid = u32::try_from(number()?).ok()?;
        let shard = usize::try_from(number()?).ok()?;
        let (batch, index) = (number()?, number()?);
        let mac = from_base64url(parts.next()?)?.try_into().ok()?;
        if parts.next().is_some() || index as usize >= BATCH_MAX {
            return None;
        }
        Some(Attestation { kid, shard, batch, index, mac })
    }
}

/// The leaf of a token whose signed message is `message`.
pub fn leaf(message: &[u8]) -> Hash {
    merkle::leaf_hash(blake3::hash(message).as_bytes())
}

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

/// What the ML-DSA key signs for a batch.
pub fn batch_message(kid: u32, shard: usize, batch: u64, size: u64, root: &Hash) -> Vec<u8> {
    let mut message = Vec::with_capacity(64 + 32);
    message.extend_from_slice(b"ron1.pq-batch\0");
    message.extend_from_slice(&kid.to_le_bytes());
    message.extend_from_slice(&(shard as u64).to_le_bytes());
    message.extend_from_slice(&batch.to_le_bytes());
    message.extend_from_slice(&size.to_le_bytes());
    message.extend_from_slice(root);
    message
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

/// What the signer thread shares with its shard.
#[derive(Default)]
struct Shared {
    signed: VecDeque<SignedBatch>,
    sign_latency: LatencyHistogram,
    batch_tokens: CountHistogram,
}

impl Shared {
    fn keep(&mut self, batch: SignedBatch) {
        if self.signed.len() == BATCHES_KEPT {
            self.signed.pop_front();
        }
        self.signed.push_back(batch);
    }
}

/// A batch to sign: its leaves were MACed under `keys.current()`.
struct Closed {
    keys: Arc<Keyring>,
    batch: u64,
    leaves: Vec<Hash>,
}

/// One shard's open batch and its signer thread.
pub struct PqSigner {
    shard: usize,
    open: RefCell<Vec<Hash>>,
    /// The open batch's number, and the keys its leaves were MACed under.
    batch: Cell<u64>,
    open_keys: RefCell<Option<Arc<Keyring>>>,
    closer_running: Cell<bool>,
    /// `None` with `pq_mode = "off"`: no thread, and nothing is attested.
    to_signer: Option<Sender<Closed>>,
    shared: Arc<Mutex<Shared>>,
}

impl PqSigner {
    pub fn new(shard: usize, enabled: bool) -> anyhow::Result<PqSigner> {
        // Batch numbers start at random, so a restart does not reuse them.
        let mut start = [0u8; 8];
        getrandom::getrandom(&mut start).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let to_signer = if enabled {
            let (to_signer, receiver) = std::sync::mpsc::channel();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("pq-signer-{shard}"))
                .spawn(move || sign_batches(shard, &receiver, &shared))?;
            Some(to_signer)
        } else {
            None
        };
        Ok(PqSigner {
            shard,
            open: RefCell::new(Vec::new()),
            batch: Cell::new(u64::from_le_bytes(start) >> 1),
            open_keys: RefCell::new(None),
            closer_running: Cell::new(false),
            to_signer,
            shared,
        })
    }

    /// A signed batch, if this shard still has it.
    pub fn batch(&self, batch: u64) -> Option<SignedBatch> {
        let shared = self.shared.lock().expect("not poisoned");
        shared.signed.iter().rev().find(|b| b.batch == batch).cloned()
    }

    /// (sign latency, tokens per batch) so far.
    pub fn stats(&self) -> (LatencyHistogram, CountHistogram) {
        let shared = self.shared.lock().expect("not poisoned");
        (shared.sign_latency.clone(), shared.batch_tokens.clone())
    }

    fn close(&self) {
        let leaves = std::mem::take(&mut *self.open.borrow_mut());
        let Some(keys) = self.open_keys.borrow_mut().take() else { return };
        if leaves.is_empty() {
            return;
        }
        let batch = self.batch.get();
        self.batch.set(batch + 1);
        let to_signer = self.to_signer.as_ref().expect("attested only with pq_mode on");
        // The thread outlives the shard's tasks; a send fails only at exit.
        let _ = to_signer.send(Closed { keys, batch, leaves });
    }

    /// Puts `leaf` in the open batch, MACed under `keys`; a full batch, or
    /// one under an older key (a rotation), is closed first.
    fn add(&self, keys: Arc<Keyring>, leaf: Hash) -> Attestation {
        let rotated =
            self.open_keys.borrow().as_ref().is_some_and(|k| k.current().kid != keys.current().kid);
        if rotated || self.open.borrow().len() == BATCH_MAX {
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
        attestation
    }
}

/// Puts `leaf` in this shard's open batch and answers its place at once;
/// the batch is signed within `BATCH_WINDOW` plus one signature.
pub fn attest(shard: &Rc<Shard>, leaf: Hash) -> Attestation {
    let signer = &shard.pq;
    let attestation = signer.add(shard.keys.borrow().clone(), leaf);
    if !signer.closer_running.replace(true) {
        let closer = glommio::spawn_local_into(close_after_window(shard.clone()), shard.queue);
        closer.expect("the queue exists").detach();
    }
    attestation
}

async fn close_after_window(shard: Rc<Shard>) {
    glommio::timer::sleep(BATCH_WINDOW).await;
    shard.pq.close();
    shard.pq.closer_running.set(false);
}

fn sign_batches(shard: usize, receiver: &Receiver<Closed>, shared: &Mutex<Shared>) {
    // Signing takes only time the executors leave: a shard preempts it at
    // once (SCHED_IDLE), so a signature never delays a request.
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain system call on this thread (pid 0) with a valid param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::warn!(shard, "the ML-DSA signer runs at normal priority (SCHED_IDLE refused)");
    }
    while let Ok(closed) = receiver.recv() {
        let started = Instant::now();
        let mut tree = Accumulator::new();
        for leaf in &closed.leaves {
            tree.push(*leaf);
        }
        let root = tree.root();
        let size = closed.leaves.len() as u64;
        let set = closed.keys.current();
        let signature = set.sign_ml_dsa(&batch_message(set.kid, shard, closed.batch, size, &root));
        let mut shared = shared.lock().expect("not poisoned");
        shared.sign_latency.record(started.elapsed());
        shared.batch_tokens.record(size);
        let (kid, batch, leaves) = (set.kid, closed.batch, closed.leaves);
        shared.keep(SignedBatch { kid, batch, leaves, root, signature });
    }
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

    #[test]
    fn batches_close_at_their_bound_and_are_signed_off_the_caller() {
        let keys = Arc::new(crate::keys::KeyStore::new(None).load(0).unwrap());
        let signer = PqSigner::new(3, true).unwrap();
        let first = signer.batch.get();
        let placed: Vec<Attestation> =
            (0..=BATCH_MAX).map(|i| signer.add(keys.clone(), leaf(&i.to_le_bytes()))).collect();
        assert!(placed[..BATCH_MAX].iter().all(|a| a.batch == first));
        assert_eq!(placed[BATCH_MAX - 1].index, BATCH_MAX as u64 - 1);
        assert_eq!((placed[BATCH_MAX].batch, placed[BATCH_MAX].index), (first + 1, 0));
        // The full batch went to the signer when the next leaf came.
        let deadline = Instant::now() + Duration::from_secs(30);
        let signed = loop {
            if let Some(signed) = signer.batch(first) {
                break signed;
            }
            assert!(Instant::now() < deadline, "the signer signs the closed batch");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(signed.leaves.len(), BATCH_MAX);
        let set = keys.current();
        let message = batch_message(set.kid, 3, first, BATCH_MAX as u64, &signed.root);
        assert!(set.verify_ml_dsa(&message, &signed.signature));
        assert!(signer.batch(first + 1).is_none(), "still open");
    }

    #[test]
    fn a_shard_keeps_its_newest_batches() {
        let mut shared = Shared::default();
        for batch in 0..=BATCHES_KEPT as u64 {
            let signature = Vec::new();
            shared.keep(SignedBatch {
                kid: 1,
                batch,
                leaves: Vec::new(),
                root: [0; 32],
                signature,
            });
        }
        assert_eq!(shared.signed.len(), BATCHES_KEPT);
        assert_eq!(shared.signed.front().map(|b| b.batch), Some(1));
    }

    #[test]
    fn caveat_values_round_trip_and_fit() {
        let attestation =
            Attestation { kid: u32::MAX, shard: 63, batch: u64::MAX, index: 1023, mac: [7; 16] };
        let value = attestation.caveat_value();
        let caveat = format!("{}={value}", ron_proto::token::SIG_ML_DSA);
        assert!(caveat.len() <= ron_proto::token::CAVEAT_BYTES_MAX, "{}", caveat.len());
        assert!(ron_proto::token::Caveat::parse(&caveat).is_ok());
        assert_eq!(Attestation::parse(&value), Some(attestation));
        assert!(Attestation::parse("1.2.3").is_none());
        assert!(Attestation::parse(&format!("{value}.x")).is_none());
        assert!(Attestation::parse("1.0.5.1024.AAAAAAAAAAAAAAAAAAAAAA").is_none());
    }
}
