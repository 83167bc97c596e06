//! `ron-load compare RUN.json BASELINE.json`: the seeds' regression gates
//! applied to two measurements of one scenario, with time-boxed waivers.
//!
//! A measurement is a scenario's rounds (each with the figures a gate
//! reads; a figure a round lacks is not gated) and, optionally, the rounds
//! of the reference (nginx `return 200`) measured in the same run. Each
//! gate compares the **median** over rounds; when both sides carry
//! reference rounds, latencies and rates are first divided by the
//! reference's medians, so a slower machine does not read as a regression.
//!
//! Gates (SPEC §10, the seeds' CI gates): p95 up more than 10 %, throughput
//! down more than 10 %, CPU or RSS up more than 15 %, 429/503 share up more
//! than 0.5 percentage points, verify-cache hit rate down more than 10
//! points, cold-start p95 up more than 20 %, any ledger sequence gap.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// One scenario's measurement, as the suite writes it and as baselines
/// keep it (`testing/performance/baselines/`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurement {
    pub scenario: String,
    /// The machine profile and layout, e.g. `reference-2c-ledger`.
    #[serde(default)]
    pub profile: String,
    /// The command, date and commit that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    pub rounds: Vec<Round>,
    /// The reference server's rounds, interleaved with these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference_rounds: Vec<Round>,
    /// The throughput/latency curve of a sweep over rates (not gated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sweep: Vec<SweepPoint>,
    /// The reference's curve over the same steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference_sweep: Vec<SweepPoint>,
}

/// What one round measured; absent figures are not gated.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Round {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_rps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_mib: Option<f64>,
    /// Answers 429 or 503, as a fraction of all answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shed_share: Option<f64>,
    /// Writes inside answers (a batch's) that did not succeed, as a
    /// fraction of all of them, warm-up included; absent where requests do
    /// not carry several writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes_refused_share: Option<f64>,
    /// Verify-cache hits as a fraction of lookups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_hit_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_p95_ms: Option<f64>,
    /// Ledger sequence numbers missing (must stay 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_gaps: Option<u64>,
    /// Not gated, kept for reading a round: answers by status, and sends
    /// that left more than 1 ms after their planned time (the generator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statuses: Option<std::collections::BTreeMap<u16, u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_sends: Option<u64>,
    /// The slowest log fsync of the round, as the upper bound of its
    /// `ledger_fsync_seconds` bucket: a p95 that moves with it is the
    /// device's, not the node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsync_max_ms: Option<f64>,
    /// Not gated: the round's rate as planned, and its latency at more
    /// quantiles, for tables and plots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_rps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Quantiles>,
    /// The HdrHistogram percentile spectrum: `[percentile, ms]` pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spectrum: Option<Vec<[f64; 2]>>,
    /// Other `/metrics` deltas of the round (commit latency, batch sizes,
    /// cache hit ratio, revocation lag, refusals), by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<std::collections::BTreeMap<String, f64>>,
}

/// Latency at the quantiles the seeds report, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantiles {
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// One step of a sweep: the rate asked, what was answered, and latency.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepPoint {
    pub target_rps: f64,
    /// Answers below 400 per second.
    pub throughput_rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub shed_share: f64,
    /// Log entries the node committed per second during the step (its
    /// `ledger_batch_entries_sum`): for batches, transfers, where the
    /// answers count requests. Absent for a reference server, and in files
    /// written before steps recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_entries_per_s: Option<f64>,
    /// `Round::writes_refused_share` of the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes_refused_share: Option<f64>,
}

/// A time-boxed exception to one gate of one scenario.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Waiver {
    pub scenario: String,
    /// The gate's name (`p95`, `throughput`, …).
    pub gate: String,
    pub reason: String,
    pub owner: String,
    /// The last day it holds, `YYYY-MM-DD` (UTC).
    pub expires: String,
}

