//! Time: the PV clock every vCPU finds in its `vcpu_info.time`, and sleeping on the one-shot
//! timer (`set_timer_op`, delivered as VIRQ_TIMER).
//!
//! System time is nanoseconds since the hypervisor booted:
//! `system_time + ((tsc - tsc_timestamp) << tsc_shift (>> if negative)) * tsc_to_system_mul >> 32`,
//! read under the `version` seqlock (odd = being updated, changed = retry).

use crate::shared::SharedTimeInfo;
use core::sync::atomic::Ordering;

/// Scales a TSC delta to nanoseconds with the hypervisor's fixed-point factors (Xen's and
/// Linux's `pvclock_scale_delta`). Shifts past the word give 0 rather than wrapping.
pub fn scale_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let d = if shift >= 0 {
        delta.checked_shl(shift as u32).unwrap_or(0)
    } else {
        delta.checked_shr(u32::from(shift.unsigned_abs())).unwrap_or(0)
    };
    ((u128::from(d) * u128::from(mul)) >> 32) as u64
}

/// One consistent copy of the clock parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockSample {
    pub tsc_timestamp: u64,
    pub system_time: u64,
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
}

impl ClockSample {
    /// System time at TSC value `tsc`. A TSC behind the sample's timestamp reads as the
    /// sample's time (never as a huge wrapped delta).
    pub fn ns_at(&self, tsc: u64) -> u64 {
        let delta = tsc.saturating_sub(self.tsc_timestamp);
        self.system_time.wrapping_add(scale_delta(delta, self.tsc_to_system_mul, self.tsc_shift))
    }
}

/// One read attempt of the seqlock: `None` if the hypervisor was updating the fields.
pub fn try_sample(t: &SharedTimeInfo) -> Option<ClockSample> {
    let v1 = t.version.load(Ordering::Acquire);
    if v1 & 1 != 0 {
        return None;
    }
    let s = ClockSample {
        tsc_timestamp: t.tsc_timestamp.load(Ordering::Acquire),
        system_time: t.system_time.load(Ordering::Acquire),
        tsc_to_system_mul: t.tsc_to_system_mul.load(Ordering::Acquire),
        tsc_shift: t.tsc_shift.load(Ordering::Acquire),
    };
    (t.version.load(Ordering::Acquire) == v1).then_some(s)
}

/// Reads the clock parameters, retrying while an update is in progress.
pub fn sample(t: &SharedTimeInfo) -> ClockSample {
    loop {
        if let Some(s) = try_sample(t) {
            return s;
        }
        core::hint::spin_loop();
    }
}

