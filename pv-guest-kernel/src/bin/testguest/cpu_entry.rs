//! Entry and exit paths a hostile guest can reach with nothing but instructions (issue 9,
//! findings 2 and 3), each checked against what Xen 4.17 delivers:
//!
//! * `syscall-compat`: `syscall` from 32-bit code (selector 0xe023), in guest kernel mode and in
//!   guest user mode, both entered with `iret`. Xen bounces it to the syscall32 callback, or
//!   without one raises #UD at the `syscall`; never the 64-bit syscall callback. A page of
//!   `ud2` is mapped at virtual address 0 throughout: a hypervisor whose CSTAR is 0 would run
//!   it in ring 0 (or fault there), so surviving this scenario is part of the check.
//! * `entry-flags`: exceptions taken with RFLAGS.DF set (`std`), which ring 3 may do. The
//!   hypervisor's own code (its `rep movs` copies) must run with DF clear, and the guest must
//!   get its DF back untouched: a #UD bounced with Xen's frame, a forced-emulation `cpuid`
//!   emulated; a timer interrupt taken while the guest spins with DF set, delivered as an
//!   event upcall.
//! * `noncanonical-rip`: instructions ending at 0x7fff_ffff_ffff whose next RIP,
//!   0x8000_0000_0000, is not canonical — emulated ones (`rdmsr`, `mov %cr0`, the
//!   forced-emulation `cpuid`) and a `syscall` on the fast and the general hypercall path —
//!   and `iret` to a non-canonical RIP. Xen completes each and the guest gets #GP(0) with that
//!   RIP in the frame, never a fault in ring 0. `iret` to the hypervisor's hole is a #PF when
//!   the guest fetches there, as on Xen.

use super::checks::Results;
use super::landing::{self, Landed};
use super::user_space::{UserSpace, USER_CODE, USER_STACK_TOP};
use alloc::format;
use core::cell::UnsafeCell;
use hypercall_abi::callback::{callback_type, callbackf, op as cbop, CallbackRegister};
use hypercall_abi::hypercall::nr;
use hypercall_abi::version;
use hypercall_abi::xen::{FLAT_KERNEL_CS, FLAT_RING3_CS32, FLAT_RING3_SS64};
use pv_guest_kernel::mm::{self, pt};
use pv_guest_kernel::{events, hypercall, time, traps};

/// What the 32-bit program leaves in %eax before its `syscall`.
const MARK32: u64 = 0x3232_0032;
/// Where the guest kernel maps the 32-bit program (below 4 GiB, reachable from 32-bit code).
const CODE32_VA: u64 = 0x50_0000;
/// The stack of the 32-bit program in kernel mode (a page above the code).
const STACK32_TOP: u64 = CODE32_VA + 0x2000 - 64;
/// Offsets in the 32-bit program: the `syscall`, and the instruction after it.
const OFF_SYSCALL: u64 = 5;
const OFF_AFTER: u64 = 7;

const UD: u8 = 6;
const GP: u8 = 13;
const PF: u8 = 14;
/// RFLAGS with only the always-one bit: interrupts (events) masked across the probe.
const RFLAGS_EVENTS_MASKED: u64 = 0x2;
const RFLAGS_IF: u64 = 1 << 9;
const KERNEL_CS_RPL0: u64 = FLAT_KERNEL_CS as u64 & !3;

core::arch::global_asm!(
    r#"
    /* __tg_std_ud2(_): sets DF and raises #UD (the probe never returns). */
    .pushsection .text.tg_flags, "ax"
    .globl __tg_std_ud2
__tg_std_ud2:
    std
    .globl __tg_std_ud2_fault
__tg_std_ud2_fault:
    ud2
    .popsection

    .pushsection .text.tg_code32, "ax"
    .code32
    .globl __tg_code32_start
__tg_code32_start:
    mov ${mark}, %eax
    syscall
    ud2
    .globl __tg_code32_end
__tg_code32_end:
    .code64
    .popsection
    "#,
    mark = const MARK32,
    options(att_syntax)
);

extern "C" {
    fn __tg_std_ud2(args: *const u64);
    fn __tg_std_ud2_fault();
    static __tg_code32_start: u8;
    static __tg_code32_end: u8;
}

