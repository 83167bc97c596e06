//! Per-shard views: each shard keeps the state it owns in memory and in its
//! own LMDB environment under `data_dir/shard-N/`, so that a restart loads
//! the state and replays only the log after it.
//!
//! A view holds each service's tables (named `<service>.<table>`) and one
//! meta record: the last log sequence number it reflects, the root of the
//! tree at that number, the shard layout it was written for and a signature
//! of the tables' layout. Views are written off the request path: the shard
//! collects what changed from every service ([`ViewSource`]) and hands it to
//! a writer thread, which commits it with the new meta in one LMDB
//! transaction. At most one write is in flight per shard; while it runs,
//! changes keep collecting.
//!
//! The log stays the source of truth. At start a view is used only if its
//! layout matches and its root is the log's root at its sequence number;
//! otherwise it is cleared and rebuilt from the log.
//!
//! A table whose keys are random and written once (wallet receipts by
//! txid: `Service::LSM_TABLES`) is kept in a log-structured merge tree
//! (fjall) under the view's directory instead: each write adds its keys
//! there as one sorted run, which a background thread merges with the
//! others, where LMDB would copy and rewrite pages all over the table, more
//! of them the larger it grows. A write's runs are on disk (synced) before
//! its LMDB transaction commits, so the meta never reaches past them; a
//! crash between the two leaves them ahead of it, and their readers check
//! what they find.

use super::LogLink;
use crate::limits::{
    VIEW_DROP_PAGES_EVERY, VIEW_MAP_BYTES, VIEW_SPARE_BYTES_MAX, VIEW_TABLES_MAX, VIEW_TICK,
};
use crate::workers::{Job, Lane, Workers};
use anyhow::Context as _;
use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions};
use ron_proto::merkle::Hash;
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod changes;
mod lsm;

use changes::Change;
pub use changes::ViewChanges;
use lsm::Lsm;

const META_KEY: &[u8] = b"meta";
/// 5: tables named by service, and a signature of their layout in the meta
/// (older views are rebuilt).
const META_VERSION: u8 = 5;
const META_BYTES: usize = 1 + 8 + 32 + 4 + 4 + 32;

/// The directory of shard `shard`'s view.
pub fn view_dir(data_dir: &Path, shard: usize) -> PathBuf {
    data_dir.join(format!("shard-{shard}"))
}

/// The tables of every service, in registry order, and a signature of them:
/// a view written for another layout is rebuilt.
#[derive(Clone, Debug, Default)]
pub struct ViewLayout {
    tables: Vec<String>,
    /// By table: kept in the LSM tree (else in LMDB).
    lsm: Vec<bool>,
    hasher: blake3::Hasher,
}

impl ViewLayout {
    /// Adds a service's tables, `lsm` those of them kept in the LSM tree;
    /// returns the index of its first one.
    pub fn add(&mut self, service: &str, version: u32, tables: &[&str], lsm: &[&str]) -> usize {
        assert!(lsm.iter().all(|name| tables.contains(name)), "an LSM table is one of the tables");
        let base = self.tables.len();
        self.hasher.update(&(service.len() as u64).to_le_bytes());
        self.hasher.update(service.as_bytes());
        self.hasher.update(&version.to_le_bytes());
        for table in tables {
            let in_lsm = lsm.contains(table);
            self.hasher.update(&(table.len() as u64).to_le_bytes());
            self.hasher.update(table.as_bytes());
            self.hasher.update(&[u8::from(in_lsm)]);
            self.tables.push(format!("{service}.{table}"));
            self.lsm.push(in_lsm);
        }
        assert!(self.tables.len() < VIEW_TABLES_MAX, "too many view tables");
        base
    }

    pub fn signature(&self) -> Hash {
        *self.hasher.finalize().as_bytes()
    }
}

/// What a view reflects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewMeta {
    /// Every log item up to this one, and none after it.
    pub applied_seq: u64,
    /// The root of the tree over the first `applied_seq` items.
    pub root: Hash,
    pub shard: u32,
    pub shard_count: u32,
    /// `ViewLayout::signature` of the tables it was written with.
    pub layout: Hash,
}

