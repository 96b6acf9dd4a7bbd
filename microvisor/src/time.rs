//! System time: nanoseconds since boot derived from the TSC, and the PV clock parameters
//! (`vcpu_time_info`) that let guests compute the same time themselves without a hypercall.

use crate::guest_mem::GuestSpace;
use crate::mm::MachineMemory;
use hypercall_abi::xen::{xen_pvclock, VcpuTimeInfo};

/// A TSC-to-nanoseconds scale as the PV clock expresses it: shift the TSC delta by `shift`
/// (left if positive), multiply by `mul` and keep the top 64 bits of the 96-bit product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeScale {
    pub mul: u32,
    pub shift: i8,
}

impl TimeScale {
    /// The scale for a TSC ticking at `tsc_hz`. Like Xen's `set_time_scale`, it picks `shift`
    /// so that `mul` uses the full 32 bits for the best precision.
    pub fn from_hz(tsc_hz: u64) -> TimeScale {
        assert!(tsc_hz > 0, "TSC frequency must be calibrated first");
        const NS_PER_S: u64 = 1_000_000_000;
        let mut shift: i8 = 0;
        let mut tps = tsc_hz; // ticks per second after shifting
                              // Scale so that ns_per_s / tps lies in [0.5, 1).
        while tps > 2 * NS_PER_S {
            tps >>= 1;
            shift -= 1;
        }
        while tps <= NS_PER_S {
            tps <<= 1;
            shift += 1;
        }
        // mul = (ns_per_s << 32) / tps, which is < 2^32 because tps > ns_per_s.
        let mul = ((u128::from(NS_PER_S) << 32) / u128::from(tps)) as u32;
        TimeScale { mul, shift }
    }

    /// Nanoseconds in `ticks` TSC ticks.
    pub fn ticks_to_ns(self, ticks: u64) -> u64 {
        let t = u128::from(ticks);
        let shifted = if self.shift >= 0 { t << self.shift } else { t >> -self.shift };
        ((shifted * u128::from(self.mul)) >> 32).min(u128::from(u64::MAX)) as u64
    }

    /// TSC ticks in `ns` nanoseconds (rounded up), for programming timers.
    pub fn ns_to_ticks(self, ns: u64) -> u64 {
        let t = if self.shift >= 0 {
            (u128::from(ns) << 32).div_ceil(u128::from(self.mul) << self.shift)
        } else {
            // ticks_to_ns drops the low -shift bits, so round up in shifted units.
            (u128::from(ns) << 32).div_ceil(u128::from(self.mul)) << -self.shift
        };
        t.min(u128::from(u64::MAX)) as u64
    }
}

/// The machine's time base: the TSC value at boot and the TSC scale.
#[derive(Clone, Copy, Debug)]
pub struct TimeBase {
    pub tsc_at_boot: u64,
    pub tsc_hz: u64,
    pub scale: TimeScale,
}

impl TimeBase {
    pub fn new(tsc_at_boot: u64, tsc_hz: u64) -> TimeBase {
        TimeBase { tsc_at_boot, tsc_hz, scale: TimeScale::from_hz(tsc_hz) }
    }

    /// System time (ns since boot) at TSC value `tsc`.
    pub fn now_ns(&self, tsc: u64) -> u64 {
        self.scale.ticks_to_ns(tsc.saturating_sub(self.tsc_at_boot))
    }

    /// The TSC value at which system time reaches `ns`.
    pub fn tsc_at(&self, ns: u64) -> u64 {
        self.tsc_at_boot.saturating_add(self.scale.ns_to_ticks(ns))
    }

    /// A `vcpu_time_info` snapshot for TSC value `tsc` (version left for the writer to bump).
    pub fn pvclock(&self, tsc: u64) -> VcpuTimeInfo {
        VcpuTimeInfo {
            tsc_timestamp: tsc,
            system_time: self.now_ns(tsc),
            tsc_to_system_mul: self.scale.mul,
            tsc_shift: self.scale.shift,
            flags: xen_pvclock::TSC_STABLE_BIT,
            ..VcpuTimeInfo::default()
        }
    }
}

