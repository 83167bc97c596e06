//! Receipts a wallet shard keeps in memory until a view write takes them.

use super::Receipt;
use crate::Map;
use ron_proto::wallet::{Placement, TxId};

/// Receipts as kept until a view write takes them: each operation's log
/// encoding and where it went, rendered when asked for. They are appended
/// (the operations' bytes to one buffer) and found through a small index,
/// so that keeping one writes a few sequential bytes and a 24-byte map
/// entry, and allocates nothing.
#[derive(Debug, Default)]
pub(super) struct ReceiptSet {
    /// By txid: the place in `kept`.
    index: Map<TxId, usize>,
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
    pub(super) fn insert(&mut self, txid: TxId, op: &[u8], placement: Placement) {
        let at = self.ops.len();
        self.ops.extend_from_slice(op);
        // A txid kept again (never in practice) is found at its later place.
        self.index.insert(txid, self.kept.len());
        self.kept.push(Kept { txid, placement, op: at..self.ops.len() });
    }

    /// Looks up where `txid` goes or is, and drops what it found
    /// (`Wallet::touch`).
    pub(super) fn touch(&self, txid: &TxId) {
        std::hint::black_box(self.index.get(txid));
    }

    pub(super) fn get(&self, txid: &TxId) -> Option<(&[u8], Placement)> {
        let kept = &self.kept[*self.index.get(txid)?];
        Some((&self.ops[kept.op.clone()], kept.placement))
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = Receipt<'_>> {
        self.kept.iter().map(|kept| Receipt {
            txid: kept.txid,
            placement: kept.placement,
            op: &self.ops[kept.op.clone()],
        })
    }

    pub(super) fn len(&self) -> usize {
        self.kept.len()
    }

    /// Emptied, keeping the room it grew to.
    pub(super) fn clear(&mut self) {
        self.index.clear();
        self.kept.clear();
        self.ops.clear();
    }
}
