//! The committer's index: everything the log's state holds besides the log
//! itself — the tree's nodes, the root after every record and where that
//! record is, every entry id ever committed and what each idempotency key
//! committed — kept in an LMDB environment under `data_dir/log-index/`, so
//! that a start reads only the log after its checkpoint.
//!
//! It is written like the shard views: what was committed since the last
//! checkpoint stays in memory (the **fresh** part); the committer hands it
//! to a worker (then it is **flushing**), which writes it with the new
//! checkpoint — the seq it reaches and the root there — in one LMDB
//! transaction. Readers look in the fresh part, then the flushing one, then
//! on disk. Without a store (amnesia, `verify-log`) everything stays fresh.
//!
//! At start the checkpoint counts only if the tree on disk has its root at
//! its seq and the log's record ending there says so too
//! (`super::segments::recover`); otherwise the index is cleared and rebuilt
//! from the log.

use super::segments::{IdKey, Placed, RootItem};
use crate::limits::{INDEX_IDS_BATCH_MIN, INDEX_MAP_BYTES, ROOTS_PAGE_MAX};
use anyhow::Context as _;
use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, PutFlags, RoTxn};
use ron_proto::merkle::Hash;
use ron_shards::accumulator::Nodes;
use ron_shards::{Map, Set};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const META_KEY: &[u8] = b"checkpoint";
const META_VERSION: u8 = 3;
const META_BYTES: usize = 1 + 8 + 32 + 8;
const ROOT_BYTES: usize = 8 + 32 + 8 + 8;
const PLACED_BYTES: usize = 8 + 8 + 32;
/// Tree nodes in one row of the index: 4 064 bytes, one overflow page.
const NODES_PER_CHUNK: u64 = 127;

/// The directory of the committer's index.
pub fn index_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("log-index")
}

/// Where a record is in the log: its segment (named by its first seq) and
/// its offset there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordAt {
    pub segment: u64,
    pub offset: u64,
}

/// A published root and where its record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootAt {
    pub root: RootItem,
    pub at: RecordAt,
}

/// What the index on disk reflects: the log through `seq`, whose tree has
/// `root` there; entry ids only through `ids_seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub root: Hash,
    /// Ids go to disk less often than the rest (`Checkpoints::take`).
    pub ids_seq: u64,
}

impl Checkpoint {
    fn encode(&self) -> [u8; META_BYTES] {
        let mut out = [0u8; META_BYTES];
        out[0] = META_VERSION;
        out[1..9].copy_from_slice(&self.seq.to_le_bytes());
        out[9..41].copy_from_slice(&self.root);
        out[41..49].copy_from_slice(&self.ids_seq.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        if bytes.len() != META_BYTES || bytes[0] != META_VERSION {
            return None;
        }
        Some(Checkpoint {
            seq: u64::from_le_bytes(bytes[1..9].try_into().ok()?),
            root: bytes[9..41].try_into().ok()?,
            ids_seq: u64::from_le_bytes(bytes[41..49].try_into().ok()?),
        })
    }
}

fn encode_root(root: &RootAt) -> [u8; ROOT_BYTES] {
    let mut out = [0u8; ROOT_BYTES];
    out[0..8].copy_from_slice(&root.root.committed_ms.to_le_bytes());
    out[8..40].copy_from_slice(&root.root.root);
    out[40..48].copy_from_slice(&root.at.segment.to_le_bytes());
    out[48..56].copy_from_slice(&root.at.offset.to_le_bytes());
    out
}

fn decode_root(seq: &[u8], bytes: &[u8]) -> anyhow::Result<RootAt> {
    anyhow::ensure!(seq.len() == 8 && bytes.len() == ROOT_BYTES, "a root row of another size");
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    Ok(RootAt {
        root: RootItem {
            seq: u64::from_be_bytes(seq.try_into().expect("8 bytes")),
            root: bytes[8..40].try_into().expect("32 bytes"),
            committed_ms: u64_at(0),
        },
        at: RecordAt { segment: u64_at(40), offset: u64_at(48) },
    })
}

fn encode_placed(placed: &Placed) -> [u8; PLACED_BYTES] {
    let mut out = [0u8; PLACED_BYTES];
    out[0..8].copy_from_slice(&placed.seq_start.to_le_bytes());
    out[8..16].copy_from_slice(&placed.seq_end.to_le_bytes());
    out[16..48].copy_from_slice(&placed.root);
    out
}

fn decode_placed(bytes: &[u8]) -> Option<Placed> {
    (bytes.len() == PLACED_BYTES).then(|| Placed {
        seq_start: u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes")),
        seq_end: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
        root: bytes[16..48].try_into().expect("32 bytes"),
    })
}

/// The index's LMDB environment.
pub struct IndexStore {
    env: Env,
    meta: Database<Bytes, Bytes>,
    /// Entry ids (16-byte keys, empty values).
    ids: Database<Bytes, Bytes>,
    /// Idempotency key → placement.
    idem: Database<Bytes, Bytes>,
    /// The tree's nodes in post-order, `NODES_PER_CHUNK` a row, by chunk
    /// number (big-endian u64); the last chunk may be short.
    nodes: Database<Bytes, Bytes>,
    /// Seq (big-endian u64) → committed ms, root, segment, offset.
    roots: Database<Bytes, Bytes>,
}

impl IndexStore {
    pub fn open(dir: &Path) -> anyhow::Result<IndexStore> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut options = EnvOpenOptions::new();
        options.map_size(INDEX_MAP_BYTES).max_dbs(8);
        // SAFETY: NO_READ_AHEAD is a safe flag (id and node reads are
        // random). NO_TLS ties read slots to transactions, not threads: the
        // committer may share its thread with a shard.
        unsafe { options.flags(heed::EnvFlags::NO_READ_AHEAD | heed::EnvFlags::NO_TLS) };
        // SAFETY: opened once per process (the data directory's LOCK keeps
        // other nodes out) and changed only through it.
        let env = unsafe { options.open(dir) }
            .with_context(|| format!("opening the log index in {}", dir.display()))?;
        let mut txn = env.write_txn()?;
        let meta = env.create_database(&mut txn, Some("meta"))?;
        let ids = env.create_database(&mut txn, Some("ids"))?;
        let idem = env.create_database(&mut txn, Some("idem"))?;
        let nodes = env.create_database(&mut txn, Some("nodes"))?;
        let roots = env.create_database(&mut txn, Some("roots"))?;
        txn.commit()?;
        Ok(IndexStore { env, meta, ids, idem, nodes, roots })
    }

