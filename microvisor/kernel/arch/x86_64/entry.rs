//! Entry and exit paths between guests (ring 3) and the hypervisor (ring 0).
//!
//! * **Live frame.** The running vCPU's registers are saved in one static [`GuestFrame`],
//!   `LIVE_FRAME`. TSS.RSP0 points at its end, so an interrupt or exception from ring 3 has
//!   the CPU push its iret frame straight into it; the stub adds the error code, the vector
//!   and the general registers, completing the frame in place. The core logic switches vCPUs
//!   by copying frames in and out of it, and every slow exit pops it and `iretq`s.
//! * **Hypercall fast path.** `syscall` from guest kernel mode (other than `iret`) saves only
//!   what the Rust call would clobber (`%rcx`, `%r11`, `%r9` and the five argument registers:
//!   as a release Xen, a hypercall changes nothing but `%rax`), calls the dispatcher with the
//!   arguments in registers and returns with `sysretq`. Only when the
//!   dispatcher asks for the exit path (reschedule, event, continuation) is a full frame built.
//! * **`sysretq` only to a canonical RIP.** The RIP `sysretq` returns to is the one the CPU
//!   saved in `%rcx`: the address after the `syscall`. That is canonical except for a
//!   `syscall` ending at the top of the lower half (0x7fff_ffff_ffff), which leaves exactly
//!   `NONCANONICAL_RETURN` in `%rcx` (an instruction that ends at the top of the upper half
//!   wraps to 0). On Intel `sysretq` to it faults in ring 0 on the guest's stack (XSA-7), so
//!   both `sysretq` sites compare `%rcx` with it and take the exit path instead, which returns
//!   with `iretq` and, as Xen does, gives the guest #GP(0) there.
//! * **Full-frame syscalls.** `iret`, `syscall` from guest user mode and `syscall` from 32-bit
//!   code (CSTAR, either guest mode) need every register, so they build the frame before
//!   anything is clobbered.
//! * The hypervisor runs on one stack, reset on every entry from a guest, with interrupts
//!   disabled (all IDT gates are interrupt gates and SFMASK clears IF), so it never nests.
//!   Only the idle loop enables interrupts, and an interrupt there is handled on its stack.
//!   Every entry runs with DF and AC clear: SFMASK clears them for `syscall`, the exception
//!   stub clears them itself (a guest may set both in ring 3, and AC would lift SMAP).

use super::gdt;
use crate::arch::x86_64::cpu;
use core::arch::global_asm;
use core::cell::UnsafeCell;
use core::mem::offset_of;
use core::sync::atomic::{AtomicU8, Ordering};
use hypercall_abi::hypercall::nr;
use hypercall_abi::xen::VcpuInfo;
use hypercall_abi::xen::{FLAT_RING3_CS32, FLAT_RING3_CS64, FLAT_RING3_SS64};
use microvisor::vcpu::{rflags, GuestFrame, VECTOR_SYSCALL};

/// The running vCPU's registers (see the module documentation).
#[repr(C, align(16))]
pub struct LiveFrame(pub UnsafeCell<GuestFrame>);

// SAFETY: only the hypervisor (one CPU, interrupts disabled, never nested) and the CPU's own
// interrupt delivery touch it.
unsafe impl Sync for LiveFrame {}

#[no_mangle]
static LIVE_FRAME: LiveFrame = LiveFrame(UnsafeCell::new(GuestFrame {
    r15: 0,
    r14: 0,
    r13: 0,
    r12: 0,
    rbp: 0,
    rbx: 0,
    r11: 0,
    r10: 0,
    r9: 0,
    r8: 0,
    rax: 0,
    rcx: 0,
    rdx: 0,
    rsi: 0,
    rdi: 0,
    vector: 0,
    error_code: 0,
    rip: 0,
    cs: 0,
    rflags: 0,
    rsp: 0,
    ss: 0,
}));

/// Guest `%rsp` at `syscall` (the instruction does not switch stacks).
#[no_mangle]
static mut GUEST_RSP_SCRATCH: u64 = 0;

/// Virtual address (direct map) of the running vCPU's `vcpu_info`, for the fast path's
/// upcall test. Points at a zero word until a vCPU runs.
#[no_mangle]
static mut CUR_VCPU_INFO: u64 = 0;
static NO_VCPU_INFO: u64 = 0;

