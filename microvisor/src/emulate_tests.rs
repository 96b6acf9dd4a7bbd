//! Host tests of the emulator's virtual CPU state (`emulate.rs` with `cpu_state.rs`): the
//! instruction is written into the test guest's memory, the #GP it raised is handed to
//! `traps::guest_exception`, and the outcome is what Xen gives: completed with the RIP moved,
//! or the guest's #GP/#UD/#DB handler entered.

use crate::testkit::{two_domains, TestHv, SCRATCH_VA};
use crate::traps::{self, vector};
use crate::vcpu::GuestFrame;
use crate::x86::{cr4, dr, rflags};
use hypercall_abi::xen::{trap_flags, TrapInfo, FLAT_KERNEL_CS, FLAT_KERNEL_SS};

const HANDLER: u64 = crate::loader::elf::testelf::BASE + 0x100;
const CODE: u64 = SCRATCH_VA;
const STACK: u64 = SCRATCH_VA + 0x800;

/// Where an emulated instruction left the guest.
#[derive(Debug, PartialEq, Eq)]
enum Went {
    /// Past the instruction (its length).
    Done(u64),
    /// Into the handler of this vector.
    Trap(u8),
}

/// Runs `bytes` as a guest-kernel instruction that raised #GP(0), with handlers for #GP, #UD
/// and #DB.
fn run(hv: &mut TestHv, bytes: &[u8], f: &mut GuestFrame) -> Went {
    run_with_handlers(hv, bytes, f, &[vector::GP, vector::UD, vector::DB])
}

fn run_with_handlers(hv: &mut TestHv, bytes: &[u8], f: &mut GuestFrame, handlers: &[u8]) -> Went {
    for &v in handlers {
        // Each vector's handler at its own address, so the test sees which one ran.
        hv.cur_vcpu_mut().traps[usize::from(v)] = TrapInfo {
            vector: v,
            flags: trap_flags::DISABLES_EVENTS,
            cs: FLAT_KERNEL_CS,
            _pad: 0,
            address: HANDLER + u64::from(v),
        };
    }
    hv.guest().write(CODE, bytes).unwrap();
    f.rip = CODE;
    f.cs = u64::from(FLAT_KERNEL_CS);
    f.ss = u64::from(FLAT_KERNEL_SS);
    f.rsp = STACK;
    f.rflags |= rflags::IF | rflags::FIXED;
    f.error_code = 0;
    let out = traps::guest_exception(hv, f, vector::GP, 0);
    assert!(matches!(out, traps::ExceptionOutcome::Handled), "the guest was crashed");
    match f.rip {
        r if r > HANDLER && r < HANDLER + 32 => Went::Trap((r - HANDLER) as u8),
        r => Went::Done(r - CODE),
    }
}

const CLI: &[u8] = &[0xfa];
const STI: &[u8] = &[0xfb];
/// `in $0x21, %al`
const IN_21: &[u8] = &[0xe4, 0x21];
/// `out %eax, %dx`
const OUT_DX_EAX: &[u8] = &[0xef];
/// `in %dx, %eax`
const IN_EAX_DX: &[u8] = &[0xed];
/// `mov %rax, %dr7`
const MOV_RAX_DR7: &[u8] = &[0x0f, 0x23, 0xf8];
/// `mov %dr4, %rax`
const MOV_DR4_RAX: &[u8] = &[0x0f, 0x21, 0xe0];
/// `mov %rax, %cr4`
const MOV_RAX_CR4: &[u8] = &[0x0f, 0x22, 0xe0];

