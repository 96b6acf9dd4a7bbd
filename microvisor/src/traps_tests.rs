//! Host tests of the guest exit rules in `traps.rs`: no return to a guest with a non-canonical
//! RIP (the guest gets #GP(0) as on Xen), and `syscall` from 32-bit code or guest user mode
//! bounced the way Xen's `switch_to_kernel` does.

use crate::hv::Resume;
use crate::testkit::{console, two_domains, TestHv, SCRATCH_VA};
use crate::traps::{self, vector};
use crate::vcpu::GuestFrame;
use hypercall_abi::xen::{trap_flags, TrapInfo, FLAT_KERNEL_CS, FLAT_KERNEL_SS, FLAT_RING3_CS32};
use proptest::prelude::*;

/// Handler addresses in the test kernel (never executed on the host).
const GP_HANDLER: u64 = crate::loader::elf::testelf::BASE + 0x100;
const UD_HANDLER: u64 = crate::loader::elf::testelf::BASE + 0x200;
const SYSCALL32_CB: u64 = crate::loader::elf::testelf::BASE + 0x300;
const SYSCALL_CB: u64 = crate::loader::elf::testelf::BASE + 0x400;
/// The guest stack: the top of the writable scratch page.
const STACK: u64 = SCRATCH_VA + 0x800;

fn set_trap(hv: &mut TestHv, v: u8, address: u64) {
    hv.cur_vcpu_mut().traps[usize::from(v)] =
        TrapInfo { vector: v, flags: trap_flags::DISABLES_EVENTS, cs: FLAT_KERNEL_CS, _pad: 0, address };
}

fn kernel_frame(rip: u64) -> GuestFrame {
    GuestFrame {
        rip,
        cs: u64::from(FLAT_KERNEL_CS),
        ss: u64::from(FLAT_KERNEL_SS),
        rsp: STACK,
        rflags: 0x202,
        ..GuestFrame::default()
    }
}

/// The bounce frame at the guest's stack pointer: RCX, R11, [error code], RIP, CS, RFLAGS, RSP, SS.
fn bounce_words(hv: &TestHv, f: &GuestFrame, n: usize) -> Vec<u64> {
    (0..n).map(|i| hv.guest().read_obj::<u64>(f.rsp + 8 * i as u64).unwrap()).collect()
}

#[test]
fn a_non_canonical_rip_is_the_guests_gp_never_an_iretq() {
    let mut hv = two_domains();
    set_trap(&mut hv, vector::GP, GP_HANDLER);
    // An emulated instruction (or a syscall) that ended at 0x7fff_ffff_ffff.
    let mut f = kernel_frame(1 << 47);
    assert!(matches!(hv.resume(&mut f), Resume::Guest(_)));
    assert_eq!(f.rip, GP_HANDLER, "the guest's #GP handler runs");
    let w = bounce_words(&hv, &f, 8);
    assert_eq!(w[2], 0, "error code 0");
    assert_eq!(w[3], 1 << 47, "the frame holds the non-canonical RIP, as Xen's does");
    assert_eq!(w[4] & 0xffff, u64::from(FLAT_KERNEL_CS) & !3, "kernel context");
}

#[test]
fn a_non_canonical_rip_without_a_gp_handler_crashes_only_that_domain() {
    let mut hv = two_domains();
    let mut f = kernel_frame(0x1234_5678_9abc_def0);
    // dom0 has nowhere to take #GP: it is crashed, and the machine stops with it.
    hv.resume(&mut f);
    assert!(console(&hv).contains("unhandled #GP at rip 0x123456789abcdef0"), "{}", console(&hv));
}

proptest! {
    /// Whatever RIP a vCPU's frame holds, `resume` never hands back a non-canonical one.
    #[test]
    fn resume_never_returns_to_a_non_canonical_rip(rip in any::<u64>(), top in 0u64..4) {
        let mut hv = two_domains();
        set_trap(&mut hv, vector::GP, GP_HANDLER);
        // Bias towards the boundaries: 0x7fff.., 0x8000.., 0xffff8000.., 0xffff7fff...
        let rip = match top {
            0 => (1 << 47) + (rip & 0xff) - 0x80,
            1 => 0xffff_8000_0000_0000u64.wrapping_add(rip & 0xff).wrapping_sub(0x80),
            _ => rip,
        };
        let mut f = kernel_frame(rip);
        if matches!(hv.resume(&mut f), Resume::Guest(_)) {
            prop_assert!(hypercall_abi::xen::is_canonical(f.rip), "returned to {:#x}", f.rip);
        }
    }
}

