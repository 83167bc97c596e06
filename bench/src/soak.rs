//! `ron-load soak`: the compressed soak of the seeds. Write-mix at a share
//! (default 60 %) of the node's measured maximum, in windows, for a
//! duration (default 10 minutes; the seeds' 24 h soak is the same command
//! with `--duration 24h`), reporting how RSS and p95 move.
//!
//! The first fifth of the windows is warm-up (caches, allocator arenas and
//! the log fill). Over the rest:
//! * **RSS growth**: the Theil–Sen slope of RSS over time, times the
//!   steady duration, as a share of RSS at its start. The seeds allow 2 %
//!   over 24 h; a compressed run is held to the same total.
//! * **p95 drift**: the median p95 of the last third of the steady windows
//!   against that of the first third; more than the p95 gate's 10 % fails.

use crate::compare::Round;
use crate::suite::{self, Node, Shape, Sizes, SuiteSpec};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct SoakSpec {
    pub duration: Duration,
    pub window: Duration,
    /// The share of the maximum to hold.
    pub fraction: f64,
    /// The maximum, when known (else a sweep finds it first).
    pub max_rate: Option<f64>,
}

/// The seeds' limits.
pub const RSS_GROWTH_MAX_PCT: f64 = 2.0;
pub const P95_DRIFT_MAX_PCT: f64 = 10.0;

#[derive(Clone, Debug, Serialize)]
pub struct Window {
    /// Seconds since the soak began (the window's end).
    pub at_s: f64,
    pub p95_ms: f64,
    pub throughput_rps: f64,
    pub rss_mib: f64,
    pub fsync_max_ms: Option<f64>,
    pub statuses: std::collections::BTreeMap<u16, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    pub max_rate: f64,
    pub rate: f64,
    pub windows: Vec<Window>,
    pub rss_growth_pct: f64,
    pub p95_drift_pct: f64,
    pub passed: bool,
}

/// Runs the soak against a node started as the suite starts it.
pub fn run(spec: &SuiteSpec, soak: &SoakSpec) -> anyhow::Result<SoakReport> {
    std::fs::create_dir_all(&spec.out)?;
    let data = spec.out.join("soak-data");
    let _ = std::fs::remove_dir_all(&data);
    let (node, _) = Node::start(spec, &spec.profile, &data)?;
    let scenario =
        suite::SCENARIOS.iter().find(|s| s.name == "write_mix").expect("the write-mix scenario");
    let sizes = Sizes::new(spec.quick);
    suite::setup(spec, &node, &sizes, &[scenario])?;
    let shape = |rate: f64, warmup: Duration, duration: Duration| Shape {
        rate,
        connections: 64,
        burst: 1.0,
        warmup,
        duration,
    };
    let max_rate = match soak.max_rate {
        Some(rate) => rate,
        None => {
            // Double the rate until the node bends; the last rate it held.
            let (mut rate, mut held) = (500.0, 0.0);
            loop {
                let step = shape(rate, Duration::from_secs(1), Duration::from_secs(3));
                let label = format!("soak: finding the maximum at {rate}/s");
                suite::progress(format_args!("{label}"));
                let round = suite::measure(spec, &node, sizes, scenario, &step, &label)?;
                if suite::bent(&suite::sweep_point(&round)) || rate > 1e6 {
                    break held;
                }
                held = rate;
                rate *= 2.0;
            }
        }
    };
    anyhow::ensure!(max_rate > 0.0, "the node held no rate of the write mix");
    let rate = max_rate * soak.fraction;
    suite::progress(format_args!(
        "soak: {rate}/s ({} of {max_rate}/s) for {:?}",
        soak.fraction, soak.duration
    ));
    let started = Instant::now();
    let mut windows = Vec::new();
    while started.elapsed() < soak.duration {
        let label = format!("soak window {} at {rate}/s", windows.len() + 1);
        let window = shape(rate, Duration::from_millis(200), soak.window);
        let round: Round = suite::measure(spec, &node, sizes, scenario, &window, &label)?;
        windows.push(Window {
            at_s: started.elapsed().as_secs_f64(),
            p95_ms: round.p95_ms.unwrap_or(0.0),
            throughput_rps: round.throughput_rps.unwrap_or(0.0),
            rss_mib: round.rss_mib.unwrap_or(0.0),
            fsync_max_ms: round.fsync_max_ms,
            statuses: round.statuses.unwrap_or_default(),
        });
        let last = windows.last().expect("just pushed");
        suite::progress(format_args!(
            "{label}: p95 {:.3} ms, rss {:.1} MiB, {:.0}/s",
            last.p95_ms, last.rss_mib, last.throughput_rps
        ));
    }
    node.stop()?;
    let (rss_growth_pct, p95_drift_pct) = drift(&windows);
    let passed = rss_growth_pct <= RSS_GROWTH_MAX_PCT && p95_drift_pct <= P95_DRIFT_MAX_PCT;
    let report = SoakReport { max_rate, rate, windows, rss_growth_pct, p95_drift_pct, passed };
    std::fs::write(spec.out.join("soak.json"), serde_json::to_string_pretty(&report)?)?;
    Ok(report)
}

