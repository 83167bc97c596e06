//! The wallet routes (SPEC §5): paths and fields of the original
//! svc-wallet, on the shard state machine of `ron_shards::wallet`.
//!
//! A write is validated here (stateless rules, the token's caveats), then
//! reserved on its scope shard (the owner of `from`, or of `to` for an
//! issue; for a capture or release, the shard its hold id routes to), then
//! committed to the log as one wallet operation, and applied by every shard
//! with a part before the committer answers. The receipt leaves only then.

use crate::access::{self, Facts};
use crate::committer::{LedgerAnswer, LedgerCall, Owned};
use crate::ledger::Amount;
use crate::mesh::{MeshError, ShardAnswer, ShardCall};
use crate::reply::{Handled, Reply};
use crate::routes::{Params, Request};
use crate::shard::Shard;
use ron_proto::ErrorCode;
use ron_proto::token::scope;
use ron_proto::wallet::{
    self, CanonicalRequest, HoldId, OpKind, Placement, WalletOp, hold_route, valid_account,
    valid_idempotency_key, valid_memo,
};
use ron_shards::wallet::{Funds, Rejection, Reserved, parts, recorder};
use serde::Deserialize;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The longest a hold may wait for its capture or release.
pub const HOLD_TIMEOUT_S_MAX: u32 = 365 * 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    to: String,
    asset: String,
    amount_minor: Amount,
    memo: Option<String>,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    from: String,
    to: String,
    asset: String,
    amount_minor: Amount,
    nonce: u64,
    memo: Option<String>,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BurnBody {
    from: String,
    asset: String,
    amount_minor: Amount,
    nonce: u64,
    memo: Option<String>,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldBody {
    from: String,
    to: String,
    asset: String,
    amount_minor: Amount,
    nonce: u64,
    timeout_s: Option<u32>,
    memo: Option<String>,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptureBody {
    hold_id: String,
    amount_minor: Option<Amount>,
    nonce: u64,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    hold_id: String,
    nonce: u64,
    idempotency_key: Option<String>,
}

fn bad(message: impl Into<String>) -> Reply {
    Reply::error(ErrorCode::BadRequest, message.into())
}

fn account(name: &str, value: &str) -> Result<(), Reply> {
    if valid_account(value) {
        Ok(())
    } else {
        Err(bad(format!("{name} must be 1..=256 bytes of [A-Za-z0-9:/_-]")))
    }
}

fn asset(shard: &Shard, value: &str) -> Result<(), Reply> {
    if shard.config.wallet.assets.iter().any(|a| a == value) {
        Ok(())
    } else {
        Err(bad(format!("unknown asset {value:?}")))
    }
}

fn amount(shard: &Shard, value: Amount) -> Result<u128, Reply> {
    let amount = value.value().map_err(|why| bad(format!("amount_minor: {why}")))?;
    let max = shard.config.wallet.amount_per_op_max.parse::<u128>().expect("checked at start");
    if amount > max {
        return Err(Reply::error(
            ErrorCode::LimitsExceeded,
            format!("amount_minor {amount} is over the limit {max}"),
        ));
    }
    Ok(amount)
}

fn memo(value: Option<&str>) -> Result<(), Reply> {
    match value {
        Some(memo) if !valid_memo(memo) => {
            Err(bad("memo must be at most 256 bytes without control characters"))
        }
        _ => Ok(()),
    }
}

fn nonce(value: u64) -> Result<u64, Reply> {
    if value == 0 { Err(bad("nonce must be at least 1")) } else { Ok(value) }
}

/// The idempotency key: the header (`Idempotency-Key` or
/// `X-Idempotency-Key`), else the body's `idempotency_key`. Required.
fn idempotency_key(request: &Request<'_>, body: Option<String>) -> Result<String, Reply> {
    let header = request.head.idempotency_key.map(|span| span.of(request.raw));
    let key = match header {
        Some(bytes) => std::str::from_utf8(bytes).ok().map(str::to_owned),
        None => body,
    };
    match key {
        Some(key) if valid_idempotency_key(&key) => Ok(key),
        Some(_) => Err(bad("the idempotency key must be 1..=64 bytes of [A-Za-z0-9-_:.]")),
        None => Err(bad("an Idempotency-Key header (or idempotency_key) is required")),
    }
}

/// A validated write, ready for its scope shard.
struct Write {
    op: WalletOp,
    scope_shard: usize,
    route_scope: &'static str,
}

impl Write {
    fn new(shard: &Shard, canonical: CanonicalRequest<'_>, route_scope: &'static str) -> Write {
        let txid = canonical.txid();
        let hold_id = match canonical.kind {
            OpKind::Hold => {
                Some(wallet::hold_id(canonical.from.expect("a hold has a payer"), &txid))
            }
            _ => canonical.hold_id.copied(),
        };
        let scope_shard = match (canonical.kind, hold_id) {
            (OpKind::Capture | OpKind::Release, Some(id)) => {
                ron_proto::routing::owner_of_route(hold_route(&id), shard.count)
            }
            _ => ron_proto::routing::owner(canonical.idem_owner.as_bytes(), shard.count),
        };
        let op = WalletOp {
            kind: canonical.kind,
            from: canonical.from.map(str::to_owned),
            to: canonical.to.map(str::to_owned),
            asset: canonical.asset.unwrap_or_default().to_owned(),
            amount: canonical.amount.unwrap_or(0),
            nonce: canonical.nonce,
            hold_id,
            timeout_s: canonical.timeout_s,
            idem: Some(canonical.idem.to_owned()),
            txid,
            ts_ms: Shard::unix_now_ms(),
        };
        Write { op, scope_shard, route_scope }
    }
}

/// The account a write acts for, for the token's caveats.
fn acting_account(op: &WalletOp) -> Option<&str> {
    match op.kind {
        OpKind::Issue => op.to.as_deref(),
        _ => op.from.as_deref(),
    }
}

fn authorize(
    shard: &Shard,
    request: &Request<'_>,
    route_scope: &str,
    op: &WalletOp,
) -> Result<(), Reply> {
    let facts = Facts {
        account: acting_account(op),
        asset: Some(op.asset.as_str()),
        amount: Some(op.amount),
    };
    access::authorize(shard, request, request.path(), Some(route_scope), facts)
}

fn rejection(rejection: Rejection) -> Reply {
    match rejection {
        Rejection::InsufficientFunds { available, needed } => Reply::error(
            ErrorCode::InsufficientFunds,
            format!("insufficient funds: {available} available, {needed} needed"),
        ),
        Rejection::NonceConflict { expected, got } => Reply::error(
            ErrorCode::NonceConflict,
            format!("nonce conflict: expected {expected}, got {got}"),
        ),
        Rejection::IdempotencyConflict => Reply::error(
            ErrorCode::IdempotencyConflict,
            "the idempotency key was used for a different request",
        ),
        Rejection::InFlight => {
            let mut reply = Reply::error(
                ErrorCode::Busy,
                "the same request is being committed; retry for its receipt",
            );
            reply.retry_after_s = Some(1);
            reply
        }
        Rejection::UnknownHold => Reply::error(ErrorCode::NotFound, "no open hold with that id"),
        Rejection::HoldResolved => {
            Reply::error(ErrorCode::Conflict, "the hold is already being resolved")
        }
        Rejection::LimitsExceeded(why) => Reply::error(ErrorCode::LimitsExceeded, why),
    }
}

/// Validates the caveats (for captures and releases, once the hold is
/// known), reserves on the scope shard, commits, and answers the receipt.
fn submit(shard: &Rc<Shard>, request: &Request<'_>, write: Write) -> Handled {
    if shard.node.ledger_safe_mode.load(Ordering::Acquire) {
        return Handled::Now(Reply::error(ErrorCode::Degraded, "the ledger is in safe mode"));
    }
    let names_hold_only = matches!(write.op.kind, OpKind::Capture | OpKind::Release);
    if !names_hold_only {
        if let Err(reply) = authorize(shard, request, write.route_scope, &write.op) {
            return Handled::Now(reply);
        }
    }
    // A capture's or release's caveats are checked against the hold once
    // its shard has reserved it (and the reservation released if refused).
    let hold_check = names_hold_only.then(|| {
        (
            request.head.authorization.map(|span| span.of(request.raw).to_vec()),
            request.head.method.as_str(),
            request.path().to_owned(),
            request.socket,
        )
    });
    let shard = shard.clone();
    let Write { op, scope_shard, route_scope } = write;
    Handled::Later(Box::pin(async move {
        let call = ShardCall::WalletReserve { op: Box::new(op), now_ms: Shard::unix_now_ms() };
        let op = match shard.mesh.call(&shard, scope_shard, call).await {
            Ok(ShardAnswer::WalletReserved(Ok(Reserved::Replay(txid)))) => {
                shard.metrics.borrow_mut().wallet_idem_replays += 1;
                return match committed(&shard, txid).await {
                    Ok((op, placement)) => Reply::json_owned(200, wallet::receipt(&op, &placement)),
                    Err(reply) => reply,
                };
            }
            Ok(ShardAnswer::WalletReserved(Ok(Reserved::Commit(op)))) => op,
            Ok(ShardAnswer::WalletReserved(Err(refused))) => return rejection(refused),
            Ok(other) => panic!("a wallet reservation answered with {other:?}"),
            Err(error) => return crate::ops::mesh_failure(error),
        };
        if let Some((authorization, method, path, socket)) = hold_check {
            let presented = access::Presented {
                authorization: authorization.as_deref(),
                method,
                path: &path,
                socket,
            };
            let facts = Facts {
                account: acting_account(&op),
                asset: Some(op.asset.as_str()),
                amount: Some(op.amount),
            };
            if let Err(reply) = presented.authorize(&shard, Some(route_scope), facts) {
                release(&shard, scope_shard, &op).await;
                return reply;
            }
        }
        commit(&shard, op, scope_shard).await
    }))
}

async fn commit(shard: &Rc<Shard>, op: WalletOp, scope_shard: usize) -> Reply {
    let owned = parts(&op, shard.count)
        .into_iter()
        .map(|part| (part, Owned { wallet: vec![op.clone()], ..Owned::default() }))
        .collect();
    let call = LedgerCall::append_item(|out| op.encode(out), owned);
    match shard.ledger.call(call).await {
        Ok(LedgerAnswer::Appended { seq_start, root, .. }) => {
            let placement = Placement { seq: seq_start, root };
            Reply::json_owned(200, wallet::receipt(&op, &placement))
        }
        Ok(LedgerAnswer::Degraded { reason }) => {
            release(shard, scope_shard, &op).await;
            Reply::error(ErrorCode::Degraded, format!("the ledger is in safe mode: {reason}"))
        }
        Ok(other) => panic!("a wallet append answered with {other:?}"),
        Err(error) => {
            release(shard, scope_shard, &op).await;
            crate::ledger::link_failure(error)
        }
    }
}

/// Gives back a reservation; a busy shard is asked again, a bounded
/// number of times.
async fn release(shard: &Rc<Shard>, scope_shard: usize, op: &WalletOp) {
    for _ in 0..RELEASE_ATTEMPTS_MAX {
        let call = ShardCall::WalletRelease { op: Box::new(op.clone()) };
        match shard.mesh.call(shard, scope_shard, call).await {
            Ok(ShardAnswer::Done) => return,
            Ok(other) => panic!("a wallet release answered with {other:?}"),
            Err(MeshError::Busy) => glommio::timer::sleep(RELEASE_RETRY).await,
            Err(error) => {
                tracing::error!(scope_shard, ?error, "a wallet reservation was not released");
                return;
            }
        }
    }
    tracing::error!(scope_shard, "a wallet reservation was not released: the shard stayed busy");
}

const RELEASE_RETRY: Duration = Duration::from_micros(200);

/// How often a shard looks for holds past their timeout.
const EXPIRY_TICK: Duration = Duration::from_millis(100);
/// Expiries one shard commits per tick, at most.
const EXPIRIES_PER_TICK_MAX: usize = 256;

/// Commits the expiry of every hold this shard owns once its timeout has
/// passed, whether or not anyone calls: each is an operation in the log
/// like any write (SPEC §5), and a restart that finds a hold past its
/// timeout expires it at the first tick.
pub async fn expire_holds(shard: Rc<Shard>) {
    while !shard.ledger.is_stopped() {
        glommio::timer::sleep(EXPIRY_TICK).await;
        if shard.node.ledger_safe_mode.load(Ordering::Acquire) {
            continue;
        }
        let due =
            shard.wallet.borrow_mut().due_expiries(Shard::unix_now_ms(), EXPIRIES_PER_TICK_MAX);
        for op in due {
            let reply = commit(&shard, op, shard.id).await;
            if reply.status != 200 {
                tracing::warn!(
                    shard = shard.id,
                    status = reply.status,
                    "a hold expiry did not commit"
                );
            }
        }
    }
}
const RELEASE_ATTEMPTS_MAX: u32 = 10_000;

macro_rules! body {
    ($request:expr, $ty:ty) => {
        match $request.json::<$ty>() {
            Ok(body) => body,
            Err(reply) => return Handled::Now(reply),
        }
    };
}

macro_rules! check {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(reply) => return Handled::Now(reply),
        }
    };
}

