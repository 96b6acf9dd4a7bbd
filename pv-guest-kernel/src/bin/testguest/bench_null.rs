//! `bench-null`: the null hypercall's latency, timed exactly as the hypervisor times its
//! `syscall`→`sysretq` floor.

use super::timing;
use alloc::vec::Vec;
use core::arch::asm;
use hypercall_abi::hypercall::nr;
use hypercall_abi::version;
use pv_guest_kernel::{cmdline, events, hypercall, println};

pub fn run(cmd: &str) {
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
            page = sym super::hypercall_page,
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
