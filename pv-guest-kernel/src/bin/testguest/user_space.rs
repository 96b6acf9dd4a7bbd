//! A guest user address space for scenarios that run code in guest user mode, as a PV kernel
//! runs its processes: its own L4 holding only a code, a data and a stack page at 4 MiB,
//! installed with `MMUEXT_NEW_USER_BASEPTR`, and a kernel stack for transitions from user mode
//! (`stack_switch`). Running the user code at all proves the user L4 was loaded: its pages are
//! not mapped in the kernel's.

use alloc::string::String;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use hypercall_abi::xen::{mmuext, uvmf, MmuextOp, FLAT_KERNEL_SS};
use hypercall_abi::DomId;
use pv_guest_kernel::hypercall;
use pv_guest_kernel::mm::{self, pt};

/// User virtual addresses: code, data, stack (one page each, one L1).
pub const USER_CODE: u64 = 0x40_0000;
pub const USER_DATA: u64 = 0x40_1000;
pub const USER_STACK_TOP: u64 = 0x40_3000;

const KSTACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct KernelStack(UnsafeCell<[u8; KSTACK_SIZE]>);
// SAFETY: only the hypervisor writes it (bounce frames) and only the callback or handler that
// runs on it reads it, one transition at a time.
unsafe impl Sync for KernelStack {}
static KSTACK: KernelStack = KernelStack(UnsafeCell::new([0; KSTACK_SIZE]));

/// The top of the kernel stack registered with `stack_switch`, minus a slack of 64 bytes so
/// that a reader of the bounce frame may read a word beyond it.
pub fn kernel_stack_top() -> u64 {
    (KSTACK.0.get() as u64 + KSTACK_SIZE as u64 - 64) & !15
}

fn ext(cmd: u32, arg1: u64) -> i64 {
    let mut done = 0u32;
    hypercall::mmuext_op(&[MmuextOp { cmd, _pad: 0, arg1, arg2: 0 }], &mut done, DomId::SELF)
}

fn remap(p: &mm::Page, flags: u64) -> i64 {
    hypercall::update_va_mapping(p.va, pt::make(p.mfn, flags), uvmf::INVLPG)
}

/// Writes entry `idx` of a page that is not (yet) a page table.
fn write_entry(p: &mm::Page, idx: usize, val: u64) {
    // SAFETY: `p` is a page of ours, mapped writable at `p.va`, not in use as a table.
    unsafe { ((p.va + idx as u64 * 8) as *mut u64).write_volatile(val) };
}

/// A user address space in use as the vCPU's user page-table base.
pub struct UserSpace {
    pages: Vec<mm::Page>,
    /// The data page, also mapped writable in the kernel's direct map.
    pub data: mm::Page,
}

impl UserSpace {
    /// Builds the address space with `code` at [`USER_CODE`], installs it as the user base and
    /// registers [`kernel_stack_top`] with `stack_switch`.
    pub fn build(code: &[u8]) -> Result<UserSpace, String> {
        if code.len() > 4096 {
            return Err(String::from("user code larger than a page"));
        }
        let pages: Vec<mm::Page> = (0..7).filter_map(|_| mm::alloc_page().ok()).collect();
        let [code_page, data, stack, l1, l2, l3, l4] = pages[..] else {
            for p in &pages {
                let _ = mm::free_page(p.pfn);
            }
            return Err(String::from("cannot allocate 7 pages"));
        };
        // SAFETY: copies the program's bytes into the code page, writable in the direct map.
        unsafe { core::ptr::copy_nonoverlapping(code.as_ptr(), code_page.va as *mut u8, code.len()) };
        let user_ro = pt::PRESENT | pt::USER | pt::ACCESSED;
        write_entry(&l1, pt::table_index(USER_CODE, 1), pt::make(code_page.mfn, user_ro));
        write_entry(&l1, pt::table_index(USER_DATA, 1), pt::make(data.mfn, pt::PAGE_KERNEL));
        write_entry(&l1, pt::table_index(USER_STACK_TOP - 8, 1), pt::make(stack.mfn, pt::PAGE_KERNEL));
        write_entry(&l2, pt::table_index(USER_CODE, 2), pt::make(l1.mfn, pt::PAGE_TABLE));
        write_entry(&l3, pt::table_index(USER_CODE, 3), pt::make(l2.mfn, pt::PAGE_TABLE));
        write_entry(&l4, pt::table_index(USER_CODE, 4), pt::make(l3.mfn, pt::PAGE_TABLE));
        let us = UserSpace { pages, data };
        for t in [&l1, &l2, &l3, &l4] {
            let r = remap(t, pt::PAGE_KERNEL_RO);
            if r != 0 {
                let _ = us.teardown();
                return Err(alloc::format!("cannot make a user page-table frame read-only: {r}"));
            }
        }
        let r = ext(mmuext::NEW_USER_BASEPTR, l4.mfn.0);
        if r != 0 {
            let _ = us.teardown();
            return Err(alloc::format!("MMUEXT_NEW_USER_BASEPTR: {r}"));
        }
        let r = hypercall::stack_switch(FLAT_KERNEL_SS, kernel_stack_top());
        if r != 0 {
            let _ = us.teardown();
            return Err(alloc::format!("stack_switch: {r}"));
        }
        Ok(us)
    }

    /// Removes the user base and returns every page, writable again, to the allocator.
    /// Returns what went wrong.
    pub fn teardown(self) -> Vec<String> {
        let mut fails = Vec::new();
        let r = ext(mmuext::NEW_USER_BASEPTR, 0);
        if r != 0 {
            fails.push(alloc::format!("MMUEXT_NEW_USER_BASEPTR(0): {r}"));
        }
        for p in &self.pages {
            // A frame still read-only must not go back to the allocator (it zeroes pages).
            let r = remap(p, pt::PAGE_KERNEL);
            if r == 0 {
                let _ = mm::free_page(p.pfn);
            } else {
                fails.push(alloc::format!("frame {:#x} not writable after release: {r}", p.mfn.0));
            }
        }
        fails
    }
}
