//! Reports: JSON for machines (and `compare`), a summary for people.

use crate::engine::{RunResult, RunSpec};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub target: String,
    pub workload: String,
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub connections: usize,
    pub pipeline_max: usize,
    pub generator_cores: Vec<usize>,
    /// What the generator did between events: `spin` or `sleep`.
    pub idle: &'static str,
    /// The CPU time of the generator's threads over the whole run (warm-up
    /// and drain included).
    pub generator_cpu_s: f64,
    pub planned: u64,
    pub sent: u64,
    pub completed: u64,
    pub late_sends: u64,
    pub dropped_sends: u64,
    pub unanswered: u64,
    pub reconnects: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub sustained: bool,
    pub latency: LatencyReport,
    /// What the writes inside answers came to, by result code, warm-up
    /// included (batches: one count per write).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub write_results: BTreeMap<String, u64>,
}

impl RunReport {
    pub fn new(spec: &RunSpec, result: &RunResult) -> RunReport {
        let h = &result.latency_ns;
        let us = |ns: u64| ns as f64 / 1000.0;
        RunReport {
            target: spec.target.to_string(),
            workload: spec.workload.describe(),
            target_rate: spec.mean_rate(),
            achieved_rate: result.achieved_rate(),
            warmup_s: spec.warmup.as_secs_f64(),
            duration_s: spec.duration.as_secs_f64(),
            connections: spec.connections,
            pipeline_max: spec.pipeline_max,
            generator_cores: spec.cores.clone(),
            idle: spec.idle.name(),
            generator_cpu_s: result.cpu.as_secs_f64(),
            planned: result.planned,
            sent: result.sent,
            completed: result.completed,
            late_sends: result.late,
            dropped_sends: result.dropped,
            unanswered: result.unanswered,
            reconnects: result.reconnects,
            statuses: result.statuses.clone(),
            sustained: result.sustained(spec.mean_rate()),
            latency: LatencyReport {
                p50_us: us(h.value_at_quantile(0.50)),
                p90_us: us(h.value_at_quantile(0.90)),
                p95_us: us(h.value_at_quantile(0.95)),
                p99_us: us(h.value_at_quantile(0.99)),
                p999_us: us(h.value_at_quantile(0.999)),
                max_us: us(h.max()),
                mean_us: h.mean() / 1000.0,
            },
            write_results: result.outcomes.clone(),
        }
    }

    pub fn summary(&self) -> String {
        let mut out = String::new();
        let l = &self.latency;
        let _ = writeln!(
            out,
            "{} {} | target {:.0}/s achieved {:.0}/s ({:.1}%) | {} conns, pipeline <= {} | idle {}, generator CPU {:.2} s",
            self.target,
            self.workload,
            self.target_rate,
            self.achieved_rate,
            100.0 * self.achieved_rate / self.target_rate,
            self.connections,
            self.pipeline_max,
            self.idle,
            self.generator_cpu_s
        );
        let _ = writeln!(
            out,
            "  latency us: p50 {:.1}  p90 {:.1}  p95 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (from intended send times)",
            l.p50_us, l.p90_us, l.p95_us, l.p99_us, l.p999_us, l.max_us
        );
        let statuses: Vec<String> =
            self.statuses.iter().map(|(s, c)| format!("{s}: {c}")).collect();
        let _ = writeln!(
            out,
            "  planned {} sent {} completed {} | late {} dropped {} unanswered {} reconnects {} | statuses {{{}}}{}",
            self.planned,
            self.sent,
            self.completed,
            self.late_sends,
            self.dropped_sends,
            self.unanswered,
            self.reconnects,
            statuses.join(", "),
            if self.sustained { "" } else { " | NOT SUSTAINED" }
        );
        if !self.write_results.is_empty() {
            let results: Vec<String> =
                self.write_results.iter().map(|(code, n)| format!("{code}: {n}")).collect();
            let _ = writeln!(out, "  writes (warm-up included): {{{}}}", results.join(", "));
        }
        out
    }
}
