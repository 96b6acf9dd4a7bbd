//! A PV vCPU's virtual CPU state beyond its registers, kept as Xen keeps it (`arch.pv.iopl`,
//! `arch.pv.ctrlreg[4]`, `arch.dr[]`, `dr6`, `dr7`, `pv.dr7_emul`): the virtual IOPL that
//! decides `cli`, `sti` and port I/O, the guest's view of CR4, and the debug registers, with
//! Xen's rules (`iopl_ok`, `pv_fixup_guest_cr4`, `set_debugreg`, `x86emul_read_dr`). Data and
//! rules only, host-tested: the emulator and the hypercalls change it, `Hypervisor::hw_state`
//! hands what the CPU must hold to the arch layer.

use crate::x86::{cr4, dr};
use hypercall_abi::Errno;

/// The virtual CPU state of one vCPU (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuArch {
    /// Virtual IOPL, 0-3: set by `PHYSDEVOP_set_iopl`, or by the `iret` frame once the domain
    /// enabled `VMASST_TYPE_architectural_iopl`. The real IOPL is always 0.
    pub iopl: u8,
    /// The CR4 bits the guest controls (see [`GUEST_CR4_MASK`]); a read adds the hardware
    /// bits it may see.
    pub cr4: u64,
    pub debug: DebugRegs,
    /// Bumped whenever the debug registers change, so the arch layer knows to reload them.
    pub debug_generation: u64,
    /// `MSR_TSC_AUX`: what `rdtscp` and `rdpid` read, loaded into the CPU while the vCPU runs.
    pub tsc_aux: u32,
    /// The hypervisor changed the vCPU's segment bases (or which GS base is active) since the
    /// CPU last got them: until the exit path loads them, the vCPU's copy is the newer one and
    /// must not be replaced by what the CPU holds.
    pub bases_pending: bool,
}

/// The guest's debug registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugRegs {
    /// DR0-DR3: breakpoint addresses.
    pub dr: [u64; 4],
    pub dr6: u64,
    /// DR7 as the CPU gets it (I/O breakpoints removed: they are emulated).
    pub dr7: u64,
    /// The enable bits of I/O breakpoints, which only the emulator checks (Xen's `dr7_emul`).
    pub dr7_emul: u64,
}

impl Default for DebugRegs {
    fn default() -> DebugRegs {
        DebugRegs { dr: [0; 4], dr6: dr::DR6_DEFAULT, dr7: dr::DR7_DEFAULT, dr7_emul: 0 }
    }
}

impl DebugRegs {
    /// True if a breakpoint is enabled, so the CPU must hold these registers.
    pub fn active(&self) -> bool {
        self.dr7 & dr::DR7_ACTIVE_MASK != 0
    }
}

/// The privilege a PV vCPU runs at for IOPL checks: the kernel counts as ring 1 (ring 0 with
/// `architectural_iopl`), user mode as ring 3. `cli`, `sti` and port I/O are allowed when the
/// virtual IOPL is at least that (Xen's `iopl_ok`).
pub fn iopl_ok(a: &VcpuArch, kernel_mode: bool, architectural_iopl: bool) -> bool {
    let cpl = match (kernel_mode, architectural_iopl) {
        (true, true) => 0,
        (true, false) => 1,
        (false, _) => 3,
    };
    cpl <= a.iopl
}

/// CR4 bits a PV guest may toggle (Xen's `PV_CR4_GUEST_MASK`): TSD and FSGSBASE reach the CPU
/// while it runs, the rest are emulated or refused by [`Cr4Policy`].
pub const GUEST_CR4_MASK: u64 = cr4::TSD | cr4::DE | cr4::FSGSBASE | cr4::OSXSAVE;
/// The guest CR4 bits the CPU holds while the guest runs: TSD makes its `rdtsc` fault (the
/// kernel's is then emulated), FSGSBASE lets it use `rd/wr{fs,gs}base` (the hypervisor takes
/// the bases back from the CPU whenever it needs them, see `Platform::live_segment_bases`).
/// DE and OSXSAVE stay virtual: I/O breakpoints are emulated, and XSAVE is not offered.
pub const HARDWARE_CR4_MASK: u64 = cr4::TSD | cr4::FSGSBASE;
/// Hardware CR4 bits a PV guest sees (Xen's `PV_CR4_GUEST_VISIBLE_MASK`).
pub const GUEST_CR4_VISIBLE_MASK: u64 = cr4::PAE | cr4::MCE | cr4::OSFXSR | cr4::OSXMMEXCPT;

