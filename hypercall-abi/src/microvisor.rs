//! microvisor's own extensions next to Xen's interface, shared by the hypervisor, the guests
//! and the host runner so they can never disagree: the QEMU exit values that tell poweroff
//! from crash, and the `BENCH` line format benchmarks print.

/// Values the hypervisor writes to QEMU's `isa-debug-exit` device (QEMU then exits with
/// `(value << 1) | 1`).
pub mod exit {
    /// dom0 powered off.
    pub const POWEROFF: u8 = 0x10;
    /// dom0 crashed, or shut down for any reason but poweroff.
    pub const DOM0_CRASH: u8 = 0x11;
    /// The hypervisor stopped on a fault or panic.
    pub const HYPERVISOR_FAULT: u8 = 0x12;

    /// QEMU's process exit status for `value`.
    pub const fn qemu_status(value: u8) -> i32 {
        ((value as i32) << 1) | 1
    }
}

/// Benchmark results as kernels print them:
/// `BENCH name=<metric> unit=<unit> n=<samples> min=<x> median=<x> p99=<x>`.
pub mod bench {
    use core::fmt;

    /// Summary of a latency sample. Percentiles use the nearest-rank definition, so every
    /// figure is a sample that was actually measured.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Stats {
        pub n: u64,
        pub min: u64,
        pub median: u64,
        pub p99: u64,
        pub max: u64,
    }

    /// Nearest-rank percentile `p` (0..=100) of an ascending, non-empty sample.
    pub fn percentile<T: Copy + Into<u64>>(sorted: &[T], p: u64) -> u64 {
        let n = sorted.len() as u64;
        let rank = (p.min(100) * n).div_ceil(100).max(1);
        sorted[(rank - 1) as usize].into()
    }

    impl Stats {
        /// Sorts `samples` and summarises them; `None` for an empty sample.
        pub fn compute<T: Copy + Ord + Into<u64>>(samples: &mut [T]) -> Option<Stats> {
            if samples.is_empty() {
                return None;
            }
            samples.sort_unstable();
            Some(Stats {
                n: samples.len() as u64,
                min: samples[0].into(),
                median: percentile(samples, 50),
                p99: percentile(samples, 99),
                max: samples[samples.len() - 1].into(),
            })
        }
    }

    /// Number of buckets in a [`Histogram`].
    pub const HIST_BUCKETS: usize = 24;

    /// The distribution of a sample between its minimum and its p99 (values above p99 fall in
    /// the last bucket), for the runner's plots.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Histogram {
        pub lo: u64,
        pub width: u64,
        pub counts: [u32; HIST_BUCKETS],
    }

    impl Histogram {
        /// The histogram of an ascending sample summarised by `stats`.
        pub fn of_sorted<T: Copy + Into<u64>>(sorted: &[T], stats: &Stats) -> Histogram {
            let lo = stats.min;
            let width = (stats.p99 - stats.min).div_ceil(HIST_BUCKETS as u64).max(1);
            let mut counts = [0u32; HIST_BUCKETS];
            for &v in sorted {
                let b = ((v.into() - lo) / width).min(HIST_BUCKETS as u64 - 1) as usize;
                counts[b] = counts[b].saturating_add(1);
            }
            Histogram { lo, width, counts }
        }
    }

    /// One printable `BENCHHIST name=<metric> lo=<x> width=<w> counts=<c0>,<c1>,...` line.
    pub struct HistLine<'a> {
        pub name: &'a str,
        pub hist: Histogram,
    }

    impl fmt::Display for HistLine<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "BENCHHIST name={} lo={} width={} counts=", self.name, self.hist.lo, self.hist.width)?;
            for (i, c) in self.hist.counts.iter().enumerate() {
                write!(f, "{}{c}", if i == 0 { "" } else { "," })?;
            }
            Ok(())
        }
    }

    /// One printable `BENCH` line.
    pub struct Line<'a> {
        pub name: &'a str,
        pub unit: &'a str,
        pub stats: Stats,
    }

    impl fmt::Display for Line<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let s = self.stats;
            write!(
                f,
                "BENCH name={} unit={} n={} min={} median={} p99={}",
                self.name, self.unit, s.n, s.min, s.median, s.p99
            )
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn quantiles() {
            let mut v: [u32; 5] = [50, 10, 40, 20, 30];
            let s = Stats::compute(&mut v).unwrap();
            assert_eq!(s, Stats { n: 5, min: 10, median: 30, p99: 50, max: 50 });
            let mut big: [u32; 100] = core::array::from_fn(|i| i as u32 + 1);
            let s = Stats::compute(&mut big).unwrap();
            assert_eq!((s.median, s.p99, s.max), (50, 99, 100));
            let mut one = [7u64];
            assert_eq!(Stats::compute(&mut one).unwrap(), Stats { n: 1, min: 7, median: 7, p99: 7, max: 7 });
            assert!(Stats::compute::<u32>(&mut []).is_none());
        }
    }
}

/// Trace records the hypervisor emits with `trace=1` on its command line: postcard-encoded,
/// COBS-framed (each record ends with a 0 byte), written to the second serial port, decoded
/// by `cargo xtask trace` in the spirit of xentrace/xenalyze. Timestamps are TSC values.
pub mod trace {
    use serde::{Deserialize, Serialize};

    /// A vCPU as `(domid, vcpu)`.
    pub type VcpuId = (u16, u32);

    /// One trace event.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Record {
        /// The hypervisor's TSC rate, first in every trace.
        Start { tsc_hz: u64 },
        /// A hypercall enters the dispatcher.
        Hypercall { tsc: u64, vcpu: VcpuId, nr: u64, a1: u64 },
        /// The same vCPU's hypercall returns (or continues, `ret` = the number).
        HypercallDone { tsc: u64, vcpu: VcpuId, nr: u64, ret: i64 },
        /// An event-channel port becomes pending in `dom`.
        EventSend { tsc: u64, dom: u16, port: u32 },
        /// An event upcall is bounced into a vCPU.
        EventDeliver { tsc: u64, vcpu: VcpuId },
        /// The CPU switches between vCPUs (`None` = idle).
        Switch { tsc: u64, from: Option<VcpuId>, to: Option<VcpuId> },
        /// A guest exception (vector) reached the hypervisor.
        Exception { tsc: u64, vcpu: VcpuId, vector: u8 },
        /// Records dropped because the buffer was full.
        Lost { count: u64 },
    }
}

#[cfg(test)]
mod hist_tests {
    use super::bench::*;

    #[test]
    fn histogram_buckets_cover_min_to_p99() {
        let mut v: Vec<u32> = (1..=1000).collect();
        let s = Stats::compute(&mut v).unwrap();
        let h = Histogram::of_sorted(&v, &s);
        assert_eq!(h.lo, 1);
        assert_eq!(h.counts.iter().map(|&c| u64::from(c)).sum::<u64>(), 1000);
        let line = HistLine { name: "x", hist: h }.to_string();
        assert!(line.starts_with("BENCHHIST name=x lo=1 width="));
        assert_eq!(line.split("counts=").nth(1).unwrap().split(',').count(), HIST_BUCKETS);
    }
}
