//! The latency floor: a bare `syscall` → `sysretq` round trip from ring 3, timed with `rdtsc`
//! in the same boot as the guests' benchmarks, so every hypercall figure can be read as a
//! multiple of what the hardware (or TCG) charges for the ring switch alone.
//!
//! A throw-away address space maps a small ring-3 loop and a sample buffer at low addresses;
//! LSTAR points at a stub that is nothing but `sysretq`. The loop ends with `hlt`, whose #GP
//! brings the CPU back to `finish`, which restores the syscall entry and starts the guests.

use super::{cpu, entry, paging};
use crate::machine::Hv;
use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, Ordering};
use hypercall_abi::microvisor::bench::{HistLine, Histogram, Line, Stats};
use hypercall_abi::{Mfn, PAGE_SIZE};
use microvisor::mm::{pte, MachineMemory};

/// Where the loop's code and samples live in the bench address space.
const CODE_VA: u64 = 0x40_0000;
const DATA_VA: u64 = 0x60_0000;

global_asm!(
    r#"
    .section .text.floor, "ax"
    .balign 16
    .globl floor_sysret
floor_sysret:
    sysretq

    .globl floor_user_loop, floor_user_loop_end
floor_user_loop:
    /* rdi = iterations, rsi = sample buffer; each sample is one rdtsc-bracketed syscall. */
1:  rdtsc
    mov %eax, %r8d
    syscall
    rdtsc
    sub %r8d, %eax
    mov %eax, (%rsi)
    add $4, %rsi
    dec %rdi
    jnz 1b
    hlt
floor_user_loop_end:
    "#,
    options(att_syntax)
);

extern "C" {
    fn floor_sysret();
    static floor_user_loop: u8;
    static floor_user_loop_end: u8;
}

static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Iterations of the loop now running, and the frames of its sample buffer.
static RUN: spin::Mutex<(u64, alloc::vec::Vec<Mfn>)> = spin::Mutex::new((0, alloc::vec::Vec::new()));

/// True while the floor loop runs (its final #GP is not a guest's).
pub fn active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

/// Builds the bench address space and sets the live frame up for the ring-3 loop; the caller
/// then enters it (see [`finish`] for the way back).
pub fn prepare(
    hv: &mut Hv,
    iters: u64,
    hv_slots: &[u64; paging::NR_HV_SLOTS],
    f: &mut microvisor::vcpu::GuestFrame,
) {
    let mem = hv.platform().mem;
    let mut alloc = || hv.alloc_xen_frame().expect("memory for the floor benchmark");
    let l4 = alloc();
    for (i, e) in hv_slots.iter().enumerate() {
        mem.write_pte(l4, 256 + i, *e);
    }
    let (l3, l2, l1_code) = (alloc(), alloc(), alloc());
    let user = pte::PRESENT | pte::RW | pte::USER;
    mem.write_pte(l4, 0, pte::make(l3, user));
    mem.write_pte(l3, 0, pte::make(l2, user));
    mem.write_pte(l2, pte::table_index(CODE_VA, 2), pte::make(l1_code, user));
    // The loop's code, copied into one user page.
    let code = alloc();
    // SAFETY: both symbols bracket the loop in .text; the bytes are read-only code.
    let bytes = unsafe {
        let s = &floor_user_loop as *const u8;
        core::slice::from_raw_parts(s, (&floor_user_loop_end as *const u8).offset_from(s) as usize)
    };
    mem.write(code.addr(), bytes);
    mem.write_pte(l1_code, 0, pte::make(code, pte::PRESENT | pte::USER));
    // Sample buffer: 4 bytes per iteration, in 2 MiB windows of 4 KiB pages.
    let pages = (iters * 4).div_ceil(PAGE_SIZE as u64);
    let frames: alloc::vec::Vec<Mfn> = (0..pages).map(|_| alloc()).collect();
    for (i, f) in frames.iter().enumerate() {
        let va = DATA_VA + (i * PAGE_SIZE) as u64;
        let l2i = pte::table_index(va, 2);
        let l1 = match mem.read_pte(l2, l2i) {
            e if pte::is_present(e) => pte::mfn(e),
            _ => {
                let t = alloc();
                mem.write_pte(l2, l2i, pte::make(t, user));
                t
            }
        };
        mem.write_pte(l1, pte::table_index(va, 1), pte::make(*f, user | pte::NX));
    }
    *RUN.lock() = (iters, frames);
    ACTIVE.store(true, Ordering::Release);
    cpu::wrmsr(cpu::msr::LSTAR, floor_sysret as *const () as u64);
    // SAFETY: the new L4 carries the hypervisor's slots, so the hypervisor stays mapped.
    unsafe { cpu::write_cr3(l4.addr()) };
    *f = microvisor::vcpu::GuestFrame {
        rip: CODE_VA,
        cs: u64::from(hypercall_abi::xen::FLAT_RING3_CS64),
        ss: u64::from(hypercall_abi::xen::FLAT_RING3_SS64),
        rflags: 0x2,
        rdi: iters,
        rsi: DATA_VA,
        ..Default::default()
    };
}

/// Called from the #GP of the loop's final `hlt`: reads the samples and prints the figure.
pub fn finish(hv: &mut Hv) {
    ACTIVE.store(false, Ordering::Release);
    entry::init_syscall_entry();
    let (iters, frames) = core::mem::take(&mut *RUN.lock());
    let mem = hv.platform().mem;
    let mut samples = alloc::vec::Vec::with_capacity(iters as usize);
    for i in 0..iters {
        let f = frames[(i as usize * 4) / PAGE_SIZE];
        let mut b = [0u8; 4];
        mem.read(f.addr() + (i * 4) % PAGE_SIZE as u64, &mut b);
        samples.push(u32::from_le_bytes(b));
    }
    // Skip the first 1% as warm-up.
    let warm = samples.len() / 100;
    let measured = &mut samples[warm..];
    if let Some(stats) = Stats::compute(measured) {
        let name = "floor.syscall_sysret";
        hv.log(format_args!("{}", Line { name, unit: "tsc", stats }));
        hv.log(format_args!("{}", HistLine { name, hist: Histogram::of_sorted(measured, &stats) }));
    }
    for f in frames {
        hv.free_xen_frame(f);
    }
}
