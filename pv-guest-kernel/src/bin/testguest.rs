//! The test guest: conformance, hostile and benchmark scenarios, one per boot, chosen by
//! `scenario=<name>` on its command line. Each prints `TEST <name> PASS ...` or
//! `TEST <name> FAIL <why>` for the host tests to check and powers off; the hostile ones that
//! the hypervisor must crash (`privop`, `unmapped`, `hvspace`, `stack-overflow`) print FAIL
//! only if they survive.
//!
//! Options every scenario takes: `console-ring` (print through dom0's console backend),
//! `after=<domid>` (disk scenarios: wait for that domain's `data/bench-done`) and
//! `announce-done` (publish `data/bench-done` when the scenario is over).
//!
//! [`SCENARIOS`] is the one list of scenarios: each names its module under `testguest/` and
//! the host test (`tests/tests/*.rs`) that boots it, so a reader can go from a test to the
//! guest code it drives and back. A new scenario is one module and one line in that table.
//!
//! Expected values are Xen's behaviour, not whatever microvisor happens to do, so a failure
//! here is a conformance bug in the hypervisor (or in this runtime).
#![no_std]
#![no_main]

extern crate alloc;

use kernel_rt as _;
use pv_guest_kernel::start_info::StartInfo;
use pv_guest_kernel::{cmdline, println};

extern "C" {
    /// The hypercall page (defined by `pv_kernel!`).
    static hypercall_page: u8;
}

pv_guest_kernel::pv_kernel!(main, "microvisor-testguest");

/// What a scenario gets: the boot information, the command line and its own name.
pub struct Ctx<'a> {
    pub si: &'a StartInfo,
    pub cmd: &'a str,
    pub name: &'a str,
}

/// One scenario: `scenario=<name>` runs `run`; `test` is the host test that boots it.
pub struct Scenario {
    pub name: &'static str,
    pub test: &'static str,
    pub run: fn(&Ctx),
}

/// A [`SCENARIOS`] entry.
const fn sc(name: &'static str, test: &'static str, run: fn(&Ctx)) -> Scenario {
    Scenario { name, test, run }
}

