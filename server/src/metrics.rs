//! Per-shard metrics, merged at scrape (SPEC §9).
//!
//! Each shard owns its histograms and counters outright: recording is a plain
//! write on the shard's own core, with no atomics. A scrape asks every shard
//! for a snapshot over the mesh, adds them up and renders Prometheus text.

use crate::routes::{ROUTE_LABEL_COUNT, route_label};
use hdrhistogram::Histogram;
use ron_proto::ErrorCode;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Bucket bounds of every exported latency histogram, in seconds (50 µs to 5 s).
pub const LATENCY_BUCKETS_S: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// A latency histogram in nanoseconds, two significant figures, plus the exact
/// sum Prometheus wants.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    histogram: Histogram<u64>,
    sum_ns: u64,
}

impl Default for LatencyHistogram {
    fn default() -> LatencyHistogram {
        LatencyHistogram {
            histogram: Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("valid bounds"),
            sum_ns: 0,
        }
    }
}

impl LatencyHistogram {
    pub fn record(&mut self, elapsed: Duration) {
        let ns = (elapsed.as_nanos() as u64).max(1);
        self.histogram.saturating_record(ns);
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    pub fn add(&mut self, other: &LatencyHistogram) {
        self.histogram.add(&other.histogram).expect("histograms share their bounds");
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    pub fn max_ns(&self) -> u64 {
        self.histogram.max()
    }
}

/// A histogram of counts (entries per batch, say), exported with
/// power-of-two buckets.
#[derive(Clone, Debug)]
pub struct CountHistogram {
    histogram: Histogram<u64>,
    sum: u64,
}

impl Default for CountHistogram {
    fn default() -> CountHistogram {
        CountHistogram {
            histogram: Histogram::new_with_bounds(1, 1 << 32, 2).expect("valid bounds"),
            sum: 0,
        }
    }
}

impl CountHistogram {
    pub fn record(&mut self, value: u64) {
        self.histogram.saturating_record(value.max(1));
        self.sum = self.sum.saturating_add(value);
    }

    pub fn add(&mut self, other: &CountHistogram) {
        self.histogram.add(&other.histogram).expect("histograms share their bounds");
        self.sum = self.sum.saturating_add(other.sum);
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    pub fn value_at_quantile(&self, quantile: f64) -> u64 {
        self.histogram.value_at_quantile(quantile)
    }
}

/// Writes `_bucket` (powers of two up to 2^16), `_sum` and `_count` lines.
pub fn count_histogram_lines(out: &mut String, name: &str, histogram: &CountHistogram) {
    for power in 0..=16 {
        let le = 1u64 << power;
        let count = histogram.histogram.count_between(0, le);
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", histogram.count());
    let _ = writeln!(out, "{name}_sum {}", histogram.sum);
    let _ = writeln!(out, "{name}_count {}", histogram.count());
}

/// Everything one shard counts. Cloned whole for a scrape.
#[derive(Clone, Debug)]
pub struct ShardMetrics {
    pub request_latency: Vec<LatencyHistogram>,
    pub inflight: Vec<i64>,
    pub busy_rejections: Vec<u64>,
    pub rejected: [u64; ErrorCode::ALL.len()],
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub connections_open: i64,
    pub mesh_calls: u64,
    pub parks: u64,
    pub park_timeouts: u64,
    /// How late a 1 ms glommio timer fired (the timer probe).
    pub timer_lateness: LatencyHistogram,
    /// Wallet writes answered with their stored receipt.
    pub wallet_idem_replays: u64,
    /// One per shard, filled in when metrics are gathered.
    pub ledger_shards: Vec<LedgerShardGauges>,
    pub passport: PassportMetrics,
}

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

    fn add(&mut self, other: &PassportMetrics) {
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

    fn render(&self, out: &mut String) {
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
        for (name, kind, help, value) in simple {
            header(out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

/// How far one shard has applied the log and written its view.
#[derive(Clone, Copy, Debug, Default)]
pub struct LedgerShardGauges {
    pub shard: usize,
    pub applied_seq: u64,
    pub view_seq: u64,
    pub view_writes: u64,
    pub view_write_failures: u64,
}

impl Default for ShardMetrics {
    fn default() -> ShardMetrics {
        ShardMetrics {
            request_latency: vec![LatencyHistogram::default(); ROUTE_LABEL_COUNT],
            inflight: vec![0; ROUTE_LABEL_COUNT],
            busy_rejections: vec![0; ROUTE_LABEL_COUNT],
            rejected: [0; ErrorCode::ALL.len()],
            connections_accepted: 0,
            connections_refused: 0,
            connections_open: 0,
            mesh_calls: 0,
            parks: 0,
            park_timeouts: 0,
            timer_lateness: LatencyHistogram::default(),
            ledger_shards: Vec::new(),
            wallet_idem_replays: 0,
            passport: PassportMetrics::default(),
        }
    }
}

impl ShardMetrics {
    pub fn add(&mut self, other: &ShardMetrics) {
        for (mine, theirs) in self.request_latency.iter_mut().zip(&other.request_latency) {
            mine.add(theirs);
        }
        for (mine, theirs) in self.inflight.iter_mut().zip(&other.inflight) {
            *mine += theirs;
        }
        for (mine, theirs) in self.busy_rejections.iter_mut().zip(&other.busy_rejections) {
            *mine += theirs;
        }
        for (mine, theirs) in self.rejected.iter_mut().zip(&other.rejected) {
            *mine += theirs;
        }
        self.connections_accepted += other.connections_accepted;
        self.connections_refused += other.connections_refused;
        self.connections_open += other.connections_open;
        self.mesh_calls += other.mesh_calls;
        self.parks += other.parks;
        self.park_timeouts += other.park_timeouts;
        self.timer_lateness.add(&other.timer_lateness);
        self.ledger_shards.extend_from_slice(&other.ledger_shards);
        self.wallet_idem_replays += other.wallet_idem_replays;
        self.passport.add(&other.passport);
    }
}

/// Process-wide gauges read at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessGauges {
    pub resident_memory_bytes: u64,
    pub open_fds: u64,
}

impl ProcessGauges {
    pub fn read() -> ProcessGauges {
        let page_bytes = 4096;
        let resident_memory_bytes = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
            .map_or(0, |pages| pages * page_bytes);
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        ProcessGauges { resident_memory_bytes, open_fds }
    }
}

/// Renders merged metrics as Prometheus text format 0.0.4.
pub fn render(metrics: &ShardMetrics, gauges: ProcessGauges, shard_count: usize) -> String {
    let mut out = String::with_capacity(64 * 1024);
    header(
        &mut out,
        "request_latency_seconds",
        "histogram",
        "Request latency by route, from complete request to response.",
    );
    for (i, histogram) in metrics.request_latency.iter().enumerate() {
        histogram_lines(
            &mut out,
            "request_latency_seconds",
            Some(("route", route_label(i))),
            histogram,
        );
    }
    header(
        &mut out,
        "executor_timer_lateness_seconds",
        "histogram",
        "How late a 1 ms glommio timer fired on the shards (the timer probe).",
    );
    histogram_lines(&mut out, "executor_timer_lateness_seconds", None, &metrics.timer_lateness);
    header(
        &mut out,
        "executor_timer_lateness_max_seconds",
        "gauge",
        "The latest a probe timer fired since start.",
    );
    let _ = writeln!(
        out,
        "executor_timer_lateness_max_seconds {}",
        metrics.timer_lateness.max_ns() as f64 / 1e9
    );
    header(&mut out, "rejected_total", "counter", "Requests answered with an error, by code.");
    for code in ErrorCode::ALL {
        let _ = writeln!(
            out,
            "rejected_total{{reason=\"{}\"}} {}",
            code.label(),
            metrics.rejected[code.index()]
        );
    }
    header(&mut out, "busy_rejections_total", "counter", "Requests shed with 429, by endpoint.");
    for (i, count) in metrics.busy_rejections.iter().enumerate() {
        let _ = writeln!(out, "busy_rejections_total{{endpoint=\"{}\"}} {count}", route_label(i));
    }
    header(&mut out, "inflight_requests", "gauge", "Requests being processed, by route.");
    for (i, count) in metrics.inflight.iter().enumerate() {
        let _ = writeln!(out, "inflight_requests{{route=\"{}\"}} {count}", route_label(i));
    }
    let simple: [(&str, &str, &str, u64); 9] = [
        (
            "wallet_idem_replays_total",
            "counter",
            "Wallet writes answered with the stored receipt of the same request.",
            metrics.wallet_idem_replays,
        ),
        (
            "connections_accepted_total",
            "counter",
            "Connections accepted.",
            metrics.connections_accepted,
        ),
        (
            "connections_refused_total",
            "counter",
            "Connections closed at accept over the per-shard cap.",
            metrics.connections_refused,
        ),
        (
            "connections_open",
            "gauge",
            "Open client connections.",
            metrics.connections_open.max(0) as u64,
        ),
        ("mesh_calls_total", "counter", "Requests run on another shard.", metrics.mesh_calls),
        (
            "socket_ring_parks_total",
            "counter",
            "Times a shard's socket ring went idle and parked.",
            metrics.parks,
        ),
        (
            "socket_ring_park_timeouts_total",
            "counter",
            "Parks that ended on the park timer rather than on I/O or a task.",
            metrics.park_timeouts,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident set size.",
            gauges.resident_memory_bytes,
        ),
        ("process_open_fds", "gauge", "Open file descriptors.", gauges.open_fds),
    ];
    for (name, kind, help, value) in simple {
        header(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    let mut shards = metrics.ledger_shards.clone();
    shards.sort_by_key(|g| g.shard);
    type Gauge = fn(&LedgerShardGauges) -> u64;
    let per_shard: [(&str, &str, &str, Gauge); 4] = [
        ("ledger_applied_seq", "gauge", "The last log entry a shard has applied.", |g| {
            g.applied_seq
        }),
        ("ledger_view_seq", "gauge", "The last log entry a shard's LMDB view holds.", |g| {
            g.view_seq
        }),
        ("ledger_view_writes_total", "counter", "Writes of a shard's view.", |g| g.view_writes),
        (
            "ledger_view_write_failures_total",
            "counter",
            "Failed writes of a shard's view (it then stays at its last good state).",
            |g| g.view_write_failures,
        ),
    ];
    for (name, kind, help, value) in per_shard {
        header(&mut out, name, kind, help);
        for gauges in &shards {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", gauges.shard, value(gauges));
        }
    }
    metrics.passport.render(&mut out);
    header(&mut out, "node_shards", "gauge", "Shards of this node.");
    let _ = writeln!(out, "node_shards {shard_count}");
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes `_bucket`, `_sum` and `_count` lines of one histogram.
pub fn histogram_lines(
    out: &mut String,
    name: &str,
    label: Option<(&str, &str)>,
    histogram: &LatencyHistogram,
) {
    let (prefix, separator) = match label {
        Some((key, value)) => (format!("{key}=\"{value}\""), ","),
        None => (String::new(), ""),
    };
    for le in LATENCY_BUCKETS_S {
        let le_ns = (le * 1e9) as u64;
        let count = histogram.histogram.count_between(0, le_ns);
        let _ = writeln!(out, "{name}_bucket{{{prefix}{separator}le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{{prefix}{separator}le=\"+Inf\"}} {}", histogram.count());
    let braces = if prefix.is_empty() { String::new() } else { format!("{{{prefix}}}") };
    let _ = writeln!(out, "{name}_sum{braces} {}", histogram.sum_ns as f64 / 1e9);
    let _ = writeln!(out, "{name}_count{braces} {}", histogram.count());
}

/// Appends the committer's series.
pub fn render_committer(out: &mut String, committer: &crate::committer::CommitterMetrics) {
    header(
        out,
        "ledger_commit_latency_seconds",
        "histogram",
        "From the committer receiving an append to its record being durable.",
    );
    histogram_lines(out, "ledger_commit_latency_seconds", None, &committer.commit_latency);
    header(out, "ledger_batch_entries", "histogram", "Entries per log record.");
    count_histogram_lines(out, "ledger_batch_entries", &committer.batch_entries);
    header(out, "ledger_fsync_seconds", "histogram", "fdatasync of one log record.");
    histogram_lines(out, "ledger_fsync_seconds", None, &committer.fsync);
    header(out, "ledger_write_seconds", "histogram", "Writing one log record, before its sync.");
    histogram_lines(out, "ledger_write_seconds", None, &committer.write);
    header(out, "queue_depth", "gauge", "Items waiting, by queue.");
    let _ = writeln!(out, "queue_depth{{q=\"committer\"}} {}", committer.queued_entries);
    let simple: [(&str, &str, &str, u64); 5] = [
        (
            "ledger_safe_mode",
            "gauge",
            "1 while writes are refused.",
            u64::from(committer.safe_mode),
        ),
        (
            "ledger_seq_gap_detected_total",
            "counter",
            "Sequence gaps found (never expected).",
            committer.seq_gaps_detected,
        ),
        ("ledger_entries_total", "counter", "Entries committed.", committer.entries_committed),
        ("ledger_records_total", "counter", "Log records written.", committer.records_written),
        (
            "ledger_duplicate_rejections_total",
            "counter",
            "Appends refused for an entry id already committed.",
            committer.duplicates_rejected,
        ),
    ];
    for (name, kind, help, value) in simple {
        header(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_merge_adds() {
        let mut a = ShardMetrics::default();
        let mut b = ShardMetrics::default();
        a.request_latency[0].record(Duration::from_micros(40));
        a.request_latency[0].record(Duration::from_millis(3));
        b.request_latency[0].record(Duration::from_secs(10));
        b.rejected[ErrorCode::TooLarge.index()] = 2;
        a.add(&b);
        let text = render(&a, ProcessGauges::default(), 2);
        let route = route_label(0);
        assert!(
            text.contains(&format!(
                "request_latency_seconds_bucket{{route=\"{route}\",le=\"0.00005\"}} 1\n"
            )),
            "{text}"
        );
        assert!(text.contains(&format!(
            "request_latency_seconds_bucket{{route=\"{route}\",le=\"0.005\"}} 2\n"
        )));
        assert!(text.contains(&format!(
            "request_latency_seconds_bucket{{route=\"{route}\",le=\"5\"}} 2\n"
        )));
        assert!(text.contains(&format!(
            "request_latency_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} 3\n"
        )));
        assert!(text.contains(&format!("request_latency_seconds_count{{route=\"{route}\"}} 3\n")));
        assert!(text.contains("rejected_total{reason=\"too_large\"} 2\n"));
    }
}
