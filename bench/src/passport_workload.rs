//! The passport workloads of issue 5:
//!
//! * `passport-verify`: `POST /v1/passport/verify` over a pool of issued
//!   tokens (the verify-only mix);
//! * `passport-mix`: 80 % `POST /v1/passport/issue`, 20 % verify
//!   (`--accept-algs ed25519` asks for Ed25519 signatures on the issues);
//! * `passport-issue`: issues only (the cost of `pq_mode`);
//! * `passport-revoke`: the verify mix with one revocation of a pool token
//!   every `--revoke-every` requests; the run ends with the node's
//!   `passport_revocation_propagation_seconds` percentiles.
//!
//! The pool is issued before the run through the node itself (the
//! `--token` must carry `passport.issue`; `passport-revoke` also
//! `passport.admin`).

use crate::workload::{ByteWriter, Workload};
use std::fmt::Write as _;
use std::net::SocketAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassportMix {
    Verify,
    IssueVerify,
    Issue,
    Revoke,
}

impl PassportMix {
    pub fn parse(name: &str) -> Option<PassportMix> {
        match name {
            "passport-verify" => Some(PassportMix::Verify),
            "passport-mix" => Some(PassportMix::IssueVerify),
            "passport-issue" => Some(PassportMix::Issue),
            "passport-revoke" => Some(PassportMix::Revoke),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PassportMix::Verify => "passport-verify",
            PassportMix::IssueVerify => "passport-mix",
            PassportMix::Issue => "passport-issue",
            PassportMix::Revoke => "passport-revoke",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassportSpec {
    pub mix: PassportMix,
    pub token: String,
    /// Issued before the run: (token, token_id).
    pub pool: Vec<(String, String)>,
    pub accept_algs: Option<String>,
    pub revoke_every: u64,
}

/// Tokens issued for the pool.
pub const POOL: usize = 256;

impl PassportSpec {
    pub fn describe(&self) -> String {
        let algs = self.accept_algs.as_deref().map_or(String::new(), |a| format!(", accept {a}"));
        let revoke = if self.mix == PassportMix::Revoke {
            format!(", a revocation every {} requests", self.revoke_every)
        } else {
            String::new()
        };
        format!("{} over {} tokens{algs}{revoke}", self.mix.name(), self.pool.len())
    }

    pub fn build(&self, thread: usize, threads: usize) -> Box<dyn Workload> {
        Box::new(PassportLoad {
            spec: self.clone(),
            thread,
            threads,
            body: String::with_capacity(1024),
        })
    }

    /// Issues the pool through the node at `target`.
    pub fn issue_pool(target: SocketAddr, token: &str) -> anyhow::Result<Vec<(String, String)>> {
        let mut pool = Vec::with_capacity(POOL);
        for i in 0..POOL {
            let body = format!(
                r#"{{"subject_ref":"pool-{i}","audience":"ron-node","ttl_s":3600,"scopes":["wallet.read"]}}"#
            );
            let mut answer =
                crate::fetch(target, "POST", "/v1/passport/issue", Some(token), Some(&body))?;
            let value = simd_json::to_owned_value(&mut answer)?;
            use simd_json::prelude::*;
            let token = value.get_str("token").ok_or_else(|| anyhow::anyhow!("no token"))?;
            let id = value.get_str("token_id").ok_or_else(|| anyhow::anyhow!("no token id"))?;
            pool.push((token.to_owned(), id.to_owned()));
        }
        Ok(pool)
    }
}

struct PassportLoad {
    spec: PassportSpec,
    thread: usize,
    threads: usize,
    body: String,
}

impl PassportLoad {
    fn pick(&self, index: u64) -> &(String, String) {
        let n = (index as usize * self.threads + self.thread).wrapping_mul(2_654_435_761);
        &self.spec.pool[n % self.spec.pool.len()]
    }

    fn write(&mut self, path: &str, out: &mut Vec<u8>) {
        let _ = write!(
            ByteWriter(out),
            "POST {path} HTTP/1.1\r\nHost: ron-load\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.spec.token.trim(),
            self.body.len()
        );
        out.extend_from_slice(self.body.as_bytes());
    }
}

impl Workload for PassportLoad {
    fn request(&mut self, index: u64, out: &mut Vec<u8>) -> usize {
        self.body.clear();
        let issue = match self.spec.mix {
            PassportMix::IssueVerify => index % 5 != 0,
            PassportMix::Issue => true,
            PassportMix::Verify | PassportMix::Revoke => false,
        };
        let revoke = self.spec.mix == PassportMix::Revoke
            && self.spec.revoke_every > 0
            && index % self.spec.revoke_every == self.spec.revoke_every - 1;
        if issue {
            let algs = self
                .spec
                .accept_algs
                .as_deref()
                .map_or(String::new(), |a| format!(r#","accept_algs":["{a}"]"#));
            let _ = write!(
                self.body,
                r#"{{"subject_ref":"load-{}-{index}","audience":"ron-node","ttl_s":600,"scopes":["wallet.read"]{algs}}}"#,
                self.thread
            );
            self.write("/v1/passport/issue", out);
        } else if revoke {
            let id = self.pick(index).1.clone();
            let _ = write!(self.body, r#"{{"token_id":"{id}","reason":"ron-load"}}"#);
            self.write("/v1/passport/revoke", out);
        } else {
            let token = self.pick(index).0.clone();
            let _ = write!(
                self.body,
                r#"{{"token":"{token}","context":{{"method":"GET","route":"/v1/balance"}}}}"#
            );
            self.write("/v1/passport/verify", out);
        }
        0
    }
}

/// Percentiles (upper bucket bounds, seconds) of a Prometheus histogram
/// `name` in `metrics`: (quantile, bound) pairs, and the count.
pub fn histogram_percentiles(
    metrics: &str,
    name: &str,
    quantiles: &[f64],
) -> (u64, Vec<(f64, String)>) {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(String, u64)> = metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            Some((le.to_owned(), count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0, |(_, c)| *c);
    let found = quantiles
        .iter()
        .map(|q| {
            let wanted = (q * total as f64).ceil() as u64;
            let bound = buckets
                .iter()
                .find(|(_, count)| *count >= wanted.max(1))
                .map_or("-".to_owned(), |(le, _)| le.clone());
            (*q, bound)
        })
        .collect();
    (total, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_follow_the_mix() {
        let pool = (0..4).map(|i| (format!("ron1.t{i}"), format!("{i:032x}"))).collect();
        let spec = PassportSpec {
            mix: PassportMix::IssueVerify,
            token: "ron1.admin".into(),
            pool,
            accept_algs: Some("ed25519".into()),
            revoke_every: 10,
        };
        let mut load = spec.build(0, 1);
        let mut out = Vec::new();
        for i in 0..10 {
            load.request(i, &mut out);
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("POST /v1/passport/issue").count(), 8);
        assert_eq!(text.matches("POST /v1/passport/verify").count(), 2);
        assert!(text.contains(r#""accept_algs":["ed25519"]"#));
        let mut revoke = PassportSpec { mix: PassportMix::Revoke, ..spec }.build(0, 1);
        let mut out = Vec::new();
        for i in 0..20 {
            revoke.request(i, &mut out);
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("POST /v1/passport/revoke").count(), 2);
        assert_eq!(text.matches("POST /v1/passport/verify").count(), 18);
    }

    #[test]
    fn percentiles_from_buckets() {
        let metrics =
            "x_bucket{le=\"0.001\"} 90\nx_bucket{le=\"0.01\"} 99\nx_bucket{le=\"+Inf\"} 100\n";
        let (count, found) = histogram_percentiles(metrics, "x", &[0.5, 0.99, 1.0]);
        assert_eq!(count, 100);
        assert_eq!(found[0].1, "0.001");
        assert_eq!(found[1].1, "0.01");
        assert_eq!(found[2].1, "+Inf");
    }
}