impl ViewMeta {
    fn encode(&self) -> [u8; META_BYTES] {
        let mut out = [0u8; META_BYTES];
        out[0] = META_VERSION;
        out[1..9].copy_from_slice(&self.applied_seq.to_le_bytes());
        out[9..41].copy_from_slice(&self.root);
        out[41..45].copy_from_slice(&self.shard.to_le_bytes());
        out[45..49].copy_from_slice(&self.shard_count.to_le_bytes());
        out[49..81].copy_from_slice(&self.layout);
        out
    }

    fn decode(bytes: &[u8]) -> Option<ViewMeta> {
        if bytes.len() != META_BYTES || bytes[0] != META_VERSION {
            return None;
        }
        Some(ViewMeta {
            applied_seq: u64::from_le_bytes(bytes[1..9].try_into().ok()?),
            root: bytes[9..41].try_into().ok()?,
            shard: u32::from_le_bytes(bytes[41..45].try_into().ok()?),
            shard_count: u32::from_le_bytes(bytes[45..49].try_into().ok()?),
            layout: bytes[49..81].try_into().ok()?,
        })
    }
}

/// Called with each key and value of a table.
pub type EachRow<'a> = dyn FnMut(&[u8], &[u8]) -> anyhow::Result<()> + 'a;

/// One shard's LMDB environment, and its LSM tree if the layout has LSM
/// tables.
pub struct ViewStore {
    env: Env,
    meta: Database<Bytes, Bytes>,
    /// Every table has one (an LSM table's stays empty: table indices are
    /// the layout's).
    tables: Vec<Database<Bytes, Bytes>>,
    lsm: Option<Lsm>,
    layout: Hash,
    /// Where LMDB mapped the data file in this process (start, length), if
    /// found; see `drop_mapped_pages`.
    mapping: Option<(usize, usize)>,
}