/// RSS growth and p95 drift over the steady windows (after the first
/// fifth), in percent.
pub fn drift(windows: &[Window]) -> (f64, f64) {
    let steady = &windows[windows.len() / 5..];
    if steady.len() < 3 {
        return (0.0, 0.0);
    }
    // Theil–Sen: the median of the slopes between every two windows, so
    // that a transient peak (a burst of allocation handed back later) does
    // not tilt the line.
    let mut slopes: Vec<f64> = Vec::new();
    for (i, a) in steady.iter().enumerate() {
        for b in &steady[i + 1..] {
            if b.at_s > a.at_s {
                slopes.push((b.rss_mib - a.rss_mib) / (b.at_s - a.at_s));
            }
        }
    }
    slopes.sort_by(f64::total_cmp);
    let slope = slopes.get(slopes.len() / 2).copied().unwrap_or(0.0);
    let span = steady[steady.len() - 1].at_s - steady[0].at_s;
    let start = steady[0].rss_mib.max(1e-9);
    let rss_growth_pct = 100.0 * slope * span / start;
    let third = steady.len() / 3;
    let median_p95 = |part: &[Window]| {
        let mut values: Vec<f64> = part.iter().map(|w| w.p95_ms).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let (first, last) = (median_p95(&steady[..third]), median_p95(&steady[steady.len() - third..]));
    let p95_drift_pct = if first > 0.0 { 100.0 * (last / first - 1.0) } else { 0.0 };
    (rss_growth_pct, p95_drift_pct)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(rss: impl Fn(f64) -> f64, p95: impl Fn(f64) -> f64) -> Vec<Window> {
        (1..=20)
            .map(|i| {
                let t = i as f64 * 30.0;
                Window {
                    at_s: t,
                    p95_ms: p95(t),
                    throughput_rps: 1000.0,
                    rss_mib: rss(t),
                    fsync_max_ms: None,
                    statuses: Default::default(),
                }
            })
            .collect()
    }

    #[test]
    fn steady_runs_pass_and_leaks_or_drift_fail() {
        // Warm-up growth in the first fifth is not held against the node.
        let (growth, drift_pct) = drift(&windows(|t| if t < 100.0 { t } else { 100.0 }, |_| 2.0));
        assert!(growth.abs() < 1e-9 && drift_pct.abs() < 1e-9, "{growth} {drift_pct}");
        // About 100 MiB growing 0.01 MiB/s over 450 s steady: about 4.4 %.
        let (growth, _) = drift(&windows(|t| 100.0 + 0.01 * t, |_| 2.0));
        assert!((growth - 4.4).abs() < 0.2, "{growth}");
        // A transient peak does not tilt the line.
        let (growth, _) = drift(&windows(|t| if t == 240.0 { 400.0 } else { 100.0 }, |_| 2.0));
        assert!(growth.abs() < 1e-9, "{growth}");
        let (_, drift_pct) = drift(&windows(|_| 100.0, |t| 2.0 + t / 300.0));
        assert!(drift_pct > P95_DRIFT_MAX_PCT, "{drift_pct}");
    }
}
