//! `hypercall-regs`: Xen's register contract (issue 11, item 1). A release Xen changes only
//! `%rax` across a hypercall made through the hypercall page (whose stub keeps `%rcx` and
//! `%r11` around its `syscall`). Every general register is loaded with its own pattern, the
//! hypercall is made, and every register is compared afterwards: on the fast path
//! (`xen_version(XENVER_version)`), the general path, a call that takes the exit path to
//! deliver an event (a send on a loopback channel) or to reschedule (`sched_op(yield)`), an
//! unknown hypercall, a continued one (a long `mmu_update`: Xen rewrites the argument
//! registers of a continuation, so there only the others are checked), and the `iret`
//! hypercall (which sets `%rax`, `%r11` and `%rcx` from its frame and keeps the rest).

use super::checks::Results;
use alloc::format;
use core::sync::atomic::{AtomicU64, Ordering};
use hypercall_abi::hypercall::nr;
use hypercall_abi::xen::{mmu, MmuUpdate, FLAT_KERNEL_CS, FLAT_KERNEL_SS};
use hypercall_abi::{sched, version, DomId, Port};
use pv_guest_kernel::{events, mm};

/// Register order of [`OUT`] and [`PATTERN`]: rax, rbx, rcx, rdx, rsi, rdi, rbp, r8..r15, rsp.
const NAMES: [&str; 16] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
    "rsp",
];
const RAX: usize = 0;
const RCX: usize = 2;
const RDX: usize = 3;
const RSI: usize = 4;
const RDI: usize = 5;
const R8: usize = 7;
const R10: usize = 9;
const R11: usize = 10;
const RSP: usize = 15;
/// The argument registers (a continuation rewrites them).
const ARGS: [usize; 5] = [RDI, RSI, RDX, R10, R8];

/// What each register holds going in (the argument registers are overwritten by the call's
/// arguments, rsp by the stack pointer).
const fn pattern(i: usize) -> u64 {
    0xa5a5_0000_0000_0000 | ((i as u64) << 40) | ((i as u64) * 0x0101_0101)
}

/// The registers after the call, then those before it (rsp as it was at the call).
static OUT: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];
static IN: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];
static SAVED_RSP: AtomicU64 = AtomicU64::new(0);

core::arch::global_asm!(
    r#"
    .pushsection .text.tg_regs, "ax"

    /* __tg_regs_call(&[target, a1, a2, a3, a4, a5]): every register gets its pattern (the
       argument registers the arguments), IN records them, the call is made, OUT records
       every register after it. */
    .globl __tg_regs_call
__tg_regs_call:
    "#,
    push_callee_saved!(),
    r#"
    mov %rsp, {saved}(%rip)
    mov 0(%rdi), %rax
    mov %rax, {target}(%rip)
    mov 8(%rdi), %rax
    mov %rax, {inp}+40(%rip)
    mov 16(%rdi), %rsi
    mov 24(%rdi), %rdx
    mov 32(%rdi), %r10
    mov 40(%rdi), %r8
    mov %rax, %rdi
    movabs ${p0}, %rax
    movabs ${p1}, %rbx
    movabs ${p2}, %rcx
    movabs ${p6}, %rbp
    movabs ${p8}, %r9
    movabs ${p10}, %r11
    movabs ${p11}, %r12
    movabs ${p12}, %r13
    movabs ${p13}, %r14
    movabs ${p14}, %r15
    mov %rsi, {inp}+32(%rip)
    mov %rdx, {inp}+24(%rip)
    mov %r10, {inp}+72(%rip)
    mov %r8, {inp}+56(%rip)
    mov %rsp, {inp}+120(%rip)
    call *{target}(%rip)
    /* Both probes end here: OUT gets every register, then the caller's frame is restored. */
__tg_regs_record:
    "#,
    store_gprs!(out),
    r#"
    mov %rsp, {out}+120(%rip)
    mov {saved}(%rip), %rsp
    "#,
    pop_callee_saved!(),
    r#"
    ret

    /* __tg_regs_iret(_): the iret hypercall to the label below, with every register holding
       its pattern and the frame's rax/r11/rcx holding other values. */
    .globl __tg_regs_iret
__tg_regs_iret:
    "#,
    push_callee_saved!(),
    r#"
    mov %rsp, {saved}(%rip)
    mov %rsp, %rax
    pushq ${kss}
    push %rax
    pushq $0x202
    pushq ${kcs}
    lea 1f(%rip), %rax
    push %rax
    pushq $0
    mov %rsp, {inp}+120(%rip)
    movabs ${p0}, %rax
    movabs ${p1}, %rbx
    movabs ${p2}, %rcx
    movabs ${p3}, %rdx
    movabs ${p4}, %rsi
    movabs ${p5}, %rdi
    movabs ${p6}, %rbp
    movabs ${p7}, %r8
    movabs ${p8}, %r9
    movabs ${p9}, %r10
    movabs ${p10}, %r11
    movabs ${p11}, %r12
    movabs ${p12}, %r13
    movabs ${p13}, %r14
    movabs ${p14}, %r15
    jmp hypercall_page + {iret} * 32
1:  jmp __tg_regs_record
    .popsection
    "#,
    saved = sym SAVED_RSP,
    target = sym TARGET,
    inp = sym IN,
    out = sym OUT,
    p0 = const pattern(0),
    p1 = const pattern(1),
    p2 = const pattern(2),
    p3 = const pattern(3),
    p4 = const pattern(4),
    p5 = const pattern(5),
    p6 = const pattern(6),
    p7 = const pattern(7),
    p8 = const pattern(8),
    p9 = const pattern(9),
    p10 = const pattern(10),
    p11 = const pattern(11),
    p12 = const pattern(12),
    p13 = const pattern(13),
    p14 = const pattern(14),
    kcs = const FLAT_KERNEL_CS & !3,
    kss = const FLAT_KERNEL_SS,
    iret = const nr::IRET,
    options(att_syntax)
);

