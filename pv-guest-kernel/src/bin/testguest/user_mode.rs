//! `user-mode`: a round trip through guest user mode, as a PV kernel runs its processes.
//!
//! The kernel builds a separate user address space (its own L4 holding only a code, a data
//! and a stack page at 4 MiB) and installs it with `MMUEXT_NEW_USER_BASEPTR`, registers a
//! syscall callback (`callback_op(CALLBACKTYPE_syscall, CALLBACKF_mask_events)`) and a kernel
//! stack for transitions from user mode (`stack_switch`), then `iret`s to the user code with
//! the flat ring-3 selector 0xe033. The user code stores a marker into its data page and
//! executes `syscall`; the hypervisor switches back to the kernel page tables and bounces to
//! the callback on the kernel stack with Xen's frame (`RCX, R11, RIP, CS, RFLAGS, RSP, SS`).
//! The callback records the registers and the frame and resumes the kernel where it entered
//! user mode (a longjmp). Running the user code at all proves the user L4 was loaded: its
//! pages are not mapped in the kernel's.

use super::report;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};
use hypercall_abi::callback::{callback_type, callbackf, op as cbop, CallbackRegister};
use hypercall_abi::xen::{mmuext, uvmf, MmuextOp, FLAT_KERNEL_SS, FLAT_RING3_CS64, FLAT_RING3_SS64};
use hypercall_abi::DomId;
use pv_guest_kernel::hypercall;
use pv_guest_kernel::mm::{self, pt};
use pv_guest_kernel::{events, println};

/// User virtual addresses: code, data, stack (one page each, one L1).
const USER_CODE: u64 = 0x40_0000;
const USER_DATA: u64 = 0x40_1000;
const USER_STACK_TOP: u64 = 0x40_3000;
/// What the user code passes in %rdi and %eax, and stores at USER_DATA.
const MAGIC_ARG: u64 = 0x5ca1_ab1e;
const SYSCALL_NR: u64 = 7;
const DATA_MARKER: u64 = 0x600d;
const ROUNDS: usize = 2;

const KSTACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct KernelStack(UnsafeCell<[u8; KSTACK_SIZE]>);
// SAFETY: only the hypervisor writes it (bounce frames) and only the syscall callback reads
// it, one round trip at a time.
unsafe impl Sync for KernelStack {}
static KSTACK: KernelStack = KernelStack(UnsafeCell::new([0; KSTACK_SIZE]));

/// What the syscall callback saw: %rdi, %rsi, %rax, then the 7 words of the bounce frame.
static SEEN: [AtomicU64; 10] = [const { AtomicU64::new(0) }; 10];
/// The kernel's stack pointer while it is in user mode.
static SAVED_RSP: AtomicU64 = AtomicU64::new(0);
static CALLBACKS: AtomicU64 = AtomicU64::new(0);

core::arch::global_asm!(
    r#"
    .pushsection .text.tg_user, "ax"

    /* The user program, copied to USER_CODE: position independent. */
    .globl __tg_user_start
    __tg_user_start:
        movq ${marker}, {data}
        mov %rsp, %rsi
        movabs ${arg}, %rdi
        mov ${nr}, %eax
        syscall
    .globl __tg_user_after_syscall
    __tg_user_after_syscall:
        ud2
    .globl __tg_user_end
    __tg_user_end:

    /* enter_user(rip, rsp): iret to user mode; "returns" when the syscall callback runs. */
    .globl __tg_enter_user
    __tg_enter_user:
        push %rbx
        push %rbp
        push %r12
        push %r13
        push %r14
        push %r15
        mov %rsp, {saved}(%rip)
        pushq ${user_ss}
        push %rsi
        pushq $0x2           /* RFLAGS.IF clear: events stay masked in user mode */
        pushq ${user_cs}
        push %rdi
        pushq $0             /* iret flags: a full return, not the sysret path */
        jmp hypercall_page + 23 * 32

    /* The syscall callback: the frame is RCX, R11, RIP, CS, RFLAGS, RSP, SS. */
    .globl __tg_syscall_callback
    __tg_syscall_callback:
        mov %rdi, {seen}+0(%rip)
        mov %rsi, {seen}+8(%rip)
        mov %rax, {seen}+16(%rip)
        lea {seen}+24(%rip), %rdi
        mov %rsp, %rsi
        mov $7, %ecx
        cld
        rep movsq
        lock incq {count}(%rip)
        mov {saved}(%rip), %rsp
        pop %r15
        pop %r14
        pop %r13
        pop %r12
        pop %rbp
        pop %rbx
        ret

    .popsection
    "#,
    marker = const DATA_MARKER,
    data = const USER_DATA,
    arg = const MAGIC_ARG,
    nr = const SYSCALL_NR,
    saved = sym SAVED_RSP,
    seen = sym SEEN,
    count = sym CALLBACKS,
    user_ss = const FLAT_RING3_SS64,
    user_cs = const FLAT_RING3_CS64,
    options(att_syntax)
);

