//! The ledger's wire and disk formats (SPEC §4): entries, and the log record
//! that persists one batch of them.
//!
//! An entry is encoded compactly, little-endian:
//!
//! ```text
//! kind u8 | flags u8 (1 = asset, 2 = ts, 4 = memo)
//! id_len u8 | id | account_len u8 | account | [asset_len u8 | asset]
//! amount u128 | [ts u64] | [memo_len u16 | memo]
//! ```
//!
//! A record is a fixed header followed by the batch's entries, each prefixed
//! by its length (u16), padded with zeros to a multiple of
//! [`RECORD_ALIGN_BYTES`] so that it can be written with O_DIRECT:
//!
//! ```text
//! magic u32 "RONL" | version u16 | reserved u16 | first_seq u64 | count u32
//! body_bytes u32 | committed_ms u64 | previous_root [32] | new_root [32]
//! checksum [32]
//! ```
//!
//! After the entries comes the idempotency trailer: `marks u16`, then per
//! mark `idem_key [16] | first u32 | count u32`, naming the entries (by
//! index in the record) that one request with an `idem_id` committed, so
//! that a replay finds its original answer after a restart too.
//!
//! The checksum is BLAKE3 over the header before it and the body, so a torn
//! or garbled record never passes as a valid one.

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
/// The largest item a record body frames: a ledger entry or another
/// service's operation (`crate::wallet`), told apart by their first byte.
pub const ITEM_BYTES_MAX: usize = 1024;
const _: () = assert!(ENTRY_BYTES_MAX <= ITEM_BYTES_MAX);
const _: () = assert!(crate::wallet::WALLET_OP_BYTES_MAX <= ITEM_BYTES_MAX);
const _: () = assert!(crate::revocation::REVOCATION_BYTES_MAX <= ITEM_BYTES_MAX);

/// Records start at multiples of this, and are padded to it.
pub const RECORD_ALIGN_BYTES: usize = 4096;
/// The magic number at the start of every record: "RONL".
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"RONL");
/// The record format this build writes and reads.
pub const RECORD_VERSION: u16 = 1;
pub const RECORD_HEADER_BYTES: usize = 4 + 2 + 2 + 8 + 4 + 4 + 8 + 32 + 32 + 32;
const _: () = assert!(RECORD_HEADER_BYTES == 128);
/// Entries in one record, at most (the upper bound of `ledger.batch_entries_max`).
pub const RECORD_ENTRIES_MAX: usize = 65_536;
/// The largest record body.
pub const RECORD_BODY_BYTES_MAX: usize =
    RECORD_ENTRIES_MAX * (2 + ITEM_BYTES_MAX) + 2 + RECORD_MARKS_MAX * (16 + 4 + 4);