    /// What the index reflects; `None` for a new or cleared one.
    pub fn checkpoint(&self) -> anyhow::Result<Option<Checkpoint>> {
        let txn = self.env.read_txn()?;
        Ok(self.meta.get(&txn, META_KEY)?.and_then(Checkpoint::decode))
    }

    /// Forgets everything: the index is rebuilt from the log.
    pub fn clear(&self) -> anyhow::Result<()> {
        let mut txn = self.env.write_txn()?;
        for table in [&self.meta, &self.ids, &self.idem, &self.nodes, &self.roots] {
            table.clear(&mut txn)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// How many entry ids are on disk.
    pub fn id_count(&self) -> anyhow::Result<u64> {
        let txn = self.env.read_txn()?;
        Ok(self.ids.len(&txn)?)
    }

    /// Whether the tree's first `count` nodes are here (written in order:
    /// the last one is enough to tell).
    pub fn has_nodes(&self, count: u64) -> bool {
        count == 0 || self.node(count - 1).is_ok()
    }

    fn node(&self, position: u64) -> anyhow::Result<Hash> {
        let txn = self.env.read_txn()?;
        let chunk = self.nodes.get(&txn, &(position / NODES_PER_CHUNK).to_be_bytes())?;
        let at = (position % NODES_PER_CHUNK) as usize * 32;
        let node = chunk.and_then(|chunk| chunk.get(at..at + 32));
        let node = node.with_context(|| format!("tree node {position} is not in the index"))?;
        Ok(node.try_into().expect("32 bytes"))
    }

    fn idem(&self, key: &IdKey) -> anyhow::Result<Option<Placed>> {
        let txn = self.env.read_txn()?;
        Ok(self.idem.get(&txn, key)?.and_then(decode_placed))
    }

    fn root(&self, seq: u64) -> anyhow::Result<Option<RootAt>> {
        let txn = self.env.read_txn()?;
        let key = seq.to_be_bytes();
        self.roots.get(&txn, &key)?.map(|bytes| decode_root(&key, bytes)).transpose()
    }

    /// Up to `max` roots after `since`, in order.
    fn roots_since(&self, since: u64, max: usize, out: &mut Vec<RootItem>) -> anyhow::Result<()> {
        let txn = self.env.read_txn()?;
        let from = since.saturating_add(1).to_be_bytes();
        let range = (std::ops::Bound::Included(&from[..]), std::ops::Bound::Unbounded);
        for row in self.roots.range(&txn, &range)?.take(max) {
            let (seq, bytes) = row?;
            out.push(decode_root(seq, bytes)?.root);
        }
        Ok(())
    }

    /// Writes a flushing part and its checkpoint in one transaction.
    fn write(&self, flush: &Flush) -> anyhow::Result<()> {
        let mut txn = self.env.write_txn()?;
        // The last chunk on disk is completed, then new ones follow.
        let mut position = flush.nodes_from;
        let mut nodes = flush.nodes.as_slice();
        while !nodes.is_empty() {
            let key = (position / NODES_PER_CHUNK).to_be_bytes();
            let mut chunk = Vec::with_capacity(NODES_PER_CHUNK as usize * 32);
            let offset = position % NODES_PER_CHUNK;
            if offset > 0 {
                let stored = self.nodes.get(&txn, &key)?.unwrap_or_default();
                anyhow::ensure!(stored.len() as u64 == offset * 32, "a short chunk of tree nodes");
                chunk.extend_from_slice(stored);
            }
            let take = nodes.len().min((NODES_PER_CHUNK - offset) as usize);
            nodes[..take].iter().for_each(|node| chunk.extend_from_slice(node));
            self.nodes.put(&mut txn, &key, &chunk)?;
            (position, nodes) = (position + take as u64, &nodes[take..]);
        }
        for root in &flush.part.roots {
            let key = root.root.seq.to_be_bytes();
            self.roots.put_with_flags(&mut txn, PutFlags::APPEND, &key, &encode_root(root))?;
        }
        // Sorted, ids go in page by page.
        let mut ids: Vec<&IdKey> = flush.part.ids.iter().collect();
        ids.sort_unstable();
        for id in ids {
            self.ids.put(&mut txn, id, &[])?;
        }
        for (key, placed) in &flush.part.idem {
            self.idem.put(&mut txn, key, &encode_placed(placed))?;
        }
        self.meta.put(&mut txn, META_KEY, &flush.checkpoint.encode())?;
        txn.commit()?;
        Ok(())
    }
}

/// A Bloom filter over the entry ids on disk, so that a new id (nearly
/// every one) is known new without a B-tree lookup. Ids are BLAKE3 hashes:
/// their bytes are the filter's hashes. Blocked (each id's bits in one
/// 64-byte line), 12 bits an id, 6 bits set: about 1 % false positives.
/// Bits are atomics: the worker that writes ids sets theirs while the
/// committer reads.
pub struct IdFilter {
    words: Box<[AtomicU64]>,
    /// Blocks − 1 (a power of two).
    mask: u64,
    /// How many ids it is sized for.
    capacity: u64,
}

const FILTER_BLOCK_WORDS: usize = 8;
const FILTER_BITS_PER_ID: u64 = 12;
const FILTER_CAPACITY_MIN: u64 = 1 << 20;

impl IdFilter {
    fn with_capacity(ids: u64) -> IdFilter {
        let capacity = ids.max(FILTER_CAPACITY_MIN);
        let blocks = (capacity * FILTER_BITS_PER_ID).div_ceil(512).next_power_of_two();
        let words = (0..blocks as usize * FILTER_BLOCK_WORDS).map(|_| AtomicU64::new(0)).collect();
        IdFilter { words, mask: blocks - 1, capacity }
    }

    /// The word and bit of each of `id`'s six bits.
    fn bits(&self, id: &IdKey) -> impl Iterator<Item = (usize, u64)> {
        let block = (u64::from_le_bytes(id[..8].try_into().expect("8 bytes")) & self.mask) as usize;
        let spread = u64::from_le_bytes(id[8..].try_into().expect("8 bytes"));
        (0..6).map(move |i| {
            let bit = (spread >> (i * 9)) & 511;
            (block * FILTER_BLOCK_WORDS + (bit / 64) as usize, 1 << (bit % 64))
        })
    }

    fn insert(&self, id: &IdKey) {
        for (word, bit) in self.bits(id) {
            self.words[word].fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// False when `id` is surely not on disk.
    fn may_contain(&self, id: &IdKey) -> bool {
        self.bits(id).all(|(word, bit)| self.words[word].load(Ordering::Relaxed) & bit != 0)
    }
}

/// What the index learnt since a checkpoint.
#[derive(Debug, Default)]
pub struct Part {
    ids: Set<IdKey>,
    idem: Map<IdKey, Placed>,
    roots: Vec<RootAt>,
}

/// The tree's nodes: on disk up to `stored`, then the flushing part, then
/// the fresh one.
pub struct TreeNodes {
    store: Option<Arc<IndexStore>>,
    stored: u64,
    flushing: Arc<Vec<Hash>>,
    fresh: Vec<Hash>,
    /// The last written part's vector, emptied, for the next fresh part:
    /// grown anew from nothing at every write, the fresh nodes were copied
    /// at each doubling and every page faulted in again (more than half
    /// of a shard core's page faults at 180 000 transfers/s).
    spare: Vec<Hash>,
}

impl TreeNodes {
    /// The nodes of a tree whose first `stored` nodes are in `store`.
    pub fn new(store: Option<Arc<IndexStore>>, stored: u64) -> TreeNodes {
        assert!(store.is_some() || stored == 0);
        TreeNodes { store, stored, flushing: Arc::default(), fresh: Vec::new(), spare: Vec::new() }
    }

    fn flushing_end(&self) -> u64 {
        self.stored + self.flushing.len() as u64
    }
}

impl Default for TreeNodes {
    fn default() -> TreeNodes {
        TreeNodes::new(None, 0)
    }
}

impl Nodes for TreeNodes {
    fn len(&self) -> u64 {
        self.flushing_end() + self.fresh.len() as u64
    }

    fn get(&self, position: u64) -> Hash {
        let flushing_end = self.flushing_end();
        if position >= flushing_end {
            return self.fresh[(position - flushing_end) as usize];
        }
        if position >= self.stored {
            return self.flushing[(position - self.stored) as usize];
        }
        let store = self.store.as_ref().expect("nodes below `stored` are on disk");
        // The checkpoint was verified at start; a node that does not read
        // back is a broken disk, which the log cannot mend while running.
        store.node(position).unwrap_or_else(|error| panic!("reading the log index: {error:#}"))
    }

    fn push(&mut self, node: Hash) {
        self.fresh.push(node);
    }

    fn truncate(&mut self, len: u64) {
        // Only what was never published is forgotten (a record whose write
        // failed); at start, nothing is past the checkpoint.
        let flushing_end = self.flushing_end();
        if len >= flushing_end {
            self.fresh.truncate((len - flushing_end) as usize);
        } else {
            assert!(self.fresh.is_empty() && self.flushing.is_empty() && len <= self.stored);
            self.stored = len;
        }
    }
}

/// Ids, idempotency marks and roots: fresh, flushing, on disk.
#[derive(Default)]
pub struct Index {
    store: Option<Arc<IndexStore>>,
    flushing: Arc<Part>,
    fresh: Part,
    /// Keeps nothing but `last` (a scan that only checks the log).
    keeps_nothing: bool,
    /// Over the ids on disk, once a worker has built it.
    filter: Option<Arc<IdFilter>>,
}

/// Reads ids under one transaction, opened by the first id the fresh and
/// flushing parts and the filter leave open.
pub struct IdReader<'a> {
    index: &'a Index,
    txn: std::cell::OnceCell<RoTxn<'a>>,
}

impl IdReader<'_> {
    /// Whether `key` was committed before.
    pub fn contains(&self, key: &IdKey) -> bool {
        if self.index.fresh.ids.contains(key) || self.index.flushing.ids.contains(key) {
            return true;
        }
        if self.index.filter.as_ref().is_some_and(|filter| !filter.may_contain(key)) {
            return false;
        }
        let Some(store) = &self.index.store else { return false };
        let txn = self.txn.get_or_init(|| {
            store.env.read_txn().unwrap_or_else(|error| panic!("reading the log index: {error}"))
        });
        let found = store.ids.get(txn, key);
        found.unwrap_or_else(|error| panic!("reading the log index: {error}")).is_some()
    }
}

impl Index {
    pub fn new(store: Option<Arc<IndexStore>>) -> Index {
        Index { store, ..Index::default() }
    }

    /// An index that keeps nothing but the last root.
    pub fn keeping_nothing() -> Index {
        Index { keeps_nothing: true, ..Index::default() }
    }

    /// How many entry ids are on disk.
    pub fn stored_ids(&self) -> u64 {
        let count = self.store.as_ref().map(|store| store.id_count());
        count
            .transpose()
            .unwrap_or_else(|error| panic!("reading the log index: {error:#}"))
            .unwrap_or(0)
    }

    /// Whether the index is kept on disk.
    pub fn has_store(&self) -> bool {
        self.store.is_some()
    }

    pub fn ids(&self) -> IdReader<'_> {
        IdReader { index: self, txn: std::cell::OnceCell::new() }
    }

    pub fn add_ids(&mut self, ids: impl IntoIterator<Item = IdKey>) {
        if !self.keeps_nothing {
            self.fresh.ids.extend(ids);
        }
    }

    pub fn idem(&self, key: &IdKey) -> Option<Placed> {
        if let Some(placed) = self.fresh.idem.get(key).or_else(|| self.flushing.idem.get(key)) {
            return Some(*placed);
        }
        let store = self.store.as_ref()?;
        store.idem(key).unwrap_or_else(|error| panic!("reading the log index: {error:#}"))
    }

    pub fn add_idem(&mut self, key: IdKey, placed: Placed) {
        if !self.keeps_nothing {
            self.fresh.idem.insert(key, placed);
        }
    }

    pub fn add_root(&mut self, root: RootAt) {
        if !self.keeps_nothing {
            self.fresh.roots.push(root);
        }
    }

    /// The root recorded at exactly `seq`, if a record ends there.
    pub fn root(&self, seq: u64) -> Option<RootAt> {
        for part in [&self.fresh, &*self.flushing] {
            if part.roots.first().is_some_and(|first| first.root.seq <= seq) {
                let at = part.roots.partition_point(|r| r.root.seq < seq);
                return part.roots.get(at).filter(|r| r.root.seq == seq).copied();
            }
        }
        let store = self.store.as_ref()?;
        store.root(seq).unwrap_or_else(|error| panic!("reading the log index: {error:#}"))
    }

    /// A page of roots after `since`, and where the next page starts.
    pub fn roots_page(&self, since: u64) -> (Vec<RootItem>, Option<u64>) {
        // One more than a page says whether there is another.
        let wanted = ROOTS_PAGE_MAX + 1;
        let mut items = Vec::new();
        if let Some(store) = &self.store {
            store
                .roots_since(since, wanted, &mut items)
                .unwrap_or_else(|error| panic!("reading the log index: {error:#}"));
        }
        for part in [&*self.flushing, &self.fresh] {
            let after = items.last().map_or(since, |r| r.seq);
            let start = part.roots.partition_point(|r| r.root.seq <= after);
            let room = wanted - items.len();
            items.extend(part.roots[start..].iter().take(room).map(|r| r.root));
        }
        let next = (items.len() > ROOTS_PAGE_MAX).then(|| {
            items.truncate(ROOTS_PAGE_MAX);
            items.last().map_or(since, |r| r.seq)
        });
        (items, next)
    }
}

/// A checkpoint being written: the flushing parts and what they reach.
pub struct Flush {
    store: Arc<IndexStore>,
    part: Arc<Part>,
    nodes: Arc<Vec<Hash>>,
    nodes_from: u64,
    checkpoint: Checkpoint,
    status: Arc<FlushStatus>,
    /// The filter the committer reads, and the ids on disk once this is
    /// written: past the filter's capacity, a bigger one is built.
    filter: Option<Arc<IdFilter>>,
    ids_after: u64,
}

impl Flush {
    /// Whether it writes a batch of ids or builds a filter.
    pub fn heavy(&self) -> bool {
        !self.part.ids.is_empty() || self.filter.is_none()
    }

