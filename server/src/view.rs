//! Per-shard views: each shard keeps the state it owns in memory and in its
//! own LMDB environment under `data_dir/shard-N/`, so that a restart loads
//! the state and replays only the log after it.
//!
//! A view holds the shard's balances and one meta record: the last log
//! sequence number it reflects, the root of the tree at that number, and the
//! shard layout it was written for. Views are written off the request path:
//! the shard hands the balances that changed to a writer thread, which
//! commits them with the new meta in one LMDB transaction. At most one write
//! is in flight per shard; while it runs, changes keep collecting.
//!
//! The log stays the source of truth. At start a view is used only if its
//! layout matches and its root is the log's root at its sequence number;
//! otherwise it is cleared and rebuilt from the log.

use crate::shard::Shard;
use anyhow::Context as _;
use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions};
use ron_proto::merkle::Hash;
use ron_proto::wallet::{Placement, TxId, WalletOp};
use ron_shards::balances::Balances;
use ron_shards::wallet::{Changes, IdemRecord, Wallet};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Address space reserved per view; the file grows only with what it holds.
const VIEW_MAP_BYTES: usize = 32 << 30;
const META_KEY: &[u8] = b"meta";
/// How often an idle writer unmaps the pages reads have mapped.
const DROP_PAGES_EVERY: Duration = Duration::from_secs(1);
/// 2: receipts joined the view; 3: the rest of the wallet's state; 4:
/// idempotency records say whether they are a capture's or a release's
/// (older views lack something and are rebuilt).
const META_VERSION: u8 = 4;
const META_BYTES: usize = 1 + 8 + 32 + 4 + 4;

/// The directory of shard `shard`'s view.
pub fn view_dir(data_dir: &Path, shard: usize) -> PathBuf {
    data_dir.join(format!("shard-{shard}"))
}

/// What a view reflects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewMeta {
    /// Every log entry up to this one, and none after it.
    pub applied_seq: u64,
    /// The root of the tree over the first `applied_seq` entries.
    pub root: Hash,
    pub shard: u32,
    pub shard_count: u32,
}

impl ViewMeta {
    fn encode(&self) -> [u8; META_BYTES] {
        let mut out = [0u8; META_BYTES];
        out[0] = META_VERSION;
        out[1..9].copy_from_slice(&self.applied_seq.to_le_bytes());
        out[9..41].copy_from_slice(&self.root);
        out[41..45].copy_from_slice(&self.shard.to_le_bytes());
        out[45..49].copy_from_slice(&self.shard_count.to_le_bytes());
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
        })
    }
}

/// One shard's LMDB environment.
pub struct ViewStore {
    env: Env,
    balances: Database<Bytes, Bytes>,
    meta: Database<Bytes, Bytes>,
    /// Wallet receipts this shard keeps, by txid (`Wallet::take_new_receipts`).
    receipts: Database<Bytes, Bytes>,
    /// The wallet's committed state (`Wallet::take_changes`): balances by
    /// funds key, nonces by account, open holds by id, idempotency records
    /// by slot (txid and expiry).
    wallet_funds: Database<Bytes, Bytes>,
    wallet_nonces: Database<Bytes, Bytes>,
    wallet_holds: Database<Bytes, Bytes>,
    wallet_idem: Database<Bytes, Bytes>,
    /// Where LMDB mapped the data file in this process (start, length), if
    /// found; see `drop_mapped_pages`.
    mapping: Option<(usize, usize)>,
}

