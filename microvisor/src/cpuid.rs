//! The CPUID view of a PV guest: the real CPU's leaves with the features a PV guest cannot
//! use hidden (virtualization, monitor/mwait, XSAVE/AVX — the hypervisor switches FPU state
//! with FXSAVE only — and the local APIC), plus Xen's hypervisor leaves at 0x40000000.

use crate::x86::cpuid::{ext1_ecx, ext1_edx, ext7_edx, l1_ecx, l1_edx, l7_ebx, l7_ecx, l7_edx};

/// Leaf 0x8000_0001, EDX: RDTSCP.
pub const EXT1_EDX_RDTSCP: u32 = ext1_edx::RDTSCP;
/// Leaf 7, subleaf 0, ECX: RDPID.
pub const L7_ECX_RDPID: u32 = l7_ecx::RDPID;

/// Leaf 0x8000_0007, EDX: invariant TSC (Xen's TSC_RELIABLE follows it).
pub const PWR_EDX_INVARIANT_TSC: u32 = ext7_edx::INVARIANT_TSC;

/// Xen's hypervisor leaves: 0x40000000 up to [`HV_LAST_LEAF`], then zeros up to
/// [`HV_LEAVES_END`] (Xen answers the range 0x40000000-0x400001ff itself, for its Viridian
/// base at 0x40000100 too).
pub const HV_LEAVES_FIRST: u32 = 0x4000_0000;
/// The last hypervisor leaf, as Xen 4.17's `XEN_CPUID_MAX_NUM_LEAVES`: 0x40000005 (PV
/// features).
pub const HV_LAST_LEAF: u32 = 0x4000_0005;
/// The end of the range Xen answers itself.
pub const HV_LEAVES_END: u32 = 0x4000_01ff;
/// Leaf 0x40000002, ECX: `XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD` (the mmu_update command
/// is provided, `mm::mmu`).
const FEAT1_MMU_PT_UPDATE_PRESERVE_AD: u32 = 1 << 0;
/// Leaf 0x40000003 sub-leaf 0, EAX: the host's TSC is safe (Xen's `host_tsc_is_safe`).
const TIME_HOST_TSC_SAFE: u32 = 1 << 1;
/// Leaf 0x40000003 sub-leaf 0, EAX: RDTSCP is available.
const TIME_RDTSCP: u32 = 1 << 2;
const PAGE_SHIFT: u32 = 12;

/// What the hypervisor leaves report about the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HvFacts {
    /// The TSC's frequency in kHz (the guest reads the real TSC: no TSC emulation here).
    pub tsc_khz: u32,
    /// The TSC-to-nanoseconds scale of the guests' `vcpu_time_info`.
    pub tsc_to_ns: crate::time::TimeScale,
    /// One past the highest machine frame of RAM (`XENMEM_maximum_ram_page`).
    pub max_page: u64,
    /// The CPU's physical address width.
    pub paddr_bits: u32,
    /// The TSC is invariant.
    pub tsc_reliable: bool,
    /// The guest may use RDTSCP.
    pub rdtscp: bool,
}

/// Xen's hypervisor leaf `leaf` (in [`HV_LEAVES_FIRST`]..=[`HV_LEAVES_END`]), sub-leaf
/// `subleaf`, as Xen 4.17's `cpuid_hypervisor_leaves` answers a PV guest that runs on the
/// real TSC (tsc_mode default, no TSC emulation, incarnation 0).
pub fn hypervisor_leaf(leaf: u32, subleaf: u32, f: &HvFacts) -> [u32; 4] {
    match leaf {
        HV_LEAVES_FIRST => {
            let sig = *b"XenVMMXenVMM";
            let w = |i: usize| u32::from_le_bytes([sig[i], sig[i + 1], sig[i + 2], sig[i + 3]]);
            [HV_LAST_LEAF, w(0), w(4), w(8)]
        }
        0x4000_0001 => [crate::version::XEN_VERSION, 0, 0, 0],
        // One hypercall page, placed by writing MSR 0x40000000.
        0x4000_0002 => [1, 0x4000_0000, FEAT1_MMU_PT_UPDATE_PRESERVE_AD, 0],
        // The time leaf.
        0x4000_0003 => match subleaf {
            0 => {
                let flags = if f.tsc_reliable { TIME_HOST_TSC_SAFE } else { 0 }
                    | if f.rdtscp { TIME_RDTSCP } else { 0 };
                [flags, 0, f.tsc_khz, 0]
            }
            // No offset is applied to the guest's TSC; the scale is its PV clock's.
            1 => [0, 0, f.tsc_to_ns.mul, f.tsc_to_ns.shift as i32 as u32],
            2 => [f.tsc_khz, 0, 0, 0],
            _ => [0; 4],
        },
        // HVM features: none for a PV guest. PV features: ebx, the machine address width
        // (Xen's `flsl(get_upper_mfn_bound()) + PAGE_SHIFT`).
        HV_LAST_LEAF if subleaf == 0 => {
            let frames = f.max_page.min(1u64 << f.paddr_bits.saturating_sub(PAGE_SHIFT).min(63));
            let width = u64::BITS - frames.saturating_sub(1).leading_zeros();
            [0, width + PAGE_SHIFT, 0, 0]
        }
        _ => [0; 4],
    }
}