/// The CPU's time-stamp counter (ordered after earlier loads by `lfence`).
#[inline(always)]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `lfence; rdtsc` reads the TSC (allowed in ring 3 under PV) and touches nothing
    // but eax/edx.
    unsafe {
        core::arch::asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// System time in ns, if the shared_info page (and so the PV clock) is mapped.
pub fn try_now_ns() -> Option<u64> {
    let v = crate::shared::vcpu0()?;
    let s = sample(&v.time);
    Some(s.ns_at(rdtsc()))
}

/// System time in ns; 0 while the PV clock is unavailable (see [`try_now_ns`]).
pub fn now_ns() -> u64 {
    try_now_ns().unwrap_or(0)
}

#[cfg(not(test))]
mod kernel {
    use crate::events;
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    use hypercall_abi::xen::virq;
    use hypercall_abi::{Errno, Port};

    /// Our VIRQ_TIMER port (0 = not bound; Xen never hands out port 0).
    static TIMER_PORT: AtomicU32 = AtomicU32::new(0);
    static TIMER_EVENTS: AtomicU64 = AtomicU64::new(0);

    fn on_timer(_port: Port) {
        crate::hypercall::timer_fired();
        TIMER_EVENTS.fetch_add(1, Ordering::SeqCst);
    }

    /// Binds VIRQ_TIMER so that sleeps can wake up. Needs events. Stops Xen's default 100 Hz
    /// periodic timer first, as Linux does: this kernel arms one-shot timers for its sleeps,
    /// and a tick it did not ask for would only wake it early.
    pub fn init() -> Result<Port, Errno> {
        if let Some(p) = timer_port() {
            return Ok(p);
        }
        crate::hypercall::vcpu_op(hypercall_abi::vcpu::op::STOP_PERIODIC_TIMER, 0, 0);
        let p = events::bind_virq_handler(virq::TIMER, on_timer)?;
        TIMER_PORT.store(p.0, Ordering::SeqCst);
        Ok(p)
    }

    /// The VIRQ_TIMER port, once bound.
    pub fn timer_port() -> Option<Port> {
        match TIMER_PORT.load(Ordering::SeqCst) {
            0 => None,
            p => Some(Port(p)),
        }
    }

    /// VIRQ_TIMER events received so far.
    pub fn timer_events() -> u64 {
        TIMER_EVENTS.load(Ordering::SeqCst)
    }

    /// Blocks until system time `deadline_ns`.
    pub fn sleep_until(deadline_ns: u64) -> Result<(), Errno> {
        events::block_until(|| super::now_ns() >= deadline_ns, Some(deadline_ns)).map(|_| ())
    }

    /// Blocks for `ns` nanoseconds.
    pub fn sleep(ns: u64) -> Result<(), Errno> {
        let now = super::try_now_ns().ok_or(Errno::ENODEV)?;
        sleep_until(now.saturating_add(ns))
    }
}

#[cfg(not(test))]
pub use kernel::*;

/// A CPU-bound computation of `n` xorshift steps that the compiler cannot drop: load for the
/// demos that show the scheduler interleaving busy domains.
pub fn busy_work(n: u64, seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = core::hint::black_box(x);
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::SharedInfoPage;
    use proptest::prelude::*;

    #[test]
    fn scaling_examples() {
        // 2 GHz: 0.5 ns per tick = mul 2^31, shift 0.
        assert_eq!(scale_delta(2000, 1 << 31, 0), 1000);
        // 1 GHz: 1 ns per tick needs mul 2^31 with shift 1.
        assert_eq!(scale_delta(12345, 1 << 31, 1), 12345);
        // 4 GHz: 0.25 ns per tick = mul 2^31, shift -1.
        assert_eq!(scale_delta(4000, 1 << 31, -1), 1000);
        // A realistic 2316 MHz factor: 1 s of ticks is 1 s (within a ns).
        let mul = ((1u128 << 32) * 1_000_000_000 / 2_316_000_000) as u32;
        let ns = scale_delta(2_316_000_000, mul, 0);
        assert!((999_999_999..=1_000_000_000).contains(&ns), "{ns}");
        assert_eq!(scale_delta(u64::MAX, 1, 64), 0);
        assert_eq!(scale_delta(u64::MAX, u32::MAX, -128), 0);
        // No overflow for a full 64-bit delta.
        assert_eq!(scale_delta(u64::MAX, u32::MAX, 0), ((u64::MAX as u128 * u32::MAX as u128) >> 32) as u64);
    }

    #[test]
    fn sample_and_seqlock() {
        let page = Box::new(SharedInfoPage::zeroed());
        let t = &page.vcpu_info[0].time;
        t.version.store(2, Ordering::SeqCst);
        t.tsc_timestamp.store(1000, Ordering::SeqCst);
        t.system_time.store(5_000, Ordering::SeqCst);
        t.tsc_to_system_mul.store(1 << 31, Ordering::SeqCst);
        t.tsc_shift.store(1, Ordering::SeqCst);
        let s = try_sample(t).unwrap();
        assert_eq!(s.ns_at(1000), 5_000);
        assert_eq!(s.ns_at(1500), 5_500);
        // A TSC behind the timestamp does not wrap.
        assert_eq!(s.ns_at(10), 5_000);
        t.version.store(3, Ordering::SeqCst);
        assert_eq!(try_sample(t), None);
        t.version.store(4, Ordering::SeqCst);
        assert_eq!(sample(t), s);
    }

    proptest! {
        #[test]
        fn monotonic_in_the_delta(a: u64, b: u64, mul: u32, shift in -40i8..40) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            // Monotonic as long as the shifted delta does not overflow.
            if shift <= 0 || hi.leading_zeros() >= shift as u32 {
                prop_assert!(scale_delta(lo, mul, shift) <= scale_delta(hi, mul, shift));
            }
        }

        #[test]
        fn matches_the_exact_rational(delta in 0u64..(1 << 40), mul: u32, shift in -8i8..8) {
            let shifted = if shift >= 0 {
                (delta as u128) << shift as u32
            } else {
                (delta as u128) >> (-shift) as u32
            };
            let exact = (shifted * mul as u128) >> 32;
            prop_assert_eq!(scale_delta(delta, mul, shift) as u128, exact);
        }
    }
}
