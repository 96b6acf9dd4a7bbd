//! Benchmark results: parsing the `BENCH` lines the kernels print, the terminal table, the
//! JSON file and the comparison with an earlier run.

use serde::{Deserialize, Serialize};

/// One metric of one run (the JSON schema of `target/bench/results.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    pub name: String,
    pub unit: String,
    pub n: u64,
    pub min: u64,
    pub median: u64,
    pub p99: u64,
    /// `wall` (TSC under TCG) or `insns` (`-icount`, instruction counts).
    pub mode: String,
    /// Which hypervisor ran the benchmark: `microvisor` or `xen` (`--peer xen`). Files
    /// written before the field existed are microvisor's.
    #[serde(default = "microvisor")]
    pub system: String,
}

pub(crate) fn microvisor() -> String {
    crate::qemu::System::Microvisor.name().to_string()
}

/// Parses every `BENCH name=... unit=... n=... min=... median=... p99=...` line in `log`
/// (the line may carry a console prefix such as `(d1) `) of a microvisor run.
pub fn parse(log: &[String], mode: &str) -> Vec<BenchResult> {
    parse_system(log, mode, crate::qemu::System::Microvisor)
}

/// [`parse`] for a run of `system`.
pub fn parse_system(log: &[String], mode: &str, system: crate::qemu::System) -> Vec<BenchResult> {
    log.iter()
        .filter_map(|l| parse_line(l, mode))
        .map(|r| BenchResult { system: system.name().to_string(), ..r })
        .collect()
}

/// Parses one `BENCH` line.
pub fn parse_line(line: &str, mode: &str) -> Option<BenchResult> {
    let rest = crate::kv::after(line, "BENCH ")?;
    let mut r = BenchResult {
        name: String::new(),
        unit: String::new(),
        n: 0,
        min: 0,
        median: 0,
        p99: 0,
        mode: mode.to_string(),
        system: microvisor(),
    };
    let mut seen = 0u8;
    for (k, v) in crate::kv::pairs(rest) {
        match k {
            "name" => (r.name, seen) = (v.to_string(), seen | 1),
            "unit" => (r.unit, seen) = (v.to_string(), seen | 2),
            "n" => (r.n, seen) = (v.parse().ok()?, seen | 4),
            "min" => (r.min, seen) = (v.parse().ok()?, seen | 8),
            "median" => (r.median, seen) = (v.parse().ok()?, seen | 16),
            "p99" => (r.p99, seen) = (v.parse().ok()?, seen | 32),
            _ => {}
        }
    }
    // Under `-icount shift=0` the guest's TSC advances by one per instruction executed, so a
    // TSC delta is an instruction count; say so.
    if mode == "insns" && r.unit == "tsc" {
        r.unit = "insns".to_string();
    }
    (seen == 63).then_some(r)
}

/// The ratio of `name`'s median to the floor's (`floor.syscall_sysret`), if both exist and
/// are in the same unit (a throughput has no ratio to a latency).
pub fn ratio_to_floor(results: &[BenchResult], name: &str) -> Option<f64> {
    let floor = results.iter().find(|r| r.name == "floor.syscall_sysret")?;
    let r = results.iter().find(|r| r.name == name)?;
    (floor.median > 0 && r.unit == floor.unit).then(|| r.median as f64 / floor.median as f64)
}

/// The results as an aligned table with each metric's ratio to the floor, then the goal
/// ratios ([`goal_lines`]).
pub fn table(results: &[BenchResult]) -> String {
    let mut out = format!(
        "{:<28} {:>6} {:>9} {:>10} {:>10} {:>10} {:>9}\n",
        "metric", "unit", "n", "min", "median", "p99", "x floor"
    );
    for r in results {
        let ratio = ratio_to_floor(results, &r.name).map_or_else(|| "-".to_string(), |x| format!("{x:.2}"));
        out += &format!(
            "{:<28} {:>6} {:>9} {:>10} {:>10} {:>10} {:>9}\n",
            r.name, r.unit, r.n, r.min, r.median, r.p99, ratio
        );
    }
    out + &goal_lines(results)
}

