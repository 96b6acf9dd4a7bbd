//! Guest traps: bounce frames (how exceptions, events and user-mode syscalls reach a PV
//! kernel), the `iret` hypercall, the PV clock, and emulation of the few privileged
//! instructions a PV kernel may execute in ring 3.
//!
//! The bounce frame follows Xen's `create_bounce_frame`: on the guest kernel stack (switching
//! to `kernel_sp` first if the guest was in user mode), from low to high address
//! `RCX, R11, [error code], RIP, CS (+ saved upcall mask in bits 32-39), RFLAGS, RSP, SS`.
//! One deliberate difference: when the guest is interrupted in kernel mode, the frame is put
//! 128 bytes below its stack pointer, leaving the System V red zone intact. Guests cannot
//! tell (they find the frame at their stack pointer) and kernels built without
//! `-mno-red-zone` discipline stay correct.

use crate::hv::Hypervisor;
use crate::mm::MachineMemory;
use crate::platform::Platform;
use crate::vcpu::{rflags, GuestFrame};
use hypercall_abi::xen::{
    in_hypervisor_hole, is_canonical, trap_flags, vgcf, vmasst, IretContext, FLAT_KERNEL_CS, FLAT_KERNEL_SS,
    FLAT_RING3_CS32, FLAT_RING3_CS64, FLAT_RING3_DS32,
};
use zerocopy::IntoBytes;

pub use crate::x86::vector;
/// Machine address of the running vCPU's `vcpu_info.arch.cr2` (where Xen reports a #PF
/// address), wherever its `vcpu_info` is.
pub(crate) fn vcpu_cr2_addr<P: Platform>(hv: &Hypervisor<P>) -> u64 {
    hv.cur_vcpu().vcpu_info + crate::event::VCPU_INFO_CR2
}

/// Size of the red zone below a guest kernel's stack pointer that bounce frames skip.
const RED_ZONE: u64 = 128;

/// Why a bounce could not be delivered (the domain is crashed with this reason).
#[derive(Debug)]
pub enum BounceError {
    NoHandler { vector: &'static str, rip: u64 },
    BadStack(u64),
    StackFault(u64),
    BadHandler(u64),
}

impl core::fmt::Display for BounceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BounceError::NoHandler { vector, rip } => {
                write!(f, "unhandled {vector} at rip {rip:#x} (no trap handler)")
            }
            BounceError::BadStack(sp) => write!(f, "bounce frame stack {sp:#x} is in the hypervisor's range"),
            BounceError::StackFault(sp) => {
                write!(f, "cannot write bounce frame at {sp:#x} (kernel stack unmapped)")
            }
            BounceError::BadHandler(a) => {
                write!(f, "callback or trap handler at non-canonical address {a:#x}")
            }
        }
    }
}

/// Switches the running vCPU between guest kernel and user mode (`toggle_guest_mode`): the
/// page-table base and the active GS base follow the mode; the arch layer applies them.
pub fn toggle_guest_mode<P: Platform>(hv: &mut Hypervisor<P>) {
    // The active GS base changes slot: keep the one the guest may have loaded itself.
    hv.refresh_segment_bases(hv.current());
    let v = hv.cur_vcpu_mut();
    v.kernel_mode = !v.kernel_mode;
    hv.bases_changed();
}

