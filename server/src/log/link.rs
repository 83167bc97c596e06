//! A shard's side of the log: calls to the committer and their answers,
//! the committed stream, and how far this shard has applied it.

use super::LogShared;
use super::committer::{Committed, LogAnswer, LogCall, LogReply, LogRequest, ToShard};
use futures_channel::oneshot;
use glommio::channels::shared_channel::{ConnectedReceiver, ConnectedSender};
use ron_proto::merkle::Hash;
use ron_shards::Map;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};

/// Why a call to the committer did not get an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkError {
    /// This shard has as many calls in flight as its channel holds.
    Busy,
    /// The committer has stopped.
    Closed,
}

/// One shard's link to the committer: calls out, answers in, matched by id.
pub struct LogLink {
    pub shared: Arc<LogShared>,
    /// How far this shard has applied the committed stream.
    pub applied: Applied,
    /// `None` once the shard has closed its side (after its drain).
    calls: RefCell<Option<Rc<ConnectedSender<LogRequest>>>>,
    waiting: RefCell<Map<u64, oneshot::Sender<LogAnswer>>>,
    next_id: Cell<u64>,
    inflight_max: usize,
    /// The committer has stopped: nothing more will be applied.
    stopped: Cell<bool>,
}

impl LogLink {
    pub fn new(
        shared: Arc<LogShared>,
        applied: Applied,
        calls: ConnectedSender<LogRequest>,
        inflight_max: usize,
    ) -> LogLink {
        LogLink {
            shared,
            applied,
            calls: RefCell::new(Some(Rc::new(calls))),
            waiting: RefCell::new(Map::with_capacity_and_hasher(
                inflight_max.min(4096),
                Default::default(),
            )),
            next_id: Cell::new(0),
            inflight_max,
            stopped: Cell::new(false),
        }
    }

    pub async fn call(&self, call: LogCall) -> Result<LogAnswer, LinkError> {
        // The answer channel holds `inflight_max` answers, so the committer
        // never waits for room in it.
        if self.waiting.borrow().len() >= self.inflight_max {
            return Err(LinkError::Busy);
        }
        let Some(calls) = self.calls.borrow().clone() else { return Err(LinkError::Closed) };
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (sender, receiver) = oneshot::channel();
        self.waiting.borrow_mut().insert(id, sender);
        if calls.send(LogRequest { id, call }).await.is_err() {
            self.waiting.borrow_mut().remove(&id);
            return Err(LinkError::Closed);
        }
        receiver.await.map_err(|_| LinkError::Closed)
    }

    /// Closes this shard's side, so that the committer stops once every
    /// shard has.
    pub fn close(&self) {
        self.calls.borrow_mut().take();
    }

    fn deliver(&self, reply: LogReply) {
        if let Some(sender) = self.waiting.borrow_mut().remove(&reply.id) {
            let _ = sender.send(reply.answer);
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.get()
    }

    /// Calls in flight (the `queue_depth{q="committer"}` of this shard).
    pub fn inflight(&self) -> usize {
        self.waiting.borrow().len()
    }

    /// Whether the log refuses writes (safe mode).
    pub fn in_safe_mode(&self) -> bool {
        self.shared.in_safe_mode()
    }

    /// Whether this shard has applied everything durable so far.
    pub fn is_caught_up(&self) -> bool {
        self.applied.seq() >= self.shared.durable_seq.load(Ordering::Acquire)
    }

    /// Waits until this shard has applied everything durable when the call
    /// began: an acknowledged write is then visible here, whichever shard
    /// acknowledged it.
    pub async fn caught_up(&self) {
        self.applied_through(self.shared.durable_seq.load(Ordering::Acquire)).await;
    }

    /// Waits until this shard has applied the log through `seq` (or the
    /// committer has stopped).
    pub async fn applied_through(&self, seq: u64) {
        std::future::poll_fn(|cx| {
            if self.applied.seq() >= seq || self.is_stopped() {
                return Poll::Ready(());
            }
            self.applied.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }
}

/// How far a shard has applied the log.
pub struct Applied {
    seq: Cell<u64>,
    root: Cell<Hash>,
    /// Reads waiting for the shard to catch up with the durable log.
    waiters: RefCell<Vec<Waker>>,
}

impl Applied {
    pub fn new(seq: u64, root: Hash) -> Applied {
        Applied { seq: Cell::new(seq), root: Cell::new(root), waiters: RefCell::new(Vec::new()) }
    }

    pub fn seq(&self) -> u64 {
        self.seq.get()
    }

    pub fn root(&self) -> Hash {
        self.root.get()
    }

    fn advance(&self, seq: u64, root: Hash) {
        assert!(seq > self.seq.get(), "batches arrive in log order");
        self.seq.set(seq);
        self.root.set(root);
        self.wake_all();
    }

    fn wake_all(&self) {
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

/// Hands every durable batch to `apply` (this shard's items, in log order)
/// and delivers the committer's answers, until the committer stops.
pub async fn receive(
    link: &LogLink,
    answers: ConnectedReceiver<ToShard>,
    apply: impl Fn(&Committed),
) {
    while let Some(message) = answers.recv().await {
        match message {
            ToShard::Reply(reply) => link.deliver(reply),
            ToShard::Committed(committed) => {
                apply(&committed);
                link.applied.advance(committed.batch.last_seq, committed.batch.root);
            }
        }
    }
    // The committer is gone: nobody will answer the calls still waiting.
    link.stopped.set(true);
    link.waiting.borrow_mut().clear();
    link.applied.wake_all();
}
