//! Copying to and from guest virtual memory through the MMU, with the guest's page tables
//! loaded (they are in CR3 during a hypercall from that guest), as Xen's `copy_from_guest`
//! does: no software page walk, so a copy costs what the bytes cost.
//!
//! A guest pointer may be bad in every way the MMU can report (not present, read-only for a
//! write), so the copy instructions are listed in a fixup table: a fault on one of them in
//! ring 0 resumes at the copy's error exit instead of reaching the fatal-fault report
//! ([`fixup`], called by the ring-0 trap handler). With SMAP on, ring 0 may touch the
//! guest's (user) pages only between `stac` and `clac`, which bracket the copy and nothing
//! else. The core checked the range first (`microvisor::guest_mem::check_range`: canonical,
//! outside the hypervisor hole), which is the only way to make the `GuestRange` these take.

use super::cpu;
use super::entry::SMAP_ON;
use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};
use hypercall_abi::{Errno, Mfn};
use microvisor::guest_mem::GuestRange;
use microvisor::vcpu::GuestFrame;
use microvisor::x86::vector;

global_asm!(
    r#"
    .section .text.guest_copy, "ax"
    /* guest_copy(rdi = dst, rsi = src, rdx = len) -> rax = 0 when copied, 1 when a fault on
       the guest's side stopped it (some bytes may have been copied). Eight bytes at a time,
       then the tail. DF is clear in the hypervisor. */
    .balign 16
    .globl guest_copy
guest_copy:
    testb $1, {smap_on}(%rip)
    jz 1f
    stac
1:  mov %rdx, %rcx
    shr $3, %rcx
.Lcopy_quads:
    rep movsq
    mov %edx, %ecx
    and $7, %ecx
.Lcopy_tail:
    rep movsb
    xor %eax, %eax
.Lcopy_done:
    testb $1, {smap_on}(%rip)
    jz 1f
    clac
1:  ret
.Lcopy_fault:
    /* A fault on a copy instruction resumes here (see the table below and `fixup`). */
    mov $1, %eax
    jmp .Lcopy_done

    /* guest_copy8(rdi = dst, rsi = src) -> rax as guest_copy's: the 8-byte copies most
       hypercalls make (a result, a feature word, a port), without the string instructions'
       set-up. */
    .balign 16
    .globl guest_copy8
guest_copy8:
    testb $1, {smap_on}(%rip)
    jz 1f
    stac
1:
.Lcopy8_load:
    mov (%rsi), %rax
.Lcopy8_store:
    mov %rax, (%rdi)
    xor %eax, %eax
    jmp .Lcopy_done

    .pushsection .rodata.guest_copy_fixups, "a"
    .balign 8
    /* (faulting instruction, where to resume) */
    .globl guest_copy_fixups
guest_copy_fixups:
    .quad .Lcopy_quads, .Lcopy_fault
    .quad .Lcopy_tail, .Lcopy_fault
    .quad .Lcopy8_load, .Lcopy_fault
    .quad .Lcopy8_store, .Lcopy_fault
    .globl guest_copy_fixups_end
guest_copy_fixups_end:
    .popsection
    "#,
    smap_on = sym SMAP_ON,
    options(att_syntax)
);

/// One entry of the fixup table.
#[repr(C)]
struct Fixup {
    insn: u64,
    resume: u64,
}

extern "C" {
    fn guest_copy(dst: *mut u8, src: *const u8, len: usize) -> u64;
    fn guest_copy8(dst: *mut u8, src: *const u8) -> u64;
    static guest_copy_fixups: Fixup;
    static guest_copy_fixups_end: Fixup;
}

/// Guest-side faults recovered so far (published when the machine stops).
static FAULTS: AtomicU64 = AtomicU64::new(0);

/// Number of faults on guest addresses the copies have recovered from.
pub fn faults() -> u64 {
    FAULTS.load(Ordering::Relaxed)
}

/// True if the page tables at `l4` are the ones loaded on this CPU. CR3 is compared whole:
/// the hypervisor loads a guest's L4 address with no flag or PCID bits (`sync::HwTlb`), and
/// were any set, the answer would only be a false "not loaded", which the software walk
/// serves.
#[inline(always)]
pub fn loaded(l4: Mfn) -> bool {
    cpu::read_cr3() == l4.addr()
}

/// The copy for `len` bytes: `guest_copy8` for the common 8 (the length is a constant
/// wherever a typed value is copied, so the choice costs nothing), `guest_copy` otherwise.
///
/// # Safety
/// `dst` and `src` are valid for `len` bytes, as the callers below establish.
#[inline(always)]
unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) -> u64 {
    // SAFETY: the caller's guarantee; both routines copy exactly `len` bytes.
    unsafe {
        if len == 8 {
            guest_copy8(dst, src)
        } else {
            guest_copy(dst, src, len)
        }
    }
}

/// Copies `buf` from the guest range `va` with the loaded page tables.
#[inline(always)]
pub fn read(va: GuestRange, buf: &mut [u8]) -> Result<(), Errno> {
    if va.len() != buf.len() {
        return Err(Errno::EFAULT);
    }
    // SAFETY: `buf` is ours and writable for its length. The source, as long, lies in the
    // guest's part of the address space (a `GuestRange` passed `check_range`), which maps
    // nothing of the hypervisor's, so the copy reads only what the guest may read itself; a
    // fault on it is recovered (`fixup`).
    match unsafe { copy(buf.as_mut_ptr(), va.va() as *const u8, buf.len()) } {
        0 => Ok(()),
        _ => Err(Errno::EFAULT),
    }
}

/// Copies `data` to the guest range `va` with the loaded page tables.
#[inline(always)]
pub fn write(va: GuestRange, data: &[u8]) -> Result<(), Errno> {
    if va.len() != data.len() {
        return Err(Errno::EFAULT);
    }
    // SAFETY: `data` is ours and readable for its length. The destination, as long, lies in
    // the guest's part of the address space (a `GuestRange`): it maps only memory the guest may write
    // itself, which the hypervisor reaches only as shared memory (`MachineMemory`), and with
    // CR0.WP a read-only mapping at any level faults (recovered, `fixup`) instead of being
    // written through.
    match unsafe { copy(va.va() as *mut u8, data.as_ptr(), data.len()) } {
        0 => Ok(()),
        _ => Err(Errno::EFAULT),
    }
}

/// Called for a fault in ring 0: if a copy instruction faulted on a guest address (#PF; #GP
/// for a non-canonical one, which the range check already refuses), resumes the copy at its
/// error exit and returns true.
pub fn fixup(f: &mut GuestFrame) -> bool {
    if f.vector != u64::from(vector::PF) && f.vector != u64::from(vector::GP) {
        return false;
    }
    // SAFETY: the two symbols bound the table the assembly above lays out: whole `Fixup`
    // entries, 8-byte aligned, in read-only data.
    let table = unsafe {
        let start = &guest_copy_fixups as *const Fixup;
        let end = &guest_copy_fixups_end as *const Fixup;
        core::slice::from_raw_parts(start, end.offset_from(start) as usize)
    };
    match table.iter().find(|e| e.insn == f.rip) {
        Some(e) => {
            f.rip = e.resume;
            FAULTS.fetch_add(1, Ordering::Relaxed);
            true
        }
        None => false,
    }
}
