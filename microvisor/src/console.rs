//! The hypervisor console: its own messages, prefixed `(XEN) `, and guests' `console_io`
//! output, line-buffered per domain and prefixed with the domain (`(d1) `) so lines from
//! different domains never mix mid-line. Unprivileged domains' output is rate-limited (as
//! Xen rate-limits guest `printk`s), because the hypervisor writes it to the UART with
//! interrupts off: a domU flooding its console must not take the machine's time.

use heapless::Vec as HVec;

/// Bytes a domU may print at once after a quiet spell.
pub const GUEST_BURST_BYTES: u64 = 64 << 10;
/// Bytes per second a domU may print in the long run (about a sixth of a 115200-baud UART).
pub const GUEST_RATE_BYTES_PER_S: u64 = 2 << 10;

/// A domU's console allowance: a token bucket of bytes, refilled with system time, as Xen's
/// `printk_ratelimit` refills its tokens with milliseconds. Credit is kept in nanoseconds of
/// refill so that frequent calls never lose a fraction of a byte.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    /// Refill time banked, at most the burst's worth.
    credit_ns: u64,
    /// When `credit_ns` was last brought up to date.
    last_ns: u64,
    /// Lines refused since the last one printed.
    suppressed: u64,
    /// No limit (`guest_loglvl=all`).
    unlimited: bool,
}

/// Nanoseconds of refill one byte costs.
const NS_PER_BYTE: u64 = 1_000_000_000 / GUEST_RATE_BYTES_PER_S;
const BURST_NS: u64 = GUEST_BURST_BYTES * NS_PER_BYTE;

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit { credit_ns: BURST_NS, last_ns: 0, suppressed: 0, unlimited: false }
    }
}

impl RateLimit {
    /// An allowance that never refuses (dom0, or `guest_loglvl=all`).
    pub fn unlimited() -> RateLimit {
        RateLimit { unlimited: true, ..RateLimit::default() }
    }

    /// Asks to print `bytes` at system time `now_ns`. On yes, returns how many lines were
    /// refused before this one (to report); on no, counts this line as refused.
    pub fn admit(&mut self, now_ns: u64, bytes: usize) -> Option<u64> {
        self.admit_with(|| now_ns, bytes)
    }

    /// [`RateLimit::admit`], reading the clock only when there is a limit.
    pub fn admit_with(&mut self, now_ns: impl FnOnce() -> u64, bytes: usize) -> Option<u64> {
        if self.unlimited {
            return Some(0);
        }
        let now_ns = now_ns();
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        self.credit_ns = self.credit_ns.saturating_add(elapsed).min(BURST_NS);
        let cost = (bytes as u64).saturating_mul(NS_PER_BYTE);
        if self.credit_ns >= cost {
            self.credit_ns -= cost;
            Some(core::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }

    /// Lines refused and not yet reported (at shutdown).
    pub fn take_suppressed(&mut self) -> u64 {
        core::mem::take(&mut self.suppressed)
    }
}

/// Longest line kept before it is flushed without a newline.
pub const LINE_MAX: usize = 240;

/// A domain's partial console line.
#[derive(Default)]
pub struct LineBuffer {
    buf: HVec<u8, LINE_MAX>,
}

impl LineBuffer {
    /// Appends `bytes`, calling `emit` with each complete line (without its newline).
    ///
    /// For unprivileged domains only printable ASCII and tabs survive, as Xen does for
    /// non-hardware domains, so a guest cannot send terminal control sequences to the console.
    /// (Inlined into `console_io`: out of line, the line buffer is moved out and back around
    /// the call, ~45 instructions of `console_io_16b`.)
    #[inline]
    pub fn push(&mut self, bytes: &[u8], printable_only: bool, mut emit: impl FnMut(&[u8])) {
        for &b in bytes {
            match b {
                b'\n' => {
                    emit(&self.buf);
                    self.buf.clear();
                }
                b'\r' => {}
                _ => {
                    let keep = !printable_only || b == b'\t' || (0x20..0x7f).contains(&b);
                    if keep && self.buf.push(b).is_err() {
                        emit(&self.buf);
                        self.buf.clear();
                        let _ = self.buf.push(b);
                    }
                }
            }
        }
    }

    /// Emits whatever is buffered (at shutdown).
    pub fn flush(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.buf.is_empty() {
            emit(&self.buf);
            self.buf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]], printable_only: bool) -> Vec<String> {
        let mut lb = LineBuffer::default();
        let mut out = Vec::new();
        for c in chunks {
            lb.push(c, printable_only, |l| out.push(String::from_utf8_lossy(l).into_owned()));
        }
        out
    }

    #[test]
    fn buffers_until_newline() {
        assert_eq!(lines(&[b"hel", b"lo\nwor", b"ld\n"], true), ["hello", "world"]);
        assert_eq!(lines(&[b"no newline"], true), Vec::<String>::new());
    }

    #[test]
    fn filters_control_characters_for_unprivileged() {
        assert_eq!(lines(&[b"a\x1b[2Jb\x07c\r\n"], true), ["a[2Jbc"]);
        assert_eq!(lines(&[b"a\x1bb\n"], false), ["a\x1bb"]);
    }

    #[test]
    fn rate_limit_allows_a_burst_then_the_rate() {
        let mut r = RateLimit::default();
        let line = 100usize;
        let burst = (GUEST_BURST_BYTES / line as u64) as usize;
        for i in 0..burst {
            assert_eq!(r.admit(0, line), Some(0), "line {i} of the burst");
        }
        assert_eq!(r.admit(0, line), None);
        assert_eq!(r.admit(1, line), None);
        // One second later the rate's worth of bytes goes out; the first line reports the
        // two refused before it.
        let s = 1_000_000_000;
        assert_eq!(r.admit(s, line), Some(2));
        let per_s = (GUEST_RATE_BYTES_PER_S / line as u64) as usize;
        for _ in 1..per_s {
            assert_eq!(r.admit(s, line), Some(0));
        }
        assert_eq!(r.admit(s, line), None);
        assert_eq!(r.take_suppressed(), 1);
        // Frequent calls still accumulate credit: a second of them buys a second's bytes.
        let mut t = s;
        while t < 2 * s {
            t += 1000;
            let _ = r.admit(t, 0);
        }
        assert!(r.admit(2 * s, GUEST_RATE_BYTES_PER_S as usize - 1).is_some());
        // A long quiet spell refills no more than the burst.
        assert!(r.admit(1000 * s, GUEST_BURST_BYTES as usize).is_some());
        assert!(r.admit(1000 * s, 1).is_none());
        let mut u = RateLimit::unlimited();
        assert!((0..100_000).all(|_| u.admit(0, 1000) == Some(0)));
    }

    #[test]
    fn long_lines_are_split() {
        let long = vec![b'x'; LINE_MAX + 10];
        let out = lines(&[&long, b"\n"], true);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), LINE_MAX);
        assert_eq!(out[1].len(), 10);
    }
}
