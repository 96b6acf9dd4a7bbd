//! microvisor's own extensions next to Xen's interface, shared by the hypervisor, the guests
//! and the host runner so they can never disagree: the QEMU exit values that tell poweroff
//! from crash, the `BENCH` line format benchmarks print, the `RESULT` line format of
//! conformance checks, and the network demo's byte pattern and hash (so the host checks
//! what a domU sent or received).

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

/// What the network demo's servers send and the clients check (guest HTTP server and client,
/// the host's tests and benchmarks): a byte pattern any side can regenerate from an offset,
/// and the 64-bit FNV-1a hash bodies are reported with.
pub mod netdemo {
    /// QEMU's user network is `10.0.2.0/24` with its gateway (slirp) here.
    pub const GATEWAY: [u8; 4] = [10, 0, 2, 2];
    /// dom0's own address on it.
    pub const DOM0_IP: [u8; 4] = [10, 0, 2, 10];

    /// The static address of domain `domid`: `10.0.2.(14 + domid)`, so the first domU gets
    /// `10.0.2.15`, the address QEMU's DHCP would have given it.
    pub const fn domu_ip(domid: u16) -> [u8; 4] {
        [10, 0, 2, 14u8.wrapping_add(domid as u8)]
    }

    /// Byte `i` of every pattern body (`GET /bytes/<n>` answers bytes `0..n`): a mix of the
    /// offset's bits, so a byte shifted, lost or repeated anywhere changes what follows.
    pub const fn pattern(i: u64) -> u8 {
        let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (x >> 56) as u8 ^ (i as u8)
    }

