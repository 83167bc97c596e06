//! The index workloads of issue 12 over a generated key space of `keys`
//! sites `site-<i>.bench`, each pointing at its own manifest
//! `{"bench":"index","key":<i>}` (its cid computed here as the node does),
//! provided by `http://10.0.<i/256 % 256>.<i % 256>:80`:
//!
//! * `index-setup`: for every key, in turn, stores the manifest, points the
//!   site at it and provides it (3 requests per key, idempotent: running it
//!   again changes nothing but the providers' TTLs);
//! * `index-resolve`: `GET /resolve/name:…`, 80 % of requests over the hot
//!   fifth of the keys, 20 % over the rest (the seed's 80/20);
//! * `index-hot`: resolves over the first `hot_keys` keys only (cache hits
//!   once warm);
//! * `index-providers`: `GET /providers/<cid>` with the same 80/20 mix;
//! * `index-cold`: `?fresh=true` resolves over uniform keys: every answer is
//!   made afresh from the owners' state (the cache-cold sweep; the refill
//!   of a miss from the local view);
//! * `index-remote`: `?fresh=true` resolves of the manifests' cids over
//!   uniform keys, for a node that knows them only through the DHT.
//!
//! `--provider-url` makes setup name a real provider (a node's URL) instead
//! of the unroutable `10.0.x.y`, with `--provider-ttl` seconds.

use crate::workload::{ByteWriter, Workload};
use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexMix {
    Setup,
    Resolve,
    Hot,
    Providers,
    Cold,
    Remote,
}