/// What the four payment routes carry, whichever body it came from.
struct Payment {
    kind: OpKind,
    from: Option<String>,
    to: Option<String>,
    asset: String,
    amount_minor: Amount,
    nonce: Option<u64>,
    timeout_s: Option<u32>,
    memo: Option<String>,
    idempotency_key: Option<String>,
}

/// Validates a payment (issue, transfer, burn, hold) and submits it.
fn payment(
    shard: &Rc<Shard>,
    request: &Request<'_>,
    payment: Payment,
    route_scope: &'static str,
) -> Handled {
    for (name, value) in [("from", &payment.from), ("to", &payment.to)] {
        if let Some(value) = value {
            check!(account(name, value));
        }
    }
    if payment.from.is_some() && payment.from == payment.to {
        return Handled::Now(bad("from and to must differ"));
    }
    check!(asset(shard, &payment.asset));
    let amount = check!(amount(shard, payment.amount_minor));
    let nonce = match payment.nonce {
        Some(value) => Some(check!(nonce(value))),
        None => None,
    };
    check!(memo(payment.memo.as_deref()));
    if payment.timeout_s.is_some_and(|t| t == 0 || t > HOLD_TIMEOUT_S_MAX) {
        return Handled::Now(Reply::error(
            ErrorCode::LimitsExceeded,
            format!("timeout_s must be 1..={HOLD_TIMEOUT_S_MAX}"),
        ));
    }
    let key = check!(idempotency_key(request, payment.idempotency_key));
    let payer =
        payment.from.as_deref().or(payment.to.as_deref()).expect("a payment names an account");
    let canonical = CanonicalRequest {
        kind: payment.kind,
        from: payment.from.as_deref(),
        to: payment.to.as_deref(),
        asset: Some(&payment.asset),
        amount: Some(amount),
        nonce,
        hold_id: None,
        timeout_s: payment.timeout_s,
        memo: payment.memo.as_deref(),
        idem_owner: payer,
        idem: &key,
    };
    submit(shard, request, Write::new(shard, canonical, route_scope))
}