/// Sets the `vcpu_info` the fast path tests (a direct-map address the caller validated).
pub fn set_cur_vcpu_info(va: u64) {
    // SAFETY: single CPU with interrupts off; the stub reads it only on later entries.
    unsafe { CUR_VCPU_INFO = va };
}

/// The fast path's `vcpu_info` pointer before any vCPU runs.
pub fn init_cur_vcpu_info() {
    set_cur_vcpu_info(&NO_VCPU_INFO as *const u64 as u64);
}

const FRAME_SIZE: usize = core::mem::size_of::<GuestFrame>();
const _: () = assert!(FRAME_SIZE.is_multiple_of(16));

/// The right to use the live frame during one entry from a guest. Only the Rust ends of the
/// stubs below make one, once per entry, and the hypervisor never nests, so a borrow of it is
/// the only reference to the frame; it ends before the return to the guest, whose next entry
/// the CPU writes into the frame. Zero-sized and passed by value, so it costs nothing:
/// [`Live::frame`] is the static's address, which the exit path's loop re-derives for free (a
/// frame pointer passed as an argument had to be kept across its calls: two to fifteen
/// instructions per slow exit).
pub struct Live(());

impl Live {
    /// The live frame.
    #[inline(always)]
    pub fn frame(&mut self) -> &mut GuestFrame {
        // SAFETY: the token is unique (see the type), and the reference borrows it.
        unsafe { &mut *LIVE_FRAME.0.get() }
    }
}

/// Address of the end of the live frame, for TSS.RSP0.
pub fn live_frame_end() -> u64 {
    LIVE_FRAME.0.get() as u64 + FRAME_SIZE as u64
}

/// Points `syscall` at the hypercall entry (guest kernel mode) or at the entry that bounces
/// it to the guest kernel (guest user mode), so the fast path needs no mode test.
pub fn set_guest_kernel_mode(kernel: bool, traced: bool) {
    extern "C" {
        fn syscall_entry();
        fn syscall_entry_general();
        fn syscall_user_entry();
    }
    let target = match (kernel, traced) {
        (true, false) => syscall_entry as *const (),
        (true, true) => syscall_entry_general as *const (),
        (false, _) => syscall_user_entry as *const (),
    };
    cpu::wrmsr(cpu::msr::LSTAR, target as u64);
}

/// Offset of the `{evtchn_upcall_pending, evtchn_upcall_mask}` word in `vcpu_info` that the
/// stubs test (Xen's `test_guest_events`): 1 = an event to deliver, with upcalls unmasked.
const UPCALL_WORD: usize = offset_of!(VcpuInfo, evtchn_upcall_pending);
const _: () = assert!(offset_of!(VcpuInfo, evtchn_upcall_mask) == UPCALL_WORD + 1);

/// The one non-canonical address `syscall` can leave in `%rcx`: the end of an instruction
/// that ends at the top of the lower half (see the module documentation).
pub const NONCANONICAL_RETURN: u64 = 1 << 47;
const _: () = assert!(!hypercall_abi::xen::is_canonical(NONCANONICAL_RETURN));

/// 1 when the CPU has SMAP (CPUID) and the hypervisor turned it on: the exception stub then
/// executes `clac` (which faults without SMAP), and the guest copies bracket themselves with
/// `stac`/`clac` (guest_copy.rs). It stays 1 after `cpu::disable_smap` (the TCG quirk): both
/// instructions need only CPUID's SMAP, not CR4.SMAP.
pub(super) static SMAP_ON: AtomicU8 = AtomicU8::new(0);

/// Tells the exception stub that SMAP is on (so it clears a guest's AC on entry).
pub fn set_smap_on() {
    SMAP_ON.store(1, Ordering::Relaxed);
}

/// Return value of the fast hypercall dispatcher (in `%rax:%rdx`).
#[repr(C)]
pub struct FastRet {
    pub rax: u64,
    /// Nonzero: build the frame and run the exit path.
    pub slow: u64,
}

extern "C" {
    /// First of 256 16-byte interrupt stubs.
    pub static vector_stubs: u8;
    fn exit_to_guest() -> !;
}

