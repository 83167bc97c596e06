//! Balances of the accounts one shard owns (SPEC §4.3): the owner reserves a
//! request's debits before the committer orders it, applies credits and
//! debits once it is durable, and releases the reservation if it is not.
//! No balance ever goes below zero: a debit is only reserved against what
//! the account holds beyond earlier reservations. Credits of a request do
//! not fund its own debits (they are not durable when it is checked).
//!
//! Accounts are keyed by `account_key` in memory. Every balance changed
//! since the last `take_dirty` is marked, so that the view is written from
//! what changed, not from a scan; how the view stores it is the server's
//! business.

use crate::Map;
use ron_proto::error::Reason;
use ron_proto::ledger::{EntryKind, EntryRef};
use std::collections::BTreeMap;

/// One entry, as the owner of its account sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The entry's index in its request.
    pub idx: u32,
    pub account: String,
    pub asset: String,
    pub kind: EntryKind,
    pub amount: u128,
}

impl Item {
    pub fn of(idx: u32, entry: EntryRef<'_>) -> Item {
        Item {
            idx,
            account: entry.account.to_owned(),
            asset: entry.asset.unwrap_or_default().to_owned(),
            kind: entry.kind,
            amount: entry.amount,
        }
    }
}

/// The key of (account, asset): the account's length, the account, the
/// asset. Accounts are at most 128 bytes (`ron_proto::ledger`).
pub fn account_key(account: &str, asset: &str, out: &mut Vec<u8>) {
    out.clear();
    out.push(account.len() as u8);
    out.extend_from_slice(account.as_bytes());
    out.extend_from_slice(asset.as_bytes());
}

/// The (account, asset) of a changed balance.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BalanceKey(Box<[u8]>);

impl BalanceKey {
    pub fn account(&self) -> &str {
        split_account_key(&self.0).expect("keys are made by account_key").0
    }

    pub fn asset(&self) -> &str {
        split_account_key(&self.0).expect("keys are made by account_key").1
    }
}

/// The (account, asset) of a key made by `account_key`.
pub fn split_account_key(key: &[u8]) -> Option<(&str, &str)> {
    let (&len, rest) = key.split_first()?;
    let (account, asset) = rest.split_at_checked(usize::from(len))?;
    Some((std::str::from_utf8(account).ok()?, std::str::from_utf8(asset).ok()?))
}

/// Whether an entry takes from its account (Debit, Hold, Reverse, Burn) or
/// adds to it (Credit, Transfer, Mint).
pub const fn debits(kind: EntryKind) -> bool {
    !kind.credits()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub balance: u128,
    /// Debits reserved by requests not yet durable.
    pub reserved: u128,
}

#[derive(Debug, Default)]
struct Slot {
    account: Account,
    /// Changed since the last `take_dirty`.
    dirty: bool,
}

#[derive(Debug, Default)]
pub struct Balances {
    accounts: Map<Box<[u8]>, Slot>,
    /// Keys whose slot is dirty, in the order they became so.
    dirty: Vec<Box<[u8]>>,
    key: Vec<u8>,
}

