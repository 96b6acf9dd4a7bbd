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
    pub const APIC_BASE: u32 = 0x1b;
    pub const EFER: u32 = 0xc000_0080;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    /// The GS base `swapgs` exchanges with the active one.
    pub const SHADOW_GS_BASE: u32 = 0xc000_0102;
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
    pub const PSE: u64 = 1 << 4;
    pub const PAE: u64 = 1 << 5;
    pub const MCE: u64 = 1 << 6;
    /// Global pages.
    pub const PGE: u64 = 1 << 7;
    pub const OSFXSR: u64 = 1 << 9;
    pub const OSXMMEXCPT: u64 = 1 << 10;
    /// Supervisor-mode execution prevention: ring 0 never runs code from a user page.
    pub const SMEP: u64 = 1 << 20;
    /// Supervisor-mode access prevention: ring 0 never reads or writes a user page (unless
    /// RFLAGS.AC is set).
    pub const SMAP: u64 = 1 << 21;
}

pub use crate::vcpu::rflags;
