//! Sweeps: step the rate, run every target at each step (interleaved, so a
//! reference server and ours see the same machine), find each target's
//! maximum sustained rate and where its p99 bends, then measure p99 at half
//! of each maximum over several interleaved rounds and take the median.

use crate::engine::{self, RunSpec};
use crate::report::RunReport;
use serde::Serialize;
use std::net::SocketAddr;

#[derive(Clone, Debug)]
pub struct SweepSpec {
    /// The run at each step; `target` and `rate` are replaced.
    pub base: RunSpec,
    pub targets: Vec<(String, SocketAddr)>,
    pub rates: Vec<f64>,
    /// Rounds of the half-load measurement.
    pub half_load_rounds: usize,
    /// p99 "bends" where it exceeds this multiple of the first step's p99
    /// (and at least `bend_floor_us`).
    pub bend_factor: f64,
    pub bend_floor_us: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetSummary {
    pub name: String,
    pub target: String,
    /// The highest step rate that was sustained.
    pub max_rate: f64,
    /// The achieved rate at that step.
    pub max_achieved_rate: f64,
    /// The first step whose p99 bent, if any.
    pub knee_rate: Option<f64>,
    pub half_load_rate: f64,
    /// p99 at half of `max_rate`, one value per round, and their median.
    pub half_load_p99_us: Vec<f64>,
    pub half_load_p99_median_us: f64,
    pub half_load_p999_median_us: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SweepReport {
    pub steps: Vec<(String, RunReport)>,
    pub half_load: Vec<(String, RunReport)>,
    pub targets: Vec<TargetSummary>,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() { 0.0 } else { values[values.len() / 2] }
}

/// Runs the sweep; `progress` sees every run's summary as it finishes.
pub fn sweep(
    spec: &SweepSpec,
    mut progress: impl FnMut(&str, &RunReport),
) -> anyhow::Result<SweepReport> {
    let mut steps = Vec::new();
    let mut failures = vec![0usize; spec.targets.len()];
    for &rate in &spec.rates {
        if failures.iter().all(|f| *f >= 2) {
            break;
        }
        for (i, (name, target)) in spec.targets.iter().enumerate() {
            if failures[i] >= 2 {
                continue;
            }
            let run = RunSpec { target: *target, rate, ..spec.base.clone() };
            let result = engine::run(&run)?;
            let report = RunReport::new(&run, &result);
            progress(name, &report);
            if !report.sustained {
                failures[i] += 1;
            }
            steps.push((name.clone(), report));
        }
    }
    let mut summaries = Vec::new();
    for (name, target) in &spec.targets {
        let mine: Vec<&RunReport> =
            steps.iter().filter(|(n, _)| n == name).map(|(_, r)| r).collect();
        let best = mine
            .iter()
            .filter(|r| r.sustained)
            .max_by(|a, b| a.target_rate.total_cmp(&b.target_rate));
        let baseline = mine.first().map_or(0.0, |r| r.latency.p99_us);
        let bend = (baseline * spec.bend_factor).max(spec.bend_floor_us);
        let knee =
            mine.iter().find(|r| r.latency.p99_us > bend || !r.sustained).map(|r| r.target_rate);
        summaries.push(TargetSummary {
            name: name.clone(),
            target: target.to_string(),
            max_rate: best.map_or(0.0, |r| r.target_rate),
            max_achieved_rate: best.map_or(0.0, |r| r.achieved_rate),
            knee_rate: knee,
            half_load_rate: best.map_or(0.0, |r| r.target_rate / 2.0),
            half_load_p99_us: Vec::new(),
            half_load_p99_median_us: 0.0,
            half_load_p999_median_us: 0.0,
        });
    }
    let mut half_load = Vec::new();
    let mut p999s: Vec<Vec<f64>> = vec![Vec::new(); spec.targets.len()];
    for _ in 0..spec.half_load_rounds {
        for (i, (name, target)) in spec.targets.iter().enumerate() {
            let rate = summaries[i].half_load_rate;
            if rate <= 0.0 {
                continue;
            }
            let run = RunSpec { target: *target, rate, ..spec.base.clone() };
            let result = engine::run(&run)?;
            let report = RunReport::new(&run, &result);
            progress(&format!("{name} @50%"), &report);
            summaries[i].half_load_p99_us.push(report.latency.p99_us);
            p999s[i].push(report.latency.p999_us);
            half_load.push((name.clone(), report));
        }
    }
    for (summary, p999) in summaries.iter_mut().zip(&mut p999s) {
        summary.half_load_p99_median_us = median(&mut summary.half_load_p99_us.clone());
        summary.half_load_p999_median_us = median(p999);
    }
    Ok(SweepReport { steps, half_load, targets: summaries })
}