impl Balances {
    pub fn account(&self, account: &str, asset: &str) -> Account {
        let mut key = Vec::with_capacity(1 + account.len() + asset.len());
        account_key(account, asset, &mut key);
        self.accounts.get(key.as_slice()).map(|slot| slot.account).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// Sets a balance read back from the shard's view (not marked dirty).
    pub fn load(&mut self, account: &str, asset: &str, balance: u128) {
        account_key(account, asset, &mut self.key);
        let slot = self.accounts.entry(self.key.as_slice().into()).or_default();
        slot.account.balance = balance;
    }

    /// The slot of (account, asset), made if new.
    fn slot(&mut self, account: &str, asset: &str) -> &mut Slot {
        account_key(account, asset, &mut self.key);
        if !self.accounts.contains_key(self.key.as_slice()) {
            self.accounts.insert(self.key.as_slice().into(), Slot::default());
        }
        self.accounts.get_mut(self.key.as_slice()).expect("inserted")
    }

    /// Debits of `items`, summed per account key, with the position in
    /// `items` of the first.
    fn debit_totals(items: &[Item]) -> BTreeMap<Vec<u8>, (u128, usize)> {
        let mut totals: BTreeMap<Vec<u8>, (u128, usize)> = BTreeMap::new();
        let mut key = Vec::new();
        for (at, item) in items.iter().enumerate().filter(|(_, i)| debits(i.kind)) {
            account_key(&item.account, &item.asset, &mut key);
            let total = totals.entry(key.clone()).or_insert((0, at));
            total.0 = total.0.saturating_add(item.amount);
        }
        totals
    }

    /// Reserves every debit of `items`, or nothing and says why.
    pub fn reserve(&mut self, items: &[Item]) -> Result<(), Vec<Reason>> {
        let totals = Self::debit_totals(items);
        let refused: Vec<Reason> = totals
            .iter()
            .filter_map(|(key, (total, at))| {
                let account =
                    self.accounts.get(key.as_slice()).map(|s| s.account).unwrap_or_default();
                let available = account.balance - account.reserved;
                let item = &items[*at];
                (*total > available).then(|| Reason {
                    idx: item.idx,
                    reason: format!(
                        "insufficient_funds: {} holds {available} {} available, needs {total}",
                        item.account, item.asset
                    ),
                })
            })
            .collect();
        if !refused.is_empty() {
            return Err(refused);
        }
        for (key, (total, _)) in totals {
            let slot = self.accounts.entry(key.into_boxed_slice()).or_default();
            slot.account.reserved += total;
            assert!(slot.account.reserved <= slot.account.balance);
        }
        Ok(())
    }

    /// Gives back what `reserve(items)` took.
    pub fn release(&mut self, items: &[Item]) {
        for (key, (total, _)) in Self::debit_totals(items) {
            let slot =
                self.accounts.get_mut(key.as_slice()).expect("a reservation has its account");
            slot.account.reserved =
                slot.account.reserved.checked_sub(total).expect("released what was reserved");
        }
    }

    /// Applies durable `items` whose debits were reserved.
    pub fn apply(&mut self, items: &[Item]) {
        for item in items {
            self.apply_entry(&item.account, &item.asset, item.kind, item.amount);
        }
    }

    /// Applies one durable entry whose debit was reserved: the reservation
    /// becomes the debit.
    pub fn apply_entry(&mut self, account: &str, asset: &str, kind: EntryKind, amount: u128) {
        if debits(kind) {
            let slot = self.slot(account, asset);
            slot.account.reserved =
                slot.account.reserved.checked_sub(amount).expect("a durable debit was reserved");
        }
        let short = self.replay_entry(account, asset, kind, amount);
        assert!(!short, "a reserved debit finds its balance");
    }

    /// Applies durable `items` read back from the log. Returns how many
    /// debits found too little (never expected: the log is only written
    /// after a reservation); those balances stop at zero.
    pub fn replay(&mut self, items: &[Item]) -> u64 {
        let short = items
            .iter()
            .filter(|item| self.replay_entry(&item.account, &item.asset, item.kind, item.amount));
        short.count() as u64
    }

    /// Applies one entry read back from the log; true if it is a debit that
    /// found too little.
    pub fn replay_entry(
        &mut self,
        account: &str,
        asset: &str,
        kind: EntryKind,
        amount: u128,
    ) -> bool {
        let slot = self.slot(account, asset);
        let balance = &mut slot.account.balance;
        let short = if debits(kind) {
            match balance.checked_sub(amount) {
                Some(left) => {
                    *balance = left;
                    false
                }
                None => {
                    *balance = 0;
                    true
                }
            }
        } else {
            *balance = balance.saturating_add(amount);
            false
        };
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(self.key.as_slice().into());
        }
        short
    }

    /// How many balances changed since the last `take_dirty`.
    pub fn dirty_len(&self) -> usize {
        self.dirty.len()
    }

