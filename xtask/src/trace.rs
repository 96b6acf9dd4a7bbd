//! Decoding a hypervisor trace (`trace=1`): the COBS-framed postcard records the hypervisor
//! writes to its second serial port, turned into a timeline and per-hypercall counts and
//! latencies, in the spirit of xentrace/xenalyze.

use hypercall_abi::hypercall::nr;
use hypercall_abi::microvisor::bench::Stats;
use hypercall_abi::microvisor::trace::Record;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Decodes every complete record; returns them and the number of undecodable frames.
pub fn decode(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut bad = 0;
    for frame in bytes.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        let mut f = frame.to_vec();
        f.push(0);
        match postcard::from_bytes_cobs::<Record>(&mut f) {
            Ok(r) => records.push(r),
            Err(_) => bad += 1,
        }
    }
    (records, bad)
}

fn tsc_of(r: &Record) -> Option<u64> {
    match *r {
        Record::Hypercall { tsc, .. }
        | Record::HypercallDone { tsc, .. }
        | Record::EventSend { tsc, .. }
        | Record::EventDeliver { tsc, .. }
        | Record::Switch { tsc, .. }
        | Record::Exception { tsc, .. } => Some(tsc),
        _ => None,
    }
}

fn vcpu(v: (u16, u32)) -> String {
    format!("d{}v{}", v.0, v.1)
}

fn describe(r: &Record) -> String {
    match *r {
        Record::Start { tsc_hz } => format!("trace start, TSC {} MHz", tsc_hz / 1_000_000),
        Record::Hypercall { vcpu: v, nr: n, a1, .. } => {
            format!("{} -> {}({a1:#x}, ...)", vcpu(v), nr::name(n))
        }
        Record::HypercallDone { vcpu: v, nr: n, ret, .. } => {
            format!("{} <- {} = {ret}", vcpu(v), nr::name(n))
        }
        Record::EventSend { dom, port, .. } => format!("event d{dom} port {port} pending"),
        Record::EventDeliver { vcpu: v, .. } => format!("{} upcall", vcpu(v)),
        Record::Switch { from, to, .. } => {
            format!("switch {} -> {}", from.map_or("idle".into(), vcpu), to.map_or("idle".into(), vcpu))
        }
        Record::Exception { vcpu: v, vector, .. } => format!("{} exception vector {vector}", vcpu(v)),
        Record::Lost { count } => format!("{count} records lost (buffer full)"),
    }
}

/// A readable report: the start and end of the timeline, counts, and per-hypercall latency.
pub fn report(records: &[Record], timeline_head: usize, timeline_tail: usize) -> String {
    let mut out = String::new();
    let tsc_hz = records.iter().find_map(|r| match r {
        Record::Start { tsc_hz } => Some(*tsc_hz),
        _ => None,
    });
    let ns = |ticks: u64| tsc_hz.map_or(ticks as f64, |hz| ticks as f64 * 1e9 / hz as f64);
    let t0 = records.iter().find_map(tsc_of).unwrap_or(0);
    let _ = writeln!(out, "timeline ({} records; times in µs since the first event):", records.len());
    let line = |out: &mut String, r: &Record| {
        let t = tsc_of(r).map_or("-".to_string(), |t| format!("{:>12.3}", ns(t.saturating_sub(t0)) / 1e3));
        let _ = writeln!(out, "  {t:>12}  {}", describe(r));
    };
    let n = records.len();
    for r in records.iter().take(timeline_head) {
        line(&mut out, r);
    }
    if n > timeline_head + timeline_tail {
        let _ = writeln!(out, "  ... {} more ...", n - timeline_head - timeline_tail);
    }
    for r in records.iter().skip(timeline_head.max(n.saturating_sub(timeline_tail))) {
        line(&mut out, r);
    }
    // Per-hypercall counts and latency: pair each entry with the next exit of the same vCPU.
    let mut open: BTreeMap<(u16, u32), (u64, u64)> = BTreeMap::new();
    let mut lat: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let (mut sends, mut delivers, mut switches, mut exceptions, mut lost) = (0, 0, 0, 0, 0);
    for r in records {
        match *r {
            Record::Hypercall { tsc, vcpu, nr: n, .. } => {
                open.insert(vcpu, (n, tsc));
            }
            Record::HypercallDone { tsc, vcpu, nr: n, .. } => {
                if let Some((m, t)) = open.remove(&vcpu) {
                    if m == n {
                        lat.entry(n).or_default().push(tsc.saturating_sub(t));
                    }
                }
            }
            Record::EventSend { .. } => sends += 1,
            Record::EventDeliver { .. } => delivers += 1,
            Record::Switch { .. } => switches += 1,
            Record::Exception { .. } => exceptions += 1,
            Record::Lost { count } => lost += count,
            Record::Start { .. } => {}
        }
    }
    let unit = if tsc_hz.is_some() { "ns" } else { "tsc" };
    let _ = writeln!(out, "\nhypercalls (latency inside the hypervisor, {unit}):");
    let _ =
        writeln!(out, "  {:<24} {:>8} {:>10} {:>10} {:>10}", "hypercall", "count", "min", "median", "p99");
    for (n, mut v) in lat {
        let s = Stats::compute(&mut v).expect("non-empty");
        let _ = writeln!(
            out,
            "  {:<24} {:>8} {:>10.0} {:>10.0} {:>10.0}",
            nr::name(n),
            s.n,
            ns(s.min),
            ns(s.median),
            ns(s.p99)
        );
    }
    let _ = writeln!(
        out,
        "\nevents sent {sends}, upcalls delivered {delivers}, vCPU switches {switches}, guest exceptions {exceptions}, records lost {lost}"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(rs: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in rs {
            out.extend(postcard::to_stdvec_cobs(r).unwrap());
        }
        out
    }

    #[test]
    fn decodes_and_reports_latencies() {
        let rs = [
            Record::Start { tsc_hz: 1_000_000_000 },
            Record::Hypercall { tsc: 100, vcpu: (1, 0), nr: 17, a1: 0 },
            Record::HypercallDone { tsc: 150, vcpu: (1, 0), nr: 17, ret: 0x40013 },
            Record::Switch { tsc: 200, from: Some((1, 0)), to: None },
            Record::EventSend { tsc: 210, dom: 0, port: 3 },
        ];
        let mut bytes = encode(&rs);
        bytes.extend_from_slice(&[0x55, 0x66, 0]); // a corrupt frame is skipped, not fatal
        let (got, bad) = decode(&bytes);
        assert_eq!(got, rs);
        assert_eq!(bad, 1);
        let rep = report(&got, 10, 10);
        assert!(rep.contains("xen_version"), "{rep}");
        assert!(rep.contains("50"), "latency 50 ns: {rep}");
        assert!(rep.contains("switch d1v0 -> idle"), "{rep}");
        assert!(rep.contains("events sent 1"), "{rep}");
    }
}
