//! Architectural x86-64 facts the hypervisor relies on, written once for the core (which
//! emulates instructions and builds exception frames) and the arch layer (which programs the
//! CPU): MSR numbers, control-register and RFLAGS bits, exception vectors. No code that
//! touches the hardware lives here.

/// Exception vectors.
pub mod vector {
    pub const DE: u8 = 0;
    pub const DB: u8 = 1;
    pub const NMI: u8 = 2;
    pub const BP: u8 = 3;
    pub const OF: u8 = 4;
    pub const BR: u8 = 5;
    pub const UD: u8 = 6;
    pub const NM: u8 = 7;
    pub const DF: u8 = 8;
    pub const TS: u8 = 10;
    pub const NP: u8 = 11;
    pub const SS: u8 = 12;
    pub const GP: u8 = 13;
    pub const PF: u8 = 14;
    pub const MF: u8 = 16;
    pub const AC: u8 = 17;
    pub const MC: u8 = 18;
    pub const XM: u8 = 19;
    pub const CP: u8 = 21;
    pub const VC: u8 = 29;
    pub const SX: u8 = 30;
    /// `int $0x80`, the legacy system call a PV guest may raise from any ring (Xen's
    /// `LEGACY_SYSCALL_VECTOR`, a DPL-3 gate).
    pub const LEGACY_SYSCALL: u8 = 0x80;

    /// Short mnemonic for messages.
    pub fn name(v: u8) -> &'static str {
        const N: [&str; 22] = [
            "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#CSO", "#TS", "#NP", "#SS",
            "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
        ];
        N.get(v as usize).copied().unwrap_or("#??")
    }

    /// Bit v set: the CPU pushes an error code for exception vector v (#DF, #TS, #NP, #SS,
    /// #GP, #PF, #AC, #CP, #VC, #SX). The entry stubs are generated from this mask.
    pub const ERROR_CODE_MASK: u32 = (1 << DF)
        | (1 << TS)
        | (1 << NP)
        | (1 << SS)
        | (1 << GP)
        | (1 << PF)
        | (1 << AC)
        | (1 << CP)
        | (1 << VC)
        | (1 << SX);

    /// True if the CPU pushes an error code for this vector.
    pub const fn has_error_code(v: u8) -> bool {
        v < 32 && ERROR_CODE_MASK & (1 << v) != 0
    }
}

/// Model-specific registers.
pub mod msr {
    pub const TSC: u32 = 0x10;
    pub const APIC_BASE: u32 = 0x1b;
    pub const PLATFORM_INFO: u32 = 0xce;
    /// `IA32_ARCH_CAPABILITIES`, present when CPUID.(7,0):EDX bit 29 is set.
    pub const ARCH_CAPABILITIES: u32 = 0x10a;
    pub const MISC_ENABLE: u32 = 0x1a0;
    pub const PAT: u32 = 0x277;
    pub const PERF_CAPABILITIES: u32 = 0x345;
    pub const EFER: u32 = 0xc000_0080;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    /// The GS base `swapgs` exchanges with the active one.
    pub const SHADOW_GS_BASE: u32 = 0xc000_0102;
    /// The value `rdtscp` returns in `%ecx`.
    pub const TSC_AUX: u32 = 0xc000_0103;
}

/// `IA32_APIC_BASE` bits.
pub mod apic_base {
    /// This CPU is the bootstrap processor.
    pub const BSP: u64 = 1 << 8;
    /// The local APIC is enabled.
    pub const ENABLE: u64 = 1 << 11;
    /// The architectural default base of the local APIC's registers.
    pub const DEFAULT_PHYS_BASE: u64 = 0xfee0_0000;
}

/// `IA32_MISC_ENABLE` bits.
pub mod misc_enable {
    pub const PERF_AVAIL: u64 = 1 << 7;
    pub const BTS_UNAVAIL: u64 = 1 << 11;
    pub const PEBS_UNAVAIL: u64 = 1 << 12;
    pub const MONITOR_ENABLE: u64 = 1 << 18;
    pub const XTPR_DISABLE: u64 = 1 << 23;
}