/// `POST /v1/issue`.
pub fn issue(shard: &Rc<Shard>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let b = body!(request, IssueBody);
    let payment_of = Payment {
        kind: OpKind::Issue,
        from: None,
        to: Some(b.to),
        asset: b.asset,
        amount_minor: b.amount_minor,
        nonce: None,
        timeout_s: None,
        memo: b.memo,
        idempotency_key: b.idempotency_key,
    };
    payment(shard, request, payment_of, scope::WALLET_ISSUE)
}

/// `POST /v1/transfer`.
pub fn transfer(shard: &Rc<Shard>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let b = body!(request, TransferBody);
    let payment_of = Payment {
        kind: OpKind::Transfer,
        from: Some(b.from),
        to: Some(b.to),
        asset: b.asset,
        amount_minor: b.amount_minor,
        nonce: Some(b.nonce),
        timeout_s: None,
        memo: b.memo,
        idempotency_key: b.idempotency_key,
    };
    payment(shard, request, payment_of, scope::WALLET_TRANSFER)
}

/// `POST /v1/burn`.
pub fn burn(shard: &Rc<Shard>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let b = body!(request, BurnBody);
    let payment_of = Payment {
        kind: OpKind::Burn,
        from: Some(b.from),
        to: None,
        asset: b.asset,
        amount_minor: b.amount_minor,
        nonce: Some(b.nonce),
        timeout_s: None,
        memo: b.memo,
        idempotency_key: b.idempotency_key,
    };
    payment(shard, request, payment_of, scope::WALLET_BURN)
}