fn code32() -> &'static [u8] {
    let (s, e) = (core::ptr::addr_of!(__tg_code32_start), core::ptr::addr_of!(__tg_code32_end));
    // SAFETY: the labels bracket the program's bytes in our mapped .text.
    unsafe { core::slice::from_raw_parts(s, e as usize - s as usize) }
}

fn register(type_: u16, address: u64) -> i64 {
    let cb = CallbackRegister { type_, flags: callbackf::MASK_EVENTS, _pad: 0, address };
    hypercall::callback_op(cbop::REGISTER, &cb)
}

/// Maps a fresh page holding `bytes` at `va` in the kernel's tables (user, executable).
fn map_code(va: u64, bytes: &[u8], fill: u8) -> Result<mm::Page, alloc::string::String> {
    let p = mm::alloc_page().map_err(|e| format!("alloc_page: {e}"))?;
    // SAFETY: the page was just allocated to us and is writable in the direct map.
    unsafe {
        core::ptr::write_bytes(p.va as *mut u8, fill, 4096);
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), (p.va + (va & 0xfff)) as *mut u8, bytes.len());
    }
    mm::map_page(pt::page_base(va), p.mfn, pt::PAGE_KERNEL).map_err(|e| format!("map_page({va:#x}): {e}"))?;
    Ok(p)
}

fn unmap(va: u64, p: mm::Page) {
    let _ = mm::unmap_page(pt::page_base(va));
    let _ = mm::free_page(p.pfn);
}

/// Records the checks common to every landing: which stub, RIP, CS (and the error code).
fn expect(r: &mut Results, case: &str, got: Option<Landed>, id: u64, rip: u64, cs: u64) -> Option<Landed> {
    let Some(l) = got else {
        r.fail(format!("{case}: the probe returned instead of landing"));
        return None;
    };
    if l.id != id {
        pv_guest_kernel::println!(
            "{case}: landed {:#x} at rip {:#x} cs {:#x}, error code {:?}, cr2 {:#x}",
            l.id,
            l.rip(),
            l.cs(),
            l.error_code(),
            traps::cr2()
        );
    }
    r.eq(&format!("{case}.landed"), l.id, id);
    r.eq(&format!("{case}.rip"), l.rip(), rip);
    r.eq(&format!("{case}.cs"), l.cs(), cs);
    Some(l)
}

// ---------------------------------------------------------------------------------------------
// syscall-compat

