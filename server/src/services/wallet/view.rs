//! How the wallet keeps its state in a shard's view: one table per kind of
//! state, each with its own encoding (little-endian numbers):
//!
//! ```text
//! receipts  txid [16]            → seq u64
//! committed seq u64 (big-endian)  → root [32] | the operation's log encoding
//! funds     account | 0 | asset  → balance u128
//! nonces    account              → nonce u64
//! holds     hold id [16]         → (len u16 | from) (len u16 | to) (len u16 | asset)
//!                                  amount u128 | expires_ms u64 (u64::MAX: never)
//! idem      expires_ms u64 (big-endian) | slot [16]
//!                                → txid [16] | resolution u8
//! ```
//!
//! A receipt is found by its txid, a random key: only its seq is kept there
//! (rows of 24 bytes instead of about 200), and the receipt itself by seq,
//! where each write appends (version 3). The txids are in the view's LSM
//! tree, not in LMDB, where each write's puts rewrote pages all over a
//! table that grows by every transfer (version 4). A txid found there may
//! be ahead of the view after a crash (`crate::log::view`): a receipt is
//! answered only if the operation at its seq has that txid. A read there
//! can wait for the tree's writer to sync, so the wallet calls `receipt`
//! on a worker.
//!
//! Idempotency records are kept by expiry, not by slot: the shard looks
//! them up in memory and the view only reloads them at start, and the
//! wallet forgets them oldest first, so each write adds records at the
//! table's end and removes them at its start instead of putting and
//! deleting at two random places in a tree of a million (version 2).
//! A view of an older version is rebuilt from the log.

use crate::log::view::{ServiceView, ViewChanges};
use anyhow::Context as _;
use ron_proto::wallet::{CompactString, Placement, TxId, WalletOp};
use ron_shards::wallet::{Changes, Hold, IdemKey, IdemRecord, Receipt, Wallet};

/// The wallet's tables, in `Service::TABLES` order.
pub const TABLES: &[&str] = &["receipts", "funds", "nonces", "holds", "idem", "committed"];
/// Those kept in the LSM tree.
pub const LSM_TABLES: &[&str] = &["receipts"];
const RECEIPTS: usize = 0;
const FUNDS: usize = 1;
const NONCES: usize = 2;
const HOLDS: usize = 3;
const IDEM: usize = 4;
const COMMITTED: usize = 5;
const IDEM_KEY_BYTES: usize = 8 + 16;
const IDEM_RECORD_BYTES: usize = 16 + 1;

/// An idempotency record's key in the view: its expiry, then its slot.
fn idem_key((expires_ms, slot): &IdemKey) -> [u8; IDEM_KEY_BYTES] {
    let mut key = [0u8; IDEM_KEY_BYTES];
    key[..8].copy_from_slice(&expires_ms.to_be_bytes());
    key[8..].copy_from_slice(slot);
    key
}

/// Puts what changed into a view write.
pub fn save<'a>(
    changes: &mut ViewChanges,
    state: &Changes,
    receipts: impl Iterator<Item = Receipt<'a>>,
) {
    for receipt in receipts {
        let placement = &receipt.placement;
        changes.put(RECEIPTS, &receipt.txid, &placement.seq.to_le_bytes());
        let value: [&[u8]; 2] = [&placement.root, receipt.op];
        changes.put_parts(COMMITTED, &placement.seq.to_be_bytes(), &value);
    }
    let mut key = Vec::new();
    for (funds, balance) in &state.funds {
        key.clear();
        key.extend_from_slice(funds.account().as_bytes());
        key.push(0);
        key.extend_from_slice(funds.asset().as_bytes());
        if *balance == 0 {
            changes.delete(FUNDS, &key);
        } else {
            changes.put(FUNDS, &key, &balance.to_le_bytes());
        }
    }
    for (account, nonce) in &state.nonces {
        changes.put(NONCES, account.as_bytes(), &nonce.to_le_bytes());
    }
    for (id, hold) in &state.holds {
        match hold {
            Some(hold) => changes.put(HOLDS, id, &encode_hold(hold)),
            None => changes.delete(HOLDS, id),
        }
    }
    for (key, record) in &state.idem {
        match record {
            Some(record) => {
                let mut value = [0u8; IDEM_RECORD_BYTES];
                value[..16].copy_from_slice(&record.txid);
                value[16] = u8::from(record.resolution);
                changes.put(IDEM, &idem_key(key), &value);
            }
            None => changes.delete(IDEM, &idem_key(key)),
        }
    }
}

/// Loads the wallet state a view kept.
pub fn load(wallet: &mut Wallet, view: &ServiceView) -> anyhow::Result<()> {
    view.each(FUNDS, |key, value| {
        let at = key.iter().position(|b| *b == 0).context("a funds key without its separator")?;
        let account = std::str::from_utf8(&key[..at]).context("a funds key's account")?;
        let asset = std::str::from_utf8(&key[at + 1..]).context("a funds key's asset")?;
        anyhow::ensure!(
            ron_proto::wallet::valid_account(account)
                && asset.len() <= ron_proto::wallet::WALLET_ASSET_BYTES_MAX,
            "a funds key out of the wallet's limits"
        );
        let value: [u8; 16] = value.try_into().context("a wallet balance is not 16 bytes")?;
        wallet.load_funds(account, asset, u128::from_le_bytes(value));
        Ok(())
    })?;
    view.each(NONCES, |key, value| {
        let account = std::str::from_utf8(key).context("a nonce's account")?;
        anyhow::ensure!(ron_proto::wallet::valid_account(account), "a nonce's account");
        let value: [u8; 8] = value.try_into().context("a nonce is not 8 bytes")?;
        wallet.load_nonce(account, u64::from_le_bytes(value));
        Ok(())
    })?;
    view.each(HOLDS, |key, value| {
        let id: [u8; 16] = key.try_into().context("a hold id is not 16 bytes")?;
        wallet.load_hold(id, decode_hold(value).context("a hold in the view does not decode")?);
        Ok(())
    })?;
    view.each(IDEM, |key, value| {
        anyhow::ensure!(key.len() == IDEM_KEY_BYTES, "an idempotency record's key size");
        anyhow::ensure!(value.len() == IDEM_RECORD_BYTES, "an idempotency record's size");
        let record = IdemRecord {
            txid: value[..16].try_into().expect("16 bytes"),
            expires_ms: u64::from_be_bytes(key[..8].try_into().expect("8 bytes")),
            resolution: value[16] == 1,
        };
        wallet.load_idem(key[8..].try_into().expect("16 bytes"), record);
        Ok(())
    })?;
    wallet.finish_load();
    Ok(())
}

