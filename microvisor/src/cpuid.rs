//! The CPUID view of a PV guest: the real CPU's leaves with the features a PV guest cannot
//! use hidden (virtualization, monitor/mwait, XSAVE/AVX — the hypervisor switches FPU state
//! with FXSAVE only — and the local APIC), plus Xen's hypervisor leaves at 0x40000000.

/// Leaf 0x8000_0001, EDX: RDTSCP.
pub const EXT1_EDX_RDTSCP: u32 = 1 << 27;
/// Leaf 7, subleaf 0, ECX: RDPID.
pub const L7_ECX_RDPID: u32 = 1 << 22;

/// Leaf 0x8000_0007, EDX: invariant TSC (Xen's TSC_RELIABLE follows it).
pub const PWR_EDX_INVARIANT_TSC: u32 = 1 << 8;

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
            // ecx: MONITOR 3, VMX 5, SMX 6, EST 7, TM2 8, SDBG 11, FMA 12, PDCM 15, PCID 17,
            // x2APIC 21, TSC-deadline 24, XSAVE 26, OSXSAVE 27, AVX 28, F16C 29; set hypervisor 31.
            const ECX_HIDE: u32 = (1 << 3)
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
                | (1 << 29);
            c = (c & !ECX_HIDE) | (1 << 31);
            // edx: VME 1, PSE 3, MTRR 12, PGE 13, MCA 14, APIC 9, ACPI 22, DS 21, TM 29, PBE 31.
            // DE stays, as on Xen: CR4.DE and I/O breakpoints are emulated (`cpu_state`).
            const EDX_HIDE: u32 = (1 << 1)
                | (1 << 3)
                | (1 << 9)
                | (1 << 12)
                | (1 << 13)
                | (1 << 14)
                | (1 << 21)
                | (1 << 22)
                | (1 << 29)
                | (1 << 31);
            d &= !EDX_HIDE;
            // Only one logical CPU is visible.
            b &= 0x0000_ffff;
        }
        7 => {
            // ebx: AVX2 5, SMEP 7, INVPCID 10, AVX-512 (16, 17, 21, 26-28, 30, 31), SMAP 20;
            // ecx: AVX-512 bits, PKU 3, OSPKE 4, UMIP 2; edx: AVX-512 bits. SMEP and SMAP are
            // HVM-only in Xen's policy (`/*S*/` in cpufeatureset.h): a PV kernel runs in ring 3,
            // where `stac`/`clac` raise #UD, and Linux patches them into every entry path when
            // it sees SMAP. FSGSBASE (0) stays visible, as on Xen: a guest's CR4.FSGSBASE write
            // reaches the CPU (`cpu_state::HARDWARE_CR4_MASK`), and Linux, which sets the bit
            // once it sees the feature, then uses `rdfsbase`.
            const EBX_HIDE: u32 = (1 << 5)
                | (1 << 7)
                | (1 << 10)
                | (1 << 16)
                | (1 << 17)
                | (1 << 20)
                | (1 << 21)
                | (0x7 << 26)
                | (0x3 << 30);
            b &= !EBX_HIDE;
            c &= !((1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 6) | (1 << 11) | (1 << 12) | (1 << 14));
            d &= !((1 << 2) | (1 << 3) | (1 << 8) | (1 << 23));
        }
        0xd => return [0; 4],
        HV_LEAVES_FIRST..=HV_LEAVES_END => return [0; 4],
        0x8000_0001 => {
            // ecx: SVM 2, MONITORX 29; keep NX, LM and SYSCALL in edx.
            c &= !((1 << 2) | (1 << 29));
        }
        _ => {}
    }
    let _ = &mut a;
    [a, b, c, d]
}

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
