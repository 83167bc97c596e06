//! The wallet workloads of issue 4 (the seed's mixes) over a pool of
//! accounts `acct:0 .. acct:N-1`:
//!
//! * `wallet-setup`: issues `funds` to every account of the pool once
//!   (idempotency key `setup-i`, so running it again changes nothing);
//! * `wallet-read`: 95 % balance reads, 5 % receipt reads of the setup
//!   issues, over random accounts;
//! * `wallet-write`: 20 % transfers, 5 % issues, 5 % burns, 70 % balance
//!   reads; `--replay-percent` re-sends that share of acknowledged writes
//!   byte for byte (idempotent replays);
//! * `wallet-transfer`: transfers only;
//! * `wallet-transfers`: `POST /v1/transfers` batches of `batch` transfers
//!   (`--entries`), each write's result read from the answer.
//!
//! Nonces go strictly up per payer. Payers are `payers` accounts from
//! `first_payer` on (wrapping; the suite gives each run payers of its own);
//! each generator thread pays only from its own (`i % threads == thread`),
//! round robin, so one payer's writes are far apart; a refused write gives
//! its nonce back, and a `NONCE_CONFLICT` answer resynchronizes the payer
//! on the nonce the node expects. A run starts each payer at the nonce the
//! process's last run with the same token left it at, so that a suite's
//! rounds and sweep steps, which pay from the same accounts, do not begin
//! with a conflict per payer. Payers used by another process start with
//! one: keep the warm-up longer than one pass over the payers, so that the
//! measured part sees none of it. Receipt txids are computed here exactly
//! as the node computes them.

use crate::workload::{ByteWriter, Workload};
use ron_proto::wallet::{CanonicalRequest, OpKind, txid_text};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;

/// Each payer's next nonce as the process's runs left it, by token (a
/// token's node): a run takes its payers' from here and puts them back when
/// it ends.
static NEXT_NONCES: Mutex<BTreeMap<String, HashMap<usize, u64>>> = Mutex::new(BTreeMap::new());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    Setup,
    Read,
    Write,
    Transfer,
    TransferBatch,
}