/// How a gate reads a figure and what change it allows.
struct Gate {
    name: &'static str,
    figure: fn(&Round) -> Option<f64>,
    /// Divided by the reference's median when both sides have one.
    normalized: bool,
    limit: Limit,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Limit {
    /// Up by more than this fraction breaches.
    RiseFraction(f64),
    /// Down by more than this fraction breaches.
    FallFraction(f64),
    /// Up by more than this many points (the figure is a fraction).
    RisePoints(f64),
    /// Down by more than this many points (the figure is a fraction).
    FallPoints(f64),
    /// Anything above zero breaches.
    Zero,
}

const GATES: [Gate; 8] = [
    Gate { name: "p95", figure: |r| r.p95_ms, normalized: true, limit: Limit::RiseFraction(0.10) },
    Gate {
        name: "throughput",
        figure: |r| r.throughput_rps,
        normalized: true,
        limit: Limit::FallFraction(0.10),
    },
    Gate {
        name: "cpu",
        figure: |r| r.cpu_pct,
        normalized: false,
        limit: Limit::RiseFraction(0.15),
    },
    Gate {
        name: "rss",
        figure: |r| r.rss_mib,
        normalized: false,
        limit: Limit::RiseFraction(0.15),
    },
    Gate {
        name: "shed_share",
        figure: |r| r.shed_share,
        normalized: false,
        limit: Limit::RisePoints(0.5),
    },
    Gate {
        name: "verify_hit_rate",
        figure: |r| r.verify_hit_rate,
        normalized: false,
        limit: Limit::FallPoints(10.0),
    },
    Gate {
        name: "cold_start_p95",
        figure: |r| r.cold_start_p95_ms,
        normalized: false,
        limit: Limit::RiseFraction(0.20),
    },
    Gate {
        name: "seq_gaps",
        figure: |r| r.seq_gaps.map(|g| g as f64),
        normalized: false,
        limit: Limit::Zero,
    },
];

/// One gate's outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub gate: &'static str,
    pub baseline: f64,
    pub run: f64,
    /// Whether both were divided by their reference's median.
    pub normalized: bool,
    pub breached: bool,
    /// The waiver that excuses a breach (or that has expired).
    pub waiver: Option<WaiverUse>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WaiverUse {
    pub reason: String,
    pub owner: String,
    pub expires: String,
    pub expired: bool,
}

impl Verdict {
    /// A breach no valid waiver excuses.
    pub fn fails(&self) -> bool {
        self.breached && self.waiver.as_ref().is_none_or(|w| w.expired)
    }
}

/// The median of the figures the rounds have.
pub fn median(rounds: &[Round], figure: impl Fn(&Round) -> Option<f64>) -> Option<f64> {
    let mut values: Vec<f64> = rounds.iter().filter_map(figure).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    })
}

/// Applies every gate whose figure both sides have; `today` is
/// `YYYY-MM-DD` (UTC), for the waivers' expiry.
pub fn compare(
    run: &Measurement,
    baseline: &Measurement,
    waivers: &[Waiver],
    today: &str,
) -> anyhow::Result<Vec<Verdict>> {
    anyhow::ensure!(
        run.scenario == baseline.scenario,
        "the run is of scenario {}, the baseline of {}",
        run.scenario,
        baseline.scenario
    );
    anyhow::ensure!(!run.rounds.is_empty() && !baseline.rounds.is_empty(), "no rounds to compare");
    // Gates hold at one load: a run at another rate is not comparable.
    let rates = (median(&run.rounds, |r| r.target_rps), median(&baseline.rounds, |r| r.target_rps));
    if let (Some(now), Some(before)) = rates {
        anyhow::ensure!(
            (now - before).abs() <= 0.1 * before,
            "the run was planned at {now:.0}/s, the baseline at {before:.0}/s: not comparable"
        );
    }
    let mut verdicts = Vec::new();
    for gate in &GATES {
        let (Some(mut now), Some(mut before)) =
            (median(&run.rounds, gate.figure), median(&baseline.rounds, gate.figure))
        else {
            continue;
        };
        let references = (
            median(&run.reference_rounds, gate.figure),
            median(&baseline.reference_rounds, gate.figure),
        );
        let normalized = match references {
            (Some(run_ref), Some(base_ref))
                if gate.normalized && run_ref > 0.0 && base_ref > 0.0 =>
            {
                now /= run_ref;
                before /= base_ref;
                true
            }
            _ => false,
        };
        let breached = match gate.limit {
            Limit::RiseFraction(f) => now > before * (1.0 + f),
            Limit::FallFraction(f) => now < before * (1.0 - f),
            Limit::RisePoints(p) => (now - before) * 100.0 > p,
            Limit::FallPoints(p) => (before - now) * 100.0 > p,
            Limit::Zero => now > 0.0,
        };
        let waiver = waivers
            .iter()
            .find(|w| w.scenario == run.scenario && w.gate == gate.name)
            .map(|w| WaiverUse {
                reason: w.reason.clone(),
                owner: w.owner.clone(),
                expires: w.expires.clone(),
                expired: w.expires.as_str() < today,
            });
        verdicts.push(Verdict {
            gate: gate.name,
            baseline: before,
            run: now,
            normalized,
            breached,
            waiver,
        });
    }
    anyhow::ensure!(!verdicts.is_empty(), "the run and the baseline share no gated figure");
    Ok(verdicts)
}

