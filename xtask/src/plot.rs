//! SVG plots of a benchmark run: one histogram per latency metric (from the `BENCHHIST`
//! lines the kernels print) and one summary chart of each metric's median normalised to the
//! `syscall`→`sysretq` floor measured in the same boot.

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
    let rest = &line[line.find("BENCHHIST ")? + 10..];
    let (mut name, mut lo, mut width, mut counts) = (None, None, None, None);
    for kv in rest.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
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

/// Writes `h` as an SVG histogram.
pub fn histogram_svg(h: &Hist, unit: &str, path: &Path) -> crate::Result<()> {
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let hi = h.lo + h.width * h.counts.len() as u64;
    let top = h.counts.iter().copied().max().unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{} ({unit}; last bucket holds everything above p99)", h.name), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(h.lo..hi, 0u32..top + top / 10 + 1)
        .map_err(err)?;
    chart.configure_mesh().x_desc(unit).y_desc("samples").draw().map_err(err)?;
    chart
        .draw_series(h.counts.iter().enumerate().map(|(i, &c)| {
            let x0 = h.lo + h.width * i as u64;
            Rectangle::new([(x0, 0), (x0 + h.width, c)], BLUE.mix(0.6).filled())
        }))
        .map_err(err)?;
    root.present().map_err(err)
}

/// Writes the summary chart: each metric's median divided by the floor's median.
pub fn summary_svg(results: &[BenchResult], path: &Path) -> crate::Result<()> {
    let Some(floor) = results.iter().find(|r| r.name == "floor.syscall_sysret") else {
        return Err("no floor metric in the results".into());
    };
    let ratios: Vec<(String, f64)> = results
        .iter()
        .filter(|r| r.unit == floor.unit)
        .map(|r| (r.name.clone(), r.median as f64 / floor.median.max(1) as f64))
        .collect();
    let top = ratios.iter().map(|r| r.1).fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::new(path, (900, 120 + 36 * ratios.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("median / floor ({} mode)", floor.mode), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(220)
        .build_cartesian_2d(0f64..top, (0..ratios.len()).into_segmented())
        .map_err(err)?;
    let labels: Vec<String> = ratios.iter().map(|r| r.0.clone()).collect();
    chart
        .configure_mesh()
        .y_label_formatter(&|s| match s {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => labels.get(*i).cloned().unwrap_or_default(),
            SegmentValue::Last => String::new(),
        })
        .x_desc("× floor")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(ratios.iter().enumerate().map(|(i, r)| {
            Rectangle::new(
                [(0.0, SegmentValue::Exact(i)), (r.1, SegmentValue::Exact(i + 1))],
                GREEN.mix(0.6).filled(),
            )
        }))
        .map_err(err)?;
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
        histogram_svg(&h[0], "tsc", &p).unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().contains("<svg"));
        let r = |name: &str, median| BenchResult {
            name: name.into(),
            unit: "tsc".into(),
            n: 1,
            min: 1,
            median,
            p99: 1,
            mode: "wall".into(),
        };
        let s = dir.join("s.svg");
        summary_svg(&[r("floor.syscall_sysret", 100), r("hypercall.null", 150)], &s).unwrap();
        assert!(std::fs::read_to_string(&s).unwrap().contains("hypercall.null"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