/// `IA32_ARCH_CAPABILITIES` bits.
pub mod arch_caps {
    /// RDCL_NO: the CPU does not speculate through not-present entries (no L1TF, no
    /// Meltdown).
    pub const RDCL_NO: u64 = 1 << 0;
}

/// Segment descriptors (a GDT or LDT entry, as one `u64`) and selectors.
pub mod seg {
    /// Data segment: writable (code segment: readable).
    pub const WRITABLE: u64 = 1 << 41;
    /// Code segment (clear: data).
    pub const EXEC: u64 = 1 << 43;
    /// The type field: bits 40-43.
    pub const TYPE_MASK: u64 = 0xf << 40;
    /// Code or data segment (clear: a system descriptor).
    pub const S: u64 = 1 << 44;
    /// The descriptor privilege level: bits 45-46.
    pub const DPL_SHIFT: u32 = 45;
    pub const PRESENT: u64 = 1 << 47;
    /// 64-bit code segment.
    pub const L: u64 = 1 << 53;
    /// 32-bit default operand size (must be clear with `L`).
    pub const DB: u64 = 1 << 54;
    /// Granularity: the limit counts 4 KiB units.
    pub const G: u64 = 1 << 55;
    /// Selector bit: the entry is in the LDT, not the GDT.
    pub const TI_LDT: u16 = 1 << 2;
}

/// EFER bits.
pub mod efer {
    /// `syscall`/`sysret` enabled.
    pub const SCE: u64 = 1 << 0;
    /// Long mode enabled.
    pub const LME: u64 = 1 << 8;
    /// Long mode active.
    pub const LMA: u64 = 1 << 10;
    /// No-execute page bit enabled.
    pub const NXE: u64 = 1 << 11;
}

/// CR0 bits.
pub mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const MP: u64 = 1 << 1;
    pub const EM: u64 = 1 << 2;
    /// Task switched: the next x87/SSE instruction raises #NM.
    pub const TS: u64 = 1 << 3;
    pub const ET: u64 = 1 << 4;
    pub const NE: u64 = 1 << 5;
    pub const WP: u64 = 1 << 16;
    pub const AM: u64 = 1 << 18;
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits.
pub mod cr4 {
    /// Time-stamp disable: `rdtsc`/`rdtscp` outside ring 0 raise #GP.
    pub const TSD: u64 = 1 << 2;
    /// Debugging extensions: DR4/DR5 are not aliases of DR6/DR7, and I/O breakpoints exist.
    pub const DE: u64 = 1 << 3;
    pub const PSE: u64 = 1 << 4;
    pub const PAE: u64 = 1 << 5;
    pub const MCE: u64 = 1 << 6;
    /// Global pages.
    pub const PGE: u64 = 1 << 7;
    pub const OSFXSR: u64 = 1 << 9;
    pub const OSXMMEXCPT: u64 = 1 << 10;
    /// `rd/wr{fs,gs}base` usable outside ring 0.
    pub const FSGSBASE: u64 = 1 << 16;
    pub const OSXSAVE: u64 = 1 << 18;
    /// Supervisor-mode execution prevention: ring 0 never runs code from a user page.
    pub const SMEP: u64 = 1 << 20;
    /// Supervisor-mode access prevention: ring 0 never reads or writes a user page (unless
    /// RFLAGS.AC is set).
    pub const SMAP: u64 = 1 << 21;
}

