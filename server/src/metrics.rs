//! The pieces every metric is made of (SPEC §9): latency and count
//! histograms with Prometheus rendering, and the interface of a service's
//! metrics.
//!
//! Each shard owns its histograms and counters outright: recording is a plain
//! write on the shard's own core, with no atomics. A scrape asks every shard
//! for a snapshot over the mesh, adds them up and renders Prometheus text
//! (`crate::core::metrics`).

use hdrhistogram::Histogram;
use std::any::Any;
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

    /// Values at most `le_ns` (a bucket of another unit's scale).
    pub fn count_at_most_ns(&self, le_ns: u64) -> u64 {
        self.histogram.count_between(0, le_ns)
    }

    pub fn sum_ns(&self) -> u64 {
        self.sum_ns
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

/// A service's metrics on one shard. A scrape merges every shard's part of
/// a service into one and renders it once.
pub trait MetricsPart: Send + 'static {
    /// Adds `other`, a part of the same service from another shard.
    fn merge(&mut self, other: &dyn MetricsPart);
    fn render(&self, out: &mut String);
    fn as_any(&self) -> &dyn Any;
    /// Its queues' depths, rendered with the others' in one `queue_depth`
    /// family (`queue_depth_lines`).
    fn queue_depths(&self, _out: &mut Vec<(&'static str, u64)>) {}
}

/// The `queue_depth{q}` family: items waiting, by queue.
pub fn queue_depth_lines(out: &mut String, depths: &[(&'static str, u64)]) {
    header(out, "queue_depth", "gauge", "Items waiting, by queue.");
    for (queue, depth) in depths {
        let _ = writeln!(out, "queue_depth{{q=\"{queue}\"}} {depth}");
    }
}

/// Something that has metrics on a shard (its services), registered at
/// start.
pub trait MetricsSource {
    /// Appends a copy of each of its parts.
    fn snapshot(&self, out: &mut Vec<Box<dyn MetricsPart>>);
}

pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
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

/// Writes a `# HELP`/`# TYPE` header and one sample for each of `(name,
/// kind, help, value)`.
pub fn simple_lines(out: &mut String, series: &[(&str, &str, &str, f64)]) {
    for (name, kind, help, value) in series {
        header(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
}
