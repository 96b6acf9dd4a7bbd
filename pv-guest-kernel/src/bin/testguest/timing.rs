//! Measurement helpers shared by the test guest's benchmarks: a hypercall timed with `rdtsc`
//! right around the call through the hypercall page (the same bracket the hypervisor uses for
//! its `syscall`→`sysretq` floor), sample buffers, and the `BENCH` / `BENCHHIST` report lines
//! formatted by the ABI crate so every kernel prints them alike.

use alloc::vec::Vec;
use core::arch::asm;
use hypercall_abi::microvisor::bench::{HistLine, Histogram, Line, Stats};
use pv_guest_kernel::println;

/// One hypercall `NR` with four arguments, timed with `rdtsc` right around the call through
/// the hypercall page. Returns (cycles, the hypercall's result).
#[inline(always)]
pub fn timed4<const NR: u64>(a1: u64, a2: u64, a3: u64, a4: u64) -> (u32, i64) {
    let delta: u32;
    let ret: i64;
    // SAFETY: a Xen hypercall through the builder-filled hypercall page (see
    // `hypercall::call5`); r12/r13 survive it (callee-saved), and every register rdtsc, the
    // stub or the hypervisor may clobber is declared. Pointer arguments are checked by the
    // hypervisor. The inputs are in registers the outputs do not use.
    unsafe {
        asm!(
            "rdtsc",
            "mov %eax, %r12d",
            "mov {a3}, %rdx",
            "call {page}+{off}",
            "mov %rax, %r13",
            "rdtsc",
            "sub %r12d, %eax",
            page = sym super::hypercall_page,
            off = const NR * 32,
            a3 = in(reg) a3,
            inout("rdi") a1 => _,
            inout("rsi") a2 => _,
            inout("r10") a4 => _,
            out("rax") delta,
            out("rdx") _,
            out("r12") _,
            out("r13") ret,
            out("r8") _,
            out("rcx") _,
            out("r11") _,
            options(att_syntax),
        );
    }
    (delta, ret)
}

/// Why a benchmark could not run.
pub type Failure = alloc::string::String;

/// A sample buffer of `n` entries, allocated up front so measuring never allocates.
pub fn samples(n: usize) -> Result<Vec<u32>, Failure> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| alloc::format!("cannot hold {n} samples"))?;
    Ok(v)
}

/// Prints the `BENCH` and `BENCHHIST` lines of `s` (in TSC cycles).
pub fn print(name: &str, s: &mut [u32]) -> Result<Stats, Failure> {
    let stats = Stats::compute(s).ok_or_else(|| alloc::format!("{name}: no samples"))?;
    println!("{}", Line { name, unit: "tsc", stats });
    println!("{}", HistLine { name, hist: Histogram::of_sorted(s, &stats) });
    Ok(stats)
}
