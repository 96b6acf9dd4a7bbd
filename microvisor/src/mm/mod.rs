//! Machine memory as the core logic sees it: an abstract interface over machine addresses
//! (the hypervisor implements it over its direct map, host tests over a `Vec`), the page-table
//! entry format, the frame table with Xen's page-type rules, and guest page-table validation.

pub mod frame_table;
pub mod mmu;
pub mod pagetable;
pub mod pte;
pub mod ptwr;
pub mod tlb;

#[cfg(test)]
pub mod fake;
#[cfg(test)]
mod security_tests;

use hypercall_abi::{DomId, Mfn, PAGE_SIZE};

/// Access to machine memory by machine address.
///
/// This is the only way core logic touches RAM. Methods take `&self` because the memory is
/// shared with running guests (shared_info, grant tables, rings): it is external state, not
/// something the hypervisor owns exclusively. Callers validate frame numbers (against the
/// frame table) before accessing them; an access outside RAM is a hypervisor bug and panics.
pub trait MachineMemory {
    /// One past the highest machine frame that exists.
    fn max_mfn(&self) -> Mfn;
    /// Copies `buf.len()` bytes starting at machine address `ma`; the range must not cross a
    /// frame boundary.
    fn read(&self, ma: u64, buf: &mut [u8]);
    /// Copies `data` to machine address `ma`; the range must not cross a frame boundary.
    fn write(&self, ma: u64, data: &[u8]);
    /// Reads an aligned u64 atomically (page-table entries, shared bitmaps).
    fn read_u64(&self, ma: u64) -> u64;
    /// Writes an aligned u64 atomically.
    fn write_u64(&self, ma: u64, val: u64);
    /// Atomically ORs `bits` into the aligned u64 at `ma`, returning the old value.
    fn fetch_or_u64(&self, ma: u64, bits: u64) -> u64;
    /// Atomically ANDs `bits` into the aligned u64 at `ma`, returning the old value.
    fn fetch_and_u64(&self, ma: u64, bits: u64) -> u64;
    /// Atomically replaces the aligned u16 at `ma` with `new` if it holds `old`; returns the
    /// value found (grant-table flags are updated this way, racing with the guest).
    fn cmpxchg_u16(&self, ma: u64, old: u16, new: u16) -> u16;
    /// Fills a frame with zeros.
    fn zero_frame(&self, mfn: Mfn);
    /// Copies a whole frame.
    fn copy_frame(&self, dst: Mfn, src: Mfn);

    /// Reads a u8 (no atomicity needed for single bytes).
    fn read_u8(&self, ma: u64) -> u8 {
        let mut b = [0];
        self.read(ma, &mut b);
        b[0]
    }
    /// Writes a u8.
    fn write_u8(&self, ma: u64, val: u8) {
        self.write(ma, &[val]);
    }
    /// Reads a plain-old-data value that lies within one frame.
    fn read_obj<T: zerocopy::FromBytes + zerocopy::IntoBytes>(&self, ma: u64) -> T {
        let mut v = T::new_zeroed();
        self.read(ma, v.as_mut_bytes());
        v
    }
    /// Writes a plain-old-data value that lies within one frame.
    fn write_obj<T: zerocopy::IntoBytes + zerocopy::Immutable>(&self, ma: u64, val: &T) {
        self.write(ma, val.as_bytes());
    }
    /// Reads entry `index` of the page table in frame `mfn`.
    fn read_pte(&self, mfn: Mfn, index: usize) -> u64 {
        debug_assert!(index < 512);
        self.read_u64(mfn.addr() + (index * 8) as u64)
    }
    /// Writes entry `index` of the page table in frame `mfn`.
    fn write_pte(&self, mfn: Mfn, index: usize, val: u64) {
        debug_assert!(index < 512);
        self.write_u64(mfn.addr() + (index * 8) as u64, val)
    }
}

/// Hands out machine frames to an owner.
pub trait FrameAllocator {
    /// A zeroed frame now owned by `owner`, or `None` when memory is exhausted.
    fn alloc_frame(&mut self, owner: DomId) -> Option<Mfn>;
    /// Number of frames still free.
    fn free_frames(&self) -> u64;
}

/// Frames per page table.
pub const ENTRIES_PER_TABLE: usize = PAGE_SIZE / 8;