/// The ratios issue 6 sets goals for, where both figures were measured: the null hypercall
/// over the floor and the event-channel ping-pong over the null hypercall.
pub const GOALS: [(&str, &str, f64); 2] =
    [("hypercall.null", "floor.syscall_sysret", 1.25), ("evtchn.pingpong", "hypercall.null", 8.0)];

/// `a / b` of the medians, if both metrics are there and `b` is not zero.
pub fn ratio(results: &[BenchResult], a: &str, b: &str) -> Option<f64> {
    let a = results.iter().find(|r| r.name == a)?;
    let b = results.iter().find(|r| r.name == b)?;
    (b.median > 0).then(|| a.median as f64 / b.median as f64)
}

/// One line per goal ratio that can be computed (the goals are for wall mode).
pub fn goal_lines(results: &[BenchResult]) -> String {
    let mut out = String::new();
    for (a, b, goal) in GOALS {
        if let Some(x) = ratio(results, a, b) {
            out += &format!("{a} / {b} = {x:.2}x (goal <= {goal}x in wall mode)\n");
        }
    }
    out
}

/// The peer set of issue 13: the paths measured on both microvisor and Xen 4.17
/// (`cargo xtask bench --peer xen`), in the order the comparison table lists them.
pub const PEER_SET: &[&str] = &[
    "hypercall.null",
    "hypercall.get_features",
    "evtchn.send",
    "evtchn.status",
    "mmu.update_va_mapping",
    "mmu.update_one",
    "mmu.update_batch512",
    "mmu.pin_l1",
    "mmu.unpin_l1",
    "mmu.pin_l4",
    "mmu.unpin_l4",
    "mmu.tlb_flush_local",
    "mmu.invlpg_local",
    "hypercall.multicall16",
    "grant.map_unmap",
    "grant.copy_4k",
    "sched.set_timer_op",
    "sched.yield",
];

/// The goal of issue 13 for each peer metric: microvisor at most this fraction of Xen's
/// median, in both modes.
pub const PEER_GOAL: f64 = 0.75;

/// The side-by-side table of a `--peer` run: every metric both systems measured (the peer
/// set first, then the others in microvisor's order), each system's median and the ratio
/// microvisor / Xen, then how many peer metrics meet [`PEER_GOAL`].
pub fn peer_table(mv: &[BenchResult], peer: &[BenchResult]) -> String {
    let peer_name = peer.first().map_or("peer", |r| r.system.as_str());
    let mut names: Vec<&str> = PEER_SET.to_vec();
    names.extend(mv.iter().map(|r| r.name.as_str()).filter(|n| !PEER_SET.contains(n)));
    let mut out = format!(
        "{:<28} {:>6} {:>12} {:>12} {:>9}\n",
        "metric",
        "unit",
        "microvisor",
        peer_name,
        format!("mv/{peer_name}")
    );
    let (mut met, mut measured) = (0, 0);
    for name in names {
        let (m, p) = (mv.iter().find(|r| r.name == name), peer.iter().find(|r| r.name == name));
        if m.is_none() && p.is_none() || (m.is_some() != p.is_some() && !PEER_SET.contains(&name)) {
            continue;
        }
        let unit = m.or(p).map_or("", |r| r.unit.as_str());
        let median = |r: Option<&BenchResult>| r.map_or_else(|| "-".to_string(), |r| r.median.to_string());
        let ratio = match (m, p) {
            (Some(m), Some(p)) if p.median > 0 && m.unit == p.unit => {
                let x = m.median as f64 / p.median as f64;
                if PEER_SET.contains(&name) {
                    measured += 1;
                    met += usize::from(x <= PEER_GOAL);
                }
                format!("{x:.2}")
            }
            _ => "-".to_string(),
        };
        out += &format!("{:<28} {:>6} {:>12} {:>12} {:>9}\n", name, unit, median(m), median(p), ratio);
    }
    out + &format!(
        "{met} of {measured} peer metrics at or below {PEER_GOAL}x {peer_name}'s median (goal: all, in both modes)\n"
    )
}