/// Builds a bounce frame and points the vCPU at `handler`.
///
/// `error_code` is pushed when `Some`. `mask_events` sets `evtchn_upcall_mask` (interrupt-gate
/// semantics). `frame` holds the interrupted registers and is rewritten for the handler.
pub fn bounce<P: Platform>(
    hv: &mut Hypervisor<P>,
    frame: &mut GuestFrame,
    handler: u64,
    error_code: Option<u64>,
    mask_events: bool,
) -> Result<(), BounceError> {
    // Registration refuses non-canonical callbacks and trap handlers (as Xen), but this is
    // the last line: a non-canonical handler must never reach `iretq`, where it would fault
    // in ring 0.
    if !is_canonical(handler) {
        return Err(BounceError::BadHandler(handler));
    }
    let vi = hv.cur_vcpu().info();
    let from_user = !hv.cur_vcpu().kernel_mode;
    let base = if from_user {
        toggle_guest_mode(hv);
        hv.cur_vcpu().kernel_sp
    } else {
        frame.rsp.wrapping_sub(RED_ZONE)
    };
    let sp = base & !15;
    if in_hypervisor_hole(sp) || in_hypervisor_hole(sp.wrapping_sub(1)) || !is_canonical(sp) {
        return Err(BounceError::BadStack(sp));
    }
    let saved_mask = vi.upcall_state(hv.mem()).1;
    let cs = if from_user { frame.cs } else { frame.cs & !3 };
    let mut rf = frame.rflags & !(rflags::IF | rflags::IOPL);
    if !saved_mask {
        rf |= rflags::IF;
    }
    if architectural_iopl(hv) {
        // The guest sees its virtual IOPL in the frame, as Xen folds it in.
        rf |= u64::from(hv.cur_vcpu().arch.iopl) << 12;
    }
    // Xen's frame, lowest address first: rcx, r11, [error code], rip, cs | saved mask << 32,
    // rflags, rsp, ss. Built in place and written as it lies (x86 is little-endian).
    let cs_mask = cs | (u64::from(saved_mask) << 32);
    let (words, n) = match error_code {
        Some(e) => ([frame.rcx, frame.r11, e, frame.rip, cs_mask, rf, frame.rsp, frame.ss], 8),
        None => ([frame.rcx, frame.r11, frame.rip, cs_mask, rf, frame.rsp, frame.ss, 0], 7),
    };
    // A guest-chosen stack near 0 wraps; the write below then faults and the domain crashes.
    let new_sp = sp.wrapping_sub(8 * n as u64);
    hv.guest().write(new_sp, words[..n].as_bytes()).map_err(|_| BounceError::StackFault(new_sp))?;
    frame.rsp = new_sp;
    frame.rip = handler;
    frame.cs = u64::from(FLAT_KERNEL_CS);
    frame.ss = u64::from(FLAT_KERNEL_SS);
    frame.rflags = (frame.rflags & !(rflags::TF | rflags::NT | rflags::RF | rflags::VM | rflags::AC))
        | rflags::IF
        | rflags::FIXED;
    if mask_events {
        vi.set_upcall_mask(hv.mem(), true);
    }
    Ok(())
}

/// True if the running domain opted into `VMASST_TYPE_architectural_iopl`: its kernel counts
/// as ring 0 for IOPL checks, and its virtual IOPL travels in `iret` and bounce frames.
pub(crate) fn architectural_iopl<P: Platform>(hv: &Hypervisor<P>) -> bool {
    hv.cur_dom().vm_assist & (1 << vmasst::TYPE_ARCHITECTURAL_IOPL) != 0
}

/// Bounces exception `vec` to the guest's handler from its trap table.
pub fn bounce_exception<P: Platform>(
    hv: &mut Hypervisor<P>,
    frame: &mut GuestFrame,
    vec: u8,
    error_code: Option<u64>,
) -> Result<(), BounceError> {
    let ti = hv.cur_vcpu().traps[vec as usize];
    if ti.address == 0 {
        return Err(BounceError::NoHandler { vector: vector::name(vec), rip: frame.rip });
    }
    bounce(hv, frame, ti.address, error_code, ti.flags & trap_flags::DISABLES_EVENTS != 0)
}

/// Delivers a pending event upcall to the event callback.
pub fn deliver_event<P: Platform>(hv: &mut Hypervisor<P>, frame: &mut GuestFrame) -> Result<(), BounceError> {
    let handler = hv.cur_vcpu().callbacks.event;
    if hv.trace.is_on() {
        let (tsc, r) = (hv.plat.tsc(), hv.current());
        hv.trace.record(&hypercall_abi::microvisor::trace::Record::EventDeliver {
            tsc,
            vcpu: (r.domid.0, r.vcpu),
        });
    }
    if handler == 0 {
        // Nowhere to deliver: leave it pending, as Xen does for a guest without a callback.
        return Ok(());
    }
    bounce(hv, frame, handler, None, true)
}