const _: () = assert!(RECORD_BODY_BYTES_MAX <= u32::MAX as usize);

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

    const fn code(self) -> u8 {
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the value does.
    Short,
    /// A field is out of its limits or not what the format allows.
    Invalid(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short => f.write_str("truncated"),
            DecodeError::Invalid(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for DecodeError {}

impl Entry {
    /// Checks the limits that the encoding relies on.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.id.is_empty() || self.id.len() > ENTRY_ID_BYTES_MAX {
            return Err("id must be 1..=128 bytes");
        }
        if self.account.is_empty() || self.account.len() > ACCOUNT_BYTES_MAX {
            return Err("account must be 1..=128 bytes");
        }
        if self.asset.as_ref().is_some_and(|a| a.is_empty() || a.len() > ASSET_BYTES_MAX) {
            return Err("asset must be 1..=32 bytes");
        }
        if self.memo.as_ref().is_some_and(|m| m.len() > MEMO_BYTES_MAX) {
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
        if let Some(asset) = &self.asset {
            out.push(asset.len() as u8);
            out.extend_from_slice(asset.as_bytes());
        }
        out.extend_from_slice(&self.amount.to_le_bytes());
        if let Some(ts) = self.ts {
            out.extend_from_slice(&ts.to_le_bytes());
        }
        if let Some(memo) = &self.memo {
            out.extend_from_slice(&(memo.len() as u16).to_le_bytes());
            out.extend_from_slice(memo.as_bytes());
        }
        assert!(out.len() - start <= ENTRY_BYTES_MAX);
    }

    /// Decodes exactly one entry from `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        if bytes.len() > ENTRY_BYTES_MAX {
            return Err(DecodeError::Invalid("entry too large"));
        }
        let mut reader = Reader { bytes, at: 0 };
        let kind = EntryKind::from_code(reader.u8()?).ok_or(DecodeError::Invalid("entry kind"))?;
        let flags = reader.u8()?;
        if flags & !0b111 != 0 {
            return Err(DecodeError::Invalid("entry flags"));
        }
        let id = reader.text(ENTRY_ID_BYTES_MAX, "entry id")?;
        let account = reader.text(ACCOUNT_BYTES_MAX, "account")?;
        let asset =
            if flags & 1 != 0 { Some(reader.text(ASSET_BYTES_MAX, "asset")?) } else { None };
        let amount = u128::from_le_bytes(reader.array()?);
        let ts = if flags & 2 != 0 { Some(u64::from_le_bytes(reader.array()?)) } else { None };
        let memo = if flags & 4 != 0 {
            let len = u16::from_le_bytes(reader.array()?) as usize;
            if len > MEMO_BYTES_MAX {
                return Err(DecodeError::Invalid("memo too long"));
            }
            Some(reader.utf8(len, "memo")?)
        } else {
            None
        };
        if reader.at != bytes.len() {
            return Err(DecodeError::Invalid("bytes after the entry"));
        }
        let entry = Entry { id, kind, account, asset, amount, ts, memo };
        entry.check().map_err(DecodeError::Invalid)?;
        Ok(entry)
    }

    /// The leaf hash of the entry in the ledger's Merkle tree.
    pub fn leaf_hash(encoded: &[u8]) -> [u8; 32] {
        crate::merkle::leaf_hash(encoded)
    }
}

/// One item of a record body: a ledger entry or a wallet operation, told
/// apart by the first byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogItem {
    Entry(Entry),
    Wallet(crate::wallet::WalletOp),
    Revocation(crate::revocation::Revocation),
}

impl LogItem {
    pub fn decode(bytes: &[u8]) -> Result<LogItem, DecodeError> {
        match bytes.first() {
            Some(&crate::wallet::WALLET_OP_CODE) => {
                crate::wallet::WalletOp::decode(bytes).map(LogItem::Wallet)
            }
            Some(&crate::revocation::REVOCATION_CODE) => {
                crate::revocation::Revocation::decode(bytes).map(LogItem::Revocation)
            }
            _ => Entry::decode(bytes).map(LogItem::Entry),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            LogItem::Entry(entry) => entry.encode(out),
            LogItem::Wallet(op) => op.encode(out),
            LogItem::Revocation(revocation) => revocation.encode(out),
        }
    }
}

pub(crate) struct Reader<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(len).ok_or(DecodeError::Short)?;
        let taken = self.bytes.get(self.at..end).ok_or(DecodeError::Short)?;
        self.at = end;
        Ok(taken)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    pub(crate) fn utf8(&mut self, len: usize, what: &'static str) -> Result<String, DecodeError> {
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| DecodeError::Invalid(what))
    }

    /// A u8-length-prefixed UTF-8 string of 1..=max bytes.
    pub(crate) fn text(&mut self, max: usize, what: &'static str) -> Result<String, DecodeError> {
        let len = self.u8()? as usize;
        if len == 0 || len > max {
            return Err(DecodeError::Invalid(what));
        }
        self.utf8(len, what)
    }
}

/// The fixed part of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub first_seq: u64,
    pub count: u32,
    pub body_bytes: u32,
    /// When the committer sealed the record (ms since the Unix epoch).
    pub committed_ms: u64,
    pub previous_root: [u8; 32],
    pub new_root: [u8; 32],
    pub checksum: [u8; 32],
}

