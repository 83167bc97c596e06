//! Cross-shard calls: run a request on the shard that owns its key and get the
//! answer back, over bounded glommio channels (a full mesh).
//!
//! Each pair of shards shares one channel per direction. A shard never has
//! more than `mesh_inflight_per_target_max` calls outstanding to one target
//! (over that, the caller gets `Busy`), and channels hold twice that, so the
//! calls of one side and the answers to the other side's calls always fit:
//! sending never waits on a full channel, and two shards cannot deadlock.

use crate::keys::Keyring;
use crate::metering::{MeterCall, Refused};
use crate::metrics::ShardMetrics;
use crate::pq::SignedBatch;
use crate::shard::Shard;
use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use ron_proto::error::Reason;
use ron_proto::wallet::{Placement, TxId, WalletOp};
use ron_shards::balances::{Account, Item};
use ron_shards::wallet::{Funds, Rejection, Reserved};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// A request one shard runs for another.
#[derive(Debug)]
pub enum ShardCall {
    /// Use these keys from now on (a rotation), unless newer ones are here.
    SetKeys(Arc<Keyring>),
    /// Count a request against a token id or tenant this shard owns.
    Meter(MeterCall),
    /// A signed ML-DSA batch of this shard's, for third parties.
    PqBatch {
        batch: u64,
    },
    /// Answer once the log through `seq`, a revocation, is applied here.
    RevocationApplied {
        seq: u64,
    },
    /// Which shard owns this key? Answered by the owner itself.
    Owner {
        key: String,
    },
    /// A copy of the shard's metrics.
    Metrics,
    /// Reserve the debits of these items (all owned by the callee).
    Reserve {
        items: Vec<Item>,
    },
    /// Give back what `Reserve` took (the request did not commit).
    Release {
        items: Vec<Item>,
    },
    Balance {
        account: String,
        asset: String,
    },
    /// Check and reserve a wallet write on its scope shard.
    WalletReserve {
        op: Box<WalletOp>,
        now_ms: u64,
    },
    /// The write did not commit: give back what it reserved.
    WalletRelease {
        op: Box<WalletOp>,
    },
    WalletBalance {
        account: String,
        asset: String,
    },
    WalletReceipt {
        txid: TxId,
    },
}

#[derive(Debug)]
pub enum ShardAnswer {
    PqBatch(Option<Box<SignedBatch>>),
    Metered(Result<(), Refused>),
    /// How long after it was durable the revocation was applied here.
    RevocationApplied {
        lag: Option<Duration>,
    },
    Owner {
        shard: usize,
    },
    Metrics(Box<ShardMetrics>),
    Reserved(Result<(), Vec<Reason>>),
    Done,
    Balance(Account),
    WalletReserved(Result<Reserved, Rejection>),
    WalletBalance {
        funds: Funds,
        as_of_seq: u64,
    },
    /// The committed operation behind a receipt, and where it went.
    WalletReceipt(Option<Box<(WalletOp, Placement)>>),
}

#[derive(Debug)]
pub enum Envelope {
    Call { id: u64, call: ShardCall },
    Answer { id: u64, answer: ShardAnswer },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeshError {
    /// Too many calls outstanding to that shard.
    Busy,
    /// That shard has stopped.
    Closed,
    /// No answer within the request timeout.
    TimedOut,
}

pub type MeshBuilderFull = MeshBuilder<Envelope, Full>;

pub fn builder(shard_count: usize, inflight_per_target_max: u32) -> MeshBuilderFull {
    MeshBuilder::full(shard_count, 2 * inflight_per_target_max as usize)
}

pub struct Mesh {
    me: usize,
    senders: Senders<Envelope>,
    waiting: RefCell<HashMap<u64, oneshot::Sender<ShardAnswer>>>,
    next_id: Cell<u64>,
    inflight: Vec<Cell<u32>>,
    inflight_max: u32,
    timeout: Duration,
}

/// Releases an in-flight slot and a waiting entry however a call ends.
struct CallGuard<'a> {
    mesh: &'a Mesh,
    target: usize,
    id: u64,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        let slot = &self.mesh.inflight[self.target];
        slot.set(slot.get() - 1);
        self.mesh.waiting.borrow_mut().remove(&self.id);
    }
}

impl Mesh {
    pub fn new(
        senders: Senders<Envelope>,
        shard_count: usize,
        inflight_max: u32,
        timeout: Duration,
    ) -> Mesh {
        let me = senders.peer_id();
        assert!(me < shard_count);
        Mesh {
            me,
            senders,
            waiting: RefCell::new(HashMap::with_capacity(inflight_max as usize * shard_count)),
            next_id: Cell::new(0),
            inflight: (0..shard_count).map(|_| Cell::new(0)).collect(),
            inflight_max,
            timeout,
        }
    }

    pub fn me(&self) -> usize {
        self.me
    }