/// Every scenario, grouped by the host test that drives it. Append new ones here.
pub const SCENARIOS: &[Scenario] = &[
    // Crashed alone, or Xen's error codes for bad arguments.
    sc("privop", "tests/tests/hostile.rs", |c| hostile::privop(c.cmd)),
    sc("unmapped", "tests/tests/hostile.rs", |_| hostile::unmapped()),
    sc("hvspace", "tests/tests/hostile.rs", |_| hostile::hvspace()),
    sc("badargs", "tests/tests/hostile.rs", |_| badargs::badargs()),
    sc("guest-copy", "tests/tests/hostile.rs", |c| guest_copy::run(c.si)),
    // Traps.
    sc("trap-pf", "tests/tests/traps.rs", |_| traps::trap_pf()),
    sc("trap-ud", "tests/tests/traps.rs", |_| traps::trap_ud()),
    sc("stack-overflow", "tests/tests/traps.rs", |_| traps::stack_overflow()),
    // The runtime on the real hypervisor.
    sc("events", "tests/tests/runtime.rs", |_| events::run()),
    sc("mm", "tests/tests/runtime.rs", |c| mm::run(c.si)),
    // Page tables and memory.
    sc("mm-hostile", "tests/tests/mm.rs", |c| mm_hostile::run(c.si)),
    sc("mm-leak", "tests/tests/mm.rs", |_| mm_hostile::leave_mess()),
    sc("user-mode", "tests/tests/mm.rs", |_| user_mode::run()),
    sc("pin-storm", "tests/tests/mm.rs", |c| pin_storm::run(c.cmd)),
    sc("ramdisk", "tests/tests/mm.rs", |c| ramdisk::run(c.si)),
    sc("memop", "tests/tests/mm.rs", |c| memop::run(c.si)),
    // Entry and exit paths a hostile guest reaches with instructions (32-bit syscall, RIPs
    // that end up non-canonical, DF set at an exception).
    sc("syscall-compat", "tests/tests/entry.rs", |_| cpu_entry::syscall_compat()),
    sc("noncanonical-rip", "tests/tests/entry.rs", |_| cpu_entry::noncanonical_rip()),
    sc("entry-flags", "tests/tests/entry.rs", |_| cpu_entry::entry_flags()),
    // Xen conformance of the CPU side.
    sc("hypercall-regs", "tests/tests/cpu.rs", |_| regs::run()),
    sc("softint", "tests/tests/cpu.rs", |_| softint::run()),
    sc("privop-emul", "tests/tests/cpu.rs", |_| privop::run()),
    sc("debugreg", "tests/tests/cpu.rs", |_| vcpu_state::debugreg()),
    sc("iopl", "tests/tests/cpu.rs", |_| vcpu_state::iopl()),
    sc("segbase", "tests/tests/cpu.rs", |_| vcpu_state::segbase()),
    sc("segsel", "tests/tests/cpu.rs", |c| segsel::run(c.cmd)),
    sc("iret-to-self", "tests/tests/cpu.rs", |_| vcpu_state::iret_to_self()),
    sc("ptwr", "tests/tests/cpu.rs", |_| vcpu_state::ptwr()),
    sc("balloon", "tests/tests/balloon.rs", |c| balloon::run(c.si)),
    sc("balloon-xs", "tests/tests/balloon.rs", |c| balloon::follow(c.si)),
    // Grants and event channels between domains.
    sc("ipc-hostile", "tests/tests/ipc.rs", |_| ipc_hostile::run()),
    // Xen conformance of the core hypercalls (also run as dom0 under Xen 4.17).
    sc("vcpu-ops", "tests/tests/conformance.rs", |_| abi_core::vcpu_ops()),
    sc("evtchn-ops", "tests/tests/conformance.rs", |_| abi_core::evtchn_ops()),
    sc("gnttab-ops", "tests/tests/conformance.rs", |_| abi_core::gnttab_ops()),
    // The hypervisor's per-domain limits: console rate, heap quota.
    sc("console-flood", "tests/tests/limits.rs", |_| hv_limits::console_flood()),
    sc("hv-mem-hostile", "tests/tests/limits.rs", |_| hv_limits::hv_mem_hostile()),
    sc("fpu-ts-console", "tests/tests/limits.rs", |_| hv_limits::fpu_ts_console()),
    // Virtual disk.
    sc("blk-pattern", "tests/tests/blk.rs", |c| blk::with_disk(c, blk::pattern)),
    sc("blk-image", "tests/tests/blk.rs", |c| blk::with_disk(c, blk::image)),
    sc("blk-hostile", "tests/tests/blk.rs", |c| blk::with_disk(c, blk::hostile)),
    sc("blk-indirect", "tests/tests/blk.rs", |c| blk::with_disk(c, blk_indirect::run)),
    sc("blk-destroy", "tests/tests/blk.rs", |c| blk::with_disk(c, blk::destroy)),
    sc("blk-noio", "tests/tests/blk.rs", |_| blk::noio()),
    sc("blk-bench", "tests/tests/blk.rs", |c| blk::with_disk(c, blk::bench)),
    sc("ring-scribble", "tests/tests/blk.rs", |c| blk::with_disk(c, ring_scribble::run)),
    // Random-number device.
    sc("rng-read", "tests/tests/rng.rs", |c| rng::with_device(c, rng::read)),
    sc("rng-hostile", "tests/tests/rng.rs", |c| rng::with_device(c, rng::hostile)),
    // xenstored.
    sc("xs-fill", "tests/tests/xenstore.rs", xs_fill::run),
    // Network (netfront, dom0's switch and NIC).
    sc("net-serve", "tests/tests/net.rs", |c| net::with_stack(c, net::serve)),
    sc("net-fetch", "tests/tests/net.rs", |c| net::with_stack(c, net::fetch)),
    sc("net-hostile", "tests/tests/net.rs", |c| net::with_stack(c, net::hostile)),
    sc("net-bench", "tests/tests/net.rs", |c| net::with_stack(c, net::bench)),
    // Benchmarks: `bench` runs them all in the bench configuration (`cargo xtask bench`).
    sc("bench", "tests/tests/bench_smoke.rs", bench_all),
    sc("bench-null", "tests/tests/bench_smoke.rs", |c| bench_null::run(c.cmd)),
    sc("bench-console", "tests/tests/bench_smoke.rs", |c| bench_console::run(c.cmd)),
    sc("bench-mm", "tests/tests/bench_smoke.rs", |c| bench_mm::run(c.cmd)),
    sc("bench-evtchn", "tests/tests/bench_smoke.rs", |c| bench_evtchn::run(c.cmd)),
    sc("bench-peer", "tests/tests/xen_bench.rs", |c| bench_peer::run(c.cmd)),
    // The benchmarks that need only the hypervisor, for `cargo xtask bench --peer xen` (under
    // Xen the guest is dom0 and alone: no xenstore, no partner domain).
    sc("bench-standalone", "tests/tests/xen_bench.rs", bench_standalone),
    sc("bench-pingpong", "tests/tests/bench_smoke.rs", |c| bench_pingpong::run(c.si)),
    sc("bench-switch", "tests/tests/bench_smoke.rs", |c| bench_switch::run(c.si)),
    sc("switch-partner", "tests/tests/bench_smoke.rs", |c| bench_switch::partner(c.si)),
    // The hypercall fuzzer and the neighbour doing verified disk I/O next to it.
    sc("fuzz", "tests/tests/fuzz.rs", |c| fuzz::run(c.si)),
    sc("fuzz-disk", "tests/tests/fuzz.rs", |c| fuzz_disk::run(c.si)),
    // A domain that only boots and powers off (a machine that needs one more domain).
    sc("none", "tests/tests/blk.rs", |_| println!("TEST none PASS nothing to do")),
];

