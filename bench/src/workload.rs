//! Workloads: what request number `i` of a run is. Each generator thread owns
//! its own instance, so a workload may keep state (counters, nonces, a
//! random key space) without locks.

use std::collections::BTreeMap;

/// One kind of traffic.
pub trait Workload: Send {
    /// Appends request `index` (counted per thread) to `out`; returns the
    /// shard it is for (used by shard-aware runs, else ignored).
    fn request(&mut self, index: u64, out: &mut Vec<u8>) -> usize;

    /// The answer to request `index`: its status and bytes (status 0 and no
    /// bytes when none came: dropped, unanswered or lost with its
    /// connection).
    fn answered(&mut self, _index: u64, _status: u16, _response: &[u8]) {}

    /// What the writes inside answers came to, by result code, over the
    /// whole run (warm-up included), for workloads whose requests carry
    /// several writes with a result each (a batch's 200 holds them all).
    fn outcomes(&self) -> BTreeMap<String, u64> {
        BTreeMap::new()
    }
}

/// How to build a thread's workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadSpec {
    /// `GET path` with no token.
    Get { path: String },
    /// `GET path` with `Authorization: Bearer <token>`.
    AuthGet { path: String, token: String },
    /// `POST /ingest` of `entries` Mint entries with ids never used before
    /// (SPEC §10's `ledger-ingest`, 16 entries per request).
    LedgerIngest { token: String, entries: usize },
    /// The wallet workloads (`crate::wallet_workload`).
    Wallet(crate::wallet_workload::WalletSpec),
    /// The passport workloads (`crate::passport_workload`).
    Passport(crate::passport_workload::PassportSpec),
    /// The index workloads (`crate::index_workload`).
    Index(crate::index_workload::IndexSpec),
    /// The rewarder workloads (`crate::reward_workload`).
    Reward(crate::reward_workload::RewardSpec),
    /// Another workload with gzip bodies near the cap and oversized ones
    /// (`crate::transport_workload`).
    Transport(crate::transport_workload::TransportSpec),
    /// Several workloads on the same connections, each taking its weight's
    /// share of the requests ("all": every service at once).
    Mixed(Vec<(WorkloadSpec, u32)>),
}

impl WorkloadSpec {
    pub fn name(&self) -> &'static str {
        match self {
            WorkloadSpec::Get { .. } => "get",
            WorkloadSpec::AuthGet { .. } => "auth-get",
            WorkloadSpec::LedgerIngest { .. } => "ledger-ingest",
            WorkloadSpec::Wallet(spec) => spec.mix.name(),
            WorkloadSpec::Passport(spec) => spec.mix.name(),
            WorkloadSpec::Index(spec) => spec.mix.name(),
            WorkloadSpec::Reward(spec) => spec.mix.name(),
            WorkloadSpec::Transport(_) => "adversarial-transport",
            WorkloadSpec::Mixed(_) => "mixed",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            WorkloadSpec::Get { path } => format!("GET {path}"),
            WorkloadSpec::AuthGet { path, .. } => format!("GET {path} (bearer token)"),
            WorkloadSpec::LedgerIngest { entries, .. } => {
                format!("POST /ingest ({entries} entries per request)")
            }
            WorkloadSpec::Wallet(spec) => spec.describe(),
            WorkloadSpec::Passport(spec) => spec.describe(),
            WorkloadSpec::Index(spec) => spec.describe(),
            WorkloadSpec::Reward(spec) => spec.describe(),
            WorkloadSpec::Transport(spec) => spec.describe(),
            WorkloadSpec::Mixed(parts) => {
                let parts: Vec<String> = parts
                    .iter()
                    .map(|(w, weight)| format!("{weight} × {}", w.describe()))
                    .collect();
                format!("mixed: {}", parts.join(", "))
            }
        }
    }

    /// The workload of generator thread `thread` of `threads`.
    pub fn build(&self, thread: usize, threads: usize) -> Box<dyn Workload> {
        match self {
            WorkloadSpec::Get { path } => Box::new(Fixed::new(path, None)),
            WorkloadSpec::AuthGet { path, token } => Box::new(Fixed::new(path, Some(token))),
            WorkloadSpec::LedgerIngest { token, entries } => {
                Box::new(LedgerIngest::new(token, *entries))
            }
            WorkloadSpec::Wallet(spec) => spec.build(thread, threads),
            WorkloadSpec::Passport(spec) => spec.build(thread, threads),
            WorkloadSpec::Index(spec) => spec.build(thread, threads),
            WorkloadSpec::Reward(spec) => spec.build(thread, threads),
            WorkloadSpec::Transport(spec) => spec.build(thread, threads),
            WorkloadSpec::Mixed(parts) => Box::new(Mixed {
                parts: parts.iter().map(|(w, _)| w.build(thread, threads)).collect(),
                weights: parts.iter().map(|(_, weight)| *weight).collect(),
            }),
        }
    }
}

/// The same request every time, prepared once.
struct Fixed {
    bytes: Vec<u8>,
}

