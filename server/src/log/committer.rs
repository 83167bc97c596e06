//! The committer (SPEC §4): one executor that gives every item of every
//! service its sequence number, persists batches as log records, and keeps
//! the Merkle tree and the roots. It knows no service: items are bytes,
//! tagged by their first byte, with the shards that have a part in each.
//!
//! Shards talk to it over two bounded glommio shared channels each: calls in,
//! messages out. A receiving task per shard queues appends and answers reads
//! (roots, proofs, metrics) at once. One writer task does group commit:
//! whatever appends queued up while the previous record was being synced
//! (at most `ledger.batch_entries_max` items) become the next record, so
//! batches grow with load by themselves. No item is acknowledged before its
//! record's `fdatasync` returned; readers only see the tree up to the last
//! durable item.
//!
//! Once a record is durable, every shard gets a `Committed` message with
//! the items of the batch it has a part in, in log order, before the answers
//! to its own appends: shards apply the log as a stream, so a shard's state
//! always reflects a prefix of the log (what its view records), and
//! `LogShared::durable_seq` tells a reader how far that must be.
//!
//! Any write or sync error puts the committer in safe mode for good: the
//! failed batch and every later append answer `Degraded`, reads go on, and
//! a restart recovers from the log (`super::segments`).

use super::index::{Checkpoints, RecordAt, RootAt};
use super::segments::{IdKey, LogState, LogWriter, Placed, Recovered, RootItem};
use super::{LogShared, Part};
use crate::clock::unix_now_ms;
use crate::config::Config;
use crate::limits::INDEX_CHECKPOINT_EVERY;
use crate::metrics::{CountHistogram, LatencyHistogram, count_histogram_lines, histogram_lines};
use crate::workers::{Job, Lane, Workers};
use glommio::channels::shared_channel::{
    ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use ron_proto::log::{self as format, RecordWriter};
use ron_proto::merkle::{self, Hash};
use ron_shards::Set;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// One append: items committed atomically, in order.
#[derive(Debug)]
pub struct Append {
    /// The items' encodings, each prefixed by its length (u16), as in a
    /// record body.
    pub items: Vec<u8>,
    pub count: u32,
    /// Keys that must never have been committed before (entry ids): the
    /// append is refused as a duplicate otherwise.
    pub unique: Vec<IdKey>,
    /// A request's idempotency key: a second append with it gets the first
    /// one's placement and appends nothing.
    pub idem: Option<IdKey>,
    /// Which shards have a part in which item; each is sent its items once
    /// they are durable.
    pub parts: Vec<Part>,
}

impl Append {
    /// An append of one item (written by `encode`) that the shards in
    /// `shards` apply once it is durable.
    pub fn item(
        encode: impl FnOnce(&mut Vec<u8>),
        shards: impl IntoIterator<Item = usize>,
    ) -> Append {
        let mut items = vec![0, 0];
        encode(&mut items);
        let len = u16::try_from(items.len() - 2).expect("items are at most ITEM_BYTES_MAX");
        assert!(usize::from(len) <= format::ITEM_BYTES_MAX);
        items[..2].copy_from_slice(&len.to_le_bytes());
        let parts = shards.into_iter().map(|shard| Part { item: 0, shard: shard as u32 }).collect();
        Append { items, count: 1, unique: Vec::new(), idem: None, parts }
    }
}

/// What a shard asks of the committer.
#[derive(Debug)]
pub enum LogCall {
    Append(Append),
    /// What the append with this idempotency key committed, if it did.
    Idem {
        key: IdKey,
    },
    Roots {
        since: u64,
    },
    /// The audit path of item `seq` in the tree of the first `tree_size`.
    Inclusion {
        seq: u64,
        tree_size: u64,
    },
    Consistency {
        from: u64,
        to: u64,
    },
    Metrics,
}

#[derive(Debug)]
pub enum LogAnswer {
    Appended {
        seq_start: u64,
        seq_end: u64,
        root: Hash,
    },
    /// The idempotency key was committed before: its original placement.
    /// Nothing new was appended.
    Replayed {
        seq_start: u64,
        seq_end: u64,
        root: Hash,
    },
    /// No append with that idempotency key committed.
    Unknown,
    /// Unique keys (by index in the call) that were committed before or
    /// repeat an earlier one of the same append; nothing was appended.
    Duplicate {
        indices: Vec<u32>,
    },
    /// Safe mode: nothing was appended.
    Degraded {
        reason: String,
    },
    Roots {
        items: Vec<RootItem>,
        next: Option<u64>,
    },
    Inclusion {
        leaf: Hash,
        path: Vec<Hash>,
        root: Hash,
    },
    Consistency {
        path: Vec<Hash>,
        first_root: Hash,
        second_root: Hash,
    },
    /// The durable tree is smaller than the call asked about.
    OutOfRange {
        durable: u64,
    },
    Metrics(Box<CommitterMetrics>),
}

#[derive(Debug)]
pub struct LogRequest {
    pub id: u64,
    pub call: LogCall,
}

#[derive(Debug)]
pub struct LogReply {
    pub id: u64,
    pub answer: LogAnswer,
}

/// A durable batch, shared by every shard it is sent to.
#[derive(Debug)]
pub struct Batch {
    /// The sequence number of the batch's last item.
    pub last_seq: u64,
    pub root: Hash,
    /// When its record became durable (for the revocation propagation
    /// metric).
    pub durable_at: Instant,
    /// The items of the batch's appends, one after another.
    bytes: Vec<u8>,
}

/// Where one item of a batch is.
#[derive(Clone, Copy, Debug)]
struct ItemAt {
    seq: u64,
    start: u32,
    len: u32,
}

/// A durable batch as one shard sees it: the items it has a part in.
#[derive(Debug)]
pub struct Committed {
    pub batch: Arc<Batch>,
    items: Vec<ItemAt>,
}

/// One committed item.
#[derive(Clone, Copy, Debug)]
pub struct Item<'a> {
    pub seq: u64,
    /// The root after the item's record.
    pub root: &'a Hash,
    pub bytes: &'a [u8],
    /// When its record became durable (`None` for an item read back from
    /// the log at start).
    pub durable_at: Option<Instant>,
}