    /// Runs `call` on `target` and returns its answer. A call to this shard
    /// runs in place.
    pub async fn call(
        &self,
        shard: &Rc<Shard>,
        target: usize,
        call: ShardCall,
    ) -> Result<ShardAnswer, MeshError> {
        if target == self.me {
            return Ok(serve(shard, call).await);
        }
        let slot = &self.inflight[target];
        if slot.get() >= self.inflight_max {
            return Err(MeshError::Busy);
        }
        slot.set(slot.get() + 1);
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let guard = CallGuard { mesh: self, target, id };
        let (sender, receiver) = oneshot::channel();
        self.waiting.borrow_mut().insert(id, sender);
        shard.metrics.borrow_mut().mesh_calls += 1;
        // The channel holds twice the in-flight cap, so this does not wait.
        self.senders
            .send_to(target, Envelope::Call { id, call })
            .await
            .map_err(|_| MeshError::Closed)?;
        let answer = futures_lite::future::or(
            async { receiver.await.map_err(|_| MeshError::Closed) },
            async {
                glommio::timer::sleep(self.timeout).await;
                Err(MeshError::TimedOut)
            },
        )
        .await;
        drop(guard);
        answer
    }

    fn answer(&self, id: u64, answer: ShardAnswer) {
        // A call that timed out has no one waiting any more.
        if let Some(sender) = self.waiting.borrow_mut().remove(&id) {
            let _ = sender.send(answer);
        }
    }
}

/// Starts one task per peer that serves its calls and delivers its answers.
pub fn spawn_receivers(shard: &Rc<Shard>, mut receivers: Receivers<Envelope>) {
    let queue = shard.queue;
    for (peer, stream) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local_into(
            async move {
                while let Some(envelope) = stream.recv().await {
                    match envelope {
                        Envelope::Call { id, call } => {
                            let shard = shard.clone();
                            glommio::spawn_local_into(
                                async move {
                                    let answer = serve(&shard, call).await;
                                    let _ = shard
                                        .mesh
                                        .senders
                                        .send_to(peer, Envelope::Answer { id, answer })
                                        .await;
                                },
                                queue,
                            )
                            .expect("the shard's queue exists")
                            .detach();
                        }
                        Envelope::Answer { id, answer } => shard.mesh.answer(id, answer),
                    }
                }
            },
            queue,
        )
        .expect("the shard's queue exists")
        .detach();
    }
}

/// Accounts reach only their owner; anything else is a routing bug.
fn assert_owned(shard: &Shard, items: &[Item]) {
    for item in items {
        let owner = ron_proto::routing::owner(item.account.as_bytes(), shard.count);
        assert_eq!(owner, shard.id, "account {} reached shard {}", item.account, shard.id);
    }
}

/// Runs a call on this shard.
async fn serve(shard: &Rc<Shard>, call: ShardCall) -> ShardAnswer {
    match call {
        ShardCall::Owner { key } => {
            let owner = ron_proto::routing::owner(key.as_bytes(), shard.count);
            // Only the owner answers for its keys; anything else is a routing bug.
            assert_eq!(owner, shard.id, "owner call for key {key} reached shard {}", shard.id);
            ShardAnswer::Owner { shard: shard.id }
        }
        ShardCall::Metrics => ShardAnswer::Metrics(Box::new(shard.metrics_snapshot())),
        ShardCall::SetKeys(keys) => {
            let mut mine = shard.keys.borrow_mut();
            if keys.current().kid > mine.current().kid {
                *mine = keys;
            }
            ShardAnswer::Done
        }
        ShardCall::Meter(call) => ShardAnswer::Metered(crate::metering::count(shard, &call)),
        ShardCall::PqBatch { batch } => ShardAnswer::PqBatch(shard.pq.batch(batch).map(Box::new)),
        ShardCall::RevocationApplied { seq } => {
            crate::ledger::applied_through(shard, seq).await;
            ShardAnswer::RevocationApplied { lag: shard.passport.borrow().lag(seq) }
        }
        ShardCall::Reserve { items } => {
            assert_owned(shard, &items);
            ShardAnswer::Reserved(shard.balances.borrow_mut().reserve(&items))
        }
        ShardCall::Release { items } => {
            assert_owned(shard, &items);
            shard.balances.borrow_mut().release(&items);
            ShardAnswer::Done
        }
        ShardCall::Balance { account, asset } => {
            crate::ledger::caught_up(shard).await;
            ShardAnswer::Balance(shard.balances.borrow().account(&account, &asset))
        }
        ShardCall::WalletReserve { op, now_ms } => {
            ShardAnswer::WalletReserved(shard.wallet.borrow_mut().reserve(&op, now_ms))
        }
        ShardCall::WalletRelease { op } => {
            shard.wallet.borrow_mut().release(&op);
            ShardAnswer::Done
        }
        ShardCall::WalletBalance { account, asset } => {
            crate::ledger::caught_up(shard).await;
            let funds = shard.wallet.borrow().funds(&account, &asset);
            ShardAnswer::WalletBalance { funds, as_of_seq: shard.applied.seq() }
        }
        ShardCall::WalletReceipt { txid } => {
            crate::ledger::caught_up(shard).await;
            let kept = shard.wallet.borrow().committed(&txid);
            let found = kept.or_else(|| shard.view.committed(&txid));
            ShardAnswer::WalletReceipt(found.map(Box::new))
        }
    }
}
