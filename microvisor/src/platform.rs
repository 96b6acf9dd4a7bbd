//! What the core logic needs from the machine, as a trait: memory, a clock and a console.
//! The kernel binary implements it over the real hardware; host tests implement it over fake
//! memory, a settable clock and a byte buffer.

use crate::guest_mem::GuestRange;
use crate::mm::MachineMemory;
use hypercall_abi::{Errno, Mfn};

/// Machine services for the core logic.
pub trait Platform {
    type Mem: MachineMemory;
    /// Machine memory.
    fn mem(&self) -> &Self::Mem;
    /// Current TSC value.
    fn tsc(&self) -> u64;
    /// Writes bytes to the hypervisor console.
    fn console_write(&mut self, bytes: &[u8]);
    /// Executes CPUID on the real CPU (guests see a filtered view, see `cpuid`).
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// Saves the CPU's x87/SSE registers into `area`.
    fn fpu_save(&mut self, area: &mut crate::vcpu::FpuArea);
    /// Loads the CPU's x87/SSE registers from `area`.
    fn fpu_restore(&mut self, area: &crate::vcpu::FpuArea);
    /// Reads an MSR of the real CPU; `None` if the CPU refuses it (#GP). Used for what Xen
    /// derives from the host's MSRs (`MISC_ENABLE`) and its rule for guests without a #GP
    /// handler (an MSR the CPU has reads as 0).
    fn rdmsr_safe(&self, _msr: u32) -> Option<u64> {
        None
    }
    /// Writes back and invalidates the CPU's caches (`wbinvd`).
    fn wbinvd(&mut self);
    /// The FS base and active GS base in the CPU, if it holds `vcpu`'s (None otherwise, or
    /// where there is no CPU). A guest changes them behind the hypervisor's back by loading
    /// `%fs`/`%gs` (a null selector zeroes the base), so the CPU, not the vCPU's copy, is the
    /// truth while it runs.
    fn live_segment_bases(&self, _vcpu: crate::sched::VcpuRef) -> Option<(u64, u64)> {
        None
    }
    /// Copies `buf` from the guest range `va` (checked: in the guest's part of the address
    /// space; the same length as `buf`) through the MMU, if the page tables at `l4` are the
    /// ones loaded on the CPU; `None` if they are not (the caller then walks them in
    /// software). The caller has made sure no TLB flush is owed (see [`crate::guest_mem`]); a
    /// fault on the guest's side is `Some(Err(EFAULT))`, with part of `buf` possibly written.
    fn copy_from_guest(&self, l4: Mfn, va: GuestRange, buf: &mut [u8]) -> Option<Result<(), Errno>>;
    /// Copies `data` to guest virtual address `va` through the MMU, as
    /// [`Platform::copy_from_guest`]; a read-only mapping at any level faults.
    fn copy_to_guest(&self, l4: Mfn, va: GuestRange, data: &[u8]) -> Option<Result<(), Errno>>;
    /// The `%ds`, `%es`, `%fs` and `%gs` selectors in the CPU, if it holds `vcpu`'s (None
    /// otherwise, or where there is no CPU): the guest loads them itself.
    fn live_data_selectors(&self, _vcpu: crate::sched::VcpuRef) -> Option<[u16; 4]> {
        None
    }
    /// A byte typed on the hypervisor console, if any.
    fn console_read(&mut self) -> Option<u8> {
        None
    }
}
