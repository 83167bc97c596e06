//! What a shard's services changed since its view's last write, and the
//! order in which a write takes it.

/// What changed on a shard since its last view write: puts and deletes in
/// the tables of each service.
///
/// The changes and their bytes are kept in chunks of a fixed size, and
/// emptied, the buffers keep their chunks for the next write: a write at
/// full rate carries a few hundred megabytes, and one buffer grown by
/// doubling copied all it held at each doubling and faulted every page of
/// the new copy in, a quarter of the shard's time late in a minute of
/// transfers (bench/RESULTS.md). Growing by a chunk moves nothing.
#[derive(Debug, Default)]
pub struct ViewChanges {
    changes: Chunks<Change>,
    bytes: Chunks<u8>,
    /// The table index of the service saving now (`ViewLayout::add`).
    base: usize,
}

/// One put or delete: its key, then its value, in one chunk of `bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Change {
    pub(super) table: u16,
    chunk: u32,
    start: u32,
    key_len: u32,
    /// `DELETE`: delete the key.
    value_len: u32,
}

const DELETE: u32 = u32::MAX;
/// Bytes a chunk of keys and values holds (one larger than this gets a
/// chunk of its own size).
const BYTES_PER_CHUNK: usize = 2 << 20;
/// Changes a chunk of changes holds: a change's index splits into its
/// chunk and its place there.
const CHANGES_PER_CHUNK: usize = 1 << 16;

impl ViewChanges {
    /// Collects the changes of the service whose first table is `base`.
    pub fn set_base(&mut self, base: usize) {
        self.base = base;
    }

    /// Writes `value` at `key` of the service's `table` (its index in the
    /// service's `TABLES`).
    pub fn put(&mut self, table: usize, key: &[u8], value: &[u8]) {
        self.put_parts(table, key, &[value]);
    }

    /// The same with the value in pieces, written one after the other.
    pub fn put_parts(&mut self, table: usize, key: &[u8], value: &[&[u8]]) {
        let value_len: usize = value.iter().map(|part| part.len()).sum();
        let value_len = u32::try_from(value_len).ok().filter(|&len| len != DELETE);
        self.push(table, key, value, value_len.expect("a view value is under 4 GiB"));
    }

    /// Removes `key` from the service's `table`.
    pub fn delete(&mut self, table: usize, key: &[u8]) {
        self.push(table, key, &[], DELETE);
    }

