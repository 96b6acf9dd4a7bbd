//! `ramdisk`: the domain's Xen ramdisk (`start_info.mod_start`/`mod_len`, a boot module marked
//! `ramdisk=<name>`) is where start_info says. Prints `ramdisk: len=<bytes> fnv=<FNV-1a 64>`
//! for the host to compare with the file it handed to QEMU.

use hypercall_abi::xen::sif;
use pv_guest_kernel::start_info::StartInfo;
use pv_guest_kernel::{mm, println};

/// FNV-1a, 64-bit (the host side computes the same).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

pub fn run(si: &StartInfo) {
    let len = si.mod_len;
    if si.mod_start == 0 || len == 0 {
        println!(
            "TEST ramdisk FAIL start_info names no ramdisk (mod_start {:#x}, mod_len {len})",
            si.mod_start
        );
        return;
    }
    let va = if si.flags & sif::MOD_START_PFN != 0 {
        mm::pfn_to_virt(hypercall_abi::Pfn(si.mod_start))
    } else {
        Some(si.mod_start)
    };
    let Some(va) = va else {
        println!("TEST ramdisk FAIL pfn {:#x} is not mapped", si.mod_start);
        return;
    };
    // SAFETY: the builder mapped the ramdisk's `mod_len` bytes at `mod_start` (or, by pfn,
    // in the direct map), and the runtime reserved those pages; nothing writes them.
    let bytes = unsafe { core::slice::from_raw_parts(va as *const u8, len as usize) };
    println!("ramdisk: len={len} fnv={:#018x}", fnv1a(bytes));
    println!("TEST ramdisk PASS {len} bytes at {:#x}", si.mod_start);
}