/// The `iret` hypercall: return from a bounce frame (`struct iret_context` at the guest's
/// stack pointer). Returns `Err` with a reason when the guest must be crashed.
pub fn do_iret<P: Platform>(hv: &mut Hypervisor<P>, frame: &mut GuestFrame) -> Result<(), &'static str> {
    // One look at the running vCPU for everything read before anything changes.
    let v = hv.cur_vcpu();
    let ctx: IretContext =
        hv.guest_space(v.current_l4()).read_obj(frame.rsp).map_err(|_| "iret frame is not readable")?;
    let to_user = ctx.cs & 3 == 3;
    let cs = check_selector(&v.gdt, ctx.cs as u16 | 3, true).ok_or("iret to a bad code selector")?;
    let ss = check_selector(&v.gdt, ctx.ss as u16 | 3, false).ok_or("iret to a bad stack selector")?;
    // No check of the RIP here, as in Xen: a non-canonical one gets the guest #GP(0) on the
    // way out (`check_return_rip`), one in the hypervisor's hole a #PF when fetched in ring 3.
    let toggle = to_user && v.kernel_mode;
    // As Xen: user mode runs only on a user base the guest installed, which holds its own
    // references (aliasing the kernel base without one let the guest unpin a live L4).
    if toggle && v.user_l4.is_none() {
        return Err("guest switching to user mode with no user page tables");
    }
    let info = v.info();
    if toggle {
        toggle_guest_mode(hv);
    }
    if architectural_iopl(hv) {
        hv.cur_vcpu_mut().arch.iopl = ((ctx.rflags & rflags::IOPL) >> 12) as u8;
    }
    frame.rax = ctx.rax;
    if ctx.flags & vgcf::IN_SYSCALL == 0 {
        frame.r11 = ctx.r11;
        frame.rcx = ctx.rcx;
    }
    frame.rip = ctx.rip;
    frame.cs = u64::from(cs);
    // RF passes too, as on Xen: a #DB handler resuming at an instruction breakpoint sets it
    // so the breakpoint does not fire again on the same instruction.
    frame.rflags = (ctx.rflags & (rflags::GUEST_SETTABLE | rflags::RF)) | rflags::IF | rflags::FIXED;
    frame.rsp = ctx.rsp;
    frame.ss = u64::from(ss);
    let masked = ctx.rflags & rflags::IF == 0;
    // (The vCPU's `vcpu_info` is where it was before the mode toggle.)
    info.set_upcall_mask(hv.mem(), masked);
    Ok(())
}

// Descriptor bits the selector checks read.
use crate::x86::seg as desc;

/// The descriptor `sel` names in the vCPU's validated GDT copy `gdt` or LDT copy `ldt` (what
/// the arch layer loads; entries beyond them are not present), `None` for a null selector or
/// one beyond the table.
fn descriptor(gdt: &[u64], ldt: &[u64], sel: u16) -> Option<u64> {
    let idx = usize::from(sel >> 3);
    if sel & desc::TI_LDT != 0 {
        ldt.get(idx).copied()
    } else if idx != 0 {
        gdt.get(idx).copied()
    } else {
        None
    }
}

/// True if `iretq` to ring 3 accepts guest descriptor `d` (DPL already 3) as a code segment
/// (`code`: present, executable, not L and D together) or as a stack (present writable data).
fn usable(d: u64, code: bool) -> bool {
    use desc::*;
    d & (PRESENT | S) == PRESENT | S
        && if code { d & EXEC != 0 && d & (L | DB) != L | DB } else { d & (EXEC | WRITABLE) == WRITABLE }
}