impl RecordHeader {
    /// The sequence number of the record's last entry.
    pub fn last_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count) - 1
    }

    /// The record's size on disk, padding included.
    pub fn padded_bytes(&self) -> usize {
        padded(RECORD_HEADER_BYTES + self.body_bytes as usize)
    }
}

/// `len` rounded up to the record alignment.
pub const fn padded(len: usize) -> usize {
    len.div_ceil(RECORD_ALIGN_BYTES) * RECORD_ALIGN_BYTES
}

/// Idempotency marks in one record, at most.
pub const RECORD_MARKS_MAX: usize = RECORD_ENTRIES_MAX;
const MARK_BYTES: usize = 16 + 4 + 4;

/// The entries `first..first + count` of a record were committed by one
/// request with this idempotency key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdemMark {
    pub key: [u8; 16],
    pub first: u32,
    pub count: u32,
}

/// Builds records: the caller appends entries (and marks), then seals.
#[derive(Debug, Default)]
pub struct RecordWriter {
    buffer: Vec<u8>,
    count: u32,
    marks: Vec<IdemMark>,
}

impl RecordWriter {
    /// Starts a record in `buffer` (cleared).
    pub fn start(&mut self) {
        self.buffer.clear();
        self.buffer.resize(RECORD_HEADER_BYTES, 0);
        self.count = 0;
        self.marks.clear();
    }

    /// Marks the entries `first..first + count` (pushed or to be pushed).
    pub fn mark(&mut self, mark: IdemMark) {
        assert!(self.marks.len() < RECORD_MARKS_MAX);
        self.marks.push(mark);
    }