global_asm!(
    r#"
    .macro PUSH_GPRS
        push %rdi
        push %rsi
        push %rdx
        push %rcx
        push %rax
        push %r8
        push %r9
        push %r10
        push %r11
        push %rbx
        push %rbp
        push %r12
        push %r13
        push %r14
        push %r15
    .endm
    .macro POP_GPRS
        pop %r15
        pop %r14
        pop %r13
        pop %r12
        pop %rbp
        pop %rbx
        pop %r11
        pop %r10
        pop %r9
        pop %r8
        pop %rax
        pop %rcx
        pop %rdx
        pop %rsi
        pop %rdi
    .endm

    .macro POP_HYPERCALL_REGS
        pop %rdi
        pop %rsi
        pop %rdx
        pop %r10
        pop %r8
        pop %r9
        pop %r11
        pop %rcx
    .endm

    /* The frame of a `syscall` in the live frame (the CPU saved RIP in rcx and RFLAGS in
       r11; the guest rsp is in GUEST_RSP_SCRATCH), then the hypervisor stack. */
    .macro SYSCALL_FRAME code_sel
        lea LIVE_FRAME+{frame_size}(%rip), %rsp
        pushq ${ss}
        pushq GUEST_RSP_SCRATCH(%rip)
        push %r11
        pushq $\code_sel
        push %rcx
        pushq $0
        pushq ${vsyscall}
        PUSH_GPRS
        lea boot_stack_top(%rip), %rsp
    .endm

    .section .text.entry, "ax"

    /* ---- syscall: hypercalls and guest-user system calls ---- */
    /* LSTAR points here while the vCPU is in guest kernel mode (a hypercall), unless the boot
       is traced. The fast path, seL4-style: `xen_version(XENVER_version)` is what Linux issues
       to force delivery of events it has just unmasked, so it is answered here, without a
       stack, unless the running vCPU has an event to deliver (Xen's test_guest_events: the
       {{evtchn_upcall_pending, evtchn_upcall_mask}} word == 0x0001). Nothing else can be owed
       on the way out: every earlier entry left through the exit path whenever the core had
       exit work, so the core's `exit_work` is clear at every entry. */
    .balign 16
    .globl syscall_entry
syscall_entry:
    cmp ${nr_xen_version}, %rax
    jne syscall_entry_general
    test %edi, %edi
    jnz syscall_entry_general
    mov CUR_VCPU_INFO(%rip), %rax
    cmpw $1, {upcall}(%rax)
    movabs ${noncanonical}, %rax
    je 1f
    cmp %rax, %rcx
    je 1f
    mov ${xen_version}, %eax
    sysretq
1:  /* An event to deliver, or a return RIP sysretq must not take: the general path. */
    mov ${nr_xen_version}, %eax
    jmp syscall_entry_general

    /* Every other hypercall, and all of them in a traced boot (which records each one):
       the general dispatcher, with the arguments in registers. */
    .balign 16
    .globl syscall_entry_general
syscall_entry_general:
    mov %rsp, GUEST_RSP_SCRATCH(%rip)
    lea boot_stack_top(%rip), %rsp
    cmp ${iret}, %eax
    je syscall_full
    /* Xen's register contract: a hypercall changes %rax only (the page's stub keeps rcx and
       r11 around the syscall). Keep everything the call may clobber: rcx/r11 (the return
       rip/rflags for sysret), r9, and the argument registers. Eight pushes keep the stack
       16-byte aligned at the call. The argument registers are pushed so that their copy is
       the array of the five arguments (rdi first), which the dispatcher reads in place. */
    push %rcx
    push %r11
    push %r9
    push %r8
    push %r10
    push %rdx
    push %rsi
    push %rdi
    mov %rsp, %rdi
    mov %rax, %rsi
    call {hc_general}
    /* Exit work the core reported, or an event to deliver: Xen's test_guest_events, the
       {{evtchn_upcall_pending, evtchn_upcall_mask}} word of the running vCPU == 0x0001. */
    test %rdx, %rdx
    jnz hypercall_exit_path
    mov CUR_VCPU_INFO(%rip), %rdx
    cmpw $1, {upcall}(%rdx)
    je hypercall_exit_path
    /* The saved %rcx is the return RIP: the one non-canonical value goes through iretq. */
    movabs ${noncanonical}, %rdx
    cmp %rdx, 56(%rsp)
    je hypercall_exit_path
    POP_HYPERCALL_REGS
    mov GUEST_RSP_SCRATCH(%rip), %rsp
    sysretq

hypercall_exit_path:
    /* The dispatcher wants the exit path: build the frame (rax = its result) from the
       guest's registers. */
    POP_HYPERCALL_REGS
    SYSCALL_FRAME {cs}
    call {hc_exit}
    jmp exit_to_guest

    /* ...and here while it is in guest user mode (a system call for the guest kernel). */
    .balign 16
    .globl syscall_user_entry
syscall_user_entry:
    mov %rsp, GUEST_RSP_SCRATCH(%rip)
syscall_full:
    SYSCALL_FRAME {cs}
    call {syscall_slow}
    jmp exit_to_guest

    /* CSTAR: `syscall` from 32-bit code (selector 0xe023) in either guest mode. Never a
       hypercall: Xen bounces it to the guest's syscall32 callback (see traps.rs). The frame
       records the 32-bit selector, which is how the core tells it apart. */
    .balign 16
    .globl syscall_compat_entry
syscall_compat_entry:
    mov %rsp, GUEST_RSP_SCRATCH(%rip)
    SYSCALL_FRAME {cs32}
    call {syscall_slow}
    jmp exit_to_guest

    /* ---- exceptions and interrupts ---- */
    .balign 16
    .globl vector_stubs
vector_stubs:
    .set vec, 0
    .rept 256
        .balign 16
        .if vec == {db}
            jmp db_entry
        .elseif (vec < 32) && (({ec_mask} >> vec) & 1)
            pushq $vec
        .else
            pushq $0
            pushq $vec
        .endif
        jmp common_entry
        .set vec, vec + 1
    .endr

    /* #DB arrives on its own IST stack (see gdt::IST_DB). From ring 0 it is handled there;
       from ring 3 its frame is moved to where every other ring-3 entry leaves it, the top of
       the live frame, and the common path continues on it. */
db_entry:
    pushq $0
    pushq ${db}
    testb $3, 24(%rsp)
    jz common_entry
    push %rax
    .irp word, 0, 1, 2, 3, 4, 5, 6
        mov 8+8*\word(%rsp), %rax
        mov %rax, LIVE_FRAME+{off_vector}+8*\word(%rip)
    .endr
    pop %rax
    lea LIVE_FRAME+{off_vector}(%rip), %rsp
    jmp common_entry

common_entry:
    /* The guest may have set DF and AC: the hypervisor's code assumes DF clear, and AC would
       lift SMAP. `clac` exists only where SMAP does. */
    cld
    testb $1, {smap_on}(%rip)
    jz 1f
    clac
1:  PUSH_GPRS
    mov %rsp, %rdi
    testb $3, {off_cs}(%rsp)
    jz 2f
    lea boot_stack_top(%rip), %rsp
    call {trap_guest}
    jmp exit_to_guest
2:  /* From ring 0: the idle loop's interrupt, or a hypervisor fault (which does not return). */
    call {trap_hv}
    POP_GPRS
    add $16, %rsp
    iretq

    /* ---- back to the guest in the live frame ---- */
    .balign 16
    .globl exit_to_guest
exit_to_guest:
    lea LIVE_FRAME(%rip), %rsp
    POP_GPRS
    add $16, %rsp
    iretq
"#,
    iret = const nr::IRET,
    frame_size = const FRAME_SIZE,
    ss = const FLAT_RING3_SS64 as u64,
    cs = const FLAT_RING3_CS64 as u64,
    cs32 = const FLAT_RING3_CS32 as u64,
    ec_mask = const microvisor::x86::vector::ERROR_CODE_MASK,
    upcall = const UPCALL_WORD,
    noncanonical = const NONCANONICAL_RETURN,
    smap_on = sym SMAP_ON,
    vsyscall = const VECTOR_SYSCALL,
    off_cs = const offset_of!(GuestFrame, cs),
    off_vector = const offset_of!(GuestFrame, vector),
    db = const microvisor::x86::vector::DB,
    nr_xen_version = const nr::XEN_VERSION,
    xen_version = const microvisor::version::XEN_VERSION,
    hc_general = sym hypercall_general,
    hc_exit = sym hypercall_exit,
    syscall_slow = sym syscall_slow,
    trap_guest = sym trap_from_guest,
    trap_hv = sym trap_in_hypervisor,
    options(att_syntax)
);

