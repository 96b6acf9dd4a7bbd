//! The test guest: conformance and hostile scenarios, one per boot, chosen by `scenario=<name>`
//! on its command line. Each prints `TEST <name> PASS ...` or `TEST <name> FAIL <why>` for the
//! host tests to grep and powers off; the hostile ones (`privop`, `unmapped`, `hvspace`)
//! instead expect the hypervisor to crash the domain and print FAIL only if they survive.
//! The memory-management scenarios (`mm-hostile`, `user-mode`, `balloon`, `bench-mm`, and
//! `bench`, which runs every benchmark) live in the modules under `testguest/`.
//!
//! Expected values are Xen's behaviour, not whatever microvisor happens to do, so a failure
//! here is a conformance bug in the hypervisor (or in this runtime).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use hypercall_abi::event_channel::{op as evtop, EvtchnBindVirq, EvtchnClose, EvtchnSend};
use hypercall_abi::hypercall::nr;
use hypercall_abi::xen::{consoleio, uvmf, virq, MmuextOp, TrapInfo, MACH2PHYS_VIRT_START};
use hypercall_abi::{callback, sched, vcpu, version, DomId, Errno, Port};
use kernel_rt as _;
use pv_guest_kernel::hypercall::{self, hypercall5, raw_syscall};
use pv_guest_kernel::mm::{self, pt};
use pv_guest_kernel::start_info::StartInfo;
use pv_guest_kernel::traps::{self, TrapFrame};
use pv_guest_kernel::{cmdline, events, println, time};

extern "C" {
    /// The hypercall page (defined by `pv_kernel!`).
    static hypercall_page: u8;
}

pv_guest_kernel::pv_kernel!(main, "microvisor-testguest");

fn main(si: &StartInfo) {
    let cmd = si.cmdline();
    let scenario = cmdline::get(cmd, "scenario").unwrap_or("");
    println!("testguest: scenario \"{scenario}\" ({} pages)", si.nr_pages);
    match scenario {
        "privop" => privop(cmd),
        "unmapped" => unmapped(),
        "hvspace" => hvspace(),
        "badargs" => badargs(),
        "trap-pf" => trap_pf(),
        "trap-ud" => trap_ud(),
        "events" => events_test(),
        "bench-null" => bench_null(cmd),
        "bench-mm" => bench_mm::run(cmd),
        "bench-evtchn" => bench_evtchn::run(cmd),
        "bench-console" => bench_console::run(cmd),
        "bench-pingpong" => bench_pingpong::run(si),
        "bench-switch" => bench_switch::run(si),
        "switch-partner" => bench_switch::partner(si),
        "ipc-hostile" => ipc_hostile::run(),
        "bench" => {
            bench_order::wait_for_dom0(si);
            bench_null(cmd);
            bench_console::run(cmd);
            bench_mm::run(cmd);
            bench_evtchn::run(cmd);
            bench_pingpong::run(si);
            bench_switch::run(si);
            bench_order::announce_done(si);
        }
        "mm" => mm_test(si),
        "mm-hostile" => mm_hostile::run(si),
        "mm-leak" => mm_hostile::leave_mess(),
        "user-mode" => user_mode::run(),
        "stack-overflow" => stack_overflow(),
        "balloon" => balloon::run(si),
        "balloon-xs" => balloon::follow(si),
        s if s.starts_with("blk-") => {
            bench_order::wait_after(si);
            blk::run(si, s)
        }
        s if s.starts_with("rng-") => rng::run(si, s),
        "" => println!("TEST none FAIL no scenario= on the command line"),
        other => println!("TEST {other} FAIL unknown scenario"),
    }
}

/// Prints the result line. Each failure gets its own line first, so the result line stays
/// short (the hypervisor's console splits long lines).
fn report(name: &str, failures: &[alloc::string::String], detail: core::fmt::Arguments<'_>) {
    for f in failures {
        println!("{name}: failed: {f}");
    }
    match failures.first() {
        None => println!("TEST {name} PASS {detail}"),
        Some(first) => {
            let short: alloc::string::String = first.chars().take(120).collect();
            println!("TEST {name} FAIL {} check(s) failed, first: {short}", failures.len());
        }
    }
}

macro_rules! check {
    ($fails:expr, $cond:expr, $($msg:tt)*) => {
        if !$cond {
            $fails.push(alloc::format!($($msg)*));
        }
    };
}