impl ViewStore {
    /// Opens the view in `dir`; its LSM tree, if the layout has LSM tables,
    /// is opened by `open_on` (see `Lsm::open`): the caller's thread if
    /// `None`.
    pub fn open(
        dir: &Path,
        layout: &ViewLayout,
        open_on: Option<&Workers>,
    ) -> anyhow::Result<ViewStore> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut options = EnvOpenOptions::new();
        options.map_size(VIEW_MAP_BYTES).max_dbs(VIEW_TABLES_MAX as u32);
        // SAFETY: NO_READ_AHEAD is a safe flag (it advises the kernel that
        // reads are random, so a receipt read maps its page, not its
        // neighbours too).
        unsafe { options.flags(heed::EnvFlags::NO_READ_AHEAD) };
        // SAFETY: the environment is opened once per process (the data
        // directory's LOCK keeps other nodes out) and its files are changed
        // only through it.
        let env = unsafe { options.open(dir) }
            .with_context(|| format!("opening the view in {}", dir.display()))?;
        let mut txn = env.write_txn()?;
        let meta = env.create_database(&mut txn, Some("meta"))?;
        let mut tables = Vec::with_capacity(layout.tables.len());
        for name in &layout.tables {
            tables.push(env.create_database(&mut txn, Some(name))?);
        }
        txn.commit()?;
        let mapping = find_mapping(&dir.join("data.mdb"));
        if mapping.is_none() {
            tracing::warn!(dir = %dir.display(), "the view's mapping was not found; its pages stay mapped");
        }
        let lsm = if layout.lsm.contains(&true) {
            let (lsm_dir, layout) = (dir.join("lsm"), layout.clone());
            let open = move || Lsm::open(&lsm_dir, &layout);
            Some(match open_on {
                Some(workers) => workers
                    .run(Lane::Normal, open)
                    .context("the workers refused to open the view's LSM tree")??,
                None => open()?,
            })
        } else {
            None
        };
        Ok(ViewStore { env, meta, tables, lsm, layout: layout.signature(), mapping })
    }

    /// Table `table`'s keyspace, if it is an LSM table.
    fn lsm_table(&self, table: usize) -> Option<fjall::Keyspace> {
        self.lsm.as_ref()?.get(table)
    }

    /// The bytes the LSM tree holds on disk (0 without one). Like its
    /// reads, it can wait for the tree's writer: not on a shard.
    pub fn lsm_disk_bytes(&self) -> u64 {
        self.lsm.as_ref().map_or(0, Lsm::disk_bytes)
    }

    /// What the view reflects; `None` for a new or cleared view, or one
    /// this build cannot use (another format or table layout).
    pub fn meta(&self) -> anyhow::Result<Option<ViewMeta>> {
        let txn = self.env.read_txn()?;
        let Some(bytes) = self.meta.get(&txn, META_KEY)? else { return Ok(None) };
        let meta = ViewMeta::decode(bytes).filter(|meta| meta.layout == self.layout);
        if meta.is_none() {
            tracing::warn!("a view of another format or layout: it will be rebuilt from the log");
        }
        Ok(meta)
    }

    /// The layout signature this store writes.
    pub fn layout(&self) -> Hash {
        self.layout
    }

    /// Calls `each` with every key and value of `table`; returns how many.
    pub fn each(&self, table: usize, each: &mut EachRow<'_>) -> anyhow::Result<u64> {
        let mut count = 0;
        if let Some(keyspace) = self.lsm_table(table) {
            for row in keyspace.iter() {
                let (key, value) = row.into_inner()?;
                each(&key, &value)?;
                count += 1;
            }
            return Ok(count);
        }
        let txn = self.env.read_txn()?;
        for row in self.tables[table].iter(&txn)? {
            let (key, value) = row?;
            each(key, value)?;
            count += 1;
        }
        Ok(count)
    }

    /// The value at `key` of `table` (a short read transaction; LMDB reads
    /// do not wait for the writer).
    pub fn get(&self, table: usize, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(keyspace) = self.lsm_table(table) {
            return Ok(keyspace.get(key)?.map(|value| value.to_vec()));
        }
        let txn = self.env.read_txn()?;
        Ok(self.tables[table].get(&txn, key)?.map(<[u8]>::to_vec))
    }

    /// Forgets everything: the view will be rebuilt from the log. The meta
    /// goes first, so a crash midway leaves a view without one (rebuilt).
    pub fn clear(&self) -> anyhow::Result<()> {
        let mut txn = self.env.write_txn()?;
        self.meta.clear(&mut txn)?;
        for table in &self.tables {
            table.clear(&mut txn)?;
        }
        txn.commit()?;
        if let Some(lsm) = &self.lsm {
            lsm.clear()?;
        }
        Ok(())
    }

    /// Writes the changes and the new meta in one transaction.
    ///
    /// Each key's last change is the one written, and they are written in
    /// key order, table by table, through one cursor: keys such as txids
    /// and idempotency slots are random, and a put in order finds its page
    /// beside the last one's (or on it, where LMDB skips the descent)
    /// instead of anywhere in a tree of millions.
    ///
    /// An LSM table's changes go first, as one sorted run each, synced.
    pub fn write(&self, write: &ViewWrite) -> anyhow::Result<()> {
        let changes = &write.changes;
        let last = changes.last_per_key();
        let mut lmdb_runs = Vec::new();
        for run in last.chunk_by(|a, b| a.table == b.table) {
            match self.lsm_table(usize::from(run[0].table)) {
                Some(keyspace) => Lsm::write(&keyspace, changes, run)?,
                None => lmdb_runs.push(run),
            }
        }
        let mut txn = self.env.write_txn()?;
        for run in lmdb_runs {
            let table = &self.tables[usize::from(run[0].table)];
            for change in run.iter().filter(|change| changes.value(change).is_none()) {
                table.delete(&mut txn, changes.key(change))?;
            }
            let mut cursor = table.iter_mut(&mut txn)?;
            for change in run {
                if let Some(value) = changes.value(change) {
                    // SAFETY: no value read from the database is held; with
                    // no flags, `mdb_cursor_put` is LMDB's ordinary put
                    // (insert or replace), made through this cursor so that
                    // it starts from the cursor's page.
                    unsafe {
                        cursor.put_current_with_options::<Bytes>(
                            heed::PutFlags::empty(),
                            changes.key(change),
                            value,
                        )?
                    };
                }
            }
        }
        self.meta.put(&mut txn, META_KEY, &write.meta.encode())?;
        txn.commit()?;
        Ok(())
    }

    /// Unmaps the pages of the data file this process has touched. The
    /// shard serves from memory and reads the view only to load it and for
    /// what it no longer holds (receipts), yet every page a write or a load
    /// walks stays mapped and counts in the process's RSS (457 MiB with a
    /// million funded accounts). The pages stay in the page cache, where the
    /// kernel can reclaim them; a later read maps its page again.
    pub fn drop_mapped_pages(&self) {
        if let Some((start, len)) = self.mapping {
            // SAFETY: the range is LMDB's read-only shared mapping of the
            // data file, which lives as long as `self.env`; MADV_DONTNEED on
            // a shared file mapping only drops this process's page table
            // entries, and the next access maps the file's current contents.
            unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        }
    }
}