/// Installs the syscall entry and the interrupt stubs.
pub fn init() {
    init_cur_vcpu_info();
    gdt::init(live_frame_end());
    // SAFETY: taking the address of the linker-visible stub table.
    super::idt::init(unsafe { &vector_stubs as *const u8 as u64 });
    init_syscall_entry();
}

/// Points `syscall` at the hypercall entry (64-bit code) and at the compat entry (32-bit
/// code, CSTAR).
pub fn init_syscall_entry() {
    extern "C" {
        fn syscall_entry();
        fn syscall_compat_entry();
    }
    cpu::wrmsr(cpu::msr::LSTAR, syscall_entry as *const () as u64);
    cpu::wrmsr(cpu::msr::CSTAR, syscall_compat_entry as *const () as u64);
    // SFMASK: clear IF (the hypervisor runs with interrupts off), DF, TF, AC and NT on entry.
    cpu::wrmsr(cpu::msr::SFMASK, rflags::IF | rflags::DF | rflags::TF | rflags::AC | rflags::NT);
}

/// Leaves boot: `prepare` puts the first guest's registers in the live frame, then the CPU
/// enters that guest.
pub fn enter_first_guest(prepare: impl FnOnce(Live)) -> ! {
    // End of boot, interrupts off: the one token, gone before the guest runs.
    prepare(Live(()));
    // SAFETY: on the hypervisor stack with a guest's registers in the live frame;
    // `exit_to_guest` never returns.
    unsafe { exit_to_guest() }
}