extern "C" {
    static __tg_user_start: u8;
    static __tg_user_after_syscall: u8;
    static __tg_user_end: u8;
    fn __tg_enter_user(rip: u64, rsp: u64);
    fn __tg_syscall_callback();
}

fn ext(cmd: u32, arg1: u64) -> i64 {
    let mut done = 0u32;
    hypercall::mmuext_op(&[MmuextOp { cmd, _pad: 0, arg1, arg2: 0 }], &mut done, DomId::SELF)
}

fn remap(p: &mm::Page, flags: u64) -> i64 {
    hypercall::update_va_mapping(p.va, pt::make(p.mfn, flags), uvmf::INVLPG)
}

/// Writes entry `idx` of a page that is not (yet) a page table.
fn write_entry(p: &mm::Page, idx: usize, val: u64) {
    // SAFETY: `p` is a page of ours, mapped writable at `p.va`, not in use as a table.
    unsafe { ((p.va + idx as u64 * 8) as *mut u64).write_volatile(val) };
}

pub fn run() {
    let mut fails: Vec<String> = Vec::new();
    let pages: Vec<mm::Page> = (0..7).filter_map(|_| mm::alloc_page().ok()).collect();
    let [code, data, stack, l1, l2, l3, l4] = pages[..] else {
        println!("TEST user-mode FAIL cannot allocate 7 pages");
        return;
    };
    // The labels delimit the user program in our .text; only their addresses are taken.
    let (start, after, end) = (
        core::ptr::addr_of!(__tg_user_start) as u64,
        core::ptr::addr_of!(__tg_user_after_syscall) as u64,
        core::ptr::addr_of!(__tg_user_end) as u64,
    );
    let len = (end - start) as usize;
    // SAFETY: copies the program's bytes (between the labels, in our mapped .text) into the
    // code page, writable in the direct map.
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, code.va as *mut u8, len) };

    // The user address space: L4[0] -> L3[0] -> L2[2] -> L1[0..3].
    let user_ro = pt::PRESENT | pt::USER | pt::ACCESSED;
    let user_rw = pt::PAGE_KERNEL;
    write_entry(&l1, pt::table_index(USER_CODE, 1), pt::make(code.mfn, user_ro));
    write_entry(&l1, pt::table_index(USER_DATA, 1), pt::make(data.mfn, user_rw));
    write_entry(&l1, pt::table_index(USER_STACK_TOP - 8, 1), pt::make(stack.mfn, user_rw));
    write_entry(&l2, pt::table_index(USER_CODE, 2), pt::make(l1.mfn, pt::PAGE_TABLE));
    write_entry(&l3, pt::table_index(USER_CODE, 3), pt::make(l2.mfn, pt::PAGE_TABLE));
    write_entry(&l4, pt::table_index(USER_CODE, 4), pt::make(l3.mfn, pt::PAGE_TABLE));
    for t in [&l1, &l2, &l3, &l4] {
        let r = remap(t, pt::PAGE_KERNEL_RO);
        check!(fails, r == 0, "cannot make a user page-table frame read-only: {r}");
    }
    let r = ext(mmuext::NEW_USER_BASEPTR, l4.mfn.0);
    check!(fails, r == 0, "MMUEXT_NEW_USER_BASEPTR: {r}");
    let ks_top = (KSTACK.0.get() as u64 + KSTACK_SIZE as u64) & !15;
    let r = hypercall::stack_switch(FLAT_KERNEL_SS, ks_top);
    check!(fails, r == 0, "stack_switch: {r}");
    let cb = CallbackRegister {
        type_: callback_type::SYSCALL,
        flags: callbackf::MASK_EVENTS,
        _pad: 0,
        address: __tg_syscall_callback as *const () as u64,
    };
    let r = hypercall::callback_op(cbop::REGISTER, &cb);
    check!(fails, r == 0, "callback_op(register syscall): {r}");
    // The kernel does not map the user code: only the user L4 does.
    check!(
        fails,
        !matches!(mm::lookup(USER_CODE), Ok(Some(e)) if pt::is_present(e)),
        "USER_CODE is mapped in the kernel"
    );

    if fails.is_empty() {
        for round in 1..=ROUNDS {
            // SAFETY: the data page is ours and writable in the direct map.
            unsafe { (data.va as *mut u64).write_volatile(0) };
            let before = CALLBACKS.load(Ordering::SeqCst);
            let guard = events::mask_upcalls();
            // SAFETY: enters the user program through the iret hypercall; control comes back
            // through the syscall callback, which restores the callee-saved registers and the
            // stack pointer saved here and returns as from a normal call.
            unsafe { __tg_enter_user(USER_CODE, USER_STACK_TOP) };
            let masked_in_callback = events::upcalls_masked();
            drop(guard);
            let s: Vec<u64> = SEEN.iter().map(|a| a.load(Ordering::SeqCst)).collect();
            let (rdi, rsi, rax) = (s[0], s[1], s[2]);
            let [rcx, _r11, rip, cs, _rflags, rsp, ss] = [s[3], s[4], s[5], s[6], s[7], s[8], s[9]];
            let want_rip = USER_CODE + (after - start);
            // SAFETY: as above.
            let marker = unsafe { (data.va as *const u64).read_volatile() };
            println!(
                "user-mode: round {round}: syscall {rax} arg {rdi:#x} from rip {rip:#x} cs {:#x} rsp {rsp:#x} ss {ss:#x}, data {marker:#x}",
                cs & 0xffff
            );
            check!(
                fails,
                CALLBACKS.load(Ordering::SeqCst) == before + 1,
                "round {round}: no syscall callback"
            );
            check!(
                fails,
                rax == SYSCALL_NR && rdi == MAGIC_ARG,
                "round {round}: registers rax {rax:#x} rdi {rdi:#x}"
            );
            check!(
                fails,
                rip == want_rip && rcx == want_rip,
                "round {round}: rip {rip:#x} rcx {rcx:#x}, want {want_rip:#x}"
            );
            check!(
                fails,
                cs & 0xffff == u64::from(FLAT_RING3_CS64),
                "round {round}: cs {cs:#x} is not the user's 0xe033"
            );
            check!(fails, ss & 0xffff == u64::from(FLAT_RING3_SS64), "round {round}: ss {ss:#x}");
            check!(
                fails,
                rsp == USER_STACK_TOP && rsi == USER_STACK_TOP,
                "round {round}: user rsp {rsp:#x} / {rsi:#x}"
            );
            check!(fails, marker == DATA_MARKER, "round {round}: user store not seen ({marker:#x})");
            check!(fails, masked_in_callback, "round {round}: CALLBACKF_mask_events did not mask events");
            check!(
                fails,
                hypercall::xen_version(hypercall_abi::version::op::VERSION, 0) > 0,
                "round {round}: hypercalls broken after the return to kernel mode"
            );
        }
    }

    // Tear down: no user base, tables writable and free again.
    let r = ext(mmuext::NEW_USER_BASEPTR, 0);
    check!(fails, r == 0, "MMUEXT_NEW_USER_BASEPTR(0): {r}");
    for p in &pages {
        // A frame still read-only must not go back to the allocator (it zeroes pages).
        let r = remap(p, pt::PAGE_KERNEL);
        check!(fails, r == 0, "frame {:#x} not writable after release: {r}", p.mfn.0);
        if r == 0 {
            let _ = mm::free_page(p.pfn);
        }
    }
    report("user-mode", &fails, format_args!("{ROUNDS} round trips through user mode via syscall"));
}