/// What the domain's CPUID allows of CR4 (Xen discards a bit whose feature the policy lacks)
/// and which hardware bits it sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cr4Policy {
    /// Subset of [`GUEST_CR4_MASK`] the guest may set.
    pub settable: u64,
    /// Subset of [`GUEST_CR4_VISIBLE_MASK`] that reads as set.
    pub visible: u64,
}

impl Cr4Policy {
    /// The policy of a guest whose CPUID leaf 1 and leaf 7 (subleaf 0) read `leaf1`, `leaf7`:
    /// TSD with TSC, DE with DE, FSGSBASE with FSGSBASE, OSXSAVE with XSAVE; MCE is seen with
    /// MCE (Xen turns it on where the CPU has it), PAE and the SSE bits always.
    pub fn from_cpuid(leaf1: [u32; 4], leaf7: [u32; 4]) -> Cr4Policy {
        use crate::x86::cpuid::{l1_ecx, l1_edx, l7_ebx};
        let edx1 = leaf1[3];
        let bit = |word: u32, feature: u32, v: u64| if word & feature != 0 { v } else { 0 };
        Cr4Policy {
            settable: bit(edx1, l1_edx::TSC, cr4::TSD)
                | bit(edx1, l1_edx::DE, cr4::DE)
                | bit(leaf7[1], l7_ebx::FSGSBASE, cr4::FSGSBASE)
                | bit(leaf1[2], l1_ecx::XSAVE, cr4::OSXSAVE),
            visible: cr4::PAE | cr4::OSFXSR | cr4::OSXMMEXCPT | bit(edx1, l1_edx::MCE, cr4::MCE),
        }
    }

    /// The guest-controlled bits kept from a written `val` (Xen's `pv_fixup_guest_cr4`: the
    /// rest is ignored, never refused).
    pub fn fixup(&self, val: u64) -> u64 {
        val & GUEST_CR4_MASK & self.settable
    }

    /// CR4 as the guest reads it.
    pub fn read(&self, a: &VcpuArch) -> u64 {
        a.cr4 | self.visible
    }
}

/// True if `va` may be a breakpoint address: not in the hypervisor's range or the
/// non-canonical hole (Xen's `breakpoint_addr_ok`, which is its `__addr_ok` as for guest
/// handles), so no breakpoint can match the hypervisor's own code or data.
fn breakpoint_addr_ok(va: u64) -> bool {
    crate::vcpu::handle_okay(va)
}

/// Xen's `x86_adj_dr6_rsvd` for a CPU without RTM or bus-lock detection (a PV CPUID has
/// neither): reserved bits forced to their fixed values.
fn adjust_dr6(v: u64) -> u64 {
    (v | dr::DR6_DEFAULT) & !dr::DR6_ZEROS
}

/// Xen's `x86_adj_dr7_rsvd` (no RTM).
fn adjust_dr7(v: u64) -> u64 {
    (v & !dr::DR7_ZEROS) | dr::DR7_DEFAULT
}