    /// Adds the ids just written to the committer's filter, or, without
    /// one or past its capacity, builds a new one from every id on disk
    /// (the next `Checkpoints::take` hands it over). Runs before the
    /// committer forgets the flushing ids.
    fn update_filter(&self) {
        // Always into the filter in use: if a bigger one is not built, this
        // one still has every id on disk (with more false positives).
        if let Some(filter) = &self.filter {
            self.part.ids.iter().for_each(|id| filter.insert(id));
            if filter.capacity >= self.ids_after {
                return;
            }
        }
        let started = std::time::Instant::now();
        let filter = IdFilter::with_capacity(self.ids_after * 2);
        let read = || -> anyhow::Result<u64> {
            let txn = self.store.env.read_txn()?;
            let mut count = 0;
            for row in self.store.ids.iter(&txn)? {
                filter.insert(row?.0.try_into().context("an id of another size")?);
                count += 1;
            }
            Ok(count)
        };
        match read() {
            Ok(count) => {
                let took_ms = started.elapsed().as_millis() as u64;
                tracing::info!(ids = count, took_ms, "built the log index's id filter");
                *self.status.built.lock().expect("not poisoned") = Some(Arc::new(filter));
            }
            // Lookups go on without a filter, to the B-tree.
            Err(error) => tracing::warn!(%error, "the log index's id filter was not built"),
        }
    }
}

/// How the checkpoint writes went, shared with the worker that runs them.
#[derive(Default)]
pub struct FlushStatus {
    busy: AtomicBool,
    failed: AtomicBool,
    /// The seq of the last checkpoint written, and of its entry ids.
    pub written_seq: AtomicU64,
    pub ids_written_seq: AtomicU64,
    pub writes: AtomicU64,
    /// Microseconds the last write took.
    pub last_write_us: AtomicU64,
    /// A filter built by the last write, for the committer to take.
    built: std::sync::Mutex<Option<Arc<IdFilter>>>,
}

impl Flush {
    /// Writes the checkpoint (on a worker thread).
    pub fn run(self) {
        let started = std::time::Instant::now();
        let written = self.store.write(&self);
        let took = started.elapsed().as_micros() as u64;
        self.status.last_write_us.store(took, Ordering::Release);
        match written {
            Ok(()) => {
                self.update_filter();
                self.status.written_seq.store(self.checkpoint.seq, Ordering::Release);
                self.status.ids_written_seq.store(self.checkpoint.ids_seq, Ordering::Release);
                self.status.writes.fetch_add(1, Ordering::Release);
            }
            Err(error) => {
                // The log has everything: a restart replays more.
                self.status.failed.store(true, Ordering::Release);
                tracing::error!(%error, "writing the log index failed: it stays at its last checkpoint");
            }
        }
        // What it held is let go before the committer may take it back.
        let status = self.status.clone();
        drop(self);
        status.busy.store(false, Ordering::Release);
    }
}

/// The index and tree nodes' checkpoints, as the committer drives them.
pub struct Checkpoints {
    status: Arc<FlushStatus>,
    /// The checkpoint handed out last (its parts are flushing or on disk).
    handed: Checkpoint,
    /// Entry ids on disk, and in the flushing part.
    ids_stored: u64,
    ids_flushing: u64,
    /// The seq at start, until the first write (which builds the filter).
    started_at: u64,
}

impl Default for Checkpoint {
    fn default() -> Checkpoint {
        Checkpoint { seq: 0, root: ron_proto::merkle::empty_root(), ids_seq: 0 }
    }
}

impl Checkpoints {
    /// The checkpoints of an index whose disk holds `at` and `ids_stored`
    /// entry ids.
    pub fn new(at: Checkpoint, ids_stored: u64) -> Checkpoints {
        let status = Arc::new(FlushStatus::default());
        status.written_seq.store(at.seq, Ordering::Relaxed);
        status.ids_written_seq.store(at.ids_seq, Ordering::Relaxed);
        Checkpoints { status, handed: at, ids_stored, ids_flushing: 0, started_at: at.seq }
    }