/// `POST /v1/hold`.
pub fn hold(shard: &Rc<Shard>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let b = body!(request, HoldBody);
    let payment_of = Payment {
        kind: OpKind::Hold,
        from: Some(b.from),
        to: Some(b.to),
        asset: b.asset,
        amount_minor: b.amount_minor,
        nonce: Some(b.nonce),
        timeout_s: b.timeout_s,
        memo: b.memo,
        idempotency_key: b.idempotency_key,
    };
    payment(shard, request, payment_of, scope::WALLET_TRANSFER)
}

fn hold_id(text: &str) -> Result<HoldId, Reply> {
    wallet::parse_hold_id(text).ok_or_else(|| bad("hold_id must be h_ and 32 hex digits"))
}

/// Validates a capture or release, which names only its hold, and submits
/// it.
fn resolution(
    shard: &Rc<Shard>,
    request: &Request<'_>,
    kind: OpKind,
    hold_text: &str,
    amount_minor: Option<Amount>,
    nonce_value: u64,
    body_key: Option<String>,
) -> Handled {
    let id = check!(hold_id(hold_text));
    let amount = match amount_minor {
        Some(value) => Some(check!(amount(shard, value))),
        None => None,
    };
    let nonce = check!(nonce(nonce_value));
    let key = check!(idempotency_key(request, body_key));
    // The key's scope account is the hold's payer, which only its shard
    // knows; the hold id stands for it in the txid.
    let owner = format!("hold:{hold_text}");
    let canonical = CanonicalRequest {
        kind,
        from: None,
        to: None,
        asset: None,
        amount,
        nonce: Some(nonce),
        hold_id: Some(&id),
        timeout_s: None,
        memo: None,
        idem_owner: &owner,
        idem: &key,
    };
    submit(shard, request, Write::new(shard, canonical, scope::WALLET_TRANSFER))
}