/// Debug-register bits (DR6, DR7).
pub mod dr {
    /// DR6 as it reads with nothing recorded: the reserved bits that read as 1.
    pub const DR6_DEFAULT: u64 = 0xffff_0ff0;
    /// DR6 bit that always reads as 0.
    pub const DR6_ZEROS: u64 = 1 << 12;
    /// DR6: breakpoint 0-3 matched.
    pub const DR6_BP_MASK: u64 = 0xf;
    /// DR6: single step.
    pub const DR6_BS: u64 = 1 << 14;
    /// DR7 as it reads with nothing enabled (bit 10 reads as 1).
    pub const DR7_DEFAULT: u64 = 0x400;
    /// DR7 bits that always read as 0 (11: RTM, absent under a PV CPUID; 12, 14, 15).
    pub const DR7_ZEROS: u64 = 0xd800;
    /// DR7: the local and global enables of breakpoints 0-3.
    pub const DR7_ACTIVE_MASK: u64 = 0xff;
    /// DR7: general detect (a `mov` to or from a debug register raises #DB).
    pub const DR7_GD: u64 = 1 << 13;
    /// DR7: first bit of breakpoint 0's RW/LEN field; each breakpoint has four bits.
    pub const DR7_CONTROL_SHIFT: u32 = 16;
    /// RW value of an I/O breakpoint (defined only with CR4.DE).
    pub const RW_IO: u64 = 0b10;
}

/// CPUID feature bits, by leaf and register.
pub mod cpuid {
    /// Leaf 1, ECX.
    pub mod l1_ecx {
        pub const MONITOR: u32 = 1 << 3;
        pub const VMX: u32 = 1 << 5;
        pub const SMX: u32 = 1 << 6;
        pub const EST: u32 = 1 << 7;
        pub const TM2: u32 = 1 << 8;
        pub const SDBG: u32 = 1 << 11;
        pub const FMA: u32 = 1 << 12;
        pub const PDCM: u32 = 1 << 15;
        pub const PCID: u32 = 1 << 17;
        pub const X2APIC: u32 = 1 << 21;
        pub const TSC_DEADLINE: u32 = 1 << 24;
        pub const XSAVE: u32 = 1 << 26;
        pub const OSXSAVE: u32 = 1 << 27;
        pub const AVX: u32 = 1 << 28;
        pub const F16C: u32 = 1 << 29;
        /// Running under a hypervisor.
        pub const HYPERVISOR: u32 = 1 << 31;
    }
    /// Leaf 1, EDX.
    pub mod l1_edx {
        pub const VME: u32 = 1 << 1;
        pub const DE: u32 = 1 << 2;
        pub const PSE: u32 = 1 << 3;
        pub const TSC: u32 = 1 << 4;
        pub const MCE: u32 = 1 << 7;
        pub const APIC: u32 = 1 << 9;
        pub const MTRR: u32 = 1 << 12;
        pub const PGE: u32 = 1 << 13;
        pub const MCA: u32 = 1 << 14;
        pub const DS: u32 = 1 << 21;
        pub const ACPI: u32 = 1 << 22;
        pub const TM: u32 = 1 << 29;
        pub const PBE: u32 = 1 << 31;
    }
    /// Leaf 7 subleaf 0, EBX.
    pub mod l7_ebx {
        pub const FSGSBASE: u32 = 1 << 0;
        pub const AVX2: u32 = 1 << 5;
        pub const SMEP: u32 = 1 << 7;
        pub const INVPCID: u32 = 1 << 10;
        pub const AVX512F: u32 = 1 << 16;
        pub const AVX512DQ: u32 = 1 << 17;
        pub const SMAP: u32 = 1 << 20;
        pub const AVX512_IFMA: u32 = 1 << 21;
        pub const AVX512PF: u32 = 1 << 26;
        pub const AVX512ER: u32 = 1 << 27;
        pub const AVX512CD: u32 = 1 << 28;
        pub const AVX512BW: u32 = 1 << 30;
        pub const AVX512VL: u32 = 1 << 31;
    }
    /// Leaf 7 subleaf 0, ECX.
    pub mod l7_ecx {
        pub const AVX512_VBMI: u32 = 1 << 1;
        pub const UMIP: u32 = 1 << 2;
        pub const PKU: u32 = 1 << 3;
        pub const OSPKE: u32 = 1 << 4;
        pub const AVX512_VBMI2: u32 = 1 << 6;
        pub const AVX512_VNNI: u32 = 1 << 11;
        pub const AVX512_BITALG: u32 = 1 << 12;
        pub const AVX512_VPOPCNTDQ: u32 = 1 << 14;
        pub const RDPID: u32 = 1 << 22;
    }
    /// Leaf 7 subleaf 0, EDX.
    pub mod l7_edx {
        pub const AVX512_4VNNIW: u32 = 1 << 2;
        pub const AVX512_4FMAPS: u32 = 1 << 3;
        pub const AVX512_VP2INTERSECT: u32 = 1 << 8;
        pub const AVX512_FP16: u32 = 1 << 23;
        /// `IA32_ARCH_CAPABILITIES` exists.
        pub const ARCH_CAPABILITIES: u32 = 1 << 29;
    }
    /// Leaf 0x8000_0001, ECX.
    pub mod ext1_ecx {
        pub const SVM: u32 = 1 << 2;
        pub const MONITORX: u32 = 1 << 29;
    }
    /// Leaf 0x8000_0001, EDX.
    pub mod ext1_edx {
        pub const RDTSCP: u32 = 1 << 27;
    }
    /// Leaf 0x8000_0007, EDX.
    pub mod ext7_edx {
        /// The TSC runs at a constant rate in every power state.
        pub const INVARIANT_TSC: u32 = 1 << 8;
    }
}

