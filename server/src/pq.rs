//! Post-quantum signatures for issued tokens, one ML-DSA-65 signature per
//! small batch (SPEC §6, `pq_mode`).
//!
//! An ML-DSA-65 signature costs hundreds of microseconds and is 3309 bytes,
//! too slow to make per token and too large to put in one. So a shard
//! gathers the tokens being issued into batches of at most [`BATCH_MAX`]:
//! each token's leaf is a hash of its signed message, the batch's Merkle
//! root (the ledger's tree, `ron_proto::merkle`) is signed once, and each
//! token gets a `sig.ml-dsa-65` caveat with its place in the batch and its
//! inclusion path:
//!
//! ```text
//! sig.ml-dsa-65=<kid>.<shard>.<batch>.<index>.<size>.<mac>.<path>
//! ```
//!
//! `mac` (16 bytes, base64url) is the root key's keyed hash of the signed
//! batch message, so this node checks a token's PQ caveat without keeping
//! the batch (`enforce`); a third party fetches the batch's signature from
//! `GET /v1/passport/pq/{shard}.{batch}` and checks it with the ML-DSA key
//! of `kid` from `/v1/keys`. Batching works like the committer's group
//! commit: the signer takes what queued while it signed the last batch.

use crate::keys::KeySet;
use crate::shard::Shard;
use base64::Engine as _;
use futures_channel::oneshot;
use ron_proto::merkle::{self, Hash};
use ron_proto::token::TokenView;
use ron_shards::accumulator::Accumulator;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

/// Tokens per signed batch, at most: the inclusion path (4 hashes) keeps
/// the caveat within `CAVEAT_BYTES_MAX`.
pub const BATCH_MAX: usize = 16;
/// Signed batches a shard keeps for `/v1/passport/pq`.
const BATCHES_KEPT: usize = 65_536;
const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A token's place in a signed batch.
#[derive(Clone, Debug)]
pub struct Attestation {
    pub kid: u32,
    pub shard: usize,
    pub batch: u64,
    pub index: u64,
    pub size: u64,
    pub mac: [u8; 16],
    pub path: Vec<Hash>,
}

impl Attestation {
    /// The caveat's value.
    pub fn caveat_value(&self) -> String {
        let mut path = Vec::with_capacity(self.path.len() * 32);
        for hash in &self.path {
            path.extend_from_slice(hash);
        }
        format!(
            "{}.{}.{}.{}.{}.{}.{}",
            self.kid,
            self.shard,
            self.batch,
            self.index,
            self.size,
            BASE64.encode(self.mac),
            BASE64.encode(path)
        )
    }

    pub fn parse(value: &str) -> Option<Attestation> {
        let mut parts = value.split('.');
        let mut number = || parts.next()?.parse::<u64>().ok();
        let kid = u32::try_from(number()?).ok()?;
        let shard = usize::try_from(number()?).ok()?;
        let (batch, index, size) = (number()?, number()?, number()?);
        let mac = BASE64.decode(parts.next()?).ok()?.try_into().ok()?;
        let path = BASE64.decode(parts.next()?).ok()?;
        if parts.next().is_some() || path.len() % 32 != 0 || size as usize > BATCH_MAX {
            return None;
        }
        let path = path.chunks(32).map(|c| c.try_into().expect("32 bytes")).collect();
        Some(Attestation { kid, shard, batch, index, size, mac, path })
    }
}

/// The leaf of a token whose signed message is `message`.
pub fn leaf(message: &[u8]) -> Hash {
    merkle::leaf_hash(&blake3::hash(message).as_bytes()[..])
}

/// What the ML-DSA key signs (and the root key MACs) for a batch.
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

fn batch_mac(set: &KeySet, message: &[u8]) -> [u8; 16] {
    blake3::keyed_hash(set.root(), message).as_bytes()[..16].try_into().expect("16 bytes")
}

/// Whether `view` carries a PQ caveat that places it in a batch this node
/// signed under `set` (the caveat's own kid).
pub fn attested(view: &TokenView<'_>, keys: &crate::keys::Keyring) -> bool {
    for (before, caveat) in view.caveats().enumerate() {
        if let Some(value) =
            caveat.strip_prefix(ron_proto::token::SIG_ML_DSA).and_then(|r| r.strip_prefix('='))
        {
            let Some(attestation) = Attestation::parse(value) else { return false };
            let Some(set) = keys.set(attestation.kid) else { return false };
            let leaf = leaf(&view.signed_message(before));
            let Some(root) = merkle::root_from_path(
                attestation.index,
                attestation.size,
                &leaf,
                &attestation.path,
            ) else {
                return false;
            };
            let message = batch_message(
                attestation.kid,
                attestation.shard,
                attestation.batch,
                attestation.size,
                &root,
            );
            // Constant-time compare of the MACs.
            let expected = blake3::keyed_hash(set.root(), &message);
            let mut got = [0u8; 32];
            got[..16].copy_from_slice(&attestation.mac);
            got[16..].copy_from_slice(&expected.as_bytes()[16..]);
            return expected == blake3::Hash::from(got);
        }
    }
    false
}