impl Committed {
    /// This shard's items, in log order.
    pub fn items(&self) -> impl Iterator<Item = Item<'_>> {
        self.items.iter().map(|at| Item {
            seq: at.seq,
            root: &self.batch.root,
            bytes: &self.batch.bytes[at.start as usize..(at.start + at.len) as usize],
            durable_at: Some(self.batch.durable_at),
        })
    }
}

/// What the committer sends a shard.
#[derive(Debug)]
pub enum ToShard {
    Reply(LogReply),
    Committed(Committed),
}

/// What the committer counts; merged into `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct CommitterMetrics {
    /// From the committer receiving an append to its record being durable.
    pub commit_latency: LatencyHistogram,
    pub batch_entries: CountHistogram,
    pub fsync: LatencyHistogram,
    /// The record's write, before its sync.
    pub write: LatencyHistogram,
    pub queued_entries: u64,
    pub entries_committed: u64,
    pub records_written: u64,
    pub duplicates_rejected: u64,
    pub seq_gaps_detected: u64,
    pub safe_mode: bool,
    /// The seq the log index on disk reaches, and the entries after its
    /// ids (what a start replays for the committer).
    pub index_checkpoint_seq: u64,
    /// Writing one checkpoint of the log index (on a worker).
    pub index_write: LatencyHistogram,
    pub index_tail_entries: u64,
}