pub fn syscall_compat() {
    let mut r = Results::new("syscall-compat");
    let ud2_page = [0x0f, 0x0b];
    let zero_page = match map_code(0, &ud2_page, 0x0b) {
        Ok(p) => p,
        Err(e) => return fail_early(r, e),
    };
    let code_page = match map_code(CODE32_VA, code32(), 0xcc) {
        Ok(p) => p,
        Err(e) => {
            unmap(0, zero_page);
            return fail_early(r, e);
        }
    };
    let stack_page = match map_code(STACK32_TOP, &[], 0) {
        Ok(p) => p,
        Err(e) => {
            unmap(CODE32_VA, code_page);
            unmap(0, zero_page);
            return fail_early(r, e);
        }
    };
    let us = match UserSpace::build(code32()) {
        Ok(us) => Some(us),
        Err(e) => {
            r.fail(format!("user space: {e}"));
            None
        }
    };
    if let Err(e) = landing::install_vectors(&[(UD, 0), (GP, 0), (PF, 0)]) {
        r.fail(format!("set_trap_table: {e}"));
    }
    // A 64-bit syscall callback is registered throughout: Xen never falls back to it.
    r.eq("register.syscall", register(callback_type::SYSCALL, landing::syscall_stub()) as u64, 0);
    r.eq("register.syscall32.none", register(callback_type::SYSCALL32, 0) as u64, 0);

    let guard = events::mask_upcalls();
    // Into 32-bit code in kernel mode with the iret hypercall (code selector with RPL 0). Not
    // a far return: under QEMU 7.2's TCG with SMAP on, a ring-3 `lret` reads its stack as a
    // supervisor access and faults (under Xen as here), see ARCHITECTURE.md.
    // 32-bit code has a 32-bit stack pointer: the kernel-mode bounce frame goes below it.
    let kernel = [
        CODE32_VA,
        u64::from(FLAT_RING3_CS32) & !3,
        RFLAGS_EVENTS_MASKED,
        STACK32_TOP,
        u64::from(FLAT_RING3_SS64),
    ];
    let user = [
        USER_CODE,
        u64::from(FLAT_RING3_CS32),
        RFLAGS_EVENTS_MASKED,
        USER_STACK_TOP,
        u64::from(FLAT_RING3_SS64),
    ];
    let kernel_cs32 = u64::from(FLAT_RING3_CS32) & !3;
    let user_cs32 = u64::from(FLAT_RING3_CS32);

    // Kernel mode, no syscall32 callback: #UD at the syscall, kernel context (RPL 0).
    // SAFETY: the iret hypercall into our 32-bit program, whose syscall lands in a stub.
    let l = unsafe { landing::catch(landing::__tg_iret_to, &kernel) };
    let want_id = landing::VECTOR_BASE + u64::from(UD);
    if let Some(l) = expect(&mut r, "kernel.nocb", l, want_id, CODE32_VA + OFF_SYSCALL, kernel_cs32) {
        r.eq("kernel.nocb.rax", l.rax(), MARK32);
        r.eq("kernel.nocb.rsp", l.rsp(), STACK32_TOP);
    }
    if us.is_some() {
        // SAFETY: the iret hypercall into the 32-bit program in the user address space.
        let l = unsafe { landing::catch(landing::__tg_iret_to, &user) };
        if let Some(l) = expect(&mut r, "user.nocb", l, want_id, USER_CODE + OFF_SYSCALL, user_cs32) {
            r.eq("user.nocb.rsp", l.rsp(), USER_STACK_TOP);
            r.eq("user.nocb.ss", l.ss(), u64::from(FLAT_RING3_SS64));
        }
    }

    // With a syscall32 callback: bounced there, RCX = RIP = the next instruction.
    r.eq("register.syscall32", register(callback_type::SYSCALL32, landing::syscall32_stub()) as u64, 0);
    // SAFETY: as above.
    let l = unsafe { landing::catch(landing::__tg_iret_to, &kernel) };
    let want_id = landing::ID_SYSCALL32;
    if let Some(l) = expect(&mut r, "kernel.cb32", l, want_id, CODE32_VA + OFF_AFTER, kernel_cs32) {
        r.eq("kernel.cb32.rcx", l.rcx(), CODE32_VA + OFF_AFTER);
        r.eq("kernel.cb32.rax", l.rax(), MARK32);
        r.is("kernel.cb32.events_masked", events::upcalls_masked());
    }
    if us.is_some() {
        // SAFETY: as above.
        let l = unsafe { landing::catch(landing::__tg_iret_to, &user) };
        if let Some(l) = expect(&mut r, "user.cb32", l, want_id, USER_CODE + OFF_AFTER, user_cs32) {
            r.eq("user.cb32.rcx", l.rcx(), USER_CODE + OFF_AFTER);
            r.eq("user.cb32.rsp", l.rsp(), USER_STACK_TOP);
            r.eq("user.cb32.rax", l.rax(), MARK32);
            // R11 holds the real RFLAGS (IF is always on in a guest); the frame's RFLAGS.IF
            // is the saved upcall mask's inverse (masked by the iret above).
            r.eq("user.cb32.r11", l.r11(), RFLAGS_EVENTS_MASKED | RFLAGS_IF);
            r.eq("user.cb32.rflags", l.rflags(), RFLAGS_EVENTS_MASKED);
        }
    }
    drop(guard);

    r.eq("unregister.syscall32", register(callback_type::SYSCALL32, 0) as u64, 0);
    if let Some(us) = us {
        for f in us.teardown() {
            r.fail(f);
        }
    }
    if let Err(e) = landing::restore_vectors() {
        r.fail(format!("restoring the trap table: {e}"));
    }
    unmap(STACK32_TOP, stack_page);
    unmap(CODE32_VA, code_page);
    unmap(0, zero_page);
    r.is("hypercalls.work", hypercall::xen_version(version::op::VERSION, 0) > 0);
    r.report();
}