    /// Appends one encoded entry; returns its bytes in the record, for hashing.
    pub fn push(&mut self, encoded: &[u8]) {
        assert!(encoded.len() <= ITEM_BYTES_MAX);
        assert!((self.count as usize) < RECORD_ENTRIES_MAX);
        self.buffer.extend_from_slice(&(encoded.len() as u16).to_le_bytes());
        self.buffer.extend_from_slice(encoded);
        self.count += 1;
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Writes the header and the padding; returns the record's bytes.
    pub fn seal(
        &mut self,
        first_seq: u64,
        committed_ms: u64,
        previous_root: [u8; 32],
        new_root: [u8; 32],
    ) -> &[u8] {
        assert!(self.count > 0, "a record holds at least one entry");
        assert!(first_seq >= 1, "sequence numbers start at 1");
        self.buffer.extend_from_slice(&(self.marks.len() as u16).to_le_bytes());
        for mark in &self.marks {
            assert!(u64::from(mark.first) + u64::from(mark.count) <= u64::from(self.count));
            self.buffer.extend_from_slice(&mark.key);
            self.buffer.extend_from_slice(&mark.first.to_le_bytes());
            self.buffer.extend_from_slice(&mark.count.to_le_bytes());
        }
        let body_bytes = (self.buffer.len() - RECORD_HEADER_BYTES) as u32;
        let header = &mut self.buffer[..RECORD_HEADER_BYTES];
        header[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        header[4..6].copy_from_slice(&RECORD_VERSION.to_le_bytes());
        header[6..8].copy_from_slice(&0u16.to_le_bytes());
        header[8..16].copy_from_slice(&first_seq.to_le_bytes());
        header[16..20].copy_from_slice(&self.count.to_le_bytes());
        header[20..24].copy_from_slice(&body_bytes.to_le_bytes());
        header[24..32].copy_from_slice(&committed_ms.to_le_bytes());
        header[32..64].copy_from_slice(&previous_root);
        header[64..96].copy_from_slice(&new_root);
        let checksum = record_checksum(&self.buffer[..96], &self.buffer[RECORD_HEADER_BYTES..]);
        self.buffer[96..RECORD_HEADER_BYTES].copy_from_slice(&checksum);
        let len = padded(self.buffer.len());
        self.buffer.resize(len, 0);
        &self.buffer
    }
}

fn record_checksum(header: &[u8], body: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"ron-log-record-v1");
    hasher.update(header);
    hasher.update(body);
    *hasher.finalize().as_bytes()
}

/// What is at an offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum RecordRead<'a> {
    /// A valid record and its body (the length-prefixed entries).
    Record(RecordHeader, &'a [u8]),
    /// Zeros where a header would be: the end of the written part.
    End,
    /// Not a valid record.
    Invalid(&'static str),
    /// The bytes end inside the record.
    Short,
}

/// The length of the record whose header starts `header` (at least
/// [`RECORD_HEADER_BYTES`]), padding excluded; `None` when it is not a
/// plausible header (the caller then reads it with [`read_record`] for why).
pub fn record_len(header: &[u8]) -> Option<usize> {
    if header.len() < RECORD_HEADER_BYTES
        || u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) != RECORD_MAGIC
    {
        return None;
    }
    let body_bytes = u32::from_le_bytes(header[20..24].try_into().expect("4 bytes")) as usize;
    (body_bytes <= RECORD_BODY_BYTES_MAX).then_some(RECORD_HEADER_BYTES + body_bytes)
}

/// Reads the record at the start of `bytes` (a whole segment from an offset).
pub fn read_record(bytes: &[u8]) -> RecordRead<'_> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return if bytes.iter().all(|b| *b == 0) { RecordRead::End } else { RecordRead::Short };
    }
    let header = &bytes[..RECORD_HEADER_BYTES];
    if header.iter().all(|b| *b == 0) {
        return RecordRead::End;
    }
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    if u32_at(0) != RECORD_MAGIC {
        return RecordRead::Invalid("bad magic");
    }
    if u16::from_le_bytes([header[4], header[5]]) != RECORD_VERSION {
        return RecordRead::Invalid("unknown record version");
    }
    let first_seq = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let count = u32_at(16);
    let body_bytes = u32_at(20);
    if first_seq == 0 || count == 0 || count as usize > RECORD_ENTRIES_MAX {
        return RecordRead::Invalid("bad sequence or count");
    }
    if body_bytes as usize > RECORD_BODY_BYTES_MAX {
        return RecordRead::Invalid("body too large");
    }
    let end = RECORD_HEADER_BYTES + body_bytes as usize;
    if bytes.len() < end {
        return RecordRead::Short;
    }
    let body = &bytes[RECORD_HEADER_BYTES..end];
    let checksum: [u8; 32] = header[96..].try_into().expect("32 bytes");
    if record_checksum(&header[..96], body) != checksum {
        return RecordRead::Invalid("checksum mismatch");
    }
    let record = RecordHeader {
        first_seq,
        count,
        body_bytes,
        committed_ms: u64::from_le_bytes(header[24..32].try_into().expect("8 bytes")),
        previous_root: header[32..64].try_into().expect("32 bytes"),
        new_root: header[64..96].try_into().expect("32 bytes"),
        checksum,
    };
    RecordRead::Record(record, body)
}