/// Accepts the selectors an `iretq` can load without faulting (RPL already forced to 3): Xen's
/// flat ones, and those of the vCPU's own validated GDT (`gdt`, DPL already 3) that name a
/// present code segment (64-bit or 32-bit) for `code`, or a present writable data segment for
/// a stack. Linux returns to user mode on its own `__USER_CS`/`__USER_DS` (0x33/0x2b). Xen
/// lets the hardware `iretq` decide and fixes up the fault; here nothing may fault in ring 0,
/// so LDT selectors and anything else are refused.
pub(crate) fn check_selector(gdt: &[u64], sel: u16, code: bool) -> Option<u16> {
    let flat = if code {
        sel == FLAT_RING3_CS64 || sel == FLAT_RING3_CS32
    } else {
        sel == FLAT_RING3_DS32 || sel == 3
    };
    if flat {
        return Some(if sel == 3 { FLAT_RING3_DS32 } else { sel });
    }
    let ok = sel & desc::TI_LDT == 0 && descriptor(gdt, &[], sel).is_some_and(|d| usable(d, code));
    ok.then_some(sel)
}

/// True if ring 0 can load `sel` into a data segment register (`%ds`, `%es`, `%fs`, `%gs`)
/// without faulting, with the vCPU's descriptor tables (`gdt`, `ldt`, DPL already 3) loaded: a
/// null selector, Xen's flat ones, or a present data or readable code segment in either
/// table. A selector the guest loaded may have stopped loading since (a sibling vCPU's
/// `update_descriptor`, its own `set_gdt`); it is then loaded as null, where Xen would call the
/// failsafe callback.
pub fn data_selector_loads(gdt: &[u64], ldt: &[u64], sel: u16) -> bool {
    // Bit 41 of a code segment.
    const READABLE: u64 = desc::WRITABLE;
    if sel & !3 == 0 || [FLAT_RING3_CS32, FLAT_RING3_DS32, FLAT_RING3_CS64].contains(&(sel | 3)) {
        return true;
    }
    descriptor(gdt, ldt, sel).is_some_and(|d| {
        d & (desc::PRESENT | desc::S) == desc::PRESENT | desc::S && (d & desc::EXEC == 0 || d & READABLE != 0)
    })
}

/// True if the `iretq` that returns to `frame` cannot fault in ring 0 with the descriptor
/// tables the vCPU will run on (`tables`: its GDT and LDT copies): a canonical RIP, a code
/// selector and a stack selector of ring 3 that load (flat, or present and of the right kind
/// in either table — a sibling vCPU's `update_descriptor` may have changed the one a preempted
/// vCPU runs on), and a RIP within the code segment's limit when it is not 64-bit code (the CPU
/// checks it there). The tables are asked for only for a selector that is not one of Xen's
/// flat ones (those are the hypervisor's own GDT entries): a frame on those, every exit of a
/// 64-bit guest kernel, needs no look at the vCPU.
#[inline(always)]
fn frame_returnable<'a>(frame: &GuestFrame, tables: impl Fn() -> (&'a [u64], &'a [u64])) -> bool {
    let (cs, ss) = (frame.cs as u16, frame.ss as u16);
    if cs & 3 != 3 || ss & 3 != 3 || !is_canonical(frame.rip) {
        return false;
    }
    let limit = match cs {
        FLAT_RING3_CS64 => u64::MAX,
        FLAT_RING3_CS32 => u64::from(u32::MAX),
        _ => match descriptor(tables().0, tables().1, cs) {
            Some(d) if usable(d, true) && d & desc::L != 0 => u64::MAX,
            Some(d) if usable(d, true) => {
                let raw = (d & 0xffff) | ((d >> 32) & 0xf_0000);
                if d & desc::G != 0 {
                    (raw << 12) | 0xfff
                } else {
                    raw
                }
            }
            _ => return false,
        },
    };
    let stack =
        ss == FLAT_RING3_DS32 || descriptor(tables().0, tables().1, ss).is_some_and(|d| usable(d, false));
    frame.rip <= limit && stack
}

