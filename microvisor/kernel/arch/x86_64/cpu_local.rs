//! State that belongs to the one CPU: the installed hypervisor and what the CPU was last
//! loaded with. The hypervisor runs with interrupts off and never re-enters itself (see
//! entry.rs), so one mutable reference at a time is guaranteed by the design; [`CpuLocal`]
//! checks it with a busy flag that turns a re-entry into a panic rather than aliasing, and
//! offers an unchecked access for the one hot path whose entry already proves it.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// A value owned by the CPU (see the module documentation).
pub struct CpuLocal<T> {
    busy: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: one CPU, and every access goes through `with` (which excludes a second reference)
// or `get_unchecked` (whose callers prove the same).
unsafe impl<T> Sync for CpuLocal<T> {}

impl<T> CpuLocal<T> {
    pub const fn new(value: T) -> CpuLocal<T> {
        CpuLocal { busy: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    /// Runs `f` with the value; panics if it is already in use (a re-entry).
    #[inline(always)]
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        assert!(!self.busy.swap(true, Ordering::Acquire), "per-CPU state re-entered");
        // SAFETY: the flag proves no other reference to the value exists.
        let r = f(unsafe { &mut *self.value.get() });
        self.busy.store(false, Ordering::Release);
        r
    }

    /// The value, without the busy check.
    ///
    /// # Safety
    /// No other reference to the value may exist while the returned one is used: the caller
    /// is an entry from a guest (so no hypervisor code is running) or the exit path, with
    /// interrupts off.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    pub unsafe fn get_unchecked(&self) -> &mut T {
        // SAFETY: the caller guarantees exclusive access.
        unsafe { &mut *self.value.get() }
    }
}
