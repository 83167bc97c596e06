//! The wallet (SPEC §5): paths and fields of the original svc-wallet, on
//! the shard state machine of `ron_shards::wallet`.
//!
//! A write is validated by its route (stateless rules, the token's
//! caveats), then reserved on its scope shard (the owner of `from`, or of
//! `to` for an issue; for a capture or release, the shard its hold id
//! routes to), then committed to the log as one wallet operation, and
//! applied by every shard with a part before the committer answers. The
//! receipt leaves only then. A tick commits the expiry of holds past their
//! timeout.
//!
//! Log items: wallet operations (`ron_proto::wallet`, code 0x20). View
//! tables: receipts, funds, nonces, holds and idempotency records
//! (`view`).

pub mod batch;
pub mod routes;
pub mod view;

use crate::config::Config;
use crate::core::Core;
use crate::http::RouteTable;
use crate::limits::{EXPIRIES_PER_TICK_MAX, HOLD_EXPIRY_TICK};
use crate::log::view::{ServiceView, ViewChanges};
use crate::log::{Item, LogAnswer, LogCall};
use crate::metrics::{MetricsPart, simple_lines};
use crate::service::{Replaying, Service, ShardAt, Starting};
use crate::workers::Lane;
use ron_proto::wallet::{CompactString, Placement, TxId, WALLET_OP_CODE, WalletOp};
use ron_shards::wallet::{self as state, Funds, Rejection, Reservation, Reserved, parts};
use futures_channel::oneshot;
use std::any::Any;
use std::cell::RefCell;
use ron_shards::Map;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::passport::Passport;

/// Committed operations applied together (`Service::apply_all`): enough for
/// their lookups to overlap, few enough for their decoded forms to reuse
/// one small allocation.
const APPLY_WINDOW: usize = 256;

/// The wallet on one shard: the state of the accounts, holds, keys and
/// receipts it owns.
pub struct Wallet {
    core: Rc<Core>,
    passport: Rc<Passport>,
    state: RefCell<state::Wallet>,
    /// The wallet's tables in the view (none in amnesia mode).
    view: Option<ServiceView>,
    /// `wallet.amount_per_op_max`, read once (the config keeps it as text).
    amount_max: u128,
    /// Writes whose nonce is ahead of their payer's next one, waiting for
    /// the nonces before it, by payer: woken when one of its nonces is
    /// reserved.
    nonce_waiters: RefCell<Map<String, Vec<oneshot::Sender<()>>>>,
    metrics: RefCell<WalletMetrics>,
}

#[derive(Debug)]
pub enum Call {
    /// Check and reserve a write on its scope shard, unless `deadline` has
    /// passed (its caller has given up: `Answer::Late`, nothing reserved).
    /// Sent with `Wait::Answer`, so every reservation reaches its caller,
    /// which commits it or releases it.
    Reserve { op: Box<WalletOp>, now_ms: u64, deadline: Instant },
    /// Reserve each of a batch's writes this shard scopes, in order (no
    /// nonce waits: a batch orders its own nonces); like `Reserve` past
    /// `deadline`.
    ReserveBatch { ops: Vec<WalletOp>, now_ms: u64, deadline: Instant },
    /// Writes are over: give back what was reserved for `release` (those
    /// that did not commit, in this order), and the payers of the nonces a
    /// batch reserved here (once per nonce) are settled. A single write's
    /// release is a settlement of one, without payers.
    /// Both are shared, so that asking again after a busy answer copies
    /// nothing.
    Settle { release: Arc<[WalletOp]>, payers: Arc<[CompactString]> },
    Balance { account: String, asset: String },
    Receipt { txid: TxId },
}

#[derive(Debug)]
pub enum Answer {
    Reserved(Result<Reserved, Rejection>),
    /// A `ReserveBatch`'s writes given back (captures and releases
    /// completed), with one answer each, in order.
    ReservedBatch { ops: Vec<WalletOp>, results: Vec<Result<Reservation, Rejection>> },
    /// The reservation came after its deadline: nothing was reserved.
    Late,
    Done,
    Balance { funds: Funds, as_of_seq: u64 },
    /// The committed operation behind a receipt, and where it went.
    Receipt(Option<Box<(WalletOp, Placement)>>),
    /// The workers had no room to read the receipt from the view.
    Busy,
}

