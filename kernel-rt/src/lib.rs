//! The C-library symbols the precompiled libcore expects, for freestanding kernels (microvisor,
//! dom0, the PV guests). On `x86_64-unknown-none` compiler-builtins has weak versions of the
//! `mem*` functions; these strong ones replace them with quadword string instructions (and on
//! the `x86_64-unknown-linux-gnu` fallback they are the only ones).
//!
//! Only kernel binaries link this crate (with `use kernel_rt as _;`); host builds use the real
//! C library. The functions use `rep movsb`/`rep stosb` and plain byte loops, which touch no
//! SSE registers, so the hypervisor can call them on any path without saving guest FPU state.
#![no_std]

use core::arch::asm;

/// Copies `n` bytes; the regions must not overlap.
///
/// # Safety
/// `dest` and `src` must be valid for `n` bytes (the C contract).
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both regions are valid for `n` bytes; `rep movsq` copies
    // the first n/8 quadwords and `rep movsb` the rest, forwards (DF is clear by the ABI).
    // Quadwords matter under emulation, which runs string instructions an element at a time.
    unsafe {
        asm!("rep movsq", "mov {rest:e}, %ecx", "rep movsb",
            rest = in(reg) (n & 7) as u32,
            inout("rcx") n / 8 => _, inout("rdi") dest => _, inout("rsi") src => _,
            options(nostack, preserves_flags, att_syntax));
    }
    dest
}

/// Copies `n` bytes between possibly overlapping regions.
///
/// # Safety
/// `dest` and `src` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // Forward copy is safe: dest is below src or the regions do not overlap.
        // SAFETY: as for `memcpy`; a forward copy never reads a byte it already wrote.
        unsafe { memcpy(dest, src, n) }
    } else {
        // SAFETY: the caller guarantees validity; copying backwards with DF set handles the
        // overlap where dest is above src. DF is restored before returning.
        unsafe {
            asm!("std", "rep movsb", "cld",
                inout("rcx") n => _,
                inout("rdi") dest.add(n - 1) => _,
                inout("rsi") src.add(n - 1) => _,
                options(nostack));
        }
        dest
    }
}

/// Fills `n` bytes with `c`.
///
/// # Safety
/// `dest` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    let byte = u64::from(c as u8);
    // SAFETY: the caller guarantees `dest` is valid for `n` bytes: `rep stosq` fills n/8
    // quadwords of the byte pattern, `rep stosb` the rest.
    unsafe {
        asm!("rep stosq", "mov {rest:e}, %ecx", "rep stosb",
            rest = in(reg) (n & 7) as u32,
            inout("rcx") n / 8 => _, inout("rdi") dest => _, in("rax") byte * 0x0101_0101_0101_0101,
            options(nostack, preserves_flags, att_syntax));
    }
    dest
}

/// Compares `n` bytes.
///
/// # Safety
/// Both regions must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: `i < n` and the caller guarantees both regions hold `n` bytes.
        let (x, y) = unsafe { (a.add(i).read(), b.add(i).read()) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// Compares `n` bytes for equality only.
///
/// # Safety
/// Both regions must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as `memcmp`.
    unsafe { memcmp(a, b, n) }
}

/// libcore references the unwinding personality even with `panic = "abort"`; it is never
/// called because nothing unwinds.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

/// The precompiled liballoc references the unwinder's resume entry point in landing pads that
/// never run with `panic = "abort"`.
#[no_mangle]
pub extern "C" fn _Unwind_Resume() -> ! {
    loop {
        core::hint::spin_loop();
    }
}
