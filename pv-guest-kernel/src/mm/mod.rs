//! Memory management of a PV kernel: the P2M (`start_info.mfn_list`, pfn → mfn) and the
//! hypervisor's read-only M2P (mfn → pfn), a read-only view of the page tables through them,
//! page mapping with explicit hypercalls, and the page-frame allocator.
//!
//! The kernel's *direct map* puts pfn `p` at `virt_base + p * 4096`, exactly as the builder's
//! bootstrap mapping does for the first pfns. At start-up [`init`] extends it over all of the
//! domain's pages the mini-os way (`build_pagetable`): each new page-table frame is zeroed
//! through its direct-map address, made read-only there with `update_va_mapping` (a frame
//! cannot become a page table while a writable mapping of it exists), then hooked into its
//! parent with `mmu_update(MMU_NORMAL_PT_UPDATE)`; the L1 entries of each 2 MiB are written
//! in one `mmu_update` batch. Page-table frames always come from already-mapped pages (the
//! builder's padding at first), so every table is readable at its direct-map address.
//!
//! If the hypervisor lacks the MMU hypercalls the direct map stays at the bootstrap region and
//! the allocator only hands out its free padding; [`init`] reports why.

pub mod alloc;
pub mod layout;
pub mod pt;

#[cfg(not(test))]
mod kernel;
#[cfg(not(test))]
pub use kernel::*;