    /// Fills `buf` with the pattern's bytes from offset `start`.
    pub fn fill_pattern(start: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = pattern(start + i as u64);
        }
    }

    /// True if `data` is the pattern's bytes from offset `start`.
    pub fn is_pattern(start: u64, data: &[u8]) -> bool {
        data.iter().enumerate().all(|(i, b)| *b == pattern(start + i as u64))
    }

    /// 64-bit FNV-1a.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Fnv1a(u64);

    impl Default for Fnv1a {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Fnv1a {
        pub const fn new() -> Self {
            Fnv1a(0xcbf2_9ce4_8422_2325)
        }
        pub fn update(&mut self, data: &[u8]) {
            for &b in data {
                self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        pub const fn finish(&self) -> u64 {
            self.0
        }
    }

    /// The hash of the pattern's first `n` bytes.
    pub fn pattern_hash(n: u64) -> u64 {
        let mut h = Fnv1a::new();
        let mut chunk = [0u8; 256];
        let mut at = 0;
        while at < n {
            let k = (n - at).min(chunk.len() as u64) as usize;
            fill_pattern(at, &mut chunk[..k]);
            h.update(&chunk[..k]);
            at += k as u64;
        }
        h.finish()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn fnv_and_pattern() {
            // FNV-1a's published test vectors.
            let mut h = Fnv1a::new();
            assert_eq!(h.finish(), 0xcbf2_9ce4_8422_2325);
            h.update(b"a");
            assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
            let mut h = Fnv1a::new();
            h.update(b"foobar");
            assert_eq!(h.finish(), 0x8594_4171_f739_67e8);
            let mut buf = [0u8; 1000];
            fill_pattern(77, &mut buf);
            assert!(is_pattern(77, &buf));
            assert!(!is_pattern(78, &buf));
            let mut h = Fnv1a::new();
            fill_pattern(0, &mut buf);
            h.update(&buf);
            assert_eq!(pattern_hash(1000), h.finish());
            // Neighbouring offsets differ: a lost or repeated byte shows.
            assert!((0..4096).filter(|&i| pattern(i) == pattern(i + 1)).count() < 64);
        }
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

/// Conformance results as the test guest prints them, one observation per line:
/// `RESULT <scenario> <check>=<value>`.
///
/// The same scenario runs under microvisor (as a domU) and under Xen 4.17 (as dom0), and the
/// runner compares the two sets of lines check by check (`cargo xtask conformance`). So a
/// value must be something both hypervisors should agree on — a return code, an error code,
/// a count, whether an address was the expected one — never a raw address or anything else
/// that depends on where memory happens to be.
///
/// Scenario and check names are tokens of ASCII letters, digits and `_ . - : / + #`; any other
/// character (spaces included) is written as `_`, so no formatting can produce a line the
/// parser reads differently. A value is one such token too. Lines stay short (the
/// hypervisor's console splits long ones): keep check names under 64 characters.
pub mod conformance {
    use crate::Errno;
    use core::fmt;

    /// The word that starts every result line.
    pub const TAG: &str = "RESULT";

    /// One observed value.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Value<'a> {
        /// A hypercall's return value: `0`, a positive count, or the errno's name (`EINVAL`);
        /// a negative value with no name stays decimal.
        Ret(i64),
        /// A count or other signed quantity, in decimal.
        Int(i64),
        /// A bit pattern (error codes, flags, selectors), as `0x…`.
        Hex(u64),
        /// `yes` or `no`.
        Bool(bool),
        /// A word (sanitised like a name).
        Word(&'a str),
    }

    /// True for the characters a name or value token may hold.
    pub const fn is_token_char(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':' | '/' | '+' | '#')
    }

    /// Writes `s` with every character outside [`is_token_char`] as `_` (an empty name as `_`).
    fn token(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
        if s.is_empty() {
            return f.write_str("_");
        }
        for c in s.chars() {
            let c = if is_token_char(c) { c } else { '_' };
            fmt::Write::write_char(f, c)?;
        }
        Ok(())
    }

    impl fmt::Display for Value<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match *self {
                Value::Ret(r) if r < 0 => match i32::try_from(-r).ok().map(|e| Errno(e).name()) {
                    Some(name) if name != "EUNKNOWN" => f.write_str(name),
                    _ => write!(f, "{r}"),
                },
                Value::Ret(r) | Value::Int(r) => write!(f, "{r}"),
                Value::Hex(x) => write!(f, "{x:#x}"),
                Value::Bool(b) => f.write_str(if b { "yes" } else { "no" }),
                Value::Word(w) => token(f, w),
            }
        }
    }

    /// One printable `RESULT` line.
    pub struct Line<'a> {
        pub scenario: &'a str,
        pub check: &'a str,
        pub value: Value<'a>,
    }

    impl fmt::Display for Line<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{TAG} ")?;
            token(f, self.scenario)?;
            f.write_str(" ")?;
            token(f, self.check)?;
            write!(f, "={}", self.value)
        }
    }

    /// A parsed result line: scenario, check and value, each a token.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Parsed<'a> {
        pub scenario: &'a str,
        pub check: &'a str,
        pub value: &'a str,
    }

    /// Parses a `RESULT` line, wherever it starts in `line` (a console may prefix it, e.g.
    /// `(d1) `). `None` unless it is exactly `RESULT <token> <token>=<token>` (trailing
    /// whitespace aside).
    pub fn parse(line: &str) -> Option<Parsed<'_>> {
        let at = line.find("RESULT ")?;
        if at > 0 && !line[..at].ends_with(' ') {
            return None;
        }
        let rest = line[at + TAG.len() + 1..].trim_end();
        let (scenario, rest) = rest.split_once(' ')?;
        let (check, value) = rest.split_once('=')?;
        let ok = |t: &str| !t.is_empty() && t.chars().all(is_token_char);
        (ok(scenario) && ok(check) && ok(value)).then_some(Parsed { scenario, check, value })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn line(scenario: &str, check: &str, value: Value<'_>) -> String {
            Line { scenario, check, value }.to_string()
        }

        #[test]
        fn formats_each_kind_of_value() {
            assert_eq!(line("badargs", "hc.11", Value::Ret(-38)), "RESULT badargs hc.11=ENOSYS");
            assert_eq!(line("s", "c", Value::Ret(0)), "RESULT s c=0");
            assert_eq!(line("s", "c", Value::Ret(3)), "RESULT s c=3");
            assert_eq!(line("s", "c", Value::Ret(-4000)), "RESULT s c=-4000");
            assert_eq!(line("s", "c", Value::Int(-2)), "RESULT s c=-2");
            assert_eq!(line("s", "c", Value::Hex(6)), "RESULT s c=0x6");
            assert_eq!(line("s", "c", Value::Bool(true)), "RESULT s c=yes");
            assert_eq!(line("s", "c", Value::Word("XenVMMXenVMM")), "RESULT s c=XenVMMXenVMM");
        }

        #[test]
        fn sanitises_names_so_lines_always_parse() {
            let l = line("trap pf", "write to a=b", Value::Word("two words"));
            assert_eq!(l, "RESULT trap_pf write_to_a_b=two_words");
            assert_eq!(
                parse(&l),
                Some(Parsed { scenario: "trap_pf", check: "write_to_a_b", value: "two_words" })
            );
            assert_eq!(line("", "", Value::Word("")), "RESULT _ _=_");
        }

        #[test]
        fn parses_prefixed_lines_and_rejects_malformed_ones() {
            let p = parse("(d1) RESULT events timer.woke=yes\r").unwrap_or_else(|| panic!());
            assert_eq!((p.scenario, p.check, p.value), ("events", "timer.woke", "yes"));
            assert!(parse("RESULT events timer.woke=yes").is_some());
            for bad in [
                "RESULT events",
                "RESULT events timer.woke",
                "RESULT events timer.woke=",
                "RESULT events =yes",
                "RESULT events a=b c",
                "XRESULT events a=b",
                "RESULT events a=b=c",
            ] {
                assert_eq!(parse(bad), None, "{bad}");
            }
        }

        proptest::proptest! {
            #[test]
            fn every_formatted_line_parses_back(s in ".{0,20}", c in ".{0,40}", v in ".{0,20}", n in proptest::prelude::any::<i64>()) {
                for value in [Value::Word(&v), Value::Ret(n), Value::Int(n), Value::Hex(n as u64)] {
                    let l = line(&s, &c, value);
                    let p = parse(&l);
                    proptest::prop_assert!(p.is_some(), "{}", l);
                    let p = p.unwrap_or_else(|| unreachable!());
                    proptest::prop_assert_eq!(p.value, value.to_string());
                    proptest::prop_assert_eq!(p.scenario.chars().count(), s.chars().count().max(1));
                }
            }
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
