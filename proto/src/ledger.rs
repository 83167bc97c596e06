//! The ledger's entries (SPEC §4): what `POST /ingest` commits, one log
//! item each (`crate::log`).
//!
//! An entry is encoded compactly, little-endian:
//!
//! ```text
//! kind u8 | flags u8 (1 = asset, 2 = ts, 4 = memo)
//! id_len u8 | id | account_len u8 | account | [asset_len u8 | asset]
//! amount u128 | [ts u64] | [memo_len u16 | memo]
//! ```

use crate::log::{DecodeError, ITEM_BYTES_MAX, Reader};

/// Entry ids are 1..=this many bytes.
pub const ENTRY_ID_BYTES_MAX: usize = 128;
/// Account ids, in bytes.
pub const ACCOUNT_BYTES_MAX: usize = 128;
/// Asset names, in bytes.
pub const ASSET_BYTES_MAX: usize = 32;
/// Memos, in bytes.
pub const MEMO_BYTES_MAX: usize = 256;
/// The largest encoded entry.
pub const ENTRY_BYTES_MAX: usize = 2
    + 1
    + ENTRY_ID_BYTES_MAX
    + 1
    + ACCOUNT_BYTES_MAX
    + 1
    + ASSET_BYTES_MAX
    + 16
    + 8
    + 2
    + MEMO_BYTES_MAX;
const _: () = assert!(ENTRY_BYTES_MAX <= u16::MAX as usize, "entries are length-prefixed by a u16");
const _: () = assert!(ENTRY_BYTES_MAX <= ITEM_BYTES_MAX);

/// The first bytes of entries: the log item codes of the ledger.
pub const ENTRY_CODES: [u8; 7] = [1, 2, 3, 4, 5, 6, 7];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKind {
    Credit,
    Debit,
    Transfer,
    Mint,
    Burn,
    Hold,
    Reverse,
}

impl EntryKind {
    pub const ALL: [EntryKind; 7] = [
        EntryKind::Credit,
        EntryKind::Debit,
        EntryKind::Transfer,
        EntryKind::Mint,
        EntryKind::Burn,
        EntryKind::Hold,
        EntryKind::Reverse,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            EntryKind::Credit => "Credit",
            EntryKind::Debit => "Debit",
            EntryKind::Transfer => "Transfer",
            EntryKind::Mint => "Mint",
            EntryKind::Burn => "Burn",
            EntryKind::Hold => "Hold",
            EntryKind::Reverse => "Reverse",
        }
    }

    pub fn parse(name: &str) -> Option<EntryKind> {
        EntryKind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The entry's first byte in its encoding (and so in the log).
    pub const fn code(self) -> u8 {
        match self {
            EntryKind::Credit => 1,
            EntryKind::Debit => 2,
            EntryKind::Transfer => 3,
            EntryKind::Mint => 4,
            EntryKind::Burn => 5,
            EntryKind::Hold => 6,
            EntryKind::Reverse => 7,
        }
    }

    fn from_code(code: u8) -> Option<EntryKind> {
        EntryKind::ALL.into_iter().find(|kind| kind.code() == code)
    }

    /// Adds to the account's balance (SPEC §4.3's "credit-like").
    pub const fn credits(self) -> bool {
        matches!(self, EntryKind::Credit | EntryKind::Transfer | EntryKind::Mint)
    }
}

/// One ledger entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub kind: EntryKind,
    pub account: String,
    pub asset: Option<String>,
    pub amount: u128,
    pub ts: Option<u64>,
    pub memo: Option<String>,
}

impl Entry {
    /// The entry as borrowed fields.
    pub fn borrowed(&self) -> EntryRef<'_> {
        EntryRef {
            id: &self.id,
            kind: self.kind,
            account: &self.account,
            asset: self.asset.as_deref(),
            amount: self.amount,
            ts: self.ts,
            memo: self.memo.as_deref(),
        }
    }

    /// Checks the limits that the encoding relies on.
    pub fn check(&self) -> Result<(), &'static str> {
        self.borrowed().check()
    }

    /// Appends the entry's encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.borrowed().encode(out)
    }

    /// Decodes exactly one entry from `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        let entry = EntryRef::decode(bytes)?;
        let entry = Entry {
            id: entry.id.to_owned(),
            kind: entry.kind,
            account: entry.account.to_owned(),
            asset: entry.asset.map(str::to_owned),
            amount: entry.amount,
            ts: entry.ts,
            memo: entry.memo.map(str::to_owned),
        };
        entry.check().map_err(DecodeError::Invalid)?;
        Ok(entry)
    }

    /// The leaf hash of the entry in the ledger's Merkle tree.
    pub fn leaf_hash(encoded: &[u8]) -> [u8; 32] {
        crate::merkle::leaf_hash(encoded)
    }
}

/// An entry decoded in place: what an owner shard applies, without
/// allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub id: &'a str,
    pub kind: EntryKind,
    pub account: &'a str,
    pub asset: Option<&'a str>,
    pub amount: u128,
    pub ts: Option<u64>,
    pub memo: Option<&'a str>,
}