impl CommitterMetrics {
    /// Appends the committer's series (SPEC §9 keeps their `ledger_` names).
    pub fn render(&self, out: &mut String) {
        use crate::metrics::header;
        let histograms = [
            (
                "ledger_commit_latency_seconds",
                "From the committer receiving an append to its record being durable.",
                &self.commit_latency,
            ),
            ("ledger_fsync_seconds", "fdatasync of one log record.", &self.fsync),
            ("ledger_write_seconds", "Writing one log record, before its sync.", &self.write),
            (
                "ledger_index_write_seconds",
                "Writing one checkpoint of the log index (a worker's LMDB transaction).",
                &self.index_write,
            ),
        ];
        for (name, help, histogram) in histograms {
            header(out, name, "histogram", help);
            histogram_lines(out, name, None, histogram);
        }
        header(out, "ledger_batch_entries", "histogram", "Entries per log record.");
        count_histogram_lines(out, "ledger_batch_entries", &self.batch_entries);
        crate::metrics::simple_lines(
            out,
            &[
                (
                    "ledger_safe_mode",
                    "gauge",
                    "1 while writes are refused.",
                    f64::from(u8::from(self.safe_mode)),
                ),
                (
                    "ledger_seq_gap_detected_total",
                    "counter",
                    "Sequence gaps found (never expected).",
                    self.seq_gaps_detected as f64,
                ),
                (
                    "ledger_entries_total",
                    "counter",
                    "Entries committed.",
                    self.entries_committed as f64,
                ),
                (
                    "ledger_records_total",
                    "counter",
                    "Log records written.",
                    self.records_written as f64,
                ),
                (
                    "ledger_duplicate_rejections_total",
                    "counter",
                    "Appends refused for an entry id already committed.",
                    self.duplicates_rejected as f64,
                ),
                (
                    "ledger_index_checkpoint_seq",
                    "gauge",
                    "The seq the log index on disk reaches.",
                    self.index_checkpoint_seq as f64,
                ),
                (
                    "ledger_index_tail_entries",
                    "gauge",
                    "Entries after the log index's checkpoint: what a start replays.",
                    self.index_tail_entries as f64,
                ),
            ],
        );
    }
}

/// One shard's end of the committer link, made before the executors start.
pub struct CommitterLink {
    pub calls: SharedReceiver<LogRequest>,
    pub answers: SharedSender<ToShard>,
}

pub struct CommitterStart {
    pub config: Arc<Config>,
    pub shared: Arc<LogShared>,
    pub recovered: Recovered,
    pub links: Vec<CommitterLink>,
    /// Where the log index's checkpoints are written.
    pub workers: Workers,
}

struct Pending {
    shard: usize,
    id: u64,
    append: Append,
    received: Instant,
}

struct Committer {
    shared: Arc<LogShared>,
    batch_entries_max: u64,
    state: RefCell<LogState>,
    /// Items whose record is durable: what readers may see.
    durable: Cell<u64>,
    pending: RefCell<VecDeque<Pending>>,
    /// Shards whose call channel is still open.
    open_links: Cell<usize>,
    writer_waker: RefCell<Option<Waker>>,
    metrics: RefCell<CommitterMetrics>,
    answers: Vec<ConnectedSender<ToShard>>,
    workers: Workers,
    checkpoints: RefCell<Checkpoints>,
    /// A checkpoint write the workers had no room for, and its lane.
    unsubmitted: RefCell<Option<(Lane, Job)>>,
    last_checkpoint: Cell<Instant>,
    /// Checkpoint writes whose time is in the metrics.
    checkpoints_seen: Cell<u64>,
}

impl Committer {
    fn wake_writer(&self) {
        if let Some(waker) = self.writer_waker.borrow_mut().take() {
            waker.wake();
        }
    }

    async fn answer(&self, shard: usize, id: u64, answer: LogAnswer) {
        self.send(shard, ToShard::Reply(LogReply { id, answer })).await;
    }

    /// Sends to a shard; waits while its channel is full (the shard's
    /// receiving task never waits, so room comes).
    async fn send(&self, shard: usize, message: ToShard) {
        if self.answers[shard].send(message).await.is_err() {
            tracing::debug!(shard, "a message found its shard gone");
        }
    }

    fn enter_safe_mode(&self, reason: String) {
        tracing::error!(%reason, "log safe mode: writes refused until restart");
        self.shared.enter_safe_mode(&reason);
    }

    /// Safe mode, entered by the committer or by the background scan of
    /// the log (`LogShared`).
    fn degraded(&self) -> Option<LogAnswer> {
        self.shared.safe_mode_reason().map(|reason| LogAnswer::Degraded { reason })
    }

