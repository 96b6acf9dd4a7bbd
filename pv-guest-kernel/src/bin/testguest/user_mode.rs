//! `user-mode`: a round trip through guest user mode, as a PV kernel runs its processes.
//!
//! The kernel builds a separate user address space (its own L4 holding only a code, a data
//! and a stack page at 4 MiB) and installs it with `MMUEXT_NEW_USER_BASEPTR`, registers a
//! syscall callback (`callback_op(CALLBACKTYPE_syscall, CALLBACKF_mask_events)`) and a kernel
//! stack for transitions from user mode (`stack_switch`), then `iret`s to the user code with
//! the flat ring-3 selector 0xe033 (the address space comes from `user_space.rs`). The user code stores a marker into its data page and
//! executes `syscall`; the hypervisor switches back to the kernel page tables and bounces to
//! the callback on the kernel stack with Xen's frame (`RCX, R11, RIP, CS, RFLAGS, RSP, SS`).
//! The callback records the registers and the frame and resumes the kernel where it entered
//! user mode (a longjmp). Running the user code at all proves the user L4 was loaded: its
//! pages are not mapped in the kernel's.

use super::landing;
use super::user_space::{UserSpace, USER_CODE, USER_DATA, USER_STACK_TOP};
use super::{report, results};
use alloc::string::String;
use alloc::vec::Vec;
use hypercall_abi::callback::{callback_type, callbackf, op as cbop, CallbackRegister};
use hypercall_abi::xen::{FLAT_RING3_CS64, FLAT_RING3_SS64};
use pv_guest_kernel::hypercall;
use pv_guest_kernel::mm::{self, pt};
use pv_guest_kernel::{events, println};

/// What the user code passes in %rdi and %eax, and stores at USER_DATA.
const MAGIC_ARG: u64 = 0x5ca1_ab1e;
const SYSCALL_NR: u64 = 7;
const DATA_MARKER: u64 = 0x600d;
const ROUNDS: usize = 2;

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

    .popsection
    "#,
    marker = const DATA_MARKER,
    data = const USER_DATA,
    arg = const MAGIC_ARG,
    nr = const SYSCALL_NR,
    options(att_syntax)
);

extern "C" {
    static __tg_user_start: u8;
    static __tg_user_after_syscall: u8;
    static __tg_user_end: u8;
}

pub fn run() {
    let mut fails: Vec<String> = Vec::new();
    // The labels delimit the user program in our .text; only their addresses are taken.
    let (start, after, end) = (
        core::ptr::addr_of!(__tg_user_start) as u64,
        core::ptr::addr_of!(__tg_user_after_syscall) as u64,
        core::ptr::addr_of!(__tg_user_end) as u64,
    );
    // SAFETY: the program's bytes lie between the labels, in our mapped .text.
    let code = unsafe { core::slice::from_raw_parts(start as *const u8, (end - start) as usize) };
    let us = match UserSpace::build(code) {
        Ok(us) => us,
        Err(e) => {
            println!("TEST user-mode FAIL {e}");
            return;
        }
    };
    let data = us.data;
    let cb = CallbackRegister {
        type_: callback_type::SYSCALL,
        flags: callbackf::MASK_EVENTS,
        _pad: 0,
        address: landing::syscall_stub(),
    };
    let r = hypercall::callback_op(cbop::REGISTER, &cb);
    results::ret("register-syscall-callback", r);
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
            let guard = events::mask_upcalls();
            // The iret hypercall into the user program with RFLAGS.IF clear, so events stay
            // masked in user mode.
            let args =
                [USER_CODE, u64::from(FLAT_RING3_CS64), 0x2, USER_STACK_TOP, u64::from(FLAT_RING3_SS64)];
            // SAFETY: enters the user program; control comes back through the syscall
            // callback's landing stub.
            let landed = unsafe { landing::catch(landing::__tg_iret_to, &args) };
            let masked_in_callback = events::upcalls_masked();
            drop(guard);
            results::yes(
                &alloc::format!("round{round}.syscall-callback"),
                landed.is_some_and(|l| l.id == landing::ID_SYSCALL),
            );
            let Some(l) = landed.filter(|l| l.id == landing::ID_SYSCALL) else {
                fails.push(alloc::format!("round {round}: no syscall callback ({landed:x?})"));
                break;
            };
            let (rdi, rsi, rax) = (l.regs[5], l.regs[4], l.rax());
            let (rcx, rip, cs, rsp, ss) = (l.rcx(), l.rip(), l.cs(), l.rsp(), l.ss());
            let want_rip = USER_CODE + (after - start);
            // SAFETY: as above.
            let marker = unsafe { (data.va as *const u64).read_volatile() };
            println!(
                "user-mode: round {round}: syscall {rax} arg {rdi:#x} from rip {rip:#x} cs {:#x} rsp {rsp:#x} ss {ss:#x}, data {marker:#x}",
                cs & 0xffff
            );
            let at = |check: &str| alloc::format!("round{round}.{check}");
            results::yes(&at("rax-rdi-as-set"), rax == SYSCALL_NR && rdi == MAGIC_ARG);
            results::yes(&at("rip-rcx-after-syscall"), rip == want_rip && rcx == want_rip);
            results::emit(&at("cs"), results::Value::Hex(cs & 0xffff));
            results::emit(&at("ss"), results::Value::Hex(ss & 0xffff));
            results::yes(&at("user-rsp"), rsp == USER_STACK_TOP && rsi == USER_STACK_TOP);
            results::yes(&at("user-store-seen"), marker == DATA_MARKER);
            results::yes(&at("events-masked-in-callback"), masked_in_callback);
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
    fails.extend(us.teardown());
    report("user-mode", &fails, format_args!("{ROUNDS} round trips through user mode via syscall"));
}