/// Signs a batch of one outside any shard (the admin token at start): its
/// signature is not kept for `/v1/passport/pq`.
pub fn attest_alone(set: &KeySet, message: &[u8]) -> anyhow::Result<Attestation> {
    let mut number = [0u8; 8];
    getrandom::getrandom(&mut number).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let batch = u64::from_le_bytes(number) >> 1;
    let root = leaf(message);
    let signed = batch_message(set.kid, 0, batch, 1, &root);
    let _signature = set.sign_ml_dsa(&signed);
    let mac = batch_mac(set, &signed);
    Ok(Attestation { kid: set.kid, shard: 0, batch, index: 0, size: 1, mac, path: Vec::new() })
}

/// A batch signature, for third parties.
#[derive(Clone, Debug)]
pub struct SignedBatch {
    pub kid: u32,
    pub batch: u64,
    pub size: u64,
    pub root: Hash,
    pub signature: Vec<u8>,
}

/// One shard's batch signer.
pub struct PqSigner {
    pending: RefCell<Vec<(Hash, oneshot::Sender<Attestation>)>>,
    running: Cell<bool>,
    next_batch: Cell<u64>,
    signed: RefCell<VecDeque<SignedBatch>>,
}

impl PqSigner {
    pub fn new() -> anyhow::Result<PqSigner> {
        // Batch numbers start at random, so a restart does not reuse them.
        let mut start = [0u8; 8];
        getrandom::getrandom(&mut start).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        Ok(PqSigner {
            pending: RefCell::new(Vec::new()),
            running: Cell::new(false),
            next_batch: Cell::new(u64::from_le_bytes(start) >> 1),
            signed: RefCell::new(VecDeque::new()),
        })
    }

    pub fn batch(&self, batch: u64) -> Option<SignedBatch> {
        let signed = self.signed.borrow();
        let first = signed.front()?.batch;
        signed.get(usize::try_from(batch.checked_sub(first)?).ok()?).cloned()
    }
}

/// Puts `leaf` in the next batch this shard signs; answers its attestation
/// once the batch is signed.
pub async fn attest(shard: &Rc<Shard>, leaf: Hash) -> Attestation {
    let (sender, receiver) = oneshot::channel();
    shard.pq.pending.borrow_mut().push((leaf, sender));
    if !shard.pq.running.replace(true) {
        let signer = glommio::spawn_local_into(sign_batches(shard.clone()), shard.queue);
        signer.expect("the queue exists").detach();
    }
    receiver.await.expect("the signer answers every leaf it takes")
}

async fn sign_batches(shard: Rc<Shard>) {
    loop {
        // Let the requests that arrived with this one join it.
        futures_lite::future::yield_now().await;
        let batch: Vec<(Hash, oneshot::Sender<Attestation>)> = {
            let mut pending = shard.pq.pending.borrow_mut();
            let take = pending.len().min(BATCH_MAX);
            pending.drain(..take).collect()
        };
        if batch.is_empty() {
            shard.pq.running.set(false);
            return;
        }
        let started = Instant::now();
        let mut tree = Accumulator::new();
        for (leaf, _) in &batch {
            tree.push(*leaf);
        }
        let size = batch.len() as u64;
        let root = tree.root();
        let number = shard.pq.next_batch.get();
        shard.pq.next_batch.set(number + 1);
        let keys = shard.keys.borrow().clone();
        let set = keys.current();
        let message = batch_message(set.kid, shard.id, number, size, &root);
        let signature = set.sign_ml_dsa(&message);
        let mac = batch_mac(set, &message);
        {
            let mut signed = shard.pq.signed.borrow_mut();
            if signed.len() == BATCHES_KEPT {
                signed.pop_front();
            }
            signed.push_back(SignedBatch { kid: set.kid, batch: number, size, root, signature });
        }
        {
            let mut metrics = shard.metrics.borrow_mut();
            metrics.passport.pq_batch_sign.record(started.elapsed());
            metrics.passport.pq_batch_tokens.record(size);
        }
        for (index, (_, sender)) in batch.into_iter().enumerate() {
            let attestation = Attestation {
                kid: set.kid,
                shard: shard.id,
                batch: number,
                index: index as u64,
                size,
                mac,
                path: tree.inclusion_proof(index as u64, size).expect("in the batch"),
            };
            let _ = sender.send(attestation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caveat_values_round_trip_and_fit() {
        let attestation = Attestation {
            kid: u32::MAX,
            shard: 63,
            batch: u64::MAX,
            index: 15,
            size: 16,
            mac: [7; 16],
            path: vec![[1; 32]; 4],
        };
        let value = attestation.caveat_value();
        let caveat = format!("{}={value}", ron_proto::token::SIG_ML_DSA);
        assert!(caveat.len() <= ron_proto::token::CAVEAT_BYTES_MAX, "{}", caveat.len());
        assert!(ron_proto::token::Caveat::parse(&caveat).is_ok());
        let parsed = Attestation::parse(&value).unwrap();
        assert_eq!(parsed.caveat_value(), value);
        assert!(Attestation::parse("1.2.3").is_none());
        assert!(Attestation::parse(&format!("{value}.x")).is_none());
    }
}
