//! Thin wrappers over privileged x86 instructions: port I/O, MSRs, control registers, TLB
//! maintenance, FPU state and the QEMU exit device. Every other arch module builds on these.

use core::arch::asm;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, val: u8) {
    // SAFETY: the hypervisor owns all I/O ports; callers pass ports of devices it drives.
    unsafe { asm!("out dx, al", in("dx") port, in("al") val, options(nomem, nostack, preserves_flags)) }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for `outb`; reading a port has no memory effects.
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Writes a 32-bit value to an I/O port.
pub fn outl(port: u16, val: u32) {
    // SAFETY: as for `outb`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") val, options(nomem, nostack, preserves_flags)) }
}

pub use microvisor::x86::{cr0, cr4, msr};

/// CPUID feature bits the hypervisor uses.
pub use microvisor::x86::cpuid as feature;

/// 1 if the CPU has `MSR_TSC_AUX` (it has `rdtscp` or `rdpid`), set once at boot.
static HAS_TSC_AUX: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Notes the optional features the exit path uses; call once at boot.
pub fn detect_features() {
    let ext = if cpuid(0x8000_0000, 0)[0] >= 0x8000_0001 { cpuid(0x8000_0001, 0)[3] } else { 0 };
    let l7 = if cpuid(0, 0)[0] >= 7 { cpuid(7, 0)[2] } else { 0 };
    let has = ext & microvisor::cpuid::EXT1_EDX_RDTSCP != 0 || l7 & microvisor::cpuid::L7_ECX_RDPID != 0;
    HAS_TSC_AUX.store(has, core::sync::atomic::Ordering::Relaxed);
}

/// True if the CPU has `MSR_TSC_AUX`.
#[inline(always)]
pub fn has_tsc_aux() -> bool {
    HAS_TSC_AUX.load(core::sync::atomic::Ordering::Relaxed)
}

/// Which of the supervisor-mode protections are on.
#[derive(Clone, Copy, Debug)]
pub struct Protections {
    pub smep: bool,
    pub smap: bool,
}

/// Turns on SMEP and SMAP where the CPU has them. Guests (kernel and user alike) run in ring
/// 3 on user pages, so with both on, ring 0 can neither run nor touch anything a guest maps.
pub fn enable_protections() -> Protections {
    let has_leaf7 = cpuid(0, 0)[0] >= 7;
    let ebx = if has_leaf7 { cpuid(7, 0)[1] } else { 0 };
    let p = Protections { smep: ebx & feature::l7_ebx::SMEP != 0, smap: ebx & feature::l7_ebx::SMAP != 0 };
    let mut bits = 0;
    if p.smep {
        bits |= cr4::SMEP;
    }
    if p.smap {
        bits |= cr4::SMAP;
    }
    // SAFETY: only bits CPUID reports are added. The hypervisor never executes user pages, and
    // reaches guest memory only through the supervisor-only direct map, never a user mapping.
    unsafe { write_cr4(read_cr4() | bits) };
    p
}

/// True while CR4.SMAP is on.
pub fn smap_enabled() -> bool {
    read_cr4() & cr4::SMAP != 0
}

/// Turns SMAP off (QEMU TCG's far-return quirk, see `machine::smap_quirk`). The entry stub's
/// `clac` stays valid: it needs only CPUID's SMAP.
pub fn disable_smap() {
    // SAFETY: clearing SMAP only lifts a protection; ring 0 still touches guest pages only in
    // the guest copies (guest_copy.rs, whose stac/clac stay valid), and SMEP is kept.
    unsafe { write_cr4(read_cr4() & !cr4::SMAP) };
}

/// Reads an MSR.
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: callers only name MSRs that exist on every x86_64 CPU we boot on (see `msr`).
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes an MSR.
pub fn wrmsr(msr: u32, val: u64) {
    // SAFETY: callers name architectural MSRs with values valid for them; the hypervisor owns
    // the CPU's configuration.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") val as u32, in("edx") (val >> 32) as u32,
            options(nostack, preserves_flags))
    }
}

/// Reads CR2 (the last page-fault address).
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads CR3.
pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Loads CR3, switching address space and flushing non-global TLB entries.
///
/// # Safety
/// `cr3` must name a valid L4 table that maps the hypervisor (L4 slots 256..=271) exactly as
/// every other address space does, so the code running now stays mapped.
pub unsafe fn write_cr3(cr3: u64) {
    // SAFETY: the caller guarantees the new tables map the hypervisor identically.
    unsafe { asm!("mov cr3, {}", in(reg) cr3, options(nostack, preserves_flags)) }
}

/// Reads CR0.
pub fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads CR4.
pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Writes CR4.
///
/// # Safety
/// The new value must keep PAE and the features the hypervisor relies on (OSFXSR).
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: the caller guarantees the value keeps long mode intact.
    unsafe { asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags)) }
}