static TARGET: AtomicU64 = AtomicU64::new(0);

extern "C" {
    fn __tg_regs_call(args: *const u64);
    fn __tg_regs_iret();
    static hypercall_page: u8;
}

/// Makes hypercall `nr` with `args` through the hypercall page with every other register
/// holding a pattern; returns (registers before, registers after).
fn call(nr: u64, args: [u64; 5]) -> ([u64; 16], [u64; 16]) {
    for (i, r) in IN.iter().enumerate() {
        r.store(pattern(i), Ordering::SeqCst);
    }
    let target = core::ptr::addr_of!(hypercall_page) as u64 + nr * 32;
    let a = [target, args[0], args[1], args[2], args[3], args[4]];
    // SAFETY: a hypercall through the builder-filled page; the stub saves and restores every
    // register the compiler cares about around the call (callee-saved ones and rsp), and the
    // arguments point at our own memory or are plain values.
    unsafe { __tg_regs_call(a.as_ptr()) };
    snapshot()
}

fn snapshot() -> ([u64; 16], [u64; 16]) {
    (
        core::array::from_fn(|i| IN[i].load(Ordering::SeqCst)),
        core::array::from_fn(|i| OUT[i].load(Ordering::SeqCst)),
    )
}

/// The registers (other than rax and those in `skip`) that the call changed.
fn changed(before: &[u64; 16], after: &[u64; 16], skip: &[usize]) -> u64 {
    (1..16).filter(|i| !skip.contains(i) && before[*i] != after[*i]).fold(0, |m, i| m | 1 << i)
}

fn names(mask: u64) -> alloc::string::String {
    let v: alloc::vec::Vec<&str> = (0..16).filter(|i| mask & (1 << i) != 0).map(|i| NAMES[i]).collect();
    v.join(",")
}

fn check(r: &mut Results, case: &str, before: &[u64; 16], after: &[u64; 16], skip: &[usize]) {
    let m = changed(before, after, skip);
    if m != 0 {
        pv_guest_kernel::println!("hypercall-regs: {case}: changed {}", names(m));
    }
    r.eq(&format!("{case}.changed"), m, 0);
}

fn on_event(_p: Port) {
    EVENTS.fetch_add(1, Ordering::SeqCst);
}
static EVENTS: AtomicU64 = AtomicU64::new(0);