impl IndexMix {
    pub fn parse(name: &str) -> Option<IndexMix> {
        match name {
            "index-setup" => Some(IndexMix::Setup),
            "index-resolve" => Some(IndexMix::Resolve),
            "index-hot" => Some(IndexMix::Hot),
            "index-providers" => Some(IndexMix::Providers),
            "index-cold" => Some(IndexMix::Cold),
            "index-remote" => Some(IndexMix::Remote),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            IndexMix::Setup => "index-setup",
            IndexMix::Resolve => "index-resolve",
            IndexMix::Hot => "index-hot",
            IndexMix::Providers => "index-providers",
            IndexMix::Cold => "index-cold",
            IndexMix::Remote => "index-remote",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexSpec {
    pub mix: IndexMix,
    /// Needed by `index-setup` (index.write); reads send it when given.
    pub token: Option<String>,
    pub keys: usize,
    pub hot_keys: usize,
    /// The provider setup names (else `http://10.0.x.y:80`), and its TTL.
    pub provider_url: Option<String>,
    pub provider_ttl_s: u64,
}

/// The manifest of key `i`.
pub fn manifest(i: usize) -> String {
    format!(r#"{{"bench":"index","key":{i}}}"#)
}

/// The cid of key `i`'s manifest, `b3:<hex>`.
pub fn manifest_cid(i: usize) -> String {
    ron_proto::index::Cid::of(manifest(i).as_bytes()).to_string()
}

impl IndexSpec {
    pub fn describe(&self) -> String {
        match self.mix {
            IndexMix::Hot => format!("index-hot over {} keys", self.hot_keys.min(self.keys)),
            mix => format!("{} over {} keys", mix.name(), self.keys),
        }
    }

    pub fn build(&self, thread: usize, threads: usize) -> Box<dyn Workload> {
        assert!(self.keys > 0 && threads > 0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let auth = match &self.token {
            Some(token) => format!("Authorization: Bearer {}\r\n", token.trim()),
            None => String::new(),
        };
        Box::new(IndexWorkload {
            spec: self.clone(),
            auth,
            rng: nanos ^ (thread as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            thread,
            threads,
            body: String::with_capacity(256),
        })
    }
}

struct IndexWorkload {
    spec: IndexSpec,
    auth: String,
    rng: u64,
    thread: usize,
    threads: usize,
    body: String,
}

impl IndexWorkload {
    fn next_random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A key: 80 % from the hot fifth, 20 % from the rest.
    fn eighty_twenty(&mut self) -> usize {
        let keys = self.spec.keys;
        let hot = (keys / 5).max(1);
        let roll = self.next_random() % 100;
        let pick = self.next_random() as usize;
        if roll < 80 || hot == keys { pick % hot } else { hot + pick % (keys - hot) }
    }

    fn get(&self, path: std::fmt::Arguments<'_>, out: &mut Vec<u8>) {
        let _ =
            write!(ByteWriter(out), "GET {path} HTTP/1.1\r\nHost: ron-load\r\n{}\r\n", self.auth);
    }

    fn send(&mut self, method: &str, path: &str, media: &str, out: &mut Vec<u8>) {
        let _ = write!(
            ByteWriter(out),
            "{method} {path} HTTP/1.1\r\nHost: ron-load\r\n{}Content-Type: {media}\r\nContent-Length: {}\r\n\r\n{}",
            self.auth,
            self.body.len(),
            self.body
        );
    }

    /// Request `step` of the setup: this thread's keys in turn, three
    /// requests each.
    fn setup(&mut self, index: u64, out: &mut Vec<u8>) {
        let own = (self.spec.keys.saturating_sub(self.thread)).div_ceil(self.threads).max(1);
        let key = self.thread + (index as usize / 3 % own) * self.threads;
        let key = key % self.spec.keys;
        self.body.clear();
        match index % 3 {
            0 => {
                self.body.push_str(&manifest(key));
                self.send("PUT", "/v1/index/objects", "application/octet-stream", out);
            }
            1 => {
                let _ = write!(self.body, r#"{{"manifest_cid":"{}"}}"#, manifest_cid(key));
                let path = format!("/v1/index/sites/site-{key}.bench/manifest");
                self.send("PUT", &path, "application/json", out);
            }
            _ => {
                let node = match &self.spec.provider_url {
                    Some(url) => url.clone(),
                    None => format!("http://10.0.{}.{}:80", key / 256 % 256, key % 256),
                };
                let _ = write!(
                    self.body,
                    r#"{{"cid":"{}","node":"{node}","ttl_secs":{}}}"#,
                    manifest_cid(key),
                    self.spec.provider_ttl_s
                );
                self.send("POST", "/dht/provide", "application/json", out);
            }
        }
    }
}

impl Workload for IndexWorkload {
    fn request(&mut self, index: u64, out: &mut Vec<u8>) -> usize {
        match self.spec.mix {
            IndexMix::Setup => self.setup(index, out),
            IndexMix::Resolve => {
                let key = self.eighty_twenty();
                self.get(format_args!("/resolve/name:site-{key}.bench"), out);
            }
            IndexMix::Hot => {
                let key = self.next_random() as usize % self.spec.hot_keys.clamp(1, self.spec.keys);
                self.get(format_args!("/resolve/name:site-{key}.bench"), out);
            }
            IndexMix::Providers => {
                let key = self.eighty_twenty();
                self.get(format_args!("/providers/{}", manifest_cid(key)), out);
            }
            IndexMix::Cold => {
                let key = self.next_random() as usize % self.spec.keys;
                self.get(format_args!("/resolve/name:site-{key}.bench?fresh=true"), out);
            }
            IndexMix::Remote => {
                let key = self.next_random() as usize % self.spec.keys;
                self.get(format_args!("/resolve/{}?fresh=true", manifest_cid(key)), out);
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_covers_every_key_once_per_pass_across_threads() {
        let spec = IndexSpec {
            mix: IndexMix::Setup,
            token: Some("t".into()),
            keys: 10,
            hot_keys: 2,
            provider_url: None,
            provider_ttl_s: 60,
        };
        let mut sites = std::collections::BTreeSet::new();
        for thread in 0..3 {
            let mut workload = spec.build(thread, 3);
            for i in 0..12 {
                let mut out = Vec::new();
                workload.request(i, &mut out);
                let text = String::from_utf8(out).unwrap();
                if let Some(at) = text.find("/v1/index/sites/") {
                    sites.insert(text[at..].split('/').nth(4).unwrap().to_owned());
                }
                assert_eq!(text.matches("\r\n\r\n").count(), 1);
            }
        }
        assert_eq!(sites.len(), 10, "{sites:?}");
    }

    #[test]
    fn the_mix_is_eighty_twenty() {
        let spec = IndexSpec {
            mix: IndexMix::Resolve,
            token: None,
            keys: 1000,
            hot_keys: 10,
            provider_url: None,
            provider_ttl_s: 60,
        };
        let mut workload = spec.build(0, 1);
        let mut hot = 0;
        for i in 0..10_000 {
            let mut out = Vec::new();
            workload.request(i, &mut out);
            let text = String::from_utf8(out).unwrap();
            let key: usize =
                text.split("site-").nth(1).unwrap().split('.').next().unwrap().parse().unwrap();
            hot += usize::from(key < 200);
        }
        assert!((7_500..8_500).contains(&hot), "{hot}");
        assert_eq!(manifest_cid(3).len(), 67);
    }
}
