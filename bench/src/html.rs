//! `report.html`: one self-contained page of a suite's run: the summary
//! table, each scenario's gates against its baseline, its latency spectrum
//! and sweep curve (inline SVG), and its `/metrics` deltas.
//!
//! Its structure is what tests read: a `<section class="scenario"
//! id="scenario-NAME">` per scenario holding a `<table>` and its `<svg>`
//! plots; a script at the end counts the plots the browser laid out
//! (`data-plots-rendered` on `<body>`), for the headless-browser check.

use crate::compare::{Measurement, Round, Verdict, compare, median};
use crate::plot;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The page; `baselines` by scenario name.
pub fn report(
    title: &str,
    measured: &[Measurement],
    baselines: &BTreeMap<String, Measurement>,
    today: &str,
) -> anyhow::Result<String> {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title}</title><style>{STYLE}</style></head>\n<body>\n<h1>{title}</h1>\n",
        title = escape(title)
    );
    if let Some(first) = measured.first() {
        let _ = writeln!(
            page,
            "<p>Profile <code>{}</code>, {}; command <code>{}</code>. Latency from the intended \
             send time (open loop); medians over rounds.</p>",
            escape(&first.profile),
            escape(first.date.as_deref().unwrap_or("")),
            escape(first.command.as_deref().unwrap_or(""))
        );
    }
    page.push_str(&summary_table(measured, baselines));
    for m in measured {
        section(&mut page, m, baselines.get(&m.scenario), today)?;
    }
    page.push_str(SCRIPT);
    page.push_str("</body></html>\n");
    Ok(page)
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1200px}\
section{overflow-x:auto}.rounds{font-size:12px}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;\
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}\
.breach{color:#b00;font-weight:bold}.ok{color:#070}svg{display:block;margin:0.5em 0}";

/// Counts the plots that have a laid-out size (for the browser check).
const SCRIPT: &str = "<script>\nwindow.addEventListener('load',function(){\
var n=0;document.querySelectorAll('section.scenario svg').forEach(function(s){\
var b=s.getBoundingClientRect();if(b.width>0&&b.height>0&&s.querySelector('polyline'))n++;});\
document.body.setAttribute('data-plots-rendered',String(n));});\n</script>\n";

fn summary_table(measured: &[Measurement], baselines: &BTreeMap<String, Measurement>) -> String {
    let mut out = String::from(
        "<table id=\"summary\"><tr><th>scenario</th><th>rate /s</th><th>answered /s</th>\
         <th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th>\
         <th>baseline p95 ms</th><th>nginx p95 ms</th><th>cpu %</th><th>rss MiB</th>\
         <th>429/503 %</th><th>cold start ms</th></tr>\n",
    );
    for m in measured {
        let of = |figure: fn(&Round) -> Option<f64>| cell(median(&m.rounds, figure));
        let _ = writeln!(
            out,
            "<tr><td><a href=\"#scenario-{name}\">{name}</a></td>{}{}{}{}{}{}{}{}{}{}{}{}{}</tr>",
            of(|r| r.target_rps),
            of(|r| r.throughput_rps),
            of(|r| r.latency_ms.map(|l| l.p50)),
            of(|r| r.p95_ms),
            of(|r| r.latency_ms.map(|l| l.p99)),
            of(|r| r.latency_ms.map(|l| l.p999)),
            of(|r| r.latency_ms.map(|l| l.max)),
            cell(baselines.get(&m.scenario).and_then(|b| median(&b.rounds, |r| r.p95_ms))),
            cell(median(&m.reference_rounds, |r| r.p95_ms)),
            of(|r| r.cpu_pct),
            of(|r| r.rss_mib),
            of(|r| r.shed_share.map(|s| s * 100.0)),
            of(|r| r.cold_start_p95_ms),
            name = escape(&m.scenario),
        );
    }
    out.push_str("</table>\n");
    out
}

fn section(
    page: &mut String,
    m: &Measurement,
    baseline: Option<&Measurement>,
    today: &str,
) -> anyhow::Result<()> {
    let name = escape(&m.scenario);
    let _ = writeln!(page, "<section class=\"scenario\" id=\"scenario-{name}\">\n<h2>{name}</h2>");
    match baseline.map(|b| compare(m, b, &[], today)) {
        Some(Ok(verdicts)) => gates_table(page, &verdicts),
        Some(Err(e)) => {
            let _ = writeln!(page, "<p>Not compared: {}</p>", escape(&e.to_string()));
        }
        None => page.push_str("<p>No baseline for this scenario and profile.</p>\n"),
    }
    rounds_table(page, m);
    // The median round's spectrum (by p95), against the baseline's.
    let middle = |rounds: &[Round]| -> Option<Vec<[f64; 2]>> {
        let mut with: Vec<&Round> = rounds.iter().filter(|r| r.spectrum.is_some()).collect();
        with.sort_by(|a, b| a.p95_ms.unwrap_or(0.0).total_cmp(&b.p95_ms.unwrap_or(0.0)));
        with.get(with.len() / 2).and_then(|r| r.spectrum.clone())
    };
    let mut series: Vec<(&str, Vec<[f64; 2]>)> = Vec::new();
    series.extend(middle(&m.rounds).map(|s| ("this run", s)));
    series.extend(baseline.and_then(|b| middle(&b.rounds)).map(|s| ("baseline", s)));
    series.extend(middle(&m.reference_rounds).map(|s| ("nginx return 200", s)));
    if !series.is_empty() {
        let borrowed: Vec<(&str, &[[f64; 2]])> =
            series.iter().map(|(l, s)| (*l, s.as_slice())).collect();
        let title = format!("{} latency by percentile", m.scenario);
        page.push_str(&plot::latency_svg(&title, &borrowed)?);
    }
    if !m.sweep.is_empty() {
        let mut curves = vec![("this run", m.sweep.as_slice())];
        if let Some(b) = baseline.filter(|b| !b.sweep.is_empty()) {
            curves.push(("baseline", b.sweep.as_slice()));
        }
        if !m.reference_sweep.is_empty() {
            curves.push(("nginx return 200", m.reference_sweep.as_slice()));
        }
        let title = format!("{} sweep: throughput against p99", m.scenario);
        page.push_str(&plot::sweep_svg(&title, &curves)?);
        sweep_table(page, m);
    }
    page.push_str("</section>\n");
    Ok(())
}

fn gates_table(page: &mut String, verdicts: &[Verdict]) {
    page.push_str(
        "<table class=\"gates\"><tr><th>gate</th><th>baseline</th><th>run</th><th>change</th>\
         <th>verdict</th></tr>\n",
    );
    for v in verdicts {
        let change = if v.baseline != 0.0 {
            format!("{:+.1} %", (v.run / v.baseline - 1.0) * 100.0)
        } else {
            "-".to_owned()
        };
        let (class, verdict) = if v.breached { ("breach", "BREACH") } else { ("ok", "ok") };
        let unit = if v.normalized { " (÷ nginx)" } else { "" };
        let _ = writeln!(
            page,
            "<tr><td>{}{unit}</td><td>{:.4}</td><td>{:.4}</td><td>{change}</td>\
             <td class=\"{class}\">{verdict}</td></tr>",
            v.gate, v.baseline, v.run
        );
    }
    page.push_str("</table>\n");
}

fn rounds_table(page: &mut String, m: &Measurement) {
    let mut metric_names: Vec<&String> =
        m.rounds.iter().filter_map(|r| r.metrics.as_ref()).flat_map(|x| x.keys()).collect();
    metric_names.sort();
    metric_names.dedup();
    page.push_str(
        "<table class=\"rounds\"><tr><th>round</th><th>answered /s</th><th>p95 ms</th>\
         <th>p99 ms</th><th>cpu %</th><th>rss MiB</th><th>statuses</th><th>late sends</th>\
         <th>slowest fsync ≤ ms</th>",
    );
    for name in &metric_names {
        let _ = write!(page, "<th>{}</th>", escape(name));
    }
    page.push_str("</tr>\n");
    for (i, r) in m.rounds.iter().enumerate() {
        let statuses = r.statuses.as_ref().map_or(String::new(), |s| {
            s.iter().map(|(code, n)| format!("{code}: {n}")).collect::<Vec<_>>().join(", ")
        });
        let _ = write!(
            page,
            "<tr><td>{}</td>{}{}{}{}{}<td>{statuses}</td>{}{}",
            i + 1,
            cell(r.throughput_rps),
            cell(r.p95_ms),
            cell(r.latency_ms.map(|l| l.p99)),
            cell(r.cpu_pct),
            cell(r.rss_mib),
            cell(r.late_sends.map(|n| n as f64)),
            cell(r.fsync_max_ms),
        );
        for name in &metric_names {
            page.push_str(&cell(r.metrics.as_ref().and_then(|x| x.get(*name).copied())));
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</table>\n");
}

fn sweep_table(page: &mut String, m: &Measurement) {
    page.push_str(
        "<table class=\"sweep\"><tr><th>target</th><th>rate /s</th><th>answered /s</th>\
         <th>p50 ms</th><th>p99 ms</th><th>429/503 %</th></tr>\n",
    );
    let rows = m.sweep.iter().map(|p| ("node", p));
    for (who, p) in rows.chain(m.reference_sweep.iter().map(|p| ("nginx", p))) {
        let _ = writeln!(
            page,
            "<tr><td>{who}</td>{}{}{}{}{}</tr>",
            cell(Some(p.target_rps)),
            cell(Some(p.throughput_rps)),
            cell(Some(p.p50_ms)),
            cell(Some(p.p99_ms)),
            cell(Some(p.shed_share * 100.0)),
        );
    }
    page.push_str("</table>\n");
}

fn cell(value: Option<f64>) -> String {
    match value {
        Some(v) if v.abs() >= 100.0 => format!("<td>{v:.0}</td>"),
        Some(v) => format!("<td>{v:.3}</td>"),
        None => "<td>-</td>".to_owned(),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Checks a page's structure without a browser: every scenario named has
/// its section with a table and at least `plots_min` plots, each an `<svg>`
/// with a drawn line.
pub fn check_structure(page: &str, scenarios: &[&str], plots_min: usize) -> anyhow::Result<()> {
    anyhow::ensure!(page.starts_with("<!DOCTYPE html>"), "not an HTML page");
    anyhow::ensure!(page.contains("<table id=\"summary\">"), "no summary table");
    anyhow::ensure!(page.contains("data-plots-rendered"), "no plot-counting script");
    for name in scenarios {
        let start = format!("<section class=\"scenario\" id=\"scenario-{name}\">");
        let at = page.find(&start).ok_or_else(|| anyhow::anyhow!("no section for {name}"))?;
        let end = page[at..].find("</section>").map(|e| at + e).unwrap_or(page.len());
        let body = &page[at..end];
        anyhow::ensure!(body.contains("<table"), "{name}: no table");
        let plots = body.matches("<svg").count();
        anyhow::ensure!(plots >= plots_min, "{name}: {plots} plots, expected {plots_min}");
        anyhow::ensure!(
            body.matches("</svg>").count() == plots && body.matches("<polyline").count() >= plots,
            "{name}: a plot without a drawn line"
        );
    }
    Ok(())
}
