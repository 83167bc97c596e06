//! `ron-load baselines DIR`: what a directory of measurements (a suite run,
//! or the committed baselines of one profile) says, for people and for the
//! seeds' tools:
//!
//! * a Markdown table of each scenario's medians — the README's table of
//!   reference figures is this output, between two markers, and a test
//!   checks that it still is;
//! * the seeds' own baseline shapes, derived from the same files: the
//!   passport's `issuance-<size>.json`, the ledger's
//!   `<profile>/baseline.json`, the rewarder's per-scale artifacts.
//!   `ron-load compare` gates on the measurements themselves; these are
//!   views of them.

use crate::compare::{Measurement, Round, median};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Every `*.json` measurement of a directory, by scenario.
pub fn read_dir(dir: &Path) -> anyhow::Result<BTreeMap<String, Measurement>> {
    let mut measured = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        // Other JSON (a soak report, seed-shaped views) is not a measurement.
        if let Ok(m) = serde_json::from_str::<Measurement>(&text) {
            measured.insert(m.scenario.clone(), m);
        }
    }
    anyhow::ensure!(!measured.is_empty(), "no measurements in {}", dir.display());
    Ok(measured)
}

fn figure(value: Option<f64>) -> String {
    match value {
        None => "–".to_owned(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// The Markdown table: medians over rounds; the sweep's highest held rate.
pub fn table(measured: &BTreeMap<String, Measurement>) -> String {
    let mut out = String::from(
        "| scenario | rate /s | p50 ms | p95 ms | p99 ms | nginx p95 ms | held up to /s | CPU % | RSS MiB | cold start ms | date |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for (name, m) in measured {
        let of = |f: fn(&Round) -> Option<f64>| figure(median(&m.rounds, f));
        let held = m
            .sweep
            .iter()
            .filter(|p| !crate::suite::bent(p))
            .map(|p| p.throughput_rps)
            .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            of(|r| r.target_rps.or(r.throughput_rps)),
            of(|r| r.latency_ms.map(|l| l.p50)),
            of(|r| r.p95_ms),
            of(|r| r.latency_ms.map(|l| l.p99)),
            figure(median(&m.reference_rounds, |r| r.p95_ms)),
            figure(held),
            of(|r| r.cpu_pct),
            of(|r| r.rss_mib),
            of(|r| r.cold_start_p95_ms),
            m.date.as_deref().unwrap_or("–"),
        );
    }
    out
}

pub const README_BEGIN: &str = "<!-- baselines:begin (ron-load baselines --readme README.md) -->";
pub const README_END: &str = "<!-- baselines:end -->";

/// `text` with the block between the markers replaced by `table`.
pub fn with_table(text: &str, table: &str) -> anyhow::Result<String> {
    let begin = text.find(README_BEGIN).ok_or_else(|| anyhow::anyhow!("no line {README_BEGIN}"))?
        + README_BEGIN.len();
    let end = text.find(README_END).ok_or_else(|| anyhow::anyhow!("no line {README_END}"))?;
    anyhow::ensure!(begin <= end, "the baselines markers are out of order");
    Ok(format!("{}\n{table}{}", &text[..begin], &text[end..]))
}

/// The seeds' shapes of the measurements that have them: file name (under
/// the output directory) and JSON.
pub fn seed_shapes(
    measured: &BTreeMap<String, Measurement>,
    node_size: &str,
) -> Vec<(String, serde_json::Value)> {
    let med = |scenario: &str, f: fn(&Round) -> Option<f64>| {
        measured.get(scenario).and_then(|m| median(&m.rounds, f))
    };
    let quantiles = |scenario: &str| {
        json!({
            "p50_ms": med(scenario, |r| r.latency_ms.map(|l| l.p50)),
            "p95_ms": med(scenario, |r| r.p95_ms),
            "p99_ms": med(scenario, |r| r.latency_ms.map(|l| l.p99)),
            "throughput_rps": med(scenario, |r| r.throughput_rps),
            "cpu_pct": med(scenario, |r| r.cpu_pct),
            "rss_mib": med(scenario, |r| r.rss_mib),
        })
    };
    let mut files = Vec::new();
    // The passport seed's `issuance-4c8g.json`.
    let issue = ["passport_issue", "passport_issue_verify"]
        .into_iter()
        .find(|s| measured.contains_key(*s))
        .unwrap_or("passport_issue");
    if measured.contains_key(issue) || measured.contains_key("passport_verify") {
        files.push((
            format!("issuance-{}.json", node_size.replace('/', "")),
            json!({
                "node_size": node_size,
                "issuance": quantiles(issue),
                "verify": quantiles("passport_verify"),
                "cold_start": { "p95_ms": med("cold_start_empty", |r| r.cold_start_p95_ms) },
                "burn_rate": { "fast_2h_x": 14, "slow_24h_x": 6 },
            }),
        ));
    }
    // The ledger seed's `{micronode,macronode}/baseline.json`.
    if let Some(ingest) = measured.get("ledger_ingest") {
        let metric =
            |name: &'static str| median(&ingest.rounds, |r| r.metrics.as_ref()?.get(name).copied());
        let held = ingest
            .sweep
            .iter()
            .filter(|p| !crate::suite::bent(p))
            .map(|p| p.throughput_rps)
            .fold(med("ledger_ingest", |r| r.throughput_rps).unwrap_or(0.0), f64::max);
        files.push((
            format!("{}/baseline.json", ledger_profile(&ingest.profile)),
            json!({
                "commit_p95_ms": metric("commit_p95_ms"),
                "commit_p99_ms": metric("commit_p99_ms"),
                "ingest_rps_sustained": held,
                "rss_mib": med("ledger_ingest", |r| r.rss_mib),
                "cpu_pct": med("ledger_ingest", |r| r.cpu_pct),
                "backpressure_frac": med("ledger_ingest", |r| r.shed_share),
            }),
        ));
    }
    // The rewarder seed's per-scale artifacts (fresh runs when measured,
    // else replays).
    for scale in ["s", "m", "l"] {
        let Some((scenario, m)) = ["fresh", "replay"].iter().find_map(|kind| {
            let name = format!("reward_{scale}_{kind}");
            measured.get(&name).map(|m| (name, m))
        }) else {
            continue;
        };
        files.push((
            format!("rewarder-{}.json", scale.to_uppercase()),
            json!({
                "profile": m.profile,
                "scale": scale.to_uppercase(),
                "scenario": scenario,
                "timestamp": m.date,
                "observed": {
                    "p95_ms": med(&scenario, |r| r.p95_ms),
                    "p99_ms": med(&scenario, |r| r.latency_ms.map(|l| l.p99)),
                    "rps": med(&scenario, |r| r.throughput_rps),
                    "cpu_mean_pct": med(&scenario, |r| r.cpu_pct),
                    "rss_mb": med(&scenario, |r| r.rss_mib),
                    "pq_on": true,
                },
            }),
        ));
    }
    files
}

/// The ledger seed names two profiles: an amnesic node is a micronode.
fn ledger_profile(profile: &str) -> &'static str {
    if profile.contains("micronode") { "micronode" } else { "macronode" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_block_is_replaced_between_its_markers() {
        let text = format!("intro\n{README_BEGIN}\nold\n{README_END}\nrest\n");
        let new = with_table(&text, "| a |\n").unwrap();
        assert_eq!(new, format!("intro\n{README_BEGIN}\n| a |\n{README_END}\nrest\n"));
        assert_eq!(with_table(&new, "| a |\n").unwrap(), new);
        assert!(with_table("no markers", "x").is_err());
    }

    #[test]
    fn seed_shapes_carry_the_medians() {
        let round = |p95: f64| Round {
            p95_ms: Some(p95),
            throughput_rps: Some(100.0),
            metrics: Some([("commit_p99_ms".to_owned(), 2.5)].into()),
            ..Round::default()
        };
        let m = Measurement {
            scenario: "ledger_ingest".into(),
            profile: "reference-2c-ledger".into(),
            rounds: vec![round(1.0), round(3.0), round(2.0)],
            ..Measurement::default()
        };
        let files = seed_shapes(&[("ledger_ingest".to_owned(), m)].into(), "2c/24g");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, "macronode/baseline.json");
        assert_eq!(files[0].1["commit_p99_ms"], 2.5);
        assert_eq!(files[0].1["ingest_rps_sustained"], 100.0);
    }
}