    /// Sizes the fresh ids for a batch (at start).
    pub fn reserve(&self, index: &mut Index) {
        index.fresh.ids.reserve(self.ids_batch().saturating_sub(index.fresh.ids.len()));
    }

    /// How many fresh ids make the next batch due.
    fn ids_batch(&self) -> usize {
        INDEX_IDS_BATCH_MIN.max((self.ids_stored + self.ids_flushing) / 8) as usize
    }

    pub fn status(&self) -> &Arc<FlushStatus> {
        &self.status
    }

    /// Whether a write is in flight.
    pub fn busy(&self) -> bool {
        self.status.busy.load(Ordering::Acquire)
    }

    pub fn failed(&self) -> bool {
        self.status.failed.load(Ordering::Acquire)
    }

    /// Once the last write is done: forgets the flushing parts (they are on
    /// disk) and hands the fresh ones, which reach `seq` with `root`, to a
    /// new write. Entry ids go only once a batch is due — an eighth of
    /// those on disk (or `INDEX_IDS_BATCH_MIN`) — counted in ids or in
    /// entries since the ids last went, or with `force`: every id written
    /// rewrites a random page of the ids' B-tree, so ids are written in
    /// batches that grow with it. A start replays the log after them, so
    /// the entries count too: where ids are rare (wallet writes have
    /// none), they still go, few, and the replay stays a batch.
    /// `None` while a write runs, after a failed one, without a store, or
    /// with nothing new.
    pub fn take(
        &mut self,
        index: &mut Index,
        nodes: &mut TreeNodes,
        seq: u64,
        root: Hash,
        force: bool,
    ) -> Option<Flush> {
        if self.busy() || self.failed() {
            return None;
        }
        let store = index.store.clone()?;
        // The last write is on disk (and its job, done, holds none of it).
        nodes.stored = nodes.flushing_end();
        if let Ok(mut written) = Arc::try_unwrap(std::mem::take(&mut nodes.flushing)) {
            written.clear();
            nodes.spare = written;
        }
        index.flushing = Arc::default();
        self.ids_stored += std::mem::take(&mut self.ids_flushing);
        if let Some(built) = self.status.built.lock().expect("not poisoned").take() {
            index.filter = Some(built);
        }
        let fresh_ids = index.fresh.ids.len() as u64;
        let batch = self.ids_batch() as u64;
        let ids_due = force || fresh_ids >= batch || seq - self.handed.ids_seq >= batch;
        let ids_new = seq > self.handed.ids_seq && ids_due;
        // The first write after a start builds the filter, even with
        // nothing new.
        let no_filter = index.filter.is_none() && self.handed.seq == self.started_at;
        if seq == self.handed.seq && !ids_new && !no_filter {
            return None;
        }
        self.started_at = u64::MAX;
        assert!(seq >= self.handed.seq);
        let ids = if ids_new { std::mem::take(&mut index.fresh.ids) } else { Set::default() };
        self.ids_flushing = ids.len() as u64;
        if ids_new {
            // Sized for the next batch: no rehash of a large set on the
            // committer's path.
            index.fresh.ids.reserve(self.ids_batch());
        }
        let ids_after = self.ids_stored + self.ids_flushing;
        let ids_seq = if ids_new { seq } else { self.handed.ids_seq };
        self.handed = Checkpoint { seq, root, ids_seq };
        let part = Arc::new(Part {
            ids,
            idem: std::mem::take(&mut index.fresh.idem),
            roots: std::mem::take(&mut index.fresh.roots),
        });
        let fresh = Arc::new(std::mem::replace(&mut nodes.fresh, std::mem::take(&mut nodes.spare)));
        index.flushing = part.clone();
        nodes.flushing = fresh.clone();
        self.status.busy.store(true, Ordering::Release);
        Some(Flush {
            store,
            part,
            nodes: fresh,
            nodes_from: nodes.stored,
            checkpoint: self.handed,
            status: self.status.clone(),
            filter: index.filter.clone(),
            ids_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ron_proto::merkle::leaf_hash;
    use ron_shards::accumulator::{Accumulator, node_count};

    fn root_at(seq: u64) -> RootAt {
        let root = RootItem { seq, root: leaf_hash(&seq.to_le_bytes()), committed_ms: seq * 10 };
        RootAt { root, at: RecordAt { segment: 1, offset: seq * 4096 } }
    }

    fn id(n: u64) -> IdKey {
        leaf_hash(&n.to_le_bytes())[..16].try_into().unwrap()
    }

    /// Adds what `seqs` commit: one root, one id and one mark per seq, and
    /// one leaf per seq to `tree`.
    fn commit(index: &mut Index, tree: &mut Accumulator<TreeNodes>, seqs: std::ops::Range<u64>) {
        for seq in seqs {
            index.add_root(root_at(seq));
            index.add_ids([id(seq)]);
            index.add_idem(
                id(seq + 1_000_000),
                Placed { seq_start: seq, seq_end: seq, root: [1; 32] },
            );
            tree.push(leaf_hash(&seq.to_be_bytes()));
        }
    }

    #[test]
    fn the_id_filter_keeps_every_id_and_lets_few_others_through() {
        let filter = IdFilter::with_capacity(100_000);
        (0..100_000).for_each(|n| filter.insert(&id(n)));
        assert!((0..100_000).all(|n| filter.may_contain(&id(n))));
        let through = (100_000..200_000).filter(|n| filter.may_contain(&id(*n))).count();
        // Sized for a million at least: far fewer than 1 %.
        assert!(through < 1_000, "{through} false positives in 100 000");
        let full = IdFilter::with_capacity(FILTER_CAPACITY_MIN);
        (0..FILTER_CAPACITY_MIN).for_each(|n| full.insert(&id(n)));
        let through = (0..100_000).filter(|n| full.may_contain(&id(n + (1 << 40)))).count();
        assert!(through < 2_000, "{through} false positives in 100 000 at capacity");
    }

    /// An index on disk in a directory of its own, its tree and its
    /// checkpoints; the directory goes with it.
    struct OnDisk {
        dir: std::path::PathBuf,
        store: Arc<IndexStore>,
        index: Index,
        tree: Accumulator<TreeNodes>,
        checkpoints: Checkpoints,
    }

    impl OnDisk {
        fn new(name: &str) -> OnDisk {
            let dir = std::env::temp_dir().join(format!("ron-log-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let store = Arc::new(IndexStore::open(&dir).unwrap());
            OnDisk {
                index: Index::new(Some(store.clone())),
                tree: Accumulator::open(TreeNodes::new(Some(store.clone()), 0), 0),
                checkpoints: Checkpoints::new(Checkpoint::default(), 0),
                dir,
                store,
            }
        }

        /// Commits `seqs` (see `commit`), then writes the checkpoint that
        /// `Checkpoints::take` makes of them.
        fn commit_and_write(&mut self, seqs: std::ops::Range<u64>) {
            commit(&mut self.index, &mut self.tree, seqs);
            self.write();
        }

        /// Writes the checkpoint `Checkpoints::take` makes of what was
        /// committed.
        fn write(&mut self) {
            let (seq, root) = (self.tree.len(), self.tree.root());
            let nodes = self.tree.nodes_mut();
            self.checkpoints.take(&mut self.index, nodes, seq, root, false).expect("new").run();
        }

        fn ids_on_disk(&self) -> u64 {
            self.store.id_count().unwrap()
        }

        /// How far the entry ids on disk reach.
        fn ids_seq(&self) -> u64 {
            self.store.checkpoint().unwrap().unwrap().ids_seq
        }
    }

    impl Drop for OnDisk {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn ids_go_to_disk_once_a_batch_is_due() {
        let mut disk = OnDisk::new("index-ids");
        disk.commit_and_write(1..2);
        assert_eq!((disk.ids_seq(), disk.ids_on_disk()), (0, 0), "one id is not a batch");
        // With the next record's, exactly a batch.
        disk.index.add_ids((10..INDEX_IDS_BATCH_MIN + 8).map(id));
        disk.commit_and_write(2..3);
        assert_eq!((disk.ids_seq(), disk.ids_on_disk()), (2, INDEX_IDS_BATCH_MIN));
    }

    /// Ids that are rare in the log (wallet writes have none) go to disk
    /// once a batch of entries has passed since they last went, so that a
    /// start after a crash replays at most a batch of the log.
    #[test]
    fn rare_ids_go_to_disk_once_a_batch_of_entries_has_passed() {
        let mut disk = OnDisk::new("index-rare-ids");
        disk.commit_and_write(1..2);
        let without_ids = |disk: &mut OnDisk, seqs: std::ops::Range<u64>| {
            for seq in seqs {
                disk.index.add_root(root_at(seq));
                disk.tree.push(leaf_hash(&seq.to_be_bytes()));
            }
            disk.write();
        };
        // A batch of entries less one since the ids' checkpoint (at 0).
        without_ids(&mut disk, 2..INDEX_IDS_BATCH_MIN);
        assert_eq!((disk.ids_seq(), disk.ids_on_disk()), (0, 0));
        without_ids(&mut disk, INDEX_IDS_BATCH_MIN..INDEX_IDS_BATCH_MIN + 1);
        assert_eq!((disk.ids_seq(), disk.ids_on_disk()), (INDEX_IDS_BATCH_MIN, 1));
        assert!(disk.index.ids().contains(&id(1)), "the one id, now on disk");
    }

    /// Ids written past the filter's capacity make the write that takes
    /// them build one twice as large from every id on disk; the next
    /// checkpoint hands it to the committer, and every id is still found.
    #[test]
    fn past_its_capacity_the_id_filter_is_rebuilt_twice_as_large() {
        let mut disk = OnDisk::new("index-filter");
        let (mut seq, mut next_id) = (1, 10_000_000);
        while disk.ids_on_disk() <= FILTER_CAPACITY_MIN {
            let batch = INDEX_IDS_BATCH_MIN.max(disk.ids_on_disk() / 8);
            disk.index.add_ids((next_id..next_id + batch).map(id));
            next_id += batch;
            disk.commit_and_write(seq..seq + 1);
            seq += 1;
        }
        let capacity = |disk: &OnDisk| disk.index.filter.as_ref().map(|f| f.capacity);
        assert_eq!(capacity(&disk), Some(FILTER_CAPACITY_MIN), "built, not yet handed over");
        disk.commit_and_write(seq..seq + 1);
        assert!(capacity(&disk).is_some_and(|c| c >= 2 * FILTER_CAPACITY_MIN));
        let ids = disk.index.ids();
        assert!((10_000_000..next_id).step_by(4_099).all(|n| ids.contains(&id(n))));
        assert!((1..seq + 1).all(|n| ids.contains(&id(n))), "the records' own ids");
        let filter = disk.index.filter.as_ref().expect("a filter");
        let through = (0..100_000).filter(|n| filter.may_contain(&id(n + 1_000_000_000))).count();
        let on_disk = disk.ids_on_disk();
        assert!(through < 1_000, "{through} of 100 000 unknown ids pass ({on_disk} on disk)");
    }

    #[test]
    fn reads_find_what_is_on_disk_flushing_or_fresh_and_a_reopened_tree_matches() {
        let dir = std::env::temp_dir().join(format!("ron-log-index-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Arc::new(IndexStore::open(&dir).unwrap());
        assert_eq!(store.checkpoint().unwrap(), None);
        let mut index = Index::new(Some(store.clone()));
        let mut tree = Accumulator::open(TreeNodes::new(Some(store.clone()), 0), 0);
        let mut plain = Accumulator::new();
        let mut checkpoints = Checkpoints::new(Checkpoint::default(), 0);
        let mut take = |index: &mut Index, tree: &mut Accumulator<TreeNodes>, force: bool| {
            let (seq, root) = (tree.len(), tree.root());
            checkpoints.take(index, tree.nodes_mut(), seq, root, force).expect("something new")
        };
        // 1..=1200 on disk, 1201..=2300 flushing, 2301..=2500 fresh; the
        // ids of 1..=100 are on disk, the others fresh (too few to be due).
        commit(&mut index, &mut tree, 1..101);
        take(&mut index, &mut tree, true).run();
        commit(&mut index, &mut tree, 101..1201);
        take(&mut index, &mut tree, false).run();
        let kept = tree.nodes_mut().fresh.capacity();
        assert!(kept >= node_count(100) as usize, "the first write's nodes' vector, kept: {kept}");
        assert_eq!(store.checkpoint().unwrap().map(|c| (c.seq, c.ids_seq)), Some((1200, 100)));
        commit(&mut index, &mut tree, 1201..2301);
        let flushing = take(&mut index, &mut tree, false);
        commit(&mut index, &mut tree, 2301..2501);
        (1..2501).for_each(|seq| plain.push(leaf_hash(&u64::to_be_bytes(seq))));

        let mut seen = Vec::new();
        let mut since = 0;
        loop {
            let (page, next) = index.roots_page(since);
            assert!(page.len() <= ROOTS_PAGE_MAX);
            seen.extend(page.iter().map(|r| r.seq));
            match next {
                Some(next) => since = next,
                None => break,
            }
        }
        assert_eq!(seen, (1..2501).collect::<Vec<_>>(), "every root once, in order");
        let ids = index.ids();
        for seq in [1, 100, 101, 1200, 1201, 2300, 2301, 2500] {
            assert_eq!(index.root(seq), Some(root_at(seq)), "seq {seq}");
            assert!(ids.contains(&id(seq)), "id {seq}");
            assert_eq!(index.idem(&id(seq + 1_000_000)).map(|p| p.seq_start), Some(seq));
            assert_eq!(tree.leaf(seq - 1), plain.leaf(seq - 1));
        }
        assert!(!ids.contains(&id(2501)) && index.root(2501).is_none() && index.root(0).is_none());
        drop(ids);
        for size in [1, 1000, 1200, 1201, 2300, 2499, 2500] {
            assert_eq!(tree.root_at(size), plain.root_at(size), "size {size}");
            assert_eq!(tree.inclusion_proof(7, size), plain.inclusion_proof(7, size));
            assert_eq!(tree.consistency_proof(3, size), plain.consistency_proof(3, size));
        }

        // The flushing write lands; a reopened index has it all, and the
        // fresh part is what a start would replay.
        flushing.run();
        let root = plain.root_at(2300);
        assert_eq!(store.checkpoint().unwrap(), Some(Checkpoint { seq: 2300, root, ids_seq: 100 }));
        assert_eq!(store.id_count().unwrap(), 100);
        drop((index, tree));
        assert!(store.has_nodes(node_count(2300)) && !store.has_nodes(node_count(2300) + 1));
        let reopened =
            Accumulator::open(TreeNodes::new(Some(store.clone()), node_count(2300)), 2300);
        assert_eq!(reopened.root(), plain.root_at(2300));
        assert_eq!(reopened.inclusion_proof(2299, 2300), plain.inclusion_proof(2299, 2300));
        let index = Index::new(Some(store.clone()));
        assert_eq!(index.root(2300), Some(root_at(2300)));
        assert!(index.ids().contains(&id(100)) && !index.ids().contains(&id(101)));
        store.clear().unwrap();
        assert_eq!(store.checkpoint().unwrap(), None);
        drop((index, reopened, store));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
