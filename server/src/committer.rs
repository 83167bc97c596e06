//! The ledger committer (SPEC §4): one executor that gives every entry of
//! every service its sequence number, persists batches as log records, and
//! keeps the Merkle tree and the roots.
//!
//! Shards talk to it over two bounded glommio shared channels each: calls in,
//! answers out. A receiving task per shard queues appends and answers reads
//! (roots, proofs, metrics) at once. One writer task does group commit:
//! whatever appends queued up while the previous record was being synced
//! (at most `ledger.batch_entries_max` entries) become the next record, so
//! batches grow with load by themselves. No entry is acknowledged before its
//! record's `fdatasync` returned; readers only see the tree up to the last
//! durable entry.
//!
//! Once a record is durable, every shard gets a `Committed` message with
//! the items of the batch it owns, in log order, before the answers to its
//! own appends: owners apply the log as a stream, so a shard's state always
//! reflects a prefix of the log (what its view records), and
//! `NodeShared::ledger_durable_seq` tells a reader how far that must be.
//!
//! Any write or sync error puts the committer in safe mode for good: the
//! failed batch and every later append answer `Degraded`, reads go on, and
//! a restart recovers from the log (`crate::log`).

use crate::config::Config;
use crate::log::{Committed, IdKey, LedgerState, LogWriter, Recovered, RootItem};
use crate::metrics::{CountHistogram, LatencyHistogram};
use crate::node::NodeShared;
use glommio::channels::shared_channel::{
    ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use ron_proto::ledger::{self, RecordWriter};
use ron_proto::merkle::{self, Hash};
use ron_proto::revocation::Revocation;
use ron_proto::wallet::{Placement, WalletOp};
use ron_shards::balances::Item;
use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::Instant;

/// Roots in one `/roots` page, at most.
pub const ROOTS_PAGE_MAX: usize = 1000;

/// What a shard asks of the committer.
#[derive(Debug)]
pub enum LedgerCall {
    /// Commit these entries (length-prefixed encodings, as in a record
    /// body) atomically, in order. `ids` are their id keys, in order.
    Append {
        entries: Vec<u8>,
        count: u32,
        ids: Vec<IdKey>,
        idem: Option<IdKey>,
        /// What each shard with a part applies once this is durable.
        owned: Vec<(usize, Owned)>,
    },
    /// What the request with this idempotency key committed, if it did.
    Idem {
        key: IdKey,
    },
    Roots {
        since: u64,
    },
    /// The audit path of entry `seq` in the tree of the first `tree_size`.
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

impl LedgerCall {
    /// An append of one log item (written by `encode`) that the shards in
    /// `owned` apply once it is durable.
    pub fn append_item(
        encode: impl FnOnce(&mut Vec<u8>),
        owned: Vec<(usize, Owned)>,
    ) -> LedgerCall {
        let mut entries = vec![0, 0];
        encode(&mut entries);
        let len = u16::try_from(entries.len() - 2).expect("items are at most ITEM_BYTES_MAX");
        entries[..2].copy_from_slice(&len.to_le_bytes());
        LedgerCall::Append { entries, count: 1, ids: Vec::new(), idem: None, owned }
    }
}

#[derive(Debug)]
pub enum LedgerAnswer {
    Appended {
        seq_start: u64,
        seq_end: u64,
        root: Hash,
    },
    /// The idempotency key was committed before: its original answer.
    /// Nothing new was appended.
    Replayed {
        seq_start: u64,
        seq_end: u64,
        root: Hash,
    },
    /// No request with that idempotency key committed.
    Unknown,
    /// Entries (by index in the call) whose id was committed before or
    /// repeats an earlier entry of the same batch; nothing was appended.
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
pub struct LedgerRequest {
    pub id: u64,
    pub call: LedgerCall,
}

#[derive(Debug)]
pub struct LedgerReply {
    pub id: u64,
    pub answer: LedgerAnswer,
}

/// One request's part for one shard: ledger items it owns, wallet
/// operations it has a part in, revocations (every shard applies them), in
/// the request's order.
#[derive(Debug, Default)]
pub struct Owned {
    pub items: Vec<Item>,
    pub wallet: Vec<WalletOp>,
    pub revocations: Vec<Revocation>,
}

/// A durable batch, as one shard sees it.
#[derive(Debug)]
pub struct CommittedBatch {
    /// The sequence number of the batch's last entry.
    pub last_seq: u64,
    pub root: Hash,
    /// The batch's entries this shard owns, in log order.
    pub items: Vec<Item>,
    /// The batch's wallet operations this shard has a part in, in log order.
    pub wallet: Vec<(WalletOp, Placement)>,
    /// The batch's revocations with their seqs.
    pub revocations: Vec<(Revocation, u64)>,
    /// When the batch's record became durable (for the revocation
    /// propagation metric).
    pub durable_at: Instant,
}

/// What the committer sends a shard.
#[derive(Debug)]
pub enum ToShard {
    Reply(LedgerReply),
    Committed(CommittedBatch),
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
}

/// One shard's end of the committer link, made before the executors start.
pub struct CommitterLink {
    pub calls: SharedReceiver<LedgerRequest>,
    pub answers: SharedSender<ToShard>,
}

pub struct CommitterStart {
    pub config: Arc<Config>,
    pub node: Arc<NodeShared>,
    pub recovered: Recovered,
    pub links: Vec<CommitterLink>,
}

struct Pending {
    shard: usize,
    id: u64,
    entries: Vec<u8>,
    count: u32,
    ids: Vec<IdKey>,
    idem: Option<IdKey>,
    owned: Vec<(usize, Owned)>,
    received: Instant,
}

struct Committer {
    node: Arc<NodeShared>,
    batch_entries_max: u64,
    state: RefCell<LedgerState>,
    /// Entries whose record is durable: what readers may see.
    durable: Cell<u64>,
    pending: RefCell<VecDeque<Pending>>,
    /// Shards whose call channel is still open.
    open_links: Cell<usize>,
    writer_waker: RefCell<Option<Waker>>,
    safe_mode: RefCell<Option<String>>,
    metrics: RefCell<CommitterMetrics>,
    answers: Vec<ConnectedSender<ToShard>>,
}

impl Committer {
    fn wake_writer(&self) {
        if let Some(waker) = self.writer_waker.borrow_mut().take() {
            waker.wake();
        }
    }

    async fn answer(&self, shard: usize, id: u64, answer: LedgerAnswer) {
        self.send(shard, ToShard::Reply(LedgerReply { id, answer })).await;
    }

    /// Sends to a shard; waits while its channel is full (the shard's
    /// receiving task never waits, so room comes).
    async fn send(&self, shard: usize, message: ToShard) {
        if self.answers[shard].send(message).await.is_err() {
            tracing::debug!(shard, "a message found its shard gone");
        }
    }

    fn enter_safe_mode(&self, reason: String) {
        tracing::error!(%reason, "ledger safe mode: writes refused until restart");
        self.node.enter_ledger_safe_mode(&reason);
        self.metrics.borrow_mut().safe_mode = true;
        *self.safe_mode.borrow_mut() = Some(reason);
    }

    fn degraded(&self) -> Option<LedgerAnswer> {
        self.safe_mode
            .borrow()
            .as_ref()
            .map(|reason| LedgerAnswer::Degraded { reason: reason.clone() })
    }

    /// Answers a read from the durable part of the state.
    fn read(&self, call: LedgerCall) -> LedgerAnswer {
        let state = self.state.borrow();
        let durable = self.durable.get();
        match call {
            LedgerCall::Roots { since } => {
                let roots = &state.roots;
                let start = roots.partition_point(|r| r.seq <= since);
                let end = (start + ROOTS_PAGE_MAX).min(roots.len());
                let items = roots[start..end].to_vec();
                let next = (end < roots.len()).then(|| items.last().map_or(since, |r| r.seq));
                LedgerAnswer::Roots { items, next }
            }
            LedgerCall::Inclusion { seq, tree_size } => {
                if seq == 0 || seq > tree_size || tree_size > durable {
                    return LedgerAnswer::OutOfRange { durable };
                }
                let path = state.accumulator.inclusion_proof(seq - 1, tree_size).expect("in range");
                LedgerAnswer::Inclusion {
                    leaf: state.accumulator.leaf(seq - 1),
                    path,
                    root: state.accumulator.root_at(tree_size),
                }
            }
            LedgerCall::Consistency { from, to } => {
                if from == 0 || from > to || to > durable {
                    return LedgerAnswer::OutOfRange { durable };
                }
                LedgerAnswer::Consistency {
                    path: state.accumulator.consistency_proof(from, to).expect("in range"),
                    first_root: state.accumulator.root_at(from),
                    second_root: state.accumulator.root_at(to),
                }
            }
            LedgerCall::Metrics => {
                let mut metrics = self.metrics.borrow().clone();
                metrics.queued_entries =
                    self.pending.borrow().iter().map(|p| u64::from(p.count)).sum();
                LedgerAnswer::Metrics(Box::new(metrics))
            }
            LedgerCall::Idem { key } => match state.idem.get(&key) {
                Some(c) => LedgerAnswer::Replayed {
                    seq_start: c.seq_start,
                    seq_end: c.seq_end,
                    root: c.root,
                },
                None => LedgerAnswer::Unknown,
            },
            LedgerCall::Append { .. } => unreachable!("appends are queued, not read"),
        }
    }
}

/// The body of the committer executor: serve every shard until all of them
/// have gone.
pub async fn run(start: CommitterStart) {
    let CommitterStart { config, node, recovered, links } = start;
    let mut receivers = Vec::with_capacity(links.len());
    let mut answers = Vec::with_capacity(links.len());
    for link in links {
        receivers.push(link.calls.connect().await);
        answers.push(link.answers.connect().await);
    }
    let log_dir = config.data_dir.join("log");
    let writer = if config.amnesia() {
        None
    } else {
        match LogWriter::open(
            &log_dir,
            recovered.tail.clone(),
            config.ledger.segment_bytes,
            config.ledger.fsync,
        )
        .await
        {
            Ok(writer) => Some(writer),
            Err(error) => {
                node.enter_ledger_safe_mode(&format!("opening the log: {error}"));
                None
            }
        }
    };
    let durable = recovered.state.accumulator.len();
    let committer = Rc::new(Committer {
        node: node.clone(),
        batch_entries_max: u64::from(config.ledger.batch_entries_max),
        state: RefCell::new(recovered.state),
        durable: Cell::new(durable),
        pending: RefCell::new(VecDeque::new()),
        open_links: Cell::new(receivers.len()),
        writer_waker: RefCell::new(None),
        safe_mode: RefCell::new(None),
        metrics: RefCell::new(CommitterMetrics::default()),
        answers,
    });
    if let Some(reason) = recovered.corruption.clone().or_else(|| node.ledger_safe_mode_reason()) {
        committer.enter_safe_mode(reason);
    }
    let mut tasks = Vec::with_capacity(receivers.len());
    for (shard, receiver) in receivers.into_iter().enumerate() {
        tasks.push(glommio::spawn_local(serve_shard(committer.clone(), shard, receiver)));
    }
    write_loop(committer, writer, config.amnesia()).await;
    for task in tasks {
        task.await;
    }
    tracing::info!("committer stopped");
}

async fn serve_shard(
    committer: Rc<Committer>,
    shard: usize,
    receiver: ConnectedReceiver<LedgerRequest>,
) {
    while let Some(LedgerRequest { id, call }) = receiver.recv().await {
        match call {
            LedgerCall::Append { entries, count, ids, idem, owned } => {
                if let Some(degraded) = committer.degraded() {
                    committer.answer(shard, id, degraded).await;
                    continue;
                }
                // Ledger entries carry ids; other services' items do not.
                assert!(count >= 1 && ids.len() <= count as usize, "appends carry their ids");
                committer.pending.borrow_mut().push_back(Pending {
                    shard,
                    id,
                    entries,
                    count,
                    ids,
                    idem,
                    owned,
                    received: Instant::now(),
                });
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

async fn write_loop(committer: Rc<Committer>, mut writer: Option<LogWriter>, in_memory: bool) {
    let mut record = RecordWriter::default();
    let mut batch: Vec<Pending> = Vec::new();
    let mut batch_ids: HashSet<IdKey> = HashSet::new();
    while appends_queued(&committer).await {
        // Take what queued while the last record was synced.
        batch.clear();
        batch_ids.clear();
        let mut duplicates = Vec::new();
        let mut replays = Vec::new();
        let mut followers = Vec::new();
        let mut batch_idem: HashSet<IdKey> = HashSet::new();
        let mut entries = 0u64;
        {
            let state = committer.state.borrow();
            let mut pending = committer.pending.borrow_mut();
            while let Some(next) = pending.front() {
                if entries > 0 && entries + u64::from(next.count) > committer.batch_entries_max {
                    break;
                }
                let next = pending.pop_front().expect("peeked");
                if let Some(key) = next.idem {
                    if let Some(committed) = state.idem.get(&key) {
                        replays.push((next, *committed));
                        continue;
                    }
                    if batch_idem.contains(&key) {
                        followers.push((next, key));
                        continue;
                    }
                }
                let mut seen = HashSet::with_capacity(next.ids.len());
                let repeated: Vec<u32> = (0..next.ids.len() as u32)
                    .filter(|i| {
                        let key = &next.ids[*i as usize];
                        state.ids.contains(key) || batch_ids.contains(key) || !seen.insert(*key)
                    })
                    .collect();
                if repeated.is_empty() {
                    batch_idem.extend(next.idem);
                    batch_ids.extend(next.ids.iter().copied());
                    entries += u64::from(next.count);
                    batch.push(next);
                } else {
                    duplicates.push((next, repeated));
                }
            }
        }
        for (pending, c) in replays {
            let answer =
                LedgerAnswer::Replayed { seq_start: c.seq_start, seq_end: c.seq_end, root: c.root };
            committer.answer(pending.shard, pending.id, answer).await;
        }
        for (pending, indices) in duplicates {
            committer.metrics.borrow_mut().duplicates_rejected += 1;
            committer.answer(pending.shard, pending.id, LedgerAnswer::Duplicate { indices }).await;
        }
        if batch.is_empty() {
            assert!(followers.is_empty(), "a follower has a leader in the batch");
            continue;
        }
        let safe_mode = committer.safe_mode.borrow().clone();
        if let Some(reason) = safe_mode {
            let followers = followers.drain(..).map(|(p, _)| p);
            for pending in batch.drain(..).chain(followers) {
                let answer = LedgerAnswer::Degraded { reason: reason.clone() };
                committer.answer(pending.shard, pending.id, answer).await;
            }
            continue;
        }
        // Extend the tree and seal the record; readers still see only the
        // durable part.
        let (first_seq, before, previous_root, new_root) = {
            let mut state = committer.state.borrow_mut();
            let before = state.accumulator.len();
            let previous_root = state.root();
            record.start();
            for pending in &batch {
                if let Some(key) = pending.idem {
                    let first = record.count();
                    record.mark(ledger::IdemMark { key, first, count: pending.count });
                }
                for encoded in ledger::body_entries(&pending.entries) {
                    let encoded = encoded.expect("shards send well-framed entries");
                    record.push(encoded);
                    state.accumulator.push(merkle::leaf_hash(encoded));
                }
            }
            assert_eq!(state.accumulator.len() - before, entries, "every entry went in");
            (before + 1, before, previous_root, state.root())
        };
        // One time for the record and the published root, so that `/roots`
        // says the same before and after a restart.
        let committed_ms = crate::shard::Shard::unix_now_ms();
        let sealed = record.seal(first_seq, committed_ms, previous_root, new_root);
        let result = match writer.as_mut() {
            Some(writer) => writer.append(sealed, first_seq).await.map(Some),
            None if in_memory => Ok(None),
            None => Err(std::io::Error::other("the log is not open")),
        };
        match result {
            Ok(times) => {
                {
                    let mut state = committer.state.borrow_mut();
                    state.ids.extend(batch_ids.drain());
                    let last_seq = before + entries;
                    state.roots.push(RootItem { seq: last_seq, root: new_root, committed_ms });
                    let mut metrics = committer.metrics.borrow_mut();
                    if committer.durable.get() != before {
                        metrics.seq_gaps_detected += 1;
                    }
                    committer.durable.set(last_seq);
                    metrics.batch_entries.record(entries);
                    metrics.records_written += 1;
                    metrics.entries_committed += entries;
                    if let Some(times) = times {
                        metrics.fsync.record(times.sync);
                        metrics.write.record(times.write);
                    }
                    let now = Instant::now();
                    for pending in &batch {
                        metrics.commit_latency.record(now.duration_since(pending.received));
                    }
                }
                // Owners apply the batch before any answer about it leaves.
                let last_seq = before + entries;
                let shards = committer.answers.len();
                let mut items: Vec<Vec<Item>> = (0..shards).map(|_| Vec::new()).collect();
                let mut wallet: Vec<Vec<(WalletOp, Placement)>> =
                    (0..shards).map(|_| Vec::new()).collect();
                let mut revocations: Vec<Vec<(Revocation, u64)>> =
                    (0..shards).map(|_| Vec::new()).collect();
                let mut seq = first_seq;
                for pending in &mut batch {
                    for (owner, owned) in pending.owned.drain(..) {
                        items[owner].extend(owned.items);
                        // A request's wallet operations or revocations are
                        // its first items.
                        for (at, op) in (seq..).zip(owned.wallet) {
                            wallet[owner].push((op, Placement { seq: at, root: new_root }));
                        }
                        revocations[owner].extend(owned.revocations.into_iter().zip(seq..));
                    }
                    seq += u64::from(pending.count);
                }
                committer.node.ledger_durable_seq.store(last_seq, Ordering::Release);
                let durable_at = Instant::now();
                let parts = items.into_iter().zip(wallet).zip(revocations);
                for (shard, ((items, wallet), revocations)) in parts.enumerate() {
                    let batch = CommittedBatch {
                        last_seq,
                        root: new_root,
                        items,
                        wallet,
                        revocations,
                        durable_at,
                    };
                    committer.send(shard, ToShard::Committed(batch)).await;
                }
                let mut seq = first_seq;
                for pending in batch.drain(..) {
                    let seq_end = seq + u64::from(pending.count) - 1;
                    let committed = Committed { seq_start: seq, seq_end, root: new_root };
                    if let Some(key) = pending.idem {
                        committer.state.borrow_mut().idem.insert(key, committed);
                    }
                    let answer = LedgerAnswer::Appended { seq_start: seq, seq_end, root: new_root };
                    seq = seq_end + 1;
                    committer.answer(pending.shard, pending.id, answer).await;
                }
                for (pending, key) in followers.drain(..) {
                    let c = committer
                        .state
                        .borrow()
                        .idem
                        .get(&key)
                        .copied()
                        .expect("the leader committed");
                    let answer = LedgerAnswer::Replayed {
                        seq_start: c.seq_start,
                        seq_end: c.seq_end,
                        root: c.root,
                    };
                    committer.answer(pending.shard, pending.id, answer).await;
                }
            }
            Err(error) => {
                committer.state.borrow_mut().accumulator.truncate(before);
                committer
                    .enter_safe_mode(format!("writing the log record at seq {first_seq}: {error}"));
                let reason = committer.safe_mode.borrow().clone().unwrap_or_default();
                let followers = followers.drain(..).map(|(p, _)| p);
                for pending in batch.drain(..).chain(followers) {
                    let answer = LedgerAnswer::Degraded { reason: reason.clone() };
                    committer.answer(pending.shard, pending.id, answer).await;
                }
            }
        }
    }
}