/// A `syscall` that is not a hypercall (Xen's `switch_to_kernel`): one from guest user mode,
/// or one from 32-bit code (selector `FLAT_RING3_CS32`, the CSTAR entry) in either guest mode.
/// It is bounced to the guest kernel's syscall callback, or its syscall32 callback for 32-bit
/// code; with no callback registered the guest gets #UD at the `syscall` itself. Either way
/// the handler starts with DF clear, Xen's fixed SYSCALL_MASK. (Xen takes the event mask of
/// the 64-bit syscall callback for both, as here.)
pub fn guest_syscall<P: Platform>(hv: &mut Hypervisor<P>, frame: &mut GuestFrame) -> Result<(), BounceError> {
    let cb = hv.cur_vcpu().callbacks;
    let target = if frame.cs == u64::from(FLAT_RING3_CS32) { cb.syscall32 } else { cb.syscall };
    if target == 0 {
        // `syscall` is two bytes; the CPU saved the address after it.
        frame.rip = frame.rip.wrapping_sub(2);
        bounce_exception(hv, frame, vector::UD, None)?;
    } else {
        bounce(hv, frame, target, None, cb.syscall_masks_events)?;
    }
    frame.rflags &= !rflags::DF;
    Ok(())
}

/// The last check before any return to a guest: `iretq` to a non-canonical RIP faults in ring 0
/// (and `sysretq` to one does on Intel). Xen lets the `iretq` fault and turns it into the
/// guest's own #GP(0), with that RIP in the frame (its pre-exception fixup on `iretq`); here
/// the guest gets the same #GP(0) without the ring-0 fault. Every path that sets a guest's RIP
/// (emulation advancing past an instruction, `iret`, a `syscall` at the top of the lower half,
/// a vCPU's saved frame) therefore ends here rather than checking on its own.
///
/// The same holds for the selectors and, in 32-bit code, the segment limit: an `iretq` whose
/// code or stack selector no longer loads, or whose RIP is beyond its code segment's limit,
/// faults in ring 0 too, and the guest gets the same #GP(0) instead ([`frame_returnable`]).
///
/// On every slow exit, so inlined there; the running vCPU's tables are looked up only for a
/// selector that is not one of Xen's flat ones.
#[inline(always)]
pub fn check_return_rip<P: Platform>(
    hv: &mut Hypervisor<P>,
    frame: &mut GuestFrame,
) -> Result<(), BounceError> {
    let ok = frame_returnable(frame, || {
        let v = hv.cur_vcpu();
        (&v.gdt[..], &v.ldt[..])
    });
    if ok {
        return Ok(());
    }
    return_gp(hv, frame)
}

/// The guest's #GP(0) for a frame `iretq` would fault on ([`check_return_rip`]).
#[cold]
#[inline(never)]
fn return_gp<P: Platform>(hv: &mut Hypervisor<P>, frame: &mut GuestFrame) -> Result<(), BounceError> {
    bounce_exception(hv, frame, vector::GP, Some(0))
}

/// What a guest exception turned into.
pub enum ExceptionOutcome {
    /// Handled (emulated or bounced); return to the guest.
    Handled,
    /// The domain must be crashed for this reason.
    Crash(CrashReason),
}

/// Why a guest exception crashes its domain (formatted only when reported).
pub enum CrashReason {
    Bounce(BounceError),
    UnhandledPageFault { rip: u64, addr: u64 },
}

impl core::fmt::Display for CrashReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CrashReason::Bounce(b) => b.fmt(f),
            CrashReason::UnhandledPageFault { rip, addr } => {
                write!(f, "unhandled #PF at rip {rip:#x}, address {addr:#x} (no trap handler)")
            }
        }
    }
}

/// The #PF error code the guest sees for a fault the CPU reported with `error_code` at
/// `addr`. The CPU saw ring 3 either way; the guest must see which of its own modes faulted
/// (Xen's `pv_inject_event` adjusts PFEC_user_mode the same way). And the hypervisor's hole is
/// not the guest's to see: its mappings there are the hypervisor's own, so a guest access
/// reads as not present, as under Xen 4.17, whose hole is unmapped while a PV guest runs
/// (XPTI): `xen_conformance::noncanonical_rip` compares `iret.hypervisor_hole.error_code`.
pub fn guest_pf_error_code(error_code: u64, addr: u64, kernel_mode: bool) -> u64 {
    use crate::x86::pfec;
    let user = if kernel_mode { 0 } else { pfec::USER };
    let mut e = (error_code & !pfec::USER) | user;
    if in_hypervisor_hole(addr) {
        // A not-present fault has no reserved-bit cause either.
        e &= !(pfec::PRESENT | pfec::RSVD);
    }
    e
}