/// `set_debugreg(reg, value)` and `mov %reg, %drN`, validated as Xen's `set_debugreg`:
/// `ENODEV` (the emulator's #UD) for a register that does not exist — DR4/DR5 exist only as
/// aliases of DR6/DR7 while CR4.DE is clear; `EINVAL` (#GP) for set upper bits of DR6/DR7;
/// `EPERM` (#GP) for a breakpoint address in the hypervisor's range or non-canonical, general
/// detect, or an I/O breakpoint without CR4.DE. I/O breakpoints are kept apart: the CPU never
/// sees them, the emulator of `in`/`out` checks them.
pub fn set_debugreg(a: &mut VcpuArch, reg: u64, value: u64) -> Result<(), Errno> {
    let de = a.cr4 & cr4::DE != 0;
    let d = &mut a.debug;
    match reg {
        0..=3 => {
            if !breakpoint_addr_ok(value) {
                return Err(Errno::EPERM);
            }
            d.dr[reg as usize] = value;
        }
        4 | 6 if reg == 6 || !de => {
            if value >> 32 != 0 {
                return Err(Errno::EINVAL);
            }
            d.dr6 = adjust_dr6(value);
        }
        5 | 7 if reg == 7 || !de => {
            if value >> 32 != 0 {
                return Err(Errno::EINVAL);
            }
            let mut value = adjust_dr7(value);
            if value & dr::DR7_GD != 0 {
                return Err(Errno::EPERM);
            }
            let mut io_enable = 0;
            if value & dr::DR7_ACTIVE_MASK != 0 {
                for bp in 0..4 {
                    let rw = (value >> (dr::DR7_CONTROL_SHIFT + 4 * bp)) & 3;
                    if rw == dr::RW_IO {
                        if !de {
                            return Err(Errno::EPERM);
                        }
                        io_enable |= value & (3 << (2 * bp));
                    }
                }
            }
            value &= !io_enable;
            d.dr7_emul = io_enable;
            d.dr7 = value;
        }
        _ => return Err(Errno::ENODEV),
    }
    a.debug_generation = a.debug_generation.wrapping_add(1);
    Ok(())
}

/// `get_debugreg(reg)` and `mov %drN, %reg` (Xen's `x86emul_read_dr`): DR7 reads with the
/// emulated I/O breakpoint enables folded back in.
pub fn get_debugreg(a: &VcpuArch, reg: u64) -> Result<u64, Errno> {
    let de = a.cr4 & cr4::DE != 0;
    let d = &a.debug;
    match reg {
        0..=3 => Ok(d.dr[reg as usize]),
        4 | 6 if reg == 6 || !de => Ok(d.dr6),
        5 | 7 if reg == 7 || !de => Ok(d.dr7 | d.dr7_emul),
        _ => Err(Errno::ENODEV),
    }
}

/// Records a #DB's status bits (`hw`, the DR6 the CPU reported) in the guest's DR6 as Xen 4.17
/// does: bits that report an event are added, the rest follow the CPU.
pub fn record_debug_exception(a: &mut VcpuArch, hw: u64) {
    let d = &mut a.debug;
    d.dr6 |= hw & !dr::DR6_DEFAULT;
    d.dr6 &= hw | !dr::DR6_DEFAULT;
    d.dr6 = adjust_dr6(d.dr6 & 0xffff_ffff);
}

/// The enabled I/O breakpoints that an access of `len` bytes at `port` matches, as DR6 bits
/// (Xen's `check_guest_io_breakpoint`; only with CR4.DE).
pub fn io_breakpoints(a: &VcpuArch, port: u16, len: u64) -> u64 {
    if a.debug.dr7_emul == 0 || a.cr4 & cr4::DE == 0 {
        return 0;
    }
    let mut hit = 0;
    for bp in 0..4 {
        if a.debug.dr7_emul & (3 << (2 * bp)) == 0 {
            continue;
        }
        let start = a.debug.dr[bp];
        let width =
            match (a.debug.dr7 | a.debug.dr7_emul) >> (dr::DR7_CONTROL_SHIFT as usize + 4 * bp + 2) & 3 {
                0 => 1,
                1 => 2,
                2 => 8,
                _ => 4,
            };
        let port = u64::from(port);
        if start < port + len && start + width > port {
            hit |= 1 << bp;
        }
    }
    hit
}

/// Port I/O of a domain without rights to the port, as Xen emulates it (`guest_io_read`,
/// `guest_io_write`): reads give all ones, writes are dropped, except the two index registers
/// Xen keeps per domain — the RTC/CMOS index (port 0x70) and the PCI configuration address
/// (a 32-bit access to port 0xcf8) — which read back what was written. (Xen also emulates the
/// PIT for domains built with one; here those ports read as ones, see ARCHITECTURE.md.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoLatches {
    pub cmos_idx: u8,
    pub pci_cf8: u32,
}

