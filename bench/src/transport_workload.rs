//! The adversarial transport mix of the wallet seed: another workload's
//! requests, of which a share is sent with a gzip body inflating to just
//! under the node's ratio cap (`limits.decompress_ratio_max`, padded with
//! JSON whitespace, so it must be accepted and answered like the plain
//! one), and a share declares a body over `limits.body_max_bytes` (the node
//! must answer 413 from the head and close the connection; the requests
//! pipelined behind it on that connection are lost with it and counted as
//! unanswered).

use crate::workload::{ByteWriter, Workload, WorkloadSpec};
use std::fmt::Write as _;
use std::io::Write as _;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportSpec {
    pub inner: Box<WorkloadSpec>,
    /// Of every 100 requests with a body, this many are gzip near the cap.
    pub gzip_percent: u64,
    /// Of every 100 requests, this many declare an oversized body.
    pub oversized_percent: u64,
    /// The node's `limits.decompress_ratio_max` and `limits.body_max_bytes`.
    pub ratio_max: usize,
    pub body_max: usize,
}

impl TransportSpec {
    pub fn describe(&self) -> String {
        format!(
            "{} with {} % gzip bodies near {}:1 and {} % over {} B",
            self.inner.describe(),
            self.gzip_percent,
            self.ratio_max,
            self.oversized_percent,
            self.body_max
        )
    }

    pub fn build(&self, thread: usize, threads: usize) -> Box<dyn Workload> {
        Box::new(Transport {
            spec: self.clone(),
            inner: self.inner.build(thread, threads),
            plain: Vec::new(),
            inflated: Vec::new(),
            pad: 0,
        })
    }
}

struct Transport {
    spec: TransportSpec,
    inner: Box<dyn Workload>,
    plain: Vec<u8>,
    inflated: Vec<u8>,
    /// Spaces appended last time (reused while the ratio stays in range).
    pad: usize,
}

/// Deterministic spread of request indices over 0..100.
fn slot(index: u64) -> u64 {
    index.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) % 100
}

impl Workload for Transport {
    fn request(&mut self, index: u64, out: &mut Vec<u8>) -> usize {
        self.plain.clear();
        let shard = self.inner.request(index, &mut self.plain);
        let Some(head_end) = self.plain.windows(4).position(|w| w == b"\r\n\r\n") else {
            out.extend_from_slice(&self.plain);
            return shard;
        };
        let head = &self.plain[..head_end + 2];
        let body = &self.plain[head_end + 4..];
        let slot = slot(index);
        if slot < self.spec.oversized_percent {
            // The head alone, declaring one byte more than the node takes.
            let line_end = head.windows(2).position(|w| w == b"\r\n").unwrap_or(head.len());
            let line = String::from_utf8_lossy(&head[..line_end]);
            let path = line.split(' ').nth(1).unwrap_or("/");
            let _ = write!(
                ByteWriter(out),
                "POST {path} HTTP/1.1\r\nHost: ron-load\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n",
                self.spec.body_max + 1
            );
        } else if slot < self.spec.oversized_percent + self.spec.gzip_percent && !body.is_empty() {
            let compressed = near_cap(body, self.spec.ratio_max, &mut self.pad, &mut self.inflated);
            for line in head.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                if !line.to_ascii_lowercase().starts_with(b"content-length:") {
                    out.extend_from_slice(line);
                    out.push(b'\n');
                }
            }
            let _ = write!(
                ByteWriter(out),
                "Content-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
                compressed.len()
            );
            out.extend_from_slice(&compressed);
        } else {
            out.extend_from_slice(&self.plain);
        }
        shard
    }

    fn answered(&mut self, index: u64, status: u16, response: &[u8]) {
        self.inner.answered(index, status, response);
    }

    fn outcomes(&self) -> std::collections::BTreeMap<String, u64> {
        self.inner.outcomes()
    }
}

/// `body` followed by spaces and gzipped so that it inflates to between
/// 80 % and 95 % of `ratio_max` times its compressed size.
fn near_cap(body: &[u8], ratio_max: usize, pad: &mut usize, inflated: &mut Vec<u8>) -> Vec<u8> {
    let gzip = |pad: usize, inflated: &mut Vec<u8>| {
        inflated.clear();
        inflated.extend_from_slice(body);
        inflated.resize(body.len() + pad, b' ');
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(inflated).expect("writing to memory");
        encoder.finish().expect("writing to memory")
    };
    let (low, high) = (0.80 * ratio_max as f64, 0.95 * ratio_max as f64);
    let (mut below, mut above) = (0usize, body.len() * ratio_max * 4);
    let mut compressed = gzip(*pad, inflated);
    for _ in 0..24 {
        let ratio = inflated.len() as f64 / compressed.len() as f64;
        if (low..high).contains(&ratio) {
            break;
        }
        if ratio < low {
            below = *pad;
        } else {
            above = *pad;
        }
        *pad = (below + above) / 2;
        compressed = gzip(*pad, inflated);
    }
    compressed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_bodies_sit_just_under_the_cap_and_oversized_heads_cross_the_limit() {
        let inner = WorkloadSpec::LedgerIngest { token: "t".into(), entries: 4 };
        let spec = TransportSpec {
            inner: Box::new(inner),
            gzip_percent: 10,
            oversized_percent: 1,
            ratio_max: 10,
            body_max: 1_048_576,
        };
        let mut workload = spec.build(0, 1);
        let (mut gzip, mut oversized, mut plain) = (0, 0, 0);
        for index in 0..1000 {
            let mut out = Vec::new();
            workload.request(index, &mut out);
            let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            let head = String::from_utf8(out[..end].to_vec()).unwrap();
            let body = &out[end + 4..];
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            if head.contains("Content-Encoding: gzip") {
                gzip += 1;
                assert_eq!(length, body.len());
                let mut decoder = flate2::read::GzDecoder::new(body);
                let mut inflated = Vec::new();
                std::io::Read::read_to_end(&mut decoder, &mut inflated).unwrap();
                let ratio = inflated.len() as f64 / body.len() as f64;
                assert!((8.0..9.5).contains(&ratio), "ratio {ratio}");
                assert!(inflated.starts_with(br#"{"batch":["#));
            } else if length > 1_048_576 {
                oversized += 1;
                assert!(body.is_empty() && head.starts_with("POST /ingest "));
            } else {
                plain += 1;
                assert_eq!(length, body.len());
            }
        }
        assert!((5..=20).contains(&oversized), "{oversized}");
        assert!((70..=130).contains(&gzip), "{gzip}");
        assert_eq!(plain + gzip + oversized, 1000);
    }
}
