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

use ron_proto::wallet::{HoldId, OpKind, Placement, TxId, WalletOp, WalletOpRef, hold_route};

use crate::{Map, Set};
use hashbrown::hash_map::RawEntryMut;
use smallvec::SmallVec;
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

/// The shards with a part in `op`, without repeats.
pub fn parts(op: &WalletOpRef<'_>, shard_count: usize) -> BTreeSet<usize> {
    let owner = |account: &str| ron_proto::routing::owner(account.as_bytes(), shard_count);
    let mut shards = BTreeSet::new();
    shards.extend(op.from.map(owner));
    shards.extend(op.to.map(owner));
    shards.insert(recorder(&op.txid, shard_count));
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
    pub nonces: Vec<(String, u64)>,
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
/// entry with one lookup and copy the name only when they make one.
type Accounts = hashbrown::HashMap<Box<str>, Account, foldhash::fast::RandomState>;

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
    pub from: String,
    pub to: String,
    pub asset: String,
    pub amount: u128,
    pub expires_ms: Option<u64>,
    /// A capture, release or expiry of it is being committed.
    pub resolving: bool,
}

/// An idempotency record: the txid of the request that holds the key.
/// Its receipt lives with the recorder shard.
#[derive(Clone, Copy, Debug)]
enum Idem {
    Pending(TxId),
    /// Committed; forgotten when its expiry comes up in `idem_order`.
    Done(TxId),
}

/// Receipts as kept until a view write takes them: each operation's log
/// encoding and where it went, rendered when asked for. They are appended
/// (the operations' bytes to one buffer) and found through a small index,
/// so that keeping one writes a few sequential bytes and a 20-byte map
/// entry, and allocates nothing.
#[derive(Debug, Default)]
struct ReceiptSet {
    /// By txid: the place in `kept`.
    index: Map<TxId, u32>,
    kept: Vec<Kept>,
    ops: Vec<u8>,
}

#[derive(Debug)]
struct Kept {
    txid: TxId,
    placement: Placement,
    /// The operation's place in `ReceiptSet::ops`.
    op: std::ops::Range<usize>,
}

impl ReceiptSet {
    fn insert(&mut self, txid: TxId, op: &[u8], placement: Placement) {
        let at = self.ops.len();
        self.ops.extend_from_slice(op);
        let kept = Kept { txid, placement, op: at..self.ops.len() };
        match self.index.get(&txid) {
            // Kept again (never in practice): the later one stands.
            Some(&place) => self.kept[place as usize] = kept,
            None => {
                let place = u32::try_from(self.kept.len()).expect("a set holds under 2^32");
                self.index.insert(txid, place);
                self.kept.push(kept);
            }
        }
    }

    fn get(&self, txid: &TxId) -> Option<(&[u8], Placement)> {
        let kept = &self.kept[*self.index.get(txid)? as usize];
        Some((&self.ops[kept.op.clone()], kept.placement))
    }