    fn push(&mut self, table: usize, key: &[u8], value: &[&[u8]], value_len: u32) {
        let key_len = u32::try_from(key.len()).expect("a view key is under 4 GiB");
        let len = key.len() + if value_len == DELETE { 0 } else { value_len as usize };
        let (chunk, bytes) = self.bytes.room(len, BYTES_PER_CHUNK);
        let start = u32::try_from(bytes.len()).expect("a chunk is under 4 GiB");
        bytes.extend_from_slice(key);
        for part in value {
            bytes.extend_from_slice(part);
        }
        let chunk = u32::try_from(chunk).expect("fewer than 2^32 chunks");
        let table = (self.base + table) as u16;
        let change = Change { table, chunk, start, key_len, value_len };
        self.changes.room(1, CHANGES_PER_CHUNK).1.push(change);
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The memory the buffers hold.
    #[cfg(test)]
    pub(super) fn capacity_bytes(&self) -> usize {
        self.bytes.capacity_bytes() + self.changes.capacity_bytes()
    }

    /// Empties the changes and keeps the buffers' chunks, as many as fit in
    /// `bytes_max` (the first ones).
    pub(super) fn clear_within(&mut self, bytes_max: usize) {
        let changes_max = bytes_max.min(self.changes.capacity_bytes());
        self.changes.clear_within(changes_max);
        self.bytes.clear_within(bytes_max - self.changes.capacity_bytes());
        self.base = 0;
    }

    pub(super) fn key(&self, change: &Change) -> &[u8] {
        let start = change.start as usize;
        &self.bytes.chunks[change.chunk as usize][start..start + change.key_len as usize]
    }

    /// The value a change puts, or `None` for a delete.
    pub(super) fn value(&self, change: &Change) -> Option<&[u8]> {
        if change.value_len == DELETE {
            return None;
        }
        let start = (change.start + change.key_len) as usize;
        Some(&self.bytes.chunks[change.chunk as usize][start..start + change.value_len as usize])
    }

    /// Every change, in the order made.
    fn iter(&self) -> impl Iterator<Item = &Change> {
        self.changes.chunks.iter().flatten()
    }

    fn at(&self, at: u32) -> &Change {
        let at = at as usize;
        &self.changes.chunks[at / CHANGES_PER_CHUNK][at % CHANGES_PER_CHUNK]
    }

    /// The last change of each key, ordered by table and key.
    ///
    /// Sorted by table, then by the key's first 16 bytes read as one
    /// number, and only where those are equal by the whole key, then in
    /// the order made: the keys most changed (txids, idempotency slots)
    /// are random and differ in their first bytes, so the sort compares
    /// integers where comparing the keys' bytes, found through their
    /// offsets, took a third of the writer's time.
    pub(super) fn last_per_key(&self) -> Vec<Change> {
        let mut order: Vec<(u16, u128, u32)> = (self.iter().enumerate())
            .map(|(i, change)| {
                let at = u32::try_from(i).expect("a write holds fewer than 2^32 changes");
                (change.table, key_prefix(self.key(change)), at)
            })
            .collect();
        let key = |at: u32| self.key(self.at(at));
        order.sort_unstable_by(|a, b| {
            (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| key(a.2).cmp(key(b.2))).then(a.2.cmp(&b.2))
        });
        let mut last: Vec<Change> = Vec::with_capacity(order.len());
        let mut previous: Option<(u16, u128, u32)> = None;
        for (table, prefix, at) in order {
            let change = *self.at(at);
            match previous {
                Some((t, p, kept)) if t == table && p == prefix && key(kept) == key(at) => {
                    *last.last_mut().expect("kept") = change;
                }
                _ => last.push(change),
            }
            previous = Some((table, prefix, at));
        }
        last
    }
}

/// Items in chunks that are never moved once made. Chunks are filled in
/// order; emptied, they are kept to be filled again.
#[derive(Debug)]
struct Chunks<T> {
    chunks: Vec<Vec<T>>,
    /// The chunk being filled.
    at: usize,
}

impl<T> Default for Chunks<T> {
    fn default() -> Self {
        Chunks { chunks: Vec::new(), at: 0 }
    }
}

impl<T> Chunks<T> {
    /// The chunk to write `len` more items to, and its index: the one being
    /// filled if they fit there, else the next (kept or made, of
    /// `chunk_len` items or of `len` if more).
    fn room(&mut self, len: usize, chunk_len: usize) -> (usize, &mut Vec<T>) {
        if let Some(chunk) = self.chunks.get(self.at) {
            if chunk.len() + len > chunk.capacity().min(chunk_len.max(len)) {
                self.at += 1;
            }
        }
        match self.chunks.get(self.at) {
            Some(kept) if kept.capacity() >= len => {}
            Some(_) => self.chunks[self.at] = Vec::with_capacity(chunk_len.max(len)),
            None => self.chunks.push(Vec::with_capacity(chunk_len.max(len))),
        }
        (self.at, &mut self.chunks[self.at])
    }

    fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    fn capacity_bytes(&self) -> usize {
        self.chunks.iter().map(|chunk| chunk.capacity() * std::mem::size_of::<T>()).sum()
    }

