//! The suite's pictures, as SVG text (plotters): a latency percentile
//! spectrum per scenario against its baseline, and a throughput/latency
//! curve per sweep.

use crate::compare::SweepPoint;
use plotters::prelude::*;

const SIZE: (u32, u32) = (960, 440);
/// Colours of the series, in order: the run first, then baseline, reference.
const COLOURS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(127, 127, 127), RGBColor(44, 160, 44)];
/// The spectrum's x axis stops at this percentile's position (99.999 %).
const NINES_MAX: f64 = 5.0;

/// Where percentile `p` sits on the spectrum's axis: its count of nines
/// (`-log10(1 - p/100)`: 90 % at 1, 99 % at 2, 99.9 % at 3).
fn nines(p: f64) -> f64 {
    (-(1.0 - p / 100.0).max(1e-12).log10()).clamp(0.0, NINES_MAX)
}

fn percentile_label(x: &f64) -> String {
    let p = 100.0 - 100.0 / 10f64.powf(*x);
    let text = format!("{p:.3}");
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

/// Ticks at 1, 2 and 5 of every decade in the range.
fn log_ticks(range: &std::ops::Range<f64>) -> Vec<f64> {
    let (first, last) = (range.start.log10().floor() as i32, range.end.log10().ceil() as i32);
    (first..=last)
        .flat_map(|decade| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(decade)))
        .filter(|v| range.contains(v))
        .collect()
}

/// A latency or rate as people write it (no float noise).
fn number_label(value: &f64) -> String {
    if *value >= 10.0 {
        return format!("{value:.0}");
    }
    let text = format!("{value:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Bounds of a log axis holding every value (with a margin).
fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for v in values.filter(|v| *v > 0.0 && v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return 0.01..1.0;
    }
    (lo / 1.5)..(hi * 1.5).max(lo * 2.0)
}

/// The HdrHistogram percentile spectrum of each series (`[percentile, ms]`
/// pairs), log axes.
pub fn latency_svg(title: &str, series: &[(&str, &[[f64; 2]])]) -> anyhow::Result<String> {
    let lines = series
        .iter()
        .map(|(label, points)| {
            (*label, points.iter().filter(|p| p[1] > 0.0).map(|p| (nines(p[0]), p[1])).collect())
        })
        .collect();
    let axes = Axes {
        x: 0.0..NINES_MAX,
        x_desc: "percentile",
        x_label: &percentile_label,
        y_desc: "latency ms (from intended send)",
        markers: false,
    };
    draw(title, &axes, lines)
}

/// Throughput (answers below 400 per second) against p99, one curve per
/// series, one point per step.
pub fn sweep_svg(title: &str, series: &[(&str, &[SweepPoint])]) -> anyhow::Result<String> {
    let points = || series.iter().flat_map(|(_, points)| points.iter());
    let x_max = points().map(|p| p.throughput_rps.max(p.target_rps)).fold(1.0, f64::max);
    let lines = series
        .iter()
        .map(|(label, steps)| {
            let line = steps.iter().filter(|p| p.p99_ms > 0.0);
            (*label, line.map(|p| (p.throughput_rps, p.p99_ms)).collect())
        })
        .collect();
    let axes = Axes {
        x: 0.0..x_max * 1.05,
        x_desc: "answered per second (status below 400)",
        x_label: &number_label,
        y_desc: "p99 ms",
        markers: true,
    };
    draw(title, &axes, lines)
}

/// A plot's x axis (linear) and y axis (log, fitted to the lines).
struct Axes<'a> {
    x: std::ops::Range<f64>,
    x_desc: &'a str,
    x_label: &'a dyn Fn(&f64) -> String,
    y_desc: &'a str,
    /// A dot at every point.
    markers: bool,
}

/// One curve per labelled line, a legend, as SVG text.
fn draw(
    title: &str,
    axes: &Axes<'_>,
    lines: Vec<(&str, Vec<(f64, f64)>)>,
) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let y = log_range(lines.iter().flat_map(|(_, line)| line.iter().map(|p| p.1)));
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .margin_right(36)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d(
                axes.x.clone(),
                y.clone().log_scale().with_key_points(log_ticks(&y)),
            )
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .x_desc(axes.x_desc)
            .y_desc(axes.y_desc)
            .x_labels(6)
            .x_label_formatter(axes.x_label)
            .y_label_formatter(&number_label)
            .label_style(("sans-serif", 14))
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(draw_error)?;
        for (i, (label, line)) in lines.into_iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            if axes.markers {
                chart
                    .draw_series(line.iter().map(|p| Circle::new(*p, 3, colour.filled())))
                    .map_err(draw_error)?;
            }
            chart
                .draw_series(LineSeries::new(line, colour.stroke_width(2)))
                .map_err(draw_error)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}

fn draw_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_percentile_axis_counts_nines() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), NINES_MAX);
        assert_eq!(percentile_label(&1.0), "90%");
        assert_eq!(percentile_label(&3.0), "99.9%");
        assert_eq!(percentile_label(&0.0), "0%");
        assert_eq!(number_label(&0.30000000000000004), "0.3");
        assert_eq!(number_label(&2.0), "2");
        assert_eq!(number_label(&1000.0), "1000");
        assert_eq!(log_ticks(&(0.15..30.0)), vec![0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0]);
    }

    #[test]
    fn plots_are_svg_with_one_path_per_series() {
        let run = [[0.0, 0.2], [50.0, 0.4], [99.0, 1.5], [100.0, 9.0]];
        let base = [[0.0, 0.2], [50.0, 0.5], [99.0, 1.1], [100.0, 4.0]];
        let svg = latency_svg("read_heavy", &[("run", &run), ("baseline", &base)]).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("read_heavy") && svg.contains("percentile"));
        assert!(svg.matches("<polyline").count() >= 2, "{svg}");
        let steps = [
            SweepPoint {
                target_rps: 100.0,
                throughput_rps: 99.0,
                p99_ms: 1.0,
                ..Default::default()
            },
            SweepPoint {
                target_rps: 200.0,
                throughput_rps: 150.0,
                p99_ms: 40.0,
                ..Default::default()
            },
        ];
        let svg = sweep_svg("sweep", &[("run", &steps)]).unwrap();
        assert!(svg.contains("<circle") && svg.contains("p99 ms"));
    }
}