#[test]
fn cli_sti_and_ports_need_the_virtual_iopl() {
    let mut hv = two_domains();
    let mut f = GuestFrame::default();
    for insn in [CLI, STI, IN_21] {
        assert_eq!(run(&mut hv, insn, &mut f), Went::Trap(vector::GP), "{insn:x?} at IOPL 0");
    }
    hv.cur_vcpu_mut().arch.iopl = 1;
    assert_eq!(run(&mut hv, CLI, &mut f), Went::Done(1));
    assert_eq!(run(&mut hv, STI, &mut f), Went::Done(1));
    f.rax = 0x1234_5678;
    assert_eq!(run(&mut hv, IN_21, &mut f), Went::Done(2));
    assert_eq!(f.rax, 0x1234_56ff, "an 8-bit in keeps the rest of %rax");
    // The PCI configuration address latches a 32-bit write.
    f.rdx = 0xcf8;
    f.rax = 0x8000_0010;
    assert_eq!(run(&mut hv, OUT_DX_EAX, &mut f), Went::Done(1));
    f.rax = u64::MAX;
    assert_eq!(run(&mut hv, IN_EAX_DX, &mut f), Went::Done(1));
    assert_eq!(f.rax, 0x8000_0010, "a 32-bit in zero-extends");
    // Guest user mode counts as ring 3.
    hv.cur_vcpu_mut().kernel_mode = false;
    assert_eq!(run(&mut hv, CLI, &mut f), Went::Trap(vector::GP));
    hv.cur_vcpu_mut().arch.iopl = 3;
    assert_eq!(run(&mut hv, CLI, &mut f), Went::Done(1));
}

#[test]
fn debug_register_moves_are_validated_as_set_debugreg() {
    let mut hv = two_domains();
    let mut f = GuestFrame { rax: dr::DR7_GD, ..GuestFrame::default() };
    assert_eq!(run(&mut hv, MOV_RAX_DR7, &mut f), Went::Trap(vector::GP), "general detect");
    f.rax = 1;
    assert_eq!(run(&mut hv, MOV_RAX_DR7, &mut f), Went::Done(3));
    assert_eq!(hv.cur_vcpu().arch.debug.dr7, dr::DR7_DEFAULT | 1);
    assert!(hv.cur_vcpu().arch.debug.active(), "an armed breakpoint is loaded for the guest");
    assert_eq!(run(&mut hv, MOV_DR4_RAX, &mut f), Went::Done(3), "DR4 aliases DR6 without CR4.DE");
    assert_eq!(f.rax, dr::DR6_DEFAULT);
    // The fake CPU's CPUID has no DE: a written CR4.DE is ignored, as Xen discards bits
    // outside the domain's policy.
    f.rax = cr4::DE;
    assert_eq!(run(&mut hv, MOV_RAX_CR4, &mut f), Went::Done(3));
    assert_eq!(hv.cur_vcpu().arch.cr4, 0);
    hv.cur_vcpu_mut().arch.cr4 = cr4::DE;
    assert_eq!(run(&mut hv, MOV_DR4_RAX, &mut f), Went::Trap(vector::UD), "no DR4 with CR4.DE");
}

#[test]
fn a_single_stepping_guest_gets_its_db_after_an_emulated_instruction() {
    let mut hv = two_domains();
    hv.cur_vcpu_mut().arch.iopl = 1;
    let mut f = GuestFrame { rflags: rflags::TF, ..GuestFrame::default() };
    assert_eq!(run(&mut hv, CLI, &mut f), Went::Trap(vector::DB));
    assert_eq!(hv.cur_vcpu().arch.debug.dr6 & dr::DR6_BS, dr::DR6_BS);
}

/// `rdmsr`
const RDMSR: &[u8] = &[0x0f, 0x32];
/// `wrmsr`
const WRMSR: &[u8] = &[0x0f, 0x30];

fn msr_value(f: &GuestFrame) -> u64 {
    (f.rdx << 32) | (f.rax & 0xffff_ffff)
}