fn fail_early(mut r: Results, e: alloc::string::String) {
    r.fail(e);
    r.report();
}

// ---------------------------------------------------------------------------------------------
// entry-flags

const RFLAGS_DF: u64 = 1 << 10;

/// The forced-emulation `cpuid` of `leaf` executed with DF set; returns (ebx, RFLAGS after it).
fn forced_cpuid_with_df(leaf: u32) -> (u32, u64) {
    let (b, flags): (u64, u64);
    // SAFETY: the prefix raises #UD, which the hypervisor emulates as CPUID; DF is set only
    // around it (and cleared before any compiler-generated code runs); rbx (reserved by LLVM)
    // is swapped out and back.
    unsafe {
        core::arch::asm!(
            "xchg {b}, %rbx",
            "std",
            "ud2",
            ".ascii \"xen\"",
            "cpuid",
            "pushf",
            "pop %rdi",
            "cld",
            "xchg {b}, %rbx",
            b = inout(reg) 0u64 => b,
            // Not a `reg` operand: the allocator may pick %rbx for one, and `pop` would then
            // overwrite the CPUID result before it is swapped out.
            out("rdi") flags,
            inout("eax") leaf => _,
            inout("ecx") 0u32 => _,
            out("edx") _,
            options(att_syntax),
        );
    }
    (b as u32, flags)
}

/// Spins with DF set across a timer interrupt, which the hypervisor turns into an event upcall
/// (the machine stopped this way once: a guest's `memmove` was interrupted between its `std` and
/// `cld`, and the hypervisor's frame copies ran backwards over its heap). True if the timer
/// event arrived during the spin, and the RFLAGS the spin ended with.
fn timer_interrupt_with_df() -> (bool, u64) {
    const SPIN_MS: u64 = 50;
    // SAFETY: rdtsc is allowed in ring 3 (CR4.TSD is clear for PV guests, as on Xen).
    let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
    // TSC ticks per millisecond, against the PV clock.
    let (t0, c0) = (time::now_ns(), tsc());
    while time::now_ns() < t0 + 1_000_000 {}
    let per_ms = (tsc() - c0) * 1_000_000 / (time::now_ns() - t0).max(1);
    let before = time::timer_events();
    let _ = hypercall::set_timer_op(time::now_ns() + 2_000_000);
    let deadline = tsc() + SPIN_MS * per_ms;
    let flags: u64;
    // SAFETY: DF is set only while this loop runs (no compiler-generated code in between);
    // events are unmasked, so the timer's upcall interrupts the loop and returns to it.
    unsafe {
        core::arch::asm!(
            "std",
            "2:",
            "rdtsc",
            "shl $32, %rdx",
            "or %rdx, %rax",
            "cmp {deadline}, %rax",
            "jb 2b",
            "pushf",
            "pop {f}",
            "cld",
            deadline = in(reg) deadline,
            f = out(reg) flags,
            out("rax") _,
            out("rdx") _,
            options(att_syntax),
        );
    }
    (time::timer_events() > before, flags)
}

pub fn entry_flags() {
    let mut r = Results::new("entry-flags");
    if let Err(e) = landing::install_vectors(&[(UD, 0), (GP, 0), (PF, 0)]) {
        r.fail(format!("set_trap_table: {e}"));
    }
    let guard = events::mask_upcalls();
    // SAFETY: the probe sets DF and raises #UD, which lands in a stub (that clears DF).
    let l = unsafe { landing::catch(__tg_std_ud2, &[]) };
    let ud = landing::VECTOR_BASE + u64::from(UD);
    if let Some(l) = expect(&mut r, "ud.df", l, ud, __tg_std_ud2_fault as *const () as u64, KERNEL_CS_RPL0) {
        r.eq("ud.df.rflags.df", l.rflags() & RFLAGS_DF, RFLAGS_DF);
    }
    drop(guard);
    if let Err(e) = landing::restore_vectors() {
        r.fail(format!("restoring the trap table: {e}"));
    }
    let (ebx, flags) = forced_cpuid_with_df(0x4000_0000);
    r.eq("forced_cpuid.df.ebx", u64::from(ebx), u64::from(u32::from_le_bytes(*b"XenV")));
    r.eq("forced_cpuid.df.rflags.df", flags & RFLAGS_DF, RFLAGS_DF);
    let (timer, flags) = timer_interrupt_with_df();
    r.is("timer_irq.df.delivered", timer);
    r.eq("timer_irq.df.rflags.df", flags & RFLAGS_DF, RFLAGS_DF);
    r.is("hypercalls.work", hypercall::xen_version(version::op::VERSION, 0) > 0);
    r.report();
}