impl EntryRef<'_> {
    /// Checks the limits that the encoding relies on.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.id.is_empty() || self.id.len() > ENTRY_ID_BYTES_MAX {
            return Err("id must be 1..=128 bytes");
        }
        if self.account.is_empty() || self.account.len() > ACCOUNT_BYTES_MAX {
            return Err("account must be 1..=128 bytes");
        }
        if self.asset.is_some_and(|a| a.is_empty() || a.len() > ASSET_BYTES_MAX) {
            return Err("asset must be 1..=32 bytes");
        }
        if self.memo.is_some_and(|m| m.len() > MEMO_BYTES_MAX) {
            return Err("memo must be at most 256 bytes");
        }
        Ok(())
    }

    /// Appends the entry's encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        assert!(self.check().is_ok(), "entries are checked before they are encoded");
        let start = out.len();
        let flags = u8::from(self.asset.is_some())
            | u8::from(self.ts.is_some()) << 1
            | u8::from(self.memo.is_some()) << 2;
        out.push(self.kind.code());
        out.push(flags);
        out.push(self.id.len() as u8);
        out.extend_from_slice(self.id.as_bytes());
        out.push(self.account.len() as u8);
        out.extend_from_slice(self.account.as_bytes());
        if let Some(asset) = self.asset {
            out.push(asset.len() as u8);
            out.extend_from_slice(asset.as_bytes());
        }
        out.extend_from_slice(&self.amount.to_le_bytes());
        if let Some(ts) = self.ts {
            out.extend_from_slice(&ts.to_le_bytes());
        }
        if let Some(memo) = self.memo {
            out.extend_from_slice(&(memo.len() as u16).to_le_bytes());
            out.extend_from_slice(memo.as_bytes());
        }
        assert!(out.len() - start <= ENTRY_BYTES_MAX);
    }
}

impl<'a> EntryRef<'a> {
    /// Decodes exactly one entry from `bytes`.
    pub fn decode(bytes: &'a [u8]) -> Result<EntryRef<'a>, DecodeError> {
        if bytes.len() > ENTRY_BYTES_MAX {
            return Err(DecodeError::Invalid("entry too large"));
        }
        let mut reader = Reader { bytes, at: 0 };
        let kind = EntryKind::from_code(reader.u8()?).ok_or(DecodeError::Invalid("entry kind"))?;
        let flags = reader.u8()?;
        if flags & !0b111 != 0 {
            return Err(DecodeError::Invalid("entry flags"));
        }
        let id = reader.text_ref(ENTRY_ID_BYTES_MAX, "entry id")?;
        let account = reader.text_ref(ACCOUNT_BYTES_MAX, "account")?;
        let asset =
            if flags & 1 != 0 { Some(reader.text_ref(ASSET_BYTES_MAX, "asset")?) } else { None };
        let amount = u128::from_le_bytes(reader.array()?);
        let ts = if flags & 2 != 0 { Some(u64::from_le_bytes(reader.array()?)) } else { None };
        let memo = if flags & 4 != 0 {
            let len = u16::from_le_bytes(reader.array()?) as usize;
            if len > MEMO_BYTES_MAX {
                return Err(DecodeError::Invalid("memo too long"));
            }
            Some(reader.str(len, "memo")?)
        } else {
            None
        };
        if reader.at != bytes.len() {
            return Err(DecodeError::Invalid("bytes after the entry"));
        }
        Ok(EntryRef { id, kind, account, asset, amount, ts, memo })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(id: &str, kind: EntryKind, amount: u128) -> Entry {
        Entry {
            id: id.to_owned(),
            kind,
            account: "alice".to_owned(),
            asset: Some("roc".to_owned()),
            amount,
            ts: None,
            memo: None,
        }
    }

    #[test]
    fn entry_codes_are_the_kinds_codes() {
        let codes: Vec<u8> = EntryKind::ALL.iter().map(|kind| kind.code()).collect();
        assert_eq!(codes, ENTRY_CODES);
    }

    #[test]
    fn entry_limits_are_checked_both_ways() {
        let mut long_id = entry(&"x".repeat(129), EntryKind::Mint, 1);
        assert!(long_id.check().is_err());
        long_id.id = "x".repeat(128);
        assert!(long_id.check().is_ok());
        let mut encoded = Vec::new();
        long_id.encode(&mut encoded);
        assert_eq!(Entry::decode(&encoded).unwrap(), long_id);
        encoded[2] = 0; // an empty id
        assert!(Entry::decode(&encoded).is_err());
        assert!(Entry::decode(&[9, 0]).is_err());
        assert_eq!(Entry::decode(&[1]), Err(DecodeError::Short));
    }

    fn any_text(max: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[a-z0-9:_-]{{1,{max}}}")).unwrap()
    }

    proptest! {
        #[test]
        fn entries_round_trip(id in any_text(128), account in any_text(128),
                              asset in proptest::option::of(any_text(32)), amount in any::<u128>(),
                              ts in proptest::option::of(any::<u64>()),
                              memo in proptest::option::of("[ -~]{0,256}"),
                              kind in 0usize..7) {
            let entry = Entry { id, kind: EntryKind::ALL[kind], account, asset, amount, ts, memo };
            let mut encoded = Vec::new();
            entry.encode(&mut encoded);
            prop_assert_eq!(Entry::decode(&encoded).unwrap(), entry);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Entry::decode(&bytes);
            for entry in crate::log::body_entries(&bytes) {
                let _ = entry.map(Entry::decode);
            }
        }
    }
}