/// The data segment selectors in the CPU: `[%ds, %es, %fs, %gs]`.
pub fn data_selectors() -> [u16; 4] {
    let (ds, es, fs, gs): (u16, u16, u16, u16);
    // SAFETY: reading segment selectors has no side effects.
    unsafe {
        asm!(
            "mov {0:x}, ds",
            "mov {1:x}, es",
            "mov {2:x}, fs",
            "mov {3:x}, gs",
            out(reg) ds,
            out(reg) es,
            out(reg) fs,
            out(reg) gs,
            options(nomem, nostack, preserves_flags)
        )
    };
    [ds, es, fs, gs]
}

/// Loads `sels` into `[%ds, %es, %fs, %gs]`, skipping a register whose selector is null both in
/// the CPU (`now`) and in `sels` (its hidden part then matters to no one). Returns true if
/// `%fs` or `%gs` was loaded, which replaced its base.
///
/// # Safety
/// Each selector must load in ring 0 with the descriptor tables in the CPU: null, or a present
/// data or readable code segment (`microvisor::traps::data_selector_loads`).
pub unsafe fn load_data_selectors(sels: [u16; 4], now: [u16; 4]) -> bool {
    let load = |i: usize| sels[i] & !3 != 0 || now[i] & !3 != 0;
    // SAFETY: the caller guarantees each selector loads; 64-bit ring-0 code does not use the
    // data segments (and its FS/GS bases are written again by the caller).
    unsafe {
        if load(0) {
            asm!("mov ds, {0:x}", in(reg) sels[0], options(nostack, preserves_flags));
        }
        if load(1) {
            asm!("mov es, {0:x}", in(reg) sels[1], options(nostack, preserves_flags));
        }
        if load(2) {
            asm!("mov fs, {0:x}", in(reg) sels[2], options(nostack, preserves_flags));
        }
        if load(3) {
            asm!("mov gs, {0:x}", in(reg) sels[3], options(nostack, preserves_flags));
        }
    }
    load(2) || load(3)
}

/// Sets the guest-owned CR4 bits (`microvisor::cpu_state::HARDWARE_CR4_MASK`) to `bits`,
/// keeping every other bit.
pub fn set_guest_cr4(bits: u64) {
    let mask = microvisor::cpu_state::HARDWARE_CR4_MASK;
    let cr4 = read_cr4();
    // SAFETY: only TSD and FSGSBASE change (the core offers FSGSBASE only where CPUID has it);
    // PAE, OSFXSR, SMEP and SMAP are kept.
    unsafe { write_cr4((cr4 & !mask) | (bits & mask)) };
}

/// The debug registers: a guest's breakpoints are loaded while it runs (their addresses were
/// checked to lie outside the hypervisor, and the hypervisor never touches guest virtual
/// addresses, so they cannot match in ring 0).
pub mod debugreg {
    use core::arch::asm;

    /// Loads DR0-DR3 and DR6, then DR7.
    pub fn load(dr: [u64; 4], dr6: u64, dr7: u64) {
        // SAFETY: writes to the debug registers only arm breakpoints on guest addresses
        // (validated by the core) and take effect in ring 3 on the guest's own accesses.
        unsafe {
            asm!("mov dr0, {}", in(reg) dr[0], options(nomem, nostack, preserves_flags));
            asm!("mov dr1, {}", in(reg) dr[1], options(nomem, nostack, preserves_flags));
            asm!("mov dr2, {}", in(reg) dr[2], options(nomem, nostack, preserves_flags));
            asm!("mov dr3, {}", in(reg) dr[3], options(nomem, nostack, preserves_flags));
            asm!("mov dr6, {}", in(reg) dr6, options(nomem, nostack, preserves_flags));
        }
        set_dr7(dr7);
    }

    /// Writes DR7 (`microvisor::x86::dr::DR7_DEFAULT` disarms every breakpoint).
    pub fn set_dr7(v: u64) {
        // SAFETY: see `load`; the core clears general detect and the reserved bits.
        unsafe { asm!("mov dr7, {}", in(reg) v, options(nomem, nostack, preserves_flags)) };
    }

    /// Reads DR6 after a #DB and resets it, as Xen does, so the next #DB reports only its own
    /// cause.
    pub fn take_dr6() -> u64 {
        let v: u64;
        // SAFETY: reading and resetting the debug status has no other effect.
        unsafe {
            asm!("mov {}, dr6", out(reg) v, options(nomem, nostack, preserves_flags));
            asm!("mov dr6, {}", in(reg) microvisor::x86::dr::DR6_DEFAULT, options(nomem, nostack, preserves_flags));
        }
        v
    }
}