fn main(si: &StartInfo) {
    let cmd = si.cmdline();
    let name = cmdline::get(cmd, "scenario").unwrap_or("");
    println!("testguest: scenario \"{name}\" ({} pages)", si.nr_pages);
    if cmdline::flag(cmd, "console-ring") {
        console_through_dom0(si);
    }
    results::set_scenario(name);
    match SCENARIOS.iter().find(|s| s.name == name) {
        Some(s) => (s.run)(&Ctx { si, cmd, name }),
        None if name.is_empty() => println!("TEST none FAIL no scenario= on the command line"),
        None => println!("TEST {name} FAIL unknown scenario"),
    }
    if cmdline::flag(cmd, "announce-done") {
        bench_order::announce_done(si);
    }
}

/// `console-ring`: the scenario's output goes through dom0's console backend (its lines then
/// read `(d0) [<name>] ...`) instead of the hypervisor's console.
fn console_through_dom0(si: &StartInfo) {
    match pv_guest_kernel::xenbus::connect(si)
        .and_then(|mut xb| pv_guest_kernel::console_ring::connect(&mut xb, si))
    {
        Ok(backend) => println!("testguest: console through dom0 (backend {backend})"),
        Err(e) => println!("testguest: console ring not connected ({e}), staying on console_io"),
    }
}

/// Every benchmark in turn, ordered against the other domains of the bench configuration.
fn bench_all(c: &Ctx) {
    bench_order::wait_for_dom0(c.si);
    bench_null::run(c.cmd);
    bench_console::run(c.cmd);
    bench_mm::run(c.cmd);
    bench_evtchn::run(c.cmd);
    bench_peer::run(c.cmd);
    bench_pingpong::run(c.si);
    bench_switch::run(c.si);
    // Last: it leaves its page tables behind.
    pin_storm::run("l1s=4096 pairs=1 calls=1 rounds=4");
    bench_order::announce_done(c.si);
}