/// The `iretq` back to a guest faults in ring 0 (and stopped the machine) when its RIP is
/// beyond a 32-bit code segment's limit, or when its code or stack selector no longer loads:
/// a sibling vCPU's `update_descriptor` rewrites the GDT entry a preempted vCPU runs on (the
/// copy every vCPU of the domain loads). The guest gets #GP(0) there instead, as Xen's fixup
/// of a faulting `iretq` gives it.
#[test]
fn a_frame_iretq_would_fault_on_is_the_guests_gp() {
    use hypercall_abi::xen::FLAT_RING3_DS32;
    let returns = |hv: &mut TestHv, f: &mut GuestFrame| {
        let rip = f.rip;
        assert!(matches!(hv.resume(f), Resume::Guest(_)));
        (f.rip != GP_HANDLER).then_some(rip)
    };
    let mut hv = two_domains();
    set_trap(&mut hv, vector::GP, GP_HANDLER);
    let frame32 = |rip, cs, ss| GuestFrame { cs, ss, ..kernel_frame(rip) };
    // The flat 32-bit code segment ends at 4 GiB.
    let flat = u64::from(FLAT_RING3_CS32);
    let ds = u64::from(FLAT_RING3_DS32);
    assert_eq!(returns(&mut hv, &mut frame32(0xffff_fff0, flat, ds)), Some(0xffff_fff0));
    let mut f = frame32(1 << 32, flat, ds);
    assert_eq!(returns(&mut hv, &mut f), None, "beyond 4 GiB in 32-bit code");
    assert_eq!(bounce_words(&hv, &f, 8)[2..4], [0, 1 << 32], "#GP(0) at that RIP");
    // The guest's own 32-bit code segment (limit 0xfff, byte granular) and stack segment.
    hv.cur_vcpu_mut().gdt = vec![0, 0x0000_fb00_0000_0fff, 0x00cf_f300_0000_ffff];
    assert_eq!(returns(&mut hv, &mut frame32(0xfff, 0x0b, 0x13)), Some(0xfff));
    assert_eq!(returns(&mut hv, &mut frame32(0x1000, 0x0b, 0x13)), None, "beyond its limit");
    // A sibling made the code segment not present, the stack read-only, or the table shorter.
    hv.cur_vcpu_mut().gdt[1] &= !(1 << 47);
    assert_eq!(returns(&mut hv, &mut frame32(0x10, 0x0b, 0x13)), None, "code not present");
    hv.cur_vcpu_mut().gdt = vec![0, 0x0000_fb00_0000_0fff, 0x00cf_f100_0000_ffff];
    assert_eq!(returns(&mut hv, &mut frame32(0x10, 0x0b, 0x13)), None, "read-only stack");
    hv.cur_vcpu_mut().gdt.truncate(2);
    assert_eq!(returns(&mut hv, &mut frame32(0x10, 0x0b, 0x13)), None, "stack beyond the GDT");
    // Code and stack segments of the vCPU's LDT load too.
    hv.cur_vcpu_mut().ldt = vec![0x00af_fb00_0000_ffff, 0x00cf_f300_0000_ffff];
    assert_eq!(returns(&mut hv, &mut frame32(0x40_0000, 0x07, 0x0f)), Some(0x40_0000));
    hv.cur_vcpu_mut().ldt.clear();
    assert_eq!(returns(&mut hv, &mut frame32(0x40_0000, 0x07, 0x0f)), None, "LDT gone");
}