// A crate root's modules sit beside it; these live in `testguest/` so that cargo does not
// take them for binaries of their own.
#[path = "testguest/balloon.rs"]
mod balloon;
#[path = "testguest/bench_console.rs"]
mod bench_console;
#[path = "testguest/bench_evtchn.rs"]
mod bench_evtchn;
#[path = "testguest/bench_mm.rs"]
mod bench_mm;
#[path = "testguest/bench_order.rs"]
mod bench_order;
#[path = "testguest/bench_pingpong.rs"]
mod bench_pingpong;
#[path = "testguest/bench_switch.rs"]
mod bench_switch;
#[path = "testguest/blk.rs"]
mod blk;
#[path = "testguest/cases.rs"]
mod cases;
#[path = "testguest/ipc_hostile.rs"]
mod ipc_hostile;
#[path = "testguest/mm_hostile.rs"]
mod mm_hostile;
#[path = "testguest/rng.rs"]
mod rng;
#[path = "testguest/timing.rs"]
mod timing;
#[path = "testguest/user_mode.rs"]
mod user_mode;

// ---------------------------------------------------------------------------------------------
// Hostile scenarios: the hypervisor must crash the domain.

/// Removes every trap handler so the fault reaches the hypervisor with nowhere to go.
fn no_trap_table(name: &str, what: &str) {
    if let Err(e) = traps::clear_table() {
        println!("TEST {name} FAIL set_trap_table(NULL) returned {e}");
        hypercall::shutdown(sched::shutdown::POWEROFF);
    }
    println!("TEST {name} RUNNING {what} with no trap table: the hypervisor must crash this domain");
}

fn privop(cmd: &str) {
    let insn = cmdline::get(cmd, "insn").unwrap_or("hlt");
    no_trap_table("privop", insn);
    match insn {
        // SAFETY: hlt faults (#GP) in ring 3; nothing is touched.
        "hlt" => unsafe { asm!("hlt", options(nomem, nostack)) },
        // SAFETY: an unsupported MSR write faults (#GP); nothing is touched.
        "wrmsr" => unsafe {
            asm!("wrmsr", in("ecx") 0x1234u32, in("eax") 0u32, in("edx") 0u32, options(nomem, nostack))
        },
        // SAFETY: port I/O without permission faults (#GP); al is declared clobbered.
        "in" => unsafe { asm!("in al, dx", in("dx") 0x80u16, out("al") _, options(nomem, nostack)) },
        other => println!("TEST privop FAIL unknown insn={other}"),
    }
    println!("TEST privop FAIL the domain survived {insn}");
}

fn unmapped() {
    no_trap_table("unmapped", "a read of unmapped address 0x1000");
    // SAFETY: the load faults (#PF) and the domain is crashed; if it does not, it reads a
    // register-sized value into a scratch register and nothing else happens.
    unsafe { asm!("mov ({0}), {0}", inout(reg) 0x1000u64 => _, options(att_syntax, nostack, readonly)) };
    println!("TEST unmapped FAIL the domain survived the access");
}

fn hvspace() {
    no_trap_table("hvspace", "a call into hypervisor space 0xffff82d080200000");
    // SAFETY: the instruction fetch faults (#PF, supervisor page) and the domain is crashed.
    // Should the hypervisor let it run, whatever runs there is not our code: the result is
    // reported only if it returns, with every register it could clobber declared clobbered.
    unsafe {
        asm!("call *{0}", in(reg) 0xffff_82d0_8020_0000u64, clobber_abi("C"), options(att_syntax));
    }
    println!("TEST hvspace FAIL the domain survived the call");
}

// ---------------------------------------------------------------------------------------------
// badargs: every bad input gets Xen's error code.

struct Case {
    what: &'static str,
    ret: i64,
    want: i64,
}

