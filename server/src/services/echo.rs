//! Echo: the smallest service that uses every hook — a route, a cross-shard
//! call, a log item, a view table — kept as the example of how to add a
//! service and as a fixture for the tests. Off unless `services.enable`
//! names it.
//!
//! `PUT /v1/echo/{key}` stores the body (at most [`VALUE_BYTES_MAX`]) under
//! the key as a log item applied by the key's owner shard; `GET
//! /v1/echo/{key}` reads it back from the owner, on any port; `GET
//! /v1/echo-peer?addr=&path=` asks another node, through the shard's
//! outbound connections.
//!
//! Log item (code [`ECHO_CODE`]): `code u8 | key_len u8 | key | value_len
//! u16 | value`. View table `words`: key → value. A test fixture: the
//! number of words is not bounded, which a real service's state must be.

pub mod routes;

use crate::config::Config;
use crate::core::Core;
use crate::http::RouteTable;
use crate::http::client::Client;
use crate::log::Item;
use crate::log::view::{ServiceView, ViewChanges};
use crate::service::{Replaying, Service, ShardAt, Starting};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// The first byte of echo's log items.
pub const ECHO_CODE: u8 = 0x7E;
/// Keys, in bytes.
pub const KEY_BYTES_MAX: usize = 64;
/// Values, in bytes.
pub const VALUE_BYTES_MAX: usize = 512;
const _: () = assert!(1 + 1 + KEY_BYTES_MAX + 2 + VALUE_BYTES_MAX <= ron_proto::log::ITEM_BYTES_MAX);

/// The view table of words.
const WORDS: usize = 0;

/// What one shard keeps: the words whose keys it owns, and which changed
/// since the last view write.
#[derive(Debug, Default)]
pub struct Words {
    words: BTreeMap<String, Vec<u8>>,
    changed: BTreeSet<String>,
}

impl Words {
    fn set(&mut self, key: &str, value: &[u8]) {
        self.words.insert(key.to_owned(), value.to_vec());
        self.changed.insert(key.to_owned());
    }
}

pub struct Echo {
    core: Rc<Core>,
    words: RefCell<Words>,
    /// Outbound connections, for `/v1/echo-peer`.
    client: Rc<Client>,
}

#[derive(Debug)]
pub enum Call {
    /// The value of a key this shard owns, once it has applied everything
    /// durable when the call began.
    Get { key: String },
}

#[derive(Debug)]
pub enum Answer {
    Value(Option<Vec<u8>>),
}

/// Encodes an echo item.
pub fn encode(key: &str, value: &[u8], out: &mut Vec<u8>) {
    assert!(!key.is_empty() && key.len() <= KEY_BYTES_MAX && value.len() <= VALUE_BYTES_MAX);
    out.push(ECHO_CODE);
    out.push(key.len() as u8);
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
}

/// Decodes an echo item: (key, value).
pub fn decode(bytes: &[u8]) -> Result<(&str, &[u8]), String> {
    let (&code, rest) = bytes.split_first().ok_or("empty")?;
    if code != ECHO_CODE {
        return Err("not an echo item".to_owned());
    }
    let (&key_len, rest) = rest.split_first().ok_or("no key length")?;
    let key_len = usize::from(key_len);
    if key_len == 0 || key_len > KEY_BYTES_MAX || rest.len() < key_len + 2 {
        return Err("bad key".to_owned());
    }
    let key = std::str::from_utf8(&rest[..key_len]).map_err(|_| "the key is not UTF-8")?;
    let value_len = usize::from(u16::from_le_bytes([rest[key_len], rest[key_len + 1]]));
    let value = &rest[key_len + 2..];
    if value_len > VALUE_BYTES_MAX || value.len() != value_len {
        return Err("bad value length".to_owned());
    }
    Ok((key, value))
}

impl Service for Echo {
    const NAME: &'static str = "echo";
    const LOG_CODES: &'static [u8] = &[ECHO_CODE];
    const TABLES: &'static [&'static str] = &["words"];
    const ENABLED_BY_DEFAULT: bool = false;
    type Shared = ();
    type State = Words;
    type Call = Call;
    type Answer = Answer;

    fn prepare(_: &Config) -> anyhow::Result<()> {
        Ok(())
    }

    fn state(_: &(), _: ShardAt<'_>) -> Words {
        Words::default()
    }

    fn load(words: &mut Words, view: &ServiceView, _: u64) -> anyhow::Result<()> {
        view.each(WORDS, |key, value| {
            let key = std::str::from_utf8(key)?;
            words.words.insert(key.to_owned(), value.to_vec());
            Ok(())
        })?;
        Ok(())
    }

    fn check(item: &[u8]) -> Result<(), String> {
        decode(item).map(drop)
    }

    fn replay(states: &mut Replaying<'_, Words>, item: Item<'_>) {
        let (key, value) = decode(item.bytes).expect("checked");
        let owner = ron_proto::routing::owner(key.as_bytes(), states.shard_count());
        if let Some(words) = states.get(owner) {
            words.set(key, value);
        }
    }

    fn start(start: Starting<'_, Echo>) -> Rc<Echo> {
        let (core, client) = (start.core.clone(), start.client.clone());
        Rc::new(Echo { core, words: RefCell::new(start.state), client })
    }

    fn core(&self) -> &Rc<Core> {
        &self.core
    }

    fn routes(self: &Rc<Self>, table: &mut RouteTable) {
        routes::add(self, table);
    }

    async fn serve(self: Rc<Self>, call: Call) -> Answer {
        match call {
            Call::Get { key } => {
                self.core.log.caught_up().await;
                Answer::Value(self.words.borrow().words.get(&key).cloned())
            }
        }
    }

    fn apply(&self, item: Item<'_>) {
        let (key, value) = decode(item.bytes).expect("committed items decode");
        self.words.borrow_mut().set(key, value);
    }

    fn save(&self, changes: &mut ViewChanges, _: u64) {
        let mut words = self.words.borrow_mut();
        for key in std::mem::take(&mut words.changed) {
            changes.put(WORDS, key.as_bytes(), &words.words[&key]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip_and_refuse_cuts() {
        let mut item = Vec::new();
        encode("k", b"hello", &mut item);
        assert_eq!(decode(&item), Ok(("k", &b"hello"[..])));
        for cut in 0..item.len() {
            assert!(decode(&item[..cut]).is_err(), "cut at {cut}");
        }
        item.push(0);
        assert!(decode(&item).is_err());
    }
}
