//! The ledger service (SPEC §4): batches of entries ingested into the log
//! (`POST /ingest`), the roots and proofs of the log's Merkle tree, and the
//! balances of the accounts each shard owns.
//!
//! An entry's owner (the shard its account routes to) reserves its debit
//! before the append and applies it once durable; a request that does not
//! commit releases what its owners reserved. Balances live in the owner's
//! view (`ledger.balances`: `balances::account_key` → u128 LE).
//!
//! Log items: entries (`ron_proto::ledger`, codes 1..=7, their kinds); an
//! entry's id is its unique key in the log.

pub mod routes;

use crate::config::Config;
use crate::core::Core;
use crate::http::RouteTable;
use crate::log::view::{ServiceView, ViewChanges};
use crate::log::{IdKey, Item, id_key};
use crate::service::{Replaying, Service, ShardAt, Starting};
use anyhow::Context as _;
use ron_proto::error::Reason;
use ron_proto::ledger::{ENTRY_CODES, EntryRef};
use ron_shards::balances::{Account, Balances, Item as Debit};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

/// The ledger on one shard: the balances of the accounts it owns.
pub struct Ledger {
    core: Rc<Core>,
    balances: RefCell<Balances>,
}

#[derive(Debug)]
pub enum Call {
    /// Reserve the debits of these items (all owned by the callee), unless
    /// `deadline` has passed (`Answer::Late`, nothing reserved). Sent with
    /// `Wait::Answer`: every reservation reaches its caller.
    Reserve { items: Vec<Debit>, deadline: Instant },
    /// Give back what `Reserve` took (the request did not commit).
    Release { items: Vec<Debit> },
    Balance { account: String, asset: String },
}

#[derive(Debug)]
pub enum Answer {
    Reserved(Result<(), Vec<Reason>>),
    /// The reservation came after its deadline: nothing was reserved.
    Late,
    Done,
    Balance(Account),
}

/// The view table of balances: `account_len u8 | account | asset` →
/// balance u128 LE.
const BALANCES: usize = 0;

/// A balance's key in the view.
fn balance_key(account: &str, asset: &str, out: &mut Vec<u8>) {
    assert!(account.len() <= ron_proto::ledger::ACCOUNT_BYTES_MAX);
    out.clear();
    out.push(account.len() as u8);
    out.extend_from_slice(account.as_bytes());
    out.extend_from_slice(asset.as_bytes());
}

/// The (account, asset) of a balance's key in the view; `None` when the
/// bytes are not one.
fn split_balance_key(key: &[u8]) -> Option<(&str, &str)> {
    let (&len, rest) = key.split_first()?;
    let (account, asset) = rest.split_at_checked(usize::from(len))?;
    let valid = |s: &[u8], max: usize| !s.is_empty() && s.len() <= max;
    if !valid(account, ron_proto::ledger::ACCOUNT_BYTES_MAX)
        || asset.len() > ron_proto::ledger::ASSET_BYTES_MAX
    {
        return None;
    }
    Some((std::str::from_utf8(account).ok()?, std::str::from_utf8(asset).ok()?))
}

impl Service for Ledger {
    const NAME: &'static str = "ledger";
    const LOG_CODES: &'static [u8] = &ENTRY_CODES;
    const TABLES: &'static [&'static str] = &["balances"];
    type Shared = ();
    type State = Balances;
    type Call = Call;
    type Answer = Answer;

    fn prepare(_: &Config) -> anyhow::Result<()> {
        Ok(())
    }

    fn state(_: &(), _: ShardAt<'_>) -> Balances {
        Balances::default()
    }

    fn load(balances: &mut Balances, view: &ServiceView, _: u64) -> anyhow::Result<()> {
        view.each(BALANCES, |key, value| {
            let (account, asset) = split_balance_key(key).context("a balance's key")?;
            let value: [u8; 16] = value.try_into().context("a balance is not 16 bytes")?;
            balances.load(account, asset, u128::from_le_bytes(value));
            Ok(())
        })?;
        Ok(())
    }

    fn check(item: &[u8]) -> Result<(), String> {
        EntryRef::decode(item).map(drop).map_err(|e| e.to_string())
    }

    fn unique_key(item: &[u8]) -> Option<IdKey> {
        EntryRef::decode(item).ok().map(|entry| id_key(entry.id))
    }

    fn replay(states: &mut Replaying<'_, Balances>, item: Item<'_>) {
        let entry = EntryRef::decode(item.bytes).expect("checked");
        let owner = ron_proto::routing::owner(entry.account.as_bytes(), states.shard_count());
        if let Some(balances) = states.get(owner) {
            let asset = entry.asset.unwrap_or_default();
            if balances.replay_entry(entry.account, asset, entry.kind, entry.amount) {
                // Never expected: the log is only written after a reservation.
                tracing::error!(seq = item.seq, "the log holds a debit beyond its balance (stopped at zero)");
            }
        }
    }

    fn start(start: Starting<'_, Ledger>) -> Rc<Ledger> {
        Rc::new(Ledger { core: start.core.clone(), balances: RefCell::new(start.state) })
    }

    fn core(&self) -> &Rc<Core> {
        &self.core
    }

    fn routes(self: &Rc<Self>, table: &mut RouteTable) {
        routes::add(self, table);
    }

    async fn serve(self: Rc<Self>, call: Call) -> Answer {
        match call {
            Call::Reserve { items, deadline } => {
                self.assert_owned(&items);
                if Instant::now() >= deadline {
                    return Answer::Late;
                }
                Answer::Reserved(self.balances.borrow_mut().reserve(&items))
            }
            Call::Release { items } => {
                self.assert_owned(&items);
                self.balances.borrow_mut().release(&items);
                Answer::Done
            }
            Call::Balance { account, asset } => {
                self.core.log.caught_up().await;
                Answer::Balance(self.balances.borrow().account(&account, &asset))
            }
        }
    }

    fn apply(&self, item: Item<'_>) {
        let entry = EntryRef::decode(item.bytes).expect("committed items decode");
        debug_assert_eq!(self.core.owner(entry.account.as_bytes()), self.core.id);
        let asset = entry.asset.unwrap_or_default();
        self.balances.borrow_mut().apply_entry(entry.account, asset, entry.kind, entry.amount);
    }

    fn save(&self, changes: &mut ViewChanges, _: u64) {
        let mut view_key = Vec::new();
        for (key, balance) in self.balances.borrow_mut().take_dirty() {
            balance_key(key.account(), key.asset(), &mut view_key);
            if balance == 0 {
                changes.delete(BALANCES, &view_key);
            } else {
                changes.put(BALANCES, &view_key, &balance.to_le_bytes());
            }
        }
    }
}

impl Ledger {
    /// Accounts reach only their owner; anything else is a routing bug.
    fn assert_owned(&self, items: &[Debit]) {
        for item in items {
            let owner = self.core.owner(item.account.as_bytes());
            assert_eq!(owner, self.core.id, "account {} reached shard {}", item.account, self.core.id);
        }
    }
}