/// What a PV guest sees for `leaf` given the real values (the same for dom0 and domUs).
pub fn pv_cpuid(leaf: u32, real: [u32; 4]) -> [u32; 4] {
    let [mut a, mut b, mut c, mut d] = real;
    match leaf {
        1 => {
            c = (c & !L1_ECX_HIDE) | l1_ecx::HYPERVISOR;
            d &= !L1_EDX_HIDE;
            // Only one logical CPU is visible.
            b &= 0x0000_ffff;
        }
        7 => {
            b &= !L7_EBX_HIDE;
            c &= !L7_ECX_HIDE;
            d &= !L7_EDX_HIDE;
        }
        0xd => return [0; 4],
        HV_LEAVES_FIRST..=HV_LEAVES_END => return [0; 4],
        0x8000_0001 => {
            // NX, LM and SYSCALL in edx stay.
            c &= !EXT1_ECX_HIDE;
        }
        _ => {}
    }
    let _ = &mut a;
    [a, b, c, d]
}

/// Leaf 1, ECX: what a PV guest cannot use (the hypervisor switches FPU state with FXSAVE
/// only, so no XSAVE/AVX; no virtualization, MONITOR/MWAIT, PCID or local-APIC features).
const L1_ECX_HIDE: u32 = {
    use l1_ecx::*;
    MONITOR
        | VMX
        | SMX
        | EST
        | TM2
        | SDBG
        | FMA
        | PDCM
        | PCID
        | X2APIC
        | TSC_DEADLINE
        | XSAVE
        | OSXSAVE
        | AVX
        | F16C
};
/// Leaf 1, EDX. DE stays, as on Xen: CR4.DE and I/O breakpoints are emulated (`cpu_state`).
const L1_EDX_HIDE: u32 = {
    use l1_edx::*;
    VME | PSE | APIC | MTRR | PGE | MCA | DS | ACPI | TM | PBE
};
/// Leaf 7, EBX. SMEP and SMAP are HVM-only in Xen's policy (`/*S*/` in cpufeatureset.h): a
/// PV kernel runs in ring 3, where `stac`/`clac` raise #UD, and Linux patches them into every
/// entry path when it sees SMAP. FSGSBASE stays visible, as on Xen: a guest's CR4.FSGSBASE
/// write reaches the CPU (`cpu_state::HARDWARE_CR4_MASK`), and Linux, which sets the bit once
/// it sees the feature, then uses `rdfsbase`.
const L7_EBX_HIDE: u32 = {
    use l7_ebx::*;
    AVX2 | SMEP
        | INVPCID
        | AVX512F
        | AVX512DQ
        | SMAP
        | AVX512_IFMA
        | AVX512PF
        | AVX512ER
        | AVX512CD
        | AVX512BW
        | AVX512VL
};
/// Leaf 7, ECX: the AVX-512 extensions, UMIP, PKU and OSPKE.
const L7_ECX_HIDE: u32 = {
    use l7_ecx::*;
    AVX512_VBMI | UMIP | PKU | OSPKE | AVX512_VBMI2 | AVX512_VNNI | AVX512_BITALG | AVX512_VPOPCNTDQ
};
/// Leaf 7, EDX: the AVX-512 extensions.
const L7_EDX_HIDE: u32 = {
    use l7_edx::*;
    AVX512_4VNNIW | AVX512_4FMAPS | AVX512_VP2INTERSECT | AVX512_FP16
};
/// Leaf 0x8000_0001, ECX: SVM and MONITORX.
const EXT1_ECX_HIDE: u32 = ext1_ecx::SVM | ext1_ecx::MONITORX;