    fn iter(&self) -> impl Iterator<Item = Receipt<'_>> {
        self.kept.iter().map(|kept| Receipt {
            txid: kept.txid,
            placement: kept.placement,
            op: &self.ops[kept.op.clone()],
        })
    }

    fn len(&self) -> usize {
        self.kept.len()
    }

    /// Emptied, keeping the room it grew to.
    fn clear(&mut self) {
        self.index.clear();
        self.kept.clear();
        self.ops.clear();
    }
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
    dirty_accounts: Vec<Box<str>>,
    holds: Map<HoldId, Hold>,
    /// Open holds by expiry time, for the expiry sweep.
    expiries: BTreeSet<(u64, HoldId)>,
    /// Committed idempotency records by `idem_slot(scope, key)`: the txid
    /// of the request that holds the key.
    idem: Map<IdemSlot, TxId>,
    /// Records of requests reserved and not yet committed or given back,
    /// by slot: few, so a reservation's insert stays in cache instead of
    /// writing into the large map above (a cache miss of its own).
    pending: Map<IdemSlot, TxId>,
    /// The slots of the records of captures and releases, by txid. Their
    /// slot is scoped to the hold's payer, which a replay cannot name once
    /// the hold is resolved and gone; every other request's slot follows
    /// from the request itself, so only these need an index (a million
    /// records cost 69 MB in it).
    resolutions: Map<TxId, IdemSlot>,
    /// Committed idempotency records, oldest first, for expiry and the bound.
    idem_order: VecDeque<(u64, IdemSlot)>,
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

    /// The committed state changed since the last call, for the view.
    pub fn take_changes(&mut self) -> Changes {
        let mut changes = Changes::default();
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
                changes.nonces.push((name.into(), account.nonce.committed));
            }
        }
        // Drained, not replaced: the sets keep the room they grew to.
        for id in self.dirty_holds.drain() {
            changes.holds.push((id, self.holds.get(&id).cloned()));
        }
        changes.idem.append(&mut self.dirty_idem);
        changes
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
        self.idem_order.push_back((record.expires_ms, slot));
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
            totals.entry(hold.asset.clone()).or_default().1 += hold.amount;
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
        self.expire_idem(now_ms);
        // A capture or release again, whose hold may be gone.
        if let Some(slot) = self.resolutions.get(&request.txid) {
            return match self.idem_record(slot).expect("a resolution's record is kept") {
                Idem::Done(txid) => Ok(Reserved::Replay(txid)),
                Idem::Pending(_) => Err(Rejection::InFlight),
            };
        }
        let (op, over_hold) = self.completed(request)?;
        let scope = scope_account(&op);
        assert!(self.owns(scope), "a write is reserved on its scope shard");
        let key = op.idem.as_deref().expect("writes carry an idempotency key");
        let slot = idem_slot(scope, key);
        match self.idem_record(&slot) {
            // The same request again: the txid covers the scope and the key.
            Some(Idem::Done(txid)) if txid == op.txid => return Ok(Reserved::Replay(txid)),
            Some(Idem::Pending(txid)) if txid == op.txid => return Err(Rejection::InFlight),
            Some(_) => return Err(Rejection::IdempotencyConflict),
            None => {}
        }
        self.check(&op, scope, over_hold)?;
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
        self.pending.insert(slot, op.txid);
        Ok(Reserved::Commit(op))
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

    /// The operation a request asks for: a capture or release names only
    /// its hold, whose payer, payee, asset and amount it takes; and whether
    /// it asks for more than the hold (refused after the key and nonce
    /// checks, so a replay still finds its receipt).
    fn completed(&self, request: Request) -> Result<(WalletOp, bool), Rejection> {
        let mut op = request;
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
            return Ok((op, over_hold));
        }
        Ok((op, false))
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
        if let Some(key) = &op.idem {
            let slot = idem_slot(scope, key);
            if self.pending.get(&slot) == Some(&op.txid) {
                self.pending.remove(&slot);
                self.resolutions.remove(&op.txid);
            }
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
        let scope = op.from.or(op.to).expect("every operation names an account");
        // The idempotency record's slot, if this shard keeps it.
        let slot = op.idem.filter(|_| self.owns(scope)).map(|key| idem_slot(scope, key));
        // The scope shard reserved `op` if its record of the key was
        // pending with `op`'s txid: the record is now done.
        let mut reserved = false;
        if let Some(slot) = slot {
            let expires_ms = op.ts_ms + self.idem_ttl_ms;
            reserved = self.pending.remove(&slot) == Some(op.txid);
            self.idem.insert(slot, op.txid);
            if is_resolution(op.kind) {
                self.resolutions.insert(op.txid, slot);
            }
            self.idem_order.push_back((expires_ms, slot));
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
        if recorder(&op.txid, self.shard_count) == self.shard
            && placement.seq > self.receipts_kept_through
        {
            self.receipts.insert(op.txid, encoded, placement);
        }
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
                        from: from.to_owned(),
                        to: op.to.expect("a hold has a payee").to_owned(),
                        asset: op.asset.to_owned(),
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
        while self.idem_order.front().is_some_and(|(at, _)| *at <= now_ms) {
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
        let pending = self.pending.get(slot).map(|txid| Idem::Pending(*txid));
        pending.or_else(|| self.idem.get(slot).map(|txid| Idem::Done(*txid)))
    }

    fn forget_oldest_idem(&mut self) {
        let (expires_ms, slot) = self.idem_order.pop_front().expect("not empty");
        // One lookup: the oldest record is a cache miss of its own.
        if let Some(txid) = self.idem.remove(&slot) {
            if !self.resolutions.is_empty() {
                self.resolutions.remove(&txid);
            }
            self.changed_idem((expires_ms, slot), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ron_proto::wallet::{CanonicalRequest, hold_id};

    /// `op` as the log holds it.
    fn encoded(op: &WalletOp) -> Vec<u8> {
        let mut bytes = Vec::new();
        op.encode(&mut bytes);
        bytes
    }

    const ACCOUNTS: [&str; 3] = ["alice", "bob", "carol"];
    const TTL_MS: u64 = 60_000;

    /// The plainly correct model: one map of balances, one of holds.
    #[derive(Default)]
    struct Model {
        balances: HashMap<String, u128>,
        holds: HashMap<HoldId, (String, String, u128)>,
        nonces: HashMap<String, u64>,
        issued: u128,
        burned: u128,
    }

    /// A random step: which op, who, how much, whether the nonce is right,
    /// whether the commit goes through.
    #[derive(Clone, Debug)]
    struct Step {
        kind: usize,
        from: usize,
        to: usize,
        amount: u128,
        nonce_off: i64,
        commit: bool,
        pick_hold: usize,
        advance_ms: u64,
    }

    fn step() -> impl Strategy<Value = Step> {
        (
            0usize..7,
            0usize..3,
            0usize..3,
            0u128..40,
            prop_oneof![8 => Just(0i64), 1 => Just(1), 1 => Just(-1)],
            prop_oneof![9 => Just(true), 1 => Just(false)],
            0usize..4,
            0u64..20_000,
        )
            .prop_map(
                |(kind, from, to, amount, nonce_off, commit, pick_hold, advance_ms)| Step {
                    kind,
                    from,
                    to,
                    amount,
                    nonce_off,
                    commit,
                    pick_hold,
                    advance_ms,
                },
            )
    }

    struct Node {
        shards: Vec<Wallet>,
        seq: u64,
        now_ms: u64,
        /// Every committed op in log order, to replay into a fresh node.
        log: Vec<(WalletOp, Placement)>,
    }

    impl Node {
        fn new(count: usize) -> Node {
            Node {
                shards: (0..count).map(|i| Wallet::new(i, count, TTL_MS, 1000)).collect(),
                seq: 0,
                now_ms: 1_000_000,
                log: Vec::new(),
            }
        }

        fn owner(&self, account: &str) -> usize {
            ron_proto::routing::owner(account.as_bytes(), self.shards.len())
        }

        /// Commits: every shard with a part applies, in order.
        fn commit(&mut self, op: &WalletOp) {
            self.seq += 1;
            let placement = Placement { seq: self.seq, root: [self.seq as u8; 32] };
            for shard in parts(&op.as_ref(), self.shards.len()) {
                self.shards[shard].apply(&op.as_ref(), &encoded(op), placement);
            }
            self.log.push((op.clone(), placement));
        }

        fn totals(&self) -> HashMap<String, (u128, u128)> {
            let mut sum: HashMap<String, (u128, u128)> = HashMap::new();
            for shard in &self.shards {
                for (asset, (balances, holds)) in shard.totals() {
                    let entry = sum.entry(asset).or_default();
                    entry.0 += balances;
                    entry.1 += holds;
                }
            }
            sum
        }
    }

    /// One argument per field a request can carry.
    #[allow(clippy::too_many_arguments)]
    fn request(
        kind: OpKind,
        from: Option<&str>,
        to: Option<&str>,
        amount: u128,
        nonce: Option<u64>,
        hold: Option<HoldId>,
        key: &str,
        now_ms: u64,
    ) -> WalletOp {
        let scope = from.or(to).unwrap_or("hold");
        let txid = CanonicalRequest {
            kind,
            from,
            to,
            asset: Some("roc"),
            amount: Some(amount),
            nonce,
            hold_id: hold.as_ref(),
            timeout_s: None,
            memo: None,
            idem_owner: scope,
            idem: key,
        }
        .txid();
        let hold_id = match kind {
            OpKind::Hold => Some(hold_id(from.unwrap(), &txid)),
            _ => hold,
        };
        WalletOp {
            kind,
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            asset: "roc".into(),
            amount,
            nonce,
            hold_id,
            timeout_s: (kind == OpKind::Hold).then_some(30),
            idem: Some(key.to_owned()),
            txid,
            ts_ms: now_ms,
        }
    }

    fn run(steps: &[Step], shard_count: usize) -> Result<(), TestCaseError> {
        let mut node = Node::new(shard_count);
        let mut model = Model::default();
        // Committed requests with the scope shard and time they were answered.
        let mut answered: Vec<(WalletOp, usize, u64)> = Vec::new();
        for (n, step) in steps.iter().enumerate() {
            node.now_ms += step.advance_ms;
            let key = format!("k{n}");
            let (from, to) = (ACCOUNTS[step.from], ACCOUNTS[step.to]);
            if step.kind == 6 {
                // Time passes: holds past their timeout expire.
                for shard in 0..shard_count {
                    let now = node.now_ms;
                    for op in node.shards[shard].due_expiries(now, 16) {
                        let hold = model.holds.remove(&op.hold_id.unwrap()).unwrap();
                        *model.balances.entry(hold.0).or_default() += hold.2;
                        node.commit(&op);
                    }
                }
                continue;
            }
            // Kinds 0..6 are requested ones; 6 (expiry) was handled above.
            let kind = OpKind::ALL[step.kind];
            if from == to && matches!(kind, OpKind::Transfer | OpKind::Hold) {
                continue;
            }
            let holds: Vec<HoldId> = {
                let mut ids: Vec<HoldId> = model.holds.keys().copied().collect();
                ids.sort();
                ids
            };
            let hold = match kind {
                OpKind::Capture | OpKind::Release => match holds.get(step.pick_hold) {
                    Some(id) => Some(*id),
                    None => continue,
                },
                _ => None,
            };
            let payer = match kind {
                OpKind::Issue => None,
                OpKind::Capture | OpKind::Release => Some(model.holds[&hold.unwrap()].0.clone()),
                _ => Some(from.to_owned()),
            };
            let expected_nonce =
                payer.as_ref().map(|p| model.nonces.get(p).copied().unwrap_or(0) + 1);
            let nonce = expected_nonce.map(|n| (n as i64 + step.nonce_off).max(0) as u64);
            let amount = match kind {
                OpKind::Release => 0,
                OpKind::Capture => step.amount.min(model.holds[&hold.unwrap()].2 + 1),
                _ => step.amount.max(1),
            };
            // A capture or release names only its hold.
            let named = if hold.is_some() { None } else { payer.as_deref() };
            let request = request(
                kind,
                named,
                (kind == OpKind::Issue || kind == OpKind::Transfer || kind == OpKind::Hold)
                    .then_some(to),
                amount,
                nonce,
                hold,
                &key,
                node.now_ms,
            );
            let scope = match hold {
                Some(id) => ron_proto::routing::owner_of_route(hold_route(&id), shard_count),
                None => node.owner(scope_account(&request)),
            };
            let result = node.shards[scope].reserve(&request, node.now_ms);
            // What the model says should happen.
            let model_rejection = if nonce != expected_nonce {
                Some("nonce")
            } else {
                match kind {
                    OpKind::Transfer | OpKind::Burn | OpKind::Hold
                        if model.balances.get(from).copied().unwrap_or(0) < amount =>
                    {
                        Some("funds")
                    }
                    OpKind::Capture if amount > model.holds[&hold.unwrap()].2 => Some("limits"),
                    _ => None,
                }
            };
            match (result, model_rejection) {
                (Err(Rejection::NonceConflict { expected, got }), Some("nonce")) => {
                    prop_assert_eq!(Some(expected), expected_nonce);
                    prop_assert_eq!(Some(got), nonce);
                }
                (Err(Rejection::InsufficientFunds { .. }), Some("funds")) => {}
                (Err(Rejection::LimitsExceeded(_)), Some("limits")) => {}
                (Ok(Reserved::Commit(op)), None) => {
                    if !step.commit {
                        node.shards[scope].release(&op);
                        continue;
                    }
                    node.commit(&op);
                    if let Some(payer) = &payer {
                        model.nonces.insert(payer.clone(), nonce.unwrap());
                    }
                    match kind {
                        OpKind::Issue => {
                            model_add(&mut model, to, amount);
                            model.issued += amount;
                        }
                        OpKind::Transfer => {
                            model_sub(&mut model, from, amount);
                            model_add(&mut model, to, amount);
                        }
                        OpKind::Burn => {
                            model_sub(&mut model, from, amount);
                            model.burned += amount;
                        }
                        OpKind::Hold => {
                            model_sub(&mut model, from, amount);
                            model.holds.insert(
                                op.hold_id.unwrap(),
                                (from.to_owned(), to.to_owned(), amount),
                            );
                        }
                        OpKind::Capture | OpKind::Release => {
                            let (payer, payee, held) = model.holds.remove(&hold.unwrap()).unwrap();
                            let moved = if kind == OpKind::Release {
                                0
                            } else if amount == 0 {
                                held
                            } else {
                                amount
                            };
                            model_add(&mut model, &payee, moved);
                            model_add(&mut model, &payer, held - moved);
                        }
                        OpKind::Expire => unreachable!(),
                    }
                    // The same request again is answered with its receipt.
                    let replay = node.shards[scope].reserve(&request, node.now_ms);
                    let (logged, placement) = node.log.last().unwrap();
                    let expected = ron_proto::wallet::receipt(logged, placement);
                    prop_assert_eq!(replay, Ok(Reserved::Replay(logged.txid)));
                    answered.push((request.clone(), scope, node.now_ms));
                    let recorder = recorder(&logged.txid, shard_count);
                    prop_assert_eq!(node.shards[recorder].receipt(&logged.txid), Some(expected));
                    // The same key with another request is a conflict (a
                    // resolved hold is simply gone).
                    let other = WalletOp { txid: [0xee; 16], ..request.clone() };
                    let refusal = if hold.is_some() {
                        Rejection::UnknownHold
                    } else {
                        Rejection::IdempotencyConflict
                    };
                    prop_assert_eq!(node.shards[scope].reserve(&other, node.now_ms), Err(refusal));
                }
                (result, expected) => prop_assert!(
                    false,
                    "step {n} {kind:?}: got {result:?}, model says {expected:?}"
                ),
            }
            // Σ balances + Σ open holds = Σ issued − Σ burned, always.
            let totals = node.totals();
            let (balances, holds) = totals.get("roc").copied().unwrap_or_default();
            prop_assert_eq!(balances + holds, model.issued - model.burned);
            for account in ACCOUNTS {
                let owner = node.owner(account);
                let funds = node.shards[owner].funds(account, "roc");
                prop_assert_eq!(funds.balance, model.balances.get(account).copied().unwrap_or(0));
                prop_assert_eq!(funds.reserved, 0);
                prop_assert_eq!(
                    node.shards[owner].nonce(account),
                    model.nonces.get(account).copied().unwrap_or(0)
                );
            }
        }
        // A restart: the log replayed into fresh shards gives the same state.
        let mut fresh = Node::new(shard_count);
        for (op, placement) in &node.log {
            for shard in parts(&op.as_ref(), shard_count) {
                fresh.shards[shard].apply(&op.as_ref(), &encoded(op), *placement);
            }
        }
        for account in ACCOUNTS {
            let owner = node.owner(account);
            prop_assert_eq!(
                fresh.shards[owner].funds(account, "roc"),
                node.shards[owner].funds(account, "roc")
            );
            prop_assert_eq!(fresh.shards[owner].nonce(account), node.shards[owner].nonce(account));
        }
        prop_assert_eq!(fresh.totals(), node.totals());
        // A restart from what the views were handed: the same state, and
        // committed requests still answer with their txid.
        let mut loaded: Vec<Wallet> =
            (0..shard_count).map(|i| Wallet::new(i, shard_count, TTL_MS, 1000)).collect();
        for (shard, wallet) in node.shards.iter_mut().zip(&mut loaded) {
            let changes = shard.take_changes();
            for (key, balance) in &changes.funds {
                wallet.load_funds(key.account(), key.asset(), *balance);
            }
            for (account, nonce) in &changes.nonces {
                wallet.load_nonce(account, *nonce);
            }
            for (id, hold) in &changes.holds {
                if let Some(hold) = hold {
                    wallet.load_hold(*id, hold.clone());
                }
            }
            // As a view keeps them: each record's last change.
            let mut kept = std::collections::BTreeMap::new();
            for (key, record) in &changes.idem {
                match record {
                    Some(record) => kept.insert(*key, *record),
                    None => kept.remove(key),
                };
            }
            for ((_, slot), record) in kept {
                wallet.load_idem(slot, record);
            }
            wallet.finish_load();
            prop_assert!(shard.take_changes().is_empty());
        }
        for account in ACCOUNTS {
            let owner = node.owner(account);
            prop_assert_eq!(
                loaded[owner].funds(account, "roc").balance,
                node.shards[owner].funds(account, "roc").balance
            );
            prop_assert_eq!(loaded[owner].nonce(account), node.shards[owner].nonce(account));
        }
        // Every committed request within its key's life is a replay there
        // too, captures and releases of holds long gone included.
        for (request, scope, at) in &answered {
            if at + TTL_MS > node.now_ms {
                let again = loaded[*scope].reserve(request, node.now_ms);
                prop_assert_eq!(again, Ok(Reserved::Replay(request.txid)));
            }
        }
        let sum = |shards: &[Wallet]| -> (u128, u128) {
            shards
                .iter()
                .flat_map(|w| w.totals().into_values())
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        };
        prop_assert_eq!(sum(&loaded), sum(&node.shards));
        Ok(())
    }

    fn model_add(model: &mut Model, account: &str, amount: u128) {
        *model.balances.entry(account.to_owned()).or_default() += amount;
    }

    fn model_sub(model: &mut Model, account: &str, amount: u128) {
        let balance = model.balances.entry(account.to_owned()).or_default();
        *balance = balance.checked_sub(amount).expect("the model only debits what is there");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// The wallet against a plain model, on one shard and on three.
        #[test]
        fn the_wallet_matches_a_plain_model(steps in proptest::collection::vec(step(), 1..80)) {
            run(&steps, 1)?;
            run(&steps, 3)?;
        }
    }

    #[test]
    fn a_rejected_write_keeps_its_nonce_and_a_pending_one_is_in_flight() {
        let mut wallet = Wallet::new(0, 1, TTL_MS, 10);
        let issue = request(OpKind::Issue, None, Some("alice"), 10, None, None, "i1", 0);
        let Ok(Reserved::Commit(op)) = wallet.reserve(&issue, 0) else { panic!() };
        wallet.apply(&op.as_ref(), &encoded(&op), Placement { seq: 1, root: [1; 32] });
        let too_much = request(OpKind::Burn, Some("alice"), None, 11, Some(1), None, "b1", 0);
        assert!(matches!(
            wallet.reserve(&too_much, 0),
            Err(Rejection::InsufficientFunds { available: 10, needed: 11 })
        ));
        let burn = request(OpKind::Burn, Some("alice"), None, 4, Some(1), None, "b2", 0);
        let Ok(Reserved::Commit(pending)) = wallet.reserve(&burn, 0) else { panic!() };
        // The same request while it commits; the same nonce in another one.
        assert_eq!(wallet.reserve(&burn, 0), Err(Rejection::InFlight));
        let rival = request(OpKind::Burn, Some("alice"), None, 1, Some(1), None, "b3", 0);
        assert_eq!(
            wallet.reserve(&rival, 0),
            Err(Rejection::NonceConflict { expected: 2, got: 1 })
        );
        wallet.release(&pending);
        assert_eq!(wallet.funds("alice", "roc"), Funds { balance: 10, reserved: 0 });
        assert!(matches!(wallet.reserve(&rival, 0), Ok(Reserved::Commit(_))));
    }

    /// Two batches reserve nonces of one payer: it stays unsettled until
    /// both are over, and only the last settlement says so.
    #[test]
    fn a_payer_is_unsettled_until_every_batch_with_its_nonces_is_over() {
        let mut wallet = Wallet::new(0, 1, TTL_MS, 10);
        assert!(!wallet.is_unsettled("alice"));
        assert!(!wallet.settle_payer("alice"), "nothing to settle");
        wallet.hold_unsettled("alice");
        wallet.hold_unsettled("alice");
        assert!(wallet.is_unsettled("alice") && !wallet.is_unsettled("bob"));
        assert!(!wallet.settle_payer("alice"));
        assert!(wallet.is_unsettled("alice"));
        assert!(wallet.settle_payer("alice"));
        assert!(!wallet.is_unsettled("alice"));
        assert!(!wallet.settle_payer("alice"), "settled once per nonce");
    }

    /// Three assets on one account: each balance is its own (the first
    /// kept in place, the others after it), and a view's changes and a
    /// reload name each by its own asset.
    #[test]
    fn an_account_keeps_each_asset_apart() {
        let mut wallet = Wallet::new(0, 1, TTL_MS, 10);
        let mut seq = 0;
        let mut commit = |wallet: &mut Wallet, op: WalletOp| {
            let Ok(Reserved::Commit(op)) = wallet.reserve(&op, 0) else { panic!("{op:?}") };
            seq += 1;
            wallet.apply(&op.as_ref(), &encoded(&op), Placement { seq, root: [0; 32] });
        };
        for (asset, amount) in [("roc", 5), ("gem", 7), ("ore", 9)] {
            let key = format!("i-{asset}");
            let issue = request(OpKind::Issue, None, Some("alice"), amount, None, None, &key, 0);
            commit(&mut wallet, WalletOp { asset: asset.into(), ..issue });
        }
        let pay = request(OpKind::Transfer, Some("alice"), Some("bob"), 4, Some(1), None, "t1", 0);
        commit(&mut wallet, WalletOp { asset: "ore".into(), ..pay });
        let over = request(OpKind::Transfer, Some("alice"), Some("bob"), 6, Some(2), None, "t2", 0);
        assert_eq!(
            wallet.reserve(&WalletOp { asset: "roc".into(), ..over }, 0),
            Err(Rejection::InsufficientFunds { available: 5, needed: 6 })
        );
        let balances =
            [("alice", "roc", 5), ("alice", "gem", 7), ("alice", "ore", 5), ("bob", "ore", 4)];
        for (account, asset, balance) in balances {
            assert_eq!(wallet.funds(account, asset), Funds { balance, reserved: 0 });
        }
        assert_eq!(wallet.funds("bob", "roc"), Funds::default());
        assert_eq!(wallet.funds("alice", "none"), Funds::default());
        let mut changed: Vec<(String, String, u128)> = wallet
            .take_changes()
            .funds
            .iter()
            .map(|(key, balance)| (key.account().to_owned(), key.asset().to_owned(), *balance))
            .collect();
        changed.sort();
        let mut expected: Vec<_> =
            balances.iter().map(|(a, s, b)| (a.to_string(), s.to_string(), *b)).collect();
        expected.sort();
        assert_eq!(changed, expected);
        // Loaded into a fresh wallet, which sees the assets in another order.
        let mut loaded = Wallet::new(0, 1, TTL_MS, 10);
        for (account, asset, balance) in changed.iter().rev() {
            loaded.load_funds(account, asset, *balance);
        }
        for (account, asset, balance) in balances {
            assert_eq!(loaded.funds(account, asset).balance, balance);
        }
        assert_eq!(loaded.totals(), wallet.totals());
    }

    #[test]
    fn receipts_are_handed_to_the_view_once_and_skipped_when_it_has_them() {
        let mut wallet = Wallet::new(0, 1, TTL_MS, 10);
        let issue = request(OpKind::Issue, None, Some("alice"), 10, None, None, "i1", 0);
        let Ok(Reserved::Commit(op)) = wallet.reserve(&issue, 0) else { panic!() };
        let placement = Placement { seq: 5, root: [9; 32] };
        wallet.apply(&op.as_ref(), &encoded(&op), placement);
        let expected = ron_proto::wallet::receipt(&op, &placement);
        let taken: Vec<Receipt> = wallet.take_new_receipts(5).collect();
        assert_eq!(taken.len(), 1);
        let stored = WalletOp::decode(taken[0].op).unwrap();
        assert_eq!((taken[0].txid, taken[0].placement), (op.txid, placement));
        assert_eq!(ron_proto::wallet::receipt(&stored, &taken[0].placement), expected);
        assert_eq!(wallet.take_new_receipts(5).count(), 0);
        // Handed to a write that is not done: still answered from here.
        assert_eq!(wallet.receipt(&op.txid), Some(expected.clone()));
        wallet.forget_receipts_through(4);
        assert_eq!(wallet.receipt(&op.txid), Some(expected));
        wallet.forget_receipts_through(5);
        assert_eq!(wallet.receipt(&op.txid), None);
        assert_eq!(wallet.receipts_len(), 0);
        // Replayed at start with the view holding everything up to seq 5.
        let mut restarted = Wallet::new(0, 1, TTL_MS, 10);
        restarted.set_receipts_kept_through(5);
        restarted.apply(&op.as_ref(), &encoded(&op), placement);
        assert_eq!(restarted.receipts_len(), 0);
        assert_eq!(restarted.funds("alice", "roc").balance, 10);
    }

    #[test]
    fn a_view_takes_each_record_made_and_forgotten_and_a_wallet_without_one_keeps_none() {
        let commit = |wallet: &mut Wallet, key: &str, seq: u64| {
            let issue = request(OpKind::Issue, None, Some("alice"), 1, None, None, key, 7);
            let Ok(Reserved::Commit(op)) = wallet.reserve(&issue, 7) else { panic!() };
            wallet.apply(&op.as_ref(), &encoded(&op), Placement { seq, root: [0; 32] });
            let record = IdemRecord { txid: op.txid, expires_ms: 7 + TTL_MS, resolution: false };
            ((7 + TTL_MS, idem_slot("alice", key)), record)
        };
        // A bound of one record: the second write forgets the first. The
        // changes come in the order made, by (expiry, slot).
        let mut wallet = Wallet::new(0, 1, TTL_MS, 1);
        let (first, first_record) = commit(&mut wallet, "k1", 1);
        let (second, second_record) = commit(&mut wallet, "k2", 2);
        assert_eq!(
            wallet.take_changes().idem,
            [(first, Some(first_record)), (second, Some(second_record)), (first, None)]
        );
        assert!(wallet.take_changes().is_empty());

        let mut amnesic = Wallet::new(0, 1, TTL_MS, 1).without_view();
        commit(&mut amnesic, "k1", 1);
        commit(&mut amnesic, "k2", 2);
        let changes = amnesic.take_changes();
        assert!(changes.idem.is_empty() && changes.holds.is_empty());
        assert_eq!(amnesic.funds("alice", "roc").balance, 2);
    }

    #[test]
    fn idempotency_records_expire_and_are_bounded() {
        let mut wallet = Wallet::new(0, 1, 1000, 2);
        for (n, at) in [(1u64, 0u64), (2, 10), (3, 20)] {
            let issue =
                request(OpKind::Issue, None, Some("alice"), 1, None, None, &format!("k{n}"), at);
            let Ok(Reserved::Commit(op)) = wallet.reserve(&issue, at) else { panic!() };
            wallet.apply(&op.as_ref(), &encoded(&op), Placement { seq: n, root: [0; 32] });
        }
        assert_eq!(wallet.idem_len(), 2);
        // k1 fell out (bound): the same request is new again.
        let again = request(OpKind::Issue, None, Some("alice"), 1, None, None, "k1", 30);
        assert!(matches!(wallet.reserve(&again, 30), Ok(Reserved::Commit(_))));
        // k2 expires at 1010.
        let k2 = request(OpKind::Issue, None, Some("alice"), 1, None, None, "k2", 10);
        assert!(matches!(wallet.reserve(&k2, 1009), Ok(Reserved::Replay(_))));
        assert!(matches!(wallet.reserve(&k2, 1010), Ok(Reserved::Commit(_))));
    }
}