/// Splits a record body into its entries part (for [`body_entries`]) and
/// its idempotency marks.
pub fn split_body(body: &[u8], count: u32) -> Result<(&[u8], Vec<IdemMark>), DecodeError> {
    let mut at = 0usize;
    for _ in 0..count {
        let len = body.get(at..at + 2).ok_or(DecodeError::Short)?;
        let len = u16::from_le_bytes([len[0], len[1]]) as usize;
        if len > ITEM_BYTES_MAX {
            return Err(DecodeError::Invalid("entry length"));
        }
        at += 2 + len;
        if at > body.len() {
            return Err(DecodeError::Short);
        }
    }
    let (entries, trailer) = body.split_at(at);
    let marks_count = trailer.get(..2).ok_or(DecodeError::Short)?;
    let marks_count = u16::from_le_bytes([marks_count[0], marks_count[1]]) as usize;
    if trailer.len() != 2 + marks_count * MARK_BYTES {
        return Err(DecodeError::Invalid("idempotency trailer length"));
    }
    let marks = trailer[2..]
        .chunks_exact(MARK_BYTES)
        .map(|m| IdemMark {
            key: m[..16].try_into().expect("16 bytes"),
            first: u32::from_le_bytes(m[16..20].try_into().expect("4 bytes")),
            count: u32::from_le_bytes(m[20..24].try_into().expect("4 bytes")),
        })
        .collect::<Vec<_>>();
    if marks
        .iter()
        .any(|m| m.count == 0 || u64::from(m.first) + u64::from(m.count) > u64::from(count))
    {
        return Err(DecodeError::Invalid("idempotency mark out of range"));
    }
    Ok((entries, marks))
}

/// The encoded entries of a record body, in order.
pub fn body_entries(body: &[u8]) -> impl Iterator<Item = Result<&[u8], DecodeError>> {
    let mut rest = body;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() < 2 {
            rest = &[];
            return Some(Err(DecodeError::Short));
        }
        let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        if len > ITEM_BYTES_MAX || rest.len() < 2 + len {
            rest = &[];
            return Some(Err(DecodeError::Invalid("entry length")));
        }
        let entry = &rest[2..2 + len];
        rest = &rest[2 + len..];
        Some(Ok(entry))
    })
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
    fn records_round_trip_and_refuse_any_changed_byte() {
        let mut writer = RecordWriter::default();
        writer.start();
        let mut encoded = Vec::new();
        for i in 0..3u128 {
            encoded.clear();
            entry(&format!("e{i}"), EntryKind::Credit, i + 1).encode(&mut encoded);
            writer.push(&encoded);
        }
        let bytes = writer.seal(7, 1234, [1; 32], [2; 32]).to_vec();
        assert_eq!(bytes.len() % RECORD_ALIGN_BYTES, 0);
        let RecordRead::Record(header, body) = read_record(&bytes) else { panic!("valid") };
        let (body, marks) = split_body(body, header.count).unwrap();
        assert!(marks.is_empty());
        assert_eq!((header.first_seq, header.count, header.last_seq()), (7, 3, 9));
        assert_eq!(
            (header.committed_ms, header.previous_root, header.new_root),
            (1234, [1; 32], [2; 32])
        );
        assert_eq!(header.padded_bytes(), bytes.len());
        let entries: Vec<Entry> =
            body_entries(body).map(|e| Entry::decode(e.unwrap()).unwrap()).collect();
        assert_eq!(entries[2], entry("e2", EntryKind::Credit, 3));
        let used = RECORD_HEADER_BYTES + header.body_bytes as usize;
        for at in 0..used {
            let mut garbled = bytes.clone();
            garbled[at] ^= 0x40;
            assert!(!matches!(read_record(&garbled), RecordRead::Record(..)), "byte {at}");
        }
        assert_eq!(read_record(&vec![0; RECORD_ALIGN_BYTES]), RecordRead::End);
        // Marks round-trip.
        writer.start();
        writer.push(&encoded);
        writer.push(&encoded);
        let mark = IdemMark { key: [7; 16], first: 1, count: 1 };
        writer.mark(mark);
        let bytes = writer.seal(1, 0, [0; 32], [0; 32]).to_vec();
        let RecordRead::Record(header, body) = read_record(&bytes) else { panic!("valid") };
        let (entries, marks) = split_body(body, header.count).unwrap();
        assert_eq!(marks, vec![mark]);
        assert_eq!(body_entries(entries).count(), 2);
        assert!(split_body(body, 3).is_err());
        assert_eq!(read_record(&bytes[..RECORD_HEADER_BYTES + 1]), RecordRead::Short);
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
            let _ = read_record(&bytes);
            for entry in body_entries(&bytes) {
                let _ = entry.map(Entry::decode);
            }
        }
    }
}