impl Service for Wallet {
    const NAME: &'static str = "wallet";
    const LOG_CODES: &'static [u8] = &[WALLET_OP_CODE];
    const TABLES: &'static [&'static str] = view::TABLES;
    const LSM_TABLES: &'static [&'static str] = view::LSM_TABLES;
    /// 2: idempotency records kept by expiry; 3: receipts kept by seq,
    /// found by txid; 4: txids in the LSM tree (`view`).
    const VIEW_VERSION: u32 = 4;
    const TICK: Option<Duration> = Some(HOLD_EXPIRY_TICK);
    type Shared = ();
    type State = state::Wallet;
    type Call = Call;
    type Answer = Answer;

    fn prepare(_: &Config) -> anyhow::Result<()> {
        Ok(())
    }

    fn state(_: &(), at: ShardAt<'_>) -> state::Wallet {
        let config = &at.config.wallet;
        let ttl_ms = config.idempotency_ttl_s.saturating_mul(1000);
        let wallet = state::Wallet::new(
            at.shard,
            at.shard_count,
            ttl_ms,
            config.idempotency_keys_max as usize,
        );
        if at.config.amnesia() { wallet.without_view() } else { wallet }
    }

    fn load(wallet: &mut state::Wallet, view: &ServiceView, through_seq: u64) -> anyhow::Result<()> {
        view::load(wallet, view)?;
        // Receipts up to the view's seq are read from the view when asked for.
        wallet.set_receipts_kept_through(through_seq);
        Ok(())
    }

    fn check(item: &[u8]) -> Result<(), String> {
        WalletOp::decode(item).map(drop).map_err(|e| e.to_string())
    }

    fn replay(states: &mut Replaying<'_, state::Wallet>, item: Item<'_>) {
        let op = WalletOp::decode_ref(item.bytes).expect("checked");
        let placement = Placement { seq: item.seq, root: *item.root };
        for shard in parts(&op, states.shard_count()) {
            if let Some(wallet) = states.get(shard) {
                wallet.apply(&op, item.bytes, placement);
            }
        }
    }

    fn start(start: Starting<'_, Wallet>) -> Rc<Wallet> {
        Rc::new(Wallet {
            core: start.core.clone(),
            passport: start.started.get::<Passport>(),
            state: RefCell::new(start.state),
            view: start.view,
            amount_max: (start.core.config.wallet.amount_per_op_max.parse())
                .expect("checked at start"),
            nonce_waiters: RefCell::new(Map::default()),
            metrics: RefCell::new(WalletMetrics::default()),
        })
    }

    fn core(&self) -> &Rc<Core> {
        &self.core
    }

    fn routes(self: &Rc<Self>, table: &mut RouteTable) {
        routes::add(self, table);
    }

    async fn serve(self: Rc<Self>, call: Call) -> Answer {
        match call {
            Call::Reserve { op, now_ms, deadline } => {
                if Instant::now() >= deadline {
                    return Answer::Late;
                }
                Answer::Reserved(self.reserve_in_order(&op, now_ms, deadline).await)
            }
            Call::ReserveBatch { mut ops, now_ms, deadline } => {
                if Instant::now() >= deadline {
                    return Answer::Late;
                }
                let results = self.state.borrow_mut().reserve_batch(&mut ops, now_ms);
                Answer::ReservedBatch { ops, results }
            }
            Call::Settle { release, payers } => {
                let mut state = self.state.borrow_mut();
                for op in release.iter() {
                    state.release(op);
                }
                for payer in payers.iter() {
                    if state.settle_payer(payer) {
                        self.wake_nonce_waiters(payer);
                    }
                }
                Answer::Done
            }
            Call::Balance { account, asset } => {
                self.core.log.caught_up().await;
                let funds = self.state.borrow().funds(&account, &asset);
                Answer::Balance { funds, as_of_seq: self.core.log.applied.seq() }
            }
            Call::Receipt { txid } => {
                self.core.log.caught_up().await;
                let kept = self.state.borrow().committed(&txid);
                if let Some(kept) = kept {
                    return Answer::Receipt(Some(Box::new(kept)));
                }
                let Some(view) = self.view.clone() else { return Answer::Receipt(None) };
                // Off the shard: a read of the view's LSM tree can wait for
                // its writer to sync a new run (as long as the disk takes).
                let read = move || view::receipt(&view, &txid);
                let Ok(read) = self.core.returns.run(&self.core.workers, Lane::Normal, read) else {
                    return Answer::Busy;
                };
                match read.await {
                    Some(found) => Answer::Receipt(found.map(Box::new)),
                    None => Answer::Busy,
                }
            }
        }
    }

    /// A committed batch's operations are applied together
    /// (`state::Wallet::apply_all`), `APPLY_WINDOW` at a time: a whole
    /// run's decoded forms took a new allocation each time, large enough to
    /// be faulted in anew (15 % of the shard's page faults at 180 000
    /// transfers/s).
    fn apply_all(&self, items: &[Item<'_>]) {
        let mut committed = Vec::with_capacity(items.len().min(APPLY_WINDOW));
        for window in items.chunks(APPLY_WINDOW) {
            committed.clear();
            committed.extend(window.iter().map(|item| {
                let op = WalletOp::decode_ref(item.bytes).expect("committed items decode");
                (op, item.bytes, Placement { seq: item.seq, root: *item.root })
            }));
            self.state.borrow_mut().apply_all(&committed);
        }
    }

    fn save(&self, changes: &mut ViewChanges, through_seq: u64) {
        let mut state = self.state.borrow_mut();
        let taken = state.take_changes();
        view::save(changes, &taken, state.take_new_receipts(through_seq));
        state.recycle(taken);
    }

    fn saved(&self, through_seq: u64) {
        // Receipts the write committed now live in the view only.
        self.state.borrow_mut().forget_receipts_through(through_seq);
    }

    fn metrics(&self) -> Option<Box<dyn MetricsPart>> {
        Some(Box::new(self.metrics.borrow().clone()))
    }

    /// Commits the expiry of every hold this shard owns once its timeout
    /// has passed, whether or not anyone calls: each is an operation in the
    /// log like any write (SPEC §5), and a restart that finds a hold past
    /// its timeout expires it at the first tick.
    async fn tick(self: Rc<Self>) {
        if self.core.log.in_safe_mode() {
            return;
        }
        let now_ms = crate::clock::unix_now_ms();
        let due = self.state.borrow_mut().due_expiries(now_ms, EXPIRIES_PER_TICK_MAX);
        for op in due {
            let reply = routes::commit(&self, op, self.core.id).await;
            if reply.status != 200 {
                let status = reply.status;
                tracing::warn!(shard = self.core.id, status, "a hold expiry did not commit");
            }
        }
    }
}