fn badargs() {
    const NON_CANONICAL: u64 = 0x8000_0000_0000_0000;
    const HV_TEXT: u64 = 0xffff_82d0_8020_0000;
    let efault = Errno::EFAULT.to_ret();
    let enosys = Errno::ENOSYS.to_ret();
    let einval = Errno::EINVAL.to_ret();
    let info = mm::info();
    // The first unmapped page after the direct map; the page before it is mapped.
    let end_va = info.map(|i| i.virt_base + i.mapped_end.0 * 4096);
    let mut cases: Vec<Case> = Vec::new();
    let mut add = |what, ret, want| cases.push(Case { what, ret, want });

    // Bad pointers.
    let cw = |p: u64, n: u64| hypercall5(nr::CONSOLE_IO, consoleio::WRITE, n, p, 0, 0);
    add("console_io write from NULL", cw(0, 8), efault);
    add("console_io write from a non-canonical pointer", cw(NON_CANONICAL, 8), efault);
    add("console_io write from hypervisor text", cw(HV_TEXT, 8), efault);
    add("console_io write from the M2P (guest-readable, still refused)", cw(MACH2PHYS_VIRT_START, 8), efault);
    let xv = |p: u64| hypercall5(nr::XEN_VERSION, u64::from(version::op::EXTRAVERSION), p, 0, 0, 0);
    add("xen_version(extraversion) to NULL", xv(0), efault);
    add("xen_version(extraversion) to a non-canonical pointer", xv(NON_CANONICAL), efault);
    add("xen_version(extraversion) into hypervisor text", xv(HV_TEXT), efault);
    let evs = |p: u64| hypercall5(nr::EVENT_CHANNEL_OP, u64::from(evtop::SEND), p, 0, 0, 0);
    add("event_channel_op(send) from NULL", evs(0), efault);
    add("set_trap_table from hypervisor text", hypercall5(nr::SET_TRAP_TABLE, HV_TEXT, 0, 0, 0, 0), efault);
    add("mmu_update from NULL", hypercall5(nr::MMU_UPDATE, 0, 1, 0, u64::from(DomId::SELF.0), 0), efault);
    if let Some(end) = end_va {
        add("console_io write straddling into an unmapped page", cw(end - 16, 64), efault);
        add("xen_version(extraversion) straddling into an unmapped page", xv(end - 8), efault);
        add("event_channel_op(send) straddling into an unmapped page", evs(end - 2), efault);
    } else {
        println!("badargs: no memory manager, straddling cases skipped");
    }
    // A write into a read-only page: a scratch page of ours remapped read-only (never a page
    // table, so a hypervisor that wrongly writes cannot hurt us).
    let ro = ro_scratch_page();
    if let Some(va) = ro {
        add("xen_version(extraversion) into a read-only page", xv(va), efault);
    }
    // Unknown hypercall numbers: through the page where it has a stub, else a bare syscall.
    add("hypercall 11 (unused)", hypercall5(11, 0, 0, 0, 0, 0), enosys);
    add("hypercall 45 (undefined)", hypercall5(45, 0, 0, 0, 0, 0), enosys);
    add("hypercall 64", hypercall5(64, 0, 0, 0, 0, 0), enosys);
    add("hypercall 127 (last stub)", hypercall5(127, 0, 0, 0, 0, 0), enosys);
    add("hypercall 200 (bare syscall)", raw_syscall(200, 0, 0, 0, 0, 0), enosys);
    add(
        "hypercall 2^32+17 (bare syscall, xen_version's low bits)",
        raw_syscall((1 << 32) + 17, 0, 0, 0, 0, 0),
        enosys,
    );
    add("hypercall u64::MAX (bare syscall)", raw_syscall(u64::MAX, 0, 0, 0, 0, 0), enosys);
    // Unknown sub-operations.
    let mut scratch = [0u64; 16];
    let sp = scratch.as_mut_ptr() as u64;
    add("sched_op(99)", hypercall5(nr::SCHED_OP, 99, 0, 0, 0, 0), enosys);
    add("event_channel_op(99)", hypercall5(nr::EVENT_CHANNEL_OP, 99, sp, 0, 0, 0), enosys);
    add("xen_version(99)", hypercall5(nr::XEN_VERSION, 99, 0, 0, 0, 0), enosys);
    add("console_io(99)", hypercall5(nr::CONSOLE_IO, 99, 0, 0, 0, 0), enosys);
    add("vcpu_op(99, vcpu 0)", hypercall5(nr::VCPU_OP, 99, 0, 0, 0, 0), enosys);
    add("callback_op(99)", hypercall5(nr::CALLBACK_OP, 99, sp, 0, 0, 0), enosys);
    add("memory_op(99)", hypercall5(nr::MEMORY_OP, 99, sp, 0, 0, 0), enosys);
    let mut done = 0u32;
    let bad_ext = [MmuextOp { cmd: 99, ..Default::default() }];
    add("mmuext_op(cmd 99)", hypercall::mmuext_op(&bad_ext, &mut done, DomId::SELF), enosys);
    // Invalid arguments.
    let reg = callback::CallbackRegister { type_: 99, flags: 0, _pad: 0, address: 0x1000 };
    add("callback_op(register, type 99)", hypercall::callback_op(callback::op::REGISTER, &reg), enosys);
    let unreg = |t: u16| {
        let u = callback::CallbackUnregister { type_: t, _unused: 0 };
        hypercall::callback_op(callback::op::UNREGISTER, &u)
    };
    add("callback_op(unregister, type 99)", unreg(99), enosys);
    add("callback_op(unregister, syscall) (Xen refuses)", unreg(callback::callback_type::SYSCALL), einval);
    let mut bv = EvtchnBindVirq { virq: 99, vcpu: 0, port: Port(0) };
    add("bind_virq(99)", hypercall::event_channel_op(evtop::BIND_VIRQ, &mut bv), einval);
    let mut s = EvtchnSend { port: Port(4095) };
    add("send on unbound port 4095", hypercall::event_channel_op(evtop::SEND, &mut s), einval);
    let mut s = EvtchnSend { port: Port(1 << 20) };
    add(
        "send on port 2^20 (beyond the 2-level ABI)",
        hypercall::event_channel_op(evtop::SEND, &mut s),
        einval,
    );
    let mut c = EvtchnClose { port: Port(0) };
    add("close port 0 (reserved)", hypercall::event_channel_op(evtop::CLOSE, &mut c), einval);
    add("vcpu_op(is_up, vcpu 99)", hypercall::vcpu_op(vcpu::op::IS_UP, 99, 0), Errno::ENOENT.to_ret());
    let bad_trap =
        [TrapInfo { vector: 14, flags: 0, cs: 0xe030, _pad: 0, address: NON_CANONICAL }, TrapInfo::default()];
    add("set_trap_table with a non-canonical handler", hypercall::set_trap_table(&bad_trap), einval);
    add(
        "update_va_mapping of hypervisor text",
        hypercall::update_va_mapping(HV_TEXT, 0, uvmf::INVLPG),
        einval,
    );
    add(
        "update_va_mapping of a non-canonical address",
        hypercall::update_va_mapping(NON_CANONICAL, 0, uvmf::INVLPG),
        einval,
    );
    // Last: if the hypervisor wrongly accepted it, the domain would shut down here.
    add(
        "sched_op(shutdown) from NULL",
        hypercall5(nr::SCHED_OP, u64::from(sched::op::SHUTDOWN), 0, 0, 0, 0),
        efault,
    );

    let mut fails = Vec::new();
    for c in &cases {
        let ok = c.ret == c.want;
        println!(
            "badargs: {:<62} -> {:>4} (want {:>4} {}) {}",
            c.what,
            c.ret,
            c.want,
            Errno((-c.want) as i32),
            if ok { "ok" } else { "MISMATCH" }
        );
        check!(fails, ok, "{}: got {} want {}", c.what, c.ret, c.want);
    }
    if let Some(va) = ro {
        // SAFETY: `va` is our scratch page, mapped (read-only) for reading.
        let intact = (0..512).all(|i| unsafe { ((va + i * 8) as *const u64).read_volatile() } == 0);
        check!(fails, intact, "the hypervisor wrote into our read-only page");
    }
    // The domain must still work normally.
    check!(fails, hypercall::xen_version(version::op::VERSION, 0) > 0, "xen_version broken afterwards");
    // Our own trap table must be intact: a #UD handler still runs.
    UD_COUNT.store(0, Ordering::SeqCst);
    traps::set_handler(6, Some(ud_handler));
    execute_ud2();
    check!(fails, UD_COUNT.load(Ordering::SeqCst) == 1, "trap table damaged by the bad set_trap_table");
    traps::set_handler(6, None);
    report("badargs", &fails, format_args!("{} cases", cases.len()));
}