    /// Answers a read from the durable part of the state.
    fn read(&self, call: LogCall) -> LogAnswer {
        let state = self.state.borrow();
        let durable = self.durable.get();
        match call {
            LogCall::Roots { since } => {
                let (items, next) = state.index.roots_page(since);
                LogAnswer::Roots { items, next }
            }
            LogCall::Inclusion { seq, tree_size } => {
                if seq == 0 || seq > tree_size || tree_size > durable {
                    return LogAnswer::OutOfRange { durable };
                }
                let path = state.accumulator.inclusion_proof(seq - 1, tree_size).expect("in range");
                LogAnswer::Inclusion {
                    leaf: state.accumulator.leaf(seq - 1),
                    path,
                    root: state.accumulator.root_at(tree_size),
                }
            }
            LogCall::Consistency { from, to } => {
                if from == 0 || from > to || to > durable {
                    return LogAnswer::OutOfRange { durable };
                }
                LogAnswer::Consistency {
                    path: state.accumulator.consistency_proof(from, to).expect("in range"),
                    first_root: state.accumulator.root_at(from),
                    second_root: state.accumulator.root_at(to),
                }
            }
            LogCall::Metrics => {
                let mut metrics = self.metrics.borrow().clone();
                metrics.safe_mode = self.shared.in_safe_mode();
                metrics.queued_entries =
                    self.pending.borrow().iter().map(|p| u64::from(p.append.count)).sum();
                let checkpoints = self.checkpoints.borrow();
                let status = checkpoints.status();
                metrics.index_checkpoint_seq = status.written_seq.load(Ordering::Relaxed);
                let ids = status.ids_written_seq.load(Ordering::Relaxed);
                metrics.index_tail_entries = durable.saturating_sub(ids);
                LogAnswer::Metrics(Box::new(metrics))
            }
            LogCall::Idem { key } => match state.index.idem(&key) {
                Some(placed) => replayed(&placed),
                None => LogAnswer::Unknown,
            },
            LogCall::Append(_) => unreachable!("appends are queued, not read"),
        }
    }

    /// Hands what was committed since the last checkpoint to a worker, once
    /// the last write is done and a checkpoint interval has passed (or
    /// whenever there is anything new, with `force`). Only durable records
    /// go: never while one is being written.
    fn checkpoint(&self, force: bool) {
        let unsubmitted = self.unsubmitted.borrow_mut().take();
        if let Some((lane, job)) = unsubmitted {
            if let Err(job) = self.workers.submit(lane, job) {
                *self.unsubmitted.borrow_mut() = Some((lane, job));
            }
            return;
        }
        let mut state = self.state.borrow_mut();
        if state.accumulator.len() != self.durable.get() {
            return;
        }
        if !force && self.last_checkpoint.get().elapsed() < INDEX_CHECKPOINT_EVERY {
            return;
        }
        let status = self.checkpoints.borrow().status().clone();
        let writes = status.writes.load(Ordering::Acquire);
        if writes > self.checkpoints_seen.get() {
            self.checkpoints_seen.set(writes);
            let took = Duration::from_micros(status.last_write_us.load(Ordering::Acquire));
            self.metrics.borrow_mut().index_write.record(took);
        }
        let (seq, root) = (state.accumulator.len(), state.root());
        let LogState { accumulator, index, .. } = &mut *state;
        let nodes = accumulator.nodes_mut();
        let taken = self.checkpoints.borrow_mut().take(index, nodes, seq, root, force);
        let Some(flush) = taken else { return };
        self.last_checkpoint.set(Instant::now());
        // A batch of ids (seconds of B-tree inserts) or a new filter runs on
        // time the shards leave, and later checkpoints wait for it; the
        // others take milliseconds and keep pace on the normal lane.
        let lane = if flush.heavy() { Lane::Idle } else { Lane::Normal };
        if let Err(job) = self.workers.submit(lane, Job::new(move || flush.run())) {
            *self.unsubmitted.borrow_mut() = Some((lane, job));
        }
    }