impl Wallet {
    /// Reserves `request`. A nonce ahead of its payer's next one by at most
    /// `wallet.nonce_window` waits, up to `wallet.nonce_wait_ms` and the
    /// request's deadline, for the nonces before it to be reserved (writes
    /// pipelined over several connections arrive out of order); then it is
    /// refused as any other nonce conflict. So does a write of a payer whose
    /// earlier nonces a batch has reserved and not settled (then refused as
    /// `PayerUnsettled`, 429).
    async fn reserve_in_order(
        &self,
        request: &WalletOp,
        now_ms: u64,
        deadline: Instant,
    ) -> Result<Reserved, Rejection> {
        let config = &self.core.config.wallet;
        let wait = Duration::from_millis(config.nonce_wait_ms);
        let wait_until = deadline.min(Instant::now() + wait);
        let mut waited = false;
        loop {
            let unsettled = request.nonce.is_some() && {
                let state = self.state.borrow();
                state.nonce_account(request).is_some_and(|payer| state.is_unsettled(payer))
            };
            let reserved = if unsettled {
                Err(Rejection::PayerUnsettled)
            } else {
                self.state.borrow_mut().reserve(request, now_ms)
            };
            let ahead = match &reserved {
                Err(Rejection::NonceConflict { expected, got }) if got > expected => got - expected,
                _ => 0,
            };
            let waits = unsettled || (ahead > 0 && ahead <= u64::from(config.nonce_window));
            let now = Instant::now();
            if !waits || now >= wait_until {
                if let Ok(Reserved::Commit(op)) = &reserved
                    && op.nonce.is_some()
                {
                    self.wake_nonce_waiters(state::scope_account(op));
                }
                if waited {
                    let mut metrics = self.metrics.borrow_mut();
                    match reserved {
                        Ok(_) => metrics.nonce_waits_served += 1,
                        Err(_) => metrics.nonce_waits_refused += 1,
                    }
                }
                return reserved;
            }
            let Some(payer) = self.state.borrow().nonce_account(request).map(str::to_owned) else {
                return reserved;
            };
            let (wake, woken) = oneshot::channel();
            self.nonce_waiters.borrow_mut().entry(payer.clone()).or_default().push(wake);
            waited = true;
            futures_lite::future::or(
                async {
                    let _ = woken.await;
                },
                glommio::timer::sleep(wait_until - now),
            )
            .await;
            // Forget this waiter if the wait timed out.
            let mut waiters = self.nonce_waiters.borrow_mut();
            if let Some(list) = waiters.get_mut(&payer) {
                list.retain(|w| !w.is_canceled());
                if list.is_empty() {
                    waiters.remove(&payer);
                }
            }
        }
    }