pub fn run() {
    let mut r = Results::new("hypercall-regs");
    let mut scratch = [0u64; 8];
    let sp = scratch.as_mut_ptr() as u64;
    let cases: [(&str, u64, [u64; 5]); 8] = [
        ("fast.xen_version", nr::XEN_VERSION, [u64::from(version::op::VERSION), 0, 0, 0, 0]),
        ("general.xen_version_pagesize", nr::XEN_VERSION, [u64::from(version::op::PAGESIZE), 0, 0, 0, 0]),
        (
            "general.xen_version_extraversion",
            nr::XEN_VERSION,
            [u64::from(version::op::EXTRAVERSION), sp, 0, 0, 0],
        ),
        ("general.vcpu_op_is_up", nr::VCPU_OP, [u64::from(hypercall_abi::vcpu::op::IS_UP), 0, 0, 0, 0]),
        ("general.set_timer_op_zero", nr::SET_TIMER_OP, [0, 0, 0, 0, 0]),
        ("general.fpu_taskswitch_clear", nr::FPU_TASKSWITCH, [0, 0, 0, 0, 0]),
        ("error.unknown_hypercall", 45, [1, 2, 3, 4, 5]),
        ("exit.sched_yield", nr::SCHED_OP, [u64::from(sched::op::YIELD), 0, 0, 0, 0]),
    ];
    for (case, n, args) in cases {
        let (before, after) = call(n, args);
        check(&mut r, case, &before, &after, &[]);
    }
    r.is("fast.xen_version.rax_is_the_version", call(nr::XEN_VERSION, [0; 5]).1[RAX] == hypercall_version());
    r.eq(
        "error.unknown_hypercall.rax",
        call(45, [0; 5]).1[RAX],
        hypercall_abi::Errno::ENOSYS.to_ret() as u64,
    );

    // The exit path delivering an event: a send on a loopback channel with upcalls unmasked.
    match loopback() {
        Ok((a, b)) => {
            let before_events = EVENTS.load(Ordering::SeqCst);
            let send = hypercall_abi::event_channel::EvtchnSend { port: b };
            let arg = &send as *const _ as u64;
            let (before, after) =
                call(nr::EVENT_CHANNEL_OP, [u64::from(hypercall_abi::event_channel::op::SEND), arg, 0, 0, 0]);
            check(&mut r, "exit.event_delivered", &before, &after, &[]);
            r.is("exit.event_delivered.upcall_ran", EVENTS.load(Ordering::SeqCst) > before_events);
            let _ = events::close(a);
            let _ = events::close(b);
        }
        Err(e) => r.fail(format!("loopback channel: {e}")),
    }

    // A continued mmu_update: 1000 M2P updates of one of our own frames (to its own pfn).
    match mm::alloc_page() {
        Ok(p) => {
            let req = MmuUpdate { ptr: (p.mfn.0 << 12) | mmu::MACHPHYS_UPDATE, val: p.pfn.0 };
            let reqs = alloc::vec![req; 1000];
            let mut done = 0u32;
            let args = [
                reqs.as_ptr() as u64,
                reqs.len() as u64,
                &mut done as *mut u32 as u64,
                u64::from(DomId::SELF.0),
                0,
            ];
            let (before, after) = call(nr::MMU_UPDATE, args);
            r.eq("continued.mmu_update.rax", after[RAX], 0);
            r.eq("continued.mmu_update.done", u64::from(done), 1000);
            check(&mut r, "continued.mmu_update", &before, &after, &ARGS);
            let _ = mm::free_page(p.pfn);
        }
        Err(e) => r.fail(format!("alloc_page: {e}")),
    }

    // The iret hypercall: rax, r11 and rcx come from its frame (the stub pushed the patterns),
    // everything else is kept.
    for (i, reg) in IN.iter().enumerate() {
        reg.store(pattern(i), Ordering::SeqCst);
    }
    // SAFETY: the probe saves the callee-saved registers and the stack pointer, irets to its
    // own label and restores them.
    unsafe { __tg_regs_iret() };
    let (before, after) = snapshot();
    let mut want = before;
    want[RSP] = before[RSP] + 6 * 8;
    check(&mut r, "iret", &want, &after, &[RCX, R11]);
    r.eq("iret.rax", after[RAX], pattern(RAX));
    r.eq("iret.rcx", after[RCX], pattern(RCX));
    r.eq("iret.r11", after[R11], pattern(R11));
    r.report();
}

fn hypercall_version() -> u64 {
    pv_guest_kernel::hypercall::xen_version(version::op::VERSION, 0) as u64
}

fn loopback() -> Result<(Port, Port), hypercall_abi::Errno> {
    let a = events::alloc_unbound(DomId::SELF)?;
    let b = events::bind_interdomain(DomId::SELF, a)?;
    events::attach(a, on_event)?;
    events::attach(b, on_event)?;
    Ok((a, b))
}
