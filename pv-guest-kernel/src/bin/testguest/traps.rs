//! Trap scenarios: a #PF's `cr2` and error code as Xen reports them (`trap-pf`), #UD at the
//! right rip and CPUID behind Xen's forced-emulation prefix (`trap-ud`), and a stack overflow
//! into the guard page (`stack-overflow`). The fault helpers serve other scenarios too.

use super::badargs::ro_scratch_page;
use super::{report, results};
use alloc::vec::Vec;
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use pv_guest_kernel::traps::{self, TrapFrame};
use pv_guest_kernel::{events, mm, println};

/// Where the instruction under test is, and where to resume after it.
pub(crate) static FAULT_RIP: AtomicU64 = AtomicU64::new(0);
pub(crate) static RESUME_RIP: AtomicU64 = AtomicU64::new(0);

static PF_COUNT: AtomicU64 = AtomicU64::new(0);
static PF_CR2: AtomicU64 = AtomicU64::new(0);
static PF_ERR: AtomicU64 = AtomicU64::new(0);
static PF_RIP: AtomicU64 = AtomicU64::new(0);
static PF_CS: AtomicU64 = AtomicU64::new(0);

/// Skips the instruction under test, or treats anything else as fatal.
pub(crate) fn skip_or_die(f: &mut TrapFrame) {
    if f.rip == FAULT_RIP.load(Ordering::SeqCst) {
        f.rip = RESUME_RIP.load(Ordering::SeqCst);
    } else {
        traps::fatal(f);
    }
}

pub fn pf_handler(f: &mut TrapFrame) {
    PF_COUNT.fetch_add(1, Ordering::SeqCst);
    PF_CR2.store(traps::cr2(), Ordering::SeqCst);
    PF_ERR.store(f.error_code, Ordering::SeqCst);
    PF_RIP.store(f.rip, Ordering::SeqCst);
    PF_CS.store(f.cs, Ordering::SeqCst);
    skip_or_die(f);
}

/// Runs one instruction whose address and successor are recorded for the handler
/// ([`skip_or_die`] resumes after it). Registers survive a fault: the handler returns through
/// `iret`. Extra operands of the instruction follow it.
macro_rules! recoverable {
    ($insn:literal $(, $($operands:tt)+)?) => {
        // SAFETY: the instruction either completes on what the caller chose, or faults and the
        // registered handler resumes at label 2; the recorded addresses are plain atomics.
        unsafe {
            core::arch::asm!(
                "lea 2f(%rip), {tmp}",
                "mov {tmp}, ({resume})",
                "lea 1f(%rip), {tmp}",
                "mov {tmp}, ({fault})",
                concat!("1: ", $insn),
                "2:",
                tmp = out(reg) _,
                resume = in(reg) $crate::traps::RESUME_RIP.as_ptr(),
                fault = in(reg) $crate::traps::FAULT_RIP.as_ptr(),
                $($($operands)+,)?
                options(att_syntax, nostack),
            )
        }
    };
}

pub(crate) use recoverable;

/// Writes to `addr` with one recoverable instruction.
fn write_and_recover(addr: u64) {
    recoverable!("movq $0x5a, ({addr})", addr = in(reg) addr);
}

/// Bit of a #PF error code: the access was a write.
pub const PFEC_WRITE: u64 = 1 << 1;
/// Bit of a #PF error code: the page was present (a protection fault).
pub const PFEC_PRESENT: u64 = 1 << 0;
/// Bit of a #PF error code: the access came from user mode (Xen clears it for the guest kernel).
pub const PFEC_USER: u64 = 1 << 2;

/// Faults on a write to `addr` and checks what the handler saw; `ignore` masks error-code
/// bits the caller does not test.
pub fn expect_pf(fails: &mut Vec<alloc::string::String>, what: &str, addr: u64, want_err: u64, ignore: u64) {
    let before = PF_COUNT.load(Ordering::SeqCst);
    write_and_recover(addr);
    let (n, cr2, err) = (
        PF_COUNT.load(Ordering::SeqCst) - before,
        PF_CR2.load(Ordering::SeqCst),
        PF_ERR.load(Ordering::SeqCst),
    );
    let (rip, cs) = (PF_RIP.load(Ordering::SeqCst), PF_CS.load(Ordering::SeqCst));
    println!("trap-pf: {what}: {n} fault(s), cr2 {cr2:#x}, error {err:#x}, rip {rip:#x}, cs {cs:#x}");
    let at = |check: &str| alloc::format!("{what}.{check}");
    results::emit(&at("faults"), results::Value::Int(n as i64));
    results::yes(&at("cr2-is-the-address"), cr2 == addr);
    results::emit(&at("error-code"), results::Value::Hex(err));
    results::yes(&at("rip-is-the-insn"), rip == FAULT_RIP.load(Ordering::SeqCst));
    results::emit(&at("cs"), results::Value::Hex(cs & 0xffff));
    results::emit(&at("saved-upcall-mask"), results::Value::Hex((cs >> 32) & 0xff));
    check!(fails, n == 1, "{what}: {n} faults instead of 1");
    check!(fails, cr2 == addr, "{what}: cr2 {cr2:#x} instead of {addr:#x}");
    check!(
        fails,
        err & !ignore == want_err,
        "{what}: error code {err:#x} instead of {want_err:#x}{}",
        if err & PFEC_USER != 0 { " (user bit set for a guest-kernel access)" } else { "" }
    );
    check!(
        fails,
        rip == FAULT_RIP.load(Ordering::SeqCst),
        "{what}: rip {rip:#x} is not the faulting instruction"
    );
    check!(fails, cs & 0xffff == 0xe030, "{what}: cs {:#x} is not the kernel's with RPL 0", cs & 0xffff);
    check!(
        fails,
        (cs >> 32) & 0xff == 0,
        "{what}: saved upcall mask {} (upcalls were enabled)",
        (cs >> 32) & 0xff
    );
}