/// The range at which this process mapped `file` (LMDB maps its data file
/// once, at open, at an address it does not report).
fn find_mapping(file: &Path) -> Option<(usize, usize)> {
    let file = std::fs::canonicalize(file).ok()?;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let range = fields.next()?;
        let path = fields.nth(4)?;
        if Path::new(path) != file {
            return None;
        }
        let (start, end) = range.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        Some((start, end - start))
    })
}

/// A service's tables in a shard's view, for reading.
#[derive(Clone)]
pub struct ServiceView {
    store: Arc<ViewStore>,
    base: usize,
}

impl ServiceView {
    pub fn new(store: Arc<ViewStore>, base: usize) -> ServiceView {
        ServiceView { store, base }
    }

    /// Calls `each` with every key and value of the service's `table`.
    pub fn each(
        &self,
        table: usize,
        mut each: impl FnMut(&[u8], &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        self.store.each(self.base + table, &mut each)
    }

    pub fn get(&self, table: usize, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        self.store.get(self.base + table, key)
    }
}

/// One write of a view.
pub struct ViewWrite {
    pub meta: ViewMeta,
    pub changes: ViewChanges,
}

/// What a shard's view writes report, read by the shard and by `/metrics`.
#[derive(Debug, Default)]
pub struct ViewStats {
    /// The `applied_seq` of the last committed write.
    pub written_seq: AtomicU64,
    pub writes: AtomicU64,
    pub failures: AtomicU64,
    /// Microseconds the last write took.
    pub last_write_us: AtomicU64,
    /// The LSM tree's bytes on disk after the last write.
    pub lsm_disk_bytes: AtomicU64,
    /// A write is in flight.
    busy: AtomicBool,
    /// The buffers of the last write, emptied, for the next one to fill:
    /// a write's changes run to megabytes, and buffers made anew each
    /// time cost the shard their growth and page faults again.
    spare: std::sync::Mutex<Option<ViewChanges>>,
}

impl ViewStats {
    /// Keeps a written write's buffers, emptied, for the next write, up to
    /// `VIEW_SPARE_BYTES_MAX`: what a write that carried a backlog grew
    /// past that is freed.
    fn give_back(&self, mut changes: ViewChanges) {
        changes.clear_within(VIEW_SPARE_BYTES_MAX);
        *self.spare.lock().expect("not poisoned") = Some(changes);
    }