/// `POST /v1/capture`: all of the hold, or `amount_minor` of it (the rest
/// returns to `from`).
pub fn capture(shard: &Rc<Shard>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let b = body!(request, CaptureBody);
    resolution(
        shard,
        request,
        OpKind::Capture,
        &b.hold_id,
        b.amount_minor,
        b.nonce,
        b.idempotency_key,
    )
}

/// `POST /v1/release`.
pub fn release_hold(shard: &Rc<Shard>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let b = body!(request, ReleaseBody);
    resolution(shard, request, OpKind::Release, &b.hold_id, None, b.nonce, b.idempotency_key)
}

/// `{account, asset, amount_minor, as_of_seq}`. Accounts and assets were
/// validated (no character in them needs escaping).
fn write_balance(out: &mut Vec<u8>, account: &str, asset: &str, funds: Funds, as_of_seq: u64) {
    let mut number = itoa::Buffer::new();
    out.extend_from_slice(b"{\"account\":\"");
    out.extend_from_slice(account.as_bytes());
    out.extend_from_slice(b"\",\"asset\":\"");
    out.extend_from_slice(asset.as_bytes());
    out.extend_from_slice(b"\",\"amount_minor\":\"");
    out.extend_from_slice(number.format(funds.balance).as_bytes());
    out.extend_from_slice(b"\",\"as_of_seq\":");
    out.extend_from_slice(number.format(as_of_seq).as_bytes());
    out.push(b'}');
}

