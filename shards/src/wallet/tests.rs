//! The wallet state machine's tests, its model proptest among them.

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
        .prop_map(|(kind, from, to, amount, nonce_off, commit, pick_hold, advance_ms)| Step {
            kind,
            from,
            to,
            amount,
            nonce_off,
            commit,
            pick_hold,
            advance_ms,
        })
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
        from: from.map(Into::into),
        to: to.map(Into::into),
        asset: "roc".into(),
        amount,
        nonce,
        hold_id,
        timeout_s: (kind == OpKind::Hold).then_some(30),
        idem: Some(key.into()),
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
        let expected_nonce = payer.as_ref().map(|p| model.nonces.get(p).copied().unwrap_or(0) + 1);
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
                        model
                            .holds
                            .insert(op.hold_id.unwrap(), (from.to_owned(), to.to_owned(), amount));
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
            (result, expected) => {
                prop_assert!(false, "step {n} {kind:?}: got {result:?}, model says {expected:?}")
            }
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
    assert_eq!(wallet.reserve(&rival, 0), Err(Rejection::NonceConflict { expected: 2, got: 1 }));
    wallet.release(&pending);
    assert_eq!(wallet.funds("alice", "roc"), Funds { balance: 10, reserved: 0 });
    assert!(matches!(wallet.reserve(&rival, 0), Ok(Reserved::Commit(_))));
}