    /// The last checkpoint, once nothing more is appended; waits for it.
    async fn finish_checkpoints(&self) {
        if !self.state.borrow().index.has_store() {
            return;
        }
        loop {
            self.checkpoint(true);
            let (written, failed) = {
                let checkpoints = self.checkpoints.borrow();
                let ids = checkpoints.status().ids_written_seq.load(Ordering::Acquire);
                (ids, checkpoints.failed())
            };
            if failed || written == self.durable.get() {
                return;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

/// Checkpoints the index while the log is quiet (cancelled at stop).
async fn checkpoint_ticks(committer: Rc<Committer>) {
    loop {
        glommio::timer::sleep(INDEX_CHECKPOINT_EVERY).await;
        committer.checkpoint(false);
    }
}

fn replayed(placed: &Placed) -> LogAnswer {
    LogAnswer::Replayed { seq_start: placed.seq_start, seq_end: placed.seq_end, root: placed.root }
}

/// The body of the committer executor: serve every shard until all of them
/// have gone.
pub async fn run(start: CommitterStart) {
    let CommitterStart { config, shared, recovered, links, workers } = start;
    let mut receivers = Vec::with_capacity(links.len());
    let mut answers = Vec::with_capacity(links.len());
    let connecting = crate::wake::wake_every(crate::wake::START_WAKE);
    for link in links {
        receivers.push(link.calls.connect().await);
        answers.push(link.answers.connect().await);
    }
    drop(connecting);
    let log_dir = config.data_dir.join("log");
    let writer = if config.amnesia() {
        None
    } else {
        match LogWriter::open(
            &log_dir,
            recovered.tail.clone(),
            config.ledger.segment_bytes,
            config.ledger.fsync,
            config.ledger.fsync && config.ledger.zero_segments,
        )
        .await
        {
            Ok(writer) => Some(writer),
            Err(error) => {
                shared.enter_safe_mode(&format!("opening the log: {error}"));
                None
            }
        }
    };
    let durable = recovered.state.accumulator.len();
    let mut recovered = recovered;
    let checkpoints =
        Checkpoints::new(recovered.state.checkpoint, recovered.state.index.stored_ids());
    if recovered.state.index.has_store() {
        checkpoints.reserve(&mut recovered.state.index);
    }
    let committer = Rc::new(Committer {
        shared: shared.clone(),
        batch_entries_max: u64::from(config.ledger.batch_entries_max),
        state: RefCell::new(recovered.state),
        durable: Cell::new(durable),
        pending: RefCell::new(VecDeque::new()),
        open_links: Cell::new(receivers.len()),
        writer_waker: RefCell::new(None),
        metrics: RefCell::new(CommitterMetrics::default()),
        answers,
        workers,
        checkpoints: RefCell::new(checkpoints),
        unsubmitted: RefCell::new(None),
        last_checkpoint: Cell::new(Instant::now()),
        checkpoints_seen: Cell::new(0),
    });
    if let Some(reason) = recovered.corruption.clone().or_else(|| shared.safe_mode_reason()) {
        committer.enter_safe_mode(reason);
    }
    let mut tasks = Vec::with_capacity(receivers.len());
    for (shard, receiver) in receivers.into_iter().enumerate() {
        tasks.push(glommio::spawn_local(serve_shard(committer.clone(), shard, receiver)));
    }
    // What a start replayed goes to the index at once; then at most a
    // checkpoint interval of the log waits for the next one.
    committer.checkpoint(true);
    let ticks = glommio::spawn_local(checkpoint_ticks(committer.clone()));
    write_loop(committer.clone(), writer, config.amnesia()).await;
    for task in tasks {
        task.await;
    }
    ticks.cancel().await;
    committer.finish_checkpoints().await;
    tracing::info!("committer stopped");
}

async fn serve_shard(
    committer: Rc<Committer>,
    shard: usize,
    receiver: ConnectedReceiver<LogRequest>,
) {
    while let Some(LogRequest { id, call }) = receiver.recv().await {
        match call {
            LogCall::Append(append) => {
                if let Some(degraded) = committer.degraded() {
                    committer.answer(shard, id, degraded).await;
                    continue;
                }
                assert!(append.count >= 1, "an append carries items");
                assert!(append.parts.iter().all(|p| p.item < append.count), "parts name items");
                let pending = Pending { shard, id, append, received: Instant::now() };
                committer.pending.borrow_mut().push_back(pending);
                committer.wake_writer();
            }
            read => {
                let answer = committer.read(read);
                committer.answer(shard, id, answer).await;
            }
        }
    }
    committer.open_links.set(committer.open_links.get() - 1);
    committer.wake_writer();
}

/// Waits until appends are queued; false once every shard has gone and
/// nothing is left.
async fn appends_queued(committer: &Committer) -> bool {
    std::future::poll_fn(|cx| {
        if !committer.pending.borrow().is_empty() {
            return Poll::Ready(true);
        }
        if committer.open_links.get() == 0 {
            return Poll::Ready(false);
        }
        *committer.writer_waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

/// What was taken from the queue for the next record.
#[derive(Default)]
struct Taken {
    /// Appends that go into the record, in order.
    batch: Vec<Pending>,
    items: u64,
    /// Their unique keys and idempotency keys.
    unique: Set<IdKey>,
    idem: Set<IdKey>,
    /// Appends whose idempotency key committed before: their placement.
    replays: Vec<(Pending, Placed)>,
    /// Appends whose idempotency key is in the batch: they get its
    /// placement once it is durable.
    followers: Vec<(Pending, IdKey)>,
    /// Appends with a unique key committed before, and which.
    duplicates: Vec<(Pending, Vec<u32>)>,
}

/// Takes what queued while the last record was synced, up to the batch
/// bound, sorting out replays and duplicates.
fn take(committer: &Committer) -> Taken {
    let state = committer.state.borrow();
    let ids = state.index.ids();
    let mut pending = committer.pending.borrow_mut();
    let mut taken = Taken::default();
    while let Some(next) = pending.front() {
        let count = u64::from(next.append.count);
        if taken.items > 0 && taken.items + count > committer.batch_entries_max {
            break;
        }
        let next = pending.pop_front().expect("peeked");
        if let Some(key) = next.append.idem {
            if let Some(placed) = state.index.idem(&key) {
                taken.replays.push((next, placed));
                continue;
            }
            if taken.idem.contains(&key) {
                taken.followers.push((next, key));
                continue;
            }
        }
        // One pass per id: committed before, or already in this record
        // (an earlier append's, or this one's twice). A refused append's
        // ids come out of the record's set again.
        let unique = &next.append.unique;
        let mut repeated = Vec::new();
        for (i, key) in unique.iter().enumerate() {
            if ids.contains(key) || !taken.unique.insert(*key) {
                repeated.push(i as u32);
            }
        }
        if !repeated.is_empty() {
            for (i, key) in unique.iter().enumerate() {
                if repeated.binary_search(&(i as u32)).is_err() {
                    taken.unique.remove(key);
                }
            }
            taken.duplicates.push((next, repeated));
            continue;
        }
        taken.idem.extend(next.append.idem);
        taken.items += count;
        taken.batch.push(next);
    }
    taken
}

async fn write_loop(committer: Rc<Committer>, mut writer: Option<LogWriter>, in_memory: bool) {
    let mut record = RecordWriter::default();
    while appends_queued(&committer).await {
        let mut taken = take(&committer);
        for (pending, placed) in taken.replays.drain(..) {
            committer.answer(pending.shard, pending.id, replayed(&placed)).await;
        }
        for (pending, indices) in taken.duplicates.drain(..) {
            committer.metrics.borrow_mut().duplicates_rejected += 1;
            committer.answer(pending.shard, pending.id, LogAnswer::Duplicate { indices }).await;
        }
        if taken.batch.is_empty() {
            assert!(taken.followers.is_empty(), "a follower has a leader in the batch");
            continue;
        }
        if let Some(reason) = committer.shared.safe_mode_reason() {
            refuse(&committer, taken, &reason).await;
            continue;
        }
        let sealed = seal(&committer, &mut record, &taken);
        let result = match writer.as_mut() {
            Some(writer) => writer.append(record.sealed(), sealed.first_seq).await.map(Some),
            None if in_memory => Ok(None),
            None => Err(std::io::Error::other("the log is not open")),
        };
        match result {
            Ok(times) => {
                let mut at = RecordAt::default();
                if let Some(times) = times {
                    let mut metrics = committer.metrics.borrow_mut();
                    metrics.fsync.record(times.sync);
                    metrics.write.record(times.write);
                    at = times.at;
                }
                publish(&committer, taken, sealed, at).await;
                committer.checkpoint(false);
            }
            Err(error) => {
                committer.state.borrow_mut().accumulator.truncate(sealed.first_seq - 1);
                committer.enter_safe_mode(format!(
                    "writing the log record at seq {}: {error}",
                    sealed.first_seq
                ));
                let reason = committer.shared.safe_mode_reason().unwrap_or_default();
                refuse(&committer, taken, &reason).await;
            }
        }
    }
}

/// A record sealed but not yet durable.
#[derive(Clone, Copy)]
struct Sealed {
    first_seq: u64,
    root: Hash,
    committed_ms: u64,
}

/// Extends the tree with the batch's items and seals its record; readers
/// still see only the durable part.
fn seal(committer: &Committer, record: &mut RecordWriter, taken: &Taken) -> Sealed {
    let mut state = committer.state.borrow_mut();
    let before = state.accumulator.len();
    let previous_root = state.root();
    record.start();
    for pending in &taken.batch {
        if let Some(key) = pending.append.idem {
            let first = record.count();
            record.mark(format::IdemMark { key, first, count: pending.append.count });
        }
        for encoded in format::body_entries(&pending.append.items) {
            let encoded = encoded.expect("shards send well-framed items");
            record.push(encoded);
            state.accumulator.push(merkle::leaf_hash(encoded));
        }
    }
    assert_eq!(state.accumulator.len() - before, taken.items, "every item went in");
    // One time for the record and the published root, so that `/roots`
    // says the same before and after a restart.
    let committed_ms = unix_now_ms();
    let root = state.root();
    record.seal(before + 1, committed_ms, previous_root, root);
    Sealed { first_seq: before + 1, root, committed_ms }
}

/// Answers every append of `taken` with `Degraded`.
async fn refuse(committer: &Committer, mut taken: Taken, reason: &str) {
    let followers = taken.followers.drain(..).map(|(p, _)| p);
    for pending in taken.batch.drain(..).chain(followers) {
        let answer = LogAnswer::Degraded { reason: reason.to_owned() };
        committer.answer(pending.shard, pending.id, answer).await;
    }
}

/// The batch is durable: record it, send every shard its part, then answer
/// the appends.
async fn publish(committer: &Committer, mut taken: Taken, sealed: Sealed, at: RecordAt) {
    let last_seq = sealed.first_seq + taken.items - 1;
    // Where each append went.
    let mut placements = Vec::with_capacity(taken.batch.len());
    let mut seq = sealed.first_seq;
    for pending in &taken.batch {
        let seq_end = seq + u64::from(pending.append.count) - 1;
        placements.push(Placed { seq_start: seq, seq_end, root: sealed.root });
        seq = seq_end + 1;
    }
    {
        // Everything the record adds to the index goes in before the
        // durable mark moves: a checkpoint taken at it (during the sends
        // below) holds all of it.
        let mut state = committer.state.borrow_mut();
        state.index.add_ids(taken.unique.drain());
        let root = RootItem { seq: last_seq, root: sealed.root, committed_ms: sealed.committed_ms };
        state.index.add_root(RootAt { root, at });
        for (pending, placed) in taken.batch.iter().zip(&placements) {
            if let Some(key) = pending.append.idem {
                state.index.add_idem(key, *placed);
            }
        }
        let mut metrics = committer.metrics.borrow_mut();
        if committer.durable.get() != sealed.first_seq - 1 {
            metrics.seq_gaps_detected += 1;
        }
        committer.durable.set(last_seq);
        metrics.batch_entries.record(taken.items);
        metrics.records_written += 1;
        metrics.entries_committed += taken.items;
        let now = Instant::now();
        for pending in &taken.batch {
            metrics.commit_latency.record(now.duration_since(pending.received));
        }
    }
    // Shards apply the batch before any answer about it leaves.
    committer.shared.durable_seq.store(last_seq, Ordering::Release);
    for (shard, committed) in fan_out(committer.answers.len(), &taken.batch, sealed, last_seq) {
        committer.send(shard, ToShard::Committed(committed)).await;
    }
    for (pending, placed) in taken.batch.drain(..).zip(placements) {
        let Placed { seq_start, seq_end, root } = placed;
        committer
            .answer(pending.shard, pending.id, LogAnswer::Appended { seq_start, seq_end, root })
            .await;
    }
    for (pending, key) in taken.followers.drain(..) {
        let placed = committer.state.borrow().index.idem(&key).expect("the leader committed");
        committer.answer(pending.shard, pending.id, replayed(&placed)).await;
    }
}

/// Every shard's part of a durable batch: the items it has a part in, in log
/// order, over one shared copy of the batch's items.
fn fan_out(
    shards: usize,
    batch: &[Pending],
    sealed: Sealed,
    last_seq: u64,
) -> Vec<(usize, Committed)> {
    let mut bytes = Vec::with_capacity(batch.iter().map(|p| p.append.items.len()).sum());
    let mut items: Vec<Vec<ItemAt>> = (0..shards).map(|_| Vec::new()).collect();
    let mut seq = sealed.first_seq;
    for pending in batch {
        let base = bytes.len();
        bytes.extend_from_slice(&pending.append.items);
        // Where each item of this append is in `bytes`, by its index.
        let mut places = Vec::with_capacity(pending.append.count as usize);
        let mut at = base + 2;
        for encoded in format::body_entries(&pending.append.items) {
            let len = encoded.expect("framed").len();
            places.push((at as u32, len as u32));
            at += len + 2;
        }
        for part in &pending.append.parts {
            let (start, len) = places[part.item as usize];
            items[part.shard as usize].push(ItemAt { seq: seq + u64::from(part.item), start, len });
        }
        seq += u64::from(pending.append.count);
    }
    let batch = Arc::new(Batch { last_seq, root: sealed.root, durable_at: Instant::now(), bytes });
    items
        .into_iter()
        .enumerate()
        .map(|(shard, mut items)| {
            // An append's parts may list shards in any order; a shard
            // applies its items in log order.
            items.sort_by_key(|at| at.seq);
            (shard, Committed { batch: batch.clone(), items })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(items: &[&[u8]], parts: &[(u32, u32)]) -> Pending {
        let mut bytes = Vec::new();
        for item in items {
            bytes.extend_from_slice(&(item.len() as u16).to_le_bytes());
            bytes.extend_from_slice(item);
        }
        let parts = parts.iter().map(|&(item, shard)| Part { item, shard }).collect();
        let append = Append {
            items: bytes,
            count: items.len() as u32,
            unique: Vec::new(),
            idem: None,
            parts,
        };
        Pending { shard: 0, id: 0, append, received: Instant::now() }
    }

    #[test]
    fn every_shard_gets_its_items_in_log_order() {
        let batch = [
            // Parts listed out of order, one item with two shards.
            append(&[b"a1", b"a2"], &[(1, 0), (0, 2), (0, 0)]),
            append(&[b"b1"], &[(0, 1)]),
            append(&[b"c1", b"c2", b"c3"], &[(2, 2), (0, 1)]),
        ];
        let sealed = Sealed { first_seq: 10, root: [7; 32], committed_ms: 0 };
        let shards = fan_out(3, &batch, sealed, 15);
        let seen = |shard: usize| -> Vec<(u64, Vec<u8>)> {
            shards[shard].1.items().map(|item| (item.seq, item.bytes.to_vec())).collect()
        };
        assert_eq!(seen(0), [(10, b"a1".to_vec()), (11, b"a2".to_vec())]);
        assert_eq!(seen(1), [(12, b"b1".to_vec()), (13, b"c1".to_vec())]);
        assert_eq!(seen(2), [(10, b"a1".to_vec()), (15, b"c3".to_vec())]);
        for (shard, committed) in &shards {
            assert_eq!(committed.batch.last_seq, 15, "shard {shard}");
            assert!(committed.items().all(|item| *item.root == [7; 32]));
        }
    }
}