    /// A nonce of `payer` was reserved, or a batch settled its nonces: the
    /// writes waiting for it look again.
    fn wake_nonce_waiters(&self, payer: &str) {
        if self.nonce_waiters.borrow().is_empty() {
            return;
        }
        let woken = self.nonce_waiters.borrow_mut().remove(payer);
        for waiter in woken.into_iter().flatten() {
            let _ = waiter.send(());
        }
    }
}

/// What the wallet counts on a shard.
#[derive(Clone, Debug, Default)]
pub struct WalletMetrics {
    /// Writes answered with their stored receipt.
    pub idem_replays: u64,
    /// Writes whose nonce came early and waited: reserved once the nonces
    /// before it were, or refused when the wait ran out.
    pub nonce_waits_served: u64,
    pub nonce_waits_refused: u64,
}

impl MetricsPart for WalletMetrics {
    fn merge(&mut self, other: &dyn MetricsPart) {
        let other: &WalletMetrics = other.as_any().downcast_ref().expect("the wallet's metrics");
        self.idem_replays += other.idem_replays;
        self.nonce_waits_served += other.nonce_waits_served;
        self.nonce_waits_refused += other.nonce_waits_refused;
    }

    fn render(&self, out: &mut String) {
        simple_lines(
            out,
            &[(
                "wallet_idem_replays_total",
                "counter",
                "Wallet writes answered with the stored receipt of the same request.",
                self.idem_replays as f64,
            )],
        );
        let help = "Writes whose nonce came before the nonces ahead of it and waited, by outcome.";
        crate::metrics::header(out, "wallet_nonce_waits_total", "counter", help);
        for (outcome, count) in
            [("reserved", self.nonce_waits_served), ("refused", self.nonce_waits_refused)]
        {
            let _ = writeln!(out, "wallet_nonce_waits_total{{outcome=\"{outcome}\"}} {count}");
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Used by the routes: the log's answer to an append.
type Appended = Result<LogAnswer, crate::log::LinkError>;

impl Wallet {
    async fn append(&self, op: &WalletOp) -> Appended {
        let shards = parts(&op.as_ref(), self.core.count);
        let append = crate::log::Append::item(|out| op.encode(out), shards);
        self.core.log.call(LogCall::Append(append)).await
    }
}
