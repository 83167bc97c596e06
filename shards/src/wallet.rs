//! The wallet state one shard owns (SPEC §5): balances, nonces, holds,
//! idempotency records and receipts.
//!
//! An operation touches up to four shards, each for its own part:
//! * the **payer** (owner of `from`): debits, the nonce, holds, and the
//!   idempotency record (for an issue, the owner of `to` keeps the record);
//! * the **payee** (owner of `to`): credits;
//! * the **recorder** (owner of the txid's route): the receipt, for
//!   `GET /v1/tx/{txid}`.
//!
//! A write is checked and reserved on its **scope** shard (the idempotency
//! record's owner, which is the payer whenever there is one), committed to
//! the log, then applied by every shard with a part, in log order. A credit
//! cannot fail, so no other shard needs to agree first. Applying is the same
//! whether the operation comes from the live stream or from the log at
//! start: the scope shard knows from its own idempotency record whether it
//! reserved the operation (the record is pending with the operation's
//! txid), and turns that reservation into the debit.
//!
//! What changed since the last view write is handed out as values
//! ([`Changes`], [`Wallet::take_new_receipts`]); how a view stores them is
//! the server's business.

mod receipts;

use ron_proto::wallet::{
    CompactString, HoldId, OpKind, Placement, TxId, WalletOp, WalletOpRef, hold_route,
};

use crate::{Map, Set};
use hashbrown::hash_map::RawEntryMut;
use receipts::ReceiptSet;
use smallvec::SmallVec;
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, VecDeque};

/// The account that scopes an operation's idempotency key: `from`, or `to`
/// for an issue.
pub fn scope_account(op: &WalletOp) -> &str {
    op.from.as_deref().or(op.to.as_deref()).expect("every operation names an account")
}

/// A capture or a release: a write whose scope account is its hold's.
fn is_resolution(kind: OpKind) -> bool {
    matches!(kind, OpKind::Capture | OpKind::Release)
}

/// Which shard keeps the receipt of `txid`.
pub fn recorder(txid: &TxId, shard_count: usize) -> usize {
    ron_proto::routing::owner_of_route(hold_route(txid), shard_count)
}

/// The shards with a part in `op`, in order, without repeats (at most
/// three: kept in place, not allocated).
pub fn parts(op: &WalletOpRef<'_>, shard_count: usize) -> SmallVec<[usize; 3]> {
    let owner = |account: &str| ron_proto::routing::owner(account.as_bytes(), shard_count);
    let mut shards: SmallVec<[usize; 3]> = op.from.map(owner).into_iter().collect();
    shards.extend(op.to.map(owner));
    shards.push(recorder(&op.txid, shard_count));
    shards.sort_unstable();
    shards.dedup();
    shards
}

/// An idempotency record's slot: 16 bytes of BLAKE3 over the scope
/// account and the key (fixed size: a record costs no string allocations).
pub type IdemSlot = [u8; 16];

fn idem_slot(scope: &str, key: &str) -> IdemSlot {
    ron_proto::wallet::idempotency_slot(scope, key)
}

/// The (account, asset) of a balance: the account, a zero byte (no account
/// holds one), the asset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FundsKey(Box<[u8]>);

impl FundsKey {
    fn new(account: &str, asset: &str) -> FundsKey {
        assert!(!account.as_bytes().contains(&0), "no account holds a zero byte");
        FundsKey([account.as_bytes(), &[0], asset.as_bytes()].concat().into())
    }

    fn split(&self) -> (&str, &str) {
        let at = self.0.iter().position(|b| *b == 0).expect("keys hold a separator");
        let text = |bytes| std::str::from_utf8(bytes).expect("keys are made of strings");
        (text(&self.0[..at]), text(&self.0[at + 1..]))
    }

    pub fn account(&self) -> &str {
        self.split().0
    }

    pub fn asset(&self) -> &str {
        self.split().1
    }
}

/// What changed since the last view write: each value as it is now (`None`:
/// gone).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub funds: Vec<(FundsKey, u128)>,
    pub nonces: Vec<(CompactString, u64)>,
    pub holds: Vec<(HoldId, Option<Hold>)>,
    /// Idempotency records made (`Some`) and forgotten (`None`), in the
    /// order of their making, by (expiry, slot): a record is forgotten in
    /// expiry order, so a view that keeps them by that key adds at one end
    /// of its table and removes at the other.
    pub idem: Vec<(IdemKey, Option<IdemRecord>)>,
}

/// An idempotency record's place in expiry order: (expires_ms, slot).
pub type IdemKey = (u64, IdemSlot);

/// A committed receipt, as the wallet holds it: the operation (its log
/// encoding) and where it went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt<'a> {
    pub txid: TxId,
    pub placement: Placement,
    pub op: &'a [u8],
}

/// Accounts by name: hashbrown's map, whose raw entries find or make an
/// entry with one lookup and copy the name only when they make one. A name
/// of up to 24 bytes is kept in the entry itself: comparing it follows no
/// pointer (a cache miss of its own, each of a transfer's lookups).
type Accounts = hashbrown::HashMap<CompactString, Account, foldhash::fast::RandomState>;