pub fn trap_pf() {
    let mut fails = Vec::new();
    traps::set_handler(14, Some(pf_handler));
    let masked_before = events::upcalls_masked();
    // Not present, write, from the guest kernel: Xen reports exactly W.
    expect_pf(&mut fails, "write to unmapped 0x1000", 0x1000, PFEC_WRITE, 0);
    // A page beyond the direct map.
    if let Some(i) = mm::info() {
        let end = i.virt_base + i.mapped_end.0 * 4096 + 0x18;
        expect_pf(&mut fails, "write past the direct map", end, PFEC_WRITE, 0);
    }
    // Present but read-only: P|W.
    match ro_scratch_page() {
        Some(va) => {
            expect_pf(&mut fails, "write to a read-only page", va + 0x10, PFEC_WRITE | PFEC_PRESENT, 0)
        }
        None => println!("trap-pf: no read-only page available; protection case skipped"),
    }
    results::yes("iret-restored-upcall-mask", events::upcalls_masked() == masked_before);
    check!(fails, events::upcalls_masked() == masked_before, "iret did not restore the upcall mask");
    traps::set_handler(14, None);
    report("trap-pf", &fails, format_args!("cr2 and error codes as Xen reports them"));
}

pub static UD_COUNT: AtomicU64 = AtomicU64::new(0);
static UD_RIP: AtomicU64 = AtomicU64::new(0);

pub fn ud_handler(f: &mut TrapFrame) {
    UD_COUNT.fetch_add(1, Ordering::SeqCst);
    UD_RIP.store(f.rip, Ordering::SeqCst);
    skip_or_die(f);
}

pub fn execute_ud2() {
    recoverable!("ud2");
}

/// CPUID through Xen's forced-emulation prefix (`ud2; .ascii "xen"; cpuid`).
fn forced_cpuid(leaf: u32) -> [u32; 4] {
    forced_cpuid_sub(leaf, 0)
}

/// [`forced_cpuid`] of `leaf`'s sub-leaf `subleaf`.
fn forced_cpuid_sub(leaf: u32, subleaf: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u64, u32, u32);
    // SAFETY: the prefix raises #UD, which the hypervisor decodes and emulates as CPUID;
    // rbx (reserved by LLVM) is swapped out and back around it.
    unsafe {
        asm!(
            "xchg {b}, %rbx",
            "ud2",
            ".ascii \"xen\"",
            "cpuid",
            "xchg {b}, %rbx",
            b = inout(reg) 0u64 => b,
            inout("eax") leaf => a,
            inout("ecx") subleaf => c,
            out("edx") d,
            options(att_syntax, nostack),
        );
    }
    [a, b as u32, c, d]
}

