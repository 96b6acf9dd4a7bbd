//! `privop-emul`: privileged instructions a PV kernel executes in ring 3 and Xen emulates
//! (issue 11, item 3): `rdmsr`/`wrmsr` of the segment bases, EFER, PAT, the APIC base,
//! MISC_ENABLE, the TSC, TSC_AUX (and `rdtscp`) and MSRs Xen refuses (read as 0 while the
//! guest has no #GP handler), `mov` to and from CR0 (only TS may change), CR2 and CR3, `clts`,
//! `wbinvd`. Each result, or the #GP(0) Xen gives instead, is checked against Xen 4.17's.

use super::checks::Results;
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use pv_guest_kernel::traps::{self, TrapFrame};
use pv_guest_kernel::{hypercall, mm};

const MSR_FS_BASE: u32 = 0xc000_0100;
const MSR_SHADOW_GS_BASE: u32 = 0xc000_0102;
const MSR_EFER: u32 = 0xc000_0080;
const MSR_PAT: u32 = 0x277;
const MSR_APIC_BASE: u32 = 0x1b;
const MSR_MTRRCAP: u32 = 0xfe;
/// EFER as a PV kernel reads it on Xen: SCE | LME | LMA | NXE.
const GUEST_EFER: u64 = (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11);
/// Xen 4.17's `XEN_MSR_PAT`.
const XEN_MSR_PAT: u64 = 0x0000_0501_0007_0406;
/// APIC base as a PV vCPU 0 reads it on Xen: enabled, at the default address, the BSP.
const GUEST_APIC_BASE: u64 = 0xfee0_0000 | (1 << 11) | (1 << 8);
const MSR_TSC: u32 = 0x10;
const MSR_MISC_ENABLE: u32 = 0x1a0;
const MSR_TSC_AUX: u32 = 0xc000_0103;
/// MISC_ENABLE bits Xen always shows set (BTS and PEBS unavailable, xTPR disabled) and clear
/// (performance monitoring, MONITOR/MWAIT).
const MISC_ENABLE_SET: u64 = (1 << 11) | (1 << 12) | (1 << 23);
const MISC_ENABLE_CLEAR: u64 = (1 << 7) | (1 << 18);
/// CR0 as a PV kernel reads it on Xen (TS clear): PG | AM | WP | NE | ET | MP | PE.
const GUEST_CR0: u64 = 0x8005_0033;
const CR0_TS: u64 = 1 << 3;
const CR0_WP: u64 = 1 << 16;

static GP_COUNT: AtomicU64 = AtomicU64::new(0);
static GP_ERROR: AtomicU64 = AtomicU64::new(0);
/// Length of the instruction under test, which the #GP handler skips.
static SKIP: AtomicU64 = AtomicU64::new(0);

fn gp_skip(f: &mut TrapFrame) {
    GP_COUNT.fetch_add(1, Ordering::SeqCst);
    GP_ERROR.store(f.error_code, Ordering::SeqCst);
    f.rip += SKIP.load(Ordering::SeqCst);
}

/// Runs `f` (one instruction of `len` bytes); `Err(error code)` if it raised #GP.
fn guarded<T>(len: u64, f: impl FnOnce() -> T) -> Result<T, u64> {
    SKIP.store(len, Ordering::SeqCst);
    let before = GP_COUNT.load(Ordering::SeqCst);
    let v = f();
    if GP_COUNT.load(Ordering::SeqCst) == before {
        Ok(v)
    } else {
        Err(GP_ERROR.load(Ordering::SeqCst))
    }
}

fn rdmsr(msr: u32) -> Result<u64, u64> {
    guarded(2, || {
        let (lo, hi): (u32, u32);
        // SAFETY: rdmsr faults in ring 3; the hypervisor emulates it or the #GP handler skips
        // it (eax/edx then keep their zero inputs). Nothing else is touched.
        unsafe {
            asm!("rdmsr", in("ecx") msr, inout("eax") 0u32 => lo, inout("edx") 0u32 => hi, options(nostack))
        };
        (u64::from(hi) << 32) | u64::from(lo)
    })
}

fn wrmsr(msr: u32, val: u64) -> Result<(), u64> {
    guarded(2, || {
        // SAFETY: as for `rdmsr`; the MSRs written are the vCPU's own virtual state.
        unsafe {
            asm!("wrmsr", in("ecx") msr, in("eax") val as u32, in("edx") (val >> 32) as u32, options(nostack))
        };
    })
}