/// The account `name` in `accounts`, made if it is not there.
fn account_in<'a>(accounts: &'a mut Accounts, name: &str) -> &'a mut Account {
    match accounts.raw_entry_mut().from_key(name) {
        RawEntryMut::Occupied(found) => found.into_mut(),
        RawEntryMut::Vacant(room) => room.insert(name.into(), Account::default()).1,
    }
}

/// An asset by its place in `Wallet::assets`.
type AssetId = u32;

/// A committed idempotency record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdemRecord {
    pub txid: TxId,
    pub expires_ms: u64,
    /// The record of a capture or release (see `Wallet::resolutions`).
    pub resolution: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.funds.is_empty()
            && self.nonces.is_empty()
            && self.holds.is_empty()
            && self.idem.is_empty()
    }
}

/// A domain rejection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    InsufficientFunds {
        available: u128,
        needed: u128,
    },
    NonceConflict {
        expected: u64,
        got: u64,
    },
    /// The key was used for a different request.
    IdempotencyConflict,
    /// The same request is still being committed.
    InFlight,
    /// Earlier nonces of the payer, reserved by a batch, are not settled
    /// yet (committed or given back): a later nonce waits for them.
    PayerUnsettled,
    UnknownHold,
    /// The hold was captured, released or expired, or that is under way.
    HoldResolved,
    /// A capture of more than the hold, or a balance past u128.
    LimitsExceeded(&'static str),
}

/// What a reservation found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reserved {
    /// Reserved: commit this operation (for captures and releases, completed
    /// from the hold).
    Commit(WalletOp),
    /// The same request was committed before: its txid (the receipt is
    /// with the recorder shard).
    Replay(TxId),
}

/// What the reservation of a write its caller keeps found
/// (`Wallet::reserve_batch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// Reserved: commit the write (a capture or release completed in
    /// place from its hold).
    Commit,
    /// The same request was committed before: its txid.
    Replay(TxId),
}