#[test]
fn misc_enable_is_the_hosts_as_xen_adjusts_it_and_writes_are_ignored() {
    let mut hv = two_domains();
    let mut f = GuestFrame { rcx: 0x1a0, ..GuestFrame::default() };
    assert_eq!(run(&mut hv, RDMSR, &mut f), Went::Done(2));
    // Fast strings kept, MONITOR cleared; BTS/PEBS unavailable and xTPR disabled set.
    assert_eq!(msr_value(&f), 0x80_1801);
    f.rax = 0;
    f.rdx = 0;
    assert_eq!(run(&mut hv, WRMSR, &mut f), Went::Done(2), "a write is ignored, not refused");
    assert_eq!(crate::emulate::guest_misc_enable(0), 0x80_1800);
}

#[test]
fn an_msr_the_cpu_has_reads_as_zero_only_while_the_guest_has_no_gp_handler() {
    let mut hv = two_domains();
    let mut f = GuestFrame { rcx: 0xfe, rax: 7, ..GuestFrame::default() };
    assert_eq!(run(&mut hv, RDMSR, &mut f), Went::Trap(vector::GP), "MTRRcap is refused");
    hv.cur_vcpu_mut().traps = [TrapInfo::default(); 256];
    assert_eq!(run_with_handlers(&mut hv, RDMSR, &mut f, &[]), Went::Done(2));
    assert_eq!(msr_value(&f), 0, "faked as 0, as Xen does for a kernel's first instructions");
}

#[test]
fn tsc_aux_exists_only_where_cpuid_offers_rdtscp_or_rdpid() {
    // The fake CPU's CPUID offers neither: TSC_AUX is refused both ways.
    let mut hv = two_domains();
    let mut f = GuestFrame { rcx: 0xc000_0103, rax: 5, ..GuestFrame::default() };
    assert_eq!(run(&mut hv, WRMSR, &mut f), Went::Trap(vector::GP));
    assert_eq!(run(&mut hv, RDMSR, &mut f), Went::Trap(vector::GP));
}

#[test]
fn the_tcg_smap_quirk_is_recognised_only_for_a_far_return_reading_its_own_stack() {
    let mut hv = two_domains();
    const IRETQ: &[u8] = &[0x48, 0xcf];
    const LRETQ: &[u8] = &[0x48, 0xcb];
    const MOV_LOAD: &[u8] = &[0x48, 0x8b, 0x04, 0x24]; // mov (%rsp), %rax
    let f = GuestFrame { rip: CODE, rsp: STACK, ..GuestFrame::default() };
    let quirk = |hv: &mut TestHv, insn: &[u8], ec: u64, cr2: u64| {
        hv.guest().write(CODE, insn).unwrap();
        crate::emulate::is_tcg_smap_quirk(hv, &f, ec, cr2)
    };
    assert!(quirk(&mut hv, IRETQ, 1, STACK));
    assert!(quirk(&mut hv, IRETQ, 1, STACK + 32));
    assert!(quirk(&mut hv, LRETQ, 1, STACK + 8));
    assert!(!quirk(&mut hv, IRETQ, 1, STACK + 40), "beyond the iret frame");
    assert!(!quirk(&mut hv, IRETQ, 1, STACK - 8), "below the stack pointer");
    assert!(!quirk(&mut hv, IRETQ, 5, STACK), "a user access is the guest's own fault");
    assert!(!quirk(&mut hv, IRETQ, 3, STACK), "a write");
    assert!(!quirk(&mut hv, MOV_LOAD, 1, STACK), "not a far return");
}

/// Decodes `bytes` as the faulting store of a ptwr write whose operand holds `cur`.
fn ptwr(bytes: &[u8], f: &GuestFrame, cur: u64) -> Option<crate::emulate::PtwrStore> {
    let insn = crate::emulate::decode(bytes, CODE).expect("valid instruction");
    crate::emulate::ptwr_store(&insn, f, cur)
}

