//! Results for people (a table), for machines (`--json`: configuration, environment and every
//! run), and for slides (`--plot`: latency against throughput over a sweep, SVG).

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::BenchError;
use crate::load::Load;
use crate::stats::Summary;

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub load: Load,
    pub summary: Summary,
}

/// The machine and build the numbers came from.
#[derive(Clone, Debug, Serialize)]
pub struct Environment {
    pub cpu_model: String,
    pub cpus: usize,
    pub os: String,
    pub hearth_version: String,
    pub git_revision: String,
}

impl Environment {
    pub fn detect() -> Environment {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Environment {
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            hearth_version: env!("CARGO_PKG_VERSION").into(),
            git_revision: option_env!("HEARTH_GIT_REVISION").unwrap_or("unknown").into(),
        }
    }
}

/// A fixed-width table of the runs.
pub fn table(runs: &[RunReport]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<22} {:>5} {:>4} {:>7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        "load",
        "ok",
        "err",
        "req/s",
        "out tok/s",
        "tot tok/s",
        "ttft p50",
        "ttft p99",
        "itl p50",
        "itl p99",
        "tpot p50",
        "e2e p50",
        "goodput"
    ));
    for r in runs {
        let m = &r.summary;
        let ms = |v: f64| format!("{:.1}ms", v * 1e3);
        s.push_str(&format!(
            "{:<22} {:>5} {:>4} {:>7.2} {:>9.1} {:>9.1} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8.2}{}\n",
            r.load.to_string(),
            m.completed,
            m.failed,
            m.request_throughput,
            m.output_throughput,
            m.total_token_throughput,
            ms(m.ttft.p50),
            ms(m.ttft.p99),
            ms(m.itl.p50),
            ms(m.itl.p99),
            ms(m.tpot.p50),
            ms(m.e2e.p50),
            m.goodput,
            if m.cut_short { "  (cut short)" } else { "" }
        ));
        if !m.errors.is_empty() {
            s.push_str(&format!("{:<22} errors: {:?}\n", "", m.errors));
        }
    }
    s
}

/// Writes `--json`.
pub fn write_json(path: &Path, config: &serde_json::Value, runs: &[RunReport]) -> Result<(), BenchError> {
    let doc = serde_json::json!({ "config": config, "environment": Environment::detect(), "runs": runs });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| BenchError::Output(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| BenchError::Output(format!("{}: {e}", path.display())))
}

/// A plotted line: its name, the value it takes from a run, its colour.
type Series = (&'static str, fn(&Summary) -> f64, RGBColor);

/// Writes `--plot`: TTFT and TPOT (p50 and p99) against output throughput, one point per run.
pub fn write_plot(path: &Path, title: &str, runs: &[RunReport]) -> Result<(), BenchError> {
    let err = |e: String| BenchError::Output(format!("{}: {e}", path.display()));
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let xs: Vec<f64> = runs.iter().map(|r| r.summary.output_throughput).collect();
    let series: [Series; 4] = [
        ("TTFT p50", |s| s.ttft.p50, BLUE),
        ("TTFT p99", |s| s.ttft.p99, CYAN),
        ("TPOT p50", |s| s.tpot.p50, RED),
        ("TPOT p99", |s| s.tpot.p99, MAGENTA),
    ];
    let ymax = runs.iter().flat_map(|r| series.iter().map(|(_, f, _)| f(&r.summary) * 1e3)).fold(1.0, f64::max);
    let xmax = xs.iter().copied().fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax * 1.1, 0.0..ymax * 1.1)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("output throughput (tokens/s)")
        .y_desc("latency (ms)")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (name, f, color) in series {
        let pts: Vec<(f64, f64)> = runs.iter().map(|r| (r.summary.output_throughput, f(&r.summary) * 1e3)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(e.to_string()))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}
