//! Balances of the accounts one shard owns (SPEC §4.3): the owner reserves a
//! request's debits before the committer orders it, applies credits and
//! debits once it is durable, and releases the reservation if it is not.
//! No balance ever goes below zero: a debit is only reserved against what
//! the account holds beyond earlier reservations. Credits of a request do
//! not fund its own debits (they are not durable when it is checked).

use ron_proto::error::Reason;
use ron_proto::ledger::{Entry, EntryKind};
use std::collections::{BTreeMap, HashMap};

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
    pub fn of(idx: u32, entry: &Entry) -> Item {
        Item {
            idx,
            account: entry.account.clone(),
            asset: entry.asset.clone().unwrap_or_default(),
            kind: entry.kind,
            amount: entry.amount,
        }
    }

    fn key(&self) -> (String, String) {
        (self.account.clone(), self.asset.clone())
    }
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
pub struct Balances {
    accounts: HashMap<(String, String), Account>,
}

impl Balances {
    pub fn account(&self, account: &str, asset: &str) -> Account {
        self.accounts.get(&(account.to_owned(), asset.to_owned())).copied().unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// Debits of `items`, summed per account and asset, with the first index
    /// of each.
    fn debit_totals(items: &[Item]) -> BTreeMap<(String, String), (u128, u32)> {
        let mut totals: BTreeMap<(String, String), (u128, u32)> = BTreeMap::new();
        for item in items.iter().filter(|i| debits(i.kind)) {
            let total = totals.entry(item.key()).or_insert((0, item.idx));
            total.0 = total.0.saturating_add(item.amount);
        }
        totals
    }

    /// Reserves every debit of `items`, or nothing and says why.
    pub fn reserve(&mut self, items: &[Item]) -> Result<(), Vec<Reason>> {
        let totals = Self::debit_totals(items);
        let refused: Vec<Reason> = totals
            .iter()
            .filter_map(|(key, (total, idx))| {
                let account = self.accounts.get(key).copied().unwrap_or_default();
                let available = account.balance - account.reserved;
                (*total > available).then(|| Reason {
                    idx: *idx,
                    reason: format!(
                        "insufficient_funds: {} holds {available} {} available, needs {total}",
                        key.0, key.1
                    ),
                })
            })
            .collect();
        if !refused.is_empty() {
            return Err(refused);
        }
        for (key, (total, _)) in totals {
            let account = self.accounts.entry(key).or_default();
            account.reserved += total;
            assert!(account.reserved <= account.balance);
        }
        Ok(())
    }

    /// Gives back what `reserve(items)` took.
    pub fn release(&mut self, items: &[Item]) {
        for (key, (total, _)) in Self::debit_totals(items) {
            let account = self.accounts.get_mut(&key).expect("a reservation has its account");
            account.reserved =
                account.reserved.checked_sub(total).expect("released what was reserved");
        }
    }

    /// Applies durable `items` whose debits were reserved.
    pub fn apply(&mut self, items: &[Item]) {
        self.release(items);
        self.replay(items);
    }

    /// Applies durable `items` read back from the log. Returns how many
    /// debits found too little (never expected: the log is only written
    /// after a reservation); those balances stop at zero.
    pub fn replay(&mut self, items: &[Item]) -> u64 {
        let mut short = 0;
        for item in items {
            let account = self.accounts.entry(item.key()).or_default();
            if debits(item.kind) {
                match account.balance.checked_sub(item.amount) {
                    Some(left) => account.balance = left,
                    None => {
                        short += 1;
                        account.balance = 0;
                    }
                }
            } else {
                account.balance = account.balance.saturating_add(item.amount);
            }
        }
        short
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