/// The TSC_AUX `rdtscp` returns in `%ecx`.
fn rdtscp_aux() -> u64 {
    let aux: u32;
    // SAFETY: reads the TSC and TSC_AUX; no other effect.
    unsafe { asm!("rdtscp", out("eax") _, out("edx") _, out("ecx") aux, options(nostack, nomem)) };
    u64::from(aux)
}

fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: emulated for PV kernels; no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nostack)) };
    v
}

fn write_cr0(v: u64) -> Result<(), u64> {
    // `mov %rax, %cr0` is 3 bytes.
    guarded(3, || {
        // SAFETY: emulated for PV kernels (only TS may change) or #GP, which is skipped.
        unsafe { asm!("mov cr0, rax", in("rax") v, options(nostack)) };
    })
}

pub fn run() {
    let mut r = Results::new("privop-emul");
    let old = traps::set_handler(13, Some(gp_skip));

    // Segment bases: written and read back; a non-canonical one is #GP(0).
    let fs0 = rdmsr(MSR_FS_BASE).unwrap_or(0);
    r.is("msr.fs_base.write.accepted", wrmsr(MSR_FS_BASE, 0x1234_5000).is_ok());
    r.eq("msr.fs_base.read", rdmsr(MSR_FS_BASE).unwrap_or(u64::MAX), 0x1234_5000);
    r.eq("msr.fs_base.noncanonical", wrmsr(MSR_FS_BASE, 1 << 47).err().unwrap_or(u64::MAX), 0);
    let _ = wrmsr(MSR_FS_BASE, fs0);
    let sg0 = rdmsr(MSR_SHADOW_GS_BASE).unwrap_or(0);
    r.is("msr.shadow_gs.write.accepted", wrmsr(MSR_SHADOW_GS_BASE, 0x7777_0000).is_ok());
    r.eq("msr.shadow_gs.read", rdmsr(MSR_SHADOW_GS_BASE).unwrap_or(u64::MAX), 0x7777_0000);
    let _ = wrmsr(MSR_SHADOW_GS_BASE, sg0);
    // EFER and PAT: Xen's values; EFER takes its own value back (anything else is #GP(0)), PAT
    // refuses every write.
    r.eq("msr.efer.read", rdmsr(MSR_EFER).unwrap_or(u64::MAX), GUEST_EFER);
    r.is("msr.efer.write_same.accepted", wrmsr(MSR_EFER, GUEST_EFER).is_ok());
    r.eq("msr.efer.write_other", wrmsr(MSR_EFER, GUEST_EFER & !(1 << 11)).err().unwrap_or(u64::MAX), 0);
    r.eq("msr.pat.read", rdmsr(MSR_PAT).unwrap_or(u64::MAX), XEN_MSR_PAT);
    r.is("msr.pat.write_same.refused", wrmsr(MSR_PAT, XEN_MSR_PAT).is_err());
    // The APIC base Linux reads; MISC_ENABLE as Xen adjusts the host's (a write is ignored);
    // the TSC.
    r.eq("msr.apic_base.read", rdmsr(MSR_APIC_BASE).unwrap_or(u64::MAX), GUEST_APIC_BASE);
    let misc = rdmsr(MSR_MISC_ENABLE).unwrap_or(u64::MAX);
    r.eq("msr.misc_enable.read", misc & (MISC_ENABLE_SET | MISC_ENABLE_CLEAR), MISC_ENABLE_SET);
    r.is("msr.misc_enable.write_other.accepted", wrmsr(MSR_MISC_ENABLE, misc ^ 1).is_ok());
    r.eq("msr.misc_enable.unchanged", rdmsr(MSR_MISC_ENABLE).unwrap_or(u64::MAX), misc);
    r.is("msr.tsc.read", rdmsr(MSR_TSC).is_ok_and(|t| t != 0));
    // TSC_AUX: what rdtscp and rdpid read, 32 bits.
    r.eq("msr.tsc_aux.read", rdmsr(MSR_TSC_AUX).unwrap_or(u64::MAX), 0);
    r.is("msr.tsc_aux.write.accepted", wrmsr(MSR_TSC_AUX, 0x1234).is_ok());
    r.eq("msr.tsc_aux.readback", rdmsr(MSR_TSC_AUX).unwrap_or(u64::MAX), 0x1234);
    r.eq("rdtscp.aux", rdtscp_aux(), 0x1234);
    r.eq("msr.tsc_aux.write_wide", wrmsr(MSR_TSC_AUX, 1 << 32).err().unwrap_or(u64::MAX), 0);
    let _ = wrmsr(MSR_TSC_AUX, 0);
    // Refused: the MTRRs (no MTRR in a PV guest's CPUID), unknown MSRs.
    r.eq("msr.mtrrcap.gp", rdmsr(MSR_MTRRCAP).err().unwrap_or(u64::MAX), 0);
    r.eq("msr.unknown.gp", rdmsr(0x1234).err().unwrap_or(u64::MAX), 0);

    // CR0: TS follows fpu_taskswitch, clts and mov; any other change is #GP(0).
    r.eq("cr0.read", read_cr0(), GUEST_CR0);
    let _ = hypercall::hypercall5(hypercall_abi::hypercall::nr::FPU_TASKSWITCH, 1, 0, 0, 0, 0);
    r.eq("cr0.ts_after_fpu_taskswitch", read_cr0() & CR0_TS, CR0_TS);
    // SAFETY: clts faults in ring 3 and is emulated (clears the virtual TS).
    unsafe { asm!("clts", options(nostack)) };
    r.eq("cr0.ts_after_clts", read_cr0() & CR0_TS, 0);
    r.is("cr0.write_ts.accepted", write_cr0(GUEST_CR0 | CR0_TS).is_ok());
    r.eq("cr0.ts_after_mov", read_cr0() & CR0_TS, CR0_TS);
    r.is("cr0.write_ts_clear.accepted", write_cr0(GUEST_CR0).is_ok());
    r.eq("cr0.write_wp_gp", write_cr0(GUEST_CR0 & !CR0_WP).err().unwrap_or(u64::MAX), 0);
    r.eq("cr0.unchanged_after_gp", read_cr0(), GUEST_CR0);

    // CR2 is the vCPU's fault address; CR3 the kernel base table (a same-value write keeps it).
    let cr2: u64;
    // SAFETY: emulated for PV kernels: writes and reads the vCPU's virtual CR2.
    unsafe {
        asm!("mov cr2, {}", in(reg) 0xdead_b000u64, options(nostack));
        asm!("mov {}, cr2", out(reg) cr2, options(nostack));
    }
    r.eq("cr2.roundtrip", cr2, 0xdead_b000);
    let cr3: u64;
    // SAFETY: emulated: reads the kernel base table's machine address.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nostack)) };
    let l4 = mm::info().map_or(0, |i| i.l4.0 << 12);
    r.is("cr3.is_the_base_table", cr3 == l4);
    let w = guarded(3, || {
        // SAFETY: the same base table again: emulated as new_guest_cr3 of the current L4.
        unsafe { asm!("mov cr3, {}", in(reg) cr3, options(nostack)) };
    });
    r.is("cr3.write_same.accepted", w.is_ok());

    // wbinvd: accepted and ignored.
    let w = guarded(2, || {
        // SAFETY: emulated as a no-op for a PV kernel.
        unsafe { asm!("wbinvd", options(nostack)) };
    });
    r.is("wbinvd.accepted", w.is_ok());
    r.eq("gp.total", GP_COUNT.load(Ordering::SeqCst), 7);

    traps::set_handler(13, old);

    // With no #GP handler at all (a kernel's first instructions), an MSR the CPU has reads as
    // 0 instead of faulting (Xen 4.17's "faking RDMSR"): QEMU has MTRRcap.
    if traps::clear_table().is_ok() {
        let (lo, hi): (u32, u32);
        // SAFETY: emulated: either read as 0 or the domain is crashed (which fails the test).
        unsafe { asm!("rdmsr", in("ecx") MSR_MTRRCAP, out("eax") lo, out("edx") hi, options(nostack)) };
        let _ = traps::init();
        r.eq("msr.mtrrcap.no_gp_handler", (u64::from(hi) << 32) | u64::from(lo), 0);
    } else {
        r.fail("cannot clear the trap table".into());
    }
    r.report();
}
