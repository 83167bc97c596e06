//! What a shard's core counts (requests by route, connections, the ring,
//! the mesh, the timer probe, how far it applied the log), and the scrape:
//! every shard's core and service metrics merged, rendered as Prometheus
//! text format 0.0.4.

use crate::metrics::{
    LatencyHistogram, MetricsPart, ProcessGauges, header, histogram_lines, simple_lines,
};
use crate::workers::{Lane, Workers};
use ron_proto::ErrorCode;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

/// Everything one shard's core counts.
#[derive(Clone, Debug)]
pub struct CoreMetrics {
    /// The route table's patterns, in slot order, then "unmatched".
    pub route_labels: Vec<&'static str>,
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
    /// One per shard, filled in when metrics are gathered.
    pub log_shards: Vec<LogShardGauges>,
}

/// How far one shard has applied the log and written its view.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogShardGauges {
    pub shard: usize,
    pub applied_seq: u64,
    pub view_seq: u64,
    pub view_writes: u64,
    pub view_write_failures: u64,
    pub view_lsm_bytes: u64,
}

impl CoreMetrics {
    /// Metrics for a route table with these patterns.
    pub fn new(mut route_labels: Vec<&'static str>) -> CoreMetrics {
        route_labels.push("unmatched");
        let slots = route_labels.len();
        CoreMetrics {
            route_labels,
            request_latency: vec![LatencyHistogram::default(); slots],
            inflight: vec![0; slots],
            busy_rejections: vec![0; slots],
            rejected: [0; ErrorCode::ALL.len()],
            connections_accepted: 0,
            connections_refused: 0,
            connections_open: 0,
            mesh_calls: 0,
            parks: 0,
            park_timeouts: 0,
            timer_lateness: LatencyHistogram::default(),
            log_shards: Vec::new(),
        }
    }

    /// The slot of requests that matched no route.
    pub fn unmatched(&self) -> usize {
        self.route_labels.len() - 1
    }

    pub fn add(&mut self, other: &CoreMetrics) {
        assert_eq!(self.route_labels, other.route_labels, "every shard has one route table");
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
        self.log_shards.extend_from_slice(&other.log_shards);
    }

    fn render(&self, out: &mut String) {
        self.render_requests(out);
        self.render_front(out);
        self.render_log(out);
    }

    /// Requests by route and by outcome, and the timer probe.
    fn render_requests(&self, out: &mut String) {
        header(
            out,
            "request_latency_seconds",
            "histogram",
            "Request latency by route, from complete request to response.",
        );
        for (label, histogram) in self.route_labels.iter().zip(&self.request_latency) {
            histogram_lines(out, "request_latency_seconds", Some(("route", label)), histogram);
        }
        header(
            out,
            "executor_timer_lateness_seconds",
            "histogram",
            "How late a 1 ms glommio timer fired on the shards (the timer probe).",
        );
        histogram_lines(out, "executor_timer_lateness_seconds", None, &self.timer_lateness);
        header(
            out,
            "executor_timer_lateness_max_seconds",
            "gauge",
            "The latest a probe timer fired since start.",
        );
        let _ = writeln!(
            out,
            "executor_timer_lateness_max_seconds {}",
            self.timer_lateness.max_ns() as f64 / 1e9
        );
        header(out, "rejected_total", "counter", "Requests answered with an error, by code.");
        for code in ErrorCode::ALL {
            let count = self.rejected[code.index()];
            let _ = writeln!(out, "rejected_total{{reason=\"{}\"}} {count}", code.label());
        }
        header(out, "busy_rejections_total", "counter", "Requests shed with 429, by endpoint.");
        for (label, count) in self.route_labels.iter().zip(&self.busy_rejections) {
            let _ = writeln!(out, "busy_rejections_total{{endpoint=\"{label}\"}} {count}");
        }
        header(out, "inflight_requests", "gauge", "Requests being processed, by route.");
        for (label, count) in self.route_labels.iter().zip(&self.inflight) {
            let _ = writeln!(out, "inflight_requests{{route=\"{label}\"}} {count}");
        }
    }

    /// Connections, the ring and the mesh.
    fn render_front(&self, out: &mut String) {
        simple_lines(
            out,
            &[
                (
                    "connections_accepted_total",
                    "counter",
                    "Connections accepted.",
                    self.connections_accepted as f64,
                ),
                (
                    "connections_refused_total",
                    "counter",
                    "Connections closed at accept over the per-shard cap.",
                    self.connections_refused as f64,
                ),
                (
                    "connections_open",
                    "gauge",
                    "Open client connections.",
                    self.connections_open.max(0) as f64,
                ),
                (
                    "mesh_calls_total",
                    "counter",
                    "Requests run on another shard.",
                    self.mesh_calls as f64,
                ),
                (
                    "socket_ring_parks_total",
                    "counter",
                    "Times a shard's socket ring went idle and parked.",
                    self.parks as f64,
                ),
                (
                    "socket_ring_park_timeouts_total",
                    "counter",
                    "Parks that ended on the park timer rather than on I/O or a task.",
                    self.park_timeouts as f64,
                ),
            ],
        );
    }

