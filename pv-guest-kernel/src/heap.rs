//! The kernel heap: a bootstrap region in the binary's .bss (enough for the runtime to start
//! and for a small domU), plus one region a kernel may carve out of its own memory once the
//! memory manager runs ([`grow`]), so a kernel whose services scale with its clients (dom0)
//! sizes its heap from its memory rather than from a constant.
//!
//! Both regions are `linked_list_allocator` heaps: an allocation tries the grown region
//! first, then the bootstrap one; a block goes back to the region that holds its address.
//! [`stats`] tells a service how much is left, so it can refuse a client's request (with an
//! error to that client) before an allocation could fail.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use linked_list_allocator::Heap;
use spin::Mutex;

/// The regions.
pub struct KernelHeap {
    boot: Mutex<Heap>,
    grown: Mutex<Heap>,
}

/// Sizes of the heap, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Both regions together.
    pub size: usize,
    /// Handed out and not freed.
    pub used: usize,
    /// Left (not necessarily in one piece).
    pub free: usize,
}

impl KernelHeap {
    pub const fn new() -> KernelHeap {
        KernelHeap { boot: Mutex::new(Heap::empty()), grown: Mutex::new(Heap::empty()) }
    }

    /// Hands the bootstrap region to the heap.
    ///
    /// # Safety
    /// Called once, before any allocation; `[start, start + size)` is writable memory that
    /// nothing else ever uses.
    pub unsafe fn init_boot(&self, start: *mut u8, size: usize) {
        // SAFETY: the caller's contract is `Heap::init`'s.
        unsafe { self.boot.lock().init(start, size) }
    }

    /// Adds the grown region (once).
    ///
    /// # Safety
    /// `[start, start + size)` is mapped writable memory that nothing else ever uses.
    unsafe fn init_grown(&self, start: *mut u8, size: usize) -> bool {
        let mut g = self.grown.lock();
        if g.size() != 0 {
            return false;
        }
        // SAFETY: the caller's contract is `Heap::init`'s, and the region is empty (checked).
        unsafe { g.init(start, size) };
        true
    }

    /// The regions' sizes.
    pub fn stats(&self) -> HeapStats {
        let (b, g) = (self.boot.lock(), self.grown.lock());
        HeapStats { size: b.size() + g.size(), used: b.used() + g.used(), free: b.free() + g.free() }
    }

    fn in_grown(&self, g: &Heap, p: *mut u8) -> bool {
        g.size() != 0 && p >= g.bottom() && p < g.top()
    }
}

impl Default for KernelHeap {
    fn default() -> Self {
        KernelHeap::new()
    }
}

// SAFETY: blocks come from the two `Heap`s under their locks, and each is returned to the
// heap whose range holds it (the ranges never overlap: the grown region is pages the
// memory manager handed out, the bootstrap one the binary's .bss).
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Ok(p) = self.grown.lock().allocate_first_fit(layout) {
            return p.as_ptr();
        }
        self.boot.lock().allocate_first_fit(layout).map_or(core::ptr::null_mut(), |p| p.as_ptr())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(p) = NonNull::new(ptr) else { return };
        let mut g = self.grown.lock();
        if self.in_grown(&g, ptr) {
            // SAFETY: the block came from this region (its address is inside it) with `layout`.
            unsafe { g.deallocate(p, layout) };
            return;
        }
        drop(g);
        // SAFETY: not the grown region's, so the bootstrap region's, with `layout`.
        unsafe { self.boot.lock().deallocate(p, layout) }
    }
}

/// The kernel's heap.
pub static HEAP: KernelHeap = KernelHeap::new();

/// [`HEAP`] as a global allocator (`pv_kernel!` installs it).
#[derive(Clone, Copy, Debug, Default)]
pub struct Global;

// SAFETY: forwards to `HEAP`, whose implementation is sound.
unsafe impl GlobalAlloc for Global {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { HEAP.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { HEAP.dealloc(ptr, layout) }
    }
}

/// The heap's sizes now.
pub fn stats() -> HeapStats {
    HEAP.stats()
}

#[cfg(not(test))]
pub use kernel::grow;

#[cfg(not(test))]
mod kernel {
    use super::HEAP;
    use crate::mm;
    use hypercall_abi::{Errno, PAGE_SIZE};

    /// Adds `pages` of this domain's memory to the heap, in one machine-independent run of
    /// the direct map. Once only (`EEXIST` after).
    pub fn grow(pages: u64) -> Result<(), Errno> {
        let va = mm::alloc_run(pages)?;
        let bytes = usize::try_from(pages).map_err(|_| Errno::EINVAL)? * PAGE_SIZE;
        // SAFETY: `alloc_run` handed these pages to us alone; they are mapped writable in the
        // direct map at `va` and never freed.
        if unsafe { HEAP.init_grown(va as *mut u8, bytes) } {
            Ok(())
        } else {
            Err(Errno::EEXIST)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// Two regions of a test's own memory.
    fn heap(boot: &mut [u8], grown: &mut [u8]) -> KernelHeap {
        let h = KernelHeap::new();
        // SAFETY: each slice outlives the heap (the tests drop the heap first) and is used by
        // nothing else meanwhile.
        unsafe { h.init_boot(boot.as_mut_ptr(), boot.len()) };
        if !grown.is_empty() {
            // SAFETY: as above.
            assert!(unsafe { h.init_grown(grown.as_mut_ptr(), grown.len()) });
        }
        h
    }

    #[test]
    fn blocks_return_to_their_region_and_the_grown_one_is_used_first() {
        let (mut b, mut g) = (alloc::vec![0u8; 4096], alloc::vec![0u8; 64 * 1024]);
        let h = heap(&mut b, &mut g);
        let before = h.stats();
        assert_eq!(before.size, b.len() + g.len());
        let l = Layout::from_size_align(1000, 8).unwrap();
        let mut blocks = Vec::new();
        // SAFETY: valid layout; every block is freed below with the same layout.
        while let Some(p) = NonNull::new(unsafe { h.alloc(l) }) {
            blocks.push(p.as_ptr());
        }
        let range = g.as_ptr_range();
        let in_grown = |p: *mut u8| range.contains(&p.cast_const());
        assert!(in_grown(blocks[0]), "the grown region first");
        assert!(blocks.iter().any(|&p| !in_grown(p)), "then the bootstrap region");
        assert!(blocks.len() >= 60);
        assert!(h.stats().free < 1000 + 64, "full");
        for p in blocks {
            // SAFETY: allocated above with `l`.
            unsafe { h.dealloc(p, l) };
        }
        assert_eq!(h.stats(), before);
        // SAFETY: as above.
        assert!(!unsafe { h.init_grown(g.as_mut_ptr(), g.len()) }, "grown once only");
    }

    #[test]
    fn exhaustion_is_a_null_pointer_not_a_panic() {
        let (mut b, mut g) = (alloc::vec![0u8; 1024], Vec::new());
        let h = heap(&mut b, &mut g);
        // SAFETY: valid layout; a null result is not freed.
        assert!(unsafe { h.alloc(Layout::from_size_align(4096, 8).unwrap()) }.is_null());
    }
}
