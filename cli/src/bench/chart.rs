//! `--sweep` and `--plot`: the bench over several concurrencies, and an SVG chart of it
//! (requests per second and p99 latency against concurrency; raw beside the pooled client
//! on each runtime). Drawn with plotters' pure-Rust SVG backend and a bundled font (DejaVu
//! Sans, `cli/assets`), so it needs no system library (no fontconfig, no freetype).

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use serde::Serialize;

use super::report::RunReport;

/// The font the chart's text is laid out and drawn with.
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// One panel of the chart: its area, its y axis, its top and what it shows of a point.
type Panel<'a, 'b> = (
    &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    &'static str,
    f64,
    fn(&Point) -> Option<f64>,
);

/// One line of the chart: a client on a runtime.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub(crate) struct Line {
    /// `raw`, `pooled` or `minimal`.
    pub(crate) client: &'static str,
    /// The runtime it ran on.
    pub(crate) runtime: &'static str,
}

impl Line {
    fn label(&self) -> String {
        format!("{} ({})", self.client, self.runtime)
    }
}

/// One point: the medians of the rounds of one line at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Point {
    pub(crate) concurrency: u64,
    pub(crate) ops_per_s: f64,
    pub(crate) p99_us: Option<f64>,
    pub(crate) client_us_per_op: f64,
    pub(crate) rounds: usize,
}

/// Every line of a sweep with its points, by concurrency.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sweep {
    pub(crate) mode: &'static str,
    pub(crate) lines: BTreeMap<String, Vec<Point>>,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

impl Sweep {
    /// The medians of `runs` per line and concurrency.
    pub(crate) fn of(mode: &'static str, runs: &[RunReport]) -> Sweep {
        let mut groups: BTreeMap<(Line, u64), Vec<&RunReport>> = BTreeMap::new();
        for r in runs {
            let line = Line {
                client: r.client,
                runtime: r.runtime,
            };
            groups.entry((line, r.concurrency)).or_default().push(r);
        }
        let mut lines: BTreeMap<String, Vec<Point>> = BTreeMap::new();
        for ((line, concurrency), rs) in groups {
            let p99: Vec<f64> = rs
                .iter()
                .filter_map(|r| r.latency.as_ref().map(|l| l.p99_us))
                .collect();
            lines.entry(line.label()).or_default().push(Point {
                concurrency,
                ops_per_s: median(rs.iter().map(|r| r.ops_per_s).collect()),
                p99_us: (!p99.is_empty()).then(|| median(p99)),
                client_us_per_op: median(rs.iter().map(|r| r.cpu.client_us_per_op).collect()),
                rounds: rs.len(),
            });
        }
        Sweep { mode, lines }
    }

    /// Prints the sweep as a table.
    pub(crate) fn print(&self) {
        println!("\nsweep ({}): medians per line and concurrency", self.mode);
        println!(
            "  {:<20} {:>11} {:>12} {:>10} {:>10}",
            "line", "concurrency", "ops/s", "p99 us", "CPU us/op"
        );
        for (label, points) in &self.lines {
            for p in points {
                println!(
                    "  {:<20} {:>11} {:>12.0} {:>10} {:>10.2}",
                    label,
                    p.concurrency,
                    p.ops_per_s,
                    p.p99_us.map_or("-".into(), |v| format!("{v:.0}")),
                    p.client_us_per_op
                );
            }
        }
    }

    /// Writes the chart to `path` as SVG: throughput on the left, p99 latency on the right,
    /// both against concurrency (log scale).
    pub(crate) fn plot(&self, path: &Path, title: &str) -> Result<(), Box<dyn std::error::Error>> {
        // The bundled font: plotters lays text out with it, no system font needed.
        register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| "the bundled font did not load")?;
        let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 20))?;
        let (left, right) = root.split_horizontally(550);
        let concurrencies: Vec<u64> = self.lines.values().flatten().map(|p| p.concurrency).collect();
        let lo = concurrencies.iter().copied().min().unwrap_or(1).max(1) as f64;
        let hi = concurrencies.iter().copied().max().unwrap_or(1).max(2) as f64;
        let x_range = (lo * 0.8)..(hi * 1.25);
        let max_ops = self
            .lines
            .values()
            .flatten()
            .map(|p| p.ops_per_s)
            .fold(1.0, f64::max);
        let max_p99 = self
            .lines
            .values()
            .flatten()
            .filter_map(|p| p.p99_us)
            .fold(1.0, f64::max);
        let colors = [&BLUE, &RED, &GREEN, &MAGENTA, &CYAN, &BLACK];
        let panels: [Panel<'_, '_>; 2] = [
            (&left, "operations per second", max_ops * 1.1, |p| {
                Some(p.ops_per_s)
            }),
            (&right, "p99 latency (µs)", max_p99 * 1.1, |p| p.p99_us),
        ];
        for (area, y_desc, y_max, value) in panels {
            let mut chart = ChartBuilder::on(area)
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(70)
                .build_cartesian_2d(x_range.clone().log_scale(), 0.0..y_max)?;
            chart
                .configure_mesh()
                .x_desc("concurrency (tasks in flight)")
                .y_desc(y_desc)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw()?;
            for (i, (label, points)) in self.lines.iter().enumerate() {
                let color = colors[i % colors.len()];
                let series: Vec<(f64, f64)> = points
                    .iter()
                    .filter_map(|p| value(p).map(|v| (p.concurrency as f64, v)))
                    .collect();
                if series.is_empty() {
                    continue;
                }
                chart
                    .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))?
                    .label(label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
                chart.draw_series(
                    series
                        .iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
                )?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()?;
        }
        root.present()?;
        Ok(())
    }
}
