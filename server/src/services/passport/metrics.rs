//! What the passport counts on a shard (SPEC §9).

use crate::metrics::{
    CountHistogram, LatencyHistogram, MetricsPart, count_histogram_lines, header, histogram_lines,
    simple_lines,
};
use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What the passport counts on a shard.
#[derive(Clone, Debug, Default)]
pub struct PassportMetrics {
    /// `POST /v1/passport/issue`, from the parsed request to the answer.
    pub issue_latency: LatencyHistogram,
    /// One token's verification (route or any protected request).
    pub verify_latency: LatencyHistogram,
    /// Refused tokens by reason (route verifications and protected requests).
    pub rejects: BTreeMap<&'static str, u64>,
    /// From a revocation being durable to the last shard applying it.
    pub revocation_propagation: LatencyHistogram,
    /// Verify cache lookups (filled in at scrape).
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Tokens in the verify caches (filled in at scrape).
    pub cache_entries: u64,
    /// Signing one ML-DSA batch (tree and signature), and its tokens.
    pub pq_batch_sign: LatencyHistogram,
    pub pq_batch_tokens: CountHistogram,
}

impl PassportMetrics {
    pub fn reject(&mut self, reason: &'static str) {
        *self.rejects.entry(reason).or_default() += 1;
    }

    pub fn add(&mut self, other: &PassportMetrics) {
        self.issue_latency.add(&other.issue_latency);
        self.verify_latency.add(&other.verify_latency);
        for (reason, count) in &other.rejects {
            *self.rejects.entry(reason).or_default() += count;
        }
        self.revocation_propagation.add(&other.revocation_propagation);
        self.cache_hits += other.cache_hits;
        self.cache_misses += other.cache_misses;
        self.cache_entries += other.cache_entries;
        self.pq_batch_sign.add(&other.pq_batch_sign);
        self.pq_batch_tokens.add(&other.pq_batch_tokens);
    }

    fn render_lines(&self, out: &mut String) {
        let histograms = [
            (
                "svc_passport_issue_latency_seconds",
                "Minting one token (POST /v1/passport/issue).",
                &self.issue_latency,
            ),
            (
                "svc_passport_verify_latency_seconds",
                "Verifying one presented token: cache or decoding, key, tag, revocations, caveats.",
                &self.verify_latency,
            ),
            (
                "passport_pq_batch_sign_seconds",
                "Signing one batch of issued tokens with ML-DSA-65 (tree and signature).",
                &self.pq_batch_sign,
            ),
            (
                "passport_revocation_propagation_seconds",
                "From a revocation being durable to the last shard refusing it.",
                &self.revocation_propagation,
            ),
        ];
        for (name, help, histogram) in histograms {
            header(out, name, "histogram", help);
            histogram_lines(out, name, None, histogram);
        }
        header(out, "passport_pq_batch_tokens", "histogram", "Tokens per ML-DSA signed batch.");
        count_histogram_lines(out, "passport_pq_batch_tokens", &self.pq_batch_tokens);
        header(out, "svc_passport_rejects_total", "counter", "Tokens refused, by reason.");
        for (reason, count) in &self.rejects {
            let _ = writeln!(out, "svc_passport_rejects_total{{reason=\"{reason}\"}} {count}");
        }
        let lookups = self.cache_hits + self.cache_misses;
        let ratio = if lookups == 0 { 0.0 } else { self.cache_hits as f64 / lookups as f64 };
        let simple = [
            (
                "passport_verify_cache_hits_total",
                "counter",
                "Verify cache hits.",
                self.cache_hits as f64,
            ),
            (
                "passport_verify_cache_misses_total",
                "counter",
                "Verify cache misses.",
                self.cache_misses as f64,
            ),
            ("passport_verify_cache_hit_ratio", "gauge", "Hits over lookups since start.", ratio),
            (
                "passport_verify_cache_entries",
                "gauge",
                "Tokens in the verify caches.",
                self.cache_entries as f64,
            ),
        ];
        simple_lines(out, &simple);
    }
}

impl MetricsPart for PassportMetrics {
    fn merge(&mut self, other: &dyn MetricsPart) {
        self.add(other.as_any().downcast_ref().expect("the passport's metrics"));
    }

    fn render(&self, out: &mut String) {
        self.render_lines(out);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