/// A receipt the view keeps (two short LMDB reads; `None` if absent, or on
/// a read error, which is logged).
pub fn receipt(view: &ServiceView, txid: &TxId) -> Option<(WalletOp, Placement)> {
    let read = |table, key: &[u8]| match view.get(table, key) {
        Ok(value) => value,
        Err(error) => {
            tracing::error!(%error, "reading a receipt from the view");
            None
        }
    };
    let seq = u64::from_le_bytes(read(RECEIPTS, txid)?.try_into().ok()?);
    let stored = read(COMMITTED, &seq.to_be_bytes())?;
    let root: [u8; 32] = stored.get(..32)?.try_into().ok()?;
    let op = WalletOp::decode(stored.get(32..)?).ok()?;
    (op.txid == *txid).then_some((op, Placement { seq, root }))
}

fn encode_hold(hold: &Hold) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + hold.from.len() + hold.to.len());
    for text in [&hold.from, &hold.to, &hold.asset] {
        out.extend_from_slice(&(text.len() as u16).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(&hold.amount.to_le_bytes());
    out.extend_from_slice(&hold.expires_ms.unwrap_or(u64::MAX).to_le_bytes());
    out
}

fn decode_hold(bytes: &[u8]) -> Option<Hold> {
    let mut at = 0usize;
    let mut text = || -> Option<CompactString> {
        let len = u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?) as usize;
        let value = std::str::from_utf8(bytes.get(at + 2..at + 2 + len)?).ok()?.into();
        at += 2 + len;
        Some(value)
    };
    let (from, to, asset) = (text()?, text()?, text()?);
    let amount = u128::from_le_bytes(bytes.get(at..at + 16)?.try_into().ok()?);
    let expires = u64::from_le_bytes(bytes.get(at + 16..at + 24)?.try_into().ok()?);
    (bytes.len() == at + 24).then_some(Hold {
        from,
        to,
        asset,
        amount,
        expires_ms: (expires != u64::MAX).then_some(expires),
        resolving: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::view::{ViewLayout, ViewMeta, ViewStore, ViewWrite};
    use ron_proto::wallet::OpKind;
    use std::sync::Arc;

    fn issue(txid: TxId) -> WalletOp {
        WalletOp {
            kind: OpKind::Issue,
            from: None,
            to: Some("bob".into()),
            asset: "roc".into(),
            amount: 5,
            nonce: None,
            hold_id: None,
            timeout_s: None,
            idem: Some("k-1".into()),
            txid,
            ts_ms: 1_700_000_000_000,
        }
    }

    /// A txid the LSM tree holds ahead of the view (a crash between the
    /// two) may point at a seq that holds another operation: no receipt.
    #[test]
    fn a_receipt_is_answered_only_if_its_seq_holds_its_txid() {
        let dir = std::env::temp_dir().join(format!("ron-wallet-view-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut layout = ViewLayout::default();
        let base = layout.add("wallet", 4, TABLES, LSM_TABLES);
        let store = Arc::new(ViewStore::open(&dir, &layout, None).unwrap());
        let (op, stale) = (issue([1; 16]), [2; 16]);
        let mut changes = ViewChanges::default();
        changes.set_base(base);
        let mut encoded = Vec::new();
        op.encode(&mut encoded);
        changes.put(RECEIPTS, &op.txid, &9u64.to_le_bytes());
        changes.put(RECEIPTS, &stale, &9u64.to_le_bytes());
        changes.put_parts(COMMITTED, &9u64.to_be_bytes(), &[&[7; 32], &encoded]);
        let meta =
            ViewMeta { applied_seq: 9, root: [7; 32], shard: 0, shard_count: 1, layout: store.layout() };
        store.write(&ViewWrite { meta, changes }).unwrap();
        let view = ServiceView::new(store, base);
        assert_eq!(receipt(&view, &op.txid), Some((op, Placement { seq: 9, root: [7; 32] })));
        assert_eq!(receipt(&view, &stale), None);
        assert_eq!(receipt(&view, &[3; 16]), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn holds_round_trip_and_refuse_cuts() {
        let hold = Hold {
            from: "alice".into(),
            to: "bob".into(),
            asset: "roc".into(),
            amount: 7,
            expires_ms: Some(99),
            resolving: false,
        };
        let bytes = encode_hold(&hold);
        assert_eq!(decode_hold(&bytes), Some(hold.clone()));
        let never = Hold { expires_ms: None, ..hold };
        assert_eq!(decode_hold(&encode_hold(&never)), Some(never));
        for cut in 0..bytes.len() {
            assert_eq!(decode_hold(&bytes[..cut]), None, "cut at {cut}");
        }
    }
}
