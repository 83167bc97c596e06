//! The log's disk format (SPEC §4.1): a record persists one batch of items.
//!
//! A record is a fixed header followed by the batch's items, each prefixed
//! by its length (u16), padded with zeros to a multiple of
//! [`RECORD_ALIGN_BYTES`] so that it can be written with O_DIRECT:
//!
//! ```text
//! magic u32 "RONL" | version u16 | reserved u16 | first_seq u64 | count u32
//! body_bytes u32 | committed_ms u64 | previous_root [32] | new_root [32]
//! checksum [32]
//! ```
//!
//! After the items comes the idempotency trailer: `marks u16`, then per
//! mark `idem_key [16] | first u32 | count u32`, naming the items (by
//! index in the record) that one request with an idempotency key
//! committed, so that a replay finds its original answer after a restart
//! too.
//!
//! The checksum is BLAKE3 over the header before it and the body, so a torn
//! or garbled record never passes as a valid one.
//!
//! An item's first byte says which service wrote it (ledger entries use
//! their kind, 1..=7; `crate::wallet::WALLET_OP_CODE`;
//! `crate::revocation::REVOCATION_CODE`; the index's 0x40..=0x42, `crate::index`;
//! 0x7E the test service echo's). The
//! log itself never looks inside
//! an item: each service decodes its own, and the node's registry refuses
//! two services that claim one first byte.

/// The largest item a record body frames. Each item format checks its
/// own maximum against this one.
pub const ITEM_BYTES_MAX: usize = 2048;

/// Records start at multiples of this, and are padded to it.
pub const RECORD_ALIGN_BYTES: usize = 4096;
/// The magic number at the start of every record: "RONL".
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"RONL");
/// The record format this build writes and reads.
pub const RECORD_VERSION: u16 = 1;
pub const RECORD_HEADER_BYTES: usize = 4 + 2 + 2 + 8 + 4 + 4 + 8 + 32 + 32 + 32;
const _: () = assert!(RECORD_HEADER_BYTES == 128);
/// Entries in one record, at most (the upper bound of `ledger.batch_entries_max`).
pub const RECORD_ENTRIES_MAX: usize = 65_535;
/// The largest record body.
pub const RECORD_BODY_BYTES_MAX: usize =
    RECORD_ENTRIES_MAX * (2 + ITEM_BYTES_MAX) + 2 + RECORD_MARKS_MAX * (16 + 4 + 4);
const _: () = assert!(RECORD_BODY_BYTES_MAX <= u32::MAX as usize);

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
        self.str(len, what).map(str::to_owned)
    }

    pub(crate) fn str(&mut self, len: usize, what: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.take(len)?).map_err(|_| DecodeError::Invalid(what))
    }

    /// A u8-length-prefixed UTF-8 string of 1..=max bytes.
    pub(crate) fn text(&mut self, max: usize, what: &'static str) -> Result<String, DecodeError> {
        self.text_ref(max, what).map(str::to_owned)
    }

    /// The same, borrowed.
    pub(crate) fn text_ref(
        &mut self,
        max: usize,
        what: &'static str,
    ) -> Result<&'a str, DecodeError> {
        let len = self.u8()? as usize;
        if len == 0 || len > max {
            return Err(DecodeError::Invalid(what));
        }
        self.str(len, what)
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

/// Idempotency marks in one record, at most (one per append, so at most
/// one per entry); their count is written as a u16.
pub const RECORD_MARKS_MAX: usize = RECORD_ENTRIES_MAX;
const _: () = assert!(RECORD_MARKS_MAX <= u16::MAX as usize);
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

    /// The bytes of the record sealed last.
    pub fn sealed(&self) -> &[u8] {
        assert_eq!(self.buffer.len() % RECORD_ALIGN_BYTES, 0, "sealed");
        &self.buffer
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
    use crate::ledger::{Entry, EntryKind};
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

    proptest! {
        #[test]
        fn reading_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = read_record(&bytes);
            let _ = body_entries(&bytes).count();
        }
    }
}
