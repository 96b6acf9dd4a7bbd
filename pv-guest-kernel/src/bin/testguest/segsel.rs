//! `segsel`: a domain's data segment selectors are its own. Two instances run side by side
//! (`role=a` and `role=b`), each holding a different pair of selectors in `%ds` and `%es`
//! and yielding the CPU for 200 ms; after every yield each checks that it still holds its own.
//! Xen saves and reloads them on every vCPU switch (`save_segments`/`load_segments`); the
//! hypervisor used to leave them in the CPU, so each domain ran with the other's selectors and
//! their hidden descriptors (bases and limits, which 32-bit code uses).

use super::checks::Results;
use core::arch::asm;
use hypercall_abi::xen::FLAT_RING3_DS32;
use pv_guest_kernel::{cmdline, hypercall, time};

/// How long the two instances take turns.
const RUN_NS: u64 = 200_000_000;

fn load([ds, es]: [u16; 2]) {
    // SAFETY: null and Xen's flat ring-3 data selector load in ring 3; 64-bit code ignores
    // both registers.
    unsafe {
        asm!("mov ds, {0:x}", "mov es, {1:x}", in(reg) ds, in(reg) es, options(nostack, preserves_flags))
    };
}

fn read() -> [u16; 2] {
    let (ds, es): (u16, u16);
    // SAFETY: reading selectors has no side effects.
    unsafe {
        asm!("mov {0:x}, ds", "mov {1:x}, es", out(reg) ds, out(reg) es, options(nomem, nostack, preserves_flags))
    };
    [ds, es]
}

pub fn run(cmd: &str) {
    let mut r = Results::new("segsel");
    let flat = FLAT_RING3_DS32;
    let mine = if cmdline::get(cmd, "role") == Some("b") { [flat, 0] } else { [0, flat] };
    let end = time::now_ns() + RUN_NS;
    let (mut rounds, mut lost) = (0u64, 0u64);
    let mut first_lost = None;
    while time::now_ns() < end {
        load(mine);
        hypercall::yield_cpu();
        let now = read();
        if now != mine {
            lost += 1;
            first_lost.get_or_insert(now);
        }
        rounds += 1;
    }
    load([0, 0]);
    pv_guest_kernel::println!("segsel: rounds={rounds} lost={lost} first={first_lost:x?}");
    r.is("took_turns", rounds >= 100);
    r.is("selectors_kept", lost == 0);
    r.report();
}