/// A zeroed page of ours whose direct-map mapping is made read-only.
fn ro_scratch_page() -> Option<u64> {
    let p = mm::alloc_page().ok()?;
    match hypercall::check(hypercall::update_va_mapping(
        p.va,
        pt::make(p.mfn, pt::PAGE_KERNEL_RO),
        uvmf::INVLPG,
    )) {
        Ok(_) => Some(p.va),
        Err(e) => {
            println!("badargs: cannot make a read-only page ({e}); read-only case skipped");
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Trap scenarios.

/// Where the instruction under test is, and where to resume after it.
static FAULT_RIP: AtomicU64 = AtomicU64::new(0);
static RESUME_RIP: AtomicU64 = AtomicU64::new(0);

static PF_COUNT: AtomicU64 = AtomicU64::new(0);
static PF_CR2: AtomicU64 = AtomicU64::new(0);
static PF_ERR: AtomicU64 = AtomicU64::new(0);
static PF_RIP: AtomicU64 = AtomicU64::new(0);
static PF_CS: AtomicU64 = AtomicU64::new(0);

/// Skips the instruction under test, or treats anything else as fatal.
fn skip_or_die(f: &mut TrapFrame) {
    if f.rip == FAULT_RIP.load(Ordering::SeqCst) {
        f.rip = RESUME_RIP.load(Ordering::SeqCst);
    } else {
        traps::fatal(f);
    }
}

fn pf_handler(f: &mut TrapFrame) {
    PF_COUNT.fetch_add(1, Ordering::SeqCst);
    PF_CR2.store(traps::cr2(), Ordering::SeqCst);
    PF_ERR.store(f.error_code, Ordering::SeqCst);
    PF_RIP.store(f.rip, Ordering::SeqCst);
    PF_CS.store(f.cs, Ordering::SeqCst);
    skip_or_die(f);
}

/// Writes to `addr` with a single instruction whose address and successor are recorded for
/// the handler. Registers survive the fault: the handler returns through `iret`.
fn write_and_recover(addr: u64) {
    // SAFETY: the store either succeeds on memory the caller chose, or faults and the
    // registered handler resumes at label 2; the recorded addresses are plain atomics.
    unsafe {
        asm!(
            "lea 2f(%rip), {tmp}",
            "mov {tmp}, ({resume})",
            "lea 1f(%rip), {tmp}",
            "mov {tmp}, ({fault})",
            "1: movq $0x5a, ({addr})",
            "2:",
            tmp = out(reg) _,
            resume = in(reg) RESUME_RIP.as_ptr(),
            fault = in(reg) FAULT_RIP.as_ptr(),
            addr = in(reg) addr,
            options(att_syntax, nostack),
        );
    }
}

/// Bit of a #PF error code: the access was a write.
const PFEC_WRITE: u64 = 1 << 1;
/// Bit of a #PF error code: the page was present (a protection fault).
const PFEC_PRESENT: u64 = 1 << 0;
/// Bit of a #PF error code: the access came from user mode (Xen clears it for the guest kernel).
const PFEC_USER: u64 = 1 << 2;

/// Faults on a write to `addr` and checks what the handler saw; `ignore` masks error-code
/// bits the caller does not test.
fn expect_pf(fails: &mut Vec<alloc::string::String>, what: &str, addr: u64, want_err: u64, ignore: u64) {
    let before = PF_COUNT.load(Ordering::SeqCst);
    write_and_recover(addr);
    let (n, cr2, err) = (
        PF_COUNT.load(Ordering::SeqCst) - before,
        PF_CR2.load(Ordering::SeqCst),
        PF_ERR.load(Ordering::SeqCst),
    );
    let (rip, cs) = (PF_RIP.load(Ordering::SeqCst), PF_CS.load(Ordering::SeqCst));
    println!("trap-pf: {what}: {n} fault(s), cr2 {cr2:#x}, error {err:#x}, rip {rip:#x}, cs {cs:#x}");
    check!(fails, n == 1, "{what}: {n} faults instead of 1");
    check!(fails, cr2 == addr, "{what}: cr2 {cr2:#x} instead of {addr:#x}");
    check!(
        fails,
        err & !ignore == want_err,
        "{what}: error code {err:#x} instead of {want_err:#x}{}",
        if err & PFEC_USER != 0 { " (user bit set for a guest-kernel access)" } else { "" }
    );
    check!(
        fails,
        rip == FAULT_RIP.load(Ordering::SeqCst),
        "{what}: rip {rip:#x} is not the faulting instruction"
    );
    check!(fails, cs & 0xffff == 0xe030, "{what}: cs {:#x} is not the kernel's with RPL 0", cs & 0xffff);
    check!(
        fails,
        (cs >> 32) & 0xff == 0,
        "{what}: saved upcall mask {} (upcalls were enabled)",
        (cs >> 32) & 0xff
    );
}

fn trap_pf() {
    let mut fails = Vec::new();
    traps::set_handler(14, Some(pf_handler));
    let masked_before = events::upcalls_masked();
    // Not present, write, from the guest kernel: Xen reports exactly W.
    expect_pf(&mut fails, "write to unmapped 0x1000", 0x1000, PFEC_WRITE, 0);
    // A page beyond the direct map.
    if let Some(i) = mm::info() {
        let end = i.virt_base + i.mapped_end.0 * 4096 + 0x18;
        expect_pf(&mut fails, "write past the direct map", end, PFEC_WRITE, 0);
    }
    // Present but read-only: P|W.
    match ro_scratch_page() {
        Some(va) => {
            expect_pf(&mut fails, "write to a read-only page", va + 0x10, PFEC_WRITE | PFEC_PRESENT, 0)
        }
        None => println!("trap-pf: no read-only page available; protection case skipped"),
    }
    check!(fails, events::upcalls_masked() == masked_before, "iret did not restore the upcall mask");
    traps::set_handler(14, None);
    report("trap-pf", &fails, format_args!("cr2 and error codes as Xen reports them"));
}

static UD_COUNT: AtomicU64 = AtomicU64::new(0);
static UD_RIP: AtomicU64 = AtomicU64::new(0);

fn ud_handler(f: &mut TrapFrame) {
    UD_COUNT.fetch_add(1, Ordering::SeqCst);
    UD_RIP.store(f.rip, Ordering::SeqCst);
    skip_or_die(f);
}

fn execute_ud2() {
    // SAFETY: ud2 raises #UD, whose handler resumes at label 2.
    unsafe {
        asm!(
            "lea 2f(%rip), {tmp}",
            "mov {tmp}, ({resume})",
            "lea 1f(%rip), {tmp}",
            "mov {tmp}, ({fault})",
            "1: ud2",
            "2:",
            tmp = out(reg) _,
            resume = in(reg) RESUME_RIP.as_ptr(),
            fault = in(reg) FAULT_RIP.as_ptr(),
            options(att_syntax, nostack),
        );
    }
}

/// CPUID through Xen's forced-emulation prefix (`ud2; .ascii "xen"; cpuid`).
fn forced_cpuid(leaf: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u64, u32, u32);
    // SAFETY: the prefix raises #UD, which the hypervisor decodes and emulates as CPUID;
    // rbx (reserved by LLVM) is swapped out and back around it.
    unsafe {
        asm!(
            "xchg {b}, %rbx",
            "ud2",
            ".ascii \"xen\"",
            "cpuid",
            "xchg {b}, %rbx",
            b = inout(reg) 0u64 => b,
            inout("eax") leaf => a,
            inout("ecx") 0u32 => c,
            out("edx") d,
            options(att_syntax, nostack),
        );
    }
    [a, b as u32, c, d]
}

fn trap_ud() {
    let mut fails = Vec::new();
    traps::set_handler(6, Some(ud_handler));
    UD_COUNT.store(0, Ordering::SeqCst);
    execute_ud2();
    let (n, rip, want) =
        (UD_COUNT.load(Ordering::SeqCst), UD_RIP.load(Ordering::SeqCst), FAULT_RIP.load(Ordering::SeqCst));
    println!("trap-ud: ud2 at {want:#x}: {n} #UD, handler saw rip {rip:#x}");
    check!(fails, n == 1, "{n} #UD instead of 1");
    check!(fails, rip == want, "#UD rip {rip:#x} instead of {want:#x}");
    let r = forced_cpuid(0x4000_0000);
    let mut sig = [0u8; 12];
    for (i, w) in r[1..].iter().enumerate() {
        sig[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    let sig = core::str::from_utf8(&sig).unwrap_or("<not UTF-8>");
    let after = UD_COUNT.load(Ordering::SeqCst);
    println!("trap-ud: forced cpuid 0x40000000: eax {:#x}, signature \"{sig}\"", r[0]);
    check!(fails, sig == "XenVMMXenVMM", "forced cpuid signature \"{sig}\"");
    check!(fails, r[0] >= 0x4000_0002, "forced cpuid max leaf {:#x} below 0x40000002", r[0]);
    check!(fails, after == n, "the forced-emulation prefix reached the #UD handler");
    traps::set_handler(6, None);
    report("trap-ud", &fails, format_args!("#UD at the right rip, forced cpuid \"{sig}\""));
}

// ---------------------------------------------------------------------------------------------
// Events: timer VIRQ and an interdomain loopback channel.

static LOOP_A: AtomicU64 = AtomicU64::new(0);
static LOOP_B: AtomicU64 = AtomicU64::new(0);

fn on_a(_p: Port) {
    LOOP_A.fetch_add(1, Ordering::SeqCst);
}

fn on_b(_p: Port) {
    LOOP_B.fetch_add(1, Ordering::SeqCst);
}

fn wait_for(what: &str, fails: &mut Vec<alloc::string::String>, cond: impl FnMut() -> bool) {
    let deadline = time::now_ns() + 1_000_000_000;
    match events::block_until(cond, Some(deadline)) {
        Ok(true) => {}
        Ok(false) => fails.push(alloc::format!("{what}: not delivered within 1 s")),
        Err(e) => fails.push(alloc::format!("{what}: block_until failed: {e}")),
    }
}

fn events_test() {
    let mut fails = Vec::new();
    let st = pv_guest_kernel::status();
    if !st.events {
        println!("TEST events FAIL events unavailable ({st:?})");
        return;
    }
    // VIRQ_TIMER is bound by the runtime already: a second bind is refused.
    let again = events::bind_virq(virq::TIMER);
    check!(fails, again == Err(Errno::EEXIST), "second bind of VIRQ_TIMER gave {again:?}, want EEXIST");

    // One-shot timer 5 ms ahead, then block.
    let (up0, _, _) = events::counters();
    let ticks0 = time::timer_events();
    let t0 = time::now_ns();
    let r = hypercall::check(hypercall::set_timer_op(t0 + 5_000_000));
    check!(fails, r.is_ok(), "set_timer_op: {r:?}");
    let woke = events::block_until(|| time::timer_events() > ticks0, None);
    let t1 = time::now_ns();
    let (up1, _, _) = events::counters();
    println!(
        "events: timer: {} VIRQ_TIMER, {} upcalls, {} us elapsed",
        time::timer_events() - ticks0,
        up1 - up0,
        (t1 - t0) / 1000
    );
    check!(fails, woke == Ok(true), "block_until for the timer: {woke:?}");
    check!(fails, t1 >= t0 + 5_000_000, "woke after {} ns, before the 5 ms deadline", t1 - t0);
    check!(fails, up1 > up0, "no upcall taken");

    // sleep() on top of it.
    let t2 = time::now_ns();
    let slept = time::sleep(2_000_000);
    let t3 = time::now_ns();
    check!(fails, slept.is_ok() && t3 >= t2 + 2_000_000, "sleep(2 ms): {slept:?} after {} ns", t3 - t2);
    let mut lat = alloc::string::String::new();
    for ms in [1u64, 2, 5, 20] {
        let a = time::now_ns();
        let _ = time::sleep(ms * 1_000_000);
        let us = (time::now_ns() - a) / 1000;
        lat.push_str(&alloc::format!(" {ms}ms->{us}us"));
    }
    println!("events: sleep latency:{lat}");

    // Loopback interdomain channel: a (unbound, for ourselves) <-> b.
    match loopback(&mut fails) {
        Ok(()) => {}
        Err(e) => fails.push(alloc::format!("loopback set-up: {e}")),
    }
    let (up, delivered, stray) = events::counters();
    report("events", &fails, format_args!("{up} upcalls, {delivered} ports handled, {stray} stray"));
}

fn loopback(fails: &mut Vec<alloc::string::String>) -> Result<(), Errno> {
    let a = events::alloc_unbound(DomId::SELF)?;
    let b = events::bind_interdomain(DomId::SELF, a)?;
    println!("events: loopback ports {} <-> {}", a.0, b.0);
    events::attach(a, on_a)?;
    // Xen marks a freshly bound interdomain port pending: b fires once as it is unmasked.
    events::attach(b, on_b)?;
    wait_for("initial event on the bound port", fails, || LOOP_B.load(Ordering::SeqCst) >= 1);
    let b0 = LOOP_B.load(Ordering::SeqCst);
    events::send(b)?;
    wait_for("send b -> a", fails, || LOOP_A.load(Ordering::SeqCst) >= 1);
    events::send(a)?;
    wait_for("send a -> b", fails, || LOOP_B.load(Ordering::SeqCst) > b0);
    // A masked port stays pending until unmasked, then is delivered.
    events::mask(a)?;
    let a0 = LOOP_A.load(Ordering::SeqCst);
    events::send(b)?;
    let si = pv_guest_kernel::shared::get().ok_or(Errno::ENODEV)?;
    check!(fails, LOOP_A.load(Ordering::SeqCst) == a0, "a masked port was delivered");
    check!(fails, si.is_pending(a.0), "a masked port did not stay pending");
    events::unmask(a)?;
    wait_for("delivery on unmask", fails, || LOOP_A.load(Ordering::SeqCst) > a0);
    println!(
        "events: loopback: a got {}, b got {}",
        LOOP_A.load(Ordering::SeqCst),
        LOOP_B.load(Ordering::SeqCst)
    );
    events::close(a)?;
    let r = events::send(a);
    check!(fails, r == Err(Errno::EINVAL), "send on a closed port gave {r:?}, want EINVAL");
    // b's peer is gone: b is unbound again, and sending on it is silently dropped.
    let r = events::send(b);
    check!(fails, r == Ok(()), "send on a port whose peer closed gave {r:?}, want 0");
    events::close(b)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// bench-null: null-hypercall latency.

fn bench_null(cmd: &str) {
    let iters = match cmdline::get_u64(cmd, "iters", 100_000, 1, 10_000_000) {
        Ok(n) => n as usize,
        Err(e) => {
            println!("TEST bench-null FAIL bad iters= ({e:?})");
            return;
        }
    };
    let mut samples: Vec<u32> = Vec::new();
    if samples.try_reserve_exact(iters).is_err() {
        println!("TEST bench-null FAIL cannot hold {iters} samples in the heap");
        return;
    }
    // Events would add upcalls to some samples: keep them off while measuring.
    let _g = events::mask_upcalls();
    let v = hypercall::xen_version(version::op::VERSION, 0);
    for _ in 0..1000 {
        time_null_hypercall();
    }
    for _ in 0..iters {
        samples.push(time_null_hypercall());
    }
    drop(_g);
    match timing::print("hypercall.null", &mut samples) {
        Ok(stats) => println!("TEST bench-null PASS xen_version returned {v:#x}, max {} tsc", stats.max),
        Err(e) => println!("TEST bench-null FAIL {e}"),
    }
}

/// One null hypercall (`xen_version(XENVER_version)` through the hypercall page) timed exactly
/// as the hypervisor times its `syscall`→`sysretq` floor: `rdtsc`, the call, `rdtsc`, and
/// nothing else in between, so the two figures differ only by the hypercall path.
#[inline(always)]
fn time_null_hypercall() -> u32 {
    let delta: u32;
    // SAFETY: a Xen hypercall through the builder-filled hypercall page (see
    // `hypercall::call2`); r12 survives it (the hypervisor preserves callee-saved registers)
    // and every register Xen may clobber is declared.
    unsafe {
        asm!(
            "rdtsc",
            "mov %eax, %r12d",
            "xor %edi, %edi",
            "xor %esi, %esi",
            "call {page}+{off}",
            "rdtsc",
            "sub %r12d, %eax",
            page = sym hypercall_page,
            off = const nr::XEN_VERSION * 32,
            lateout("rax") delta,
            out("r12") _,
            out("rdx") _,
            out("rdi") _,
            out("rsi") _,
            out("r10") _,
            out("r8") _,
            out("rcx") _,
            out("r11") _,
            options(att_syntax),
        );
    }
    delta
}

// ---------------------------------------------------------------------------------------------
// mm: the direct map, the allocator and map/unmap.

fn mm_test(si: &StartInfo) {
    let mut fails = Vec::new();
    let Some(i) = mm::info() else {
        println!("TEST mm FAIL no memory manager");
        return;
    };
    println!(
        "mm: {} pages, first free pfn {:#x}, builder mapped {:#x}, direct map {:#x}, {} free, {} new tables, L4 mfn {:#x}",
        i.nr_pages, i.first_free.0, i.boot_mapped_end.0, i.mapped_end.0, i.free_pages, i.pt_frames, i.l4.0
    );
    check!(fails, i.nr_pages == si.nr_pages, "nr_pages {} vs start_info {}", i.nr_pages, si.nr_pages);
    check!(fails, i.mapped_end.0 == i.nr_pages, "direct map ends at pfn {:#x}", i.mapped_end.0);
    // The builder's padding is at least 512 KiB.
    check!(fails, i.boot_mapped_end.0 >= i.first_free.0 + 128, "less than 512 KiB of padding");
    // M2P and P2M agree on our frames.
    for pfn in [0, i.first_free.0, i.nr_pages - 1] {
        let mfn = mm::pfn_to_mfn(hypercall_abi::Pfn(pfn));
        let back = mfn.and_then(mm::mfn_to_pfn);
        check!(fails, back == Some(hypercall_abi::Pfn(pfn)), "pfn {pfn:#x} -> {mfn:?} -> {back:?}");
    }
    // Allocate, write, alias at a VA outside the direct map, unmap.
    let pages: Vec<mm::Page> = (0..3).filter_map(|_| mm::alloc_page().ok()).collect();
    check!(fails, pages.len() == 3, "allocated {} of 3 pages", pages.len());
    check!(fails, mm::info().is_some_and(|j| j.free_pages == i.free_pages - 3), "free count not updated");
    const ALIAS: u64 = 0xffff_c900_0000_0000;
    if let Some(p) = pages.last() {
        // SAFETY: the page was just allocated to us and is mapped writable at `p.va`.
        unsafe { (p.va as *mut u64).write_volatile(0x1234_5678_9abc_def0) };
        match mm::map_page(ALIAS, p.mfn, pt::PAGE_KERNEL) {
            Ok(()) => {
                // SAFETY: ALIAS now maps the same frame.
                let v = unsafe { (ALIAS as *const u64).read_volatile() };
                check!(fails, v == 0x1234_5678_9abc_def0, "alias reads {v:#x}");
                let e = mm::lookup(ALIAS);
                check!(fails, matches!(e, Ok(Some(e)) if pt::mfn(e) == p.mfn), "lookup of the alias: {e:x?}");
                let u = mm::unmap_page(ALIAS);
                check!(fails, u.is_ok(), "unmap: {u:?}");
                traps::set_handler(14, Some(pf_handler));
                let mut pf = Vec::new();
                // The error code's user bit is trap-pf's business.
                expect_pf(&mut pf, "write to the unmapped alias", ALIAS, PFEC_WRITE, PFEC_USER);
                traps::set_handler(14, None);
                fails.extend(pf);
            }
            Err(e) => fails.push(alloc::format!("map_page: {e}")),
        }
    }
    // P2M upkeep: re-recording a page's own frame goes through MMU_MACHPHYS_UPDATE.
    if let Some(p) = pages.first() {
        let r = mm::set_p2m(p.pfn, p.mfn);
        check!(fails, r.is_ok(), "set_p2m (MMU_MACHPHYS_UPDATE) of our own frame: {r:?}");
        let back = mm::mfn_to_pfn(p.mfn);
        check!(fails, back == Some(p.pfn), "M2P after set_p2m: {back:?}");
    }
    for p in &pages {
        check!(fails, mm::free_page(p.pfn).is_ok(), "free of {:?}", p.pfn);
    }
    if let Some(p) = pages.first() {
        check!(fails, mm::free_page(p.pfn).is_err(), "double free accepted");
    }
    let j = mm::info().unwrap_or(i);
    report("mm", &fails, format_args!("{} pages mapped, {} new page tables", j.mapped_end.0, j.pt_frames));
}

/// Recurses until the boot stack runs into its guard page: the domain must be crashed with a
/// reason, not overwrite whatever lies below its stack.
fn stack_overflow() {
    fn deeper(depth: u64) -> u64 {
        let frame = core::hint::black_box([depth; 64]);
        if core::hint::black_box(true) {
            return deeper(depth + 1).wrapping_add(frame[7]);
        }
        depth
    }
    println!("TEST stack-overflow RUNNING recursing into the guard page");
    let d = deeper(0);
    println!("TEST stack-overflow FAIL came back from depth {d}");
}