impl Fixed {
    fn new(path: &str, token: Option<&str>) -> Fixed {
        let mut text = format!("GET {path} HTTP/1.1\r\nHost: ron-load\r\n");
        if let Some(token) = token {
            text.push_str(&format!("Authorization: Bearer {}\r\n", token.trim()));
        }
        text.push_str("\r\n");
        Fixed { bytes: text.into_bytes() }
    }
}

impl Workload for Fixed {
    fn request(&mut self, _index: u64, out: &mut Vec<u8>) -> usize {
        out.extend_from_slice(&self.bytes);
        0
    }
}

/// Workloads taking turns by weight; request `index` always goes to the
/// same part, so its answer does too.
struct Mixed {
    parts: Vec<Box<dyn Workload>>,
    weights: Vec<u32>,
}

impl Mixed {
    fn part(&self, index: u64) -> usize {
        let total: u64 = self.weights.iter().map(|w| u64::from(*w)).sum::<u64>().max(1);
        // Spread indices so that each part's requests are interleaved.
        let mut slot = index.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29) % total;
        for (i, weight) in self.weights.iter().enumerate() {
            if slot < u64::from(*weight) {
                return i;
            }
            slot -= u64::from(*weight);
        }
        self.parts.len() - 1
    }
}

impl Workload for Mixed {
    fn request(&mut self, index: u64, out: &mut Vec<u8>) -> usize {
        let part = self.part(index);
        self.parts[part].request(index, out)
    }

    fn answered(&mut self, index: u64, status: u16, response: &[u8]) {
        let part = self.part(index);
        self.parts[part].answered(index, status, response);
    }

    fn outcomes(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for part in &self.parts {
            for (code, count) in part.outcomes() {
                *all.entry(code).or_default() += count;
            }
        }
        all
    }
}

/// Ingest batches whose entry ids are unique across threads and runs: each
/// instance takes a prefix from the clock and a process-wide counter.
struct LedgerIngest {
    head: String,
    prefix: String,
    entries: usize,
    body: String,
}

impl LedgerIngest {
    fn new(token: &str, entries: usize) -> LedgerIngest {
        static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let instance = INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        LedgerIngest {
            head: format!(
                "POST /ingest HTTP/1.1\r\nHost: ron-load\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n",
                token.trim()
            ),
            prefix: format!("{nanos:x}-{instance}"),
            entries: entries.max(1),
            body: String::with_capacity(entries * 96),
        }
    }
}

impl Workload for LedgerIngest {
    fn request(&mut self, index: u64, out: &mut Vec<u8>) -> usize {
        use std::fmt::Write as _;
        self.body.clear();
        self.body.push_str(r#"{"batch":["#);
        for i in 0..self.entries {
            if i > 0 {
                self.body.push(',');
            }
            let _ = write!(
                self.body,
                r#"{{"id":"{}-{index}-{i}","kind":"Mint","account":"acct-{}","asset":"roc","amount":"1"}}"#,
                self.prefix,
                (index as usize * self.entries + i) % 1024
            );
        }
        self.body.push_str("]}");
        out.extend_from_slice(self.head.as_bytes());
        let _ = write!(ByteWriter(out), "Content-Length: {}\r\n\r\n", self.body.len());
        out.extend_from_slice(self.body.as_bytes());
        0
    }
}

/// `write!` into a byte vector.
pub(crate) struct ByteWriter<'a>(pub(crate) &'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_requests_are_complete_heads() {
        let mut workload =
            WorkloadSpec::AuthGet { path: "/v1/x".into(), token: "ron1.abc\n".into() }.build(0, 1);
        let mut out = Vec::new();
        workload.request(0, &mut out);
        workload.request(1, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("\r\n\r\n").count(), 2);
        let mut ingest = WorkloadSpec::LedgerIngest { token: "t".into(), entries: 16 }.build(0, 1);
        let mut bytes = Vec::new();
        ingest.request(7, &mut bytes);
        ingest.request(8, &mut bytes);
        let text2 = String::from_utf8(bytes).unwrap();
        let first_body = text2.split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(first_body.matches(r#""kind":"Mint""#).count(), 16);
        assert!(text2.contains("-7-15\"") && text2.contains("-8-0\""));
        assert!(text.starts_with(
            "GET /v1/x HTTP/1.1\r\nHost: ron-load\r\nAuthorization: Bearer ron1.abc\r\n\r\n"
        ));
    }

    #[test]
    fn a_mix_shares_requests_by_weight() {
        let parts = vec![
            (WorkloadSpec::Get { path: "/a".into() }, 3),
            (WorkloadSpec::Get { path: "/b".into() }, 1),
        ];
        let mut mixed = WorkloadSpec::Mixed(parts).build(0, 1);
        let mut out = Vec::new();
        for index in 0..4000 {
            mixed.request(index, &mut out);
        }
        let text = String::from_utf8(out).unwrap();
        let a = text.matches("GET /a ").count();
        assert_eq!(a + text.matches("GET /b ").count(), 4000);
        assert!((2800..3200).contains(&a), "{a}");
    }
}