/// Writes the PV clock (`vcpu_time_info`) at machine address `ma` (seqlock: odd version while
/// the fields change), as of TSC value `tsc`.
#[inline]
pub fn write_pvclock(mem: &impl MachineMemory, ma: u64, tb: &TimeBase, tsc: u64) {
    let version = mem.read_u64(ma) as u32;
    let v_odd = version.wrapping_add(1) | 1;
    mem.write_u64(ma, u64::from(v_odd));
    let mut t: VcpuTimeInfo = tb.pvclock(tsc);
    t.version = v_odd;
    mem.write_obj(ma, &t);
    mem.write_u64(ma, u64::from(v_odd.wrapping_add(1)));
}

/// Writes the PV clock into guest memory at `va` (a registered secondary time area), with
/// the same version protocol. A fault leaves the area as it was; the guest asked for it.
pub fn write_guest_pvclock<P: crate::platform::Platform>(
    space: &GuestSpace<'_, P>,
    va: u64,
    tb: &TimeBase,
    tsc: u64,
) {
    let Ok(old) = space.read_obj::<VcpuTimeInfo>(va) else { return };
    let v_odd = old.version.wrapping_add(1) | 1;
    let mut t: VcpuTimeInfo = tb.pvclock(tsc);
    t.version = v_odd;
    if space.write_obj(va, &v_odd).is_err() || space.write_obj(va, &t).is_err() {
        return;
    }
    let _ = space.write_obj(va, &v_odd.wrapping_add(1));
}

/// What a guest computes from a `vcpu_time_info` at TSC value `tsc` (the PV clock formula).
pub fn guest_time(t: &VcpuTimeInfo, tsc: u64) -> u64 {
    let scale = TimeScale { mul: t.tsc_to_system_mul, shift: t.tsc_shift };
    t.system_time.wrapping_add(scale.ticks_to_ns(tsc.wrapping_sub(t.tsc_timestamp)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn common_frequencies() {
        for hz in [1_000_000u64, 100_000_000, 1_000_000_000, 2_400_000_000, 3_999_999_999, 10_000_000_000] {
            let s = TimeScale::from_hz(hz);
            // One second of ticks is one second of time, within 1 ppm.
            let ns = s.ticks_to_ns(hz);
            assert!(ns.abs_diff(1_000_000_000) <= 1_000, "{hz} Hz → {ns} ns ({s:?})");
            assert!(s.mul >= 1 << 31, "mul uses the full 32 bits: {s:?}");
        }
    }

    proptest! {
        #[test]
        fn ns_to_ticks_inverts_ticks_to_ns(hz in 1_000_000u64..20_000_000_000, ns in 0u64..1 << 50) {
            let s = TimeScale::from_hz(hz);
            let t = s.ns_to_ticks(ns);
            // Rounding up the ticks means the timer never fires early.
            prop_assert!(s.ticks_to_ns(t) >= ns);
            // ...and is never more than one tick late.
            prop_assert!(s.ticks_to_ns(t) <= ns + 1_000_000_000 / hz + 2, "{} ticks is {} ns for {} ns", t, s.ticks_to_ns(t), ns);
        }

        #[test]
        fn guest_formula_matches_hypervisor(hz in 1_000_000u64..20_000_000_000, boot in 0u64..1 << 40,
                                             at in 0u64..1 << 40, later in 0u64..1 << 36) {
            let tb = TimeBase::new(boot, hz);
            let snap = tb.pvclock(boot + at);
            let g = guest_time(&snap, boot + at + later);
            let h = tb.now_ns(boot + at + later);
            // The split into two scaled pieces may round each down once.
            prop_assert!(g.abs_diff(h) <= 2, "guest {} hypervisor {}", g, h);
        }
    }
}