    /// Empties every chunk and keeps the first ones, as many as fit in
    /// `bytes_max`.
    fn clear_within(&mut self, bytes_max: usize) {
        let mut kept = 0;
        self.chunks.retain_mut(|chunk| {
            chunk.clear();
            kept += chunk.capacity() * std::mem::size_of::<T>();
            kept <= bytes_max
        });
        self.at = 0;
    }
}

/// A key's first 16 bytes as a big-endian number, zeros after a shorter
/// key: ordered as the keys are wherever two differ (LMDB orders keys by
/// their bytes, a key before its extensions).
fn key_prefix(key: &[u8]) -> u128 {
    let mut bytes = [0u8; 16];
    let len = key.len().min(16);
    bytes[..len].copy_from_slice(&key[..len]);
    u128::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> [u8; 4] {
        i.to_be_bytes()
    }

    /// 40 bytes, distinct per `i`.
    fn value(i: u32) -> Vec<u8> {
        (0..40).map(|b| (i as u8).wrapping_add(b)).collect()
    }

    #[test]
    fn a_change_record_is_20_bytes() {
        // The memory budget's figure for a transfer (limits.rs) counts them.
        assert_eq!(std::mem::size_of::<Change>(), 20);
    }

    #[test]
    fn changes_past_a_chunk_read_back_and_growing_moves_nothing() {
        let mut changes = ViewChanges::default();
        changes.put(0, &key(0), &value(0));
        let first = changes.key(changes.at(0)).as_ptr();
        // More changes than a chunk holds, and more bytes: 100 000 × 44.
        let count = (CHANGES_PER_CHUNK + CHANGES_PER_CHUNK / 2) as u32;
        assert!(count as usize * 44 > 2 * BYTES_PER_CHUNK);
        for i in 1..count {
            match i % 10 {
                0 => changes.delete(1, &key(i)),
                _ => changes.put_parts(1, &key(i), &[&value(i)[..10], &value(i)[10..]]),
            }
        }
        assert_eq!(changes.key(changes.at(0)).as_ptr(), first, "the first chunk did not move");
        assert_eq!(changes.len(), count as usize);
        for (at, change) in changes.iter().enumerate() {
            let i = at as u32;
            assert_eq!(change, changes.at(i));
            assert_eq!(changes.key(change), key(i));
            let deleted = i % 10 == 0 && i > 0;
            assert_eq!(changes.value(change), (!deleted).then(|| value(i)).as_deref());
        }
        // One value larger than a chunk: a chunk of its own.
        let large = vec![7u8; BYTES_PER_CHUNK + 1];
        changes.put(2, b"large", &large);
        changes.put(2, b"after", b"small");
        let last = changes.last_per_key();
        assert_eq!(last.len(), count as usize + 2);
        assert_eq!(changes.value(&last[count as usize]), Some(&b"small"[..]));
        assert_eq!(changes.value(&last[count as usize + 1]), Some(&large[..]));
    }

    #[test]
    fn emptied_buffers_keep_their_first_chunks_within_the_limit() {
        let mut changes = ViewChanges::default();
        let fill = |changes: &mut ViewChanges| {
            for i in 0..(3 * BYTES_PER_CHUNK / 44) as u32 {
                changes.put(0, &key(i), &value(i));
            }
        };
        fill(&mut changes);
        let full = changes.capacity_bytes();
        changes.clear_within(usize::MAX);
        assert!(changes.is_empty() && changes.last_per_key().is_empty());
        assert_eq!(changes.capacity_bytes(), full, "all kept");
        fill(&mut changes);
        assert_eq!(changes.capacity_bytes(), full, "filled again without growing");
        // Under the limit of half of it: some chunks freed, the rest kept.
        changes.clear_within(full / 2);
        let kept = changes.capacity_bytes();
        assert!(kept > 0 && kept <= full / 2, "{kept} of {full}");
        fill(&mut changes);
        assert_eq!(changes.capacity_bytes(), full);
        assert_eq!(changes.value(changes.at(7)), Some(&value(7)[..]));
        changes.clear_within(0);
        assert_eq!(changes.capacity_bytes(), 0);
    }
}
