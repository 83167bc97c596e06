//! What a shard's services changed since its view's last write, and the
//! order in which a write takes it.

/// What changed on a shard since its last view write: puts and deletes in
/// the tables of each service, their bytes kept in one buffer.
#[derive(Debug, Default)]
pub struct ViewChanges {
    changes: Vec<Change>,
    pub(super) bytes: Vec<u8>,
    /// The table index of the service saving now (`ViewLayout::add`).
    base: usize,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Change {
    pub(super) table: u16,
    /// (start, length) in `bytes`.
    pub(super) key: (usize, usize),
    /// `None`: delete the key.
    pub(super) value: Option<(usize, usize)>,
}

impl ViewChanges {
    /// Collects the changes of the service whose first table is `base`.
    pub fn set_base(&mut self, base: usize) {
        self.base = base;
    }

    fn bytes(&mut self, bytes: &[u8]) -> (usize, usize) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        (start, bytes.len())
    }

    /// Writes `value` at `key` of the service's `table` (its index in the
    /// service's `TABLES`).
    pub fn put(&mut self, table: usize, key: &[u8], value: &[u8]) {
        self.put_parts(table, key, &[value]);
    }

    /// The same with the value in pieces, written one after the other.
    pub fn put_parts(&mut self, table: usize, key: &[u8], value: &[&[u8]]) {
        let key = self.bytes(key);
        let start = self.bytes.len();
        for part in value {
            self.bytes.extend_from_slice(part);
        }
        let value = Some((start, self.bytes.len() - start));
        self.changes.push(Change { table: (self.base + table) as u16, key, value });
    }

    /// Removes `key` from the service's `table`.
    pub fn delete(&mut self, table: usize, key: &[u8]) {
        let key = self.bytes(key);
        self.changes.push(Change { table: (self.base + table) as u16, key, value: None });
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// The memory the buffers hold.
    pub(super) fn capacity_bytes(&self) -> usize {
        self.bytes.capacity() + self.changes.capacity() * std::mem::size_of::<Change>()
    }

    /// Empties the changes and keeps the buffers.
    pub(super) fn clear(&mut self) {
        self.changes.clear();
        self.bytes.clear();
        self.base = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub(super) fn slice(&self, (start, len): (usize, usize)) -> &[u8] {
        &self.bytes[start..start + len]
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
        let mut order: Vec<(u16, u128, u32)> = (self.changes.iter().enumerate())
            .map(|(i, change)| {
                let at = u32::try_from(i).expect("a write holds fewer than 2^32 changes");
                (change.table, key_prefix(self.slice(change.key)), at)
            })
            .collect();
        let key = |at: u32| self.slice(self.changes[at as usize].key);
        order.sort_unstable_by(|a, b| {
            (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| key(a.2).cmp(key(b.2))).then(a.2.cmp(&b.2))
        });
        let mut last: Vec<Change> = Vec::with_capacity(order.len());
        let mut previous: Option<(u16, u128, u32)> = None;
        for (table, prefix, at) in order {
            let change = self.changes[at as usize];
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

/// A key's first 16 bytes as a big-endian number, zeros after a shorter
/// key: ordered as the keys are wherever two differ (LMDB orders keys by
/// their bytes, a key before its extensions).
fn key_prefix(key: &[u8]) -> u128 {
    let mut bytes = [0u8; 16];
    let len = key.len().min(16);
    bytes[..len].copy_from_slice(&key[..len]);
    u128::from_be_bytes(bytes)
}