/// A write as the scope shard receives it: the operation with what the
/// request could say (a capture or release names only the hold).
pub type Request = WalletOp;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Funds {
    pub balance: u128,
    /// Debits reserved by writes not yet committed.
    pub reserved: u128,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Nonce {
    committed: u64,
    /// The highest nonce reserved (≥ committed).
    reserved: u64,
    /// `committed` changed since the last `take_changes`.
    dirty: bool,
}

/// An account's funds in one asset, and whether their balance changed
/// since the last `take_changes` (a flag, so that marking costs nothing
/// after the first change, as in `balances::Balances`).
#[derive(Debug, Default)]
struct FundsSlot {
    funds: Funds,
    dirty: bool,
}

/// What the shard keeps of one account: its nonce and its funds, found
/// with one lookup of its name (a transfer's reservation makes one, its
/// application one for each side).
#[derive(Debug, Default)]
struct Account {
    nonce: Nonce,
    /// By asset: an account holds few, so they are searched in turn, and
    /// the first is kept in place (no pointer to follow, no name to
    /// compare: a transfer's three lookups of an account were cache misses
    /// on each).
    funds: SmallVec<[(AssetId, FundsSlot); 1]>,
    /// In `Wallet::dirty_accounts`: its nonce or a balance changed since
    /// the last `take_changes`.
    listed: bool,
    /// Batches under way that reserved nonces of this payer and have not
    /// settled (`hold_unsettled`, `settle_payer`).
    unsettled: u32,
}

impl Account {
    fn funds(&self, asset: AssetId) -> Funds {
        self.funds
            .iter()
            .find(|(held, _)| *held == asset)
            .map(|(_, slot)| slot.funds)
            .unwrap_or_default()
    }

    fn slot_mut(&mut self, asset: AssetId) -> &mut FundsSlot {
        let at = match self.funds.iter().position(|(held, _)| *held == asset) {
            Some(at) => at,
            None => {
                self.funds.push((asset, FundsSlot::default()));
                self.funds.len() - 1
            }
        };
        &mut self.funds[at].1
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub from: CompactString,
    pub to: CompactString,
    pub asset: CompactString,
    pub amount: u128,
    pub expires_ms: Option<u64>,
    /// A capture, release or expiry of it is being committed.
    pub resolving: bool,
}

/// A committed operation's idempotency record, as its shard applies it:
/// its slot, and whether the operation was reserved here.
#[derive(Clone, Copy, Debug)]
struct Record {
    slot: IdemSlot,
    reserved: bool,
}

/// An idempotency record: the txid of the request that holds the key.
/// Its receipt lives with the recorder shard.
#[derive(Clone, Copy, Debug)]
enum Idem {
    Pending(TxId),
    /// Committed; forgotten when its expiry comes up in `idem_order`.
    Done(TxId),
}

#[derive(Debug, Default)]
pub struct Wallet {
    shard: usize,
    shard_count: usize,
    /// By name.
    accounts: Accounts,
    /// The assets seen, in the order first seen (few: the config's list).
    assets: Vec<Box<str>>,
    /// Accounts whose nonce or a balance changed since the last
    /// `take_changes`.
    dirty_accounts: Vec<CompactString>,
    holds: Map<HoldId, Hold>,
    /// Open holds by expiry time, for the expiry sweep.
    expiries: BTreeSet<(u64, HoldId)>,
    /// Idempotency records by `idem_slot(scope, key)`: the txid of the
    /// request that holds the key, committed or reserved (then also in
    /// `pending`). A reservation writes its record where its lookup just
    /// was (in the cache), and its commit leaves it there.
    idem: Map<IdemSlot, TxId>,
    /// The slots of the records of requests reserved and not yet committed
    /// or given back, by txid: few, so in the cache, and they give the
    /// commit its slot without hashing the key again.
    pending: Map<TxId, IdemSlot>,
    /// The slots of the records of captures and releases, by txid. Their
    /// slot is scoped to the hold's payer, which a replay cannot name once
    /// the hold is resolved and gone; every other request's slot follows
    /// from the request itself, so only these need an index (a million
    /// records cost 69 MB in it).
    resolutions: Map<TxId, IdemSlot>,
    /// Committed idempotency records, oldest first, for expiry and the
    /// bound: (expires_ms, slot, txid). The txid tells whether `idem` still
    /// holds this record: a record replayed at start can take the slot of
    /// one loaded from the view that had expired and was not yet forgotten
    /// there.
    idem_order: VecDeque<(u64, IdemSlot, TxId)>,
    idem_ttl_ms: u64,
    idem_max: usize,
    /// No view takes the changes (amnesia): the changed holds and
    /// idempotency records, one per write, are not kept for it.
    no_view: bool,
    /// Receipts added since the last `take_new_receipts`.
    receipts: ReceiptSet,
    /// Receipts handed out for a view write and not yet written, by the
    /// seq that write reaches, oldest first: each set is dropped whole
    /// once its write is done (`forget_receipts_through`), and its emptied
    /// map kept for the next set (`spare_receipts`).
    handed: VecDeque<(u64, ReceiptSet)>,
    spare_receipts: Option<ReceiptSet>,
    /// Holds changed by committed operations since the last `take_changes`.
    dirty_holds: Set<HoldId>,
    /// Idempotency records made and forgotten since the last
    /// `take_changes`, in order (see `Changes::idem`).
    dirty_idem: Vec<(IdemKey, Option<IdemRecord>)>,
    /// The lists of the last `take_changes`, given back (`recycle`).
    spare_changes: Option<Changes>,
    /// Receipts of operations up to this seq are kept elsewhere (the
    /// shard's view) and not added here.
    receipts_kept_through: u64,
}

impl Wallet {
    pub fn new(shard: usize, shard_count: usize, idem_ttl_ms: u64, idem_max: usize) -> Wallet {
        assert!(shard < shard_count && idem_max > 0);
        Wallet { shard, shard_count, idem_ttl_ms, idem_max, ..Wallet::default() }
    }

    /// This wallet has no view (amnesia): `take_changes` will never be
    /// called, so the holds and idempotency records that change are not
    /// kept for it (the funds and nonces that change are marked in place,
    /// bounded by the accounts).
    pub fn without_view(self) -> Wallet {
        Wallet { no_view: true, ..self }
    }

    fn owns(&self, account: &str) -> bool {
        ron_proto::routing::owner(account.as_bytes(), self.shard_count) == self.shard
    }

    pub fn funds(&self, account: &str, asset: &str) -> Funds {
        let Some(asset) = self.known_asset(asset) else { return Funds::default() };
        self.accounts.get(account).map(|held| held.funds(asset)).unwrap_or_default()
    }

    fn known_asset(&self, asset: &str) -> Option<AssetId> {
        let at = self.assets.iter().position(|known| **known == *asset)?;
        Some(AssetId::try_from(at).expect("assets are few"))
    }

    /// The id of `asset`, given at its first sight.
    fn asset_id(&mut self, asset: &str) -> AssetId {
        self.known_asset(asset).unwrap_or_else(|| {
            self.assets.push(asset.into());
            AssetId::try_from(self.assets.len() - 1).expect("assets are few")
        })
    }

    fn account_mut(&mut self, name: &str) -> &mut Account {
        account_in(&mut self.accounts, name)
    }

    /// The account of a committed change: listed for the next view write.
    fn committed_account_mut(&mut self, name: &str) -> &mut Account {
        let account = account_in(&mut self.accounts, name);
        if !account.listed {
            account.listed = true;
            self.dirty_accounts.push(name.into());
        }
        account
    }

    /// Whether a batch under way reserved nonces of `payer` and has not
    /// settled: no later nonce of theirs may be reserved meanwhile (were
    /// one of the batch's given back, the later one would commit past a
    /// gap).
    pub fn is_unsettled(&self, payer: &str) -> bool {
        self.accounts.get(payer).is_some_and(|held| held.unsettled > 0)
    }

    /// A batch reserved nonces of `payer` (once per nonce).
    pub fn hold_unsettled(&mut self, payer: &str) {
        self.account_mut(payer).unsettled += 1;
    }

    /// A batch that reserved a nonce of `payer` is over (once per nonce);
    /// whether none is left under way.
    pub fn settle_payer(&mut self, payer: &str) -> bool {
        let Some(held) = self.accounts.get_mut(payer).filter(|held| held.unsettled > 0) else {
            return false;
        };
        held.unsettled -= 1;
        held.unsettled == 0
    }

    /// The committed nonce of `account` (0 before its first write).
    pub fn nonce(&self, account: &str) -> u64 {
        self.accounts.get(account).map_or(0, |held| held.nonce.committed)
    }

    /// The committed state changed since the last call, for the view
    /// (give it back emptied with `recycle`).
    pub fn take_changes(&mut self) -> Changes {
        let mut changes = self.spare_changes.take().unwrap_or_default();
        for name in self.dirty_accounts.drain(..) {
            let account = self.accounts.get_mut(&name).expect("listed accounts exist");
            account.listed = false;
            for (asset, slot) in account.funds.iter_mut().filter(|(_, slot)| slot.dirty) {
                slot.dirty = false;
                let asset = &self.assets[*asset as usize];
                changes.funds.push((FundsKey::new(&name, asset), slot.funds.balance));
            }
            if account.nonce.dirty {
                account.nonce.dirty = false;
                changes.nonces.push((name, account.nonce.committed));
            }
        }
        // Drained, not replaced: the sets keep the room they grew to.
        for id in self.dirty_holds.drain() {
            changes.holds.push((id, self.holds.get(&id).cloned()));
        }
        // Swapped, not copied: the records' list keeps the room the last
        // one grew to.
        std::mem::swap(&mut changes.idem, &mut self.dirty_idem);
        changes
    }

    /// Takes back what `take_changes` gave, once the view has it: its
    /// lists, emptied, are the next ones (a write's idempotency records,
    /// 130 000 at 130 000 transfers/s, grown anew each time, had every
    /// page faulted in anew).
    pub fn recycle(&mut self, mut changes: Changes) {
        changes.funds.clear();
        changes.nonces.clear();
        changes.holds.clear();
        changes.idem.clear();
        self.spare_changes = Some(changes);
    }

    /// Loads state the view kept (at start, before any replay).
    pub fn load_funds(&mut self, account: &str, asset: &str, balance: u128) {
        let slot = FundsSlot { funds: Funds { balance, reserved: 0 }, dirty: false };
        let asset = self.asset_id(asset);
        *self.account_mut(account).slot_mut(asset) = slot;
    }

    pub fn load_nonce(&mut self, account: &str, nonce: u64) {
        let loaded = Nonce { committed: nonce, reserved: nonce, dirty: false };
        self.account_mut(account).nonce = loaded;
    }

    pub fn load_hold(&mut self, id: HoldId, hold: Hold) {
        assert!(!hold.resolving, "a kept hold is not being resolved");
        if let Some(at) = hold.expires_ms {
            self.expiries.insert((at, id));
        }
        self.holds.insert(id, hold);
    }

    pub fn load_idem(&mut self, slot: IdemSlot, record: IdemRecord) {
        self.idem.insert(slot, record.txid);
        if record.resolution {
            self.resolutions.insert(record.txid, slot);
        }
        self.idem_order.push_back((record.expires_ms, slot, record.txid));
    }

    /// Puts loaded idempotency records in expiry order.
    pub fn finish_load(&mut self) {
        self.idem_order.make_contiguous().sort_unstable();
    }

    /// Receipts of operations up to `seq` are kept elsewhere: replaying
    /// them adds nothing here.
    pub fn set_receipts_kept_through(&mut self, seq: u64) {
        self.receipts_kept_through = seq;
    }

    /// The receipts added since the last call, to be written to the view
    /// by a write that reaches `through_seq` (in no particular order), lent
    /// rather than copied. They are still found here until
    /// `forget_receipts_through(through_seq)`.
    pub fn take_new_receipts(&mut self, through_seq: u64) -> impl Iterator<Item = Receipt<'_>> {
        let spare = self.spare_receipts.take().unwrap_or_default();
        let taken = std::mem::replace(&mut self.receipts, spare);
        self.handed.push_back((through_seq, taken));
        let (_, taken) = self.handed.back().expect("pushed");
        taken.iter()
    }

    /// The view write reaching `seq` is done: the receipts it carried are
    /// kept there now, and forgotten here.
    pub fn forget_receipts_through(&mut self, seq: u64) {
        while self.handed.front().is_some_and(|(through, _)| *through <= seq) {
            let (_, mut written) = self.handed.pop_front().expect("not empty");
            written.clear();
            self.spare_receipts = Some(written);
        }
    }

    pub fn receipts_len(&self) -> usize {
        self.receipts.len() + self.handed.iter().map(|(_, set)| set.len()).sum::<usize>()
    }

    pub fn receipt(&self, txid: &TxId) -> Option<Vec<u8>> {
        self.committed(txid).map(|(op, placement)| ron_proto::wallet::receipt(&op, &placement))
    }

    /// The committed operation of a receipt kept in memory, and where it went.
    pub fn committed(&self, txid: &TxId) -> Option<(WalletOp, Placement)> {
        let kept = self.receipts.get(txid);
        let (op, placement) =
            kept.or_else(|| self.handed.iter().find_map(|(_, set)| set.get(txid)))?;
        Some((WalletOp::decode(op).expect("kept receipts decode"), placement))
    }

    /// Idempotency records kept (committed ones).
    pub fn idem_len(&self) -> usize {
        self.idem_order.len()
    }

    /// Every balance and open hold, summed per asset (for invariant checks).
    pub fn totals(&self) -> HashMap<String, (u128, u128)> {
        let mut totals: HashMap<String, (u128, u128)> = HashMap::new();
        for (asset, slot) in self.accounts.values().flat_map(|account| &account.funds) {
            totals.entry(self.assets[*asset as usize].to_string()).or_default().0 +=
                slot.funds.balance;
        }
        for hold in self.holds.values() {
            totals.entry(hold.asset.to_string()).or_default().1 += hold.amount;
        }
        totals
    }

    /// Checks `request` on its scope shard and reserves what it needs, or
    /// says why not. Nothing changes on a rejection.
    pub fn reserve(&mut self, request: &Request, now_ms: u64) -> Result<Reserved, Rejection> {
        self.reserve_owned(request.clone(), now_ms)
    }

    /// The same with the request given, when the caller has no more use
    /// for it (it becomes the operation to commit).
    pub fn reserve_owned(&mut self, request: Request, now_ms: u64) -> Result<Reserved, Rejection> {
        let mut op = request;
        Ok(match self.reserve_at(&mut op, now_ms, None)? {
            Reservation::Commit => Reserved::Commit(op),
            Reservation::Replay(txid) => Reserved::Replay(txid),
        })
    }

    /// Reserves a batch's writes in order, each as `reserve_owned` does but
    /// in place (a capture or release is completed in `requests`), except
    /// that a write whose payer another batch has not settled is
    /// refused (`PayerUnsettled`: a batch orders its own nonces, and waits
    /// for no one); once all are reserved, the payers of the nonces
    /// reserved are marked (`hold_unsettled`).
    ///
    /// The writes' records and accounts are first looked up together
    /// (`touch`), then reserved one by one from the cache.
    pub fn reserve_batch(
        &mut self,
        requests: &mut [Request],
        now_ms: u64,
    ) -> Vec<Result<Reservation, Rejection>> {
        // A capture's or release's scope is its hold's payer, found when
        // it is reserved: its slot is made then.
        let slots: Vec<Option<IdemSlot>> = requests
            .iter()
            .map(|request| {
                let key = request.idem.as_deref().filter(|_| !is_resolution(request.kind))?;
                Some(idem_slot(scope_account(request), key))
            })
            .collect();
        let accounts = requests.iter().map(scope_account);
        self.touch(slots.iter().flatten(), std::iter::empty(), accounts, std::iter::empty());
        let answers: Vec<_> = (requests.iter_mut().zip(slots))
            .map(|(request, slot)| match request.nonce.and(self.nonce_account(request)) {
                Some(payer) if self.is_unsettled(payer) => Err(Rejection::PayerUnsettled),
                _ => self.reserve_at(request, now_ms, slot),
            })
            .collect();
        for (op, answer) in requests.iter().zip(&answers) {
            if answer == &Ok(Reservation::Commit) && op.nonce.is_some() {
                self.hold_unsettled(scope_account(op));
            }
        }
        answers
    }

    /// Looks up, one right after another, the records of `slots` and of
    /// `forgotten`, the accounts named (each account's nonce, flag and
    /// first funds too: its entry spans three cache lines) and the
    /// receipts' index at `receipts`, and drops what it found: the work
    /// that follows finds them in the cache. Each is a cache miss (a
    /// million records do not fit in it); misses made together overlap,
    /// where one at a time, between the rest of the work, each waits its
    /// turn.
    fn touch<'a>(
        &self,
        slots: impl Iterator<Item = &'a IdemSlot>,
        forgotten: impl Iterator<Item = &'a IdemSlot>,
        accounts: impl Iterator<Item = &'a str>,
        receipts: impl Iterator<Item = &'a TxId>,
    ) {
        for slot in slots.chain(forgotten) {
            std::hint::black_box(self.idem.get(slot));
        }
        for account in accounts {
            std::hint::black_box(self.accounts.get(account).map(|held| {
                let first = held.funds.first().map(|(_, slot)| slot.funds.balance);
                (held.listed, held.nonce.committed, first)
            }));
        }
        for txid in receipts {
            self.receipts.touch(txid);
        }
    }

    /// Reserves `op` in place, with its slot if the caller made it.
    fn reserve_at(
        &mut self,
        op: &mut WalletOp,
        now_ms: u64,
        slot: Option<IdemSlot>,
    ) -> Result<Reservation, Rejection> {
        self.expire_idem(now_ms);
        // A capture or release again, whose hold may be gone.
        if let Some(slot) = self.resolutions.get(&op.txid) {
            return match self.idem_record(slot).expect("a resolution's record is kept") {
                Idem::Done(txid) => Ok(Reservation::Replay(txid)),
                Idem::Pending(_) => Err(Rejection::InFlight),
            };
        }
        let over_hold = self.complete(op)?;
        let op = &*op;
        let scope = scope_account(op);
        assert!(self.owns(scope), "a write is reserved on its scope shard");
        let key = op.idem.as_deref().expect("writes carry an idempotency key");
        let slot = slot.unwrap_or_else(|| idem_slot(scope, key));
        debug_assert_eq!(slot, idem_slot(scope, key), "the slot given is the request's");
        match self.idem_record(&slot) {
            // The same request again: the txid covers the scope and the key.
            Some(Idem::Done(txid)) if txid == op.txid => return Ok(Reservation::Replay(txid)),
            Some(Idem::Pending(txid)) if txid == op.txid => return Err(Rejection::InFlight),
            Some(_) => return Err(Rejection::IdempotencyConflict),
            None => {}
        }
        self.check(op, scope, over_hold)?;
        // Reserve: nothing above can fail from here on.
        let debits = matches!(op.kind, OpKind::Transfer | OpKind::Burn | OpKind::Hold);
        if op.nonce.is_some() || debits {
            let asset = self.asset_id(&op.asset);
            let account = self.account_mut(scope);
            if let Some(nonce) = op.nonce {
                account.nonce.reserved = nonce;
            }
            if debits {
                account.slot_mut(asset).funds.reserved += op.amount;
            }
        }
        if let Some(hold) = op.hold_id.and_then(|id| self.holds.get_mut(&id)) {
            hold.resolving = true;
        }
        if is_resolution(op.kind) {
            self.resolutions.insert(op.txid, slot);
        }
        self.idem.insert(slot, op.txid);
        self.pending.insert(op.txid, slot);
        Ok(Reservation::Commit)
    }

    /// The account whose nonce `request` uses: its scope account, or for a
    /// capture or release the payer of its hold (`None` when the hold is
    /// not here).
    pub fn nonce_account<'a>(&'a self, request: &'a Request) -> Option<&'a str> {
        match request.kind {
            OpKind::Capture | OpKind::Release => {
                let hold_id = request.hold_id.as_ref()?;
                self.holds.get(hold_id).map(|hold| hold.from.as_str())
            }
            _ => Some(scope_account(request)),
        }
    }

    /// Makes a request the operation it asks for: a capture or release
    /// names only its hold, whose payer, payee, asset and amount it takes.
    /// Whether it asks for more than the hold (refused after the key and
    /// nonce checks, so a replay still finds its receipt).
    fn complete(&self, op: &mut WalletOp) -> Result<bool, Rejection> {
        if let OpKind::Capture | OpKind::Release = op.kind {
            let hold_id = op.hold_id.expect("captures and releases name a hold");
            let hold = self.holds.get(&hold_id).ok_or(Rejection::UnknownHold)?;
            if hold.resolving {
                return Err(Rejection::HoldResolved);
            }
            let amount = match op.kind {
                OpKind::Release => 0,
                // A capture without an amount takes the whole hold.
                _ if op.amount == 0 => hold.amount,
                _ => op.amount,
            };
            let over_hold = amount > hold.amount;
            op.from = Some(hold.from.clone());
            op.to = Some(hold.to.clone());
            op.asset = hold.asset.clone();
            op.amount = amount;
            return Ok(over_hold);
        }
        Ok(false)
    }

    /// The nonce and the funds `op` needs, on its scope shard.
    fn check(&self, op: &WalletOp, scope: &str, over_hold: bool) -> Result<(), Rejection> {
        let held = self.accounts.get(scope);
        if let Some(got) = op.nonce {
            let expected = held.map_or(0, |held| held.nonce.reserved) + 1;
            if got != expected {
                return Err(Rejection::NonceConflict { expected, got });
            }
        }
        match op.kind {
            OpKind::Issue => {
                let to = op.to.as_deref().expect("an issue has a payee");
                if self.funds(to, &op.asset).balance.checked_add(op.amount).is_none() {
                    return Err(Rejection::LimitsExceeded("the balance would overflow"));
                }
            }
            OpKind::Transfer | OpKind::Burn | OpKind::Hold => {
                let asset = self.known_asset(&op.asset);
                let funds =
                    held.zip(asset).map(|(held, asset)| held.funds(asset)).unwrap_or_default();
                let available = funds.balance - funds.reserved;
                if op.amount > available {
                    return Err(Rejection::InsufficientFunds { available, needed: op.amount });
                }
            }
            OpKind::Capture | OpKind::Release => {
                if over_hold {
                    return Err(Rejection::LimitsExceeded("a capture above the hold"));
                }
            }
            OpKind::Expire => unreachable!("expiries are made by the shard, not requested"),
        }
        Ok(())
    }

    /// Gives back what `reserve` took for `op`, which did not commit.
    pub fn release(&mut self, op: &WalletOp) {
        let scope = scope_account(op);
        if let Some(nonce) = op.nonce {
            let entry = &mut self.account_mut(scope).nonce;
            // Later nonces reserved meanwhile keep theirs; they will be
            // refused by the committer too (it only refuses in safe mode).
            if entry.reserved == nonce {
                entry.reserved = nonce - 1;
            }
        }
        if matches!(op.kind, OpKind::Transfer | OpKind::Burn | OpKind::Hold) {
            let asset = self.asset_id(&op.asset);
            let funds = &mut self.account_mut(scope).slot_mut(asset).funds;
            funds.reserved =
                funds.reserved.checked_sub(op.amount).expect("released what was reserved");
        }
        if let Some(hold) = op.hold_id.and_then(|id| self.holds.get_mut(&id)) {
            if op.kind != OpKind::Hold {
                hold.resolving = false;
            }
        }
        // A request's txid covers its scope and key: the reserved record
        // of this txid is this reservation's.
        if let Some(slot) = self.pending.remove(&op.txid) {
            self.idem.remove(&slot);
            self.resolutions.remove(&op.txid);
        }
    }

    fn credit(&mut self, account: &str, asset: &str, amount: u128) {
        let asset = self.asset_id(asset);
        let slot = self.committed_account_mut(account).slot_mut(asset);
        slot.dirty = true;
        slot.funds.balance = slot.funds.balance.checked_add(amount).expect("credits were checked");
    }

    /// Applies this shard's parts of a committed `op`, placed at
    /// `placement`: the same for an operation from the live stream and one
    /// read back from the log at start. `encoded` is the operation as the
    /// log holds it (`WalletOp::encode`), kept as its receipt.
    pub fn apply(&mut self, op: &WalletOpRef<'_>, encoded: &[u8], placement: Placement) {
        self.apply_at(op, encoded, placement, self.record_of(op));
    }

    /// Applies committed operations in order, each as `apply` does. What
    /// they will look up is first looked up together (`touch`): the
    /// records of those not reserved here (replayed at start), their
    /// accounts, and the oldest records that the bound will make them
    /// forget.
    pub fn apply_all(&mut self, committed: &[(WalletOpRef<'_>, &[u8], Placement)]) {
        let records: Vec<Option<Record>> =
            committed.iter().map(|(op, ..)| self.record_of(op)).collect();
        let made = records.iter().flatten().count();
        let forgotten = (self.idem_order.len() + made).saturating_sub(self.idem_max);
        self.touch(
            records.iter().flatten().filter(|record| !record.reserved).map(|record| &record.slot),
            self.idem_order.iter().take(forgotten).map(|(_, slot, _)| slot),
            committed.iter().flat_map(|(op, ..)| [op.from, op.to]).flatten(),
            committed
                .iter()
                .filter(|(op, _, placement)| self.keeps_receipt(&op.txid, placement.seq))
                .map(|(op, ..)| &op.txid),
        );
        for ((op, encoded, placement), record) in committed.iter().zip(records) {
            self.apply_at(op, encoded, *placement, record);
        }
    }

    /// The idempotency record of committed `op`, if this shard keeps it:
    /// reserved here (its slot is known), or not (replayed at start: its
    /// slot is hashed).
    fn record_of(&self, op: &WalletOpRef<'_>) -> Option<Record> {
        let scope = op.from.or(op.to).expect("every operation names an account");
        let key = op.idem.filter(|_| self.owns(scope))?;
        Some(match self.pending.get(&op.txid) {
            Some(slot) => Record { slot: *slot, reserved: true },
            None => Record { slot: idem_slot(scope, key), reserved: false },
        })
    }

    /// `apply`, with the operation's record (`record_of`).
    fn apply_at(
        &mut self,
        op: &WalletOpRef<'_>,
        encoded: &[u8],
        placement: Placement,
        record: Option<Record>,
    ) {
        debug_assert!(
            {
                let mut again = Vec::new();
                op.into_owned().encode(&mut again);
                again == encoded
            },
            "`encoded` is `op`'s log encoding"
        );
        let from_here = op.from.is_some_and(|a| self.owns(a));
        let to_here = op.to.is_some_and(|a| self.owns(a));
        // The scope shard reserved `op` if its record of the key is
        // pending: the record, in `idem` since, is now committed.
        let mut reserved = false;
        if let Some(Record { slot, reserved: here }) = record {
            let expires_ms = op.ts_ms + self.idem_ttl_ms;
            reserved = here;
            if reserved {
                self.pending.remove(&op.txid);
                debug_assert_eq!(self.idem.get(&slot), Some(&op.txid), "reserved in `idem`");
            } else {
                self.idem.insert(slot, op.txid);
            }
            if is_resolution(op.kind) {
                self.resolutions.insert(op.txid, slot);
            }
            self.idem_order.push_back((expires_ms, slot, op.txid));
            let record =
                IdemRecord { txid: op.txid, expires_ms, resolution: is_resolution(op.kind) };
            self.changed_idem((expires_ms, slot), Some(record));
            while self.idem_order.len() > self.idem_max {
                self.forget_oldest_idem();
            }
        }
        if from_here {
            self.apply_payer(op, reserved);
        }
        if to_here {
            match op.kind {
                OpKind::Issue | OpKind::Transfer | OpKind::Capture => {
                    let to = op.to.expect("a payee");
                    self.credit(to, op.asset, op.amount);
                }
                OpKind::Burn | OpKind::Hold | OpKind::Release | OpKind::Expire => {}
            }
        }
        if self.keeps_receipt(&op.txid, placement.seq) {
            self.receipts.insert(op.txid, encoded, placement);
        }
    }

    /// Whether this shard keeps the receipt of `txid`, committed at `seq`,
    /// in memory (until a view write takes it).
    fn keeps_receipt(&self, txid: &TxId, seq: u64) -> bool {
        recorder(txid, self.shard_count) == self.shard && seq > self.receipts_kept_through
    }

    /// The payer's part; `reserved`: the debit was reserved here, and the
    /// reservation becomes the debit.
    fn apply_payer(&mut self, op: &WalletOpRef<'_>, reserved: bool) {
        let from = op.from.expect("a payer");
        let debits = matches!(op.kind, OpKind::Transfer | OpKind::Burn | OpKind::Hold);
        if op.nonce.is_some() || debits {
            let asset = self.asset_id(op.asset);
            let account = self.committed_account_mut(from);
            if let Some(nonce) = op.nonce {
                let entry = &mut account.nonce;
                assert!(nonce > entry.committed, "nonces commit in order");
                entry.committed = nonce;
                entry.reserved = entry.reserved.max(nonce);
                entry.dirty = true;
            }
            if debits {
                let slot = account.slot_mut(asset);
                slot.dirty = true;
                let funds = &mut slot.funds;
                if reserved {
                    funds.reserved =
                        funds.reserved.checked_sub(op.amount).expect("a reservation covers it");
                }
                funds.balance = funds.balance.checked_sub(op.amount).expect("debits were reserved");
            }
        }
        match op.kind {
            OpKind::Transfer | OpKind::Burn | OpKind::Hold => {
                if op.kind == OpKind::Hold {
                    let hold_id = op.hold_id.expect("a hold has its id");
                    let expires_ms = op.timeout_s.map(|t| op.ts_ms + u64::from(t) * 1000);
                    if let Some(at) = expires_ms {
                        self.expiries.insert((at, hold_id));
                    }
                    let hold = Hold {
                        from: from.into(),
                        to: op.to.expect("a hold has a payee").into(),
                        asset: op.asset.into(),
                        amount: op.amount,
                        expires_ms,
                        resolving: false,
                    };
                    assert!(self.holds.insert(hold_id, hold).is_none(), "hold ids are unique");
                    self.changed_hold(hold_id);
                }
            }
            OpKind::Capture | OpKind::Release | OpKind::Expire => {
                let hold_id = op.hold_id.expect("a resolution names its hold");
                let hold = self.holds.remove(&hold_id).expect("a hold resolves once");
                self.changed_hold(hold_id);
                if let Some(at) = hold.expires_ms {
                    self.expiries.remove(&(at, hold_id));
                }
                let back = hold.amount - op.amount;
                self.credit(from, &hold.asset, back);
            }
            OpKind::Issue => {}
        }
    }

    /// Holds past their timeout at `now_ms` and not being resolved, each
    /// marked as resolving: the caller commits an expiry for each, or
    /// `release`s it.
    pub fn due_expiries(&mut self, now_ms: u64, max: usize) -> Vec<WalletOp> {
        let due: Vec<HoldId> = self
            .expiries
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .map(|(_, id)| *id)
            .filter(|id| self.holds.get(id).is_some_and(|h| !h.resolving))
            .take(max)
            .collect();
        due.into_iter()
            .map(|hold_id| {
                let hold = self.holds.get_mut(&hold_id).expect("listed");
                hold.resolving = true;
                let txid = ron_proto::wallet::expiry_txid(&hold_id);
                WalletOp {
                    kind: OpKind::Expire,
                    from: Some(hold.from.clone()),
                    to: Some(hold.to.clone()),
                    asset: hold.asset.clone(),
                    amount: 0,
                    nonce: None,
                    hold_id: Some(hold_id),
                    timeout_s: None,
                    idem: None,
                    txid,
                    ts_ms: now_ms,
                }
            })
            .collect()
    }

    fn expire_idem(&mut self, now_ms: u64) {
        while self.idem_order.front().is_some_and(|(at, ..)| *at <= now_ms) {
            self.forget_oldest_idem();
        }
    }

    /// Marks a hold for the next view write (none without a view).
    fn changed_hold(&mut self, id: HoldId) {
        if !self.no_view {
            self.dirty_holds.insert(id);
        }
    }

    /// Lists an idempotency record made or forgotten for the next view
    /// write (none without a view).
    fn changed_idem(&mut self, key: IdemKey, record: Option<IdemRecord>) {
        if !self.no_view {
            self.dirty_idem.push((key, record));
        }
    }

    /// The record of `slot`: in flight, or committed.
    fn idem_record(&self, slot: &IdemSlot) -> Option<Idem> {
        let txid = *self.idem.get(slot)?;
        Some(if self.pending.contains_key(&txid) { Idem::Pending(txid) } else { Idem::Done(txid) })
    }

    /// Forgets the oldest committed record: from `idem` if the slot still
    /// holds it (one lookup: the oldest record is a cache miss of its
    /// own), and from the view in any case.
    fn forget_oldest_idem(&mut self) {
        let (expires_ms, slot, txid) = self.idem_order.pop_front().expect("not empty");
        if let Entry::Occupied(held) = self.idem.entry(slot) {
            if *held.get() == txid {
                held.remove();
            }
        }
        if !self.resolutions.is_empty() {
            self.resolutions.remove(&txid);
        }
        self.changed_idem((expires_ms, slot), None);
    }
}

#[cfg(test)]
mod tests;
