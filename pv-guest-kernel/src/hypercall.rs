//! Hypercalls through the hypercall page, as every Xen PV guest makes them: call
//! `hypercall_page + nr * 32` with arguments in `%rdi, %rsi, %rdx, %r10, %r8`; the stub's
//! `syscall` enters the hypervisor. All argument registers may be clobbered.
//!
//! The typed wrappers below return the raw `%rax` value (negative = -errno) so that callers
//! can print exactly what the hypervisor answered; [`check`] turns it into a `Result`.

use core::arch::asm;
use hypercall_abi::hypercall::nr;
use hypercall_abi::xen::{MmuUpdate, MmuextOp, TrapInfo};
use hypercall_abi::{DomId, Errno};
use zerocopy::{FromBytes, Immutable, IntoBytes};

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

/// A hypercall made with a bare `syscall` instead of the hypercall page, for numbers the
/// page has no stub for (it holds 128). In guest kernel mode every `syscall` is a hypercall,
/// with the full 64-bit `%rax` as its number.
#[inline(always)]
pub fn raw_syscall(n: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    // SAFETY: the same contract as the page's stubs: a `syscall` from guest kernel mode enters
    // the hypervisor, which returns to the next instruction with `%rax` set and `%rcx`/`%r11`
    // clobbered by `sysret`; the argument registers are declared clobbered too.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") n => ret,
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

/// Hypercall `NR` (a constant) with two arguments, as a direct `call hypercall_page+NR*32`:
/// no address arithmetic, and only `%rdi`/`%rsi` loaded (the other argument registers are
/// still declared clobbered, as Xen may clobber all five).
#[inline(always)]
pub fn call2<const NR: u64>(a1: u64, a2: u64) -> i64 {
    let ret: i64;
    // SAFETY: as for `hypercall5`; the stub address is fixed at build time.
    unsafe {
        asm!(
            "call {page}+{off}",
            page = sym hypercall_page_symbol,
            off = const NR * 32,
            lateout("rax") ret,
            inout("rdi") a1 => _,
            inout("rsi") a2 => _,
            lateout("rdx") _,
            lateout("r10") _,
            lateout("r8") _,
            lateout("rcx") _,
            lateout("r11") _,
            options(att_syntax),
        );
    }
    ret
}

/// Hypercall `NR` (a constant) with up to five arguments, as a direct call (see [`call2`]).
#[inline(always)]
pub fn call5<const NR: u64>(a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    // SAFETY: as for `hypercall5`; the stub address is fixed at build time.
    unsafe {
        asm!(
            "call {page}+{off}",
            page = sym hypercall_page_symbol,
            off = const NR * 32,
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

/// Converts a return value to `Result`.
pub fn check(ret: i64) -> Result<u64, Errno> {
    Errno::from_ret(ret)
}

/// Address of a value passed by pointer.
pub fn ptr<T>(v: &T) -> u64 {
    v as *const T as u64
}

/// Address of a value the hypervisor writes to.
pub fn ptr_mut<T>(v: &mut T) -> u64 {
    v as *mut T as u64
}

/// `console_io(CONSOLEIO_write)`: writes straight to the hypervisor console.
pub fn console_write(bytes: &[u8]) -> i64 {
    call5::<{ nr::CONSOLE_IO }>(
        hypercall_abi::xen::consoleio::WRITE,
        bytes.len() as u64,
        bytes.as_ptr() as u64,
        0,
        0,
    )
}

/// `console_io(CONSOLEIO_read)`: the bytes waiting on the hypervisor's console (dom0 only),
/// at most `buf.len()`; how many were read.
pub fn console_read(buf: &mut [u8]) -> Result<usize, Errno> {
    let ret = call5::<{ nr::CONSOLE_IO }>(
        hypercall_abi::xen::consoleio::READ,
        buf.len() as u64,
        buf.as_mut_ptr() as u64,
        0,
        0,
    );
    check(ret).map(|n| (n as usize).min(buf.len()))
}

/// `xen_version(cmd, arg)`.
pub fn xen_version(cmd: u32, arg: u64) -> i64 {
    call2::<{ nr::XEN_VERSION }>(u64::from(cmd), arg)
}

/// `sched_op(cmd, arg)` with a struct argument.
pub fn sched_op<T: IntoBytes + Immutable>(cmd: u32, arg: &T) -> i64 {
    call2::<{ nr::SCHED_OP }>(u64::from(cmd), ptr(arg))
}

/// Gives up the CPU.
pub fn yield_cpu() {
    call2::<{ nr::SCHED_OP }>(u64::from(hypercall_abi::sched::op::YIELD), 0);
}

/// Blocks until an event arrives (re-enables event delivery first).
pub fn block() {
    call2::<{ nr::SCHED_OP }>(u64::from(hypercall_abi::sched::op::BLOCK), 0);
}

/// Shuts this domain down with `reason`; does not return.
pub fn shutdown(reason: u32) -> ! {
    let s = hypercall_abi::sched::SchedShutdown { reason };
    loop {
        sched_op(hypercall_abi::sched::op::SHUTDOWN, &s);
    }
}

/// `set_trap_table(table)`. `table` must end with an entry whose `address` is 0; an empty
/// slice clears the whole virtual IDT (Xen's `set_trap_table(NULL)`).
pub fn set_trap_table(table: &[TrapInfo]) -> i64 {
    let p = if table.is_empty() { 0 } else { table.as_ptr() as u64 };
    call2::<{ nr::SET_TRAP_TABLE }>(p, 0)
}

/// `set_callbacks(event, failsafe, syscall)`.
pub fn set_callbacks(event: u64, failsafe: u64, syscall: u64) -> i64 {
    call5::<{ nr::SET_CALLBACKS }>(event, failsafe, syscall, 0, 0)
}

/// `callback_op(cmd, arg)`.
pub fn callback_op<T: IntoBytes + Immutable>(cmd: u32, arg: &T) -> i64 {
    call2::<{ nr::CALLBACK_OP }>(u64::from(cmd), ptr(arg))
}

/// `update_va_mapping(va, new_pte, flags)` (`UVMF_*`).
pub fn update_va_mapping(va: u64, pte: u64, flags: u64) -> i64 {
    call5::<{ nr::UPDATE_VA_MAPPING }>(va, pte, flags, 0, 0)
}

/// `mmu_update(reqs, count, &done, domid)`; `done` receives how many requests succeeded.
pub fn mmu_update(reqs: &[MmuUpdate], done: &mut u32, domid: DomId) -> i64 {
    call5::<{ nr::MMU_UPDATE }>(reqs.as_ptr() as u64, reqs.len() as u64, ptr_mut(done), u64::from(domid.0), 0)
}

/// `mmuext_op(ops, count, &done, domid)`.
pub fn mmuext_op(ops: &[MmuextOp], done: &mut u32, domid: DomId) -> i64 {
    call5::<{ nr::MMUEXT_OP }>(ops.as_ptr() as u64, ops.len() as u64, ptr_mut(done), u64::from(domid.0), 0)
}

/// The deadline of the last successful [`set_timer_op`] (0: none armed). The timer is one-shot:
/// the VIRQ_TIMER handler clears this when it fires ([`timer_fired`]).
static TIMER_ARMED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// `set_timer_op(deadline)`: VIRQ_TIMER at absolute system time `deadline` ns; 0 cancels.
pub fn set_timer_op(deadline_ns: u64) -> i64 {
    let r = call2::<{ nr::SET_TIMER_OP }>(deadline_ns, 0);
    if r == 0 {
        TIMER_ARMED.store(deadline_ns, core::sync::atomic::Ordering::SeqCst);
    }
    r
}

/// [`set_timer_op`] unless exactly `deadline_ns` is armed already and has not fired: a
/// blocking loop woken by other events re-arms the same deadline on every pass, and the
/// hypercall would change nothing.
pub fn arm_timer(deadline_ns: u64) -> i64 {
    if deadline_ns != 0 && TIMER_ARMED.load(core::sync::atomic::Ordering::SeqCst) == deadline_ns {
        return 0;
    }
    set_timer_op(deadline_ns)
}

/// Called by the VIRQ_TIMER handler: the one-shot timer is no longer armed.
pub fn timer_fired() {
    TIMER_ARMED.store(0, core::sync::atomic::Ordering::SeqCst);
}

/// `event_channel_op(cmd, arg)`; `arg` is in/out.
pub fn event_channel_op<T: IntoBytes + FromBytes>(cmd: u32, arg: &mut T) -> i64 {
    call2::<{ nr::EVENT_CHANNEL_OP }>(u64::from(cmd), ptr_mut(arg))
}

/// `vcpu_op(cmd, vcpu, arg)` with a raw argument pointer.
pub fn vcpu_op(cmd: u32, vcpu: u32, arg: u64) -> i64 {
    call5::<{ nr::VCPU_OP }>(u64::from(cmd), u64::from(vcpu), arg, 0, 0)
}

/// `grant_table_op` on a batch of one command's arguments (the command comes from the
/// argument type). `Err` only when the hypercall itself fails (bad pointer, unknown command);
/// each operation's own outcome is its `status` field, which the caller checks. An empty
/// batch makes no call.
pub fn grant_table_op<T: hypercall_abi::grant_table::GrantTableOp>(ops: &mut [T]) -> Result<(), Errno> {
    if ops.is_empty() {
        return Ok(());
    }
    check(hypercall5(nr::GRANT_TABLE_OP, u64::from(T::CMD), ops.as_mut_ptr() as u64, ops.len() as u64, 0, 0))
        .map(drop)
}

/// `domctl(op)`: the toolstack interface (dom0 only).
pub fn domctl(op: &mut hypercall_abi::domctl::XenDomctl) -> i64 {
    call2::<{ nr::DOMCTL }>(ptr_mut(op), 0)
}

/// `memory_op(cmd, arg)` with a raw argument pointer (`XENMEM_*`; for the reservation
/// commands the result is the number of extents done, or -errno).
pub fn memory_op_raw(cmd: u32, arg: u64) -> i64 {
    call2::<{ nr::MEMORY_OP }>(u64::from(cmd), arg)
}

/// `memory_op(cmd, arg)` with an in/out structure argument.
pub fn memory_op<T: IntoBytes + FromBytes>(cmd: u32, arg: &mut T) -> i64 {
    memory_op_raw(cmd, ptr_mut(arg))
}

/// `stack_switch(ss, sp)`: the kernel stack the hypervisor switches to when an event,
/// exception or system call arrives while the guest is in user mode.
pub fn stack_switch(ss: u16, sp: u64) -> i64 {
    call2::<{ nr::STACK_SWITCH }>(u64::from(ss), sp)
}

/// microvisor's debug hypercall (`arch_7`): `cmd` from `hypercall_abi::hypercall::debug`.
pub fn debug_op(cmd: u64, arg: u64) -> i64 {
    call2::<{ nr::ARCH_DEBUG }>(cmd, arg)
}