/// Checks a waiver file's entries (known gates, dates of the right form).
pub fn check_waivers(waivers: &[Waiver]) -> anyhow::Result<()> {
    for waiver in waivers {
        anyhow::ensure!(
            GATES.iter().any(|g| g.name == waiver.gate),
            "waiver for {}: no gate named {}",
            waiver.scenario,
            waiver.gate
        );
        let date = waiver.expires.as_bytes();
        let shaped = date.len() == 10
            && date
                .iter()
                .enumerate()
                .all(|(i, b)| if i == 4 || i == 7 { *b == b'-' } else { b.is_ascii_digit() });
        anyhow::ensure!(shaped, "waiver for {}: expires must be YYYY-MM-DD", waiver.scenario);
        anyhow::ensure!(
            !waiver.reason.trim().is_empty() && !waiver.owner.trim().is_empty(),
            "waiver for {}: a reason and an owner are required",
            waiver.scenario
        );
    }
    Ok(())
}

/// Today's date, `YYYY-MM-DD` (UTC).
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Days to a civil date (proleptic Gregorian), after H. Hinnant.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The verdicts as a table for people.
pub fn table(scenario: &str, verdicts: &[Verdict]) -> String {
    let mut out = format!("scenario {scenario}\n");
    let _ =
        writeln!(out, "  {:<16} {:>12} {:>12} {:>8}  verdict", "gate", "baseline", "run", "change");
    for v in verdicts {
        let change = if v.baseline != 0.0 {
            format!("{:+.1}%", (v.run / v.baseline - 1.0) * 100.0)
        } else {
            "-".to_owned()
        };
        let verdict = match (&v.waiver, v.breached) {
            (_, false) => "ok".to_owned(),
            (Some(w), true) if !w.expired => {
                format!("waived until {} ({}: {})", w.expires, w.owner, w.reason)
            }
            (Some(w), true) => format!("BREACH (waiver expired {})", w.expires),
            (None, true) => "BREACH".to_owned(),
        };
        let unit = if v.normalized { " (÷ reference)" } else { "" };
        let _ = writeln!(
            out,
            "  {:<16} {:>12.4} {:>12.4} {:>8}  {verdict}{unit}",
            v.gate, v.baseline, v.run, change
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(p95: &[f64], rps: f64) -> Vec<Round> {
        p95.iter()
            .map(|p| Round { p95_ms: Some(*p), throughput_rps: Some(rps), ..Round::default() })
            .collect()
    }

    fn measured(p95: &[f64], rps: f64) -> Measurement {
        Measurement {
            scenario: "write_mix".into(),
            rounds: rounds(p95, rps),
            ..Measurement::default()
        }
    }

    fn failing(verdicts: &[Verdict]) -> Vec<&'static str> {
        verdicts.iter().filter(|v| v.fails()).map(|v| v.gate).collect()
    }

    #[test]
    fn medians_of_rounds_decide_and_one_slow_round_does_not() {
        let baseline = measured(&[10.0, 10.2, 9.8], 1000.0);
        // One noisy round of three: the median holds.
        let noisy = measured(&[10.1, 30.0, 10.0], 990.0);
        assert!(failing(&compare(&noisy, &baseline, &[], "2026-12-01").unwrap()).is_empty());
        // p95 up 12 %, throughput down 11 %: both gates.
        let slower = measured(&[11.2, 11.3, 11.1], 890.0);
        let verdicts = compare(&slower, &baseline, &[], "2026-12-01").unwrap();
        assert_eq!(failing(&verdicts), ["p95", "throughput"]);
        // Exactly at the limits passes.
        let edge = measured(&[11.0, 11.0, 11.0], 900.0);
        let verdicts = compare(&edge, &measured(&[10.0], 1000.0), &[], "2026-12-01").unwrap();
        assert!(failing(&verdicts).is_empty(), "{verdicts:?}");
    }

    #[test]
    fn runs_at_another_rate_are_not_compared() {
        let at = |rate: f64| {
            let mut m = measured(&[1.0], rate);
            m.rounds[0].target_rps = Some(rate);
            m
        };
        assert!(compare(&at(1_000.0), &at(1_050.0), &[], "2026-12-01").is_ok());
        let refused = compare(&at(1_000.0), &at(2_500.0), &[], "2026-12-01").unwrap_err();
        assert!(refused.to_string().contains("not comparable"), "{refused}");
    }

    #[test]
    fn every_gate_crosses_its_limit() {
        let base = Round {
            cpu_pct: Some(60.0),
            rss_mib: Some(400.0),
            shed_share: Some(0.002),
            verify_hit_rate: Some(0.95),
            cold_start_p95_ms: Some(100.0),
            seq_gaps: Some(0),
            ..Round::default()
        };
        let crossing = [
            ("cpu", Round { cpu_pct: Some(69.1), ..base.clone() }),
            ("rss", Round { rss_mib: Some(461.0), ..base.clone() }),
            ("shed_share", Round { shed_share: Some(0.0071), ..base.clone() }),
            ("verify_hit_rate", Round { verify_hit_rate: Some(0.849), ..base.clone() }),
            ("cold_start_p95", Round { cold_start_p95_ms: Some(120.5), ..base.clone() }),
            ("seq_gaps", Round { seq_gaps: Some(1), ..base.clone() }),
        ];
        let of = |round: Round| Measurement {
            scenario: "s".into(),
            rounds: vec![round],
            ..Measurement::default()
        };
        assert!(
            failing(&compare(&of(base.clone()), &of(base.clone()), &[], "2026-12-01").unwrap())
                .is_empty()
        );
        for (gate, round) in crossing {
            let verdicts = compare(&of(round), &of(base.clone()), &[], "2026-12-01").unwrap();
            assert_eq!(failing(&verdicts), [gate]);
        }
    }

    #[test]
    fn the_reference_measured_in_the_same_run_cancels_a_slower_machine() {
        let mut baseline = measured(&[10.0, 10.0, 10.0], 1000.0);
        baseline.reference_rounds = rounds(&[1.0, 1.0, 1.0], 50_000.0);
        // Everything 30 % slower, the reference too: no regression.
        let mut slower_machine = measured(&[13.0, 13.0, 13.0], 770.0);
        slower_machine.reference_rounds = rounds(&[1.3, 1.3, 1.3], 38_500.0);
        let verdicts = compare(&slower_machine, &baseline, &[], "2026-12-01").unwrap();
        assert!(verdicts.iter().all(|v| v.normalized) && failing(&verdicts).is_empty());
        // The node alone slower: caught.
        let mut slower_node = measured(&[13.0, 13.0, 13.0], 770.0);
        slower_node.reference_rounds = rounds(&[1.0, 1.0, 1.0], 50_000.0);
        let verdicts = compare(&slower_node, &baseline, &[], "2026-12-01").unwrap();
        assert_eq!(failing(&verdicts), ["p95", "throughput"]);
    }

    #[test]
    fn waivers_excuse_a_breach_until_they_expire() {
        let baseline = measured(&[10.0], 1000.0);
        let slower = measured(&[12.0], 1000.0);
        let waiver = Waiver {
            scenario: "write_mix".into(),
            gate: "p95".into(),
            reason: "ML-DSA on every receipt".into(),
            owner: "ledger".into(),
            expires: "2026-12-31".into(),
        };
        check_waivers(std::slice::from_ref(&waiver)).unwrap();
        let verdicts =
            compare(&slower, &baseline, std::slice::from_ref(&waiver), "2026-12-31").unwrap();
        assert!(failing(&verdicts).is_empty());
        assert!(table("write_mix", &verdicts).contains("waived until 2026-12-31"));
        let verdicts =
            compare(&slower, &baseline, std::slice::from_ref(&waiver), "2027-01-01").unwrap();
        assert_eq!(failing(&verdicts), ["p95"]);
        assert!(table("write_mix", &verdicts).contains("BREACH (waiver expired 2026-12-31)"));
        // A waiver of another scenario or gate does not apply; bad ones are refused.
        let other = Waiver { gate: "throughput".into(), ..waiver.clone() };
        let verdicts = compare(&slower, &baseline, &[other], "2026-12-01").unwrap();
        assert_eq!(failing(&verdicts), ["p95"]);
        assert!(check_waivers(&[Waiver { gate: "latency".into(), ..waiver.clone() }]).is_err());
        assert!(
            check_waivers(&[Waiver { expires: "31/12/2026".into(), ..waiver.clone() }]).is_err()
        );
        assert!(check_waivers(&[Waiver { owner: " ".into(), ..waiver }]).is_err());
    }

    #[test]
    fn scenarios_must_match_and_share_a_figure() {
        let a = measured(&[1.0], 1.0);
        let b = Measurement { scenario: "read_heavy".into(), ..a.clone() };
        assert!(compare(&a, &b, &[], "2026-12-01").is_err());
        let empty = Measurement {
            rounds: vec![Round { cpu_pct: Some(1.0), ..Round::default() }],
            ..a.clone()
        };
        assert!(compare(&empty, &a, &[], "2026-12-01").is_err());
    }

    #[test]
    fn today_is_a_civil_date() {
        let today = today();
        assert_eq!(today.len(), 10);
        assert!(today.as_str() >= "2026-01-01", "{today}");
    }
}