// The masks as they were written with bit numbers, so the names change nothing.
const _: () = {
    assert!(
        L1_ECX_HIDE
            == (1 << 3)
                | (1 << 5)
                | (1 << 6)
                | (1 << 7)
                | (1 << 8)
                | (1 << 11)
                | (1 << 12)
                | (1 << 15)
                | (1 << 17)
                | (1 << 21)
                | (1 << 24)
                | (1 << 26)
                | (1 << 27)
                | (1 << 28)
                | (1 << 29)
    );
    assert!(
        L1_EDX_HIDE
            == (1 << 1)
                | (1 << 3)
                | (1 << 9)
                | (1 << 12)
                | (1 << 13)
                | (1 << 14)
                | (1 << 21)
                | (1 << 22)
                | (1 << 29)
                | (1 << 31)
    );
    assert!(
        L7_EBX_HIDE
            == (1 << 5)
                | (1 << 7)
                | (1 << 10)
                | (1 << 16)
                | (1 << 17)
                | (1 << 20)
                | (1 << 21)
                | (0x7 << 26)
                | (0x3 << 30)
    );
    assert!(
        L7_ECX_HIDE
            == (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 6) | (1 << 11) | (1 << 12) | (1 << 14)
    );
    assert!(L7_EDX_HIDE == (1 << 2) | (1 << 3) | (1 << 8) | (1 << 23));
    assert!(EXT1_ECX_HIDE == (1 << 2) | (1 << 29));
    assert!(l1_ecx::HYPERVISOR == 1 << 31);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_what_pv_cannot_use_and_shows_xen() {
        let l1 = pv_cpuid(1, [0, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff]);
        assert_eq!(l1[2] & (1 << 5), 0, "VMX hidden");
        assert_eq!(l1[2] & (1 << 26), 0, "XSAVE hidden");
        assert_ne!(l1[2] & (1 << 31), 0, "hypervisor bit set");
        assert_eq!(l1[3] & (1 << 9), 0, "APIC hidden");
        let l7 = pv_cpuid(7, [0, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff]);
        assert_eq!(l7[1] & (1 << 7), 0, "SMEP hidden (Xen: HVM only)");
        assert_eq!(l7[1] & (1 << 20), 0, "SMAP hidden (Xen: HVM only)");
        assert_eq!(l7[1] & 1, 1, "FSGSBASE shown (a guest's CR4.FSGSBASE reaches the CPU)");
        assert_eq!(pv_cpuid(0x4000_0000, [7; 4]), [0; 4], "the hypervisor's leaves are not the CPU's");
    }

    fn facts() -> HvFacts {
        HvFacts {
            tsc_khz: 2_000_000,
            tsc_to_ns: crate::time::TimeScale::from_hz(2_000_000_000),
            max_page: 0x20000,
            paddr_bits: 40,
            tsc_reliable: true,
            rdtscp: true,
        }
    }

    /// Xen 4.17's answers to a PV guest (`cpuid_hypervisor_leaves`).
    #[test]
    fn hypervisor_leaves_as_xen_417() {
        let f = facts();
        let x = hypervisor_leaf(0x4000_0000, 0, &f);
        assert_eq!(x[0], 0x4000_0005, "leaves up to 0x40000005");
        let sig: Vec<u8> = x[1..].iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(&sig, b"XenVMMXenVMM");
        assert_eq!(hypervisor_leaf(0x4000_0002, 0, &f), [1, 0x4000_0000, 1, 0]);
        assert_eq!(hypervisor_leaf(0x4000_0003, 0, &f), [0b110, 0, 2_000_000, 0]);
        let s = crate::time::TimeScale::from_hz(2_000_000_000);
        assert_eq!(hypervisor_leaf(0x4000_0003, 1, &f), [0, 0, s.mul, s.shift as i32 as u32]);
        assert_eq!(hypervisor_leaf(0x4000_0003, 2, &f), [2_000_000, 0, 0, 0]);
        assert_eq!(hypervisor_leaf(0x4000_0003, 3, &f), [0; 4]);
        assert_eq!(hypervisor_leaf(0x4000_0004, 0, &f), [0; 4], "HVM leaf: nothing for PV");
        // 512 MiB of RAM: the highest frame is 0x1ffff, 17 bits, so 29-bit machine addresses.
        assert_eq!(hypervisor_leaf(0x4000_0005, 0, &f), [0, 29, 0, 0]);
        assert_eq!(hypervisor_leaf(0x4000_0005, 1, &f), [0; 4]);
        let small = HvFacts { paddr_bits: 20, ..f };
        assert_eq!(hypervisor_leaf(0x4000_0005, 0, &small)[1], 20, "capped by the address width");
        let unsafe_tsc = HvFacts { tsc_reliable: false, rdtscp: false, ..f };
        assert_eq!(hypervisor_leaf(0x4000_0003, 0, &unsafe_tsc)[0], 0);
        for leaf in [0x4000_0006, 0x4000_0100, HV_LEAVES_END] {
            assert_eq!(hypervisor_leaf(leaf, 0, &f), [0; 4], "{leaf:#x}");
        }
    }
}
