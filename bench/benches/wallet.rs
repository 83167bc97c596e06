//! The wallet's state machine alone (`ron_shards::wallet::Wallet`), as a
//! one-shard node runs it for a batch of transfers: each is reserved, then
//! applied from its log encoding, with a view write's `take_changes`
//! every 100 000 operations. 10 000 accounts, and the idempotency records
//! at their bound (1 000 000) before measuring, as in a node under load.
//! What this leaves out (HTTP, JSON, the token, the log, the view's LMDB)
//! is measured through the binary (`bench/scripts/cost.sh`).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ron_proto::wallet::{OpKind, Placement, WalletOp};
use ron_shards::wallet::{Reserved, Wallet};
use std::cell::RefCell;

/// The node's allocator (`server/src/main.rs`): the state machine's maps
/// and strings are allocated as in the node.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ACCOUNTS: usize = 10_000;
const IDEM_MAX: usize = 1_000_000;
const BATCH: usize = 64;
const VIEW_WRITE_EVERY: u64 = 100_000;

/// A wallet with funded accounts, and what the next transfer needs.
struct Run {
    wallet: Wallet,
    accounts: Vec<String>,
    nonces: Vec<u64>,
    seq: u64,
    /// A small deterministic generator (xorshift) for payers and payees.
    random: u64,
}

impl Run {
    fn new() -> Run {
        let mut wallet = Wallet::new(0, 1, 86_400_000, IDEM_MAX);
        let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("acct-{i:06}")).collect();
        for account in &accounts {
            wallet.load_funds(account, "ROC", u128::from(u64::MAX));
        }
        wallet.finish_load();
        Run { wallet, nonces: vec![0; ACCOUNTS], accounts, seq: 0, random: 0x9E37_79B9_7F4A_7C15 }
    }

    fn next_random(&mut self) -> usize {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        (self.random % ACCOUNTS as u64) as usize
    }

    /// The next `count` transfers, as a batch's requests carry them.
    fn transfers(&mut self, count: usize) -> Vec<WalletOp> {
        (0..count)
            .map(|_| {
                let from = self.next_random();
                let to = (from + 1 + self.next_random() % (ACCOUNTS - 1)) % ACCOUNTS;
                self.nonces[from] += 1;
                self.seq += 1;
                let key = format!("k-{}", self.seq);
                let txid: [u8; 16] =
                    blake3::hash(key.as_bytes()).as_bytes()[..16].try_into().expect("16 bytes");
                WalletOp {
                    kind: OpKind::Transfer,
                    from: Some(self.accounts[from].as_str().into()),
                    to: Some(self.accounts[to].as_str().into()),
                    asset: "ROC".into(),
                    amount: 1,
                    nonce: Some(self.nonces[from]),
                    hold_id: None,
                    timeout_s: None,
                    idem: Some(key.into()),
                    txid,
                    ts_ms: 1_000,
                }
            })
            .collect()
    }
}

/// Reserves `ops`, then applies each from its log encoding (what the
/// scope shard and the committed stream do for a batch on one shard).
fn reserve_and_apply(wallet: &mut Wallet, ops: &[WalletOp], first_seq: u64) {
    let reserved: Vec<WalletOp> = ops
        .iter()
        .map(|op| match wallet.reserve(op, 1_000) {
            Ok(Reserved::Commit(op)) => op,
            other => panic!("a transfer of a funded account was refused: {other:?}"),
        })
        .collect();
    let mut encoded = Vec::with_capacity(256);
    for (k, op) in reserved.iter().enumerate() {
        encoded.clear();
        op.encode(&mut encoded);
        let placement = Placement { seq: first_seq + k as u64, root: [0; 32] };
        wallet.apply(&op.as_ref(), &encoded, placement);
        if (first_seq + k as u64) % VIEW_WRITE_EVERY == 0 {
            // A view write: the changes and receipts handed out, the
            // receipts then forgotten (the view keeps them).
            let seq = first_seq + k as u64;
            let changes = wallet.take_changes();
            std::hint::black_box(changes);
            std::hint::black_box(wallet.take_new_receipts(seq).count());
            wallet.forget_receipts_through(seq);
        }
    }
}

fn batch_of_transfers(c: &mut Criterion) {
    let run = RefCell::new(Run::new());
    // Fill the idempotency records to their bound first.
    {
        let mut run = run.borrow_mut();
        while run.wallet.idem_len() < IDEM_MAX {
            let first = run.seq + 1;
            let ops = run.transfers(BATCH);
            reserve_and_apply(&mut run.wallet, &ops, first);
        }
    }
    let mut group = c.benchmark_group("wallet");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("reserve_and_apply_64_transfers", |b| {
        b.iter_batched(
            || {
                let mut run = run.borrow_mut();
                let first = run.seq + 1;
                (run.transfers(BATCH), first)
            },
            |(ops, first)| reserve_and_apply(&mut run.borrow_mut().wallet, &ops, first),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, batch_of_transfers);
criterion_main!(benches);
