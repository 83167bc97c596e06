//! The ML-DSA-65 batch attestation of a token (SPEC §6, `pq_mode`): the
//! format a third party checks a token's `sig.ml-dsa-65` caveat with.
//!
//! An issuing node gives the token a caveat naming its place in a signed
//! batch:
//!
//! ```text
//! sig.ml-dsa-65=<kid>.<shard>.<batch>.<index>.<mac>
//! ```
//!
//! `mac` (16 bytes, base64url) is the node's own check (its root key's
//! keyed hash of the place and the leaf); third parties ignore it. They
//! fetch the batch (`GET /v1/passport/pq/{shard}.{batch}`: its leaves, root
//! and signature), find the token's [`leaf`] at `index`, check that the
//! leaves' Merkle root (`crate::merkle`) is the batch's root, and check the
//! signature over [`batch_message`] with the ML-DSA-65 key of `kid` from
//! the node's JWKS.

use crate::merkle::{self, Hash};
use crate::token::{SIG_ML_DSA, Token, from_base64url, to_base64url};

/// Leaves per batch, at most.
pub const BATCH_LEAVES_MAX: usize = 1024;

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
        let mac = to_base64url(&self.mac);
        format!("{}.{}.{}.{}.{mac}", self.kid, self.shard, self.batch, self.index)
    }

    /// Reads a caveat's value; `None` unless it is exactly one.
    pub fn parse(value: &str) -> Option<Attestation> {
        let mut parts = value.split('.');
        let mut number = || parts.next()?.parse::<u64>().ok();
        let kid = u32::try_from(number()?).ok()?;
        let shard = usize::try_from(number()?).ok()?;
        let (batch, index) = (number()?, number()?);
        let mac = from_base64url(parts.next()?)?.try_into().ok()?;
        if parts.next().is_some() || index as usize >= BATCH_LEAVES_MAX {
            return None;
        }
        Some(Attestation { kid, shard, batch, index, mac })
    }
}

/// The leaf of a token whose signed message (`TokenView::signed_message`
/// before its ML-DSA caveat) is `message`.
pub fn leaf(message: &[u8]) -> Hash {
    merkle::leaf_hash(blake3::hash(message).as_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caveat_values_round_trip_and_fit() {
        let attestation =
            Attestation { kid: u32::MAX, shard: 63, batch: u64::MAX, index: 1023, mac: [7; 16] };
        let value = attestation.caveat_value();
        let caveat = format!("{SIG_ML_DSA}={value}");
        assert!(caveat.len() <= crate::token::CAVEAT_BYTES_MAX, "{}", caveat.len());
        assert!(crate::token::Caveat::parse(&caveat).is_ok());
        assert_eq!(Attestation::parse(&value), Some(attestation));
        assert!(Attestation::parse("1.2.3").is_none());
        assert!(Attestation::parse(&format!("{value}.x")).is_none());
        assert!(Attestation::parse("1.0.5.1024.AAAAAAAAAAAAAAAAAAAAAA").is_none());
    }
}
