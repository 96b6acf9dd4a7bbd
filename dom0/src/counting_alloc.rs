//! A global allocator for host tests that counts, per thread, the heap bytes live as dom0's
//! kernel allocator (`linked_list_allocator`) would hold them: each block rounded up to 8
//! bytes and at least 16. Tests compare it with what xenstored charges its clients.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

/// The bytes a block of `layout` takes in dom0's heap.
fn kernel_size(layout: Layout) -> isize {
    layout.size().max(16).next_multiple_of(8) as isize
}

fn add(n: isize) {
    // `try_with`: allocations during thread teardown are not counted.
    let _ = LIVE.try_with(|l| l.set(l.get() + n));
}

// SAFETY: every call is passed straight to the system allocator; the counter is a
// thread-local `Cell` with no destructor, so counting neither allocates nor re-enters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is System's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(kernel_size(layout));
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-kernel_size(layout));
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // SAFETY: `realloc`'s contract makes this a valid layout.
            let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
            add(kernel_size(new) - kernel_size(layout));
        }
        p
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// The bytes this thread has allocated and not freed (as dom0's heap would count them).
pub fn live() -> isize {
    LIVE.with(Cell::get)
}