    /// How far each shard applied the log and wrote its view.
    fn render_log(&self, out: &mut String) {
        let mut shards = self.log_shards.clone();
        shards.sort_by_key(|g| g.shard);
        type Gauge = fn(&LogShardGauges) -> u64;
        let per_shard: [(&str, &str, &str, Gauge); 5] = [
            ("ledger_applied_seq", "gauge", "The last log entry a shard has applied.", |g| {
                g.applied_seq
            }),
            ("ledger_view_seq", "gauge", "The last log entry a shard's view holds.", |g| {
                g.view_seq
            }),
            (
                "ledger_view_lsm_bytes",
                "gauge",
                "Bytes on disk of a shard's view's LSM tree (wallet receipts' txids), after its last write.",
                |g| g.view_lsm_bytes,
            ),
            ("ledger_view_writes_total", "counter", "Writes of a shard's view.", |g| g.view_writes),
            (
                "ledger_view_write_failures_total",
                "counter",
                "Failed writes of a shard's view (it then stays at its last good state).",
                |g| g.view_write_failures,
            ),
        ];
        for (name, kind, help, value) in per_shard {
            header(out, name, kind, help);
            for gauges in &shards {
                let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", gauges.shard, value(gauges));
            }
        }
    }
}

/// One shard's metrics, core and services, as a scrape collects them.
pub struct Snapshot {
    pub core: CoreMetrics,
    /// Each service's part, in registry order (the same on every shard).
    pub services: Vec<Box<dyn MetricsPart>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("services", &self.services.len()).finish()
    }
}

impl Snapshot {
    /// Adds another shard's snapshot.
    pub fn add(&mut self, other: &Snapshot) {
        self.core.add(&other.core);
        assert_eq!(self.services.len(), other.services.len(), "every shard runs every service");
        for (mine, theirs) in self.services.iter_mut().zip(&other.services) {
            mine.merge(theirs.as_ref());
        }
    }

    /// The services' queue depths (`MetricsPart::queue_depths`).
    pub fn queue_depths(&self) -> Vec<(&'static str, u64)> {
        let mut depths = Vec::new();
        for part in &self.services {
            part.queue_depths(&mut depths);
        }
        depths
    }

    /// The merged snapshot as Prometheus text, with the process's gauges.
    pub fn render(&self, gauges: ProcessGauges, workers: &Workers, shard_count: usize) -> String {
        let mut out = String::with_capacity(64 * 1024);
        self.core.render(&mut out);
        for part in &self.services {
            part.render(&mut out);
        }
        header(
            &mut out,
            "worker_queue_depth",
            "gauge",
            "Jobs waiting for a worker thread, by lane.",
        );
        for lane in Lane::ALL {
            let queued = workers.stats(lane).queued.load(Ordering::Relaxed);
            let _ = writeln!(out, "worker_queue_depth{{lane=\"{}\"}} {queued}", lane.label());
        }
        header(&mut out, "worker_jobs_total", "counter", "Jobs the worker threads ran, by lane.");
        for lane in Lane::ALL {
            let done = workers.stats(lane).done.load(Ordering::Relaxed);
            let _ = writeln!(out, "worker_jobs_total{{lane=\"{}\"}} {done}", lane.label());
        }
        header(
            &mut out,
            "worker_refusals_total",
            "counter",
            "Jobs refused by a full lane, by lane.",
        );
        for lane in Lane::ALL {
            let refused = workers.stats(lane).refused.load(Ordering::Relaxed);
            let _ = writeln!(out, "worker_refusals_total{{lane=\"{}\"}} {refused}", lane.label());
        }
        simple_lines(
            &mut out,
            &[
                (
                    "process_resident_memory_bytes",
                    "gauge",
                    "Resident set size.",
                    gauges.resident_memory_bytes as f64,
                ),
                ("process_open_fds", "gauge", "Open file descriptors.", gauges.open_fds as f64),
                ("node_shards", "gauge", "Shards of this node.", shard_count as f64),
            ],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_are_cumulative_and_merge_adds() {
        let mut a = CoreMetrics::new(vec!["/healthz"]);
        let mut b = a.clone();
        a.request_latency[0].record(Duration::from_micros(40));
        a.request_latency[0].record(Duration::from_millis(3));
        b.request_latency[0].record(Duration::from_secs(10));
        b.rejected[ErrorCode::TooLarge.index()] = 2;
        a.add(&b);
        let mut text = String::new();
        a.render(&mut text);
        let route = "/healthz";
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
        assert!(text.contains("request_latency_seconds_count{route=\"unmatched\"} 0\n"));
        assert!(text.contains("rejected_total{reason=\"too_large\"} 2\n"));
    }
}