/// Handles an exception raised by a guest (in ring 3): emulate the privileged instructions PV
/// kernels use, bounce everything else to the guest's trap table. `info` is what the CPU
/// reported beside the frame: CR2 for a #PF, DR6 for a #DB.
pub fn guest_exception<P: Platform>(
    hv: &mut Hypervisor<P>,
    frame: &mut GuestFrame,
    vec: u8,
    info: u64,
) -> ExceptionOutcome {
    if hv.trace.is_on() {
        let (tsc, r) = (hv.plat.tsc(), hv.current());
        hv.trace.record(&hypercall_abi::microvisor::trace::Record::Exception {
            tsc,
            vcpu: (r.domid.0, r.vcpu),
            vector: vec,
        });
    }
    let err = vector::has_error_code(vec).then_some(frame.error_code);
    let result = match vec {
        vector::GP => {
            let emulated =
                if frame.error_code == 0 { crate::emulate::privileged_op(hv, frame) } else { None };
            if let Some(outcome) = emulated {
                match outcome {
                    crate::emulate::Outcome::Done => Ok(()),
                    crate::emulate::Outcome::DoneDebug(_) => bounce_exception(hv, frame, vector::DB, None),
                    crate::emulate::Outcome::Gp => bounce_exception(hv, frame, vector::GP, Some(0)),
                    crate::emulate::Outcome::Ud => bounce_exception(hv, frame, vector::UD, None),
                }
            } else if frame.error_code & 3 == 2 {
                // `int $n` through a gate the guest may not use directly (Xen's soft-interrupt
                // path in do_general_protection): the vector is what the error code names
                // (truncated to 8 bits as Xen does), and the virtual IDT's DPL decides — the
                // guest kernel needs DPL >= 1, guest user mode DPL 3. Allowed: a software
                // interrupt to that handler after the `int` (one without a handler crashes the
                // domain, as Xen's null bounce does); otherwise #GP with the error code.
                let n = (frame.error_code >> 3) as u8;
                let dpl = hv.cur_vcpu().traps[usize::from(n)].flags & trap_flags::DPL_MASK;
                let allowed = dpl >= if hv.cur_vcpu().kernel_mode { 1 } else { 3 };
                if allowed {
                    frame.rip = frame.rip.wrapping_add(2);
                    bounce_exception(hv, frame, n, None)
                } else {
                    bounce_exception(hv, frame, vector::GP, err)
                }
            } else {
                bounce_exception(hv, frame, vector::GP, err)
            }
        }
        vector::UD => {
            if emulate_forced_cpuid(hv, frame) {
                Ok(())
            } else {
                bounce_exception(hv, frame, vector::UD, None)
            }
        }
        // Writable page tables: the guest kernel's store to one of its own L1s is emulated.
        vector::PF if crate::emulate::ptwr_write(hv, frame, info) => Ok(()),
        vector::PF => {
            hv.mem().write_u64(vcpu_cr2_addr(hv), info);
            let kernel_mode = hv.cur_vcpu().kernel_mode;
            let err = err.map(|e| guest_pf_error_code(e, info, kernel_mode));
            bounce_exception(hv, frame, vector::PF, err).map_err(|e| match e {
                BounceError::NoHandler { rip, .. } => BounceError::NoHandler { vector: "#PF", rip },
                other => other,
            })
        }
        vector::DB => {
            // `info` is the DR6 the CPU reported (the arch layer reset it): the guest reads
            // the cause from its own DR6 (`get_debugreg(6)`), as on Xen.
            crate::cpu_state::record_debug_exception(&mut hv.cur_vcpu_mut().arch, info);
            bounce_exception(hv, frame, vector::DB, None)
        }
        vector::NM if hv.cur_vcpu().fpu_ts => {
            hv.cur_vcpu_mut().fpu_ts = false;
            bounce_exception(hv, frame, vector::NM, None)
        }
        _ => bounce_exception(hv, frame, vec, err),
    };
    match result {
        Ok(()) => ExceptionOutcome::Handled,
        Err(BounceError::NoHandler { vector: "#PF", rip }) => {
            ExceptionOutcome::Crash(CrashReason::UnhandledPageFault { rip, addr: info })
        }
        Err(e) => ExceptionOutcome::Crash(CrashReason::Bounce(e)),
    }
}

