//! Passport revocations as log items (SPEC §6): a revocation is committed
//! like any write, so every shard applies it from the committed stream and a
//! restart finds it in the log.
//!
//! One item of a record body, told apart from ledger entries and wallet
//! operations by its first byte ([`REVOCATION_CODE`]). Little-endian:
//!
//! ```text
//! code u8 (0x30) | what u8 (1 token id, 2 subject, 3 kid, 4 epoch)
//! | token_id [16] | subject_len u16 subject | kid u32 | epoch u64   (one of)
//! | reason_len u16 | reason | ts_ms u64
//! ```

use crate::log::{DecodeError, ITEM_BYTES_MAX, Reader};
use crate::token::{NAME_BYTES_MAX, TOKEN_ID_BYTES};

/// The first byte of a revocation in a record body.
pub const REVOCATION_CODE: u8 = 0x30;
/// A revocation's reason, in bytes.
pub const REASON_BYTES_MAX: usize = 256;
/// The largest encoded revocation.
pub const REVOCATION_BYTES_MAX: usize = 2 + 2 + NAME_BYTES_MAX + 2 + REASON_BYTES_MAX + 8;
const _: () = assert!(REVOCATION_BYTES_MAX <= ITEM_BYTES_MAX, "a revocation is one log item");

/// What a revocation refuses from now on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Revoked {
    /// One token (and every token attenuated from it: they share the id).
    TokenId([u8; TOKEN_ID_BYTES]),
    /// Every token issued to this subject.
    Subject(String),
    /// Every token minted under this root key.
    Kid(u32),
    /// Every token whose epoch is at most this; new tokens get a later one.
    Epoch(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub revoked: Revoked,
    pub reason: String,
    /// When the node accepted it (unix milliseconds).
    pub ts_ms: u64,
}

impl Revocation {
    pub fn encode(&self, out: &mut Vec<u8>) {
        assert!(self.reason.len() <= REASON_BYTES_MAX, "reasons are checked before encoding");
        out.push(REVOCATION_CODE);
        match &self.revoked {
            Revoked::TokenId(id) => {
                out.push(1);
                out.extend_from_slice(id);
            }
            Revoked::Subject(subject) => {
                assert!(!subject.is_empty() && subject.len() <= NAME_BYTES_MAX);
                out.push(2);
                out.extend_from_slice(&(subject.len() as u16).to_le_bytes());
                out.extend_from_slice(subject.as_bytes());
            }
            Revoked::Kid(kid) => {
                out.push(3);
                out.extend_from_slice(&kid.to_le_bytes());
            }
            Revoked::Epoch(epoch) => {
                out.push(4);
                out.extend_from_slice(&epoch.to_le_bytes());
            }
        }
        out.extend_from_slice(&(self.reason.len() as u16).to_le_bytes());
        out.extend_from_slice(self.reason.as_bytes());
        out.extend_from_slice(&self.ts_ms.to_le_bytes());
    }

    pub fn decode(bytes: &[u8]) -> Result<Revocation, DecodeError> {
        if bytes.len() > REVOCATION_BYTES_MAX {
            return Err(DecodeError::Invalid("revocation too large"));
        }
        let mut reader = Reader { bytes, at: 0 };
        if reader.u8()? != REVOCATION_CODE {
            return Err(DecodeError::Invalid("not a revocation"));
        }
        let revoked = match reader.u8()? {
            1 => Revoked::TokenId(reader.array()?),
            2 => {
                let len = usize::from(u16::from_le_bytes(reader.array()?));
                if len == 0 || len > NAME_BYTES_MAX {
                    return Err(DecodeError::Invalid("revoked subject"));
                }
                Revoked::Subject(reader.utf8(len, "revoked subject")?)
            }
            3 => Revoked::Kid(u32::from_le_bytes(reader.array()?)),
            4 => Revoked::Epoch(u64::from_le_bytes(reader.array()?)),
            _ => return Err(DecodeError::Invalid("what a revocation revokes")),
        };
        let len = usize::from(u16::from_le_bytes(reader.array()?));
        if len > REASON_BYTES_MAX {
            return Err(DecodeError::Invalid("revocation reason"));
        }
        let reason = reader.utf8(len, "revocation reason")?;
        let ts_ms = u64::from_le_bytes(reader.array()?);
        if reader.at != bytes.len() {
            return Err(DecodeError::Invalid("bytes after the revocation"));
        }
        Ok(Revocation { revoked, reason, ts_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn revoked() -> impl Strategy<Value = Revoked> {
        prop_oneof![
            any::<[u8; 16]>().prop_map(Revoked::TokenId),
            "[a-z:]{1,40}".prop_map(Revoked::Subject),
            any::<u32>().prop_map(Revoked::Kid),
            any::<u64>().prop_map(Revoked::Epoch),
        ]
    }

    proptest! {
        #[test]
        fn round_trips_and_every_cut_is_refused(
            revoked in revoked(),
            reason in "[ -~]{0,60}",
            ts_ms in any::<u64>(),
        ) {
            let revocation = Revocation { revoked, reason, ts_ms };
            let mut bytes = Vec::new();
            revocation.encode(&mut bytes);
            prop_assert!(bytes.len() <= REVOCATION_BYTES_MAX);
            prop_assert_eq!(Revocation::decode(&bytes), Ok(revocation));
            for cut in 0..bytes.len() {
                prop_assert!(Revocation::decode(&bytes[..cut]).is_err());
            }
            bytes.push(0);
            prop_assert!(Revocation::decode(&bytes).is_err());
        }
    }

    #[test]
    fn the_largest_fits_its_bound() {
        let revocation = Revocation {
            revoked: Revoked::Subject("s".repeat(NAME_BYTES_MAX)),
            reason: "r".repeat(REASON_BYTES_MAX),
            ts_ms: u64::MAX,
        };
        let mut bytes = Vec::new();
        revocation.encode(&mut bytes);
        assert_eq!(bytes.len(), REVOCATION_BYTES_MAX);
        assert_eq!(Revocation::decode(&bytes), Ok(revocation));
    }
}