/// RFLAGS bits.
pub mod rflags {
    pub const CF: u64 = 1 << 0;
    /// Reads as 1.
    pub const FIXED: u64 = 1 << 1;
    pub const PF: u64 = 1 << 2;
    pub const AF: u64 = 1 << 4;
    pub const ZF: u64 = 1 << 6;
    pub const SF: u64 = 1 << 7;
    pub const TF: u64 = 1 << 8;
    pub const IF: u64 = 1 << 9;
    pub const DF: u64 = 1 << 10;
    pub const OF: u64 = 1 << 11;
    pub const IOPL: u64 = 3 << 12;
    pub const NT: u64 = 1 << 14;
    pub const RF: u64 = 1 << 16;
    pub const VM: u64 = 1 << 17;
    pub const AC: u64 = 1 << 18;
    pub const VIF: u64 = 1 << 19;
    pub const VIP: u64 = 1 << 20;
    pub const ID: u64 = 1 << 21;
    /// Flags a guest may set in its real RFLAGS (everything else is forced).
    pub const GUEST_SETTABLE: u64 = CF | PF | AF | ZF | SF | TF | DF | OF | AC | ID;
    // The value it had as bit numbers.
    const _: () = assert!(
        GUEST_SETTABLE == CF | (1 << 2) | (1 << 4) | (1 << 6) | (1 << 7) | TF | DF | (1 << 11) | AC | ID
    );
}

/// Page-fault error-code bits (Intel SDM 4.7).
pub mod pfec {
    pub const PRESENT: u64 = 1 << 0;
    pub const WRITE: u64 = 1 << 1;
    /// The access was made in user mode (ring 3).
    pub const USER: u64 = 1 << 2;
    pub const RSVD: u64 = 1 << 3;
    pub const INSN_FETCH: u64 = 1 << 4;
}

/// The FXSAVE area's fields the hypervisor initialises, and their reset values.
pub mod fxsave {
    /// Byte offset of FCW, the x87 control word.
    pub const FCW: usize = 0;
    /// Byte offset of MXCSR.
    pub const MXCSR: usize = 24;
    /// Byte offset of MXCSR_MASK.
    pub const MXCSR_MASK: usize = 28;
    /// FCW after `fninit`: every x87 exception masked, 64-bit precision, round to nearest.
    pub const FCW_DEFAULT: u16 = 0x037f;
    /// MXCSR at reset: every SIMD exception masked.
    pub const MXCSR_DEFAULT: u32 = 0x1f80;
    /// MXCSR_MASK as written for a guest: every MXCSR bit writable.
    pub const MXCSR_MASK_DEFAULT: u32 = 0xffff;
}
