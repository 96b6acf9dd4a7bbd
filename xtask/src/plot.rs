//! SVG plots of a benchmark run: one histogram per latency metric (from the `BENCHHIST`
//! lines the kernels print; with `--peer xen` both systems' overlaid) and one summary chart of
//! every latency metric's median, one labelled bar per metric and system, on a log scale.

use crate::bench::BenchResult;
use plotters::prelude::*;
use std::path::Path;

/// A metric's distribution as the kernels report it.
#[derive(Clone, Debug, PartialEq)]
pub struct Hist {
    pub name: String,
    pub lo: u64,
    pub width: u64,
    pub counts: Vec<u32>,
}

/// Parses every `BENCHHIST name=... lo=... width=... counts=a,b,...` line.
pub fn parse_hists(log: &[String]) -> Vec<Hist> {
    log.iter().filter_map(|l| parse_hist(l)).collect()
}

fn parse_hist(line: &str) -> Option<Hist> {
    let rest = crate::kv::after(line, "BENCHHIST ")?;
    let (mut name, mut lo, mut width, mut counts) = (None, None, None, None);
    for (k, v) in crate::kv::pairs(rest) {
        match k {
            "name" => name = Some(v.to_string()),
            "lo" => lo = v.parse().ok(),
            "width" => width = v.parse::<u64>().ok(),
            "counts" => counts = v.split(',').map(|c| c.parse().ok()).collect::<Option<Vec<u32>>>(),
            _ => {}
        }
    }
    Some(Hist { name: name?, lo: lo?, width: width?.max(1), counts: counts? })
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The colour of each system's bars.
fn colour(system: &str) -> RGBColor {
    if system == "xen" {
        RGBColor(214, 96, 28)
    } else {
        RGBColor(40, 110, 190)
    }
}

/// Writes one metric's histograms as an SVG: one series per `(system, histogram)`, overlaid
/// (each system's bars half-transparent in its own colour, named in the legend).
pub fn histogram_svg(series: &[(&str, &Hist)], unit: &str, path: &Path) -> crate::Result<()> {
    let Some((_, first)) = series.first() else { return Err("no histogram to draw".into()) };
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let lo = series.iter().map(|(_, h)| h.lo).min().unwrap_or(0);
    let hi = series.iter().map(|(_, h)| h.lo + h.width * h.counts.len() as u64).max().unwrap_or(1);
    let top = series.iter().flat_map(|(_, h)| h.counts.iter().copied()).max().unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{} ({unit}; last bucket holds everything above p99)", first.name),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(lo..hi.max(lo + 1), 0u32..top + top / 10 + 1)
        .map_err(err)?;
    chart.configure_mesh().x_desc(unit).y_desc("samples").draw().map_err(err)?;
    for (system, h) in series {
        let c = colour(system);
        chart
            .draw_series(h.counts.iter().enumerate().map(|(i, &n)| {
                let x0 = h.lo + h.width * i as u64;
                Rectangle::new([(x0, 0), (x0 + h.width, n)], c.mix(0.55).filled())
            }))
            .map_err(err)?
            .label(system.to_string())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(err)?;
    root.present().map_err(err)
}

/// Writes the summary chart: one labelled horizontal bar per latency metric and system
/// (its median, on a log scale, so a 40-instruction path and a 100 000-instruction one are
/// both readable), each system in its own colour. Throughputs are left out (no common unit).
pub fn summary_svg(results: &[BenchResult], path: &Path) -> crate::Result<()> {
    let latency = |r: &&BenchResult| matches!(r.unit.as_str(), "tsc" | "insns");
    let mut bars: Vec<&BenchResult> = Vec::new();
    // Grouped by metric (in first-seen order), microvisor first within a metric.
    for r in results.iter().filter(latency) {
        if bars.iter().any(|b| b.name == r.name) {
            continue;
        }
        let mut same: Vec<&BenchResult> =
            results.iter().filter(latency).filter(|b| b.name == r.name).collect();
        same.sort_by_key(|b| b.system != "microvisor");
        bars.extend(same);
    }
    if bars.is_empty() {
        return Err("no latency metric in the results".into());
    }
    // Segment 0 is drawn at the bottom: reversed, the first metric comes out on top.
    bars.reverse();
    let systems: Vec<&str> = {
        let mut v: Vec<&str> = bars.iter().map(|b| b.system.as_str()).collect();
        v.sort();
        v.dedup();
        v
    };
    let label = |b: &BenchResult| {
        if systems.len() > 1 {
            format!("{} ({})", b.name, b.system)
        } else {
            b.name.clone()
        }
    };
    let labels: Vec<String> = bars.iter().map(|b| label(b)).collect();
    let hi = bars.iter().map(|b| b.median).max().unwrap_or(1).max(1) as f64 * 3.0;
    let n = bars.len();
    let root = SVGBackend::new(path, (1000, 110 + 24 * n as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let unit = &bars[0].unit;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("median per metric ({unit}, {} mode, log scale)", bars[0].mode), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(300)
        .build_cartesian_2d((1f64..hi).log_scale(), (0..n).into_segmented())
        .map_err(err)?;
    chart
        .configure_mesh()
        // One label per bar, at the centre of its segment, so labels and bars line up.
        .y_labels(n)
        .y_label_formatter(&|s| match s {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .disable_y_mesh()
        .x_desc(unit.as_str())
        .draw()
        .map_err(err)?;
    for system in &systems {
        let c = colour(system);
        chart
            .draw_series(bars.iter().enumerate().filter(|(_, b)| b.system == *system).map(|(i, b)| {
                let mut r = Rectangle::new(
                    [(1.0, SegmentValue::Exact(i)), ((b.median.max(1)) as f64, SegmentValue::Exact(i + 1))],
                    c.mix(0.75).filled(),
                );
                r.set_margin(2, 2, 0, 0);
                r
            }))
            .map_err(err)?
            .label(system.to_string())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
    }
    if systems.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_histograms_and_draws_svgs() {
        let log = vec![
            "(XEN) BENCHHIST name=floor.syscall_sysret lo=150 width=2 counts=1,5,9,3".to_string(),
            "(d1) BENCHHIST name=broken lo=1".to_string(),
        ];
        let h = parse_hists(&log);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].counts, vec![1, 5, 9, 3]);
        let dir = std::env::temp_dir().join(format!("mv-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("h.svg");
        histogram_svg(&[("microvisor", &h[0])], "tsc", &p).unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().contains("<svg"));
        let r = |name: &str, median| BenchResult {
            name: name.into(),
            unit: "tsc".into(),
            n: 1,
            min: 1,
            median,
            p99: 1,
            mode: "wall".into(),
            system: "microvisor".into(),
        };
        let s = dir.join("s.svg");
        summary_svg(&[r("floor.syscall_sysret", 100), r("hypercall.null", 150)], &s).unwrap();
        assert!(std::fs::read_to_string(&s).unwrap().contains("hypercall.null"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The attributes `x`, `y`, `width`, `height` of an SVG element's opening tag.
    fn attr(tag: &str, name: &str) -> Option<f64> {
        let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        tag[at..].split('"').next()?.parse().ok()
    }

    #[test]
    fn summary_has_one_labelled_bar_per_metric_and_system_lined_up() {
        let r = |name: &str, system: &str, median| BenchResult {
            name: name.into(),
            unit: "insns".into(),
            n: 1,
            min: 1,
            median,
            p99: 1,
            mode: "insns".into(),
            system: system.into(),
        };
        let mut results = Vec::new();
        for i in 0..14u64 {
            results.push(r(&format!("metric.{i:02}"), "microvisor", 4 << i));
            results.push(r(&format!("metric.{i:02}"), "xen", 300 + 1000 * i));
        }
        results.push(BenchResult { unit: "MiB/s".into(), ..r("blk.seqread.dom0", "microvisor", 3000) });
        let dir = std::env::temp_dir().join(format!("mv-summary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("summary.svg");
        summary_svg(&results, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!svg.contains("blk.seqread"), "throughputs are not latencies");
        // Bars: the filled rectangles in the systems' colours (the legend's are 10 wide).
        let bars: Vec<(f64, f64)> = svg
            .split("<rect")
            .skip(1)
            .filter(|t| t.contains("fill=\"#286EBE\"") || t.contains("fill=\"#D6601C\""))
            .filter(|t| attr(t, "width").is_some_and(|w| w > 10.0))
            .map(|t| {
                let y = attr(t, "y").unwrap();
                (y, y + attr(t, "height").unwrap())
            })
            .collect();
        assert_eq!(bars.len(), 28, "one bar per metric and system");
        for i in 0..14 {
            for system in ["microvisor", "xen"] {
                let label = format!("metric.{i:02} ({system})");
                let content = |t: &str| {
                    t.split_once('>').and_then(|(_, c)| c.split_once('<')).map(|(c, _)| c.trim().to_string())
                };
                let texts: Vec<&str> =
                    svg.split("<text").filter(|t| content(t).as_deref() == Some(label.as_str())).collect();
                assert_eq!(texts.len(), 1, "{label} labelled once");
                let y = attr(texts[0], "y").unwrap();
                let inside = bars.iter().filter(|(top, bottom)| *top <= y && y <= *bottom).count();
                assert_eq!(inside, 1, "{label} at y {y} lines up with exactly one bar");
            }
        }
        // The first metric is drawn at the top.
        let y_of = |label: &str| {
            svg.find(&format!("\n{label}\n"))
                .map(|at| attr(&svg[svg[..at].rfind("<text").unwrap()..at], "y").unwrap())
        };
        assert!(y_of("metric.00 (microvisor)").unwrap() < y_of("metric.13 (xen)").unwrap());
    }
}