// ---- The Rust ends of the stubs: what the assembly calls, handing the core's glue its state.

/// `syscall_entry_general`: a hypercall from guest kernel mode; `args` is the stub's saved
/// copy of the argument registers (`rdi, rsi, rdx, r10, r8`). Returns the result in `%rax` and
/// whether to take the exit path in `%rdx`.
extern "C" fn hypercall_general(args: &[u64; 5], nr: u64) -> FastRet {
    // SAFETY: `syscall` from a guest is the only way here and guests run only after the
    // hypervisor was installed; no hypervisor code was running (it never executes `syscall`
    // and runs with interrupts off), so no other reference exists. This hot path skips the
    // busy check of `CpuLocal::with` for that reason.
    let slot = unsafe { crate::machine::HV.get_unchecked() };
    // SAFETY: installed before the first guest runs (`machine::install`), never removed.
    let hv = unsafe { slot.as_deref_mut().unwrap_unchecked() };
    crate::machine::hypercall_general(hv, args, nr)
}

/// `hypercall_exit_path`: the frame is built in the live frame.
extern "C" fn hypercall_exit() {
    // An entry from a guest: this entry's token.
    crate::machine::hypercall_exit(Live(()));
}

/// `syscall_full` / `syscall_compat_entry`: the frame is built in the live frame.
extern "C" fn syscall_slow() {
    crate::machine::syscall_slow(Live(()));
}

/// `common_entry` from ring 3: `frame` is the live frame, except for NMI, #DF and #MC, whose
/// frame is on their IST stack (fatal while a guest runs).
extern "C" fn trap_from_guest(frame: *mut GuestFrame) {
    if frame != LIVE_FRAME.0.get() {
        // SAFETY: the stub passes the frame it just completed on the IST stack, which nothing
        // else references.
        crate::machine::fatal(unsafe { &*frame }, "machine exception while a guest ran");
    }
    crate::machine::trap_from_guest(Live(()));
}

/// `common_entry` from ring 0: `frame` is on the current stack.
extern "C" fn trap_in_hypervisor(frame: *mut GuestFrame) {
    // SAFETY: as for `trap_from_guest`; the interrupted code does not touch its own frame.
    crate::machine::trap_in_hypervisor(unsafe { &mut *frame });
}