pub fn trap_ud() {
    let mut fails = Vec::new();
    traps::set_handler(6, Some(ud_handler));
    UD_COUNT.store(0, Ordering::SeqCst);
    execute_ud2();
    let (n, rip, want) =
        (UD_COUNT.load(Ordering::SeqCst), UD_RIP.load(Ordering::SeqCst), FAULT_RIP.load(Ordering::SeqCst));
    println!("trap-ud: ud2 at {want:#x}: {n} #UD, handler saw rip {rip:#x}");
    results::emit("ud2.count", results::Value::Int(n as i64));
    results::yes("ud2.rip-is-the-insn", rip == want);
    check!(fails, n == 1, "{n} #UD instead of 1");
    check!(fails, rip == want, "#UD rip {rip:#x} instead of {want:#x}");
    let r = forced_cpuid(0x4000_0000);
    let mut sig = [0u8; 12];
    for (i, w) in r[1..].iter().enumerate() {
        sig[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    let sig = core::str::from_utf8(&sig).unwrap_or("<not UTF-8>");
    let after = UD_COUNT.load(Ordering::SeqCst);
    println!("trap-ud: forced cpuid 0x40000000: eax {:#x}, signature \"{sig}\"", r[0]);
    results::emit("forced-cpuid.0x40000000.signature", results::Value::Word(sig));
    results::emit("forced-cpuid.0x40000000.eax", results::Value::Hex(u64::from(r[0])));
    results::yes("forced-cpuid.reached-ud-handler", after != n);
    check!(fails, sig == "XenVMMXenVMM", "forced cpuid signature \"{sig}\"");
    check!(
        fails,
        r[0] == XEN_LAST_LEAF,
        "forced cpuid max leaf {:#x}, Xen 4.17's is {XEN_LAST_LEAF:#x}",
        r[0]
    );
    check!(fails, after == n, "the forced-emulation prefix reached the #UD handler");
    hypervisor_leaves(&mut fails);
    traps::set_handler(6, None);
    report("trap-ud", &fails, format_args!("#UD at the right rip, forced cpuid \"{sig}\""));
}

/// Xen 4.17's last hypervisor leaf for a PV guest: 0x40000005 (PV features).
const XEN_LAST_LEAF: u32 = 0x4000_0005;

/// Xen's hypervisor leaves 2-5 as a PV guest sees them (Xen's `cpuid_hypervisor_leaves`),
/// each word reported; words that depend on the machine (TSC frequency, scale) as whether they
/// are plausible, the rest as values.
fn hypervisor_leaves(fails: &mut Vec<alloc::string::String>) {
    let hex = |v: u32| results::Value::Hex(u64::from(v));
    let l2 = forced_cpuid(0x4000_0002);
    for (i, w) in ["eax", "ebx", "ecx", "edx"].iter().enumerate() {
        results::emit(&alloc::format!("forced-cpuid.0x40000002.{w}"), hex(l2[i]));
    }
    // eax: one hypercall page; ebx: the MSR that places it; ecx: MMU_PT_UPDATE_PRESERVE_AD.
    check!(fails, l2 == [1, 0x4000_0000, 1, 0], "leaf 0x40000002 {l2:x?}, Xen gives [1, 40000000, 1, 0]");
    // Time leaf. Sub-leaf 2: the host's TSC kHz (Xen's own calibration, so only whether
    // there is one). Sub-leaf 0: eax's flags, ebx the TSC mode, ecx the guest's TSC kHz (the
    // host's when the guest runs on the real TSC), edx the incarnation. Sub-leaf 1: the TSC
    // offset and the scale from TSC ticks to ns (reported: does it turn a millisecond of the
    // host's ticks into 1 ms?).
    let khz = forced_cpuid_sub(0x4000_0003, 2)[0];
    results::yes("forced-cpuid.0x40000003.2.eax-nonzero", khz != 0);
    let t0 = forced_cpuid_sub(0x4000_0003, 0);
    results::emit("forced-cpuid.0x40000003.0.eax", hex(t0[0]));
    results::emit("forced-cpuid.0x40000003.0.ebx", hex(t0[1]));
    results::yes("forced-cpuid.0x40000003.0.ecx-is-host-khz", t0[2] == khz);
    results::emit("forced-cpuid.0x40000003.0.edx", hex(t0[3]));
    let t1 = forced_cpuid_sub(0x4000_0003, 1);
    results::emit("forced-cpuid.0x40000003.1.eax", hex(t1[0]));
    results::emit("forced-cpuid.0x40000003.1.ebx", hex(t1[1]));
    let ms = pv_guest_kernel::time::scale_delta(u64::from(khz), t1[2], t1[3] as i8);
    results::yes("forced-cpuid.0x40000003.1.scale-is-host-khz", ms.abs_diff(1_000_000) < 1_000);
    results::emit("forced-cpuid.0x40000003.3.eax", hex(forced_cpuid_sub(0x4000_0003, 3)[0]));
    // HVM features: nothing for a PV guest.
    let l4 = forced_cpuid(0x4000_0004);
    results::emit("forced-cpuid.0x40000004.eax", hex(l4[0]));
    check!(fails, l4 == [0; 4], "leaf 0x40000004 {l4:x?}: a PV guest gets zeros");
    // PV features: ebx the machine address width.
    let l5 = forced_cpuid(0x4000_0005);
    for (i, w) in ["eax", "ebx", "ecx", "edx"].iter().enumerate() {
        results::emit(&alloc::format!("forced-cpuid.0x40000005.{w}"), hex(l5[i]));
    }
    check!(fails, (20..=52).contains(&l5[1]), "leaf 0x40000005 ebx {} is no address width", l5[1]);
    let past = forced_cpuid(XEN_LAST_LEAF + 1);
    results::emit("forced-cpuid.0x40000006.eax", hex(past[0]));
    check!(fails, past == [0; 4], "leaf 0x40000006 {past:x?}: past the last leaf, zeros");
}

/// Recurses until the boot stack runs into its guard page: the domain must be crashed with a
/// reason, not overwrite whatever lies below its stack.
pub fn stack_overflow() {
    fn deeper(depth: u64) -> u64 {
        let frame = core::hint::black_box([depth; 64]);
        if core::hint::black_box(true) {
            return deeper(depth + 1).wrapping_add(frame[7]);
        }
        depth
    }
    println!("TEST stack-overflow RUNNING recursing into the guard page");
    let d = deeper(0);
    println!("TEST stack-overflow FAIL came back from depth {d}");
}