// ---------------------------------------------------------------------------------------------
// noncanonical-rip

/// The last page of the lower half.
const TOP_PAGE: u64 = 0x7fff_ffff_f000;
/// The address after it: the only non-canonical value an instruction's end can give.
const NONCANONICAL: u64 = 1 << 47;
const MSR_FS_BASE: u64 = 0xc000_0100;
/// Xen's text, in the hypervisor's hole.
const HYPERVISOR_TEXT: u64 = 0xffff_82d0_8020_0000;
/// #PF error code of an instruction fetch from a page that is not present, as a guest kernel
/// sees it (Xen clears the user bit for the guest kernel). Xen 4.17 reports the hole so: it is
/// unmapped while a PV guest runs, and microvisor shows it the same way.
const PFEC_NOT_PRESENT_FETCH: u64 = 0x10;

const STACK2_SIZE: usize = 8192;
#[repr(C, align(16))]
struct Stack2(UnsafeCell<[u8; STACK2_SIZE]>);
// SAFETY: only used as the stack of one probe at a time (bounce frames written by the
// hypervisor, read by the landing stub).
unsafe impl Sync for Stack2 {}
static STACK2: Stack2 = Stack2(UnsafeCell::new([0; STACK2_SIZE]));

fn stack2_top() -> u64 {
    (STACK2.0.get() as u64 + STACK2_SIZE as u64 - 256) & !15
}

/// The guest's view of its FS base and CR0, read the ordinary way (both are emulated).
fn fs_base_and_cr0() -> (u64, u64) {
    let (lo, hi, cr0): (u32, u32, u64);
    // SAFETY: rdmsr of FS_BASE and a read of CR0 fault in ring 3 and are emulated for PV kernels.
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") MSR_FS_BASE as u32, out("eax") lo, out("edx") hi,
            options(nomem, nostack));
        core::arch::asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack));
    }
    ((u64::from(hi) << 32) | u64::from(lo), cr0)
}

/// An instruction placed to end at 0x7fff_ffff_ffff, the registers it starts with (rax, rcx,
/// rdx, rsi, rdi, r10) and the rax / ebx it must leave.
struct Case {
    name: &'static str,
    bytes: &'static [u8],
    regs: [u64; 6],
    rax: Option<u64>,
    rbx: Option<u64>,
}