impl ViewStore {
    pub fn open(dir: &Path) -> anyhow::Result<ViewStore> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut options = EnvOpenOptions::new();
        options.map_size(VIEW_MAP_BYTES).max_dbs(7);
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
        let balances = env.create_database(&mut txn, Some("balances"))?;
        let meta = env.create_database(&mut txn, Some("meta"))?;
        let receipts = env.create_database(&mut txn, Some("receipts"))?;
        let wallet_funds = env.create_database(&mut txn, Some("wallet_funds"))?;
        let wallet_nonces = env.create_database(&mut txn, Some("wallet_nonces"))?;
        let wallet_holds = env.create_database(&mut txn, Some("wallet_holds"))?;
        let wallet_idem = env.create_database(&mut txn, Some("wallet_idem"))?;
        txn.commit()?;
        let mapping = find_mapping(&dir.join("data.mdb"));
        if mapping.is_none() {
            tracing::warn!(dir = %dir.display(), "the view's mapping was not found; its pages stay mapped");
        }
        Ok(ViewStore {
            mapping,
            env,
            balances,
            meta,
            receipts,
            wallet_funds,
            wallet_nonces,
            wallet_holds,
            wallet_idem,
        })
    }

    /// What the view reflects; `None` for a new or cleared view, or one
    /// whose meta this build cannot read (another format version).
    pub fn meta(&self) -> anyhow::Result<Option<ViewMeta>> {
        let txn = self.env.read_txn()?;
        let meta = self.meta.get(&txn, META_KEY)?.map(ViewMeta::decode);
        if meta.is_some_and(|m| m.is_none()) {
            tracing::warn!("a view of another format: it will be rebuilt from the log");
        }
        Ok(meta.flatten())
    }

    /// Loads every balance of the view; returns how many.
    pub fn load(&self, balances: &mut Balances) -> anyhow::Result<u64> {
        let txn = self.env.read_txn()?;
        let mut loaded = 0;
        for row in self.balances.iter(&txn)? {
            let (key, value) = row?;
            let value: [u8; 16] = value.try_into().context("a balance is not 16 bytes")?;
            balances.load(key, u128::from_le_bytes(value));
            loaded += 1;
        }
        Ok(loaded)
    }

    /// Loads the wallet state of the view; returns how many records.
    pub fn load_wallet(&self, wallet: &mut Wallet) -> anyhow::Result<u64> {
        let txn = self.env.read_txn()?;
        let mut loaded = 0;
        for row in self.wallet_funds.iter(&txn)? {
            let (key, value) = row?;
            let value: [u8; 16] = value.try_into().context("a wallet balance is not 16 bytes")?;
            wallet.load_funds(key, u128::from_le_bytes(value));
            loaded += 1;
        }
        for row in self.wallet_nonces.iter(&txn)? {
            let (key, value) = row?;
            let account = std::str::from_utf8(key).context("a nonce's account")?;
            let value: [u8; 8] = value.try_into().context("a nonce is not 8 bytes")?;
            wallet.load_nonce(account, u64::from_le_bytes(value));
            loaded += 1;
        }
        for row in self.wallet_holds.iter(&txn)? {
            let (key, value) = row?;
            let id: [u8; 16] = key.try_into().context("a hold id is not 16 bytes")?;
            anyhow::ensure!(wallet.load_hold(id, value), "a hold in the view does not decode");
            loaded += 1;
        }
        for row in self.wallet_idem.iter(&txn)? {
            let (key, value) = row?;
            let slot: [u8; 16] = key.try_into().context("an idempotency slot is not 16 bytes")?;
            anyhow::ensure!(value.len() == 25, "an idempotency record is not 25 bytes");
            let record = IdemRecord {
                txid: value[..16].try_into().expect("16 bytes"),
                expires_ms: u64::from_le_bytes(value[16..24].try_into().expect("8 bytes")),
                resolution: value[24] == 1,
            };
            wallet.load_idem(slot, record);
            loaded += 1;
        }
        wallet.finish_load();
        Ok(loaded)
    }

    /// Forgets everything: the view will be rebuilt from the log.
    pub fn clear(&self) -> anyhow::Result<()> {
        let mut txn = self.env.write_txn()?;
        self.balances.clear(&mut txn)?;
        self.meta.clear(&mut txn)?;
        self.receipts.clear(&mut txn)?;
        self.wallet_funds.clear(&mut txn)?;
        self.wallet_nonces.clear(&mut txn)?;
        self.wallet_holds.clear(&mut txn)?;
        self.wallet_idem.clear(&mut txn)?;
        txn.commit()?;
        Ok(())
    }

    /// Writes changed balances (a zero balance is removed) and the new meta
    /// in one transaction.
    pub fn write(&self, write: &ViewWrite) -> anyhow::Result<()> {
        let mut txn = self.env.write_txn()?;
        for (key, balance) in &write.changes {
            if *balance == 0 {
                self.balances.delete(&mut txn, key)?;
            } else {
                self.balances.put(&mut txn, key, &balance.to_le_bytes())?;
            }
        }
        for (txid, stored) in &write.receipts {
            self.receipts.put(&mut txn, txid, stored)?;
        }
        let wallet = &write.wallet;
        for (key, balance) in &wallet.funds {
            if *balance == 0 {
                self.wallet_funds.delete(&mut txn, key)?;
            } else {
                self.wallet_funds.put(&mut txn, key, &balance.to_le_bytes())?;
            }
        }
        for (account, nonce) in &wallet.nonces {
            self.wallet_nonces.put(&mut txn, account.as_bytes(), &nonce.to_le_bytes())?;
        }
        for (id, hold) in &wallet.holds {
            match hold {
                Some(bytes) => self.wallet_holds.put(&mut txn, id, bytes)?,
                None => {
                    self.wallet_holds.delete(&mut txn, id)?;
                }
            }
        }
        for (slot, record) in &wallet.idem {
            match record {
                Some(record) => {
                    let mut value = [0u8; 25];
                    value[..16].copy_from_slice(&record.txid);
                    value[16..24].copy_from_slice(&record.expires_ms.to_le_bytes());
                    value[24] = u8::from(record.resolution);
                    self.wallet_idem.put(&mut txn, slot, &value)?;
                }
                None => {
                    self.wallet_idem.delete(&mut txn, slot)?;
                }
            }
        }
        self.meta.put(&mut txn, META_KEY, &write.meta.encode())?;
        txn.commit()?;
        Ok(())
    }

    /// Unmaps the pages of the data file this process has touched. The
    /// shard serves from memory and reads the view only to load it and for
    /// receipts it no longer holds, yet every page a write or a load walks
    /// stays mapped and counts in the process's RSS (457 MiB with a million
    /// funded accounts). The pages stay in the page cache, where the kernel
    /// can reclaim them; a later read maps its page again.
    pub fn drop_mapped_pages(&self) {
        if let Some((start, len)) = self.mapping {
            // SAFETY: the range is LMDB's read-only shared mapping of the
            // data file, which lives as long as `self.env`; MADV_DONTNEED on
            // a shared file mapping only drops this process's page table
            // entries, and the next access maps the file's current contents.
            unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        }
    }

    /// A receipt the view keeps (a short read transaction; LMDB reads do not
    /// wait for the writer).
    pub fn receipt(&self, txid: &TxId) -> anyhow::Result<Option<Vec<u8>>> {
        let txn = self.env.read_txn()?;
        Ok(self.receipts.get(&txn, txid)?.map(<[u8]>::to_vec))
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

/// One write of a view.
pub struct ViewWrite {
    pub meta: ViewMeta,
    pub changes: Vec<(Box<[u8]>, u128)>,
    pub receipts: Vec<(TxId, Vec<u8>)>,
    pub wallet: Changes,
}

/// What a view's writer reports, read by the shard and by `/metrics`.
#[derive(Debug, Default)]
pub struct ViewStats {
    /// The `applied_seq` of the last committed write.
    pub written_seq: AtomicU64,
    pub writes: AtomicU64,
    pub failures: AtomicU64,
    /// Microseconds the last write took.
    pub last_write_us: AtomicU64,
}

/// The writer thread of one shard's view.
pub struct ViewWriter {
    pub store: Arc<ViewStore>,
    sender: Option<SyncSender<ViewWrite>>,
    busy: Arc<AtomicBool>,
    pub stats: Arc<ViewStats>,
    thread: Option<JoinHandle<()>>,
}

impl ViewWriter {
    /// Starts the writer of `store`, which reflects `written_seq`.
    pub fn spawn(shard: usize, store: ViewStore, written_seq: u64) -> anyhow::Result<ViewWriter> {
        let store = Arc::new(store);
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        let busy = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ViewStats::default());
        stats.written_seq.store(written_seq, Ordering::Relaxed);
        let thread = {
            let busy = busy.clone();
            let stats = stats.clone();
            let store = store.clone();
            std::thread::Builder::new()
                .name(format!("view-{shard}"))
                .spawn(move || write_views(shard, &store, &receiver, &busy, &stats))
                .context("starting a view writer")?
        };
        Ok(ViewWriter { store, sender: Some(sender), busy, stats, thread: Some(thread) })
    }

    /// Whether the last write has finished.
    pub fn idle(&self) -> bool {
        !self.busy.load(Ordering::Acquire)
    }

    /// Hands `write` to the writer; call only when `idle`.
    pub fn submit(&self, write: ViewWrite) {
        debug_assert!(self.idle());
        self.busy.store(true, Ordering::Release);
        if let Some(sender) = &self.sender {
            // Idle means the one slot is free: this does not block.
            if sender.send(write).is_err() {
                self.busy.store(false, Ordering::Release);
            }
        }
    }

    /// Waits for the writer to finish everything handed to it and stops it.
    pub fn finish(mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_views(
    shard: usize,
    store: &ViewStore,
    receiver: &Receiver<ViewWrite>,
    busy: &AtomicBool,
    stats: &ViewStats,
) {
    loop {
        let write = match receiver.recv_timeout(DROP_PAGES_EVERY) {
            Ok(write) => write,
            Err(RecvTimeoutError::Timeout) => {
                // Receipt reads map pages too, with or without writes.
                store.drop_mapped_pages();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
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
        busy.store(false, Ordering::Release);
    }
}

/// How often a shard looks at whether its view is due.
const VIEW_TICK: Duration = Duration::from_millis(100);

/// A shard's view, as the shard sees it.
pub struct ShardView {
    writer: RefCell<Option<ViewWriter>>,
    /// Read side of the view, kept after the writer stops.
    store: Option<Arc<ViewStore>>,
    /// Receipts handed to the writer with the write that reaches each seq:
    /// forgotten from memory once that write is committed.
    flushing: RefCell<VecDeque<(u64, Vec<TxId>)>>,
    /// The `applied_seq` of the last write handed to the writer.
    submitted: Cell<u64>,
    last_write: Cell<Instant>,
}

impl ShardView {
    pub fn new(writer: Option<ViewWriter>) -> ShardView {
        let submitted = writer.as_ref().map_or(0, |w| w.stats.written_seq.load(Ordering::Relaxed));
        let store = writer.as_ref().map(|w| w.store.clone());
        ShardView {
            store,
            flushing: RefCell::new(VecDeque::new()),
            writer: RefCell::new(writer),
            submitted: Cell::new(submitted),
            last_write: Cell::new(Instant::now()),
        }
    }

    /// A receipt's operation and placement from the view (`None` without a
    /// view, or on a read error, which is logged).
    pub fn committed(&self, txid: &TxId) -> Option<(WalletOp, Placement)> {
        let stored = match self.store.as_ref()?.receipt(txid) {
            Ok(stored) => stored?,
            Err(error) => {
                tracing::error!(%error, "reading a receipt from the view");
                return None;
            }
        };
        ron_shards::wallet::decode_stored_receipt(&stored)
    }

    /// (written seq, writes, failures) for `/metrics`; `None` without a view.
    pub fn stats(&self) -> Option<(u64, u64, u64)> {
        self.writer.borrow().as_ref().map(|w| {
            (
                w.stats.written_seq.load(Ordering::Relaxed),
                w.stats.writes.load(Ordering::Relaxed),
                w.stats.failures.load(Ordering::Relaxed),
            )
        })
    }
}

/// Hands the shard's changes to its view writer when due (or, with
/// `force`, whenever there is anything new). Returns false while the last
/// write is still running.
fn write_due(shard: &Shard, force: bool) -> bool {
    let view = &shard.view;
    let writer = view.writer.borrow();
    let Some(writer) = writer.as_ref() else { return true };
    if !writer.idle() {
        return false;
    }
    // Receipts the last write committed now live in the view only.
    let written = writer.stats.written_seq.load(Ordering::Acquire);
    let mut flushing = view.flushing.borrow_mut();
    while flushing.front().is_some_and(|(seq, _)| *seq <= written) {
        let (_, txids) = flushing.pop_front().expect("not empty");
        shard.wallet.borrow_mut().forget_receipts(&txids);
    }
    drop(flushing);
    if writer.stats.failures.load(Ordering::Relaxed) > 0 {
        // A failed write lost its changes: writing later ones would make the
        // view disagree with its meta. It stays at its last good state and a
        // restart replays the log after it.
        return true;
    }
    let applied = shard.applied.seq();
    let behind = applied - view.submitted.get();
    let due = behind >= shard.config.ledger.checkpoint_every
        || view.last_write.get().elapsed()
            >= Duration::from_millis(shard.config.ledger.view_write_ms);
    if behind == 0 || !(due || force) {
        return true;
    }
    let changes = shard.balances.borrow_mut().take_dirty();
    let receipts = shard.wallet.borrow_mut().take_new_receipts();
    let wallet = shard.wallet.borrow_mut().take_changes();
    let txids: Vec<TxId> = receipts.iter().map(|(txid, _)| *txid).collect();
    let meta = ViewMeta {
        applied_seq: applied,
        root: shard.applied.root(),
        shard: shard.id as u32,
        shard_count: shard.count as u32,
    };
    writer.submit(ViewWrite { meta, changes, receipts, wallet });
    view.flushing.borrow_mut().push_back((applied, txids));
    view.submitted.set(applied);
    view.last_write.set(Instant::now());
    true
}

/// Writes the shard's view in the background until the committer stops.
pub async fn keep(shard: Rc<Shard>) {
    while !shard.ledger.is_stopped() {
        glommio::timer::sleep(VIEW_TICK).await;
        write_due(&shard, false);
    }
}

/// The last write, once nothing more will be applied; then stops the
/// writer.
pub async fn finish(shard: &Shard) {
    while !write_due(shard, true) {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    let writer = shard.view.writer.borrow_mut().take();
    if let Some(writer) = writer {
        writer.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_rejects_other_versions() {
        let meta = ViewMeta { applied_seq: 42, root: [7; 32], shard: 1, shard_count: 3 };
        let bytes = meta.encode();
        assert_eq!(ViewMeta::decode(&bytes), Some(meta));
        let mut other = bytes;
        other[0] = 1;
        assert_eq!(ViewMeta::decode(&other), None);
        assert_eq!(ViewMeta::decode(&bytes[..10]), None);
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
        let store = ViewStore::open(&dir).unwrap();
        let mapping = store.mapping.expect("the data file's mapping is found");
        let changes = (0..20_000u32)
            .map(|i| (format!("acct:{i}").into_bytes().into_boxed_slice(), u128::from(i) + 1))
            .collect();
        let meta = ViewMeta { applied_seq: 1, root: [0; 32], shard: 0, shard_count: 1 };
        let write = ViewWrite { meta, changes, receipts: Vec::new(), wallet: Changes::default() };
        store.write(&write).unwrap();
        let mut balances = Balances::default();
        assert_eq!(store.load(&mut balances).unwrap(), 20_000);
        let before = resident_kib(mapping);
        assert!(before > 100, "loading maps the pages it reads: {before} KiB");
        store.drop_mapped_pages();
        assert_eq!(resident_kib(mapping), 0);
        // The data is still there.
        let mut again = Balances::default();
        assert_eq!(store.load(&mut again).unwrap(), 20_000);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