/// Per-metric change of the medians from `old` to `new`.
pub fn compare(old: &[BenchResult], new: &[BenchResult]) -> String {
    let same =
        |a: &BenchResult, b: &BenchResult| a.name == b.name && a.mode == b.mode && a.system == b.system;
    let mut out = format!("{:<28} {:>12} {:>12} {:>9}\n", "metric", "old median", "new median", "change");
    for n in new {
        match old.iter().find(|o| same(o, n)) {
            Some(o) if o.median > 0 => {
                let pct = (n.median as f64 - o.median as f64) * 100.0 / o.median as f64;
                out += &format!("{:<28} {:>12} {:>12} {:>+8.1}%\n", n.name, o.median, n.median, pct);
            }
            _ => out += &format!("{:<28} {:>12} {:>12} {:>9}\n", n.name, "-", n.median, "new"),
        }
    }
    for o in old {
        if !new.iter().any(|n| same(n, o)) {
            out += &format!("{:<28} {:>12} {:>12} {:>9}\n", o.name, o.median, "-", "gone");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_deltas_are_instruction_counts_in_insns_mode() {
        let line = "BENCH name=hypercall.null unit=tsc n=10 min=42 median=42 p99=42";
        assert_eq!(parse_line(line, "insns").unwrap().unit, "insns");
        assert_eq!(parse_line(line, "wall").unwrap().unit, "tsc");
        let line = "BENCH name=blk.seqread.dom0 unit=MiB/s n=16 min=1 median=2 p99=3";
        assert_eq!(parse_line(line, "insns").unwrap().unit, "MiB/s");
    }

    #[test]
    fn parses_prefixed_lines_and_rejects_partial_ones() {
        let log = vec![
            "(XEN) BENCH name=floor.syscall_sysret unit=tsc n=1000 min=150 median=158 p99=164".to_string(),
            "(d1) BENCH name=hypercall.null unit=tsc n=1000 min=170 median=180 p99=200".to_string(),
            "(d1) BENCH name=broken unit=tsc n=1000 min=1".to_string(),
            "noise".to_string(),
        ];
        let r = parse(&log, "wall");
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].name, "hypercall.null");
        assert_eq!((r[1].min, r[1].median, r[1].p99), (170, 180, 200));
        let ratio = ratio_to_floor(&r, "hypercall.null").unwrap();
        assert!((ratio - 180.0 / 158.0).abs() < 1e-9);
        let mut with_disk = r.clone();
        with_disk.extend(parse(
            &["BENCH name=blk.seqread.dom0 unit=MiB/s n=16 min=1 median=2 p99=3".into()],
            "wall",
        ));
        assert_eq!(
            ratio_to_floor(&with_disk, "blk.seqread.dom0"),
            None,
            "a throughput has no ratio to a latency"
        );
        assert!(table(&r).contains("hypercall.null"));
        assert_eq!(
            goal_lines(&r),
            "hypercall.null / floor.syscall_sysret = 1.14x (goal <= 1.25x in wall mode)\n"
        );
    }

    #[test]
    fn goal_ratios() {
        let log = vec![
            "BENCH name=hypercall.null unit=tsc n=10 min=200 median=250 p99=300".to_string(),
            "BENCH name=evtchn.pingpong unit=tsc n=10 min=1000 median=2500 p99=3000".to_string(),
            "BENCH name=floor.syscall_sysret unit=tsc n=10 min=0 median=0 p99=0".to_string(),
        ];
        let r = parse(&log, "wall");
        assert_eq!(ratio(&r, "evtchn.pingpong", "hypercall.null"), Some(10.0));
        // A zero denominator or a missing metric gives no ratio.
        assert_eq!(ratio(&r, "hypercall.null", "floor.syscall_sysret"), None);
        assert_eq!(ratio(&r, "sched.domain_switch", "hypercall.null"), None);
        assert_eq!(goal_lines(&r), "evtchn.pingpong / hypercall.null = 10.00x (goal <= 8x in wall mode)\n");
    }

    #[test]
    fn compare_reports_changes() {
        let mk = |name: &str, median| BenchResult {
            name: name.into(),
            unit: "tsc".into(),
            n: 1,
            min: 1,
            median,
            p99: 1,
            mode: "wall".into(),
            system: "microvisor".into(),
        };
        let c = compare(&[mk("a", 100), mk("gone", 5)], &[mk("a", 110), mk("b", 7)]);
        assert!(c.contains("+10.0%"));
        assert!(c.lines().any(|l| l.starts_with("b ") && l.contains("new")));
        assert!(c.lines().any(|l| l.starts_with("gone") && l.contains("gone")));
    }
}

