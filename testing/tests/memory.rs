//! What a bounded consumer of memory really holds, against the memory
//! budget's line for it (`ron_server::limits::memory_budget`). Live heap
//! bytes are counted by a global allocator, so this runs alone in its own
//! binary.

use ron_proto::wallet::{CanonicalRequest, OpKind, Placement, WalletOp};
use ron_server::config::Config;
use ron_shards::wallet::{Reserved, Wallet};
use ron_testing::counting::{self, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// An issue of 1 to one of a few accounts under its own idempotency key:
/// each leaves one idempotency record, and little else.
fn issue(n: u64) -> WalletOp {
    let to = format!("acct:{}", n % 16);
    let key = format!("key-{n:012}");
    let txid = CanonicalRequest {
        kind: OpKind::Issue,
        from: None,
        to: Some(&to),
        asset: Some("roc"),
        amount: Some(1),
        nonce: None,
        hold_id: None,
        timeout_s: None,
        memo: None,
        idem_owner: &to,
        idem: &key,
    }
    .txid();
    WalletOp {
        kind: OpKind::Issue,
        from: None,
        to: Some(to.into()),
        asset: "roc".into(),
        amount: 1,
        nonce: None,
        hold_id: None,
        timeout_s: None,
        idem: Some(key.into()),
        txid,
        ts_ms: 1_000,
    }
}

/// Operations between two view writes. What a shard holds until its view
/// takes it (receipts, changes) grows with this, not with the records, and
/// is left out: the baseline below is taken once a round of it has passed.
const WRITE_EVERY: u64 = 4096;

/// Reserves, commits and applies `count` issues from `first`, handing what
/// changed to a (discarded) view write every `WRITE_EVERY`, as a shard does.
fn commit(wallet: &mut Wallet, first: u64, count: u64) {
    let mut bytes = Vec::new();
    for n in first..first + count {
        let Ok(Reserved::Commit(op)) = wallet.reserve(&issue(n), 1_000) else {
            panic!("issue {n} was not reserved")
        };
        bytes.clear();
        op.encode(&mut bytes);
        wallet.apply(&op.as_ref(), &bytes, Placement { seq: n + 1, root: [0; 32] });
        if (n + 1) % WRITE_EVERY == 0 {
            drop(wallet.take_changes());
            wallet.take_new_receipts(n + 1).count();
            wallet.forget_receipts_through(n + 1);
        }
    }
}

#[test]
fn idempotency_records_take_no_more_than_the_budget_says() {
    let config = Config::default();
    let bound = u64::from(config.wallet.idempotency_keys_max);
    let line = ron_server::limits::memory_budget(&config, 1)
        .into_iter()
        .find(|line| line.consumer == "wallet idempotency records")
        .expect("the budget has a line for them");
    let budget_per_record = line.bytes / bound;
    // A bound of its own keeps the test quick; the maps' sizes per record
    // do not depend on it beyond their power-of-two capacities, which the
    // bound's worst case (just past a doubling) covers below.
    let max = 1 << 17;
    let mut wallet = Wallet::new(0, 1, 3_600_000, max);
    commit(&mut wallet, 0, WRITE_EVERY * 2);
    let before = counting::live_bytes();
    let records_before = wallet.idem_len();
    // Fill to the bound, and past it: the oldest records are forgotten.
    commit(&mut wallet, WRITE_EVERY * 2, max as u64 * 3 / 2);
    assert_eq!(wallet.idem_len(), max);
    let full = counting::live_bytes();
    let per_record = (full - before) as f64 / (max - records_before) as f64;
    eprintln!(
        "{} idempotency records more: {} bytes more live, {per_record:.0} bytes each; the \
         budget says {budget_per_record}",
        max - records_before,
        full - before
    );
    assert!(
        per_record <= budget_per_record as f64,
        "{per_record:.0} bytes per idempotency record, the budget says {budget_per_record}"
    );
}