/// The selectors a vCPU takes back onto the CPU are the ones it left with, as long as ring 0
/// can still load them with its descriptor tables; any other (its descriptor made not present,
/// a system descriptor, execute-only code, beyond the table) goes in as null.
#[test]
fn a_vcpu_gets_its_own_data_selectors_back_when_they_still_load() {
    use hypercall_abi::xen::FLAT_RING3_DS32;
    let gdt = [
        0,
        0x00cf_fb00_0000_ffff, // 0x0b: readable 32-bit code
        0x00cf_f300_0000_ffff, // 0x13: data
        0x00cf_f800_0000_ffff, // 0x1b: execute-only code
        0x00cf_7300_0000_ffff, // 0x23: data, not present
        0x0000_e900_0000_0067, // 0x2b: a system descriptor
    ];
    let ldt = [0x00cf_f300_0000_ffff];
    let loads = |sel| traps::data_selector_loads(&gdt, &ldt, sel);
    for sel in [0, 1, 3, 0x0b, 0x13, 0x10, 0x07, FLAT_RING3_DS32, FLAT_RING3_CS32, 0xe030] {
        assert!(loads(sel), "{sel:#x} loads");
    }
    for sel in [0x1b, 0x23, 0x2b, 0x33, 0x0f, 0xe008, 0xe010, 0xe040, 0xe02f] {
        assert!(!loads(sel), "{sel:#x} must not be loaded");
    }
    let mut hv = two_domains();
    hv.cur_vcpu_mut().gdt = gdt.to_vec();
    hv.cur_vcpu_mut().data_sels = [0x13, 0x23, FLAT_RING3_DS32, 0x1b];
    assert_eq!(hv.running_data_selectors(), [0x13, 0, FLAT_RING3_DS32, 0]);
    // A descriptor changed while the vCPU was off the CPU (a sibling's `update_descriptor`):
    // checked against the tables as they are when the selectors are loaded.
    hv.cur_vcpu_mut().gdt[2] &= !(1 << 47);
    assert_eq!(hv.running_data_selectors(), [0, 0, FLAT_RING3_DS32, 0]);
}

fn compat_syscall_frame(rip_after: u64) -> GuestFrame {
    GuestFrame {
        rip: rip_after,
        rcx: rip_after,
        r11: 0x202,
        cs: u64::from(FLAT_RING3_CS32),
        ss: u64::from(FLAT_KERNEL_SS),
        rsp: STACK,
        rflags: 0x202 | crate::vcpu::rflags::DF,
        vector: crate::vcpu::VECTOR_SYSCALL,
        ..GuestFrame::default()
    }
}

#[test]
fn compat_syscall_goes_to_the_syscall32_callback_never_the_64_bit_one() {
    let mut hv = two_domains();
    hv.cur_vcpu_mut().callbacks.syscall = SYSCALL_CB;
    hv.cur_vcpu_mut().callbacks.syscall32 = SYSCALL32_CB;
    let mut f = compat_syscall_frame(0x50_0007);
    hv.syscall_with_frame(&mut f);
    assert_eq!(f.rip, SYSCALL32_CB);
    assert_eq!(f.rflags & crate::vcpu::rflags::DF, 0, "the callback starts with DF clear");
    let w = bounce_words(&hv, &f, 7);
    assert_eq!((w[0], w[2]), (0x50_0007, 0x50_0007), "RCX and RIP: after the syscall");
    assert_eq!(w[3] & 0xffff, u64::from(FLAT_RING3_CS32) & !3, "kernel context, 32-bit selector");
}

#[test]
fn compat_syscall_without_a_syscall32_callback_is_ud_at_the_syscall() {
    let mut hv = two_domains();
    hv.cur_vcpu_mut().callbacks.syscall = SYSCALL_CB;
    set_trap(&mut hv, vector::UD, UD_HANDLER);
    let mut f = compat_syscall_frame(0x50_0007);
    hv.syscall_with_frame(&mut f);
    assert_eq!(f.rip, UD_HANDLER, "#UD, not the 64-bit callback");
    let w = bounce_words(&hv, &f, 7);
    assert_eq!(w[2], 0x50_0005, "#UD points at the syscall instruction");
}

#[test]
fn user_syscall_without_a_callback_is_ud_at_the_syscall() {
    let mut hv = two_domains();
    set_trap(&mut hv, vector::UD, UD_HANDLER);
    hv.cur_vcpu_mut().kernel_sp = STACK;
    traps::toggle_guest_mode(&mut hv);
    let mut f =
        GuestFrame { cs: u64::from(hypercall_abi::xen::FLAT_USER_CS), ..compat_syscall_frame(0x40_0022) };
    hv.syscall_with_frame(&mut f);
    assert_eq!(f.rip, UD_HANDLER);
    assert!(hv.cur_vcpu().kernel_mode, "bounced into guest kernel mode");
    assert_eq!(bounce_words(&hv, &f, 7)[2], 0x40_0020);
}