pub fn noncanonical_rip() {
    let mut r = Results::new("noncanonical-rip");
    let (fs_base, cr0) = fs_base_and_cr0();
    // Each probe first writes its instruction at the very end of the last lower-half page,
    // so that it ends at 0x7fff_ffff_ffff, then jumps there.
    let page = match map_code(TOP_PAGE, &[], 0xcc) {
        Ok(p) => p,
        Err(e) => return fail_early(r, e),
    };
    if let Err(e) = landing::install_vectors(&[(UD, 0), (GP, 0), (PF, 0)]) {
        r.fail(format!("set_trap_table: {e}"));
    }
    let put_tail = |bytes: &[u8]| {
        // SAFETY: our page, writable in the direct map; the tail is where the probe jumps.
        unsafe {
            core::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (page.va + 4096 - bytes.len() as u64) as *mut u8,
                bytes.len(),
            )
        };
        TOP_PAGE + 4096 - bytes.len() as u64
    };
    let gp = landing::VECTOR_BASE + u64::from(GP);
    let guard = events::mask_upcalls();

    let cases = [
        Case {
            name: "emulated.rdmsr",
            bytes: &[0x0f, 0x32],
            regs: [0, MSR_FS_BASE, 0, 0, 0, 0],
            rax: Some(fs_base & 0xffff_ffff),
            rbx: None,
        },
        Case {
            name: "emulated.mov_cr0",
            bytes: &[0x0f, 0x20, 0xc0],
            regs: [0; 6],
            rax: Some(cr0),
            rbx: None,
        },
        Case {
            name: "emulated.forced_cpuid",
            bytes: &[0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0xa2],
            regs: [0x4000_0000, 0, 0, 0, 0, 0],
            rax: None,
            rbx: Some(u64::from(u32::from_le_bytes(*b"XenV"))),
        },
        Case {
            name: "syscall.fast",
            bytes: &[0x0f, 0x05],
            regs: [nr::XEN_VERSION, 0, 0, 0, u64::from(version::op::VERSION), 0],
            rax: Some(hypercall::xen_version(version::op::VERSION, 0) as u64),
            rbx: None,
        },
        Case {
            name: "syscall.general",
            bytes: &[0x0f, 0x05],
            regs: [nr::XEN_VERSION, 0, 0, 0, u64::from(version::op::PAGESIZE), 0],
            rax: Some(4096),
            rbx: None,
        },
    ];
    for Case { name: case, bytes, regs, rax: want_rax, rbx: want_rbx } in cases {
        let at = put_tail(bytes);
        let args = [regs[0], regs[1], regs[2], regs[3], regs[4], regs[5], at];
        // SAFETY: a jump to the instruction at the page's end; what follows it is not
        // canonical, so control lands in a stub.
        let l = unsafe { landing::catch(landing::__tg_jump, &args) };
        if let Some(l) = expect(&mut r, case, l, gp, NONCANONICAL, KERNEL_CS_RPL0) {
            r.eq(&format!("{case}.error_code"), l.error_code().unwrap_or(u64::MAX), 0);
            if let Some(v) = want_rax {
                r.eq(&format!("{case}.rax"), l.rax(), v);
            }
            if let Some(v) = want_rbx {
                r.eq(&format!("{case}.rbx"), l.regs[1] & 0xffff_ffff, v);
            }
        }
    }

    // iret to a non-canonical RIP: #GP(0) with that RIP.
    let iret = [NONCANONICAL, KERNEL_CS_RPL0, RFLAGS_EVENTS_MASKED, stack2_top(), u64::from(FLAT_RING3_SS64)];
    // SAFETY: the iret hypercall to an address that cannot run; control lands in a stub.
    let l = unsafe { landing::catch(landing::__tg_iret_to, &iret) };
    if let Some(l) = expect(&mut r, "iret.noncanonical", l, gp, NONCANONICAL, KERNEL_CS_RPL0) {
        r.eq("iret.noncanonical.error_code", l.error_code().unwrap_or(u64::MAX), 0);
        r.eq("iret.noncanonical.rsp", l.rsp(), stack2_top());
    }
    // iret into the hypervisor's hole: allowed, and the fetch there is the guest's #PF.
    let iret =
        [HYPERVISOR_TEXT, KERNEL_CS_RPL0, RFLAGS_EVENTS_MASKED, stack2_top(), u64::from(FLAT_RING3_SS64)];
    // SAFETY: as above.
    let l = unsafe { landing::catch(landing::__tg_iret_to, &iret) };
    let pf = landing::VECTOR_BASE + u64::from(PF);
    if let Some(l) = expect(&mut r, "iret.hypervisor_hole", l, pf, HYPERVISOR_TEXT, KERNEL_CS_RPL0) {
        r.eq("iret.hypervisor_hole.error_code", l.error_code().unwrap_or(u64::MAX), PFEC_NOT_PRESENT_FETCH);
        r.eq("iret.hypervisor_hole.cr2", traps::cr2(), HYPERVISOR_TEXT);
    }
    drop(guard);

    if let Err(e) = landing::restore_vectors() {
        r.fail(format!("restoring the trap table: {e}"));
    }
    unmap(TOP_PAGE, page);
    r.is("hypercalls.work", hypercall::xen_version(version::op::VERSION, 0) > 0);
    r.report();
}