/// The RTC/CMOS index port.
const RTC_INDEX: u16 = 0x70;
/// The PCI configuration address port (32-bit accesses only).
const PCI_CF8: u16 = 0xcf8;

impl IoLatches {
    /// An `in` of `bytes` (1, 2 or 4) from `port`.
    pub fn read(&self, port: u16, bytes: u32) -> u32 {
        if port == PCI_CF8 && bytes == 4 {
            return self.pci_cf8;
        }
        let mut data = 0u32;
        for i in 0..bytes {
            let b = if port.wrapping_add(i as u16) == RTC_INDEX { u32::from(self.cmos_idx) } else { 0xff };
            data |= b << (8 * i);
        }
        data
    }

    /// An `out` of the low `bytes` (1, 2 or 4) of `data` to `port`.
    pub fn write(&mut self, port: u16, bytes: u32, data: u32) {
        if port == PCI_CF8 && bytes == 4 {
            self.pci_cf8 = data;
            return;
        }
        for i in 0..bytes {
            if port.wrapping_add(i as u16) == RTC_INDEX {
                self.cmos_idx = (data >> (8 * i)) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn with_cr4(cr4: u64) -> VcpuArch {
        VcpuArch { cr4, ..VcpuArch::default() }
    }

    #[test]
    fn iopl_decides_by_guest_mode_as_xen() {
        // XTF's pv-iopl expectations: with PHYSDEVOP_set_iopl the kernel is ring 1.
        let at = |iopl| VcpuArch { iopl, ..VcpuArch::default() };
        assert!(!iopl_ok(&at(0), true, false));
        assert!(iopl_ok(&at(1), true, false));
        assert!(!iopl_ok(&at(1), false, false));
        assert!(iopl_ok(&at(3), false, false));
        // With VMASST_TYPE_architectural_iopl the kernel is ring 0.
        assert!(iopl_ok(&at(0), true, true));
        assert!(!iopl_ok(&at(2), false, true));
    }

    #[test]
    fn debug_registers_are_validated_as_xen_does() {
        let mut a = VcpuArch::default();
        assert_eq!(set_debugreg(&mut a, 0, 0x1000), Ok(()));
        assert_eq!(get_debugreg(&a, 0), Ok(0x1000));
        assert_eq!(set_debugreg(&mut a, 1, 0xffff_8000_0000_0000), Err(Errno::EPERM), "hypervisor range");
        assert_eq!(set_debugreg(&mut a, 1, 1 << 47), Err(Errno::EPERM), "non-canonical");
        assert_eq!(set_debugreg(&mut a, 1, 0xffff_ffff_8000_0000), Ok(()), "guest kernel address");
        assert_eq!(set_debugreg(&mut a, 6, 0), Ok(()));
        assert_eq!(get_debugreg(&a, 6), Ok(0xffff_0ff0), "reserved ones");
        assert_eq!(set_debugreg(&mut a, 6, 1 << 32), Err(Errno::EINVAL));
        assert_eq!(set_debugreg(&mut a, 7, 0), Ok(()));
        assert_eq!(get_debugreg(&a, 7), Ok(0x400));
        assert_eq!(set_debugreg(&mut a, 7, dr::DR7_GD), Err(Errno::EPERM));
        assert_eq!(set_debugreg(&mut a, 7, 0xd800 | 1), Ok(()));
        assert_eq!(get_debugreg(&a, 7), Ok(0x401), "bits 11, 12, 14 and 15 read as 0");
        // An I/O breakpoint needs CR4.DE, and is then emulated, not loaded.
        assert_eq!(set_debugreg(&mut a, 7, 1 | (dr::RW_IO << 16)), Err(Errno::EPERM));
        assert_eq!(set_debugreg(&mut a, 8, 0), Err(Errno::ENODEV));
        // DR4/DR5 alias DR6/DR7 without CR4.DE and do not exist with it.
        assert_eq!(get_debugreg(&a, 4), get_debugreg(&a, 6));
        assert_eq!(get_debugreg(&a, 5), get_debugreg(&a, 7));
        let mut de = with_cr4(cr4::DE);
        assert_eq!(get_debugreg(&de, 4), Err(Errno::ENODEV));
        assert_eq!(set_debugreg(&mut de, 5, 0), Err(Errno::ENODEV));
        assert_eq!(set_debugreg(&mut de, 7, 1 | (dr::RW_IO << 16)), Ok(()));
        assert_eq!(de.debug.dr7 & dr::DR7_ACTIVE_MASK, 0, "the CPU never sees an I/O breakpoint");
        assert_eq!(get_debugreg(&de, 7), Ok(0x400 | 1 | (dr::RW_IO << 16)));
    }

    #[test]
    fn io_breakpoints_match_the_ports_they_cover() {
        let mut a = with_cr4(cr4::DE);
        // Breakpoint 1 on ports 0x80-0x83 (LEN 4 = 0b11).
        set_debugreg(&mut a, 1, 0x80).unwrap();
        set_debugreg(&mut a, 7, (1 << 2) | ((dr::RW_IO | 0b1100) << 20)).unwrap();
        assert_eq!(io_breakpoints(&a, 0x80, 1), 1 << 1);
        assert_eq!(io_breakpoints(&a, 0x83, 1), 1 << 1);
        assert_eq!(io_breakpoints(&a, 0x84, 1), 0);
        assert_eq!(io_breakpoints(&a, 0x7e, 2), 0);
        assert_eq!(io_breakpoints(&a, 0x7f, 2), 1 << 1);
    }

    #[test]
    fn ports_without_rights_read_as_ones_but_the_index_latches() {
        let mut io = IoLatches::default();
        assert_eq!(io.read(0x80, 1), 0xff);
        assert_eq!(io.read(0x3f8, 4), 0xffff_ffff);
        io.write(0xcf8, 4, 0x8000_1234);
        assert_eq!(io.read(0xcf8, 4), 0x8000_1234);
        assert_eq!(io.read(0xcf8, 1), 0xff, "only a 32-bit access reaches the latch");
        io.write(0x70, 1, 0x8b);
        assert_eq!(io.read(0x70, 1), 0x8b);
        assert_eq!(io.read(0x70, 2), 0xff8b, "0x71 needs rights");
        io.write(0x6f, 2, 0x0c00);
        assert_eq!(io.cmos_idx, 0x0c);
    }

    #[test]
    fn cr4_keeps_only_what_the_guest_may_control() {
        let p = Cr4Policy::from_cpuid([0, 0, 0, (1 << 4) | (1 << 2) | (1 << 7)], [0, 1, 0, 0]);
        let a = VcpuArch { cr4: p.fixup(!0), ..VcpuArch::default() };
        assert_eq!(a.cr4, cr4::TSD | cr4::DE | cr4::FSGSBASE, "no XSAVE in the policy");
        assert_eq!(p.read(&a), cr4::TSD | cr4::DE | cr4::FSGSBASE | GUEST_CR4_VISIBLE_MASK);
        let bare = Cr4Policy::from_cpuid([0; 4], [0; 4]);
        assert_eq!(bare.fixup(!0), 0);
        assert_eq!(bare.read(&VcpuArch::default()), cr4::PAE | cr4::OSFXSR | cr4::OSXMMEXCPT);
    }

    proptest! {
        #[test]
        fn accepted_debug_state_never_reaches_the_hypervisor(reg in 0u64..10, value: u64, de: bool) {
            let mut a = with_cr4(if de { cr4::DE } else { 0 });
            if set_debugreg(&mut a, reg, value).is_ok() {
                for r in a.debug.dr {
                    prop_assert!(breakpoint_addr_ok(r));
                }
                prop_assert_eq!(a.debug.dr7 & dr::DR7_GD, 0);
                prop_assert_eq!(a.debug.dr7 >> 32, 0);
                prop_assert_eq!(a.debug.dr6 >> 32, 0);
                for bp in 0..4 {
                    let rw = (a.debug.dr7 >> (16 + 4 * bp)) & 3;
                    let enabled = a.debug.dr7 & (3 << (2 * bp)) != 0;
                    prop_assert!(!(enabled && rw == dr::RW_IO), "an I/O breakpoint reached DR7");
                }
            }
        }
    }
}