/// A batch's writes reserved together (`reserve_batch`) and applied
/// together (`apply_all`) come to what each one alone comes to, refusals,
/// the records the bound forgets, the payers left unsettled and the
/// changes for the view (their lists given back, `recycle`) included.
#[test]
fn a_batch_reserves_and_applies_as_its_writes_one_by_one() {
    let names: Vec<String> = (0..12).map(|i| format!("acct:{i}")).collect();
    let (mut together, mut alone) = (Wallet::new(0, 1, TTL_MS, 40), Wallet::new(0, 1, TTL_MS, 40));
    // Applies `ops` from seq `first`, together or one by one.
    fn commit(wallet: &mut Wallet, ops: &[WalletOp], first: u64, all: bool) {
        let bytes: Vec<Vec<u8>> = ops.iter().map(encoded).collect();
        let committed: Vec<_> = (ops.iter().zip(&bytes).enumerate())
            .map(|(i, (op, bytes))| {
                (op.as_ref(), bytes.as_slice(), Placement { seq: first + i as u64, root: [0; 32] })
            })
            .collect();
        if all {
            wallet.apply_all(&committed);
        } else {
            for (op, bytes, placement) in &committed {
                wallet.apply(op, bytes, *placement);
            }
        }
    }
    let mut seq = 1;
    let issues: Vec<WalletOp> = names
        .iter()
        .map(|name| {
            request(OpKind::Issue, None, Some(name), 5, None, None, &format!("i-{name}"), 0)
        })
        .collect();
    for (wallet, all) in [(&mut together, true), (&mut alone, false)] {
        let ops: Vec<WalletOp> = issues
            .iter()
            .map(|op| match wallet.reserve(op, 0) {
                Ok(Reserved::Commit(op)) => op,
                other => panic!("{other:?}"),
            })
            .collect();
        commit(wallet, &ops, seq, all);
    }
    seq += 100;
    for round in 0..4u64 {
        // Each payer pays twice (nonces in order), one pays too much, one
        // key is used twice in the batch and one nonce is skipped.
        let mut batch = Vec::new();
        for (i, payer) in names.iter().enumerate() {
            let to = &names[(i + 1) % names.len()];
            for k in 1..=2 {
                let nonce = 2 * round + k + u64::from(i == 3 && k == 2);
                let amount = if i == 5 && k == 1 { 1_000 } else { 1 };
                let key = if i == 7 && k == 2 {
                    format!("k-{round}-{i}-1")
                } else {
                    format!("k-{round}-{i}-{k}")
                };
                batch.push(request(
                    OpKind::Transfer,
                    Some(payer),
                    Some(to),
                    amount,
                    Some(nonce),
                    None,
                    &key,
                    round,
                ));
            }
        }
        let mut reserved = batch.clone();
        let batched = together.reserve_batch(&mut reserved, round);
        let one_by_one: Vec<_> = batch
            .iter()
            .map(|op| match alone.nonce_account(op) {
                Some(payer) if alone.is_unsettled(payer) => Err(Rejection::PayerUnsettled),
                _ => alone.reserve(op, round),
            })
            .collect();
        for answer in &one_by_one {
            if let Ok(Reserved::Commit(op)) = answer {
                alone.hold_unsettled(scope_account(op));
            }
        }
        let batched: Vec<_> = (batched.into_iter().zip(reserved))
            .map(|(answer, op)| match answer? {
                Reservation::Commit => Ok(Reserved::Commit(op)),
                Reservation::Replay(txid) => Ok(Reserved::Replay(txid)),
            })
            .collect();
        assert_eq!(batched, one_by_one, "round {round}");
        assert!(batched.iter().any(Result::is_err) && batched.iter().any(Result::is_ok));
        let ops: Vec<WalletOp> = batched
            .into_iter()
            .filter_map(|answer| match answer {
                Ok(Reserved::Commit(op)) => Some(op),
                _ => None,
            })
            .collect();
        for name in &names {
            assert_eq!(together.is_unsettled(name), alone.is_unsettled(name), "{name}");
        }
        commit(&mut together, &ops, seq, true);
        commit(&mut alone, &ops, seq, false);
        for wallet in [&mut together, &mut alone] {
            for op in &ops {
                wallet.settle_payer(scope_account(op));
            }
        }
        // A view write a round: one wallet's lists given back emptied
        // for the next, the other's dropped.
        let changes = together.take_changes();
        assert_eq!(changes, alone.take_changes(), "round {round}");
        assert!(!changes.idem.is_empty() && !changes.funds.is_empty());
        together.recycle(changes);
        seq += 100;
    }
    for name in &names {
        assert_eq!(together.funds(name, "roc"), alone.funds(name, "roc"), "{name}");
        assert_eq!(together.nonce(name), alone.nonce(name), "{name}");
        assert!(!together.is_unsettled(name));
    }
    assert_eq!(together.idem_len(), 40, "the bound forgot the oldest");
    assert_eq!(together.take_changes(), alone.take_changes());
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

#[test]
fn a_record_replayed_over_an_expired_one_from_the_view_outlives_it() {
    // The view kept the key's record of an earlier request, expired but
    // not yet forgotten there; the log's tail holds a later request with
    // the same key, made after the first expired.
    let mut wallet = Wallet::new(0, 1, 1000, 10);
    let first = request(OpKind::Issue, None, Some("alice"), 1, None, None, "k", 0);
    let slot = idem_slot("alice", "k");
    wallet.load_idem(slot, IdemRecord { txid: first.txid, expires_ms: 1000, resolution: false });
    wallet.finish_load();
    let later = request(OpKind::Issue, None, Some("alice"), 2, None, None, "k", 1500);
    wallet.apply(&later.as_ref(), &encoded(&later), Placement { seq: 9, root: [0; 32] });
    // The first record's expiry forgets it, not the later one.
    assert_eq!(wallet.reserve(&later, 1600), Ok(Reserved::Replay(later.txid)));
    assert_eq!(wallet.reserve(&first, 1600), Err(Rejection::IdempotencyConflict));
    let record = IdemRecord { txid: later.txid, expires_ms: 2500, resolution: false };
    assert_eq!(wallet.take_changes().idem, [((2500, slot), Some(record)), ((1000, slot), None)]);
    // And the later one expires in its turn.
    assert!(matches!(wallet.reserve(&later, 2500), Ok(Reserved::Commit(_))));
}

#[test]
fn a_capture_whose_record_is_forgotten_is_new_again() {
    // A bound of one record: each write forgets the one before.
    let mut wallet = Wallet::new(0, 1, TTL_MS, 1);
    let mut seq = 0;
    let mut commit = |wallet: &mut Wallet, request: &WalletOp| {
        let Ok(Reserved::Commit(op)) = wallet.reserve(request, 7) else { panic!("{request:?}") };
        seq += 1;
        wallet.apply(&op.as_ref(), &encoded(&op), Placement { seq, root: [0; 32] });
        op
    };
    commit(&mut wallet, &request(OpKind::Issue, None, Some("alice"), 10, None, None, "i", 7));
    let hold = commit(
        &mut wallet,
        &request(OpKind::Hold, Some("alice"), Some("bob"), 5, Some(1), None, "h", 7),
    );
    let capture = request(OpKind::Capture, None, None, 5, Some(2), hold.hold_id, "c", 7);
    commit(&mut wallet, &capture);
    // While its record is kept, the capture again is a replay.
    assert!(matches!(wallet.reserve(&capture, 7), Ok(Reserved::Replay(_))));
    commit(&mut wallet, &request(OpKind::Issue, None, Some("carol"), 1, None, None, "x", 7));
    // Forgotten: the capture is new, and its hold is gone.
    assert!(matches!(wallet.reserve(&capture, 7), Err(Rejection::UnknownHold)));
    assert_eq!(wallet.funds("bob", "roc").balance, 5);
}