    /// The buffers for the next write: the last write's, or new ones.
    fn take_spare(&self) -> ViewChanges {
        self.spare.lock().expect("not poisoned").take().unwrap_or_default()
    }
}

/// What a shard's services give its view (`crate::service` implements it
/// over every service of the shard).
pub trait ViewSource {
    /// Puts what changed since the last call into `changes`, which the write
    /// reaching `through_seq` carries.
    fn save(&self, changes: &mut ViewChanges, through_seq: u64);
    /// The write reaching `through_seq` is committed.
    fn saved(&self, through_seq: u64);
}

/// When a view is written.
#[derive(Clone, Copy, Debug)]
pub struct ViewSchedule {
    pub shard: usize,
    pub shard_count: usize,
    /// Once this many items were applied since the last write...
    pub items_max: u64,
    /// ... or this long after it.
    pub interval: Duration,
}

/// A shard's view, as the shard sees it. Writes run as jobs of the node's
/// workers (`crate::workers`), one at a time per shard.
pub struct ShardView {
    store: Option<Arc<ViewStore>>,
    workers: Option<Workers>,
    stats: Arc<ViewStats>,
    schedule: ViewSchedule,
    /// The `applied_seq` of the last write handed to the workers, and the
    /// last one whose `saved` the services heard about.
    submitted: Cell<u64>,
    announced: Cell<u64>,
    last_write: Cell<Instant>,
    /// Set when a write failed: later ones would make the view disagree
    /// with its meta, so it stays at its last good state and a restart
    /// replays the log after it.
    stopped: Cell<bool>,
    /// A write the workers had no room for, and the seq it reaches.
    refused: RefCell<Option<(Job, u64)>>,
}

impl ShardView {
    /// A view over `store` (none in amnesia mode), which reflects
    /// `written_seq`.
    pub fn new(
        store: Option<Arc<ViewStore>>,
        workers: Option<Workers>,
        written_seq: u64,
        schedule: ViewSchedule,
    ) -> ShardView {
        let stats = Arc::new(ViewStats::default());
        stats.written_seq.store(written_seq, Ordering::Relaxed);
        ShardView {
            store,
            workers,
            stats,
            schedule,
            submitted: Cell::new(written_seq),
            announced: Cell::new(written_seq),
            last_write: Cell::new(Instant::now()),
            stopped: Cell::new(false),
            refused: RefCell::new(None),
        }
    }

    pub fn store(&self) -> Option<&Arc<ViewStore>> {
        self.store.as_ref()
    }

    /// (written seq, writes, failures, the LSM tree's bytes on disk) for
    /// `/metrics`; `None` without a view.
    pub fn stats(&self) -> Option<(u64, u64, u64, u64)> {
        self.store.as_ref()?;
        let stats = &self.stats;
        Some((
            stats.written_seq.load(Ordering::Relaxed),
            stats.writes.load(Ordering::Relaxed),
            stats.failures.load(Ordering::Relaxed),
            stats.lsm_disk_bytes.load(Ordering::Relaxed),
        ))
    }

