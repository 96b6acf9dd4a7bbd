//! Which ports fired: a bitmap the event handlers raise bits in (from upcall context, so it
//! never allocates or locks) and the code serving devices drains, so that a loop serving
//! many rings looks only at those whose ports fired instead of rescanning all of them.
//!
//! A summary word (one bit per word of ports) makes "anything pending?" one load and a
//! drain touch only the words that have bits. Raising sets the port's bit before the
//! summary bit, and draining clears the summary bit before the word, so a port raised
//! during a drain is either taken by it or left for the next one (at worst a summary bit
//! points at an empty word) — never lost.

use core::sync::atomic::{AtomicU64, Ordering};
use hypercall_abi::Port;

/// Ports covered (the 2-level ABI's 4096).
pub const NR_PORTS: usize = 64 * 64;

/// A set of ports, safe to raise from event handlers.
pub struct PortSet {
    summary: AtomicU64,
    words: [AtomicU64; 64],
}

impl core::fmt::Debug for PortSet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PortSet").field("summary", &self.summary.load(Ordering::Relaxed)).finish()
    }
}

impl Default for PortSet {
    fn default() -> Self {
        Self::new()
    }
}

impl PortSet {
    pub const fn new() -> PortSet {
        PortSet { summary: AtomicU64::new(0), words: [const { AtomicU64::new(0) }; 64] }
    }

    /// Marks `port` (ports past [`NR_PORTS`] are ignored).
    pub fn raise(&self, port: Port) {
        let p = port.0 as usize;
        if p >= NR_PORTS {
            return;
        }
        self.words[p / 64].fetch_or(1 << (p % 64), Ordering::SeqCst);
        self.summary.fetch_or(1 << (p / 64), Ordering::SeqCst);
    }

    /// True if `port` is marked.
    pub fn is_raised(&self, port: Port) -> bool {
        let p = port.0 as usize;
        p < NR_PORTS && self.words[p / 64].load(Ordering::SeqCst) & (1 << (p % 64)) != 0
    }

    /// Clears `port`; true if it was marked.
    pub fn take(&self, port: Port) -> bool {
        let p = port.0 as usize;
        p < NR_PORTS
            && self.words[p / 64].fetch_and(!(1 << (p % 64)), Ordering::SeqCst) & (1 << (p % 64)) != 0
    }

    /// True if some port may be marked.
    pub fn any(&self) -> bool {
        self.summary.load(Ordering::SeqCst) != 0
    }

    /// Clears every marked port, calling `f` for each in ascending order; returns how many.
    pub fn drain(&self, mut f: impl FnMut(Port)) -> usize {
        let mut n = 0;
        let mut sum = self.summary.swap(0, Ordering::SeqCst);
        while sum != 0 {
            let w = sum.trailing_zeros() as usize;
            sum &= sum - 1;
            let mut bits = self.words[w].swap(0, Ordering::SeqCst);
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                n += 1;
                f(Port((w * 64) as u32 + b));
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn raise_take_drain() {
        let s = PortSet::new();
        assert!(!s.any());
        s.raise(Port(5));
        s.raise(Port(4095));
        s.raise(Port(4096));
        s.raise(Port(70));
        assert!(s.any() && s.is_raised(Port(5)) && !s.is_raised(Port(6)) && !s.is_raised(Port(4096)));
        assert!(s.take(Port(5)));
        assert!(!s.take(Port(5)));
        let mut got = Vec::new();
        assert_eq!(s.drain(|p| got.push(p.0)), 2);
        assert_eq!(got, [70, 4095]);
        assert!(!s.any());
        assert_eq!(s.drain(|_| panic!("nothing raised")), 0);
    }

    proptest! {
        /// Whatever is raised, and in whatever order, a drain yields exactly the distinct
        /// ports in range, once each, in ascending order.
        #[test]
        fn drain_yields_each_raised_port_once(ports in proptest::collection::vec(0u32..5000, 0..200)) {
            let s = PortSet::new();
            for &p in &ports {
                s.raise(Port(p));
            }
            let want: Vec<u32> = ports.iter().copied().filter(|&p| (p as usize) < NR_PORTS)
                .collect::<BTreeSet<_>>().into_iter().collect();
            let mut got = Vec::new();
            s.drain(|p| got.push(p.0));
            prop_assert_eq!(got, want);
            prop_assert!(!s.any());
        }
    }

    #[test]
    fn raising_during_a_drain_is_not_lost() {
        let s = PortSet::new();
        s.raise(Port(1));
        let mut later = Vec::new();
        s.drain(|p| {
            later.push(p.0);
            // As an event arriving while the drain runs.
            if p.0 == 1 {
                s.raise(Port(2));
                s.raise(Port(200));
            }
        });
        // Port 2 sits in the word being drained, port 200 in another: either this drain or
        // the next one takes them.
        s.drain(|p| later.push(p.0));
        later.sort();
        assert_eq!(later, [1, 2, 200]);
    }
}