/// Invalidates the TLB entry of one virtual address.
pub fn invlpg(va: u64) {
    // SAFETY: invalidating a TLB entry is always safe; at worst it costs a refill.
    unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) }
}

/// Flushes the whole TLB including global entries by toggling CR4.PGE.
pub fn flush_tlb_global() {
    let cr4 = read_cr4();
    // SAFETY: toggling PGE only flushes the TLB; every other bit is kept.
    unsafe {
        write_cr4(cr4 ^ cr4::PGE);
        write_cr4(cr4);
    }
}

/// Writes back and invalidates every cache line (`MMUEXT_FLUSH_CACHE` for a domain that may
/// use uncached mappings of its devices).
pub fn wbinvd() {
    // SAFETY: wbinvd only writes dirty lines back and invalidates caches; memory contents
    // are unchanged. It is slow, which is why only domains with I/O memory may ask for it.
    unsafe { asm!("wbinvd", options(nostack, preserves_flags)) }
}

/// Reads the time-stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Executes CPUID.
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: CPUID has no side effects. rbx is reserved by LLVM, so it is saved by hand.
    unsafe {
        asm!("mov {t:r}, rbx", "cpuid", "xchg {t:r}, rbx",
            t = out(reg) b, inout("eax") leaf => a, inout("ecx") subleaf => c, out("edx") d,
            options(nomem, nostack, preserves_flags));
    }
    [a, b, c, d]
}

/// Runs `f` (an FXSAVE or FXRSTOR) with CR0.TS clear, putting TS back afterwards: TS holds
/// the running guest's virtual TS (`fpu_taskswitch`), and FXSAVE/FXRSTOR raise #NM under it —
/// in ring 0, which stopped the machine when a guest printed after `fpu_taskswitch(1)` (the
/// console path saves the guest's FPU state before formatting).
fn with_ts_clear(f: impl FnOnce()) {
    let ts = read_cr0() & cr0::TS != 0;
    if ts {
        set_cr0_ts(false);
    }
    f();
    if ts {
        set_cr0_ts(true);
    }
}

/// Saves the CPU's x87/SSE registers into a vCPU's save area.
pub fn fxsave(area: &mut microvisor::vcpu::FpuArea) {
    // SAFETY: `FpuArea` is 512 bytes and 16-byte aligned, as FXSAVE requires; TS is clear.
    with_ts_clear(|| unsafe {
        asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr(), options(nostack, preserves_flags))
    });
}

/// Loads a vCPU's x87/SSE registers.
pub fn fxrstor(area: &microvisor::vcpu::FpuArea) {
    // SAFETY: the area is aligned and holds an image produced by `fxsave` or
    // `FpuArea::initial`; the hypervisor never lets a guest write MXCSR reserved bits into it;
    // TS is clear.
    with_ts_clear(|| unsafe {
        asm!("fxrstor64 [{}]", in(reg) area.0.as_ptr(), options(nostack, preserves_flags))
    });
}

/// Sets or clears CR0.TS (the guest's virtual TS from `fpu_taskswitch`).
pub fn set_cr0_ts(on: bool) {
    let cr0 = read_cr0();
    let new = if on { cr0 | cr0::TS } else { cr0 & !cr0::TS };
    if new != cr0 {
        // SAFETY: only the TS bit changes; the hypervisor never executes x87/SSE
        // instructions itself (it is built without SSE), so TS cannot fault in ring 0 except
        // in fxsave/fxrstor, which the switch path runs with TS clear.
        unsafe { asm!("mov cr0, {}", in(reg) new, options(nostack, preserves_flags)) }
    }
}

/// Reads a non-canonical address, which raises #GP in ring 0 (`selftest=fault`: the fatal
/// report then stops the machine).
#[cfg(feature = "test-aids")]
pub fn fault_on_purpose() {
    // SAFETY: deliberately faulting; the fault handler reports and stops the machine, so the
    // read never completes.
    unsafe { core::ptr::read_volatile(0x8000_0000_0000_0000usize as *const u64) };
}

/// Enables interrupts, waits for one, and disables them again (the idle loop's wait).
pub fn wait_for_interrupt() {
    // SAFETY: `sti; hlt` enables interrupts and waits atomically (no lost wake-up); the ring-0
    // interrupt path returns here, and interrupts are off again before the caller continues.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) }
}

/// QEMU's `isa-debug-exit` device; QEMU exits with status `(value << 1) | 1`.
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Ends the QEMU run with `value`, or halts forever on a machine without the exit device.
pub fn qemu_exit(value: u8) -> ! {
    outl(DEBUG_EXIT_PORT, u32::from(value));
    halt_forever()
}

/// Stops this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: with interrupts disabled, `hlt` only waits for an NMI.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}