    /// The balances changed since the last call, as (key, balance), and
    /// forgets that they changed.
    pub fn take_dirty(&mut self) -> Vec<(BalanceKey, u128)> {
        let keys = std::mem::take(&mut self.dirty);
        keys.into_iter()
            .map(|key| {
                let slot = self.accounts.get_mut(&key).expect("dirty keys have slots");
                slot.dirty = false;
                let balance = slot.account.balance;
                (BalanceKey(key), balance)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(idx: u32, account: &str, kind: EntryKind, amount: u128) -> Item {
        Item { idx, account: account.into(), asset: "roc".into(), kind, amount }
    }

    #[test]
    fn debits_are_reserved_against_what_is_not_reserved_yet() {
        let mut balances = Balances::default();
        balances.replay(&[item(0, "a", EntryKind::Mint, 10)]);
        let first = [item(0, "a", EntryKind::Debit, 6), item(1, "b", EntryKind::Credit, 6)];
        balances.reserve(&first).unwrap();
        // A second request may not spend what the first reserved.
        let second = [item(0, "a", EntryKind::Burn, 5)];
        let refused = balances.reserve(&second).unwrap_err();
        assert_eq!(refused[0].idx, 0);
        assert!(refused[0].reason.starts_with("insufficient_funds"));
        balances.apply(&first);
        assert_eq!(balances.account("a", "roc"), Account { balance: 4, reserved: 0 });
        assert_eq!(balances.account("b", "roc").balance, 6);
        balances.reserve(&[item(0, "a", EntryKind::Burn, 4)]).unwrap();
        balances.release(&[item(0, "a", EntryKind::Burn, 4)]);
        assert_eq!(balances.account("a", "roc"), Account { balance: 4, reserved: 0 });
    }

    #[test]
    fn changed_balances_are_handed_out_once() {
        let mut balances = Balances::default();
        balances.replay(&[item(0, "a", EntryKind::Mint, 10), item(1, "b", EntryKind::Mint, 3)]);
        balances.replay(&[item(0, "a", EntryKind::Burn, 4)]);
        let mut dirty = balances.take_dirty();
        dirty.sort();
        let names: Vec<_> = dirty.iter().map(|(k, v)| ((k.account(), k.asset()), *v)).collect();
        assert_eq!(names, [(("a", "roc"), 6), (("b", "roc"), 3)]);
        assert!(balances.take_dirty().is_empty());
        // A reservation alone is not a change of the balance.
        balances.reserve(&[item(0, "a", EntryKind::Debit, 1)]).unwrap();
        assert_eq!(balances.dirty_len(), 0);
        let mut loaded = Balances::default();
        for (key, balance) in &dirty {
            loaded.load(key.account(), key.asset(), *balance);
        }
        assert_eq!(loaded.account("a", "roc").balance, 6);
        assert_eq!(loaded.dirty_len(), 0);
    }

    #[test]
    fn keys_keep_account_and_asset_apart() {
        let mut one = Vec::new();
        let mut two = Vec::new();
        account_key("ab", "c", &mut one);
        account_key("a", "bc", &mut two);
        assert_ne!(one, two);
        assert_eq!(split_account_key(&one), Some(("ab", "c")));
        assert_eq!(split_account_key(&[5, b'a']), None);
    }

    proptest! {
        /// Whatever requests come, reserved never exceeds the balance, and
        /// applying what was reserved never goes below zero.
        #[test]
        fn no_balance_goes_negative(ops in proptest::collection::vec((0u8..3, 0usize..3, 1u128..20, any::<bool>()), 1..60)) {
            let mut balances = Balances::default();
            let accounts = ["a", "b", "c"];
            for (op, who, amount, commit) in ops {
                let kind = [EntryKind::Mint, EntryKind::Debit, EntryKind::Burn][op as usize];
                let items = [item(0, accounts[who], kind, amount)];
                if balances.reserve(&items).is_ok() {
                    if commit { balances.apply(&items) } else { balances.release(&items) }
                }
                for name in accounts {
                    let account = balances.account(name, "roc");
                    prop_assert!(account.reserved <= account.balance);
                }
            }
        }
    }
}
