//! The CPUID view of a PV guest: the real CPU's leaves with the features a PV guest cannot
//! use hidden (virtualization, monitor/mwait, XSAVE/AVX — the hypervisor switches FPU state
//! with FXSAVE only — and the local APIC), plus Xen's hypervisor leaves at 0x40000000.

/// Leaf 0x8000_0001, EDX: RDTSCP.
pub const EXT1_EDX_RDTSCP: u32 = 1 << 27;
/// Leaf 7, subleaf 0, ECX: RDPID.
pub const L7_ECX_RDPID: u32 = 1 << 22;

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
        0x4000_0000 => {
            let sig = *b"XenVMMXenVMM";
            let w = |i: usize| u32::from_le_bytes([sig[i], sig[i + 1], sig[i + 2], sig[i + 3]]);
            return [0x4000_0002, w(0), w(4), w(8)];
        }
        0x4000_0001 => return [crate::version::XEN_VERSION, 0, 0, 0],
        0x4000_0002 => return [1, 0x4000_0000, 0, 0],
        0x4000_0003..=0x4000_00ff => return [0; 4],
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
        let x = pv_cpuid(0x4000_0000, [0; 4]);
        let sig: Vec<u8> = x[1..].iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(&sig, b"XenVMMXenVMM");
    }
}
