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
use crate::limits::{INDEX_MAP_BYTES, ROOTS_PAGE_MAX};
use anyhow::Context as _;
use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, PutFlags, RoTxn};
use ron_proto::merkle::Hash;
use ron_shards::accumulator::Nodes;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const META_KEY: &[u8] = b"checkpoint";
const META_VERSION: u8 = 1;
const META_BYTES: usize = 1 + 8 + 32;
const ROOT_BYTES: usize = 8 + 32 + 8 + 8;
const PLACED_BYTES: usize = 8 + 8 + 32;

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
/// `root` there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub root: Hash,
}

impl Checkpoint {
    fn encode(&self) -> [u8; META_BYTES] {
        let mut out = [0u8; META_BYTES];
        out[0] = META_VERSION;
        out[1..9].copy_from_slice(&self.seq.to_le_bytes());
        out[9..41].copy_from_slice(&self.root);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        if bytes.len() != META_BYTES || bytes[0] != META_VERSION {
            return None;
        }
        Some(Checkpoint {
            seq: u64::from_le_bytes(bytes[1..9].try_into().ok()?),
            root: bytes[9..41].try_into().ok()?,
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
    /// The tree's nodes by post-order position (big-endian u64).
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

    fn node(&self, position: u64) -> anyhow::Result<Hash> {
        let txn = self.env.read_txn()?;
        let bytes = self.nodes.get(&txn, &position.to_be_bytes())?;
        let bytes = bytes.with_context(|| format!("tree node {position} is not in the index"))?;
        bytes.try_into().context("a tree node of another size")
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
        for (i, node) in flush.nodes.iter().enumerate() {
            let key = (flush.nodes_from + i as u64).to_be_bytes();
            self.nodes.put_with_flags(&mut txn, PutFlags::APPEND, &key, node)?;
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

/// What the index learnt since a checkpoint.
#[derive(Debug, Default)]
pub struct Part {
    ids: HashSet<IdKey>,
    idem: HashMap<IdKey, Placed>,
    roots: Vec<RootAt>,
}

/// The tree's nodes: on disk up to `stored`, then the flushing part, then
/// the fresh one.
pub struct TreeNodes {
    store: Option<Arc<IndexStore>>,
    stored: u64,
    flushing: Arc<Vec<Hash>>,
    fresh: Vec<Hash>,
}

impl TreeNodes {
    /// The nodes of a tree whose first `stored` nodes are in `store`.
    pub fn new(store: Option<Arc<IndexStore>>, stored: u64) -> TreeNodes {
        assert!(store.is_some() || stored == 0);
        TreeNodes { store, stored, flushing: Arc::default(), fresh: Vec::new() }
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
    /// The last root recorded (fresh, flushing or on disk).
    last: Option<RootAt>,
    /// Keeps nothing but `last` (a scan that only checks the log).
    keeps_nothing: bool,
}

/// Reads ids under one transaction.
pub struct IdReader<'a> {
    index: &'a Index,
    txn: Option<RoTxn<'a>>,
}

impl IdReader<'_> {
    /// Whether `key` was committed before.
    pub fn contains(&self, key: &IdKey) -> bool {
        if self.index.fresh.ids.contains(key) || self.index.flushing.ids.contains(key) {
            return true;
        }
        let (Some(store), Some(txn)) = (&self.index.store, &self.txn) else { return false };
        let found = store.ids.get(txn, key);
        found.unwrap_or_else(|error| panic!("reading the log index: {error}")).is_some()
    }
}

impl Index {
    pub fn new(store: Option<Arc<IndexStore>>, last: Option<RootAt>) -> Index {
        Index { store, last, ..Index::default() }
    }

    /// An index that keeps nothing but the last root.
    pub fn keeping_nothing() -> Index {
        Index { keeps_nothing: true, ..Index::default() }
    }

    /// Whether the index is kept on disk.
    pub fn has_store(&self) -> bool {
        self.store.is_some()
    }

    pub fn ids(&self) -> IdReader<'_> {
        let txn = self.store.as_ref().map(|store| {
            store.env.read_txn().unwrap_or_else(|error| panic!("reading the log index: {error}"))
        });
        IdReader { index: self, txn }
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
        self.last = Some(root);
        if !self.keeps_nothing {
            self.fresh.roots.push(root);
        }
    }

    pub fn last_root(&self) -> Option<RootAt> {
        self.last
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
}

/// How the checkpoint writes went, shared with the worker that runs them.
#[derive(Debug, Default)]
pub struct FlushStatus {
    busy: AtomicBool,
    failed: AtomicBool,
    /// The seq of the last checkpoint written.
    pub written_seq: AtomicU64,
    pub writes: AtomicU64,
    /// Microseconds the last write took.
    pub last_write_us: AtomicU64,
}

impl Flush {
    /// Writes the checkpoint (on a worker thread).
    pub fn run(self) {
        let started = std::time::Instant::now();
        match self.store.write(&self) {
            Ok(()) => {
                self.status.written_seq.store(self.checkpoint.seq, Ordering::Release);
                self.status.writes.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                // The log has everything: a restart replays more.
                self.status.failed.store(true, Ordering::Release);
                tracing::error!(%error, "writing the log index failed: it stays at its last checkpoint");
            }
        }
        let took = started.elapsed().as_micros() as u64;
        self.status.last_write_us.store(took, Ordering::Relaxed);
        self.status.busy.store(false, Ordering::Release);
    }

    pub fn seq(&self) -> u64 {
        self.checkpoint.seq
    }
}

/// The index and tree nodes' checkpoints, as the committer drives them.
#[derive(Default)]
pub struct Checkpoints {
    status: Arc<FlushStatus>,
    /// The seq the flushing parts reach (the last checkpoint handed out).
    flushing_seq: u64,
}

impl Checkpoints {
    pub fn new(seq: u64) -> Checkpoints {
        let status = Arc::new(FlushStatus::default());
        status.written_seq.store(seq, Ordering::Relaxed);
        Checkpoints { status, flushing_seq: seq }
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

    /// The seq of the last checkpoint handed out.
    pub fn flushing_seq(&self) -> u64 {
        self.flushing_seq
    }

    /// Once the last write is done: forgets the flushing parts (they are on
    /// disk) and hands the fresh ones, which reach `checkpoint`, to a new
    /// write. `None` while a write runs, after a failed one, without a
    /// store, or with nothing new.
    pub fn take(
        &mut self,
        index: &mut Index,
        nodes: &mut TreeNodes,
        checkpoint: Checkpoint,
    ) -> Option<Flush> {
        if self.busy() || self.failed() {
            return None;
        }
        // The last write is on disk.
        let store = index.store.clone()?;
        nodes.stored = nodes.flushing_end();
        nodes.flushing = Arc::default();
        index.flushing = Arc::default();
        if checkpoint.seq == self.flushing_seq {
            return None;
        }
        assert!(checkpoint.seq > self.flushing_seq);
        self.flushing_seq = checkpoint.seq;
        let part = Arc::new(std::mem::take(&mut index.fresh));
        let fresh = Arc::new(std::mem::take(&mut nodes.fresh));
        index.flushing = part.clone();
        nodes.flushing = fresh.clone();
        self.status.busy.store(true, Ordering::Release);
        Some(Flush {
            store,
            part,
            nodes: fresh,
            nodes_from: nodes.stored,
            checkpoint,
            status: self.status.clone(),
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
    fn reads_find_what_is_on_disk_flushing_or_fresh_and_a_reopened_tree_matches() {
        let dir = std::env::temp_dir().join(format!("ron-log-index-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Arc::new(IndexStore::open(&dir).unwrap());
        assert_eq!(store.checkpoint().unwrap(), None);
        let mut index = Index::new(Some(store.clone()), None);
        let mut tree = Accumulator::open(TreeNodes::new(Some(store.clone()), 0), 0);
        let mut plain = Accumulator::new();
        let mut checkpoints = Checkpoints::new(0);
        let mut take = |index: &mut Index, tree: &mut Accumulator<TreeNodes>| {
            let checkpoint = Checkpoint { seq: tree.len(), root: tree.root() };
            checkpoints.take(index, tree.nodes_mut(), checkpoint).expect("something new")
        };
        // 1..=1200 on disk, 1201..=2300 flushing, 2301..=2500 fresh.
        commit(&mut index, &mut tree, 1..1201);
        take(&mut index, &mut tree).run();
        commit(&mut index, &mut tree, 1201..2301);
        let flushing = take(&mut index, &mut tree);
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
        for seq in [1, 1200, 1201, 2300, 2301, 2500] {
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
        assert_eq!(
            store.checkpoint().unwrap(),
            Some(Checkpoint { seq: 2300, root: plain.root_at(2300) })
        );
        drop((index, tree));
        let reopened =
            Accumulator::open(TreeNodes::new(Some(store.clone()), node_count(2300)), 2300);
        assert_eq!(reopened.root(), plain.root_at(2300));
        assert_eq!(reopened.inclusion_proof(2299, 2300), plain.inclusion_proof(2299, 2300));
        let index = Index::new(Some(store.clone()), None);
        assert_eq!(index.root(2300), Some(root_at(2300)));
        assert!(index.ids().contains(&id(1500)) && !index.ids().contains(&id(2400)));
        store.clear().unwrap();
        assert_eq!(store.checkpoint().unwrap(), None);
        drop((index, reopened, store));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