#[cfg(test)]
mod peer_tests {
    use super::*;
    use crate::qemu::System;

    #[test]
    fn peer_table_shows_both_systems_and_the_ratio() {
        let mv = parse_system(
            &[
                "(d1) BENCH name=hypercall.null unit=tsc n=10 min=20 median=22 p99=30".into(),
                "(d1) BENCH name=evtchn.send unit=tsc n=10 min=500 median=515 p99=600".into(),
                "(d1) BENCH name=evtchn.pingpong unit=tsc n=10 min=5000 median=5538 p99=6000".into(),
                "(XEN) BENCH name=floor.syscall_sysret unit=tsc n=10 min=4 median=4 p99=4".into(),
            ],
            "insns",
            System::Microvisor,
        );
        let xen = parse_system(
            &[
                "BENCH name=hypercall.null unit=tsc n=10 min=280 median=282 p99=300".into(),
                "BENCH name=evtchn.send unit=tsc n=10 min=400 median=406 p99=500".into(),
                "BENCH name=sched.yield unit=tsc n=10 min=900 median=1000 p99=1200".into(),
            ],
            "insns",
            System::Xen,
        );
        assert!(xen.iter().all(|r| r.system == "xen" && r.unit == "insns"));
        let t = peer_table(&mv, &xen);
        let line = |m: &str| {
            t.lines().find(|l| l.starts_with(&format!("{m} "))).unwrap_or_else(|| panic!("{m}:\n{t}"))
        };
        assert!(t.lines().next().unwrap().contains("mv/xen"), "{t}");
        assert!(line("hypercall.null").ends_with(" 22          282      0.08"), "{t}");
        assert!(line("evtchn.send").ends_with("1.27"), "{t}");
        // A peer metric measured on one side only still has its row; others do not.
        assert!(line("sched.yield").contains(" - "), "{t}");
        assert!(!t.contains("evtchn.pingpong") && !t.contains("floor"), "{t}");
        assert!(
            t.ends_with("1 of 2 peer metrics at or below 0.75x xen's median (goal: all, in both modes)\n"),
            "{t}"
        );
    }
}

#[cfg(test)]
mod fixture_tests {
    use super::*;

    fn load(name: &str) -> Vec<BenchResult> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    #[test]
    fn json_schema_round_trips() {
        let r = load("results-new.json");
        assert_eq!(r.len(), 3);
        assert_eq!(r[1].name, "hypercall.null");
        assert!(r.iter().all(|r| r.system == "microvisor"), "files without `system` are microvisor's");
        let json = serde_json::to_string(&r).unwrap();
        for key in
            ["\"name\"", "\"unit\"", "\"n\"", "\"min\"", "\"median\"", "\"p99\"", "\"mode\"", "\"system\""]
        {
            assert!(json.contains(key), "{key} missing from {json}");
        }
        let back: Vec<BenchResult> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn compare_shows_each_change_of_the_fixture_runs() {
        let c = compare(&load("results-old.json"), &load("results-new.json"));
        let line = |m: &str| {
            c.lines().find(|l| l.starts_with(m)).unwrap_or_else(|| panic!("{m} missing:\n{c}")).to_string()
        };
        assert!(line("hypercall.null").contains("-80.8%"), "{c}");
        assert!(line("floor.syscall_sysret").contains("+0.0%"), "{c}");
        assert!(line("evtchn.send").contains("new"), "{c}");
        assert!(line("mmu.update_one").contains("gone"), "{c}");
    }
}