/// `GET /v1/balance?account=&asset=`: from the owner, once it has applied
/// everything durable.
pub fn balance(shard: &Rc<Shard>, request: &Request<'_>, _: &Params<'_>) -> Handled {
    let (account_id, asset_name) = match (request.query("account"), request.query("asset")) {
        (Ok(Some(a)), Ok(Some(b))) => (a, b),
        (Err(reply), _) | (_, Err(reply)) => return Handled::Now(reply),
        _ => return Handled::Now(bad("account and asset are required")),
    };
    check!(account("account", &account_id));
    check!(asset(shard, &asset_name));
    let facts = Facts { account: Some(&account_id), asset: Some(&asset_name), amount: None };
    check!(access::authorize(shard, request, request.path(), Some(scope::WALLET_READ), facts));
    let owner = ron_proto::routing::owner(account_id.as_bytes(), shard.count);
    // Owned here and caught up (the usual case): answer at once, from the
    // shard's scratch buffer (a hot read allocates nothing).
    if owner == shard.id && crate::ledger::is_caught_up(shard) {
        let funds = shard.wallet.borrow().funds(&account_id, &asset_name);
        let mut scratch = shard.scratch.borrow_mut();
        scratch.clear();
        write_balance(&mut scratch, &account_id, &asset_name, funds, shard.applied.seq());
        return Handled::Now(Reply::json_scratch(200));
    }
    let answer = |account: &str, asset: &str, funds: Funds, as_of_seq: u64| {
        let mut body = Vec::with_capacity(128 + account.len());
        write_balance(&mut body, account, asset, funds, as_of_seq);
        Reply::json_owned(200, body)
    };
    let (account_id, asset_name) = (account_id.into_owned(), asset_name.into_owned());
    let shard = shard.clone();
    Handled::Later(Box::pin(async move {
        let call =
            ShardCall::WalletBalance { account: account_id.clone(), asset: asset_name.clone() };
        match shard.mesh.call(&shard, owner, call).await {
            Ok(ShardAnswer::WalletBalance { funds, as_of_seq }) => {
                answer(&account_id, &asset_name, funds, as_of_seq)
            }
            Ok(other) => panic!("a wallet balance answered with {other:?}"),
            Err(error) => crate::ops::mesh_failure(error),
        }
    }))
}

/// The committed operation of `txid` and where it went, from the shard
/// that keeps its receipt.
async fn committed(shard: &Rc<Shard>, txid: wallet::TxId) -> Result<(WalletOp, Placement), Reply> {
    let keeper = recorder(&txid, shard.count);
    match shard.mesh.call(shard, keeper, ShardCall::WalletReceipt { txid }).await {
        Ok(ShardAnswer::WalletReceipt(Some(found))) => Ok(*found),
        Ok(ShardAnswer::WalletReceipt(None)) => {
            Err(Reply::error(ErrorCode::NotFound, "no transaction with that id"))
        }
        Ok(other) => panic!("a receipt lookup answered with {other:?}"),
        Err(error) => Err(crate::ops::mesh_failure(error)),
    }
}

/// `GET /v1/tx/{txid}`: the receipt, from the shard that keeps it.
/// A token restricted to an account may read receipts that account is
/// `from` or `to` of; it is checked once the receipt is found.
pub fn tx(shard: &Rc<Shard>, request: &Request<'_>, params: &Params<'_>) -> Handled {
    let Some(txid) = params.get(0).and_then(wallet::parse_txid) else {
        return Handled::Now(bad("txid must be tx_ and 32 hex digits"));
    };
    let authorization = request.head.authorization.map(|span| span.of(request.raw).to_vec());
    let (method, path, socket) =
        (request.head.method.as_str(), request.path().to_owned(), request.socket);
    let shard = shard.clone();
    Handled::Later(Box::pin(async move {
        let presented = access::Presented {
            authorization: authorization.as_deref(),
            method,
            path: &path,
            socket,
        };
        let (op, placement) = match committed(&shard, txid).await {
            Ok(found) => found,
            Err(reply) => {
                // Who is not authenticated learns nothing, not even whether
                // the transaction exists.
                let check = presented.authorize(&shard, Some(scope::WALLET_READ), Facts::default());
                return match check {
                    Err(refused) if refused.status == 401 => refused,
                    _ => reply,
                };
            }
        };
        let mut verdict = Ok(());
        for account in [op.from.as_deref(), op.to.as_deref()].into_iter().flatten() {
            let facts =
                Facts { account: Some(account), asset: Some(op.asset.as_str()), amount: None };
            verdict = presented.authorize(&shard, Some(scope::WALLET_READ), facts);
            if verdict.is_ok() {
                break;
            }
        }
        match verdict {
            Ok(()) => Reply::json_owned(200, wallet::receipt(&op, &placement)),
            Err(reply) => reply,
        }
    }))
}