#[test]
fn page_table_stores_decode_to_what_they_write() {
    use crate::emulate::{PtwrEffect as E, PtwrStore as S};
    use iced_x86::Register;
    let f = GuestFrame { rax: 0x8000_0000_1234_5067, rdx: 0x5555_6067, ..GuestFrame::default() };
    let cur = 0x8000_0000_0abc_d067;
    let s = |bytes, val, expected, effect| Some(S { bytes, val, expected, effect });
    // mov %rax,(%rdi); mov %eax,(%rdi); movq $imm32,(%rdi) sign-extended.
    assert_eq!(ptwr(&[0x48, 0x89, 0x07], &f, cur), s(8, f.rax, None, E::None));
    assert_eq!(ptwr(&[0x89, 0x07], &f, cur), s(4, 0x1234_5067, None, E::None));
    assert_eq!(ptwr(&[0x48, 0xc7, 0x07, 0xff, 0xff, 0xff, 0xff], &f, cur), s(8, u64::MAX, None, E::None));
    // xchg %rax,(%rdi) (Linux's ptep_get_and_clear): the register gets the old entry.
    assert_eq!(ptwr(&[0x48, 0x87, 0x07], &f, cur), s(8, f.rax, None, E::Exchange(Register::RAX)));
    // lock cmpxchg %rdx,(%rdi): compared with %rax.
    assert_eq!(ptwr(&[0xf0, 0x48, 0x0f, 0xb1, 0x17], &f, cur), s(8, f.rdx, Some(f.rax), E::CompareExchange));
    // lock andb $0xfd,(%rdi) (clear_bit of _PAGE_RW): one byte.
    assert_eq!(ptwr(&[0xf0, 0x80, 0x27, 0xfd], &f, 0x67), s(1, 0x65, None, E::Logic));
    // lock orq %rdx,(%rdi).
    assert_eq!(ptwr(&[0xf0, 0x48, 0x09, 0x17], &f, cur), s(8, cur | f.rdx, None, E::Logic));
    // lock btrq $5,(%rdi) (test_and_clear_bit of _PAGE_ACCESSED).
    assert_eq!(ptwr(&[0xf0, 0x48, 0x0f, 0xba, 0x37, 0x05], &f, cur), s(8, cur & !0x20, None, E::BitTest(5)));
    // A register bit offset beyond the operand, a load, and the high-byte registers: not here.
    let far = GuestFrame { rax: 70, ..f };
    assert_eq!(ptwr(&[0xf0, 0x48, 0x0f, 0xab, 0x07], &far, cur), None);
    assert_eq!(ptwr(&[0x48, 0x8b, 0x07], &f, cur), None);
    assert_eq!(ptwr(&[0x88, 0x27], &f, cur), None, "mov %ah,(%rdi)");
}

#[test]
fn the_cpus_segment_bases_are_the_truth_except_while_the_hypervisors_own_change_waits() {
    use hypercall_abi::xen::segbase;
    let mut hv = two_domains();
    let me = hv.current();
    // The guest loaded a null %gs: the CPU's GS base is 0, the vCPU's copy says 0x5000.
    hv.cur_vcpu_mut().gs_base_kernel = 0x5000;
    hv.plat.live_bases.set(Some((me, 0x7000, 0)));
    hv.refresh_segment_bases(me);
    assert_eq!((hv.cur_vcpu().fs_base, hv.cur_vcpu().gs_base_kernel), (0x7000, 0), "taken from the CPU");
    // set_segment_base of the old value: the hypervisor's copy is the truth until the exit
    // path loads it (a switch away in between must not take the stale CPU value back).
    let args = [u64::from(segbase::GS_KERNEL), 0x5000, 0, 0, 0];
    let _ = crate::hypercall::dispatch(&mut hv, hypercall_abi::hypercall::nr::SET_SEGMENT_BASE, args, None);
    hv.refresh_segment_bases(me);
    assert_eq!(hv.cur_vcpu().gs_base_kernel, 0x5000);
    let exit = crate::testkit::exit_work(&mut hv);
    assert_eq!(exit.hw.gs_base, 0x5000, "the exit path loads it");
    // Loaded: the CPU is the truth again.
    hv.refresh_segment_bases(me);
    assert_eq!(hv.cur_vcpu().gs_base_kernel, 0);
}