/// `iret` takes the selectors of the guest's own GDT that load without faulting: Linux returns
/// to user mode on `__USER_CS` 0x33 and `__USER_DS` 0x2b (and `__USER32_CS` 0x23 for 32-bit
/// tasks); anything that would make the hardware `iretq` fault in ring 0 is refused.
#[test]
fn iret_selectors_from_the_guests_gdt() {
    use hypercall_abi::xen::{FLAT_RING3_CS64, FLAT_RING3_DS32};
    // Linux's GDT (arch/x86/kernel/cpu/common.c), as set_gdt leaves it (DPL 3).
    let mut gdt = vec![0u64; 16];
    gdt[4] = 0x00cf_fb00_0000_ffff; // __USER32_CS
    gdt[5] = 0x00cf_f300_0000_ffff; // __USER_DS
    gdt[6] = 0x00af_fb00_0000_ffff; // __USER_CS
    gdt[7] = 0x00af_7b00_0000_ffff; // not present
    gdt[8] = 0x0000_e900_0000_0067; // a TSS (system) descriptor
    gdt[9] = 0x00ef_fb00_0000_ffff; // code with both L and D
    gdt[10] = 0x00cf_f100_0000_ffff; // read-only data
    let code = |sel| traps::check_selector(&gdt, sel, true);
    let data = |sel| traps::check_selector(&gdt, sel, false);
    assert_eq!(code(FLAT_RING3_CS64), Some(FLAT_RING3_CS64));
    assert_eq!(data(3), Some(FLAT_RING3_DS32), "null stack selector is the flat one");
    assert_eq!((code(0x33), code(0x23), data(0x2b)), (Some(0x33), Some(0x23), Some(0x2b)));
    for sel in [0x2b, 0x3b, 0x43, 0x4b, 0x53, 0x37, 0x83, 0xfff3, 0x03] {
        assert_eq!(code(sel), None, "code selector {sel:#x}");
    }
    for sel in [0x33, 0x3b, 0x43, 0x53, 0x2f, 0x83, 0x0b] {
        assert_eq!(data(sel), None, "stack selector {sel:#x}");
    }
}

/// The #PF error code a guest sees: its own mode in PFEC_user_mode, and the hypervisor's hole
/// never present (Xen 4.17 reports a fetch at its text, 0xffff82d080200000, as 0x10).
#[test]
fn page_fault_error_code_as_the_guest_sees_it() {
    use crate::mm::ptwr::pfec::{INSN_FETCH, PRESENT, RSVD, USER, WRITE};
    const XEN_TEXT: u64 = 0xffff_82d0_8020_0000;
    const GUEST: u64 = 0x40_0000;
    // The CPU always reports ring 3: the guest kernel sees a supervisor fault.
    assert_eq!(traps::guest_pf_error_code(PRESENT | USER | WRITE, GUEST, true), PRESENT | WRITE);
    assert_eq!(traps::guest_pf_error_code(PRESENT | WRITE, GUEST, false), PRESENT | USER | WRITE);
    assert_eq!(traps::guest_pf_error_code(PRESENT | USER | INSN_FETCH, XEN_TEXT, true), INSN_FETCH);
    assert_eq!(traps::guest_pf_error_code(PRESENT | USER | RSVD | WRITE, XEN_TEXT, false), USER | WRITE);
}

proptest! {
    /// Whatever the CPU reported, a fault in the hole reads as not present, and only the
    /// present, user and reserved bits ever change.
    #[test]
    fn hole_faults_read_as_not_present(ec in 0u64..0x10000, off in 0u64..(1 << 43), kernel in any::<bool>()) {
        use crate::mm::ptwr::pfec::{PRESENT, RSVD, USER};
        let addr = 0xffff_8000_0000_0000 + off;
        let e = traps::guest_pf_error_code(ec, addr, kernel);
        prop_assert_eq!(e & (PRESENT | RSVD), 0);
        prop_assert_eq!(e & USER != 0, !kernel);
        prop_assert_eq!(e & !(PRESENT | RSVD | USER), ec & !(PRESENT | RSVD | USER));
    }
}