    /// Hands what changed to a worker when due (or, with `force`, whenever
    /// there is anything new). Returns false while the last write runs, or
    /// while the workers have no room for it (it is kept and handed over
    /// again at the next tick: nothing the services gave is lost).
    fn write_due(&self, link: &LogLink, source: &dyn ViewSource, force: bool) -> bool {
        let (Some(store), Some(workers)) = (&self.store, &self.workers) else { return true };
        if self.stats.busy.load(Ordering::Acquire) {
            return false;
        }
        let written = self.stats.written_seq.load(Ordering::Acquire);
        if written > self.announced.get() {
            self.announced.set(written);
            source.saved(written);
        }
        if self.stopped.get() || self.stats.failures.load(Ordering::Relaxed) > 0 {
            self.stopped.set(true);
            return true;
        }
        let refused = self.refused.borrow_mut().take();
        let (job, applied) = match refused {
            Some(refused) => refused,
            None => {
                let applied = link.applied.seq();
                let behind = applied - self.submitted.get();
                let due = behind >= self.schedule.items_max
                    || self.last_write.get().elapsed() >= self.schedule.interval;
                if behind == 0 || !(due || force) {
                    return true;
                }
                let mut changes = self.stats.take_spare();
                source.save(&mut changes, applied);
                let meta = ViewMeta {
                    applied_seq: applied,
                    root: link.applied.root(),
                    shard: self.schedule.shard as u32,
                    shard_count: self.schedule.shard_count as u32,
                    layout: store.layout(),
                };
                let write = ViewWrite { meta, changes };
                (write_job(self.schedule.shard, store.clone(), self.stats.clone(), write), applied)
            }
        };
        self.stats.busy.store(true, Ordering::Release);
        if let Err(job) = workers.submit(Lane::Normal, job) {
            self.stats.busy.store(false, Ordering::Release);
            *self.refused.borrow_mut() = Some((job, applied));
            return false;
        }
        self.submitted.set(applied);
        self.last_write.set(Instant::now());
        true
    }
}

impl ShardView {
    /// Unmaps the pages that reads mapped (receipt reads map pages with or
    /// without writes), on a worker: over the view's whole mapping the
    /// call walks page tables for a while, which the shard does not wait
    /// for. Skipped when a write is in flight (it drops them when done) or
    /// the workers are full.
    fn drop_pages_off_shard(&self) {
        let (Some(store), Some(workers)) = (&self.store, &self.workers) else { return };
        if self.stats.busy.load(Ordering::Acquire) {
            return;
        }
        let store = store.clone();
        let _ = workers.submit(Lane::Normal, Job::new(move || store.drop_mapped_pages()));
    }
}

/// The job that writes one view: runs on a worker thread.
fn write_job(shard: usize, store: Arc<ViewStore>, stats: Arc<ViewStats>, write: ViewWrite) -> Job {
    Job::new(move || {
        let started = Instant::now();
        match store.write(&write) {
            Ok(()) => {
                stats.written_seq.store(write.meta.applied_seq, Ordering::Release);
                stats.writes.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                // The log still has everything: a restart replays more.
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(shard, %error, "writing the shard's view failed");
            }
        }
        store.drop_mapped_pages();
        stats.last_write_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        stats.lsm_disk_bytes.store(store.lsm_disk_bytes(), Ordering::Relaxed);
        stats.give_back(write.changes);
        stats.busy.store(false, Ordering::Release);
    })
}

/// Writes the shard's view in the background until the committer stops,
/// and unmaps the pages reads mapped once a second.
pub async fn keep(view: Rc<ShardView>, link: Rc<LogLink>, source: Rc<dyn ViewSource>) {
    let mut last_drop = Instant::now();
    while !link.is_stopped() {
        glommio::timer::sleep(VIEW_TICK).await;
        view.write_due(&link, &*source, false);
        if last_drop.elapsed() >= VIEW_DROP_PAGES_EVERY {
            last_drop = Instant::now();
            view.drop_pages_off_shard();
        }
    }
}

/// The last write, once nothing more will be applied; waits for it.
pub async fn finish(view: &ShardView, link: &LogLink, source: &dyn ViewSource) {
    while !view.write_due(link, source, true) {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    while view.stats.busy.load(Ordering::Acquire) {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    let written = view.stats.written_seq.load(Ordering::Acquire);
    if written > view.announced.get() {
        view.announced.set(written);
        source.saved(written);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> ViewLayout {
        let mut layout = ViewLayout::default();
        layout.add("ledger", 1, &["balances"], &[]);
        layout
    }

    #[test]
    fn meta_round_trips_and_rejects_other_versions() {
        let meta =
            ViewMeta { applied_seq: 42, root: [7; 32], shard: 1, shard_count: 3, layout: [9; 32] };
        let bytes = meta.encode();
        assert_eq!(ViewMeta::decode(&bytes), Some(meta));
        let mut other = bytes;
        other[0] = 4;
        assert_eq!(ViewMeta::decode(&other), None);
        assert_eq!(ViewMeta::decode(&bytes[..10]), None);
    }

    #[test]
    fn layouts_differ_by_service_table_and_version() {
        let mut a = ViewLayout::default();
        a.add("wallet", 1, &["funds", "holds"], &[]);
        let mut b = ViewLayout::default();
        b.add("wallet", 2, &["funds", "holds"], &[]);
        let mut c = ViewLayout::default();
        c.add("wallet", 1, &["fundsholds"], &[]);
        let mut d = ViewLayout::default();
        d.add("wallet", 1, &["funds", "holds"], &["holds"]);
        assert_ne!(a.signature(), b.signature());
        assert_ne!(a.signature(), c.signature());
        assert_ne!(a.signature(), d.signature());
    }

    /// An LSM table takes puts, replacements and deletes like an LMDB one,
    /// keeps them across a reopen, and is emptied by `clear`; none of it
    /// goes to LMDB.
    #[test]
    fn lsm_tables_keep_their_writes_across_reopens_until_cleared() {
        let dir = std::env::temp_dir().join(format!("ron-view-lsm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut layout = ViewLayout::default();
        layout.add("wallet", 1, &["receipts", "funds"], &["receipts"]);
        let key = |i: u32| blake3::hash(&i.to_le_bytes()).as_bytes()[..16].to_vec();
        let write = |store: &ViewStore, seq: u64, fill: &dyn Fn(&mut ViewChanges)| {
            let mut changes = ViewChanges::default();
            fill(&mut changes);
            let meta = ViewMeta {
                applied_seq: seq,
                root: [1; 32],
                shard: 0,
                shard_count: 1,
                layout: store.layout(),
            };
            store.write(&ViewWrite { meta, changes }).unwrap();
        };
        let store = ViewStore::open(&dir, &layout, None).unwrap();
        write(&store, 10, &|changes| {
            for i in 0..1000u32 {
                changes.put(0, &key(i), &i.to_le_bytes());
            }
            changes.put(0, &key(5), b"again");
            changes.put(1, b"acct", b"7");
        });
        write(&store, 20, &|changes| changes.delete(0, &key(7)));
        let txn = store.env.read_txn().unwrap();
        assert_eq!(store.tables[0].len(&txn).unwrap(), 0, "nothing of it in LMDB");
        drop(txn);
        drop(store);
        let store = ViewStore::open(&dir, &layout, None).unwrap();
        assert_eq!(store.meta().unwrap().map(|m| m.applied_seq), Some(20));
        assert_eq!(store.get(0, &key(5)).unwrap().as_deref(), Some(&b"again"[..]));
        assert_eq!(store.get(0, &key(6)).unwrap(), Some(6u32.to_le_bytes().to_vec()));
        assert_eq!(store.get(0, &key(7)).unwrap(), None);
        assert_eq!(store.get(0, &key(1000)).unwrap(), None);
        assert_eq!(store.get(1, b"acct").unwrap().as_deref(), Some(&b"7"[..]));
        let mut keys = Vec::new();
        store
            .each(0, &mut |key, _| {
                keys.push(key.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(keys.len(), 999);
        assert!(keys.is_sorted(), "in key order");
        store.clear().unwrap();
        assert_eq!(store.get(0, &key(5)).unwrap(), None);
        drop(store);
        let store = ViewStore::open(&dir, &layout, None).unwrap();
        assert_eq!(store.meta().unwrap(), None);
        assert_eq!(store.each(0, &mut |_, _| Ok(())).unwrap(), 0);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The resident size of `mapping`, from `/proc/self/smaps`.
    fn resident_kib(mapping: (usize, usize)) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let header = format!("{:x}-{:x} ", mapping.0, mapping.0 + mapping.1);
        let mut lines = smaps.lines().skip_while(|line| !line.starts_with(&header));
        lines
            .find_map(|line| line.strip_prefix("Rss:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn written_and_loaded_pages_leave_the_resident_set() {
        let dir = std::env::temp_dir().join(format!("ron-view-pages-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let layout = layout();
        let store = ViewStore::open(&dir, &layout, None).unwrap();
        let mapping = store.mapping.expect("the data file's mapping is found");
        let mut changes = ViewChanges::default();
        for i in 0..20_000u32 {
            changes.put(0, format!("acct:{i}").as_bytes(), &(u128::from(i) + 1).to_le_bytes());
        }
        let meta = ViewMeta {
            applied_seq: 1,
            root: [0; 32],
            shard: 0,
            shard_count: 1,
            layout: layout.signature(),
        };
        store.write(&ViewWrite { meta, changes }).unwrap();
        assert_eq!(store.meta().unwrap(), Some(meta));
        let view = ServiceView::new(Arc::new(store), 0);
        assert_eq!(view.each(0, |_, _| Ok(())).unwrap(), 20_000);
        let before = resident_kib(mapping);
        assert!(before > 100, "loading maps the pages it reads: {before} KiB");
        view.store.drop_mapped_pages();
        assert_eq!(resident_kib(mapping), 0);
        // The data is still there.
        assert_eq!(view.each(0, |_, _| Ok(())).unwrap(), 20_000);
        assert_eq!(view.get(0, b"acct:7").unwrap(), Some(8u128.to_le_bytes().to_vec()));
        drop(view);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_write_leaves_each_key_as_its_last_change_made_it() {
        let dir = std::env::temp_dir().join(format!("ron-view-order-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut layout = ViewLayout::default();
        layout.add("a", 1, &["one", "two"], &[]);
        let store = ViewStore::open(&dir, &layout, None).unwrap();
        let meta = |seq| ViewMeta {
            applied_seq: seq,
            root: [0; 32],
            shard: 0,
            shard_count: 1,
            layout: layout.signature(),
        };
        let mut first = ViewChanges::default();
        for key in ["k3", "k1", "gone", "k2"] {
            first.put(0, key.as_bytes(), b"old");
        }
        store.write(&ViewWrite { meta: meta(1), changes: first }).unwrap();
        // Out of key order, one key in two tables, keys changed several
        // times in one write: put then delete, delete then put, put twice.
        let mut changes = ViewChanges::default();
        changes.put(0, b"k2", b"first");
        changes.delete(0, b"k3");
        changes.put(1, b"k2", b"other table");
        changes.put(0, b"k0", b"new");
        changes.delete(0, b"k1");
        changes.put(0, b"k1", b"back");
        changes.put(0, b"k2", b"second");
        changes.delete(0, b"gone");
        changes.put(0, b"k4", b"put");
        changes.delete(0, b"k4");
        store.write(&ViewWrite { meta: meta(2), changes }).unwrap();
        let mut rows = Vec::new();
        for table in 0..2 {
            store
                .each(table, &mut |key, value| {
                    rows.push((table, key.to_vec(), value.to_vec()));
                    Ok(())
                })
                .unwrap();
        }
        let row = |table, key: &str, value: &str| (table, key.into(), value.into());
        assert_eq!(
            rows,
            [
                row(0, "k0", "new"),
                row(0, "k1", "back"),
                row(0, "k2", "second"),
                row(1, "k2", "other table"),
            ]
        );
        assert_eq!(store.meta().unwrap(), Some(meta(2)));
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        /// The changes a write makes are each key's last, in LMDB's key
        /// order: as a plain ordered map made by applying them in turn.
        /// Short keys over a few byte values, zeros among them, so that
        /// keys share their first 16 bytes, extend one another and end
        /// where another has a zero.
        #[test]
        fn the_last_change_of_each_key_in_key_order(
            made in proptest::collection::vec(
                (0u16..2, proptest::collection::vec(proptest::sample::select(vec![0u8, 1, b'a']), 0..20), proptest::option::of(0u8..4)),
                0..200,
            )
        ) {
            let mut changes = ViewChanges::default();
            let mut model = std::collections::BTreeMap::new();
            for (table, key, value) in &made {
                match value {
                    Some(value) => changes.put(usize::from(*table), key, &[*value]),
                    None => changes.delete(usize::from(*table), key),
                }
                model.insert((*table, key.clone()), value.map(|v| vec![v]));
            }
            let last: Vec<_> = changes
                .last_per_key()
                .iter()
                .map(|c| {
                    let key = changes.key(c).to_vec();
                    (c.table, key, changes.value(c).map(<[u8]>::to_vec))
                })
                .collect();
            let expected: Vec<_> = model.into_iter().map(|((t, k), v)| (t, k, v)).collect();
            proptest::prop_assert_eq!(last, expected);
        }
    }

    #[test]
    fn a_writes_buffers_are_kept_for_the_next() {
        let stats = ViewStats::default();
        let mut changes = ViewChanges::default();
        changes.put(0, b"key", b"value");
        let capacity = changes.capacity_bytes();
        stats.give_back(changes);
        let kept = stats.take_spare();
        assert!(kept.is_empty() && kept.capacity_bytes() == capacity, "kept, emptied");
        assert_eq!(stats.take_spare().capacity_bytes(), 0, "handed out once");
        // How much is kept past the limit: `changes::tests`.
    }

    #[test]
    fn a_view_of_another_layout_is_not_used() {
        let dir = std::env::temp_dir().join(format!("ron-view-layout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = layout();
        let store = ViewStore::open(&dir, &first, None).unwrap();
        let meta = ViewMeta {
            applied_seq: 3,
            root: [0; 32],
            shard: 0,
            shard_count: 1,
            layout: first.signature(),
        };
        store.write(&ViewWrite { meta, changes: ViewChanges::default() }).unwrap();
        drop(store);
        let mut second = layout();
        second.add("echo", 1, &["words"], &[]);
        let store = ViewStore::open(&dir, &second, None).unwrap();
        assert_eq!(store.meta().unwrap(), None);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