/// The benchmarks that need nothing but the hypervisor, in the order `bench_all` runs them.
fn bench_standalone(c: &Ctx) {
    bench_null::run(c.cmd);
    bench_mm::run(c.cmd);
    bench_evtchn::run(c.cmd);
    bench_peer::run(c.cmd);
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

/// Assembly text shared by the probes that run code with chosen registers and record what
/// comes back (landing.rs, regs.rs, fuzz_exec.rs): the SysV callee-saved registers pushed on the
/// way in and popped on the way out, in one order.
macro_rules! push_callee_saved {
    () => {
        "push %rbx\npush %rbp\npush %r12\npush %r13\npush %r14\npush %r15\n"
    };
}

/// The counterpart of [`push_callee_saved`].
macro_rules! pop_callee_saved {
    () => {
        "pop %r15\npop %r14\npop %r13\npop %r12\npop %rbp\npop %rbx\n"
    };
}

/// Stores rax, rbx, rcx, rdx, rsi, rdi, rbp, r8..r15 (the order of `regs::NAMES`) into the
/// `[u64; 15+]` array named by the asm operand `$to` (a `sym`), RIP-relative.
macro_rules! store_gprs {
    ($to:ident) => {
        store_gprs!(@ $to; "rax" 0, "rbx" 8, "rcx" 16, "rdx" 24, "rsi" 32, "rdi" 40, "rbp" 48,
            "r8" 56, "r9" 64, "r10" 72, "r11" 80, "r12" 88, "r13" 96, "r14" 104, "r15" 112)
    };
    (@ $to:ident; $($reg:literal $off:literal),*) => {
        concat!($("mov %", $reg, ", {", stringify!($to), "}+", $off, "(%rip)\n"),*)
    };
}

// A crate root's modules sit beside it; these live in `testguest/` so that cargo does not
// take them for binaries of their own.
#[path = "testguest/abi_core.rs"]
mod abi_core;
#[path = "testguest/badargs.rs"]
mod badargs;
#[path = "testguest/balloon.rs"]
mod balloon;
#[path = "testguest/bench_console.rs"]
mod bench_console;
#[path = "testguest/bench_evtchn.rs"]
mod bench_evtchn;
#[path = "testguest/bench_mm.rs"]
mod bench_mm;
#[path = "testguest/bench_null.rs"]
mod bench_null;
#[path = "testguest/bench_order.rs"]
mod bench_order;
#[path = "testguest/bench_peer.rs"]
mod bench_peer;
#[path = "testguest/bench_pingpong.rs"]
mod bench_pingpong;
#[path = "testguest/bench_switch.rs"]
mod bench_switch;
#[path = "testguest/blk.rs"]
mod blk;
#[path = "testguest/blk_indirect.rs"]
mod blk_indirect;
#[path = "testguest/cases.rs"]
mod cases;
#[path = "testguest/checks.rs"]
mod checks;
#[path = "testguest/cpu_entry.rs"]
mod cpu_entry;
#[path = "testguest/events.rs"]
mod events;
#[path = "testguest/fuzz.rs"]
mod fuzz;
#[path = "testguest/fuzz_calls.rs"]
mod fuzz_calls;
#[path = "testguest/fuzz_disk.rs"]
mod fuzz_disk;
#[path = "testguest/fuzz_exec.rs"]
mod fuzz_exec;
#[path = "testguest/fuzz_mem.rs"]
mod fuzz_mem;
#[path = "testguest/guest_copy.rs"]
mod guest_copy;
#[path = "testguest/hostile.rs"]
mod hostile;
#[path = "testguest/hv_limits.rs"]
mod hv_limits;
#[path = "testguest/ipc_hostile.rs"]
mod ipc_hostile;
#[path = "testguest/landing.rs"]
mod landing;
#[path = "testguest/memop.rs"]
mod memop;
#[path = "testguest/mm.rs"]
mod mm;
#[path = "testguest/mm_hostile.rs"]
mod mm_hostile;
#[path = "testguest/net.rs"]
mod net;
#[path = "testguest/pin_storm.rs"]
mod pin_storm;
#[path = "testguest/privop.rs"]
mod privop;
#[path = "testguest/ramdisk.rs"]
mod ramdisk;
#[path = "testguest/regs.rs"]
mod regs;
#[path = "testguest/results.rs"]
mod results;
#[path = "testguest/ring_scribble.rs"]
mod ring_scribble;
#[path = "testguest/rng.rs"]
mod rng;
#[path = "testguest/segsel.rs"]
mod segsel;
#[path = "testguest/softint.rs"]
mod softint;
#[path = "testguest/timing.rs"]
mod timing;
#[path = "testguest/traps.rs"]
mod traps;
#[path = "testguest/user_mode.rs"]
mod user_mode;
#[path = "testguest/user_space.rs"]
mod user_space;
#[path = "testguest/vcpu_state.rs"]
mod vcpu_state;
#[path = "testguest/xs_fill.rs"]
mod xs_fill;
