//! Hypercalls through the hypercall page, as every Xen PV guest makes them: call
//! `hypercall_page + nr * 32` with arguments in `%rdi, %rsi, %rdx, %r10, %r8`; the stub's
//! `syscall` enters the hypervisor. All argument registers may be clobbered.

use core::arch::asm;
use hypercall_abi::hypercall::nr;
use hypercall_abi::Errno;
use zerocopy::{Immutable, IntoBytes};

/// Raw hypercall with up to five arguments; returns `%rax`.
#[inline(always)]
pub fn hypercall5(n: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    // SAFETY: `hypercall_page` is filled by the domain builder with Xen's stubs; the call
    // follows Xen's register convention and the asm declares every register the stub or the
    // hypervisor may clobber. Pointer arguments are the caller's responsibility: the
    // hypervisor validates them and fails with -EFAULT rather than harming us.
    unsafe {
        asm!(
            "lea {page}(%rip), %rax",
            "shl $5, {n}",
            "add {n}, %rax",
            "call *%rax",
            page = sym hypercall_page_symbol,
            n = inout(reg) n => _,
            lateout("rax") ret,
            inout("rdi") a1 => _,
            inout("rsi") a2 => _,
            inout("rdx") a3 => _,
            inout("r10") a4 => _,
            inout("r8") a5 => _,
            lateout("rcx") _,
            lateout("r11") _,
            options(att_syntax),
        );
    }
    ret
}

extern "C" {
    #[link_name = "hypercall_page"]
    static hypercall_page_symbol: u8;
}

/// Hypercall with no pointer arguments.
#[inline(always)]
pub fn hypercall2(n: u64, a1: u64, a2: u64) -> i64 {
    hypercall5(n, a1, a2, 0, 0, 0)
}

/// Converts a return value to `Result`.
pub fn check(ret: i64) -> Result<u64, Errno> {
    Errno::from_ret(ret)
}

/// Address of a value passed by pointer.
pub fn ptr<T>(v: &T) -> u64 {
    v as *const T as u64
}

/// `console_io(CONSOLEIO_write)`: writes straight to the hypervisor console.
pub fn console_write(bytes: &[u8]) -> i64 {
    hypercall5(
        nr::CONSOLE_IO,
        hypercall_abi::xen::consoleio::WRITE,
        bytes.len() as u64,
        bytes.as_ptr() as u64,
        0,
        0,
    )
}

/// `xen_version(cmd, arg)`.
pub fn xen_version(cmd: u32, arg: u64) -> i64 {
    hypercall2(nr::XEN_VERSION, u64::from(cmd), arg)
}

/// `sched_op(cmd, arg)` with a struct argument.
pub fn sched_op<T: IntoBytes + Immutable>(cmd: u32, arg: &T) -> i64 {
    hypercall2(nr::SCHED_OP, u64::from(cmd), ptr(arg))
}

/// Gives up the CPU.
pub fn yield_cpu() {
    hypercall2(nr::SCHED_OP, u64::from(hypercall_abi::sched::op::YIELD), 0);
}

/// Blocks until an event arrives (re-enables event delivery first).
pub fn block() {
    hypercall2(nr::SCHED_OP, u64::from(hypercall_abi::sched::op::BLOCK), 0);
}

/// Shuts this domain down with `reason`; does not return.
pub fn shutdown(reason: u32) -> ! {
    let s = hypercall_abi::sched::SchedShutdown { reason };
    loop {
        sched_op(hypercall_abi::sched::op::SHUTDOWN, &s);
    }
}