/// `int $0x80` from the guest, whose gate is DPL 3 as in Xen. With a 0x80 handler in the
/// virtual IDT it goes straight there, whatever that entry's DPL (Xen's `entry_int80`);
/// without one, the guest gets what a DPL-0 gate would have given: the #GP of `int $0x80`
/// at the instruction, error code `(0x80 << 3) | 2` (Xen's `int80_slow_path`), which the
/// soft-interrupt rule above then judges.
pub fn legacy_syscall<P: Platform>(hv: &mut Hypervisor<P>, frame: &mut GuestFrame) -> ExceptionOutcome {
    let ti = hv.cur_vcpu().traps[usize::from(vector::LEGACY_SYSCALL)];
    if ti.address == 0 {
        frame.rip = frame.rip.wrapping_sub(2);
        frame.error_code = (u64::from(vector::LEGACY_SYSCALL) << 3) | 2;
        return guest_exception(hv, frame, vector::GP, 0);
    }
    match bounce(hv, frame, ti.address, None, ti.flags & trap_flags::DISABLES_EVENTS != 0) {
        Ok(()) => ExceptionOutcome::Handled,
        Err(e) => ExceptionOutcome::Crash(CrashReason::Bounce(e)),
    }
}

/// Xen's forced-emulation prefix: `ud2; .ascii "xen"; cpuid`.
const FORCED_CPUID: [u8; 7] = [0x0f, 0x0b, b'x', b'e', b'n', 0x0f, 0xa2];

/// What the hypervisor CPUID leaves report about this machine.
fn hypervisor_facts<P: Platform>(hv: &Hypervisor<P>) -> crate::cpuid::HvFacts {
    use crate::cpuid::{pv_cpuid, EXT1_EDX_RDTSCP, PWR_EDX_INVARIANT_TSC};
    crate::cpuid::HvFacts {
        tsc_khz: u32::try_from(hv.time.tsc_hz / 1000).unwrap_or(u32::MAX),
        tsc_to_ns: hv.time.scale,
        max_page: hv.frames.max_mfn().0,
        paddr_bits: hv.plat.cpuid(0x8000_0008, 0)[0] & 0xff,
        tsc_reliable: hv.plat.cpuid(0x8000_0007, 0)[3] & PWR_EDX_INVARIANT_TSC != 0,
        rdtscp: pv_cpuid(0x8000_0001, hv.plat.cpuid(0x8000_0001, 0))[3] & EXT1_EDX_RDTSCP != 0,
    }
}

/// Emulates `cpuid` behind Xen's forced-emulation prefix. Returns false if the bytes at RIP
/// are not that sequence.
fn emulate_forced_cpuid<P: Platform>(hv: &mut Hypervisor<P>, frame: &mut GuestFrame) -> bool {
    let mut insn = [0u8; 7];
    if hv.guest().read(frame.rip, &mut insn).is_err() || insn != FORCED_CPUID {
        return false;
    }
    let (leaf, subleaf) = (frame.rax as u32, frame.rcx as u32);
    let [a, b, c, d] = if (crate::cpuid::HV_LEAVES_FIRST..=crate::cpuid::HV_LEAVES_END).contains(&leaf) {
        crate::cpuid::hypervisor_leaf(leaf, subleaf, &hypervisor_facts(hv))
    } else {
        crate::cpuid::pv_cpuid(leaf, hv.plat.cpuid(leaf, subleaf))
    };
    frame.rax = u64::from(a);
    frame.rbx = u64::from(b);
    frame.rcx = u64::from(c);
    frame.rdx = u64::from(d);
    frame.rip = frame.rip.wrapping_add(FORCED_CPUID.len() as u64);
    true
}