impl Mix {
    pub fn parse(name: &str) -> Option<Mix> {
        match name {
            "wallet-setup" => Some(Mix::Setup),
            "wallet-read" => Some(Mix::Read),
            "wallet-write" => Some(Mix::Write),
            "wallet-transfer" => Some(Mix::Transfer),
            "wallet-transfers" => Some(Mix::TransferBatch),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mix::Setup => "wallet-setup",
            Mix::Read => "wallet-read",
            Mix::Write => "wallet-write",
            Mix::Transfer => "wallet-transfer",
            Mix::TransferBatch => "wallet-transfers",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalletSpec {
    pub mix: Mix,
    pub token: String,
    pub accounts: usize,
    /// What setup issues to each account.
    pub funds: u128,
    /// Shards of the node, for shard-aware runs (1 otherwise).
    pub shards: usize,
    /// Share of requests that re-send an acknowledged write (`wallet-write`).
    pub replay_percent: u32,
    /// Accounts that pay (transfers, burns): the first this many.
    pub payers: usize,
    /// The first payer's account number.
    pub first_payer: usize,
    /// Transfers per request (`wallet-transfers`).
    pub batch: usize,
}

impl WalletSpec {
    pub fn describe(&self) -> String {
        let replay = if self.replay_percent > 0 {
            format!(", {} % replays", self.replay_percent)
        } else {
            String::new()
        };
        let batch = if self.mix == Mix::TransferBatch {
            format!(", {} transfers per request", self.batch)
        } else {
            String::new()
        };
        format!("{} over {} accounts{replay}{batch}", self.mix.name(), self.accounts)
    }

    pub fn build(&self, thread: usize, threads: usize) -> Box<dyn Workload> {
        assert!(self.accounts > 0 && threads > 0 && self.shards > 0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let own: Vec<usize> = (thread..self.payers.min(self.accounts))
            .step_by(threads)
            .map(|i| (self.first_payer + i) % self.accounts)
            .collect();
        let next_nonce = NEXT_NONCES
            .lock()
            .expect("not poisoned")
            .get(&self.token)
            .map(|kept| own.iter().filter_map(|p| Some((*p, *kept.get(p)?))).collect())
            .unwrap_or_default();
        Box::new(WalletWorkload {
            spec: self.clone(),
            auth: format!("Authorization: Bearer {}\r\n", self.token.trim()),
            rng: nanos ^ (thread as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            prefix: format!("{nanos:x}-{thread}"),
            own,
            cursor: 0,
            next_nonce,
            pending: HashMap::new(),
            batches: HashMap::new(),
            replayable: VecDeque::new(),
            body: String::with_capacity(512),
            outcomes: BTreeMap::new(),
        })
    }
}

/// Writes kept for replays, at most.
const REPLAYABLE_MAX: usize = 4096;

/// A write in flight: its payer and nonce (if it has one), and its bytes
/// and shard, kept for replays.
type InFlight = (Option<(usize, u64)>, Vec<u8>, usize);

struct WalletWorkload {
    spec: WalletSpec,
    auth: String,
    rng: u64,
    prefix: String,
    /// The accounts this thread pays from.
    own: Vec<usize>,
    cursor: usize,
    /// The next nonce of each own payer (absent: 1).
    next_nonce: HashMap<usize, u64>,
    /// Writes in flight, by request index.
    pending: HashMap<u64, InFlight>,
    /// Batches in flight: each write's payer and nonce, by request index.
    batches: HashMap<u64, Vec<(usize, u64)>>,
    replayable: VecDeque<(Vec<u8>, usize)>,
    body: String,
    /// Each batched write's result code (`OK`, `NONCE_CONFLICT`, …; `HTTP
    /// 429` and the like when the batch was refused whole, `unanswered`
    /// when no answer came).
    outcomes: BTreeMap<String, u64>,
}

pub fn account(i: usize) -> String {
    format!("acct:{i}")
}

/// The txid of the setup issue to account `i`.
pub fn setup_txid(i: usize, funds: u128) -> String {
    let to = account(i);
    let key = format!("setup-{i}");
    let canonical = CanonicalRequest {
        kind: OpKind::Issue,
        from: None,
        to: Some(&to),
        asset: Some("roc"),
        amount: Some(funds),
        nonce: None,
        hold_id: None,
        timeout_s: None,
        memo: None,
        idem_owner: &to,
        idem: &key,
    };
    txid_text(&canonical.txid())
}

impl WalletWorkload {
    fn random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn random_account(&mut self) -> usize {
        (self.random() % self.spec.accounts as u64) as usize
    }

    fn owner(&self, account: &str) -> usize {
        ron_proto::routing::owner(account.as_bytes(), self.spec.shards)
    }

    fn get(&self, path: &str, out: &mut Vec<u8>) {
        let _ =
            write!(ByteWriter(out), "GET {path} HTTP/1.1\r\nHost: ron-load\r\n{}\r\n", self.auth);
    }

    fn post(&self, path: &str, out: &mut Vec<u8>) {
        let _ = write!(
            ByteWriter(out),
            "POST {path} HTTP/1.1\r\nHost: ron-load\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            self.auth,
            self.body.len(),
            self.body
        );
    }

    fn balance(&mut self, out: &mut Vec<u8>) -> usize {
        let who = account(self.random_account());
        self.get(&format!("/v1/balance?account={who}&asset=roc"), out);
        self.owner(&who)
    }

    fn receipt(&mut self, out: &mut Vec<u8>) -> usize {
        let txid_text = setup_txid(self.random_account(), self.spec.funds);
        self.get(&format!("/v1/tx/{txid_text}"), out);
        let txid = ron_proto::wallet::parse_txid(&txid_text).expect("well formed");
        ron_shards::wallet::recorder(&txid, self.spec.shards)
    }

    /// The next payer of this thread and its nonce (taken).
    fn payer(&mut self) -> Option<(usize, u64)> {
        let payer = *self.own.get(self.cursor % self.own.len().max(1))?;
        self.cursor += 1;
        let nonce = self.next_nonce.entry(payer).or_insert(1);
        let taken = *nonce;
        *nonce += 1;
        Some((payer, taken))
    }

    fn write(&mut self, index: u64, kind: OpKind, out: &mut Vec<u8>) -> usize {
        let key = format!("{}-{index}", self.prefix);
        self.body.clear();
        let (paid, shard, path) = match kind {
            OpKind::Issue => {
                let to = account(self.random_account());
                let _ = write!(
                    self.body,
                    r#"{{"to":"{to}","asset":"roc","amount_minor":"1","idempotency_key":"{key}"}}"#
                );
                (None, self.owner(&to), "/v1/issue")
            }
            OpKind::Transfer | OpKind::Burn => {
                let Some((payer, nonce)) = self.payer() else {
                    return self.balance(out);
                };
                let from = account(payer);
                if kind == OpKind::Transfer {
                    let mut to = self.random_account();
                    if to == payer {
                        to = (to + 1) % self.spec.accounts;
                    }
                    let _ = write!(
                        self.body,
                        r#"{{"from":"{from}","to":"{}","asset":"roc","amount_minor":"1","nonce":{nonce},"idempotency_key":"{key}"}}"#,
                        account(to)
                    );
                } else {
                    let _ = write!(
                        self.body,
                        r#"{{"from":"{from}","asset":"roc","amount_minor":"1","nonce":{nonce},"idempotency_key":"{key}"}}"#
                    );
                }
                let path = if kind == OpKind::Transfer { "/v1/transfer" } else { "/v1/burn" };
                (Some((payer, nonce)), self.owner(&from), path)
            }
            _ => unreachable!("the mixes only issue, transfer and burn"),
        };
        let start = out.len();
        self.post(path, out);
        let keep = if self.spec.replay_percent > 0 { out[start..].to_vec() } else { Vec::new() };
        self.pending.insert(index, (paid, keep, shard));
        shard
    }
}

impl WalletWorkload {
    /// `POST /v1/transfers` of `batch` transfers from this thread's payers.
    fn transfer_batch(&mut self, index: u64, out: &mut Vec<u8>) -> usize {
        self.body.clear();
        self.body.push_str(r#"{"transfers":["#);
        let mut paid = Vec::with_capacity(self.spec.batch);
        for i in 0..self.spec.batch.max(1) {
            let Some((payer, nonce)) = self.payer() else { break };
            let mut to = self.random_account();
            if to == payer {
                to = (to + 1) % self.spec.accounts;
            }
            if i > 0 {
                self.body.push(',');
            }
            let _ = write!(
                self.body,
                r#"{{"from":"{}","to":"{}","asset":"roc","amount_minor":"1","nonce":{nonce},"idempotency_key":"{}-{index}-{i}"}}"#,
                account(payer),
                account(to),
                self.prefix
            );
            paid.push((payer, nonce));
        }
        self.body.push_str("]}");
        let shard = paid.first().map_or(0, |(payer, _)| self.owner(&account(*payer)));
        self.post("/v1/transfers", out);
        self.batches.insert(index, paid);
        shard
    }

    /// A refused write gives its nonce back; a `NONCE_CONFLICT` whose
    /// message says what the node expects resynchronizes the payer.
    fn refused(&mut self, payer: usize, nonce: u64, conflict: Option<&str>) {
        let next = self.next_nonce.entry(payer).or_insert(1);
        *next = (*next).min(nonce);
        if let Some(expected) = conflict
            .and_then(|text| text.split("expected ").nth(1))
            .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|t| t.parse::<u64>().ok())
        {
            *next = expected;
        }
    }

    /// Reads each write's result of a batch's answer (only when one of them
    /// was refused: an answer of only `OK`s is not parsed).
    fn batch_answered(&mut self, paid: Vec<(usize, u64)>, status: u16, response: &[u8]) {
        let writes = paid.len() as u64;
        if status != 200 {
            let outcome =
                if status == 0 { "unanswered".to_owned() } else { format!("HTTP {status}") };
            *self.outcomes.entry(outcome).or_default() += writes;
            for (payer, nonce) in paid {
                self.refused(payer, nonce, None);
            }
            return;
        }
        let refusal = |needle: &[u8]| response.windows(needle.len()).any(|w| w == needle);
        if !refusal(br#""status":4"#) && !refusal(br#""status":5"#) {
            *self.outcomes.entry("OK".to_owned()).or_default() += writes;
            return;
        }
        let unread = |outcomes: &mut BTreeMap<String, u64>| {
            *outcomes.entry("unreadable answer".to_owned()).or_default() += writes;
        };
        let Some(body) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
            return unread(&mut self.outcomes);
        };
        let mut body = response[body + 4..].to_vec();
        let Ok(json) = simd_json::to_owned_value(&mut body) else {
            return unread(&mut self.outcomes);
        };
        use simd_json::prelude::*;
        let Some(results) = json.get_array("results") else {
            return unread(&mut self.outcomes);
        };
        for (result, (payer, nonce)) in results.iter().zip(paid) {
            let code = result.get_str("code").unwrap_or("no code");
            *self.outcomes.entry(code.to_owned()).or_default() += 1;
            if result.get_u64("status") == Some(200) {
                continue;
            }
            let conflict = (code == "NONCE_CONFLICT").then(|| result.get_str("message")).flatten();
            self.refused(payer, nonce, conflict);
        }
    }
}

impl Drop for WalletWorkload {
    /// The run is over: the next one of this process starts its payers
    /// where this one left them.
    fn drop(&mut self) {
        let mut kept = NEXT_NONCES.lock().expect("not poisoned");
        kept.entry(self.spec.token.clone()).or_default().extend(self.next_nonce.drain());
    }
}

impl Workload for WalletWorkload {
    fn request(&mut self, index: u64, out: &mut Vec<u8>) -> usize {
        match self.spec.mix {
            Mix::Setup => {
                let i = index as usize % self.spec.accounts;
                let to = account(i);
                self.body.clear();
                let _ = write!(
                    self.body,
                    r#"{{"to":"{to}","asset":"roc","amount_minor":"{}","idempotency_key":"setup-{i}"}}"#,
                    self.spec.funds
                );
                self.post("/v1/issue", out);
                self.owner(&to)
            }
            Mix::Read => {
                if self.random() % 100 < 5 {
                    self.receipt(out)
                } else {
                    self.balance(out)
                }
            }
            Mix::Transfer => self.write(index, OpKind::Transfer, out),
            Mix::TransferBatch => self.transfer_batch(index, out),
            Mix::Write => {
                if self.random() % 100 < u64::from(self.spec.replay_percent)
                    && !self.replayable.is_empty()
                {
                    let at = (self.random() % self.replayable.len() as u64) as usize;
                    let (bytes, shard) = &self.replayable[at];
                    out.extend_from_slice(bytes);
                    return *shard;
                }
                match self.random() % 100 {
                    0..20 => self.write(index, OpKind::Transfer, out),
                    20..25 => self.write(index, OpKind::Issue, out),
                    25..30 => self.write(index, OpKind::Burn, out),
                    _ => self.balance(out),
                }
            }
        }
    }

    fn outcomes(&self) -> BTreeMap<String, u64> {
        self.outcomes.clone()
    }

    fn answered(&mut self, index: u64, status: u16, response: &[u8]) {
        if let Some(paid) = self.batches.remove(&index) {
            return self.batch_answered(paid, status, response);
        }
        let Some((paid, bytes, shard)) = self.pending.remove(&index) else { return };
        if status == 200 {
            if self.spec.replay_percent > 0 {
                if self.replayable.len() == REPLAYABLE_MAX {
                    self.replayable.pop_front();
                }
                self.replayable.push_back((bytes, shard));
            }
            return;
        }
        let Some((payer, nonce)) = paid else { return };
        // A refused or lost write gives its nonce back (a lost one may
        // have committed: then a conflict corrects it).
        let text = (status == 409).then(|| String::from_utf8_lossy(response));
        self.refused(payer, nonce, text.as_deref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token of its own per call: runs of one token share their payers'
    /// nonces.
    fn spec(mix: Mix) -> WalletSpec {
        static TOKENS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let token = TOKENS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        WalletSpec {
            mix,
            token: format!("t{token}"),
            accounts: 10,
            funds: 1000,
            shards: 2,
            replay_percent: 0,
            payers: 10,
            first_payer: 0,
            batch: 4,
        }
    }

    #[test]
    fn nonces_go_up_per_payer_and_come_back_when_refused() {
        let mut workload = spec(Mix::Transfer).build(1, 2);
        let mut out = Vec::new();
        for index in 0..10 {
            workload.request(index, &mut out);
        }
        let text = String::from_utf8(out).unwrap();
        // Thread 1 of 2 pays from odd accounts only, nonce 1 then 2.
        assert!(text.contains(r#""from":"acct:1","#) && !text.contains(r#""from":"acct:0","#));
        assert!(text.contains(r#""from":"acct:1","to""#) || text.contains(r#""nonce":2"#));
        assert_eq!(text.matches(r#""nonce":2,"#).count(), 5);
        // Request 5 (acct:1, nonce 2) is refused for a conflict: resync.
        workload.answered(5, 409, b"... nonce conflict: expected 7, got 2\"}");
        let mut more = Vec::new();
        for index in 10..15 {
            workload.request(index, &mut more);
        }
        let text = String::from_utf8(more).unwrap();
        assert!(text.contains(r#""from":"acct:1","to":"#) && text.contains(r#""nonce":7,"#));
    }

    #[test]
    fn batches_carry_their_transfers_and_read_each_result() {
        // One payer, so that its nonces follow each other through batches.
        let mut workload = WalletSpec { payers: 1, ..spec(Mix::TransferBatch) }.build(0, 1);
        let mut out = Vec::new();
        workload.request(0, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /v1/transfers "), "{text}");
        assert_eq!(text.matches(r#""from":"acct:0""#).count(), 4);
        assert!((1..=4).all(|n| text.contains(&format!(r#""nonce":{n},"#))));
        // All OK: nothing to read. Then, of the batch of nonces 5..=8, 7
        // and 8 are refused and the node expects 6: the next batch starts
        // there.
        workload.answered(0, 200, b"HTTP/1.1 200 OK\r\n\r\n{\"results\":[]}");
        let mut out = Vec::new();
        workload.request(1, &mut out);
        assert!(String::from_utf8(out).unwrap().contains(r#""nonce":5,"#));
        let answer = br#"HTTP/1.1 200 OK

{"results":[{"index":0,"status":200,"code":"OK"},{"index":1,"status":200,"code":"OK"},{"index":2,"status":409,"code":"NONCE_CONFLICT","message":"nonce conflict: expected 6, got 7"},{"index":3,"status":409,"code":"NONCE_CONFLICT","message":"x"}],"committed":2}"#;
        let answer = String::from_utf8_lossy(answer).replace("OK\n\n", "OK\r\n\r\n");
        workload.answered(1, 200, answer.as_bytes());
        let mut out = Vec::new();
        workload.request(2, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#""nonce":6,"#) && !text.contains(r#""nonce":10,"#), "{text}");
        // Each write's result is counted: four OK in the first answer, two
        // and two conflicts in the second; a batch refused whole counts
        // each of its writes under its status.
        workload.answered(2, 429, b"HTTP/1.1 429 Too Many Requests\r\n\r\n");
        let outcomes: Vec<(String, u64)> = workload.outcomes().into_iter().collect();
        let expected = [("HTTP 429", 4), ("NONCE_CONFLICT", 2), ("OK", 6)];
        assert_eq!(outcomes, expected.map(|(code, n)| (code.to_owned(), n)));
    }

    #[test]
    fn a_run_starts_its_payers_where_the_last_run_left_them() {
        let spec = WalletSpec { payers: 2, ..spec(Mix::Transfer) };
        let nonces = |text: &str| text.matches(r#""nonce":"#).count();
        let mut first = spec.build(0, 1);
        let mut out = Vec::new();
        for index in 0..6 {
            first.request(index, &mut out);
        }
        assert_eq!(nonces(&String::from_utf8(out).unwrap()), 6);
        // Request 5 (acct:1, nonce 3) was refused: it gives its nonce back.
        first.answered(5, 429, b"");
        drop(first);
        let mut second = spec.build(0, 1);
        let mut out = Vec::new();
        second.request(0, &mut out);
        second.request(1, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#""from":"acct:0","to":"#) && text.contains(r#""nonce":4,"#));
        assert!(text.contains(r#""from":"acct:1","to":"#) && text.contains(r#""nonce":3,"#));
        // Another token (another node) starts from 1.
        let mut other = WalletSpec { token: "another".into(), ..spec }.build(0, 1);
        let mut out = Vec::new();
        other.request(0, &mut out);
        assert!(String::from_utf8(out).unwrap().contains(r#""nonce":1,"#));
    }

    #[test]
    fn setup_receipts_are_found_by_their_computed_txid() {
        let txid = setup_txid(3, 1000);
        assert!(txid.starts_with("tx_") && txid.len() == 35);
        let mut workload = spec(Mix::Setup).build(0, 1);
        let mut out = Vec::new();
        workload.request(13, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(
            r#""to":"acct:3","asset":"roc","amount_minor":"1000","idempotency_key":"setup-3""#
        ));
    }
}
